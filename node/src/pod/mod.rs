//! The pod worker: the kubelet's per-pod loop as a synchronous, clock-driven state machine.
//!
//! One [`PodWorker`] owns one pod bound to this node. The agent calls [`PodWorker::sync`]
//! (from a tokio task, through `spawn_blocking`) whenever something may have changed — a
//! watch event, a runtime event, or the time the previous sync asked to be woken at
//! ([`SyncResult::next_wake`]) — and publishes the [`PodStatus`] it returns. Each sync reads
//! what the runtime reports, runs the probes that are due, and does the next steps:
//!
//! 1. start the pod sandbox once;
//! 2. run the init containers one at a time, in order, each to a zero exit;
//! 3. start every app container; restart the ones that end, as `restartPolicy` says, with
//!    the kubelet's crash-loop back-off ([`backoff`]);
//! 4. kill a container whose startup or liveness probe fails ([`probe`]), gracefully, and
//!    restart it;
//! 5. once the pod is done (it succeeded or failed for good, or [`PodWorker::terminate`] was
//!    called), stop what still runs — `preStop`, then `SIGTERM`, then `SIGKILL` at the end of
//!    the grace period — remove the containers and stop the sandbox.
//!
//! A sync is idempotent and cheap when nothing is due: the agent may call it at any time.
//! Time is the caller's `Instant` (tests pass explicit instants and never sleep); wall-clock
//! timestamps in the status (`startTime`, conditions' `lastTransitionTime`) are that instant
//! mapped through the wall clock read when the worker was made. The status follows the
//! kubelet's own ([`status`]): phase, conditions, container statuses and QoS class.

pub mod backoff;
pub mod probe;
pub mod status;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use coxswain_schema::kinds::pod::{
    Container, LifecycleHandler, Pod, PodSpec, PodStatus, Probe, RestartPolicy,
};
use coxswain_schema::meta::Condition;
use tracing::{debug, info, warn};

use crate::cgroup::Resources;
use crate::error::{Error, Result};
use crate::runtime::{
    self, ContainerId, ContainerSpec, ContainerState, Runtime, Sandbox, SandboxSpec,
};
use backoff::{Backoff, go_duration};
use probe::ProbeTracker;
pub use probe::{NetProber, ProbeOutcome, Prober};

const SIGTERM: i32 = 15;

/// The kubelet's `minimumGracePeriodInSeconds`: however short the grace period, and however
/// long `preStop` took, a container gets this long between `SIGTERM` and `SIGKILL`.
const MIN_KILL_WINDOW: Duration = Duration::from_secs(2);

/// How often a container that was sent `SIGKILL` but has not been seen to end is looked at
/// again.
const KILL_POLL: Duration = Duration::from_secs(1);

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The worker's settings; [`WorkerConfig::new`] has the kubelet's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The first crash-loop delay (the kubelet's 10 s).
    pub backoff_base: Duration,
    /// The longest crash-loop delay (the kubelet's `MaxContainerBackOff`, 5 min).
    pub backoff_max: Duration,
    /// A container that ran longer than this since its last restart counts as healthy, and
    /// its next restart starts the back-off over (the kubelet uses twice the maximum).
    pub backoff_reset_after: Duration,
    pub node_name: String,
    /// The node's IP, reported as `hostIP` (and as `podIP` of pods on the host's network).
    pub host_ip: Option<String>,
}

impl WorkerConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset_after: Duration::from_secs(600),
            node_name: node_name.into(),
            host_ip: None,
        }
    }
}

/// Turns a container of the pod into what the runtime starts: image, argv, environment,
/// volumes. The agent's implementation reads ConfigMaps, Secrets and images; an error is the
/// reason the container cannot be made yet, shown as `CreateContainerConfigError` (the
/// worker tries again after `backoff_base`, or sooner when the pod is updated and synced).
pub trait Resolver: Send + Sync + fmt::Debug {
    fn container_spec(
        &self,
        pod: &Pod,
        container: &Container,
        init: bool,
        attempt: u32,
        sandbox: &Sandbox,
    ) -> Result<ContainerSpec, String>;
}

/// What one sync produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncResult {
    pub status: PodStatus,
    /// When the worker wants to be synced again even if nothing happens (a back-off ends, a
    /// probe is due, a grace period runs out); `None` when only an event can change
    /// anything. At or before the sync's `now` means "at once".
    pub next_wake: Option<Instant>,
    /// Nothing of the pod is left in the runtime and nothing will be started again: the pod
    /// was terminated, or it reached `Succeeded` or `Failed` and was cleaned up. The status
    /// stays what the last sync returned.
    pub finished: bool,
}

/// Maps the worker's monotonic instants to wall-clock time and back.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    instant: Instant,
    wall: SystemTime,
}

impl WallClock {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let mapped = if at >= self.instant {
            self.wall.checked_add(at - self.instant)
        } else {
            self.wall.checked_sub(self.instant - at)
        };
        mapped.unwrap_or(self.wall)
    }

    fn instant(&self, at: SystemTime) -> Option<Instant> {
        match at.duration_since(self.wall) {
            Ok(ahead) => self.instant.checked_add(ahead),
            Err(behind) => self.instant.checked_sub(behind.duration()),
        }
    }
}

/// Why the worker stops a container itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Liveness,
    Startup,
    /// Its image changed: it is restarted whatever the restart policy says.
    SpecChanged,
    PodTermination,
}

/// How one container ended (or could not start), kept for `state` and `lastState`.
#[derive(Debug, Clone, PartialEq)]
struct Termination {
    attempt: u32,
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    container_id: Option<String>,
    /// When the worker saw it end: the back-off counts from here.
    seen: Instant,
}

#[derive(Debug, Clone, PartialEq)]
enum Observed {
    /// `started_at` is `None` until the runtime was first asked.
    Running {
        started_at: Option<SystemTime>,
    },
    Exited(Termination),
}

