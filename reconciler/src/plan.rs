//! The sync planner: what one commit changes in the store.
//!
//! [`plan`] sets the desired objects of a commit ([`desired_from_report`]) against the
//! Git-owned objects currently stored, and answers with creates, updates and deletes in key
//! order, so a plan, its rendering and the note written for it are the same every time. The
//! same module says what is written for each of them ([`stored_for_create`],
//! [`stored_for_update`]), because "what counts as a change" and "what we write" must agree:
//! applying a plan and planning the same commit again gives an empty plan.
//!
//! Ownership follows Kubernetes: Git owns everything it can write; the system owns `status`
//! and the metadata the API server or controllers set ([`SYSTEM_METADATA`]). Only a change in
//! Git's part is an update. Objects written by coxswain carry the label
//! `app.kubernetes.io/managed-by: coxswain` and the annotation `coxswain.dev/source-file`, the
//! way Helm and Flux mark theirs; both are part of what Git owns, so they are compared like
//! any other field (moving an object to another file is an update of that annotation).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use coxswain_schema::{Object, Report};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Annotation naming the file (relative to the repository root) an object came from.
pub const SOURCE_FILE_ANNOTATION: &str = "coxswain.dev/source-file";
/// The recommended Kubernetes label for "which tool manages this object".
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on every object Git applied.
pub const MANAGED_BY: &str = "coxswain";

/// Metadata fields the system sets, never Git: they are not compared by [`plan`] and survive a
/// Git update ([`stored_for_update`]). This is the set `kubectl apply` and server-side apply
/// leave to the API server: `uid`, `resourceVersion`, `generation`, `creationTimestamp`,
/// `deletionTimestamp`, `deletionGracePeriodSeconds`, `managedFields`, `selfLink`; plus
/// `ownerReferences`, which only controllers write here (validation refuses them in Git).
/// `finalizers`, `labels` and `annotations` are Git's: a manifest may set them.
pub const SYSTEM_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "ownerReferences",
    "selfLink",
];

/// One object as a commit wants it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Desired {
    /// The store key, from [`coxswain_store::object_key`].
    pub key: String,
    /// The manifest file it came from, relative to the repository root.
    pub file: String,
    /// The object as JSON, as Git wrote it, with `metadata.namespace` filled in (`default`)
    /// for namespaced kinds that left it out. No ownership marks yet.
    pub value: Value,
    /// Its kind, namespace (`None` for cluster-scoped kinds) and name, kept apart from
    /// `value` for the note's object list, which every applied commit lists in full.
    /// Not serialized: `value` says the same.
    #[serde(skip)]
    pub kind: String,
    #[serde(skip)]
    pub namespace: Option<String>,
    #[serde(skip)]
    pub name: String,
}

impl Desired {
    /// The desired form of one validated object.
    pub fn from_object(file: &str, object: &Object) -> Result<Desired> {
        let info = object.info();
        let meta = object.meta();
        let namespace = info
            .namespaced
            .then(|| meta.namespace.as_deref().unwrap_or("default"));
        let key = coxswain_store::object_key(info.group, info.kind, namespace, &meta.name);
        let mut value = object.to_value().map_err(|e| {
            Error::Schema(coxswain_schema::Error::Tree {
                path: file.to_string(),
                reason: format!("cannot encode {key} as JSON: {e}"),
            })
        })?;
        if let (Some(ns), Some(meta)) = (namespace, metadata_mut(&mut value)) {
            // Stored objects always say where they live, as the Kubernetes API server does.
            meta.insert("namespace".into(), Value::String(ns.to_string()));
        }
        Ok(Desired {
            key,
            file: file.to_string(),
            value,
            kind: info.kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: meta.name.clone(),
        })
    }
}

/// The desired set of a validated commit, sorted by key. Two documents with one key are an
/// error (validation already refuses them, so this only guards callers that skip it).
pub fn desired_from_report(report: &Report) -> Result<Vec<Desired>> {
    let all = report
        .objects()
        .map(|(file, object)| Desired::from_object(file, object))
        .collect::<Result<Vec<_>>>()?;
    sorted_by_key(all)
}

/// Sorts desired objects by key, refusing a key that two of them define; of two, the error
/// names the one that came first as the earlier definition.
pub fn sorted_by_key<D: Borrow<Desired>>(mut desired: Vec<D>) -> Result<Vec<D>> {
    // Stable, so that of two objects with one key the first in tree order stays first.
    desired.sort_by(|a, b| a.borrow().key.cmp(&b.borrow().key));
    if let Some(pair) = desired
        .windows(2)
        .find(|w| w[0].borrow().key == w[1].borrow().key)
    {
        let (first, second) = (pair[0].borrow(), pair[1].borrow());
        return Err(Error::Schema(coxswain_schema::Error::Tree {
            path: second.file.clone(),
            reason: format!("{} is already defined in {}", second.key, first.file),
        }));
    }
    Ok(desired)
}

/// What [`sorted_by_key`] would return for a desired set that is mostly an earlier one:
/// `kept`, already in key order (the part of an earlier result that is unchanged), and
/// `fresh`, the rest in tree order. One merge pass instead of a sort of everything, which a
/// one-file commit of a large repository would otherwise pay for in full. `None` when a key
/// repeats: the caller sorts the whole set then, for [`sorted_by_key`]'s error, which names
/// the two files in tree order.
pub fn merge_sorted<D: Borrow<Desired>>(kept: Vec<D>, mut fresh: Vec<D>) -> Option<Vec<D>> {
    fresh.sort_by(|a, b| a.borrow().key.cmp(&b.borrow().key));
    let mut out: Vec<D> = Vec::with_capacity(kept.len() + fresh.len());
    let mut kept = kept.into_iter().peekable();
    // `kept` holds each key once (it is part of an earlier checked result), so a key can only
    // repeat next to a fresh object: only those neighbours are compared.
    let repeats = |out: &[D], d: &D| out.last().is_some_and(|l| l.borrow().key == d.borrow().key);
    for d in fresh {
        let mut first = true;
        while let Some(k) = kept.next_if(|k| k.borrow().key < d.borrow().key) {
            if first && repeats(&out, &k) {
                return None;
            }
            first = false;
            out.push(k);
        }
        if repeats(&out, &d) {
            return None;
        }
        out.push(d);
    }
    if let Some(k) = kept.peek()
        && repeats(&out, k)
    {
        return None;
    }
    out.extend(kept);
    Some(out)
}

