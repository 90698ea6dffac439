//! The agent's own `Node` object: what this machine offers (capacity, allocatable, addresses,
//! system info), its registration in the store, and the heartbeat that tells the control
//! plane the agent is alive. This is the part of the kubelet that `kubelet_node_status.go`
//! holds, with the same semantics where they matter to other components:
//!
//! - **Registration** ([`register`]) creates `/core/Node/<name>` if it is absent. If it exists
//!   (the agent restarted, or Git declared the node first) the stored object wins for
//!   everything the agent does not own: metadata (`uid`, `creationTimestamp`, annotations,
//!   labels others set), `spec.unschedulable` and `spec.taints`. Like the kubelet, the agent
//!   re-asserts only its default labels (`kubernetes.io/hostname`, `os`, `arch`) on an existing
//!   node, and applies its configured labels and taints only when it creates the node, so a
//!   label or taint an administrator removed does not come back at the next restart. The
//!   status is the agent's and is replaced, keeping each condition's `lastTransitionTime` when
//!   its status did not change.
//! - **Heartbeat** ([`heartbeat`], [`run_heartbeat`]) rewrites only the conditions, every
//!   `NodeConfig::heartbeat` (10 s, the kubelet's `nodeStatusUpdateFrequency`): each one's
//!   `lastHeartbeatTime` moves, its `lastTransitionTime` only when its status flips. The node
//!   lifecycle controller reads the Ready condition's heartbeat to decide the node is lost.
//!
//! Every write is a compare-and-swap on the revision it read, retried a few times on
//! conflict (as the kubelet retries `nodeStatusUpdateRetry` times), so a concurrent writer
//! (the reconciler applying a Git change to the node, an operator cordoning it) is never
//! overwritten with stale data.
//!
//! Memory and disk pressure are observed the way the kubelet's default hard eviction
//! thresholds define them (`memory.available<100Mi`, `nodefs.available<10%`,
//! `nodefs.inodesFree<5%`); the kubelet has no default PID threshold, so `PIDPressure` is
//! always `False`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use coxswain_schema::kinds::core::{
    Node, NodeAddress, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use coxswain_schema::kinds::pod::TaintEffect;
use coxswain_schema::meta::{Condition, ObjectMeta};
use coxswain_schema::names;
use coxswain_schema::quantity::Quantity;
use coxswain_store::{Consistency, Kv, Revision, Txn, object_key};
use serde_json::Value;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The label every Kubernetes node carries with its host name.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// The label with Go's name of the operating system (`linux`).
pub const LABEL_OS: &str = "kubernetes.io/os";
/// The label with Go's name of the CPU architecture (`amd64`, `arm64`).
pub const LABEL_ARCH: &str = "kubernetes.io/arch";

/// The kubelet's default `--max-pods`.
pub const DEFAULT_MAX_PODS: u32 = 110;
/// The kubelet's default `nodeStatusUpdateFrequency`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_MEMORY_PRESSURE: &str = "MemoryPressure";
pub const CONDITION_DISK_PRESSURE: &str = "DiskPressure";
pub const CONDITION_PID_PRESSURE: &str = "PIDPressure";

/// Attempts of one compare-and-swap write before giving up: the kubelet's
/// `nodeStatusUpdateRetry`.
const CAS_ATTEMPTS: usize = 5;

/// The kubelet's default hard eviction threshold `memory.available<100Mi`.
const MEMORY_AVAILABLE_MIN_BYTES: u64 = 100 << 20;
/// The kubelet's default `nodefs.available<10%`.
const DISK_AVAILABLE_MIN_PERCENT: u64 = 10;
/// The kubelet's default `nodefs.inodesFree<5%`.
const INODES_FREE_MIN_PERCENT: u64 = 5;

const MEMINFO: &str = "/proc/meminfo";
const OS_RELEASE: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];
const MACHINE_ID: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];
const KERNEL_RELEASE: &str = "/proc/sys/kernel/osrelease";
/// The kernel hands out a fresh random (version 4) UUID on every read of this file, which
/// gives a created Node its `uid` without a UUID library.
const RANDOM_UUID: &str = "/proc/sys/kernel/random/uuid";

