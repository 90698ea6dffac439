//! The controllers against a real single-member store (Raft + RocksDB in a temp dir): the
//! ReplicaSet controller, the garbage collector and the Namespace controller run under a
//! `Manager`, and the test plays the parts of Git, the scheduler and the node agent by
//! writing to the store directly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coxswain_reconciler::controller::gc::GarbageCollector;
use coxswain_reconciler::controller::namespace::NamespaceController;
use coxswain_reconciler::controller::replicaset::ReplicaSetController;
use coxswain_reconciler::controller::{Manager, ManagerConfig};
use coxswain_store::{Consistency, KeyValue, Kv, Member, MemberConfig, Op, Txn};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

async fn member(dir: &Path) -> Member {
    let m = Member::start(MemberConfig::new(1, dir, "127.0.0.1:1", "token"), true)
        .await
        .unwrap();
    m.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    m
}

/// A running manager with the three controllers, and the handles to steer it.
struct Running {
    leader: watch::Sender<bool>,
    running: watch::Receiver<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<coxswain_reconciler::Result<()>>,
}

impl Running {
    fn start(m: &Member) -> Running {
        let mut manager = Manager::new(Arc::new(m.clone()), ManagerConfig::default());
        manager
            .add(ReplicaSetController::default())
            .add(GarbageCollector::default())
            .add(NamespaceController);
        let running = manager.running();
        let (leader, leader_rx) = watch::channel(true);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(manager.run(leader_rx, async move {
            let _ = shutdown_rx.await;
        }));
        Running {
            leader,
            running,
            shutdown: Some(shutdown),
            task,
        }
    }

    async fn wait_running(&mut self, want: bool) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.running.wait_for(|r| *r == want),
        )
        .await
        .expect("manager state")
        .unwrap();
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("manager stops")
            .unwrap()
            .unwrap();
        assert!(!*self.running.borrow());
    }
}

fn replicaset(ns: &str, name: &str, uid: &str, replicas: i32, app: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "generation": 1,
            "creationTimestamp": "2024-01-01T00:00:00Z"
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}, "annotations": {"note": "from-template"}},
                "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]}
            }
        }
    })
}

fn rs_key(ns: &str, name: &str) -> String {
    format!("/apps/ReplicaSet/{ns}/{name}")
}

async fn get(m: &Member, key: &str) -> Option<KeyValue> {
    m.get(key, Consistency::Linearizable).await.unwrap().1
}

async fn pods(m: &Member, ns: &str) -> Vec<KeyValue> {
    m.list(
        &format!("/core/Pod/{ns}/"),
        0,
        None,
        Consistency::Linearizable,
    )
    .await
    .unwrap()
    .items
}

async fn put(m: &Member, key: &str, value: Value) {
    let r = m.txn(Txn::put(key, value)).await.unwrap();
    assert!(r.succeeded);
}

/// Rewrites the object at `key` with `f`, by CAS, retrying on conflicts (the controllers
/// write the same objects).
async fn update(m: &Member, key: &str, f: impl Fn(&mut Value)) {
    for _ in 0..50 {
        let kv = get(m, key).await.expect("object to update");
        let mut v = kv.value.clone();
        f(&mut v);
        if m.txn(Txn::compare_and_swap(key, kv.mod_revision, v))
            .await
            .unwrap()
            .succeeded
        {
            return;
        }
    }
    panic!("could not update {key}");
}

