//! The pod worker against the recording fake runtime, a scripted prober and a trivial
//! resolver, on explicit instants: nothing here sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coxswain_schema::kinds::pod::{
    Container, ContainerStatus, ExecAction, Lifecycle, LifecycleHandler, Pod, PodSpec, Probe,
    ResourceRequirements, RestartPolicy, SleepAction,
};
use coxswain_schema::meta::ObjectMeta;
use coxswain_schema::quantity::Quantity;

use super::*;
use crate::runtime::Rootfs;
use crate::runtime::fake::{Call, FakeRuntime};

const SIGKILL: i32 = 9;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Builds specs from the container alone; fails for the names it is told to.
#[derive(Debug, Default)]
struct TestResolver {
    failing: Mutex<BTreeMap<String, String>>,
}

impl TestResolver {
    fn fail(&self, name: &str, message: &str) {
        self.failing
            .lock()
            .unwrap()
            .insert(name.into(), message.into());
    }

    fn heal(&self, name: &str) {
        self.failing.lock().unwrap().remove(name);
    }
}

impl Resolver for TestResolver {
    fn container_spec(
        &self,
        _pod: &Pod,
        container: &Container,
        _init: bool,
        attempt: u32,
        _sandbox: &Sandbox,
    ) -> Result<ContainerSpec, String> {
        if let Some(message) = self.failing.lock().unwrap().get(&container.name) {
            return Err(message.clone());
        }
        Ok(ContainerSpec {
            name: container.name.clone(),
            attempt,
            rootfs: Rootfs::Host,
            argv: container.command.clone().unwrap_or_default(),
            env: vec![],
            working_dir: None,
            user: None,
            group: None,
            mounts: vec![],
            resources: Default::default(),
            read_only_root_filesystem: false,
            add_capabilities: vec![],
            drop_capabilities: vec![],
        })
    }
}

/// Answers each probe by its exec command's first word (`live`, `ready`, `startup`, or
/// whatever the test uses), per container; unscripted probes succeed. Records every probe.
#[derive(Debug, Default)]
struct ScriptedProber {
    outcomes: Mutex<BTreeMap<(String, String), bool>>,
    calls: Mutex<Vec<(String, String)>>,
}

impl ScriptedProber {
    fn set(&self, container: &str, probe: &str, ok: bool) {
        self.outcomes
            .lock()
            .unwrap()
            .insert((container.into(), probe.into()), ok);
    }

    fn calls(&self, container: &str, probe: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, p)| c == container && p == probe)
            .count()
    }
}

fn probe_name(probe: &Probe) -> String {
    probe
        .exec
        .as_ref()
        .and_then(|e| e.command.as_ref())
        .and_then(|c| c.first().cloned())
        .unwrap_or_else(|| "http".into())
}

impl Prober for ScriptedProber {
    fn probe(
        &self,
        probe: &Probe,
        container: &Container,
        _id: &ContainerId,
        _sandbox: &Sandbox,
        _runtime: &dyn Runtime,
    ) -> ProbeOutcome {
        let name = probe_name(probe);
        self.calls
            .lock()
            .unwrap()
            .push((container.name.clone(), name.clone()));
        let ok = self
            .outcomes
            .lock()
            .unwrap()
            .get(&(container.name.clone(), name))
            .copied()
            .unwrap_or(true);
        if ok {
            ProbeOutcome::Success
        } else {
            ProbeOutcome::Failure("scripted failure".into())
        }
    }
}

fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        image: format!("{name}:1"),
        command: Some(vec![name.into()]),
        ..Default::default()
    }
}

fn exec_probe(word: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![word.into()]),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn pod(containers: Vec<Container>, init: Vec<Container>, policy: RestartPolicy) -> Pod {
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta {
            name: "web".into(),
            namespace: Some("default".into()),
            uid: Some("uid-1".into()),
            ..Default::default()
        },
        spec: PodSpec {
            containers,
            init_containers: (!init.is_empty()).then_some(init),
            restart_policy: Some(policy),
            node_name: Some("node-a".into()),
            ..Default::default()
        },
        status: None,
    }
}

const KEY: &str = "default_web_uid-1";

fn id(name: &str, attempt: u32) -> ContainerId {
    ContainerId {
        sandbox: KEY.into(),
        name: name.into(),
        attempt,
    }
}

struct Harness {
    rt: Arc<FakeRuntime>,
    resolver: Arc<TestResolver>,
    prober: Arc<ScriptedProber>,
    worker: PodWorker,
    t0: Instant,
}

impl Harness {
    fn new(pod: Pod) -> Self {
        let rt = Arc::new(FakeRuntime::new());
        Self::with_runtime(pod, rt)
    }

