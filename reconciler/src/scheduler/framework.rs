//! The framework: runs the filter plugins over the nodes, the score plugins over the nodes
//! that pass, and picks one — Kubernetes' `schedulePod` in miniature.
//!
//! ## One decision
//!
//! 1. PreFilter: [`CycleState`] precomputes, once per pod, what the inter-pod plugins need
//!    from the whole cluster (topology-pair counts). A pod whose requests do not parse stops
//!    here.
//! 2. Filter: the nodes are visited round-robin from `pod hash % nodes`; each runs the
//!    [`FILTERS`] in order and the first failure is the node's reason (Kubernetes stops at a
//!    node's first failing plugin too). The scan stops once
//!    [`num_feasible_nodes_to_find`] nodes passed — Kubernetes' `percentageOfNodesToScore`.
//!    Starting at a per-pod offset is our stand-in for Kubernetes' `nextStartNodeIndex`:
//!    both make successive pods look at different slices of a large cluster, but ours is a
//!    pure function of the pod, so a decision does not depend on what was decided before.
//! 3. Score: every [`SCORES`] plugin fills a normalised 0..=100 per feasible node, times its
//!    weight, summed. With a single feasible node scoring is skipped (score 0), as in
//!    Kubernetes.
//! 4. Select: the highest total wins; ties go to the node whose `mix(pod hash ^ node hash)`
//!    is largest. Kubernetes picks a random top node; a hash keeps a decision reproducible
//!    (tests, replays, two replicas agreeing) while still sending equal pods of a batch to
//!    different equal nodes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use coxswain_schema::kinds::core::Taint;
use coxswain_schema::kinds::pod::Pod;

use super::pod_info::PodInfo;
use super::{
    NodeInfo, Snapshot, balanced_allocation, image_locality, inter_pod_affinity, least_allocated,
    mix, node_affinity, node_name, node_ports, node_resources_fit, node_unschedulable,
    pod_topology_spread, taint_toleration,
};

/// Where a pod goes: the node's name and its total weighted score (0 when it was the only
/// feasible node and scoring was skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub node: String,
    pub score: i64,
}

/// Why a filter rejected a node. Borrowed from the node so that a rejection costs nothing
/// unless the pod ends up unschedulable and the message is rendered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason<'a> {
    /// A fixed message, one of the plugins' `REASON` constants.
    Fixed(&'static str),
    /// NodeResourcesFit reports every resource that does not fit, each counted separately.
    Insufficient { pods: bool, cpu: bool, memory: bool },
    /// TaintToleration names the first untolerated taint.
    UntoleratedTaint(&'a Taint),
}

impl Reason<'_> {
    /// Equality that settles the common case, the same `REASON` constant, by address
    /// before comparing text: the failure tally runs this for every rejected node.
    fn same(&self, other: &Reason<'_>) -> bool {
        match (self, other) {
            (Reason::Fixed(a), Reason::Fixed(b)) => std::ptr::eq(*a, *b) || a == b,
            _ => self == other,
        }
    }

    /// The messages this reason counts under in [`Unschedulable::reasons`].
    pub fn messages(&self) -> Vec<String> {
        match self {
            Reason::Fixed(m) => vec![m.to_string()],
            Reason::Insufficient { pods, cpu, memory } => [
                (*pods, node_resources_fit::REASON_PODS),
                (*cpu, node_resources_fit::REASON_CPU),
                (*memory, node_resources_fit::REASON_MEMORY),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, m)| m.to_string())
            .collect(),
            Reason::UntoleratedTaint(t) => vec![taint_toleration::reason_message(t)],
        }
    }
}

/// No node can take the pod. Displays exactly like Kubernetes' `FitError`, e.g.
/// `0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient memory.`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    /// Nodes in the snapshot.
    pub num_nodes: usize,
    /// Reason message to the number of nodes that failed with it.
    pub reasons: BTreeMap<String, usize>,
    /// Set when the pod failed before any node was looked at; replaces the histogram.
    pub pre_filter: Option<String>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 && self.pre_filter.is_none() {
            // Kubernetes' ErrNoNodesAvailable, returned before any filtering.
            return f.write_str("no nodes available to schedule pods");
        }
        write!(f, "0/{} nodes are available:", self.num_nodes)?;
        if let Some(m) = &self.pre_filter {
            return write!(f, " {m}.");
        }
        // Kubernetes sorts the rendered "<count> <reason>" strings, count included.
        let mut items: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        items.sort();
        write!(f, " {}.", items.join(", "))
    }
}

