//! The scheduler controller: binds pending pods to nodes with the pure scheduling logic of
//! [`crate::scheduler`], as kube-scheduler does.
//!
//! It reconciles one key, [`QUEUE_KEY`]: every change that can make a pending pod
//! schedulable (a new unbound pod, a bound pod deleted or finished, any node change) enqueues
//! it, and the work queue folds a burst of such changes into one reconcile. One reconcile:
//!
//! 1. takes every pending pod (no `spec.nodeName`, not being deleted, not finished), oldest
//!    first (Kubernetes' queue orders by priority, then by creation; pods here have no
//!    priority);
//! 2. builds a [`Snapshot`] of the nodes and the pods bound to them, with the taints the node
//!    lifecycle controller would add ([`lifecycle_taints`]) so a dead node takes nothing;
//! 3. decides them as one batch ([`schedule_batch`]), each decision seen by the next, so a
//!    burst of 100 replicas spreads and never overcommits a node;
//! 4. binds each placed pod by compare-and-swap (`spec.nodeName` and `PodScheduled=True`),
//!    and marks each unplaced one `PodScheduled=False`, reason `Unschedulable`, with the
//!    `FitError` message `kubectl describe` users know (`0/3 nodes are available: ...`),
//!    written only when the message changed.
//!
//! An unschedulable pod is tried again on the next node or pod event, and at the latest after
//! [`UNSCHEDULABLE_RETRY`] (Kubernetes flushes its unschedulable queue after 5 minutes;
//! ours is shorter because one reconcile of a small cluster costs little).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coxswain_schema::kinds::core::{Node, Taint};
use coxswain_schema::kinds::pod::{Pod, TaintEffect};
use coxswain_store::{KeyValue, Kv, Txn};
use serde_json::{Value, json};

use super::cache::{Cache, ObjectEvent};
use super::{Action, Context, Reconciler, Watch};
use crate::error::Result;
use crate::scheduler::{Snapshot, schedule_batch};

pub const POD_PREFIX: &str = "/core/Pod/";
pub const NODE_PREFIX: &str = "/core/Node/";
/// The one key this controller reconciles: "the pending pods".
pub const QUEUE_KEY: &str = "scheduler/pending";
/// How long an unschedulable pod waits for an event before it is tried again anyway.
pub const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(30);
/// Kubernetes' `node-monitor-grace-period`: a node whose agent has not reported for this long
/// is taken as unreachable.
pub const NODE_GRACE: Duration = Duration::from_secs(40);
/// The taints Kubernetes' node lifecycle controller puts on a node that is not Ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The scheduler as a controller. One worker: it has one key.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedulerController;

