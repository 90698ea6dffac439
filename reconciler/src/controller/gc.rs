//! The garbage collector: background deletion of dependents whose owners are gone, as
//! Kubernetes' garbage collector does with `propagationPolicy: Background`.
//!
//! An owner reference is *dangling* when no object of its kind and name exists in the
//! dependent's namespace, or one exists with another uid (the owner was deleted and
//! recreated). A dependent whose references all dangle is deleted; one with some solid
//! owners left only loses its dangling references, as in Kubernetes. A reference to a kind
//! coxswain does not know counts as solid: the collector cannot tell, and a wrong delete
//! cannot be undone.
//!
//! Keys are the store keys of dependents. They are queued when a dependent appears or
//! changes with a dangling reference, and when an owner is deleted or replaced (every
//! object of the cache's owner index that names its old uid). Chains need nothing more: a
//! Deployment's deletion queues its ReplicaSets, their deletion queues their pods.
//!
//! Before anything is deleted, each dangling owner is looked up in the store with a
//! linearizable read, as Kubernetes' collector does a live GET: the cache is consistent, but
//! this is the one irreversible step and the read is cheap. Git-owned objects never carry
//! owner references and are never collected.

use coxswain_schema::meta::OwnerReference;
use coxswain_store::{CmpOp, Compare, Consistency, Kv, Op, Target, Txn};
use serde_json::Value;

use super::cache::{self, Cache, ObjectEvent, owner_key, owner_references, uid};
use super::{Action, Context, Reconciler, Watch, is_git_owned};
use crate::error::Result;

/// The collector; `workers` defaults to 4.
#[derive(Debug, Clone)]
pub struct GarbageCollector {
    pub workers: usize,
}

impl Default for GarbageCollector {
    fn default() -> Self {
        GarbageCollector { workers: 4 }
    }
}

/// The prefix of every kind coxswain stores: the collector must see every possible owner
/// and dependent.
pub fn all_kind_prefixes() -> Vec<String> {
    coxswain_schema::object::KINDS
        .iter()
        .map(|k| {
            let group = if k.group.is_empty() { "core" } else { k.group };
            format!("/{group}/{}/", k.kind)
        })
        .collect()
}

/// How an owner reference stands in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// An object of that kind, name and uid exists.
    Present,
    /// None exists, or one with another uid.
    Dangling,
    /// The kind is not one coxswain stores; treated as present.
    Unknown,
}

/// The state of each owner reference of the object at `key`, per the cache.
pub fn owner_states(key: &str, value: &Value, cache: &Cache) -> Vec<(OwnerReference, OwnerState)> {
    let namespace = cache::parse_key(key).and_then(|p| p.namespace);
    owner_references(value)
        .into_iter()
        .map(|r| {
            let state = match owner_key(&r, namespace) {
                None => OwnerState::Unknown,
                Some(k) if !cache.covers(&k) => OwnerState::Unknown,
                Some(k) => match cache.get(&k) {
                    Some(owner) if uid(&owner.value) == Some(r.uid.as_str()) => OwnerState::Present,
                    _ => OwnerState::Dangling,
                },
            };
            (r, state)
        })
        .collect()
}

fn has_dangling(key: &str, value: &Value, cache: &Cache) -> bool {
    value
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
        && owner_states(key, value, cache)
            .iter()
            .any(|(_, s)| *s == OwnerState::Dangling)
}

