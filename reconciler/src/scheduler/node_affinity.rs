//! NodeAffinity: `spec.nodeSelector` and the required `nodeAffinity` terms filter nodes; the
//! preferred terms score them (sum of matching weights, normalised; weight 2).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use coxswain_schema::kinds::pod::{
    NodeSelectorOperator, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
};

use super::framework::{CycleState, Reason, default_normalize};
use super::pod_info::PodInfo;
use super::{NodeInfo, Snapshot};

/// Kubernetes' `ErrReasonPod`.
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

/// Kubernetes' default weight for NodeAffinity.
pub const WEIGHT: i64 = 2;

/// The only field `matchFields` may name.
const FIELD_NAME: &str = "metadata.name";

/// One compiled requirement. `Gt`/`Lt` bounds are parsed here, once per pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: NodeSelectorOperator,
    values: Vec<String>,
    bound: i64,
}

/// By hand because the schema's operator enum has no `Hash`; hashes exactly the fields
/// the derived `PartialEq` compares, so equal requirements hash equal.
impl Hash for Requirement {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        (self.op as u8).hash(state);
        self.values.hash(state);
        self.bound.hash(state);
    }
}

/// A compiled `NodeSelectorTerm`. `None` when it can never match: it is empty (Kubernetes:
/// an empty term matches nothing) or invalid (a `Gt` value that is not an integer, a
/// field other than `metadata.name`), since Kubernetes drops such terms too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Term(Option<(Vec<Requirement>, Vec<Requirement>)>);

impl Term {
    fn new(term: &NodeSelectorTerm) -> Self {
        let compile = |reqs: Option<&Vec<NodeSelectorRequirement>>, fields: bool| {
            reqs.into_iter()
                .flatten()
                .map(|r| compile_requirement(r, fields))
                .collect::<Option<Vec<_>>>()
        };
        let exprs = compile(term.match_expressions.as_ref(), false);
        let fields = compile(term.match_fields.as_ref(), true);
        Term(match (exprs, fields) {
            (Some(e), Some(f)) if !(e.is_empty() && f.is_empty()) => Some((e, f)),
            _ => None,
        })
    }

    fn matches(&self, node: &NodeInfo) -> bool {
        let Some((exprs, fields)) = &self.0 else {
            return false;
        };
        let labels = node.labels();
        exprs
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| r.matches(Some(node.name())))
    }
}

fn compile_requirement(r: &NodeSelectorRequirement, field: bool) -> Option<Requirement> {
    use NodeSelectorOperator::*;
    let values = r.values.clone().unwrap_or_default();
    if field && (r.key != FIELD_NAME || !matches!(r.operator, In | NotIn)) {
        return None;
    }
    let bound = match r.operator {
        // Gt and Lt take exactly one integer, as Kubernetes' `newRequirement` insists.
        Gt | Lt => match values.as_slice() {
            [v] => v.parse().ok()?,
            _ => return None,
        },
        _ => 0,
    };
    Some(Requirement {
        key: r.key.clone(),
        op: r.operator,
        values,
        bound,
    })
}

impl Requirement {
    /// Matches the label value (`None` when the node lacks the label).
    fn matches(&self, value: Option<&str>) -> bool {
        use NodeSelectorOperator::*;
        match (self.op, value) {
            (In, Some(v)) => self.values.iter().any(|x| x == v),
            (In, None) => false,
            (NotIn, Some(v)) => !self.values.iter().any(|x| x == v),
            (NotIn, None) => true,
            (Exists, v) => v.is_some(),
            (DoesNotExist, v) => v.is_none(),
            (Gt, Some(v)) => v.parse::<i64>().is_ok_and(|v| v > self.bound),
            (Lt, Some(v)) => v.parse::<i64>().is_ok_and(|v| v < self.bound),
            (Gt | Lt, None) => false,
        }
    }
}

/// `nodeSelector` (every pair must match) AND the required terms (any one must match).
/// Hashable so the snapshot can cache which nodes match it (`Snapshot::node_mask`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequiredNodeAffinity {
    selector: Vec<(String, String)>,
    /// `None` when the pod has no required node affinity.
    terms: Option<Vec<Term>>,
}

impl RequiredNodeAffinity {
    pub fn new(spec: &PodSpec) -> Self {
        let selector = spec
            .node_selector
            .iter()
            .flat_map(BTreeMap::iter)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|s| s.node_selector_terms.iter().map(Term::new).collect());
        RequiredNodeAffinity { selector, terms }
    }

    /// Whether there is nothing to satisfy (every node matches).
    pub fn is_empty(&self) -> bool {
        self.selector.is_empty() && self.terms.is_none()
    }

    /// Whether the node satisfies both the selector and the required terms.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        let labels = node.labels();
        self.selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            && self
                .terms
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
    }
}

/// The preferred terms with their weights (zero weights dropped, as Kubernetes does).
#[derive(Debug, Clone, Default)]
pub struct PreferredNodeAffinity(Vec<(i64, Term)>);

impl PreferredNodeAffinity {
    pub fn new(spec: &PodSpec) -> Self {
        PreferredNodeAffinity(
            spec.affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .into_iter()
                .flatten()
                .filter(|p| p.weight != 0)
                .map(|p| (i64::from(p.weight), Term::new(&p.preference)))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Rejects nodes that fail `nodeSelector` or the required node affinity. Within a decision
/// the answer comes from the snapshot's per-node mask for this affinity (computed once and
/// shared by every replica of a workload); evaluated directly otherwise.
pub fn filter<'n>(
    pod: &PodInfo,
    node: &'n NodeInfo,
    state: &CycleState<'_>,
) -> Result<(), Reason<'n>> {
    let matches = match &state.node_mask {
        Some(mask) => mask.get(node.index).copied().unwrap_or(false),
        None => pod.required_node_affinity.matches(node),
    };
    if matches {
        Ok(())
    } else {
        Err(Reason::Fixed(REASON))
    }
}

/// The raw score: the sum of the weights of the preferred terms the node matches.
pub fn raw_score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.preferred_node_affinity
        .0
        .iter()
        .filter(|(_, t)| t.matches(node))
        .map(|(w, _)| w)
        .sum()
}

