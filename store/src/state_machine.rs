//! The state machine on RocksDB (openraft's `RaftStateMachine`): current objects, the change
//! history that watches and paged lists read, and the last applied log id, all written in one
//! RocksDB batch per `apply` so they never disagree.
//!
//! Nothing here is fsynced on apply: every applied entry is already durable in the log, and
//! openraft re-applies from the log after a crash (the committed id is persisted).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

use crate::batcher::Answers;
use crate::db::{CF_HISTORY, CF_KV, CF_SM_META, be, cf, from_be};
use crate::error::{Error, Result};
use crate::snapshot::{self, Family, Header};
use crate::types::{
    Entry, Event, EventKind, KeyValue, ListPage, LogId, Op, Request, Response, Revision,
    SnapshotMeta, StorageError, StoredMembership, TxnResult, TypeConfig, WatchBatch,
};

const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_COMPACTED: &[u8] = b"compacted";
/// Present while a snapshot is being installed; if we find it at start, the install is
/// redone from `current.snap`, so a crash mid-install never leaves a mixed state.
const KEY_INSTALLING: &[u8] = b"installing";
const CURRENT_SNAPSHOT: &str = "current.snap";
/// Every valid UTF-8 key sorts below this byte, since 0xFF never occurs in UTF-8.
const KEY_END: &[u8] = &[0xFF];

/// What watchers hear from `apply`.
#[derive(Debug, Clone)]
pub enum Notice {
    Applied(Arc<Applied>),
    /// A snapshot replaced the state: re-read the history from where you were.
    Reset,
    /// The member is shutting down: end every watch.
    Stopped,
}

/// How many applied batches the announcement channel keeps for watchers that are behind. A
/// watcher further behind re-reads the history from RocksDB, so this only trades memory for
/// reads; the channel keeps its last batches (values and previous values) for as long as the
/// member runs, so a large buffer is idle memory: 1024 batches of pod status writes measured
/// about 15 MiB of a `coxswain up` at rest.
const NOTICE_BUFFER: usize = 128;

/// The events of one applied revision, as `apply` announces them: values stay as stored
/// and are parsed for each watcher whose prefix matches (the previous value only if it asked
/// for it), so apply builds no value, and a watcher is handed its own.
#[derive(Debug)]
pub struct Applied {
    pub revision: Revision,
    events: Vec<AppliedEvent>,
}

/// One change as applied; see [`Applied`].
#[derive(Debug)]
struct AppliedEvent {
    kind: EventKind,
    key: String,
    /// The key as written (for a delete: its create revision, the delete's revision, no JSON).
    now: Stored,
    prev: Option<Stored>,
}

impl Applied {
    /// The events whose key starts with `prefix`, with their previous values if `prev`.
    pub fn matching(&self, prefix: &str, prev: bool) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for e in &self.events {
            if !e.key.starts_with(prefix) {
                continue;
            }
            let kv = match e.kind {
                EventKind::Put => e.now.to_kv(&e.key)?,
                EventKind::Delete => KeyValue {
                    key: e.key.clone(),
                    value: serde_json::Value::Null,
                    create_revision: e.now.create,
                    mod_revision: e.now.modr,
                },
            };
            let prev = match &e.prev {
                Some(stored) if prev => Some(stored.to_kv(&e.key)?),
                _ => None,
            };
            out.push(Event {
                kind: e.kind,
                kv,
                prev,
            });
        }
        Ok(out)
    }
}

/// The state machine. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
}

