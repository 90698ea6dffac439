//! Pod lifecycles end to end, as root: a [`PodWorker`] driving the real [`LinuxRuntime`] (the
//! `coxswain` binary as launcher), the agent's real [`NodeResolver`] (busybox from the node's
//! image store, volumes) and the real [`NetProber`], with real processes that exit, crash, get
//! killed, fail probes, share an emptyDir and run under a cpu quota. These are the node agent
//! issue's "what must be shown" items, checked against Kubernetes' semantics.
//!
//! Each test has its own runtime state dir, volumes dir and uniquely named pod (so its
//! sandbox key and cgroups are unique), uses a short crash-loop back-off (200 ms, up to 2 s)
//! and drives the worker the way the agent does: sync, then sleep until the wake the sync
//! asked for, but never more than [`POLL`] so that a container's end is seen quickly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coxswain_node::agent::resolve::{NodeResolver, ObjectCache};
use coxswain_node::cgroup::{Cgroup, CgroupVersion};
use coxswain_node::image::ImageStore;
use coxswain_node::pod::{NetProber, PodWorker, Resolver, SyncResult, WorkerConfig};
use coxswain_node::runtime::linux::{LinuxConfig, LinuxRuntime};
use coxswain_node::runtime::{ContainerId, ContainerState, Runtime};
use coxswain_node::volume::HostPathPolicy;
use coxswain_schema::kinds::pod::{ContainerStatus, Pod, PodStatus};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const IMAGES: &str = "/var/lib/coxswain/images";

/// The longest the driver sleeps between syncs: the worker is not told when a container
/// ends (the agent's runtime events are not part of this test), so it must look often.
const POLL: Duration = Duration::from_millis(50);

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A long-running container that ends at once on SIGTERM, so stopping it does not wait out
/// the grace period (a shell as PID 1 of its namespace ignores SIGTERM without a trap). The
/// `wait` builtin is interrupted by the trapped signal, a foreground `sleep` would not be.
const SERVE: &str = "trap 'exit 143' TERM; sleep 1000 & wait";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A pod named `<name>-<pid>-<n>` (unique across parallel tests and test processes) with
/// the given spec.
fn pod(name: &str, spec: Value) -> Pod {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let unique = format!("{name}-{}-{n}", std::process::id());
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": unique, "namespace": "default", "uid": format!("uid-{unique}")},
        "spec": spec,
    }))
    .unwrap()
}

/// A busybox container running `script` with `sh -c`.
fn container(name: &str, script: &str) -> Value {
    json!({"name": name, "image": "busybox:latest", "command": ["sh", "-c", script]})
}

/// One node: a runtime over its own state dir (no pod network: nothing here needs one), the
/// agent's resolver with its own volumes dir and a hostPath policy that allows only
/// `host_dir`. Dropping it removes whatever its pods left behind.
struct Node {
    rt: Arc<LinuxRuntime>,
    resolver: Arc<NodeResolver>,
    volumes_dir: PathBuf,
    host_dir: tempfile::TempDir,
    keys: Mutex<Vec<String>>,
    _volumes: tempfile::TempDir,
    _state: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let state = tempfile::tempdir().unwrap();
        let volumes = tempfile::tempdir().unwrap();
        let host_dir = tempfile::tempdir().unwrap();
        let images = ImageStore::open(Path::new(IMAGES)).unwrap();
        assert!(
            images.get("busybox:latest").unwrap().is_some(),
            "busybox:latest is in the image store (scripts/dev.sh imports it)"
        );
        let rt = LinuxRuntime::new(LinuxConfig {
            state_dir: state.path().to_owned(),
            run_dir: state.path().join("run"),
            launcher: PathBuf::from(env!("CARGO_BIN_EXE_coxswain")),
            network: None,
            pids_max: Some(256),
            warm_sandboxes: 0,
            warm_layers: 0,
        })
        .unwrap();
        let resolver = NodeResolver::new(
            images,
            Arc::new(ObjectCache::default()),
            HostPathPolicy {
                allowed_prefixes: vec![host_dir.path().to_owned()],
            },
            volumes.path().to_owned(),
            "lifecycle-node".to_owned(),
            None,
        );
        Node {
            rt: Arc::new(rt),
            resolver: Arc::new(resolver),
            volumes_dir: volumes.path().to_owned(),
            host_dir,
            keys: Mutex::default(),
            _volumes: volumes,
            _state: state,
        }
    }

    /// A worker for `pod` with the short back-off.
    fn run(&self, pod: Pod) -> Run<'_> {
        let cfg = WorkerConfig {
            backoff_base: BACKOFF_BASE,
            backoff_max: BACKOFF_MAX,
            ..WorkerConfig::new("lifecycle-node")
        };
        let runtime: Arc<dyn Runtime> = self.rt.clone();
        let resolver: Arc<dyn Resolver> = self.resolver.clone();
        let worker = PodWorker::new(pod, runtime, resolver, Arc::new(NetProber), cfg);
        self.keys.lock().unwrap().push(worker.key().to_owned());
        Run {
            node: self,
            worker,
            finished: false,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A safety net for a test that failed half-way: its worker's Drop has tried a
        // graceful end already; what is still listed goes now.
        match self.rt.list() {
            Ok(listed) => {
                for (sandbox, ids) in listed {
                    for id in &ids {
                        let _ = self.rt.kill(id);
                    }
                    if let Err(e) = self.rt.stop_sandbox(&sandbox.key) {
                        eprintln!("cleanup of sandbox {}: {e}", sandbox.key);
                    }
                }
            }
            Err(e) => eprintln!("cleanup: list: {e}"),
        }
        for key in self.keys.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Err(e) = self.resolver.release(key) {
                eprintln!("cleanup of the volumes of {key}: {e}");
            }
        }
    }
}