/// Scores by [`raw_score`], normalised so the best node gets 100. A pod with no preferred
/// terms scores 0 everywhere (Kubernetes skips the plugin).
pub fn score(pod: &PodInfo, snapshot: &Snapshot, feasible: &[usize], out: &mut [i64]) {
    if pod.preferred_node_affinity.is_empty() {
        return;
    }
    for (o, &i) in out.iter_mut().zip(feasible) {
        *o = raw_score(pod, &snapshot.nodes[i]);
    }
    default_normalize(out, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{labelled_node, pod_json};
    use serde_json::json;

    #[test]
    fn selector_and_required_terms_filter_nodes() {
        // (node labels, pod spec fragment, passes)
        let zone_a = &[("zone", "a"), ("gen", "5")][..];
        let req = |exprs: serde_json::Value| {
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}})
        };
        type Case = (
            &'static [(&'static str, &'static str)],
            serde_json::Value,
            bool,
        );
        let cases: Vec<Case> = vec![
            (zone_a, json!({}), true),
            (zone_a, json!({"nodeSelector": {"zone": "a"}}), true),
            (zone_a, json!({"nodeSelector": {"zone": "b"}}), false),
            (zone_a, json!({"nodeSelector": {"disk": "ssd"}}), false),
            (
                zone_a,
                req(json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])),
                true,
            ),
            (
                zone_a,
                req(json!([{"key": "zone", "operator": "In", "values": ["b"]}])),
                false,
            ),
            (
                zone_a,
                req(json!([{"key": "zone", "operator": "NotIn", "values": ["b"]}])),
                true,
            ),
            (
                zone_a,
                req(json!([{"key": "disk", "operator": "NotIn", "values": ["x"]}])),
                true,
            ),
            (
                zone_a,
                req(json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])),
                false,
            ),
            (
                zone_a,
                req(json!([{"key": "zone", "operator": "Exists"}])),
                true,
            ),
            (
                zone_a,
                req(json!([{"key": "disk", "operator": "Exists"}])),
                false,
            ),
            (
                zone_a,
                req(json!([{"key": "disk", "operator": "DoesNotExist"}])),
                true,
            ),
            (
                zone_a,
                req(json!([{"key": "zone", "operator": "DoesNotExist"}])),
                false,
            ),
            (
                zone_a,
                req(json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])),
                true,
            ),
            (
                zone_a,
                req(json!([{"key": "gen", "operator": "Gt", "values": ["5"]}])),
                false,
            ),
            (
                zone_a,
                req(json!([{"key": "gen", "operator": "Lt", "values": ["6"]}])),
                true,
            ),
            (
                zone_a,
                req(json!([{"key": "zone", "operator": "Lt", "values": ["6"]}])),
                false,
            ),
            (
                zone_a,
                req(json!([{"key": "gen", "operator": "Gt", "values": ["x"]}])),
                false,
            ),
            // Expressions in a term are ANDed.
            (
                zone_a,
                req(json!([{"key": "zone", "operator": "Exists"},
                           {"key": "gen", "operator": "In", "values": ["4"]}])),
                false,
            ),
            // Terms are ORed.
            (
                zone_a,
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}),
                true,
            ),
            // matchFields on metadata.name.
            (
                zone_a,
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchFields":
                        [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}]}}}}),
                true,
            ),
            // An empty term matches nothing.
            (
                zone_a,
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{}]}}}}),
                false,
            ),
            // nodeSelector and affinity must both hold.
            (
                zone_a,
                {
                    let mut v = req(json!([{"key": "zone", "operator": "Exists"}]));
                    v["nodeSelector"] = json!({"zone": "b"});
                    v
                },
                false,
            ),
        ];
        for (labels, spec, want) in cases {
            let node = NodeInfo::new(labelled_node("n", labels));
            let pod = PodInfo::new(&pod_json("p", spec.clone()));
            let got = filter(&pod, &node, &CycleState::default());
            assert_eq!(got.is_ok(), want, "{spec}");
            if !want {
                assert_eq!(got, Err(Reason::Fixed(REASON)));
            }
        }
    }

    #[test]
    fn preferred_terms_score_by_normalised_weight() {
        let spec = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
            {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
            {"weight": 0, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}
        ]}}});
        // (labels, raw score, normalised score)
        type Case = (&'static [(&'static str, &'static str)], i64, i64);
        let cases: &[Case] = &[
            (&[("zone", "a"), ("disk", "ssd")], 40, 100),
            (&[("disk", "ssd")], 30, 75),
            (&[("zone", "a")], 10, 25),
            (&[("zone", "b")], 0, 0),
        ];
        let nodes: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| labelled_node(&format!("n{i}"), c.0))
            .collect();
        let snap = Snapshot::new(&nodes, &[]);
        let pod = PodInfo::new(&pod_json("p", spec));
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(raw_score(&pod, &snap.nodes[i]), c.1, "{:?}", c.0);
        }
        let feasible: Vec<usize> = (0..cases.len()).collect();
        let mut out = vec![0; cases.len()];
        score(&pod, &snap, &feasible, &mut out);
        assert_eq!(out, cases.iter().map(|c| c.2).collect::<Vec<_>>());
    }
}