    fn with_runtime(pod: Pod, rt: Arc<FakeRuntime>) -> Self {
        let resolver = Arc::new(TestResolver::default());
        let prober = Arc::new(ScriptedProber::default());
        let mut cfg = WorkerConfig::new("node-a");
        cfg.host_ip = Some("192.168.1.10".into());
        let worker = PodWorker::new(pod, rt.clone(), resolver.clone(), prober.clone(), cfg);
        Self {
            rt,
            resolver,
            prober,
            worker,
            t0: Instant::now(),
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + s(secs)
    }

    fn sync(&mut self, secs: u64) -> SyncResult {
        let now = self.at(secs);
        self.worker.sync(now).unwrap()
    }

    fn sync_at(&mut self, now: Instant) -> SyncResult {
        self.worker.sync(now).unwrap()
    }

    fn starts(&self) -> Vec<ContainerId> {
        self.rt
            .actions()
            .into_iter()
            .filter_map(|c| match c {
                Call::StartContainer(id) => Some(id),
                _ => None,
            })
            .collect()
    }
}

fn app_status<'a>(r: &'a SyncResult, name: &str) -> &'a ContainerStatus {
    r.status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .unwrap()
}

fn init_status<'a>(r: &'a SyncResult, name: &str) -> &'a ContainerStatus {
    r.status
        .init_container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .unwrap()
}

fn cond<'a>(r: &'a SyncResult, type_: &str) -> &'a Condition {
    r.status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .unwrap()
}

fn waiting(cs: &ContainerStatus) -> (String, String) {
    let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
    (
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    )
}

fn terminated(cs: &ContainerStatus) -> &coxswain_schema::kinds::pod::ContainerStateTerminated {
    cs.state.as_ref().unwrap().terminated.as_ref().unwrap()
}

fn last_terminated(cs: &ContainerStatus) -> &coxswain_schema::kinds::pod::ContainerStateTerminated {
    cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap()
}

fn is_running(cs: &ContainerStatus) -> bool {
    cs.state.as_ref().unwrap().running.is_some()
}

#[derive(Debug, Clone, Copy)]
enum End {
    Zero,
    One,
    Killed,
}

#[test]
fn restart_matrix_follows_the_restart_policy() {
    use End::{Killed, One, Zero};
    use RestartPolicy::{Always, Never, OnFailure};
    // (policy, how the container ends, restarted?, phase after)
    let cases = [
        (Always, Zero, true, "Running"),
        (Always, One, true, "Running"),
        (Always, Killed, true, "Running"),
        (OnFailure, Zero, false, "Succeeded"),
        (OnFailure, One, true, "Running"),
        (OnFailure, Killed, true, "Running"),
        (Never, Zero, false, "Succeeded"),
        (Never, One, false, "Failed"),
        (Never, Killed, false, "Failed"),
    ];
    for (policy, end, restarted, phase) in cases {
        let what = format!("{policy:?} × {end:?}");
        let mut h = Harness::new(pod(vec![container("app")], vec![], policy));
        let r = h.sync(0);
        assert_eq!(r.status.phase.as_deref(), Some("Running"), "{what}");
        assert_eq!(h.starts(), [id("app", 0)], "{what}");
        match end {
            Zero => h.rt.exit(&id("app", 0), 0),
            One => h.rt.exit(&id("app", 0), 1),
            Killed => h.rt.exit_signal(&id("app", 0), SIGKILL),
        };
        let r = h.sync(5);
        assert_eq!(r.status.phase.as_deref(), Some(phase), "{what}");
        let app = app_status(&r, "app");
        let want_code = match end {
            Zero => 0,
            One => 1,
            Killed => 137,
        };
        if restarted {
            // The first restart is immediate, as the kubelet's.
            assert_eq!(h.starts(), [id("app", 0), id("app", 1)], "{what}");
            assert!(is_running(app), "{what}");
            assert_eq!(app.restart_count, 1, "{what}");
            assert_eq!(last_terminated(app).exit_code, want_code, "{what}");
            assert!(!r.finished, "{what}");
        } else {
            assert_eq!(h.starts(), [id("app", 0)], "{what}");
            let t = terminated(app);
            assert_eq!(t.exit_code, want_code, "{what}");
            assert_eq!(
                t.reason.as_deref(),
                Some(if want_code == 0 { "Completed" } else { "Error" }),
                "{what}"
            );
            assert_eq!(t.signal, matches!(end, Killed).then_some(SIGKILL), "{what}");
            assert_eq!(app.restart_count, 0, "{what}");
            // A pod that is done gives its containers and sandbox back.
            assert!(r.finished, "{what}");
            assert!(h.rt.containers().is_empty(), "{what}");
            assert!(h.rt.sandboxes().is_empty(), "{what}");
            assert_eq!(r.next_wake, None, "{what}");
            // Its status stays, and nothing more happens.
            let before = h.rt.actions().len();
            let again = h.sync(100);
            assert_eq!(again.status, r.status, "{what}");
            assert_eq!(h.rt.actions().len(), before, "{what}");
        }
    }
}

