//! The Namespace controller: when a Namespace is gone from the store, deletes what
//! controllers left in it.
//!
//! Who deletes what when a namespace goes:
//! - Git-owned objects are the syncer's. Validation refuses an object in a namespace the
//!   tree does not declare (other than `default`), so a commit that removes a Namespace
//!   removes everything Git put in it too, and the syncer prunes all of it in the same
//!   Raft entry (subject to its prune guard). This controller never deletes a Git-owned
//!   object; if it finds one in a gone namespace (the prune guard held the commit back), it
//!   logs and leaves it.
//! - Everything else in the namespace (ReplicaSets of Deployments, pods, endpoints, any
//!   object a controller created) is deleted here, in transactions of up to half the op
//!   limit (a compare on each object's revision plus its delete), whatever its owner. The
//!   garbage collector would also get most of them through their owners; this controller
//!   also covers objects without owners and is not slowed by chains.
//! - `default` always exists, declared or not (Kubernetes cannot delete it either), so
//!   nothing in it is ever deleted here.
//!
//! Keys are Namespace store keys (`/core/Namespace/{name}`), queued when a Namespace is
//! deleted and when a non-Git object shows up in a namespace that has no Namespace object
//! (e.g. a pod a ReplicaSet created in a race with the deletion). Before deleting, the
//! Namespace's absence is confirmed with a linearizable read.

use coxswain_schema::object::KINDS;
use coxswain_store::{CmpOp, Compare, Consistency, Kv, Op, Target, Txn, object_key};

use super::cache::{self, Cache, ObjectEvent};
use super::{Action, Context, Reconciler, Watch, is_git_owned};
use crate::error::Result;

pub const NAMESPACE_PREFIX: &str = "/core/Namespace/";
/// The namespace that exists without a Namespace object.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The controller.
#[derive(Debug, Clone, Default)]
pub struct NamespaceController;

/// The prefix of every namespaced kind: `/{group}/{kind}/`.
pub fn namespaced_prefixes() -> Vec<String> {
    KINDS
        .iter()
        .filter(|k| k.namespaced)
        .map(|k| {
            let group = if k.group.is_empty() { "core" } else { k.group };
            format!("/{group}/{}/", k.kind)
        })
        .collect()
}

fn namespace_key(name: &str) -> String {
    object_key("", "Namespace", None, name)
}

fn map_namespace(ev: &ObjectEvent<'_>, _: &Cache) -> Vec<String> {
    if ev.new.is_none() {
        vec![ev.key.to_string()]
    } else {
        Vec::new()
    }
}

fn map_object(ev: &ObjectEvent<'_>, cache: &Cache) -> Vec<String> {
    let Some(new) = ev.new else {
        return Vec::new();
    };
    let Some(ns) = cache::parse_key(ev.key).and_then(|p| p.namespace) else {
        return Vec::new();
    };
    if ns == DEFAULT_NAMESPACE || is_git_owned(&new.value) {
        return Vec::new();
    }
    let key = namespace_key(ns);
    if cache.get(&key).is_some() {
        return Vec::new();
    }
    vec![key]
}

impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn watches(&self) -> Vec<Watch> {
        let mut w = vec![Watch::custom(NAMESPACE_PREFIX, map_namespace)];
        w.extend(
            namespaced_prefixes()
                .into_iter()
                .map(|p| Watch::custom(p, map_object)),
        );
        w
    }

    fn workers(&self) -> usize {
        1
    }

    async fn reconcile<K: Kv + 'static>(&self, key: &str, ctx: &Context<K>) -> Result<Action> {
        let Some(name) = cache::parse_key(key).map(|p| p.name) else {
            return Ok(Action::Done);
        };
        if name == DEFAULT_NAMESPACE || ctx.cache().get(key).is_some() {
            return Ok(Action::Done);
        }
        let mut leftovers = Vec::new();
        let mut git_owned = 0usize;
        for prefix in namespaced_prefixes() {
            for kv in ctx.cache().list(&format!("{prefix}{name}/")) {
                if is_git_owned(&kv.value) {
                    git_owned += 1;
                } else {
                    leftovers.push(kv);
                }
            }
        }
        if git_owned > 0 {
            tracing::warn!(
                namespace = name,
                objects = git_owned,
                "namespace is gone but Git-owned objects remain in it; left to the syncer's prune"
            );
        }
        if leftovers.is_empty() {
            return Ok(Action::Done);
        }
        let (_, live) = ctx.kv().get(key, Consistency::Linearizable).await?;
        if live.is_some() {
            // Recreated meanwhile: its Put event is on the way to the cache.
            return Ok(Action::Done);
        }
        tracing::info!(
            namespace = name,
            objects = leftovers.len(),
            "namespace is gone; deleting what controllers left in it"
        );
        let units = leftovers
            .iter()
            .map(|kv| Txn {
                compares: vec![Compare {
                    key: kv.key.clone(),
                    target: Target::ModRevision,
                    op: CmpOp::Equal,
                    value: kv.mod_revision,
                }],
                success: vec![Op::Delete {
                    key: kv.key.clone(),
                }],
                failure: Vec::new(),
            })
            .collect();
        ctx.write(units).await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use coxswain_store::{Event, EventKind, KeyValue, WatchBatch};
    use serde_json::json;

    use super::*;

    fn kv(key: &str, value: serde_json::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            create_revision: 1,
            mod_revision: 1,
        }
    }

    #[test]
    fn only_namespaced_kinds_are_watched() {
        let p = namespaced_prefixes();
        assert!(p.contains(&"/core/Pod/".to_string()));
        assert!(p.contains(&"/apps/ReplicaSet/".to_string()));
        assert!(!p.contains(&"/core/Namespace/".to_string()));
        assert!(!p.contains(&"/core/Node/".to_string()));
    }

    #[test]
    fn objects_in_a_namespace_without_a_namespace_object_queue_it() {
        let c =
            Cache::new(std::iter::once(NAMESPACE_PREFIX.to_string()).chain(namespaced_prefixes()));
        c.apply(&WatchBatch {
            revision: 1,
            events: vec![Event {
                kind: EventKind::Put,
                kv: kv(
                    "/core/Namespace/live",
                    json!({"metadata": {"name": "live"}}),
                ),
                prev: None,
            }],
        });
        let pod = |ns: &str, v| kv(&format!("/core/Pod/{ns}/p"), v);
        let plain = json!({"metadata": {"name": "p"}});
        let git = json!({"metadata": {"name": "p", "labels": {"app.kubernetes.io/managed-by": "coxswain"}}});
        let cases = [
            (
                pod("gone", plain.clone()),
                vec!["/core/Namespace/gone".to_string()],
            ),
            (pod("live", plain.clone()), vec![]),
            (pod("default", plain.clone()), vec![]),
            (pod("gone", git), vec![]),
        ];
        for (obj, want) in cases {
            let ev = ObjectEvent {
                key: &obj.key,
                old: None,
                new: Some(&obj),
            };
            assert_eq!(map_object(&ev, &c), want, "{}", obj.key);
        }
        let ns = kv("/core/Namespace/live", json!({}));
        let deleted = ObjectEvent {
            key: &ns.key,
            old: Some(&ns),
            new: None,
        };
        assert_eq!(map_namespace(&deleted, &c), ["/core/Namespace/live"]);
        let updated = ObjectEvent {
            key: &ns.key,
            old: Some(&ns),
            new: Some(&ns),
        };
        assert!(map_namespace(&updated, &c).is_empty());
    }
}
