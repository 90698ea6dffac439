//! The work queue of one controller, with client-go's semantics:
//!
//! - a key is queued at most once however often it is added (`dirty`);
//! - a key handed to a worker is `processing` until [`WorkQueue::done`]; adding it meanwhile
//!   marks it dirty only, and `done` queues it again, so one key is never reconciled by two
//!   workers at once and a change seen during a reconcile is never lost;
//! - [`WorkQueue::add_after`] queues a key once a delay has passed (several delayed adds of
//!   one key keep the earliest), [`WorkQueue::add_rate_limited`] does so with the key's
//!   exponential backoff, and [`WorkQueue::forget`] resets that backoff.
//!
//! Waiting is event-driven: an add wakes a waiting worker at once (no polling interval), which
//! is what keeps the store-event-to-reconcile path immediate.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Per-key exponential backoff: `base · 2^(failures-1)`, capped at `max`, then scaled by a
/// random factor in `[1/2, 1]` so that keys failing together (one conflict on a shared
/// object, a store outage) do not retry in lockstep. client-go's default limiter starts at
/// 5 ms too; its 1000 s cap is far too long for a single-binary orchestrator, so ours is 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (1 for the first) with `jitter` in `[0, 1)`
    /// (clamped): between half of and the full capped exponential delay. Because each step
    /// doubles, the lowest delay of a retry is the highest of the one before, so delays never
    /// shrink while a key keeps failing.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let full = self.ceiling(failures);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// The capped exponential delay before jitter.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }
}

#[derive(Debug, Default)]
struct State {
    /// Keys ready for a worker, in the order they became ready.
    queue: VecDeque<String>,
    /// Keys that need a reconcile and are not being processed: in `queue`, or waiting for
    /// `done` of their current reconcile.
    dirty: HashSet<String>,
    processing: HashSet<String>,
    /// Delayed adds by due time; `seq` keeps entries with equal times apart.
    waiting: BTreeMap<(Instant, u64), String>,
    /// The pending delayed add of each key (the earliest), to find it in `waiting`.
    waiting_at: HashMap<String, (Instant, u64)>,
    seq: u64,
    failures: HashMap<String, u32>,
    shut_down: bool,
}

impl State {
    /// Marks `key` dirty; true when it went into the ready queue.
    fn add(&mut self, key: &str) -> bool {
        if self.shut_down || self.dirty.contains(key) {
            return false;
        }
        self.dirty.insert(key.to_string());
        if self.processing.contains(key) {
            // Re-queued by `done`, so the running reconcile finishes first.
            return false;
        }
        self.queue.push_back(key.to_string());
        true
    }

    /// Schedules an add at `at`; true when this is now the earliest pending deadline.
    fn add_at(&mut self, key: &str, at: Instant) -> bool {
        if self.shut_down {
            return false;
        }
        if let Some(&(existing, seq)) = self.waiting_at.get(key) {
            if existing <= at {
                return false;
            }
            self.waiting.remove(&(existing, seq));
        }
        self.seq += 1;
        let slot = (at, self.seq);
        self.waiting.insert(slot, key.to_string());
        self.waiting_at.insert(key.to_string(), slot);
        self.waiting.keys().next() == Some(&slot)
    }

    /// Moves every delayed add due at `now` into the queue; how many became ready.
    fn promote(&mut self, now: Instant) -> usize {
        let mut ready = 0;
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.waiting_at.remove(&key);
            if self.add(&key) {
                ready += 1;
            }
        }
        ready
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.waiting.keys().next().map(|(at, _)| *at)
    }

    fn pop(&mut self) -> Option<String> {
        let key = self.queue.pop_front()?;
        self.dirty.remove(&key);
        self.processing.insert(key.clone());
        Some(key)
    }

    fn done(&mut self, key: &str) -> bool {
        self.processing.remove(key);
        if self.dirty.contains(key) && !self.shut_down {
            self.queue.push_back(key.to_string());
            return true;
        }
        false
    }
}