#[test]
fn crash_loop_backoff_doubles_to_five_minutes_and_resets_after_ten() {
    let mut h = Harness::new(pod(vec![container("app")], vec![], RestartPolicy::Always));
    h.sync(0);
    let mut now = h.at(0);
    let mut waits = Vec::new();
    for attempt in 0..8u32 {
        // The container dies the moment it starts.
        assert!(h.rt.exit(&id("app", attempt), 1));
        let r = h.sync_at(now);
        let exited = now;
        if h.starts().len() == attempt as usize + 2 {
            waits.push(0);
            continue;
        }
        let app = app_status(&r, "app");
        let (reason, message) = waiting(app);
        assert_eq!(reason, "CrashLoopBackOff");
        let wake = r.next_wake.unwrap();
        let wait = wake - exited;
        assert_eq!(
            message,
            format!(
                "back-off {} restarting failed container=app pod=web_default(uid-1)",
                go_duration(wait)
            )
        );
        assert_eq!(last_terminated(app).exit_code, 1);
        assert_eq!(app.restart_count, attempt as i32);
        assert_eq!(r.status.phase.as_deref(), Some("Running"));
        // Not a moment early...
        h.sync_at(wake - Duration::from_millis(1));
        assert_eq!(h.starts().len(), attempt as usize + 1);
        // ...and exactly on time.
        let r = h.sync_at(wake);
        assert_eq!(h.starts().len(), attempt as usize + 2);
        assert_eq!(app_status(&r, "app").restart_count, attempt as i32 + 1);
        // The old container went before the new one came.
        let actions = h.rt.actions();
        let n = actions.len();
        assert_eq!(
            actions[n - 2..],
            [
                Call::RemoveContainer(id("app", attempt)),
                Call::StartContainer(id("app", attempt + 1))
            ]
        );
        waits.push(wait.as_secs());
        now = wake;
    }
    assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);

    // Attempt 8 runs for more than ten minutes since its restart: its exit restarts at once,
    // and the next crash waits the base delay again.
    let later = now + s(601);
    assert!(h.rt.exit(&id("app", 8), 1));
    h.sync_at(later);
    assert_eq!(h.starts().last(), Some(&id("app", 9)));
    assert!(h.rt.exit(&id("app", 9), 1));
    let r = h.sync_at(later);
    assert_eq!(r.next_wake, Some(later + s(10)));
    assert_eq!(h.starts().last(), Some(&id("app", 9)));
}

#[test]
fn init_containers_run_one_at_a_time_before_the_app() {
    let mut h = Harness::new(pod(
        vec![container("app")],
        vec![container("init-a"), container("init-b")],
        RestartPolicy::Always,
    ));
    let r = h.sync(0);
    assert_eq!(h.starts(), [id("init-a", 0)]);
    assert_eq!(r.status.phase.as_deref(), Some("Pending"));
    assert!(is_running(init_status(&r, "init-a")));
    assert_eq!(waiting(init_status(&r, "init-b")).0, "PodInitializing");
    assert_eq!(waiting(app_status(&r, "app")).0, "PodInitializing");
    let init = cond(&r, "Initialized");
    assert_eq!(init.status, "False");
    assert_eq!(
        init.message.as_deref(),
        Some("containers with incomplete status: [init-a init-b]")
    );
    // Syncing again while it runs starts nothing.
    h.sync(1);
    assert_eq!(h.starts(), [id("init-a", 0)]);

    h.rt.exit(&id("init-a", 0), 0);
    let r = h.sync(2);
    assert_eq!(h.starts(), [id("init-a", 0), id("init-b", 0)]);
    assert_eq!(
        terminated(init_status(&r, "init-a")).reason.as_deref(),
        Some("Completed")
    );
    assert!(init_status(&r, "init-a").ready);
    assert_eq!(
        cond(&r, "Initialized").message.as_deref(),
        Some("containers with incomplete status: [init-b]")
    );

    h.rt.exit(&id("init-b", 0), 0);
    let r = h.sync(3);
    assert_eq!(h.starts(), [id("init-a", 0), id("init-b", 0), id("app", 0)]);
    assert_eq!(r.status.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&r, "Initialized").status, "True");
    assert!(is_running(app_status(&r, "app")));
    // A finished init container is never run again, even with restartPolicy Always.
    h.rt.exit(&id("app", 0), 0);
    h.sync(4);
    assert_eq!(h.starts().last(), Some(&id("app", 1)));
    assert_eq!(h.starts().len(), 4);
}

#[test]
fn a_failing_init_container_fails_the_pod_with_never() {
    let mut h = Harness::new(pod(
        vec![container("app")],
        vec![container("init")],
        RestartPolicy::Never,
    ));
    h.sync(0);
    h.rt.exit(&id("init", 0), 2);
    let r = h.sync(1);
    assert_eq!(r.status.phase.as_deref(), Some("Failed"));
    assert_eq!(terminated(init_status(&r, "init")).exit_code, 2);
    assert_eq!(h.starts(), [id("init", 0)], "neither a retry nor the app");
    assert_eq!(waiting(app_status(&r, "app")).0, "PodInitializing");
    assert_eq!(cond(&r, "Ready").reason.as_deref(), Some("PodFailed"));
    assert!(r.finished);
    assert!(h.rt.sandboxes().is_empty());
}

