//! `coxswain-bench schedule`: the scheduler at the size of Kubernetes' scheduler_perf
//! "SchedulingBasic" (5,000 nodes, 10,000 pods of 100m CPU and 500Mi each, nodes of 4 CPU,
//! 32Gi and 110 pods).
//!
//! Two figures:
//! - **decisions**: the pure scheduling logic, one pod at a time against a snapshot that
//!   assumes every earlier decision (what the controller's batch does), timed per decision;
//! - **bound through Raft**: the same nodes and pending pods written to a real single-member
//!   store (Raft on RocksDB in a temporary folder), then the scheduler controller started
//!   under the controller manager; timed from its start until a watch has seen every pod
//!   with `spec.nodeName`. This includes the cache's initial list, parsing every object,
//!   the decisions and the compare-and-swap binds packed into Raft entries.
//!
//! The nodes are simulated: Node objects with no agent, as scheduler_perf's are.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coxswain_reconciler::controller::scheduler::SchedulerController;
use coxswain_reconciler::controller::{Manager, ManagerConfig};
use coxswain_reconciler::scheduler::{Snapshot, schedule_one};
use coxswain_schema::kinds::core::Node;
use coxswain_schema::kinds::pod::Pod;
use coxswain_store::{EventKind, Kv, Member, MemberConfig, Txn};
use serde::Serialize;
use serde_json::{Value, json};

use crate::common::{bar, ms};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A smaller run that ends well within a minute: 500 nodes and 1,000 pods.
    #[arg(long)]
    quick: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The targets on the 2-core reference machine, and kube-scheduler's own CI floor
/// for SchedulingBasic at 5,000 nodes.
const TARGET_DECISIONS_PER_S: f64 = 10_000.0;
const TARGET_BOUND_PER_S: f64 = 5_000.0;
const KUBE_SCHEDULER_FLOOR_PER_S: f64 = 680.0;
/// Objects written per transaction while loading (the store's op limit).
const LOAD_BATCH: usize = 128;
const NAMESPACE: &str = "bench";

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    build: &'static str,
    nodes: usize,
    pods: usize,
    decisions: Decisions,
    bound: Bound,
    kube_scheduler_ci_floor_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Decisions {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    unschedulable: usize,
    target_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Bound {
    total_ms: f64,
    per_s: f64,
    raft_entries: u64,
    target_per_s: f64,
}

fn node(i: usize, now: &str) -> Value {
    let name = format!("node-{i:05}");
    let resources = json!({"cpu": "4", "memory": "32Gi", "pods": "110"});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("uid-{name}"),
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
            },
        },
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now}],
        },
    })
}

fn pod(i: usize, now: &str) -> Value {
    let name = format!("pod-{i:05}");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": format!("uid-{name}"),
            "creationTimestamp": now,
            "labels": {"app": "bench"},
        },
        "spec": {
            "containers": [{
                "name": "c",
                "image": "busybox:latest",
                "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}},
            }],
        },
        "status": {"phase": "Pending"},
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn decisions(nodes: &[Value], pods: &[Value]) -> anyhow::Result<Decisions> {
    let nodes: Vec<Node> = nodes
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<Result<_, _>>()
        .context("the generated nodes")?;
    let pods: Vec<Pod> = pods
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<Result<_, _>>()
        .context("the generated pods")?;
    let mut snapshot = Snapshot::new(&nodes, &[]);
    let mut times = Vec::with_capacity(pods.len());
    let mut unschedulable = 0;
    let total = Instant::now();
    for pod in &pods {
        let started = Instant::now();
        let decision = schedule_one(&snapshot, pod);
        times.push(started.elapsed());
        match decision {
            Ok(d) => {
                snapshot.assume(pod, &d.node);
            }
            Err(_) => unschedulable += 1,
        }
    }
    let total = total.elapsed();
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(Decisions {
        per_s: pods.len() as f64 / total.as_secs_f64().max(f64::EPSILON),
        p50_us: us(percentile(&times, 50.0)),
        p99_us: us(percentile(&times, 99.0)),
        max_us: us(times.last().copied().unwrap_or_default()),
        unschedulable,
        target_per_s: TARGET_DECISIONS_PER_S,
    })
}

/// Writes `objects` in transactions of [`LOAD_BATCH`]; returns the store's revision after.
async fn load(
    member: &Member,
    objects: Vec<(String, Value)>,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let mut revision = 0;
    let mut objects = objects.into_iter().peekable();
    while objects.peek().is_some() {
        let mut txn = Txn::default();
        for (key, value) in objects.by_ref().take(LOAD_BATCH) {
            txn.success.push(coxswain_store::Op::put(key, &value));
        }
        let n = txn.success.len() as u64;
        revision = member.txn(txn).await.context("loading the store")?.revision;
        pb.inc(n);
    }
    Ok(revision)
}