/// How this agent presents its node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// The Node's name, a DNS subdomain; by convention the host name.
    pub name: String,
    /// Labels added when the agent creates the Node (the kubelet's `--node-labels`).
    pub labels: BTreeMap<String, String>,
    /// Taints set when the agent creates the Node (the kubelet's `--register-with-taints`).
    pub taints: Vec<Taint>,
    /// The range pod IPs come from, written to `spec.podCIDR` if the node has none yet.
    pub pod_cidr: Option<String>,
    /// The `pods` capacity (the kubelet's `--max-pods`).
    pub max_pods: u32,
    /// CPU kept from pods for the system and the agent (`--system-reserved` plus
    /// `--kube-reserved`), in millicores.
    pub reserved_cpu_millis: u64,
    /// Memory kept from pods, in bytes.
    pub reserved_memory_bytes: u64,
    /// How often the status is posted.
    pub heartbeat: Duration,
}

impl NodeConfig {
    /// The kubelet's defaults for a node named `name`: 110 pods, nothing reserved, a heartbeat
    /// every 10 s.
    pub fn new(name: impl Into<String>) -> Self {
        NodeConfig {
            name: name.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            pod_cidr: None,
            max_pods: DEFAULT_MAX_PODS,
            reserved_cpu_millis: 0,
            reserved_memory_bytes: 0,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }

    /// Refuses a config the API server would refuse as a Node, or that cannot run.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Error::Config {
            field: field.to_string(),
            reason,
        };
        names::is_dns1123_subdomain(&self.name).map_err(|r| bad("node name", r))?;
        for (key, value) in &self.labels {
            names::is_qualified_name(key).map_err(|r| bad("node labels", r))?;
            names::is_label_value(value).map_err(|r| bad("node labels", r))?;
        }
        for taint in &self.taints {
            names::is_qualified_name(&taint.key).map_err(|r| bad("node taints", r))?;
            if let Some(value) = &taint.value {
                names::is_label_value(value).map_err(|r| bad("node taints", r))?;
            }
            if taint.effect == TaintEffect::Any {
                return Err(bad(
                    "node taints",
                    format!(
                        "taint {:?} needs an effect (NoSchedule, PreferNoSchedule or NoExecute)",
                        taint.key
                    ),
                ));
            }
        }
        if let Some(cidr) = &self.pod_cidr {
            cidr.parse::<ipnet::IpNet>()
                .map_err(|e| bad("pod CIDR", format!("{cidr:?}: {e}")))?;
        }
        if self.max_pods == 0 {
            return Err(bad("max pods", "must be at least 1".into()));
        }
        if self.heartbeat.is_zero() {
            return Err(bad("heartbeat", "must be longer than zero".into()));
        }
        Ok(())
    }
}

/// The store key of the Node named `name`.
pub fn node_key(name: &str) -> String {
    object_key("", "Node", None, name)
}

/// What the node is short of, by the kubelet's default eviction thresholds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `MemAvailable` is under 100Mi.
    pub memory: bool,
    /// The root filesystem has under 10% of its space or under 5% of its inodes free.
    pub disk: bool,
}

impl Pressure {
    /// Reads the host's state now. A figure that cannot be read counts as no pressure: a
    /// condition claiming pressure makes the scheduler turn pods away, which a missing
    /// `/proc` field must not cause.
    pub fn observe() -> Pressure {
        let memory = std::fs::read_to_string(MEMINFO)
            .ok()
            .and_then(|text| meminfo_kib(&text, "MemAvailable"))
            .is_some_and(|kib| kib.saturating_mul(1024) < MEMORY_AVAILABLE_MIN_BYTES);
        let disk = match nix::sys::statvfs::statvfs("/") {
            Ok(fs) => {
                let short = |free: u64, total: u64, min_percent: u64| {
                    total > 0 && free.saturating_mul(100) < total.saturating_mul(min_percent)
                };
                short(
                    fs.blocks_available(),
                    fs.blocks(),
                    DISK_AVAILABLE_MIN_PERCENT,
                ) || short(fs.files_free(), fs.files(), INODES_FREE_MIN_PERCENT)
            }
            Err(e) => {
                tracing::debug!(error = %e, "statvfs / failed; not reporting disk pressure");
                false
            }
        };
        Pressure { memory, disk }
    }
}

