//! The health of an applied commit: how each object it declares is doing in the store, and
//! the commit's state rolled up from them, with Argo CD's and Flux kstatus' semantics.
//!
//! Everything here is pure but [`Snapshot::load`]: the rules read a [`Snapshot`] of the
//! stored objects (the declared ones, plus the ReplicaSets and Pods of the namespaces that
//! hold a declared Deployment or ReplicaSet), so each rule is tested with plain values and
//! [`Syncer::refresh_health`](crate::sync::Syncer::refresh_health) does the one read.
//!
//! Per kind ([`object_health`]):
//!
//! - **Deployment** ([`deployment`]): `progressing` until the controller observed the current
//!   generation; then `degraded` when `Progressing` is `False` with `ProgressDeadlineExceeded`
//!   or a Pod of its newest ReplicaSet (Deployment → ReplicaSets → Pods, by controller owner
//!   uid) has a failing container ([`container_trouble`]); `healthy` when `updatedReplicas ==
//!   replicas == availableReplicas == spec.replicas` (default 1) and `Available` is `True`;
//!   otherwise `progressing`, with a drift such as `2/3 replicas available`.
//! - **ReplicaSet** ([`replica_set`]): the same with `readyReplicas`/`availableReplicas`;
//!   `ReplicaFailure=True` or a failing container of one of its Pods is `degraded`.
//! - **Pod** ([`pod`]): `healthy` when `Ready` or `Succeeded`; `degraded` when `Failed` or a
//!   container is failing; otherwise `progressing`.
//! - **Job** ([`job`]): `healthy` on `Complete=True`, `degraded` on `Failed=True`, otherwise
//!   `applied`. No controller runs Jobs yet, so in practice a Job stays `applied`; reading the
//!   conditions costs nothing and is right once one does.
//! - **DaemonSet, CronJob, HorizontalPodAutoscaler**: no controller runs them yet, so nothing
//!   in the store says how they are doing: they stay `applied`, which keeps the commit
//!   `progressing` rather than claiming a health nobody observed.
//! - **Namespace, ConfigMap, Secret, Service, Endpoints, Node**: nothing runs behind them;
//!   `healthy` once stored.
//! - Any declared object absent from the store is `missing`.
//!
//! The commit ([`rollup`]): any `degraded`, `missing` or `failed` object makes it `degraded`;
//! else any object not yet final (`pending`, `applied`, `progressing`) makes it
//! `progressing`; else it is `healthy`. A commit's note never moves backwards
//! ([`notes::can_move`](crate::notes::can_move)), so [`next_state`] turns a regression of a
//! settled commit (healthy, then progressing again) into `degraded`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use coxswain_store::{Consistency, Kv};
use serde_json::Value;

use crate::controller::cache::{controller_of, uid};
use crate::controller::deployment::REVISION_ANNOTATION;
use crate::error::Result;
use crate::notes::{CommitState, CommitStatus, Drift, DriftKind, ObjectState, ObjectStatus};

/// The store prefix of ReplicaSets, and of Pods: the dependents a workload's health follows.
const REPLICA_SET_PREFIX: &str = "/apps/ReplicaSet/";
const POD_PREFIX: &str = "/core/Pod/";

/// The stored objects health is computed from, by key, with an index of dependents by the
/// uid of their controller owner.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    objects: BTreeMap<String, Value>,
    /// Keys of the objects whose controller owner has this uid, in key order (so details that
    /// name "the first failing Pod" are stable from one evaluation to the next).
    controlled: HashMap<String, Vec<String>>,
}

impl Snapshot {
    /// A snapshot of exactly these stored objects (store key → stored value).
    pub fn from_objects(objects: impl IntoIterator<Item = (String, Value)>) -> Snapshot {
        let objects: BTreeMap<String, Value> = objects.into_iter().collect();
        let mut controlled: HashMap<String, Vec<String>> = HashMap::new();
        for (key, value) in &objects {
            if let Some(owner) = controller_of(value) {
                controlled.entry(owner.uid).or_default().push(key.clone());
            }
        }
        Snapshot {
            objects,
            controlled,
        }
    }

    /// Reads what the health of `objects` depends on: every list is one prefix (the declared
    /// objects' kind and namespace, and the ReplicaSets and Pods of the namespaces holding a
    /// declared Deployment or ReplicaSet), so the cost follows the commit, not the cluster.
    pub async fn load(kv: &impl Kv, objects: &[ObjectStatus]) -> Result<Snapshot> {
        let mut items = Vec::new();
        for prefix in prefixes(objects) {
            let page = kv.list(&prefix, 0, None, Consistency::Linearizable).await?;
            items.extend(page.items.into_iter().map(|kv| (kv.key, kv.value)));
        }
        Ok(Snapshot::from_objects(items))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.objects.get(key)
    }

