//! # coxswain-store — start here
//!
//! The replicated store of the whole cluster: an openraft log and a RocksDB state machine,
//! with revisions (the Raft log index of each write), `get`/`list`/`txn`/`watch` and
//! compare-and-swap on `resourceVersion`.
//!
//! Layout:
//! - `types.rs`: the data model and the openraft type configuration (read this first);
//! - `db.rs`: the one RocksDB per member and its column families;
//! - `log_store.rs`: the Raft log (group-committed fsyncs);
//! - `state_machine.rs` and `snapshot.rs`: objects, history, streamed snapshots;
//!   `resource_version.rs`: sets `metadata.resourceVersion` in a put's JSON text;
//! - `member.rs`: one running member and the `Kv` trait (get, list, txn, watch);
//! - `batcher.rs`: packs concurrent txns into one entry; `watch.rs`: ordered watch streams;
//! - `network.rs`, `server.rs`, `client.rs`: the internal HTTP RPC and the network client;
//!   `outbox.rs`: the client's concurrent txns sharing HTTP requests; `fast_json.rs`: request
//!   bodies read without axum's per-field path tracking;
//! - `cluster_id.rs`: the cluster's identity, checked on every Raft message;
//! - `error.rs`: the crate's one error enum.

mod batcher;
pub mod client;
pub mod cluster_id;
pub mod db;
mod disk;
pub mod error;
mod fast_json;
pub mod log_store;
pub mod member;
pub mod network;
mod outbox;
mod resource_version;
pub mod server;
pub mod snapshot;
pub mod state_machine;
pub mod types;
pub mod watch;

pub use client::Client;
pub use db::defer_rocksdb_statics;
pub use error::{Error, Result};
pub use log_store::LogStore;
pub use member::{Kv, Limits, Member, MemberConfig};
pub use state_machine::StateMachine;
pub use types::*;
