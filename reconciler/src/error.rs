//! The crate's one error type. Variants name the step that failed and carry the path, ref
//! or commit involved, so a message is actionable without a backtrace.

/// Every way the GitOps core can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A libgit2 call failed; `context` says what we were doing and on which repo/ref.
    #[error("git: {context}: {source}")]
    Git {
        context: String,
        #[source]
        source: git2::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {path}: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
    /// A setting (flag or config file) that cannot work, with the field it came from.
    #[error("invalid config {field}: {reason}")]
    Config { field: String, reason: String },
    /// A ref, tag or commit that does not resolve in the repository.
    #[error("cannot resolve {reference} in {repo}: {reason}")]
    Resolve {
        repo: String,
        reference: String,
        reason: String,
    },
    /// A note under `refs/notes/coxswain` that this version cannot read.
    #[error("note on {commit}: {reason}")]
    Note { commit: String, reason: String },
    /// The store kept moving under a sync (other writers to the same objects) for this many
    /// attempts in a row; the next trigger tries again.
    #[error("sync of {commit} conflicted with other writes {attempts} times in a row")]
    Conflict { commit: String, attempts: usize },
    #[error(transparent)]
    Store(#[from] coxswain_store::Error),
    #[error(transparent)]
    Schema(#[from] coxswain_schema::Error),
}

impl Error {
    /// Wraps a git2 error with what was being done.
    pub fn git(context: impl Into<String>) -> impl FnOnce(git2::Error) -> Error {
        let context = context.into();
        move |source| Error::Git { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
