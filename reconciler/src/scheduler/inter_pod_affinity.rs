//! InterPodAffinity: places pods relative to other pods by topology domain (a node, a zone:
//! the nodes sharing a value of `topologyKey`).
//!
//! Filter, in Kubernetes' order: every required affinity term must find a matching pod in
//! the node's domain (unless no pod matches anywhere and the pod matches its own terms — the
//! first pod of a group); no required anti-affinity term may find a matching pod there; no
//! bound pod's required anti-affinity may match the incoming pod in the node's domain.
//! Score (weight 2): preferred terms of the incoming pod and of bound pods (and bound pods'
//! required affinity, at weight 1) add or subtract their weight per domain; min-max
//! normalised to 0..=100.

use std::collections::HashMap;
use std::sync::Arc;

use coxswain_schema::kinds::pod::{PodAffinityTerm, WeightedPodAffinityTerm};
use coxswain_schema::selector::Selector;

use super::counts::{MatchTerm, PodMatcher, Topology};
use super::framework::{CycleState, Reason};
use super::pod_info::PodInfo;
use super::{NodeInfo, Snapshot};

/// Kubernetes' `ErrReasonAffinityRulesNotMatch`.
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// Kubernetes' `ErrReasonAntiAffinityRulesNotMatch`.
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// Kubernetes' `ErrReasonExistingAntiAffinityRulesNotMatch`.
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// Kubernetes' default weight for InterPodAffinity.
pub const WEIGHT: i64 = 2;
/// Kubernetes' default `hardPodAffinityWeight`: what a bound pod's *required* affinity
/// term adds to the score of domains where the incoming pod would satisfy it.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// A compiled `PodAffinityTerm`.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// `None` for a missing or invalid label selector: matches no pod, as in Kubernetes.
    matcher: Option<PodMatcher>,
    topology_key: String,
}

impl AffinityTerm {
    /// Compiles `term` of a pod in namespace `owner`. With neither `namespaces` nor
    /// `namespaceSelector` the term means the owner's namespace; an empty namespace selector
    /// means every namespace; an invalid one selects none.
    pub fn new(term: &PodAffinityTerm, owner: &str) -> Self {
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(owner.to_string());
        }
        let compile = |s: &Option<_>| {
            s.as_ref()
                .and_then(|s| Selector::from_label_selector(s).ok())
        };
        let namespace_selector = compile(&term.namespace_selector);
        let matcher = compile(&term.label_selector).and_then(|selector| {
            PodMatcher::new(
                vec![MatchTerm::new(namespaces, namespace_selector, selector)],
                false,
            )
        });
        AffinityTerm {
            matcher,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether the term selects `pod` (namespace and labels).
    pub fn matches(&self, pod: &PodInfo, snapshot: &Snapshot) -> bool {
        self.matcher
            .as_ref()
            .is_some_and(|m| m.matches(pod, snapshot))
    }
}

/// One matcher selecting the pods that match every term, for the affinity count (a bound
/// pod counts only if it satisfies all of the incoming pod's required affinity terms).
/// `None` if there are no terms or one can match nothing.
pub fn all_terms_matcher(terms: &[AffinityTerm]) -> Option<PodMatcher> {
    let mut all: Option<PodMatcher> = None;
    for t in terms {
        let m = t.matcher.as_ref()?;
        all = Some(match all {
            None => m.clone(),
            Some(a) => a.and(m),
        });
    }
    all
}

/// A compiled `WeightedPodAffinityTerm`.
#[derive(Debug, Clone)]
pub struct WeightedAffinityTerm {
    weight: i64,
    term: AffinityTerm,
}

impl WeightedAffinityTerm {
    pub fn new(t: &WeightedPodAffinityTerm, owner: &str) -> Self {
        WeightedAffinityTerm {
            weight: i64::from(t.weight),
            term: AffinityTerm::new(&t.pod_affinity_term, owner),
        }
    }
}

/// A topology domain: (topology key, value).
type Pair<'s> = (&'s str, &'s str);

/// Matching bound pods per domain of one term's topology key.
#[derive(Debug)]
struct DomainCounts {
    topology: Arc<Topology>,
    counts: Vec<i64>,
}

impl DomainCounts {
    /// Sums `per_node` counts (none when the term can match nothing) into domains of `key`.
    fn new(snapshot: &Snapshot, key: &str, matcher: Option<&PodMatcher>) -> Self {
        let topology = snapshot.topology(key);
        let mut counts = vec![0; topology.domains()];
        if let Some(m) = matcher {
            for (i, &c) in snapshot.matching_counts(m).iter().enumerate() {
                if c > 0
                    && let Some(d) = topology.domain(i)
                {
                    counts[d] += i64::from(c);
                }
            }
        }
        DomainCounts { topology, counts }
    }

