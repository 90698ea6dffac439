//! # coxswain-schema — start here
//!
//! The resource model and everything needed to turn a tree of manifest files into validated,
//! typed objects. Pure: no tokio, no network, no Git (the Git source feeds files in through
//! the [`tree::Tree`] trait).
//!
//! Layout:
//! - [`kinds`] and [`meta`]: the Kubernetes-shaped types, one file per API group; [`object`]
//!   is the registry of kinds and [`Object`], the sum type the store and controllers use.
//! - `schemas/*.json` (next to `src/`): one JSON Schema per kind, generated from the types
//!   (`COXSWAIN_BLESS=1 cargo test -p coxswain-schema schemas_match`) and checked by the
//!   `jsonschema` crate.
//! - [`yaml`]: a YAML/JSON parser that keeps line and column of every node and enforces the
//!   hard limits while it parses.
//! - [`validate`]: the all-or-nothing pipeline ([`validate::validate_tree`]) — limits, parse,
//!   schema, semantic rules per object, then references across the tree.
//! - Small pure helpers every controller uses: [`selector`], [`quantity`], [`names`], [`cron`].

pub mod cron;
pub mod diagnostic;
pub mod error;
pub mod intorstr;
pub mod kinds;
pub mod meta;
pub mod names;
pub mod object;
pub mod quantity;
pub mod selector;
pub mod tree;
pub mod validate;
pub mod yaml;

pub use diagnostic::{Code, Diagnostic};
pub use error::{Error, Result};
pub use object::{KINDS, KindInfo, Object};
pub use validate::{Limits, Report, validate_tree, validate_tree_with};
