//! Cluster-wide indexes that the inter-pod plugins (InterPodAffinity, PodTopologySpread)
//! would otherwise rebuild for every decision by scanning every bound pod.
//!
//! - [`PodMatcher`] → per-node count of bound pods it matches. Computed on first use, then
//!   kept up to date as [`Snapshot::add`] binds pods, so a batch of pods sharing a selector
//!   (the replicas of one Deployment) pays the full scan once.
//! - required node affinity → which nodes match it. Replicas of a workload share one, so
//!   a batch evaluates labels once per node instead of once per node per pod.
//! - topology key → [`Topology`]: each node's domain as a small integer, so counting per
//!   domain is array arithmetic instead of hashing label values. Nodes never change within
//!   a snapshot, so this never needs invalidating.
//!
//! Kubernetes recomputes these per cycle on many goroutines; caching gives the same counts
//! on one core.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use coxswain_schema::selector::Selector;

use super::Snapshot;
use super::node_affinity::RequiredNodeAffinity;
use super::pod_info::PodInfo;

/// More distinct matchers than this and the cache starts over: each entry costs 4 bytes per
/// node and a match per bound pod, and so many distinct selectors means they are not being
/// reused anyway.
const MAX_CACHED_MATCHERS: usize = 256;

/// Which pods one affinity term or spread constraint selects: namespace and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MatchTerm {
    /// Sorted and deduplicated, so equal terms hash equal.
    namespaces: Vec<String>,
    /// `Some(empty)` matches every namespace.
    namespace_selector: Option<Selector>,
    selector: Selector,
}

impl MatchTerm {
    pub fn new(
        mut namespaces: Vec<String>,
        namespace_selector: Option<Selector>,
        selector: Selector,
    ) -> Self {
        namespaces.sort();
        namespaces.dedup();
        MatchTerm {
            namespaces,
            namespace_selector,
            selector,
        }
    }

    /// Kubernetes' `AffinityTerm.Matches`: in one of the namespaces (listed or selected by
    /// namespace labels) and labels matching.
    pub fn matches(&self, pod: &PodInfo, snapshot: &Snapshot) -> bool {
        let in_namespace = self.namespaces.binary_search(&pod.namespace).is_ok()
            || self.namespace_selector.as_ref().is_some_and(|s| {
                s.is_empty() || s.matches(snapshot.namespace_labels(&pod.namespace))
            });
        in_namespace && self.selector.matches(&pod.labels)
    }
}

/// A conjunction of terms (a pod must match all), optionally ignoring pods being deleted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodMatcher {
    terms: Vec<MatchTerm>,
    skip_terminating: bool,
}

impl PodMatcher {
    /// `None` when `terms` is empty: Kubernetes' "matches all terms" is false then.
    pub fn new(terms: Vec<MatchTerm>, skip_terminating: bool) -> Option<Self> {
        (!terms.is_empty()).then_some(PodMatcher {
            terms,
            skip_terminating,
        })
    }

    /// The conjunction of both matchers' terms.
    pub fn and(mut self, other: &PodMatcher) -> Self {
        self.terms.extend(other.terms.iter().cloned());
        self.skip_terminating |= other.skip_terminating;
        self
    }

    pub fn matches(&self, pod: &PodInfo, snapshot: &Snapshot) -> bool {
        !(self.skip_terminating && pod.terminating)
            && self.terms.iter().all(|t| t.matches(pod, snapshot))
    }
}

/// Each node's domain for one topology key.
#[derive(Debug)]
pub struct Topology {
    /// Per node index: the domain number, or [`Topology::NONE`] without the label.
    domain_of: Vec<u32>,
    domains: usize,
}

impl Topology {
    const NONE: u32 = u32::MAX;

    /// The node's domain, `None` if it lacks the label.
    pub fn domain(&self, node: usize) -> Option<usize> {
        match self.domain_of.get(node) {
            Some(&d) if d != Self::NONE => Some(d as usize),
            _ => None,
        }
    }

    /// Number of distinct domains (values of the key) in the cluster.
    pub fn domains(&self) -> usize {
        self.domains
    }
}

/// The caches, behind mutexes so that deciding needs only `&Snapshot`.
#[derive(Debug, Default)]
pub struct Caches {
    counts: Mutex<HashMap<PodMatcher, Arc<Vec<u32>>>>,
    topologies: Mutex<HashMap<String, Arc<Topology>>>,
    node_masks: Mutex<HashMap<RequiredNodeAffinity, Arc<Vec<bool>>>>,
}

impl Clone for Caches {
    /// A clone starts empty: the caches are derived data and refill on demand.
    fn clone(&self) -> Self {
        Caches::default()
    }
}

impl Caches {
    /// Forgets the counts, for when what a matcher selects may have changed (namespace
    /// labels).
    pub fn clear_counts(&mut self) {
        self.counts
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Snapshot {
    /// Per node index, how many bound pods `matcher` matches.
    pub(crate) fn matching_counts(&self, matcher: &PodMatcher) -> Arc<Vec<u32>> {
        // A panic while holding the lock could only come from a bug in matching; the map is
        // still a valid cache then (entries are replaced whole), so poisoning is ignored.
        let mut cache = self
            .caches
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.get(matcher) {
            return Arc::clone(c);
        }
        let counts: Vec<u32> = self
            .nodes
            .iter()
            .map(|n| n.pods.iter().filter(|p| matcher.matches(p, self)).count() as u32)
            .collect();
        if cache.len() >= MAX_CACHED_MATCHERS {
            cache.clear();
        }
        let counts = Arc::new(counts);
        cache.insert(matcher.clone(), Arc::clone(&counts));
        counts
    }

    /// Per node index, whether the node satisfies `affinity`.
    pub(crate) fn node_mask(&self, affinity: &RequiredNodeAffinity) -> Arc<Vec<bool>> {
        let mut cache = self
            .caches
            .node_masks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = cache.get(affinity) {
            return Arc::clone(m);
        }
        let mask = Arc::new(self.nodes.iter().map(|n| affinity.matches(n)).collect());
        if cache.len() >= MAX_CACHED_MATCHERS {
            cache.clear();
        }
        cache.insert(affinity.clone(), Arc::clone(&mask));
        mask
    }

    /// The domain index of `key`.
    pub(crate) fn topology(&self, key: &str) -> Arc<Topology> {
        let mut cache = self
            .caches
            .topologies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = cache.get(key) {
            return Arc::clone(t);
        }
        let mut ids: HashMap<&str, u32> = HashMap::new();
        let domain_of = self
            .nodes
            .iter()
            .map(|n| match n.labels().get(key) {
                Some(v) => {
                    let next = ids.len() as u32;
                    *ids.entry(v.as_str()).or_insert(next)
                }
                None => Topology::NONE,
            })
            .collect();
        let topology = Arc::new(Topology {
            domain_of,
            domains: ids.len(),
        });
        cache.insert(key.to_string(), Arc::clone(&topology));
        topology
    }

    /// Counts a newly bound pod in every cached matcher that selects it.
    pub(crate) fn count_bound(&mut self, pod: &PodInfo, node: usize) {
        let mut counts = std::mem::take(
            self.caches
                .counts
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (matcher, c) in counts.iter_mut() {
            if matcher.matches(pod, self) {
                // Copies the vector only if a decision still holds the old one.
                if let Some(n) = Arc::make_mut(c).get_mut(node) {
                    *n += 1;
                }
            }
        }
        *self
            .caches
            .counts
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = counts;
    }
}