impl std::error::Error for Unschedulable {}

/// Per-pod precomputation shared by the filters (Kubernetes' CycleState after PreFilter).
/// `None` means the plugin has nothing to check for this pod.
#[derive(Debug, Default)]
pub struct CycleState<'s> {
    /// Which nodes pass the pod's required node affinity; `None` when it has none.
    pub(super) node_mask: Option<Arc<Vec<bool>>>,
    pub(super) inter_pod_affinity: Option<inter_pod_affinity::PreFilterState<'s>>,
    pub(super) topology_spread: Option<pod_topology_spread::PreFilterState<'s>>,
}

impl<'s> CycleState<'s> {
    pub fn new(pod: &'s PodInfo, snapshot: &'s Snapshot) -> Self {
        let affinity = &pod.required_node_affinity;
        CycleState {
            node_mask: (!affinity.is_empty()).then(|| snapshot.node_mask(affinity)),
            inter_pod_affinity: inter_pod_affinity::pre_filter(pod, snapshot),
            topology_spread: pod_topology_spread::pre_filter(pod, snapshot),
        }
    }
}

/// A filter: `Ok` if the node can run the pod, else the reason.
pub type FilterFn = for<'n> fn(&PodInfo, &'n NodeInfo, &CycleState<'_>) -> Result<(), Reason<'n>>;

/// A score: given the feasible nodes (indexes into the snapshot), writes each one's
/// normalised 0..=100 score into the same position of `out` (which starts zeroed).
pub type ScoreFn = fn(&PodInfo, &Snapshot, &[usize], &mut [i64]);

/// A named filter.
#[derive(Debug, Clone, Copy)]
pub struct FilterPlugin {
    pub name: &'static str,
    pub filter: FilterFn,
}

/// A named, weighted score.
#[derive(Debug, Clone, Copy)]
pub struct ScorePlugin {
    pub name: &'static str,
    pub weight: i64,
    pub score: ScoreFn,
}

/// The filters, in Kubernetes' default order (cheap and decisive first).
pub const FILTERS: &[FilterPlugin] = &[
    FilterPlugin {
        name: "NodeUnschedulable",
        filter: node_unschedulable::filter,
    },
    FilterPlugin {
        name: "NodeName",
        filter: node_name::filter,
    },
    FilterPlugin {
        name: "TaintToleration",
        filter: taint_toleration::filter,
    },
    FilterPlugin {
        name: "NodeAffinity",
        filter: node_affinity::filter,
    },
    FilterPlugin {
        name: "NodePorts",
        filter: node_ports::filter,
    },
    FilterPlugin {
        name: "NodeResourcesFit",
        filter: node_resources_fit::filter,
    },
    FilterPlugin {
        name: "PodTopologySpread",
        filter: pod_topology_spread::filter,
    },
    FilterPlugin {
        name: "InterPodAffinity",
        filter: inter_pod_affinity::filter,
    },
];

/// The scores, with Kubernetes' default weights.
pub const SCORES: &[ScorePlugin] = &[
    ScorePlugin {
        name: "TaintToleration",
        weight: taint_toleration::WEIGHT,
        score: taint_toleration::score,
    },
    ScorePlugin {
        name: "NodeAffinity",
        weight: node_affinity::WEIGHT,
        score: node_affinity::score,
    },
    ScorePlugin {
        name: "NodeResourcesFit",
        weight: least_allocated::WEIGHT,
        score: least_allocated::score,
    },
    ScorePlugin {
        name: "PodTopologySpread",
        weight: pod_topology_spread::WEIGHT,
        score: pod_topology_spread::score,
    },
    ScorePlugin {
        name: "InterPodAffinity",
        weight: inter_pod_affinity::WEIGHT,
        score: inter_pod_affinity::score,
    },
    ScorePlugin {
        name: "NodeResourcesBalancedAllocation",
        weight: balanced_allocation::WEIGHT,
        score: balanced_allocation::score,
    },
    ScorePlugin {
        name: "ImageLocality",
        weight: image_locality::WEIGHT,
        score: image_locality::score,
    },
];

/// Below this many nodes every node is scored (Kubernetes' `minFeasibleNodesToFind`).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive percentage never drops below this (`minFeasibleNodesPercentageToFind`).
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;
/// The adaptive percentage starts here and falls by 1 per 125 nodes.
const BASE_PERCENTAGE_OF_NODES_TO_SCORE: usize = 50;

