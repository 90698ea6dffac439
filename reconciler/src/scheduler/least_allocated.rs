//! NodeResourcesFit score, `LeastAllocated` strategy (Kubernetes' default, weight 1): the
//! more cpu and memory a node would have left after taking the pod, the higher it scores,
//! which spreads pods across nodes. Requests count with Kubernetes' non-zero defaults so
//! that pods requesting nothing still spread.

use super::pod_info::PodInfo;
use super::{NodeInfo, Snapshot};

/// Kubernetes' default weight for NodeResourcesFit.
pub const WEIGHT: i64 = 1;

/// `(capacity - requested) * 100 / capacity`, 0 when over capacity (Kubernetes'
/// `leastRequestedScore`).
fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * 100 / capacity
}

/// The node's score: the mean of the cpu and memory scores, each resource weighing 1. A
/// resource the node does not offer is left out (Kubernetes skips zero allocatable).
pub fn node_score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let alloc = node.allocatable();
    let used = node.non_zero_requested();
    let want = pod.non_zero_requests;
    let (mut sum, mut weights) = (0, 0);
    for (requested, capacity) in [
        (used.milli_cpu + want.milli_cpu, alloc.milli_cpu),
        (used.memory + want.memory, alloc.memory),
    ] {
        if capacity == 0 {
            continue;
        }
        sum += least_requested(requested, capacity);
        weights += 1;
    }
    if weights == 0 { 0 } else { sum / weights }
}

/// Scores every feasible node by [`node_score`]; already 0..=100, so no normalisation.
pub fn score(pod: &PodInfo, snapshot: &Snapshot, feasible: &[usize], out: &mut [i64]) {
    for (o, &i) in out.iter_mut().zip(feasible) {
        *o = node_score(pod, &snapshot.nodes[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, pod_requesting};
    use std::sync::Arc;

    #[test]
    fn emptier_nodes_score_higher() {
        // (node cpu, mem; bound request; pod request; score)
        type Req = (Option<&'static str>, Option<&'static str>);
        let cases: &[((&str, &str), Req, Req, i64)] = &[
            // cpu (4000-1000)/4000 = 75, memory (8-2)/8 = 75.
            (
                ("4", "8Gi"),
                (Some("0"), Some("0")),
                (Some("1"), Some("2Gi")),
                75,
            ),
            // cpu (4000-3000)/4000 = 25, memory (8-2)/8 = 75 → 50.
            (
                ("4", "8Gi"),
                (Some("2"), Some("0")),
                (Some("1"), Some("2Gi")),
                50,
            ),
            // Over capacity scores 0 for that resource: cpu 0, memory 75 → 37.
            (
                ("1", "8Gi"),
                (Some("1"), Some("0")),
                (Some("1"), Some("2Gi")),
                37,
            ),
            // No requests: 100m and 200Mi defaults count. cpu (1000-100)/1000 = 90,
            // memory (1024-200)/1024*100 = 80 → 85.
            (("1", "1Gi"), (Some("0"), Some("0")), (None, None), 85),
            // A bound pod without requests counts its defaults too: cpu 1100 of 4000 → 72,
            // memory 2248Mi of 8192Mi → 72.
            (("4", "8Gi"), (None, None), (Some("1"), Some("2Gi")), 72),
        ];
        for ((cpu, mem), bound, want, score) in cases {
            let mut n = NodeInfo::new(node("n", cpu, mem, "10"));
            n.add_pod(Arc::new(PodInfo::new(&pod_requesting(
                "b", bound.0, bound.1,
            ))));
            let p = PodInfo::new(&pod_requesting("p", want.0, want.1));
            assert_eq!(node_score(&p, &n), *score, "{cpu}/{mem} {bound:?} {want:?}");
        }
    }
}