pub struct Shared {
    db: Arc<DB>,
    snap_dir: PathBuf,
    notify: broadcast::Sender<Notice>,
    applied: AtomicU64,
    compacted: AtomicU64,
    history_retain: u64,
    /// Serialises work on the snapshot files (build, install).
    snap_lock: Mutex<()>,
    recv_seq: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &self.applied.load(Ordering::Relaxed))
            .field("compacted", &self.compacted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// An object as the `kv` family holds it: its create and mod revisions, then its JSON.
#[derive(Debug)]
struct Stored {
    create: Revision,
    modr: Revision,
    json: Vec<u8>,
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.json.len());
        out.extend_from_slice(&be(self.create));
        out.extend_from_slice(&be(self.modr));
        out.extend_from_slice(&self.json);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Stored> {
        if bytes.len() < 16 {
            return Err(Error::Corrupt {
                what: "stored object",
                reason: format!("{} bytes", bytes.len()),
            });
        }
        Ok(Stored {
            create: from_be(&bytes[..8])?,
            modr: from_be(&bytes[8..16])?,
            json: bytes[16..].to_vec(),
        })
    }

    /// The history record of one change, byte for byte what serde writes for the [`Event`]
    /// (`kind`, `kv`, then `prev` if any; a delete's value is null), built from the JSON
    /// texts as they are, so neither value is parsed to write it.
    fn history_record(
        kind: EventKind,
        key: &str,
        value: &Stored,
        prev: Option<&Stored>,
    ) -> Vec<u8> {
        fn kv(out: &mut Vec<u8>, key: &str, s: &Stored, json: &[u8]) {
            out.extend_from_slice(b"{\"key\":");
            // Writing into a `Vec` cannot fail.
            let _ = serde_json::to_writer(&mut *out, key);
            out.extend_from_slice(b",\"value\":");
            out.extend_from_slice(json);
            let _ = write!(
                out,
                ",\"create_revision\":{},\"mod_revision\":{}}}",
                s.create, s.modr
            );
        }
        let mut out = Vec::with_capacity(
            96 + 2 * key.len() + value.json.len() + prev.map_or(0, |p| p.json.len()),
        );
        out.extend_from_slice(match kind {
            EventKind::Put => b"{\"kind\":\"put\",\"kv\":",
            EventKind::Delete => b"{\"kind\":\"delete\",\"kv\":",
        });
        let json: &[u8] = match kind {
            EventKind::Put => &value.json,
            EventKind::Delete => b"null",
        };
        kv(&mut out, key, value, json);
        if let Some(p) = prev {
            out.extend_from_slice(b",\"prev\":");
            kv(&mut out, key, p, &p.json);
        }
        out.push(b'}');
        out
    }

    fn to_kv(&self, key: &str) -> Result<KeyValue> {
        Ok(KeyValue {
            key: key.to_string(),
            value: serde_json::from_slice(&self.json).map_err(|e| Error::Corrupt {
                what: "stored object",
                reason: format!("{key}: {e}"),
            })?,
            create_revision: self.create,
            mod_revision: self.modr,
        })
    }
}

fn history_key(rev: Revision, seq: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&be(rev));
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn sm_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(e)).into()
}

fn snap_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(e)).into()
}

fn json_err(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
    move |e| Error::Corrupt {
        what,
        reason: e.to_string(),
    }
}

/// Where a paged list resumes: the revision of its first page and the last key returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    pub revision: Revision,
    pub after: String,
}

impl Continue {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.revision, self.after)
    }

    pub fn decode(token: &str) -> Result<Continue> {
        let (rev, after) = token
            .split_once(':')
            .ok_or(Error::BadContinue("expected REVISION:KEY"))?;
        let revision = rev
            .parse()
            .map_err(|_| Error::BadContinue("revision is not a number"))?;
        Ok(Continue {
            revision,
            after: after.to_string(),
        })
    }
}

impl StateMachine {
    /// Opens the state machine on `db`, keeping snapshot files in `snap_dir`.
    pub fn open(db: Arc<DB>, snap_dir: &Path, history_retain: u64) -> Result<Self> {
        std::fs::create_dir_all(snap_dir).map_err(|source| Error::Io {
            path: snap_dir.display().to_string(),
            source,
        })?;
        let (notify, _) = broadcast::channel(NOTICE_BUFFER);
        let shared = Arc::new(Shared {
            db,
            snap_dir: snap_dir.to_path_buf(),
            notify,
            applied: AtomicU64::new(0),
            compacted: AtomicU64::new(0),
            history_retain: history_retain.max(1),
            snap_lock: Mutex::new(()),
            recv_seq: AtomicU64::new(0),
        });
        if shared.meta::<bool>(KEY_INSTALLING)?.unwrap_or(false) {
            tracing::warn!("a snapshot install was interrupted; redoing it");
            shared.load_current_snapshot()?;
        }
        let applied = shared.meta::<LogId>(KEY_APPLIED)?.map_or(0, |l| l.index);
        shared.applied.store(applied, Ordering::SeqCst);
        let compacted = shared.meta::<Revision>(KEY_COMPACTED)?.unwrap_or(0);
        shared.compacted.store(compacted, Ordering::SeqCst);
        Ok(StateMachine { shared })
    }
}