/// How many feasible nodes to find before scoring, Kubernetes' adaptive
/// `percentageOfNodesToScore`: all nodes below 100; else `50% - nodes/125`, at least 5%,
/// and never fewer than 100 nodes. 5,000 nodes → 10% → 500. Scoring a sample keeps a
/// decision's cost flat as the cluster grows, and a good-enough node from a large sample is
/// as good in practice as the best one.
pub fn num_feasible_nodes_to_find(num_nodes: usize) -> usize {
    if num_nodes < MIN_FEASIBLE_NODES_TO_FIND {
        return num_nodes;
    }
    let percentage = BASE_PERCENTAGE_OF_NODES_TO_SCORE
        .saturating_sub(num_nodes / 125)
        .max(MIN_FEASIBLE_NODES_PERCENTAGE);
    (num_nodes * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Buffers reused across the decisions of a batch, so a decision allocates almost nothing.
#[derive(Debug, Default)]
struct Scratch {
    feasible: Vec<usize>,
    totals: Vec<i64>,
    plugin: Vec<i64>,
}

/// Decides one pod against `snapshot`. See the module doc for the steps.
pub fn schedule_one(snapshot: &Snapshot, pod: &Pod) -> Result<Decision, Unschedulable> {
    schedule_pod(snapshot, &PodInfo::new(pod))
}

/// [`schedule_one`] for an already compiled pod.
pub fn schedule_pod(snapshot: &Snapshot, pod: &PodInfo) -> Result<Decision, Unschedulable> {
    decide(snapshot, pod, &mut Scratch::default()).map(|(i, score)| Decision {
        node: snapshot.nodes[i].name().to_string(),
        score,
    })
}

/// Decides `pods` in order, assuming each placed pod onto its node before deciding the
/// next, so a batch never overcommits a node or breaks a spread or anti-affinity rule
/// among its own pods. Results are keyed `namespace/name`, in input order.
pub fn schedule_batch(
    snapshot: &mut Snapshot,
    pods: &[Pod],
) -> Vec<(String, Result<Decision, Unschedulable>)> {
    let _span =
        tracing::debug_span!("schedule_batch", pods = pods.len(), nodes = snapshot.len()).entered();
    let mut scratch = Scratch::default();
    let mut out = Vec::with_capacity(pods.len());
    for pod in pods {
        let info = PodInfo::new(pod);
        match decide(snapshot, &info, &mut scratch) {
            Ok((i, score)) => {
                let node = snapshot.nodes[i].name().to_string();
                let key = info.key.clone();
                snapshot.add(info, i);
                out.push((key, Ok(Decision { node, score })));
            }
            Err(e) => {
                tracing::debug!(pod = %info.key, reason = %e, "unschedulable");
                out.push((info.key, Err(e)));
            }
        }
    }
    out
}

/// Runs every filter on one node; the first failure is the node's reason.
fn run_filters<'n>(
    pod: &PodInfo,
    node: &'n NodeInfo,
    state: &CycleState<'_>,
) -> Result<(), Reason<'n>> {
    FILTERS
        .iter()
        .try_for_each(|plugin| (plugin.filter)(pod, node, state))
}