#[test]
fn a_failing_init_container_is_retried_with_backoff_under_always() {
    let mut h = Harness::new(pod(
        vec![container("app")],
        vec![container("init")],
        RestartPolicy::Always,
    ));
    h.sync(0);
    h.rt.exit(&id("init", 0), 1);
    let r = h.sync(1);
    assert_eq!(
        h.starts(),
        [id("init", 0), id("init", 1)],
        "first retry at once"
    );
    assert_eq!(r.status.phase.as_deref(), Some("Pending"));
    h.rt.exit(&id("init", 1), 1);
    let r = h.sync(2);
    assert_eq!(h.starts().len(), 2);
    let st = init_status(&r, "init");
    assert_eq!(waiting(st).0, "CrashLoopBackOff");
    assert_eq!(last_terminated(st).exit_code, 1);
    assert_eq!(st.restart_count, 1);
    assert_eq!(r.status.phase.as_deref(), Some("Pending"));
    assert_eq!(r.next_wake, Some(h.at(12)));
    let r = h.sync(12);
    assert_eq!(h.starts(), [id("init", 0), id("init", 1), id("init", 2)]);
    assert!(
        !h.starts().contains(&id("app", 0)),
        "the app waits for init"
    );
    assert_eq!(waiting(app_status(&r, "app")).0, "PodInitializing");
    h.rt.exit(&id("init", 2), 0);
    h.sync(13);
    assert_eq!(h.starts().last(), Some(&id("app", 0)));
}

#[test]
fn liveness_failures_past_the_threshold_restart_the_container() {
    let mut app = container("app");
    app.liveness_probe = Some(exec_probe("live", 10, 3));
    let mut h = Harness::new(pod(vec![app], vec![], RestartPolicy::Always));
    h.prober.set("app", "live", false);
    let r = h.sync(0);
    // The first probe is due as soon as the container runs (no initial delay).
    assert_eq!(r.next_wake, Some(h.at(0)));
    let r = h.sync(0);
    assert_eq!(h.prober.calls("app", "live"), 1);
    assert_eq!(r.next_wake, Some(h.at(10)));
    h.sync(5);
    assert_eq!(h.prober.calls("app", "live"), 1, "not due yet");
    h.sync(10);
    assert_eq!(h.prober.calls("app", "live"), 2);
    assert!(
        !h.rt.actions().iter().any(|c| matches!(c, Call::Signal(..))),
        "below the threshold"
    );
    let r = h.sync(20);
    assert_eq!(h.prober.calls("app", "live"), 3);
    let actions = h.rt.actions();
    let n = actions.len();
    assert_eq!(
        actions[n - 3..],
        [
            Call::Signal(id("app", 0), 15),
            Call::RemoveContainer(id("app", 0)),
            Call::StartContainer(id("app", 1)),
        ]
    );
    let app = app_status(&r, "app");
    assert_eq!(app.restart_count, 1);
    assert_eq!(last_terminated(app).exit_code, 143);
    assert_eq!(last_terminated(app).reason.as_deref(), Some("Error"));
    assert!(is_running(app));
    // The new container's probes start over.
    h.prober.set("app", "live", true);
    h.sync(20);
    assert_eq!(h.prober.calls("app", "live"), 4);
}

#[test]
fn liveness_failure_under_never_stops_the_container_for_good() {
    let mut app = container("app");
    app.liveness_probe = Some(exec_probe("live", 10, 1));
    let mut h = Harness::new(pod(vec![app], vec![], RestartPolicy::Never));
    h.prober.set("app", "live", false);
    h.sync(0);
    let r = h.sync(0);
    assert_eq!(h.starts(), [id("app", 0)]);
    assert_eq!(r.status.phase.as_deref(), Some("Failed"));
    assert_eq!(terminated(app_status(&r, "app")).exit_code, 143);
}

