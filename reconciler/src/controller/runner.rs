//! The machinery behind [`Manager`]: one leadership term at a time, each with a fresh cache
//! (list + watch of `/`), a queue and workers per controller, and a resync timer.
//!
//! Why a fresh cache per term rather than one kept across terms: a member that was a
//! follower may be behind, and a cache built by a linearizable list on becoming leader is
//! known to hold every write acknowledged before; the list costs one read of the store per
//! leadership change, which is rare.

use std::sync::Arc;
use std::time::Duration;

use coxswain_store::{Consistency, KeyValue, Kv, Limits, Revision, Txn, TxnResult};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::cache::{Cache, Change, ObjectEvent};
use super::queue::{Backoff, WorkQueue};
use super::{Action, Reconciler, Watch};
use crate::error::{Error, Result};

/// Settings of a [`Manager`]; the defaults suit a real cluster.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Every key of every controller is reconciled again this often, as a safety net for
    /// anything an event did not say (time-based conditions, bugs).
    pub resync: Duration,
    /// Ops per transaction; the store's `Limits::max_txn_ops` (etcd's 128), so a write that
    /// the store accepts is never split differently than planned.
    pub max_txn_ops: usize,
    /// How long a write waits for the cache to show it before the reconcile fails.
    pub cache_wait: Duration,
    /// Page size of the cache's list.
    pub list_page: usize,
    /// Backoff of a failing key (client-go: 5 ms doubling; ours caps at 60 s).
    pub backoff: Backoff,
    /// Backoff between relists after the cache's watch broke.
    pub relist_backoff: Backoff,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            resync: Duration::from_secs(60),
            max_txn_ops: Limits::default().max_txn_ops,
            cache_wait: Duration::from_secs(10),
            list_page: 1000,
            backoff: Backoff::default(),
            relist_backoff: Backoff {
                base: Duration::from_millis(50),
                max: Duration::from_secs(5),
            },
        }
    }
}

/// What a reconcile works with: the store, the cache, and writes that wait for the cache.
pub struct Context<K> {
    kv: Arc<K>,
    cache: Cache,
    config: Arc<ManagerConfig>,
    controller: &'static str,
}

impl<K> std::fmt::Debug for Context<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("controller", &self.controller)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<K> Clone for Context<K> {
    fn clone(&self) -> Self {
        Context {
            kv: self.kv.clone(),
            cache: self.cache.clone(),
            config: self.config.clone(),
            controller: self.controller,
        }
    }
}

impl<K: Kv> Context<K> {
    /// A context over `kv` and `cache` for the controller named `controller`. The manager
    /// makes these; tests of a single reconciler may too.
    pub fn new(
        kv: Arc<K>,
        cache: Cache,
        config: Arc<ManagerConfig>,
        controller: &'static str,
    ) -> Context<K> {
        Context {
            kv,
            cache,
            config,
            controller,
        }
    }

    /// The store, for reads that must be fresher than the cache (a live check before an
    /// irreversible delete).
    pub fn kv(&self) -> &K {
        &self.kv
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn controller(&self) -> &'static str {
        self.controller
    }

    /// Runs one transaction; if it succeeded, waits until the cache holds it.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let result = self.kv.txn(txn).await?;
        if result.succeeded {
            self.cache
                .wait_for(result.revision, self.config.cache_wait)
                .await?;
        }
        Ok(result)
    }

    /// Applies `units`, each an atomic group of compares and ops (e.g. "pod at revision R →
    /// put it with an owner reference"), packed in order into as few transactions as
    /// `max_txn_ops` allows (one Raft entry each). A unit that fails its compares fails its
    /// whole transaction: the result is [`Error::WriteConflict`] and later transactions are
    /// not sent. Returns the number of transactions written.
    pub async fn write(&self, units: Vec<Txn>) -> Result<usize> {
        let txns = pack(units, self.config.max_txn_ops);
        let count = txns.len();
        for txn in txns {
            let keys = describe_keys(&txn);
            let result = self.txn(txn).await?;
            if !result.succeeded {
                return Err(Error::WriteConflict {
                    controller: self.controller.to_string(),
                    keys,
                });
            }
        }
        Ok(count)
    }
}

fn ops_of(txn: &Txn) -> usize {
    txn.compares.len() + txn.success.len() + txn.failure.len()
}