    /// Matching pods in the node's domain; `None` if the node lacks the key.
    fn at(&self, node: &NodeInfo) -> Option<i64> {
        self.topology.domain(node.index).map(|d| self.counts[d])
    }
}

/// What the filter needs, counted once per pod over the whole cluster.
#[derive(Debug, Default)]
pub struct PreFilterState<'s> {
    /// Domains where a bound pod's required anti-affinity matches the incoming pod.
    existing_anti_affinity: HashMap<Pair<'s>, i64>,
    /// Per required affinity term: bound pods matching all the terms, per domain.
    affinity: Vec<DomainCounts>,
    /// Some bound pod matching all the terms sits in a domain of one of them (Kubernetes:
    /// its affinity count map is not empty).
    any_affinity: bool,
    /// Per required anti-affinity term: bound pods matching it, per domain.
    anti_affinity: Vec<DomainCounts>,
    /// The incoming pod matches all its own required affinity terms.
    matches_own_affinity: bool,
}

/// Whether `pod` matches every term (and there is at least one), Kubernetes'
/// `podMatchesAllAffinityTerms`.
fn matches_all(terms: &[AffinityTerm], pod: &PodInfo, snapshot: &Snapshot) -> bool {
    !terms.is_empty() && terms.iter().all(|t| t.matches(pod, snapshot))
}

/// Counts the domains the filter checks. `None` when there is nothing to check: the pod has
/// no required terms and no bound pod has required anti-affinity.
pub fn pre_filter<'s>(pod: &'s PodInfo, snapshot: &'s Snapshot) -> Option<PreFilterState<'s>> {
    let own_terms = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
    if !own_terms && snapshot.with_required_anti_affinity.is_empty() {
        return None;
    }
    let mut state = PreFilterState::default();
    for (node, existing) in &snapshot.with_required_anti_affinity {
        let labels = snapshot.nodes[*node].labels();
        for term in &existing.required_anti_affinity {
            if let Some((key, value)) = labels.get_key_value(&term.topology_key)
                && term.matches(pod, snapshot)
            {
                *state
                    .existing_anti_affinity
                    .entry((key.as_str(), value.as_str()))
                    .or_default() += 1;
            }
        }
    }
    if !pod.required_affinity.is_empty() {
        state.matches_own_affinity = matches_all(&pod.required_affinity, pod, snapshot);
        let matcher = pod.required_affinity_matcher.as_ref();
        state.affinity = pod
            .required_affinity
            .iter()
            .map(|t| DomainCounts::new(snapshot, &t.topology_key, matcher))
            .collect();
        state.any_affinity = state
            .affinity
            .iter()
            .any(|d| d.counts.iter().any(|&c| c > 0));
    }
    state.anti_affinity = pod
        .required_anti_affinity
        .iter()
        .map(|t| DomainCounts::new(snapshot, &t.topology_key, t.matcher.as_ref()))
        .collect();
    Some(state)
}

