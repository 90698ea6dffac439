//! [`PodInfo`]: a pod compiled once for scheduling, so that filtering and scoring thousands of
//! nodes never parses a quantity or compiles a selector again (Kubernetes' `PodInfo` and the
//! PreFilter states play the same role).

use std::collections::BTreeMap;

use coxswain_schema::kinds::pod::{Container, Pod, Toleration};
use coxswain_schema::quantity::Quantity;

use super::counts::PodMatcher;
use super::image_locality;
use super::inter_pod_affinity::{AffinityTerm, WeightedAffinityTerm, all_terms_matcher};
use super::node_affinity::{PreferredNodeAffinity, RequiredNodeAffinity};
use super::node_ports::{self, HostPort};
use super::pod_topology_spread::Constraint;

/// Kubernetes' `DefaultMilliCPURequest`: what a container without a cpu request counts as
/// when scoring, so that request-less pods still spread.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Kubernetes' `DefaultMemoryRequest` (200 MiB), for the same reason.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
}

impl Resources {
    pub(crate) fn add(&mut self, other: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0 && self.memory == 0
    }
}

/// A pod as the plugins need it. Built by [`PodInfo::new`]; bound pods in a [`super::Snapshot`]
/// are `PodInfo`s too, because affinity and spread look at their labels and terms.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// `namespace/name`, the key [`super::schedule_batch`] reports decisions under.
    pub(super) key: String,
    pub(super) namespace: String,
    pub(super) labels: BTreeMap<String, String>,
    /// Being deleted: topology spread does not count such pods (as Kubernetes).
    pub(super) terminating: bool,
    /// Effective requests: the app containers' sum or the largest init container's request,
    /// whichever is larger, per resource (init containers run one at a time, before the app).
    pub(super) requests: Resources,
    /// The same with [`DEFAULT_MILLI_CPU_REQUEST`]/[`DEFAULT_MEMORY_REQUEST`] for containers
    /// that set no request.
    pub(super) non_zero_requests: Resources,
    pub(super) host_ports: Vec<HostPort>,
    pub(super) node_name: Option<String>,
    pub(super) required_node_affinity: RequiredNodeAffinity,
    pub(super) preferred_node_affinity: PreferredNodeAffinity,
    pub(super) tolerations: Vec<Toleration>,
    pub(super) required_affinity: Vec<AffinityTerm>,
    /// Selects bound pods matching every required affinity term (see `all_terms_matcher`).
    pub(super) required_affinity_matcher: Option<PodMatcher>,
    pub(super) required_anti_affinity: Vec<AffinityTerm>,
    pub(super) preferred_affinity: Vec<WeightedAffinityTerm>,
    pub(super) preferred_anti_affinity: Vec<WeightedAffinityTerm>,
    pub(super) spread_constraints: Vec<Constraint>,
    /// Normalised image names of init and app containers, in that order.
    pub(super) images: Vec<String>,
    /// Why this pod cannot be scheduled at all (a request that does not parse). Validation
    /// refuses such pods before they reach the store, so this only guards against a bad
    /// object written around it.
    pub(super) invalid: Option<String>,
    /// FNV-1a of the key: picks where the node scan starts and breaks score ties.
    pub(super) hash: u64,
}

impl PodInfo {
    /// Compiles `pod`. Never fails: what cannot be compiled makes the pod unschedulable
    /// (requests) or the term match nothing (selectors), as in Kubernetes.
    pub fn new(pod: &Pod) -> Self {
        let spec = &pod.spec;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let key = format!("{namespace}/{}", pod.metadata.name);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let (requests, non_zero_requests, invalid) = match pod_requests(
            &spec.containers,
            spec.init_containers.as_deref().unwrap_or_default(),
        ) {
            Ok((r, nz)) => (r, nz, None),
            Err(e) => (Resources::default(), Resources::default(), Some(e)),
        };
        let affinity = spec.affinity.as_ref();
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti_affinity = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required = |a: Option<&coxswain_schema::kinds::pod::PodAffinity>| -> Vec<AffinityTerm> {
            a.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|t| AffinityTerm::new(t, &namespace))
            .collect()
        };
        let preferred =
            |a: Option<&coxswain_schema::kinds::pod::PodAffinity>| -> Vec<WeightedAffinityTerm> {
                a.and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .into_iter()
                .flatten()
                // Kubernetes skips zero-weight terms: they cannot change a score.
                .filter(|t| t.weight != 0)
                .map(|t| WeightedAffinityTerm::new(t, &namespace))
                .collect()
            };
        let spread_constraints = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| Constraint::new(c, &namespace, &labels))
            .collect();
        let images = spec
            .all_containers()
            .map(|c| image_locality::normalize(&c.image))
            .collect();
        let required_affinity = required(pod_affinity);
        PodInfo {
            hash: super::fnv1a(key.as_bytes()),
            required_affinity_matcher: all_terms_matcher(&required_affinity),
            required_affinity,
            required_anti_affinity: required(pod_anti_affinity),
            preferred_affinity: preferred(pod_affinity),
            preferred_anti_affinity: preferred(pod_anti_affinity),
            key,
            namespace,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            requests,
            non_zero_requests,
            host_ports: node_ports::host_ports(spec),
            node_name: spec.node_name.clone(),
            required_node_affinity: RequiredNodeAffinity::new(spec),
            preferred_node_affinity: PreferredNodeAffinity::new(spec),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            spread_constraints,
            images,
            invalid,
            labels,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    pub fn requests(&self) -> Resources {
        self.requests
    }

    pub fn non_zero_requests(&self) -> Resources {
        self.non_zero_requests
    }

    /// Whether any pod affinity or anti-affinity term (required or preferred) is set.
    pub(super) fn has_any_pod_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }
}