/// A deduplicating, delay-capable work queue shared by the workers of one controller.
#[derive(Debug, Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
    backoff: Backoff,
}

impl WorkQueue {
    pub fn new(backoff: Backoff) -> WorkQueue {
        WorkQueue {
            state: Mutex::default(),
            notify: Notify::new(),
            backoff,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock (only collection operations run under
        // it), so a poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `key` now (no-op if already queued; after `done` if being processed).
    pub fn add(&self, key: &str) {
        if self.lock().add(key) {
            self.notify.notify_one();
        }
    }

    /// Queues `key` once `delay` has passed; a zero delay is a plain [`add`](Self::add).
    pub fn add_after(&self, key: &str, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        if self.lock().add_at(key, Instant::now() + delay) {
            // A worker may be sleeping until a later deadline; wake one to re-arm its timer.
            self.notify.notify_one();
        }
    }

    /// Counts a failure of `key` and queues it after its backoff; returns the delay chosen.
    pub fn add_rate_limited(&self, key: &str) -> Duration {
        let failures = {
            let mut s = self.lock();
            let n = s.failures.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = self.backoff.delay(failures, fastrand::f64());
        self.add_after(key, delay);
        delay
    }

    /// Resets the backoff of `key` (after a successful reconcile).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// Failures of `key` since it was last forgotten.
    pub fn requeues(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next ready key, marked as processing; waits for one. `None` once shut down.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the state is checked, so an add between the check and the
            // wait still wakes this waiter.
            notified.as_mut().enable();
            let deadline = {
                let mut s = self.lock();
                if s.shut_down {
                    return None;
                }
                s.promote(Instant::now());
                if let Some(key) = s.pop() {
                    return Some(key);
                }
                s.next_deadline()
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Ends the processing of `key`; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        if self.lock().done(key) {
            self.notify.notify_one();
        }
    }

    /// Wakes every waiter with `None` and refuses further adds.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.notify.notify_waiters();
    }

    /// Keys ready for a worker now.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys waiting for a delayed add.
    pub fn delayed(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_key_added_many_times_is_queued_once() {
        let q = WorkQueue::default();
        for _ in 0..5 {
            q.add("a");
        }
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await.as_deref(), Some("a"));
        assert_eq!(q.get().await.as_deref(), Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_processing_waits_for_done_then_runs_again() {
        let q = WorkQueue::default();
        q.add("a");
        let key = q.get().await.unwrap();
        q.add("a");
        q.add("a");
        // Not handed out again while its reconcile runs.
        assert!(q.is_empty());
        q.done(&key);
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await.as_deref(), Some("a"));
        q.done("a");
        // Done without a new add: nothing left.
        assert!(q.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_workers_never_hold_the_same_key() {
        let q = Arc::new(WorkQueue::default());
        let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
        let overlaps = Arc::new(AtomicUsize::new(0));
        let handled = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (q, busy, overlaps, handled) =
                (q.clone(), busy.clone(), overlaps.clone(), handled.clone());
            workers.push(tokio::spawn(async move {
                while let Some(key) = q.get().await {
                    if !busy.lock().unwrap().insert(key.clone()) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    busy.lock().unwrap().remove(&key);
                    handled.fetch_add(1, Ordering::SeqCst);
                    q.done(&key);
                }
            }));
        }
        for round in 0..200 {
            q.add(["x", "y", "z"][round % 3]);
            if round % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // Let the last adds drain.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(q.is_empty() && busy.lock().unwrap().is_empty()) {
            assert!(Instant::now() < deadline, "queue did not drain");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        q.shut_down();
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
        // Deduplication merged most of the 200 adds of 3 keys.
        let n = handled.load(Ordering::SeqCst);
        assert!((3..200).contains(&n), "handled {n}");
    }

    #[test]
    fn backoff_doubles_from_5ms_caps_at_60s_and_jitter_stays_in_half_to_full() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_millis(5));
        assert_eq!(b.ceiling(2), Duration::from_millis(10));
        assert_eq!(b.ceiling(5), Duration::from_millis(80));
        assert_eq!(b.ceiling(14), Duration::from_millis(40_960));
        assert_eq!(b.ceiling(15), Duration::from_secs(60));
        assert_eq!(b.ceiling(1000), Duration::from_secs(60));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(10));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(20));
        for failures in 1..40 {
            for _ in 0..50 {
                let d = b.delay(failures, fastrand::f64());
                let top = b.ceiling(failures);
                assert!(d >= top / 2 && d <= top, "{failures}: {d:?} vs {top:?}");
            }
        }
    }

    #[tokio::test]
    async fn rate_limited_requeues_grow_and_forget_resets() {
        let q = WorkQueue::default();
        let b = Backoff::default();
        let mut last = Duration::ZERO;
        for n in 1..=8 {
            let d = q.add_rate_limited("a");
            assert!(d >= b.ceiling(n) / 2 && d <= b.ceiling(n), "{n}: {d:?}");
            // Never shrinks while failures continue.
            assert!(d >= last, "{n}: {d:?} < {last:?}");
            last = d;
        }
        assert_eq!(q.requeues("a"), 8);
        q.forget("a");
        assert_eq!(q.requeues("a"), 0);
        let d = q.add_rate_limited("a");
        assert!(d <= Duration::from_millis(5), "{d:?}");
    }

    #[tokio::test]
    async fn requeue_after_is_not_ready_early_and_is_ready_after() {
        let q = WorkQueue::default();
        let start = Instant::now();
        q.add_after("a", Duration::from_millis(60));
        assert!(q.is_empty());
        assert_eq!(q.delayed(), 1);
        let key = tokio::time::timeout(Duration::from_secs(5), q.get())
            .await
            .unwrap();
        assert_eq!(key.as_deref(), Some("a"));
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert_eq!(q.delayed(), 0);
    }

    #[test]
    fn delayed_adds_keep_the_earliest_and_promote_when_due() {
        let mut s = State::default();
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        assert!(s.add_at("a", t0 + 2 * hour));
        // A later delayed add of the same key changes nothing.
        assert!(!s.add_at("a", t0 + 3 * hour));
        assert!(s.add_at("b", t0 + hour));
        // An earlier one replaces it.
        assert!(s.add_at("a", t0 + hour / 2));
        assert_eq!(s.waiting.len(), 2);
        assert_eq!(s.next_deadline(), Some(t0 + hour / 2));
        assert_eq!(s.promote(t0), 0);
        assert_eq!(s.promote(t0 + hour / 2), 1);
        assert_eq!(s.pop().as_deref(), Some("a"));
        assert_eq!(s.promote(t0 + 10 * hour), 1);
        assert_eq!(s.pop().as_deref(), Some("b"));
        assert!(s.waiting.is_empty() && s.waiting_at.is_empty());
    }

    #[test]
    fn a_delayed_key_due_while_processing_runs_after_done() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.add("a");
        assert_eq!(s.pop().as_deref(), Some("a"));
        s.add_at("a", t0);
        assert_eq!(s.promote(t0), 0);
        assert!(s.pop().is_none());
        assert!(s.done("a"));
        assert_eq!(s.pop().as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn a_waiting_worker_wakes_at_once_on_add_and_on_shutdown() {
        let q = Arc::new(WorkQueue::default());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let start = Instant::now();
        q.add("a");
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.as_deref(), Some("a"));
        // Event-driven: far below any polling interval (generous for a loaded CI machine).
        assert!(start.elapsed() < Duration::from_millis(500));

        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.shut_down();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, None);
        q.add("b");
        assert!(q.is_empty(), "adds after shutdown are refused");
    }
}