/// The value of `field` in `/proc/meminfo` text, in KiB (the kernel's `kB` is KiB).
pub fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        let mut words = rest.split_whitespace();
        let n = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") | None => Some(n),
            Some(_) => None,
        }
    })
}

/// Go's name (`GOARCH`, what `kubernetes.io/arch` holds) of a Rust target architecture
/// (`std::env::consts::ARCH`). Rust names one architecture for both byte orders where Go
/// names two, so the byte order is asked for. An architecture Go does not know keeps its
/// Rust name.
pub fn go_arch(rust_arch: &str, little_endian: bool) -> &str {
    match (rust_arch, little_endian) {
        ("x86_64", _) => "amd64",
        ("x86", _) => "386",
        ("aarch64", _) => "arm64",
        ("arm", _) => "arm",
        ("loongarch64", _) => "loong64",
        ("powerpc64", true) => "ppc64le",
        ("powerpc64", false) => "ppc64",
        ("mips64", true) => "mips64le",
        ("mips64", false) => "mips64",
        ("mips", true) => "mipsle",
        ("mips", false) => "mips",
        ("riscv64", _) => "riscv64",
        ("s390x", _) => "s390x",
        ("wasm32", _) => "wasm",
        (other, _) => other,
    }
}

/// Go's name of this machine's architecture.
pub fn host_arch() -> &'static str {
    go_arch(std::env::consts::ARCH, cfg!(target_endian = "little"))
}

/// `PRETTY_NAME` of an os-release file, unquoted.
pub fn os_release_pretty_name(text: &str) -> Option<String> {
    let value = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("PRETTY_NAME="))?
        .trim();
    let unquoted = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    // os-release quoting is shell quoting: undo the escapes it allows in double quotes.
    let mut out = String::with_capacity(unquoted.len());
    let mut chars = unquoted.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(next @ ('"' | '\\' | '$' | '`'))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The Node this machine is, as the agent would register it now.
pub fn host_node(cfg: &NodeConfig) -> Result<Node> {
    cfg.validate()?;
    let now = now_rfc3339();
    let arch = host_arch();

    let cpus = online_cpus();
    let meminfo =
        std::fs::read_to_string(MEMINFO).map_err(Error::io("read memory size", MEMINFO))?;
    let mem_kib = meminfo_kib(&meminfo, "MemTotal").ok_or_else(|| Error::State {
        path: PathBuf::from(MEMINFO),
        reason: "no MemTotal line".into(),
    })?;

    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), Quantity::new(cpus.to_string()));
    // The kubelet reports memory in Ki, as the kernel counts it.
    capacity.insert("memory".to_string(), Quantity::new(format!("{mem_kib}Ki")));
    capacity.insert("pods".to_string(), Quantity::new(cfg.max_pods.to_string()));

    let mut allocatable = capacity.clone();
    let cpu_millis = cpus
        .saturating_mul(1000)
        .saturating_sub(cfg.reserved_cpu_millis);
    allocatable.insert(
        "cpu".to_string(),
        Quantity::from_milli(i64::try_from(cpu_millis).unwrap_or(i64::MAX)),
    );
    let mem_bytes = mem_kib
        .saturating_mul(1024)
        .saturating_sub(cfg.reserved_memory_bytes);
    allocatable.insert("memory".to_string(), bytes_quantity(mem_bytes));

    let mut labels = cfg.labels.clone();
    labels.insert(LABEL_HOSTNAME.to_string(), cfg.name.clone());
    labels.insert(LABEL_OS.to_string(), "linux".to_string());
    labels.insert(LABEL_ARCH.to_string(), arch.to_string());

    let taints: Vec<Taint> = cfg
        .taints
        .iter()
        .map(|t| {
            let mut t = t.clone();
            // Kubernetes stamps the time a NoExecute taint was added: tolerationSeconds of
            // running pods count from it.
            if t.effect == TaintEffect::NoExecute && t.time_added.is_none() {
                t.time_added = Some(now.clone());
            }
            t
        })
        .collect();

    let mut addresses = Vec::new();
    match primary_ipv4() {
        Some(ip) => addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        }),
        None => tracing::warn!("no IPv4 address found for the node; it gets no InternalIP"),
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: host_name().unwrap_or_else(|| cfg.name.clone()),
    });

    let node_info = NodeSystemInfo {
        machine_id: first_readable(&MACHINE_ID),
        kernel_version: first_readable(&[KERNEL_RELEASE]),
        os_image: Some(
            OS_RELEASE
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok())
                .and_then(|text| os_release_pretty_name(&text))
                // What the kubelet (cAdvisor) reports when it finds no os-release either.
                .unwrap_or_else(|| "Linux".into()),
        ),
        operating_system: Some("linux".into()),
        architecture: Some(arch.to_string()),
        kubelet_version: Some(format!("coxswain-{}", env!("CARGO_PKG_VERSION"))),
    };

    Ok(Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: ObjectMeta {
            name: cfg.name.clone(),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: cfg.pod_cidr.clone(),
            pod_cidrs: cfg.pod_cidr.clone().map(|c| vec![c]),
            unschedulable: None,
            taints: (!taints.is_empty()).then_some(taints),
        }),
        status: Some(NodeStatus {
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            conditions: Some(merge_conditions(
                conditions(Pressure::observe()),
                None,
                &now,
            )),
            addresses: Some(addresses),
            node_info: Some(node_info),
        }),
    })
}

