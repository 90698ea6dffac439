//! The health rollup end to end inside one process: a real Git repository made with the `git`
//! CLI, a real store member on RocksDB in a temp dir, the syncer applying a Deployment, this
//! test writing the status a Deployment controller and node agents would, and the commit's
//! note read back with `git notes`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use coxswain_reconciler::notes::{self, CommitState, CommitStatus, DriftKind, ObjectState};
use coxswain_reconciler::source::{Reference, Source, SourceConfig};
use coxswain_reconciler::sync::{HealthReport, Outcome, SyncConfig, Syncer, read_status};
use coxswain_store::{Consistency, Kv, Member, MemberConfig, Txn};
use serde_json::{Value, json};

const DEPLOYMENT_KEY: &str = "/apps/Deployment/default/web";

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("run git")
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: app
          image: web:1
";

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: default
data:
  color: blue
";

/// A repository whose `deploy/` holds the Deployment and a ConfigMap, committed once.
fn repo() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    git_ok(dir.path(), &["init", "-q", "-b", "main"]);
    let deploy = dir.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    std::fs::write(deploy.join("web.yaml"), DEPLOYMENT).unwrap();
    std::fs::write(deploy.join("settings.yaml"), CONFIGMAP).unwrap();
    git_ok(dir.path(), &["add", "-A"]);
    git_ok(dir.path(), &["commit", "-q", "-m", "web"]);
    let commit = git_ok(dir.path(), &["rev-parse", "HEAD"]);
    (dir, commit)
}

async fn member(dir: &Path) -> Member {
    let m = Member::start(MemberConfig::new(1, dir, "127.0.0.1:1", "token"), true)
        .await
        .unwrap();
    m.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    m
}

fn syncer(member: &Member, repo: &Path) -> Syncer {
    let mut cfg = SourceConfig::new(repo.display().to_string());
    cfg.reference = Reference::Branch("main".into());
    cfg.path = Some("deploy".into());
    Syncer::new(
        member.clone(),
        Source::open(&cfg).unwrap(),
        SyncConfig::default(),
    )
    .unwrap()
}