#[test]
fn readiness_flips_ready_and_containers_ready_both_ways() {
    let mut app = container("app");
    app.readiness_probe = Some(Probe {
        initial_delay_seconds: Some(5),
        ..exec_probe("ready", 5, 3)
    });
    let mut h = Harness::new(pod(vec![app], vec![], RestartPolicy::Always));
    let r = h.sync(0);
    // Running but not ready before the first probe.
    assert!(!app_status(&r, "app").ready);
    assert_eq!(app_status(&r, "app").started, Some(true));
    assert_eq!(cond(&r, "Ready").status, "False");
    assert_eq!(
        cond(&r, "Ready").message.as_deref(),
        Some("containers with unready status: [app]")
    );
    assert_eq!(r.next_wake, Some(h.at(5)), "initialDelaySeconds");
    let unready_since = cond(&r, "Ready").last_transition_time.clone();

    let r = h.sync(5);
    assert!(app_status(&r, "app").ready);
    for c in ["Ready", "ContainersReady"] {
        assert_eq!(cond(&r, c).status, "True", "{c}");
        assert_eq!(cond(&r, c).reason, None, "{c}");
        assert_ne!(cond(&r, c).last_transition_time, unready_since, "{c}");
    }
    let ready_since = cond(&r, "Ready").last_transition_time.clone();
    let scheduled_since = cond(&r, "PodScheduled").last_transition_time.clone();

    // Two failures are below the threshold of three.
    h.prober.set("app", "ready", false);
    let r = h.sync(10);
    let r2 = h.sync(15);
    for r in [&r, &r2] {
        assert_eq!(cond(r, "Ready").status, "True");
        assert_eq!(
            cond(r, "Ready").last_transition_time,
            ready_since,
            "no flip, no new time"
        );
    }
    let r = h.sync(20);
    assert!(!app_status(&r, "app").ready);
    for c in ["Ready", "ContainersReady"] {
        assert_eq!(cond(&r, c).status, "False", "{c}");
        assert_eq!(
            cond(&r, c).reason.as_deref(),
            Some("ContainersNotReady"),
            "{c}"
        );
        assert_ne!(cond(&r, c).last_transition_time, ready_since, "{c}");
    }
    assert_eq!(
        cond(&r, "PodScheduled").last_transition_time,
        scheduled_since
    );
    assert_eq!(
        h.rt.actions()
            .iter()
            .filter(|c| matches!(c, Call::Signal(..)))
            .count(),
        0,
        "readiness never kills"
    );

    h.prober.set("app", "ready", true);
    let r = h.sync(25);
    assert_eq!(cond(&r, "Ready").status, "True");
    assert_eq!(cond(&r, "ContainersReady").status, "True");
}

#[test]
fn the_startup_probe_gates_liveness_and_readiness() {
    let mut app = container("app");
    app.startup_probe = Some(exec_probe("startup", 10, 3));
    app.liveness_probe = Some(exec_probe("live", 10, 1));
    app.readiness_probe = Some(exec_probe("ready", 10, 1));
    let mut h = Harness::new(pod(vec![app], vec![], RestartPolicy::Always));
    h.prober.set("app", "startup", false);
    // Liveness would kill the container at its first failure, if it ran.
    h.prober.set("app", "live", false);
    h.sync(0);
    let r = h.sync(0);
    h.sync(10);
    assert_eq!(h.prober.calls("app", "startup"), 2);
    assert_eq!(h.prober.calls("app", "live"), 0);
    assert_eq!(h.prober.calls("app", "ready"), 0);
    assert_eq!(app_status(&r, "app").started, Some(false));
    assert!(!app_status(&r, "app").ready);

    h.prober.set("app", "startup", true);
    h.prober.set("app", "live", true);
    let r = h.sync(20);
    assert_eq!(h.prober.calls("app", "startup"), 3);
    assert_eq!(app_status(&r, "app").started, Some(true));
    assert_eq!(
        h.prober.calls("app", "live"),
        1,
        "liveness begins once started"
    );
    assert_eq!(h.prober.calls("app", "ready"), 1);
    assert!(app_status(&r, "app").ready);
    // The startup probe is done for this container.
    h.sync(30);
    assert_eq!(h.prober.calls("app", "startup"), 3);
    assert_eq!(h.prober.calls("app", "live"), 2);
}

#[test]
fn a_startup_probe_that_keeps_failing_restarts_the_container() {
    let mut app = container("app");
    app.startup_probe = Some(exec_probe("startup", 10, 2));
    let mut h = Harness::new(pod(vec![app], vec![], RestartPolicy::Always));
    h.prober.set("app", "startup", false);
    h.sync(0);
    h.sync(0);
    assert_eq!(h.starts(), [id("app", 0)]);
    let r = h.sync(10);
    assert_eq!(h.starts(), [id("app", 0), id("app", 1)]);
    assert!(h.rt.actions().contains(&Call::Signal(id("app", 0), 15)));
    assert_eq!(app_status(&r, "app").restart_count, 1);
}

