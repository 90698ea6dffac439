//! The crate's one error type.
//!
//! Most problems in a manifest tree are not `Error`s but [`crate::Diagnostic`]s: validation
//! collects all of them at once. `Error` is for what stops work on one piece of input (a file
//! that cannot be parsed, a limit that was crossed) or on the tree as a whole (I/O).

use std::path::PathBuf;

/// Everything that can go wrong in `coxswain-schema`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tree source (a folder, a Git commit) could not be read.
    #[error("{path}: {reason}")]
    Tree { path: String, reason: String },
    /// The text is not valid YAML/JSON, or uses a YAML feature we refuse (tags, duplicate keys).
    /// `line` and `column` are 1-based.
    #[error("{line}:{column}: {reason}")]
    Parse {
        line: u32,
        column: u32,
        reason: String,
    },
    /// A hard limit was crossed. `limit` is the name of the limit (as in [`crate::Limits`]).
    #[error("{line}:{column}: {reason} (limit {limit})")]
    Limit {
        limit: &'static str,
        line: u32,
        column: u32,
        reason: String,
    },
    /// A quantity such as `100m` or `128Mi` is malformed or out of range.
    #[error("invalid quantity {value:?}: {reason}")]
    Quantity { value: String, reason: String },
    /// A label selector is malformed.
    #[error("invalid label selector {selector:?}: {reason}")]
    Selector { selector: String, reason: String },
    /// A cron schedule or time zone is malformed.
    #[error("invalid schedule {schedule:?}: {reason}")]
    Schedule { schedule: String, reason: String },
    /// A JSON Schema shipped with the crate failed to compile (a build defect, caught by tests).
    #[error("schema {name}: {reason}")]
    SchemaCompile { name: String, reason: String },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
