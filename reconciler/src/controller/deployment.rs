//! The Deployment controller's planning logic: one pure function, [`plan`], that takes a
//! Deployment, the ReplicaSets it controls, their Pods and the time, and answers with the
//! writes one reconcile should make ([`Plan`]). The controller runtime reads the store, calls
//! [`plan`], writes the plan and requeues; nothing here does I/O, so every rule can be tested
//! with plain values.
//!
//! The rules are Kubernetes' own (`pkg/controller/deployment`: `sync.go`, `rolling.go`,
//! `recreate.go`, `progress.go`, `util/deployment_util.go`), step for step, so a user's
//! Deployment rolls out here the way it would on a cluster:
//!
//! - the new ReplicaSet is the oldest owned one whose pod template equals the Deployment's,
//!   ignoring the `pod-template-hash` label; otherwise one named `<deployment>-<hash>` is
//!   created, with revision = the highest old revision + 1;
//! - RollingUpdate scales the new ReplicaSet up within `replicas + maxSurge`, then old ones
//!   down (unhealthy replicas first, then by availability) while keeping
//!   `replicas - maxUnavailable` available; Recreate scales old ones to 0, waits until none of
//!   their Pods is left, then scales the new one up;
//! - a change of `replicas` in the middle of a rollout is spread over the active ReplicaSets
//!   in proportion to their size (Kubernetes' `scale()`, in full);
//! - `status` (counts, `Available`, `Progressing` with its deadline, `ReplicaFailure`) and the
//!   cleanup of old ReplicaSets beyond `revisionHistoryLimit`.
//!
//! Where this differs from Kubernetes, on purpose:
//!
//! - counts come from the Pods themselves, not from the ReplicaSets' status, so a plan never
//!   acts on a ReplicaSet status the ReplicaSet controller has not written yet, and can say
//!   when the next Pod becomes available ([`Plan::requeue_at`]);
//! - a Pod is available once Ready for *at least* `minReadySeconds` (Kubernetes: strictly
//!   more), so the requeue time is the exact moment availability changes;
//! - a name collision with a ReplicaSet this Deployment already owns is solved within the same
//!   plan (collisionCount goes up until the name is free) instead of on the next sync; a
//!   collision with a ReplicaSet it does not own is seen only by the store's create, and the
//!   runtime then writes [`collision_status`] and requeues, as Kubernetes does;
//! - the Deployment's own `deployment.kubernetes.io/revision` annotation is not written (Git
//!   owns the Deployment's metadata); the revision is in [`Plan::revision`] for logs;
//! - the ReplicaSet never carries coxswain's Git-ownership marks (the `managed-by: coxswain`
//!   label, the source-file annotation) even when the template or the Deployment has them:
//!   the sync would otherwise take the ReplicaSet for a Git object and prune it.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use coxswain_schema::intorstr::IntOrString;
use coxswain_schema::kinds::apps::{
    Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec, StrategyType,
};
use coxswain_schema::kinds::pod::{Pod, PodTemplateSpec, TemplateMeta};
use coxswain_schema::meta::{Condition, ObjectMeta, OwnerReference};
use coxswain_schema::selector::LabelSelector;

use std::time::Duration;

use coxswain_store::{CmpOp, Compare, Kv, Op, Target, Txn};
use serde_json::Value;

use super::cache::{Cache, ObjectEvent, controller_of, owner_key, parse_key};
use super::replicaset::{POD_PREFIX, RS_PREFIX};
use super::{Action, Context, Reconciler, Watch, controller_owner_keys};
use crate::error::{Error, Result};
use crate::plan::{MANAGED_BY, MANAGED_BY_LABEL, SOURCE_FILE_ANNOTATION};

/// The label that tells the Pods of one ReplicaSet from those of its siblings.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The revision of a ReplicaSet within its Deployment's history.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had, when a rollback made it the new one again.
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when it last scaled this ReplicaSet.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when it last scaled this ReplicaSet; the
/// base of proportional scaling.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";

/// Condition type: the rollout is moving (or has finished, or is stuck).
pub const PROGRESSING: &str = "Progressing";
/// Condition type: at least `replicas - maxUnavailable` Pods are available.
pub const AVAILABLE: &str = "Available";
/// Condition type copied from a ReplicaSet that cannot create or delete Pods.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// The condition reasons, with Kubernetes' spelling (tools match on them).
pub mod reason {
    pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
    pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
    pub const RS_UPDATED: &str = "ReplicaSetUpdated";
    pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
    pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
    pub const PAUSED: &str = "DeploymentPaused";
    pub const RESUMED: &str = "DeploymentResumed";
    pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
    pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
}

/// Kubernetes' defaults for the fields a manifest may leave out.
const DEFAULT_REPLICAS: i32 = 1;
const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
const DEFAULT_BUDGET: &str = "25%";
/// Kubernetes' cap on the revision-history annotation, so a Deployment rolled back and forth
/// for years does not grow its ReplicaSet without bound.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;
/// Annotations of the Deployment that are not copied to its ReplicaSets: the controller's
/// own bookkeeping, kubectl's last-applied copy (it describes the Deployment), and
/// coxswain's Git-ownership mark (see the module docs).
const NOT_COPIED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deprecated.deployment.rollback.to",
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    SOURCE_FILE_ANNOTATION,
];
/// The alphabet of Kubernetes' `rand.SafeEncodeString`: no vowels (no words in names) and no
/// look-alike characters.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// One change of a ReplicaSet's size, for logs and events ("Scaled up replica set X from 0
/// to 3").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub replica_set: String,
    pub from: i32,
    pub to: i32,
}

/// What one reconcile of a Deployment should write. Applying it and planning again with the
/// results (and no Pod change) gives a plan with nothing to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The new ReplicaSet to create, complete but for what the store stamps on a create
    /// (`uid`, `creationTimestamp`, `generation`, `resourceVersion`).
    pub create: Option<ReplicaSet>,
    /// Owned ReplicaSets to write back: the objects as read, with `spec.replicas`,
    /// `spec.minReadySeconds` or annotations changed (`resourceVersion` kept, for the
    /// store's compare-and-swap).
    pub update: Vec<ReplicaSet>,
    /// Old ReplicaSets to delete (beyond `revisionHistoryLimit`, scaled to 0, no Pods left).
    pub delete: Vec<ReplicaSet>,
    /// Every size change in `create` and `update`, in the order Kubernetes makes them.
    pub scales: Vec<Scale>,
    /// The Deployment's new status.
    pub status: DeploymentStatus,
    /// Whether `status` differs from the Deployment's current one.
    pub status_changed: bool,
    /// The revision of the new ReplicaSet, when there is one.
    pub revision: Option<String>,
    /// When to reconcile again if nothing else happens first: the next moment a Ready Pod
    /// becomes available (`minReadySeconds`) or the progress deadline can pass.
    pub requeue_at: Option<DateTime<Utc>>,
}

impl Plan {
    /// Whether the plan writes nothing (a requeue may still be due).
    pub fn is_noop(&self) -> bool {
        self.create.is_none()
            && self.update.is_empty()
            && self.delete.is_empty()
            && !self.status_changed
    }
}

/// A stable hash of a pod template (plus the collision count), as Kubernetes'
/// `controller.ComputeHash`: FNV-1a 32 over the template, then the count as 4 little-endian
/// bytes, the decimal number rendered in the safe alphabet. The template is serialised as
/// compact JSON of our types (fields in declaration order, maps sorted), not with Go's
/// deep-hash printer, so the value differs from what Kubernetes computes for the same
/// template; it is stable across runs and versions of coxswain as long as the schema types
/// keep their shape.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    // Serialising these types cannot fail: they are plain structs, strings and string-keyed
    // maps. Were it ever to fail, hashing the empty input is still deterministic.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h = fnv1a32(2_166_136_261, &bytes);
    if let Some(c) = collision_count {
        h = fnv1a32(h, &c.to_le_bytes());
    }
    h.to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

fn fnv1a32(mut h: u32, bytes: &[u8]) -> u32 {
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(16_777_619);
    }
    h
}

/// The status to write when creating the planned ReplicaSet failed because a ReplicaSet of
/// that name exists and is not this Deployment's (its controller is someone else, or its
/// template differs): `collisionCount` goes up by one, so the next plan picks another name.
pub fn collision_status(deployment: &Deployment) -> DeploymentStatus {
    let mut s = deployment.status.clone().unwrap_or_default();
    s.collision_count = Some(s.collision_count.unwrap_or(0).saturating_add(1));
    s
}

/// Whether two pod templates are the same but for the `pod-template-hash` label
/// (Kubernetes' `EqualIgnoreHash`), which decides whether a ReplicaSet is the new one.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    fn strip(t: &PodTemplateSpec) -> PodTemplateSpec {
        let mut t = t.clone();
        if let Some(m) = &mut t.metadata {
            if let Some(l) = &mut m.labels {
                l.remove(POD_TEMPLATE_HASH_LABEL);
            }
            // An empty map and no map are the same template (Kubernetes' semantic equality).
            if m.labels.as_ref().is_some_and(BTreeMap::is_empty) {
                m.labels = None;
            }
            if m.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
                m.annotations = None;
            }
            if *m == TemplateMeta::default() {
                t.metadata = None;
            }
        }
        t
    }
    strip(a) == strip(b)
}

/// Plans one reconcile of `deployment`.
///
/// `replicasets` are the ReplicaSets whose controller reference is this Deployment (the
/// runtime does adoption). `pods` may be any superset of their Pods (e.g. the namespace's):
/// a Pod counts for the owned ReplicaSet its controller reference names (by uid, or by name
/// when either side has no uid). `now` is the time used for conditions, `minReadySeconds`
/// and the progress deadline.
pub fn plan(
    deployment: &Deployment,
    replicasets: &[ReplicaSet],
    pods: &[Pod],
    now: DateTime<Utc>,
) -> Plan {
    let _span = tracing::debug_span!(
        "deployment.plan",
        namespace = deployment.metadata.namespace.as_deref().unwrap_or("default"),
        name = %deployment.metadata.name,
    )
    .entered();
    let mut p = Planner::new(deployment, replicasets, pods, now);
    p.run();
    p.finish()
}