/// Packs units greedily into transactions of at most `max_ops` ops, keeping each unit whole
/// and in order. A unit with a `failure` branch is never merged, since merged units would
/// share one outcome.
pub fn pack(units: Vec<Txn>, max_ops: usize) -> Vec<Txn> {
    let mut out: Vec<Txn> = Vec::new();
    let mut open = false;
    for unit in units {
        let mergeable = unit.failure.is_empty();
        let fits = out
            .last()
            .is_some_and(|t| ops_of(t) + ops_of(&unit) <= max_ops);
        if open && mergeable && fits {
            if let Some(last) = out.last_mut() {
                last.compares.extend(unit.compares);
                last.success.extend(unit.success);
            }
        } else {
            open = mergeable;
            out.push(unit);
        }
    }
    out
}

fn describe_keys(txn: &Txn) -> String {
    let keys: Vec<&str> = txn.written_keys().collect();
    match keys.len() {
        0..=3 => keys.join(", "),
        n => format!("{}, ... ({n} keys)", keys[..3].join(", ")),
    }
}

/// Type-erased controller, so one manager holds reconcilers of different types.
trait Erased<K: Kv + 'static>: Send + Sync {
    fn name(&self) -> &'static str;
    fn watches(&self) -> Vec<Watch>;
    fn spawn_workers(
        self: Arc<Self>,
        ctx: Context<K>,
        queue: Arc<WorkQueue>,
        stop: watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    );
}

impl<K: Kv + 'static, R: Reconciler> Erased<K> for R {
    fn name(&self) -> &'static str {
        Reconciler::name(self)
    }

    fn watches(&self) -> Vec<Watch> {
        Reconciler::watches(self)
    }

    fn spawn_workers(
        self: Arc<Self>,
        ctx: Context<K>,
        queue: Arc<WorkQueue>,
        stop: watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) {
        for _ in 0..self.workers().max(1) {
            tasks.spawn(worker(
                self.clone(),
                ctx.clone(),
                queue.clone(),
                stop.clone(),
            ));
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone). The flag's `Ref` is dropped
/// here, so callers' futures stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves once `flag` is `want`; true if its sender is gone instead.
async fn until(flag: &mut watch::Receiver<bool>, want: bool) -> bool {
    flag.wait_for(|v| *v == want).await.is_err()
}

/// One worker: takes a key, reconciles it in its own task (so a panic is contained and a
/// stop can abort it), applies the outcome to the queue.
async fn worker<K: Kv + 'static, R: Reconciler>(
    reconciler: Arc<R>,
    ctx: Context<K>,
    queue: Arc<WorkQueue>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some(key) = queue.get().await {
        let span = tracing::info_span!("reconcile", controller = reconciler.name(), key = %key);
        let mut task = {
            let (r, ctx, key) = (reconciler.clone(), ctx.clone(), key.clone());
            tokio::spawn(async move { r.reconcile(&key, &ctx).await }.instrument(span))
        };
        let outcome = tokio::select! {
            res = &mut task => res,
            () = stopped(&mut stop) => {
                // Leadership ended: a write after this point would be a deposed leader's.
                task.abort();
                let _ = task.await;
                queue.done(&key);
                return;
            }
        };
        match outcome {
            Ok(Ok(Action::Done)) => queue.forget(&key),
            Ok(Ok(Action::RequeueAfter(delay))) => {
                queue.forget(&key);
                queue.add_after(&key, delay);
            }
            Ok(Err(e)) => {
                let delay = queue.add_rate_limited(&key);
                if matches!(e, Error::WriteConflict { .. }) {
                    tracing::debug!(controller = reconciler.name(), %key, error = %e, ?delay, "conflict; requeued");
                } else {
                    tracing::warn!(controller = reconciler.name(), %key, error = %e, ?delay, "reconcile failed; requeued");
                }
            }
            Err(join) => {
                let delay = queue.add_rate_limited(&key);
                tracing::error!(controller = reconciler.name(), %key, error = %join, ?delay, "reconcile panicked; requeued");
            }
        }
        queue.done(&key);
    }
}

/// One controller's share of the cache's events.
struct Route {
    watches: Vec<Watch>,
    queue: Arc<WorkQueue>,
}

/// Turns cache changes into queue adds.
struct Dispatcher {
    cache: Cache,
    routes: Vec<Route>,
}

impl Dispatcher {
    fn route(&self, ev: &ObjectEvent<'_>) {
        for r in &self.routes {
            for w in &r.watches {
                if ev.key.starts_with(&w.prefix) {
                    for key in (w.map)(ev, &self.cache) {
                        r.queue.add(&key);
                    }
                }
            }
        }
    }

    fn dispatch(&self, changes: &[Change]) {
        for ch in changes {
            self.route(&ch.event());
        }
    }

