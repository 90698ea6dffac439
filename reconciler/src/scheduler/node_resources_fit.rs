//! NodeResourcesFit (filter half): the pod's cpu and memory requests must fit in what the
//! node has left (allocatable minus the bound pods' requests), and the node must have room
//! for one more pod. Its score half is `least_allocated.rs`.

use super::NodeInfo;
use super::framework::{CycleState, Reason};
use super::pod_info::PodInfo;

/// Kubernetes' reason for the `cpu` resource.
pub const REASON_CPU: &str = "Insufficient cpu";
/// Kubernetes' reason for the `memory` resource.
pub const REASON_MEMORY: &str = "Insufficient memory";
/// Kubernetes' reason when the node's `pods` allocatable is used up.
pub const REASON_PODS: &str = "Too many pods";

/// Rejects the node with every resource that does not fit (Kubernetes counts each).
/// A zero request always fits, even on an overcommitted node.
pub fn filter<'n>(pod: &PodInfo, node: &'n NodeInfo, _: &CycleState<'_>) -> Result<(), Reason<'n>> {
    let alloc = node.allocatable();
    let used = node.requested();
    let want = pod.requests;
    let pods = node.pods().len() as i64 + 1 > alloc.pods;
    let cpu = want.milli_cpu > 0 && want.milli_cpu > alloc.milli_cpu - used.milli_cpu;
    let memory = want.memory > 0 && want.memory > alloc.memory - used.memory;
    if pods || cpu || memory {
        Err(Reason::Insufficient { pods, cpu, memory })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, pod_requesting};
    use std::sync::Arc;

    #[test]
    fn requests_must_fit_what_bound_pods_left() {
        // (node cpu, mem, pods; bound pods' (cpu, mem) requests; wanted (cpu, mem); reasons)
        type Req = (Option<&'static str>, Option<&'static str>);
        type Capacity = (&'static str, &'static str, &'static str);
        type Case = (Capacity, &'static [Req], Req, &'static [&'static str]);
        let cases: &[Case] = &[
            (("2", "4Gi", "10"), &[], (Some("1"), Some("1Gi")), &[]),
            (
                ("2", "4Gi", "10"),
                &[(Some("1500m"), None)],
                (Some("500m"), None),
                &[],
            ),
            (
                ("2", "4Gi", "10"),
                &[(Some("1500m"), None)],
                (Some("501m"), None),
                &[REASON_CPU],
            ),
            (
                ("2", "4Gi", "10"),
                &[],
                (None, Some("5Gi")),
                &[REASON_MEMORY],
            ),
            (
                ("2", "4Gi", "10"),
                &[],
                (Some("3"), Some("5Gi")),
                &[REASON_CPU, REASON_MEMORY],
            ),
            // The pod count is checked even for a pod that requests nothing.
            (
                ("2", "4Gi", "1"),
                &[(None, None)],
                (None, None),
                &[REASON_PODS],
            ),
            (
                ("2", "4Gi", "1"),
                &[(None, None)],
                (Some("3"), None),
                &[REASON_PODS, REASON_CPU],
            ),
            // A zero request fits an overcommitted node.
            (
                ("1", "1Gi", "10"),
                &[(Some("2"), Some("2Gi"))],
                (None, None),
                &[],
            ),
        ];
        for ((cpu, mem, pods), bound, (want_cpu, want_mem), reasons) in cases {
            let mut n = NodeInfo::new(node("n", cpu, mem, pods));
            for (i, (c, m)) in bound.iter().enumerate() {
                n.add_pod(Arc::new(PodInfo::new(&pod_requesting(
                    &format!("b{i}"),
                    *c,
                    *m,
                ))));
            }
            let p = PodInfo::new(&pod_requesting("p", *want_cpu, *want_mem));
            let got = filter(&p, &n, &CycleState::default())
                .err()
                .map(|r| r.messages())
                .unwrap_or_default();
            assert_eq!(
                got, *reasons,
                "{cpu}/{mem}/{pods} {bound:?} {want_cpu:?} {want_mem:?}"
            );
        }
    }
}
