//! The Raft log on RocksDB (openraft's `RaftLogStorage`).
//!
//! Durability: an append is written to RocksDB without sync, and openraft is told the entries
//! are on disk only once the WAL is fsynced. Who runs that fsync depends on the cluster:
//! - a member that is the only voter syncs in `append` itself, on the Raft task: it has no
//!   heartbeat to keep up while it waits, and the hand-off to another thread and back cost
//!   about a fifth of a lone write's latency (docs/benchmarks.md, "The lone member syncs
//!   in place"). Writes that arrive meanwhile queue up and go into the next append together;
//! - a member with peers hands the append to one flusher thread, so its Raft task keeps
//!   replicating and heartbeating while the disk works, and a slow fsync cannot cost it the
//!   leadership. Appends that arrive while an fsync runs wait for the next one together, so
//!   concurrent writers share fsyncs instead of queueing one each (group commit).
//!
//! `Member` flips between the two as the membership changes ([`LogStore::sync_in_place`]).
//! The vote and log purges are synced before the call returns.
//!
//! When no append has come for a while, the flusher thread also flushes RocksDB's memtables,
//! so an idle store gives their memory back.
//!
//! The flusher holds the database too, so the last `LogStore` clone joins it when dropped:
//! a detached thread could still be closing RocksDB while the process exits, and RocksDB
//! then aborts on a destroyed mutex ("pthread lock: Invalid argument").

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::db::{CF_LOG_META, CF_LOGS, be, cf, from_be};
use crate::error::{Error, Result};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: Arc<Flusher>,
    /// Set while this member is the only voter: appends are synced in place.
    in_place: Arc<AtomicBool>,
    /// When the last append came; the flusher thread reads it to tell when the store went
    /// idle.
    activity: Arc<Activity>,
    /// The entries appended last, still decoded: see [`Recent`].
    recent: Arc<Mutex<Recent>>,
}

/// The tail of the log, as appended, so reading it back does not go to RocksDB and parse the
/// JSON again: openraft reads every committed entry back through the log reader to apply it
/// (and the leader reads new entries to replicate them), right after `append` had them in
/// hand. That read and parse were about 6% of a busy lone member's CPU.
///
/// Always a suffix of the log (`append`, `truncate` and `purge` keep it so), bounded by
/// [`RECENT_MAX_ENTRIES`] and [`RECENT_MAX_BYTES`], and emptied when the store goes idle, so
/// it holds memory only while writes come.
#[derive(Default)]
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    /// Encoded size of `entries`.
    bytes: usize,
}

const RECENT_MAX_ENTRIES: usize = 64;
const RECENT_MAX_BYTES: usize = 1 << 20;

impl Recent {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, entry: Entry, size: usize) {
        let index = entry.log_id.index;
        // An append at or before the tail replaces what follows (openraft truncates first,
        // but the suffix must hold whatever the order); one after a gap starts afresh.
        match self.last() {
            Some(last) if index <= last => self.drop_from(index),
            Some(last) if index > last + 1 => self.clear(),
            _ => {}
        }
        if size > RECENT_MAX_BYTES {
            // Too big to keep; what is kept must stay contiguous up to the tail.
            self.clear();
            return;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > RECENT_MAX_ENTRIES || self.bytes > RECENT_MAX_BYTES {
            match self.entries.pop_front() {
                Some((_, n)) => self.bytes -= n,
                None => break,
            }
        }
    }

    /// Drops the entries at `index` and after.
    fn drop_from(&mut self, index: u64) {
        while self.last().is_some_and(|l| l >= index) {
            if let Some((_, n)) = self.entries.pop_back() {
                self.bytes -= n;
            }
        }
    }

    /// Drops the entries at `index` and before.
    fn drop_through(&mut self, index: u64) {
        while self.first().is_some_and(|f| f <= index) {
            if let Some((_, n)) = self.entries.pop_front() {
                self.bytes -= n;
            }
        }
    }

    fn clear(&mut self) {
        self.entries = VecDeque::new();
        self.bytes = 0;
    }