/// The note of `commit`, waiting up to 10 s for one in `state` that `check` accepts (the
/// note writer writes one commit at most once a second).
async fn wait_note(
    repo: &Path,
    commit: &str,
    state: CommitState,
    check: impl Fn(&CommitStatus) -> bool,
) -> CommitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    loop {
        let out = git(repo, &["notes", "--ref", "coxswain", "show", commit]);
        if out.status.success() {
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Ok(status) = notes::parse(&last)
                && status.state == state
                && check(&status)
            {
                return status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {state} note on {commit}; last:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stored(m: &Member, key: &str) -> Value {
    let (_, kv) = m.get(key, Consistency::Linearizable).await.unwrap();
    kv.expect("stored").value
}

async fn put(m: &Member, key: &str, value: Value) {
    m.txn(Txn::put(key, value)).await.unwrap();
}

/// Writes the Deployment's status as its controller would, keeping the rest as stored.
async fn set_deployment_status(m: &Member, status: Value) {
    let mut d = stored(m, DEPLOYMENT_KEY).await;
    d["status"] = status;
    put(m, DEPLOYMENT_KEY, d).await;
}

fn deployment_status(available: i64, progressing: (&str, &str)) -> Value {
    json!({
        "observedGeneration": 1,
        "replicas": 3,
        "updatedReplicas": 3,
        "readyReplicas": available,
        "availableReplicas": available,
        "unavailableReplicas": 3 - available,
        "conditions": [
            {"type": "Available", "status": if available == 3 { "True" } else { "False" },
             "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": progressing.0, "reason": progressing.1,
             "message": "ReplicaSet \"web-5d8f\" has timed out progressing."},
        ],
    })
}

const ROLLED_OUT: (&str, &str) = ("True", "NewReplicaSetAvailable");

fn object<'a>(status: &'a CommitStatus, kind: &str) -> &'a notes::ObjectStatus {
    status.objects.iter().find(|o| o.kind == kind).unwrap()
}

async fn refresh(s: &mut Syncer) -> HealthReport {
    s.refresh_health()
        .await
        .unwrap()
        .expect("a commit was applied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_goes_progressing_then_healthy_and_degrades_on_a_stuck_rollout() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let (repo, commit) = repo();
    let mut s = syncer(&m, repo.path());
    assert!(
        s.refresh_health().await.unwrap().is_none(),
        "nothing applied yet"
    );
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().state, Some(CommitState::Applied));
    assert_eq!(attempt.unwrap().state, CommitState::Applied);

    // No controller has written status yet: progressing, and the ConfigMap is healthy.
    let report = refresh(&mut s).await;
    assert_eq!(
        (report.commit.as_str(), report.state, report.changed),
        (commit.as_str(), CommitState::Progressing, true)
    );
    let note = wait_note(repo.path(), &commit, CommitState::Progressing, |_| true).await;
    let web = object(&note, "Deployment");
    assert_eq!(web.state, ObjectState::Progressing);
    assert_eq!(web.drift[0].kind, DriftKind::NotReady);
    assert_eq!(object(&note, "ConfigMap").state, ObjectState::Healthy);
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().state, Some(CommitState::Progressing));
    assert_eq!(attempt.unwrap().state, CommitState::Progressing);

    // Two of three replicas available: still progressing, with the count in the note.
    set_deployment_status(&m, deployment_status(2, ROLLED_OUT)).await;
    let report = refresh(&mut s).await;
    assert_eq!(
        (report.state, report.changed),
        (CommitState::Progressing, true)
    );
    wait_note(repo.path(), &commit, CommitState::Progressing, |n| {
        object(n, "Deployment").drift[0].detail == "2/3 replicas available"
    })
    .await;

    // Rolled out.
    set_deployment_status(&m, deployment_status(3, ROLLED_OUT)).await;
    assert_eq!(refresh(&mut s).await.state, CommitState::Healthy);
    let note = wait_note(repo.path(), &commit, CommitState::Healthy, |_| true).await;
    assert!(note.objects.iter().all(|o| o.state == ObjectState::Healthy));
    assert!(note.objects.iter().all(|o| o.drift.is_empty()));
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().state, Some(CommitState::Healthy));
    assert_eq!(attempt.unwrap().state, CommitState::Healthy);

    // Nothing changed: nothing to submit.
    let report = refresh(&mut s).await;
    assert_eq!(
        (report.state, report.changed),
        (CommitState::Healthy, false)
    );

    // The rollout of a later change is stuck past its deadline: degraded.
    set_deployment_status(
        &m,
        deployment_status(2, ("False", "ProgressDeadlineExceeded")),
    )
    .await;
    assert_eq!(refresh(&mut s).await.state, CommitState::Degraded);
    let note = wait_note(repo.path(), &commit, CommitState::Degraded, |_| true).await;
    let web = object(&note, "Deployment");
    assert_eq!(web.state, ObjectState::Degraded);
    assert_eq!(web.drift[0].kind, DriftKind::Stalled);
    assert!(
        web.drift[0].detail.starts_with("ProgressDeadlineExceeded"),
        "{:?}",
        web.drift
    );
    let text = git_ok(
        repo.path(),
        &["notes", "--ref", "coxswain", "show", &commit],
    );
    assert!(
        text.starts_with("coxswain: degraded"),
        "readable summary first: {text}"
    );
    assert!(
        text.contains(
            "Deployment default/web (web.yaml): degraded — stalled: ProgressDeadlineExceeded"
        ),
        "{text}"
    );
    let (record, _) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().state, Some(CommitState::Degraded));

    // It recovers.
    set_deployment_status(&m, deployment_status(3, ROLLED_OUT)).await;
    assert_eq!(refresh(&mut s).await.state, CommitState::Healthy);
    wait_note(repo.path(), &commit, CommitState::Healthy, |_| true).await;

    // A settled commit whose Deployment is merely short of replicas again may not go back
    // to progressing: it is degraded.
    set_deployment_status(&m, deployment_status(2, ROLLED_OUT)).await;
    let report = refresh(&mut s).await;
    assert_eq!(report.state, CommitState::Degraded);
    let note = wait_note(repo.path(), &commit, CommitState::Degraded, |_| true).await;
    assert_eq!(object(&note, "Deployment").state, ObjectState::Progressing);

    // Deleting the Deployment outside Git makes it missing.
    m.txn(Txn::delete(DEPLOYMENT_KEY)).await.unwrap();
    assert_eq!(refresh(&mut s).await.state, CommitState::Degraded);
    wait_note(repo.path(), &commit, CommitState::Degraded, |n| {
        object(n, "Deployment").state == ObjectState::Missing
    })
    .await;
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_pod_owned_through_a_replica_set_degrades_the_commit() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let (repo, commit) = repo();
    let mut s = syncer(&m, repo.path());
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));
    // Rolling out, 2 of 3 available.
    set_deployment_status(&m, deployment_status(2, ("True", "ReplicaSetUpdated"))).await;
    assert_eq!(refresh(&mut s).await.state, CommitState::Progressing);
    wait_note(repo.path(), &commit, CommitState::Progressing, |_| true).await;

    // The ReplicaSet and Pods the controllers would make: one Pod crash-loops.
    let web = stored(&m, DEPLOYMENT_KEY).await;
    let web_uid = web["metadata"]["uid"].as_str().unwrap().to_string();
    let owner = |kind: &str, name: &str, uid: &str| {
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
            "controller": true, "blockOwnerDeletion": true}])
    };
    put(
        &m,
        "/apps/ReplicaSet/default/web-5d8f",
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d8f", "namespace": "default", "uid": "rs-uid-1",
                "generation": 1, "labels": {"app": "web", "pod-template-hash": "5d8f"},
                "annotations": {"deployment.kubernetes.io/revision": "1"},
                "ownerReferences": owner("Deployment", "web", &web_uid)},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "web:1"}]}}},
            "status": {"replicas": 3, "readyReplicas": 2, "availableReplicas": 2,
                "observedGeneration": 1},
        }),
    )
    .await;
    let pod = |name: &str, container: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "labels": {"app": "web"},
                "ownerReferences": owner("ReplicaSet", "web-5d8f", "rs-uid-1")},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            "status": {"phase": "Running", "containerStatuses": [container]},
        })
    };
    let running = json!({"name": "app", "ready": true, "restartCount": 0, "image": "web:1",
        "state": {"running": {}}});
    let crashing = json!({"name": "app", "ready": false, "restartCount": 4, "image": "web:1",
        "state": {"waiting": {"reason": "CrashLoopBackOff",
            "message": "back-off 1m20s restarting failed container=app"}}});
    put(
        &m,
        "/core/Pod/default/web-5d8f-aaaaa",
        pod("web-5d8f-aaaaa", running.clone()),
    )
    .await;
    put(
        &m,
        "/core/Pod/default/web-5d8f-bbbbb",
        pod("web-5d8f-bbbbb", crashing),
    )
    .await;
    // A crash-looping Pod of someone else's ReplicaSet in the same namespace is not ours.
    let mut stranger = pod(
        "other-1-ccccc",
        json!({"name": "app", "ready": false,
        "restartCount": 9, "image": "x", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}),
    );
    stranger["metadata"]["ownerReferences"] = owner("ReplicaSet", "other-1", "rs-uid-other");
    put(&m, "/core/Pod/default/other-1-ccccc", stranger).await;

    let report = refresh(&mut s).await;
    assert_eq!(
        (report.state, report.changed),
        (CommitState::Degraded, true)
    );
    let note = wait_note(repo.path(), &commit, CommitState::Degraded, |_| true).await;
    let web = object(&note, "Deployment");
    assert_eq!(web.state, ObjectState::Degraded);
    assert_eq!(web.drift[0].kind, DriftKind::Failed);
    assert_eq!(
        web.drift[0].detail,
        "pod web-5d8f-bbbbb: container app is waiting: CrashLoopBackOff"
    );
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().state, Some(CommitState::Degraded));
    assert_eq!(attempt.unwrap().state, CommitState::Degraded);

    // The Pod recovers and the rollout finishes: healthy.
    put(
        &m,
        "/core/Pod/default/web-5d8f-bbbbb",
        pod("web-5d8f-bbbbb", running),
    )
    .await;
    set_deployment_status(&m, deployment_status(3, ROLLED_OUT)).await;
    assert_eq!(refresh(&mut s).await.state, CommitState::Healthy);
    wait_note(repo.path(), &commit, CommitState::Healthy, |_| true).await;
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_syncer_keeps_the_reached_state_and_a_drift_fix_does_not_reset_it() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let (repo, commit) = repo();
    let mut s = syncer(&m, repo.path());
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));
    set_deployment_status(&m, deployment_status(3, ROLLED_OUT)).await;
    assert_eq!(refresh(&mut s).await.state, CommitState::Healthy);
    s.close().await;

    // A new syncer (a restart, a new leader) applies the same commit again; the records keep
    // saying healthy rather than going back to applied.
    let mut s = syncer(&m, repo.path());
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().state, Some(CommitState::Healthy));
    assert_eq!(attempt.unwrap().state, CommitState::Healthy);
    // Health falls short now: from healthy that is degraded, not progressing.
    set_deployment_status(&m, deployment_status(1, ROLLED_OUT)).await;
    assert_eq!(refresh(&mut s).await.state, CommitState::Degraded);

    // The ConfigMap is changed outside Git and the resync puts it back: the commit keeps
    // its reached state through the drift fix.
    let mut cm = stored(&m, "/core/ConfigMap/default/settings").await;
    cm["data"]["color"] = json!("red");
    put(&m, "/core/ConfigMap/default/settings", cm).await;
    assert!(matches!(s.resync().await.unwrap(), Outcome::Applied { .. }));
    let (record, _) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().state, Some(CommitState::Degraded));
    set_deployment_status(&m, deployment_status(3, ROLLED_OUT)).await;
    assert_eq!(refresh(&mut s).await.state, CommitState::Healthy);
    s.close().await;
    let note = wait_note(repo.path(), &commit, CommitState::Healthy, |_| true).await;
    assert_eq!(object(&note, "Deployment").state, ObjectState::Healthy);
}
