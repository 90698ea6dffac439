//! # The scheduler — start here
//!
//! The scheduling *logic* of coxswain: which node a pending pod should run on, or why none
//! can take it. Everything here is a pure function of a [`Snapshot`] (the nodes and the pods
//! bound to them) and the pod to place; reading the store and writing `spec.nodeName` are the
//! caller's job.
//!
//! The shape follows the Kubernetes scheduler framework, so its documentation explains ours:
//!
//! - [`PodInfo`] (`pod_info.rs`) is a pod compiled once: requests as integers, selectors
//!   compiled, tolerations, host ports, affinity terms, spread constraints. Nothing is parsed
//!   again while deciding.
//! - [`NodeInfo`] is one node plus what is bound to it (requested sums, used host ports, its
//!   pods); [`Snapshot`] holds every `NodeInfo` and the cluster-wide indexes the inter-pod
//!   plugins need. [`Snapshot::assume`] adds a just-decided pod so the next decision of a
//!   batch sees it.
//! - Filter plugins, one file each, in Kubernetes' order: `node_unschedulable`, `node_name`,
//!   `taint_toleration`, `node_affinity`, `node_ports`, `node_resources_fit`,
//!   `pod_topology_spread`, `inter_pod_affinity`. Each has a pure `filter` and `REASON`
//!   constants with Kubernetes' wording.
//! - Score plugins with Kubernetes' default weights: `least_allocated` (NodeResourcesFit, 1),
//!   `balanced_allocation` (1), `image_locality` (1), `inter_pod_affinity` (2),
//!   `node_affinity` (2), `pod_topology_spread` (2), `taint_toleration` (3). Each `score`
//!   writes a normalised 0..=100 per feasible node.
//! - `framework.rs` runs them: [`schedule_one`] and [`schedule_batch`], with the
//!   [`Unschedulable`] error that prints like Kubernetes' `FitError`.
//!
//! Deliberately left out: preemption, volume plugins, the system-default topology spread
//! constraints for pods that declare none, and `nodeAffinityPolicy`/`nodeTaintsPolicy`
//! (their defaults, Honor and Ignore, are what the code does).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use coxswain_schema::kinds::core::{Node, Taint};
use coxswain_schema::kinds::pod::Pod;
use coxswain_schema::quantity::Quantity;

pub mod balanced_allocation;
mod counts;
mod framework;
pub mod image_locality;
pub mod inter_pod_affinity;
pub mod least_allocated;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_fit;
pub mod node_unschedulable;
mod pod_info;
pub mod pod_topology_spread;
pub mod taint_toleration;
#[cfg(test)]
mod tests;

pub use framework::{
    CycleState, Decision, FILTERS, FilterFn, FilterPlugin, Reason, SCORES, ScoreFn, ScorePlugin,
    Unschedulable, num_feasible_nodes_to_find, schedule_batch, schedule_one, schedule_pod,
};
pub use node_ports::HostPort;
pub use pod_info::{PodInfo, Resources};

/// Labels of a node or namespace that has none; `BTreeMap::new` is const so this costs nothing.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// What a node offers to pods, from `status.allocatable` (Kubernetes' API server defaults a
/// missing allocatable to capacity, so we fall back to `status.capacity` the same way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub milli_cpu: i64,
    pub memory: i64,
    pub pods: i64,
}

/// One node and everything bound to it, kept up to date by [`Snapshot::assume`].
#[derive(Debug, Clone)]
pub struct NodeInfo {
    node: Node,
    allocatable: Allocatable,
    /// Sum of the bound pods' requests; what NodeResourcesFit subtracts from allocatable.
    requested: Resources,
    /// The same sum with Kubernetes' defaults (100m, 200Mi) for containers that request
    /// nothing; the LeastAllocated score uses it so empty requests still spread.
    non_zero_requested: Resources,
    used_ports: Vec<HostPort>,
    pods: Vec<Arc<PodInfo>>,
    /// Image name (normalised like Kubernetes: `:latest` added) to size in bytes.
    images: HashMap<String, i64>,
    /// Hash of the name, fixed per node, mixed with the pod's hash to break score ties.
    hash: u64,
    /// Position in the snapshot, for the per-node arrays of `counts.rs` (0 outside one).
    index: usize,
}