    /// The stored objects under `prefix` whose controller owner has uid `owner`, in key order.
    pub fn controlled_by<'a>(
        &'a self,
        owner: &str,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.controlled
            .get(owner)
            .into_iter()
            .flatten()
            .filter(move |key| key.starts_with(prefix))
            .filter_map(|key| self.objects.get(key))
    }
}

/// The store prefixes [`Snapshot::load`] lists for `objects`, without duplicates.
pub fn prefixes(objects: &[ObjectStatus]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for o in objects {
        // Names hold no '/', so the key up to its last '/' is the kind (and namespace) folder.
        if let Some(at) = o.key.rfind('/') {
            out.insert(o.key[..=at].to_string());
        }
        if matches!(o.kind.as_str(), "Deployment" | "ReplicaSet") {
            let ns = o.namespace.as_deref().unwrap_or("default");
            out.insert(format!("{REPLICA_SET_PREFIX}{ns}/"));
            out.insert(format!("{POD_PREFIX}{ns}/"));
        }
    }
    out
}

/// How one object is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub state: ObjectState,
    pub drift: Vec<Drift>,
}

impl Health {
    fn new(state: ObjectState) -> Health {
        Health {
            state,
            drift: Vec::new(),
        }
    }

    fn with(state: ObjectState, kind: DriftKind, detail: impl Into<String>) -> Health {
        Health {
            state,
            drift: vec![Drift {
                kind,
                detail: detail.into(),
            }],
        }
    }
}

/// The health of a declared object of `kind` whose stored form is `stored` (`None`: not in
/// the store).
pub fn object_health(kind: &str, stored: Option<&Value>, snapshot: &Snapshot) -> Health {
    let Some(value) = stored else {
        return Health::with(ObjectState::Missing, DriftKind::Missing, "not in the store");
    };
    match kind {
        "Deployment" => deployment(value, snapshot),
        "ReplicaSet" => replica_set(value, snapshot),
        "Pod" => pod(value),
        "Job" => job(value),
        "Namespace" | "ConfigMap" | "Secret" | "Service" | "Endpoints" | "Node" => {
            Health::new(ObjectState::Healthy)
        }
        // DaemonSet, CronJob, HorizontalPodAutoscaler, and any kind added later: nothing
        // observes them yet (see the module docs).
        _ => Health::new(ObjectState::Applied),
    }
}

/// The health of a stored Deployment (see the module docs).
pub fn deployment(value: &Value, snapshot: &Snapshot) -> Health {
    if let Some(waiting) = unobserved(value, "Deployment") {
        return waiting;
    }
    if let Some(c) = condition(value, "Progressing")
        && c.status == Some("False")
        && c.reason == Some("ProgressDeadlineExceeded")
    {
        let detail = match c.message {
            Some(m) => format!("ProgressDeadlineExceeded: {m}"),
            None => "ProgressDeadlineExceeded".to_string(),
        };
        return Health::with(ObjectState::Degraded, DriftKind::Stalled, detail);
    }
    if let Some(owner) = uid(value) {
        let sets = newest_replica_sets(snapshot.controlled_by(owner, REPLICA_SET_PREFIX));
        let pods = sets
            .iter()
            .filter_map(|rs| uid(rs))
            .flat_map(|rs| snapshot.controlled_by(rs, POD_PREFIX));
        if let Some(trouble) = failing_pods(pods) {
            return Health::with(ObjectState::Degraded, DriftKind::Failed, trouble);
        }
    }
    let wanted = int(value, "/spec/replicas").unwrap_or(1);
    let replicas = int(value, "/status/replicas").unwrap_or(0);
    let updated = int(value, "/status/updatedReplicas").unwrap_or(0);
    let available = int(value, "/status/availableReplicas").unwrap_or(0);
    let is_available = condition(value, "Available").is_some_and(|c| c.status == Some("True"));
    if updated == wanted && replicas == wanted && available == wanted && is_available {
        return Health::new(ObjectState::Healthy);
    }
    let mut detail = if updated < wanted {
        format!("{updated}/{wanted} replicas updated")
    } else if replicas > updated {
        format!("{} old replicas pending termination", replicas - updated)
    } else if available < wanted {
        format!("{available}/{wanted} replicas available")
    } else if !is_available {
        "waiting for the Available condition".to_string()
    } else {
        format!("{replicas} replicas, {updated} updated, {available} available, {wanted} wanted")
    };
    if value.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        detail.push_str(" (rollout paused)");
    }
    Health::with(ObjectState::Progressing, DriftKind::NotReady, detail)
}

