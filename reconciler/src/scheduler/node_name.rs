//! NodeName: a pod that names its node (`spec.nodeName`) fits only that node.

use super::NodeInfo;
use super::framework::{CycleState, Reason};
use super::pod_info::PodInfo;

/// Kubernetes' `ErrReason` of the NodeName plugin.
pub const REASON: &str = "node(s) didn't match the requested node name";

/// Passes every node for a pod without `spec.nodeName`, else only the named one.
pub fn filter<'n>(pod: &PodInfo, node: &'n NodeInfo, _: &CycleState<'_>) -> Result<(), Reason<'n>> {
    match &pod.node_name {
        Some(name) if name != node.name() => Err(Reason::Fixed(REASON)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, pod};

    #[test]
    fn only_the_named_node_fits() {
        let cases = [
            (None, "a", true),
            (Some("a"), "a", true),
            (Some("a"), "b", false),
        ];
        for (wanted, name, want) in cases {
            let mut p = pod("p");
            p.spec.node_name = wanted.map(str::to_string);
            let n = NodeInfo::new(node(name, "1", "1Gi", "10"));
            let got = filter(&PodInfo::new(&p), &n, &CycleState::default());
            assert_eq!(got.is_ok(), want, "{wanted:?} on {name}");
        }
    }
}
