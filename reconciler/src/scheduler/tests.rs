//! Builders shared by the plugin tests, and end-to-end tests of the framework on small
//! clusters whose outcome (placements and messages) is what Kubernetes would produce.

use std::collections::BTreeMap;

use coxswain_schema::kinds::core::{Node, Taint};
use coxswain_schema::kinds::pod::{Container, Pod, Toleration};
use serde_json::{Value, json};

use super::*;

/// A node offering `cpu`, `memory` and `pods`, no labels.
pub(super) fn node(name: &str, cpu: &str, memory: &str, pods: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods}},
    }))
    .expect("valid node")
}

/// A roomy node with labels.
pub(super) fn labelled_node(name: &str, labels: &[(&str, &str)]) -> Node {
    let mut n = node(name, "64", "256Gi", "110");
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    n
}

/// A pod in `default` from a spec fragment; a single `busybox` container is added when the
/// fragment has none.
pub(super) fn pod_json(name: &str, spec: Value) -> Pod {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .expect("valid pod")
}

pub(super) fn pod(name: &str) -> Pod {
    pod_json(name, json!({}))
}

/// A container requesting the given cpu and memory (unset when `None`).
pub(super) fn container(name: &str, cpu: Option<&str>, memory: Option<&str>) -> Container {
    let mut requests = serde_json::Map::new();
    if let Some(c) = cpu {
        requests.insert("cpu".into(), json!(c));
    }
    if let Some(m) = memory {
        requests.insert("memory".into(), json!(m));
    }
    serde_json::from_value(json!({"name": name, "image": "busybox",
        "resources": {"requests": requests}}))
    .expect("valid container")
}

pub(super) fn pod_requesting(name: &str, cpu: Option<&str>, memory: Option<&str>) -> Pod {
    let mut p = pod(name);
    p.spec.containers = vec![container("c", cpu, memory)];
    p
}

/// A toleration; empty strings leave the field unset.
pub(super) fn toleration(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
    let mut t = serde_json::Map::new();
    for (field, v) in [("key", key), ("operator", operator), ("value", value)] {
        if !v.is_empty() {
            t.insert(field.into(), json!(v));
        }
    }
    if !effect.is_empty() {
        t.insert("effect".into(), json!(effect));
    }
    serde_json::from_value(Value::Object(t)).expect("valid toleration")
}

pub(super) fn taint(key: &str, value: &str, effect: &str) -> Taint {
    let mut t = json!({"key": key, "effect": effect});
    if !value.is_empty() {
        t["value"] = json!(value);
    }
    serde_json::from_value(t).expect("valid taint")
}

/// small (2 cpu, 2Gi, zone a, hdd), big (8 cpu, 16Gi, zone b, ssd), gpu (8 cpu, 32Gi,
/// zone b, tainted dedicated=gpu:NoSchedule).
fn three_nodes() -> Vec<Node> {
    let with = |mut n: Node, labels: &[(&str, &str)]| {
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    };
    let mut gpu = with(
        node("gpu", "8", "32Gi", "110"),
        &[("zone", "b"), ("accelerator", "gpu")],
    );
    gpu.spec.get_or_insert_default().taints = Some(vec![taint("dedicated", "gpu", "NoSchedule")]);
    vec![
        with(
            node("small", "2", "2Gi", "110"),
            &[("zone", "a"), ("disk", "hdd")],
        ),
        with(
            node("big", "8", "16Gi", "110"),
            &[("zone", "b"), ("disk", "ssd")],
        ),
        gpu,
    ]
}