/// The health of a stored ReplicaSet (see the module docs).
pub fn replica_set(value: &Value, snapshot: &Snapshot) -> Health {
    if let Some(waiting) = unobserved(value, "ReplicaSet") {
        return waiting;
    }
    if let Some(c) = condition(value, "ReplicaFailure")
        && c.status == Some("True")
    {
        let why = c.message.or(c.reason).unwrap_or("cannot manage its pods");
        return Health::with(
            ObjectState::Degraded,
            DriftKind::Failed,
            format!("ReplicaFailure: {why}"),
        );
    }
    if let Some(owner) = uid(value)
        && let Some(trouble) = failing_pods(snapshot.controlled_by(owner, POD_PREFIX))
    {
        return Health::with(ObjectState::Degraded, DriftKind::Failed, trouble);
    }
    let wanted = int(value, "/spec/replicas").unwrap_or(1);
    let replicas = int(value, "/status/replicas").unwrap_or(0);
    let ready = int(value, "/status/readyReplicas").unwrap_or(0);
    let available = int(value, "/status/availableReplicas").unwrap_or(0);
    if replicas == wanted && ready == wanted && available == wanted {
        return Health::new(ObjectState::Healthy);
    }
    let detail = if replicas != wanted {
        format!("{replicas}/{wanted} replicas")
    } else if ready < wanted {
        format!("{ready}/{wanted} replicas ready")
    } else {
        format!("{available}/{wanted} replicas available")
    };
    Health::with(ObjectState::Progressing, DriftKind::NotReady, detail)
}

/// The health of a stored Pod (see the module docs).
pub fn pod(value: &Value) -> Health {
    let phase = value.pointer("/status/phase").and_then(Value::as_str);
    match phase {
        Some("Succeeded") => return Health::new(ObjectState::Healthy),
        Some("Failed") => {
            let why = text(value, "/status/message")
                .or_else(|| text(value, "/status/reason"))
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Health::with(
                ObjectState::Degraded,
                DriftKind::Failed,
                format!("phase Failed{why}"),
            );
        }
        _ => {}
    }
    if let Some(trouble) = container_trouble(value) {
        return Health::with(ObjectState::Degraded, DriftKind::Failed, trouble);
    }
    if condition(value, "Ready").is_some_and(|c| c.status == Some("True")) {
        return Health::new(ObjectState::Healthy);
    }
    let detail = match phase {
        Some(p) => format!("not ready (phase {p})"),
        None => "not ready (no status yet)".to_string(),
    };
    Health::with(ObjectState::Progressing, DriftKind::NotReady, detail)
}

/// The health of a stored Job: only its terminal conditions are read (see the module docs).
pub fn job(value: &Value) -> Health {
    if condition(value, "Complete").is_some_and(|c| c.status == Some("True")) {
        return Health::new(ObjectState::Healthy);
    }
    if let Some(c) = condition(value, "Failed")
        && c.status == Some("True")
    {
        let why = c.reason.map(|r| format!(": {r}")).unwrap_or_default();
        return Health::with(
            ObjectState::Degraded,
            DriftKind::Failed,
            format!("job failed{why}"),
        );
    }
    Health::new(ObjectState::Applied)
}

/// Why a container of the Pod is failing, if one is: waiting for a reason that means it
/// cannot start or keeps crashing (`CrashLoopBackOff`, `ImagePullBackOff`, `ErrImagePull`,
/// `CreateContainerError`, `CreateContainerConfigError`, `InvalidImageName`,
/// `RunContainerError`, ... — the kubelet's spellings: ending in `BackOff` or `Error`, or
/// starting with `Err`), or terminated with a non-zero exit code after it was already
/// restarted (a restart loop caught between two back-offs). Init containers count.
///
/// The detail names the container and the reason only, never the kubelet's message or the
/// restart count, which change on every restart and would rewrite the note each time.
pub fn container_trouble(pod: &Value) -> Option<String> {
    let statuses = ["/status/initContainerStatuses", "/status/containerStatuses"]
        .into_iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten();
    for status in statuses {
        let name = text(status, "/name").unwrap_or("?");
        if let Some(reason) = text(status, "/state/waiting/reason")
            && failing_wait_reason(reason)
        {
            return Some(format!("container {name} is waiting: {reason}"));
        }
        let restarts = int(status, "/restartCount").unwrap_or(0);
        if let Some(code) = int(status, "/state/terminated/exitCode")
            && code != 0
            && restarts > 0
        {
            return Some(format!(
                "container {name} is in a restart loop (exit code {code})"
            ));
        }
    }
    None
}

fn failing_wait_reason(reason: &str) -> bool {
    reason == "InvalidImageName"
        || reason.ends_with("BackOff")
        || reason.ends_with("Error")
        || reason.starts_with("Err")
}