/// One pod's worker, driven as the agent drives it.
struct Run<'a> {
    node: &'a Node,
    worker: PodWorker,
    finished: bool,
}

impl Run<'_> {
    fn key(&self) -> String {
        self.worker.key().to_owned()
    }

    fn sync(&mut self) -> SyncResult {
        let r = self
            .worker
            .sync(Instant::now())
            .unwrap_or_else(|e| panic!("sync of {}: {e}", self.worker.key()));
        self.finished = r.finished;
        r
    }

    /// Sleeps until the wake `r` asked for, at most [`POLL`].
    fn pause(r: &SyncResult) {
        let wait = r.next_wake.map_or(POLL, |w| {
            w.saturating_duration_since(Instant::now()).min(POLL)
        });
        // "At once" still gets a breath, so a worker that always wants to be woken at once
        // cannot spin a core away from the containers under test.
        std::thread::sleep(wait.max(Duration::from_millis(1)));
    }

    /// Syncs until `done` holds for a sync's result and returns that result; fails the test
    /// with the last status if `timeout` passes first.
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&SyncResult) -> bool,
    ) -> SyncResult {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.sync();
            if done(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what}: not within {timeout:?}; last status: {:#?}",
                self.worker.key(),
                r.status
            );
            Self::pause(&r);
        }
    }

    /// Terminates the pod (with the pod's grace period unless `grace` says otherwise) and
    /// syncs until the worker is finished.
    fn finish(&mut self, grace: Option<Duration>) -> SyncResult {
        self.worker.terminate(Instant::now(), grace);
        self.until("the pod terminates", Duration::from_secs(15), |r| {
            r.finished
        })
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The test failed before it ended the pod: end it at once, without panicking again.
        self.worker.terminate(Instant::now(), Some(Duration::ZERO));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.worker.sync(Instant::now()) {
                Ok(r) if r.finished => break,
                Ok(r) => Self::pause(&r),
                Err(e) => {
                    eprintln!("cleanup sync of {}: {e}", self.worker.key());
                    std::thread::sleep(POLL);
                }
            }
        }
        let _ = self.node.resolver.release(self.worker.key());
    }
}

fn app(status: &PodStatus, name: &str) -> ContainerStatus {
    status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for container {name}: {status:#?}"))
}

fn phase(status: &PodStatus) -> &str {
    status.phase.as_deref().unwrap_or("")
}

fn is_running(cs: &ContainerStatus) -> bool {
    cs.state.as_ref().is_some_and(|s| s.running.is_some())
}

fn terminated_code(state: Option<&coxswain_schema::kinds::pod::ContainerState>) -> Option<i32> {
    state
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code)
}