#[test]
fn graceful_termination_runs_pre_stop_then_sigterm_then_kill_at_the_deadline() {
    let mut stubborn = container("stubborn");
    stubborn.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["drain".into()]),
            }),
            ..Default::default()
        }),
    });
    let polite = container("polite");
    let mut p = pod(vec![stubborn, polite], vec![], RestartPolicy::Always);
    p.spec.termination_grace_period_seconds = Some(30);
    let mut h = Harness::new(p);
    h.rt.ignore_sigterm("stubborn");
    h.sync(0);
    h.rt.clear_calls();

    h.worker.terminate(h.at(100), None);
    let r = h.sync(100);
    assert_eq!(
        h.rt.actions(),
        [
            Call::Exec(id("stubborn", 0), vec!["drain".into()]),
            Call::Signal(id("stubborn", 0), 15),
            Call::Signal(id("polite", 0), 15),
        ]
    );
    assert_eq!(r.next_wake, Some(h.at(130)), "the grace deadline");
    assert!(!r.finished);
    assert!(is_running(app_status(&r, "stubborn")));
    assert_eq!(terminated(app_status(&r, "polite")).exit_code, 143);

    let r = h.sync(129);
    assert!(
        !h.rt.actions().iter().any(|c| matches!(c, Call::Kill(_))),
        "not before the deadline"
    );
    assert_eq!(r.next_wake, Some(h.at(130)));
    let r = h.sync(130);
    let actions = h.rt.actions();
    assert_eq!(
        actions[3..],
        [
            Call::Kill(id("stubborn", 0)),
            Call::RemoveContainer(id("stubborn", 0)),
            Call::RemoveContainer(id("polite", 0)),
            Call::StopSandbox(KEY.into()),
        ]
    );
    assert!(
        !actions.contains(&Call::Kill(id("polite", 0))),
        "it ended on SIGTERM"
    );
    assert!(r.finished);
    assert_eq!(r.next_wake, None);
    assert_eq!(terminated(app_status(&r, "stubborn")).exit_code, 137);
    assert_eq!(r.status.phase.as_deref(), Some("Failed"));
    // No restarts happened on the way, whatever the policy.
    assert_eq!(h.starts(), []);
}

#[test]
fn a_sleep_pre_stop_holds_sigterm_without_blocking() {
    let mut app = container("app");
    app.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction { seconds: 5 }),
            ..Default::default()
        }),
    });
    let mut h = Harness::new(pod(vec![app], vec![], RestartPolicy::Always));
    h.sync(0);
    h.rt.clear_calls();
    h.worker.terminate(h.at(10), Some(s(20)));
    let r = h.sync(10);
    assert_eq!(h.rt.actions(), []);
    assert_eq!(r.next_wake, Some(h.at(15)));
    let r = h.sync(15);
    assert_eq!(
        h.rt.actions(),
        [
            Call::Signal(id("app", 0), 15),
            Call::RemoveContainer(id("app", 0)),
            Call::StopSandbox(KEY.into()),
        ]
    );
    assert!(r.finished);
}

#[test]
fn a_short_grace_period_still_leaves_two_seconds_before_the_kill() {
    let mut h = Harness::new(pod(vec![container("app")], vec![], RestartPolicy::Always));
    h.rt.ignore_sigterm("app");
    h.sync(0);
    h.worker.terminate(h.at(10), Some(Duration::ZERO));
    let r = h.sync(10);
    assert!(h.rt.actions().contains(&Call::Signal(id("app", 0), 15)));
    assert_eq!(r.next_wake, Some(h.at(12)));
    let r = h.sync(12);
    assert!(h.rt.actions().contains(&Call::Kill(id("app", 0))));
    assert!(r.finished);
}

#[test]
fn a_deletion_timestamp_terminates_the_pod() {
    let mut p = pod(vec![container("app")], vec![], RestartPolicy::Always);
    p.spec.termination_grace_period_seconds = Some(10);
    let mut h = Harness::new(p.clone());
    h.rt.ignore_sigterm("app");
    h.sync(0);
    p.metadata.deletion_timestamp = Some("2024-01-01T00:00:00Z".into());
    h.worker.update(p);
    let r = h.sync(50);
    assert!(h.rt.actions().contains(&Call::Signal(id("app", 0), 15)));
    assert_eq!(r.next_wake, Some(h.at(60)));
    h.sync(60);
    assert!(h.rt.actions().contains(&Call::Kill(id("app", 0))));
}

#[test]
fn a_resolver_failure_is_a_create_container_config_error_until_it_heals() {
    let mut h = Harness::new(pod(vec![container("app")], vec![], RestartPolicy::Always));
    h.resolver.fail("app", "configmap \"settings\" not found");
    let r = h.sync(0);
    let (reason, message) = waiting(app_status(&r, "app"));
    assert_eq!(reason, "CreateContainerConfigError");
    assert_eq!(message, "configmap \"settings\" not found");
    assert_eq!(r.status.phase.as_deref(), Some("Pending"));
    assert_eq!(h.starts(), []);
    assert_eq!(r.next_wake, Some(h.at(10)));
    h.sync(5);
    assert_eq!(h.starts(), []);
    h.resolver.heal("app");
    let r = h.sync(10);
    assert_eq!(h.starts(), [id("app", 0)]);
    assert_eq!(
        app_status(&r, "app").restart_count,
        0,
        "a config error is not a restart"
    );
}