/// How a resource's quantity becomes an integer (millicores or bytes).
type Parse = fn(&Quantity) -> coxswain_schema::Result<i64>;

/// One container's request for `resource`: `requests`, else `limits` (Kubernetes' API
/// defaulting copies a lone limit into the request). `None` when neither is set.
fn container_request(c: &Container, resource: &str, parse: Parse) -> Result<Option<i64>, String> {
    let r = c.resources.as_ref();
    let q = r
        .and_then(|r| r.requests.as_ref())
        .and_then(|m| m.get(resource))
        .or_else(|| {
            r.and_then(|r| r.limits.as_ref())
                .and_then(|m| m.get(resource))
        });
    match q {
        None => Ok(None),
        Some(q) => parse(q)
            .map(|v| Some(v.max(0)))
            .map_err(|e| format!("container {}: {resource} request {q}: {e}", c.name)),
    }
}

/// The pod's effective requests and their non-zero form, like Kubernetes' `PodRequests`.
fn pod_requests(
    containers: &[Container],
    init: &[Container],
) -> Result<(Resources, Resources), String> {
    let (cpu, cpu_non_zero) = resource_request(
        containers,
        init,
        "cpu",
        Quantity::milli_value,
        DEFAULT_MILLI_CPU_REQUEST,
    )?;
    let (memory, memory_non_zero) = resource_request(
        containers,
        init,
        "memory",
        Quantity::value,
        DEFAULT_MEMORY_REQUEST,
    )?;
    Ok((
        Resources {
            milli_cpu: cpu,
            memory,
        },
        Resources {
            milli_cpu: cpu_non_zero,
            memory: memory_non_zero,
        },
    ))
}

/// One resource's (request, non-zero request): the larger of the app containers' sum and
/// the largest init container's request, since init containers run one at a time before
/// the app. The non-zero form counts `default` for containers that request nothing.
fn resource_request(
    containers: &[Container],
    init: &[Container],
    name: &str,
    parse: Parse,
    default: i64,
) -> Result<(i64, i64), String> {
    let (mut sum, mut sum_non_zero) = (0i64, 0i64);
    for c in containers {
        let v = container_request(c, name, parse)?;
        sum = sum.saturating_add(v.unwrap_or(0));
        sum_non_zero = sum_non_zero.saturating_add(v.unwrap_or(default));
    }
    let (mut init_max, mut init_max_non_zero) = (0i64, 0i64);
    for c in init {
        let v = container_request(c, name, parse)?;
        init_max = init_max.max(v.unwrap_or(0));
        init_max_non_zero = init_max_non_zero.max(v.unwrap_or(default));
    }
    Ok((sum.max(init_max), sum_non_zero.max(init_max_non_zero)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{container, pod};

    #[test]
    fn requests_sum_app_containers_and_cover_init_containers() {
        // (app containers (cpu, mem requests), init containers, limits-only container?,
        //  expected requests, expected non-zero requests)
        type Res = (Option<&'static str>, Option<&'static str>);
        type Case = (&'static [Res], &'static [Res], (i64, i64), (i64, i64));
        let cases: &[Case] = &[
            (&[], &[], (0, 0), (0, 0)),
            (
                &[(None, None)],
                &[],
                (0, 0),
                (DEFAULT_MILLI_CPU_REQUEST, DEFAULT_MEMORY_REQUEST),
            ),
            (
                &[(Some("250m"), Some("64Mi")), (Some("0.5"), Some("64Mi"))],
                &[],
                (750, 128 << 20),
                (750, 128 << 20),
            ),
            // An init container larger than the app sum sets the request.
            (
                &[(Some("100m"), Some("1Mi"))],
                &[(Some("2"), Some("1Ki")), (Some("1"), None)],
                (2000, 1 << 20),
                (2000, DEFAULT_MEMORY_REQUEST),
            ),
            // An explicit zero is kept as zero, not defaulted.
            (&[(Some("0"), Some("0"))], &[], (0, 0), (0, 0)),
        ];
        for (apps, inits, want, want_nz) in cases {
            let mk = |v: &[Res], prefix: &str| -> Vec<Container> {
                v.iter()
                    .enumerate()
                    .map(|(i, (cpu, mem))| container(&format!("{prefix}{i}"), *cpu, *mem))
                    .collect()
            };
            let mut p = pod("p");
            p.spec.containers = mk(apps, "c");
            p.spec.init_containers = Some(mk(inits, "i"));
            let info = PodInfo::new(&p);
            assert_eq!(info.invalid, None);
            assert_eq!(
                (info.requests.milli_cpu, info.requests.memory),
                *want,
                "{apps:?} {inits:?}"
            );
            assert_eq!(
                (
                    info.non_zero_requests.milli_cpu,
                    info.non_zero_requests.memory
                ),
                *want_nz,
                "{apps:?} {inits:?}"
            );
        }
    }

    #[test]
    fn a_limit_alone_is_the_request_and_a_bad_quantity_makes_the_pod_invalid() {
        let mut p = pod("p");
        let mut limits = BTreeMap::new();
        limits.insert("cpu".to_string(), Quantity::new("300m"));
        p.spec.containers[0].resources = Some(coxswain_schema::kinds::pod::ResourceRequirements {
            limits: Some(limits),
            requests: None,
        });
        assert_eq!(PodInfo::new(&p).requests.milli_cpu, 300);

        let mut bad = pod("p");
        bad.spec.containers = vec![container("c", Some("lots"), None)];
        let info = PodInfo::new(&bad);
        assert!(info.invalid.as_deref().is_some_and(|m| m.contains("lots")));
        assert_eq!(info.key(), "default/p");
    }
}