fn is_finished(value: &Value) -> bool {
    matches!(
        value.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn is_bound(value: &Value) -> bool {
    value
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
}

/// Waits for a node: not bound, not being deleted, not finished.
fn is_pending(value: &Value) -> bool {
    !is_bound(value)
        && value.pointer("/metadata/deletionTimestamp").is_none()
        && !is_finished(value)
}

/// Pod events that can change a decision: a pending pod appeared or changed, or a bound pod
/// stopped holding its node's resources (deleted or finished).
fn map_pod(ev: &ObjectEvent<'_>, _: &Cache) -> Vec<String> {
    let pending = ev.new.is_some_and(|kv| is_pending(&kv.value));
    let freed = ev.old.is_some_and(|old| {
        is_bound(&old.value)
            && !is_finished(&old.value)
            && ev.new.is_none_or(|new| is_finished(&new.value))
    });
    if pending || freed {
        vec![QUEUE_KEY.to_string()]
    } else {
        Vec::new()
    }
}

fn time(text: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The taints Kubernetes' node lifecycle controller would have put on `node` at `now`:
/// `not-ready` when its Ready condition is False, `unreachable` when it is Unknown, missing,
/// or its agent has not reported within [`NODE_GRACE`]. coxswain has no node lifecycle
/// controller yet, so the scheduler derives them itself; pods tolerate them the usual way.
pub fn lifecycle_taints(node: &Node, now: DateTime<Utc>) -> Vec<Taint> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let stale = ready
        .and_then(|c| time(c.last_heartbeat_time.as_deref()))
        .is_none_or(|t| {
            now.signed_duration_since(t)
                .to_std()
                .is_ok_and(|d| d > NODE_GRACE)
        });
    let key = match ready.map(|c| c.status.as_str()) {
        Some("True") if !stale => return Vec::new(),
        Some("False") if !stale => TAINT_NOT_READY,
        _ => TAINT_UNREACHABLE,
    };
    vec![Taint {
        key: key.to_string(),
        value: None,
        effect: TaintEffect::NoSchedule,
        time_added: None,
    }]
}

/// `PodScheduled` with this status, keeping `lastTransitionTime` when the status is the same.
fn set_scheduled(pod: &mut Value, status: &str, reason: Option<&str>, message: Option<&str>) {
    let now = crate::notes::now_rfc3339();
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({"phase": "Pending"});
    }
    let conditions = &mut pod["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    let mut condition = json!({"type": "PodScheduled", "status": status});
    if let Some(r) = reason {
        condition["reason"] = json!(r);
    }
    if let Some(m) = message {
        condition["message"] = json!(m);
    }
    match list
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"))
    {
        Some(old) => {
            let same = old.get("status").and_then(Value::as_str) == Some(status);
            condition["lastTransitionTime"] = match old.get("lastTransitionTime") {
                Some(t) if same => t.clone(),
                _ => json!(now),
            };
            *old = condition;
        }
        None => {
            condition["lastTransitionTime"] = json!(now);
            list.push(condition);
        }
    }
}

fn scheduled_message(pod: &Value) -> Option<&str> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"))?
        .get("message")?
        .as_str()
}

/// Parses stored objects, skipping (with a warning) any this version cannot read: one bad
/// object must not stop every pod in the cluster from being scheduled.
fn parse_all<T: serde::de::DeserializeOwned>(items: &[Arc<KeyValue>]) -> Vec<T> {
    items
        .iter()
        .filter_map(|kv| match serde_json::from_value(kv.value.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "unreadable; left out of scheduling");
                None
            }
        })
        .collect()
}