#[test]
fn a_start_failure_is_run_container_error_and_backs_off() {
    let mut h = Harness::new(pod(vec![container("app")], vec![], RestartPolicy::Always));
    h.rt.fail_next_start("app", "exec: \"app\": executable file not found");
    let r = h.sync(0);
    let app = app_status(&r, "app");
    let (reason, message) = waiting(app);
    assert_eq!(reason, "RunContainerError");
    assert!(message.contains("executable file not found"), "{message}");
    let last = last_terminated(app);
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (128, Some("StartError"))
    );
    assert_eq!(app.container_id, None);
    assert_eq!(
        r.next_wake,
        Some(h.at(0)),
        "retried at once, as a first restart"
    );
    h.rt.fail_next_start("app", "still broken");
    let r = h.sync(0);
    assert_eq!(h.starts(), [id("app", 0), id("app", 1)]);
    assert_eq!(
        waiting(app_status(&r, "app")).1,
        "still broken: ENOENT: No such file or directory"
    );
    assert_eq!(r.next_wake, Some(h.at(10)), "the second restart waits");
    let r = h.sync(5);
    assert_eq!(
        waiting(app_status(&r, "app")),
        (
            "CrashLoopBackOff".to_owned(),
            "back-off 10s restarting failed container=app pod=web_default(uid-1)".to_owned()
        )
    );
    assert_eq!(h.starts().len(), 2);
    let r = h.sync(10);
    assert_eq!(h.starts().last(), Some(&id("app", 2)));
    assert_eq!(app_status(&r, "app").restart_count, 2);
    assert!(is_running(app_status(&r, "app")));
}

#[test]
fn an_oom_kill_is_reported_as_oom_killed() {
    let mut h = Harness::new(pod(vec![container("app")], vec![], RestartPolicy::Never));
    h.sync(0);
    h.rt.oom(&id("app", 0));
    let r = h.sync(1);
    let t = terminated(app_status(&r, "app"));
    assert_eq!(t.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(t.exit_code, 137);
    assert_eq!(
        t.container_id.as_deref(),
        Some("coxswain://default_web_uid-1/app#0")
    );
    assert!(t.started_at.is_some() && t.finished_at.is_some());
    assert_eq!(r.status.phase.as_deref(), Some("Failed"));
}

#[test]
fn adoption_keeps_running_containers_and_their_restart_count() {
    let mut app = container("app");
    app.readiness_probe = Some(exec_probe("ready", 10, 3));
    let p = pod(
        vec![app, container("side")],
        vec![container("init")],
        RestartPolicy::Always,
    );
    let mut h = Harness::new(p.clone());
    h.sync(0);
    h.rt.exit(&id("init", 0), 0);
    h.sync(1);
    h.rt.exit(&id("app", 0), 1);
    h.sync(2);
    // The restarted container's first readiness probe is due at once.
    let r = h.sync(2);
    assert!(app_status(&r, "app").ready);
    assert_eq!(app_status(&r, "app").restart_count, 1);
    let before = h.starts();

    // The agent restarts: a new worker finds the pod in the runtime, with the status it
    // last published.
    let mut published = p;
    published.status = Some(r.status.clone());
    h.rt.exit(&id("side", 0), 0);
    h.rt.clear_calls();
    let mut cfg = WorkerConfig::new("node-a");
    cfg.host_ip = Some("192.168.1.10".into());
    let mut worker = PodWorker::adopt(
        published,
        h.rt.clone(),
        h.resolver.clone(),
        h.prober.clone(),
        cfg,
    )
    .unwrap();
    let r2 = worker.sync(h.at(3)).unwrap();
    let app = app_status(&r2, "app");
    assert!(is_running(app));
    assert_eq!(app.restart_count, 1);
    assert_eq!(
        app.container_id.as_deref(),
        Some("coxswain://default_web_uid-1/app#1")
    );
    assert!(
        app.ready,
        "the published readiness holds until a probe says otherwise"
    );
    assert_eq!(
        cond(&r2, "Ready").last_transition_time,
        cond(&r, "Ready").last_transition_time
    );
    assert_eq!(r2.status.start_time, r.status.start_time);
    // The init container is not run again, the exited sidecar restarts at once, and the
    // running app container is left alone.
    let starts: Vec<_> =
        h.rt.actions()
            .into_iter()
            .filter(|c| matches!(c, Call::StartContainer(_) | Call::RunSandbox(_)))
            .collect();
    assert_eq!(starts, [Call::StartContainer(id("side", 1))]);
    assert_eq!(before.len(), 4);
    assert_eq!(r2.status.pod_ip, r.status.pod_ip);
}

#[test]
fn an_image_change_restarts_the_running_container() {
    let p = pod(vec![container("app")], vec![], RestartPolicy::Always);
    let mut h = Harness::new(p.clone());
    h.sync(0);
    let mut next = p;
    next.spec.containers[0].image = "app:2".into();
    next.spec.containers[0].command = Some(vec!["ignored".into()]);
    h.worker.update(next);
    let r = h.sync(1);
    assert_eq!(h.starts(), [id("app", 0), id("app", 1)]);
    let app = app_status(&r, "app");
    assert_eq!(app.image, "app:2");
    assert_eq!(app.restart_count, 1);
    // Only the image is taken from an update: the command stays.
    assert_eq!(h.rt.spec(&id("app", 1)).unwrap().argv, ["app"]);
}

#[test]
fn syncing_again_at_the_same_moment_does_nothing_new() {
    let mut app = container("app");
    app.liveness_probe = Some(exec_probe("live", 10, 3));
    let mut h = Harness::new(pod(
        vec![app],
        vec![container("init")],
        RestartPolicy::Always,
    ));
    for at in [0, 0, 0, 1, 1] {
        h.sync(at);
    }
    assert_eq!(h.starts(), [id("init", 0)]);
    h.rt.exit(&id("init", 0), 0);
    for _ in 0..3 {
        h.sync(2);
    }
    assert_eq!(h.starts(), [id("init", 0), id("app", 0)]);
    assert_eq!(h.prober.calls("app", "live"), 1);
    assert_eq!(
        h.rt.actions()
            .iter()
            .filter(|c| matches!(c, Call::RunSandbox(_)))
            .count(),
        1
    );
}

#[test]
fn status_carries_ips_times_qos_and_container_details() {
    let mut app = container("app");
    app.resources = Some(ResourceRequirements {
        requests: None,
        limits: Some(
            [("cpu", "500m"), ("memory", "64Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Quantity::new(v)))
                .collect(),
        ),
    });
    let mut h = Harness::new(pod(vec![app], vec![], RestartPolicy::Always));
    let r = h.sync(0);
    let st = &r.status;
    assert_eq!(st.host_ip.as_deref(), Some("192.168.1.10"));
    assert!(
        st.pod_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.88.")),
        "{st:?}"
    );
    assert_eq!(st.qos_class.as_deref(), Some("Guaranteed"));
    let start = st.start_time.clone().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&start).is_ok(),
        "{start}"
    );
    let app = app_status(&r, "app");
    assert_eq!(app.image, "app:1");
    assert_eq!(app.started, Some(true));
    assert!(app.ready, "no readiness probe: ready once running");
    assert!(
        app.state
            .as_ref()
            .unwrap()
            .running
            .as_ref()
            .unwrap()
            .started_at
            .is_some()
    );
    assert_eq!(cond(&r, "PodScheduled").status, "True");
    assert_eq!(r.next_wake, None, "nothing to do until an event");
    let later = h.sync(1);
    assert_eq!(
        later.status.start_time.as_deref(),
        Some(start.as_str()),
        "startTime is set once"
    );
}

#[test]
fn a_failed_sandbox_is_retried_and_reported() {
    let mut h = Harness::new(pod(vec![container("app")], vec![], RestartPolicy::Always));
    h.rt.fail_next_sandbox("no bridge");
    let r = h.sync(0);
    assert_eq!(r.status.phase.as_deref(), Some("Pending"));
    assert!(
        r.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("no bridge"))
    );
    assert_eq!(waiting(app_status(&r, "app")).0, "ContainerCreating");
    assert_eq!(r.next_wake, Some(h.at(10)));
    let r = h.sync(10);
    assert_eq!(h.starts(), [id("app", 0)]);
    assert_eq!(r.status.message, None);
}