async fn bound_through_raft(
    nodes: Vec<Value>,
    pods: Vec<Value>,
    hidden: bool,
) -> anyhow::Result<Bound> {
    let dir = tempfile::tempdir().context("a folder for the store")?;
    // Nothing dials the advertised address: the member is never asked to join or serve.
    let member = Member::start(
        MemberConfig::new(1, dir.path(), "127.0.0.1:1", "bench-token"),
        true,
    )
    .await
    .context("starting the store member")?;
    member
        .wait_for_leader(Duration::from_secs(10))
        .await
        .context("waiting for the store member to lead")?;
    let want = pods.len();
    let pb = bar(
        (nodes.len() + pods.len()) as u64,
        "writing nodes and pending pods",
        hidden,
    );
    let node_objects = nodes
        .into_iter()
        .map(|v| {
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (coxswain_store::object_key("", "Node", None, &name), v)
        })
        .collect();
    load(&member, node_objects, &pb).await?;
    let pod_objects = pods
        .into_iter()
        .map(|v| {
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (
                coxswain_store::object_key("", "Pod", Some(NAMESPACE), &name),
                v,
            )
        })
        .collect();
    let loaded = load(&member, pod_objects, &pb).await?;
    pb.finish_and_clear();

    let mut watch = member
        .watch("/core/Pod/", loaded + 1, false)
        .await
        .context("watching the pods")?;
    let mut manager = Manager::new(Arc::new(member.clone()), ManagerConfig::default());
    manager.add(SchedulerController);
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pb = bar(want as u64, "pods bound through Raft", hidden);
    let started = Instant::now();
    let task = tokio::spawn(manager.run(leader_rx, async move {
        let _ = stop_rx.await;
    }));
    let mut bound: HashSet<String> = HashSet::with_capacity(want);
    let mut last_revision = loaded;
    let deadline = started + Duration::from_secs(600);
    while bound.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = match tokio::time::timeout(left, watch.recv()).await {
            Ok(Some(batch)) => batch.context("the pod watch")?,
            Ok(None) => bail!("the pod watch ended"),
            Err(_) => bail!(
                "only {} of {want} pods were bound within 10 minutes",
                bound.len()
            ),
        };
        last_revision = batch.revision;
        for event in batch.events {
            if event.kind == EventKind::Put
                && event.kv.value.pointer("/spec/nodeName").is_some()
                && bound.insert(event.kv.key)
            {
                pb.inc(1);
            }
        }
    }
    let total = started.elapsed();
    pb.finish_and_clear();
    let _ = stop_tx.send(());
    drop(leader_tx);
    task.await.context("the controller manager panicked")??;
    member
        .shutdown()
        .await
        .context("stopping the store member")?;
    Ok(Bound {
        total_ms: ms(total),
        per_s: want as f64 / total.as_secs_f64().max(f64::EPSILON),
        // One revision per Raft entry that wrote something.
        raft_entries: last_revision - loaded,
        target_per_s: TARGET_BOUND_PER_S,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let (n_nodes, n_pods) = if args.quick {
        (500, 1_000)
    } else {
        (5_000, 10_000)
    };
    let now = chrono_now();
    let nodes: Vec<Value> = (0..n_nodes).map(|i| node(i, &now)).collect();
    let pods: Vec<Value> = (0..n_pods).map(|i| pod(i, &now)).collect();

    let decisions = decisions(&nodes, &pods)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bound = rt.block_on(bound_through_raft(nodes, pods, args.json))?;
    let report = Report {
        mode: if args.quick { "quick" } else { "full" },
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        nodes: n_nodes,
        pods: n_pods,
        decisions,
        bound,
        kube_scheduler_ci_floor_per_s: KUBE_SCHEDULER_FLOOR_PER_S,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let d = &report.decisions;
    let b = &report.bound;
    println!(
        "schedule ({} build, {} run): {} simulated nodes (4 CPU, 32Gi, 110 pods), {} pods \
         (100m, 500Mi)",
        report.build, report.mode, report.nodes, report.pods
    );
    println!(
        "  decisions        {:>9.0}/s  p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs  \
         (target ≥ {:.0}/s; {} unschedulable)",
        d.per_s, d.p50_us, d.p99_us, d.max_us, d.target_per_s, d.unschedulable
    );
    println!(
        "  bound via Raft   {:>9.0}/s  {:.0} ms for all, {} Raft entries  (target ≥ {:.0}/s; \
         kube-scheduler CI floor {:.0}/s)",
        b.per_s, b.total_ms, b.raft_entries, b.target_per_s, report.kube_scheduler_ci_floor_per_s
    );
    Ok(())
}

/// Now, RFC 3339 in UTC, as the API server stamps it (the node heartbeats must be fresh, or
/// the scheduler takes the nodes for unreachable).
fn chrono_now() -> String {
    coxswain_reconciler::notes::now_rfc3339()
}