fn waiting(cs: &ContainerStatus) -> Option<(String, String)> {
    let w = cs.state.as_ref()?.waiting.as_ref()?;
    Some((
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    ))
}

fn condition<'s>(status: &'s PodStatus, type_: &str) -> Option<&'s str> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// The container cgroup's directory in the hierarchy this host limits with: the memory
/// controller's on v1, the unified one on v2.
fn cgroup_dir(path: &str) -> PathBuf {
    match CgroupVersion::detect() {
        CgroupVersion::V1 => Path::new("/sys/fs/cgroup/memory").join(path),
        CgroupVersion::V2 => Path::new("/sys/fs/cgroup").join(path),
    }
}

// ------------------------------------------------------------------------------------------
// 1. The restart matrix.

/// How the container of a matrix row ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Exit0,
    Exit1,
    /// Killed by SIGKILL, sent from outside to its first process.
    Killed,
}

impl Ending {
    fn exit_code(self) -> i32 {
        match self {
            Ending::Exit0 => 0,
            Ending::Exit1 => 1,
            Ending::Killed => 137,
        }
    }
}

/// One row: `policy` × `ending`. Kubernetes restarts under Always whatever the ending, under
/// OnFailure any non-zero ending (a signal included), under Never nothing; a pod that is not
/// restarted ends Succeeded if its container exited 0, else Failed; a pod restarting (or
/// waiting to) stays Running.
fn restart_row(test: &str, policy: &str, ending: Ending) {
    if !common::require_root(test) {
        return;
    }
    let node = Node::new();
    let script = match ending {
        Ending::Exit0 => "exit 0",
        Ending::Exit1 => "exit 1",
        Ending::Killed => SERVE,
    };
    let mut run = node.run(pod(
        "matrix",
        json!({
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 2,
            "containers": [container("main", script)],
        }),
    ));
    if ending == Ending::Killed {
        run.until("main runs", Duration::from_secs(10), |r| {
            is_running(&app(&r.status, "main"))
        });
        let id = ContainerId {
            sandbox: run.key(),
            name: "main".to_owned(),
            attempt: 0,
        };
        let ContainerState::Running { pid, .. } = node.rt.container_state(&id).unwrap() else {
            panic!("{id} is not running");
        };
        kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
    }
    let restarts = match policy {
        "Always" => true,
        "OnFailure" => ending != Ending::Exit0,
        _ => false,
    };
    if restarts {
        let r = run.until("main is restarted", Duration::from_secs(10), |r| {
            app(&r.status, "main").restart_count >= 1
        });
        let cs = app(&r.status, "main");
        assert_eq!(phase(&r.status), "Running", "{policy} {ending:?}: {r:#?}");
        assert_eq!(
            terminated_code(cs.last_state.as_ref()),
            Some(ending.exit_code()),
            "{policy} {ending:?}: lastState: {cs:#?}"
        );
    } else {
        let r = run.until("the pod is done", Duration::from_secs(10), |r| r.finished);
        let cs = app(&r.status, "main");
        let expected = if ending == Ending::Exit0 {
            "Succeeded"
        } else {
            "Failed"
        };
        assert_eq!(phase(&r.status), expected, "{policy} {ending:?}: {r:#?}");
        assert_eq!(cs.restart_count, 0, "{policy} {ending:?}: {cs:#?}");
        assert_eq!(
            terminated_code(cs.state.as_ref()),
            Some(ending.exit_code()),
            "{policy} {ending:?}: {cs:#?}"
        );
        // Finished means nothing is left in the runtime, and nothing will start again.
        let listed = node.rt.list().unwrap();
        assert!(listed.iter().all(|(s, _)| s.key != run.key()), "{listed:?}");
    }
    run.finish(None);
}

macro_rules! restart_rows {
    ($($test:ident: $policy:literal, $ending:expr;)*) => {$(
        #[test]
        fn $test() {
            restart_row(stringify!($test), $policy, $ending);
        }
    )*};
}

restart_rows! {
    restart_always_exit_0: "Always", Ending::Exit0;
    restart_always_exit_1: "Always", Ending::Exit1;
    restart_always_killed: "Always", Ending::Killed;
    restart_on_failure_exit_0: "OnFailure", Ending::Exit0;
    restart_on_failure_exit_1: "OnFailure", Ending::Exit1;
    restart_on_failure_killed: "OnFailure", Ending::Killed;
    restart_never_exit_0: "Never", Ending::Exit0;
    restart_never_exit_1: "Never", Ending::Exit1;
    restart_never_killed: "Never", Ending::Killed;
}