/// Pod counts of one ReplicaSet.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Not terminal and not being deleted (`status.replicas` of a ReplicaSet).
    active: i32,
    /// Active and Ready.
    ready: i32,
    /// Ready for at least `minReadySeconds`.
    available: i32,
    /// Not terminal, including Pods being deleted: Recreate waits for these to be gone.
    present: i32,
}

/// One owned ReplicaSet (or the one about to be created) while planning.
#[derive(Debug)]
struct Slot {
    /// The working copy every step edits.
    rs: ReplicaSet,
    /// As read; `None` for the ReplicaSet this plan creates.
    orig: Option<ReplicaSet>,
    counts: Counts,
    created: Option<DateTime<Utc>>,
}

impl Slot {
    fn replicas(&self) -> i32 {
        self.rs.spec.replicas.unwrap_or(DEFAULT_REPLICAS)
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.rs
            .metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
    /// An unparsable or missing revision counts as 0, as in Kubernetes' `Revision()` users.
    fn revision(&self) -> i64 {
        self.annotation(REVISION_ANNOTATION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    }
    fn name(&self) -> &str {
        &self.rs.metadata.name
    }
}

/// The state of one reconcile. `status` plays the part of Kubernetes' `d.Status`, which the
/// controller edits in place (paused and new-ReplicaSet conditions) before computing the
/// status it writes.
struct Planner<'a> {
    d: &'a Deployment,
    now: DateTime<Utc>,
    replicas: i32,
    min_ready: i32,
    /// `None`: no deadline (`progressDeadlineSeconds` = MaxInt32, as Kubernetes spells it).
    deadline: Option<i32>,
    /// `None`: keep every old ReplicaSet.
    history_limit: Option<i32>,
    paused: bool,
    recreate: bool,
    status: DeploymentStatus,
    /// Sorted oldest first, so Kubernetes' "by creation timestamp" walks are slice order.
    slots: Vec<Slot>,
    new: Option<usize>,
    deletes: Vec<usize>,
    scales: Vec<Scale>,
    requeue: Option<DateTime<Utc>>,
}

impl<'a> Planner<'a> {
    fn new(d: &'a Deployment, rss: &[ReplicaSet], pods: &[Pod], now: DateTime<Utc>) -> Self {
        let spec = &d.spec;
        let mut slots: Vec<Slot> = rss
            .iter()
            .map(|rs| Slot {
                rs: rs.clone(),
                orig: Some(rs.clone()),
                counts: Counts::default(),
                created: parse_time(rs.metadata.creation_timestamp.as_deref()),
            })
            .collect();
        slots.sort_by(|a, b| (a.created, a.name()).cmp(&(b.created, b.name())));
        let min_ready = spec.min_ready_seconds.unwrap_or(0).max(0);
        let mut requeue = None;
        for pod in pods {
            let Some(i) = owner_slot(&slots, pod) else {
                continue;
            };
            let c = &mut slots[i].counts;
            if is_terminal(pod) {
                continue;
            }
            c.present += 1;
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            c.active += 1;
            let Some(since) = ready_since(pod) else {
                continue;
            };
            c.ready += 1;
            if min_ready == 0 {
                c.available += 1;
                continue;
            }
            // A Ready Pod without a transition time cannot be timed; its next status
            // update (which sets the time) triggers a reconcile anyway.
            let Some(at) = since.map(|t| t + TimeDelta::seconds(i64::from(min_ready))) else {
                continue;
            };
            if now >= at {
                c.available += 1;
            } else {
                requeue = earliest(requeue, Some(at));
            }
        }
        let deadline = match spec.progress_deadline_seconds {
            Some(i32::MAX) => None,
            Some(s) => Some(s.max(0)),
            None => Some(DEFAULT_PROGRESS_DEADLINE_SECONDS),
        };
        let history_limit = match spec.revision_history_limit {
            Some(i32::MAX) => None,
            Some(n) => Some(n.max(0)),
            None => Some(DEFAULT_REVISION_HISTORY_LIMIT),
        };
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_) == Some(StrategyType::Recreate);
        Planner {
            d,
            now,
            replicas: spec.replicas.unwrap_or(DEFAULT_REPLICAS).max(0),
            min_ready,
            deadline,
            history_limit,
            paused: spec.paused.unwrap_or(false),
            recreate,
            status: d.status.clone().unwrap_or_default(),
            slots,
            new: None,
            deletes: Vec::new(),
            scales: Vec::new(),
            requeue,
        }
    }

    /// Kubernetes' `syncDeployment` after the ReplicaSets were listed.
    fn run(&mut self) {
        if self.d.metadata.deletion_timestamp.is_some() {
            // Being deleted: the garbage collector removes the ReplicaSets; only report.
            self.sync_revision(false);
            self.status = self.calculate_status();
            return;
        }
        if selector_is_empty(&self.d.spec.selector) {
            // A selector matching every Pod would let this Deployment fight every other
            // workload; Kubernetes refuses to act and only records that it saw the spec.
            self.status.observed_generation = self.d.metadata.generation;
            self.requeue = None;
            return;
        }
        self.check_paused_conditions();
        if self.paused || self.is_scaling_event() {
            self.sync_scale();
            return;
        }
        if self.recreate {
            self.rollout_recreate();
        } else {
            self.rollout_rolling();
        }
    }

    fn finish(self) -> Plan {
        let mut plan = Plan {
            create: None,
            update: Vec::new(),
            delete: self
                .deletes
                .iter()
                .filter_map(|&i| self.slots[i].orig.clone())
                .collect(),
            scales: self.scales,
            status_changed: self.d.status.clone().unwrap_or_default() != self.status,
            status: self.status,
            revision: self
                .new
                .and_then(|i| self.slots[i].annotation(REVISION_ANNOTATION))
                .map(str::to_string),
            requeue_at: self.requeue,
        };
        for (i, slot) in self.slots.into_iter().enumerate() {
            match slot.orig {
                None => plan.create = Some(slot.rs),
                Some(orig) if orig != slot.rs && !self.deletes.contains(&i) => {
                    plan.update.push(slot.rs);
                }
                Some(_) => {}
            }
        }
        plan
    }

    // --- budgets -------------------------------------------------------------------------

    /// Kubernetes' `ResolveFenceposts`: surge rounds up, unavailable down, and both 0 would
    /// deadlock a rollout, so unavailable becomes 1 (validation refuses that spec anyway).
    fn fenceposts(&self) -> (i32, i32) {
        let ru = self
            .d
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let budget = |v: Option<&IntOrString>, up: bool| {
            let default = IntOrString::String(DEFAULT_BUDGET.into());
            // Validation refuses budgets that are not N or N%; falling back to the
            // default keeps a bad stored object from stopping the controller.
            v.and_then(|v| v.scaled_value(self.replicas, up))
                .or_else(|| default.scaled_value(self.replicas, up))
                .unwrap_or(0)
                .max(0)
        };
        let surge = budget(ru.and_then(|r| r.max_surge.as_ref()), true);
        let unavailable = budget(ru.and_then(|r| r.max_unavailable.as_ref()), false);
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }

    fn max_surge(&self) -> i32 {
        if self.recreate {
            0
        } else {
            self.fenceposts().0
        }
    }

    fn max_unavailable(&self) -> i32 {
        if self.recreate || self.replicas == 0 {
            0
        } else {
            self.fenceposts().1.min(self.replicas)
        }
    }

    // --- ReplicaSet helpers --------------------------------------------------------------

