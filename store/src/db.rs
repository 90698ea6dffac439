//! One RocksDB per member, shared by the log store and the state machine, each in its own
//! column families. All integer keys are big-endian so RocksDB's byte order is numeric order.

use std::path::Path;
use std::sync::{Arc, Once, OnceLock};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, FlushOptions, Options};

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

/// The default memtable budget for all column families together, for a store embedded in a
/// process that does more (`coxswain up`), whose idle memory counts. RocksDB's default is
/// 64 MiB per family; five of those would be most of the memory the store may use. A full
/// budget flushes the largest family, so a small one costs more, smaller flushes: under
/// heavy writes the disk then carries about 4.5 KB per 256-byte put (flushes and
/// compactions), against 3.4 KB with 32 MiB (docs/benchmarks.md), which is why a dedicated
/// `coxswain server` takes a larger one. A family's own memtable is half the budget.
pub const DEFAULT_MEMTABLE_BUDGET: usize = 8 << 20;
/// One block cache for all families. Without it each family's table factory makes its own
/// 32 MiB cache, and reads of flushed data can fill all five: up to 160 MiB kept while idle.
/// Recent objects are read from the memtables, so a small cache loses little.
const BLOCK_CACHE: usize = 8 << 20;

/// Bits per key of the object family's bloom filter; see `open`.
const KV_FILTER_BITS_PER_KEY: f64 = 10.0;

/// Set by a binary that took RocksDB's C++ static constructors out of the loader's list.
static DEFERRED_STATICS: OnceLock<fn()> = OnceLock::new();
static STATICS_BUILT: Once = Once::new();

/// For a binary whose link moved RocksDB's C++ static constructors out of `.init_array`,
/// so that its processes that never open a store skip them (the coxswain binary does, see
/// its `build.rs`): `run` must run them, and [`open`] calls it once, before RocksDB is first
/// used. Call it before any store is opened; only the first call counts.
pub fn defer_rocksdb_statics(run: fn()) {
    // A second call would name the same constructors; ignoring it is right.
    let _ = DEFERRED_STATICS.set(run);
}

