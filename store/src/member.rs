//! One store member: openraft over our log store and state machine, the write batcher, and
//! the `Kv` API served from it. Requests this member cannot serve itself (writes and
//! linearizable reads on a follower) are forwarded to the leader over the internal RPC.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, RaftError};

use crate::batcher::{self, Batcher};
use crate::client::Peer;
use crate::cluster_id::ClusterId;
use crate::disk::Reserve;
use crate::error::{Error, Result};
use crate::network::Network;
use crate::state_machine::{Continue, StateMachine};
use crate::types::{Consistency, KeyValue, ListPage, NodeId, Op, Raft, Revision, Txn, TxnResult};
use crate::watch::{self, WatchStream};
use crate::{LogStore, db};

/// The API every user of the store programs against, in-process (`Member`) or over the
/// network (`Client`).
pub trait Kv: Send + Sync {
    /// The object at `key` and the revision the read reflects.
    fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> impl Future<Output = Result<(Revision, Option<KeyValue>)>> + Send;

    /// One page of the keys under `prefix`, all at one revision. `limit` 0 means all.
    fn list(
        &self,
        prefix: &str,
        limit: usize,
        continue_token: Option<&str>,
        consistency: Consistency,
    ) -> impl Future<Output = Result<ListPage>> + Send;

    /// Applies the transaction atomically in one Raft entry.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnResult>> + Send;

    /// Changes under `prefix` from revision `from` (0: from now on), in order, each once.
    fn watch(
        &self,
        prefix: &str,
        from: Revision,
        prev: bool,
    ) -> impl Future<Output = Result<WatchStream>> + Send;
}

/// Size limits, checked before anything is proposed.
#[derive(Debug, Clone)]
pub struct Limits {
    /// etcd's default `--max-request-bytes`, which is what caps a Kubernetes object.
    pub max_value_bytes: usize,
    /// etcd's default `--max-txn-ops`.
    pub max_txn_ops: usize,
    pub max_key_bytes: usize,
    /// Largest HTTP request body the server accepts on the client API.
    pub max_request_bytes: usize,
    /// Ops allowed in one commit's sync (`Member::txn_commit`): a whole Git commit is one
    /// entry by design, so it is bounded by the manifest limits, not by etcd's 128.
    pub max_commit_ops: usize,
    /// Largest Raft message body, which must carry the largest commit's entry.
    pub max_raft_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 1536 * 1024,
            max_txn_ops: 128,
            max_key_bytes: 1024,
            max_request_bytes: 4 << 20,
            max_commit_ops: 100_000,
            max_raft_bytes: 256 << 20,
        }
    }
}

impl Limits {
    pub fn check_txn(&self, txn: &Txn) -> Result<()> {
        self.check_txn_ops(txn, self.max_txn_ops)
    }

