//! The agent's pod loop: the Pods bound to this node become [`PodWorker`]s, and their
//! status goes back to the store.
//!
//! - At start it lists Pods, ConfigMaps and Secrets, adopts the sandboxes the runtime still
//!   has (an agent restart does not restart workloads), and stops sandboxes no pod owns.
//! - Then it follows three store watches, each from just after its own list (see
//!   [`watch_objects`]): a Pod put creates or updates its worker, a delete stops it
//!   gracefully; ConfigMaps and Secrets feed the resolver's cache and refresh mounted
//!   volumes.
//! - Each worker runs in its own task: it syncs when woken by an update, at its own next
//!   deadline (backoff, probe, grace period), or every `relist` (one second, the kubelet's
//!   PLEG period) to notice containers that exited; the blocking runtime calls run on
//!   tokio's blocking pool. A status is written only when it changed, by compare-and-swap on
//!   the pod's revision, so a concurrent write of the spec is never overwritten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coxswain_schema::kinds::pod::{Pod, PodStatus};
use coxswain_store::watch::WatchStream;
use coxswain_store::{Consistency, EventKind, KeyValue, Kv, Txn, object_key};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::resolve::{NodeResolver, ObjectCache};
use crate::error::{Error, Result};
use crate::pod::{PodWorker, Prober, WorkerConfig};
use crate::runtime::{Runtime, Sandbox, sandbox_key};

const POD_PREFIX: &str = "/core/Pod/";
const CONFIG_MAP_PREFIX: &str = "/core/ConfigMap/";
const SECRET_PREFIX: &str = "/core/Secret/";

/// How the pod loop runs.
#[derive(Debug, Clone)]
pub struct PodsConfig {
    pub worker: WorkerConfig,
    /// How often a worker looks at its containers without being woken (the kubelet's PLEG
    /// relists every second).
    pub relist: Duration,
}

/// What a worker task is told.
#[derive(Debug)]
enum Msg {
    Update(Box<Pod>),
    Deleted,
    Refresh,
}

/// Runs the pod loop until `shutdown` turns true. Running workloads are left running when it
/// ends (an agent restart adopts them); [`stop_all`] is what ends them.
pub async fn run<K: Kv + 'static>(
    kv: Arc<K>,
    runtime: Arc<dyn Runtime>,
    resolver: Arc<NodeResolver>,
    prober: Arc<dyn Prober>,
    cfg: PodsConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let node = cfg.worker.node_name.clone();
    let objects = resolver.objects.clone();
    let [mut cm_watch, mut secret_watch] = watch_objects(kv.as_ref(), &objects).await?;
    let (revision, pods) = list_all(kv.as_ref(), POD_PREFIX).await?;
    let rt = runtime.clone();
    let existing: Vec<(Sandbox, _)> = tokio::task::spawn_blocking(move || rt.list())
        .await
        .map_err(join_err)??;
    let mut workers: HashMap<String, mpsc::UnboundedSender<Msg>> = HashMap::new();
    // The workers' tasks, joined before `run` returns: whoever stops the agent (`coxswain
    // up` stopping its pods next) must not race a worker still syncing one. Dropped on an
    // error return, which aborts them.
    let mut tasks = tokio::task::JoinSet::new();
    let mut owned_keys = Vec::new();
    for item in pods {
        let Some(pod) = bound_pod(&item, &node) else {
            continue;
        };
        let key = pod_sandbox_key(&pod);
        let adopt = existing.iter().any(|(s, _)| s.key == key);
        if !adopt && is_terminal(&pod) {
            continue;
        }
        owned_keys.push(key);
        let tx = spawn_worker(
            &mut tasks,
            kv.clone(),
            item.key.clone(),
            pod,
            adopt,
            runtime.clone(),
            resolver.clone(),
            prober.clone(),
            &cfg,
        );
        workers.insert(item.key, tx);
    }
    // Sandboxes of pods that were deleted while the agent was down.
    for (sandbox, _) in &existing {
        if !owned_keys.contains(&sandbox.key) {
            tracing::info!(key = %sandbox.key, "stopping a sandbox no pod owns");
            let (rt, key, res) = (runtime.clone(), sandbox.key.clone(), resolver.clone());
            tokio::task::spawn_blocking(move || {
                rt.stop_sandbox(&key).and_then(|()| res.release(&key))
            })
            .await
            .map_err(join_err)??;
        }
    }

    let mut pod_watch = kv
        .watch(POD_PREFIX, revision + 1, false)
        .await
        .map_err(Error::store("watch pods"))?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            batch = pod_watch.recv() => {
                let Some(batch) = batch else {
                    return Err(Error::State { path: POD_PREFIX.into(), reason: "the pod watch ended".into() });
                };
                let batch = batch.map_err(Error::store("watch pods"))?;
                for event in batch.events {
                    match event.kind {
                        EventKind::Put => {
                            let Some(pod) = bound_pod(&event.kv, &node) else { continue };
                            workers.retain(|_, tx| !tx.is_closed());
                            if let Some(tx) = workers.get(&event.kv.key) {
                                let _ = tx.send(Msg::Update(Box::new(pod)));
                            } else if !is_terminal(&pod) {
                                let tx = spawn_worker(&mut tasks, kv.clone(), event.kv.key.clone(), pod, false,
                                    runtime.clone(), resolver.clone(), prober.clone(), &cfg);
                                workers.insert(event.kv.key, tx);
                            }
                        }
                        EventKind::Delete => {
                            if let Some(tx) = workers.remove(&event.kv.key) {
                                let _ = tx.send(Msg::Deleted);
                            }
                        }
                    }
                }
            }
            batch = cm_watch.recv() => objects_changed(batch, &objects, &workers)?,
            batch = secret_watch.recv() => objects_changed(batch, &objects, &workers)?,
            // A JoinSet keeps every finished task until it is joined: without this, each
            // pod that ever ran here would stay in memory until the agent stops.
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a pod worker panicked");
                }
            }
        }
    }
    // Closing the channels tells each worker the agent is stopping; it returns after the
    // sync in hand and leaves its pod running, as a restarted agent expects to find it.
    drop(workers);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Lists the ConfigMaps and Secrets into `objects` and opens the watches that keep them