/// One field that differs, addressed by a JSON pointer (RFC 6901) into the object.
/// `before: None` is an added field, `after: None` a removed one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub pointer: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl FieldChange {
    /// `+` added, `-` removed, `~` changed: the marks of [`Plan::render`].
    pub fn mark(&self) -> char {
        match (&self.before, &self.after) {
            (None, _) => '+',
            (_, None) => '-',
            _ => '~',
        }
    }
}

/// An object Git adds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Create {
    pub key: String,
    pub file: String,
    /// [`Desired::value`].
    pub after: Value,
}

/// An object whose Git-owned part changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Update {
    pub key: String,
    pub file: String,
    /// The object as stored (with status and system metadata; its `resourceVersion` is what
    /// the apply compares-and-swaps on).
    pub before: Value,
    /// [`Desired::value`].
    pub after: Value,
    /// What differs in the Git-owned part, in pointer order. Never empty.
    pub changes: Vec<FieldChange>,
    /// Something outside `metadata` and `status` changed, so `generation` goes up.
    pub spec_changed: bool,
}

/// A Git-owned object no longer in Git.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delete {
    pub key: String,
    /// The object as stored.
    pub before: Value,
}

impl Create {
    /// What to write for this create; see [`stored_for_create`].
    pub fn stored(&self, now_rfc3339: &str, uid: &str) -> Value {
        create_value(&self.file, &self.after, now_rfc3339, uid)
    }
}

impl Update {
    /// What to write for this update; see [`stored_for_update`].
    pub fn stored(&self) -> Value {
        update_value(&self.file, &self.after, &self.before)
    }
}

/// Everything one commit changes, each list sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub creates: Vec<Create>,
    pub updates: Vec<Update>,
    pub deletes: Vec<Delete>,
    /// Desired objects already stored as Git wants them.
    pub unchanged: usize,
}

/// Plans a commit: `desired` (keys unique; a repeated key keeps its first entry) against
/// `owned`, the Git-owned objects in the store by key, as stored.
pub fn plan(desired: &[Desired], owned: &BTreeMap<String, Value>) -> Plan {
    plan_settled(desired, owned, |_| false)
}

/// [`plan`] for a sync that knows part of the desired set is already in the store as it is:
/// an object for which `settled` is true and that `owned` holds is counted unchanged without
/// comparing it. The sync passes the objects of files whose blob is the one it last applied,
/// while its inventory is the one that apply left, which is what makes a one-file commit cost
/// one file rather than the whole repository.
pub fn plan_settled<D: Borrow<Desired>>(
    desired: &[D],
    owned: &BTreeMap<String, Value>,
    settled: impl Fn(&Desired) -> bool,
) -> Plan {
    let _span =
        tracing::debug_span!("plan", desired = desired.len(), owned = owned.len()).entered();
    // One object per key, in key order: the first of a key wins (the sort is stable). The
    // sync passes its set sorted with each key once (`sorted_by_key`, `merge_sorted`): one
    // pass proves that, where a sort and a dedup would each compare every neighbouring pair.
    let mut wanted: Vec<&Desired> = desired.iter().map(Borrow::borrow).collect();
    if !wanted.is_sorted_by(|a, b| a.key < b.key) {
        wanted.sort_by(|a, b| a.key.cmp(&b.key));
        wanted.dedup_by(|later, kept| later.key == kept.key);
    }
    let mut out = Plan::default();
    // Both sides are in key order, so one merge pass pairs them without a lookup per
    // object; stored keys passed over are the deletes, in key order.
    let mut stored_objects = owned.iter().peekable();
    for d in wanted {
        let key = d.key.as_str();
        while let Some((gone, stored)) = stored_objects.next_if(|(k, _)| k.as_str() < key) {
            out.deletes.push(Delete {
                key: gone.clone(),
                before: stored.clone(),
            });
        }
        let Some((_, stored)) = stored_objects.next_if(|(k, _)| k.as_str() == key) else {
            out.creates.push(Create {
                key: d.key.clone(),
                file: d.file.clone(),
                after: d.value.clone(),
            });
            continue;
        };
        if settled(d) {
            out.unchanged += 1;
            continue;
        }
        let after = desired_view(&d.file, &d.value);
        let changes = diff(&git_owned_view(stored), &after);
        if changes.is_empty() {
            out.unchanged += 1;
        } else {
            out.updates.push(Update {
                key: d.key.clone(),
                file: d.file.clone(),
                before: stored.clone(),
                after: d.value.clone(),
                changes,
                spec_changed: spec_changed(stored, &after),
            });
        }
    }
    for (gone, stored) in stored_objects {
        out.deletes.push(Delete {
            key: gone.clone(),
            before: stored.clone(),
        });
    }
    tracing::debug!(
        creates = out.creates.len(),
        updates = out.updates.len(),
        deletes = out.deletes.len(),
        unchanged = out.unchanged,
        "planned"
    );
    out
}

impl Plan {
    /// True when the commit changes nothing in the store.
    pub fn is_empty(&self) -> bool {
        self.creates.is_empty() && self.updates.is_empty() && self.deletes.is_empty()
    }

    /// `Plan: 1 to create, 2 to update, 0 to delete, 5 unchanged.`
    pub fn summary(&self) -> String {
        format!(
            "Plan: {} to create, {} to update, {} to delete, {} unchanged.",
            self.creates.len(),
            self.updates.len(),
            self.deletes.len(),
            self.unchanged
        )
    }

