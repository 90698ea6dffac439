//! Rules Kubernetes enforces beyond its JSON Schema (the API server's `validation.go`), made
//! here at commit time: names and label syntax, ranges, one-of fields, selectors that match
//! their template, limits ≥ requests, cron syntax. Each check reports a JSON pointer and a
//! plain reason; the caller turns the pointer into a file, line and column.

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;

use crate::cron;
use crate::intorstr::IntOrString;
use crate::kinds::apps::{DeploymentStrategy, StrategyType};
use crate::kinds::autoscaling::{HorizontalPodAutoscaler, HpaScalingRules, MetricTargetType};
use crate::kinds::batch::JobSpec;
use crate::kinds::core::{ConfigMap, Endpoints, Node, Secret, Service, ServiceType};
use crate::kinds::pod::{
    Container, KeyToPath, NodeSelectorOperator, NodeSelectorTerm, PodAffinityTerm, PodSpec,
    PodTemplateSpec, Probe, RestartPolicy, TolerationOperator, Volume,
};
use crate::meta::{ObjectMeta, StringMap};
use crate::names;
use crate::object::Object;
use crate::quantity::Quantity;
use crate::selector::{LabelSelector, Selector};

/// Collected (pointer, reason) pairs for one object.
#[derive(Debug, Default)]
pub(crate) struct Errs(pub Vec<(String, String)>);

impl Errs {
    fn add(&mut self, ptr: impl Into<String>, reason: impl Into<String>) {
        self.0.push((ptr.into(), reason.into()));
    }
    fn check(&mut self, ptr: impl Into<String>, r: Result<(), String>) {
        if let Err(e) = r {
            self.add(ptr, e);
        }
    }
}

