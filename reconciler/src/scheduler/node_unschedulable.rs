//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods that tolerate
//! the `node.kubernetes.io/unschedulable:NoSchedule` taint (DaemonSet pods do).

use coxswain_schema::kinds::pod::TaintEffect;

use super::framework::{CycleState, Reason};
use super::pod_info::PodInfo;
use super::{NodeInfo, taint_toleration};

/// Kubernetes' `ErrReasonUnschedulable`.
pub const REASON: &str = "node(s) were unschedulable";

/// The taint a cordoned node behaves as if it had.
pub const TAINT_KEY: &str = "node.kubernetes.io/unschedulable";

/// Rejects a cordoned node unless the pod tolerates [`TAINT_KEY`] with `NoSchedule`.
pub fn filter<'n>(pod: &PodInfo, node: &'n NodeInfo, _: &CycleState<'_>) -> Result<(), Reason<'n>> {
    if !node.unschedulable()
        || pod
            .tolerations
            .iter()
            .any(|t| taint_toleration::tolerates(t, TAINT_KEY, "", TaintEffect::NoSchedule))
    {
        return Ok(());
    }
    Err(Reason::Fixed(REASON))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, pod, toleration};

    #[test]
    fn cordoned_nodes_take_only_pods_tolerating_unschedulable() {
        // (node unschedulable, tolerations as (key, operator, value, effect), passes)
        type Tol = (&'static str, &'static str, &'static str, &'static str);
        let cases: &[(bool, &[Tol], bool)] = &[
            (false, &[], true),
            (true, &[], false),
            (true, &[(TAINT_KEY, "Exists", "", "NoSchedule")], true),
            (true, &[(TAINT_KEY, "Exists", "", "")], true),
            // An empty key with Exists tolerates every taint.
            (true, &[("", "Exists", "", "")], true),
            (true, &[(TAINT_KEY, "Exists", "", "NoExecute")], false),
            (true, &[("other", "Exists", "", "NoSchedule")], false),
        ];
        for (unschedulable, tols, want) in cases {
            let mut n = node("n", "1", "1Gi", "10");
            n.spec.get_or_insert_default().unschedulable = Some(*unschedulable);
            let mut p = pod("p");
            p.spec.tolerations = Some(
                tols.iter()
                    .map(|t| toleration(t.0, t.1, t.2, t.3))
                    .collect(),
            );
            let n = NodeInfo::new(n);
            let got = filter(&PodInfo::new(&p), &n, &CycleState::default());
            assert_eq!(got.is_ok(), *want, "unschedulable={unschedulable} {tols:?}");
            if !want {
                assert_eq!(got, Err(Reason::Fixed(REASON)));
            }
        }
    }
}