    fn check_txn_ops(&self, txn: &Txn, max_ops: usize) -> Result<()> {
        let count = txn.success.len() + txn.failure.len() + txn.compares.len();
        if count > max_ops {
            return Err(Error::TooManyOps {
                count,
                limit: max_ops,
            });
        }
        for c in &txn.compares {
            self.check_key(&c.key)?;
        }
        for branch in [&txn.success, &txn.failure] {
            let mut seen = HashSet::new();
            for op in branch {
                self.check_key(op.key())?;
                if !seen.insert(op.key()) {
                    return Err(Error::InvalidKey {
                        key: op.key().to_string(),
                        reason: "written twice in one branch of a transaction",
                    });
                }
                if let Op::Put { key, value } = op {
                    if !value.is_object() {
                        return Err(Error::InvalidValue {
                            key: key.clone(),
                            reason: "a value must be a JSON object",
                        });
                    }
                    let size = value.get().len();
                    if size > self.max_value_bytes {
                        return Err(Error::TooLarge {
                            key: key.clone(),
                            size,
                            limit: self.max_value_bytes,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    pub fn check_key(&self, key: &str) -> Result<()> {
        let reason = if !key.starts_with('/') {
            "a key starts with /"
        } else if key.len() > self.max_key_bytes {
            "longer than 1024 bytes"
        } else if key.contains('\0') {
            "contains a NUL byte"
        } else {
            return Ok(());
        };
        Err(Error::InvalidKey {
            key: key.chars().take(80).collect(),
            reason,
        })
    }
}

/// How to start a member.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// The `host:port` other members and clients reach this one at.
    pub advertise: String,
    /// Shared secret of the cluster; every internal request carries it.
    pub token: String,
    pub limits: Limits,
    /// Revisions of history kept for watches and paged lists.
    pub history_retain: u64,
    /// A snapshot is taken after this many log entries, and the log before it purged.
    pub snapshot_every: u64,
    /// Entries proposed but not yet committed at once; more wait and are batched.
    pub in_flight: usize,
    /// Bytes of RocksDB memtables for all column families together (see `db.rs`).
    pub memtable_budget: usize,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// Writes are refused while the data directory's filesystem has less free space than
    /// this (`disk.rs`); 0 turns the check off.
    pub min_free_bytes: u64,
}

/// Room for a memtable flush (the server's budget is 32 MiB), a snapshot of a small store
/// and the WAL files RocksDB preallocates, once writes stop.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 128 << 20;

impl MemberConfig {
    pub fn new(
        id: NodeId,
        data_dir: impl Into<PathBuf>,
        advertise: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        MemberConfig {
            id,
            data_dir: data_dir.into(),
            advertise: advertise.into(),
            token: token.into(),
            limits: Limits::default(),
            history_retain: 100_000,
            snapshot_every: 10_000,
            in_flight: 2,
            memtable_budget: crate::db::DEFAULT_MEMTABLE_BUDGET,
            heartbeat_ms: 100,
            election_timeout_ms: (400, 800),
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// A running member. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Member {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    advertise: String,
    raft: Raft,
    sm: StateMachine,
    batch: Arc<Batcher>,
    reserve: Reserve,
    limits: Limits,
    peer: Peer,
    cluster: ClusterId,
    /// The log store's sync switch, kept by `follow_voters`.
    in_place: Arc<AtomicBool>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.id)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

/// Keeps the log store's sync switch (see `log_store.rs`) set while this member is the only
/// voter. The server metrics change only with the vote, the state, the leader or the
/// membership, so this task wakes on those, never per write; it ends with Raft.
fn follow_voters(raft: &Raft, in_place: Arc<AtomicBool>) {
    let mut server = raft.server_metrics();
    tokio::spawn(async move {
        loop {
            let alone = {
                let m = server.borrow_and_update();
                let mut voters = m.membership_config.membership().voter_ids();
                voters.next() == Some(m.id) && voters.next().is_none()
            };
            in_place.store(alone, Ordering::Relaxed);
            if server.changed().await.is_err() {
                return;
            }
        }
    });
}

fn read_error(e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        },
        RaftError::Fatal(openraft::error::Fatal::Stopped) => Error::Stopped,
        other => Error::Raft(other.to_string()),
    }
}

impl Member {
    /// Opens the member's storage and starts Raft. A member that has never been part of a
    /// cluster and is not told to `join` one starts a new single-member cluster.
    pub async fn start(cfg: MemberConfig, bootstrap: bool) -> Result<Member> {
        let db = db::open(&cfg.data_dir.join("db"), cfg.memtable_budget)?;
        let sm = StateMachine::open(
            db.clone(),
            &cfg.data_dir.join("snapshots"),
            cfg.history_retain,
        )?;
        let cluster = ClusterId::load(db.clone())?;
        let log = LogStore::new(db);
        let in_place = log.sync_in_place();
        let raft_config = openraft::Config {
            cluster_name: "coxswain".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms.0,
            election_timeout_max: cfg.election_timeout_ms.1,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.snapshot_every / 10,
            snapshot_max_chunk_size: 1 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let peer = Peer::new(&cfg.token).with_cluster(cluster.shared());
        let network = Network::new(peer.clone());
        let raft = Raft::new(cfg.id, Arc::new(raft_config), network, log, sm.clone())
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        if bootstrap
            && !raft
                .is_initialized()
                .await
                .map_err(|e| Error::Raft(e.to_string()))?
        {
            // The id is saved before the cluster exists, so no member of it is ever without one.
            cluster.generate()?;
            let mut members = BTreeMap::new();
            members.insert(cfg.id, BasicNode::new(&cfg.advertise));
            raft.initialize(members)
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
        follow_voters(&raft, in_place.clone());
        let batch = Batcher::start(raft.clone(), cfg.in_flight);
        Ok(Member {
            inner: Arc::new(Inner {
                id: cfg.id,
                advertise: cfg.advertise,
                raft,
                sm,
                batch,
                reserve: Reserve::new(&cfg.data_dir, cfg.min_free_bytes),
                limits: cfg.limits,
                peer,
                cluster,
                in_place,
            }),
        })
    }

    /// Whether this member syncs its log appends in place, as the only voter does, rather
    /// than on the flusher thread (see `log_store.rs`).
    pub fn syncs_in_place(&self) -> bool {
        self.inner.in_place.load(Ordering::Relaxed)
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The cluster this member belongs to; `None` until a member that joins hears from the
    /// leader.
    pub fn cluster_id(&self) -> Option<&str> {
        self.inner.cluster.get()
    }

    /// Checks the cluster id a Raft message came with. `adopt` is set for messages only a
    /// leader sends (appends, snapshots): a member that has no id yet takes the sender's.
    pub fn check_cluster(&self, theirs: Option<&str>, adopt: bool) -> Result<()> {
        match (self.inner.cluster.get(), theirs) {
            (_, Some(theirs)) if adopt => self.inner.cluster.adopt(theirs),
            (Some(ours), Some(theirs)) if ours == theirs => Ok(()),
            (None, None) => Ok(()),
            (ours, theirs) => Err(Error::ClusterMismatch {
                ours: ours.map(str::to_string),
                theirs: theirs.unwrap_or("(none)").to_string(),
            }),
        }
    }

    pub fn token_matches(&self, given: &str) -> bool {
        self.inner.peer.token_matches(given)
    }

    /// The revision this member has applied up to.
    pub fn applied(&self) -> Revision {
        self.inner.sm.shared.applied()
    }

    /// Waits until some member is leader, as this member sees it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId> {
        let m = self
            .inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        m.current_leader.ok_or(Error::NotLeader { leader: None })
    }

    /// Adds a member: first as a learner that catches up, then as a voter.
    pub async fn add_member(&self, id: NodeId, addr: &str) -> Result<()> {
        let raft = &self.inner.raft;
        raft.add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(batcher::write_error)?;
        let mut voters: std::collections::BTreeSet<NodeId> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        voters.insert(id);
        raft.change_membership(voters, false)
            .await
            .map_err(batcher::write_error)?;
        Ok(())
    }

    /// Removes a member from the voters and from the cluster.
    pub async fn remove_member(&self, id: NodeId) -> Result<()> {
        let raft = &self.inner.raft;
        let voters: std::collections::BTreeSet<NodeId> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != id)
            .collect();
        raft.change_membership(voters, false)
            .await
            .map_err(batcher::write_error)?;
        Ok(())
    }

    /// Ends the watches and stops Raft; storage is closed when the last clone is dropped.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.sm.shared.stop_watches();
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    fn leader_url(err: &Error) -> Option<String> {
        match err {
            Error::NotLeader {
                leader: Some((_, addr)),
            } => Some(addr.clone()),
            _ => None,
        }
    }

    /// This member's own answer to a transaction: only the leader can give one.
    pub async fn txn_local(&self, txn: Txn) -> Result<TxnResult> {
        self.inner.limits.check_txn(&txn)?;
        self.inner.reserve.check()?;
        self.propose(txn).await
    }

    /// The sync of one Git commit: like `txn`, but with `max_commit_ops` as the op limit,
    /// and only on this member (it must be the leader: such an entry is not forwarded over
    /// the client API, whose body limit it may exceed).
    pub async fn txn_commit(&self, txn: Txn) -> Result<TxnResult> {
        let limits = &self.inner.limits;
        limits.check_txn_ops(&txn, limits.max_commit_ops)?;
        self.inner.reserve.check()?;
        self.propose(txn).await
    }

    /// Several independent txns that came together (`POST /v1/txns`): each is checked and
    /// answered as if it had come alone, so one bad txn fails only itself, but they reach the
    /// batcher together and share entries. Txns a follower cannot answer go to the leader.
    pub async fn txns(&self, txns: Vec<Txn>) -> Vec<Result<TxnResult>> {
        let reserve = self.inner.reserve.check();
        let checked: Vec<Result<Txn>> = txns
            .into_iter()
            .map(|txn| {
                reserve
                    .as_ref()
                    .map_err(Error::duplicate)
                    .and_then(|()| self.inner.limits.check_txn(&txn))
                    .map(|()| txn)
            })
            .collect();
        // Each valid txn is also kept here, to be forwarded if this member is not the leader.
        let valid = checked.iter().filter_map(|c| c.as_ref().ok().cloned());
        let mut receivers = self.inner.batch.submit_all(valid).into_iter();
        let answers = checked.into_iter().map(|c| {
            let rx = c.as_ref().ok().and_then(|_| receivers.next());
            async move {
                let txn = c?;
                let Some(rx) = rx else {
                    return Err(Error::Stopped);
                };
                let local = rx.await.map_err(|_| Error::Stopped).and_then(|r| r);
                self.or_forwarded(local, &txn).await
            }
        });
        futures::future::join_all(answers).await
    }

    /// `local`, this member's own answer to `txn`, or, if it is not the leader, the leader's.
    async fn or_forwarded(&self, local: Result<TxnResult>, txn: &Txn) -> Result<TxnResult> {
        if let Err(e) = &local
            && let Some(url) = Self::leader_url(e)
        {
            return self.inner.peer.txn(&url, txn).await;
        }
        local
    }

    async fn propose(&self, txn: Txn) -> Result<TxnResult> {
        let rx = self.inner.batch.submit(txn);
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Waits until this member, as leader, has applied everything committed when the read
    /// began (openraft's read index); a follower gets `NotLeader`.
    async fn read_index(&self) -> Result<()> {
        self.inner
            .raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(read_error)
    }

    /// This member's own answer to a read; linearizable only on the leader.
    pub async fn get_local(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<(Revision, Option<KeyValue>)> {
        self.inner.limits.check_key(key)?;
        if consistency == Consistency::Linearizable {
            self.read_index().await?;
        }
        let sm = self.inner.sm.shared.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || sm.get(&key))
            .await
            .map_err(|_| Error::Stopped)?
    }

    pub async fn list_local(
        &self,
        prefix: &str,
        limit: usize,
        continue_token: Option<&str>,
        consistency: Consistency,
    ) -> Result<ListPage> {
        let cont = continue_token.map(Continue::decode).transpose()?;
        // A continued list reads at its first page's revision; it needs no new read index.
        if consistency == Consistency::Linearizable && cont.is_none() {
            self.read_index().await?;
        }
        let sm = self.inner.sm.shared.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || sm.list(&prefix, limit, cont.as_ref()))
            .await
            .map_err(|_| Error::Stopped)?
    }
}

impl Kv for Member {
    async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<(Revision, Option<KeyValue>)> {
        let local = self.get_local(key, consistency).await;
        if let Err(e) = &local
            && let Some(url) = Self::leader_url(e)
        {
            return self.inner.peer.get(&url, key, consistency).await;
        }
        local
    }

    async fn list(
        &self,
        prefix: &str,
        limit: usize,
        continue_token: Option<&str>,
        consistency: Consistency,
    ) -> Result<ListPage> {
        let local = self
            .list_local(prefix, limit, continue_token, consistency)
            .await;
        if let Err(e) = &local
            && let Some(url) = Self::leader_url(e)
        {
            return self
                .inner
                .peer
                .list(&url, prefix, limit, continue_token, consistency)
                .await;
        }
        local
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        // Checked here too, so a bad txn is refused without a round trip to the leader.
        self.inner.limits.check_txn(&txn)?;
        let local = self.txn_local(txn.clone()).await;
        self.or_forwarded(local, &txn).await
    }

    async fn watch(&self, prefix: &str, from: Revision, prev: bool) -> Result<WatchStream> {
        watch::start(self.inner.sm.shared.clone(), prefix.to_string(), from, prev)
    }
}
