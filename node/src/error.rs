//! The node agent's one error type. Every variant names what it was doing (a path, a cgroup,
//! a pod) so that a pod's status can carry the message as it is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{context}: {path}: {source}")]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A system call made through nix failed.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    /// A cgroup could not be created, configured, read or removed.
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: String, reason: String },
    /// A setting of the agent's config, or a field of a pod, is unusable.
    #[error("{field}: {reason}")]
    Config { field: String, reason: String },
    /// A pool (pod IPs, ...) has nothing left to hand out.
    #[error("no free {what} left in {pool}")]
    Exhausted { what: String, pool: String },
    /// The launcher could not start a sandbox, a container or an exec; the reason names the
    /// step that failed (as a container's `StartError` message does).
    #[error("{reason}")]
    Launch { reason: String },
    /// A read or write of the store failed.
    #[error("store: {context}: {source}")]
    Store {
        context: String,
        #[source]
        source: coxswain_store::Error,
    },
    /// State kept on disk is not what this agent writes.
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A closure for `map_err` on an I/O result about `path`.
    pub fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        let path = path.into();
        move |source| Error::Io {
            context,
            path,
            source,
        }
    }

    /// A closure for `map_err` on a store result.
    pub fn store(context: impl Into<String>) -> impl FnOnce(coxswain_store::Error) -> Error {
        let context = context.into();
        move |source| Error::Store { context, source }
    }

    /// A closure for `map_err` on a nix result.
    pub fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
        let context = context.into();
        move |source| Error::Sys { context, source }
    }
}
