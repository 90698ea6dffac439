//! Per-container cpu and memory usage, sampled from the containers' cgroups and stored as
//! `PodMetrics` objects (`metrics.k8s.io/v1beta1`), the shape `kubectl top pod` and the
//! horizontal pod autoscaler read in Kubernetes.
//!
//! Kubernetes keeps these out of etcd: the kubelet serves them and metrics-server gathers
//! them in memory. coxswain has no second process for that, and an agent may run on another
//! machine than the control plane, so the agent writes them to the store itself. That costs
//! one Raft entry per node per sampling period (15 s by default, metrics-server's
//! resolution), whatever the number of pods.
//!
//! - cpu is a rate: the growth of the cgroup's cpu counter between two samples over the
//!   wall time between them, in nanocores as metrics-server writes it (`"1234567n"`). A
//!   container seen for the first time has no rate yet, so a pod's metrics appear one period
//!   after its containers start, as with metrics-server.
//! - memory is the working set (usage less inactive file cache), in `Ki` when whole.
//! - `window` is the time the cpu rate covers, `timestamp` when the sample was taken.
//!
//! Each object carries the label [`NODE_LABEL`], so an agent that restarts finds and deletes
//! the metrics of pods that stopped while it was away. Metrics of a pod that ends are
//! deleted with the next sample.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coxswain_store::{Kv, Op, Txn, object_key};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::pods::{join_err, list_all};
use crate::cgroup::Usage;
use crate::error::Result;
use crate::runtime::{ContainerId, Runtime};

/// Where `PodMetrics` objects are stored.
pub const PREFIX: &str = "/metrics.k8s.io/PodMetrics/";
/// The label naming the node whose agent wrote a `PodMetrics` object.
pub const NODE_LABEL: &str = "coxswain.dev/node";
/// metrics-server's default `--metric-resolution`.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(15);

/// One reading of one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub id: ContainerId,
    pub at: Instant,
    pub usage: Usage,
}

/// Turns successive readings into `PodMetrics` objects and remembers what it wrote, so it
/// can delete the objects of pods that are gone.
#[derive(Debug)]
pub struct Sampler {
    node: String,
    /// The previous reading of each container, for the cpu rate.
    previous: HashMap<ContainerId, (Instant, u64)>,
    /// The keys written by the last sample (or found at start).
    written: BTreeSet<String>,
}

impl Sampler {
    pub fn new(node: impl Into<String>) -> Self {
        Sampler {
            node: node.into(),
            previous: HashMap::new(),
            written: BTreeSet::new(),
        }
    }

    /// Keys of metrics this node wrote before (found in the store at start); the next
    /// sample deletes those whose pods no longer run.
    pub fn adopt_written(&mut self, keys: impl IntoIterator<Item = String>) {
        self.written.extend(keys);
    }

    /// Takes one reading of every running container (taken at `now`, stamped `timestamp`)
    /// and returns what to store: the `PodMetrics` to put and the keys to delete.
    pub fn sample(&mut self, readings: &[Reading], timestamp: &str) -> Vec<Op> {
        // sandbox key → container name → (cpu nanocores, memory bytes, window)
        let mut pods: BTreeMap<&str, BTreeMap<&str, (u64, u64, Duration)>> = BTreeMap::new();
        let mut seen = HashMap::with_capacity(readings.len());
        // The keys of pods with a running container: their metrics stay until replaced, even
        // while a restarted container has no rate yet.
        let live: BTreeSet<String> = readings
            .iter()
            .filter_map(|r| pod_of(&r.id.sandbox))
            .map(|(ns, name)| metrics_key(ns, name))
            .collect();
        for r in readings {
            let cpu_ns = r.usage.cpu_usage_ns;
            if let Some(&(then, before)) = self.previous.get(&r.id) {
                let window = r.at.saturating_duration_since(then);
                // A counter that went backwards means a new cgroup under the same id (it
                // cannot happen with attempts in the id, but a rate from it would be junk).
                if !window.is_zero() && cpu_ns >= before {
                    let nanocores =
                        u128::from(cpu_ns - before) * 1_000_000_000 / window.as_nanos().max(1);
                    let nanocores = u64::try_from(nanocores).unwrap_or(u64::MAX);
                    pods.entry(r.id.sandbox.as_str()).or_default().insert(
                        r.id.name.as_str(),
                        (nanocores, r.usage.memory_bytes, window),
                    );
                }
            }
            seen.insert(r.id.clone(), (r.at, cpu_ns));
        }
        // Containers not read this time have ended: forget them.
        self.previous = seen;

        let mut ops = Vec::new();
        let mut written = BTreeSet::new();
        for (sandbox, containers) in &pods {
            let Some((namespace, name)) = pod_of(sandbox) else {
                continue;
            };
            let key = metrics_key(namespace, name);
            let window = containers.values().map(|c| c.2).max().unwrap_or_default();
            let containers: Vec<Value> = containers
                .iter()
                .map(|(name, (cpu, memory, _))| {
                    json!({
                        "name": name,
                        "usage": {"cpu": format!("{cpu}n"), "memory": memory_quantity(*memory)},
                    })
                })
                .collect();
            let value = json!({
                "apiVersion": "metrics.k8s.io/v1beta1",
                "kind": "PodMetrics",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "creationTimestamp": timestamp,
                    "labels": {NODE_LABEL: self.node},
                },
                "timestamp": timestamp,
                "window": go_duration(window),
                "containers": containers,
            });
            written.insert(key.clone());
            ops.push(Op::put(key, &value));
        }
        for gone in self.written.difference(&live) {
            ops.push(Op::Delete { key: gone.clone() });
        }
        written.extend(self.written.intersection(&live).cloned());
        self.written = written;
        ops
    }
}