/// Polls `check` until it returns `Some`, for up to 10 s.
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn owner_uids(pod: &KeyValue) -> Vec<String> {
    pod.value
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn running_ready(v: &mut Value, node: &str, ready: bool) {
    v["spec"]["nodeName"] = json!(node);
    v["status"] = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                        "lastTransitionTime": "2024-01-01T00:00:00Z"}],
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_creates_owned_pods_scales_down_least_valuable_and_gc_follows_its_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let mut r = Running::start(&m);
    r.wait_running(true).await;

    put(
        &m,
        &rs_key("default", "web"),
        replicaset("default", "web", "uid-web", 3, "web"),
    )
    .await;
    let created = eventually("3 pods", || async {
        let p = pods(&m, "default").await;
        (p.len() == 3).then_some(p)
    })
    .await;
    for pod in &created {
        let meta = &pod.value["metadata"];
        let name = meta["name"].as_str().unwrap();
        assert!(
            name.starts_with("web-") && name.len() == "web-".len() + 5,
            "{name}"
        );
        assert_eq!(
            meta["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "uid-web",
                    "controller": true, "blockOwnerDeletion": true}])
        );
        assert_eq!(meta["labels"]["app"], "web");
        assert_eq!(meta["annotations"]["note"], "from-template");
        assert_eq!(meta["generation"], 1);
        assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36));
        assert!(meta["creationTimestamp"].is_string());
        assert_eq!(pod.value["spec"]["containers"][0]["image"], "busybox");
    }
    // Status counts them.
    eventually("status replicas 3", || async {
        let rs = get(&m, &rs_key("default", "web")).await?;
        (rs.value["status"]["replicas"] == 3 && rs.value["status"]["observedGeneration"] == 1)
            .then_some(())
    })
    .await;

    // The scheduler binds two; the agent runs one of them to Ready.
    let (keep, bound, unbound) = (&created[0].key, &created[1].key, &created[2].key);
    update(&m, keep, |v| running_ready(v, "n1", true)).await;
    update(&m, bound, |v| running_ready(v, "n1", false)).await;
    eventually("ready status", || async {
        let rs = get(&m, &rs_key("default", "web")).await?;
        (rs.value["status"]["readyReplicas"] == 1 && rs.value["status"]["availableReplicas"] == 1)
            .then_some(())
    })
    .await;

    // Scale to one: the unscheduled and the not-ready pod go, the ready one stays.
    update(&m, &rs_key("default", "web"), |v| {
        v["spec"]["replicas"] = json!(1);
        v["metadata"]["generation"] = json!(2);
    })
    .await;
    let left = eventually("scale down to 1", || async {
        let p = pods(&m, "default").await;
        (p.len() == 1).then_some(p)
    })
    .await;
    assert_eq!(&left[0].key, keep);
    assert!(get(&m, bound).await.is_none() && get(&m, unbound).await.is_none());
    eventually("status after scale down", || async {
        let rs = get(&m, &rs_key("default", "web")).await?;
        let s = &rs.value["status"];
        (s["replicas"] == 1 && s["readyReplicas"] == 1 && s["observedGeneration"] == 2)
            .then_some(())
    })
    .await;

    // A failed pod is replaced.
    update(&m, keep, |v| v["status"]["phase"] = json!("Failed")).await;
    let replacement = eventually("failed pod replaced", || async {
        let p = pods(&m, "default").await;
        (p.len() == 1 && &p[0].key != keep).then_some(p)
    })
    .await;
    assert_eq!(owner_uids(&replacement[0]), ["uid-web"]);

    // The ReplicaSet goes: the garbage collector removes its pods.
    let r2 = m.txn(Txn::delete(rs_key("default", "web"))).await.unwrap();
    assert!(r2.succeeded);
    eventually("pods collected", || async {
        pods(&m, "default").await.is_empty().then_some(())
    })
    .await;

    r.stop().await;
    m.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_replicas_are_created_in_one_raft_entry() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let mut r = Running::start(&m);
    r.wait_running(true).await;

    let start = Instant::now();
    put(
        &m,
        &rs_key("default", "ten"),
        replicaset("default", "ten", "uid-ten", 10, "ten"),
    )
    .await;
    let created = eventually("10 pods", || async {
        let p = pods(&m, "default").await;
        (p.len() == 10).then_some(p)
    })
    .await;
    let elapsed = start.elapsed();
    let revisions: std::collections::BTreeSet<u64> =
        created.iter().map(|p| p.create_revision).collect();
    assert_eq!(revisions.len(), 1, "one write for all ten: {revisions:?}");
    // The creates and the status went into the same entry.
    let rs = get(&m, &rs_key("default", "ten")).await.unwrap();
    assert_eq!(rs.value["status"]["replicas"], 10);
    assert_eq!(rs.mod_revision, *revisions.iter().next().unwrap());
    eprintln!("10 pods created {elapsed:?} after the ReplicaSet's write");

    r.stop().await;
    m.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_orphan_is_adopted_and_a_git_owned_pod_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let mut r = Running::start(&m);
    r.wait_running(true).await;

    let mut stray = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "stray", "namespace": "default", "uid": "uid-stray", "labels": {"app": "api"},
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
    });
    running_ready(&mut stray, "n1", true);
    put(&m, "/core/Pod/default/stray", stray).await;
    let git_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "from-git", "namespace": "default", "uid": "uid-git",
                     "labels": {"app": "api", "app.kubernetes.io/managed-by": "coxswain"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
    });
    put(&m, "/core/Pod/default/from-git", git_pod.clone()).await;

    put(
        &m,
        &rs_key("default", "api"),
        replicaset("default", "api", "uid-api", 1, "api"),
    )
    .await;
    eventually("orphan adopted", || async {
        let p = get(&m, "/core/Pod/default/stray").await?;
        (owner_uids(&p) == ["uid-api"]).then_some(())
    })
    .await;
    eventually("status counts the adopted pod", || async {
        let rs = get(&m, &rs_key("default", "api")).await?;
        (rs.value["status"]["replicas"] == 1 && rs.value["status"]["readyReplicas"] == 1)
            .then_some(())
    })
    .await;
    // The adopted pod fills the replica: nothing was created; Git's pod is untouched.
    let all = pods(&m, "default").await;
    let names: Vec<&str> = all
        .iter()
        .map(|p| p.value["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from-git", "stray"]);
    let git_now = get(&m, "/core/Pod/default/from-git").await.unwrap();
    assert!(git_now.value["metadata"].get("ownerReferences").is_none());

    // Relabelled away from the selector: released, and a new pod takes its place.
    update(&m, "/core/Pod/default/stray", |v| {
        v["metadata"]["labels"]["app"] = json!("other");
    })
    .await;
    eventually("released and replaced", || async {
        let p = get(&m, "/core/Pod/default/stray").await?;
        let owned_new = pods(&m, "default")
            .await
            .iter()
            .filter(|p| owner_uids(p) == ["uid-api"])
            .count();
        (owner_uids(&p).is_empty() && owned_new == 1).then_some(())
    })
    .await;

    r.stop().await;
    m.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_leadership_stops_every_write_and_regaining_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let mut r = Running::start(&m);
    r.wait_running(true).await;

    put(
        &m,
        &rs_key("default", "a"),
        replicaset("default", "a", "uid-a", 1, "a"),
    )
    .await;
    eventually("first pod", || async {
        (pods(&m, "default").await.len() == 1).then_some(())
    })
    .await;
    // Let the status write land before measuring silence.
    eventually("status of a", || async {
        let rs = get(&m, &rs_key("default", "a")).await?;
        (rs.value["status"]["replicas"] == 1).then_some(())
    })
    .await;

    r.leader.send_replace(false);
    r.wait_running(false).await;
    let before = m.applied();
    put(
        &m,
        &rs_key("default", "b"),
        replicaset("default", "b", "uid-b", 2, "b"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Exactly our own write happened: no pods, no status from a deposed leader.
    assert_eq!(m.applied(), before + 1);
    assert_eq!(pods(&m, "default").await.len(), 1);

    r.leader.send_replace(true);
    r.wait_running(true).await;
    eventually("pods of b after regaining leadership", || async {
        (pods(&m, "default").await.len() == 3).then_some(())
    })
    .await;

    r.stop().await;
    m.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_namespace_loses_controller_objects_but_keeps_git_owned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let mut r = Running::start(&m);
    r.wait_running(true).await;

    let git = json!({"app.kubernetes.io/managed-by": "coxswain"});
    put(
        &m,
        "/core/Namespace/team",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "uid": "uid-ns", "labels": git}}),
    )
    .await;
    let mut rs = replicaset("team", "web", "uid-team-web", 2, "web");
    rs["metadata"]["labels"] = git.clone();
    put(&m, &rs_key("team", "web"), rs).await;
    // A controller-made object without an owner: only the Namespace controller removes it.
    put(
        &m,
        "/core/ConfigMap/team/leftover",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "leftover", "namespace": "team"}}),
    )
    .await;
    // A Git-owned object the syncer's prune guard held back.
    put(
        &m,
        "/core/ConfigMap/team/held",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "namespace": "team", "labels": git}}),
    )
    .await;
    // An object in `default`, which is never cleaned.
    put(
        &m,
        "/core/ConfigMap/default/plain",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain", "namespace": "default"}}),
    )
    .await;
    eventually("pods in team", || async {
        (pods(&m, "team").await.len() == 2).then_some(())
    })
    .await;

    // The syncer removes the Namespace and the ReplicaSet in one entry.
    let r2 = m
        .txn(Txn {
            success: vec![
                Op::Delete {
                    key: "/core/Namespace/team".into(),
                },
                Op::Delete {
                    key: rs_key("team", "web"),
                },
            ],
            ..Txn::default()
        })
        .await
        .unwrap();
    assert!(r2.succeeded);
    eventually("team emptied of controller objects", || async {
        (pods(&m, "team").await.is_empty()
            && get(&m, "/core/ConfigMap/team/leftover").await.is_none())
        .then_some(())
    })
    .await;
    assert!(get(&m, "/core/ConfigMap/team/held").await.is_some());
    assert!(get(&m, "/core/ConfigMap/default/plain").await.is_some());

    r.stop().await;
    m.shutdown().await.unwrap();
}
