//! # coxswain-reconciler — start here
//!
//! The GitOps core and, later, the control loops. A commit travels through this crate as:
//! [`source`] (find the commit: fetch into a bare cache or read a local repository, watch
//! refs with notify, read the tree at the commit with no checkout) → the schema crate's
//! loader → [`plan`] (desired objects against the Git-owned objects in the store: creates,
//! updates, deletes) → [`prune`] (hold back a sync that would delete too much) → the sync
//! apply (one Raft txn per commit) → [`notes`] (the commit's status as a git note under
//! `refs/notes/coxswain`). [`sync`] ties these together: one [`sync::Syncer`] per source.
//!
//! Errors of every module are variants of the one [`Error`] enum in `error.rs`.

pub mod controller;
pub mod error;
pub mod health;
pub mod notes;
pub mod plan;
pub mod prune;
pub mod scheduler;
pub mod source;
pub mod sync;

pub use error::{Error, Result};
