//! The ReplicaSet controller: keeps `spec.replicas` active pods per ReplicaSet, as
//! Kubernetes' `ReplicaSetController` does.
//!
//! One reconcile of a ReplicaSet:
//! 1. claims pods in its namespace (Kubernetes' `ControllerRefManager`): an active pod with
//!    no controller whose labels match the selector is adopted (owner reference added by
//!    CAS); an owned pod that no longer matches is released (reference removed by CAS);
//!    pods of another controller and Git-owned pods are never touched;
//! 2. owned pods that ended (Succeeded or Failed) do not count and are deleted, so a failed
//!    pod is replaced;
//! 3. creates the missing pods (`<name>-<5 random chars>`, template labels, annotations and
//!    spec, owner reference with `controller` and `blockOwnerDeletion`), or deletes the
//!    surplus least valuable first ([`deletion_cmp`], Kubernetes' `ActivePods` order), at
//!    most [`BURST_REPLICAS`] per reconcile like Kubernetes' `burstReplicas`;
//! 4. writes `status` (replicas, fullyLabeledReplicas, readyReplicas, availableReplicas
//!    after `minReadySeconds`, observedGeneration) by CAS, only when it changed.
//!
//! All of it is one [`Context::write`]: creates, deletes and the status packed into as few
//! transactions as the store's op limit allows (128 creates per Raft entry), with the
//! status in the last one. Status counts the pods as they will be after the write (new pods
//! counted as not ready), so a scale-up costs one write, not a write and a status fix-up.
//!
//! The planning is pure ([`plan`]) and unit-tested; the reconcile only reads the cache and
//! turns the plan into ops.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use coxswain_schema::kinds::apps::{ReplicaSet, ReplicaSetStatus};
use coxswain_schema::meta::OwnerReference;
use coxswain_schema::selector::Selector;
use coxswain_store::{CmpOp, Compare, KeyValue, Kv, Op, Target, Txn};
use serde_json::{Value, json};

use super::cache::{self, Cache, ObjectEvent, controller_of};
use super::{Action, Context, Reconciler, Watch, controller_owner_keys, is_git_owned};
use crate::error::Result;

pub const RS_PREFIX: &str = "/apps/ReplicaSet/";
pub const POD_PREFIX: &str = "/core/Pod/";
/// Pods created or deleted per reconcile at most (Kubernetes' `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;
/// Kubernetes' `generateName` alphabet: lowercase consonants and digits without vowels or
/// look-alikes, so generated names never spell words.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const RANDOM_LENGTH: usize = 5;
/// Kubernetes truncates a `generateName` base so the result fits a 63-character label.
const MAX_NAME_LENGTH: usize = 63;

/// The controller. `burst` and `workers` default to [`BURST_REPLICAS`] and 4.
#[derive(Debug, Clone)]
pub struct ReplicaSetController {
    pub burst: usize,
    pub workers: usize,
}

impl Default for ReplicaSetController {
    fn default() -> Self {
        ReplicaSetController {
            burst: BURST_REPLICAS,
            workers: 4,
        }
    }
}

/// What the controller needs of a stored pod, read leniently (any extra field is fine).
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub key: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub node_name: Option<String>,
    pub phase: Option<String>,
    pub ready: bool,
    /// `lastTransitionTime` of the Ready condition when it is True.
    pub ready_since: Option<DateTime<Utc>>,
    /// Highest restart count of its containers.
    pub restarts: i32,
    pub created: Option<DateTime<Utc>>,
    pub deleting: bool,
    pub controller: Option<OwnerReference>,
    pub git_owned: bool,
    pub mod_revision: u64,
    pub create_revision: u64,
}

fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let text = v?.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl PodInfo {
    pub fn from_kv(kv: &KeyValue) -> PodInfo {
        let v = &kv.value;
        let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        let ready_condition = v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            });
        let ready = ready_condition
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some("True");
        let restarts = v
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        PodInfo {
            key: kv.key.clone(),
            name: text("/metadata/name")
                .or_else(|| cache::parse_key(&kv.key).map(|p| p.name.to_string()))
                .unwrap_or_default(),
            labels: v
                .pointer("/metadata/labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default(),
            node_name: text("/spec/nodeName").filter(|n| !n.is_empty()),
            phase: text("/status/phase"),
            ready,
            ready_since: if ready {
                time(ready_condition.and_then(|c| c.get("lastTransitionTime")))
            } else {
                None
            },
            restarts: i32::try_from(restarts).unwrap_or(i32::MAX),
            created: time(v.pointer("/metadata/creationTimestamp")),
            deleting: v.pointer("/metadata/deletionTimestamp").is_some(),
            controller: controller_of(v),
            git_owned: is_git_owned(v),
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
        }
    }

    /// Succeeded or Failed: the pod will not run again.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// Counts towards replicas (Kubernetes' `IsPodActive`).
    pub fn is_active(&self) -> bool {
        !self.is_terminal() && !self.deleting
    }

    /// Ready for at least `min_ready_seconds` at `now` (Kubernetes' `IsPodAvailable`).
    pub fn is_available(&self, min_ready_seconds: i32, now: DateTime<Utc>) -> bool {
        if !self.ready {
            return false;
        }
        if min_ready_seconds <= 0 {
            return true;
        }
        self.ready_since
            .is_some_and(|t| t + chrono::Duration::seconds(i64::from(min_ready_seconds)) < now)
    }
}

/// `t1` before `t2` in "delete first" order when `t1` is unset or later (Kubernetes'
/// `afterOrZero`).
fn after_or_zero(t1: Option<DateTime<Utc>>, t2: Option<DateTime<Utc>>) -> Ordering {
    match (t1, t2) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

fn phase_rank(phase: Option<&str>) -> u8 {
    match phase {
        Some("Unknown") => 1,
        Some("Running") => 2,
        // Pending and anything unknown to Kubernetes' table rank lowest, as there.
        _ => 0,
    }
}

/// Kubernetes' `ActivePods` order: `Less` means `a` is deleted before `b`. Unscheduled
/// before scheduled; Pending before Unknown before Running; not ready before ready; of two
/// ready pods the one ready for less time; more restarts before fewer; newer before older
/// (an unset time counts as newest). Ties fall back to the name, so the order is total.
pub fn deletion_cmp(a: &PodInfo, b: &PodInfo) -> Ordering {
    let assigned = |p: &PodInfo| p.node_name.is_some();
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a.phase.as_deref()).cmp(&phase_rank(b.phase.as_deref())))
        .then_with(|| a.ready.cmp(&b.ready))
        .then_with(|| {
            if a.ready && b.ready {
                after_or_zero(a.ready_since, b.ready_since)
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| b.restarts.cmp(&a.restarts))
        .then_with(|| after_or_zero(a.created, b.created))
        .then_with(|| a.name.cmp(&b.name))
}

/// `<rs-name>-<5 random chars>`, the base cut so the name fits 63 characters.
pub fn pod_name(rs_name: &str, rng: &mut fastrand::Rng) -> String {
    let mut base = format!("{rs_name}-");
    let limit = MAX_NAME_LENGTH - RANDOM_LENGTH;
    if base.len() > limit {
        let mut cut = limit;
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        base.truncate(cut);
    }
    for _ in 0..RANDOM_LENGTH {
        base.push(char::from(NAME_ALPHABET[rng.usize(..NAME_ALPHABET.len())]));
    }
    base
}

/// What one reconcile does to a ReplicaSet's pods.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Keys of orphan pods to adopt.
    pub adopt: Vec<String>,
    /// Keys of owned pods that no longer match, to release.
    pub release: Vec<String>,
    /// Keys of owned pods to delete: ended ones, then the surplus in deletion order.
    pub delete: Vec<String>,
    /// Pods to create.
    pub create: usize,
    /// More to create or delete than one burst allows: reconcile again at once.
    pub more: bool,
    pub status: ReplicaSetStatus,
    /// When a ready pod becomes available (minReadySeconds), to count it then.
    pub requeue_after: Option<Duration>,
}