/// current, each from just after its own list. One revision for all (the pods' list, as
/// before) lost any object written between two lists: `coxswain up`'s first commit often
/// lands then, and its pods waited forever on a ConfigMap the agent never saw.
pub async fn watch_objects<K: Kv>(kv: &K, objects: &ObjectCache) -> Result<[WatchStream; 2]> {
    Ok([
        list_and_watch(kv, CONFIG_MAP_PREFIX, objects).await?,
        list_and_watch(kv, SECRET_PREFIX, objects).await?,
    ])
}

async fn list_and_watch<K: Kv>(kv: &K, prefix: &str, objects: &ObjectCache) -> Result<WatchStream> {
    let (revision, items) = list_all(kv, prefix).await?;
    for item in items {
        objects.put(&item.value);
    }
    kv.watch(prefix, revision + 1, false)
        .await
        .map_err(Error::store(format!("watch {prefix}")))
}

fn objects_changed(
    batch: Option<coxswain_store::Result<coxswain_store::WatchBatch>>,
    objects: &ObjectCache,
    workers: &HashMap<String, mpsc::UnboundedSender<Msg>>,
) -> Result<()> {
    let Some(batch) = batch else {
        return Err(Error::State {
            path: CONFIG_MAP_PREFIX.into(),
            reason: "a configmap or secret watch ended".into(),
        });
    };
    let batch = batch.map_err(Error::store("watch configmaps and secrets"))?;
    for event in batch.events {
        match event.kind {
            EventKind::Put => objects.put(&event.kv.value),
            EventKind::Delete => objects.delete(&event.kv.key),
        }
    }
    for tx in workers.values() {
        let _ = tx.send(Msg::Refresh);
    }
    Ok(())
}

/// Every key under `prefix`, all pages, at one revision.
pub(super) async fn list_all<K: Kv>(kv: &K, prefix: &str) -> Result<(u64, Vec<KeyValue>)> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = kv
            .list(prefix, 500, token.as_deref(), Consistency::Linearizable)
            .await
            .map_err(Error::store(format!("list {prefix}")))?;
        items.extend(page.items);
        match page.continue_token {
            Some(t) => token = Some(t),
            None => return Ok((page.revision, items)),
        }
    }
}

/// The pod stored at `kv` if it is bound to `node`.
fn bound_pod(kv: &KeyValue, node: &str) -> Option<Pod> {
    let bound = kv.value.pointer("/spec/nodeName").and_then(|n| n.as_str()) == Some(node);
    if !bound {
        return None;
    }
    match serde_json::from_value::<Pod>(kv.value.clone()) {
        Ok(pod) => Some(pod),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "a stored pod does not read as a Pod");
            None
        }
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_sandbox_key(pod: &Pod) -> String {
    let meta = &pod.metadata;
    sandbox_key(
        meta.namespace.as_deref().unwrap_or("default"),
        &meta.name,
        meta.uid.as_deref().unwrap_or(""),
    )
}

pub(super) fn join_err(e: tokio::task::JoinError) -> Error {
    Error::State {
        path: "agent".into(),
        reason: format!("a blocking runtime call panicked or was cancelled: {e}"),
    }
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn spawn_worker<K: Kv + 'static>(
    tasks: &mut tokio::task::JoinSet<()>,
    kv: Arc<K>,
    store_key: String,
    pod: Pod,
    adopt: bool,
    runtime: Arc<dyn Runtime>,
    resolver: Arc<NodeResolver>,
    prober: Arc<dyn Prober>,
    cfg: &PodsConfig,
) -> mpsc::UnboundedSender<Msg> {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::info_span!("pod", key = %store_key);
    let cfg = cfg.clone();
    tasks.spawn(
        async move {
            let worker_resolver: Arc<dyn crate::pod::Resolver> = resolver.clone();
            let worker = if adopt {
                let (p, rt, res, pr, wc) =
                    (pod, runtime, worker_resolver, prober, cfg.worker.clone());
                match tokio::task::spawn_blocking(move || PodWorker::adopt(p, rt, res, pr, wc))
                    .await
                {
                    Ok(Ok(w)) => w,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "could not adopt the pod's sandbox");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "adoption panicked");
                        return;
                    }
                }
            } else {
                PodWorker::new(pod, runtime, worker_resolver, prober, cfg.worker.clone())
            };
            drive(kv, store_key, worker, rx, resolver, cfg.relist).await;
        }
        .instrument(span),
    );
    tx
}