    fn olds(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| Some(i) != self.new)
            .collect()
    }

    fn total_replicas(&self, which: &[usize]) -> i32 {
        sum(which.iter().map(|&i| self.slots[i].replicas()))
    }

    fn all(&self) -> Vec<usize> {
        (0..self.slots.len()).collect()
    }

    /// Kubernetes' `scaleReplicaSet`: sets the size and the replica annotations; true when
    /// the size changed.
    fn scale(&mut self, i: usize, to: i32) -> bool {
        let desired = self.replicas;
        let max = desired.saturating_add(self.max_surge());
        let slot = &mut self.slots[i];
        let from = slot.replicas();
        let size_changed = from != to;
        let ann = slot
            .rs
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        let ann_changed = set_replica_annotations(ann, desired, max);
        if size_changed || ann_changed {
            slot.rs.spec.replicas = Some(to);
        }
        if size_changed {
            tracing::debug!(replica_set = %slot.name(), from, to, "scaling replica set");
            self.scales.push(Scale {
                replica_set: slot.name().to_string(),
                from,
                to,
            });
        }
        size_changed
    }

    // --- the new ReplicaSet ---------------------------------------------------------------

    /// Kubernetes' `getAllReplicaSetsAndSyncRevision`: finds the new ReplicaSet and brings
    /// its annotations up to date, or (when `create`) plans it.
    fn sync_revision(&mut self, create: bool) {
        if self.new.is_none() {
            self.new = self
                .slots
                .iter()
                .position(|s| equal_ignore_hash(&s.rs.spec.template, &self.d.spec.template));
        }
        let max_old = self
            .olds()
            .iter()
            .map(|&i| self.slots[i].revision())
            .max()
            .unwrap_or(0);
        let new_revision = max_old.saturating_add(1);
        if let Some(i) = self.new {
            if self.slots[i].orig.is_none() {
                return;
            }
            let mut rs = self.slots[i].rs.clone();
            self.set_new_rs_annotations(&mut rs, new_revision, true);
            if rs.spec.min_ready_seconds.unwrap_or(0) != self.min_ready {
                rs.spec.min_ready_seconds = self.d.spec.min_ready_seconds;
            }
            let name = rs.metadata.name.clone();
            self.slots[i].rs = rs;
            // A Deployment seen for the first time with its new ReplicaSet already there
            // (e.g. after a controller restart with no status) starts its progress clock now.
            if self.deadline.is_some() && get_cond(&self.status, PROGRESSING).is_none() {
                let c = self.cond(
                    PROGRESSING,
                    "True",
                    reason::FOUND_NEW_RS,
                    format!("Found new replica set \"{name}\""),
                );
                set_cond(&mut self.status, c);
            }
            return;
        }
        if !create {
            return;
        }
        self.plan_new_rs(new_revision);
    }

    fn plan_new_rs(&mut self, revision: i64) {
        let d = self.d;
        let mut collision_count = self.status.collision_count;
        let mut hash = pod_template_hash(&d.spec.template, collision_count);
        // An owned ReplicaSet with the planned name but another template (it would be the new
        // one otherwise) is a hash collision: bump the count until the name is free. Each
        // collision needs its own ReplicaSet, so this ends within `slots.len()` rounds.
        for _ in 0..self.slots.len() {
            let name = format!("{}-{hash}", d.metadata.name);
            if !self.slots.iter().any(|s| s.name() == name) {
                break;
            }
            collision_count = Some(collision_count.unwrap_or(0).saturating_add(1));
            hash = pod_template_hash(&d.spec.template, collision_count);
        }
        self.status.collision_count = collision_count;

        let mut template = d.spec.template.clone();
        template
            .metadata
            .get_or_insert_with(TemplateMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut selector = d.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY) {
            labels.remove(MANAGED_BY_LABEL);
        }
        let name = format!("{}-{hash}", d.metadata.name);
        let rs = ReplicaSet {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            metadata: ObjectMeta {
                name: name.clone(),
                namespace: d.metadata.namespace.clone(),
                labels: Some(labels),
                owner_references: Some(vec![OwnerReference {
                    api_version: d.api_version.clone(),
                    kind: d.kind.clone(),
                    name: d.metadata.name.clone(),
                    // The store gives every object a uid on its first write, and the runtime
                    // plans only Deployments it read from the store.
                    uid: d.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: d.spec.min_ready_seconds,
                selector,
                template,
            },
            status: None,
        };
        self.slots.push(Slot {
            rs,
            orig: None,
            counts: Counts::default(),
            created: Some(self.now),
        });
        let i = self.slots.len() - 1;
        self.new = Some(i);
        let replicas = self.new_rs_new_replicas(i);
        let mut rs = self.slots[i].rs.clone();
        rs.spec.replicas = Some(replicas);
        self.set_new_rs_annotations(&mut rs, revision, false);
        self.slots[i].rs = rs;
        if replicas > 0 {
            self.scales.push(Scale {
                replica_set: name.clone(),
                from: 0,
                to: replicas,
            });
        }
        if self.deadline.is_some() {
            let c = self.cond(
                PROGRESSING,
                "True",
                reason::NEW_RS_CREATED,
                format!("Created new replica set \"{name}\""),
            );
            set_cond(&mut self.status, c);
        }
    }

    /// Kubernetes' `SetNewReplicaSetAnnotations`.
    fn set_new_rs_annotations(&self, rs: &mut ReplicaSet, revision: i64, exists: bool) {
        let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if !NOT_COPIED_ANNOTATIONS.contains(&k.as_str()) && ann.get(k) != Some(v) {
                ann.insert(k.clone(), v.clone());
            }
        }
        let old = ann.get(REVISION_ANNOTATION).cloned();
        let old_revision = match old.as_deref() {
            None | Some("") => 0,
            Some(s) => match s.parse::<i64>() {
                Ok(n) => n,
                // Someone wrote a revision we cannot read: leave it, as Kubernetes does.
                Err(_) => return,
            },
        };
        if old_revision < revision {
            ann.insert(REVISION_ANNOTATION.into(), revision.to_string());
            // A ReplicaSet that had a revision and gets a newer one is being rolled back to;
            // keep the old number for `rollout history`.
            if let Some(old) = old.filter(|o| !o.is_empty()) {
                append_revision_history(ann, &old);
            }
        }
        if !exists {
            let max = self.replicas.saturating_add(self.max_surge());
            set_replica_annotations(ann, self.replicas, max);
        }
    }

    /// Kubernetes' `NewRSNewReplicas`: how big the new ReplicaSet may be right now.
    fn new_rs_new_replicas(&self, new: usize) -> i32 {
        if self.recreate {
            return self.replicas;
        }
        let current = self.total_replicas(&self.all());
        let max_total = self.replicas.saturating_add(self.max_surge());
        let cur = self.slots[new].replicas();
        if current >= max_total {
            return cur;
        }
        let up = (max_total - current).min(self.replicas - cur);
        cur + up
    }

    // --- paused and scaling ----------------------------------------------------------------

    /// Kubernetes' `checkPausedConditions`.
    fn check_paused_conditions(&mut self) {
        if self.deadline.is_none() {
            return;
        }
        let reason = get_cond(&self.status, PROGRESSING).and_then(|c| c.reason.clone());
        // A reported timeout is worth more than "paused": keep it.
        if reason.as_deref() == Some(reason::TIMED_OUT) {
            return;
        }
        let paused_cond = reason.as_deref() == Some(reason::PAUSED);
        if self.paused && !paused_cond {
            let c = self.cond(
                PROGRESSING,
                "Unknown",
                reason::PAUSED,
                "Deployment is paused",
            );
            set_cond(&mut self.status, c);
        } else if !self.paused && paused_cond {
            let c = self.cond(
                PROGRESSING,
                "Unknown",
                reason::RESUMED,
                "Deployment is resumed",
            );
            set_cond(&mut self.status, c);
        }
    }

    /// Kubernetes' `isScalingEvent`: an active ReplicaSet was last sized for another
    /// `replicas`.
    fn is_scaling_event(&mut self) -> bool {
        self.sync_revision(false);
        self.slots.iter().any(|s| {
            s.replicas() > 0
                && s.annotation(DESIRED_REPLICAS_ANNOTATION)
                    .and_then(|v| v.parse::<i32>().ok())
                    .is_some_and(|desired| desired != self.replicas)
        })
    }

    /// Kubernetes' `sync`: scale only (paused, or `replicas` changed), no rollout progress.
    fn sync_scale(&mut self) {
        self.sync_revision(false);
        self.scale_all();
        if self.paused {
            self.cleanup();
        }
        self.status = self.calculate_status();
    }

    /// Kubernetes' `scale`: one active ReplicaSet takes the whole size; a saturated new one
    /// leaves the old ones nothing; otherwise a rolling Deployment's change is spread over
    /// the active ReplicaSets in proportion to their size.
    fn scale_all(&mut self) {
        let olds = self.olds();
        let active: Vec<usize> = olds
            .iter()
            .rev()
            .copied()
            .chain(self.new)
            .filter(|&i| self.slots[i].replicas() > 0)
            .collect();
        let only = match active.len() {
            // Nothing runs: grow the newest (the new one if there is one).
            0 => self.new.or(olds.last().copied()),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = only {
            if self.slots[i].replicas() != self.replicas {
                self.scale(i, self.replicas);
            }
            return;
        }
        if let Some(n) = self.new
            && self.is_saturated(n)
        {
            for i in active.into_iter().filter(|&i| i != n) {
                self.scale(i, 0);
            }
            return;
        }
        if self.recreate {
            return;
        }
        let allowed = if self.replicas > 0 {
            self.replicas.saturating_add(self.max_surge())
        } else {
            0
        };
        let to_add = allowed - self.total_replicas(&active);
        let mut order = active;
        // Bigger first; on a tie grow the newer, shrink the older (Kubernetes'
        // ReplicaSetsBySizeNewer / ReplicaSetsBySizeOlder).
        let key = |s: &Slot| (s.replicas(), s.created, s.name().to_string());
        if to_add > 0 {
            order.sort_by(|&a, &b| key(&self.slots[b]).cmp(&key(&self.slots[a])));
        } else if to_add < 0 {
            order.sort_by(|&a, &b| {
                let (ka, kb) = (key(&self.slots[a]), key(&self.slots[b]));
                kb.0.cmp(&ka.0).then((ka.1, &ka.2).cmp(&(kb.1, &kb.2)))
            });
        }
        let mut added = 0;
        let mut sizes = Vec::with_capacity(order.len());
        for &i in &order {
            let cur = self.slots[i].replicas();
            let p = self.proportion(i, to_add, added);
            sizes.push(cur + p);
            added += p;
        }
        if let Some(first) = sizes.first_mut()
            && to_add != 0
        {
            // Rounding leftovers go to the biggest ReplicaSet.
            *first = (*first + to_add - added).max(0);
        }
        for (i, size) in order.into_iter().zip(sizes) {
            self.scale(i, size);
        }
    }

    fn is_saturated(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.replicas() == self.replicas
            && s.annotation(DESIRED_REPLICAS_ANNOTATION)
                .and_then(|v| v.parse::<i32>().ok())
                == Some(self.replicas)
            && s.counts.available == self.replicas
    }

    /// Kubernetes' `GetReplicaSetProportion`.
    fn proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        let cur = self.slots[i].replicas();
        if cur == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = self.fraction(i);
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// Kubernetes' `getReplicaSetFraction`: the ReplicaSet's share of the new maximum, from
    /// the maximum it was last sized for.
    fn fraction(&self, i: usize) -> i32 {
        let cur = self.slots[i].replicas();
        if self.replicas == 0 {
            return -cur;
        }
        let max_now = i64::from(self.replicas.saturating_add(self.max_surge()));
        let before = self.slots[i]
            .annotation(MAX_REPLICAS_ANNOTATION)
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|&v| v != 0)
            .or(self.d.status.as_ref().and_then(|s| s.replicas))
            .unwrap_or(0);
        if before <= 0 {
            // Nothing to take a proportion of (Kubernetes would divide by zero here).
            return 0;
        }
        let (num, den) = (i64::from(cur) * max_now, i64::from(before));
        // Round half away from zero, like Go's math.Round on a positive value.
        let size = (2 * num + den) / (2 * den);
        i32::try_from(size).unwrap_or(i32::MAX).saturating_sub(cur)
    }

    // --- rollouts -------------------------------------------------------------------------

    /// Kubernetes' `rolloutRolling`.
    fn rollout_rolling(&mut self) {
        self.sync_revision(true);
        if self.reconcile_new_rs() || self.reconcile_old_rss() {
            self.sync_rollout_status();
            return;
        }
        if complete(self.d, &self.status) {
            self.cleanup();
        }
        self.sync_rollout_status();
    }

    fn reconcile_new_rs(&mut self) -> bool {
        let Some(n) = self.new else { return false };
        let cur = self.slots[n].replicas();
        if cur == self.replicas {
            return false;
        }
        if cur > self.replicas {
            return self.scale(n, self.replicas);
        }
        let to = self.new_rs_new_replicas(n);
        self.scale(n, to)
    }

    /// Kubernetes' `reconcileOldReplicaSets`: how far old ReplicaSets may shrink without
    /// going under `replicas - maxUnavailable` available.
    fn reconcile_old_rss(&mut self) -> bool {
        let Some(n) = self.new else { return false };
        let olds = self.olds();
        if self.total_replicas(&olds) == 0 {
            return false;
        }
        let all_pods = self.total_replicas(&self.all());
        let min_available = self.replicas - self.max_unavailable();
        let new_unavailable = self.slots[n].replicas() - self.slots[n].counts.available;
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let cleaned = self.cleanup_unhealthy(&olds, max_scaled_down);
        let scaled = self.scale_down_old_for_rolling(&olds);
        cleaned + scaled > 0
    }

    /// Unavailable replicas of old ReplicaSets go first: they serve nobody, and waiting for
    /// them would block the rollout.
    fn cleanup_unhealthy(&mut self, olds: &[usize], max: i32) -> i32 {
        let mut total = 0;
        for &i in olds {
            if total >= max {
                break;
            }
            let (cur, available) = (self.slots[i].replicas(), self.slots[i].counts.available);
            // More available than wanted means Pods still on their way out: nothing
            // unhealthy to remove (Kubernetes reports an error for this case).
            if cur == 0 || available >= cur {
                continue;
            }
            let down = (max - total).min(cur - available);
            self.scale(i, cur - down);
            total += down;
        }
        total
    }

    fn scale_down_old_for_rolling(&mut self, olds: &[usize]) -> i32 {
        let min_available = self.replicas - self.max_unavailable();
        let available = sum(self.slots.iter().map(|s| s.counts.available));
        if available <= min_available {
            return 0;
        }
        let budget = available - min_available;
        let mut total = 0;
        for &i in olds {
            if total >= budget {
                break;
            }
            let cur = self.slots[i].replicas();
            if cur == 0 {
                continue;
            }
            let down = cur.min(budget - total);
            self.scale(i, cur - down);
            total += down;
        }
        total
    }

    /// Kubernetes' `rolloutRecreate`: no new Pod runs beside an old one.
    fn rollout_recreate(&mut self) {
        // No new ReplicaSet yet: it is created only once the old Pods are gone.
        self.sync_revision(false);
        let mut scaled_down = false;
        for i in self.olds() {
            if self.slots[i].replicas() > 0 {
                scaled_down |= self.scale(i, 0);
            }
        }
        let old_running = self
            .olds()
            .iter()
            .any(|&i| self.slots[i].counts.present > 0);
        if scaled_down || old_running {
            self.sync_rollout_status();
            return;
        }
        if self.new.is_none() {
            self.sync_revision(true);
        }
        if let Some(n) = self.new {
            self.scale(n, self.replicas);
        }
        if complete(self.d, &self.status) {
            self.cleanup();
        }
        self.sync_rollout_status();
    }

    /// Kubernetes' `cleanupDeployment`: delete the oldest revisions beyond the limit, but
    /// only ReplicaSets that are scaled to 0, have no Pod left and whose last scale-down the
    /// ReplicaSet controller has seen.
    fn cleanup(&mut self) {
        let Some(limit) = self.history_limit else {
            return;
        };
        let mut cands: Vec<usize> = self
            .olds()
            .into_iter()
            .filter(|&i| {
                let s = &self.slots[i];
                s.orig.is_some() && s.rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let extra = cands
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        cands.sort_by_key(|&i| {
            let s = &self.slots[i];
            (s.revision(), s.created, s.name().to_string())
        });
        for &i in cands.iter().take(extra) {
            let s = &self.slots[i];
            let Some(orig) = &s.orig else { continue };
            let observed = orig
                .status
                .as_ref()
                .and_then(|st| st.observed_generation)
                .unwrap_or(0);
            let deletable = orig.spec.replicas == Some(0)
                && s.counts.present == 0
                && *orig == s.rs
                && orig.metadata.generation.unwrap_or(0) <= observed;
            if deletable {
                tracing::debug!(replica_set = %s.name(), "deleting old replica set");
                self.deletes.push(i);
            }
        }
    }

    // --- status ---------------------------------------------------------------------------

    /// Kubernetes' `calculateStatus`.
    fn calculate_status(&self) -> DeploymentStatus {
        let available = sum(self.slots.iter().map(|s| s.counts.available));
        let spec_total = self.total_replicas(&self.all());
        let mut s = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(sum(self.slots.iter().map(|s| s.counts.active))),
            updated_replicas: Some(self.new.map_or(0, |n| self.slots[n].counts.active)),
            ready_replicas: Some(sum(self.slots.iter().map(|s| s.counts.ready))),
            available_replicas: Some(available),
            // More available than wanted happens while scaling down; it is not negative
            // unavailability.
            unavailable_replicas: Some((spec_total - available).max(0)),
            conditions: self.status.conditions.clone(),
            collision_count: self.status.collision_count,
        };
        let c = if available >= self.replicas - self.max_unavailable() {
            self.cond(
                AVAILABLE,
                "True",
                reason::MIN_AVAILABLE,
                "Deployment has minimum availability.",
            )
        } else {
            self.cond(
                AVAILABLE,
                "False",
                reason::MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.",
            )
        };
        set_cond(&mut s, c);
        s
    }

    /// Kubernetes' `syncRolloutStatus`: the status plus the Progressing condition, and when
    /// to look again if the rollout stalls.
    fn sync_rollout_status(&mut self) {
        let mut ns = self.calculate_status();
        let Some(deadline) = self.deadline else {
            remove_cond(&mut ns, PROGRESSING);
            self.finish_status(ns);
            return;
        };
        let cur = get_cond(&self.status, PROGRESSING).cloned();
        let new_name = self.new.map(|n| self.slots[n].name().to_string());
        let what = match &new_name {
            Some(n) => format!("ReplicaSet \"{n}\""),
            None => format!("Deployment \"{}\"", self.d.metadata.name),
        };
        let was_complete = ns.replicas == ns.updated_replicas
            && cur.as_ref().and_then(|c| c.reason.as_deref()) == Some(reason::NEW_RS_AVAILABLE);
        if !was_complete {
            if complete(self.d, &ns) {
                let c = self.cond(
                    PROGRESSING,
                    "True",
                    reason::NEW_RS_AVAILABLE,
                    format!("{what} has successfully progressed."),
                );
                set_cond(&mut ns, c);
            } else if self.progressing(&ns) {
                let mut c = self.cond(
                    PROGRESSING,
                    "True",
                    reason::RS_UPDATED,
                    format!("{what} is progressing."),
                );
                // Progress refreshes lastUpdateTime (the deadline's base) even when the
                // reason stays the same, which `set_cond` would ignore.
                if let Some(cur) = &cur {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_cond(&mut ns, PROGRESSING);
                }
                set_cond(&mut ns, c);
            } else if self.timed_out(&ns, deadline) {
                let c = self.cond(
                    PROGRESSING,
                    "False",
                    reason::TIMED_OUT,
                    format!("{what} has timed out progressing."),
                );
                set_cond(&mut ns, c);
            }
        }
        // Kubernetes requeues a stalled rollout for the moment its deadline passes (one
        // second after, since the deadline check is strict).
        if let Some(c) = get_cond(&ns, PROGRESSING)
            && !complete(self.d, &ns)
            && !matches!(
                c.reason.as_deref(),
                Some(reason::TIMED_OUT | reason::NEW_RS_AVAILABLE)
            )
        {
            let from = parse_time(c.last_update_time.as_deref()).unwrap_or(self.now);
            let at = from + TimeDelta::seconds(i64::from(deadline) + 1);
            self.requeue = earliest(self.requeue, Some(at));
        }
        self.finish_status(ns);
    }

    /// Copies a ReplicaSet's `ReplicaFailure` (the new one's first) and keeps the status.
    fn finish_status(&mut self, mut ns: DeploymentStatus) {
        let order: Vec<usize> = self.new.into_iter().chain(self.all()).collect();
        let failure = order.into_iter().find_map(|i| {
            self.slots[i]
                .rs
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == REPLICA_FAILURE)
        });
        match failure {
            Some(f) => {
                let c = Condition {
                    type_: REPLICA_FAILURE.into(),
                    status: f.status.clone(),
                    reason: f.reason.clone(),
                    message: f.message.clone(),
                    last_transition_time: f.last_transition_time.clone(),
                    last_update_time: f.last_transition_time.clone(),
                    ..Condition::default()
                };
                set_cond(&mut ns, c);
            }
            None => remove_cond(&mut ns, REPLICA_FAILURE),
        }
        self.status = ns;
    }

    /// Kubernetes' `DeploymentProgressing`: more updated, ready or available Pods, or fewer
    /// old ones, than the status last written says.
    fn progressing(&self, ns: &DeploymentStatus) -> bool {
        let old = self.d.status.clone().unwrap_or_default();
        let n = |v: Option<i32>| v.unwrap_or(0);
        let old_old = n(old.replicas) - n(old.updated_replicas);
        let new_old = n(ns.replicas) - n(ns.updated_replicas);
        n(ns.updated_replicas) > n(old.updated_replicas)
            || new_old < old_old
            || n(ns.ready_replicas) > n(old.ready_replicas)
            || n(ns.available_replicas) > n(old.available_replicas)
    }

    /// Kubernetes' `DeploymentTimedOut`.
    fn timed_out(&self, ns: &DeploymentStatus, deadline: i32) -> bool {
        let Some(c) = get_cond(ns, PROGRESSING) else {
            return false;
        };
        match c.reason.as_deref() {
            Some(reason::NEW_RS_AVAILABLE) => false,
            Some(reason::TIMED_OUT) => true,
            _ => parse_time(c.last_update_time.as_deref())
                .is_some_and(|from| from + TimeDelta::seconds(i64::from(deadline)) < self.now),
        }
    }

    fn cond(
        &self,
        type_: &str,
        status: &str,
        reason: &str,
        message: impl Into<String>,
    ) -> Condition {
        let now = self.now.to_rfc3339_opts(SecondsFormat::Secs, true);
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(now.clone()),
            last_update_time: Some(now),
            ..Condition::default()
        }
    }
}