#[test]
fn three_nodes_place_pods_and_explain_failures_like_kubernetes() {
    let snap = Snapshot::new(&three_nodes(), &[]);
    let requesting = |cpu, mem| pod_requesting("p", cpu, mem);
    let with_spec = |spec: Value| {
        let mut p = pod_json("p", spec);
        p.spec.containers = vec![container("c", Some("1"), Some("1Gi"))];
        p
    };
    // (pod, expected node or Kubernetes' message)
    let cases: Vec<(Pod, Result<&str, &str>)> = vec![
        // The tainted node is out; big is emptier than small after the pod.
        (requesting(Some("1"), Some("1Gi")), Ok("big")),
        // Too much memory for small and big, and gpu is tainted.
        (
            requesting(Some("1"), Some("20Gi")),
            Err(
                "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
                 2 Insufficient memory.",
            ),
        ),
        // Every failing resource counts: small lacks cpu and memory, big only memory.
        (
            requesting(Some("3"), Some("20Gi")),
            Err(
                "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint \
                 {dedicated: gpu}, 2 Insufficient memory.",
            ),
        ),
        // TaintToleration runs before NodeAffinity, so gpu reports its taint.
        (
            with_spec(json!({"nodeSelector": {"disk": "nvme"}})),
            Err(
                "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
                 2 node(s) didn't match Pod's node affinity/selector.",
            ),
        ),
        // Tolerating the taint and selecting the accelerator lands on gpu.
        (
            with_spec(json!({
                "nodeSelector": {"accelerator": "gpu"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                 "effect": "NoSchedule"}],
            })),
            Ok("gpu"),
        ),
        // A preference for zone a beats big's emptier resources (weight 2 × 100 against
        // a few points of LeastAllocated).
        (
            with_spec(json!({"affinity": {"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "preference": {"matchExpressions":
                        [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}})),
            Ok("small"),
        ),
        // A named node must also fit.
        (
            {
                let mut p = requesting(Some("4"), None);
                p.spec.node_name = Some("small".into());
                p
            },
            Err(
                "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match the \
                 requested node name.",
            ),
        ),
    ];
    for (pod, want) in cases {
        let got = schedule_one(&snap, &pod);
        let got = got
            .as_ref()
            .map(|d| d.node.as_str())
            .map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "{:?}", pod.spec);
    }
}

#[test]
fn a_cordoned_node_is_reported_first() {
    let mut nodes = three_nodes();
    nodes[1].spec.get_or_insert_default().unschedulable = Some(true);
    let snap = Snapshot::new(&nodes, &[]);
    let e = schedule_one(&snap, &pod_requesting("p", Some("3"), None))
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some(
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint \
             {dedicated: gpu}, 1 node(s) were unschedulable."
        )
    );
}

#[test]
fn a_batch_fills_nodes_without_overcommitting() {
    let mut snap = Snapshot::new(&three_nodes(), &[]);
    let pods: Vec<Pod> = (0..11)
        .map(|i| pod_requesting(&format!("p{i}"), Some("1"), Some("100Mi")))
        .collect();
    let results = schedule_batch(&mut snap, &pods);
    assert_eq!(results.len(), 11);
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (key, r) in &results[..10] {
        let d = r.as_ref().map_err(|e| format!("{key}: {e}"));
        assert!(d.is_ok(), "{d:?}");
        if let Ok(d) = d {
            *per_node.entry(d.node.as_str()).or_default() += 1;
        }
    }
    // 2 cpu on small and 8 on big: exactly ten one-cpu pods fit.
    assert_eq!(per_node, BTreeMap::from([("big", 8), ("small", 2)]));
    let (key, last) = &results[10];
    assert_eq!(key, "default/p10");
    assert_eq!(
        last.as_ref().err().map(|e| e.to_string()).as_deref(),
        Some(
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."
        )
    );
    // The snapshot now holds the ten pods.
    assert_eq!(
        snap.node("big").map(|n| n.requested().milli_cpu),
        Some(8000)
    );
    assert_eq!(snap.node("small").map(|n| n.pods().len()), Some(2));
}

#[test]
fn a_batch_respects_anti_affinity_among_its_own_pods() {
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            labelled_node(
                &format!("n{i}"),
                &[("kubernetes.io/hostname", &format!("n{i}"))],
            )
        })
        .collect();
    let mut snap = Snapshot::new(&nodes, &[]);
    let pods: Vec<Pod> = (0..4)
        .map(|i| {
            let mut p = pod_json(
                &format!("web-{i}"),
                json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}},
                     "topologyKey": "kubernetes.io/hostname"}]}}}),
            );
            p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
            p
        })
        .collect();
    let results = schedule_batch(&mut snap, &pods);
    let placed: Vec<&str> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|d| d.node.as_str()))
        .collect();
    let mut distinct = placed.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((placed.len(), distinct.len()), (3, 3), "{placed:?}");
    assert_eq!(
        results[3]
            .1
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.")
    );
}