/// The conditions the agent owns, as they stand, without timestamps (see [`merge_conditions`]).
/// Reasons are the kubelet's, since tools and people match on them.
pub fn conditions(pressure: Pressure) -> Vec<Condition> {
    let cond = |type_: &str, on: bool, reason_on: &str, reason_off: &str, what: &str| Condition {
        type_: type_.into(),
        status: if on { "True" } else { "False" }.into(),
        reason: Some(if on { reason_on } else { reason_off }.into()),
        message: Some(format!("coxswain agent has {what}")),
        ..Condition::default()
    };
    let memory = if pressure.memory {
        "insufficient memory available"
    } else {
        "sufficient memory available"
    };
    let disk = if pressure.disk {
        "disk pressure"
    } else {
        "no disk pressure"
    };
    vec![
        cond(
            CONDITION_MEMORY_PRESSURE,
            pressure.memory,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            memory,
        ),
        cond(
            CONDITION_DISK_PRESSURE,
            pressure.disk,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            disk,
        ),
        cond(
            CONDITION_PID_PRESSURE,
            false,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "sufficient PID available",
        ),
        Condition {
            type_: CONDITION_READY.into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("coxswain agent is posting ready status".into()),
            ..Condition::default()
        },
    ]
}

/// `observed` conditions stamped at `now` over the `stored` ones: every observed condition
/// gets `lastHeartbeatTime = now`, and keeps the stored `lastTransitionTime` when its status
/// is unchanged (else `now`). Stored conditions of other types (set by other components) are
/// kept as they are, in their place; new types are appended.
pub fn merge_conditions(
    observed: Vec<Condition>,
    stored: Option<&[Condition]>,
    now: &str,
) -> Vec<Condition> {
    let stamp = |mut c: Condition, before: Option<&Condition>| {
        c.last_heartbeat_time = Some(now.to_string());
        c.last_transition_time = before
            .filter(|b| b.status == c.status)
            .and_then(|b| b.last_transition_time.clone())
            .or_else(|| Some(now.to_string()));
        c
    };
    let mut observed: Vec<Option<Condition>> = observed.into_iter().map(Some).collect();
    let mut out = Vec::new();
    for before in stored.unwrap_or_default() {
        let mine = observed
            .iter_mut()
            .find(|o| o.as_ref().is_some_and(|o| o.type_ == before.type_))
            .and_then(Option::take);
        match mine {
            Some(c) => out.push(stamp(c, Some(before))),
            None => out.push(before.clone()),
        }
    }
    out.extend(observed.into_iter().flatten().map(|c| stamp(c, None)));
    out
}