/// The container a slot holds now.
#[derive(Debug, Clone)]
struct Current {
    id: ContainerId,
    /// The runtime has it (it is not a start that failed, and it was not removed).
    in_runtime: bool,
    /// The runtime created it once (so it has a container ID to show).
    created: bool,
    /// When it started, on the worker's clock.
    started: Instant,
    /// Found by [`PodWorker::adopt`] and not yet looked at: its start time and probes come
    /// from the first look. Carries the `started` and `ready` the last published status
    /// gave it, so an agent restart does not make a ready pod flap.
    adopted: Option<(bool, bool)>,
    state: Observed,
}

impl Current {
    fn is_running(&self) -> bool {
        matches!(self.state, Observed::Running { .. })
    }

    fn termination(&self) -> Option<&Termination> {
        match &self.state {
            Observed::Exited(t) => Some(t),
            Observed::Running { .. } => None,
        }
    }
}

/// The waiting reason the last sync gave a container (the kubelet's reason cache).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiting {
    reason: &'static str,
    message: String,
}

/// The probes of one running container.
#[derive(Debug, Clone, Default)]
struct Probes {
    startup: Option<ProbeTracker>,
    liveness: Option<ProbeTracker>,
    readiness: Option<ProbeTracker>,
    /// The startup probe passed (or there is none).
    started: bool,
    /// Set up for the current container.
    armed: bool,
}

impl Probes {
    /// Probes for a container that started at `started`, seen at `now`; `seed` is the
    /// `started`/`ready` a status before an agent restart gave it.
    fn arm(
        container: &Container,
        started: Instant,
        now: Instant,
        seed: Option<(bool, bool)>,
    ) -> Self {
        let (seed_started, seed_ready) = seed.unwrap_or((false, false));
        let mut p = Probes {
            armed: true,
            ..Default::default()
        };
        match &container.startup_probe {
            Some(probe) if !seed_started => {
                p.startup = Some(ProbeTracker::new(probe, started, started, None));
            }
            _ => p.start_others(container, started, now, seed_ready),
        }
        p
    }

    /// Startup is over: liveness and readiness begin (no earlier than `now`).
    fn start_others(&mut self, container: &Container, started: Instant, now: Instant, ready: bool) {
        self.started = true;
        self.liveness = container
            .liveness_probe
            .as_ref()
            .map(|probe| ProbeTracker::new(probe, started, now, Some(true)));
        self.readiness = container.readiness_probe.as_ref().map(|probe| {
            let tracker = ProbeTracker::new(probe, started, now, Some(ready));
            if ready { tracker } else { tracker.ramp_up() }
        });
    }

    /// Ready as the kubelet means it: started, and the readiness probe (if any) passes.
    fn ready(&self) -> bool {
        self.started
            && self
                .readiness
                .as_ref()
                .is_none_or(|r| r.result == Some(true))
    }
}

/// A stop in progress: `preStop`, then `SIGTERM`, then `SIGKILL` at the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stop {
    deadline: Instant,
    pre_stop_done: bool,
    /// A `sleep` preStop hook holds the `SIGTERM` until then.
    sleep_until: Option<Instant>,
    sigterm_sent: bool,
    killed: bool,
}

impl Stop {
    fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            pre_stop_done: false,
            sleep_until: None,
            sigterm_sent: false,
            killed: false,
        }
    }

    /// When this stop next needs the worker.
    fn wake(&self, now: Instant) -> Instant {
        if !self.pre_stop_done {
            return now;
        }
        if let Some(until) = self.sleep_until
            && now < until
        {
            return until;
        }
        if !self.sigterm_sent {
            now
        } else if !self.killed {
            self.deadline
        } else {
            now + KILL_POLL
        }
    }
}

/// One container of the pod spec and everything the worker knows about it.
#[derive(Debug, Clone)]
struct Slot {
    name: String,
    init: bool,
    /// The image of the latest start (what `status.image` reports).
    image: String,
    current: Option<Current>,
    /// How the container before the current one ended (`lastState`).
    last_termination: Option<Termination>,
    next_attempt: u32,
    waiting: Option<Waiting>,
    /// A start that could not be configured is tried again from then on.
    retry_at: Option<Instant>,
    backoff: Backoff,
    probes: Probes,
    stop: Option<Stop>,
    stop_reason: Option<StopReason>,
    /// `update()` brought a new image for it.
    spec_changed: bool,
}

impl Slot {
    fn new(container: &Container, init: bool, cfg: &WorkerConfig) -> Self {
        Self {
            name: container.name.clone(),
            init,
            image: container.image.clone(),
            current: None,
            last_termination: None,
            next_attempt: 0,
            waiting: None,
            retry_at: None,
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max, cfg.backoff_reset_after),
            probes: Probes::default(),
            stop: None,
            stop_reason: None,
            spec_changed: false,
        }
    }

    fn is_running(&self) -> bool {
        self.current.as_ref().is_some_and(Current::is_running)
    }

    /// The attempt of the latest container, which is its `restartCount`.
    fn restart_count(&self) -> u32 {
        match (&self.current, &self.last_termination) {
            (Some(cur), _) => cur.id.attempt,
            (None, Some(t)) => t.attempt,
            (None, None) => 0,
        }
    }
}

/// A graceful stop of the whole pod.
#[derive(Debug, Clone, Copy)]
struct Terminating {
    /// When every container must be dead (`SIGKILL` is sent then).
    deadline: Instant,
}

