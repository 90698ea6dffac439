//! NodeResourcesBalancedAllocation (weight 1): prefers nodes whose cpu and memory would be
//! used in similar proportions after taking the pod, so neither runs out while the other
//! idles. Uses the actual requests, not the non-zero defaults (as Kubernetes does).

use super::pod_info::PodInfo;
use super::{NodeInfo, Snapshot};

/// Kubernetes' default weight for NodeResourcesBalancedAllocation.
pub const WEIGHT: i64 = 1;

/// `(1 - std) * 100` of the requested fractions (each capped at 1). For two resources the
/// standard deviation is `|cpu - memory| / 2`; with one it is 0.
pub fn node_score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let alloc = node.allocatable();
    let used = node.requested();
    let want = pod.requests;
    // Fixed-size, no allocation: this runs for every feasible node of every decision.
    let fraction = |requested: i64, capacity: i64| {
        (capacity != 0).then(|| (requested as f64 / capacity as f64).min(1.0))
    };
    let cpu = fraction(used.milli_cpu + want.milli_cpu, alloc.milli_cpu);
    let memory = fraction(used.memory + want.memory, alloc.memory);
    let std = match (cpu, memory) {
        (Some(a), Some(b)) => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - std) * 100.0) as i64
}

/// Scores every feasible node by [`node_score`]; already 0..=100.
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
    fn balanced_use_scores_higher() {
        // (node cpu, mem; bound request; pod request; score)
        type Req = (Option<&'static str>, Option<&'static str>);
        let cases: &[((&str, &str), Req, Req, i64)] = &[
            // cpu 1/4, memory 2/8: equal → 100.
            (("4", "8Gi"), (None, None), (Some("1"), Some("2Gi")), 100),
            // cpu 3/4, memory 2/8: std 0.25 → 75.
            (
                ("4", "8Gi"),
                (Some("2"), None),
                (Some("1"), Some("2Gi")),
                75,
            ),
            // cpu capped at 1, memory 0: std 0.5 → 50.
            (("1", "8Gi"), (Some("2"), None), (None, None), 50),
            // Nothing requested anywhere: both 0 → 100.
            (("1", "1Gi"), (None, None), (None, None), 100),
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