fn fully_labeled(pod: &PodInfo, template: &BTreeMap<String, String>) -> bool {
    template.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

/// Plans one reconcile of `rs` (whose uid is `uid`) against the pods of its namespace.
/// An empty selector matches nothing here: Kubernetes' validation refuses one, and
/// adopting every pod of a namespace is never what was meant.
pub fn plan(
    rs: &ReplicaSet,
    uid: &str,
    selector: &Selector,
    pods: &[PodInfo],
    burst: usize,
    now: DateTime<Utc>,
) -> Plan {
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    let mut delete = Vec::new();
    let mut active: Vec<&PodInfo> = Vec::new();
    for p in pods {
        if p.git_owned {
            continue;
        }
        let matches = !selector.is_empty() && selector.matches(&p.labels);
        match &p.controller {
            Some(c) if c.uid == uid => {
                if !matches {
                    release.push(p.key.clone());
                } else if p.is_terminal() {
                    delete.push(p.key.clone());
                } else if !p.deleting {
                    active.push(p);
                }
            }
            Some(_) => {}
            None => {
                if matches && p.is_active() {
                    adopt.push(p.key.clone());
                    active.push(p);
                }
            }
        }
    }
    let want = usize::try_from(rs.spec.replicas.unwrap_or(1)).unwrap_or(0);
    let mut create = 0;
    let mut more = false;
    if active.len() < want {
        let missing = want - active.len();
        create = missing.min(burst);
        more = missing > burst;
    } else if active.len() > want {
        let surplus = active.len() - want;
        more = surplus > burst;
        active.sort_by(|a, b| deletion_cmp(a, b));
        let doomed: Vec<&PodInfo> = active.drain(..surplus.min(burst)).collect();
        delete.extend(doomed.iter().map(|p| p.key.clone()));
    }

    let template_labels = rs
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let ready = active.iter().filter(|p| p.ready).count();
    let available = active
        .iter()
        .filter(|p| p.is_available(min_ready, now))
        .count();
    let labeled = active
        .iter()
        .filter(|p| fully_labeled(p, &template_labels))
        .count();
    let requeue_after = active
        .iter()
        .filter(|p| p.ready && !p.is_available(min_ready, now))
        .filter_map(|p| p.ready_since)
        .map(|t| t + chrono::Duration::seconds(i64::from(min_ready)) - now)
        .filter_map(|d| d.to_std().ok())
        .min()
        // Availability needs "strictly after", and timestamps have second precision.
        .map(|d| d + Duration::from_millis(50));
    let status = ReplicaSetStatus {
        // New pods carry the template's labels, so they are fully labeled.
        replicas: count(active.len() + create),
        fully_labeled_replicas: Some(count(labeled + create)),
        ready_replicas: Some(count(ready)),
        available_replicas: Some(count(available)),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    Plan {
        adopt,
        release,
        delete,
        create,
        more,
        status,
        requeue_after,
    }
}

/// The owner reference a ReplicaSet puts on its pods.
fn owner_reference(name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A new pod from the ReplicaSet's template, as stored: the template's labels, annotations
/// and spec copied as they are stored, plus what the API server would set on create.
fn new_pod(rs: &Value, rs_name: &str, rs_uid: &str, namespace: &str, name: &str) -> Value {
    let template = rs.pointer("/spec/template");
    let mut meta = json!({
        "name": name,
        "namespace": namespace,
        "uid": uuid::Uuid::new_v4().to_string(),
        "creationTimestamp": crate::notes::now_rfc3339(),
        "generation": 1,
        "ownerReferences": [owner_reference(rs_name, rs_uid)],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.and_then(|t| t.pointer(&format!("/metadata/{field}"))) {
            meta[field] = v.clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.and_then(|t| t.get("spec")).cloned().unwrap_or_else(|| json!({})),
        // The API server's default on create.
        "status": {"phase": "Pending"},
    })
}

fn with_owner_references(value: &Value, refs: Vec<Value>) -> Value {
    let mut v = value.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if refs.is_empty() {
            meta.shift_remove("ownerReferences");
        } else {
            meta.insert("ownerReferences".into(), Value::Array(refs));
        }
    }
    v
}

fn current_refs(value: &Value) -> Vec<Value> {
    value
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The pod events that concern a ReplicaSet: its controller owner's key, and for an active
/// orphan the ReplicaSets of its namespace whose selector matches it (to adopt it).
fn map_pod(ev: &ObjectEvent<'_>, cache: &Cache) -> Vec<String> {
    let mut keys = controller_owner_keys(ev, "apps/v1", "ReplicaSet");
    let Some(new) = ev.new else { return keys };
    if controller_of(&new.value).is_some() || is_git_owned(&new.value) {
        return keys;
    }
    let pod = PodInfo::from_kv(new);
    if !pod.is_active() {
        return keys;
    }
    let Some(ns) = cache::parse_key(ev.key).and_then(|p| p.namespace) else {
        return keys;
    };
    for rs in cache.list(&format!("{RS_PREFIX}{ns}/")) {
        let selector = rs
            .value
            .pointer("/spec/selector")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .and_then(|s| Selector::from_label_selector(&s).ok());
        if selector.is_some_and(|s| !s.is_empty() && s.matches(&pod.labels)) {
            keys.push(rs.key.clone());
        }
    }
    keys
}

impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![Watch::own(RS_PREFIX), Watch::custom(POD_PREFIX, map_pod)]
    }

    fn workers(&self) -> usize {
        self.workers
    }

    async fn reconcile<K: Kv + 'static>(&self, key: &str, ctx: &Context<K>) -> Result<Action> {
        let Some(kv) = ctx.cache().get(key) else {
            // Deleted: its pods are the garbage collector's.
            return Ok(Action::Done);
        };
        let rs: ReplicaSet = match serde_json::from_value(kv.value.clone()) {
            Ok(rs) => rs,
            Err(e) => {
                // Retrying cannot help until the object changes, which enqueues it again.
                tracing::warn!(error = %e, "not a readable ReplicaSet; skipped");
                return Ok(Action::Done);
            }
        };
        let Some(uid) = rs.metadata.uid.clone() else {
            tracing::warn!("ReplicaSet without metadata.uid; skipped");
            return Ok(Action::Done);
        };
        let selector = match Selector::from_label_selector(&rs.spec.selector) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "invalid selector; skipped");
                return Ok(Action::Done);
            }
        };
        let namespace = rs
            .metadata
            .namespace
            .clone()
            .or_else(|| cache::parse_key(key).and_then(|p| p.namespace.map(str::to_string)))
            .unwrap_or_else(|| "default".into());
        let stored: Vec<std::sync::Arc<KeyValue>> =
            ctx.cache().list(&format!("{POD_PREFIX}{namespace}/"));
        let pods: Vec<PodInfo> = stored.iter().map(|kv| PodInfo::from_kv(kv)).collect();
        let plan = plan(&rs, &uid, &selector, &pods, self.burst, Utc::now());

        let by_key: BTreeMap<&str, &KeyValue> = stored
            .iter()
            .map(|kv| (kv.key.as_str(), kv.as_ref()))
            .collect();
        let mut units = Vec::new();
        for k in &plan.adopt {
            if let Some(pod) = by_key.get(k.as_str()) {
                let mut refs = current_refs(&pod.value);
                refs.push(owner_reference(&rs.metadata.name, &uid));
                let value = with_owner_references(&pod.value, refs);
                units.push(Txn::compare_and_swap(k.clone(), pod.mod_revision, value));
            }
        }
        for k in &plan.release {
            if let Some(pod) = by_key.get(k.as_str()) {
                let refs = current_refs(&pod.value)
                    .into_iter()
                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()))
                    .collect();
                let value = with_owner_references(&pod.value, refs);
                units.push(Txn::compare_and_swap(k.clone(), pod.mod_revision, value));
            }
        }
        for k in &plan.delete {
            if let Some(pod) = by_key.get(k.as_str()) {
                // On the create revision, not the mod revision: the agent rewrites a pod's
                // status all the time, which must not block its deletion; a pod recreated
                // under the same name must not be deleted in its stead.
                units.push(Txn {
                    compares: vec![Compare {
                        key: k.clone(),
                        target: Target::CreateRevision,
                        op: CmpOp::Equal,
                        value: pod.create_revision,
                    }],
                    success: vec![Op::Delete { key: k.clone() }],
                    failure: Vec::new(),
                });
            }
        }
        let mut taken: HashSet<String> = pods.iter().map(|p| p.name.clone()).collect();
        let mut rng = fastrand::Rng::new();
        for _ in 0..plan.create {
            // The cache holds every pod of the namespace as of our last write, so a name
            // not in it is free (names not yet seen are 1 in 27^5 per pod).
            let name = loop {
                let n = pod_name(&rs.metadata.name, &mut rng);
                if taken.insert(n.clone()) {
                    break n;
                }
            };
            let pod_key = coxswain_store::object_key("", "Pod", Some(&namespace), &name);
            let value = new_pod(&kv.value, &rs.metadata.name, &uid, &namespace, &name);
            units.push(Txn::put(pod_key, value));
        }
        if rs.status.as_ref() != Some(&plan.status) {
            let mut value = kv.value.clone();
            value["status"] = serde_json::to_value(&plan.status).unwrap_or(Value::Null);
            units.push(Txn::compare_and_swap(key, kv.mod_revision, value));
        }
        if !units.is_empty() {
            tracing::debug!(
                adopt = plan.adopt.len(),
                release = plan.release.len(),
                delete = plan.delete.len(),
                create = plan.create,
                "replicaset: writing"
            );
            ctx.write(units).await?;
        }
        if plan.more {
            return Ok(Action::RequeueAfter(Duration::ZERO));
        }
        Ok(plan
            .requeue_after
            .map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use coxswain_schema::selector::LabelSelector;

    use super::*;

    fn ts(s: &str) -> Option<DateTime<Utc>> {
        time(Some(&json!(s)))
    }

    fn pod(name: &str) -> PodInfo {
        PodInfo {
            key: format!("/core/Pod/ns/{name}"),
            name: name.into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            node_name: Some("n1".into()),
            phase: Some("Running".into()),
            ready: true,
            ready_since: ts("2024-01-01T00:00:10Z"),
            restarts: 0,
            created: ts("2024-01-01T00:00:00Z"),
            deleting: false,
            controller: None,
            git_owned: false,
            mod_revision: 5,
            create_revision: 3,
        }
    }

    fn owned(name: &str) -> PodInfo {
        PodInfo {
            controller: Some(OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }),
            ..pod(name)
        }
    }

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "web", "namespace": "ns", "uid": "rs-uid", "generation": 3},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web", "tier": "front"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}
                }
            }
        }))
        .unwrap()
    }

    fn selector() -> Selector {
        Selector::from_label_selector(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: None,
        })
        .unwrap()
    }

    fn now() -> DateTime<Utc> {
        ts("2024-01-01T01:00:00Z").unwrap()
    }

    fn order(pods: &[PodInfo]) -> Vec<String> {
        let mut v = pods.to_vec();
        v.sort_by(deletion_cmp);
        v.into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn deletion_order_follows_kubernetes_active_pods() {
        let unscheduled = PodInfo {
            node_name: None,
            phase: Some("Pending".into()),
            ready: false,
            ready_since: None,
            ..pod("unscheduled")
        };
        let pending = PodInfo {
            phase: Some("Pending".into()),
            ready: false,
            ready_since: None,
            ..pod("pending")
        };
        let unknown = PodInfo {
            phase: Some("Unknown".into()),
            ready: false,
            ready_since: None,
            ..pod("unknown")
        };
        let not_ready = PodInfo {
            ready: false,
            ready_since: None,
            ..pod("not-ready")
        };
        let ready_recently = PodInfo {
            ready_since: ts("2024-01-01T00:30:00Z"),
            ..pod("ready-recently")
        };
        let restarted = PodInfo {
            restarts: 3,
            ..pod("restarted")
        };
        let newer = PodInfo {
            created: ts("2024-01-01T00:00:05Z"),
            ..pod("newer")
        };
        let oldest = pod("oldest");
        let pods = [
            oldest,
            newer,
            restarted,
            ready_recently,
            not_ready,
            unknown,
            pending,
            unscheduled,
        ];
        assert_eq!(
            order(&pods),
            [
                "unscheduled",
                "pending",
                "unknown",
                "not-ready",
                "ready-recently",
                "restarted",
                "newer",
                "oldest"
            ]
        );
    }

    #[test]
    fn an_unset_time_counts_as_newest() {
        let no_time = PodInfo {
            created: None,
            ..pod("b")
        };
        assert_eq!(order(&[pod("a"), no_time]), ["b", "a"]);
    }

    #[test]
    fn generated_names_have_five_kubernetes_alphabet_chars_and_fit_63() {
        let mut rng = fastrand::Rng::with_seed(7);
        let n = pod_name("web-5d8f", &mut rng);
        assert!(n.starts_with("web-5d8f-"), "{n}");
        let suffix = &n["web-5d8f-".len()..];
        assert_eq!(suffix.len(), 5);
        assert!(suffix.bytes().all(|b| NAME_ALPHABET.contains(&b)), "{n}");
        let long = "a".repeat(80);
        let n = pod_name(&long, &mut rng);
        assert_eq!(n.len(), 63);
        assert!(n.starts_with(&"a".repeat(58)));
        let distinct: HashSet<String> = (0..200).map(|_| pod_name("x", &mut rng)).collect();
        assert!(distinct.len() > 190, "{}", distinct.len());
    }

    #[test]
    fn scale_up_creates_the_missing_pods_and_counts_them_in_status() {
        let pods = [owned("a")];
        let p = plan(&rs(3), "rs-uid", &selector(), &pods, 500, now());
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty() && p.adopt.is_empty() && !p.more);
        assert_eq!(p.status.replicas, 3);
        assert_eq!(p.status.ready_replicas, Some(1));
        assert_eq!(p.status.available_replicas, Some(1));
        assert_eq!(p.status.observed_generation, Some(3));
        // "a" lacks the template's tier label; the new ones have it.
        assert_eq!(p.status.fully_labeled_replicas, Some(2));
    }

    #[test]
    fn creates_are_capped_by_the_burst() {
        let p = plan(&rs(1200), "rs-uid", &selector(), &[], 500, now());
        assert_eq!(p.create, 500);
        assert!(p.more);
    }

    #[test]
    fn scale_down_deletes_the_least_valuable() {
        let pods = [
            owned("old-ready"),
            PodInfo {
                ready: false,
                ready_since: None,
                ..owned("not-ready")
            },
            PodInfo {
                node_name: None,
                phase: Some("Pending".into()),
                ready: false,
                ready_since: None,
                ..owned("unscheduled")
            },
        ];
        let p = plan(&rs(1), "rs-uid", &selector(), &pods, 500, now());
        assert_eq!(
            p.delete,
            ["/core/Pod/ns/unscheduled", "/core/Pod/ns/not-ready"]
        );
        assert_eq!(p.create, 0);
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn orphans_are_adopted_non_matching_released_others_and_git_pods_untouched() {
        let other_owner = PodInfo {
            controller: Some(OwnerReference {
                uid: "other".into(),
                ..owned("x").controller.unwrap()
            }),
            ..pod("other")
        };
        let git = PodInfo {
            git_owned: true,
            ..pod("git")
        };
        let moved = PodInfo {
            labels: [("app".to_string(), "api".to_string())].into(),
            ..owned("moved")
        };
        let ended_orphan = PodInfo {
            phase: Some("Failed".into()),
            ..pod("ended-orphan")
        };
        let pods = [pod("orphan"), other_owner, git, moved, ended_orphan];
        let p = plan(&rs(1), "rs-uid", &selector(), &pods, 500, now());
        assert_eq!(p.adopt, ["/core/Pod/ns/orphan"]);
        assert_eq!(p.release, ["/core/Pod/ns/moved"]);
        assert!(p.delete.is_empty());
        // The adopted orphan fills the one replica.
        assert_eq!(p.create, 0);
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn ended_pods_do_not_count_and_are_deleted() {
        let failed = PodInfo {
            phase: Some("Failed".into()),
            ready: false,
            ..owned("failed")
        };
        let succeeded = PodInfo {
            phase: Some("Succeeded".into()),
            ready: false,
            ..owned("done")
        };
        let p = plan(
            &rs(2),
            "rs-uid",
            &selector(),
            &[failed, succeeded, owned("ok")],
            500,
            now(),
        );
        assert_eq!(p.delete, ["/core/Pod/ns/failed", "/core/Pod/ns/done"]);
        assert_eq!(p.create, 1);
        assert_eq!(p.status.replicas, 2);
    }

    #[test]
    fn an_empty_selector_adopts_nothing() {
        let p = plan(
            &rs(1),
            "rs-uid",
            &Selector::everything(),
            &[pod("orphan")],
            500,
            now(),
        );
        assert!(p.adopt.is_empty());
        assert_eq!(p.create, 1);
    }

    #[test]
    fn min_ready_seconds_delays_availability_and_asks_for_a_requeue() {
        let mut r = rs(2);
        r.spec.min_ready_seconds = Some(30);
        let just_ready = PodInfo {
            ready_since: ts("2024-01-01T00:59:50Z"),
            ..owned("fresh")
        };
        let p = plan(
            &r,
            "rs-uid",
            &selector(),
            &[owned("old"), just_ready],
            500,
            now(),
        );
        assert_eq!(p.status.ready_replicas, Some(2));
        assert_eq!(p.status.available_replicas, Some(1));
        let after = p.requeue_after.unwrap();
        assert!(
            after >= Duration::from_secs(20) && after <= Duration::from_secs(21),
            "{after:?}"
        );
    }

    #[test]
    fn pod_info_reads_the_stored_fields() {
        let kv = KeyValue {
            key: "/core/Pod/ns/p".into(),
            value: json!({
                "metadata": {"name": "p", "labels": {"app": "web"}, "creationTimestamp": "2024-01-01T00:00:00Z",
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
                "spec": {"nodeName": "n1", "containers": []},
                "status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:09Z"}],
                    "containerStatuses": [{"name": "a", "restartCount": 1}, {"name": "b", "restartCount": 4}]}
            }),
            create_revision: 2,
            mod_revision: 7,
        };
        let p = PodInfo::from_kv(&kv);
        assert_eq!(p.node_name.as_deref(), Some("n1"));
        assert!(p.ready && p.is_active() && !p.git_owned);
        assert_eq!(p.ready_since, ts("2024-01-01T00:00:09Z"));
        assert_eq!(p.restarts, 4);
        assert_eq!(p.controller.unwrap().uid, "u");
        assert_eq!((p.create_revision, p.mod_revision), (2, 7));
    }

    #[test]
    fn new_pods_copy_the_template_and_point_at_their_owner() {
        let rs_value = serde_json::to_value(rs(1)).unwrap();
        let v = new_pod(&rs_value, "web", "rs-uid", "ns", "web-bcdfg");
        assert_eq!(v["metadata"]["labels"]["tier"], "front");
        assert_eq!(v["metadata"]["generation"], 1);
        assert_eq!(v["spec"]["containers"][0]["image"], "busybox");
        assert_eq!(
            v["metadata"]["ownerReferences"][0],
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-uid",
                   "controller": true, "blockOwnerDeletion": true})
        );
        assert!(uuid::Uuid::parse_str(v["metadata"]["uid"].as_str().unwrap()).is_ok());
        assert!(time(v.pointer("/metadata/creationTimestamp")).is_some());
        // It reads as a Pod of the schema.
        let _: coxswain_schema::kinds::pod::Pod = serde_json::from_value(v).unwrap();
    }
}