    /// Plain text in the manner of `kubectl diff` / `flux diff`: one block per object,
    /// headed `+ key (file)` for a create, `~ key (file)` for an update and `- key` for a
    /// delete, then one indented line per field (`+`, `-`, or `~ before => after`), values
    /// as compact JSON, then [`Plan::summary`]. Creates and deletes list every leaf of the
    /// Git-owned part (status and system metadata are not Git's, so they are not shown).
    /// `color` wraps lines in ANSI colours (green, red, yellow).
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for c in &self.creates {
            line(&mut out, color, '+', 0, &format!("{} ({})", c.key, c.file));
            for (ptr, v) in leaves(&desired_view(&c.file, &c.after)) {
                line(&mut out, color, '+', 1, &format!("{ptr}: {v}"));
            }
        }
        for u in &self.updates {
            line(&mut out, color, '~', 0, &format!("{} ({})", u.key, u.file));
            for ch in &u.changes {
                let text = match (&ch.before, &ch.after) {
                    (Some(b), Some(a)) => format!("{}: {b} => {a}", ch.pointer),
                    (Some(v), None) | (None, Some(v)) => format!("{}: {v}", ch.pointer),
                    (None, None) => ch.pointer.clone(),
                };
                line(&mut out, color, ch.mark(), 1, &text);
            }
        }
        for d in &self.deletes {
            line(&mut out, color, '-', 0, &d.key);
            for (ptr, v) in leaves(&git_owned_view(&d.before)) {
                line(&mut out, color, '-', 1, &format!("{ptr}: {v}"));
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

fn line(out: &mut String, color: bool, mark: char, indent: usize, text: &str) {
    let pad = "    ".repeat(indent);
    let code = match mark {
        '+' => "32",
        '-' => "31",
        _ => "33",
    };
    if color {
        out.push_str(&format!("\x1b[{code}m{pad}{mark} {text}\x1b[0m\n"));
    } else {
        out.push_str(&format!("{pad}{mark} {text}\n"));
    }
}

/// Every leaf of a value with its pointer; objects are descended, arrays and empty objects
/// are leaves (shown whole), in key order.
fn leaves(value: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(ptr: &mut String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                let keys: BTreeSet<&String> = map.keys().collect();
                for k in keys {
                    if let Some(child) = map.get(k) {
                        let len = ptr.len();
                        push_token(ptr, k);
                        walk(ptr, child, out);
                        ptr.truncate(len);
                    }
                }
            }
            _ => out.push((ptr.clone(), v)),
        }
    }
    let mut out = Vec::new();
    walk(&mut String::new(), value, &mut out);
    out
}

/// The field-level difference of two values, in pointer order. Objects are compared key by
/// key whatever their key order. Arrays of equal length are compared element by element
/// (so a container's image bump is `/spec/template/spec/containers/0/image`); arrays whose
/// length differs are one change of the whole array, because matching elements after an
/// insert would need per-field merge keys, which Kubernetes keeps in its Go types.
pub fn diff(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    diff_at(&mut String::new(), before, after, &mut out);
    out
}

fn diff_at(ptr: &mut String, before: &Value, after: &Value, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                let len = ptr.len();
                push_token(ptr, k);
                match (b.get(k), a.get(k)) {
                    (Some(x), Some(y)) => diff_at(ptr, x, y, out),
                    (x, y) => out.push(FieldChange {
                        pointer: ptr.clone(),
                        before: x.cloned(),
                        after: y.cloned(),
                    }),
                }
                ptr.truncate(len);
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (x, y)) in b.iter().zip(a).enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&i.to_string());
                diff_at(ptr, x, y, out);
                ptr.truncate(len);
            }
        }
        _ if before == after => {}
        _ => out.push(FieldChange {
            pointer: ptr.clone(),
            before: Some(before.clone()),
            after: Some(after.clone()),
        }),
    }
}

/// Appends one RFC 6901 reference token (`~` → `~0`, `/` → `~1`, so annotation keys such as
/// `coxswain.dev/source-file` stay one token).
fn push_token(ptr: &mut String, token: &str) {
    ptr.push('/');
    for c in token.chars() {
        match c {
            '~' => ptr.push_str("~0"),
            '/' => ptr.push_str("~1"),
            c => ptr.push(c),
        }
    }
}

/// The part of an object Git owns: without `status` and [`SYSTEM_METADATA`], and without
/// `null` members (Kubernetes treats an explicit null like an absent field).
pub fn git_owned_view(value: &Value) -> Value {
    let mut v = value.clone();
    if let Value::Object(map) = &mut v {
        map.shift_remove("status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            for field in SYSTEM_METADATA {
                meta.shift_remove(*field);
            }
        }
    }
    drop_nulls(&mut v);
    v
}

/// True when the stored object carries coxswain's ownership label, i.e. Git applied it.
pub fn is_git_owned(stored: &Value) -> bool {
    stored
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .and_then(Value::as_str)
        == Some(MANAGED_BY)
}

