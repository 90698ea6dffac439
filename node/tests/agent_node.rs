//! The agent's Node object against a real single-member store (RocksDB in a temp dir): what
//! registration writes from the host, what a re-registration keeps of what others wrote, how
//! the heartbeat moves the condition timestamps, that a concurrent writer is never
//! overwritten, and the heartbeat loop's re-registration and shutdown. No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use coxswain_node::Error;
use coxswain_node::agent::node::{
    self, CONDITION_DISK_PRESSURE, CONDITION_MEMORY_PRESSURE, CONDITION_READY, LABEL_ARCH,
    LABEL_HOSTNAME, LABEL_OS, NodeConfig, Pressure, node_key,
};
use coxswain_schema::kinds::core::{Node, Taint};
use coxswain_schema::kinds::pod::TaintEffect;
use coxswain_schema::meta::Condition;
use coxswain_store::watch::WatchStream;
use coxswain_store::{Consistency, KeyValue, Kv, ListPage, Member, Revision, Txn, TxnResult};
use support::member;

const OLD: &str = "2020-01-01T00:00:00Z";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A node name no other test (in this or another process) uses.
fn unique_name() -> String {
    format!(
        "node-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn stored<K: Kv>(kv: &K, name: &str) -> Option<(Node, KeyValue)> {
    let (_, kv) = kv
        .get(&node_key(name), Consistency::Linearizable)
        .await
        .unwrap();
    kv.map(|kv| (serde_json::from_value(kv.value.clone()).unwrap(), kv))
}

/// Rewrites the stored node with `edit`, as another writer would (retrying its own CAS).
async fn edit_stored<K: Kv>(kv: &K, name: &str, edit: impl Fn(&mut Node)) {
    for _ in 0..20 {
        let (mut node, raw) = stored(kv, name).await.expect("node stored");
        edit(&mut node);
        let value = serde_json::to_value(&node).unwrap();
        let r = kv
            .txn(Txn::compare_and_swap(
                node_key(name),
                raw.mod_revision,
                value,
            ))
            .await
            .unwrap();
        if r.succeeded {
            return;
        }
    }
    panic!("could not edit node {name}");
}

/// The agent's conditions for a healthy node, every timestamp `OLD`.
fn old_conditions() -> Vec<Condition> {
    node::conditions(Pressure::default())
        .into_iter()
        .map(|c| Condition {
            last_heartbeat_time: Some(OLD.into()),
            last_transition_time: Some(OLD.into()),
            ..c
        })
        .collect()
}

fn condition<'a>(node: &'a Node, type_: &str) -> &'a Condition {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// Asserts `time` is RFC 3339 and within a minute of now.
fn assert_recent(time: Option<&str>, what: &str) {
    let time = time.unwrap_or_else(|| panic!("{what}: no time"));
    let t = chrono::DateTime::parse_from_rfc3339(time).unwrap();
    let age = chrono::Utc::now().signed_duration_since(t);
    assert!(age.num_seconds().abs() < 60, "{what}: {time} is not recent");
}

/// Online CPUs from sysfs (`0-3,6`), counted independently of the agent's sysconf.
fn online_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    text.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

