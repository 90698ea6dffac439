//! Checks across the whole tree, made after every file was parsed: one object per
//! (kind, namespace, name), namespaces that exist, and references a pod or HPA makes to other
//! objects. Kubernetes would only notice these at run time (a pod stuck in
//! `CreateContainerConfigError`, an HPA with `FailedGetScale`); a commit is the cheaper place.
//!
//! These run over every object on every commit, also when one file changed, so what a pod
//! needs is read once per file at parse time ([`needs_of`]) and the tree-wide pass looks only
//! at those short lists and at fast-hashed maps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::diagnostic::{Code, Diagnostic};
use crate::kinds::pod::PodSpec;
use crate::object::Object;
use crate::validate::{Ident, ParsedDoc, ParsedFile};

/// A ConfigMap's or Secret's two key maps (`data` and `binaryData`, or `data` and
/// `stringData`), borrowed from the parsed object rather than copied into a set: most
/// references are never looked up more than once.
type KeyMaps<'a> = [Option<&'a BTreeMap<String, String>>; 2];

/// Where a ConfigMap's or Secret's keys are, by (kind, namespace, name).
type Keys<'a> = FxHashMap<(&'a str, &'a str, &'a str), KeyMaps<'a>>;

/// Every object of the tree by (group, kind, namespace or "", name).
type Present<'a> = FxHashSet<(&'a str, &'a str, &'a str, &'a str)>;

/// Runs every cross-object check.
pub(crate) fn check_tree(files: &[Arc<ParsedFile>]) -> Vec<Diagnostic> {
    // These run over every object of every commit, so the maps are sized once up front.
    let docs: usize = files.iter().map(|f| f.docs.len()).sum();
    let mut out = Vec::new();
    let mut first: FxHashMap<&Ident, (&ParsedFile, &ParsedDoc)> =
        FxHashMap::with_capacity_and_hasher(docs, Default::default());
    let mut namespaces: FxHashSet<&str> = FxHashSet::default();
    let mut present: Present<'_> = FxHashSet::with_capacity_and_hasher(docs, Default::default());
    let mut keys: Keys<'_> = FxHashMap::default();

    for f in files {
        for d in &f.docs {
            let Some(id) = &d.ident else { continue };
            if let Some((pf, pd)) = first.get(id) {
                let at = pf.locate(pd, "/metadata/name");
                out.push(f.diag_at(
                    d,
                    "/metadata/name",
                    Code::Duplicate,
                    format!(
                        "duplicate {id}: it is already defined at {}:{}:{}; (kind, namespace, name) must be unique in the tree",
                        pf.path, at.line, at.column
                    ),
                ));
                continue;
            }
            first.insert(id, (f, d));
            let ns = id.namespace.as_deref().unwrap_or("");
            present.insert((id.group, id.kind, ns, &id.name));
            if id.kind == "Namespace" {
                namespaces.insert(&id.name);
            }
            match &d.object {
                Some(Object::ConfigMap(cm)) => {
                    let maps = [cm.data.as_ref(), cm.binary_data.as_ref()];
                    keys.insert(("ConfigMap", ns, &id.name), maps);
                }
                Some(Object::Secret(s)) => {
                    let maps = [s.data.as_ref(), s.string_data.as_ref()];
                    keys.insert(("Secret", ns, &id.name), maps);
                }
                _ => {}
            }
        }
    }

    for f in files {
        for d in &f.docs {
            let Some(id) = &d.ident else { continue };
            if let Some(ns) = id.namespace.as_deref()
                && ns != "default"
                && !namespaces.contains(ns)
            {
                let ptr = if f
                    .root(d.index)
                    .and_then(|r| r.get("metadata"))
                    .and_then(|m| m.get("namespace"))
                    .is_some()
                {
                    "/metadata/namespace"
                } else {
                    "/metadata"
                };
                out.push(f.diag_at(
                        d,
                        ptr,
                        Code::Reference,
                        format!(
                            "namespace {ns:?} is not declared in the tree: add a Namespace named {ns:?}, or use \"default\""
                        ),
                    ));
            }
            let ns = id.namespace.as_deref().unwrap_or("default");
            match &d.object {
                Some(Object::HorizontalPodAutoscaler(h)) => {
                    let r = &h.spec.scale_target_ref;
                    let group = r
                        .api_version
                        .as_deref()
                        .and_then(|v| v.split_once('/').map(|(g, _)| g))
                        .unwrap_or(if r.kind == "ReplicationController" {
                            ""
                        } else {
                            "apps"
                        });
                    if !present.contains(&(group, r.kind.as_str(), ns, r.name.as_str())) {
                        out.push(f.diag_at(
                            d,
                            "/spec/scaleTargetRef",
                            Code::Reference,
                            format!(
                                "scaleTargetRef {} {ns}/{} is not in the tree; an HPA must target a workload defined alongside it",
                                r.kind, r.name
                            ),
                        ));
                    }
                }
                Some(_) => {
                    let errs = unmet_needs(&d.needs, ns, &present, &keys);
                    out.extend(
                        errs.into_iter()
                            .map(|(ptr, reason)| f.diag_at(d, ptr, Code::Reference, reason)),
                    );
                }
                None => {}
            }
        }
    }
    out
}