/// Kubernetes' `DeploymentComplete`: every wanted Pod is updated and available, nothing old
/// is left, and the status is about the current spec.
fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = Some(d.spec.replicas.unwrap_or(DEFAULT_REPLICAS));
    s.updated_replicas == want
        && s.replicas == want
        && s.available_replicas == want
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn get_cond<'s>(s: &'s DeploymentStatus, type_: &str) -> Option<&'s Condition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

fn remove_cond(s: &mut DeploymentStatus, type_: &str) {
    if let Some(cs) = &mut s.conditions {
        cs.retain(|c| c.type_ != type_);
    }
}

/// Kubernetes' `SetDeploymentCondition`: same status and reason is no change (times kept);
/// same status keeps the transition time.
fn set_cond(s: &mut DeploymentStatus, mut c: Condition) {
    if let Some(cur) = get_cond(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_cond(s, &c.type_);
    s.conditions.get_or_insert_with(Vec::new).push(c);
}

/// Sets the replica annotations; true when one changed.
fn set_replica_annotations(ann: &mut BTreeMap<String, String>, desired: i32, max: i32) -> bool {
    let mut changed = false;
    for (k, v) in [
        (DESIRED_REPLICAS_ANNOTATION, desired),
        (MAX_REPLICAS_ANNOTATION, max),
    ] {
        let v = v.to_string();
        if ann.get(k) != Some(&v) {
            ann.insert(k.into(), v);
            changed = true;
        }
    }
    changed
}

/// Appends `old` to the revision-history annotation, dropping the oldest entries to stay
/// within [`MAX_REVISION_HISTORY_CHARS`].
fn append_revision_history(ann: &mut BTreeMap<String, String>, old: &str) {
    let history = ann
        .get(REVISION_HISTORY_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    if history.is_empty() {
        ann.insert(REVISION_HISTORY_ANNOTATION.into(), old.to_string());
        return;
    }
    let parts: Vec<&str> = history.split(',').collect();
    let mut total = history.len() + old.len() + 1;
    let mut start = 0;
    while total > MAX_REVISION_HISTORY_CHARS && start < parts.len() {
        total -= parts[start].len() + 1;
        start += 1;
    }
    if total <= MAX_REVISION_HISTORY_CHARS {
        let mut kept = parts[start..].to_vec();
        kept.push(old);
        ann.insert(REVISION_HISTORY_ANNOTATION.into(), kept.join(","));
    }
}

fn selector_is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// The owned ReplicaSet a Pod's controller reference names.
fn owner_slot(slots: &[Slot], pod: &Pod) -> Option<usize> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.kind != "ReplicaSet" {
        return None;
    }
    slots.iter().position(|s| {
        let m = &s.rs.metadata;
        match m.uid.as_deref() {
            Some(uid) if !uid.is_empty() && !owner.uid.is_empty() => uid == owner.uid,
            _ => m.name == owner.name,
        }
    })
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// `Some(since)` when the Pod is Ready; `since` is when it became Ready, if known.
fn ready_since(pod: &Pod) -> Option<Option<DateTime<Utc>>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(parse_time(c.last_transition_time.as_deref()))
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn sum(it: impl Iterator<Item = i32>) -> i32 {
    it.fold(0, i32::saturating_add)
}

// ---------------------------------------------------------------------------------------
// The controller: reads the cache, calls `plan`, writes the plan.
// ---------------------------------------------------------------------------------------

/// Where Deployments are stored.
pub const DEPLOYMENT_PREFIX: &str = "/apps/Deployment/";

/// The Deployment controller: [`plan`] run against the cache, its writes made by
/// compare-and-swap so a ReplicaSet or Deployment changed meanwhile makes the reconcile run
/// again on fresh state instead of overwriting the change.
///
/// What it leaves out, for now: adopting orphan ReplicaSets that match a Deployment's
/// selector (only ReplicaSets whose controller reference names the Deployment count), and
/// `kubectl rollout undo`-style rollbacks (a rollback is a Git revert here).
#[derive(Debug, Clone)]
pub struct DeploymentController {
    pub workers: usize,
}

impl Default for DeploymentController {
    fn default() -> Self {
        DeploymentController { workers: 2 }
    }
}

/// A pod wakes the Deployment that controls the ReplicaSet that controls it: its readiness
/// moves the rollout on.
fn map_pod_to_deployment(ev: &ObjectEvent<'_>, cache: &Cache) -> Vec<String> {
    let mut keys: Vec<String> = controller_owner_keys(ev, "apps/v1", "ReplicaSet")
        .into_iter()
        .filter_map(|rs_key| {
            let rs = cache.get(&rs_key)?;
            let owner = controller_of(&rs.value)?;
            if owner.kind != "Deployment" || owner.api_version != "apps/v1" {
                return None;
            }
            owner_key(&owner, cache_key_namespace(&rs_key))
        })
        .collect();
    keys.dedup();
    keys
}

fn cache_key_namespace(key: &str) -> Option<&str> {
    parse_key(key).and_then(|p| p.namespace)
}

/// The store's revision as written in `metadata.resourceVersion`, for a compare-and-swap.
fn revision_of(meta: &ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// A typed object as the JSON the store keeps; `status` and other `None`s are left out.
fn to_value<T: serde::Serialize>(what: &str, object: &T) -> Result<Value> {
    serde_json::to_value(object).map_err(|e| Error::Encode {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![
            Watch::own(DEPLOYMENT_PREFIX),
            Watch::controller_owner(RS_PREFIX, "apps/v1", "Deployment"),
            Watch::custom(POD_PREFIX, map_pod_to_deployment),
        ]
    }

    fn workers(&self) -> usize {
        self.workers
    }

    async fn reconcile<K: Kv + 'static>(&self, key: &str, ctx: &Context<K>) -> Result<Action> {
        let Some(kv) = ctx.cache().get(key) else {
            // Deleted: its ReplicaSets are the garbage collector's.
            return Ok(Action::Done);
        };
        let deployment: Deployment = match serde_json::from_value(kv.value.clone()) {
            Ok(d) => d,
            Err(e) => {
                // Retrying cannot help until the object changes, which enqueues it again.
                tracing::warn!(error = %e, "not a readable Deployment; skipped");
                return Ok(Action::Done);
            }
        };
        let Some(uid) = deployment.metadata.uid.clone() else {
            tracing::warn!("Deployment without metadata.uid; skipped");
            return Ok(Action::Done);
        };
        if deployment.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let namespace = deployment
            .metadata
            .namespace
            .clone()
            .or_else(|| cache_key_namespace(key).map(str::to_string))
            .unwrap_or_else(|| "default".into());

        let stored_rs = ctx.cache().list(&format!("{RS_PREFIX}{namespace}/"));
        let owned: Vec<ReplicaSet> = stored_rs
            .iter()
            .filter(|kv| controller_of(&kv.value).is_some_and(|o| o.uid == uid))
            .filter_map(|kv| match serde_json::from_value::<ReplicaSet>(kv.value.clone()) {
                Ok(rs) => Some(rs),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "not a readable ReplicaSet; ignored");
                    None
                }
            })
            .collect();
        let owned_uids: Vec<&str> = owned
            .iter()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .collect();
        // Only the pods of owned ReplicaSets matter; parsing the rest of the namespace would
        // cost time for nothing.
        let pods: Vec<Pod> = ctx
            .cache()
            .list(&format!("{POD_PREFIX}{namespace}/"))
            .iter()
            .filter(|kv| {
                controller_of(&kv.value).is_some_and(|o| owned_uids.contains(&o.uid.as_str()))
            })
            .filter_map(|kv| serde_json::from_value::<Pod>(kv.value.clone()).ok())
            .collect();

        let now = Utc::now();
        let plan = plan(&deployment, &owned, &pods, now);
        let mut units = Vec::new();
        if let Some(mut rs) = plan.create.clone() {
            let rs_key = coxswain_store::object_key(
                "apps",
                "ReplicaSet",
                Some(&namespace),
                &rs.metadata.name,
            );
            if let Some(existing) = ctx.cache().get(&rs_key) {
                // The name is taken by a ReplicaSet this Deployment does not own (the plan
                // already steps around its own): count a collision so the next plan picks
                // another name, as Kubernetes does.
                tracing::info!(replicaset = %rs_key, owner = ?controller_of(&existing.value).map(|o| o.name), "name collision");
                let mut value = kv.value.clone();
                value["status"] = to_value(key, &collision_status(&deployment))?;
                ctx.write(vec![Txn::compare_and_swap(key, kv.mod_revision, value)])
                    .await?;
                return Ok(Action::RequeueAfter(Duration::ZERO));
            }
            rs.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
            rs.metadata.creation_timestamp = Some(now.to_rfc3339_opts(SecondsFormat::Secs, true));
            rs.metadata.generation = Some(1);
            rs.metadata.resource_version = None;
            // Absent only: a ReplicaSet created meanwhile under that name is a conflict.
            units.push(Txn::compare_and_swap(
                rs_key,
                0,
                to_value(&rs.metadata.name, &rs)?,
            ));
        }
        for rs in &plan.update {
            let rs_key = coxswain_store::object_key(
                "apps",
                "ReplicaSet",
                Some(&namespace),
                &rs.metadata.name,
            );
            let Some(revision) = revision_of(&rs.metadata) else {
                continue;
            };
            let mut rs = rs.clone();
            // A spec change is a new generation, as the API server counts it; an
            // annotation-only change is not, but bumping it then costs nothing but a
            // ReplicaSet status write, so only spec changes bump it.
            let before = owned.iter().find(|o| o.metadata.uid == rs.metadata.uid);
            if before.is_some_and(|b| b.spec != rs.spec) {
                rs.metadata.generation = Some(rs.metadata.generation.unwrap_or(1) + 1);
            }
            units.push(Txn::compare_and_swap(
                rs_key,
                revision,
                to_value(&rs.metadata.name, &rs)?,
            ));
        }
        for rs in &plan.delete {
            let rs_key = coxswain_store::object_key(
                "apps",
                "ReplicaSet",
                Some(&namespace),
                &rs.metadata.name,
            );
            if let Some(revision) = revision_of(&rs.metadata) {
                units.push(Txn {
                    compares: vec![Compare {
                        key: rs_key.clone(),
                        target: Target::ModRevision,
                        op: CmpOp::Equal,
                        value: revision,
                    }],
                    success: vec![Op::Delete { key: rs_key }],
                    failure: Vec::new(),
                });
            }
        }
        if plan.status_changed {
            let mut value = kv.value.clone();
            value["status"] = to_value(key, &plan.status)?;
            units.push(Txn::compare_and_swap(key, kv.mod_revision, value));
        }
        for s in &plan.scales {
            let verb = if s.to > s.from { "up" } else { "down" };
            tracing::info!(
                "Scaled {verb} replica set {} from {} to {}",
                s.replica_set,
                s.from,
                s.to
            );
        }
        if !units.is_empty() {
            ctx.write(units).await?;
        }
        Ok(match plan.requeue_at {
            Some(at) => Action::RequeueAfter((at - now).to_std().unwrap_or(Duration::ZERO)),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coxswain_schema::kinds::apps::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdate,
    };
    use coxswain_schema::kinds::pod::{Container, PodSpec, PodStatus};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn ts(s: i64) -> String {
        t(s).to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(TemplateMeta {
                labels: Some(map(&[("app", "web")])),
                ..TemplateMeta::default()
            }),
            spec: PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: image.into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            },
        }
    }

    fn deployment(replicas: i32, image: &str) -> Deployment {
        Deployment {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: Some("default".into()),
                uid: Some("d-uid".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(map(&[("app", "web")])),
                    match_expressions: None,
                },
                template: template(image),
                ..DeploymentSpec::default()
            },
            status: None,
        }
    }

    fn with_budgets(
        mut d: Deployment,
        surge: Option<IntOrString>,
        unavailable: Option<IntOrString>,
    ) -> Deployment {
        d.spec.strategy = Some(DeploymentStrategy {
            type_: Some(StrategyType::RollingUpdate),
            rolling_update: Some(RollingUpdate {
                max_surge: surge,
                max_unavailable: unavailable,
            }),
        });
        d
    }

    /// An owned ReplicaSet as the store would hold it, for tests that set up history by hand.
    fn owned_rs(name: &str, image: &str, replicas: i32, revision: i64, created: i64) -> ReplicaSet {
        let mut tpl = template(image);
        if let Some(m) = &mut tpl.metadata {
            m.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(POD_TEMPLATE_HASH_LABEL.into(), name.into());
        }
        ReplicaSet {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                generation: Some(1),
                creation_timestamp: Some(ts(created)),
                annotations: Some(map(&[(REVISION_ANNOTATION, &revision.to_string())])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "web".into(),
                    uid: "d-uid".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: None,
                selector: LabelSelector::default(),
                template: tpl,
            },
            status: Some(ReplicaSetStatus {
                observed_generation: Some(1),
                ..ReplicaSetStatus::default()
            }),
        }
    }

    fn pod_of(rs: &ReplicaSet, name: String) -> Pod {
        Pod {
            api_version: "v1".into(),
            kind: "Pod".into(),
            metadata: ObjectMeta {
                name,
                namespace: Some("default".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: rs.metadata.name.clone(),
                    uid: rs.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: PodSpec::default(),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..PodStatus::default()
            }),
        }
    }

    fn set_ready(pod: &mut Pod, at: i64) {
        let st = pod.status.get_or_insert_with(PodStatus::default);
        st.phase = Some("Running".into());
        st.conditions = Some(vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(ts(at)),
            ..Condition::default()
        }]);
    }

    fn is_ready(pod: &Pod) -> bool {
        ready_since(pod).is_some()
    }

    fn progressing(s: &DeploymentStatus) -> (String, String) {
        let c = get_cond(s, PROGRESSING).expect("Progressing condition");
        (c.status.clone(), c.reason.clone().unwrap_or_default())
    }

    fn available_cond(s: &DeploymentStatus) -> (String, String) {
        let c = get_cond(s, AVAILABLE).expect("Available condition");
        (c.status.clone(), c.reason.clone().unwrap_or_default())
    }

    fn ann<'r>(rs: &'r ReplicaSet, key: &str) -> Option<&'r str> {
        rs.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// A tiny cluster: the store's Deployment, ReplicaSets and Pods, plus a ReplicaSet
    /// controller and a kubelet that act when told to.
    struct Sim {
        d: Deployment,
        rss: Vec<ReplicaSet>,
        pods: Vec<Pod>,
        now: i64,
        next_pod: u32,
        /// Deleted Pods vanish at once; otherwise they stay, terminating, until `reap`.
        reap_at_once: bool,
    }

    impl Sim {
        fn new(d: Deployment) -> Self {
            Sim {
                d,
                rss: Vec::new(),
                pods: Vec::new(),
                now: 0,
                next_pod: 0,
                reap_at_once: true,
            }
        }

        fn plan(&self) -> Plan {
            plan(&self.d, &self.rss, &self.pods, t(self.now))
        }

        /// Plans and writes the plan the way the runtime will.
        fn step(&mut self) -> Plan {
            let p = self.plan();
            if let Some(rs) = &p.create {
                assert!(
                    !self.rss.iter().any(|r| r.metadata.name == rs.metadata.name),
                    "plan creates {} twice",
                    rs.metadata.name
                );
                let mut rs = rs.clone();
                rs.metadata.uid = Some(format!("uid-{}", rs.metadata.name));
                rs.metadata.creation_timestamp = Some(ts(self.now));
                rs.metadata.generation = Some(1);
                self.rss.push(rs);
            }
            for u in &p.update {
                let slot = self
                    .rss
                    .iter_mut()
                    .find(|r| r.metadata.name == u.metadata.name)
                    .expect("update of a known replica set");
                *slot = u.clone();
            }
            for del in &p.delete {
                self.rss.retain(|r| r.metadata.name != del.metadata.name);
            }
            if p.status_changed {
                self.d.status = Some(p.status.clone());
            }
            p
        }

        fn owned_by(pod: &Pod, rs: &ReplicaSet) -> bool {
            pod.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == rs.metadata.uid.as_ref())
        }

        /// The ReplicaSet controller: Pods up to `spec.replicas` (not Ready yet), surplus
        /// Pods deleted not-Ready first, and the garbage collector for deleted ReplicaSets.
        fn sync_pods(&mut self) {
            let now = ts(self.now);
            for r in 0..self.rss.len() {
                let rs = self.rss[r].clone();
                let want = usize::try_from(rs.spec.replicas.unwrap_or(1)).unwrap();
                let mut mine: Vec<usize> = (0..self.pods.len())
                    .filter(|&i| {
                        Self::owned_by(&self.pods[i], &rs)
                            && self.pods[i].metadata.deletion_timestamp.is_none()
                    })
                    .collect();
                while mine.len() < want {
                    self.next_pod += 1;
                    let name = format!("{}-p{}", rs.metadata.name, self.next_pod);
                    self.pods.push(pod_of(&rs, name));
                    mine.push(self.pods.len() - 1);
                }
                mine.sort_by_key(|&i| is_ready(&self.pods[i]));
                for &i in mine.iter().take(mine.len().saturating_sub(want)) {
                    self.pods[i].metadata.deletion_timestamp = Some(now.clone());
                }
                self.rss[r].status = Some(ReplicaSetStatus {
                    replicas: i32::try_from(want).unwrap(),
                    observed_generation: rs.metadata.generation,
                    ..ReplicaSetStatus::default()
                });
            }
            let rss = self.rss.clone();
            self.pods
                .retain(|p| rss.iter().any(|rs| Self::owned_by(p, rs)));
            if self.reap_at_once {
                self.reap();
            }
        }

        fn reap(&mut self) {
            self.pods
                .retain(|p| p.metadata.deletion_timestamp.is_none());
        }

        /// The kubelet: up to `n` running, not-Ready Pods become Ready now.
        fn make_ready(&mut self, n: usize) -> usize {
            let now = self.now;
            let mut done = 0;
            for p in &mut self.pods {
                if done < n && !is_ready(p) && p.metadata.deletion_timestamp.is_none() {
                    set_ready(p, now);
                    done += 1;
                }
            }
            done
        }

        fn rs(&self, name: &str) -> &ReplicaSet {
            self.rss
                .iter()
                .find(|r| r.metadata.name == name)
                .expect("replica set exists")
        }

        fn pods_of(&self, name: &str) -> usize {
            let rs = self.rs(name);
            self.pods.iter().filter(|p| Self::owned_by(p, rs)).count()
        }

        fn ready_pods(&self) -> i32 {
            let n = self
                .pods
                .iter()
                .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
                .count();
            i32::try_from(n).unwrap()
        }

        fn spec_total(&self) -> i32 {
            self.rss.iter().map(|r| r.spec.replicas.unwrap_or(1)).sum()
        }

        fn status(&self) -> DeploymentStatus {
            self.d.status.clone().unwrap_or_default()
        }

        /// Runs controller and kubelet until the plan has nothing left to write and the
        /// rollout is complete.
        fn converge(&mut self) {
            for _ in 0..50 {
                self.now += 1;
                let p = self.step();
                self.sync_pods();
                self.reap();
                self.make_ready(usize::MAX);
                if p.is_noop() && complete(&self.d, &self.status()) {
                    return;
                }
            }
            panic!("no convergence: {:#?}", self.status());
        }
    }

    #[test]
    fn hash_is_stable_safe_and_sensitive() {
        let a = template("nginx:1");
        let h = pod_template_hash(&a, None);
        // Part of every ReplicaSet name: a change here would roll every Deployment on
        // upgrade, so the value is pinned. It was checked by hand: FNV-1a 32 of
        // `{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"web",
        // "image":"nginx:1"}]}}` is 3257377306, whose digits encode to this.
        assert_eq!(h, "769c7cc74b");
        assert_eq!(pod_template_hash(&a.clone(), None), h);
        assert!(h.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{h}");
        assert_ne!(pod_template_hash(&template("nginx:2"), None), h);
        assert_ne!(pod_template_hash(&a, Some(1)), h);
        assert_ne!(
            pod_template_hash(&a, Some(1)),
            pod_template_hash(&a, Some(2))
        );
    }

    #[test]
    fn first_rollout_creates_the_replica_set_and_completes() {
        let d = deployment(3, "v1");
        let p = plan(&d, &[], &[], t(0));
        let rs = p.create.clone().expect("a new replica set");
        let hash = pod_template_hash(&d.spec.template, None);
        let name = format!("web-{hash}");
        assert_eq!(rs.metadata.name, name);
        assert_eq!(rs.metadata.namespace.as_deref(), Some("default"));
        let labels = map(&[("app", "web"), (POD_TEMPLATE_HASH_LABEL, &hash)]);
        assert_eq!(rs.metadata.labels.as_ref(), Some(&labels));
        assert_eq!(rs.spec.selector.match_labels.as_ref(), Some(&labels));
        assert_eq!(
            rs.spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref()),
            Some(&labels)
        );
        let owner = &rs.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Deployment", "web", "d-uid")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(ann(&rs, REVISION_ANNOTATION), Some("1"));
        assert_eq!(ann(&rs, DESIRED_REPLICAS_ANNOTATION), Some("3"));
        assert_eq!(ann(&rs, MAX_REPLICAS_ANNOTATION), Some("4"));
        assert_eq!(rs.spec.replicas, Some(3));
        assert_eq!(
            p.scales,
            vec![Scale {
                replica_set: name.clone(),
                from: 0,
                to: 3
            }]
        );
        assert_eq!(p.revision.as_deref(), Some("1"));
        assert!(p.status_changed);
        assert_eq!(p.status.observed_generation, Some(1));
        assert_eq!(p.status.replicas, Some(0));
        assert_eq!(
            progressing(&p.status),
            ("True".into(), reason::NEW_RS_CREATED.into())
        );
        assert_eq!(
            available_cond(&p.status),
            ("False".into(), reason::MIN_UNAVAILABLE.into())
        );
        // No Pod to wait for, so only the progress deadline (600 s + 1) is due.
        assert_eq!(p.requeue_at, Some(t(601)));

        let mut sim = Sim::new(d);
        sim.step();
        sim.sync_pods();
        sim.now = 5;
        let p = sim.step();
        assert!(p.create.is_none(), "the created replica set is found again");
        assert_eq!(p.status.updated_replicas, Some(3));
        assert_eq!(
            progressing(&p.status),
            ("True".into(), reason::RS_UPDATED.into())
        );
        sim.make_ready(usize::MAX);
        sim.now = 6;
        let p = sim.step();
        assert_eq!(p.status.available_replicas, Some(3));
        assert_eq!(p.status.unavailable_replicas, Some(0));
        assert_eq!(
            progressing(&p.status),
            ("True".into(), reason::NEW_RS_AVAILABLE.into())
        );
        assert_eq!(
            available_cond(&p.status),
            ("True".into(), reason::MIN_AVAILABLE.into())
        );
        sim.now = 7;
        let p = sim.step();
        assert!(p.is_noop(), "{p:#?}");
        assert_eq!(p.requeue_at, None);
    }

    #[test]
    fn rolling_update_stays_within_surge_and_unavailability() {
        use IntOrString::{Int, String as Str};
        // (replicas, maxSurge, maxUnavailable, resolved surge, resolved unavailable)
        let cases = [
            (4, None, None, 1, 1),
            (10, Some(Int(3)), Some(Int(0)), 3, 0),
            (3, Some(Int(0)), Some(Int(1)), 0, 1),
            (5, Some(Str("50%".into())), Some(Str("20%".into())), 3, 1),
            // Both 0 cannot progress: unavailability becomes 1, as in Kubernetes.
            (2, Some(Int(0)), Some(Int(0)), 0, 1),
            (1, None, None, 1, 0),
        ];
        for (replicas, surge, unavailable, want_surge, want_unavailable) in cases {
            let case = format!("replicas={replicas} surge={surge:?} unavailable={unavailable:?}");
            let d = with_budgets(deployment(replicas, "v1"), surge, unavailable);
            let mut sim = Sim::new(d);
            sim.converge();
            assert_eq!(sim.rss.len(), 1, "{case}");
            let old = sim.rss[0].metadata.name.clone();

            sim.d.spec.template = template("v2");
            sim.d.metadata.generation = Some(2);
            let max_total = replicas + want_surge;
            let min_available = replicas - want_unavailable;
            let check = |sim: &Sim, when: &str| {
                let pods = i32::try_from(sim.pods.len()).unwrap();
                assert!(
                    sim.spec_total() <= max_total && pods <= max_total,
                    "{case} {when}: {} wanted, {pods} pods > {max_total}",
                    sim.spec_total()
                );
                assert!(
                    sim.ready_pods() >= min_available,
                    "{case} {when}: {} available < {min_available}",
                    sim.ready_pods()
                );
            };
            let mut finished = false;
            for _ in 0..100 {
                sim.now += 1;
                let p = sim.step();
                check(&sim, "after plan");
                sim.sync_pods();
                check(&sim, "after replica set sync");
                // One Pod at a time becomes Ready: the slowest rollout the budgets allow.
                sim.make_ready(1);
                check(&sim, "after a pod became ready");
                if p.is_noop() && complete(&sim.d, &sim.status()) {
                    finished = true;
                    break;
                }
            }
            assert!(finished, "{case}: rollout did not finish");
            let new = sim
                .rss
                .iter()
                .find(|r| r.metadata.name != old)
                .expect("new replica set");
            assert_eq!(new.spec.replicas, Some(replicas), "{case}");
            assert_eq!(ann(new, REVISION_ANNOTATION), Some("2"), "{case}");
            assert_eq!(sim.rs(&old).spec.replicas, Some(0), "{case}");
            assert_eq!(sim.pods_of(&old), 0, "{case}");
            assert_eq!(
                progressing(&sim.status()),
                ("True".into(), reason::NEW_RS_AVAILABLE.into()),
                "{case}"
            );
            assert_eq!(sim.status().observed_generation, Some(2), "{case}");
        }
    }

    #[test]
    fn recreate_waits_for_old_pods_to_be_gone() {
        let mut d = deployment(2, "v1");
        d.spec.strategy = Some(DeploymentStrategy {
            type_: Some(StrategyType::Recreate),
            rolling_update: None,
        });
        let mut sim = Sim::new(d);
        sim.converge();
        let old = sim.rss[0].metadata.name.clone();
        sim.reap_at_once = false;
        sim.d.spec.template = template("v2");
        sim.d.metadata.generation = Some(2);

        sim.now += 1;
        let p = sim.step();
        assert!(
            p.create.is_none(),
            "no new replica set before old pods stop"
        );
        assert_eq!(
            p.scales,
            vec![Scale {
                replica_set: old.clone(),
                from: 2,
                to: 0
            }]
        );
        sim.sync_pods();
        assert_eq!(sim.pods_of(&old), 2, "old pods are terminating, not gone");

        sim.now += 1;
        let p = sim.step();
        assert!(
            p.create.is_none(),
            "terminating old pods still block: {p:#?}"
        );
        assert!(p.scales.is_empty());

        sim.reap();
        sim.now += 1;
        let p = sim.step();
        let new = p.create.expect("new replica set once old pods are gone");
        assert_eq!(new.spec.replicas, Some(2));
        assert_eq!(ann(&new, MAX_REPLICAS_ANNOTATION), Some("2"), "no surge");
        sim.reap_at_once = true;
        sim.converge();
        assert_eq!(sim.rs(&old).spec.replicas, Some(0));
        assert_eq!(sim.status().updated_replicas, Some(2));
        assert_eq!(sim.status().available_replicas, Some(2));
    }

    #[test]
    fn min_ready_seconds_delays_availability_and_requeues() {
        let mut d = deployment(2, "v1");
        d.spec.min_ready_seconds = Some(10);
        let mut sim = Sim::new(d);
        sim.step();
        sim.sync_pods();
        sim.now = 100;
        sim.make_ready(1);
        sim.now = 104;
        sim.make_ready(1);

        // (now, available, requeue_at)
        let cases = [
            (105, 0, Some(110)),
            (109, 0, Some(110)),
            (110, 1, Some(114)),
            (114, 2, None),
        ];
        for (now, want_available, want_requeue) in cases {
            sim.now = now;
            let p = sim.step();
            assert_eq!(p.status.ready_replicas, Some(2), "t={now}");
            assert_eq!(p.status.available_replicas, Some(want_available), "t={now}");
            assert_eq!(p.requeue_at, want_requeue.map(t), "t={now}");
        }
        assert_eq!(
            available_cond(&sim.status()),
            ("True".into(), reason::MIN_AVAILABLE.into())
        );
        let rs = &sim.rss[0];
        assert_eq!(rs.spec.min_ready_seconds, Some(10));
    }

    #[test]
    fn progress_deadline_is_reported_then_cleared_by_progress() {
        let mut d = deployment(2, "v1");
        d.spec.progress_deadline_seconds = Some(30);
        let mut sim = Sim::new(d);
        let p = sim.step();
        assert_eq!(p.requeue_at, Some(t(31)));
        sim.sync_pods();

        sim.now = 10;
        let p = sim.step();
        let c = get_cond(&p.status, PROGRESSING).unwrap();
        assert_eq!(c.reason.as_deref(), Some(reason::RS_UPDATED));
        assert_eq!(
            c.last_update_time,
            Some(ts(10)),
            "progress refreshes the clock"
        );
        assert_eq!(c.last_transition_time, Some(ts(0)), "still True since t=0");
        assert_eq!(p.requeue_at, Some(t(41)));

        sim.now = 40;
        let p = sim.step();
        assert!(
            p.is_noop(),
            "the deadline is not passed yet at exactly 30 s"
        );
        assert_eq!(p.requeue_at, Some(t(41)));

        sim.now = 41;
        let p = sim.step();
        let c = get_cond(&p.status, PROGRESSING).unwrap();
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some(reason::TIMED_OUT));
        let name = &sim.rss[0].metadata.name;
        assert_eq!(
            c.message.as_deref(),
            Some(format!("ReplicaSet \"{name}\" has timed out progressing.").as_str())
        );
        assert_eq!(p.requeue_at, None, "a timed-out rollout is not polled");

        sim.now = 50;
        assert!(sim.step().is_noop(), "the timeout is reported once");

        sim.make_ready(usize::MAX);
        sim.now = 60;
        let p = sim.step();
        assert_eq!(
            progressing(&p.status),
            ("True".into(), reason::NEW_RS_AVAILABLE.into())
        );
    }

    #[test]
    fn revision_history_limit_deletes_only_idle_old_replica_sets() {
        // Old revisions 1..=5; revision 2 still has a (terminating) Pod and revision 4's
        // last change is not yet seen by the ReplicaSet controller, so neither may go.
        let mut rss: Vec<ReplicaSet> = (1..=5)
            .map(|r| owned_rs(&format!("old{r}"), &format!("v{r}"), 0, r, r))
            .collect();
        rss[3].metadata.generation = Some(2);
        let mut new = owned_rs("new", "v6", 2, 6, 6);
        new.metadata.annotations = Some(map(&[
            (REVISION_ANNOTATION, "6"),
            (DESIRED_REPLICAS_ANNOTATION, "2"),
            (MAX_REPLICAS_ANNOTATION, "3"),
        ]));
        rss.push(new.clone());
        let mut pods = vec![pod_of(&new, "n1".into()), pod_of(&new, "n2".into())];
        for p in &mut pods {
            set_ready(p, 0);
        }
        let mut leftover = pod_of(&rss[1], "o2".into());
        leftover.metadata.deletion_timestamp = Some(ts(0));
        pods.push(leftover);

        let cases: [(Option<i32>, &[&str]); 5] = [
            (None, &[]),
            (Some(5), &[]),
            (Some(4), &["old1"]),
            (Some(2), &["old1", "old3"]),
            (Some(0), &["old1", "old3", "old5"]),
        ];
        for (limit, want) in cases {
            let mut d = deployment(2, "v6");
            d.spec.revision_history_limit = limit;
            d.status = Some(DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(2),
                updated_replicas: Some(2),
                available_replicas: Some(2),
                ..DeploymentStatus::default()
            });
            let p = plan(&d, &rss, &pods, t(100));
            let deleted: Vec<&str> = p.delete.iter().map(|r| r.metadata.name.as_str()).collect();
            assert_eq!(deleted, want, "limit {limit:?}");
            assert!(p.create.is_none() && p.scales.is_empty(), "limit {limit:?}");
        }
    }

    #[test]
    fn paused_deployment_scales_but_does_not_roll_out() {
        let mut sim = Sim::new(deployment(3, "v1"));
        sim.converge();
        let old = sim.rss[0].metadata.name.clone();
        sim.d.spec.paused = Some(true);
        sim.d.spec.template = template("v2");
        sim.d.metadata.generation = Some(2);

        sim.now += 1;
        let p = sim.step();
        assert!(p.create.is_none(), "paused: no new replica set");
        assert!(p.scales.is_empty());
        assert_eq!(
            progressing(&p.status),
            ("Unknown".into(), reason::PAUSED.into())
        );
        assert_eq!(p.requeue_at, None, "no progress deadline while paused");

        sim.d.spec.replicas = Some(5);
        sim.d.metadata.generation = Some(3);
        sim.now += 1;
        let p = sim.step();
        assert!(p.create.is_none());
        assert_eq!(
            p.scales,
            vec![Scale {
                replica_set: old.clone(),
                from: 3,
                to: 5
            }]
        );
        assert_eq!(ann(sim.rs(&old), DESIRED_REPLICAS_ANNOTATION), Some("5"));
        assert_eq!(ann(sim.rs(&old), MAX_REPLICAS_ANNOTATION), Some("7"));
        assert_eq!(
            progressing(&p.status),
            ("Unknown".into(), reason::PAUSED.into())
        );

        sim.d.spec.paused = Some(false);
        sim.d.metadata.generation = Some(4);
        sim.now += 1;
        let p = sim.step();
        let new = p.create.expect("resumed: the rollout starts");
        assert_eq!(new.spec.replicas, Some(2), "5 running + 2 surge");
        assert_eq!(
            progressing(&p.status),
            ("True".into(), reason::NEW_RS_CREATED.into())
        );
    }

    #[test]
    fn replicas_change_without_template_change_only_scales() {
        for to in [5, 1, 0] {
            let mut sim = Sim::new(deployment(3, "v1"));
            sim.converge();
            let name = sim.rss[0].metadata.name.clone();
            sim.d.spec.replicas = Some(to);
            sim.d.metadata.generation = Some(2);
            sim.now += 1;
            let p = sim.step();
            assert!(p.create.is_none(), "to {to}");
            assert_eq!(
                p.scales,
                vec![Scale {
                    replica_set: name.clone(),
                    from: 3,
                    to
                }],
                "to {to}"
            );
            let want = to.to_string();
            assert_eq!(
                ann(sim.rs(&name), DESIRED_REPLICAS_ANNOTATION),
                Some(want.as_str())
            );
            sim.converge();
            assert_eq!(sim.rss.len(), 1, "to {to}");
            assert_eq!(sim.status().replicas, Some(to), "to {to}");
            assert_eq!(sim.status().available_replicas, Some(to), "to {to}");
            assert_eq!(
                available_cond(&sim.status()),
                ("True".into(), reason::MIN_AVAILABLE.into())
            );
        }
    }

    #[test]
    fn replicas_change_mid_rollout_is_proportional() {
        // Mid-rollout at 10 replicas (max 13): old has 8, new has 5.
        let mut old = owned_rs("old", "v1", 8, 1, 1);
        let mut new = owned_rs("new", "v2", 5, 2, 2);
        for rs in [&mut old, &mut new] {
            let a = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
            a.insert(DESIRED_REPLICAS_ANNOTATION.into(), "10".into());
            a.insert(MAX_REPLICAS_ANNOTATION.into(), "13".into());
        }
        // (replicas, old size, new size): to 20 (max 25), 12 more split 8:5 → 15 / 10;
        // to 5 (max 7), 6 fewer → 4 / 3.
        for (replicas, want_old, want_new) in [(20, 15, 10), (5, 4, 3)] {
            let d = deployment(replicas, "v2");
            let p = plan(&d, &[old.clone(), new.clone()], &[], t(10));
            assert!(p.create.is_none());
            let size = |n: &str| {
                p.update
                    .iter()
                    .find(|r| r.metadata.name == n)
                    .and_then(|r| r.spec.replicas)
            };
            assert_eq!(
                (size("old"), size("new")),
                (Some(want_old), Some(want_new)),
                "replicas {replicas}"
            );
        }
    }

    #[test]
    fn rollback_reuses_the_old_replica_set_with_a_new_revision() {
        let a = owned_rs("a", "v1", 0, 1, 1);
        let b = owned_rs("b", "v2", 3, 2, 2);
        let d = deployment(3, "v1");
        let p = plan(&d, &[a, b], &[], t(10));
        assert!(
            p.create.is_none(),
            "the v1 replica set is the new one again"
        );
        let a = p
            .update
            .iter()
            .find(|r| r.metadata.name == "a")
            .expect("a is updated");
        assert_eq!(ann(a, REVISION_ANNOTATION), Some("3"));
        assert_eq!(ann(a, REVISION_HISTORY_ANNOTATION), Some("1"));
        assert_eq!(a.spec.replicas, Some(1), "3 running + 1 surge");
        assert_eq!(p.revision.as_deref(), Some("3"));
    }

    #[test]
    fn hash_collision_with_an_owned_replica_set_bumps_the_count() {
        let d = deployment(1, "v1");
        let taken = format!("web-{}", pod_template_hash(&d.spec.template, None));
        let other = owned_rs(&taken, "v0", 0, 1, 1);
        let p = plan(&d, &[other], &[], t(0));
        let rs = p.create.expect("a new replica set");
        assert_eq!(
            rs.metadata.name,
            format!("web-{}", pod_template_hash(&d.spec.template, Some(1)))
        );
        assert_eq!(p.status.collision_count, Some(1));
        assert_eq!(collision_status(&d).collision_count, Some(1));
    }

    #[test]
    fn git_ownership_marks_are_not_copied_to_replica_sets() {
        let mut d = deployment(1, "v1");
        d.metadata.annotations = Some(map(&[(SOURCE_FILE_ANNOTATION, "web.yaml"), ("team", "a")]));
        if let Some(m) = &mut d.spec.template.metadata {
            m.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        }
        let rs = plan(&d, &[], &[], t(0)).create.expect("created");
        assert_eq!(ann(&rs, "team"), Some("a"));
        assert_eq!(ann(&rs, SOURCE_FILE_ANNOTATION), None);
        let labels = rs.metadata.labels.unwrap();
        assert!(!labels.contains_key(MANAGED_BY_LABEL), "{labels:?}");
    }
}