/// Registers `node` in the store (see the module doc for what an existing Node keeps) and
/// returns it as stored, with its `resourceVersion`.
pub async fn register<K: Kv>(kv: &K, node: &Node) -> Result<Node> {
    let name = &node.metadata.name;
    // The name becomes a store key: a `/` in it would address another object.
    names::is_dns1123_subdomain(name).map_err(|reason| Error::Config {
        field: "node name".into(),
        reason,
    })?;
    let key = node_key(name);
    for attempt in 1..=CAS_ATTEMPTS {
        let (_, stored) = kv
            .get(&key, Consistency::Linearizable)
            .await
            .map_err(store_error(&key, "read"))?;
        let now = now_rfc3339();
        let (next, revision) = match stored {
            None => (for_create(node, &now)?, 0),
            Some(existing) => (
                for_existing(node, decode(&key, existing.value)?, &now),
                existing.mod_revision,
            ),
        };
        if let Some(written) = cas(kv, &key, revision, next).await? {
            tracing::info!(node = %name, created = revision == 0, "node registered");
            return Ok(written);
        }
        tracing::debug!(node = %name, attempt, "node changed while registering; retrying");
    }
    Err(conflict(&key, "register"))
}

/// Posts the agent's conditions for node `name` (see the module doc). A Node that is not in
/// the store is an error: the agent must [`register`] again.
pub async fn heartbeat<K: Kv>(kv: &K, name: &str, pressure: Pressure) -> Result<()> {
    match try_heartbeat(kv, name, pressure).await? {
        Beat::Posted => Ok(()),
        Beat::NotRegistered => Err(Error::State {
            path: PathBuf::from(node_key(name)),
            reason: "the node is not registered (it was deleted?)".into(),
        }),
    }
}

/// Registers the node, then posts its status every `cfg.heartbeat` until `shutdown` turns
/// true (or its sender is dropped). Store failures are logged and retried at the next beat,
/// since the control plane may be away for a while; a node deleted from the store is
/// registered again (the kubelet would need a restart for that). Only an unusable `cfg`
/// ends it early, with an error.
pub async fn run_heartbeat<K: Kv>(
    kv: &K,
    cfg: &NodeConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    cfg.validate()?;
    let mut registered = false;
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let beat = async {
            if !registered {
                let node = host_node(cfg)?;
                register(kv, &node).await?;
                registered = true;
                return Ok(());
            }
            match try_heartbeat(kv, &cfg.name, Pressure::observe()).await? {
                Beat::Posted => {}
                Beat::NotRegistered => {
                    tracing::warn!(node = %cfg.name, "node vanished from the store; registering it again");
                    registered = false;
                    let node = host_node(cfg)?;
                    register(kv, &node).await?;
                    registered = true;
                }
            }
            Ok::<(), Error>(())
        };
        // A store call that hangs must not hold shutdown up.
        tokio::select! {
            result = beat => {
                if let Err(e) = result {
                    tracing::warn!(node = %cfg.name, error = %e, "node status update failed; retrying at the next beat");
                }
            }
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.heartbeat) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!(node = %cfg.name, "node heartbeat stopped");
    Ok(())
}

/// What one heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    Posted,
    NotRegistered,
}

async fn try_heartbeat<K: Kv>(kv: &K, name: &str, pressure: Pressure) -> Result<Beat> {
    let key = node_key(name);
    for attempt in 1..=CAS_ATTEMPTS {
        let (_, stored) = kv
            .get(&key, Consistency::Linearizable)
            .await
            .map_err(store_error(&key, "read"))?;
        let Some(stored) = stored else {
            return Ok(Beat::NotRegistered);
        };
        let revision = stored.mod_revision;
        let mut node = decode(&key, stored.value)?;
        let now = now_rfc3339();
        let status = node.status.get_or_insert_with(NodeStatus::default);
        status.conditions = Some(merge_conditions(
            conditions(pressure),
            status.conditions.as_deref(),
            &now,
        ));
        node.metadata.resource_version = None;
        if cas(kv, &key, revision, node).await?.is_some() {
            tracing::trace!(node = %name, "heartbeat posted");
            return Ok(Beat::Posted);
        }
        tracing::debug!(node = %name, attempt, "node changed during the heartbeat; retrying");
    }
    Err(conflict(&key, "heartbeat"))
}

/// A new Node: `node` plus the metadata the API server would set on a create (no
/// `resourceVersion`: the store sets it).
fn for_create(node: &Node, now: &str) -> Result<Node> {
    let mut node = node.clone();
    node.metadata.uid = Some(new_uid()?);
    node.metadata.creation_timestamp = Some(now.to_string());
    node.metadata.generation = Some(1);
    node.metadata.resource_version = None;
    node.metadata.deletion_timestamp = None;
    Ok(node)
}

