//! The pod's status as the kubelet writes it: the phase (`getPhase`), the conditions
//! (`Initialized`, `Ready`, `ContainersReady`, `PodScheduled`, with `lastTransitionTime`
//! moving only when a condition flips), a status per container (`state`, `lastState`,
//! `ready`, `started`, `restartCount`, `image`, `containerID`), the pod's IPs, start time and
//! QoS class (`GetPodQOS`).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use coxswain_schema::kinds::pod::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodSpec, PodStatus, RestartPolicy,
};
use coxswain_schema::meta::Condition;

use super::{Observed, PodWorker, Slot, Termination, container_id};

pub const PENDING: &str = "Pending";
pub const RUNNING: &str = "Running";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";

/// A timestamp as Kubernetes writes one: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn is_terminal_phase(phase: &str) -> bool {
    phase == SUCCEEDED || phase == FAILED
}

/// The kubelet's `getPhase`, over the statuses of the init and app containers (in spec
/// order). `terminal`: the pod was stopped for good, so nothing will be restarted whatever
/// the policy says.
pub fn phase(
    policy: RestartPolicy,
    init: &[ContainerStatus],
    apps: &[ContainerStatus],
    terminal: bool,
) -> &'static str {
    let terminated = |s: &ContainerStatus| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .map(|t| t.exit_code)
    };
    let last_terminated = |s: &ContainerStatus| {
        s.last_state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .map(|t| t.exit_code)
    };
    let is_running = |s: &ContainerStatus| s.state.as_ref().is_some_and(|st| st.running.is_some());
    let is_waiting = |s: &ContainerStatus| s.state.as_ref().is_some_and(|st| st.waiting.is_some());

    let (mut pending_init, mut failed_init) = (0, 0);
    for s in init {
        if is_running(s) {
            pending_init += 1;
        } else if let Some(code) = terminated(s) {
            if code != 0 {
                failed_init += 1;
            }
        } else if is_waiting(s) {
            match last_terminated(s) {
                Some(code) if code != 0 => failed_init += 1,
                Some(_) => {}
                None => pending_init += 1,
            }
        } else {
            pending_init += 1;
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded, mut unknown) = (0, 0, 0, 0, 0);
    for s in apps {
        if is_running(s) {
            running += 1;
        } else if let Some(code) = terminated(s) {
            stopped += 1;
            if code == 0 {
                succeeded += 1;
            }
        } else if is_waiting(s) {
            if last_terminated(s).is_some() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    if failed_init > 0 && policy == RestartPolicy::Never {
        return FAILED;
    }
    if (pending_init > 0 && !terminal) || waiting > 0 {
        return PENDING;
    }
    if running > 0 && unknown == 0 {
        return RUNNING;
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        if terminal {
            return if stopped == succeeded {
                SUCCEEDED
            } else {
                FAILED
            };
        }
        if policy == RestartPolicy::Always {
            // Every container is between two runs.
            return RUNNING;
        }
        if stopped == succeeded {
            return SUCCEEDED;
        }
        if policy == RestartPolicy::Never {
            return FAILED;
        }
        return RUNNING;
    }
    PENDING
}

/// The pod's QoS class, as Kubernetes' `GetPodQOS` decides it from every container's cpu and
/// memory requests and limits (a request left out defaults to the limit, as the API server's
/// defaulting makes it): `BestEffort` with none at all, `Guaranteed` when every container
/// limits both and the requests equal the limits, `Burstable` otherwise.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    for c in spec.all_containers() {
        let res = c.resources.as_ref();
        let req = res.and_then(|r| r.requests.as_ref());
        let lim = res.and_then(|r| r.limits.as_ref());
        let mut limited = 0;
        for name in ["cpu", "memory"] {
            let value = |map: Option<&BTreeMap<String, coxswain_schema::quantity::Quantity>>| {
                let q = map?.get(name)?;
                let v = if name == "cpu" {
                    q.milli_value()
                } else {
                    q.value()
                };
                v.ok().map(i128::from).filter(|&v| v > 0)
            };
            let limit = value(lim);
            let request = value(req).or(if req.is_some_and(|m| m.contains_key(name)) {
                None
            } else {
                limit
            });
            if let Some(v) = request {
                *requests.entry(name).or_default() += v;
            }
            if let Some(v) = limit {
                *limits.entry(name).or_default() += v;
                limited += 1;
            }
        }
        if limited < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(name, v)| limits.get(name) == Some(v))
    {
        return "Guaranteed";
    }
    "Burstable"
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        ..Default::default()
    }
}

/// Go's `%s` of a `[]string`: `[a b]`.
fn go_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
}