fn map_event(ev: &ObjectEvent<'_>, cache: &Cache) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(old_uid) = ev.old.and_then(|o| uid(&o.value)) {
        let replaced = ev.new.is_none_or(|n| uid(&n.value) != Some(old_uid));
        if replaced {
            keys.extend(cache.dependents(old_uid));
        }
    }
    if let Some(new) = ev.new
        && has_dangling(ev.key, &new.value, cache)
    {
        keys.push(ev.key.to_string());
    }
    keys
}

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn watches(&self) -> Vec<Watch> {
        all_kind_prefixes()
            .into_iter()
            .map(|p| Watch::custom(p, map_event))
            .collect()
    }

    fn workers(&self) -> usize {
        self.workers
    }

    async fn reconcile<K: Kv + 'static>(&self, key: &str, ctx: &Context<K>) -> Result<Action> {
        let Some(kv) = ctx.cache().get(key) else {
            return Ok(Action::Done);
        };
        if is_git_owned(&kv.value) {
            return Ok(Action::Done);
        }
        let states = owner_states(key, &kv.value, ctx.cache());
        if !states.iter().any(|(_, s)| *s == OwnerState::Dangling) {
            return Ok(Action::Done);
        }
        let namespace = cache::parse_key(key).and_then(|p| p.namespace);
        let mut dangling = Vec::new();
        let mut solid = 0;
        for (r, state) in &states {
            if *state != OwnerState::Dangling {
                solid += 1;
                continue;
            }
            let Some(owner) = owner_key(r, namespace) else {
                solid += 1;
                continue;
            };
            let (_, live) = ctx.kv().get(&owner, Consistency::Linearizable).await?;
            if live.is_some_and(|o| uid(&o.value) == Some(r.uid.as_str())) {
                // The cache is behind the store; the owner's event will come.
                solid += 1;
            } else {
                dangling.push(r.uid.clone());
            }
        }
        if dangling.is_empty() {
            return Ok(Action::Done);
        }
        let unit = if solid == 0 {
            tracing::info!(owners = ?dangling, "garbage-collector: owners gone; deleting");
            Txn {
                compares: vec![Compare {
                    key: key.to_string(),
                    target: Target::ModRevision,
                    op: CmpOp::Equal,
                    value: kv.mod_revision,
                }],
                success: vec![Op::Delete {
                    key: key.to_string(),
                }],
                failure: Vec::new(),
            }
        } else {
            tracing::info!(owners = ?dangling, "garbage-collector: removing dangling owner references");
            let mut value = kv.value.clone();
            if let Some(refs) = value
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| {
                    r.get("uid")
                        .and_then(Value::as_str)
                        .is_none_or(|u| !dangling.iter().any(|d| d == u))
                });
            }
            Txn::compare_and_swap(key, kv.mod_revision, value)
        };
        ctx.write(vec![unit]).await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use coxswain_store::{Event, EventKind, KeyValue, WatchBatch};
    use serde_json::json;

    use super::*;

    fn put(cache: &Cache, rev: u64, key: &str, value: Value) {
        cache.apply(&WatchBatch {
            revision: rev,
            events: vec![Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.into(),
                    value,
                    create_revision: rev,
                    mod_revision: rev,
                },
                prev: None,
            }],
        });
    }

    fn obj(uid: &str, owners: &[(&str, &str, &str)]) -> Value {
        let refs: Vec<Value> = owners
            .iter()
            .map(|(kind, name, uid)| {
                let api = if *kind == "Widget" { "example.com/v1" } else { "apps/v1" };
                json!({"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": true})
            })
            .collect();
        json!({"metadata": {"name": "x", "uid": uid, "ownerReferences": refs}})
    }

    fn cache() -> Cache {
        Cache::new(all_kind_prefixes())
    }

    #[test]
    fn every_kind_is_watched() {
        let p = all_kind_prefixes();
        assert!(p.contains(&"/core/Pod/".to_string()));
        assert!(p.contains(&"/apps/Deployment/".to_string()));
        assert_eq!(p.len(), coxswain_schema::object::KINDS.len());
    }

    #[test]
    fn owner_states_tell_present_dangling_replaced_and_unknown() {
        let c = cache();
        put(&c, 1, "/apps/ReplicaSet/ns/live", obj("rs-1", &[]));
        put(&c, 2, "/apps/ReplicaSet/ns/recreated", obj("rs-new", &[]));
        let pod = obj(
            "p",
            &[
                ("ReplicaSet", "live", "rs-1"),
                ("ReplicaSet", "gone", "rs-2"),
                ("ReplicaSet", "recreated", "rs-old"),
                ("Widget", "w", "w-1"),
            ],
        );
        let states: Vec<OwnerState> = owner_states("/core/Pod/ns/p", &pod, &c)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(
            states,
            [
                OwnerState::Present,
                OwnerState::Dangling,
                OwnerState::Dangling,
                OwnerState::Unknown
            ]
        );
        // The owner must be in the dependent's own namespace.
        let elsewhere = obj("p", &[("ReplicaSet", "live", "rs-1")]);
        assert_eq!(
            owner_states("/core/Pod/other/p", &elsewhere, &c)[0].1,
            OwnerState::Dangling
        );
    }

    #[test]
    fn events_queue_orphaned_dependents_and_dependents_of_deleted_or_replaced_owners() {
        let c = cache();
        put(&c, 1, "/apps/ReplicaSet/ns/rs", obj("rs-1", &[]));
        let owned = obj("p1", &[("ReplicaSet", "rs", "rs-1")]);
        put(&c, 2, "/core/Pod/ns/p1", owned.clone());
        let kv = |key: &str, v: Value| KeyValue {
            key: key.into(),
            value: v,
            create_revision: 1,
            mod_revision: 1,
        };
        let pod = kv("/core/Pod/ns/p1", owned);
        // A pod whose owner is present: nothing to do.
        let ev = ObjectEvent {
            key: &pod.key,
            old: None,
            new: Some(&pod),
        };
        assert!(map_event(&ev, &c).is_empty());
        // A pod whose owner is absent: itself.
        let orphan = kv("/core/Pod/ns/p2", obj("p2", &[("ReplicaSet", "nope", "x")]));
        let ev = ObjectEvent {
            key: &orphan.key,
            old: None,
            new: Some(&orphan),
        };
        assert_eq!(map_event(&ev, &c), ["/core/Pod/ns/p2"]);
        // The owner deleted: its dependents.
        let rs = kv("/apps/ReplicaSet/ns/rs", obj("rs-1", &[]));
        let ev = ObjectEvent {
            key: &rs.key,
            old: Some(&rs),
            new: None,
        };
        assert_eq!(map_event(&ev, &c), ["/core/Pod/ns/p1"]);
        // The owner replaced by one with another uid: its dependents too.
        let rs2 = kv("/apps/ReplicaSet/ns/rs", obj("rs-2", &[]));
        let ev = ObjectEvent {
            key: &rs.key,
            old: Some(&rs),
            new: Some(&rs2),
        };
        assert_eq!(map_event(&ev, &c), ["/core/Pod/ns/p1"]);
        // An owner updated in place: nothing.
        let ev = ObjectEvent {
            key: &rs.key,
            old: Some(&rs),
            new: Some(&rs),
        };
        assert!(map_event(&ev, &c).is_empty());
    }
}