/// Applies the three checks in Kubernetes' order; the first failure is the reason.
pub fn filter<'n>(
    _pod: &PodInfo,
    node: &'n NodeInfo,
    state: &CycleState<'_>,
) -> Result<(), Reason<'n>> {
    let Some(s) = &state.inter_pod_affinity else {
        return Ok(());
    };
    if !s.affinity.is_empty() {
        let mut pods_exist = true;
        for d in &s.affinity {
            match d.at(node) {
                // A node outside every domain of the key cannot satisfy the term.
                None => return Err(Reason::Fixed(REASON_AFFINITY)),
                Some(n) if n <= 0 => pods_exist = false,
                Some(_) => {}
            }
        }
        // The first pod of a self-affine group must be allowed somewhere, or it and its
        // siblings would wait forever.
        let first_of_group = !s.any_affinity && s.matches_own_affinity;
        if !pods_exist && !first_of_group {
            return Err(Reason::Fixed(REASON_AFFINITY));
        }
    }
    if s.anti_affinity
        .iter()
        .any(|d| d.at(node).is_some_and(|n| n > 0))
    {
        return Err(Reason::Fixed(REASON_ANTI_AFFINITY));
    }
    if !s.existing_anti_affinity.is_empty()
        && node.labels().iter().any(|(k, v)| {
            s.existing_anti_affinity
                .get(&(k.as_str(), v.as_str()))
                .is_some_and(|&n| n > 0)
        })
    {
        return Err(Reason::Fixed(REASON_EXISTING_ANTI_AFFINITY));
    }
    Ok(())
}

/// Per topology key, per value: the score every node in that domain gets.
type TopologyScore<'s> = HashMap<&'s str, HashMap<&'s str, i64>>;

/// Adds `weight` to the domain of `node` for `term`'s key if `term` matches `target`.
fn add_term<'s>(
    scores: &mut TopologyScore<'s>,
    term: &'s AffinityTerm,
    weight: i64,
    target: &PodInfo,
    node: &'s NodeInfo,
    snapshot: &Snapshot,
) {
    if let Some(value) = node.labels().get(&term.topology_key)
        && term.matches(target, snapshot)
    {
        *scores
            .entry(term.topology_key.as_str())
            .or_default()
            .entry(value.as_str())
            .or_default() += weight;
    }
}

/// The bound pod's half of Kubernetes' `processExistingPod`: its required affinity (at the
/// hard weight) and its preferred terms, matched against the incoming pod. (The incoming
/// pod's own preferred terms are counted per domain in [`score`].)
fn process_existing<'s>(
    scores: &mut TopologyScore<'s>,
    pod: &PodInfo,
    existing: &'s PodInfo,
    node: &'s NodeInfo,
    snapshot: &Snapshot,
) {
    for term in &existing.required_affinity {
        add_term(scores, term, HARD_POD_AFFINITY_WEIGHT, pod, node, snapshot);
    }
    for w in &existing.preferred_affinity {
        add_term(scores, &w.term, w.weight, pod, node, snapshot);
    }
    for w in &existing.preferred_anti_affinity {
        add_term(scores, &w.term, -w.weight, pod, node, snapshot);
    }
}

/// Scores the feasible nodes, min-max normalised to 0..=100: the incoming pod's preferred
/// terms weigh the bound pods they match per domain, and bound pods with affinity terms
/// weigh the incoming pod. Nothing to count leaves every node at 0 (Kubernetes skips).
pub fn score(pod: &PodInfo, snapshot: &Snapshot, feasible: &[usize], out: &mut [i64]) {
    let mut existing_scores = TopologyScore::new();
    for (i, existing) in &snapshot.with_affinity {
        process_existing(
            &mut existing_scores,
            pod,
            existing,
            &snapshot.nodes[*i],
            snapshot,
        );
    }
    let own: Vec<(i64, &WeightedAffinityTerm)> = pod
        .preferred_affinity
        .iter()
        .map(|w| (1, w))
        .chain(pod.preferred_anti_affinity.iter().map(|w| (-1, w)))
        .collect();
    if existing_scores.is_empty() && own.is_empty() {
        return;
    }
    let own_scores: Vec<(i64, DomainCounts)> = own
        .into_iter()
        .map(|(sign, w)| {
            let d = DomainCounts::new(snapshot, &w.term.topology_key, w.term.matcher.as_ref());
            (sign * w.weight, d)
        })
        .collect();
    for (o, &i) in out.iter_mut().zip(feasible) {
        let node = &snapshot.nodes[i];
        let labels = node.labels();
        let existing: i64 = existing_scores
            .iter()
            .filter_map(|(key, values)| labels.get(*key).and_then(|v| values.get(v.as_str())))
            .sum();
        let own: i64 = own_scores
            .iter()
            .filter_map(|(weight, d)| d.at(node).map(|n| weight * n))
            .sum();
        *o = existing + own;
    }
    min_max_normalize(out);
}