/// Escapes a map key for a JSON pointer (RFC 6901).
fn esc(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// ConfigMaps and Secrets are limited to 1 MiB by etcd's value size in Kubernetes.
const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Kubernetes' limit on the total size of annotations.
const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// Runs every per-object rule.
pub(crate) fn check_object(obj: &Object, e: &mut Errs) {
    let info = obj.info();
    check_meta(obj.meta(), info.kind, info.namespaced, e);
    match obj {
        Object::Namespace(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
        }
        Object::Pod(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            check_pod_spec(&o.spec, "/spec", e);
        }
        Object::Service(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            check_service(o, e);
        }
        Object::Endpoints(o) => check_endpoints(o, e),
        Object::ConfigMap(o) => check_config_map(o, e),
        Object::Secret(o) => check_secret(o, e),
        Object::Node(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            check_node(o, e);
        }
        Object::Deployment(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            let s = &o.spec;
            nonneg_opt(s.replicas, "/spec/replicas", e);
            check_workload(&s.selector, &s.template, "/spec", true, e);
            if let Some(st) = &s.strategy {
                check_strategy(st, "/spec/strategy", false, e);
            }
            nonneg_opt(s.min_ready_seconds, "/spec/minReadySeconds", e);
            nonneg_opt(s.revision_history_limit, "/spec/revisionHistoryLimit", e);
            if let Some(p) = s.progress_deadline_seconds
                && p <= s.min_ready_seconds.unwrap_or(0)
            {
                e.add(
                    "/spec/progressDeadlineSeconds",
                    "must be greater than minReadySeconds",
                );
            }
        }
        Object::ReplicaSet(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            nonneg_opt(o.spec.replicas, "/spec/replicas", e);
            nonneg_opt(o.spec.min_ready_seconds, "/spec/minReadySeconds", e);
            check_workload(&o.spec.selector, &o.spec.template, "/spec", true, e);
        }
        Object::DaemonSet(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            check_workload(&o.spec.selector, &o.spec.template, "/spec", true, e);
            if let Some(st) = &o.spec.update_strategy {
                check_strategy(st, "/spec/updateStrategy", true, e);
            }
            nonneg_opt(o.spec.min_ready_seconds, "/spec/minReadySeconds", e);
            nonneg_opt(
                o.spec.revision_history_limit,
                "/spec/revisionHistoryLimit",
                e,
            );
        }
        Object::Job(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            check_job(&o.spec, "/spec", e);
        }
        Object::CronJob(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            // The CronJob controller appends an 11-character suffix to name its Jobs.
            if o.metadata.name.len() > 52 {
                e.add("/metadata/name", "must be no more than 52 characters");
            }
            let s = &o.spec;
            if let Err(err) = cron::validate_schedule(&s.schedule) {
                e.add("/spec/schedule", reason_of(err));
            }
            if let Some(tz) = &s.time_zone
                && let Err(err) = cron::validate_time_zone(tz)
            {
                // `cron` reports a bad time zone with the same error as a bad schedule,
                // whose message would call the zone an "invalid schedule".
                let reason = match err {
                    crate::Error::Schedule { reason, .. } => {
                        format!("invalid time zone {tz:?}: {reason}")
                    }
                    other => reason_of(other),
                };
                e.add("/spec/timeZone", reason);
            }
            nonneg_opt(
                s.starting_deadline_seconds,
                "/spec/startingDeadlineSeconds",
                e,
            );
            nonneg_opt(
                s.successful_jobs_history_limit,
                "/spec/successfulJobsHistoryLimit",
                e,
            );
            nonneg_opt(
                s.failed_jobs_history_limit,
                "/spec/failedJobsHistoryLimit",
                e,
            );
            if let Some(m) = &s.job_template.metadata {
                check_labels(m.labels.as_ref(), "/spec/jobTemplate/metadata/labels", e);
            }
            check_job(&s.job_template.spec, "/spec/jobTemplate/spec", e);
        }
        Object::HorizontalPodAutoscaler(o) => {
            if o.status.is_some() {
                status_in_git(e);
            }
            check_hpa(o, e);
        }
    }
}

/// The message of a crate error without the value repeated when it already names it.
fn reason_of(err: crate::Error) -> String {
    err.to_string()
}

fn status_in_git(e: &mut Errs) {
    e.add(
        "/status",
        "status is written by coxswain from what really runs, never by Git; remove it",
    );
}

fn nonneg_opt<T: Into<i64> + Copy>(v: Option<T>, ptr: &str, e: &mut Errs) {
    if let Some(v) = v
        && v.into() < 0
    {
        e.add(ptr, "must be greater than or equal to 0");
    }
}

fn positive(v: i64, ptr: &str, e: &mut Errs) {
    if v <= 0 {
        e.add(ptr, "must be greater than 0");
    }
}

fn check_meta(m: &ObjectMeta, kind: &str, namespaced: bool, e: &mut Errs) {
    let name_rule = match kind {
        "Namespace" => names::is_dns1123_label(&m.name),
        "Service" => names::is_dns1035_label(&m.name),
        _ => names::is_dns1123_subdomain(&m.name),
    };
    e.check("/metadata/name", name_rule);
    match (&m.namespace, namespaced) {
        (Some(ns), true) => e.check("/metadata/namespace", names::is_dns1123_label(ns)),
        (Some(_), false) => e.add(
            "/metadata/namespace",
            format!("{kind} is cluster-scoped and must not have a namespace"),
        ),
        (None, _) => {}
    }
    check_labels(m.labels.as_ref(), "/metadata/labels", e);
    if let Some(ann) = &m.annotations {
        let mut total = 0usize;
        for (k, v) in ann {
            e.check(
                format!("/metadata/annotations/{}", esc(k)),
                names::is_qualified_name(k),
            );
            total = total.saturating_add(k.len()).saturating_add(v.len());
        }
        if total > MAX_ANNOTATION_BYTES {
            e.add(
                "/metadata/annotations",
                format!("annotations are {total} bytes, more than the 262144 allowed"),
            );
        }
    }
    // The API server owns these fields; a manifest that sets them was copied from a live
    // cluster, and applying it would fight the server (or, for resourceVersion, fail CAS).
    let system = [
        ("uid", m.uid.is_some()),
        ("resourceVersion", m.resource_version.is_some()),
        ("generation", m.generation.is_some()),
        ("deletionTimestamp", m.deletion_timestamp.is_some()),
        ("creationTimestamp", m.creation_timestamp.is_some()),
        ("ownerReferences", m.owner_references.is_some()),
    ];
    for (field, set) in system {
        if set {
            e.add(
                format!("/metadata/{field}"),
                format!("{field} is set by coxswain and must not be written in Git"),
            );
        }
    }
    if let Some(fins) = &m.finalizers {
        for (i, f) in fins.iter().enumerate() {
            e.check(
                format!("/metadata/finalizers/{i}"),
                names::is_qualified_name(f),
            );
        }
    }
}

fn check_labels(labels: Option<&StringMap>, ptr: &str, e: &mut Errs) {
    for (k, v) in labels.into_iter().flatten() {
        let p = format!("{ptr}/{}", esc(k));
        e.check(p.clone(), names::is_qualified_name(k));
        e.check(p, names::is_label_value(v));
    }
}

/// A workload's selector must be valid, non-empty and match its own template, or the
/// controller would never see the pods it creates (Kubernetes: "selector does not match
/// template labels").
fn check_workload(
    sel: &LabelSelector,
    tpl: &PodTemplateSpec,
    ptr: &str,
    always_restart: bool,
    e: &mut Errs,
) {
    let labels = tpl.metadata.as_ref().and_then(|m| m.labels.clone());
    check_labels(
        labels.as_ref(),
        &format!("{ptr}/template/metadata/labels"),
        e,
    );
    check_selector(sel, &format!("{ptr}/selector"), labels.as_ref(), e);
    if always_restart
        && let Some(rp) = tpl.spec.restart_policy
        && rp != RestartPolicy::Always
    {
        e.add(
            format!("{ptr}/template/spec/restartPolicy"),
            format!("{rp:?} is not supported here: only \"Always\" is"),
        );
    }
    check_pod_spec(&tpl.spec, &format!("{ptr}/template/spec"), e);
}

fn check_selector(
    sel: &LabelSelector,
    ptr: &str,
    template_labels: Option<&StringMap>,
    e: &mut Errs,
) {
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty());
    if empty {
        e.add(ptr, "empty selector is invalid: it would select every pod");
        return;
    }
    match Selector::from_label_selector(sel) {
        Err(err) => e.add(ptr, reason_of(err)),
        Ok(s) => {
            let none = StringMap::new();
            if !s.matches(template_labels.unwrap_or(&none)) {
                e.add(
                    ptr,
                    "selector does not match template labels (`template.metadata.labels`)",
                );
            }
        }
    }
}

fn check_strategy(st: &DeploymentStrategy, ptr: &str, daemonset: bool, e: &mut Errs) {
    let ty = st.type_.unwrap_or_default();
    match (ty, daemonset) {
        (StrategyType::Recreate, true) | (StrategyType::OnDelete, false) => {
            e.add(
                format!("{ptr}/type"),
                format!("{ty:?} is not supported here"),
            );
        }
        _ => {}
    }
    let Some(ru) = &st.rolling_update else { return };
    if ty != StrategyType::RollingUpdate {
        e.add(
            format!("{ptr}/rollingUpdate"),
            format!("may not be specified when strategy `type` is '{ty:?}'"),
        );
        return;
    }
    let mut check_budget = |v: &Option<IntOrString>, field: &str| -> Option<bool> {
        let v = v.as_ref()?;
        let p = format!("{ptr}/rollingUpdate/{field}");
        match v {
            IntOrString::Int(n) if *n < 0 => {
                e.add(p, "must be greater than or equal to 0");
                None
            }
            IntOrString::Int(n) => Some(*n == 0),
            IntOrString::String(s) => match s.strip_suffix('%').map(str::parse::<u32>) {
                Some(Ok(pct)) if pct <= 100 => Some(pct == 0),
                Some(Ok(_)) => {
                    e.add(p, "must not be greater than 100%");
                    None
                }
                _ => {
                    e.add(
                        p,
                        format!("{s:?} must be an integer or a percentage (e.g. '25%')"),
                    );
                    None
                }
            },
        }
    };
    let surge_zero = check_budget(&ru.max_surge, "maxSurge");
    let unavail_zero = check_budget(&ru.max_unavailable, "maxUnavailable");
    if !daemonset && surge_zero == Some(true) && unavail_zero == Some(true) {
        e.add(
            format!("{ptr}/rollingUpdate/maxUnavailable"),
            "may not be 0 when `maxSurge` is 0",
        );
    }
}