/// The first Pod (in key order) with a failing container, named, and how many more fail.
fn failing_pods<'a>(pods: impl Iterator<Item = &'a Value>) -> Option<String> {
    let mut failing = pods.filter_map(|p| container_trouble(p).map(|why| (p, why)));
    let (first, why) = failing.next()?;
    let name = text(first, "/metadata/name").unwrap_or("?");
    let more = failing.count();
    Some(match more {
        0 => format!("pod {name}: {why}"),
        1 => format!("pod {name}: {why} (and 1 more pod)"),
        n => format!("pod {name}: {why} (and {n} more pods)"),
    })
}

/// The ReplicaSets of the Deployment's current revision: those with the highest
/// `deployment.kubernetes.io/revision`. The Pods of older ReplicaSets are on their way out,
/// so their crashes say nothing about the commit rolling out (a fix of a crashing image
/// would otherwise read as degraded until the old Pods are gone). Without revision
/// annotations every ReplicaSet counts.
fn newest_replica_sets<'a>(sets: impl Iterator<Item = &'a Value>) -> Vec<&'a Value> {
    let sets: Vec<(&Value, Option<i64>)> = sets
        .map(|rs| {
            let revision = rs
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(REVISION_ANNOTATION))
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok());
            (rs, revision)
        })
        .collect();
    match sets.iter().filter_map(|(_, r)| *r).max() {
        Some(newest) => sets
            .into_iter()
            .filter(|(_, r)| *r == Some(newest))
            .map(|(rs, _)| rs)
            .collect(),
        None => sets.into_iter().map(|(rs, _)| rs).collect(),
    }
}

/// `progressing` while the controller has not yet written status for the current
/// generation: until then the status describes the previous spec.
fn unobserved(value: &Value, kind: &str) -> Option<Health> {
    let generation = int(value, "/metadata/generation").unwrap_or(0);
    let detail = match int(value, "/status/observedGeneration") {
        None => format!("waiting for the {kind} controller (no status yet)"),
        Some(observed) if observed < generation => format!(
            "waiting for the {kind} controller to observe generation {generation} (observed {observed})"
        ),
        Some(_) => return None,
    };
    Some(Health::with(
        ObjectState::Progressing,
        DriftKind::NotReady,
        detail,
    ))
}

/// The fields of one status condition that health reads.
struct Condition<'a> {
    status: Option<&'a str>,
    reason: Option<&'a str>,
    message: Option<&'a str>,
}

fn condition<'a>(value: &'a Value, kind: &str) -> Option<Condition<'a>> {
    let c = value
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?;
    Some(Condition {
        status: text(c, "/status"),
        reason: text(c, "/reason"),
        message: text(c, "/message"),
    })
}

