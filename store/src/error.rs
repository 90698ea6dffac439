use crate::types::Revision;

/// Every way a store call can fail. Input errors (`TooLarge`, `TooManyOps`, `InvalidKey`,
/// `InvalidValue`, `BadContinue`) are refused before anything is proposed, so they never
/// reach the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb: {context}: {source}")]
    Rocks {
        context: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error(
        "revision {requested} has been compacted (history starts after revision {compacted}); list again and watch from the list's revision"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("value of {key} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("transaction has {count} ops, over the limit of {limit}")]
    TooManyOps { count: usize, limit: usize },
    #[error("request carries {count} transactions, over the limit of {limit}")]
    TooManyTxns { count: usize, limit: usize },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("invalid value for {key}: {reason}")]
    InvalidValue { key: String, reason: &'static str },
    #[error("invalid continue token: {0}")]
    BadContinue(&'static str),
    #[error("this member is not the leader{}", leader_hint(.leader))]
    NotLeader { leader: Option<(u64, String)> },
    #[error("raft: {0}")]
    Raft(String),
    #[error("the store is shutting down")]
    Stopped,
    /// Writes are refused while the data directory's disk is under its reserve (`disk.rs`).
    #[error(
        "the store's disk is nearly full: {free} bytes free for {path}, under the {reserve} bytes kept in reserve; writes are refused until space is freed (reads still work)"
    )]
    NoSpace {
        path: String,
        free: u64,
        reserve: u64,
    },
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("{status}: {message}")]
    Remote { status: u16, message: String },
    #[error("unauthorized: missing or wrong cluster token")]
    Unauthorized,
    /// A Raft message from another cluster (or, with `ours` None, a malformed id): typically a
    /// member restarted on an empty disk without `--join`, which bootstrapped a new cluster.
    #[error(
        "cluster mismatch: this member belongs to cluster {}, the message came from cluster {theirs}; a member whose data was lost must rejoin with --join",
        .ours.as_deref().unwrap_or("(none yet)")
    )]
    ClusterMismatch {
        ours: Option<String>,
        theirs: String,
    },
}

/// HTTP 507 Insufficient Storage, what a member answers a write with while its disk is under
/// its reserve.
pub const NO_SPACE_STATUS: u16 = 507;

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!(" (leader is member {id} at {addr})"),
        None => " (no leader known yet)".into(),
    }
}

impl Error {
    pub(crate) fn rocks(context: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
        move |source| Error::Rocks { context, source }
    }

    /// Whether retrying the same call later (possibly against another member) may succeed.
    /// A full disk is not: it lasts until someone frees space.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. } | Error::Transport { .. } | Error::Stopped | Error::Raft(_)
        ) || matches!(self, Error::Remote { status, .. } if *status >= 500 && *status != NO_SPACE_STATUS)
    }

    /// A copy for each caller that shares one failed request (`Client::txn` coalesces
    /// calls). Covers the variants a request can fail with as a whole; the rest, which only
    /// arise inside a member, keep their message.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Transport { url, reason } => Error::Transport {
                url: url.clone(),
                reason: reason.clone(),
            },
            Error::Remote { status, message } => Error::Remote {
                status: *status,
                message: message.clone(),
            },
            Error::NotLeader { leader } => Error::NotLeader {
                leader: leader.clone(),
            },
            Error::Compacted {
                requested,
                compacted,
            } => Error::Compacted {
                requested: *requested,
                compacted: *compacted,
            },
            Error::Unauthorized => Error::Unauthorized,
            Error::Stopped => Error::Stopped,
            Error::NoSpace {
                path,
                free,
                reserve,
            } => Error::NoSpace {
                path: path.clone(),
                free: *free,
                reserve: *reserve,
            },
            Error::Raft(m) => Error::Raft(m.clone()),
            other => Error::Remote {
                status: 500,
                message: other.to_string(),
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