fn check_job(s: &JobSpec, ptr: &str, e: &mut Errs) {
    nonneg_opt(s.parallelism, &format!("{ptr}/parallelism"), e);
    nonneg_opt(s.completions, &format!("{ptr}/completions"), e);
    nonneg_opt(s.backoff_limit, &format!("{ptr}/backoffLimit"), e);
    nonneg_opt(
        s.ttl_seconds_after_finished,
        &format!("{ptr}/ttlSecondsAfterFinished"),
        e,
    );
    if let Some(d) = s.active_deadline_seconds {
        positive(d, &format!("{ptr}/activeDeadlineSeconds"), e);
    }
    let labels = s.template.metadata.as_ref().and_then(|m| m.labels.clone());
    check_labels(
        labels.as_ref(),
        &format!("{ptr}/template/metadata/labels"),
        e,
    );
    if let Some(sel) = &s.selector {
        if s.manual_selector != Some(true) {
            e.add(
                format!("{ptr}/selector"),
                "`selector` will be auto-generated; set `manualSelector: true` to set it yourself",
            );
        } else {
            check_selector(sel, &format!("{ptr}/selector"), labels.as_ref(), e);
        }
    }
    match s.template.spec.restart_policy {
        Some(RestartPolicy::OnFailure) | Some(RestartPolicy::Never) => {}
        other => e.add(
            format!("{ptr}/template/spec/restartPolicy"),
            format!(
                "{} is not supported for a Job: use \"OnFailure\" or \"Never\"",
                other.map_or_else(|| "unset (Always)".to_string(), |p| format!("{p:?}"))
            ),
        ),
    }
    check_pod_spec(&s.template.spec, &format!("{ptr}/template/spec"), e);
}

pub(crate) fn check_pod_spec(s: &PodSpec, ptr: &str, e: &mut Errs) {
    if s.containers.is_empty() {
        e.add(
            format!("{ptr}/containers"),
            "must have at least one container",
        );
    }
    let mut volumes = HashSet::new();
    for (i, v) in s.volumes.iter().flatten().enumerate() {
        let p = format!("{ptr}/volumes/{i}");
        if !volumes.insert(v.name.as_str()) {
            e.add(
                format!("{p}/name"),
                format!("duplicate volume name {:?}", v.name),
            );
        }
        check_volume(v, &p, e);
    }
    let mut names = HashSet::new();
    let groups = [
        (
            "initContainers",
            s.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", s.containers.as_slice()),
    ];
    for (field, list) in groups {
        for (i, c) in list.iter().enumerate() {
            let p = format!("{ptr}/{field}/{i}");
            if !names.insert(c.name.as_str()) {
                e.add(
                    format!("{p}/name"),
                    format!("duplicate container name {:?}", c.name),
                );
            }
            check_container(c, &p, field == "initContainers", &volumes, e);
        }
    }
    if let Some(g) = s.termination_grace_period_seconds {
        nonneg_opt(Some(g), &format!("{ptr}/terminationGracePeriodSeconds"), e);
    }
    if let Some(d) = s.active_deadline_seconds {
        positive(d, &format!("{ptr}/activeDeadlineSeconds"), e);
    }
    if let Some(n) = &s.node_name {
        e.check(format!("{ptr}/nodeName"), names::is_dns1123_subdomain(n));
    }
    check_labels(s.node_selector.as_ref(), &format!("{ptr}/nodeSelector"), e);
    if let Some(h) = &s.hostname {
        e.check(format!("{ptr}/hostname"), names::is_dns1123_label(h));
    }
    if let Some(h) = &s.subdomain {
        e.check(format!("{ptr}/subdomain"), names::is_dns1123_label(h));
    }
    if let Some(aff) = &s.affinity {
        let ap = format!("{ptr}/affinity");
        if let Some(na) = &aff.node_affinity {
            let np = format!("{ap}/nodeAffinity");
            if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                let rp = format!("{np}/requiredDuringSchedulingIgnoredDuringExecution");
                if req.node_selector_terms.is_empty() {
                    e.add(
                        format!("{rp}/nodeSelectorTerms"),
                        "must have at least one node selector term",
                    );
                }
                for (i, t) in req.node_selector_terms.iter().enumerate() {
                    check_node_term(t, &format!("{rp}/nodeSelectorTerms/{i}"), e);
                }
            }
            for (i, t) in na
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .enumerate()
            {
                let tp = format!("{np}/preferredDuringSchedulingIgnoredDuringExecution/{i}");
                check_weight(t.weight, &format!("{tp}/weight"), e);
                check_node_term(&t.preference, &format!("{tp}/preference"), e);
            }
        }
        for (field, pa) in [
            ("podAffinity", &aff.pod_affinity),
            ("podAntiAffinity", &aff.pod_anti_affinity),
        ] {
            let Some(pa) = pa else { continue };
            let pp = format!("{ap}/{field}");
            for (i, t) in pa
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .enumerate()
            {
                check_pod_affinity_term(
                    t,
                    &format!("{pp}/requiredDuringSchedulingIgnoredDuringExecution/{i}"),
                    e,
                );
            }
            for (i, t) in pa
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .enumerate()
            {
                let tp = format!("{pp}/preferredDuringSchedulingIgnoredDuringExecution/{i}");
                check_weight(t.weight, &format!("{tp}/weight"), e);
                check_pod_affinity_term(&t.pod_affinity_term, &format!("{tp}/podAffinityTerm"), e);
            }
        }
    }
    for (i, t) in s.tolerations.iter().flatten().enumerate() {
        let p = format!("{ptr}/tolerations/{i}");
        if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty()) {
            e.check(format!("{p}/key"), names::is_qualified_name(k));
        } else if t.operator != Some(TolerationOperator::Exists) {
            e.add(
                format!("{p}/operator"),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            );
        }
        if t.operator == Some(TolerationOperator::Exists)
            && t.value.as_deref().is_some_and(|v| !v.is_empty())
        {
            e.add(
                format!("{p}/value"),
                "value must be empty when `operator` is 'Exists'",
            );
        }
        if let Some(v) = &t.value {
            e.check(format!("{p}/value"), names::is_label_value(v));
        }
    }
    for (i, c) in s.topology_spread_constraints.iter().flatten().enumerate() {
        let p = format!("{ptr}/topologySpreadConstraints/{i}");
        positive(c.max_skew.into(), &format!("{p}/maxSkew"), e);
        if let Some(m) = c.min_domains {
            positive(m.into(), &format!("{p}/minDomains"), e);
        }
        e.check(
            format!("{p}/topologyKey"),
            names::is_qualified_name(&c.topology_key),
        );
        if let Some(sel) = &c.label_selector
            && let Err(err) = Selector::from_label_selector(sel)
        {
            e.add(format!("{p}/labelSelector"), reason_of(err));
        }
    }
    if let Some(sc) = &s.security_context {
        nonneg_opt(
            sc.run_as_user,
            &format!("{ptr}/securityContext/runAsUser"),
            e,
        );
        nonneg_opt(
            sc.run_as_group,
            &format!("{ptr}/securityContext/runAsGroup"),
            e,
        );
    }
}

