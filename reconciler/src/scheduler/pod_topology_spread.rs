//! PodTopologySpread: keeps matching pods evenly spread over topology domains.
//!
//! Filter (`whenUnsatisfiable: DoNotSchedule`): placing the pod in the node's domain must
//! keep `matching pods there + 1 (if the pod matches itself) - the fewest in any domain`
//! within `maxSkew`; a node without the topology label is rejected. Domains are the values
//! of the key on nodes that pass the pod's node selector/affinity (Kubernetes'
//! `nodeAffinityPolicy: Honor`; taints are ignored, `nodeTaintsPolicy: Ignore`).
//! With fewer domains than `minDomains`, the fewest counts as 0.
//!
//! Score (`ScheduleAnyway`, weight 2): fewer matching pods in the node's domains is better,
//! each constraint weighted by the log of its number of domains; normalised so the emptiest
//! node gets 100. Nodes lacking a constraint's key score 0.

use std::collections::BTreeMap;
use std::sync::Arc;

use coxswain_schema::kinds::pod::{TopologySpreadConstraint, WhenUnsatisfiable};
use coxswain_schema::selector::{
    LabelSelector, LabelSelectorRequirement, Selector, SelectorOperator,
};

use super::counts::{MatchTerm, PodMatcher, Topology};
use super::framework::{CycleState, Reason};
use super::pod_info::PodInfo;
use super::{NodeInfo, Snapshot};

/// Kubernetes' `ErrReasonConstraintsNotMatch`.
pub const REASON: &str = "node(s) didn't match pod topology spread constraints";
/// Kubernetes' `ErrReasonNodeLabelNotMatch`.
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// Kubernetes' default weight for PodTopologySpread.
pub const WEIGHT: i64 = 2;

/// The well-known hostname label: its domains are single nodes, counted on the spot.
const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

/// A compiled `TopologySpreadConstraint`.
#[derive(Debug, Clone)]
pub struct Constraint {
    max_skew: i64,
    topology_key: String,
    /// `DoNotSchedule`: a filter; else a score.
    hard: bool,
    /// Pods counted: the incoming pod's namespace, not being deleted, labels matching the
    /// selector with `matchLabelKeys` merged in. `None` (selector missing or invalid)
    /// counts no pod.
    matcher: Option<PodMatcher>,
    min_domains: usize,
    /// The pod matches its own selector, so placing it adds one to its domain.
    self_match: bool,
}

impl Constraint {
    /// Compiles `c` for a pod in `namespace` with `labels`: each `matchLabelKeys` key the
    /// pod has becomes a `key In (pod's value)` requirement, as Kubernetes merges them.
    pub fn new(
        c: &TopologySpreadConstraint,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Self {
        let selector = c.label_selector.as_ref().and_then(|s| {
            let mut s: LabelSelector = s.clone();
            for key in c.match_label_keys.iter().flatten() {
                if let Some(v) = labels.get(key) {
                    s.match_expressions.get_or_insert_with(Vec::new).push(
                        LabelSelectorRequirement {
                            key: key.clone(),
                            operator: SelectorOperator::In,
                            values: Some(vec![v.clone()]),
                        },
                    );
                }
            }
            Selector::from_label_selector(&s).ok()
        });
        let self_match = selector.as_ref().is_some_and(|s| s.matches(labels));
        let matcher = selector.and_then(|selector| {
            PodMatcher::new(
                vec![MatchTerm::new(vec![namespace.to_string()], None, selector)],
                true,
            )
        });
        Constraint {
            max_skew: i64::from(c.max_skew),
            topology_key: c.topology_key.clone(),
            hard: c.when_unsatisfiable == WhenUnsatisfiable::DoNotSchedule,
            matcher,
            min_domains: c.min_domains.map_or(1, |m| m.max(1) as usize),
            self_match,
        }
    }
}

/// One constraint's view of the cluster: each node's domain and matching pods per node.
#[derive(Debug)]
struct Counted<'s> {
    constraint: &'s Constraint,
    topology: Arc<Topology>,
    /// Per node index; `None` when the constraint counts no pod.
    per_node: Option<Arc<Vec<u32>>>,
}

impl<'s> Counted<'s> {
    fn new(constraint: &'s Constraint, snapshot: &Snapshot) -> Self {
        Counted {
            constraint,
            topology: snapshot.topology(&constraint.topology_key),
            per_node: constraint
                .matcher
                .as_ref()
                .map(|m| snapshot.matching_counts(m)),
        }
    }