    /// Entries `start..end`, if all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let (first, last) = (self.first()?, self.last()?);
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

fn lock_recent(recent: &Mutex<Recent>) -> std::sync::MutexGuard<'_, Recent> {
    // Every change to `Recent` keeps it a valid suffix between statements that can panic
    // (none of them can, short of allocation failure), so a poisoned lock is still sound.
    recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The time of the last append, as nanoseconds after the store opened (0: none yet), in an
/// atomic so `append` can stamp it without a lock or a message.
struct Activity {
    opened: Instant,
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        // Saturates after 584 years.
        u64::try_from(self.opened.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// How long ago `stamp` was.
    fn since(&self, stamp: u64) -> Duration {
        Duration::from_nanos(self.now().saturating_sub(stamp))
    }
}

/// The flusher thread's inbox and handle; dropping it (with the last `LogStore`) closes the
/// inbox, which ends the thread's loop, and waits for the thread to let go of the database.
struct Flusher {
    inbox: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.inbox = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the log flusher panicked");
        }
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

fn read_logs_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::read_logs(AnyError::new(e)).into()
}

fn write_logs_err(e: &(impl std::error::Error + 'static)) -> StorageError {
    StorageIOError::write_logs(AnyError::new(e)).into()
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> Self {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flush_db = db.clone();
        let activity = Arc::new(Activity::new());
        let seen = activity.clone();
        let recent = Arc::new(Mutex::new(Recent::default()));
        let idle_recent = recent.clone();
        // A plain thread, not a tokio task: fsync blocks, and for a member with peers it must
        // not take a runtime worker away from the Raft core. It ends when the last LogStore
        // clone is dropped.
        let flusher = match std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(flush_db, rx, &seen, &idle_recent))
        {
            Ok(thread) => Flusher {
                inbox: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                // Appends then sync inline (see `append`): slower, never less durable.
                tracing::error!("cannot start the log flusher: {e}");
                Flusher {
                    inbox: None,
                    thread: None,
                }
            }
        };
        LogStore {
            db,
            flusher: Arc::new(flusher),
            in_place: Arc::new(AtomicBool::new(false)),
            activity,
            recent,
        }
    }

    /// The switch between syncing appends in place (set) and on the flusher thread (clear).
    /// Either way an append is reported only once it is durable; the switch only moves the
    /// fsync, so it may lag a membership change without harm.
    pub fn sync_in_place(&self) -> Arc<AtomicBool> {
        self.in_place.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        let cf = cf(&self.db, CF_LOG_META)?;
        match self
            .db
            .get_cf(cf, key)
            .map_err(Error::rocks("read log meta"))?
        {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    what: "log meta",
                    reason: e.to_string(),
                }),
        }
    }

    fn put_meta_synced<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<()> {
        let cf = cf(&self.db, CF_LOG_META)?;
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Corrupt {
            what: "log meta",
            reason: e.to_string(),
        })?;
        self.db
            .put_cf_opt(cf, key, bytes, &synced())
            .map_err(Error::rocks("write log meta"))
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>> {
        let cf = cf(&self.db, CF_LOGS)?;
        let mut it = self.db.iterator_cf(cf, IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(Error::rocks("read log")(e)),
            Some(Ok((_, value))) => {
                let entry: Entry = serde_json::from_slice(&value).map_err(|e| Error::Corrupt {
                    what: "log entry",
                    reason: e.to_string(),
                })?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

/// With no append for this long the store counts as idle, and its memtables are flushed if
/// they hold [`IDLE_FLUSH_MIN_ENTRIES`] (see [`crate::db::flush_memtables`]). Well above the
/// gaps inside a burst of work (a deploy's writes come tens of milliseconds apart).
const IDLE_FLUSH_AFTER: Duration = Duration::from_secs(2);
/// Fewer memtable entries than this are not worth an idle flush: the memory is small, and
/// each flush leaves a small table file per family for compaction to merge. A node heartbeat
/// writes about five entries, so an idle one-node cluster flushes about twice an hour; one
/// deploy of 10 pods writes hundreds.
const IDLE_FLUSH_MIN_ENTRIES: u64 = 1_000;

fn flusher(
    db: Arc<DB>,
    rx: mpsc::Receiver<LogFlushed<TypeConfig>>,
    activity: &Activity,
    recent: &Mutex<Recent>,
) {
    // The last append an idle check has covered. Appends synced in place never reach this
    // thread, so the stamp, not the inbox, tells when the store went idle.
    let mut checked = 0;
    loop {
        let last = activity.last();
        // Wake when the last append is IDLE_FLUSH_AFTER old, or after a whole period if
        // there is nothing new to check.
        let wait = if last > checked {
            IDLE_FLUSH_AFTER.saturating_sub(activity.since(last))
        } else {
            IDLE_FLUSH_AFTER
        };
        let first = match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let last = activity.last();
                if last > checked && activity.since(last) >= IDLE_FLUSH_AFTER {
                    checked = last;
                    // Everything appended has long been applied and replicated; a reader
                    // that still wants an entry finds it in RocksDB.
                    lock_recent(recent).clear();
                    flush_if_many(&db);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let result = db.flush_wal(true);
        for cb in waiting {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            cb.log_io_completed(r);
        }
    }
}

/// Flushes the memtables if they hold at least [`IDLE_FLUSH_MIN_ENTRIES`].
fn flush_if_many(db: &DB) {
    let entries = match crate::db::memtable_entries(db) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "idle: could not count the memtables' entries");
            return;
        }
    };
    if entries < IDLE_FLUSH_MIN_ENTRIES {
        return;
    }
    let held = crate::db::memtable_bytes(db).unwrap_or(0);
    // Not waiting: RocksDB's background jobs write the tables, and this thread is free for
    // the next append's fsync at once. Waiting here would hold the first writes after a pause
    // behind the flush (one `coxswain-bench store` run that waited had a 234 ms p99 at a load
    // point that followed a pause).
    match crate::db::flush_memtables(db, false) {
        Ok(()) => tracing::debug!(entries, held, "idle: memtables flushed"),
        Err(e) => tracing::warn!(error = %e, "idle: could not flush the memtables"),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&n) => Some(n.saturating_add(1)),
            Bound::Excluded(&n) => Some(n),
            Bound::Unbounded => None,
        };
        if let Some(end) = end
            && let Some(entries) = lock_recent(&self.recent).get(start, end)
        {
            return Ok(entries);
        }
        let cf = cf(&self.db, CF_LOGS).map_err(|e| read_logs_err(&e))?;
        let mut out = Vec::new();
        let start_key = be(start);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start_key, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| read_logs_err(&e))?;
            let index = from_be(&key).map_err(|e| read_logs_err(&e))?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = serde_json::from_slice(&value).map_err(|e| read_logs_err(&e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self
            .get_meta(KEY_LAST_PURGED)
            .map_err(|e| read_logs_err(&e))?;
        // After a crash between the two writes of `purge`, entries at or below the purge
        // point may still be on disk; the purge point wins.
        let last = match (
            self.last_entry_log_id().map_err(|e| read_logs_err(&e))?,
            last_purged,
        ) {
            (Some(e), Some(p)) if e.index <= p.index => Some(p),
            (e, p) => e.or(p),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta_synced(KEY_VOTE, vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: openraft treats the committed id as a hint that lets a restarted member
        // re-apply what it already knew was committed before it hears from a leader.
        let cf = cf(&self.db, CF_LOG_META).map_err(|e| write_logs_err(&e))?;
        let bytes = serde_json::to_vec(&committed).map_err(|e| write_logs_err(&e))?;
        self.db
            .put_cf(cf, KEY_COMMITTED, bytes)
            .map_err(|e| write_logs_err(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(KEY_COMMITTED)
            .map_err(|e| read_logs_err(&e))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = cf(&self.db, CF_LOGS).map_err(|e| write_logs_err(&e))?;
        let mut batch = WriteBatch::default();
        let mut written = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| write_logs_err(&e))?;
            batch.put_cf(cf, be(entry.log_id.index), &bytes);
            written.push((entry, bytes.len()));
        }
        self.db.write(batch).map_err(|e| write_logs_err(&e))?;
        {
            let mut recent = lock_recent(&self.recent);
            for (entry, size) in written {
                recent.push(entry, size);
            }
        }
        self.activity.touch();
        // Durable only once the WAL is synced: here for a lone member, else by the flusher,
        // which calls back then.
        let unsent = match &self.flusher.inbox {
            Some(_) if self.in_place.load(Ordering::Relaxed) => Some(callback),
            Some(inbox) => inbox.send(callback).err().map(|mpsc::SendError(cb)| cb),
            None => Some(callback),
        };
        if let Some(cb) = unsent {
            // A lone member, or the flusher is gone (it could not start, or it died): sync
            // here rather than lie.
            let r = self
                .db
                .flush_wal(true)
                .map_err(|e| std::io::Error::other(e.to_string()));
            cb.log_io_completed(r);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = cf(&self.db, CF_LOGS).map_err(|e| write_logs_err(&e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, be(log_id.index), be(u64::MAX));
        // Dropped first: from here on a reader must not see the entries being removed.
        lock_recent(&self.recent).drop_from(log_id.index);
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| write_logs_err(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point is recorded first: if we crash between the two writes, the log
        // state still says the entries are gone, which is what openraft already decided.
        self.put_meta_synced(KEY_LAST_PURGED, &log_id)
            .map_err(|e| write_logs_err(&e))?;
        lock_recent(&self.recent).drop_through(log_id.index);
        let cf = cf(&self.db, CF_LOGS).map_err(|e| write_logs_err(&e))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, be(0), be(log_id.index.saturating_add(1)));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| write_logs_err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn indexes(r: &Recent, start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
        r.get(start, end).map(|v| {
            v.iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn recent_entries_are_served_only_when_the_whole_range_is_held() {
        let mut r = Recent::default();
        for i in 1..=5 {
            r.push(entry(1, i), 10);
        }
        assert_eq!(indexes(&r, 2, 4), Some(vec![(1, 2), (1, 3)]));
        assert_eq!(indexes(&r, 1, 6).map(|v| v.len()), Some(5));
        assert_eq!(indexes(&r, 4, 7), None, "past the tail");
        r.drop_through(2);
        assert_eq!(indexes(&r, 2, 4), None, "purged: read from RocksDB");
        assert_eq!(indexes(&r, 3, 4), Some(vec![(1, 3)]));
    }

    #[test]
    fn recent_entries_stay_a_suffix_of_the_log() {
        let mut r = Recent::default();
        for i in 1..=5 {
            r.push(entry(1, i), 10);
        }
        // A new leader's entry 4 replaces 4 and 5.
        r.push(entry(2, 4), 10);
        assert_eq!(indexes(&r, 3, 5), Some(vec![(1, 3), (2, 4)]));
        assert_eq!(indexes(&r, 5, 6), None);
        r.drop_from(4);
        assert_eq!(r.last(), Some(3));
        // After a gap (a snapshot installed), nothing older is kept.
        r.push(entry(2, 10), 10);
        assert_eq!(r.first(), Some(10));
        assert_eq!(r.bytes, 10);
    }

    #[test]
    fn recent_entries_are_bounded_by_count_and_bytes() {
        let mut r = Recent::default();
        for i in 1..=(RECENT_MAX_ENTRIES as u64 + 10) {
            r.push(entry(1, i), 1);
        }
        assert_eq!(r.entries.len(), RECENT_MAX_ENTRIES);
        assert_eq!(r.first(), Some(11));
        r.push(
            entry(1, RECENT_MAX_ENTRIES as u64 + 11),
            RECENT_MAX_BYTES - 5,
        );
        assert!(r.bytes <= RECENT_MAX_BYTES);
        assert_eq!(r.last(), Some(RECENT_MAX_ENTRIES as u64 + 11));
        // One entry over the byte bound is not kept, and nothing before it either.
        r.push(
            entry(1, RECENT_MAX_ENTRIES as u64 + 12),
            RECENT_MAX_BYTES + 1,
        );
        assert!(r.entries.is_empty());
        assert_eq!(r.bytes, 0);
    }

    /// Appends synced in place never reach the flusher's inbox; the time stamp of the last
    /// append alone must still bring the idle flush that gives the memtables' memory back.
    #[test]
    fn appends_synced_in_place_are_followed_by_the_idle_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::db::open(dir.path(), crate::db::DEFAULT_MEMTABLE_BUDGET).expect("open");
        let logs = cf(&db, CF_LOGS).expect("logs");
        for i in 0..IDLE_FLUSH_MIN_ENTRIES {
            db.put_cf(logs, be(i), b"entry").expect("put");
        }
        let activity = Arc::new(Activity::new());
        let (inbox, rx) = mpsc::channel();
        let thread = {
            let (db, activity) = (db.clone(), activity.clone());
            std::thread::spawn(move || flusher(db, rx, &activity, &Mutex::default()))
        };
        activity.touch();
        let appended = Instant::now();
        while crate::db::memtable_entries(&db).expect("entries") > 0 {
            assert!(
                appended.elapsed() < IDLE_FLUSH_AFTER * 3,
                "no idle flush within {:?} of the last append",
                IDLE_FLUSH_AFTER * 3
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Not before the store was idle for the whole period.
        assert!(appended.elapsed() >= IDLE_FLUSH_AFTER);
        drop(inbox);
        thread.join().expect("flusher");
    }
}