fn mem_total_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The IPv4 addresses of this host's interfaces that are up and not loopback.
fn host_ipv4s() -> HashSet<Ipv4Addr> {
    use nix::net::if_::InterfaceFlags;
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter(|i| {
            i.flags.contains(InterfaceFlags::IFF_UP)
                && !i.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|i| Some(i.address?.as_sockaddr_in()?.ip()))
        .collect()
}

fn config(name: &str) -> NodeConfig {
    let mut cfg = NodeConfig::new(name);
    cfg.labels
        .insert("topology.kubernetes.io/zone".into(), "zone-a".into());
    cfg.taints.push(Taint {
        key: "dedicated".into(),
        value: Some("gpu".into()),
        effect: TaintEffect::NoSchedule,
        time_added: None,
    });
    cfg.pod_cidr = Some("10.88.0.0/24".into());
    cfg.reserved_cpu_millis = 250;
    cfg.reserved_memory_bytes = 256 << 20;
    cfg
}

#[tokio::test]
async fn registration_creates_the_node_from_the_host_and_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let name = unique_name();
    let cfg = config(&name);

    let returned = node::register(&m, &node::host_node(&cfg).unwrap())
        .await
        .unwrap();
    let (n, raw) = stored(&m, &name).await.expect("node stored");
    assert_eq!(returned, n, "register returns the node as stored");
    assert_eq!(raw.key, "/core/Node/".to_string() + &name);
    assert_eq!(n.api_version, "v1");
    assert_eq!(n.kind, "Node");

    // Metadata the API server would set on a create.
    let meta = &n.metadata;
    assert_eq!(meta.name, name);
    assert_eq!(meta.uid.as_ref().map(String::len), Some(36));
    assert_recent(meta.creation_timestamp.as_deref(), "creationTimestamp");
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.resource_version, Some(raw.mod_revision.to_string()));

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let want_labels: BTreeMap<String, String> = [
        (LABEL_HOSTNAME, name.as_str()),
        (LABEL_OS, "linux"),
        (LABEL_ARCH, arch),
        ("topology.kubernetes.io/zone", "zone-a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(meta.labels.as_ref(), Some(&want_labels));

    let spec = n.spec.as_ref().unwrap();
    assert_eq!(spec.taints.as_deref(), Some(cfg.taints.as_slice()));
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.88.0.0/24"));
    assert_eq!(spec.pod_cidrs, Some(vec!["10.88.0.0/24".to_string()]));
    assert_eq!(spec.unschedulable, None);

    let status = n.status.as_ref().unwrap();
    let capacity = status.capacity.as_ref().unwrap();
    let allocatable = status.allocatable.as_ref().unwrap();
    let cpus = online_cpus();
    let mem_kib = mem_total_kib();
    assert_eq!(capacity["cpu"].value().unwrap(), cpus as i64);
    assert_eq!(capacity["memory"].as_str(), format!("{mem_kib}Ki"));
    assert_eq!(capacity["pods"].as_str(), "110");
    assert_eq!(
        allocatable["cpu"].milli_value().unwrap(),
        (cpus * 1000 - 250) as i64
    );
    assert_eq!(
        allocatable["memory"].value().unwrap(),
        (mem_kib * 1024 - (256 << 20)) as i64
    );
    assert_eq!(allocatable["pods"].as_str(), "110");

    let types: Vec<&str> = status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(
        types,
        ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    );
    let ready = condition(&n, CONDITION_READY);
    assert_eq!(ready.status, "True");
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("coxswain agent is posting ready status")
    );
    for c in status.conditions.as_ref().unwrap() {
        assert_recent(c.last_heartbeat_time.as_deref(), &c.type_);
        assert_recent(c.last_transition_time.as_deref(), &c.type_);
    }
    assert_eq!(
        condition(&n, "PIDPressure").reason.as_deref(),
        Some("KubeletHasSufficientPID")
    );

    let info = status.node_info.as_ref().unwrap();
    assert_eq!(
        info.kubelet_version.as_deref(),
        Some(concat!("coxswain-", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(info.operating_system.as_deref(), Some("linux"));
    assert_eq!(info.architecture.as_deref(), Some(arch));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(info.kernel_version.as_deref(), Some(release.trim()));
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        assert_eq!(info.machine_id.as_deref(), Some(id.trim()));
    }
    assert!(info.os_image.as_deref().is_some_and(|s| !s.is_empty()));

    let addresses = status.addresses.as_ref().unwrap();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "Hostname" && !a.address.is_empty())
    );
    let internal: Vec<Ipv4Addr> = addresses
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.parse().unwrap())
        .collect();
    let host = host_ipv4s();
    if host.is_empty() {
        assert!(internal.is_empty(), "InternalIP without any host address");
    } else {
        assert_eq!(internal.len(), 1, "{addresses:?}");
        assert!(
            host.contains(&internal[0]),
            "{} is not an address of this host ({host:?})",
            internal[0]
        );
    }
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn registering_again_keeps_what_others_set_and_replaces_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let name = unique_name();
    let cfg = config(&name);
    let first = node::register(&m, &node::host_node(&cfg).unwrap())
        .await
        .unwrap();

    // An operator cordons the node, labels and annotates it, removes the taint and breaks
    // the OS label; the status goes stale.
    edit_stored(&m, &name, |n| {
        let spec = n.spec.as_mut().unwrap();
        spec.unschedulable = Some(true);
        spec.taints = None;
        let labels = n.metadata.labels.as_mut().unwrap();
        labels.insert("team".into(), "db".into());
        labels.insert(LABEL_OS.into(), "bogus".into());
        n.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("note".into(), "rack 4".into());
        let status = n.status.as_mut().unwrap();
        status
            .capacity
            .as_mut()
            .unwrap()
            .insert("pods".into(), "1".parse().unwrap());
        status.conditions = Some(old_conditions());
    })
    .await;
    let (before, _) = stored(&m, &name).await.unwrap();

    // The agent restarts with a changed config.
    let mut cfg2 = cfg.clone();
    cfg2.labels
        .insert("topology.kubernetes.io/zone".into(), "zone-b".into());
    cfg2.max_pods = 50;
    let again = node::register(&m, &node::host_node(&cfg2).unwrap())
        .await
        .unwrap();
    let (n, raw) = stored(&m, &name).await.unwrap();
    assert_eq!(again, n);

    assert_eq!(n.metadata.uid, first.metadata.uid);
    assert_eq!(
        n.metadata.creation_timestamp,
        first.metadata.creation_timestamp
    );
    assert_eq!(
        n.metadata.resource_version,
        Some(raw.mod_revision.to_string())
    );
    assert!(
        raw.mod_revision
            > before
                .metadata
                .resource_version
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        "the node was rewritten"
    );
    let spec = n.spec.as_ref().unwrap();
    assert_eq!(spec.unschedulable, Some(true), "the cordon survives");
    assert_eq!(spec.taints, None, "a removed taint does not come back");
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.88.0.0/24"));
    assert_eq!(n.metadata.generation, Some(1), "the spec did not change");
    let labels = n.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "db", "others' labels are kept");
    assert_eq!(
        labels[LABEL_OS], "linux",
        "the agent's own labels are reconciled"
    );
    assert_eq!(labels[LABEL_HOSTNAME], name);
    assert_eq!(
        labels["topology.kubernetes.io/zone"], "zone-a",
        "configured labels apply at creation only, as the kubelet's --node-labels"
    );
    assert_eq!(n.metadata.annotations.as_ref().unwrap()["note"], "rack 4");

    let status = n.status.as_ref().unwrap();
    assert_eq!(status.capacity.as_ref().unwrap()["pods"].as_str(), "50");
    assert_eq!(status.allocatable.as_ref().unwrap()["pods"].as_str(), "50");
    let ready = condition(&n, CONDITION_READY);
    assert_eq!(ready.last_transition_time.as_deref(), Some(OLD));
    assert_recent(ready.last_heartbeat_time.as_deref(), "Ready heartbeat");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn registration_fills_a_missing_pod_cidr_of_a_node_declared_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let name = unique_name();
    // Declared (as Git would) before the agent ever ran: no uid, no status, no CIDR.
    let declared = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": "declared-uid", "generation": 1,
                     "creationTimestamp": OLD, "labels": {"pool": "blue"}},
        "spec": {"taints": [{"key": "git", "effect": "NoExecute"}]}
    });
    assert!(
        m.txn(Txn::compare_and_swap(node_key(&name), 0, declared))
            .await
            .unwrap()
            .succeeded
    );
    node::register(&m, &node::host_node(&config(&name)).unwrap())
        .await
        .unwrap();
    let (n, _) = stored(&m, &name).await.unwrap();
    assert_eq!(n.metadata.uid.as_deref(), Some("declared-uid"));
    assert_eq!(n.metadata.creation_timestamp.as_deref(), Some(OLD));
    let spec = n.spec.as_ref().unwrap();
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.88.0.0/24"));
    let taint_keys: Vec<&str> = spec
        .taints
        .iter()
        .flatten()
        .map(|t| t.key.as_str())
        .collect();
    assert_eq!(taint_keys, ["git"], "the declared taints win");
    assert_eq!(n.metadata.generation, Some(2), "the spec changed");
    let labels = n.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["pool"], "blue");
    assert_eq!(labels[LABEL_HOSTNAME], name);
    assert_eq!(condition(&n, CONDITION_READY).status, "True");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn heartbeat_moves_last_heartbeat_time_but_not_last_transition_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let name = unique_name();
    node::register(&m, &node::host_node(&config(&name)).unwrap())
        .await
        .unwrap();
    let network = Condition {
        type_: "NetworkUnavailable".into(),
        status: "False".into(),
        reason: Some("RouteCreated".into()),
        last_heartbeat_time: Some(OLD.into()),
        last_transition_time: Some(OLD.into()),
        ..Condition::default()
    };
    edit_stored(&m, &name, |n| {
        let mut cs = old_conditions();
        cs.insert(0, network.clone());
        n.status.as_mut().unwrap().conditions = Some(cs);
    })
    .await;
    let (before, _) = stored(&m, &name).await.unwrap();

    node::heartbeat(&m, &name, Pressure::default())
        .await
        .unwrap();
    let (after, _) = stored(&m, &name).await.unwrap();
    for type_ in [
        CONDITION_MEMORY_PRESSURE,
        CONDITION_DISK_PRESSURE,
        "PIDPressure",
        CONDITION_READY,
    ] {
        let c = condition(&after, type_);
        assert_ne!(c.last_heartbeat_time.as_deref(), Some(OLD), "{type_}");
        assert_recent(c.last_heartbeat_time.as_deref(), type_);
        assert_eq!(c.last_transition_time.as_deref(), Some(OLD), "{type_}");
    }
    assert_eq!(
        condition(&after, "NetworkUnavailable"),
        &network,
        "another component's condition is left alone"
    );
    let (b, a) = (before.status.unwrap(), after.status.clone().unwrap());
    assert_eq!(a.capacity, b.capacity, "only conditions change");
    assert_eq!(a.addresses, b.addresses);
    assert_eq!(after.spec, before.spec);
    assert_eq!(after.metadata.labels, before.metadata.labels);

    // Memory runs short: that condition flips, and only its transition time moves.
    node::heartbeat(
        &m,
        &name,
        Pressure {
            memory: true,
            disk: false,
        },
    )
    .await
    .unwrap();
    let (flipped, _) = stored(&m, &name).await.unwrap();
    let memory = condition(&flipped, CONDITION_MEMORY_PRESSURE);
    assert_eq!(memory.status, "True");
    assert_eq!(
        memory.reason.as_deref(),
        Some("KubeletHasInsufficientMemory")
    );
    assert_ne!(memory.last_transition_time.as_deref(), Some(OLD));
    assert_recent(memory.last_transition_time.as_deref(), "MemoryPressure");
    assert_eq!(
        condition(&flipped, CONDITION_DISK_PRESSURE)
            .last_transition_time
            .as_deref(),
        Some(OLD)
    );
    assert_eq!(condition(&flipped, CONDITION_READY).status, "True");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn heartbeat_of_an_unregistered_node_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let name = unique_name();
    let err = node::heartbeat(&m, &name, Pressure::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::State { reason, .. } if reason.contains("not registered")),
        "{err}"
    );
    assert!(
        stored(&m, &name).await.is_none(),
        "heartbeat creates nothing"
    );
    m.shutdown().await.unwrap();
}