/// The lifecycle of one pod on this node. See the module documentation.
pub struct PodWorker {
    pod: Pod,
    key: String,
    runtime: Arc<dyn Runtime>,
    resolver: Arc<dyn Resolver>,
    prober: Arc<dyn Prober>,
    cfg: WorkerConfig,
    clock: WallClock,
    sandbox: Option<Sandbox>,
    /// `run_sandbox` was called, so the sandbox may exist and must be stopped at the end.
    sandbox_tried: bool,
    /// Why the sandbox could not be made, and when to try again.
    sandbox_failure: Option<(String, Instant)>,
    start_time: Option<String>,
    /// Every init container has succeeded; they never run again in this sandbox.
    initialized: bool,
    /// Init containers first, then app containers, each in spec order.
    slots: Vec<Slot>,
    /// Containers of this pod that the runtime holds but no slot owns (older attempts found
    /// after an agent restart, a removal that failed): removed when possible.
    stale: Vec<ContainerId>,
    /// The conditions last reported, for their `lastTransitionTime`.
    conditions: Vec<Condition>,
    terminating: Option<Terminating>,
    /// `update()` saw a deletion; the next sync begins the termination.
    pending_termination: bool,
    finished: bool,
    /// The real moment the current sync began, to keep hooks within the grace period.
    sync_began: Instant,
}