/// One decision: the chosen node's index and its total score.
fn decide(
    snapshot: &Snapshot,
    pod: &PodInfo,
    scratch: &mut Scratch,
) -> Result<(usize, i64), Unschedulable> {
    let n = snapshot.nodes.len();
    if let Some(msg) = &pod.invalid {
        return Err(Unschedulable {
            num_nodes: n,
            reasons: BTreeMap::new(),
            pre_filter: Some(msg.clone()),
        });
    }
    if n == 0 {
        return Err(Unschedulable {
            num_nodes: 0,
            reasons: BTreeMap::new(),
            pre_filter: None,
        });
    }
    let state = CycleState::new(pod, snapshot);
    let want = num_feasible_nodes_to_find(n);
    // `n` is non-zero here, and the remainder of a u64 by a usize fits a usize.
    let start = (pod.hash % n as u64) as usize;
    let feasible = &mut scratch.feasible;
    feasible.clear();
    // Distinct reasons with their counts; few in practice, so a linear scan beats a map, and
    // nothing is allocated while every node passes.
    let mut failures: Vec<(Reason<'_>, usize)> = Vec::new();
    for offset in 0..n {
        let i = (start + offset) % n;
        match run_filters(pod, &snapshot.nodes[i], &state) {
            Ok(()) => {
                feasible.push(i);
                if feasible.len() >= want {
                    break;
                }
            }
            Err(reason) => match failures.iter_mut().find(|(r, _)| r.same(&reason)) {
                Some((_, count)) => *count += 1,
                None => failures.push((reason, 1)),
            },
        }
    }
    if feasible.is_empty() {
        let mut reasons = BTreeMap::new();
        for (reason, count) in failures {
            for message in reason.messages() {
                *reasons.entry(message).or_insert(0) += count;
            }
        }
        return Err(Unschedulable {
            num_nodes: n,
            reasons,
            pre_filter: None,
        });
    }
    if let [only] = feasible[..] {
        return Ok((only, 0));
    }
    let feasible = &scratch.feasible;
    scratch.totals.clear();
    scratch.totals.resize(feasible.len(), 0);
    for plugin in SCORES {
        scratch.plugin.clear();
        scratch.plugin.resize(feasible.len(), 0);
        (plugin.score)(pod, snapshot, feasible, &mut scratch.plugin);
        for (total, s) in scratch.totals.iter_mut().zip(&scratch.plugin) {
            *total += s * plugin.weight;
        }
    }
    let tie_key = |i: usize| mix(pod.hash ^ snapshot.nodes[i].hash);
    // `feasible` has at least two entries here (the single-node case returned above), so
    // indexing the first is in bounds.
    let mut best = (scratch.totals[0], tie_key(feasible[0]), feasible[0]);
    for (&i, &total) in feasible.iter().zip(&scratch.totals).skip(1) {
        let candidate = (total, tie_key(i), i);
        if (candidate.0, candidate.1) > (best.0, best.1) {
            best = candidate;
        }
    }
    Ok((best.2, best.0))
}

/// Kubernetes' `DefaultNormalizeScore`: scales scores so the largest becomes 100; with
/// `reverse`, the largest becomes 0 and zero becomes 100 (for "fewer is better" counts).
/// All-zero scores stay 0, or become 100 when reversed.
pub(super) fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.fill(100);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = 100 * *s / max;
        *s = if reverse { 100 - v } else { v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_of_nodes_scored_adapts_to_cluster_size() {
        let cases = [
            (0, 0),
            (50, 50),
            (99, 99),
            (100, 100),
            // 50% - 1 = 49% of 150 = 73, raised to the 100-node floor.
            (150, 100),
            (1000, 420),
            (5000, 500),
            // 50 - 80 saturates to 0, floored at 5%.
            (10_000, 500),
            (100_000, 5000),
        ];
        for (nodes, want) in cases {
            assert_eq!(num_feasible_nodes_to_find(nodes), want, "{nodes} nodes");
        }
    }

    #[test]
    fn default_normalize_scales_to_100_and_reverses() {
        let cases: &[(&[i64], bool, &[i64])] = &[
            (&[0, 0], false, &[0, 0]),
            (&[0, 0], true, &[100, 100]),
            (&[1, 2, 4], false, &[25, 50, 100]),
            (&[1, 2, 4], true, &[75, 50, 0]),
        ];
        for (input, reverse, want) in cases {
            let mut s = input.to_vec();
            default_normalize(&mut s, *reverse);
            assert_eq!(&s[..], *want, "{input:?} reverse={reverse}");
        }
    }

    #[test]
    fn fit_error_sorts_count_and_reason_strings_like_kubernetes() {
        let mut reasons = BTreeMap::new();
        reasons.insert("Insufficient memory".to_string(), 2);
        reasons.insert(
            "node(s) had untolerated taint {dedicated: gpu}".to_string(),
            1,
        );
        let e = Unschedulable {
            num_nodes: 3,
            reasons,
            pre_filter: None,
        };
        assert_eq!(
            e.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
             2 Insufficient memory."
        );
        let none = Unschedulable {
            num_nodes: 0,
            reasons: BTreeMap::new(),
            pre_filter: None,
        };
        assert_eq!(none.to_string(), "no nodes available to schedule pods");
        let pre = Unschedulable {
            num_nodes: 2,
            reasons: BTreeMap::new(),
            pre_filter: Some("bad request".into()),
        };
        assert_eq!(pre.to_string(), "0/2 nodes are available: bad request.");
    }
}
