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
    let due = LAST_COLLECT.with(|last| {
        let due = is_due(last.get(), now);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

/// A thread collects on its first park, then once [`COLLECT_EVERY`] has passed since the last.
fn is_due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= COLLECT_EVERY)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_collects_on_its_first_park_then_at_most_once_a_second() {
        let start = Instant::now();
        assert!(is_due(None, start));
        assert!(!is_due(Some(start), start));
        assert!(!is_due(Some(start), start + Duration::from_millis(999)));
        assert!(is_due(Some(start), start + COLLECT_EVERY));
        assert!(is_due(Some(start), start + Duration::from_secs(5)));
    }

    #[test]
    fn a_runtime_built_here_runs_blocking_work_and_collects_without_harm() {
        let rt = build().expect("runtime");
        let sum = rt.block_on(async {
            let mut total = 0u64;
            for i in 0..50u64 {
                // Allocate on the blocking pool and on the workers, with parks in between.
                let v = tokio::task::spawn_blocking(move || vec![i; 1024])
                    .await
                    .expect("blocking task");
                total += v.iter().sum::<u64>();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            total
        });
        assert_eq!(sum, (0..50u64).map(|i| i * 1024).sum::<u64>());
        collect();
    }
}