#[test]
fn pod_resources_sum_app_containers_and_cover_init_containers() {
    let with = |name: &str, req: &[(&str, &str)], lim: &[(&str, &str)]| {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity::new(*v)))
                    .collect()
            })
        };
        Container {
            resources: Some(ResourceRequirements {
                requests: map(req),
                limits: map(lim),
            }),
            ..container(name)
        }
    };
    let spec = PodSpec {
        containers: vec![
            with(
                "a",
                &[("cpu", "250m")],
                &[("cpu", "500m"), ("memory", "64Mi")],
            ),
            with("b", &[("cpu", "250m")], &[("cpu", "1"), ("memory", "64Mi")]),
        ],
        init_containers: Some(vec![with(
            "i",
            &[("cpu", "2")],
            &[("cpu", "2"), ("memory", "32Mi")],
        )]),
        ..Default::default()
    };
    let r = pod_resources(&spec).unwrap();
    assert_eq!(
        r.cpu_request_millis,
        Some(2000),
        "the init container needs more"
    );
    assert_eq!(r.cpu_limit_millis, Some(2000));
    assert_eq!(r.memory_limit_bytes, Some(128 << 20));
    // One container without a memory limit: the pod has none.
    let mut spec = spec;
    spec.containers.push(container("c"));
    let r = pod_resources(&spec).unwrap();
    assert_eq!(r.memory_limit_bytes, None);
    assert_eq!(r.cpu_limit_millis, None);
    assert_eq!(r.cpu_request_millis, Some(2000));
    spec.containers
        .push(with("bad", &[("cpu", "2")], &[("cpu", "1")]));
    let err = pod_resources(&spec).unwrap_err().to_string();
    assert!(err.contains("container bad"), "{err}");
}
