//! The scheduler and Deployment controllers against a real single-member store (Raft +
//! RocksDB in a temp dir), under a `Manager` with the ReplicaSet controller: a Deployment
//! becomes pods bound to the nodes that fit them; a pod no node fits is marked
//! `PodScheduled=False` with Kubernetes' counted reasons and is bound once a node that fits
//! appears. The test plays the node agents by writing Node objects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use coxswain_reconciler::controller::deployment::DeploymentController;
use coxswain_reconciler::controller::replicaset::ReplicaSetController;
use coxswain_reconciler::controller::scheduler::SchedulerController;
use coxswain_reconciler::controller::{Manager, ManagerConfig};
use coxswain_store::{Consistency, Kv, Member, MemberConfig, Txn};
use serde_json::{Value, json};

fn now() -> String {
    coxswain_reconciler::notes::now_rfc3339()
}

fn node(name: &str, cpu: &str, memory: &str, taints: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"),
                     "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now()}],
        },
    })
}

fn deployment(replicas: i32, cpu: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-deploy", "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                          "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}
            }
        }
    })
}

async fn pods(m: &Member) -> Vec<Value> {
    m.list("/core/Pod/default/", 0, None, Consistency::Linearizable)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.value)
        .collect()
}

async fn wait_pods(m: &Member, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = pods(m).await;
        if ok(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what}: {p:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn scheduled(p: &Value) -> Option<&Value> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodScheduled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_is_scheduled_onto_fitting_nodes_and_a_stuck_pod_waits_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = Member::start(
        MemberConfig::new(1, dir.path(), "127.0.0.1:1", "token"),
        true,
    )
    .await
    .unwrap();
    m.wait_for_leader(Duration::from_secs(10)).await.unwrap();

    // Three nodes: a small one, a big one, and a big one tainted for GPUs only.
    for (name, cpu, taints) in [
        ("small", "1", json!([])),
        ("big", "4", json!([])),
        (
            "gpu",
            "8",
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        ),
    ] {
        let key = format!("/core/Node/{name}");
        m.txn(Txn::put(key, node(name, cpu, "8Gi", taints)))
            .await
            .unwrap();
    }

    let mut manager = Manager::new(Arc::new(m.clone()), ManagerConfig::default());
    manager
        .add(DeploymentController::default())
        .add(ReplicaSetController::default())
        .add(SchedulerController);
    let (_leader, leader_rx) = tokio::sync::watch::channel(true);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(manager.run(leader_rx, async move {
        let _ = stop_rx.await;
    }));

    // 3 replicas of 1500m: only "big" fits them, two at most (4 CPU); "small" is too small and
    // "gpu" is tainted. So two are bound to "big" and the third cannot be placed.
    let deploy_key = "/apps/Deployment/default/web";
    m.txn(Txn::put(deploy_key, deployment(3, "1500m")))
        .await
        .unwrap();
    let p = wait_pods(&m, "2 bound, 1 unschedulable", |p| {
        p.len() == 3
            && p.iter().filter(|p| p["spec"]["nodeName"] == "big").count() == 2
            && p.iter().any(|p| {
                scheduled(p)
                    .is_some_and(|c| c["status"] == "False" && c["reason"] == "Unschedulable")
            })
    })
    .await;
    let stuck = p.iter().find(|p| p["spec"]["nodeName"].is_null()).unwrap();
    assert_eq!(
        scheduled(stuck).unwrap()["message"],
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         2 Insufficient cpu.",
    );
    for p in p.iter().filter(|p| p["spec"]["nodeName"] == "big") {
        assert_eq!(scheduled(p).unwrap()["status"], "True");
    }
    // The pods carry the Deployment's ReplicaSet as their controller.
    let owner = &stuck["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ReplicaSet");
    assert!(
        owner["name"].as_str().unwrap().starts_with("web-"),
        "{owner}"
    );

    // A new node that fits: the stuck pod is bound to it, with no other change.
    m.txn(Txn::put(
        "/core/Node/another",
        node("another", "2", "8Gi", json!([])),
    ))
    .await
    .unwrap();
    let stuck_name = stuck["metadata"]["name"].clone();
    wait_pods(&m, "the stuck pod bound to the new node", |p| {
        p.iter().any(|p| {
            p["metadata"]["name"] == stuck_name
                && p["spec"]["nodeName"] == "another"
                && scheduled(p).is_some_and(|c| c["status"] == "True")
        })
    })
    .await;

    // The Deployment's status counts its pods (none is Ready: no agent runs them).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = m
            .get(deploy_key, Consistency::Linearizable)
            .await
            .unwrap()
            .1
            .unwrap()
            .value;
        if d["status"]["replicas"] == 3 && d["status"]["updatedReplicas"] == 3 {
            assert_eq!(d["status"]["observedGeneration"], 1);
            assert!(d["status"]["availableReplicas"].as_i64().unwrap_or(0) == 0);
            break;
        }
        assert!(Instant::now() < deadline, "deployment status: {d:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    m.shutdown().await.unwrap();
}