impl Shared {
    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        let cf = cf(&self.db, CF_SM_META)?;
        match self
            .db
            .get_cf(cf, key)
            .map_err(Error::rocks("read state"))?
        {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(json_err("state machine meta")),
        }
    }

    /// `meta`, read from `snap`, so several records (and the data) agree with each other.
    fn meta_at<T: serde::de::DeserializeOwned>(
        &self,
        snap: &rocksdb::Snapshot<'_>,
        key: &[u8],
    ) -> Result<Option<T>> {
        snap.get_cf(cf(&self.db, CF_SM_META)?, key)
            .map_err(Error::rocks("read state"))?
            .map(|b| serde_json::from_slice(&b).map_err(json_err("state machine meta")))
            .transpose()
    }

    /// The last applied revision and the compaction point, as of `snap`.
    fn marks_at(&self, snap: &rocksdb::Snapshot<'_>) -> Result<(Revision, Revision)> {
        let applied = self
            .meta_at::<LogId>(snap, KEY_APPLIED)?
            .map_or(0, |l| l.index);
        let compacted = self.meta_at::<Revision>(snap, KEY_COMPACTED)?.unwrap_or(0);
        Ok((applied, compacted))
    }

    /// Ends every watch on this member, so the connections serving them can close.
    pub fn stop_watches(&self) {
        let _ = self.notify.send(Notice::Stopped);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notify.subscribe()
    }

    /// The revision this member has applied up to.
    pub fn applied(&self) -> Revision {
        self.applied.load(Ordering::SeqCst)
    }

    pub fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::SeqCst)
    }

    fn lookup(
        &self,
        overlay: &HashMap<String, Option<Vec<u8>>>,
        key: &str,
    ) -> Result<Option<Stored>> {
        let bytes = match overlay.get(key) {
            Some(v) => v.clone(),
            None => self
                .db
                .get_cf(cf(&self.db, CF_KV)?, key.as_bytes())
                .map_err(Error::rocks("read object"))?,
        };
        bytes.map(|b| Stored::decode(&b)).transpose()
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<(Vec<Response>, Vec<Applied>)> {
        let kv = cf(&self.db, CF_KV)?;
        let hist = cf(&self.db, CF_HISTORY)?;
        let meta = cf(&self.db, CF_SM_META)?;
        let mut batch = WriteBatch::default();
        // Objects written earlier in this call, so later txns and later entries see them
        // before the batch lands. It is written to the batch once, after the last entry:
        // emptied per entry, it once let a compare-and-swap "if absent" in one entry succeed
        // over a create in the entry before it, when both were applied in one call.
        let mut overlay: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut responses = Vec::with_capacity(entries.len());
        let mut batches = Vec::new();
        let mut last = None;
        for entry in entries {
            let rev = entry.log_id.index;
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::default()),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m);
                    let bytes = serde_json::to_vec(&stored).map_err(json_err("membership"))?;
                    batch.put_cf(meta, KEY_MEMBERSHIP, bytes);
                    responses.push(Response::default());
                }
                EntryPayload::Normal(req) => {
                    let (resp, applied, records) = self.apply_request(req, rev, &mut overlay)?;
                    for (seq, record) in records.into_iter().enumerate() {
                        batch.put_cf(hist, history_key(rev, seq as u32), record);
                    }
                    if !applied.events.is_empty() {
                        batches.push(applied);
                    }
                    responses.push(resp);
                }
            }
        }
        for (key, value) in overlay {
            match value {
                Some(v) => batch.put_cf(kv, key.as_bytes(), v),
                None => batch.delete_cf(kv, key.as_bytes()),
            }
        }
        let Some(last) = last else {
            return Ok((responses, batches));
        };
        batch.put_cf(
            meta,
            KEY_APPLIED,
            serde_json::to_vec(&last).map_err(json_err("log id"))?,
        );
        // Automatic compaction: keep `history_retain` revisions, trimming in steps of a tenth
        // so the range delete is not issued on every write.
        let compacted = self.compacted();
        let keep_from = last.index.saturating_sub(self.history_retain);
        let new_compacted = if keep_from > compacted + self.history_retain / 10 {
            batch.delete_range_cf(hist, be(compacted + 1), be(keep_from + 1));
            batch.put_cf(
                meta,
                KEY_COMPACTED,
                serde_json::to_vec(&keep_from).map_err(json_err("revision"))?,
            );
            Some(keep_from)
        } else {
            None
        };
        // Without the WAL: the log already holds every entry durably, so writing the same
        // txns a second time to the WAL, and fsyncing them with the next append, only made
        // each fsync larger (most of the WAL's bytes were objects and history). A crash
        // loses what was applied since the last flush, and openraft applies it again from
        // the log at start (`reapply_committed`, up to the saved committed id); a snapshot
        // flushes first (`build_snapshot_blocking`), so the log is never purged past what is
        // on disk here.
        let mut unlogged = WriteOptions::default();
        unlogged.disable_wal(true);
        self.db
            .write_opt(batch, &unlogged)
            .map_err(Error::rocks("apply"))?;
        if let Some(c) = new_compacted {
            self.compacted.store(c, Ordering::SeqCst);
        }
        self.applied.store(last.index, Ordering::SeqCst);
        Ok((responses, batches))
    }

    /// Applies one entry's txns over `overlay`; returns their results, their events, and
    /// each event's history record.
    fn apply_request(
        &self,
        req: Request,
        rev: Revision,
        overlay: &mut HashMap<String, Option<Vec<u8>>>,
    ) -> Result<(Response, Applied, Vec<Vec<u8>>)> {
        let mut events = Vec::new();
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(req.txns.len());
        for txn in req.txns {
            let mut ok = true;
            for c in &txn.compares {
                let cur = self.lookup(overlay, &c.key)?;
                let actual = match c.target {
                    crate::types::Target::ModRevision => cur.as_ref().map_or(0, |s| s.modr),
                    crate::types::Target::CreateRevision => cur.as_ref().map_or(0, |s| s.create),
                };
                if !c.op.holds(actual, c.value) {
                    ok = false;
                    break;
                }
            }
            let ops = if ok { txn.success } else { txn.failure };
            let mut deleted = Vec::new();
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        let prev = self.lookup(overlay, &key)?;
                        let create = prev.as_ref().map_or(rev, |p| p.create);
                        let json = crate::resource_version::set(value.get(), rev);
                        let stored = Stored {
                            create,
                            modr: rev,
                            json,
                        };
                        records.push(Stored::history_record(
                            EventKind::Put,
                            &key,
                            &stored,
                            prev.as_ref(),
                        ));
                        overlay.insert(key.clone(), Some(stored.encode()));
                        events.push(AppliedEvent {
                            kind: EventKind::Put,
                            key,
                            now: stored,
                            prev,
                        });
                    }
                    Op::Delete { key } => match self.lookup(overlay, &key)? {
                        Some(p) => {
                            overlay.insert(key.clone(), None);
                            let gone = Stored {
                                create: p.create,
                                modr: rev,
                                json: Vec::new(),
                            };
                            records.push(Stored::history_record(
                                EventKind::Delete,
                                &key,
                                &gone,
                                Some(&p),
                            ));
                            events.push(AppliedEvent {
                                kind: EventKind::Delete,
                                key,
                                now: gone,
                                prev: Some(p),
                            });
                            deleted.push(true);
                        }
                        None => deleted.push(false),
                    },
                }
            }
            results.push(TxnResult {
                succeeded: ok,
                revision: rev,
                deleted,
            });
        }
        Ok((
            Response { results },
            Applied {
                revision: rev,
                events,
            },
            records,
        ))
    }

    /// This member's current value of `key`, with the revision it was read at.
    pub fn get(&self, key: &str) -> Result<(Revision, Option<KeyValue>)> {
        let snap = self.db.snapshot();
        let applied = self
            .meta_at::<LogId>(&snap, KEY_APPLIED)?
            .map_or(0, |l| l.index);
        let value = snap
            .get_cf(cf(&self.db, CF_KV)?, key.as_bytes())
            .map_err(Error::rocks("read object"))?;
        let kv = value
            .map(|b| Stored::decode(&b).and_then(|s| s.to_kv(key)))
            .transpose()?;
        Ok((applied, kv))
    }

    /// One page of the keys under `prefix`, as they were at one revision: the current one for
    /// a first page, the first page's for the next ones. Later changes are rolled back with
    /// the history (each event keeps the value before it), so a revision older than the
    /// compaction point is refused, as etcd and the Kubernetes API do with 410 Gone.
    pub fn list(&self, prefix: &str, limit: usize, cont: Option<&Continue>) -> Result<ListPage> {
        let snap = self.db.snapshot();
        let (current, compacted) = self.marks_at(&snap)?;
        let (revision, after) = match cont {
            None => (current, None),
            Some(c) => {
                if !c.after.starts_with(prefix) {
                    return Err(Error::BadContinue("token belongs to another prefix"));
                }
                if c.revision > current {
                    return Err(Error::BadContinue(
                        "token is from a newer revision than this member has",
                    ));
                }
                (c.revision, Some(c.after.as_str()))
            }
        };
        // The value at `revision` of every key changed since: the `prev` of its first later event.
        let mut rollback: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
        if revision < current {
            if revision < compacted {
                return Err(Error::Compacted {
                    requested: revision,
                    compacted,
                });
            }
            let start = be(revision + 1);
            for item in snap.iterator_cf(
                cf(&self.db, CF_HISTORY)?,
                IteratorMode::From(&start, Direction::Forward),
            ) {
                let (_, v) = item.map_err(Error::rocks("read history"))?;
                let ev: Event = serde_json::from_slice(&v).map_err(json_err("event"))?;
                let in_range =
                    ev.kv.key.starts_with(prefix) && after.is_none_or(|a| ev.kv.key.as_str() > a);
                if in_range && !rollback.contains_key(&ev.kv.key) {
                    rollback.insert(ev.kv.key.clone(), ev.prev);
                }
            }
        }
        let mut from_key =
            after.map_or_else(|| prefix.as_bytes().to_vec(), |a| a.as_bytes().to_vec());
        if after.is_some() {
            from_key.push(0);
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(KEY_END.to_vec());
        let mut current_items = snap
            .iterator_cf_opt(
                cf(&self.db, CF_KV)?,
                opts,
                IteratorMode::From(&from_key, Direction::Forward),
            )
            .map_while(|item| match item {
                Ok((k, v)) if k.starts_with(prefix.as_bytes()) => Some(Ok((k, v))),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .peekable();
        let mut rolled = rollback.into_iter().peekable();
        let mut items = Vec::new();
        let want = if limit == 0 { usize::MAX } else { limit };
        let mut more = false;
        loop {
            let next_cur = match current_items.peek() {
                Some(Ok((k, _))) => Some(String::from_utf8_lossy(k).into_owned()),
                Some(Err(_)) => {
                    if let Some(Err(e)) = current_items.next() {
                        return Err(Error::Rocks {
                            context: "list",
                            source: e,
                        });
                    }
                    continue;
                }
                None => None,
            };
            let next_roll = rolled.peek().map(|(k, _)| k.clone());
            let item = match (next_cur, next_roll) {
                (None, None) => break,
                (Some(c), Some(r)) if r <= c => {
                    if r == c {
                        current_items.next();
                    }
                    rolled.next().and_then(|(_, v)| v)
                }
                (Some(c), _) => match current_items.next() {
                    Some(Ok((_, v))) => Some(Stored::decode(&v)?.to_kv(&c)?),
                    _ => None,
                },
                (None, Some(_)) => rolled.next().and_then(|(_, v)| v),
            };
            if let Some(item) = item {
                if items.len() == want {
                    more = true;
                    break;
                }
                items.push(item);
            }
        }
        let continue_token = match (more, items.last()) {
            (true, Some(last)) => Some(
                Continue {
                    revision,
                    after: last.key.clone(),
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(ListPage {
            revision,
            items,
            continue_token,
        })
    }

    /// History from `from` on, at most `max` revisions that have events and about
    /// `max_events` events (a revision is never split), read at one instant. Returns the
    /// batches, the revision the read covered up to, and whether it stopped at a bound
    /// (more history follows).
    pub fn history(
        &self,
        from: Revision,
        max: usize,
        max_events: usize,
    ) -> Result<(Vec<WatchBatch>, Revision, bool)> {
        let snap = self.db.snapshot();
        let (applied, compacted) = self.marks_at(&snap)?;
        if from <= compacted {
            return Err(Error::Compacted {
                requested: from,
                compacted,
            });
        }
        let start = be(from);
        let mut out: Vec<WatchBatch> = Vec::new();
        let mut events = 0usize;
        for item in snap.iterator_cf(
            cf(&self.db, CF_HISTORY)?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item.map_err(Error::rocks("read history"))?;
            let rev = from_be(&k)?;
            let ev: Event = serde_json::from_slice(&v).map_err(json_err("event"))?;
            events += 1;
            match out.last_mut() {
                Some(b) if b.revision == rev => b.events.push(ev),
                _ => {
                    // A revision is never split, so a chunk may pass `max_events` by one
                    // revision's events.
                    if out.len() == max || events > max_events {
                        // Covered up to just before this revision.
                        return Ok((out, rev - 1, true));
                    }
                    out.push(WatchBatch {
                        revision: rev,
                        events: vec![ev],
                    });
                }
            }
        }
        Ok((out, applied, false))
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.snap_dir.join(CURRENT_SNAPSHOT)
    }

    fn build_snapshot_blocking(&self) -> Result<SnapshotMeta> {
        let snap = self.db.snapshot();
        let last: Option<LogId> = self.meta_at(&snap, KEY_APPLIED)?;
        let membership: StoredMembership = self.meta_at(&snap, KEY_MEMBERSHIP)?.unwrap_or_default();
        let compacted: Revision = self.meta_at(&snap, KEY_COMPACTED)?.unwrap_or(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let snapshot_id = match &last {
            Some(l) => format!("{}-{}-{nanos}", l.leader_id.term, l.index),
            None => format!("0-0-{nanos}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id: snapshot_id.clone(),
        };
        let tmp = self.snap_dir.join(format!("build-{snapshot_id}.tmp"));
        let header = Header {
            meta: meta.clone(),
            compacted,
        };
        let io = |source| Error::Io {
            path: tmp.display().to_string(),
            source,
        };
        let mut w = snapshot::Writer::create(&tmp, &header)?;
        for (family, name) in [(Family::Kv, CF_KV), (Family::History, CF_HISTORY)] {
            for item in snap.iterator_cf(cf(&self.db, name)?, IteratorMode::Start) {
                let (k, v) = item.map_err(Error::rocks("snapshot scan"))?;
                w.record(family, &k, &v).map_err(io)?;
            }
        }
        w.finish().map_err(io)?;
        // openraft purges the log up to this snapshot once it is built, and applies written
        // without the WAL are only on disk once flushed: flushed now, everything applied so
        // far (this snapshot's point and more) survives a crash without those entries.
        crate::db::flush_state_machine(&self.db)?;
        let _guard = self.snap_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.publish(&tmp)?;
        Ok(meta)
    }

    /// Makes `tmp` the current snapshot, durably.
    fn publish(&self, tmp: &Path) -> Result<()> {
        let dest = self.current_snapshot_path();
        std::fs::rename(tmp, &dest).map_err(|source| Error::Io {
            path: dest.display().to_string(),
            source,
        })?;
        std::fs::File::open(&self.snap_dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::Io {
                path: self.snap_dir.display().to_string(),
                source,
            })
    }

    /// Replaces the whole state with `current.snap`, streaming it in batches.
    fn load_current_snapshot(&self) -> Result<()> {
        let path = self.current_snapshot_path();
        let mut reader = snapshot::Reader::open(&path)?;
        let kv = cf(&self.db, CF_KV)?;
        let hist = cf(&self.db, CF_HISTORY)?;
        let meta = cf(&self.db, CF_SM_META)?;
        let mut synced = WriteOptions::default();
        synced.set_sync(true);

        let mut batch = WriteBatch::default();
        batch.delete_range_cf(kv, &b""[..], KEY_END);
        batch.delete_range_cf(hist, be(0), be(u64::MAX));
        batch.put_cf(meta, KEY_INSTALLING, b"true");
        self.db
            .write_opt(batch, &synced)
            .map_err(Error::rocks("clear for snapshot"))?;

        let mut batch = WriteBatch::default();
        while let Some((family, k, v)) = reader.next_record()? {
            let target = match family {
                Family::Kv => kv,
                Family::History => hist,
            };
            batch.put_cf(target, k, v);
            if batch.size_in_bytes() > 4 << 20 {
                let full = std::mem::take(&mut batch);
                self.db.write(full).map_err(Error::rocks("load snapshot"))?;
            }
        }
        let header = &reader.header;
        match &header.meta.last_log_id {
            Some(l) => batch.put_cf(
                meta,
                KEY_APPLIED,
                serde_json::to_vec(l).map_err(json_err("log id"))?,
            ),
            None => batch.delete_cf(meta, KEY_APPLIED),
        }
        batch.put_cf(
            meta,
            KEY_MEMBERSHIP,
            serde_json::to_vec(&header.meta.last_membership).map_err(json_err("membership"))?,
        );
        batch.put_cf(
            meta,
            KEY_COMPACTED,
            serde_json::to_vec(&header.compacted).map_err(json_err("revision"))?,
        );
        batch.delete_cf(meta, KEY_INSTALLING);
        self.db
            .write_opt(batch, &synced)
            .map_err(Error::rocks("finish snapshot install"))?;
        self.applied.store(
            header.meta.last_log_id.map_or(0, |l| l.index),
            Ordering::SeqCst,
        );
        self.compacted.store(header.compacted, Ordering::SeqCst);
        Ok(())
    }

    fn install_blocking(&self, mut file: std::fs::File) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let tmp = self.snap_dir.join(format!(
            "install-{}.tmp",
            self.recv_seq.fetch_add(1, Ordering::SeqCst)
        ));
        let io = |source| Error::Io {
            path: tmp.display().to_string(),
            source,
        };
        // Keep our own copy: it becomes the current snapshot, and the source a restart
        // re-installs from if we crash half way.
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut out = std::fs::File::create(&tmp).map_err(io)?;
        std::io::copy(&mut file, &mut out).map_err(io)?;
        out.sync_all().map_err(io)?;
        let _guard = self.snap_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Check it is whole before anything is replaced.
        let mut check = snapshot::Reader::open(&tmp)?;
        while check.next_record()?.is_some() {}
        self.publish(&tmp)?;
        self.load_current_snapshot()
    }

    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, std::fs::File)>> {
        let _guard = self.snap_lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.current_snapshot_path();
        if !path.exists() {
            return Ok(None);
        }
        let reader = snapshot::Reader::open(&path)?;
        let file = std::fs::File::open(&path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Some((reader.header.meta, file)))
    }
}

/// Builds a snapshot from a consistent RocksDB snapshot, so applying can go on meanwhile.
#[derive(Debug)]
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let meta = tokio::task::spawn_blocking(move || shared.build_snapshot_blocking())
            .await
            .map_err(|e| snap_err(&e))?
            .map_err(|e| snap_err(&e))?;
        let path = self.shared.current_snapshot_path();
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(&e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let last = self
            .shared
            .meta::<LogId>(KEY_APPLIED)
            .map_err(|e| sm_err(&e))?;
        let membership = self
            .shared
            .meta::<StoredMembership>(KEY_MEMBERSHIP)
            .map_err(|e| sm_err(&e))?
            .unwrap_or_default();
        Ok((last, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let answers: Vec<Answers> = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(req) => req.answers.clone(),
                _ => Answers::default(),
            })
            .collect();
        let (mut responses, batches) =
            self.shared.apply_entries(entries).map_err(|e| sm_err(&e))?;
        for b in batches {
            // No receivers is normal: nobody is watching.
            let _ = self.shared.notify.send(Notice::Applied(Arc::new(b)));
        }
        // Answered here, after the watchers heard of it, rather than through openraft's core
        // and the batcher: two task hand-offs fewer between a write's apply and its client.
        for (answers, response) in answers.iter().zip(responses.iter_mut()) {
            answers.answer(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.shared.snap_dir.join(format!(
            "recv-{}.tmp",
            self.shared.recv_seq.fetch_add(1, Ordering::SeqCst)
        ));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(&e))?;
        // The open handle is all we need; unlinking now means an abandoned transfer leaves
        // nothing behind on disk.
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| snap_err(&e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        snapshot.flush().await.map_err(|e| snap_err(&e))?;
        let file = snapshot.into_std().await;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.install_blocking(file))
            .await
            .map_err(|e| snap_err(&e))?
            .map_err(|e| snap_err(&e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        let _ = self.shared.notify.send(Notice::Reset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let shared = self.shared.clone();
        let current = tokio::task::spawn_blocking(move || shared.current_snapshot())
            .await
            .map_err(|e| snap_err(&e))?
            .map_err(|e| snap_err(&e))?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Txn;

    fn open(dir: &std::path::Path, history_retain: u64) -> StateMachine {
        let db =
            crate::db::open(&dir.join("db"), crate::db::DEFAULT_MEMTABLE_BUDGET).expect("open");
        StateMachine::open(db, &dir.join("snap"), history_retain).expect("sm")
    }

    fn entry(index: u64, txn: Txn) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::new(vec![txn])),
        }
    }

    /// History records are built by hand from the stored JSON texts; readers parse them as
    /// `Event`s, so they must be exactly what serde writes for the event.
    #[test]
    fn a_history_record_is_byte_for_byte_the_event_serde_writes() {
        let key = "/core/ConfigMap/d/a\"b\\c\u{e9}";
        let prev = Stored {
            create: 3,
            modr: 5,
            json: br#"{"metadata":{"name":"a\"b"},"x":[1,2.5,null]}"#.to_vec(),
        };
        let now = Stored {
            create: 3,
            modr: 9,
            json: br#"{"metadata":{"name":"a\"b","resourceVersion":"9"},"z":{}}"#.to_vec(),
        };
        let gone = Stored {
            create: 3,
            modr: 9,
            json: Vec::new(),
        };
        let cases = [
            (EventKind::Put, &now, Some(&prev)),
            (EventKind::Put, &now, None),
            (EventKind::Delete, &gone, Some(&prev)),
        ];
        for (kind, value, prev) in cases {
            let record = Stored::history_record(kind, key, value, prev);
            let expected = Event {
                kind,
                kv: KeyValue {
                    key: key.to_string(),
                    value: match kind {
                        EventKind::Put => serde_json::from_slice(&value.json).expect("json"),
                        EventKind::Delete => serde_json::Value::Null,
                    },
                    create_revision: value.create,
                    mod_revision: value.modr,
                },
                prev: prev.map(|p| p.to_kv(key).expect("prev")),
            };
            let serde = serde_json::to_vec(&expected).expect("serialize");
            assert_eq!(
                String::from_utf8_lossy(&record),
                String::from_utf8_lossy(&serde),
                "{kind:?}"
            );
        }
    }

    /// openraft hands over every entry committed since the last apply at once; each entry
    /// must see the writes of the entries before it in the same call.
    #[test]
    fn an_entry_sees_the_writes_of_the_entries_before_it_in_one_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = open(dir.path(), 100);
        let create = |v: u64| Txn::compare_and_swap("/t/k", 0, serde_json::json!({"v": v}));
        let (responses, _) = sm
            .shared
            .apply_entries(vec![
                entry(11, create(1)),
                entry(12, create(2)),
                entry(
                    13,
                    Txn::compare_and_swap("/t/k", 11, serde_json::json!({"v": 3})),
                ),
            ])
            .expect("apply");
        let succeeded: Vec<bool> = responses
            .iter()
            .map(|r| r.results.first().is_some_and(|t| t.succeeded))
            .collect();
        assert_eq!(succeeded, [true, false, true], "create, create again, swap");
        let (_, kv) = sm.shared.get("/t/k").expect("get");
        let kv = kv.expect("the key exists");
        assert_eq!(
            (kv.value, kv.create_revision, kv.mod_revision),
            (serde_json::json!({"v": 3}), 11, 13)
        );
    }

    /// Applies skip the WAL, so only a flush puts them on disk; a snapshot, after which
    /// openraft purges the log, must not return before that flush.
    #[test]
    fn applies_stay_in_memory_until_a_snapshot_flushes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = open(dir.path(), 100);
        let db = sm.shared.db.clone();
        let wal_bytes = || -> u64 {
            std::fs::read_dir(dir.path().join("db"))
                .expect("read db dir")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        };
        let before = wal_bytes();
        let big = serde_json::json!({"data": "x".repeat(10_000)});
        let entries = (1..=20)
            .map(|i| entry(i, Txn::put(format!("/t/{i}"), big.clone())))
            .collect();
        sm.shared.apply_entries(entries).expect("apply");
        // 200 KB of objects and as much history went to the memtables, none to the WAL.
        assert!(
            wal_bytes() < before + 10_000,
            "the WAL grew from {before} to {} bytes",
            wal_bytes()
        );
        assert!(crate::db::memtable_entries(&db).expect("entries") >= 40);
        sm.shared.build_snapshot_blocking().expect("snapshot");
        assert_eq!(crate::db::memtable_entries(&db).expect("entries"), 0);
        let (_, kv) = sm.shared.get("/t/20").expect("get");
        assert_eq!(kv.expect("written").mod_revision, 20);
    }

    /// A history read stops at the events bound as well as the revisions bound, at a
    /// revision boundary, and the next read goes on from there.
    #[test]
    fn history_reads_are_bounded_by_events_without_splitting_a_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = open(dir.path(), 1000);
        // Revisions 1..=4, with 3 puts each.
        let entries = (1..=4)
            .map(|rev| Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), rev),
                payload: EntryPayload::Normal(Request::new(
                    (0..3)
                        .map(|k| Txn::put(format!("/t/{rev}/{k}"), serde_json::json!({})))
                        .collect(),
                )),
            })
            .collect();
        sm.shared.apply_entries(entries).expect("apply");
        let revs = |b: &[WatchBatch]| b.iter().map(|b| b.revision).collect::<Vec<_>>();
        // 4 events allowed: revision 1 (3 events) and all of revision 2 (3 more).
        let (batches, upto, _) = sm.shared.history(1, 100, 4).expect("history");
        assert_eq!(revs(&batches), [1, 2]);
        assert!(batches.iter().all(|b| b.events.len() == 3));
        assert_eq!(upto, 2);
        let (batches, upto, _) = sm.shared.history(upto + 1, 100, 4).expect("history");
        assert_eq!(revs(&batches), [3, 4]);
        assert_eq!(upto, 4);
        // The revisions bound still holds.
        let (batches, upto, _) = sm.shared.history(1, 1, 1000).expect("history");
        assert_eq!((revs(&batches), upto), (vec![1], 1));
    }
}