/// The stored Node updated by a restarted agent whose view is `ours`.
fn for_existing(ours: &Node, stored: Node, now: &str) -> Node {
    let mut next = stored.clone();
    let meta = &mut next.metadata;
    meta.resource_version = None;
    // Objects that came in without these (written raw, by an older version) get them now:
    // every stored object has a uid and a creation time in Kubernetes.
    if meta.uid.is_none() {
        meta.uid = new_uid()
            .inspect_err(|e| tracing::warn!(error = %e, "no uid for the node"))
            .ok();
    }
    if meta.creation_timestamp.is_none() {
        meta.creation_timestamp = Some(now.to_string());
    }
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for key in [LABEL_HOSTNAME, LABEL_OS, LABEL_ARCH] {
        if let Some(value) = ours.metadata.labels.as_ref().and_then(|l| l.get(key)) {
            labels.insert(key.to_string(), value.clone());
        }
    }

    let spec = next.spec.get_or_insert_with(NodeSpec::default);
    if let Some(cidr) = ours.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()) {
        match &spec.pod_cidr {
            None => {
                spec.pod_cidr = Some(cidr.clone());
                spec.pod_cidrs = Some(vec![cidr.clone()]);
            }
            // podCIDR is immutable once set in Kubernetes; the stored one stays.
            Some(theirs) if theirs != cidr => tracing::warn!(
                node = %ours.metadata.name, stored = %theirs, configured = %cidr,
                "the node's stored podCIDR differs from the configured one; keeping the stored one"
            ),
            Some(_) => {}
        }
    }
    if next.spec != stored.spec {
        let generation = stored.metadata.generation.filter(|g| *g >= 1).unwrap_or(1);
        next.metadata.generation = Some(generation.saturating_add(1));
    }

    let mut status = ours.status.clone().unwrap_or_default();
    let observed = status.conditions.take().unwrap_or_default();
    // Only the condition itself is ours; its timestamps are recomputed against the stored ones.
    let observed = observed
        .into_iter()
        .map(|c| Condition {
            last_heartbeat_time: None,
            last_transition_time: None,
            ..c
        })
        .collect();
    status.conditions = Some(merge_conditions(
        observed,
        stored.status.as_ref().and_then(|s| s.conditions.as_deref()),
        now,
    ));
    next.status = Some(status);
    next
}

/// Writes `node` at `key` if the key is still at `revision` (0: absent). `None` when another
/// write came first.
async fn cas<K: Kv>(kv: &K, key: &str, revision: Revision, mut node: Node) -> Result<Option<Node>> {
    let value = serde_json::to_value(&node).map_err(|e| Error::State {
        path: PathBuf::from(key),
        reason: format!("cannot encode the node: {e}"),
    })?;
    let result = kv
        .txn(Txn::compare_and_swap(key, revision, value))
        .await
        .map_err(store_error(key, "write"))?;
    if !result.succeeded {
        return Ok(None);
    }
    node.metadata.resource_version = Some(result.revision.to_string());
    Ok(Some(node))
}

fn decode(key: &str, value: Value) -> Result<Node> {
    serde_json::from_value(value).map_err(|e| Error::State {
        path: PathBuf::from(key),
        reason: format!("the stored object is not a Node: {e}"),
    })
}

/// A store failure, named after the key and the step. The crate's error has no store variant
/// yet; the store is the agent's state, so it is reported as such.
fn store_error(key: &str, step: &str) -> impl FnOnce(coxswain_store::Error) -> Error {
    let path = PathBuf::from(key);
    let step = step.to_string();
    move |e| Error::State {
        path,
        reason: format!("store {step} failed: {e}"),
    }
}

fn conflict(key: &str, what: &str) -> Error {
    Error::State {
        path: PathBuf::from(key),
        reason: format!(
            "{what}: the node kept changing under {CAS_ATTEMPTS} compare-and-swap attempts"
        ),
    }
}