    /// Replays every cached object through every watch, as an unchanged update.
    fn resync(&self) {
        for r in &self.routes {
            for w in &r.watches {
                for kv in self.cache.list(&w.prefix) {
                    let ev = ObjectEvent {
                        key: &kv.key,
                        old: Some(&kv),
                        new: Some(&kv),
                    };
                    for key in (w.map)(&ev, &self.cache) {
                        r.queue.add(&key);
                    }
                }
            }
        }
    }
}

/// Every object `keep` accepts, at one revision. Pages are filtered as they come, so a store
/// full of keys no controller caches is never held whole (a relist over 110,000 such objects
/// once took the member to 367 MiB).
async fn list_all<K: Kv>(
    kv: &K,
    page: usize,
    keep: impl Fn(&str) -> bool,
) -> Result<(Revision, Vec<KeyValue>)> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let p = kv
            .list("/", page, token.as_deref(), Consistency::Linearizable)
            .await?;
        items.extend(p.items.into_iter().filter(|kv| keep(&kv.key)));
        match p.continue_token {
            Some(t) => token = Some(t),
            None => return Ok((p.revision, items)),
        }
    }
}

/// Lists until it works or `stop` is set; replaces the cache and dispatches the difference.
async fn relist<K: Kv>(
    kv: &K,
    d: &Dispatcher,
    config: &ManagerConfig,
    stop: &mut watch::Receiver<bool>,
    mut failures: u32,
) -> Option<Revision> {
    loop {
        if failures > 0 {
            let delay = config.relist_backoff.delay(failures, fastrand::f64());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(stop) => return None,
            }
        }
        let listed = tokio::select! {
            r = list_all(kv, config.list_page, |k| d.cache.covers(k)) => r,
            () = stopped(stop) => return None,
        };
        match listed {
            Ok((revision, items)) => {
                let changes = d.cache.replace(items, revision);
                d.dispatch(&changes);
                return Some(revision);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "controllers: listing the store failed; retrying");
            }
        }
    }
}

/// Follows the store from `from` into the cache; relists when the watch breaks.
async fn informer<K: Kv>(
    kv: Arc<K>,
    d: Arc<Dispatcher>,
    mut from: Revision,
    config: Arc<ManagerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let started = tokio::select! {
            s = kv.watch("/", from + 1, false) => s,
            () = stopped(&mut stop) => return,
        };
        match started {
            Ok(mut stream) => loop {
                let item = tokio::select! {
                    i = stream.recv() => i,
                    () = stopped(&mut stop) => return,
                };
                match item {
                    Some(Ok(batch)) => {
                        from = from.max(batch.revision);
                        let changes = d.cache.apply(&batch);
                        d.dispatch(&changes);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "controllers: the store watch failed; relisting");
                        break;
                    }
                    None => {
                        tracing::warn!("controllers: the store watch ended; relisting");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "controllers: cannot watch the store; relisting"),
        }
        match relist(kv.as_ref(), &d, &config, &mut stop, 1).await {
            Some(revision) => from = revision,
            None => return,
        }
    }
}

/// Replays the cache into the queues every `period`.
async fn resync(d: Arc<Dispatcher>, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => d.resync(),
            () = stopped(&mut stop) => return,
        }
    }
}

/// Runs a set of controllers while this member leads.
pub struct Manager<K: Kv + 'static> {
    kv: Arc<K>,
    config: Arc<ManagerConfig>,
    controllers: Vec<Arc<dyn Erased<K>>>,
    running: watch::Sender<bool>,
}

impl<K: Kv + 'static> Manager<K> {
    pub fn new(kv: Arc<K>, config: ManagerConfig) -> Manager<K> {
        Manager {
            kv,
            config: Arc::new(config),
            controllers: Vec::new(),
            running: watch::channel(false).0,
        }
    }

    /// Adds a controller; all must be added before [`run`](Self::run).
    pub fn add<R: Reconciler>(&mut self, reconciler: R) -> &mut Self {
        self.controllers.push(Arc::new(reconciler));
        self
    }

    /// Names of the controllers added, in order.
    pub fn controllers(&self) -> Vec<&'static str> {
        self.controllers.iter().map(|c| c.name()).collect()
    }

    /// True from the moment a term's cache is synced and its workers start, false again
    /// once every task of the term has ended.
    pub fn running(&self) -> watch::Receiver<bool> {
        self.running.subscribe()
    }

    /// Runs the controllers during every term in which `leader` is true; returns when
    /// `shutdown` completes or `leader`'s sender is dropped, after all tasks have ended.
    pub async fn run(
        self,
        mut leader: watch::Receiver<bool>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                gone = until(&mut leader, true) => {
                    if gone {
                        return Ok(());
                    }
                }
            }
            tracing::info!(controllers = ?self.controllers(), "controllers: leading; starting");
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut term = tokio::spawn(term(
                self.kv.clone(),
                self.config.clone(),
                self.controllers.clone(),
                stop_rx,
                self.running.clone(),
            ));
            let mut finished = false;
            let last = tokio::select! {
                biased;
                () = &mut shutdown => true,
                gone = until(&mut leader, false) => gone,
                _ = &mut term => { finished = true; false }
            };
            stop_tx.send_replace(true);
            if !finished && let Err(e) = term.await {
                tracing::error!(error = %e, "controllers: a term's task failed");
            }
            self.running.send_replace(false);
            tracing::info!("controllers: stopped");
            if last {
                return Ok(());
            }
        }
    }
}