/// A store where another writer cordons the node between the agent's read and its write,
/// `races` times.
#[derive(Debug)]
struct Racing {
    inner: Member,
    key: String,
    races: AtomicUsize,
}

impl Kv for Racing {
    async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> coxswain_store::Result<(Revision, Option<KeyValue>)> {
        self.inner.get(key, consistency).await
    }

    async fn list(
        &self,
        prefix: &str,
        limit: usize,
        continue_token: Option<&str>,
        consistency: Consistency,
    ) -> coxswain_store::Result<ListPage> {
        self.inner
            .list(prefix, limit, continue_token, consistency)
            .await
    }

    async fn txn(&self, txn: Txn) -> coxswain_store::Result<TxnResult> {
        let left = self.races.load(Ordering::SeqCst);
        if left > 0 {
            self.races.store(left - 1, Ordering::SeqCst);
            let (_, kv) = self.inner.get(&self.key, Consistency::Linearizable).await?;
            let kv = kv.expect("node stored");
            let mut v = kv.value;
            v["spec"]["unschedulable"] = serde_json::json!(true);
            let r = self
                .inner
                .txn(Txn::compare_and_swap(&self.key, kv.mod_revision, v))
                .await?;
            assert!(r.succeeded);
        }
        self.inner.txn(txn).await
    }

