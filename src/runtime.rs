//! The async runtime of the long-running subcommands (`server`, `agent`, `up`), set up to give
//! memory back when the process goes quiet.
//!
//! Two things kept an idle `coxswain up` at about twice the memory it started with after a few
//! deploys (docs/benchmarks.md, "Idle memory"):
//! - tokio's blocking pool keeps a thread for 10 s after its last task, and it wakes its idle
//!   threads in turn, so light periodic work (probes, summaries) kept every thread a burst ever
//!   made alive; mimalloc gives each thread its own heap, whose free pages stay with it;
//! - mimalloc returns free pages to the OS when a thread allocates or frees again, which an idle
//!   worker does not do.

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long an idle blocking-pool thread lives. Starting a thread costs tens of microseconds,
/// far below anything the pool runs (RocksDB writes, Git, cgroup removal, probes).
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How often at most a worker thread hands its free memory back as it goes idle.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

pub fn build() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .on_thread_park(collect_when_due)
        .build()
        .context("starting the async runtime")
}

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called by a worker thread each time it is about to sleep. Busy workers park many times a
/// second, so the collection is rate-limited per thread.
fn collect_when_due() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        collect();
    }
}

/// Frees this thread's empty mimalloc pages and returns every free page of the process's
/// arenas to the OS now (the forced form skips mimalloc's purge delay, which would otherwise
/// only run out when some thread next allocates).
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: mi_collect has no preconditions: it may be called from any thread at any time,
    // and only touches mimalloc's own bookkeeping and free memory.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