fn new_uid() -> Result<String> {
    let uid = std::fs::read_to_string(RANDOM_UUID).map_err(Error::io("make a uid", RANDOM_UUID))?;
    Ok(uid.trim().to_string())
}

fn now_rfc3339() -> String {
    // Seconds, as Kubernetes' metav1.Time serialises.
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Online CPUs, as the kubelet (cAdvisor) counts them; not `available_parallelism`, which
/// shrinks with this process's affinity and cgroup quota, not the machine's size.
fn online_cpus() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN) {
        Ok(Some(n)) if n > 0 => n.unsigned_abs(),
        _ => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    }
}

/// Bytes as the kubelet would write them: in Ki when whole.
fn bytes_quantity(bytes: u64) -> Quantity {
    if bytes.is_multiple_of(1024) {
        Quantity::new(format!("{}Ki", bytes / 1024))
    } else {
        Quantity::new(bytes.to_string())
    }
}

/// The IPv4 address this host sends from by default: the source address of the default
/// route, found by `connect`ing a UDP socket (which only picks a route; nothing is sent).
/// Without a default route, the first address of an interface that is up and not loopback.
fn primary_ipv4() -> Option<Ipv4Addr> {
    let routed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.connect((Ipv4Addr::new(8, 8, 8, 8), 53))?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() && !ip.is_loopback() => Some(ip),
            _ => None,
        });
    routed.or_else(|| {
        use nix::net::if_::InterfaceFlags;
        nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
            let up = ifa.flags.contains(InterfaceFlags::IFF_UP)
                && !ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK);
            let ip = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
            (up && !ip.is_loopback() && !ip.is_link_local()).then_some(ip)
        })
    })
}