/// What Git wants stored, in the form [`plan`] compares: the Git-owned part plus the marks.
fn desired_view(file: &str, value: &Value) -> Value {
    let mut v = git_owned_view(value);
    add_marks(&mut v, file);
    v
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, child| !child.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `metadata` as a map, made if missing; `None` only when the value is not an object.
fn metadata_mut(v: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = v.as_object_mut()?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

/// Sets `metadata.<field>.<key> = value`, making the map if needed.
fn set_in(meta: &mut Map<String, Value>, field: &str, key: &str, value: &str) {
    let entry = meta
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Some(m) = entry.as_object_mut() {
        m.insert(key.to_string(), Value::String(value.to_string()));
    }
}

/// Marks Git ownership. A manifest's own `app.kubernetes.io/managed-by` is overwritten, as
/// Helm does with its own: the label is how coxswain finds the objects it may prune.
fn add_marks(v: &mut Value, file: &str) {
    if let Some(meta) = metadata_mut(v) {
        set_in(meta, "labels", MANAGED_BY_LABEL, MANAGED_BY);
        set_in(meta, "annotations", SOURCE_FILE_ANNOTATION, file);
    }
}

/// Whether anything outside `metadata` and `status` differs. Kubernetes bumps
/// `metadata.generation` on exactly these changes (the rule for custom resources; the
/// built-in workloads use their `spec`, which is the same thing for them).
fn spec_changed(stored: &Value, desired: &Value) -> bool {
    fn body(v: &Value) -> Value {
        let mut v = v.clone();
        if let Value::Object(map) = &mut v {
            map.shift_remove("metadata");
            map.shift_remove("status");
        }
        drop_nulls(&mut v);
        v
    }
    !diff(&body(stored), &body(desired)).is_empty()
}

/// The object to write for a create: the Git-owned part of `desired` plus the ownership
/// marks, `metadata.uid`, `metadata.creationTimestamp` and `metadata.generation = 1`. No
/// `resourceVersion` and no `status`: the store sets the one, controllers the other.
pub fn stored_for_create(desired: &Desired, now_rfc3339: &str, uid: &str) -> Value {
    create_value(&desired.file, &desired.value, now_rfc3339, uid)
}

fn create_value(file: &str, value: &Value, now_rfc3339: &str, uid: &str) -> Value {
    let mut v = desired_view(file, value);
    if let Some(meta) = metadata_mut(&mut v) {
        meta.insert("uid".into(), Value::String(uid.to_string()));
        meta.insert(
            "creationTimestamp".into(),
            Value::String(now_rfc3339.to_string()),
        );
        meta.insert("generation".into(), Value::from(1));
    }
    v
}

/// The object to write for an update of `stored`: the Git-owned part of `desired` plus the
/// ownership marks, keeping the stored `status` and every [`SYSTEM_METADATA`] field but
/// `resourceVersion` (the store sets it) and `generation`, which is the stored one (at least
/// 1), plus one when anything outside `metadata` and `status` changed, as Kubernetes does.
pub fn stored_for_update(desired: &Desired, stored: &Value) -> Value {
    update_value(&desired.file, &desired.value, stored)
}

fn update_value(file: &str, value: &Value, stored: &Value) -> Value {
    let mut v = desired_view(file, value);
    let bump = spec_changed(stored, &v);
    let stored_meta = stored.get("metadata").and_then(Value::as_object);
    if let Some(meta) = metadata_mut(&mut v) {
        for field in SYSTEM_METADATA {
            if matches!(*field, "resourceVersion" | "generation") {
                continue;
            }
            if let Some(x) = stored_meta.and_then(|m| m.get(*field)) {
                meta.insert((*field).to_string(), x.clone());
            }
        }
        let generation = stored_meta
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .filter(|g| *g >= 1)
            .unwrap_or(1);
        let generation = if bump {
            generation.saturating_add(1)
        } else {
            generation
        };
        meta.insert("generation".into(), Value::from(generation));
    }
    if let (Some(status), Some(map)) = (stored.get("status"), v.as_object_mut()) {
        map.insert("status".into(), status.clone());
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2024-05-01T12:00:00Z";

    fn cm(name: &str, data: Value) -> Desired {
        Desired {
            key: coxswain_store::object_key("", "ConfigMap", Some("default"), name),
            file: "cm.yaml".into(),
            value: json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "data": data,
            }),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    fn deploy() -> Desired {
        Desired {
            key: coxswain_store::object_key("apps", "Deployment", Some("web"), "api"),
            file: "apps/api.yaml".into(),
            value: json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "api", "namespace": "web", "labels": {"app": "api"}},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "api"}},
                    "template": {
                        "metadata": {"labels": {"app": "api"}},
                        "spec": {"containers": [{"name": "api", "image": "api:1"}]},
                    },
                },
            }),
            kind: "Deployment".into(),
            namespace: Some("web".into()),
            name: "api".into(),
        }
    }

    /// Applies a plan as the sync will (with a store that sets `resourceVersion`), and returns
    /// what the store holds afterwards.
    fn apply(
        plan: &Plan,
        owned: &BTreeMap<String, Value>,
        rv: &mut u64,
    ) -> BTreeMap<String, Value> {
        let mut out = owned.clone();
        for c in &plan.creates {
            *rv += 1;
            let mut v = c.stored(NOW, &format!("uid-{rv}"));
            v["metadata"]["resourceVersion"] = json!(rv.to_string());
            out.insert(c.key.clone(), v);
        }
        for u in &plan.updates {
            *rv += 1;
            let mut v = u.stored();
            v["metadata"]["resourceVersion"] = json!(rv.to_string());
            out.insert(u.key.clone(), v);
        }
        for d in &plan.deletes {
            out.remove(&d.key);
        }
        out
    }

    /// The store after a first sync of `desired`.
    fn synced(desired: &[Desired]) -> BTreeMap<String, Value> {
        apply(&plan(desired, &BTreeMap::new()), &BTreeMap::new(), &mut 0)
    }

    /// The same JSON with every object's keys in reverse insertion order.
    fn reversed(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .rev()
                    .map(|(k, v)| (k.clone(), reversed(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
            v => v.clone(),
        }
    }

    fn pointers(changes: &[FieldChange]) -> Vec<&str> {
        changes.iter().map(|c| c.pointer.as_str()).collect()
    }

    /// What a plan says, as (kind of change, key) in its order.
    fn outline(p: &Plan) -> Vec<(&'static str, String)> {
        let creates = p.creates.iter().map(|c| ("create", c.key.clone()));
        let updates = p.updates.iter().map(|u| ("update", u.key.clone()));
        let deletes = p.deletes.iter().map(|d| ("delete", d.key.clone()));
        creates.chain(updates).chain(deletes).collect()
    }

    #[test]
    fn sorted_and_unsorted_desired_sets_plan_alike_with_creates_and_deletes_interleaved() {
        // Stored: b, d, f (and the deployment); desired: a (new), b (changed), c (new),
        // f (same), the deployment (same); d is gone. Keys interleave on both sides.
        let stored = synced(&[
            cm("b", json!({"k": "1"})),
            cm("d", json!({"k": "1"})),
            cm("f", json!({"k": "1"})),
            deploy(),
        ]);
        let desired = vec![
            cm("f", json!({"k": "1"})),
            deploy(),
            cm("c", json!({"k": "1"})),
            cm("b", json!({"k": "2"})),
            cm("a", json!({"k": "1"})),
            // A second object with an existing key: the first one in the slice wins.
            cm("a", json!({"k": "ignored"})),
        ];
        let unsorted = plan(&desired, &stored);
        let mut sorted: Vec<Desired> = desired.clone();
        sorted.truncate(5);
        let sorted = sorted_by_key(sorted).unwrap();
        let merged = plan(&sorted, &stored);

        let key = |n: &str| coxswain_store::object_key("", "ConfigMap", Some("default"), n);
        let expected = vec![
            ("create", key("a")),
            ("create", key("c")),
            ("update", key("b")),
            ("delete", key("d")),
        ];
        assert_eq!(outline(&unsorted), expected);
        assert_eq!(outline(&merged), expected);
        assert_eq!(unsorted.unchanged, 2);
        assert_eq!(merged.unchanged, 2);
        assert_eq!(unsorted.creates[0].after["data"]["k"], "1");
        assert_eq!(merged.creates[0].after["data"]["k"], "1");
    }

    fn keys<D: Borrow<Desired>>(set: &[D]) -> Vec<String> {
        set.iter().map(|d| d.borrow().key.clone()).collect()
    }

    #[test]
    fn merging_kept_and_fresh_objects_equals_sorting_them_all() {
        // Every split of a shuffled set into a sorted kept part and a fresh part in arbitrary
        // order merges to the full sort, including fresh keys before, between and after the
        // kept ones, and an empty side.
        let names = ["m", "c", "x", "a", "q", "f", "z", "b"];
        let all: Vec<Desired> = names.iter().map(|n| cm(n, json!({}))).collect();
        let expected = keys(&sorted_by_key(all.clone()).unwrap());
        for mask in 0u32..(1 << names.len()) {
            let (fresh, kept): (Vec<_>, Vec<_>) = all
                .iter()
                .enumerate()
                .partition(|(i, _)| mask & (1 << i) != 0);
            let kept = sorted_by_key(kept.into_iter().map(|(_, d)| d).collect()).unwrap();
            let fresh: Vec<&Desired> = fresh.into_iter().map(|(_, d)| d).collect();
            let merged = merge_sorted(kept, fresh).expect("no key repeats");
            assert_eq!(keys(&merged), expected, "mask {mask:08b}");
        }
    }

    #[test]
    fn merging_gives_up_when_a_key_repeats_so_the_full_sort_reports_it() {
        let a = cm("a", json!({}));
        let b = cm("b", json!({}));
        let mut other_a = cm("a", json!({"k": "v"}));
        other_a.file = "other.yaml".into();
        // Across the two sides, and within the fresh side.
        assert!(merge_sorted(vec![&a, &b], vec![&other_a]).is_none());
        assert!(merge_sorted(vec![&b], vec![&a, &other_a]).is_none());
        assert!(merge_sorted(vec![&a], vec![&b]).is_some());
        // A repeat in the middle of the kept side, found whichever side comes first.
        let (c, d, e) = (cm("c", json!({})), cm("d", json!({})), cm("e", json!({})));
        let mut other_c = cm("c", json!({"k": "v"}));
        other_c.file = "other.yaml".into();
        assert!(merge_sorted(vec![&a, &c, &e], vec![&other_c]).is_none());
        assert!(merge_sorted(vec![&a, &c, &e], vec![&d, &other_c]).is_none());
        assert!(merge_sorted(vec![&a, &c, &e], vec![&d, &b]).is_some());
        let err = sorted_by_key(vec![a, other_a]).unwrap_err().to_string();
        assert!(
            err.contains("other.yaml") && err.contains("cm.yaml"),
            "{err}"
        );
    }

    #[test]
    fn stored_objects_after_the_last_desired_key_are_deleted() {
        let stored = synced(&[cm("a", json!({})), cm("y", json!({})), cm("z", json!({}))]);
        let p = plan(&[cm("a", json!({}))], &stored);
        let key = |n: &str| coxswain_store::object_key("", "ConfigMap", Some("default"), n);
        assert_eq!(
            outline(&p),
            vec![("delete", key("y")), ("delete", key("z"))]
        );
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn desired_from_report_builds_keys_and_defaults_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("cfg")).unwrap();
        std::fs::write(
            dir.path().join("cfg/maps.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  namespace: team\ndata:\n  k: v\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n",
        )
        .unwrap();
        let tree = coxswain_schema::tree::DirTree::new(dir.path()).unwrap();
        let report = coxswain_schema::validate_tree(&tree, &coxswain_schema::Limits::default());
        assert!(report.is_valid(), "{:?}", report.diagnostics);

        let desired = desired_from_report(&report).unwrap();
        let keys: Vec<&str> = desired.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/core/ConfigMap/default/a",
                "/core/ConfigMap/team/b",
                "/core/Namespace/team"
            ]
        );
        assert_eq!(desired[0].file, "cfg/maps.yaml");
        assert_eq!(desired[0].value["metadata"]["namespace"], "default");
        assert_eq!(desired[0].value["data"]["k"], "v");
        assert_eq!(desired[1].value["metadata"]["namespace"], "team");
        assert_eq!(desired[2].file, "ns.yaml");
        assert!(desired[2].value["metadata"].get("namespace").is_none());
        // Nothing is marked yet: the marks belong to what is stored.
        assert!(desired[0].value["metadata"].get("annotations").is_none());
    }

    #[test]
    fn desired_from_report_refuses_a_key_defined_twice() {
        // Validation reports the duplicate but keeps both objects; the planner must not
        // pick one of them silently. The second file spells out the default namespace.
        let dir = tempfile::tempdir().unwrap();
        let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n";
        std::fs::write(dir.path().join("one.yaml"), doc).unwrap();
        std::fs::write(
            dir.path().join("two.yaml"),
            format!("{doc}  namespace: default\n"),
        )
        .unwrap();
        let tree = coxswain_schema::tree::DirTree::new(dir.path()).unwrap();
        let report = coxswain_schema::validate_tree(&tree, &coxswain_schema::Limits::default());
        assert!(!report.is_valid());
        assert_eq!(report.objects().count(), 2);
        let err = desired_from_report(&report).unwrap_err().to_string();
        assert!(err.contains("/core/ConfigMap/default/a"), "{err}");
        assert!(
            err.contains("one.yaml") && err.contains("two.yaml"),
            "{err}"
        );
    }

    #[test]
    fn first_sync_creates_everything_in_key_order() {
        let desired = [cm("b", json!({"k": "v"})), deploy(), cm("a", json!({}))];
        let p = plan(&desired, &BTreeMap::new());
        let keys: Vec<&str> = p.creates.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/apps/Deployment/web/api",
                "/core/ConfigMap/default/a",
                "/core/ConfigMap/default/b"
            ]
        );
        assert_eq!(p.creates[0].file, "apps/api.yaml");
        assert_eq!(p.creates[0].after, deploy().value);
        assert!(p.updates.is_empty() && p.deletes.is_empty());
        assert_eq!(p.unchanged, 0);
        assert!(!p.is_empty());
    }

    type Edit = fn(&mut Desired, &mut Value);
    /// (case, object, edit of desired and stored, pointers that change)
    type UpdateCase = (&'static str, fn() -> Desired, Edit, &'static [&'static str]);
    /// (case, object, edit, stored generation, generation written, spec changed)
    type GenerationCase = (&'static str, fn() -> Desired, Edit, Option<i64>, i64, bool);

    #[test]
    fn only_changes_to_what_git_owns_are_updates() {
        let cases: &[UpdateCase] = &[
            ("identical", deploy, |_, _| {}, &[]),
            (
                "key order differs",
                deploy,
                |d, s| {
                    d.value = reversed(&d.value);
                    *s = reversed(s);
                },
                &[],
            ),
            (
                "status written by a controller",
                deploy,
                |_, s| s["status"] = json!({"replicas": 2, "readyReplicas": 1}),
                &[],
            ),
            (
                "system metadata changed",
                deploy,
                |_, s| {
                    let m = &mut s["metadata"];
                    m["resourceVersion"] = json!("99");
                    m["generation"] = json!(7);
                    m["uid"] = json!("other");
                    m["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
                    m["managedFields"] = json!([{"manager": "x"}]);
                    m["ownerReferences"] =
                        json!([{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u"}]);
                },
                &[],
            ),
            (
                "explicit null in Git",
                deploy,
                |d, _| d.value["spec"]["paused"] = Value::Null,
                &[],
            ),
            (
                "label changed",
                deploy,
                |d, _| d.value["metadata"]["labels"]["app"] = json!("api2"),
                &["/metadata/labels/app"],
            ),
            (
                "label added",
                deploy,
                |d, _| d.value["metadata"]["labels"]["tier"] = json!("backend"),
                &["/metadata/labels/tier"],
            ),
            (
                "annotation added",
                deploy,
                |d, _| d.value["metadata"]["annotations"] = json!({"example.com/note": "hi"}),
                &["/metadata/annotations/example.com~1note"],
            ),
            (
                "replicas changed",
                deploy,
                |d, _| d.value["spec"]["replicas"] = json!(3),
                &["/spec/replicas"],
            ),
            (
                "replicas removed",
                deploy,
                |d, _| {
                    d.value["spec"].as_object_mut().unwrap().remove("replicas");
                },
                &["/spec/replicas"],
            ),
            (
                "image bumped",
                deploy,
                |d, _| {
                    d.value["spec"]["template"]["spec"]["containers"][0]["image"] = json!("api:2")
                },
                &["/spec/template/spec/containers/0/image"],
            ),
            (
                "container added",
                deploy,
                |d, _| {
                    d.value["spec"]["template"]["spec"]["containers"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"name": "side", "image": "side:1"}))
                },
                &["/spec/template/spec/containers"],
            ),
            (
                "configmap data changed",
                || cm("cfg", json!({"k": "v"})),
                |d, _| d.value["data"]["k"] = json!("v2"),
                &["/data/k"],
            ),
            (
                "moved to another file",
                deploy,
                |d, _| d.file = "other.yaml".into(),
                &["/metadata/annotations/coxswain.dev~1source-file"],
            ),
            (
                "stored without the ownership label",
                deploy,
                |_, s| {
                    s["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove(MANAGED_BY_LABEL);
                },
                &["/metadata/labels/app.kubernetes.io~1managed-by"],
            ),
        ];
        for (name, base, edit, want) in cases {
            let mut d = base();
            let mut owned = synced(std::slice::from_ref(&d));
            let stored = owned.get_mut(&d.key).unwrap();
            let original = serde_json::to_string(&*stored).unwrap();
            edit(&mut d, stored);
            if *name == "key order differs" {
                // The test means something only if the text really differs.
                assert_ne!(serde_json::to_string(&*stored).unwrap(), original);
            }
            let p = plan(std::slice::from_ref(&d), &owned);
            assert!(p.creates.is_empty() && p.deletes.is_empty(), "{name}");
            if want.is_empty() {
                assert!(p.is_empty(), "{name}: {p}");
                assert_eq!(p.unchanged, 1, "{name}");
            } else {
                assert_eq!(p.updates.len(), 1, "{name}: {p}");
                assert_eq!(p.unchanged, 0, "{name}");
                assert_eq!(pointers(&p.updates[0].changes), *want, "{name}");
                assert_eq!(p.updates[0].before, owned[&d.key], "{name}");
                assert_eq!(p.updates[0].after, d.value, "{name}");
            }
        }
    }

    #[test]
    fn generation_goes_up_only_when_the_spec_changes() {
        let cases: &[GenerationCase] = &[
            (
                "data changed",
                || cm("cfg", json!({"k": "v"})),
                |d, _| d.value["data"]["k"] = json!("v2"),
                Some(1),
                2,
                true,
            ),
            (
                "replicas changed at generation 5",
                deploy,
                |d, _| d.value["spec"]["replicas"] = json!(5),
                Some(5),
                6,
                true,
            ),
            (
                "label only",
                deploy,
                |d, _| d.value["metadata"]["labels"]["tier"] = json!("x"),
                Some(3),
                3,
                false,
            ),
            (
                "annotation only",
                deploy,
                |d, _| d.value["metadata"]["annotations"] = json!({"a": "b"}),
                Some(1),
                1,
                false,
            ),
            (
                "moved to another file",
                deploy,
                |d, _| d.file = "moved.yaml".into(),
                Some(2),
                2,
                false,
            ),
            (
                "stored without generation, spec changed",
                deploy,
                |d, _| d.value["spec"]["replicas"] = json!(1),
                None,
                2,
                true,
            ),
        ];
        for (name, base, edit, stored_gen, want_gen, want_spec) in cases {
            let mut d = base();
            let mut owned = synced(std::slice::from_ref(&d));
            let stored = owned.get_mut(&d.key).unwrap();
            match stored_gen {
                Some(g) => stored["metadata"]["generation"] = json!(g),
                None => {
                    stored["metadata"]
                        .as_object_mut()
                        .unwrap()
                        .remove("generation");
                }
            }
            edit(&mut d, stored);
            let p = plan(std::slice::from_ref(&d), &owned);
            assert_eq!(p.updates.len(), 1, "{name}");
            assert_eq!(p.updates[0].spec_changed, *want_spec, "{name}");
            let written = stored_for_update(&d, &owned[&d.key]);
            assert_eq!(written["metadata"]["generation"], json!(want_gen), "{name}");
            assert_eq!(p.updates[0].stored(), written, "{name}");
        }
    }

    #[test]
    fn create_writes_system_fields_and_ownership_marks() {
        let mut d = deploy();
        // Validation refuses these in Git; should one slip through, it is not written.
        d.value["metadata"]["resourceVersion"] = json!("5");
        d.value["status"] = json!({"replicas": 9});
        let v = stored_for_create(&d, NOW, "u-1");
        let m = &v["metadata"];
        assert_eq!(m["uid"], "u-1");
        assert_eq!(m["creationTimestamp"], NOW);
        assert_eq!(m["generation"], 1);
        assert_eq!(m["labels"]["app"], "api");
        assert_eq!(m["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(m["annotations"][SOURCE_FILE_ANNOTATION], "apps/api.yaml");
        assert!(m.get("resourceVersion").is_none());
        assert!(v.get("status").is_none());
        assert_eq!(v["spec"], deploy().value["spec"]);
        assert!(is_git_owned(&v));
        assert!(!is_git_owned(&deploy().value));
    }

    #[test]
    fn update_keeps_status_and_system_metadata() {
        let mut d = deploy();
        let mut stored = stored_for_create(&d, NOW, "u-1");
        stored["metadata"]["resourceVersion"] = json!("41");
        stored["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "o"}]);
        stored["metadata"]["managedFields"] = json!([{"manager": "ctl"}]);
        stored["status"] = json!({"replicas": 2, "observedGeneration": 1});
        d.value["spec"]["replicas"] = json!(4);
        d.value["metadata"]["labels"]["new"] = json!("yes");

        let v = stored_for_update(&d, &stored);
        let m = &v["metadata"];
        assert_eq!(m["uid"], "u-1");
        assert_eq!(m["creationTimestamp"], NOW);
        assert_eq!(m["ownerReferences"], stored["metadata"]["ownerReferences"]);
        assert_eq!(m["managedFields"], stored["metadata"]["managedFields"]);
        assert_eq!(m["generation"], 2);
        assert!(m.get("resourceVersion").is_none());
        assert_eq!(v["status"], stored["status"]);
        assert_eq!(v["spec"]["replicas"], 4);
        assert_eq!(m["labels"]["new"], "yes");
        assert_eq!(m["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(m["annotations"][SOURCE_FILE_ANNOTATION], "apps/api.yaml");
    }

    #[test]
    fn planning_again_after_applying_gives_an_empty_plan() {
        let mut desired = vec![
            deploy(),
            cm("a", json!({"k": "v"})),
            cm("b", json!({"k": "v"})),
        ];
        let mut rv = 0;
        let first = plan(&desired, &BTreeMap::new());
        assert_eq!(first.creates.len(), 3);
        let mut owned = apply(&first, &BTreeMap::new(), &mut rv);
        assert!(owned.values().all(is_git_owned));
        let again = plan(&desired, &owned);
        assert!(again.is_empty(), "{again}");
        assert_eq!(again.unchanged, 3);

        // A controller writes status between commits; still nothing for Git to do.
        owned.get_mut(&deploy().key).unwrap()["status"] = json!({"readyReplicas": 2});

        // Next commit: one create, one update (data and file), one delete.
        desired[1].value["data"]["k"] = json!("v2");
        desired[1].file = "moved.yaml".into();
        desired.remove(2);
        desired.push(cm("c", json!({})));
        let second = plan(&desired, &owned);
        assert_eq!(
            (
                second.creates.len(),
                second.updates.len(),
                second.deletes.len()
            ),
            (1, 1, 1),
            "{second}"
        );
        let owned = apply(&second, &owned, &mut rv);
        let again = plan(&desired, &owned);
        assert!(again.is_empty(), "{again}");
        assert_eq!(again.unchanged, 3);
        assert_eq!(owned[&deploy().key]["status"]["readyReplicas"], 2);
    }

    #[test]
    fn deletes_are_owned_keys_that_git_no_longer_has() {
        let all = [cm("a", json!({})), cm("b", json!({})), cm("c", json!({}))];
        let owned = synced(&all);
        let p = plan(&all[1..2], &owned);
        let keys: Vec<&str> = p.deletes.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/core/ConfigMap/default/a", "/core/ConfigMap/default/c"]
        );
        assert_eq!(p.deletes[0].before, owned["/core/ConfigMap/default/a"]);
        assert_eq!(p.unchanged, 1);
        assert!(p.creates.is_empty() && p.updates.is_empty());

        let gone = plan(&[], &owned);
        assert_eq!(gone.deletes.len(), 3);
    }

    #[test]
    fn a_repeated_desired_key_keeps_its_first_entry() {
        let first = cm("a", json!({"k": "1"}));
        let second = cm("a", json!({"k": "2"}));
        let p = plan(&[first.clone(), second], &BTreeMap::new());
        assert_eq!(p.creates.len(), 1);
        assert_eq!(p.creates[0].after, first.value);
    }

    #[test]
    fn diff_is_field_level_and_order_blind() {
        let fc = |p: &str, b: Option<Value>, a: Option<Value>| FieldChange {
            pointer: p.into(),
            before: b,
            after: a,
        };
        let cases: Vec<(&str, Value, Value, Vec<FieldChange>)> = vec![
            (
                "equal",
                json!({"a": 1, "b": [1, 2]}),
                json!({"b": [1, 2], "a": 1}),
                vec![],
            ),
            (
                "nested change, add and remove",
                json!({"m": {"x": 1, "gone": true}}),
                json!({"m": {"x": 2, "new": "n"}}),
                vec![
                    fc("/m/gone", Some(json!(true)), None),
                    fc("/m/new", None, Some(json!("n"))),
                    fc("/m/x", Some(json!(1)), Some(json!(2))),
                ],
            ),
            (
                "arrays of one length, element by element",
                json!({"l": [{"n": "a", "v": 1}, {"n": "b", "v": 1}]}),
                json!({"l": [{"v": 1, "n": "a"}, {"n": "b", "v": 2}]}),
                vec![fc("/l/1/v", Some(json!(1)), Some(json!(2)))],
            ),
            (
                "arrays of another length, whole",
                json!({"l": [1]}),
                json!({"l": [1, 2]}),
                vec![fc("/l", Some(json!([1])), Some(json!([1, 2])))],
            ),
            (
                "type change",
                json!({"v": {"a": 1}}),
                json!({"v": "a"}),
                vec![fc("/v", Some(json!({"a": 1})), Some(json!("a")))],
            ),
            (
                "escaped tokens",
                json!({"a/b": {"c~d": 1}}),
                json!({"a/b": {"c~d": 2}}),
                vec![fc("/a~1b/c~0d", Some(json!(1)), Some(json!(2)))],
            ),
            (
                "root scalar",
                json!(1),
                json!(2),
                vec![fc("", Some(json!(1)), Some(json!(2)))],
            ),
        ];
        for (name, before, after, want) in cases {
            assert_eq!(diff(&before, &after), want, "{name}");
            for ch in &want {
                if let Some(b) = &ch.before {
                    assert_eq!(before.pointer(&ch.pointer), Some(b), "{name}");
                }
                if let Some(a) = &ch.after {
                    assert_eq!(after.pointer(&ch.pointer), Some(a), "{name}");
                }
            }
        }
        let marks: Vec<char> = diff(&json!({"a": 1, "b": 1}), &json!({"b": 2, "c": 1}))
            .iter()
            .map(FieldChange::mark)
            .collect();
        assert_eq!(marks, ['-', '~', '+']);
    }

    #[test]
    fn render_shows_one_block_per_object() {
        let owned = synced(&[
            cm("cfg", json!({"k": "v", "old": "x"})),
            cm("old", json!({"k": "v"})),
        ]);
        let mut new = cm("new", json!({"k": "v"}));
        new.file = "new.yaml".into();
        new.value["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let p = plan(&[cm("cfg", json!({"k": "v2", "add": "y"})), new], &owned);
        let want = "\
+ /core/ConfigMap/default/new (new.yaml)
    + /apiVersion: \"v1\"
    + /data/k: \"v\"
    + /kind: \"ConfigMap\"
    + /metadata/annotations/coxswain.dev~1source-file: \"new.yaml\"
    + /metadata/labels/app.kubernetes.io~1managed-by: \"coxswain\"
    + /metadata/name: \"new\"
    + /metadata/namespace: \"default\"
~ /core/ConfigMap/default/cfg (cm.yaml)
    + /data/add: \"y\"
    ~ /data/k: \"v\" => \"v2\"
    - /data/old: \"x\"
- /core/ConfigMap/default/old
    - /apiVersion: \"v1\"
    - /data/k: \"v\"
    - /kind: \"ConfigMap\"
    - /metadata/annotations/coxswain.dev~1source-file: \"cm.yaml\"
    - /metadata/labels/app: \"web\"
    - /metadata/labels/app.kubernetes.io~1managed-by: \"coxswain\"
    - /metadata/name: \"old\"
    - /metadata/namespace: \"default\"
Plan: 1 to create, 1 to update, 1 to delete, 0 unchanged.
";
        assert_eq!(p.render(false), want);
        assert_eq!(p.to_string(), want);

        let colored = p.render(true);
        assert!(colored.contains("\x1b[32m+ /core/ConfigMap/default/new (new.yaml)\x1b[0m\n"));
        assert!(colored.contains("\x1b[33m    ~ /data/k: \"v\" => \"v2\"\x1b[0m\n"));
        assert!(colored.contains("\x1b[31m- /core/ConfigMap/default/old\x1b[0m\n"));

        assert_eq!(
            Plan::default().render(false),
            "Plan: 0 to create, 0 to update, 0 to delete, 0 unchanged.\n"
        );
    }
}