fn int(value: &Value, pointer: &str) -> Option<i64> {
    value.pointer(pointer).and_then(Value::as_i64)
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The commit's state from its objects' (see the module docs). A commit with no objects has
/// nothing left to wait for: healthy.
pub fn rollup(states: impl IntoIterator<Item = ObjectState>) -> CommitState {
    let mut state = CommitState::Healthy;
    for s in states {
        match s {
            ObjectState::Degraded | ObjectState::Missing | ObjectState::Failed => {
                return CommitState::Degraded;
            }
            ObjectState::Pending | ObjectState::Applied | ObjectState::Progressing => {
                state = CommitState::Progressing;
            }
            ObjectState::Healthy => {}
        }
    }
    state
}

/// The state a commit whose note says `current` moves to when its objects roll up to
/// `computed`: `computed`, unless the note may not follow it ([`can_move`]) — a settled
/// commit that regresses (healthy, then progressing again) is `degraded`, which can recover.
///
/// [`can_move`]: crate::notes::can_move
pub fn next_state(current: CommitState, computed: CommitState) -> CommitState {
    if crate::notes::can_move(current, computed) {
        computed
    } else if crate::notes::can_move(current, CommitState::Degraded) {
        CommitState::Degraded
    } else {
        current
    }
}

/// `status` (an applied commit's) with each object's state and drift evaluated against
/// `snapshot`, and the commit's state rolled up from them and moved by [`next_state`]. The
/// rest (commit, sync summary, message, errors) is kept; `updated` is stamped now.
pub fn evaluate(status: &CommitStatus, snapshot: &Snapshot) -> CommitStatus {
    let mut next = CommitStatus::new(status.commit.clone(), status.state);
    next.message = status.message.clone();
    next.sync = status.sync.clone();
    next.errors = status.errors.clone();
    next.objects = status
        .objects
        .iter()
        .map(|o| {
            let health = object_health(&o.kind, snapshot.get(&o.key), snapshot);
            ObjectStatus {
                state: health.state,
                drift: health.drift,
                ..o.clone()
            }
        })
        .collect();
    next.state = next_state(status.state, rollup(next.objects.iter().map(|o| o.state)));
    next
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    use CommitState as C;
    use ObjectState as O;

    fn deploy(replicas: Option<i64>, status: Value) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-1", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
            "status": status,
        });
        if let Some(r) = replicas {
            d["spec"]["replicas"] = json!(r);
        }
        d
    }

    fn cond(kind: &str, status: &str, reason: &str) -> Value {
        json!({"type": kind, "status": status, "reason": reason, "message": format!("{kind} is {status}")})
    }

    fn dstatus(observed: i64, replicas: i64, updated: i64, available: i64) -> Value {
        json!({
            "observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
            "readyReplicas": available, "availableReplicas": available,
            "unavailableReplicas": replicas - available,
            "conditions": [
                cond("Available", if available >= replicas { "True" } else { "False" }, "MinimumReplicasAvailable"),
                cond("Progressing", "True", "NewReplicaSetAvailable"),
            ],
        })
    }

    fn replica_set_of(name: &str, uid: &str, owner: &str, revision: Option<&str>) -> Value {
        let mut rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "generation": 1,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                    "uid": owner, "controller": true}]},
            "spec": {"replicas": 1},
            "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 1},
        });
        if let Some(r) = revision {
            rs["metadata"]["annotations"] = json!({ REVISION_ANNOTATION: r });
        }
        rs
    }

    fn pod_of(name: &str, owner: Option<&str>, status: Value) -> Value {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("p-{name}")},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            "status": status,
        });
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "rs", "uid": o, "controller": true}]);
        }
        p
    }

    fn running() -> Value {
        json!({"phase": "Running", "conditions": [cond("Ready", "True", "")],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                "image": "web:1", "state": {"running": {}}}]})
    }

    fn waiting(reason: &str, restarts: i64) -> Value {
        json!({"phase": "Running", "conditions": [cond("Ready", "False", "ContainersNotReady")],
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": restarts,
                "image": "web:1", "state": {"waiting": {"reason": reason, "message": "back-off 40s"}}}]})
    }

    fn snap(objects: &[(&str, &Value)]) -> Snapshot {
        Snapshot::from_objects(objects.iter().map(|(k, v)| (k.to_string(), (*v).clone())))
    }

    fn detail(h: &Health) -> &str {
        h.drift.first().map_or("", |d| d.detail.as_str())
    }

    #[test]
    fn deployment_rules() {
        let mut deadline = dstatus(2, 3, 1, 1);
        deadline["conditions"][1] = cond("Progressing", "False", "ProgressDeadlineExceeded");
        let mut stale_deadline = deadline.clone();
        stale_deadline["observedGeneration"] = json!(1);
        let mut unavailable = dstatus(2, 3, 3, 3);
        unavailable["conditions"][0] = cond("Available", "False", "MinimumReplicasUnavailable");
        // (case, spec.replicas, status, state, drift kind, detail)
        type Case = (
            &'static str,
            Option<i64>,
            Value,
            O,
            Option<DriftKind>,
            &'static str,
        );
        let table: Vec<Case> = vec![
            (
                "rolled out",
                Some(3),
                dstatus(2, 3, 3, 3),
                O::Healthy,
                None,
                "",
            ),
            (
                "default of one replica",
                None,
                dstatus(2, 1, 1, 1),
                O::Healthy,
                None,
                "",
            ),
            (
                "scaled to zero",
                Some(0),
                dstatus(2, 0, 0, 0),
                O::Healthy,
                None,
                "",
            ),
            (
                "no status yet",
                Some(3),
                json!(null),
                O::Progressing,
                Some(DriftKind::NotReady),
                "waiting for the Deployment controller (no status yet)",
            ),
            (
                "old generation",
                Some(3),
                dstatus(1, 3, 3, 3),
                O::Progressing,
                Some(DriftKind::NotReady),
                "waiting for the Deployment controller to observe generation 2 (observed 1)",
            ),
            (
                "updating",
                Some(3),
                dstatus(2, 4, 1, 3),
                O::Progressing,
                Some(DriftKind::NotReady),
                "1/3 replicas updated",
            ),
            (
                "old pods left",
                Some(3),
                dstatus(2, 4, 3, 3),
                O::Progressing,
                Some(DriftKind::NotReady),
                "1 old replicas pending termination",
            ),
            (
                "becoming available",
                Some(3),
                dstatus(2, 3, 3, 2),
                O::Progressing,
                Some(DriftKind::NotReady),
                "2/3 replicas available",
            ),
            (
                "Available not true",
                Some(3),
                unavailable,
                O::Progressing,
                Some(DriftKind::NotReady),
                "waiting for the Available condition",
            ),
            (
                "deadline exceeded",
                Some(3),
                deadline,
                O::Degraded,
                Some(DriftKind::Stalled),
                "ProgressDeadlineExceeded: Progressing is False",
            ),
            (
                "deadline of an older generation",
                Some(3),
                stale_deadline,
                O::Progressing,
                Some(DriftKind::NotReady),
                "waiting for the Deployment controller to observe generation 2 (observed 1)",
            ),
        ];
        for (case, replicas, status, state, kind, want) in table {
            let d = deploy(replicas, status);
            let h = deployment(&d, &Snapshot::default());
            assert_eq!(h.state, state, "{case}");
            assert_eq!(h.drift.first().map(|d| d.kind), kind, "{case}");
            assert_eq!(detail(&h), want, "{case}");
        }
    }

    #[test]
    fn a_crashing_pod_of_the_newest_replica_set_degrades_its_deployment() {
        let d = deploy(Some(2), dstatus(2, 2, 2, 1));
        let old = replica_set_of("web-1", "rs-1", "d-1", Some("1"));
        let new = replica_set_of("web-2", "rs-2", "d-1", Some("2"));
        let other = replica_set_of("api-1", "rs-9", "d-other", None);
        let crashing = pod_of("web-2-a", Some("rs-2"), waiting("CrashLoopBackOff", 4));
        let crashing2 = pod_of("web-2-b", Some("rs-2"), waiting("ImagePullBackOff", 0));
        let fine = pod_of("web-2-c", Some("rs-2"), running());
        let old_crashing = pod_of("web-1-a", Some("rs-1"), waiting("CrashLoopBackOff", 9));
        let unrelated = pod_of("api-1-a", Some("rs-9"), waiting("CrashLoopBackOff", 9));

        let all = snap(&[
            ("/apps/Deployment/default/web", &d),
            ("/apps/ReplicaSet/default/web-1", &old),
            ("/apps/ReplicaSet/default/web-2", &new),
            ("/apps/ReplicaSet/default/api-1", &other),
            ("/core/Pod/default/web-2-a", &crashing),
            ("/core/Pod/default/web-2-b", &crashing2),
            ("/core/Pod/default/web-2-c", &fine),
            ("/core/Pod/default/web-1-a", &old_crashing),
            ("/core/Pod/default/api-1-a", &unrelated),
        ]);
        let h = deployment(&d, &all);
        assert_eq!(h.state, O::Degraded);
        assert_eq!(h.drift[0].kind, DriftKind::Failed);
        assert_eq!(
            detail(&h),
            "pod web-2-a: container app is waiting: CrashLoopBackOff (and 1 more pod)"
        );

        // Only the old ReplicaSet's Pods crash (a fix rolling out), or only another
        // Deployment's: still progressing.
        let rolling = snap(&[
            ("/apps/ReplicaSet/default/web-1", &old),
            ("/apps/ReplicaSet/default/web-2", &new),
            ("/apps/ReplicaSet/default/api-1", &other),
            ("/core/Pod/default/web-2-c", &fine),
            ("/core/Pod/default/web-1-a", &old_crashing),
            ("/core/Pod/default/api-1-a", &unrelated),
        ]);
        let h = deployment(&d, &rolling);
        assert_eq!(
            (h.state, detail(&h)),
            (O::Progressing, "1/2 replicas available")
        );

        // Without revision annotations every owned ReplicaSet counts.
        let plain = replica_set_of("web-x", "rs-x", "d-1", None);
        let crash_x = pod_of("web-x-a", Some("rs-x"), waiting("CreateContainerError", 0));
        let h = deployment(
            &d,
            &snap(&[
                ("/apps/ReplicaSet/default/web-x", &plain),
                ("/core/Pod/default/web-x-a", &crash_x),
            ]),
        );
        assert_eq!(h.state, O::Degraded, "{h:?}");
    }

    #[test]
    fn container_trouble_rules() {
        let terminated = |code: i64, restarts: i64| {
            json!({"phase": "Running", "containerStatuses": [{"name": "app", "ready": false,
                "restartCount": restarts, "image": "x",
                "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]})
        };
        let init_failing = json!({"phase": "Pending", "initContainerStatuses": [{"name": "setup",
            "ready": false, "restartCount": 0, "image": "x",
            "state": {"waiting": {"reason": "ErrImagePull"}}}]});
        // (case, pod status, trouble)
        let table: Vec<(&str, Value, Option<&str>)> = vec![
            ("running", running(), None),
            ("creating", waiting("ContainerCreating", 0), None),
            ("initializing", waiting("PodInitializing", 0), None),
            (
                "crash loop",
                waiting("CrashLoopBackOff", 3),
                Some("container app is waiting: CrashLoopBackOff"),
            ),
            (
                "image pull back-off",
                waiting("ImagePullBackOff", 0),
                Some("container app is waiting: ImagePullBackOff"),
            ),
            (
                "create error",
                waiting("CreateContainerConfigError", 0),
                Some("container app is waiting: CreateContainerConfigError"),
            ),
            (
                "invalid image",
                waiting("InvalidImageName", 0),
                Some("container app is waiting: InvalidImageName"),
            ),
            ("first exit", terminated(1, 0), None),
            ("clean exit after restarts", terminated(0, 2), None),
            (
                "restart loop",
                terminated(137, 2),
                Some("container app is in a restart loop (exit code 137)"),
            ),
            (
                "init container",
                init_failing,
                Some("container setup is waiting: ErrImagePull"),
            ),
        ];
        for (case, status, want) in table {
            let p = pod_of("p", None, status);
            assert_eq!(container_trouble(&p).as_deref(), want, "{case}");
        }
    }

    #[test]
    fn pod_rules() {
        let succeeded = json!({"phase": "Succeeded"});
        let failed = json!({"phase": "Failed", "reason": "Evicted"});
        let pending = json!({"phase": "Pending"});
        // (case, status, state, detail)
        let table: Vec<(&str, Value, O, &str)> = vec![
            ("ready", running(), O::Healthy, ""),
            ("succeeded", succeeded, O::Healthy, ""),
            ("failed", failed, O::Degraded, "phase Failed: Evicted"),
            (
                "crash loop",
                waiting("CrashLoopBackOff", 5),
                O::Degraded,
                "container app is waiting: CrashLoopBackOff",
            ),
            (
                "pending",
                pending,
                O::Progressing,
                "not ready (phase Pending)",
            ),
            (
                "no status",
                json!(null),
                O::Progressing,
                "not ready (no status yet)",
            ),
        ];
        for (case, status, state, want) in table {
            let h = pod(&pod_of("p", None, status));
            assert_eq!((h.state, detail(&h)), (state, want), "{case}");
        }
    }

    #[test]
    fn replica_set_rules() {
        let mk = |spec: i64, status: Value| {
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "rs", "namespace": "default", "uid": "rs-1", "generation": 1},
                "spec": {"replicas": spec}, "status": status})
        };
        let st = |replicas: i64, ready: i64, available: i64| {
            json!({"observedGeneration": 1, "replicas": replicas, "readyReplicas": ready,
                "availableReplicas": available})
        };
        let mut failure = st(1, 1, 1);
        failure["conditions"] = json!([{"type": "ReplicaFailure", "status": "True",
            "reason": "FailedCreate", "message": "quota exceeded"}]);
        // (case, spec.replicas, status, state, detail)
        let table: Vec<(&str, i64, Value, O, &str)> = vec![
            ("all available", 2, st(2, 2, 2), O::Healthy, ""),
            ("scaling", 3, st(2, 2, 2), O::Progressing, "2/3 replicas"),
            (
                "not ready",
                2,
                st(2, 1, 1),
                O::Progressing,
                "1/2 replicas ready",
            ),
            (
                "min ready wait",
                2,
                st(2, 2, 1),
                O::Progressing,
                "1/2 replicas available",
            ),
            (
                "no status",
                1,
                json!(null),
                O::Progressing,
                "waiting for the ReplicaSet controller (no status yet)",
            ),
            (
                "replica failure",
                1,
                failure,
                O::Degraded,
                "ReplicaFailure: quota exceeded",
            ),
        ];
        for (case, spec, status, state, want) in table {
            let h = replica_set(&mk(spec, status), &Snapshot::default());
            assert_eq!((h.state, detail(&h)), (state, want), "{case}");
        }
        let rs = mk(1, st(1, 0, 0));
        let crashing = pod_of("rs-a", Some("rs-1"), waiting("CrashLoopBackOff", 2));
        let h = replica_set(&rs, &snap(&[("/core/Pod/default/rs-a", &crashing)]));
        assert_eq!(
            (h.state, detail(&h)),
            (
                O::Degraded,
                "pod rs-a: container app is waiting: CrashLoopBackOff"
            )
        );
    }

    #[test]
    fn kinds_without_a_controller_stay_applied_and_plain_kinds_are_healthy_once_stored() {
        let s = Snapshot::default();
        let any = json!({"metadata": {"name": "x"}});
        for kind in [
            "Namespace",
            "ConfigMap",
            "Secret",
            "Service",
            "Endpoints",
            "Node",
        ] {
            assert_eq!(
                object_health(kind, Some(&any), &s).state,
                O::Healthy,
                "{kind}"
            );
        }
        for kind in ["DaemonSet", "CronJob", "HorizontalPodAutoscaler", "Job"] {
            assert_eq!(
                object_health(kind, Some(&any), &s).state,
                O::Applied,
                "{kind}"
            );
        }
        for kind in ["ConfigMap", "Deployment", "Pod"] {
            let h = object_health(kind, None, &s);
            assert_eq!(h.state, O::Missing, "{kind}");
            assert_eq!(h.drift[0].kind, DriftKind::Missing);
        }
        let complete = json!({"status": {"conditions": [cond("Complete", "True", "")]}});
        let failed =
            json!({"status": {"conditions": [cond("Failed", "True", "BackoffLimitExceeded")]}});
        assert_eq!(job(&complete).state, O::Healthy);
        assert_eq!(
            (job(&failed).state, detail(&job(&failed))),
            (O::Degraded, "job failed: BackoffLimitExceeded")
        );
    }

    #[test]
    fn rollup_rules() {
        // (objects, commit state)
        let table: Vec<(Vec<O>, C)> = vec![
            (vec![], C::Healthy),
            (vec![O::Healthy, O::Healthy], C::Healthy),
            (vec![O::Healthy, O::Progressing], C::Progressing),
            (vec![O::Healthy, O::Applied], C::Progressing),
            (vec![O::Pending], C::Progressing),
            (vec![O::Progressing, O::Degraded, O::Healthy], C::Degraded),
            (vec![O::Healthy, O::Missing], C::Degraded),
            (vec![O::Applied, O::Failed], C::Degraded),
        ];
        for (states, want) in table {
            assert_eq!(rollup(states.clone()), want, "{states:?}");
        }
    }

    #[test]
    fn a_settled_commit_that_regresses_is_degraded() {
        // (note says, computed, next)
        let table = [
            (C::Applied, C::Progressing, C::Progressing),
            (C::Applied, C::Healthy, C::Healthy),
            (C::Progressing, C::Healthy, C::Healthy),
            (C::Progressing, C::Degraded, C::Degraded),
            (C::Healthy, C::Degraded, C::Degraded),
            (C::Degraded, C::Healthy, C::Healthy),
            (C::Healthy, C::Progressing, C::Degraded),
            (C::Degraded, C::Progressing, C::Degraded),
            (C::Failed, C::Healthy, C::Failed),
        ];
        for (current, computed, want) in table {
            assert_eq!(
                next_state(current, computed),
                want,
                "{current} + {computed}"
            );
        }
    }

    #[test]
    fn evaluate_updates_objects_and_rolls_up() {
        let mut status = CommitStatus::new("c".repeat(40), C::Applied);
        status.sync.created = 3;
        let object = |key: &str, kind: &str, name: &str| ObjectStatus {
            key: key.into(),
            kind: kind.into(),
            namespace: Some("default".into()),
            name: name.into(),
            source: "deploy/app.yaml".into(),
            state: O::Applied,
            drift: vec![],
        };
        status.objects = vec![
            object("/apps/Deployment/default/web", "Deployment", "web"),
            object("/core/ConfigMap/default/cfg", "ConfigMap", "cfg"),
            object("/core/Secret/default/gone", "Secret", "gone"),
        ];
        let d = deploy(Some(3), dstatus(2, 3, 3, 2));
        let cfg = json!({"metadata": {"name": "cfg"}});
        let s = snap(&[
            ("/apps/Deployment/default/web", &d),
            ("/core/ConfigMap/default/cfg", &cfg),
        ]);
        let next = evaluate(&status, &s);
        assert_eq!(next.state, C::Degraded, "the secret is missing");
        assert_eq!(next.sync, status.sync);
        let states: Vec<O> = next.objects.iter().map(|o| o.state).collect();
        assert_eq!(states, [O::Progressing, O::Healthy, O::Missing]);
        assert_eq!(next.objects[0].drift[0].detail, "2/3 replicas available");

        status.objects.pop();
        let next = evaluate(&status, &s);
        assert_eq!(next.state, C::Progressing);
        // The same snapshot gives the same content: no note churn.
        assert!(evaluate(&status, &s).same_content(&next));
    }

    #[test]
    fn prefixes_follow_the_declared_objects() {
        let o = |key: &str, kind: &str, ns: Option<&str>| ObjectStatus {
            key: key.into(),
            kind: kind.into(),
            namespace: ns.map(str::to_string),
            name: "x".into(),
            source: "f.yaml".into(),
            state: O::Applied,
            drift: vec![],
        };
        let got = prefixes(&[
            o("/apps/Deployment/web/a", "Deployment", Some("web")),
            o("/apps/Deployment/web/b", "Deployment", Some("web")),
            o("/core/ConfigMap/web/c", "ConfigMap", Some("web")),
            o("/core/Namespace/web", "Namespace", None),
        ]);
        let want: BTreeSet<String> = [
            "/apps/Deployment/web/",
            "/apps/ReplicaSet/web/",
            "/core/ConfigMap/web/",
            "/core/Namespace/",
            "/core/Pod/web/",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        assert_eq!(got, want);
    }
}
