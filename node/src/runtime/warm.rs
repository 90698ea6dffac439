//! Warm sandboxes: pod sandboxes made before any pod asks for one, so that starting a pod
//! does not wait for its namespaces, its veth and its address.
//!
//! Making a sandbox is a fork and an `unshare` in the launcher, an address from IPAM and a
//! veth pair over netlink: about two thirds of a pod's start on a small machine. None of it
//! depends on the pod, except the hostname and the names the pod's resources are filed under.
//! So a background thread keeps a few sandboxes ready, and a pod that wants the common kind
//! (its own network, no shared PID namespace) takes one and only renames it: its hostname is
//! set, its address is handed to the pod in IPAM, and its holder moves into the pod's cgroup
//! (see `LinuxRuntime::run_sandbox`). When none is ready the pod's sandbox is made the cold
//! way, so a burst larger than the pool costs what it always did.
//!
//! A warm sandbox belongs to no pod, so nothing of it may outlive the agent: its holder dies
//! with the launcher (see `launcher::warm_holder`), its veth dies with its network
//! namespace, and its address, filed under a `warm-` owner, is freed the next time a runtime
//! opens the state dir. A runtime that is dropped, or shut down, removes its warm sandboxes
//! itself.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::background::Background;
use crate::error::Result;

/// The IPAM owner (and hostname) prefix of a sandbox no pod has taken yet.
pub const OWNER_PREFIX: &str = "warm-";

/// The longest the refill thread waits after failures before trying again.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// One sandbox made ahead of any pod.
#[derive(Debug, Clone)]
pub struct Warm {
    /// Its IPAM owner and hostname until a pod takes it: [`OWNER_PREFIX`], the agent's pid
    /// and a sequence number, so that no two are alike on one host.
    pub owner: String,
    /// The holder of its namespaces.
    pub pid: u32,
    /// The holder's start time, so a reused pid is never mistaken for it.
    pub start_ticks: u64,
    pub ip: Ipv4Addr,
    /// The host end of its veth.
    pub host_if: String,
}

/// How the pool has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmStats {
    /// How many the pool keeps ready.
    pub target: usize,
    /// How many are ready now.
    pub ready: usize,
    /// Pods that took a warm sandbox.
    pub taken: u64,
    /// Pods that found none ready and had theirs made cold.
    pub missed: u64,
    /// Warm sandboxes made.
    pub made: u64,
    /// Attempts to make one that failed.
    pub failed: u64,
}

/// Makes one warm sandbox.
pub type Make = Box<dyn Fn() -> Result<Warm> + Send + Sync>;
/// Removes one warm sandbox (its holder, veth and address), as far as it can.
pub type Destroy = Box<dyn Fn(&Warm) + Send + Sync>;