/// `Initialized`, `Ready`, `ContainersReady` and `PodScheduled`, as the kubelet generates
/// them, without transition times.
pub fn conditions(
    phase: &str,
    init: &[ContainerStatus],
    apps: &[ContainerStatus],
) -> Vec<Condition> {
    fn unready(list: &[ContainerStatus]) -> Vec<&str> {
        list.iter()
            .filter(|s| !s.ready)
            .map(|s| s.name.as_str())
            .collect()
    }
    let init_unready = unready(init);
    let initialized = if phase == SUCCEEDED {
        condition("Initialized", true, Some("PodCompleted"), None)
    } else if init_unready.is_empty() {
        condition("Initialized", true, None, None)
    } else {
        condition(
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: {}",
                go_list(&init_unready)
            )),
        )
    };
    let app_unready = unready(apps);
    let (ok, reason, message) = if phase == SUCCEEDED {
        (false, Some("PodCompleted"), None)
    } else if phase == FAILED {
        (false, Some("PodFailed"), None)
    } else if app_unready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: {}",
                go_list(&app_unready)
            )),
        )
    };
    vec![
        initialized,
        condition("Ready", ok, reason, message.clone()),
        condition("ContainersReady", ok, reason, message),
        condition("PodScheduled", true, None, None),
    ]
}

/// Gives each condition its `lastTransitionTime`: the previous one's while the status stays
/// the same, `now` when it flips (or is new).
pub fn with_transitions(previous: &[Condition], next: Vec<Condition>, now: &str) -> Vec<Condition> {
    next.into_iter()
        .map(|mut c| {
            let before = previous.iter().find(|p| p.type_ == c.type_);
            c.last_transition_time = match before {
                Some(p) if p.status == c.status && p.last_transition_time.is_some() => {
                    p.last_transition_time.clone()
                }
                _ => Some(now.to_owned()),
            };
            c
        })
        .collect()
}

fn terminated_state(t: &Termination) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: Some(t.reason.clone()),
            message: t.message.clone(),
            started_at: t.started_at.map(rfc3339),
            finished_at: t.finished_at.map(rfc3339),
            container_id: t.container_id.clone(),
        }),
        ..Default::default()
    }
}

fn waiting_state(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..Default::default()
    }
}

impl PodWorker {
    /// The statuses of the init containers and of the app containers, in spec order.
    pub(super) fn container_statuses(&self) -> (Vec<ContainerStatus>, Vec<ContainerStatus>) {
        // What the kubelet shows for a container it has not started yet.
        let default_waiting = if self.slots.iter().any(|s| s.init) {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let (init, apps): (Vec<&Slot>, Vec<&Slot>) = self.slots.iter().partition(|s| s.init);
        let build = |slots: Vec<&Slot>| {
            slots
                .into_iter()
                .map(|s| self.container_status(s, default_waiting))
                .collect()
        };
        (build(init), build(apps))
    }

    fn container_status(&self, slot: &Slot, default_waiting: &str) -> ContainerStatus {
        let last = slot.last_termination.as_ref().map(terminated_state);
        let mut running = false;
        let (state, last_state, id) = match &slot.current {
            None if slot.init && self.initialized => {
                // Adopted after an agent restart with its record gone: it must have
                // succeeded, since app containers ran.
                let done = ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 0,
                        reason: Some("Completed".to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                (done, last, None)
            }
            None => {
                let state = match &slot.waiting {
                    Some(w) => waiting_state(w.reason, Some(w.message.clone())),
                    None => waiting_state(default_waiting, None),
                };
                (state, last, None)
            }
            Some(cur) => {
                let id = cur.created.then(|| container_id(&cur.id));
                match &cur.state {
                    Observed::Running { started_at } => {
                        running = true;
                        let state = ContainerState {
                            running: Some(ContainerStateRunning {
                                started_at: started_at.map(rfc3339),
                            }),
                            ..Default::default()
                        };
                        (state, last, id)
                    }
                    Observed::Exited(t) => match &slot.waiting {
                        // Waiting to be restarted: the reason the last sync gave.
                        Some(w) if self.should_restart(slot) => (
                            waiting_state(w.reason, Some(w.message.clone())),
                            Some(terminated_state(t)),
                            id,
                        ),
                        _ => (terminated_state(t), last, id),
                    },
                }
            }
        };
        let (ready, started) = if slot.init {
            let succeeded = state.terminated.as_ref().is_some_and(|t| t.exit_code == 0);
            (succeeded, running)
        } else {
            (
                running && slot.probes.ready(),
                running && slot.probes.started,
            )
        };
        ContainerStatus {
            name: slot.name.clone(),
            state: Some(state),
            last_state,
            ready,
            started: Some(started),
            restart_count: i32::try_from(slot.restart_count()).unwrap_or(i32::MAX),
            image: slot.image.clone(),
            image_id: None,
            container_id: id,
        }
    }

    /// The pod's phase now.
    pub(super) fn phase(&self) -> &'static str {
        let (init, apps) = self.container_statuses();
        self.phase_of(&init, &apps)
    }

    fn phase_of(&self, init: &[ContainerStatus], apps: &[ContainerStatus]) -> &'static str {
        let stopped_for_good =
            self.terminating.is_some() && !self.slots.iter().any(Slot::is_running);
        let policy = self.pod.spec.restart_policy.unwrap_or_default();
        let phase = phase(policy, init, apps, stopped_for_good);
        if self.finished && self.terminating.is_some() && !is_terminal_phase(phase) {
            // Stopped before some container ever ran: nothing can make it succeed now.
            return FAILED;
        }
        phase
    }