    async fn watch(
        &self,
        prefix: &str,
        from: Revision,
        prev: bool,
    ) -> coxswain_store::Result<WatchStream> {
        self.inner.watch(prefix, from, prev).await
    }
}

#[tokio::test]
async fn a_concurrent_writer_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let name = unique_name();
    let node_obj = node::host_node(&config(&name)).unwrap();
    node::register(&m, &node_obj).await.unwrap();
    edit_stored(&m, &name, |n| {
        n.status.as_mut().unwrap().conditions = Some(old_conditions());
    })
    .await;

    let racing = Racing {
        inner: m.clone(),
        key: node_key(&name),
        races: AtomicUsize::new(1),
    };
    node::heartbeat(&racing, &name, Pressure::default())
        .await
        .unwrap();
    let (n, _) = stored(&m, &name).await.unwrap();
    assert_eq!(racing.races.load(Ordering::SeqCst), 0, "the race happened");
    assert_eq!(n.spec.as_ref().unwrap().unschedulable, Some(true));
    assert_ne!(
        condition(&n, CONDITION_READY)
            .last_heartbeat_time
            .as_deref(),
        Some(OLD),
        "the heartbeat was posted on the retry"
    );

    // The same for a re-registration.
    edit_stored(&m, &name, |n| n.spec.as_mut().unwrap().unschedulable = None).await;
    racing.races.store(1, Ordering::SeqCst);
    node::register(&racing, &node_obj).await.unwrap();
    let (n, _) = stored(&m, &name).await.unwrap();
    assert_eq!(racing.races.load(Ordering::SeqCst), 0, "the race happened");
    assert_eq!(n.spec.as_ref().unwrap().unschedulable, Some(true));

    // A writer that always wins: the agent gives up rather than write blindly.
    racing.races.store(usize::MAX, Ordering::SeqCst);
    let err = node::heartbeat(&racing, &name, Pressure::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::State { .. }), "{err}");
    m.shutdown().await.unwrap();
}