fn check_weight(w: i32, ptr: &str, e: &mut Errs) {
    if !(1..=100).contains(&w) {
        e.add(ptr, "must be in the range 1-100");
    }
}

fn check_node_term(t: &NodeSelectorTerm, ptr: &str, e: &mut Errs) {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    for (field, list) in [("matchExpressions", exprs), ("matchFields", fields)] {
        for (i, r) in list.iter().enumerate() {
            let p = format!("{ptr}/{field}/{i}");
            if field == "matchFields" && r.key != "metadata.name" {
                e.add(
                    format!("{p}/key"),
                    "only \"metadata.name\" is supported in matchFields",
                );
            } else if field == "matchExpressions" {
                e.check(format!("{p}/key"), names::is_qualified_name(&r.key));
            }
            let n = r.values.as_ref().map_or(0, Vec::len);
            match r.operator {
                NodeSelectorOperator::In | NodeSelectorOperator::NotIn if n == 0 => e.add(
                    format!("{p}/values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                ),
                NodeSelectorOperator::Exists | NodeSelectorOperator::DoesNotExist if n > 0 => e
                    .add(
                        format!("{p}/values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ),
                NodeSelectorOperator::Gt | NodeSelectorOperator::Lt => {
                    let ok = r.values.as_ref().is_some_and(|v| {
                        v.len() == 1 && v.first().is_some_and(|x| x.parse::<i64>().is_ok())
                    });
                    if !ok {
                        e.add(
                            format!("{p}/values"),
                            "must be specified single value when `operator` is 'Lt' or 'Gt', and it must be an integer",
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

fn check_pod_affinity_term(t: &PodAffinityTerm, ptr: &str, e: &mut Errs) {
    if t.topology_key.is_empty() {
        e.add(format!("{ptr}/topologyKey"), "can not be empty");
    } else {
        e.check(
            format!("{ptr}/topologyKey"),
            names::is_qualified_name(&t.topology_key),
        );
    }
    for (field, sel) in [
        ("labelSelector", &t.label_selector),
        ("namespaceSelector", &t.namespace_selector),
    ] {
        if let Some(sel) = sel
            && let Err(err) = Selector::from_label_selector(sel)
        {
            e.add(format!("{ptr}/{field}"), reason_of(err));
        }
    }
    for (i, ns) in t.namespaces.iter().flatten().enumerate() {
        e.check(format!("{ptr}/namespaces/{i}"), names::is_dns1123_label(ns));
    }
}

fn check_volume(v: &Volume, p: &str, e: &mut Errs) {
    e.check(format!("{p}/name"), names::is_dns1123_label(&v.name));
    let sources = [
        v.empty_dir.is_some(),
        v.host_path.is_some(),
        v.config_map.is_some(),
        v.secret.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    match sources {
        0 => e.add(
            p,
            "must specify a volume type (emptyDir, hostPath, configMap or secret)",
        ),
        1 => {}
        _ => e.add(p, "may not specify more than 1 volume type"),
    }
    if let Some(ed) = &v.empty_dir
        && let Some(q) = &ed.size_limit
    {
        check_quantity(q, &format!("{p}/emptyDir/sizeLimit"), e);
    }
    if let Some(hp) = &v.host_path {
        if !hp.path.starts_with('/') {
            e.add(format!("{p}/hostPath/path"), "must be an absolute path");
        }
        if hp.path.split('/').any(|c| c == "..") {
            e.add(format!("{p}/hostPath/path"), "must not contain '..'");
        }
    }
    let items = |items: &Option<Vec<KeyToPath>>, mode: Option<i32>, src: &str, e: &mut Errs| {
        if let Some(m) = mode {
            check_mode(m, &format!("{p}/{src}/defaultMode"), e);
        }
        for (i, it) in items.iter().flatten().enumerate() {
            let ip = format!("{p}/{src}/items/{i}");
            e.check(format!("{ip}/key"), names::is_config_map_key(&it.key));
            check_relative_path(&it.path, &format!("{ip}/path"), e);
            if let Some(m) = it.mode {
                check_mode(m, &format!("{ip}/mode"), e);
            }
        }
    };
    if let Some(cm) = &v.config_map {
        e.check(
            format!("{p}/configMap/name"),
            names::is_dns1123_subdomain(&cm.name),
        );
        items(&cm.items, cm.default_mode, "configMap", e);
    }
    if let Some(s) = &v.secret {
        e.check(
            format!("{p}/secret/secretName"),
            names::is_dns1123_subdomain(&s.secret_name),
        );
        items(&s.items, s.default_mode, "secret", e);
    }
}

fn check_mode(m: i32, ptr: &str, e: &mut Errs) {
    if !(0..=0o777).contains(&m) {
        e.add(
            ptr,
            "must be a number between 0 and 0777 (octal), both inclusive",
        );
    }
}

fn check_relative_path(path: &str, ptr: &str, e: &mut Errs) {
    if path.is_empty() {
        e.add(ptr, "must not be empty");
    } else if path.starts_with('/') {
        e.add(ptr, "must be a relative path");
    } else if path.split('/').any(|c| c == "..") {
        e.add(ptr, "must not contain '..'");
    }
}

fn check_port(port: i32, ptr: &str, e: &mut Errs) {
    if !(1..=65535).contains(&port) {
        e.add(ptr, "must be between 1 and 65535, inclusive");
    }
}

fn check_container(c: &Container, p: &str, init: bool, volumes: &HashSet<&str>, e: &mut Errs) {
    e.check(format!("{p}/name"), names::is_dns1123_label(&c.name));
    if c.image.trim().is_empty() {
        e.add(format!("{p}/image"), "must not be empty");
    } else if c.image.trim() != c.image {
        e.add(
            format!("{p}/image"),
            "must not have leading or trailing whitespace",
        );
    }
    if let Some(wd) = &c.working_dir
        && !wd.starts_with('/')
    {
        e.add(format!("{p}/workingDir"), "must be an absolute path");
    }
    let mut port_names = HashSet::new();
    for (i, port) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{p}/ports/{i}");
        check_port(port.container_port, &format!("{pp}/containerPort"), e);
        if let Some(h) = port.host_port
            && h != 0
        {
            check_port(h, &format!("{pp}/hostPort"), e);
        }
        if let Some(n) = &port.name {
            e.check(format!("{pp}/name"), names::is_port_name(n));
            if !port_names.insert(n.as_str()) {
                e.add(format!("{pp}/name"), format!("duplicate port name {n:?}"));
            }
        }
    }
    for (i, v) in c.env.iter().flatten().enumerate() {
        let ep = format!("{p}/env/{i}");
        e.check(format!("{ep}/name"), names::is_env_var_name(&v.name));
        match (&v.value, &v.value_from) {
            (Some(val), Some(_)) if !val.is_empty() => e.add(
                format!("{ep}/valueFrom"),
                "may not be specified when `value` is not empty",
            ),
            (_, Some(from)) => {
                let n = [
                    from.secret_key_ref.is_some(),
                    from.config_map_key_ref.is_some(),
                    from.field_ref.is_some(),
                    from.resource_field_ref.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count();
                if n != 1 {
                    e.add(
                        format!("{ep}/valueFrom"),
                        "must specify exactly one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                    );
                }
                for (field, r) in [
                    ("secretKeyRef", &from.secret_key_ref),
                    ("configMapKeyRef", &from.config_map_key_ref),
                ] {
                    if let Some(r) = r {
                        e.check(
                            format!("{ep}/valueFrom/{field}/key"),
                            names::is_config_map_key(&r.key),
                        );
                    }
                }
                if let Some(f) = &from.field_ref {
                    check_field_path(
                        &f.field_path,
                        &format!("{ep}/valueFrom/fieldRef/fieldPath"),
                        e,
                    );
                }
                if let Some(r) = &from.resource_field_ref {
                    const OK: [&str; 6] = [
                        "limits.cpu",
                        "limits.memory",
                        "limits.ephemeral-storage",
                        "requests.cpu",
                        "requests.memory",
                        "requests.ephemeral-storage",
                    ];
                    if !OK.contains(&r.resource.as_str()) {
                        e.add(
                            format!("{ep}/valueFrom/resourceFieldRef/resource"),
                            format!(
                                "unsupported resource {:?}: supported values: {}",
                                r.resource,
                                OK.join(", ")
                            ),
                        );
                    }
                    if let Some(d) = &r.divisor {
                        check_quantity(d, &format!("{ep}/valueFrom/resourceFieldRef/divisor"), e);
                    }
                }
            }
            _ => {}
        }
    }
    for (i, f) in c.env_from.iter().flatten().enumerate() {
        let fp = format!("{p}/envFrom/{i}");
        if f.config_map_ref.is_some() == f.secret_ref.is_some() {
            e.add(
                fp.clone(),
                "must specify exactly one of: `configMapRef` or `secretRef`",
            );
        }
        if let Some(prefix) = f.prefix.as_deref().filter(|x| !x.is_empty()) {
            e.check(format!("{fp}/prefix"), names::is_env_var_name(prefix));
        }
    }
    if let Some(r) = &c.resources {
        check_resources(r, &format!("{p}/resources"), e);
    }
    let probes = [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ];
    for (field, probe) in probes {
        let Some(pr) = probe else { continue };
        let pp = format!("{p}/{field}");
        if init {
            e.add(pp, "may not be set for init containers");
            continue;
        }
        check_probe(pr, &pp, field != "readinessProbe", c, e);
    }
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        let hp = format!("{p}/lifecycle/preStop");
        let n = [
            h.exec.is_some(),
            h.http_get.is_some(),
            h.tcp_socket.is_some(),
            h.sleep.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            e.add(hp.clone(), "must specify exactly one handler type");
        }
        if let Some(s) = &h.sleep {
            nonneg_opt(Some(s.seconds), &format!("{hp}/sleep/seconds"), e);
        }
    }
    let mut paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = format!("{p}/volumeMounts/{i}");
        if !volumes.contains(m.name.as_str()) {
            e.add(
                format!("{mp}/name"),
                format!("volume {:?} not found in the pod's volumes", m.name),
            );
        }
        if !m.mount_path.starts_with('/') {
            e.add(format!("{mp}/mountPath"), "must be an absolute path");
        } else if !paths.insert(m.mount_path.as_str()) {
            e.add(format!("{mp}/mountPath"), "must be unique");
        }
        if let Some(sp) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            check_relative_path(sp, &format!("{mp}/subPath"), e);
        }
    }
    if let Some(sc) = &c.security_context {
        let sp = format!("{p}/securityContext");
        nonneg_opt(sc.run_as_user, &format!("{sp}/runAsUser"), e);
        nonneg_opt(sc.run_as_group, &format!("{sp}/runAsGroup"), e);
        if sc.run_as_non_root == Some(true) && sc.run_as_user == Some(0) {
            e.add(
                format!("{sp}/runAsNonRoot"),
                "must be false when runAsUser is 0 (root)",
            );
        }
        if let Some(caps) = &sc.capabilities {
            for (field, list) in [("add", &caps.add), ("drop", &caps.drop)] {
                for (i, cap) in list.iter().flatten().enumerate() {
                    let ok = cap == "ALL"
                        || (cap.len() > 1
                            && cap
                                .trim_start_matches("CAP_")
                                .chars()
                                .all(|ch| ch.is_ascii_uppercase() || ch == '_'));
                    if !ok {
                        e.add(
                            format!("{sp}/capabilities/{field}/{i}"),
                            format!("{cap:?} is not a capability name (e.g. NET_BIND_SERVICE)"),
                        );
                    }
                }
            }
        }
    }
}

/// The downward-API paths Kubernetes accepts for `env[].valueFrom.fieldRef`.
fn check_field_path(path: &str, ptr: &str, e: &mut Errs) {
    const SIMPLE: [&str; 9] = [
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
    ];
    if SIMPLE.contains(&path) {
        return;
    }
    for prefix in ["metadata.labels['", "metadata.annotations['"] {
        if let Some(rest) = path.strip_prefix(prefix)
            && let Some(key) = rest.strip_suffix("']")
        {
            e.check(ptr, names::is_qualified_name(key));
            return;
        }
    }
    e.add(
        ptr,
        format!(
            "unsupported fieldPath {path:?}: supported values: {}, metadata.labels['<KEY>'], metadata.annotations['<KEY>']",
            SIMPLE.join(", ")
        ),
    );
}

fn check_probe(pr: &Probe, p: &str, success_must_be_one: bool, c: &Container, e: &mut Errs) {
    let n = [
        pr.exec.is_some(),
        pr.http_get.is_some(),
        pr.tcp_socket.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if n != 1 {
        e.add(
            p,
            "must specify exactly one handler type: `exec`, `httpGet` or `tcpSocket`",
        );
    }
    nonneg_opt(
        pr.initial_delay_seconds,
        &format!("{p}/initialDelaySeconds"),
        e,
    );
    for (field, v) in [
        ("periodSeconds", pr.period_seconds),
        ("timeoutSeconds", pr.timeout_seconds),
        ("successThreshold", pr.success_threshold),
        ("failureThreshold", pr.failure_threshold),
    ] {
        if let Some(v) = v {
            positive(v.into(), &format!("{p}/{field}"), e);
        }
    }
    if success_must_be_one && pr.success_threshold.is_some_and(|s| s != 1) {
        e.add(
            format!("{p}/successThreshold"),
            "must be 1 for liveness and startup probes",
        );
    }
    if let Some(g) = pr.termination_grace_period_seconds {
        positive(g, &format!("{p}/terminationGracePeriodSeconds"), e);
    }
    let port = pr
        .http_get
        .as_ref()
        .map(|h| (&h.port, "httpGet"))
        .or_else(|| pr.tcp_socket.as_ref().map(|t| (&t.port, "tcpSocket")));
    if let Some((port, field)) = port {
        check_target_port(port, &format!("{p}/{field}/port"), Some(c), e);
    }
    if let Some(cmd) = pr
        .exec
        .as_ref()
        .map(|x| x.command.as_deref().unwrap_or(&[]))
        && cmd.is_empty()
    {
        e.add(format!("{p}/exec/command"), "must not be empty");
    }
}

/// A port given by number or by name; a name must be a container port of `c`, when known.
fn check_target_port(port: &IntOrString, ptr: &str, c: Option<&Container>, e: &mut Errs) {
    match port {
        IntOrString::Int(n) => check_port(*n, ptr, e),
        IntOrString::String(name) => {
            if let Err(r) = names::is_port_name(name) {
                e.add(ptr, r);
            } else if let Some(c) = c {
                let found = c
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.as_deref() == Some(name.as_str()));
                if !found {
                    e.add(
                        ptr,
                        format!(
                            "port name {name:?} is not a named port of container {:?}",
                            c.name
                        ),
                    );
                }
            }
        }
    }
}

fn check_quantity(q: &Quantity, ptr: &str, e: &mut Errs) {
    match q.parse() {
        Err(err) => e.add(ptr, reason_of(err)),
        Ok(_) if q.is_negative() => e.add(ptr, "must be greater than or equal to 0"),
        Ok(_) => {}
    }
}

/// Resource names a container may request; `hugepages-<size>` is also accepted.
const RESOURCE_NAMES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

fn check_resources(r: &crate::kinds::pod::ResourceRequirements, p: &str, e: &mut Errs) {
    let empty = BTreeMap::new();
    let limits = r.limits.as_ref().unwrap_or(&empty);
    let requests = r.requests.as_ref().unwrap_or(&empty);
    for (field, map) in [("limits", limits), ("requests", requests)] {
        for (name, q) in map {
            let qp = format!("{p}/{field}/{}", esc(name));
            if !RESOURCE_NAMES.contains(&name.as_str()) && !name.starts_with("hugepages-") {
                e.add(
                    qp,
                    format!(
                        "unsupported resource {name:?}: supported values: cpu, memory, ephemeral-storage, hugepages-<size>"
                    ),
                );
                continue;
            }
            check_quantity(q, &qp, e);
        }
    }
    for (name, req) in requests {
        let Some(lim) = limits.get(name) else {
            continue;
        };
        if let (Ok(rv), Ok(lv)) = (req.milli_value(), lim.milli_value())
            && rv > lv
        {
            e.add(
                format!("{p}/requests/{}", esc(name)),
                format!(
                    "must be less than or equal to {name} limit of {}",
                    lim.as_str()
                ),
            );
        }
    }
}

fn check_service(s: &Service, e: &mut Errs) {
    let spec = &s.spec;
    let ty = spec.type_.unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && !headless {
        e.add(
            "/spec/ports",
            "must have at least one port (or clusterIP: None)",
        );
    }
    if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()) {
        if ip != "None" && ip.parse::<std::net::IpAddr>().is_err() {
            e.add(
                "/spec/clusterIP",
                format!("{ip:?} must be a valid IP address or \"None\""),
            );
        }
        if headless && ty == ServiceType::NodePort {
            e.add(
                "/spec/clusterIP",
                "may not be \"None\" for a NodePort service",
            );
        }
    }
    for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
        if ip != "None" && ip.parse::<std::net::IpAddr>().is_err() {
            e.add(
                format!("/spec/clusterIPs/{i}"),
                format!("{ip:?} must be a valid IP address"),
            );
        }
    }
    check_labels(spec.selector.as_ref(), "/spec/selector", e);
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let pp = format!("/spec/ports/{i}");
        match &port.name {
            Some(n) => {
                e.check(format!("{pp}/name"), crate::names::is_dns1123_label(n));
                if !names.insert(n.as_str()) {
                    e.add(format!("{pp}/name"), format!("duplicate port name {n:?}"));
                }
            }
            None if ports.len() > 1 => e.add(
                format!("{pp}/name"),
                "must be specified when there is more than one port",
            ),
            None => {}
        }
        check_port(port.port, &format!("{pp}/port"), e);
        if !seen.insert((port.port, port.protocol.unwrap_or_default())) {
            e.add(format!("{pp}/port"), "duplicate port and protocol");
        }
        if let Some(tp) = &port.target_port {
            check_target_port(tp, &format!("{pp}/targetPort"), None, e);
        }
        if let Some(np) = port.node_port {
            if ty != ServiceType::NodePort {
                e.add(
                    format!("{pp}/nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                );
            } else if !(30000..=32767).contains(&np) {
                e.add(
                    format!("{pp}/nodePort"),
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                );
            }
        }
    }
}

fn check_endpoints(o: &Endpoints, e: &mut Errs) {
    for (i, s) in o.subsets.iter().flatten().enumerate() {
        let sp = format!("/subsets/{i}");
        for (field, list) in [
            ("addresses", &s.addresses),
            ("notReadyAddresses", &s.not_ready_addresses),
        ] {
            for (j, a) in list.iter().flatten().enumerate() {
                if a.ip.parse::<std::net::IpAddr>().is_err() {
                    e.add(
                        format!("{sp}/{field}/{j}/ip"),
                        format!("{:?} must be a valid IP address", a.ip),
                    );
                }
            }
        }
        let many = s.ports.as_ref().map_or(0, Vec::len) > 1;
        for (j, p) in s.ports.iter().flatten().enumerate() {
            check_port(p.port, &format!("{sp}/ports/{j}/port"), e);
            if many && p.name.is_none() {
                e.add(
                    format!("{sp}/ports/{j}/name"),
                    "must be specified when there is more than one port",
                );
            }
        }
    }
}

fn check_data_keys<'a>(keys: impl Iterator<Item = &'a String>, ptr: &str, e: &mut Errs) {
    for k in keys {
        e.check(format!("{ptr}/{}", esc(k)), names::is_config_map_key(k));
    }
}

fn check_base64(map: &BTreeMap<String, String>, ptr: &str, e: &mut Errs) -> usize {
    let mut size = 0usize;
    for (k, v) in map {
        match base64::engine::general_purpose::STANDARD.decode(v.as_bytes()) {
            Ok(bytes) => size = size.saturating_add(bytes.len()),
            Err(err) => e.add(
                format!("{ptr}/{}", esc(k)),
                format!("must be base64 encoded: {err}"),
            ),
        }
    }
    size
}

fn check_config_map(o: &ConfigMap, e: &mut Errs) {
    let empty = BTreeMap::new();
    let data = o.data.as_ref().unwrap_or(&empty);
    let bin = o.binary_data.as_ref().unwrap_or(&empty);
    check_data_keys(data.keys(), "/data", e);
    check_data_keys(bin.keys(), "/binaryData", e);
    for k in bin.keys() {
        if data.contains_key(k) {
            e.add(
                format!("/binaryData/{}", esc(k)),
                format!("duplicate of key {k:?} present in `data`"),
            );
        }
    }
    let size = data
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        .saturating_add(check_base64(bin, "/binaryData", e));
    if size > MAX_CONFIG_BYTES {
        e.add(
            "",
            format!("ConfigMap is {size} bytes, more than the 1048576 allowed"),
        );
    }
}

fn check_secret(o: &Secret, e: &mut Errs) {
    let empty = BTreeMap::new();
    let data = o.data.as_ref().unwrap_or(&empty);
    let string_data = o.string_data.as_ref().unwrap_or(&empty);
    check_data_keys(data.keys(), "/data", e);
    check_data_keys(string_data.keys(), "/stringData", e);
    let size = check_base64(data, "/data", e)
        .saturating_add(string_data.values().map(String::len).sum::<usize>());
    if size > MAX_CONFIG_BYTES {
        e.add(
            "",
            format!("Secret is {size} bytes, more than the 1048576 allowed"),
        );
    }
    let has = |k: &str| data.contains_key(k) || string_data.contains_key(k);
    let ty = o.type_.as_deref().unwrap_or("Opaque");
    // The keys the API server requires for its well-known Secret types.
    let missing: Vec<&str> = match ty {
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            vec!["username or password"]
        }
        "kubernetes.io/tls" => ["tls.crt", "tls.key"]
            .into_iter()
            .filter(|k| !has(k))
            .collect(),
        "kubernetes.io/ssh-auth" => ["ssh-privatekey"].into_iter().filter(|k| !has(k)).collect(),
        "kubernetes.io/dockerconfigjson" => [".dockerconfigjson"]
            .into_iter()
            .filter(|k| !has(k))
            .collect(),
        _ => Vec::new(),
    };
    // Point at where the key belongs: `data`, else `stringData`, else the type that wants it
    // (a pointer to an absent `data` would point at the whole document).
    let ptr = if o.data.is_some() {
        "/data"
    } else if o.string_data.is_some() {
        "/stringData"
    } else {
        "/type"
    };
    for k in missing {
        e.add(
            ptr,
            format!("a Secret of type {ty:?} must have the key {k}"),
        );
    }
}

fn check_node(o: &Node, e: &mut Errs) {
    let Some(spec) = &o.spec else { return };
    let mut seen = HashSet::new();
    for (i, t) in spec.taints.iter().flatten().enumerate() {
        let tp = format!("/spec/taints/{i}");
        e.check(format!("{tp}/key"), names::is_qualified_name(&t.key));
        if let Some(v) = &t.value {
            e.check(format!("{tp}/value"), names::is_label_value(v));
        }
        if t.effect == crate::kinds::pod::TaintEffect::Any {
            e.add(
                format!("{tp}/effect"),
                "must be one of NoSchedule, PreferNoSchedule or NoExecute",
            );
        }
        if !seen.insert((t.key.as_str(), t.effect)) {
            e.add(tp, "taints must be unique by key and effect pair");
        }
    }
    for (field, cidr) in std::iter::once(("podCIDR", spec.pod_cidr.as_ref())).chain(
        spec.pod_cidrs
            .iter()
            .flatten()
            .map(|c| ("podCIDRs", Some(c))),
    ) {
        let Some(cidr) = cidr else { continue };
        let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
            let max = if ip.contains(':') { 128 } else { 32 };
            ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= max)
        });
        if !ok {
            e.add(
                format!("/spec/{field}"),
                format!("{cidr:?} must be a valid CIDR (e.g. 10.244.0.0/24)"),
            );
        }
    }
}

fn check_hpa(o: &HorizontalPodAutoscaler, e: &mut Errs) {
    let s = &o.spec;
    let min = s.min_replicas.unwrap_or(1);
    if min < 1 {
        e.add("/spec/minReplicas", "must be greater than or equal to 1");
    }
    if s.max_replicas < 1 {
        e.add("/spec/maxReplicas", "must be greater than 0");
    } else if s.max_replicas < min {
        e.add(
            "/spec/maxReplicas",
            "must be greater than or equal to `minReplicas`",
        );
    }
    e.check(
        "/spec/scaleTargetRef/name",
        names::is_dns1123_subdomain(&s.scale_target_ref.name),
    );
    for (i, m) in s.metrics.iter().flatten().enumerate() {
        let mp = format!("/spec/metrics/{i}");
        let Some(r) = &m.resource else {
            e.add(
                format!("{mp}/resource"),
                "must populate information for the given metric source",
            );
            continue;
        };
        if r.name != "cpu" && r.name != "memory" {
            e.add(
                format!("{mp}/resource/name"),
                format!(
                    "unsupported resource {:?}: supported values: cpu, memory",
                    r.name
                ),
            );
        }
        let t = &r.target;
        let tp = format!("{mp}/resource/target");
        match t.type_ {
            MetricTargetType::Utilization => match t.average_utilization {
                None => e.add(
                    format!("{tp}/averageUtilization"),
                    "must be set when `type` is 'Utilization'",
                ),
                Some(u) if u <= 0 => {
                    e.add(format!("{tp}/averageUtilization"), "must be greater than 0")
                }
                _ => {}
            },
            MetricTargetType::AverageValue => match &t.average_value {
                None => e.add(
                    format!("{tp}/averageValue"),
                    "must be set when `type` is 'AverageValue'",
                ),
                Some(q) => check_quantity(q, &format!("{tp}/averageValue"), e),
            },
            MetricTargetType::Value => e.add(
                format!("{tp}/type"),
                "must be either Utilization or AverageValue for a Resource metric",
            ),
        }
    }
    if let Some(b) = &s.behavior {
        for (field, rules) in [("scaleUp", &b.scale_up), ("scaleDown", &b.scale_down)] {
            if let Some(r) = rules {
                check_scaling_rules(r, &format!("/spec/behavior/{field}"), e);
            }
        }
    }
}

fn check_scaling_rules(r: &HpaScalingRules, p: &str, e: &mut Errs) {
    if let Some(w) = r.stabilization_window_seconds
        && !(0..=3600).contains(&w)
    {
        e.add(
            format!("{p}/stabilizationWindowSeconds"),
            "must be in the range 0-3600",
        );
    }
    for (i, pol) in r.policies.iter().flatten().enumerate() {
        positive(pol.value.into(), &format!("{p}/policies/{i}/value"), e);
        if !(1..=1800).contains(&pol.period_seconds) {
            e.add(
                format!("{p}/policies/{i}/periodSeconds"),
                "must be in the range 1-1800",
            );
        }
    }
}