/// One worker's life: sync, publish the status if it changed, sleep until woken.
async fn drive<K: Kv>(
    kv: Arc<K>,
    store_key: String,
    mut worker: PodWorker,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    resolver: Arc<NodeResolver>,
    relist: Duration,
) {
    let mut published: Option<PodStatus> = worker.pod().status.clone();
    let mut deleted = false;
    loop {
        let now = Instant::now();
        let (w, result) = match tokio::task::spawn_blocking(move || {
            let r = worker.sync(now);
            (worker, r)
        })
        .await
        {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "a pod sync panicked; the worker stops");
                return;
            }
        };
        worker = w;
        let mut wake = now + relist;
        match result {
            Ok(sync) => {
                if !deleted && published.as_ref() != Some(&sync.status) {
                    match write_status(kv.as_ref(), &store_key, &sync.status).await {
                        Ok(()) => published = Some(sync.status.clone()),
                        Err(e) => tracing::warn!(error = %e, "could not write the pod's status"),
                    }
                }
                if sync.finished {
                    let (res, key) = (resolver.clone(), worker.key().to_owned());
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || res.release(&key)).await
                    {
                        tracing::warn!(error = %e, "could not remove the pod's volumes");
                    }
                    if deleted {
                        return;
                    }
                    // A pod that ended (Succeeded or Failed) stays in the store; its worker
                    // waits only for the pod's deletion.
                    match rx.recv().await {
                        Some(Msg::Deleted) | None => return,
                        Some(_) => continue,
                    }
                }
                if let Some(next) = sync.next_wake {
                    wake = wake.min(next);
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod sync failed; retrying"),
        }
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
        tokio::select! {
            _ = sleep => {}
            // Once deleted, the sender is gone too: only the termination's own pace counts.
            msg = rx.recv(), if !deleted => match msg {
                Some(Msg::Update(pod)) => worker.update(*pod),
                Some(Msg::Refresh) => {
                    let (res, pod, key) = (resolver.clone(), worker.pod().clone(), worker.key().to_owned());
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || res.refresh(&pod, &key)).await {
                        tracing::warn!(error = %e, "could not refresh the pod's volumes");
                    }
                }
                Some(Msg::Deleted) => {
                    deleted = true;
                    worker.terminate(Instant::now(), None);
                }
                // The agent is stopping, not the pod: it keeps running for the next agent.
                None => return,
            },
        }
    }
}

/// Writes `status` into the stored pod by compare-and-swap, retrying when the pod changed
/// in between (its spec and metadata are not ours to overwrite). A pod that is gone is left
/// gone.
async fn write_status<K: Kv>(kv: &K, key: &str, status: &PodStatus) -> Result<()> {
    let status = serde_json::to_value(status).map_err(|e| Error::State {
        path: key.into(),
        reason: format!("encode status: {e}"),
    })?;
    for _ in 0..5 {
        let (_, current) = kv
            .get(key, Consistency::Linearizable)
            .await
            .map_err(Error::store(format!("read {key}")))?;
        let Some(current) = current else {
            return Ok(());
        };
        let mut value = current.value.clone();
        if let Some(map) = value.as_object_mut() {
            map.insert("status".into(), status.clone());
        }
        let result = kv
            .txn(Txn::compare_and_swap(key, current.mod_revision, value))
            .await
            .map_err(Error::store(format!("write the status of {key}")))?;
        if result.succeeded {
            return Ok(());
        }
    }
    Err(Error::State {
        path: key.into(),
        reason: "the pod kept changing while its status was written".into(),
    })
}

/// The store key of a pod.
pub fn pod_key(namespace: &str, name: &str) -> String {
    object_key("", "Pod", Some(namespace), name)
}

/// Stops every sandbox the runtime has (what `coxswain up` does on Ctrl-C): containers get
/// SIGTERM, then SIGKILL after `grace`, and everything is removed.
pub fn stop_all(runtime: &dyn Runtime, resolver: &NodeResolver, grace: Duration) -> Result<()> {
    let listed = runtime.list()?;
    for (_, ids) in &listed {
        for id in ids {
            let _ = runtime.signal(id, nix::sys::signal::Signal::SIGTERM as i32);
        }
    }
    let deadline = Instant::now() + grace;
    for (sandbox, ids) in &listed {
        for id in ids {
            while Instant::now() < deadline
                && matches!(
                    runtime.container_state(id)?,
                    crate::runtime::ContainerState::Running { .. }
                )
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            runtime.kill(id)?;
            runtime.remove_container(id)?;
        }
        runtime.stop_sandbox(&sandbox.key)?;
        resolver.release(&sandbox.key)?;
    }
    Ok(())
}