/// Polls `check` against the stored node until it holds.
async fn eventually(m: &Member, name: &str, what: &str, check: impl Fn(&Node) -> bool) -> Node {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((n, _)) = stored(m, name).await
            && check(&n)
        {
            return n;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn run_heartbeat_registers_beats_re_registers_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let name = unique_name();
    let mut cfg = config(&name);
    cfg.heartbeat = Duration::from_millis(50);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = {
        let m = m.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move { node::run_heartbeat(&m, &cfg, stopped).await })
    };

    let first = eventually(&m, &name, "registered", |_| true).await;
    edit_stored(&m, &name, |n| {
        n.status.as_mut().unwrap().conditions = Some(old_conditions());
    })
    .await;
    eventually(&m, &name, "a heartbeat", |n| {
        condition(n, CONDITION_READY).last_heartbeat_time.as_deref() != Some(OLD)
    })
    .await;

    assert!(m.txn(Txn::delete(node_key(&name))).await.unwrap().succeeded);
    let again = eventually(&m, &name, "registered again", |_| true).await;
    assert_ne!(again.metadata.uid, first.metadata.uid, "a new object");

    stop.send(true).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops on shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn unusable_names_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let cfg = NodeConfig::new("Not_A_Name");
    let err = node::run_heartbeat(&m, &cfg, stopped).await.unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");

    // A name with a `/` would be the key of another object.
    let mut n = node::host_node(&config(&unique_name())).unwrap();
    n.metadata.name = "x/../y".into();
    let err = node::register(&m, &n).await.unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let page = m
        .list("/core/Node/", 0, None, Consistency::Linearizable)
        .await
        .unwrap();
    assert!(page.items.is_empty(), "{:?}", page.items);
    m.shutdown().await.unwrap();
}