/// Kubernetes' InterPodAffinity `NormalizeScore`: `100 * (s - min) / (max - min)`, all 0
/// when every score is equal.
fn min_max_normalize(scores: &mut [i64]) {
    let (Some(&min), Some(&max)) = (scores.iter().min(), scores.iter().max()) else {
        return;
    };
    let diff = max - min;
    for s in scores.iter_mut() {
        *s = if diff > 0 {
            (100.0 * (*s - min) as f64 / diff as f64) as i64
        } else {
            0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{labelled_node, pod_json};
    use coxswain_schema::kinds::pod::Pod;
    use serde_json::{Value, json};

    /// A pod with labels and an affinity block, optionally bound to a node.
    fn apod(name: &str, labels: Value, affinity: Value, node: Option<&str>) -> Pod {
        let mut spec = json!({"affinity": affinity});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        let mut p = pod_json(name, spec);
        p.metadata.labels = serde_json::from_value(labels).ok();
        p
    }

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    /// Three nodes: n1 and n2 in zone a, n3 in zone b. Returns the snapshot.
    fn cluster(bound: &[Pod]) -> Snapshot {
        let nodes = [
            labelled_node("n1", &[("zone", "a"), ("kubernetes.io/hostname", "n1")]),
            labelled_node("n2", &[("zone", "a"), ("kubernetes.io/hostname", "n2")]),
            labelled_node("n3", &[("zone", "b"), ("kubernetes.io/hostname", "n3")]),
        ];
        Snapshot::new(&nodes, bound)
    }

    fn filter_all(snap: &Snapshot, pod: &PodInfo) -> Vec<Result<(), &'static str>> {
        let state = CycleState::new(pod, snap);
        snap.nodes
            .iter()
            .map(|n| {
                filter(pod, n, &state).map_err(|r| match r {
                    Reason::Fixed(m) => m,
                    _ => "other",
                })
            })
            .collect()
    }

    #[test]
    fn required_terms_filter_by_topology_domain() {
        let ok = Ok(());
        let aff = Err(REASON_AFFINITY);
        let anti = Err(REASON_ANTI_AFFINITY);
        let existing = Err(REASON_EXISTING_ANTI_AFFINITY);
        let db_on_n1 = apod("db", json!({"app": "db"}), json!({}), Some("n1"));
        // (bound pods, incoming labels, incoming affinity, expected per node n1, n2, n3)
        type Case = (Vec<Pod>, Value, Value, [Result<(), &'static str>; 3]);
        let cases: Vec<Case> = vec![
            (vec![db_on_n1.clone()], json!({}), json!({}), [ok, ok, ok]),
            // Affinity to db by zone: zone a only.
            (
                vec![db_on_n1.clone()],
                json!({"app": "web"}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}),
                [ok, ok, aff],
            ),
            // Affinity by hostname: n1 only.
            (
                vec![db_on_n1.clone()],
                json!({"app": "web"}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "kubernetes.io/hostname")]}}),
                [ok, aff, aff],
            ),
            // A key no node has: no node qualifies.
            (
                vec![db_on_n1.clone()],
                json!({"app": "web"}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "rack")]}}),
                [aff, aff, aff],
            ),
            // No db anywhere: web cannot go anywhere...
            (
                vec![],
                json!({"app": "web"}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}),
                [aff, aff, aff],
            ),
            // ...but the first pod of a self-affine group may go anywhere.
            (
                vec![],
                json!({"app": "db"}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}),
                [ok, ok, ok],
            ),
            // Anti-affinity to db by zone: zone b only.
            (
                vec![db_on_n1.clone()],
                json!({"app": "web"}),
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}),
                [anti, anti, ok],
            ),
            // A bound pod's anti-affinity against web keeps web out of its zone.
            (
                vec![apod(
                    "db",
                    json!({"app": "db"}),
                    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "zone")]}}),
                    Some("n3"),
                )],
                json!({"app": "web"}),
                json!({}),
                [ok, ok, existing],
            ),
            // A term in another namespace does not match a pod in default.
            (
                vec![db_on_n1.clone()],
                json!({"app": "web"}),
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaces": ["other"]}]}}),
                [ok, ok, ok],
            ),
            // An empty namespace selector spans every namespace.
            (
                vec![db_on_n1],
                json!({"app": "web"}),
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaceSelector": {}}]}}),
                [anti, anti, ok],
            ),
        ];
        for (bound, labels, affinity, want) in cases {
            let snap = cluster(&bound);
            let pod = PodInfo::new(&apod("web", labels.clone(), affinity.clone(), None));
            assert_eq!(filter_all(&snap, &pod), want, "{labels} {affinity}");
        }
    }

    #[test]
    fn namespace_selectors_follow_namespace_labels() {
        // db runs in "prod"; web avoids zones with db pods in namespaces labelled env=prod.
        let mut db = apod("db", json!({"app": "db"}), json!({}), Some("n1"));
        db.metadata.namespace = Some("prod".into());
        let mut snap = cluster(&[db]);
        let web = PodInfo::new(&apod(
            "web",
            json!({"app": "web"}),
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone",
                 "namespaceSelector": {"matchLabels": {"env": "prod"}}}]}}),
            None,
        ));
        let ok = Ok(());
        let anti = Err(REASON_ANTI_AFFINITY);
        // "prod" has no labels yet, so db is not selected.
        assert_eq!(filter_all(&snap, &web), [ok, ok, ok]);
        snap.set_namespace_labels("prod", [("env".to_string(), "prod".to_string())].into());
        assert_eq!(filter_all(&snap, &web), [anti, anti, ok]);
    }

    #[test]
    fn preferred_terms_score_domains_min_max_normalised() {
        let db = apod("db", json!({"app": "db"}), json!({}), Some("n1"));
        let cache = apod("cache", json!({"app": "cache"}), json!({}), Some("n3"));
        // (incoming affinity, expected scores n1, n2, n3)
        let cases = [
            (json!({}), [0, 0, 0]),
            (
                json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "podAffinityTerm": term("db", "zone")}]}}),
                [100, 100, 0],
            ),
            (
                json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "podAffinityTerm": term("db", "kubernetes.io/hostname")},
                    {"weight": 5, "podAffinityTerm": term("db", "zone")}]}}),
                [100, 33, 0],
            ),
            (
                json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "podAffinityTerm": term("cache", "zone")}]}}),
                [100, 100, 0],
            ),
        ];
        let snap = cluster(&[db, cache]);
        for (affinity, want) in cases {
            let pod = PodInfo::new(&apod("web", json!({"app": "web"}), affinity.clone(), None));
            let mut out = [0; 3];
            score(&pod, &snap, &[0, 1, 2], &mut out);
            assert_eq!(out, want, "{affinity}");
        }
    }

    #[test]
    fn bound_pods_preferences_and_required_affinity_attract_the_incoming_pod() {
        // db (on n3) prefers web in its zone; cache (on n1) requires web on its host.
        let db = apod(
            "db",
            json!({"app": "db"}),
            json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 4, "podAffinityTerm": term("web", "zone")}]}}),
            Some("n3"),
        );
        let cache = apod(
            "cache",
            json!({"app": "cache"}),
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "kubernetes.io/hostname")]}}),
            Some("n1"),
        );
        let snap = cluster(&[db, cache]);
        let pod = PodInfo::new(&apod("web", json!({"app": "web"}), json!({}), None));
        // Raw: n1 = 1 (hard weight), n2 = 0, n3 = 4 → normalised 25, 0, 100.
        let mut out = [0; 3];
        score(&pod, &snap, &[0, 1, 2], &mut out);
        assert_eq!(out, [25, 0, 100]);
    }
}