    fn on_node(&self, node: usize) -> i64 {
        self.per_node
            .as_ref()
            .and_then(|c| c.get(node))
            .map_or(0, |&c| i64::from(c))
    }
}

/// Which nodes pass the pod's node selector/affinity (`nodeAffinityPolicy: Honor`);
/// `None` when every node does.
fn affinity_mask(pod: &PodInfo, snapshot: &Snapshot) -> Option<Arc<Vec<bool>>> {
    let affinity = &pod.required_node_affinity;
    (!affinity.is_empty()).then(|| snapshot.node_mask(affinity))
}

/// Whether node `i` counts toward domains: it carries every constraint's key and passes
/// the pod's node affinity.
fn eligible(mask: Option<&Vec<bool>>, counted: &[Counted<'_>], i: usize) -> bool {
    counted.iter().all(|c| c.topology.domain(i).is_some())
        && mask.is_none_or(|m| m.get(i).copied().unwrap_or(false))
}

/// Per DoNotSchedule constraint: matching pods per domain, and the smallest count.
#[derive(Debug)]
struct DomainCounts<'s> {
    counted: Counted<'s>,
    counts: Vec<i64>,
    min: i64,
}

/// What the filter needs, counted once per pod over all nodes.
#[derive(Debug)]
pub struct PreFilterState<'s>(Vec<DomainCounts<'s>>);

/// Counts matching pods per domain for the hard constraints. `None` when there are none.
pub fn pre_filter<'s>(pod: &'s PodInfo, snapshot: &'s Snapshot) -> Option<PreFilterState<'s>> {
    let counted: Vec<Counted<'s>> = pod
        .spread_constraints
        .iter()
        .filter(|c| c.hard)
        .map(|c| Counted::new(c, snapshot))
        .collect();
    if counted.is_empty() {
        return None;
    }
    // Per constraint, per domain: matching pods, and whether an eligible node is in it
    // (a domain of eligible but empty nodes is a domain with 0, and can be the minimum).
    let mut counts: Vec<Vec<i64>> = counted
        .iter()
        .map(|c| vec![0; c.topology.domains()])
        .collect();
    let mut present: Vec<Vec<bool>> = counted
        .iter()
        .map(|c| vec![false; c.topology.domains()])
        .collect();
    let mask = affinity_mask(pod, snapshot);
    for i in 0..snapshot.nodes.len() {
        if !eligible(mask.as_deref(), &counted, i) {
            continue;
        }
        for (k, c) in counted.iter().enumerate() {
            if let Some(d) = c.topology.domain(i) {
                present[k][d] = true;
                counts[k][d] += c.on_node(i);
            }
        }
    }
    let domains = counted
        .into_iter()
        .zip(counts)
        .zip(present)
        .map(|((counted, counts), present)| {
            let mut seen = 0;
            let mut min = i64::MAX;
            for (&n, _) in counts.iter().zip(&present).filter(|(_, p)| **p) {
                seen += 1;
                min = min.min(n);
            }
            // Too few domains: the global minimum counts as 0. No domain at all means no
            // node carries the key, and every node then fails on its missing label.
            let min = if seen < counted.constraint.min_domains {
                0
            } else {
                min
            };
            DomainCounts {
                counted,
                counts,
                min,
            }
        })
        .collect();
    Some(PreFilterState(domains))
}

/// Rejects the node if it lacks a constraint's key, or if placing the pod there would push
/// a domain more than `maxSkew` above the emptiest one.
pub fn filter<'n>(
    _pod: &PodInfo,
    node: &'n NodeInfo,
    state: &CycleState<'_>,
) -> Result<(), Reason<'n>> {
    let Some(PreFilterState(domains)) = &state.topology_spread else {
        return Ok(());
    };
    for d in domains {
        let c = d.counted.constraint;
        let Some(domain) = d.counted.topology.domain(node.index) else {
            return Err(Reason::Fixed(REASON_MISSING_LABEL));
        };
        if d.counts[domain] + i64::from(c.self_match) - d.min > c.max_skew {
            return Err(Reason::Fixed(REASON));
        }
    }
    Ok(())
}