impl<K: Kv + 'static> std::fmt::Debug for Manager<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("controllers", &self.controllers())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One leadership term: sync the cache, start everything, wait for `stop`, end everything.
async fn term<K: Kv + 'static>(
    kv: Arc<K>,
    config: Arc<ManagerConfig>,
    controllers: Vec<Arc<dyn Erased<K>>>,
    mut stop: watch::Receiver<bool>,
    running: watch::Sender<bool>,
) {
    let watches: Vec<Vec<Watch>> = controllers.iter().map(|c| c.watches()).collect();
    let cache = Cache::new(watches.iter().flatten().map(|w| w.prefix.clone()));
    let routes: Vec<Route> = watches
        .into_iter()
        .map(|watches| Route {
            watches,
            queue: Arc::new(WorkQueue::new(config.backoff)),
        })
        .collect();
    let queues: Vec<Arc<WorkQueue>> = routes.iter().map(|r| r.queue.clone()).collect();
    let d = Arc::new(Dispatcher {
        cache: cache.clone(),
        routes,
    });
    // The first list fills the queues with every key before any worker runs, so nothing is
    // reconciled against a partial cache.
    let Some(revision) = relist(kv.as_ref(), &d, &config, &mut stop, 0).await else {
        return;
    };
    tracing::debug!(revision, objects = cache.len(), "controllers: cache synced");
    let mut tasks = JoinSet::new();
    tasks.spawn(informer(
        kv.clone(),
        d.clone(),
        revision,
        config.clone(),
        stop.clone(),
    ));
    tasks.spawn(resync(d.clone(), config.resync, stop.clone()));
    for (c, queue) in controllers.iter().zip(&queues) {
        let ctx = Context::new(kv.clone(), cache.clone(), config.clone(), c.name());
        c.clone()
            .spawn_workers(ctx, queue.clone(), stop.clone(), &mut tasks);
    }
    running.send_replace(true);
    stopped(&mut stop).await;
    for q in &queues {
        q.shut_down();
    }
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res
            && e.is_panic()
        {
            tracing::error!(error = %e, "controllers: a task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use coxswain_store::Op;
    use serde_json::json;

    use super::*;

    fn unit(key: &str, compares: usize) -> Txn {
        let mut t = Txn::put(key, json!({}));
        for _ in 0..compares {
            t.compares.push(coxswain_store::Compare {
                key: key.into(),
                target: coxswain_store::Target::ModRevision,
                op: coxswain_store::CmpOp::Equal,
                value: 1,
            });
        }
        t
    }

    #[test]
    fn pack_fills_transactions_up_to_the_limit_keeping_units_whole() {
        let units: Vec<Txn> = (0..10).map(|i| unit(&format!("/k{i}"), 1)).collect();
        let txns = pack(units, 5);
        // Two ops per unit: two units per txn of five.
        assert_eq!(txns.len(), 5);
        assert!(txns.iter().all(|t| ops_of(t) == 4));
        let keys: Vec<&str> = txns.iter().flat_map(|t| t.written_keys()).collect();
        let want: Vec<String> = (0..10).map(|i| format!("/k{i}")).collect();
        assert_eq!(keys, want);

        let creates: Vec<Txn> = (0..300).map(|i| unit(&format!("/p{i}"), 0)).collect();
        let txns = pack(creates, 128);
        assert_eq!(txns.iter().map(ops_of).collect::<Vec<_>>(), [128, 128, 44]);
    }

    #[test]
    fn pack_never_merges_a_unit_with_a_failure_branch() {
        let mut special = unit("/b", 1);
        special.failure.push(Op::Delete { key: "/x".into() });
        let txns = pack(vec![unit("/a", 0), special, unit("/c", 0)], 100);
        assert_eq!(txns.len(), 3);
    }
}
