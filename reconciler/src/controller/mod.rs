//! # Controllers — start here
//!
//! The control loops that turn stored desired state into more stored state (ReplicaSets
//! into Pods, dead owners into deleted dependents, ...), on the Raft leader only.
//!
//! ## The runtime
//!
//! A controller is a [`Reconciler`]: a name, the [`Watch`]es that say which store prefixes
//! it reads and how a change of an object there maps to the keys it reconciles, and an
//! idempotent `reconcile(key, ctx) -> Result<Action>`. A [`Manager`] runs a set of them:
//!
//! ```text
//!  store ──list / + watch / (from the list's revision)──▶ Cache (one per leadership term)
//!                                                           │ each change → every Watch whose
//!                                                           │ prefix matches → its mapper → keys
//!                                                           ▼
//!                                  WorkQueue per controller (dedup, one key at a time, backoff)
//!                                                           │ N workers
//!                                                           ▼
//!         Reconciler::reconcile(key, &Context) ── reads ctx.cache(), writes ctx.write()/txn()
//! ```
//!
//! - [`queue::WorkQueue`]: deduplicated by key; a key is never reconciled twice at once (a
//!   key added while being reconciled runs again after); `add_after` for "requeue after D";
//!   `add_rate_limited` with 5 ms doubling to 60 s and jitter; `forget` on success.
//! - [`cache::Cache`]: the informer's store, always equal to the store at one revision;
//!   objects by key, `list(prefix)`, dependents by owner uid. On a watch error the runner
//!   relists and dispatches the difference. Every `resync` period each controller's watches
//!   are replayed over the whole cache, so every key is reconciled again.
//! - [`Context`]: what a reconcile gets. Reads come from `ctx.cache()`. Writes go through
//!   [`Context::txn`] or [`Context::write`] (CAS units merged into txns of at most
//!   `max_txn_ops` ops); after a successful write they wait until the cache holds it, so the
//!   next reconcile of any key never acts on state older than its own writes. A failed
//!   compare is [`Error::WriteConflict`](crate::Error::WriteConflict): the worker requeues
//!   the key with backoff.
//! - [`Manager::run`] runs while a `watch::Receiver<bool>` says this member leads (see
//!   [`leader_flag`]); when it flips to false, or on shutdown, every task of the term (cache
//!   watch, resync timer, workers, including a reconcile in flight) is stopped and joined
//!   before `run` waits for the next term or returns. [`Manager::running`] shows it.
//!   Each reconcile runs in a `reconcile{controller, key}` tracing span.
//!
//! Workers react to queue adds at once (no polling), so a store event reaches a reconcile
//! within the time of one watch delivery.
//!
//! ## The controllers (one file each)
//!
//! - [`replicaset::ReplicaSetController`]: pods to match `spec.replicas`.
//! - [`gc::GarbageCollector`]: deletes dependents whose owners are gone.
//! - [`namespace::NamespaceController`]: deletes leftovers of removed namespaces.
//! - [`deployment::DeploymentController`]: rolls ReplicaSets out to match a Deployment.
//! - [`scheduler::SchedulerController`]: binds pending pods to nodes.
//!
//! Controllers never delete or change the spec of a Git-owned object ([`is_git_owned`]);
//! pruning those is the syncer's job.
//!
//! ```text
//! let mut manager = Manager::new(Arc::new(member.clone()), ManagerConfig::default());
//! manager.add(ReplicaSetController::default());
//! manager.add(GarbageCollector::default());
//! manager.add(NamespaceController::default());
//! manager.run(leader_flag(&member), shutdown_future).await?;
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use coxswain_store::{Kv, Member};
use serde_json::Value;
use tokio::sync::watch;

use crate::error::Result;

pub mod cache;
pub mod deployment;
pub mod gc;
pub mod namespace;
pub mod queue;
pub mod replicaset;
mod runner;
pub mod scheduler;

pub use cache::{Cache, ObjectEvent};
pub use queue::{Backoff, WorkQueue};
pub use runner::{Context, Manager, ManagerConfig};

/// What a successful reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next event or resync.
    Done,
    /// Reconcile the key again after this delay (e.g. when a pod becomes available).
    RequeueAfter(Duration),
}

impl Action {
    pub fn done() -> Action {
        Action::Done
    }

    pub fn requeue_after(delay: Duration) -> Action {
        Action::RequeueAfter(delay)
    }
}