/// Scores the feasible nodes for the ScheduleAnyway constraints (Kubernetes' PreScore,
/// Score and NormalizeScore). No such constraint leaves every node at 0 (skipped).
pub fn score(pod: &PodInfo, snapshot: &Snapshot, feasible: &[usize], out: &mut [i64]) {
    let counted: Vec<Counted<'_>> = pod
        .spread_constraints
        .iter()
        .filter(|c| !c.hard)
        .map(|c| Counted::new(c, snapshot))
        .collect();
    if counted.is_empty() {
        return;
    }
    let hostname = |c: &Counted<'_>| c.constraint.topology_key == LABEL_HOSTNAME;
    // Feasible nodes lacking a key are ignored: scored 0, left out of min and max.
    let ignored: Vec<bool> = feasible
        .iter()
        .map(|&i| counted.iter().any(|c| c.topology.domain(i).is_none()))
        .collect();
    let considered = ignored.iter().filter(|&&x| !x).count();
    // Only the feasible nodes' domains are counted (hostname domains are single nodes,
    // counted directly below).
    let mut present: Vec<Vec<bool>> = counted
        .iter()
        .map(|c| vec![false; c.topology.domains()])
        .collect();
    for (&i, _) in feasible.iter().zip(&ignored).filter(|(_, ig)| !**ig) {
        for (k, c) in counted.iter().enumerate() {
            if let Some(d) = c.topology.domain(i) {
                present[k][d] = true;
            }
        }
    }
    // Kubernetes' `topologyNormalizingWeight`: log(domains + 2), so a constraint over many
    // domains does not drown one over few.
    let weights: Vec<f64> = counted
        .iter()
        .zip(&present)
        .map(|(c, p)| {
            let size = if hostname(c) {
                considered
            } else {
                p.iter().filter(|&&x| x).count()
            };
            ((size + 2) as f64).ln()
        })
        .collect();
    let mut counts: Vec<Vec<i64>> = counted
        .iter()
        .map(|c| vec![0; c.topology.domains()])
        .collect();
    let mask = affinity_mask(pod, snapshot);
    for i in 0..snapshot.nodes.len() {
        if !eligible(mask.as_deref(), &counted, i) {
            continue;
        }
        for (k, c) in counted.iter().enumerate() {
            if let Some(d) = c.topology.domain(i)
                && present[k][d]
                && !hostname(c)
            {
                counts[k][d] += c.on_node(i);
            }
        }
    }
    for ((o, &i), &ig) in out.iter_mut().zip(feasible).zip(&ignored) {
        if ig {
            continue;
        }
        let mut raw = 0.0;
        for (k, c) in counted.iter().enumerate() {
            let Some(d) = c.topology.domain(i) else {
                continue;
            };
            let n = if hostname(c) {
                c.on_node(i)
            } else {
                counts[k][d]
            };
            raw += n as f64 * weights[k] + (c.constraint.max_skew - 1) as f64;
        }
        *o = raw.round() as i64;
    }
    normalize(out, &ignored);
}

