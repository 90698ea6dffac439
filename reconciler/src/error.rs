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
    /// A controller's compare-and-swap lost to another write of one of these keys (or one
    /// was created meanwhile); the key being reconciled is requeued with backoff and the
    /// next attempt reads the newer state.
    #[error(
        "{controller}: the store changed under the write of {keys} (compare-and-swap conflict)"
    )]
    WriteConflict { controller: String, keys: String },
    /// The controllers' cache did not see a write this member just made within `waited_ms`:
    /// its watch is broken or far behind, so reading it would act on stale state.
    #[error(
        "the controllers' cache did not observe revision {revision} within {waited_ms} ms (it is at {seen})"
    )]
    CacheLag {
        revision: u64,
        seen: u64,
        waited_ms: u64,
    },
    /// An object could not be turned into the JSON the store keeps. The schema types are
    /// plain structs and string-keyed maps, so this means a bug, reported instead of a panic.
    #[error("encoding {what}: {reason}")]
    Encode { what: String, reason: String },
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