/// The pool and its refill thread.
pub struct WarmPool {
    shared: Arc<Shared>,
    thread: Background,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    target: usize,
    make: Make,
    destroy: Destroy,
    state: Mutex<State>,
    /// Signalled whenever `state` changes: a sandbox taken or made, or a stop asked for.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Warm>,
    stopping: bool,
    stats: WarmStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a queue that is still a valid queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WarmPool {
    /// Starts a thread that keeps `target` sandboxes ready, made with `make`.
    pub fn start(target: usize, make: Make, destroy: Destroy) -> Result<WarmPool> {
        let shared = Arc::new(Shared {
            target,
            make,
            destroy,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = Background::spawn("coxswain-warm", "warm sandbox", move || refill(&worker))?;
        Ok(WarmPool { shared, thread })
    }

    /// Takes the oldest ready sandbox, if there is one, and has the thread make another.
    /// The caller checks that its holder still lives (see [`WarmPool::discard`]).
    pub fn take(&self) -> Option<Warm> {
        let mut state = self.shared.lock();
        let warm = state.ready.pop_front();
        match warm {
            Some(_) => state.stats.taken += 1,
            None => state.stats.missed += 1,
        }
        self.shared.changed.notify_all();
        warm
    }

    /// Removes a sandbox that was taken but could not be used.
    pub fn discard(&self, warm: &Warm) {
        (self.shared.destroy)(warm);
    }

    pub fn stats(&self) -> WarmStats {
        let state = self.shared.lock();
        WarmStats {
            target: self.shared.target,
            ready: state.ready.len(),
            ..state.stats
        }
    }

    /// The holders of the sandboxes ready now.
    pub fn pids(&self) -> Vec<u32> {
        self.shared.lock().ready.iter().map(|w| w.pid).collect()
    }

    /// Waits until the pool is full, for at most `timeout`; whether it is.
    pub fn wait_full(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.ready.len() < self.shared.target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Stops the thread and removes every ready sandbox. Idempotent.
    pub fn stop(&self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        self.thread.join();
        let left: Vec<Warm> = self.shared.lock().ready.drain(..).collect();
        for warm in &left {
            (self.shared.destroy)(warm);
        }
        if !left.is_empty() {
            tracing::debug!(count = left.len(), "warm sandboxes removed");
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The refill thread: makes sandboxes while fewer than `target` are ready, and backs off
/// (100 ms doubling to [`MAX_RETRY`]) while making them fails, so a broken bridge or a full
/// pod CIDR costs a log line now and then rather than a busy core.
fn refill(shared: &Shared) {
    let mut failures: u32 = 0;
    loop {
        {
            let mut state = shared.lock();
            while !state.stopping && state.ready.len() >= shared.target {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if state.stopping {
                return;
            }
        }
        let made = (shared.make)();
        let mut state = shared.lock();
        match made {
            Ok(warm) => {
                failures = 0;
                state.stats.made += 1;
                if state.stopping {
                    drop(state);
                    (shared.destroy)(&warm);
                    return;
                }
                tracing::debug!(owner = %warm.owner, pid = warm.pid, ip = %warm.ip, "warm sandbox ready");
                state.ready.push_back(warm);
                shared.changed.notify_all();
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                state.stats.failed += 1;
                let wait = Duration::from_millis(100)
                    .saturating_mul(1 << failures.saturating_sub(1).min(7))
                    .min(MAX_RETRY);
                tracing::warn!(error = %e, retry_in = ?wait, "could not make a warm sandbox");
                let deadline = Instant::now() + wait;
                while !state.stopping {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = match shared.changed.wait_timeout(state, left) {
                        Ok((s, _)) => s,
                        Err(p) => p.into_inner().0,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn counting_pool(target: usize, fail_first: u32) -> (WarmPool, Arc<AtomicU32>) {
        let destroyed = Arc::new(AtomicU32::new(0));
        let seq = Arc::new(AtomicU32::new(0));
        let d = Arc::clone(&destroyed);
        let pool = WarmPool::start(
            target,
            Box::new(move || {
                let n = seq.fetch_add(1, Ordering::SeqCst);
                if n < fail_first {
                    return Err(Error::Launch {
                        reason: "no launcher".into(),
                    });
                }
                Ok(Warm {
                    owner: format!("{OWNER_PREFIX}test-{n}"),
                    pid: n,
                    start_ticks: 0,
                    ip: Ipv4Addr::new(10, 0, 0, 2),
                    host_if: format!("cxw{n}"),
                })
            }),
            Box::new(move |_| {
                d.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        (pool, destroyed)
    }

    #[test]
    fn the_pool_fills_and_refills_after_a_take() {
        let (pool, _) = counting_pool(3, 0);
        assert!(pool.wait_full(Duration::from_secs(5)));
        assert_eq!(pool.stats().ready, 3);
        let first = pool.take().unwrap();
        assert_eq!(first.owner, format!("{OWNER_PREFIX}test-0"), "oldest first");
        assert!(pool.wait_full(Duration::from_secs(5)));
        let stats = pool.stats();
        assert_eq!((stats.ready, stats.taken, stats.made), (3, 1, 4));
    }

    #[test]
    fn stopping_destroys_what_is_ready_and_nothing_taken() {
        let (pool, destroyed) = counting_pool(2, 0);
        assert!(pool.wait_full(Duration::from_secs(5)));
        let _taken = pool.take().unwrap();
        assert!(pool.wait_full(Duration::from_secs(5)));
        pool.stop();
        assert_eq!(destroyed.load(Ordering::SeqCst), 2);
        assert_eq!(pool.stats().ready, 0);
        pool.stop();
        assert_eq!(
            destroyed.load(Ordering::SeqCst),
            2,
            "a second stop does nothing"
        );
    }

    #[test]
    fn failures_are_counted_and_retried() {
        let (pool, _) = counting_pool(1, 2);
        // Two failures back off 100 ms and 200 ms before the third attempt succeeds.
        assert!(pool.wait_full(Duration::from_secs(5)));
        let stats = pool.stats();
        assert_eq!((stats.failed, stats.made), (2, 1));
    }

    #[test]
    fn an_empty_pool_counts_a_miss() {
        let (pool, _) = counting_pool(0, 0);
        assert!(pool.take().is_none());
        assert_eq!(pool.stats().missed, 1);
    }
}