/// The host name, lowercased as the kubelet does.
fn host_name() -> Option<String> {
    let name = nix::unistd::gethostname().ok()?;
    let name = name.to_str()?.trim().to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// The trimmed content of the first of `paths` that can be read and is not empty.
fn first_readable(paths: &[&str]) -> Option<String> {
    paths.iter().find_map(|p| {
        let text = std::fs::read_to_string(Path::new(p)).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rust_architectures_map_to_go_names() {
        let cases = [
            ("x86_64", true, "amd64"),
            ("aarch64", true, "arm64"),
            ("x86", true, "386"),
            ("arm", true, "arm"),
            ("powerpc64", true, "ppc64le"),
            ("powerpc64", false, "ppc64"),
            ("mips64", true, "mips64le"),
            ("mips", false, "mips"),
            ("loongarch64", true, "loong64"),
            ("riscv64", true, "riscv64"),
            ("s390x", false, "s390x"),
            ("sparc64", false, "sparc64"),
        ];
        for (rust, le, go) in cases {
            assert_eq!(go_arch(rust, le), go, "{rust} (little endian: {le})");
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host_arch(), "amd64");
        #[cfg(target_arch = "aarch64")]
        assert_eq!(host_arch(), "arm64");
    }

    #[test]
    fn meminfo_fields_parse_in_kib() {
        let text = "MemTotal:       24683656 kB\nMemFree:        12697676 kB\n\
                    MemAvailable:   23795384 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(24_683_656));
        assert_eq!(meminfo_kib(text, "MemAvailable"), Some(23_795_384));
        assert_eq!(meminfo_kib(text, "HugePages_Total"), Some(0));
        // A prefix of a field name is not the field.
        assert_eq!(meminfo_kib(text, "Mem"), None);
        assert_eq!(meminfo_kib(text, "SwapTotal"), None);
        assert_eq!(meminfo_kib("MemTotal: lots kB\n", "MemTotal"), None);
        assert_eq!(meminfo_kib("MemTotal: 5 MB\n", "MemTotal"), None);
    }

    #[test]
    fn os_release_pretty_name_is_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_release_pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            os_release_pretty_name("PRETTY_NAME=Alpine\n").as_deref(),
            Some("Alpine")
        );
        assert_eq!(
            os_release_pretty_name("PRETTY_NAME='Fedora 40'\n").as_deref(),
            Some("Fedora 40")
        );
        assert_eq!(
            os_release_pretty_name(r#"PRETTY_NAME="say \"hi\"""#).as_deref(),
            Some(r#"say "hi""#)
        );
        assert_eq!(os_release_pretty_name("NAME=x\n"), None);
        assert_eq!(os_release_pretty_name("PRETTY_NAME=\"\"\n"), None);
    }

    #[test]
    fn memory_is_written_in_ki_when_whole() {
        assert_eq!(bytes_quantity(2048).as_str(), "2Ki");
        assert_eq!(bytes_quantity(1000).as_str(), "1000");
        assert_eq!(bytes_quantity(0).as_str(), "0Ki");
    }

    fn stamped(type_: &str, status: &str, time: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            last_heartbeat_time: Some(time.into()),
            last_transition_time: Some(time.into()),
            ..Condition::default()
        }
    }

    #[test]
    fn merged_conditions_keep_transition_time_until_the_status_flips() {
        const OLD: &str = "2020-01-01T00:00:00Z";
        const NOW: &str = "2024-05-05T05:05:05Z";
        let stored = vec![
            stamped(CONDITION_MEMORY_PRESSURE, "False", OLD),
            stamped("NetworkUnavailable", "False", OLD),
            stamped(CONDITION_DISK_PRESSURE, "False", OLD),
        ];
        let merged = merge_conditions(
            conditions(Pressure {
                memory: false,
                disk: true,
            }),
            Some(&stored),
            NOW,
        );
        let by_type = |t: &str| merged.iter().find(|c| c.type_ == t).unwrap();

        let memory = by_type(CONDITION_MEMORY_PRESSURE);
        assert_eq!(memory.last_transition_time.as_deref(), Some(OLD));
        assert_eq!(memory.last_heartbeat_time.as_deref(), Some(NOW));

        let disk = by_type(CONDITION_DISK_PRESSURE);
        assert_eq!(disk.status, "True");
        assert_eq!(disk.reason.as_deref(), Some("KubeletHasDiskPressure"));
        assert_eq!(disk.last_transition_time.as_deref(), Some(NOW));

        // Another component's condition is left alone, in its place.
        assert_eq!(merged[1], stored[1]);

        // Types not stored before are appended, stamped now.
        let ready = by_type(CONDITION_READY);
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_transition_time.as_deref(), Some(NOW));
        assert_eq!(merged.len(), 5);
        assert_eq!(merged[4].type_, CONDITION_READY);
    }

    #[test]
    fn healthy_conditions_use_the_kubelet_reasons() {
        let c = conditions(Pressure::default());
        let got: Vec<(&str, &str, &str)> = c
            .iter()
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.status.as_str(),
                    c.reason.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID"),
                ("Ready", "True", "KubeletReady"),
            ]
        );
    }

    #[test]
    fn unusable_configs_are_refused() {
        let ok = NodeConfig::new("node-1");
        assert!(ok.validate().is_ok());
        type Edit = Box<dyn Fn(&mut NodeConfig)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("upper-case name", Box::new(|c| c.name = "Node".into())),
            ("empty name", Box::new(|c| c.name = String::new())),
            (
                "bad label key",
                Box::new(|c| {
                    c.labels.insert("-x".into(), "v".into());
                }),
            ),
            (
                "bad label value",
                Box::new(|c| {
                    c.labels.insert("x".into(), "a b".into());
                }),
            ),
            (
                "taint without effect",
                Box::new(|c| {
                    c.taints.push(Taint {
                        key: "k".into(),
                        value: None,
                        effect: TaintEffect::Any,
                        time_added: None,
                    });
                }),
            ),
            (
                "bad CIDR",
                Box::new(|c| c.pod_cidr = Some("10.0.0.0/33".into())),
            ),
            ("zero pods", Box::new(|c| c.max_pods = 0)),
            ("zero heartbeat", Box::new(|c| c.heartbeat = Duration::ZERO)),
        ];
        for (name, edit) in cases {
            let mut cfg = ok.clone();
            edit(&mut cfg);
            assert!(
                matches!(cfg.validate(), Err(Error::Config { .. })),
                "{name} was accepted"
            );
        }
    }

    #[test]
    fn uids_are_fresh_uuids() {
        let a = new_uid().unwrap();
        let b = new_uid().unwrap();
        assert_eq!(a.len(), 36, "{a}");
        assert_eq!(a.matches('-').count(), 4, "{a}");
        assert_ne!(a, b);
    }
}