impl Reconciler for SchedulerController {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![
            Watch::custom(POD_PREFIX, map_pod),
            Watch::custom(NODE_PREFIX, |_, _| vec![QUEUE_KEY.to_string()]),
        ]
    }

    fn workers(&self) -> usize {
        1
    }

    async fn reconcile<K: Kv + 'static>(&self, key: &str, ctx: &Context<K>) -> Result<Action> {
        if key != QUEUE_KEY {
            return Ok(Action::Done);
        }
        let all_pods = ctx.cache().list(POD_PREFIX);
        let mut pending: Vec<Arc<KeyValue>> = all_pods
            .iter()
            .filter(|kv| is_pending(&kv.value))
            .cloned()
            .collect();
        if pending.is_empty() {
            return Ok(Action::Done);
        }
        // Oldest first; the store's create revision breaks ties of equal timestamps (and
        // orders pods without one) the way they were created.
        pending.sort_by_key(|kv| {
            (
                time(
                    kv.value
                        .pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str),
                ),
                kv.create_revision,
            )
        });
        let now = Utc::now();
        let mut nodes: Vec<Node> = parse_all(&ctx.cache().list(NODE_PREFIX));
        for node in &mut nodes {
            let extra = lifecycle_taints(node, now);
            if !extra.is_empty() {
                node.spec
                    .get_or_insert_with(Default::default)
                    .taints
                    .get_or_insert_with(Vec::new)
                    .extend(extra);
            }
        }
        let bound: Vec<Arc<KeyValue>> = all_pods
            .iter()
            .filter(|kv| is_bound(&kv.value) && !is_finished(&kv.value))
            .cloned()
            .collect();
        let bound: Vec<Pod> = parse_all(&bound);
        let mut pods = Vec::with_capacity(pending.len());
        let mut kvs = Vec::with_capacity(pending.len());
        for kv in &pending {
            match serde_json::from_value::<Pod>(kv.value.clone()) {
                Ok(p) => {
                    pods.push(p);
                    kvs.push(kv);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "unreadable pod; not scheduled")
                }
            }
        }

        let mut snapshot = Snapshot::new(&nodes, &bound);
        let decisions = schedule_batch(&mut snapshot, &pods);
        let mut units = Vec::new();
        let mut unschedulable = 0usize;
        for (kv, (name, decision)) in kvs.iter().zip(&decisions) {
            let mut value = kv.value.clone();
            match decision {
                Ok(d) => {
                    tracing::info!(pod = %name, node = %d.node, score = d.score, "Scheduled");
                    value["spec"]["nodeName"] = json!(d.node);
                    set_scheduled(&mut value, "True", None, None);
                }
                Err(e) => {
                    unschedulable += 1;
                    let message = e.to_string();
                    if scheduled_message(&kv.value) == Some(message.as_str()) {
                        continue;
                    }
                    tracing::info!(pod = %name, reason = %message, "FailedScheduling");
                    set_scheduled(&mut value, "False", Some("Unschedulable"), Some(&message));
                }
            }
            units.push(Txn::compare_and_swap(
                kv.key.clone(),
                kv.mod_revision,
                value,
            ));
        }
        if !units.is_empty() {
            ctx.write(units).await?;
        }
        Ok(if unschedulable > 0 {
            Action::RequeueAfter(UNSCHEDULABLE_RETRY)
        } else {
            Action::Done
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use coxswain_store::KeyValue;

    use super::*;

    fn node(status: Option<&str>, heartbeat_age_s: i64, now: DateTime<Utc>) -> Node {
        let mut v = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}});
        if let Some(s) = status {
            let beat = (now - chrono::Duration::seconds(heartbeat_age_s))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            v["status"] = json!({"conditions": [
                {"type": "Ready", "status": s, "lastHeartbeatTime": beat}
            ]});
        }
        serde_json::from_value(v).unwrap()
    }

    fn keys(t: &[Taint]) -> Vec<&str> {
        t.iter().map(|t| t.key.as_str()).collect()
    }

    #[test]
    fn lifecycle_taints_follow_ready_and_the_heartbeat() {
        let now = Utc::now();
        assert!(lifecycle_taints(&node(Some("True"), 5, now), now).is_empty());
        assert_eq!(
            keys(&lifecycle_taints(&node(Some("False"), 5, now), now)),
            [TAINT_NOT_READY]
        );
        assert_eq!(
            keys(&lifecycle_taints(&node(Some("True"), 120, now), now)),
            [TAINT_UNREACHABLE]
        );
        assert_eq!(
            keys(&lifecycle_taints(&node(Some("Unknown"), 1, now), now)),
            [TAINT_UNREACHABLE]
        );
        assert_eq!(
            keys(&lifecycle_taints(&node(None, 0, now), now)),
            [TAINT_UNREACHABLE]
        );
    }

    fn kv(value: Value) -> KeyValue {
        KeyValue {
            key: "/core/Pod/default/p".into(),
            value,
            create_revision: 1,
            mod_revision: 1,
        }
    }

    #[test]
    fn pod_events_wake_the_scheduler_only_when_a_decision_can_change() {
        let cache = Cache::new([POD_PREFIX.to_string()]);
        let pending = kv(json!({"metadata": {"name": "p"}, "spec": {}}));
        let bound = kv(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"},
                              "status": {"phase": "Running"}}));
        let done = kv(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"},
                             "status": {"phase": "Succeeded"}}));
        let ev = |old: Option<&KeyValue>, new: Option<&KeyValue>| {
            map_pod(
                &ObjectEvent {
                    key: "/core/Pod/default/p",
                    old,
                    new,
                },
                &cache,
            )
        };
        assert_eq!(ev(None, Some(&pending)), [QUEUE_KEY]);
        assert_eq!(
            ev(Some(&bound), None),
            [QUEUE_KEY],
            "deleted frees its node"
        );
        assert_eq!(
            ev(Some(&bound), Some(&done)),
            [QUEUE_KEY],
            "finished frees it"
        );
        assert!(ev(Some(&bound), Some(&bound)).is_empty(), "a status update");
        assert!(ev(Some(&done), None).is_empty(), "it held nothing");
    }

    #[test]
    fn pod_scheduled_keeps_its_transition_time_while_the_status_holds() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {}});
        set_scheduled(&mut pod, "False", Some("Unschedulable"), Some("0/1 nodes"));
        pod["status"]["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        set_scheduled(&mut pod, "False", Some("Unschedulable"), Some("0/2 nodes"));
        let c = &pod["status"]["conditions"][0];
        assert_eq!(c["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(scheduled_message(&pod), Some("0/2 nodes"));
        assert_eq!(pod["status"]["phase"], "Pending");
        set_scheduled(&mut pod, "True", None, None);
        let c = &pod["status"]["conditions"][0];
        assert_eq!(c["status"], "True");
        assert_ne!(c["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert!(c.get("message").is_none());
        assert_eq!(pod["status"]["conditions"].as_array().unwrap().len(), 1);
    }
}
