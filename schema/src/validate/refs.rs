//! Checks across the whole tree, made after every file was parsed: one object per
//! (kind, namespace, name), namespaces that exist, and references a pod or HPA makes to other
//! objects. Kubernetes would only notice these at run time (a pod stuck in
//! `CreateContainerConfigError`, an HPA with `FailedGetScale`); a commit is the cheaper place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::diagnostic::{Code, Diagnostic};
use crate::kinds::pod::PodSpec;
use crate::object::Object;
use crate::validate::{Ident, ParsedDoc, ParsedFile};

/// Where a ConfigMap's or Secret's keys are, by (kind, namespace, name).
type Keys<'a> = HashMap<(&'a str, &'a str, &'a str), HashSet<&'a str>>;

/// Runs every cross-object check.
pub(crate) fn check_tree(files: &[Arc<ParsedFile>]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut first: HashMap<&Ident, (&ParsedFile, &ParsedDoc)> = HashMap::new();
    let mut namespaces: HashSet<&str> = HashSet::new();
    let mut present: HashSet<(&str, &str, &str, &str)> = HashSet::new();
    let mut keys: Keys<'_> = HashMap::new();

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
                    let set = key_set(&cm.data, &cm.binary_data);
                    keys.insert(("ConfigMap", ns, &id.name), set);
                }
                Some(Object::Secret(s)) => {
                    let set = key_set(&s.data, &s.string_data);
                    keys.insert(("Secret", ns, &id.name), set);
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
                Some(obj) => {
                    if let Some((spec, base)) = pod_spec_of(obj) {
                        let mut errs = Vec::new();
                        check_pod_refs(spec, base, ns, &present, &keys, &mut errs);
                        out.extend(
                            errs.into_iter()
                                .map(|(p, r)| f.diag_at(d, &p, Code::Reference, r)),
                        );
                    }
                }
                None => {}
            }
        }
    }
    out
}

/// The keys of a ConfigMap's or Secret's two data maps.
fn key_set<'a, V, W>(
    a: &'a Option<BTreeMap<String, V>>,
    b: &'a Option<BTreeMap<String, W>>,
) -> HashSet<&'a str> {
    a.iter()
        .flat_map(|m| m.keys())
        .chain(b.iter().flat_map(|m| m.keys()))
        .map(String::as_str)
        .collect()
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

/// ConfigMaps and Secrets a pod needs must exist (and hold the keys it reads), unless the
/// reference is marked `optional: true`.
fn check_pod_refs(
    spec: &PodSpec,
    base: &str,
    ns: &str,
    present: &HashSet<(&str, &str, &str, &str)>,
    keys: &Keys<'_>,
    errs: &mut Vec<(String, String)>,
) {
    // One reference, reported once: a missing object at its name (the keys it reads would
    // only repeat that), else each key it lacks at that key.
    let mut need = |ptr: String,
                    kind: &'static str,
                    name: &str,
                    wanted: Vec<(String, &str)>,
                    optional: Option<bool>| {
        if optional == Some(true) {
            return;
        }
        if !present.contains(&("", kind, ns, name)) {
            errs.push((
                ptr,
                format!(
                    "{kind} {ns}/{name} is not in the tree; the pod could not start (set `optional: true` if that is intended)"
                ),
            ));
            return;
        }
        let Some(have) = keys.get(&(kind, ns, name)) else {
            return;
        };
        for (key_ptr, key) in wanted {
            if !have.contains(key) {
                let mut list: Vec<&&str> = have.iter().collect();
                list.sort();
                errs.push((
                    key_ptr,
                    format!(
                        "{kind} {ns}/{name} has no key {key:?} (it has: {})",
                        list.iter()
                            .map(|k| format!("{k:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    };
    let groups: BTreeMap<&str, _> = [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ]
    .into_iter()
    .filter_map(|(n, c)| c.map(|c| (n, c)))
    .collect();
    for (field, containers) in groups {
        for (ci, c) in containers.iter().enumerate() {
            let cp = format!("{base}/{field}/{ci}");
            for (ei, env) in c.env.iter().flatten().enumerate() {
                let Some(from) = &env.value_from else {
                    continue;
                };
                let ep = format!("{cp}/env/{ei}/valueFrom");
                if let Some(r) = &from.config_map_key_ref {
                    let p = format!("{ep}/configMapKeyRef");
                    need(
                        format!("{p}/name"),
                        "ConfigMap",
                        &r.name,
                        vec![(format!("{p}/key"), r.key.as_str())],
                        r.optional,
                    );
                }
                if let Some(r) = &from.secret_key_ref {
                    let p = format!("{ep}/secretKeyRef");
                    need(
                        format!("{p}/name"),
                        "Secret",
                        &r.name,
                        vec![(format!("{p}/key"), r.key.as_str())],
                        r.optional,
                    );
                }
            }
            for (ei, src) in c.env_from.iter().flatten().enumerate() {
                if let Some(r) = &src.config_map_ref {
                    need(
                        format!("{cp}/envFrom/{ei}/configMapRef/name"),
                        "ConfigMap",
                        &r.name,
                        Vec::new(),
                        r.optional,
                    );
                }
                if let Some(r) = &src.secret_ref {
                    need(
                        format!("{cp}/envFrom/{ei}/secretRef/name"),
                        "Secret",
                        &r.name,
                        Vec::new(),
                        r.optional,
                    );
                }
            }
        }
    }
    for (vi, v) in spec.volumes.iter().flatten().enumerate() {
        let vp = format!("{base}/volumes/{vi}");
        if let Some(cm) = &v.config_map {
            let wanted = cm
                .items
                .iter()
                .flatten()
                .enumerate()
                .map(|(ii, item)| (format!("{vp}/configMap/items/{ii}/key"), item.key.as_str()))
                .collect();
            need(
                format!("{vp}/configMap/name"),
                "ConfigMap",
                &cm.name,
                wanted,
                cm.optional,
            );
        }
        if let Some(s) = &v.secret {
            let wanted = s
                .items
                .iter()
                .flatten()
                .enumerate()
                .map(|(ii, item)| (format!("{vp}/secret/items/{ii}/key"), item.key.as_str()))
                .collect();
            need(
                format!("{vp}/secret/secretName"),
                "Secret",
                &s.secret_name,
                wanted,
                s.optional,
            );
        }
    }
}