/// Where and why the tree does not give a document in namespace `ns` what its pod spec
/// `needs`: a missing object once at its name, else each key it lacks at that key.
fn unmet_needs<'n>(
    needs: &'n [Need],
    ns: &str,
    present: &Present<'_>,
    keys: &Keys<'_>,
) -> Vec<(&'n str, String)> {
    let mut out = Vec::new();
    for need in needs {
        let (kind, name) = (need.kind, need.name.as_str());
        if !present.contains(&("", kind, ns, name)) {
            out.push((
                need.ptr.as_str(),
                format!(
                    "{kind} {ns}/{name} is not in the tree; the pod could not start (set `optional: true` if that is intended)"
                ),
            ));
            continue;
        }
        let Some(have) = keys.get(&(kind, ns, name)) else {
            continue;
        };
        for (key, ptr) in need.keys.iter().filter(|(key, _)| !has_key(have, key)) {
            out.push((
                ptr.as_str(),
                format!(
                    "{kind} {ns}/{name} has no key {key:?} (it has: {})",
                    key_list(have)
                ),
            ));
        }
    }
    out
}

/// Whether either map holds `key`.
fn has_key(maps: &KeyMaps<'_>, key: &str) -> bool {
    maps.iter().flatten().any(|m| m.contains_key(key))
}

/// The keys of both maps, sorted, once each, quoted for an error message.
fn key_list(maps: &KeyMaps<'_>) -> String {
    let keys: BTreeSet<&str> = maps
        .iter()
        .flatten()
        .flat_map(|m| m.keys())
        .map(String::as_str)
        .collect();
    keys.iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pod spec inside a kind, with its JSON pointer.
fn pod_spec_of(obj: &Object) -> Option<(&PodSpec, &'static str)> {
    Some(match obj {
        Object::Pod(p) => (&p.spec, "/spec"),
        Object::Deployment(o) => (&o.spec.template.spec, "/spec/template/spec"),
        Object::ReplicaSet(o) => (&o.spec.template.spec, "/spec/template/spec"),
        Object::DaemonSet(o) => (&o.spec.template.spec, "/spec/template/spec"),
        Object::Job(o) => (&o.spec.template.spec, "/spec/template/spec"),
        Object::CronJob(o) => (
            &o.spec.job_template.spec.template.spec,
            "/spec/jobTemplate/spec/template/spec",
        ),
        _ => return None,
    })
}

/// A ConfigMap or Secret one document's pod spec needs (a reference not marked `optional:
/// true`), with the JSON pointers to report at. Read from the object once, when its file is
/// parsed, and kept with the file: the checks across the tree then run over these short lists
/// instead of walking every object's large parsed pod spec again on every commit, which cost
/// mostly cache misses.
#[derive(Debug, Clone)]
pub(crate) struct Need {
    kind: &'static str,
    name: String,
    /// Where the name is: a missing object is reported there, once (the keys it reads would
    /// only repeat that).
    ptr: String,
    /// Keys read from it, each with where it is.
    keys: Vec<(String, String)>,
}

/// What a document's object needs from the rest of the tree (see [`Need`]); empty for kinds
/// without a pod spec.
pub(crate) fn needs_of(obj: &Object) -> Vec<Need> {
    let mut out = Vec::new();
    let Some((spec, base)) = pod_spec_of(obj) else {
        return out;
    };
    let mut need = |kind: &'static str,
                    name: &str,
                    optional: Option<bool>,
                    ptr: String,
                    keys: Vec<(String, String)>| {
        if optional != Some(true) {
            out.push(Need {
                kind,
                name: name.to_string(),
                ptr,
                keys,
            });
        }
    };
    let groups = [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ];
    for (field, containers) in groups {
        for (ci, c) in containers.into_iter().flatten().enumerate() {
            for (ei, env) in c.env.iter().flatten().enumerate() {
                let Some(from) = &env.value_from else {
                    continue;
                };
                let at = |rest: &str| format!("{base}/{field}/{ci}/env/{ei}/valueFrom/{rest}");
                if let Some(r) = &from.config_map_key_ref {
                    let key = (r.key.clone(), at("configMapKeyRef/key"));
                    need(
                        "ConfigMap",
                        &r.name,
                        r.optional,
                        at("configMapKeyRef/name"),
                        vec![key],
                    );
                }
                if let Some(r) = &from.secret_key_ref {
                    let key = (r.key.clone(), at("secretKeyRef/key"));
                    need(
                        "Secret",
                        &r.name,
                        r.optional,
                        at("secretKeyRef/name"),
                        vec![key],
                    );
                }
            }
            for (ei, src) in c.env_from.iter().flatten().enumerate() {
                let at = |rest: &str| format!("{base}/{field}/{ci}/envFrom/{ei}/{rest}");
                if let Some(r) = &src.config_map_ref {
                    need(
                        "ConfigMap",
                        &r.name,
                        r.optional,
                        at("configMapRef/name"),
                        Vec::new(),
                    );
                }
                if let Some(r) = &src.secret_ref {
                    need(
                        "Secret",
                        &r.name,
                        r.optional,
                        at("secretRef/name"),
                        Vec::new(),
                    );
                }
            }
        }
    }
    for (vi, v) in spec.volumes.iter().flatten().enumerate() {
        let at = |rest: &str| format!("{base}/volumes/{vi}/{rest}");
        if let Some(cm) = &v.config_map {
            let keys = cm
                .items
                .iter()
                .flatten()
                .enumerate()
                .map(|(ii, item)| (item.key.clone(), at(&format!("configMap/items/{ii}/key"))))
                .collect();
            need(
                "ConfigMap",
                &cm.name,
                cm.optional,
                at("configMap/name"),
                keys,
            );
        }
        if let Some(sec) = &v.secret {
            let keys = sec
                .items
                .iter()
                .flatten()
                .enumerate()
                .map(|(ii, item)| (item.key.clone(), at(&format!("secret/items/{ii}/key"))))
                .collect();
            need(
                "Secret",
                &sec.secret_name,
                sec.optional,
                at("secret/secretName"),
                keys,
            );
        }
    }
    out
}