// ------------------------------------------------------------------------------------------
// 2. Crash-loop back-off.

#[test]
fn a_crash_loop_backs_off_doubling_from_the_base_up_to_the_max() {
    if !common::require_root("a_crash_loop_backs_off_doubling_from_the_base_up_to_the_max") {
        return;
    }
    let node = Node::new();
    let mut run = node.run(pod(
        "backoff",
        json!({"containers": [container("main", "exit 1")]}),
    ));
    // The kubelet's sequence: the first restart at once, then base, 2·base, 4·base ... up
    // to the max (200 ms, 400 ms, 800 ms, 1.6 s, 2 s with these settings).
    let expected: Vec<Duration> = vec![
        Duration::ZERO,
        BACKOFF_BASE,
        BACKOFF_BASE * 2,
        BACKOFF_BASE * 4,
        BACKOFF_BASE * 8,
        BACKOFF_MAX,
    ];
    let restarts = expected.len();
    // The back-off holds a restart from the moment the worker saw the exit (the kubelet:
    // from `finishedAt`), so that is what the gaps are measured from: how long a container
    // takes to end is not the back-off's doing (on a busy host, the very first container's
    // exit can take seconds, flushing its overlay's writes).
    // starts[k]: the sync in which attempt k was first seen (restartCount k);
    // exits[k]: the sync in which attempt k was first seen ended (terminated, waiting, or
    // replaced).
    let mut starts: Vec<Instant> = Vec::new();
    let mut exits: Vec<Instant> = Vec::new();
    // crash_loop[k]: CrashLoopBackOff was shown while attempt k was the latest.
    let mut crash_loop = vec![false; restarts + 1];
    let mut messages = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = Instant::now();
        let r = run.sync();
        let cs = app(&r.status, "main");
        let count = usize::try_from(cs.restart_count).unwrap();
        if cs.container_id.is_some() && starts.len() == count {
            // A restart in this sync: the previous attempt's end was seen in it, if not
            // before (the first restart is immediate, so nothing is shown in between).
            if exits.len() + 1 == count {
                exits.push(now);
            }
            starts.push(now);
        }
        assert!(
            starts.len() == count + 1 || cs.container_id.is_none(),
            "one sync restarts at most once: seen {} starts, restartCount {count}",
            starts.len()
        );
        // A container that ends at once can be seen ended by the very sync that started it,
        // which then shows it terminated; the back-off counts from that sync.
        let ended =
            waiting(&cs).is_some() || cs.state.as_ref().is_some_and(|s| s.terminated.is_some());
        if ended && exits.len() == count {
            exits.push(now);
        }
        if let Some((reason, message)) = waiting(&cs) {
            assert_eq!(reason, "CrashLoopBackOff", "{cs:#?}");
            crash_loop[count] = true;
            messages.insert(message);
        }
        if count >= restarts {
            break;
        }
        assert!(now < deadline, "only {count} restarts: {:#?}", r.status);
        Run::pause(&r);
    }
    let lived: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    let gaps: Vec<Duration> = exits
        .iter()
        .zip(&starts[1..])
        .map(|(e, s)| *s - *e)
        .collect();
    eprintln!("start to start: {lived:?}; seen exit to restart: {gaps:?}");
    assert_eq!(gaps.len(), restarts);
    for (k, (gap, want)) in gaps.iter().zip(&expected).enumerate() {
        assert!(
            gap.as_secs_f64() >= 0.8 * want.as_secs_f64(),
            "restart {}: {gap:?} after the exit, expected at least ~{want:?}: {gaps:?}",
            k + 1
        );
        assert!(
            *gap < *want + Duration::from_millis(500),
            "restart {}: {gap:?} after the exit, expected ~{want:?}: {gaps:?}",
            k + 1
        );
        // Attempt k waited in CrashLoopBackOff before attempt k+1, except before the
        // first restart, which is immediate.
        if k >= 1 {
            assert!(
                crash_loop[k],
                "no CrashLoopBackOff before restart {}",
                k + 1
            );
            assert!(*gap > gaps[k - 1] || *want == BACKOFF_MAX, "{gaps:?}");
        }
    }
    for delay in ["200ms", "400ms", "800ms", "1.6s", "2s"] {
        let text = format!("back-off {delay} restarting failed container=main pod=");
        assert!(
            messages.iter().any(|m| m.starts_with(&text)),
            "no {text:?} in {messages:#?}"
        );
    }
    run.finish(None);
}