/// Opens (or creates) the database under `dir`, with `memtable_budget` bytes of memtables for
/// all families together.
pub fn open(dir: &Path, memtable_budget: usize) -> Result<Arc<DB>> {
    STATICS_BUILT.call_once(|| {
        if let Some(run) = DEFERRED_STATICS.get() {
            run();
        }
    });
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_db_write_buffer_size(memtable_budget);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(3);
    // fsyncs are ours to decide (see log_store.rs); these keep RocksDB from adding more.
    opts.set_use_fsync(false);
    // The state machine writes without the WAL (see `state_machine.rs`): its three families
    // must then reach the disk together, or a crash could leave objects newer than the
    // history or the applied id beside them.
    opts.set_atomic_flush(true);
    let cache = Cache::new_lru_cache(BLOCK_CACHE);
    let cf_opts = |name: &str| {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        if name == CF_KV {
            // Every put reads the object's previous version (its create revision and the
            // watch event's `prev`), so under load most reads are of keys in older table
            // files. Without a filter each level-0 file whose key range covers the key is
            // searched, index and data block, to find it absent: that search was a sixth of
            // a busy member's CPU (docs/benchmarks.md). Ten bits per key cost about 1.2 bytes
            // of memory per object and skip all but about one percent of those searches.
            // The other families are only scanned in order, where a filter does nothing.
            table.set_bloom_filter(KV_FILTER_BITS_PER_KEY, false);
        }
        let mut o = Options::default();
        o.set_write_buffer_size(memtable_budget / 2);
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

/// The memory the memtables of every family have allocated together, immutable ones waiting
/// to flush included. The first write to an empty memtable allocates a whole arena block
/// (about 1.5 MiB for the five families here), of which only the pages written are resident,
/// so this says little about a small memtable's real footprint.
pub fn memtable_bytes(db: &DB) -> Result<u64> {
    let mut held = 0u64;
    for name in CFS {
        held += db
            .property_int_value_cf(cf(db, name)?, "rocksdb.cur-size-all-mem-tables")
            .map_err(Error::rocks("read memtable size"))?
            .unwrap_or(0);
    }
    Ok(held)
}

/// How many entries the memtables of every family hold together, immutable ones included.
/// A flush starts them at zero again.
pub fn memtable_entries(db: &DB) -> Result<u64> {
    let mut entries = 0u64;
    for name in CFS {
        let family = cf(db, name)?;
        for property in [
            "rocksdb.num-entries-active-mem-table",
            "rocksdb.num-entries-imm-mem-tables",
        ] {
            entries += db
                .property_int_value_cf(family, property)
                .map_err(Error::rocks("read memtable entries"))?
                .unwrap_or(0);
        }
    }
    Ok(entries)
}

/// Flushes every family's memtables to table files; with `wait`, returns once they are
/// written, otherwise once RocksDB's background jobs have them.
///
/// The log flusher calls it once the store has been idle for a moment and the memtables have
/// grown: they only shrink when they flush, and with the 8 MiB budget an idle `coxswain up`
/// kept about 7 MiB of them after a few deploys (heaptrack, docs/benchmarks.md). Under load
/// the budget still decides when they flush.
pub fn flush_memtables(db: &DB, wait: bool) -> Result<()> {
    flush(db, &CFS, wait, "flush memtables")
}

/// Flushes the state machine's three families in one atomic flush and waits: what the
/// state machine has applied is then on disk without the WAL's help.
pub fn flush_state_machine(db: &DB) -> Result<()> {
    flush(
        db,
        &[CF_KV, CF_HISTORY, CF_SM_META],
        true,
        "flush the state machine",
    )
}

/// One call for all of `names`: with `atomic_flush` a call is one atomic flush, and the
/// state machine's families must never reach the disk one without the others.
fn flush(db: &DB, names: &[&'static str], wait: bool, what: &'static str) -> Result<()> {
    let families = names
        .iter()
        .map(|name| cf(db, name))
        .collect::<Result<Vec<_>>>()?;
    let mut options = FlushOptions::default();
    options.set_wait(wait);
    db.flush_cfs_opt(&families, &options)
        .map_err(Error::rocks(what))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The options RocksDB runs with, from the OPTIONS-* file it writes beside a store
    /// opened with `memtable_budget`.
    fn options_file(memtable_budget: usize) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path(), memtable_budget).expect("open"));
        std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("OPTIONS-"))
            .map(|e| std::fs::read_to_string(e.path()).expect("read OPTIONS"))
            .last()
            .expect("an OPTIONS file")
    }

    #[test]
    fn the_memtable_budget_reaches_rocksdb_with_half_of_it_per_family() {
        let options = options_file(32 << 20);
        assert!(
            options.contains("db_write_buffer_size=33554432"),
            "{options}"
        );
        let per_family = options.matches("\n  write_buffer_size=16777216").count();
        // RocksDB's own `default` family keeps its 64 MiB default; it holds nothing.
        assert_eq!(per_family, CFS.len(), "{options}");
    }

    #[test]
    fn only_the_object_family_has_a_bloom_filter() {
        let options = options_file(DEFAULT_MEMTABLE_BUDGET);
        // Each family's table options are a section `[TableOptions/BlockBasedTable "NAME"]`.
        let mut filters = Vec::new();
        for section in options.split("[TableOptions/BlockBasedTable \"").skip(1) {
            let name = section.split('"').next().expect("a family name");
            let policy = section
                .lines()
                .find_map(|l| l.trim().strip_prefix("filter_policy="))
                .unwrap_or("");
            filters.push((name.to_string(), policy.to_string()));
        }
        assert_eq!(filters.len(), CFS.len() + 1, "{options}");
        for (name, policy) in filters {
            if name == CF_KV {
                assert!(
                    policy.contains("bloomfilter"),
                    "{name}: {policy:?}\n{options}"
                );
            } else {
                assert_eq!(policy, "nullptr", "{name}");
            }
        }
    }

    #[test]
    fn a_flush_empties_the_memtables_and_the_data_stays_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path(), DEFAULT_MEMTABLE_BUDGET).expect("open");
        let empty = memtable_bytes(&db).expect("size");
        let kv = cf(&db, CF_KV).expect("kv");
        let value = vec![7u8; 1024];
        for i in 0..1024u64 {
            db.put_cf(kv, be(i), &value).expect("put");
        }
        assert_eq!(memtable_entries(&db).expect("entries"), 1024);
        let full = memtable_bytes(&db).expect("size");
        assert!(
            full >= empty + (1 << 20),
            "memtables hold {full} bytes, {empty} empty"
        );
        flush_memtables(&db, true).expect("flush");
        assert_eq!(memtable_entries(&db).expect("entries"), 0);
        let after = memtable_bytes(&db).expect("size");
        assert!(
            after <= empty,
            "memtables hold {after} bytes after the flush, {empty} empty"
        );
        for i in [0u64, 511, 1023] {
            assert_eq!(
                db.get_cf(kv, be(i)).expect("get").as_deref(),
                Some(&value[..])
            );
        }
    }
}
