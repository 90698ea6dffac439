//! The controllers' in-memory cache of the store (an informer's store).
//!
//! One cache serves every controller of a [`Manager`](super::Manager) term. It is fed by one
//! list of `/` and one watch of `/` from the list's revision (see `runner.rs`), and keeps
//! the objects under the prefixes the controllers asked for. Why one watch of everything
//! rather than one per prefix: the cache then always equals the store at one revision (a
//! Namespace and the objects a commit put in it appear together; an owner never lags its
//! dependents), and every revision that wrote anything is observed, so a controller can wait
//! until the cache holds its own write ([`Cache::wait_for`]) before the next reconcile reads
//! it. Kubernetes controllers need "expectations" to avoid acting twice on a lagging
//! informer; waiting for one's own revision gives the same guarantee more simply.
//!
//! Besides objects by key, the cache indexes dependents by owner uid, which is what the
//! garbage collector follows from a deleted owner to its dependents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use coxswain_schema::meta::OwnerReference;
use coxswain_store::{EventKind, KeyValue, Revision, WatchBatch};
use serde_json::Value;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// One change of a cached object, as handed to the controllers' mappers. On a resync both
/// sides are the current object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectEvent<'a> {
    pub key: &'a str,
    /// The object before the change; `None` for a create.
    pub old: Option<&'a KeyValue>,
    /// The object after the change; `None` for a delete.
    pub new: Option<&'a KeyValue>,
}

impl ObjectEvent<'_> {
    /// The object after the change, or before it for a delete.
    pub fn object(&self) -> Option<&KeyValue> {
        self.new.or(self.old)
    }
}

/// A change applied to the cache, owned (what the informer dispatches).
#[derive(Debug, Clone)]
pub struct Change {
    pub key: String,
    pub old: Option<Arc<KeyValue>>,
    pub new: Option<Arc<KeyValue>>,
}

impl Change {
    pub fn event(&self) -> ObjectEvent<'_> {
        ObjectEvent {
            key: &self.key,
            old: self.old.as_deref(),
            new: self.new.as_deref(),
        }
    }
}

/// The parts of a store key `/{group}/{kind}/{namespace}/{name}` (or `/{group}/{kind}/{name}`
/// for a cluster-scoped kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyParts<'a> {
    /// As in the key: `core` for the core group.
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

/// Splits a store key; `None` for a key of another shape.
pub fn parse_key(key: &str) -> Option<KeyParts<'_>> {
    let mut parts = key.strip_prefix('/')?.split('/');
    let group = parts.next()?;
    let kind = parts.next()?;
    let third = parts.next()?;
    match (parts.next(), parts.next()) {
        (None, _) => Some(KeyParts {
            group,
            kind,
            namespace: None,
            name: third,
        }),
        (Some(name), None) => Some(KeyParts {
            group,
            kind,
            namespace: Some(third),
            name,
        }),
        _ => None,
    }
}

/// The store key an owner reference points at from a dependent in `namespace` (owners of
/// namespaced dependents live in the same namespace, as in Kubernetes). `None` for a kind
/// coxswain does not know, whose key it cannot form.
pub fn owner_key(owner: &OwnerReference, namespace: Option<&str>) -> Option<String> {
    let info = coxswain_schema::object::lookup(&owner.api_version, &owner.kind)?;
    let namespace = if info.namespaced { namespace } else { None };
    if info.namespaced && namespace.is_none() {
        return None;
    }
    Some(coxswain_store::object_key(
        info.group,
        info.kind,
        namespace,
        &owner.name,
    ))
}

/// `metadata.uid` of a stored object.
pub fn uid(value: &Value) -> Option<&str> {
    value.pointer("/metadata/uid").and_then(Value::as_str)
}