fn metrics_key(namespace: &str, name: &str) -> String {
    object_key("metrics.k8s.io", "PodMetrics", Some(namespace), name)
}

/// The namespace and name of the pod of a sandbox key (`<namespace>_<name>_<uid>`, see
/// [`crate::runtime::sandbox_key`]; `_` occurs in neither namespace nor name).
fn pod_of(sandbox: &str) -> Option<(&str, &str)> {
    let mut parts = sandbox.splitn(3, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(name), Some(_)) if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
        _ => None,
    }
}

/// Bytes as Kubernetes writes a binary quantity: in `Ki` when whole, else plain.
fn memory_quantity(bytes: u64) -> String {
    if bytes != 0 && bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// A duration as Go prints one (`15s`, `15.002s`), which is how `window` is written;
/// millisecond precision is plenty for a sampling window.
fn go_duration(d: Duration) -> String {
    let millis = d.as_millis();
    let (secs, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        format!("{secs}s")
    } else {
        let frac = format!("{frac:03}");
        format!("{secs}.{}s", frac.trim_end_matches('0'))
    }
}

/// Reads every running container's usage. Errors of one container (it ended between the
/// listing and the read) skip that container.
fn read_all(runtime: &dyn Runtime) -> Result<Vec<Reading>> {
    let mut out = Vec::new();
    for (_, containers) in runtime.list()? {
        for id in containers {
            match runtime.usage(&id) {
                Ok(Some(usage)) => out.push(Reading {
                    id,
                    at: Instant::now(),
                    usage,
                }),
                Ok(None) => {}
                Err(e) => tracing::debug!(container = %id, error = %e, "usage not read"),
            }
        }
    }
    Ok(out)
}

/// Samples every `period` and stores the result until `shutdown` turns true. A failed
/// sample or write is logged and retried at the next period: metrics are best effort and
/// must never stop the agent.
pub async fn run<K: Kv + 'static>(
    kv: Arc<K>,
    runtime: Arc<dyn Runtime>,
    node: String,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut sampler = Sampler::new(node.clone());
    let label = format!("/metadata/labels/{}", NODE_LABEL.replace('/', "~1"));
    match list_all(kv.as_ref(), PREFIX).await {
        Ok((_, items)) => sampler.adopt_written(
            items
                .into_iter()
                .filter(|kv| kv.value.pointer(&label).and_then(Value::as_str) == Some(&node))
                .map(|kv| kv.key),
        ),
        Err(e) => tracing::warn!(error = %e, "listing earlier pod metrics"),
    }
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
        let rt = runtime.clone();
        let readings = match tokio::task::spawn_blocking(move || read_all(rt.as_ref())).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading container usage");
                continue;
            }
            Err(e) => return Err(join_err(e)),
        };
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let ops = sampler.sample(&readings, &timestamp);
        if ops.is_empty() {
            continue;
        }
        let span = tracing::debug_span!("pod_metrics", ops = ops.len());
        let txn = Txn {
            success: ops,
            ..Txn::default()
        };
        if let Err(e) = tracing::Instrument::instrument(kv.txn(txn), span).await {
            tracing::warn!(error = %e, "storing pod metrics");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sandbox: &str, name: &str) -> ContainerId {
        ContainerId {
            sandbox: sandbox.into(),
            name: name.into(),
            attempt: 0,
        }
    }

    fn reading(id: ContainerId, at: Instant, cpu_ns: u64, memory: u64) -> Reading {
        Reading {
            id,
            at,
            usage: Usage {
                cpu_usage_ns: cpu_ns,
                memory_bytes: memory,
            },
        }
    }

    fn puts(ops: &[Op]) -> BTreeMap<String, Value> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Put { key, value } => Some((key.clone(), value.to_value().expect("json"))),
                Op::Delete { .. } => None,
            })
            .collect()
    }

    fn deletes(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Delete { key } => Some(key.clone()),
                Op::Put { .. } => None,
            })
            .collect()
    }

    #[test]
    fn the_cpu_rate_is_the_counters_growth_over_the_window() {
        let mut s = Sampler::new("n1");
        let t0 = Instant::now();
        let (web, side) = (id("demo_web-1_abc", "web"), id("demo_web-1_abc", "side"));
        let first = s.sample(
            &[
                reading(web.clone(), t0, 1_000_000_000, 4 << 20),
                reading(side.clone(), t0, 0, 1000),
            ],
            "2026-12-04T00:00:00Z",
        );
        assert!(first.is_empty(), "no rate from one reading: {first:?}");

        let t1 = t0 + Duration::from_secs(15);
        // web used 1.5 cpu-seconds in 15 s: 0.1 cpu = 100,000,000 nanocores.
        let ops = s.sample(
            &[
                reading(web, t1, 2_500_000_000, 6 << 20),
                reading(side, t1, 15_000, 1001),
            ],
            "2026-12-04T00:00:15Z",
        );
        let puts = puts(&ops);
        let m = &puts["/metrics.k8s.io/PodMetrics/demo/web-1"];
        assert_eq!(m["kind"], "PodMetrics");
        assert_eq!(m["apiVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(m["metadata"]["namespace"], "demo");
        assert_eq!(m["metadata"]["name"], "web-1");
        assert_eq!(m["metadata"]["labels"][NODE_LABEL], "n1");
        assert_eq!(m["timestamp"], "2026-12-04T00:00:15Z");
        assert_eq!(m["window"], "15s");
        let containers = m["containers"].as_array().expect("containers");
        let by_name: BTreeMap<&str, &Value> = containers
            .iter()
            .map(|c| (c["name"].as_str().expect("name"), &c["usage"]))
            .collect();
        assert_eq!(by_name["web"]["cpu"], "100000000n");
        assert_eq!(by_name["web"]["memory"], "6144Ki");
        assert_eq!(by_name["side"]["cpu"], "1000n");
        assert_eq!(by_name["side"]["memory"], "1001");
    }

    #[test]
    fn metrics_of_ended_pods_are_deleted_and_restarted_containers_start_over() {
        let mut s = Sampler::new("n1");
        s.adopt_written(["/metrics.k8s.io/PodMetrics/old/stale".to_owned()]);
        let t0 = Instant::now();
        let a = id("ns_a_1", "c");
        let b = id("ns_b_2", "c");
        // What this node wrote before a restart goes at once unless its pod still runs.
        s.adopt_written(["/metrics.k8s.io/PodMetrics/ns/a".to_owned()]);
        let ops = s.sample(
            &[reading(a.clone(), t0, 0, 1), reading(b.clone(), t0, 0, 1)],
            "t0",
        );
        assert!(puts(&ops).is_empty());
        assert_eq!(deletes(&ops), ["/metrics.k8s.io/PodMetrics/old/stale"]);
        let t1 = t0 + Duration::from_secs(10);
        let ops = s.sample(
            &[reading(a.clone(), t1, 10, 1), reading(b.clone(), t1, 10, 1)],
            "t1",
        );
        assert_eq!(puts(&ops).len(), 2);
        assert!(deletes(&ops).is_empty());

        // Pod b ends; a's container restarts: a new attempt has no rate yet, and a's last
        // metrics stay until it has.
        let a2 = ContainerId { attempt: 1, ..a };
        let t2 = t1 + Duration::from_secs(10);
        let ops = s.sample(&[reading(a2.clone(), t2, 5, 1)], "t2");
        assert!(puts(&ops).is_empty());
        assert_eq!(deletes(&ops), ["/metrics.k8s.io/PodMetrics/ns/b"]);
        let t3 = t2 + Duration::from_millis(10_500);
        let ops = s.sample(&[reading(a2, t3, 21, 1)], "t3");
        let puts = puts(&ops);
        assert_eq!(puts["/metrics.k8s.io/PodMetrics/ns/a"]["window"], "10.5s");
        assert!(deletes(&ops).is_empty());
        // Nothing is deleted twice.
        assert!(
            deletes(&s.sample(&[], "t4")).contains(&"/metrics.k8s.io/PodMetrics/ns/a".to_owned())
        );
        assert!(s.sample(&[], "t5").is_empty());
    }

    #[test]
    fn sandbox_keys_name_their_pod() {
        assert_eq!(pod_of("demo_web-1_abc-def"), Some(("demo", "web-1")));
        assert_eq!(pod_of("demo_web"), None);
        assert_eq!(pod_of("_x_1"), None);
    }

    #[test]
    fn durations_and_quantities_read_as_kubernetes_writes_them() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(15_020)), "15.02s");
        assert_eq!(go_duration(Duration::from_millis(999)), "0.999s");
        assert_eq!(memory_quantity(0), "0");
        assert_eq!(memory_quantity(2048), "2Ki");
        assert_eq!(memory_quantity(2049), "2049");
    }
}