// ------------------------------------------------------------------------------------------
// 3, 4. Probes.

#[test]
fn a_failing_liveness_probe_restarts_the_container() {
    if !common::require_root("a_failing_liveness_probe_restarts_the_container") {
        return;
    }
    let node = Node::new();
    // The probe fails once a file appears, not while one is missing: the first probe runs
    // as soon as the container does, and on a loaded machine it once came before the
    // shell had made a "healthy" file (a restart after 62 ms). The trap is set first: the
    // worker may send SIGTERM right after the file appears, and a shell that is PID 1
    // without a trap ignores it, so the grace period ended in SIGKILL (137) once.
    let script = "trap 'exit 143' TERM; sleep 1; touch /tmp/unhealthy; sleep 1000 & wait";
    let mut c = container("main", script);
    c["livenessProbe"] = json!({
        "exec": {"command": ["sh", "-c", "test ! -e /tmp/unhealthy"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    });
    let mut run = node.run(pod(
        "liveness",
        json!({"terminationGracePeriodSeconds": 2, "containers": [c]}),
    ));
    run.until("main runs", Duration::from_secs(10), |r| {
        is_running(&app(&r.status, "main"))
    });
    let running = Instant::now();
    let r = run.until("main is restarted", Duration::from_secs(10), |r| {
        app(&r.status, "main").restart_count >= 1
    });
    let lived = running.elapsed();
    let cs = app(&r.status, "main");
    // It was healthy until the file appeared: the restart came after that.
    assert!(
        lived >= Duration::from_millis(900),
        "restarted after {lived:?}: {cs:#?}"
    );
    // 143 is the container's own answer to SIGTERM: the worker stopped it, it did not end.
    assert_eq!(
        terminated_code(cs.last_state.as_ref()),
        Some(143),
        "{cs:#?}"
    );
    assert_eq!(phase(&r.status), "Running");
    run.finish(None);
}

#[test]
fn readiness_flips_the_ready_condition_both_ways() {
    if !common::require_root("readiness_flips_the_ready_condition_both_ways") {
        return;
    }
    let node = Node::new();
    let script = format!("touch /tmp/ready; sleep 2; rm /tmp/ready; {SERVE}");
    let mut c = container("main", &script);
    c["readinessProbe"] = json!({
        "exec": {"command": ["cat", "/tmp/ready"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    });
    let mut run = node.run(pod(
        "readiness",
        json!({"terminationGracePeriodSeconds": 2, "containers": [c]}),
    ));
    let r = run.until("the pod is Ready", Duration::from_secs(10), |r| {
        condition(&r.status, "Ready") == Some("True")
    });
    assert!(app(&r.status, "main").ready);
    assert_eq!(condition(&r.status, "ContainersReady"), Some("True"));
    let r = run.until("the pod is not Ready", Duration::from_secs(10), |r| {
        condition(&r.status, "Ready") == Some("False")
    });
    let cs = app(&r.status, "main");
    assert!(!cs.ready, "{cs:#?}");
    assert!(
        is_running(&cs),
        "readiness never stops a container: {cs:#?}"
    );
    assert_eq!(cs.restart_count, 0, "{cs:#?}");
    assert_eq!(phase(&r.status), "Running");
    run.finish(None);
}

// ------------------------------------------------------------------------------------------
// 5. Grace period.

#[test]
fn a_grace_period_of_2s_ends_in_sigkill_at_about_2s_and_the_cgroup_goes() {
    if !common::require_root("a_grace_period_of_2s_ends_in_sigkill_at_about_2s_and_the_cgroup_goes")
    {
        return;
    }
    let node = Node::new();
    let mut run = node.run(pod(
        "grace",
        json!({
            "terminationGracePeriodSeconds": 2,
            "containers": [container("main", "trap '' TERM; while true; do sleep 1; done")],
        }),
    ));
    run.until("main runs", Duration::from_secs(10), |r| {
        is_running(&app(&r.status, "main"))
    });
    let pod_cgroup = cgroup_dir(&format!("coxswain/{}", run.key()));
    let cgroup = pod_cgroup.join("main.0");
    assert!(cgroup.is_dir(), "{} should exist", cgroup.display());
    let t0 = Instant::now();
    run.worker.terminate(t0, None);
    let r = run.until("main ends", Duration::from_secs(10), |r| {
        terminated_code(app(&r.status, "main").state.as_ref()).is_some()
    });
    let elapsed = t0.elapsed();
    let cs = app(&r.status, "main");
    assert_eq!(terminated_code(cs.state.as_ref()), Some(137), "{cs:#?}");
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed <= Duration::from_millis(3500),
        "ended {elapsed:?} after terminate"
    );
    run.until("the pod is finished", Duration::from_secs(10), |r| {
        r.finished
    });
    assert!(!cgroup.exists(), "{} is left", cgroup.display());
    assert!(!pod_cgroup.exists(), "{} is left", pod_cgroup.display());
}

// ------------------------------------------------------------------------------------------
// 6. Cpu limit.

#[test]
fn a_cpu_limit_of_200m_holds_a_busy_loop_to_a_fifth_of_a_core() {
    if !common::require_root("a_cpu_limit_of_200m_holds_a_busy_loop_to_a_fifth_of_a_core") {
        return;
    }
    let node = Node::new();
    let spin = "trap 'exit 143' TERM; while :; do :; done";
    let mut limited = container("limited", spin);
    limited["resources"] = json!({"limits": {"cpu": "200m"}});
    let mut run = node.run(pod(
        "cpu",
        json!({
            "terminationGracePeriodSeconds": 2,
            "containers": [limited, container("control", spin)],
        }),
    ));
    run.until("both spin", Duration::from_secs(10), |r| {
        is_running(&app(&r.status, "limited")) && is_running(&app(&r.status, "control"))
    });
    let key = run.key();
    let usage = |name: &str| -> u64 {
        let cg = Cgroup::open(&format!("coxswain/{key}/{name}.0"))
            .unwrap()
            .unwrap_or_else(|| panic!("no cgroup for {name}"));
        cg.usage().unwrap().cpu_usage_ns
    };
    // Past the start, so the launch's own cpu time does not count.
    std::thread::sleep(Duration::from_millis(300));
    let t1 = Instant::now();
    let (l1, c1) = (usage("limited"), usage("control"));
    std::thread::sleep(Duration::from_secs(2));
    let (l2, c2) = (usage("limited"), usage("control"));
    let wall = t1.elapsed().as_secs_f64() * 1e9;
    let limited_ratio = l2.saturating_sub(l1) as f64 / wall;
    let control_ratio = c2.saturating_sub(c1) as f64 / wall;
    eprintln!("cpu per wall second: limited (200m) {limited_ratio:.3}, control {control_ratio:.3}");
    assert!(
        (0.1..=0.3).contains(&limited_ratio),
        "limited used {limited_ratio:.3} of a core"
    );
    assert!(
        control_ratio > 0.5,
        "control used only {control_ratio:.3} of a core"
    );
    // Still running: the quota throttles, it does not kill.
    let r = run.sync();
    assert!(is_running(&app(&r.status, "limited")), "{:#?}", r.status);
    run.finish(None);
}

// ------------------------------------------------------------------------------------------
// 7. Refused configurations.

#[test]
fn an_escaping_host_path_is_refused_with_a_clear_status() {
    if !common::require_root("an_escaping_host_path_is_refused_with_a_clear_status") {
        return;
    }
    let node = Node::new();
    let mut c = container("main", "cat /host/hostname");
    c["volumeMounts"] = json!([{"name": "host-etc", "mountPath": "/host"}]);
    let mut run = node.run(pod(
        "hostpath",
        json!({
            "volumes": [{"name": "host-etc", "hostPath": {"path": "/etc"}}],
            "containers": [c],
        }),
    ));
    let r = run.until("main is refused", Duration::from_secs(10), |r| {
        waiting(&app(&r.status, "main")).is_some_and(|(reason, _)| reason != "ContainerCreating")
    });
    let cs = app(&r.status, "main");
    let (reason, message) = waiting(&cs).unwrap();
    assert_eq!(reason, "CreateContainerConfigError", "{cs:#?}");
    assert!(
        message.contains("spec.volumes[0].hostPath.path")
            && message.contains("/etc")
            && message.contains(&node.host_dir.path().display().to_string()),
        "{message}"
    );
    assert!(cs.container_id.is_none(), "{cs:#?}");
    assert_eq!(phase(&r.status), "Pending");
    // A second look, after the retry (the base back-off), still refuses and starts nothing.
    std::thread::sleep(BACKOFF_BASE + POLL);
    let r = run.sync();
    assert_eq!(
        waiting(&app(&r.status, "main")).map(|w| w.0).as_deref(),
        Some("CreateContainerConfigError")
    );
    let listed = node.rt.list().unwrap();
    let (_, ids) = listed.iter().find(|(s, _)| s.key == run.key()).unwrap();
    assert!(ids.is_empty(), "no container may start: {ids:?}");
    run.finish(None);
}

#[test]
fn an_escaping_working_dir_is_refused_with_a_clear_status() {
    if !common::require_root("an_escaping_working_dir_is_refused_with_a_clear_status") {
        return;
    }
    let node = Node::new();
    let mut c = container("main", "pwd");
    c["workingDir"] = json!("/../../etc");
    let mut run = node.run(pod("workdir", json!({"containers": [c]})));
    let r = run.until("main is refused", Duration::from_secs(10), |r| {
        waiting(&app(&r.status, "main")).is_some_and(|(reason, _)| reason != "ContainerCreating")
    });
    let cs = app(&r.status, "main");
    let (reason, message) = waiting(&cs).unwrap();
    assert!(
        [
            "CreateContainerConfigError",
            "CreateContainerError",
            "RunContainerError"
        ]
        .contains(&reason.as_str()),
        "{cs:#?}"
    );
    assert!(
        message.contains("workingDir") && message.contains(".."),
        "{message}"
    );
    let listed = node.rt.list().unwrap();
    let (_, ids) = listed.iter().find(|(s, _)| s.key == run.key()).unwrap();
    assert!(ids.is_empty(), "no container may start: {ids:?}");
    let log = node.rt.log_path(&ContainerId {
        sandbox: run.key(),
        name: "main".to_owned(),
        attempt: 0,
    });
    assert!(!log.exists(), "{} exists: something ran", log.display());
    run.finish(None);
}

// ------------------------------------------------------------------------------------------
// 8. Volumes.

#[test]
fn an_empty_dir_is_shared_by_two_containers_of_a_pod() {
    if !common::require_root("an_empty_dir_is_shared_by_two_containers_of_a_pod") {
        return;
    }
    let node = Node::new();
    let mount = json!([{"name": "shared", "mountPath": "/shared"}]);
    // The reader starts first and looks for up to 10 s; it exits 0 only if it saw the
    // writer's greeting.
    let mut reader = container(
        "reader",
        "i=0; while [ $i -lt 100 ]; do \
           [ \"$(cat /shared/greeting 2>/dev/null)\" = hello ] && exit 0; \
           i=$((i+1)); sleep 0.1; done; exit 1",
    );
    reader["volumeMounts"] = mount.clone();
    let mut writer = container("writer", "sleep 0.5; echo hello > /shared/greeting");
    writer["volumeMounts"] = mount;
    let mut run = node.run(pod(
        "emptydir",
        json!({
            "restartPolicy": "Never",
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "containers": [reader, writer],
        }),
    ));
    let r = run.until("the pod is done", Duration::from_secs(20), |r| r.finished);
    for name in ["reader", "writer"] {
        let cs = app(&r.status, name);
        assert_eq!(terminated_code(cs.state.as_ref()), Some(0), "{cs:#?}");
    }
    assert_eq!(phase(&r.status), "Succeeded");
    // The volume lives on the node until the pod's volumes are released.
    let on_host = node.volumes_dir.join(run.key()).join("shared/greeting");
    assert_eq!(std::fs::read_to_string(&on_host).unwrap(), "hello\n");
    node.resolver.release(&run.key()).unwrap();
    assert!(!on_host.exists());
}