/// `metadata.ownerReferences` of a stored object; entries that do not read as owner
/// references are skipped.
pub fn owner_references(value: &Value) -> Vec<OwnerReference> {
    value
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| serde_json::from_value(r.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The owner reference with `controller: true`, as Kubernetes' `GetControllerOf`.
pub fn controller_of(value: &Value) -> Option<OwnerReference> {
    owner_references(value)
        .into_iter()
        .find(|r| r.controller == Some(true))
}

#[derive(Debug, Default)]
struct Data {
    objects: BTreeMap<String, Arc<KeyValue>>,
    /// Owner uid → keys of the objects that reference it.
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Data {
    fn index(&mut self, kv: &KeyValue) {
        for r in owner_references(&kv.value) {
            self.dependents
                .entry(r.uid)
                .or_default()
                .insert(kv.key.clone());
        }
    }

    fn unindex(&mut self, kv: &KeyValue) {
        for r in owner_references(&kv.value) {
            if let Some(set) = self.dependents.get_mut(&r.uid) {
                set.remove(&kv.key);
                if set.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
        }
    }

    fn put(&mut self, kv: KeyValue) -> Change {
        let new = Arc::new(kv);
        let old = self.objects.insert(new.key.clone(), new.clone());
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&new);
        Change {
            key: new.key.clone(),
            old,
            new: Some(new),
        }
    }

    fn remove(&mut self, key: &str) -> Option<Change> {
        let old = self.objects.remove(key)?;
        self.unindex(&old);
        Some(Change {
            key: key.to_string(),
            old: Some(old),
            new: None,
        })
    }
}

struct Inner {
    prefixes: Vec<String>,
    data: RwLock<Data>,
    revision: watch::Sender<Revision>,
}

/// The shared cache; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("prefixes", &self.inner.prefixes)
            .field("revision", &self.revision())
            .field("objects", &self.len())
            .finish()
    }
}

impl Cache {
    /// An empty cache of the keys under `prefixes` (duplicates and prefixes covered by a
    /// shorter one are dropped).
    pub fn new(prefixes: impl IntoIterator<Item = String>) -> Cache {
        let mut all: Vec<String> = prefixes.into_iter().collect();
        all.sort();
        all.dedup();
        let mut kept: Vec<String> = Vec::new();
        for p in all {
            // Sorted, so a covering prefix comes before everything it covers.
            if !kept.iter().any(|k| p.starts_with(k.as_str())) {
                kept.push(p);
            }
        }
        let (revision, _) = watch::channel(0);
        Cache {
            inner: Arc::new(Inner {
                prefixes: kept,
                data: RwLock::default(),
                revision,
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Data> {
        // Only map and set operations run under the lock, none of which panics; a poisoned
        // lock still guards consistent data.
        self.inner
            .data
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Data> {
        self.inner
            .data
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The prefixes this cache holds.
    pub fn prefixes(&self) -> &[String] {
        &self.inner.prefixes
    }

    /// Whether `key` is under one of the cached prefixes.
    pub fn covers(&self, key: &str) -> bool {
        self.inner.prefixes.iter().any(|p| key.starts_with(p))
    }

    pub fn get(&self, key: &str) -> Option<Arc<KeyValue>> {
        self.read().objects.get(key).cloned()
    }

    /// Every cached object under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<Arc<KeyValue>> {
        self.read()
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Keys of the cached objects whose `ownerReferences` name `owner_uid`.
    pub fn dependents(&self, owner_uid: &str) -> Vec<String> {
        self.read()
            .dependents
            .get(owner_uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> Revision {
        *self.inner.revision.borrow()
    }

    /// Waits until the cache reflects `revision`. Only a revision that wrote something is
    /// certain to be observed (a failed compare writes nothing), so callers pass the revision
    /// of their own successful writes.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> Result<()> {
        let mut rx = self.inner.revision.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            // The sender lives in `self`, so the channel cannot close while we hold it; a
            // timeout is the only real failure.
            _ => Err(Error::CacheLag {
                revision,
                seen: self.revision(),
                waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Applies one watch batch; returns the changes to cached keys. A batch at or below the
    /// cache's revision was already applied and is ignored.
    pub fn apply(&self, batch: &WatchBatch) -> Vec<Change> {
        if batch.revision <= self.revision() {
            return Vec::new();
        }
        let mut changes = Vec::new();
        {
            let mut data = self.write();
            for e in &batch.events {
                if !self.covers(&e.kv.key) {
                    continue;
                }
                match e.kind {
                    EventKind::Put => changes.push(data.put(e.kv.clone())),
                    EventKind::Delete => changes.extend(data.remove(&e.kv.key)),
                }
            }
        }
        // Published after the data, so a waiter woken by it reads the batch's objects.
        self.inner.revision.send_replace(batch.revision);
        changes
    }

    /// Replaces the content with a full list read at `revision` (the first sync, or a relist
    /// after the watch broke); returns what differs from before, so the controllers hear
    /// about changes the broken watch missed.
    pub fn replace(&self, items: Vec<KeyValue>, revision: Revision) -> Vec<Change> {
        let mut changes = Vec::new();
        {
            let mut data = self.write();
            let mut seen = BTreeSet::new();
            for kv in items {
                if !self.covers(&kv.key) {
                    continue;
                }
                seen.insert(kv.key.clone());
                let same = data
                    .objects
                    .get(&kv.key)
                    .is_some_and(|old| old.mod_revision == kv.mod_revision);
                if !same {
                    changes.push(data.put(kv));
                }
            }
            let gone: Vec<String> = data
                .objects
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                changes.extend(data.remove(&key));
            }
        }
        self.inner.revision.send_replace(revision);
        changes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use coxswain_store::Event;
    use serde_json::json;

    use super::*;

    fn kv(key: &str, rev: Revision, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn pod(name: &str, owner_uid: Option<&str>) -> Value {
        let mut v = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "uid": format!("u-{name}")}});
        if let Some(o) = owner_uid {
            v["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": o, "controller": true
            }]);
        }
        v
    }

    fn put(rev: Revision, kv: KeyValue) -> WatchBatch {
        WatchBatch {
            revision: rev,
            events: vec![Event {
                kind: EventKind::Put,
                kv,
                prev: None,
            }],
        }
    }

    fn delete(rev: Revision, key: &str) -> WatchBatch {
        WatchBatch {
            revision: rev,
            events: vec![Event {
                kind: EventKind::Delete,
                kv: kv(key, rev, Value::Null),
                prev: None,
            }],
        }
    }

    #[test]
    fn keys_parse_into_group_kind_namespace_name() {
        assert_eq!(
            parse_key("/apps/ReplicaSet/default/web"),
            Some(KeyParts {
                group: "apps",
                kind: "ReplicaSet",
                namespace: Some("default"),
                name: "web"
            })
        );
        assert_eq!(
            parse_key("/core/Namespace/team").map(|p| (p.namespace, p.name)),
            Some((None, "team"))
        );
        assert_eq!(parse_key("/core/Pod"), None);
        assert_eq!(parse_key("/a/b/c/d/e"), None);
        assert_eq!(parse_key("core/Pod/a/b"), None);
    }

    #[test]
    fn owner_keys_follow_the_owner_kind_scope() {
        let rs = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "u".into(),
            ..OwnerReference::default()
        };
        assert_eq!(
            owner_key(&rs, Some("team")).as_deref(),
            Some("/apps/ReplicaSet/team/web")
        );
        let node = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            ..rs.clone()
        };
        assert_eq!(
            owner_key(&node, Some("team")).as_deref(),
            Some("/core/Node/web")
        );
        let unknown = OwnerReference {
            kind: "Widget".into(),
            ..rs
        };
        assert_eq!(owner_key(&unknown, Some("team")), None);
    }

    #[test]
    fn prefixes_are_deduplicated_and_covered_ones_dropped() {
        let c = Cache::new(
            ["/core/Pod/", "/core/", "/apps/ReplicaSet/", "/core/Pod/"].map(String::from),
        );
        assert_eq!(c.prefixes(), ["/apps/ReplicaSet/", "/core/"]);
        assert!(c.covers("/core/Pod/default/x"));
        assert!(!c.covers("/coxswain.dev/SyncRecord/x"));
    }

    #[test]
    fn batches_update_objects_the_owner_index_and_the_revision() {
        let c = Cache::new(["/core/Pod/".to_string()]);
        let ch = c.apply(&put(5, kv("/core/Pod/ns/a", 5, pod("a", Some("rs1")))));
        assert_eq!(ch.len(), 1);
        assert!(ch[0].old.is_none() && ch[0].new.is_some());
        assert_eq!(c.revision(), 5);
        assert_eq!(c.dependents("rs1"), ["/core/Pod/ns/a"]);

        // Re-owned: the index follows.
        let ch = c.apply(&put(6, kv("/core/Pod/ns/a", 6, pod("a", Some("rs2")))));
        assert_eq!(ch[0].old.as_ref().unwrap().mod_revision, 5);
        assert!(c.dependents("rs1").is_empty());
        assert_eq!(c.dependents("rs2"), ["/core/Pod/ns/a"]);

        // Keys outside the prefixes are not kept, but the revision still moves.
        assert!(
            c.apply(&put(7, kv("/coxswain.dev/SyncRecord/x", 7, json!({}))))
                .is_empty()
        );
        assert_eq!(c.revision(), 7);
        assert!(c.get("/coxswain.dev/SyncRecord/x").is_none());

        // An old batch is ignored.
        assert!(c.apply(&delete(6, "/core/Pod/ns/a")).is_empty());
        assert!(c.get("/core/Pod/ns/a").is_some());

        let ch = c.apply(&delete(8, "/core/Pod/ns/a"));
        assert!(ch[0].new.is_none());
        assert!(c.get("/core/Pod/ns/a").is_none());
        assert!(c.dependents("rs2").is_empty());
    }

    #[test]
    fn list_returns_only_keys_under_the_prefix() {
        let c = Cache::new(["/core/Pod/".to_string()]);
        for (i, key) in [
            "/core/Pod/a/x",
            "/core/Pod/ab/y",
            "/core/Pod/a/z",
            "/core/Pod/b/w",
        ]
        .iter()
        .enumerate()
        {
            c.apply(&put(i as u64 + 1, kv(key, i as u64 + 1, pod("p", None))));
        }
        let keys: Vec<_> = c
            .list("/core/Pod/a/")
            .iter()
            .map(|kv| kv.key.clone())
            .collect();
        assert_eq!(keys, ["/core/Pod/a/x", "/core/Pod/a/z"]);
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn a_relist_reports_exactly_what_the_watch_missed() {
        let c = Cache::new(["/core/Pod/".to_string()]);
        c.apply(&put(1, kv("/core/Pod/ns/keep", 1, pod("keep", None))));
        c.apply(&put(2, kv("/core/Pod/ns/change", 2, pod("change", None))));
        c.apply(&put(3, kv("/core/Pod/ns/gone", 3, pod("gone", Some("o")))));
        let ch = c.replace(
            vec![
                kv("/core/Pod/ns/keep", 1, pod("keep", None)),
                kv("/core/Pod/ns/change", 9, pod("change", None)),
                kv("/core/Pod/ns/new", 8, pod("new", None)),
                kv("/apps/ReplicaSet/ns/rs", 8, json!({})),
            ],
            10,
        );
        let mut summary: Vec<_> = ch
            .iter()
            .map(|c| (c.key.as_str(), c.old.is_some(), c.new.is_some()))
            .collect();
        summary.sort();
        assert_eq!(
            summary,
            [
                ("/core/Pod/ns/change", true, true),
                ("/core/Pod/ns/gone", true, false),
                ("/core/Pod/ns/new", false, true),
            ]
        );
        assert_eq!(c.revision(), 10);
        assert!(c.dependents("o").is_empty());
        assert_eq!(c.len(), 3);
    }

    #[tokio::test]
    async fn wait_for_returns_once_the_revision_is_applied_and_times_out_otherwise() {
        let c = Cache::new(["/core/Pod/".to_string()]);
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.wait_for(4, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        c.apply(&put(4, kv("/core/Pod/ns/a", 4, pod("a", None))));
        waiter.await.unwrap().unwrap();
        let err = c.wait_for(99, Duration::from_millis(20)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::CacheLag {
                    revision: 99,
                    seen: 4,
                    ..
                }
            ),
            "{err}"
        );
    }
}