impl NodeInfo {
    /// A node with nothing bound to it yet.
    pub fn new(node: Node) -> Self {
        let allocatable = allocatable_of(&node);
        let hash = fnv1a(node.metadata.name.as_bytes());
        Self {
            node,
            allocatable,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            used_ports: Vec::new(),
            pods: Vec::new(),
            images: HashMap::new(),
            hash,
            index: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.node.metadata.name
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
    }

    pub fn unschedulable(&self) -> bool {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    pub fn allocatable(&self) -> Allocatable {
        self.allocatable
    }

    pub fn requested(&self) -> Resources {
        self.requested
    }

    pub fn non_zero_requested(&self) -> Resources {
        self.non_zero_requested
    }

    pub fn used_ports(&self) -> &[HostPort] {
        &self.used_ports
    }

    pub fn pods(&self) -> &[Arc<PodInfo>] {
        &self.pods
    }

    pub fn images(&self) -> &HashMap<String, i64> {
        &self.images
    }

    /// Accounts for a pod bound to this node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(pod.requests);
        self.non_zero_requested.add(pod.non_zero_requests);
        self.used_ports.extend(pod.host_ports.iter().cloned());
        self.pods.push(pod);
    }
}

/// Allocatable, or capacity when allocatable is absent. A quantity that does not parse counts
/// as 0: validation refuses such quantities before they reach the store, and offering
/// nothing is the safe reading of a node we cannot understand.
fn allocatable_of(node: &Node) -> Allocatable {
    let status = node.status.as_ref();
    let map = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    let get = |name: &str, f: fn(&Quantity) -> coxswain_schema::Result<i64>| {
        map.and_then(|m| m.get(name))
            .and_then(|q| f(q).ok())
            .unwrap_or(0)
    };
    Allocatable {
        milli_cpu: get("cpu", Quantity::milli_value),
        memory: get("memory", Quantity::value),
        pods: get("pods", Quantity::value),
    }
}

/// Every node and the pods bound to them, as one scheduling cycle (or a batch) sees them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Sorted by name so that decisions do not depend on the order the store listed nodes in.
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Labels of namespaces, for affinity terms with a `namespaceSelector`.
    namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// Image name to the number of nodes that have it (ImageLocality's "spread").
    image_nodes: HashMap<String, usize>,
    /// Bound pods with any pod affinity or anti-affinity term: the InterPodAffinity score
    /// only has to look at these when the incoming pod has no preferred terms of its own.
    with_affinity: Vec<(usize, Arc<PodInfo>)>,
    /// Bound pods with required anti-affinity terms, which every incoming pod must respect.
    with_required_anti_affinity: Vec<(usize, Arc<PodInfo>)>,
    /// Derived indexes (matching-pod counts, topology domains); see `counts.rs`.
    caches: counts::Caches,
}

impl Snapshot {
    /// Builds the snapshot: every node, and every pod with `spec.nodeName` naming one of
    /// them, except pods that have finished (phase `Succeeded` or `Failed`), which hold no
    /// resources. Pods bound to unknown nodes are ignored, as Kubernetes' cache does until
    /// the node appears.
    pub fn new(nodes: &[Node], pods: &[Pod]) -> Self {
        let mut infos: Vec<NodeInfo> = nodes.iter().cloned().map(NodeInfo::new).collect();
        infos.sort_by(|a, b| a.name().cmp(b.name()));
        for (i, n) in infos.iter_mut().enumerate() {
            n.index = i;
        }
        let index = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name().to_string(), i))
            .collect();
        let mut snap = Snapshot {
            nodes: infos,
            index,
            ..Snapshot::default()
        };
        for pod in pods {
            let finished = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            let Some(node) = pod.spec.node_name.as_deref() else {
                continue;
            };
            if finished {
                continue;
            }
            if let Some(&i) = snap.index.get(node) {
                snap.add(PodInfo::new(pod), i);
            }
        }
        snap
    }

    /// Adds `pod` to `node` as if it were bound there, so later decisions see its requests,
    /// ports and labels. Returns false (and changes nothing) if the node is unknown.
    pub fn assume(&mut self, pod: &Pod, node: &str) -> bool {
        match self.index.get(node) {
            Some(&i) => {
                self.add(PodInfo::new(pod), i);
                true
            }
            None => false,
        }
    }

    /// [`Snapshot::assume`] for an already compiled pod, at a node index.
    pub(crate) fn add(&mut self, pod: PodInfo, node: usize) {
        self.count_bound(&pod, node);
        let pod = Arc::new(pod);
        if pod.has_any_pod_affinity() {
            self.with_affinity.push((node, Arc::clone(&pod)));
        }
        if !pod.required_anti_affinity.is_empty() {
            self.with_required_anti_affinity
                .push((node, Arc::clone(&pod)));
        }
        self.nodes[node].add_pod(pod);
    }

    /// Sets a namespace's labels, for `namespaceSelector` in pod affinity terms. A namespace
    /// never set has no labels.
    pub fn set_namespace_labels(&mut self, namespace: &str, labels: BTreeMap<String, String>) {
        self.namespace_labels.insert(namespace.to_string(), labels);
        // Namespace selectors may now select different pods.
        self.caches.clear_counts();
    }

    /// Records the images (name, size in bytes) present on a node, for ImageLocality.
    /// `NodeStatus` has no image list yet, so whoever knows (the agent's image store) tells
    /// the snapshot here; without it ImageLocality scores every node 0, which changes no
    /// ranking. Returns false if the node is unknown.
    pub fn set_node_images(
        &mut self,
        node: &str,
        images: impl IntoIterator<Item = (String, i64)>,
    ) -> bool {
        let Some(&i) = self.index.get(node) else {
            return false;
        };
        let info = &mut self.nodes[i];
        for name in info.images.keys() {
            if let Some(n) = self.image_nodes.get_mut(name) {
                *n -= 1;
            }
        }
        info.images = images
            .into_iter()
            .map(|(name, size)| (image_locality::normalize(&name), size))
            .collect();
        for name in info.images.keys() {
            *self.image_nodes.entry(name.clone()).or_default() += 1;
        }
        self.image_nodes.retain(|_, n| *n > 0);
        true
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A namespace's labels (none if never set).
    pub(crate) fn namespace_labels(&self, namespace: &str) -> &BTreeMap<String, String> {
        self.namespace_labels.get(namespace).unwrap_or(&NO_LABELS)
    }
}

/// 64-bit FNV-1a: a fixed, seedless hash, so tie-breaks are the same on every run and every
/// replica (the std `RandomState` is seeded per process).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: turns `pod ^ node` into a well-mixed value so that which node
/// wins a tie looks random across pods, yet is fixed for one pod.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