    /// The whole status at `now`.
    pub(super) fn build_status(&self, now: Instant) -> PodStatus {
        let (init, apps) = self.container_statuses();
        let phase = self.phase_of(&init, &apps);
        let now_text = rfc3339(self.clock.wall(now));
        let mut conditions = conditions(phase, &init, &apps);
        // The scheduler wrote PodScheduled when it bound the pod: keep its time.
        conditions = with_transitions(&self.conditions, conditions, &now_text);
        let host_network = self.pod.spec.host_network.unwrap_or(false);
        let pod_ip = match &self.sandbox {
            Some(s) if !host_network => s.pod_ip.map(|ip| ip.to_string()),
            Some(_) => self.cfg.host_ip.clone(),
            None => None,
        };
        PodStatus {
            phase: Some(phase.to_owned()),
            conditions: Some(conditions),
            message: self
                .sandbox
                .is_none()
                .then(|| self.sandbox_failure.as_ref().map(|(m, _)| m.clone()))
                .flatten(),
            reason: None,
            host_ip: self.cfg.host_ip.clone(),
            pod_ip,
            start_time: self.start_time.clone(),
            init_container_statuses: (!init.is_empty()).then_some(init),
            container_statuses: Some(apps),
            qos_class: Some(qos_class(&self.pod.spec).to_owned()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use coxswain_schema::kinds::pod::{Container, ResourceRequirements};
    use coxswain_schema::quantity::Quantity;

    use super::*;

    fn res(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Option<ResourceRequirements> {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity::new(*v)))
                    .collect()
            })
        };
        Some(ResourceRequirements {
            requests: map(requests),
            limits: map(limits),
        })
    }

    fn spec_of(resources: Vec<Option<ResourceRequirements>>) -> PodSpec {
        PodSpec {
            containers: resources
                .into_iter()
                .enumerate()
                .map(|(i, resources)| Container {
                    name: format!("c{i}"),
                    image: "img".into(),
                    resources,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn qos_classes_follow_kubernetes_rules() {
        let cases: Vec<(&str, Vec<Option<ResourceRequirements>>, &str)> = vec![
            ("nothing anywhere", vec![None, res(&[], &[])], "BestEffort"),
            (
                "only other resources",
                vec![res(&[("ephemeral-storage", "1Gi")], &[])],
                "BestEffort",
            ),
            (
                "zero requests count as none",
                vec![res(&[("cpu", "0")], &[])],
                "BestEffort",
            ),
            (
                "limits only: requests default to them",
                vec![res(&[], &[("cpu", "1"), ("memory", "1Gi")])],
                "Guaranteed",
            ),
            (
                "equal requests and limits in every container",
                vec![
                    res(
                        &[("cpu", "500m"), ("memory", "128Mi")],
                        &[("cpu", "0.5"), ("memory", "128Mi")],
                    ),
                    res(&[], &[("cpu", "2"), ("memory", "1G")]),
                ],
                "Guaranteed",
            ),
            (
                "request below limit",
                vec![res(
                    &[("cpu", "250m"), ("memory", "1Gi")],
                    &[("cpu", "1"), ("memory", "1Gi")],
                )],
                "Burstable",
            ),
            (
                "cpu limit only",
                vec![res(&[], &[("cpu", "1")])],
                "Burstable",
            ),
            (
                "one container without anything",
                vec![res(&[], &[("cpu", "1"), ("memory", "1Gi")]), None],
                "Burstable",
            ),
            (
                "requests only",
                vec![res(&[("memory", "64Mi")], &[])],
                "Burstable",
            ),
        ];
        for (what, resources, want) in cases {
            assert_eq!(qos_class(&spec_of(resources)), want, "{what}");
        }
    }

    fn cs(name: &str, state: ContainerState, last: Option<i32>, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(state),
            last_state: last.map(|code| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ready,
            ..Default::default()
        }
    }

    fn run() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn term(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn wait() -> ContainerState {
        waiting_state("X", None)
    }

    /// One row of the phase table: what, policy, init statuses, app statuses, stopped for
    /// good, the phase.
    type PhaseCase = (
        &'static str,
        RestartPolicy,
        Vec<ContainerStatus>,
        Vec<ContainerStatus>,
        bool,
        &'static str,
    );

    #[test]
    fn phases_follow_the_kubelet() {
        use RestartPolicy::{Always, Never, OnFailure};
        let cases: Vec<PhaseCase> = vec![
            (
                "nothing started",
                Always,
                vec![],
                vec![cs("a", wait(), None, false)],
                false,
                PENDING,
            ),
            (
                "init running",
                Always,
                vec![cs("i", run(), None, false)],
                vec![cs("a", wait(), None, false)],
                false,
                PENDING,
            ),
            (
                "init failed, Never",
                Never,
                vec![cs("i", term(1), None, false)],
                vec![cs("a", wait(), None, false)],
                false,
                FAILED,
            ),
            (
                "init failed, in back-off, Always",
                Always,
                vec![cs("i", wait(), Some(1), false)],
                vec![cs("a", wait(), None, false)],
                false,
                PENDING,
            ),
            (
                "one running",
                Never,
                vec![],
                vec![cs("a", run(), None, true), cs("b", term(1), None, false)],
                false,
                RUNNING,
            ),
            (
                "all exited 0, OnFailure",
                OnFailure,
                vec![cs("i", term(0), None, true)],
                vec![cs("a", term(0), None, false)],
                false,
                SUCCEEDED,
            ),
            (
                "exited 1, Never",
                Never,
                vec![],
                vec![cs("a", term(1), None, false), cs("b", term(0), None, false)],
                false,
                FAILED,
            ),
            (
                "exited, Always",
                Always,
                vec![],
                vec![cs("a", term(0), None, false)],
                false,
                RUNNING,
            ),
            (
                "in back-off, OnFailure",
                OnFailure,
                vec![],
                vec![cs("a", wait(), Some(1), false)],
                false,
                RUNNING,
            ),
            (
                "stopped for good after SIGTERM",
                Always,
                vec![],
                vec![cs("a", term(143), None, false)],
                true,
                FAILED,
            ),
            (
                "stopped for good, exited 0",
                Always,
                vec![],
                vec![cs("a", term(0), None, false)],
                true,
                SUCCEEDED,
            ),
        ];
        for (what, policy, init, apps, terminal, want) in cases {
            assert_eq!(phase(policy, &init, &apps, terminal), want, "{what}");
        }
    }

    #[test]
    fn conditions_name_the_unready_containers() {
        let apps = [
            cs("a", run(), None, false),
            cs("b", run(), None, true),
            cs("c", wait(), None, false),
        ];
        let init = [cs("i", term(0), None, true)];
        let c = conditions(RUNNING, &init, &apps);
        let types: Vec<_> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
        );
        assert_eq!(c[0].status, "True");
        for ready in &c[1..3] {
            assert_eq!(ready.status, "False");
            assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
            assert_eq!(
                ready.message.as_deref(),
                Some("containers with unready status: [a c]")
            );
        }
        let c = conditions(
            PENDING,
            &[cs("i", run(), None, false), cs("j", wait(), None, false)],
            &apps,
        );
        assert_eq!(c[0].status, "False");
        assert_eq!(
            c[0].message.as_deref(),
            Some("containers with incomplete status: [i j]")
        );
        let c = conditions(SUCCEEDED, &init, &[cs("a", term(0), None, false)]);
        assert_eq!(
            (c[0].status.as_str(), c[0].reason.as_deref()),
            ("True", Some("PodCompleted"))
        );
        assert_eq!(
            (c[1].status.as_str(), c[1].reason.as_deref()),
            ("False", Some("PodCompleted"))
        );
    }

    #[test]
    fn transition_times_move_only_on_a_flip() {
        let first = with_transitions(
            &[],
            conditions(RUNNING, &[], &[cs("a", run(), None, true)]),
            "T1",
        );
        assert!(
            first
                .iter()
                .all(|c| c.last_transition_time.as_deref() == Some("T1"))
        );
        let same = with_transitions(
            &first,
            conditions(RUNNING, &[], &[cs("a", run(), None, true)]),
            "T2",
        );
        assert!(
            same.iter()
                .all(|c| c.last_transition_time.as_deref() == Some("T1"))
        );
        let flipped = with_transitions(
            &same,
            conditions(RUNNING, &[], &[cs("a", run(), None, false)]),
            "T3",
        );
        let time = |t: &str| {
            flipped
                .iter()
                .find(|c| c.type_ == t)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap()
        };
        assert_eq!(time("Ready"), "T3");
        assert_eq!(time("ContainersReady"), "T3");
        assert_eq!(time("Initialized"), "T1");
        assert_eq!(time("PodScheduled"), "T1");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_700_000_000_600)),
            "2023-11-14T22:13:20Z"
        );
    }
}
