//! One RocksDB per member, shared by the log store and the state machine, each in its own
//! column families. All integer keys are big-endian so RocksDB's byte order is numeric order.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options};

use crate::error::{Error, Result};

/// Raft log entries, keyed by index.
pub const CF_LOGS: &str = "logs";
/// The log's own records: vote, last purged log id, committed log id.
pub const CF_LOG_META: &str = "log_meta";
/// Current objects, keyed by store key.
pub const CF_KV: &str = "kv";
/// Change history for watches, keyed by (revision, sequence in the revision).
pub const CF_HISTORY: &str = "history";
/// The state machine's own records: last applied log id, membership, compaction point.
pub const CF_SM_META: &str = "sm_meta";

const CFS: [&str; 5] = [CF_LOGS, CF_LOG_META, CF_KV, CF_HISTORY, CF_SM_META];

/// The memtable budget for all column families together. RocksDB's default is 64 MiB per
/// family; five of those would be most of the memory the store may use (the target is well
/// under etcd's footprint). A full budget flushes the largest family, so a small one costs
/// more, smaller flushes, which the two background jobs keep up with.
const MEMTABLE_BUDGET: usize = 8 << 20;
/// One family's memtable before it is flushed on its own.
const MEMTABLE_PER_FAMILY: usize = 4 << 20;
/// One block cache for all families. Without it each family's table factory makes its own
/// 32 MiB cache, and reads of flushed data can fill all five: up to 160 MiB kept while idle.
/// Recent objects are read from the memtables, so a small cache loses little.
const BLOCK_CACHE: usize = 8 << 20;

/// Opens (or creates) the database under `dir`.
pub fn open(dir: &Path) -> Result<Arc<DB>> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(3);
    // fsyncs are ours to decide (see log_store.rs); these keep RocksDB from adding more.
    opts.set_use_fsync(false);
    let cache = Cache::new_lru_cache(BLOCK_CACHE);
    let cf_opts = |_: &str| {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut o = Options::default();
        o.set_write_buffer_size(MEMTABLE_PER_FAMILY);
        o.set_block_based_table_factory(&table);
        o
    };
    let cfs = CFS
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, cf_opts(name)));
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(Error::rocks("open"))?;
    Ok(Arc::new(db))
}

pub fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or(Error::Corrupt {
        what: "database",
        reason: format!("column family {name} is missing"),
    })
}

pub fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn from_be(bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::Corrupt {
            what: "key",
            reason: format!("expected 8 bytes, got {}", bytes.len()),
        })?;
    Ok(u64::from_be_bytes(arr))
}