impl fmt::Debug for PodWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodWorker")
            .field("key", &self.key)
            .field("sandbox", &self.sandbox)
            .field("initialized", &self.initialized)
            .field("slots", &self.slots)
            .field("terminating", &self.terminating)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl PodWorker {
    /// A worker for a pod that has nothing in the runtime yet.
    pub fn new(
        pod: Pod,
        runtime: Arc<dyn Runtime>,
        resolver: Arc<dyn Resolver>,
        prober: Arc<dyn Prober>,
        cfg: WorkerConfig,
    ) -> Self {
        let meta = &pod.metadata;
        let key = runtime::sandbox_key(
            meta.namespace.as_deref().unwrap_or("default"),
            &meta.name,
            meta.uid.as_deref().unwrap_or(""),
        );
        let slots = pod
            .spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Slot::new(c, true, &cfg))
            .chain(
                pod.spec
                    .containers
                    .iter()
                    .map(|c| Slot::new(c, false, &cfg)),
            )
            .collect::<Vec<_>>();
        let initialized = slots.iter().all(|s| !s.init);
        let status = pod.status.as_ref();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        Self {
            key,
            runtime,
            resolver,
            prober,
            cfg,
            clock: WallClock::now(),
            sandbox: None,
            sandbox_tried: false,
            sandbox_failure: None,
            start_time: status.and_then(|s| s.start_time.clone()),
            initialized,
            slots,
            stale: Vec::new(),
            conditions: status
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default(),
            terminating: None,
            pending_termination: deleting,
            finished: false,
            sync_began: Instant::now(),
            pod,
        }
    }

    /// A worker for a pod whose sandbox may already run, after an agent restart: takes over
    /// the sandbox and the newest container of each name that [`Runtime::list`] reports (a
    /// running one keeps running, and its `restartCount` is its attempt), and removes older
    /// attempts. Init containers are not run again once an app container exists, as the
    /// kubelet does. Probe results start over, except that a container the last published
    /// status showed as started and ready stays so until a probe says otherwise.
    pub fn adopt(
        pod: Pod,
        runtime: Arc<dyn Runtime>,
        resolver: Arc<dyn Resolver>,
        prober: Arc<dyn Prober>,
        cfg: WorkerConfig,
    ) -> Result<Self> {
        let mut w = Self::new(pod, runtime, resolver, prober, cfg);
        let listed = w.runtime.list()?;
        let Some((sandbox, mut ids)) = listed.into_iter().find(|(s, _)| s.key == w.key) else {
            return Ok(w);
        };
        w.sandbox = Some(sandbox);
        w.sandbox_tried = true;
        ids.sort();
        let seeds = w.published_seeds();
        for id in ids {
            let Some(slot) = w.slots.iter_mut().find(|s| s.name == id.name) else {
                w.stale.push(id);
                continue;
            };
            // Sorted by attempt within a name: a later id replaces an earlier one.
            if let Some(older) = slot.current.take() {
                w.stale.push(older.id);
            }
            let seed = seeds
                .iter()
                .find(|(cid, _)| *cid == container_id(&id))
                .map(|(_, seed)| *seed);
            slot.next_attempt = id.attempt.saturating_add(1);
            slot.current = Some(Current {
                id,
                in_runtime: true,
                created: true,
                started: Instant::now(),
                adopted: Some(seed.unwrap_or((false, false))),
                state: Observed::Running { started_at: None },
            });
        }
        if w.slots.iter().any(|s| !s.init && s.current.is_some()) {
            w.initialized = true;
        }
        info!(pod = %w.key, adopted = ?w.slots.iter().filter_map(|s| s.current.as_ref().map(|c| c.id.to_string())).collect::<Vec<_>>(), "adopted pod");
        Ok(w)
    }

    /// `(containerID, (started, ready))` of the containers in the pod's published status.
    fn published_seeds(&self) -> Vec<(String, (bool, bool))> {
        let Some(status) = &self.pod.status else {
            return Vec::new();
        };
        status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|cs| {
                Some((
                    cs.container_id.clone()?,
                    (cs.started.unwrap_or(false), cs.ready),
                ))
            })
            .collect()
    }

    /// The sandbox key of the pod (see [`runtime::sandbox_key`]).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The pod as the worker runs it.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Takes a new version of the pod. As in Kubernetes, a pod's spec is fixed once it runs,
    /// except the containers' images: a new image restarts a running container (whatever the
    /// restart policy) and applies to every later start; other spec changes are ignored. A
    /// `deletionTimestamp` begins a graceful termination at the next sync.
    pub fn update(&mut self, pod: Pod) {
        let mut next = pod;
        let mut spec = self.pod.spec.clone();
        let new_spec = &next.spec;
        let mut changed = Vec::new();
        for (c, init) in spec
            .init_containers
            .iter_mut()
            .flatten()
            .map(|c| (c, true))
            .chain(spec.containers.iter_mut().map(|c| (c, false)))
        {
            let list = if init {
                new_spec.init_containers.as_deref().unwrap_or_default()
            } else {
                new_spec.containers.as_slice()
            };
            if let Some(nc) = list.iter().find(|nc| nc.name == c.name)
                && nc.image != c.image
            {
                c.image = nc.image.clone();
                if !init {
                    changed.push(c.name.clone());
                }
            }
        }
        spec.active_deadline_seconds = new_spec.active_deadline_seconds;
        next.spec = spec;
        for slot in &mut self.slots {
            if changed.contains(&slot.name) {
                info!(pod = %self.key, container = %slot.name, "image changed: the container will be restarted");
                slot.spec_changed = true;
            }
        }
        if next.metadata.deletion_timestamp.is_some() && self.terminating.is_none() {
            self.pending_termination = true;
        }
        self.pod = next;
    }

    /// Begins (or hurries) a graceful stop of the pod at `now`: later syncs run each running
    /// container's `preStop`, send `SIGTERM`, and `SIGKILL` what still runs once `grace`
    /// (default: the pod's `terminationGracePeriodSeconds`, else 30 s) has passed since
    /// `now` — `preStop` counts against it — then remove the containers and stop the
    /// sandbox. Nothing is started or restarted any more. A second call can only shorten
    /// the grace period, as a second `kubectl delete --grace-period` can.
    pub fn terminate(&mut self, now: Instant, grace: Option<Duration>) {
        self.pending_termination = false;
        let grace = grace.unwrap_or_else(|| self.pod_grace());
        let deadline = now.checked_add(grace).unwrap_or(now);
        match &mut self.terminating {
            Some(t) if deadline < t.deadline => {
                t.deadline = deadline;
                for stop in self.slots.iter_mut().filter_map(|s| s.stop.as_mut()) {
                    stop.deadline = stop.deadline.min(deadline);
                }
            }
            Some(_) => {}
            None => {
                info!(pod = %self.key, grace = %go_duration(grace), "terminating pod");
                self.terminating = Some(Terminating { deadline });
            }
        }
    }

    /// One round: see the module documentation. An error is a runtime call that failed
    /// (reading a container's state, signalling, removing, stopping the sandbox); nothing is
    /// lost by it, and the agent should sync again after a pause.
    pub fn sync(&mut self, now: Instant) -> Result<SyncResult> {
        if !self.finished {
            self.sync_began = Instant::now();
            if self.start_time.is_none() {
                self.start_time = Some(status::rfc3339(self.clock.wall(now)));
            }
            if self.pending_termination {
                // Kubernetes takes a deletion's grace period from the pod's
                // `metadata.deletionGracePeriodSeconds`, which this schema does not carry; the
                // pod's own period stands in (what that field holds after a default delete).
                self.terminate(now, None);
            }
            if self.terminating.is_some() {
                self.sync_terminating(now)?;
            } else {
                self.sync_running(now)?;
            }
        }
        let status = self.build_status(now);
        self.conditions = status.conditions.clone().unwrap_or_default();
        Ok(SyncResult {
            next_wake: self.next_wake(now),
            finished: self.finished,
            status,
        })
    }

    fn sync_running(&mut self, now: Instant) -> Result<()> {
        if !self.ensure_sandbox(now) {
            return Ok(());
        }
        self.remove_stale();
        self.observe(now)?;
        self.run_probes(now);
        self.restart_changed_specs(now);
        if self.progress_stops(now)? {
            // A container that ends at once on SIGTERM is restarted in this same sync.
            self.observe(now)?;
        }
        self.start_containers(now)?;
        if status::is_terminal_phase(self.phase()) && !self.slots.iter().any(Slot::is_running) {
            info!(pod = %self.key, phase = self.phase(), "pod is done: removing its containers and sandbox");
            self.cleanup()?;
        }
        Ok(())
    }

    fn sync_terminating(&mut self, now: Instant) -> Result<()> {
        let Some(t) = self.terminating else {
            return Ok(());
        };
        self.observe(now)?;
        for slot in &mut self.slots {
            if slot.is_running() {
                match &mut slot.stop {
                    Some(stop) => stop.deadline = stop.deadline.min(t.deadline),
                    None => {
                        slot.stop = Some(Stop::new(t.deadline));
                        slot.stop_reason = Some(StopReason::PodTermination);
                    }
                }
            }
        }
        if self.progress_stops(now)? {
            self.observe(now)?;
        }
        if !self.slots.iter().any(Slot::is_running) {
            self.cleanup()?;
            info!(pod = %self.key, "pod terminated");
        }
        Ok(())
    }

    /// The pod's `terminationGracePeriodSeconds`, or Kubernetes' default.
    fn pod_grace(&self) -> Duration {
        self.pod
            .spec
            .termination_grace_period_seconds
            .map_or(DEFAULT_GRACE, secs)
    }

    fn ensure_sandbox(&mut self, now: Instant) -> bool {
        if self.sandbox.is_some() {
            return true;
        }
        if let Some((_, retry)) = &self.sandbox_failure
            && now < *retry
        {
            return false;
        }
        self.sandbox_tried = true;
        let made = self
            .sandbox_spec()
            .and_then(|spec| self.runtime.run_sandbox(&spec));
        match made {
            Ok(sandbox) => {
                info!(pod = %self.key, ip = ?sandbox.pod_ip, "sandbox running");
                self.sandbox = Some(sandbox);
                self.sandbox_failure = None;
                true
            }
            Err(e) => {
                // The kubelet retries a failed sandbox on its next sync; so does this, after
                // the base back-off so that a broken network does not spin the agent.
                warn!(pod = %self.key, error = %e, "failed to create pod sandbox");
                self.sandbox_failure = Some((
                    format!("failed to create pod sandbox: {e}"),
                    now + self.cfg.backoff_base,
                ));
                false
            }
        }
    }

    fn sandbox_spec(&self) -> Result<SandboxSpec> {
        let spec = &self.pod.spec;
        Ok(SandboxSpec {
            key: self.key.clone(),
            hostname: spec
                .hostname
                .clone()
                .unwrap_or_else(|| self.pod.metadata.name.clone()),
            host_network: spec.host_network.unwrap_or(false),
            share_process_namespace: spec.share_process_namespace.unwrap_or(false),
            resources: pod_resources(spec)?,
        })
    }

    /// Removes what [`PodWorker::adopt`] found that no slot owns. Best effort: what fails is
    /// tried again at the next sync and before the sandbox is stopped.
    fn remove_stale(&mut self) {
        let stale = std::mem::take(&mut self.stale);
        for id in stale {
            if let Err(e) = self.remove_any(&id) {
                debug!(container = %id, error = %e, "stale container not removed yet");
                self.stale.push(id);
            }
        }
    }

    /// Kills (if it runs) and removes a container.
    fn remove_any(&self, id: &ContainerId) -> Result<()> {
        if let ContainerState::Running { .. } = self.runtime.container_state(id)? {
            self.runtime.kill(id)?;
        }
        self.runtime.remove_container(id)
    }

    /// Reads the state of every container the worker believes runs.
    fn observe(&mut self, now: Instant) -> Result<()> {
        for i in 0..self.slots.len() {
            let Some(cur) = &self.slots[i].current else {
                continue;
            };
            if !cur.in_runtime || !cur.is_running() {
                continue;
            }
            let state = self.runtime.container_state(&cur.id)?;
            self.apply_state(i, state, now);
        }
        Ok(())
    }

    fn apply_state(&mut self, i: usize, state: ContainerState, now: Instant) {
        let clock = self.clock;
        let container = self.container(i).cloned();
        let key = self.key.clone();
        let slot = &mut self.slots[i];
        let Some(cur) = slot.current.as_mut() else {
            return;
        };
        match state {
            ContainerState::Running { started_at, .. } => {
                if let Some(seed) = cur.adopted.take() {
                    cur.started = clock.instant(started_at).map_or(now, |t| t.min(now));
                    if let Some(c) = &container
                        && !slot.init
                    {
                        slot.probes = Probes::arm(c, cur.started, now, Some(seed));
                    }
                }
                cur.state = Observed::Running {
                    started_at: Some(started_at),
                };
            }
            ContainerState::Exited {
                exit_code,
                signal,
                oom_killed,
                started_at,
                finished_at,
            } => {
                let reason = if oom_killed {
                    "OOMKilled"
                } else if exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                info!(pod = %key, container = %cur.id, exit_code, ?signal, reason, "container exited");
                cur.adopted = None;
                cur.state = Observed::Exited(Termination {
                    attempt: cur.id.attempt,
                    exit_code,
                    signal,
                    reason: reason.to_owned(),
                    message: None,
                    started_at: Some(started_at),
                    finished_at: Some(finished_at),
                    container_id: Some(container_id(&cur.id)),
                    seen: now,
                });
                slot.stop = None;
                slot.probes = Probes::default();
            }
            ContainerState::Unknown => {
                // Someone removed it, or the runtime lost it: Kubernetes reports such a
                // container as ended with 137 and `ContainerStatusUnknown`.
                warn!(pod = %key, container = %cur.id, "container is gone from the runtime");
                let started_at = match &cur.state {
                    Observed::Running { started_at } => *started_at,
                    Observed::Exited(t) => t.started_at,
                };
                cur.adopted = None;
                cur.in_runtime = false;
                cur.state = Observed::Exited(Termination {
                    attempt: cur.id.attempt,
                    exit_code: 137,
                    signal: None,
                    reason: "ContainerStatusUnknown".to_owned(),
                    message: Some("The container could not be located".to_owned()),
                    started_at,
                    finished_at: None,
                    container_id: Some(container_id(&cur.id)),
                    seen: now,
                });
                slot.stop = None;
                slot.probes = Probes::default();
            }
        }
    }

    /// The spec of slot `i`'s container.
    fn container(&self, i: usize) -> Option<&Container> {
        let slot = self.slots.get(i)?;
        let list = if slot.init {
            self.pod.spec.init_containers.as_deref().unwrap_or_default()
        } else {
            self.pod.spec.containers.as_slice()
        };
        list.iter().find(|c| c.name == slot.name)
    }

    fn run_probes(&mut self, now: Instant) {
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.init || slot.stop.is_some() {
                continue;
            }
            let Some(cur) = &slot.current else {
                continue;
            };
            if !cur.is_running() || cur.adopted.is_some() {
                continue;
            }
            let Some(container) = self.container(i).cloned() else {
                continue;
            };
            let id = cur.id.clone();
            let started = cur.started;
            if !self.slots[i].probes.armed {
                self.slots[i].probes = Probes::arm(&container, started, now, None);
            }
            let verdict = self.probe_once(i, &container, &id, &sandbox, started, now);
            if let Some(reason) = verdict {
                let grace = probe_grace(&container, reason).unwrap_or_else(|| self.pod_grace());
                info!(pod = %self.key, container = %id, ?reason, "probe failed: the container will be restarted");
                let slot = &mut self.slots[i];
                slot.stop = Some(Stop::new(now.checked_add(grace).unwrap_or(now)));
                slot.stop_reason = Some(reason);
            }
        }
    }

    /// Runs slot `i`'s due probes; returns why the container must be stopped, if it must.
    fn probe_once(
        &mut self,
        i: usize,
        container: &Container,
        id: &ContainerId,
        sandbox: &Sandbox,
        started: Instant,
        now: Instant,
    ) -> Option<StopReason> {
        let prober = Arc::clone(&self.prober);
        let runtime = Arc::clone(&self.runtime);
        let run = |probe: &Option<Probe>| -> ProbeOutcome {
            match probe {
                Some(p) => prober.probe(p, container, id, sandbox, runtime.as_ref()),
                None => ProbeOutcome::Unknown("no probe".to_owned()),
            }
        };
        let probes = &mut self.slots[i].probes;
        if !probes.started {
            let tracker = probes.startup.as_mut()?;
            if !tracker.is_due(now) {
                return None;
            }
            let outcome = run(&container.startup_probe);
            debug!(container = %id, ?outcome, "startup probe");
            match tracker.record(&outcome, now) {
                Some(true) => probes.start_others(container, started, now, false),
                Some(false) => return Some(StopReason::Startup),
                None => return None,
            }
        }
        if let Some(tracker) = probes.liveness.as_mut()
            && tracker.is_due(now)
        {
            let outcome = run(&container.liveness_probe);
            debug!(container = %id, ?outcome, "liveness probe");
            if tracker.record(&outcome, now) == Some(false) {
                return Some(StopReason::Liveness);
            }
        }
        if let Some(tracker) = probes.readiness.as_mut()
            && tracker.is_due(now)
        {
            let outcome = run(&container.readiness_probe);
            debug!(container = %id, ?outcome, "readiness probe");
            tracker.record(&outcome, now);
        }
        None
    }

    /// Acts on the images `update()` changed: a running container is stopped (and then
    /// restarted); one waiting to restart starts without its old back-off.
    fn restart_changed_specs(&mut self, now: Instant) {
        let grace = self.pod_grace();
        for slot in &mut self.slots {
            if !std::mem::take(&mut slot.spec_changed) {
                continue;
            }
            slot.backoff.reset();
            if slot.is_running() && slot.stop.is_none() {
                slot.stop = Some(Stop::new(now.checked_add(grace).unwrap_or(now)));
                slot.stop_reason = Some(StopReason::SpecChanged);
            }
        }
    }

    /// Moves every stop in progress on. Returns whether a signal was sent.
    fn progress_stops(&mut self, now: Instant) -> Result<bool> {
        let mut signalled = false;
        for i in 0..self.slots.len() {
            if self.slots[i].stop.is_some() && self.slots[i].is_running() {
                signalled |= self.progress_stop(i, now)?;
            }
        }
        Ok(signalled)
    }

    fn progress_stop(&mut self, i: usize, now: Instant) -> Result<bool> {
        let (Some(cur), Some(mut stop)) =
            (self.slots[i].current.clone(), self.slots[i].stop.clone())
        else {
            return Ok(false);
        };
        let id = cur.id;
        if !stop.pre_stop_done {
            stop.pre_stop_done = true;
            let left = stop
                .deadline
                .saturating_duration_since(now)
                .saturating_sub(self.sync_began.elapsed());
            let hook = self
                .container(i)
                .and_then(|c| c.lifecycle.as_ref())
                .and_then(|l| l.pre_stop.clone());
            if let Some(hook) = hook
                && !left.is_zero()
                && let Some(sleep) = self.run_pre_stop(i, &hook, &id, left)
            {
                stop.sleep_until = Some(now.checked_add(sleep).unwrap_or(now).min(stop.deadline));
            }
            // However long the hook took, the container gets a moment between SIGTERM and
            // SIGKILL (the kubelet's minimum grace period).
            let hook_end = stop.sleep_until.unwrap_or(now);
            stop.deadline = stop.deadline.max(hook_end + MIN_KILL_WINDOW);
        }
        let mut signalled = false;
        let sleeping = stop.sleep_until.is_some_and(|until| now < until);
        if !sleeping && !stop.sigterm_sent {
            stop.sigterm_sent = true;
            signalled = true;
            debug!(container = %id, "sending SIGTERM");
            if let Err(e) = self.runtime.signal(&id, SIGTERM) {
                self.after_failed_signal(i, &id, e, now)?;
            }
        }
        if !sleeping && !stop.killed && now >= stop.deadline {
            stop.killed = true;
            signalled = true;
            info!(pod = %self.key, container = %id, "grace period over: killing the container");
            if let Err(e) = self.runtime.kill(&id) {
                self.after_failed_signal(i, &id, e, now)?;
            }
        }
        if self.slots[i].is_running() {
            self.slots[i].stop = Some(stop);
        }
        Ok(signalled)
    }

    /// A signal could not be delivered: fine when the container has ended meanwhile.
    fn after_failed_signal(
        &mut self,
        i: usize,
        id: &ContainerId,
        e: Error,
        now: Instant,
    ) -> Result<()> {
        let state = self.runtime.container_state(id)?;
        if matches!(state, ContainerState::Running { .. }) {
            return Err(e);
        }
        self.apply_state(i, state, now);
        Ok(())
    }

    /// Runs a `preStop` hook within `left`. Returns the time a `sleep` hook asks for, which
    /// the worker waits out between syncs rather than blocking in one.
    fn run_pre_stop(
        &self,
        i: usize,
        hook: &LifecycleHandler,
        id: &ContainerId,
        left: Duration,
    ) -> Option<Duration> {
        if let Some(exec) = &hook.exec {
            let argv = exec.command.clone().unwrap_or_default();
            match self.runtime.exec(id, &argv, left) {
                Ok(out) if out.exit_code == Some(0) => debug!(container = %id, "preStop hook ran"),
                Ok(out) => {
                    warn!(container = %id, exit_code = ?out.exit_code, output = %String::from_utf8_lossy(&out.output), "preStop hook failed")
                }
                Err(e) => warn!(container = %id, error = %e, "preStop hook could not run"),
            }
        } else if let Some(http) = &hook.http_get {
            let (Some(container), Some(sandbox)) = (self.container(i), self.sandbox.as_ref())
            else {
                return None;
            };
            let probe = Probe {
                http_get: Some(http.clone()),
                timeout_seconds: Some(i32::try_from(left.as_secs().max(1)).unwrap_or(i32::MAX)),
                ..Default::default()
            };
            match self
                .prober
                .probe(&probe, container, id, sandbox, self.runtime.as_ref())
            {
                ProbeOutcome::Success => debug!(container = %id, "preStop hook ran"),
                other => warn!(container = %id, outcome = ?other, "preStop hook failed"),
            }
        } else if let Some(sleep) = &hook.sleep {
            return Some(secs(sleep.seconds));
        } else if hook.tcp_socket.is_some() {
            // Kubernetes accepts a tcpSocket handler for compatibility and does nothing
            // with it but warn.
            warn!(container = %id, "tcpSocket preStop hooks are not supported: skipped");
        }
        None
    }

    /// Whether slot `i`'s ended container is to be started again.
    fn should_restart(&self, slot: &Slot) -> bool {
        if self.terminating.is_some() || (slot.init && self.initialized) {
            return false;
        }
        let Some(t) = slot.current.as_ref().and_then(Current::termination) else {
            return false;
        };
        let policy = self.pod.spec.restart_policy.unwrap_or_default();
        match slot.stop_reason {
            Some(StopReason::SpecChanged) => true,
            Some(StopReason::Liveness | StopReason::Startup) => policy != RestartPolicy::Never,
            _ if slot.init => t.exit_code != 0 && policy != RestartPolicy::Never,
            _ => match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => t.exit_code != 0,
                RestartPolicy::Never => false,
            },
        }
    }

    /// Starts what is due: the next init container, or the app containers.
    fn start_containers(&mut self, now: Instant) -> Result<()> {
        if !self.initialized {
            for i in 0..self.slots.len() {
                if !self.slots[i].init {
                    break;
                }
                let Some(cur) = &self.slots[i].current else {
                    return self.start(i, now);
                };
                match cur.termination() {
                    None => return Ok(()),
                    Some(t) if t.exit_code == 0 => continue,
                    Some(_) => {
                        if self.should_restart(&self.slots[i]) {
                            self.restart(i, now)?;
                        }
                        return Ok(());
                    }
                }
            }
            info!(pod = %self.key, "init containers done");
            self.initialized = true;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].init {
                continue;
            }
            match &self.slots[i].current {
                None => self.start(i, now)?,
                Some(cur) if cur.is_running() => {}
                Some(_) => {
                    if self.should_restart(&self.slots[i]) {
                        self.restart(i, now)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Restarts slot `i`'s ended container, unless its back-off holds it.
    fn restart(&mut self, i: usize, now: Instant) -> Result<()> {
        let pod_label = self.pod_label();
        let slot = &mut self.slots[i];
        let Some(cur) = slot.current.clone() else {
            return Ok(());
        };
        let Some(t) = cur.termination().cloned() else {
            return Ok(());
        };
        if let Some(until) = slot.backoff.blocked_until(t.seen, now) {
            let delay = slot.backoff.delay().unwrap_or_default();
            slot.waiting = Some(Waiting {
                reason: "CrashLoopBackOff",
                message: format!(
                    "back-off {} restarting failed container={} pod={pod_label}",
                    go_duration(delay),
                    slot.name
                ),
            });
            debug!(container = %cur.id, until = ?until.saturating_duration_since(now), "in back-off");
            return Ok(());
        }
        slot.backoff.restarted(t.seen, now);
        slot.last_termination = Some(t);
        slot.current = None;
        slot.retry_at = None;
        slot.stop_reason = None;
        if cur.in_runtime
            && let Err(e) = self.runtime.remove_container(&cur.id)
        {
            warn!(container = %cur.id, error = %e, "could not remove the old container; will retry");
            self.stale.push(cur.id.clone());
        }
        info!(pod = %self.key, container = %cur.id.name, attempt = cur.id.attempt + 1, "restarting container");
        self.start(i, now)
    }

    /// The kubelet's `format.Pod`: `NAME_NAMESPACE(UID)`.
    fn pod_label(&self) -> String {
        let meta = &self.pod.metadata;
        format!(
            "{}_{}({})",
            meta.name,
            meta.namespace.as_deref().unwrap_or("default"),
            meta.uid.as_deref().unwrap_or("")
        )
    }

    /// Starts the next attempt of slot `i`'s container.
    fn start(&mut self, i: usize, now: Instant) -> Result<()> {
        if self.slots[i].retry_at.is_some_and(|at| now < at) {
            return Ok(());
        }
        let (Some(container), Some(sandbox)) = (self.container(i).cloned(), self.sandbox.clone())
        else {
            return Ok(());
        };
        let init = self.slots[i].init;
        let attempt = self.slots[i].next_attempt;
        let spec = match self
            .resolver
            .container_spec(&self.pod, &container, init, attempt, &sandbox)
        {
            Ok(spec) => spec,
            Err(message) => {
                warn!(pod = %self.key, container = %container.name, %message, "cannot configure container");
                let slot = &mut self.slots[i];
                slot.waiting = Some(Waiting {
                    reason: "CreateContainerConfigError",
                    message,
                });
                slot.retry_at = Some(now + self.cfg.backoff_base);
                return Ok(());
            }
        };
        let started = self.runtime.start_container(&sandbox, &spec);
        let wall_now = self.clock.wall(now);
        let slot = &mut self.slots[i];
        slot.image = container.image.clone();
        slot.next_attempt = attempt.saturating_add(1);
        slot.retry_at = None;
        slot.stop = None;
        slot.stop_reason = None;
        match started {
            Ok(id) => {
                info!(pod = %self.key, container = %id, "container started");
                slot.waiting = None;
                slot.probes = if init {
                    Probes::default()
                } else {
                    Probes::arm(&container, now, now, None)
                };
                slot.current = Some(Current {
                    id: id.clone(),
                    in_runtime: true,
                    created: true,
                    started: now,
                    adopted: None,
                    state: Observed::Running { started_at: None },
                });
                // Read it once: it has a start time to show, and may have ended already.
                let state = self.runtime.container_state(&id)?;
                self.apply_state(i, state, now);
            }
            Err(e) => {
                // The kubelet shows a container that could not start as ended with 128 and
                // `StartError`, waiting with `RunContainerError`; it counts as a restart and
                // is restarted (with back-off) as the policy says.
                let message = e.to_string();
                warn!(pod = %self.key, container = %container.name, error = %message, "container failed to start");
                let id = ContainerId {
                    sandbox: self.key.clone(),
                    name: container.name.clone(),
                    attempt,
                };
                slot.waiting = Some(Waiting {
                    reason: "RunContainerError",
                    message: message.clone(),
                });
                slot.probes = Probes::default();
                slot.current = Some(Current {
                    id: id.clone(),
                    in_runtime: false,
                    created: false,
                    started: now,
                    adopted: None,
                    state: Observed::Exited(Termination {
                        attempt,
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".to_owned(),
                        message: Some(message),
                        started_at: None,
                        finished_at: Some(wall_now),
                        container_id: None,
                        seen: now,
                    }),
                });
            }
        }
        Ok(())
    }

    /// Removes every container and stops the sandbox; the worker is finished after it.
    fn cleanup(&mut self) -> Result<()> {
        for i in 0..self.slots.len() {
            let Some(cur) = self.slots[i].current.clone() else {
                continue;
            };
            if cur.in_runtime {
                self.runtime.remove_container(&cur.id)?;
                if let Some(c) = self.slots[i].current.as_mut() {
                    c.in_runtime = false;
                }
            }
        }
        while let Some(id) = self.stale.last().cloned() {
            self.remove_any(&id)?;
            self.stale.pop();
        }
        if self.sandbox_tried {
            self.runtime.stop_sandbox(&self.key)?;
        }
        self.finished = true;
        Ok(())
    }

    /// When the worker next has something to do on its own.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if self.sandbox.is_none()
            && let Some((_, retry)) = &self.sandbox_failure
        {
            at(*retry);
        }
        for slot in &self.slots {
            match &slot.current {
                Some(cur) if cur.is_running() => {
                    if let Some(stop) = &slot.stop {
                        at(stop.wake(now));
                        continue;
                    }
                    if self.terminating.is_some() {
                        // Its stop begins at the next sync.
                        at(now);
                        continue;
                    }
                    let p = &slot.probes;
                    if !p.started {
                        if let Some(t) = &p.startup {
                            at(t.due);
                        }
                    } else {
                        for t in [&p.liveness, &p.readiness].into_iter().flatten() {
                            at(t.due);
                        }
                    }
                    if cur.adopted.is_some() || (!p.armed && !slot.init) {
                        at(now);
                    }
                }
                Some(cur) => {
                    if let Some(t) = cur.termination()
                        && self.should_restart(slot)
                    {
                        at(slot.backoff.blocked_until(t.seen, now).unwrap_or(now));
                    }
                }
                None => {
                    if self.terminating.is_none()
                        && let Some(retry) = slot.retry_at
                    {
                        at(retry);
                    }
                }
            }
        }
        if self.terminating.is_some() && !self.slots.iter().any(Slot::is_running) {
            // Only the cleanup is left (a removal failed last time).
            at(now);
        }
        wake
    }
}

/// The grace period a probe's own `terminationGracePeriodSeconds` sets for the kill it causes.
fn probe_grace(container: &Container, reason: StopReason) -> Option<Duration> {
    let probe = match reason {
        StopReason::Liveness => container.liveness_probe.as_ref(),
        StopReason::Startup => container.startup_probe.as_ref(),
        _ => None,
    }?;
    probe.termination_grace_period_seconds.map(secs)
}

/// Whole seconds from a Kubernetes field; a negative value is 0.
fn secs(v: i64) -> Duration {
    Duration::from_secs(u64::try_from(v).unwrap_or(0))
}

/// A container's ID as the status shows it.
fn container_id(id: &ContainerId) -> String {
    format!("coxswain://{id}")
}

/// The pod cgroup's limits, as the kubelet sizes them: the cpu request is the larger of the
/// app containers' sum and the largest init container's (they never run together); a cpu or
/// memory limit is set only when every container has one, and is the same larger-of.
pub fn pod_resources(spec: &PodSpec) -> Result<Resources> {
    let of = |c: &Container| -> Result<Resources> {
        let r = c.resources.as_ref();
        Resources::from_k8s(
            r.and_then(|r| r.requests.as_ref()),
            r.and_then(|r| r.limits.as_ref()),
        )
        .map_err(|e| match e {
            Error::Config { field, reason } => Error::Config {
                field: format!("container {}: {field}", c.name),
                reason,
            },
            other => other,
        })
    };
    let apps = spec.containers.iter().map(of).collect::<Result<Vec<_>>>()?;
    let inits = spec
        .init_containers
        .iter()
        .flatten()
        .map(of)
        .collect::<Result<Vec<_>>>()?;
    // Larger of the app containers' sum and the largest init container's value; `None`
    // when some container has none and `all_needed` (limits).
    let combine = |get: fn(&Resources) -> Option<u64>, all_needed: bool| -> Option<u64> {
        if all_needed && apps.iter().chain(&inits).any(|r| get(r).is_none()) {
            return None;
        }
        let sum = apps.iter().filter_map(get).fold(0u64, u64::saturating_add);
        let init_max = inits.iter().filter_map(get).max().unwrap_or(0);
        Some(sum.max(init_max)).filter(|&v| v > 0)
    };
    Ok(Resources {
        cpu_request_millis: combine(|r| r.cpu_request_millis, false),
        cpu_limit_millis: combine(|r| r.cpu_limit_millis, true),
        memory_limit_bytes: combine(|r| r.memory_limit_bytes, true),
        pids_max: None,
    })
}
