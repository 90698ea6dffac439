//! Runs RocksDB's C++ static constructors, which `src/rocksdb-statics.ld` took out of the
//! dynamic loader's list so that processes that never open RocksDB (the agent, container
//! launchers, `get`) do not build RocksDB's option tables and names at every start (see
//! docs/benchmarks.md, "RocksDB's static constructors, deferred"). The store calls [`run`]
//! once, before it first opens RocksDB, through `coxswain_store::defer_rocksdb_statics`.

/// A C++ static constructor, as `.init_array` holds it.
type Constructor = unsafe extern "C" fn();

// The bounds of the linker script's section: the constructors' addresses, in the order the
// loader would have run them.
#[allow(unsafe_code)]
unsafe extern "C" {
    static __coxswain_rocksdb_init_start: [Constructor; 0];
    static __coxswain_rocksdb_init_end: [Constructor; 0];
}

/// Runs every deferred constructor once; the store's `Once` keeps it to one call.
#[allow(unsafe_code)]
pub fn run() {
    // SAFETY: the two symbols bound the section the linker script fills with whole
    // `.init_array` entries (pointers to `void(void)` functions), so every pointer between
    // them is a constructor, and none is run twice: the store calls this once (a
    // `std::sync::Once`) and the loader never sees the section. They run before any RocksDB
    // code, as the loader would have run them, since the store calls this before it opens
    // RocksDB, and libstdc++'s own constructors, which they rely on, ran before main.
    unsafe {
        let start = (&raw const __coxswain_rocksdb_init_start).cast::<Constructor>();
        let end = (&raw const __coxswain_rocksdb_init_end).cast::<Constructor>();
        let count = usize::try_from(end.offset_from(start)).unwrap_or(0);
        for i in 0..count {
            (*start.add(i))();
        }
    }
}