/// Maps a change of a cached object to the keys a controller must reconcile. It runs on the
/// cache's watch task, so it must be quick and must not block; it may read the cache.
pub type MapFn = Arc<dyn Fn(&ObjectEvent<'_>, &Cache) -> Vec<String> + Send + Sync>;

/// One prefix a controller reads, and how changes under it become its keys.
#[derive(Clone)]
pub struct Watch {
    pub prefix: String,
    pub map: MapFn,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The controller's own kind: a change of an object enqueues its own store key.
    pub fn own(prefix: impl Into<String>) -> Watch {
        Watch {
            prefix: prefix.into(),
            map: Arc::new(|ev, _| vec![ev.key.to_string()]),
        }
    }

    /// Objects another controller's kind owns: a change enqueues the store key of the
    /// object's controller owner if it is of `owner_kind` (`apiVersion` `owner_api_version`),
    /// before and after the change (so a pod released by one ReplicaSet also wakes it).
    /// E.g. pods → their ReplicaSet, ReplicaSets → their Deployment.
    pub fn controller_owner(
        prefix: impl Into<String>,
        owner_api_version: &'static str,
        owner_kind: &'static str,
    ) -> Watch {
        Watch {
            prefix: prefix.into(),
            map: Arc::new(move |ev, _| controller_owner_keys(ev, owner_api_version, owner_kind)),
        }
    }

    /// Any mapping.
    pub fn custom(
        prefix: impl Into<String>,
        map: impl Fn(&ObjectEvent<'_>, &Cache) -> Vec<String> + Send + Sync + 'static,
    ) -> Watch {
        Watch {
            prefix: prefix.into(),
            map: Arc::new(map),
        }
    }
}

/// The store keys of the controller owners of kind `owner_kind` of the object before and
/// after `ev` (deduplicated).
pub fn controller_owner_keys(
    ev: &ObjectEvent<'_>,
    owner_api_version: &str,
    owner_kind: &str,
) -> Vec<String> {
    let namespace = cache::parse_key(ev.key).and_then(|p| p.namespace);
    let mut keys: Vec<String> = [ev.old, ev.new]
        .into_iter()
        .flatten()
        .filter_map(|kv| cache::controller_of(&kv.value))
        .filter(|r| r.kind == owner_kind && r.api_version == owner_api_version)
        .filter_map(|r| cache::owner_key(&r, namespace))
        .collect();
    keys.dedup();
    keys
}

/// A control loop. Implementations are idempotent: a reconcile reads the current state from
/// the cache and moves the store towards the desired state, whatever happened before.
pub trait Reconciler: Send + Sync + 'static {
    /// Short name for logs and spans (`replicaset`).
    fn name(&self) -> &'static str;

    /// What the controller reads and which changes wake which keys.
    fn watches(&self) -> Vec<Watch>;

    /// Keys reconciled in parallel (distinct keys only).
    fn workers(&self) -> usize {
        2
    }

    /// Brings `key` to its desired state. An `Err` requeues the key with backoff.
    fn reconcile<K: Kv + 'static>(
        &self,
        key: &str,
        ctx: &Context<K>,
    ) -> impl Future<Output = Result<Action>> + Send;
}

/// True when Git owns the stored object: it carries coxswain's managed-by label and no
/// owner reference (Git cannot write `ownerReferences`, and an object a controller created
/// from a template that copied the label is the controller's, not Git's). Controllers never
/// delete such an object nor change anything but its `status`.
pub fn is_git_owned(value: &Value) -> bool {
    crate::plan::is_git_owned(value)
        && value
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
}

/// A flag that is true while `member` is the Raft leader, fed from its Raft metrics by a
/// task that ends when every receiver is gone. Call it inside a Tokio runtime.
pub fn leader_flag(member: &Member) -> watch::Receiver<bool> {
    let mut metrics = member.raft().metrics();
    let id = member.id();
    let (tx, rx) = watch::channel(metrics.borrow().current_leader == Some(id));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        // Raft stopped: this member leads nothing any more.
                        tx.send_replace(false);
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            let now = metrics.borrow().current_leader == Some(id);
            tx.send_if_modified(|v| std::mem::replace(v, now) != now);
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use coxswain_store::KeyValue;
    use serde_json::json;

    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            create_revision: 1,
            mod_revision: 1,
        }
    }

    fn owned_by(kind: &str, name: &str, controller: bool) -> Value {
        json!({"metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": controller}
        ]}})
    }

    #[test]
    fn controller_owner_maps_old_and_new_owner_of_the_kind_only() {
        let w = Watch::controller_owner("/core/Pod/", "apps/v1", "ReplicaSet");
        let cache = Cache::new(["/core/Pod/".to_string()]);
        let old = kv("/core/Pod/ns/p", owned_by("ReplicaSet", "a", true));
        let new = kv("/core/Pod/ns/p", owned_by("ReplicaSet", "b", true));
        let ev = ObjectEvent {
            key: "/core/Pod/ns/p",
            old: Some(&old),
            new: Some(&new),
        };
        assert_eq!(
            (w.map)(&ev, &cache),
            ["/apps/ReplicaSet/ns/a", "/apps/ReplicaSet/ns/b"]
        );
        let not_controller = kv("/core/Pod/ns/p", owned_by("ReplicaSet", "a", false));
        let other_kind = kv("/core/Pod/ns/p", owned_by("DaemonSet", "a", true));
        for v in [&not_controller, &other_kind] {
            let ev = ObjectEvent {
                key: "/core/Pod/ns/p",
                old: None,
                new: Some(v),
            };
            assert!((w.map)(&ev, &cache).is_empty());
        }
    }

    #[test]
    fn git_ownership_needs_the_label_and_no_owner() {
        let git = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "coxswain"}}});
        assert!(is_git_owned(&git));
        let mut copied = git.clone();
        copied["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u"}]);
        assert!(!is_git_owned(&copied));
        assert!(!is_git_owned(&json!({"metadata": {}})));
    }
}