/// Kubernetes' PodTopologySpread `NormalizeScore`: `100 * (max + min - s) / max` over the
/// nodes not ignored, 100 for all when the max is 0; ignored nodes get 0.
fn normalize(scores: &mut [i64], ignored: &[bool]) {
    let considered = || {
        scores
            .iter()
            .zip(ignored)
            .filter(|(_, ig)| !**ig)
            .map(|(s, _)| *s)
    };
    let (Some(min), Some(max)) = (considered().min(), considered().max()) else {
        return;
    };
    let max = max.max(0);
    for (s, &ig) in scores.iter_mut().zip(ignored) {
        *s = if ig {
            0
        } else if max == 0 {
            100
        } else {
            100 * (max + min - *s) / max
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{labelled_node, pod_json};
    use coxswain_schema::kinds::pod::Pod;
    use serde_json::{Value, json};

    fn spod(name: &str, app: &str, spec: Value) -> Pod {
        let mut p = pod_json(name, spec);
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        p
    }

    fn bound(name: &str, app: &str, node: &str) -> Pod {
        spod(name, app, json!({"nodeName": node}))
    }

    fn constraint(max_skew: i32, key: &str, when: &str) -> Value {
        json!({"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": when,
               "labelSelector": {"matchLabels": {"app": "web"}}})
    }

    /// n1, n2 in zone a; n3 in zone b; n4 has no zone.
    fn cluster(pods: &[Pod]) -> Snapshot {
        let nodes = [
            labelled_node("n1", &[("zone", "a"), ("kubernetes.io/hostname", "n1")]),
            labelled_node("n2", &[("zone", "a"), ("kubernetes.io/hostname", "n2")]),
            labelled_node("n3", &[("zone", "b"), ("kubernetes.io/hostname", "n3")]),
            labelled_node("n4", &[("kubernetes.io/hostname", "n4")]),
        ];
        Snapshot::new(&nodes, pods)
    }

    #[test]
    fn do_not_schedule_keeps_skew_within_max_skew() {
        let ok = Ok(());
        let skew = Err(REASON);
        let missing = Err(REASON_MISSING_LABEL);
        // (bound web pods' nodes, constraints, expected for n1..n4)
        type Case = (
            &'static [&'static str],
            Value,
            [Result<(), &'static str>; 4],
        );
        let cases: Vec<Case> = vec![
            (
                &[],
                json!([constraint(1, "zone", "DoNotSchedule")]),
                [ok, ok, ok, missing],
            ),
            // zone a has 1, zone b 0: a would become 2 - 0 > 1.
            (
                &["n1"],
                json!([constraint(1, "zone", "DoNotSchedule")]),
                [skew, skew, ok, missing],
            ),
            (
                &["n1"],
                json!([constraint(2, "zone", "DoNotSchedule")]),
                [ok, ok, ok, missing],
            ),
            (
                &["n1", "n3"],
                json!([constraint(1, "zone", "DoNotSchedule")]),
                [ok, ok, ok, missing],
            ),
            // Per host: n1 has 1, the others 0 (n4 counts as a domain here).
            (
                &["n1"],
                json!([constraint(1, "kubernetes.io/hostname", "DoNotSchedule")]),
                [skew, ok, ok, ok],
            ),
            // minDomains 3 with only 2 zones: the minimum counts as 0, not 1.
            (
                &["n1", "n3"],
                json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                        "minDomains": 3, "labelSelector": {"matchLabels": {"app": "web"}}}]),
                [skew, skew, skew, missing],
            ),
            // ScheduleAnyway never filters.
            (
                &["n1"],
                json!([constraint(1, "zone", "ScheduleAnyway")]),
                [ok, ok, ok, ok],
            ),
        ];
        for (on, constraints, want) in cases {
            let pods: Vec<Pod> = on
                .iter()
                .enumerate()
                .map(|(i, n)| bound(&format!("w{i}"), "web", n))
                .collect();
            let snap = cluster(&pods);
            let pod = PodInfo::new(&spod(
                "new",
                "web",
                json!({"topologySpreadConstraints": constraints.clone()}),
            ));
            let state = CycleState::new(&pod, &snap);
            let got: Vec<_> = snap
                .nodes
                .iter()
                .map(|n| {
                    filter(&pod, n, &state).map_err(|r| match r {
                        Reason::Fixed(m) => m,
                        _ => "other",
                    })
                })
                .collect();
            assert_eq!(got, want, "{on:?} {constraints}");
        }
    }

    #[test]
    fn only_matching_pods_of_the_same_namespace_count() {
        // Two non-matching or foreign pods in zone a must not push skew.
        let mut foreign = bound("f", "web", "n1");
        foreign.metadata.namespace = Some("other".into());
        let pods = [bound("x", "db", "n1"), foreign];
        let snap = cluster(&pods);
        let pod = PodInfo::new(&spod(
            "new",
            "web",
            json!({"topologySpreadConstraints": [constraint(1, "zone", "DoNotSchedule")]}),
        ));
        let state = CycleState::new(&pod, &snap);
        assert!(filter(&pod, &snap.nodes[0], &state).is_ok());
    }

    #[test]
    fn schedule_anyway_scores_emptier_domains_higher() {
        // zone a: 2 web pods, zone b: 0. Weight ln(2 + 2); raw a = 2 * 1.386 = 3 (rounded),
        // b = 0; normalised 100 * (3 + 0 - s) / 3 → a 0, b 100. n4 lacks the key: 0.
        let snap = cluster(&[bound("w1", "web", "n1"), bound("w2", "web", "n2")]);
        let pod = PodInfo::new(&spod(
            "new",
            "web",
            json!({"topologySpreadConstraints": [constraint(1, "zone", "ScheduleAnyway")]}),
        ));
        let mut out = [0; 4];
        score(&pod, &snap, &[0, 1, 2, 3], &mut out);
        assert_eq!(out, [0, 0, 100, 0]);

        // Per host with maxSkew 2: raw = count * ln(4 + 2) + 1 → n1 3, n2 3, n3 1, n4 1;
        // normalised 100 * (3 + 1 - s) / 3 → 33, 33, 100, 100.
        let pod = PodInfo::new(&spod(
            "new",
            "web",
            json!({"topologySpreadConstraints": [constraint(2, "kubernetes.io/hostname", "ScheduleAnyway")]}),
        ));
        let mut out = [0; 4];
        score(&pod, &snap, &[0, 1, 2, 3], &mut out);
        assert_eq!(out, [33, 33, 100, 100]);
    }
}