#[test]
fn snapshot_counts_bound_running_pods_only() {
    let nodes = [node("a", "4", "4Gi", "10")];
    let mut running = pod_requesting("run", Some("1"), None);
    running.spec.node_name = Some("a".into());
    let mut done = pod_requesting("done", Some("1"), None);
    done.spec.node_name = Some("a".into());
    done.status = Some(coxswain_schema::kinds::pod::PodStatus {
        phase: Some("Succeeded".into()),
        ..Default::default()
    });
    let mut elsewhere = pod_requesting("gone", Some("1"), None);
    elsewhere.spec.node_name = Some("missing".into());
    let pending = pod_requesting("pending", Some("1"), None);
    let mut snap = Snapshot::new(&nodes, &[running, done, elsewhere, pending.clone()]);
    assert_eq!(
        snap.node("a")
            .map(|n| (n.requested().milli_cpu, n.pods().len())),
        Some((1000, 1))
    );
    assert!(snap.assume(&pending, "a"));
    assert!(!snap.assume(&pending, "missing"));
    assert_eq!(snap.node("a").map(|n| n.requested().milli_cpu), Some(2000));
}

#[test]
fn ties_are_deterministic_but_spread_over_equal_nodes() {
    let nodes: Vec<Node> = (0..4)
        .map(|i| node(&format!("n{i}"), "4", "4Gi", "10"))
        .collect();
    let snap = Snapshot::new(&nodes, &[]);
    let mut chosen = BTreeMap::new();
    for i in 0..40 {
        let p = pod(&format!("p{i}"));
        let first = schedule_one(&snap, &p).map(|d| d.node);
        assert_eq!(
            first,
            schedule_one(&snap, &p).map(|d| d.node),
            "same pod, same node"
        );
        if let Ok(n) = first {
            *chosen.entry(n).or_insert(0) += 1;
        }
    }
    // 40 pods over 4 equal nodes: every node gets some.
    assert_eq!(chosen.len(), 4, "{chosen:?}");
}

#[test]
fn sampling_still_finds_the_only_feasible_node() {
    // 1,000 nodes: 420 are scored, but a pod that fits one node must still find it.
    let nodes: Vec<Node> = (0..1000)
        .map(|i| labelled_node(&format!("n{i:04}"), &[("id", &i.to_string())]))
        .collect();
    let snap = Snapshot::new(&nodes, &[]);
    for want in ["7", "500", "999"] {
        let p = pod_json(&format!("p{want}"), json!({"nodeSelector": {"id": want}}));
        let d = schedule_one(&snap, &p).map(|d| d.node);
        assert_eq!(d, Ok(format!("n{:04}", want.parse::<usize>().unwrap_or(0))));
    }
}

#[test]
fn a_batch_keeps_a_hard_zone_spread_even() {
    // Zone a has two nodes, zone b one: spreading by zone must still split 3/3.
    let nodes = [
        labelled_node("a1", &[("zone", "a")]),
        labelled_node("a2", &[("zone", "a")]),
        labelled_node("b1", &[("zone", "b")]),
    ];
    let mut snap = Snapshot::new(&nodes, &[]);
    let pods: Vec<Pod> = (0..6)
        .map(|i| {
            let mut p = pod_json(
                &format!("web-{i}"),
                json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "web"}}}]}),
            );
            p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
            p
        })
        .collect();
    let mut per_zone: BTreeMap<char, usize> = BTreeMap::new();
    for (key, r) in schedule_batch(&mut snap, &pods) {
        let node = r.map(|d| d.node).map_err(|e| format!("{key}: {e}"));
        assert!(node.is_ok(), "{node:?}");
        if let Some(zone) = node.ok().and_then(|n| n.chars().next()) {
            *per_zone.entry(zone).or_default() += 1;
        }
    }
    assert_eq!(per_zone, BTreeMap::from([('a', 3), ('b', 3)]));
}
