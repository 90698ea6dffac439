//! [`FakeRuntime`]: a [`Runtime`] that runs nothing, records every call in order and lets a
//! test decide how containers end, so the pod lifecycle logic can be tested without root and
//! without sleeping.
//!
//! It behaves like a small, strict runtime: a container started twice under one id, a
//! sandbox stopped while it still holds containers, or a running container removed are
//! refused with an error (as the real runtime refuses them), so a worker that gets its order
//! wrong fails its test. By default a container that receives `SIGTERM` exits at once with
//! 143 and one that is killed exits with 137; [`FakeRuntime::ignore_sigterm`] makes a
//! container outlive `SIGTERM`. Exec commands exit 0 unless scripted.
//!
//! Timestamps (`startedAt`, `finishedAt`) come from a settable wall clock
//! ([`FakeRuntime::set_time`]); unset, it is `SystemTime::now()`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;

use super::{
    ContainerId, ContainerSpec, ContainerState, ExecOutput, Runtime, Sandbox, SandboxSpec,
};
use crate::cgroup::Usage;
use crate::error::{Error, Result};

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// One call made to the fake, with what identifies its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    RunSandbox(String),
    StopSandbox(String),
    StartContainer(ContainerId),
    ContainerState(ContainerId),
    Signal(ContainerId, i32),
    Kill(ContainerId),
    RemoveContainer(ContainerId),
    Exec(ContainerId, Vec<String>),
    List,
    Usage(ContainerId),
}

impl Call {
    /// Whether the call only reads (`container_state`, `list`, `usage`): workers poll those freely, so
    /// tests about what a worker *did* leave them out ([`FakeRuntime::actions`]).
    pub fn is_read(&self) -> bool {
        matches!(self, Call::ContainerState(_) | Call::List | Call::Usage(_))
    }
}

#[derive(Debug, Clone)]
struct FakeContainer {
    spec: ContainerSpec,
    state: ContainerState,
    /// What `usage` reports while it runs; set by the test.
    usage: Usage,
}

/// How an exec of a container (by name) ends.
#[derive(Debug, Clone, Copy)]
enum ExecScript {
    Exit(i32),
    TimedOut,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    sandboxes: BTreeMap<String, Sandbox>,
    containers: BTreeMap<ContainerId, FakeContainer>,
    fail_next_start: BTreeMap<String, String>,
    fail_next_sandbox: Option<String>,
    exec: BTreeMap<String, ExecScript>,
    ignore_sigterm: BTreeSet<String>,
    time: Option<SystemTime>,
    next_pid: u32,
    next_ip: u32,
}

impl State {
    fn now(&self) -> SystemTime {
        self.time.unwrap_or_else(SystemTime::now)
    }

    /// Ends a running container; false when it is not running.
    fn end(&mut self, id: &ContainerId, exit_code: i32, signal: Option<i32>, oom: bool) -> bool {
        let now = self.now();
        let Some(c) = self.containers.get_mut(id) else {
            return false;
        };
        let ContainerState::Running { started_at, .. } = c.state else {
            return false;
        };
        c.state = ContainerState::Exited {
            exit_code,
            signal,
            oom_killed: oom,
            started_at,
            finished_at: now,
        };
        true
    }
}

/// The recording fake. Cheap to share: wrap it in an `Arc` and hand the worker a clone.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

fn refuse(context: String, errno: Errno) -> Error {
    Error::Sys {
        context,
        source: errno,
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; its state is
        // still the best record of what happened.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls that change something or run something (no `container_state`, no `list`).
    pub fn actions(&self) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| !c.is_read())
            .cloned()
            .collect()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Sets the wall clock the fake stamps `startedAt` and `finishedAt` with.
    pub fn set_time(&self, at: SystemTime) {
        self.lock().time = Some(at);
    }

    /// Moves the fake's wall clock on (from now, if it was unset).
    pub fn advance(&self, by: Duration) {
        let mut s = self.lock();
        let now = s.now();
        s.time = Some(now + by);
    }

    /// Ends a running container with `code`. False when it is not running.
    pub fn exit(&self, id: &ContainerId, code: i32) -> bool {
        self.lock().end(id, code, None, false)
    }

    /// Ends a running container by `signal` (exit code 128 + signal).
    pub fn exit_signal(&self, id: &ContainerId, signal: i32) -> bool {
        self.lock().end(id, 128 + signal, Some(signal), false)
    }

    /// Ends a running container as the OOM killer does (SIGKILL, 137, `oom_killed`).
    pub fn oom(&self, id: &ContainerId) -> bool {
        self.lock().end(id, 128 + SIGKILL, Some(SIGKILL), true)
    }

    /// Sets what a container has used so far, as its cgroup would count it. False when the
    /// fake has no such container.
    pub fn set_usage(&self, id: &ContainerId, usage: Usage) -> bool {
        match self.lock().containers.get_mut(id) {
            Some(c) => {
                c.usage = usage;
                true
            }
            None => false,
        }
    }

    /// Makes the next start of the container `name` fail with `message`.
    pub fn fail_next_start(&self, name: &str, message: &str) {
        self.lock()
            .fail_next_start
            .insert(name.to_owned(), message.to_owned());
    }

    /// Makes the next `run_sandbox` fail with `message`.
    pub fn fail_next_sandbox(&self, message: &str) {
        self.lock().fail_next_sandbox = Some(message.to_owned());
    }

    /// Makes every exec in containers named `name` exit with `code` (the default is 0).
    pub fn set_exec_result(&self, name: &str, code: i32) {
        self.lock()
            .exec
            .insert(name.to_owned(), ExecScript::Exit(code));
    }

    /// Makes every exec in containers named `name` run past its timeout.
    pub fn set_exec_timed_out(&self, name: &str) {
        self.lock()
            .exec
            .insert(name.to_owned(), ExecScript::TimedOut);
    }

    /// Makes containers named `name` ignore `SIGTERM`: only `kill` ends them.
    pub fn ignore_sigterm(&self, name: &str) {
        self.lock().ignore_sigterm.insert(name.to_owned());
    }

    /// The containers the fake holds (running or exited), in id order.
    pub fn containers(&self) -> Vec<ContainerId> {
        self.lock().containers.keys().cloned().collect()
    }

    /// The running containers, in id order.
    pub fn running(&self) -> Vec<ContainerId> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, c)| matches!(c.state, ContainerState::Running { .. }))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The spec a container was started with.
    pub fn spec(&self, id: &ContainerId) -> Option<ContainerSpec> {
        self.lock().containers.get(id).map(|c| c.spec.clone())
    }

    /// The keys of the sandboxes that run.
    pub fn sandboxes(&self) -> Vec<String> {
        self.lock().sandboxes.keys().cloned().collect()
    }
}

impl Runtime for FakeRuntime {
    fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox> {
        let mut s = self.lock();
        s.calls.push(Call::RunSandbox(spec.key.clone()));
        if let Some(message) = s.fail_next_sandbox.take() {
            return Err(refuse(message, Errno::EIO));
        }
        if let Some(existing) = s.sandboxes.get(&spec.key) {
            return Ok(existing.clone());
        }
        s.next_pid += 1;
        s.next_ip += 1;
        let pid = 1000 + s.next_pid;
        let host = s.next_ip;
        let sandbox = Sandbox {
            key: spec.key.clone(),
            pid,
            pod_ip: (!spec.host_network)
                .then(|| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 88, 0, 1)) + host)),
            host_network: spec.host_network,
            share_process_namespace: spec.share_process_namespace,
        };
        s.sandboxes.insert(spec.key.clone(), sandbox.clone());
        Ok(sandbox)
    }

    fn stop_sandbox(&self, key: &str) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::StopSandbox(key.to_owned()));
        let left: Vec<String> = s
            .containers
            .keys()
            .filter(|id| id.sandbox == key)
            .map(ToString::to_string)
            .collect();
        if !left.is_empty() {
            return Err(refuse(
                format!("stopping sandbox {key}: containers were not removed: {left:?}"),
                Errno::EBUSY,
            ));
        }
        s.sandboxes.remove(key);
        Ok(())
    }

    fn start_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<ContainerId> {
        let mut s = self.lock();
        let id = ContainerId {
            sandbox: sandbox.key.clone(),
            name: spec.name.clone(),
            attempt: spec.attempt,
        };
        s.calls.push(Call::StartContainer(id.clone()));
        if !s.sandboxes.contains_key(&sandbox.key) {
            return Err(refuse(
                format!("starting {id}: no sandbox {}", sandbox.key),
                Errno::ENOENT,
            ));
        }
        if s.containers.contains_key(&id) {
            return Err(refuse(format!("starting {id}: it exists"), Errno::EEXIST));
        }
        if let Some(message) = s.fail_next_start.remove(&spec.name) {
            return Err(refuse(message, Errno::ENOENT));
        }
        s.next_pid += 1;
        let pid = 1000 + s.next_pid;
        let started_at = s.now();
        s.containers.insert(
            id.clone(),
            FakeContainer {
                spec: spec.clone(),
                state: ContainerState::Running { pid, started_at },
                usage: Usage::default(),
            },
        );
        Ok(id)
    }

    fn container_state(&self, id: &ContainerId) -> Result<ContainerState> {
        let mut s = self.lock();
        s.calls.push(Call::ContainerState(id.clone()));
        Ok(s.containers
            .get(id)
            .map_or(ContainerState::Unknown, |c| c.state.clone()))
    }

    fn signal(&self, id: &ContainerId, signal: i32) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::Signal(id.clone(), signal));
        let running = matches!(
            s.containers.get(id).map(|c| &c.state),
            Some(ContainerState::Running { .. })
        );
        if !running {
            return Err(refuse(format!("signalling {id}"), Errno::ESRCH));
        }
        let ends = match signal {
            SIGKILL => true,
            SIGTERM => !s.ignore_sigterm.contains(&id.name),
            // Any other signal is the program's to handle; the fake's programs ignore them.
            _ => false,
        };
        if ends {
            s.end(id, 128 + signal, Some(signal), false);
        }
        Ok(())
    }

    fn kill(&self, id: &ContainerId) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::Kill(id.clone()));
        if !s.containers.contains_key(id) {
            return Err(refuse(format!("killing {id}"), Errno::ENOENT));
        }
        s.end(id, 128 + SIGKILL, Some(SIGKILL), false);
        Ok(())
    }

    fn remove_container(&self, id: &ContainerId) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(Call::RemoveContainer(id.clone()));
        if let Some(c) = s.containers.get(id)
            && matches!(c.state, ContainerState::Running { .. })
        {
            return Err(refuse(format!("removing {id}: it runs"), Errno::EBUSY));
        }
        s.containers.remove(id);
        Ok(())
    }

    fn exec(&self, id: &ContainerId, argv: &[String], _timeout: Duration) -> Result<ExecOutput> {
        let mut s = self.lock();
        s.calls.push(Call::Exec(id.clone(), argv.to_vec()));
        let running = matches!(
            s.containers.get(id).map(|c| &c.state),
            Some(ContainerState::Running { .. })
        );
        if !running {
            return Err(refuse(
                format!("exec in {id}: it does not run"),
                Errno::ESRCH,
            ));
        }
        let exit_code = match s.exec.get(&id.name) {
            None => Some(0),
            Some(ExecScript::Exit(code)) => Some(*code),
            Some(ExecScript::TimedOut) => None,
        };
        Ok(ExecOutput {
            exit_code,
            output: Vec::new(),
        })
    }

    fn list(&self) -> Result<Vec<(Sandbox, Vec<ContainerId>)>> {
        let mut s = self.lock();
        s.calls.push(Call::List);
        Ok(s.sandboxes
            .values()
            .map(|sb| {
                let ids = s
                    .containers
                    .keys()
                    .filter(|id| id.sandbox == sb.key)
                    .cloned()
                    .collect();
                (sb.clone(), ids)
            })
            .collect())
    }

    fn usage(&self, id: &ContainerId) -> Result<Option<Usage>> {
        let mut s = self.lock();
        s.calls.push(Call::Usage(id.clone()));
        Ok(s.containers
            .get(id)
            .filter(|c| matches!(c.state, ContainerState::Running { .. }))
            .map(|c| c.usage))
    }

    fn log_path(&self, id: &ContainerId) -> PathBuf {
        // Never written: the fake runs no process.
        PathBuf::from("/nonexistent/coxswain-fake-logs")
            .join(&id.sandbox)
            .join(format!("{}-{}.log", id.name, id.attempt))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::runtime::Rootfs;

    fn sandbox_spec(key: &str) -> SandboxSpec {
        SandboxSpec {
            key: key.into(),
            hostname: "p".into(),
            host_network: false,
            share_process_namespace: false,
            resources: Default::default(),
        }
    }

    fn spec(name: &str, attempt: u32) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            attempt,
            rootfs: Rootfs::Host,
            argv: vec!["true".into()],
            env: vec![],
            working_dir: None,
            user: None,
            group: None,
            mounts: vec![],
            resources: Default::default(),
            read_only_root_filesystem: false,
            add_capabilities: vec![],
            drop_capabilities: vec![],
        }
    }

    #[test]
    fn records_calls_and_ends_containers_as_told() {
        let rt = FakeRuntime::new();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        rt.set_time(t);
        let sb = rt.run_sandbox(&sandbox_spec("ns_a_1")).unwrap();
        assert!(sb.pod_ip.is_some());
        assert_eq!(
            rt.run_sandbox(&sandbox_spec("ns_a_1")).unwrap(),
            sb,
            "idempotent"
        );
        let id = rt.start_container(&sb, &spec("web", 0)).unwrap();
        assert!(
            rt.start_container(&sb, &spec("web", 0)).is_err(),
            "same id twice"
        );
        assert_eq!(
            rt.container_state(&id).unwrap(),
            ContainerState::Running {
                pid: 1002,
                started_at: t
            }
        );
        rt.advance(Duration::from_secs(5));
        assert!(rt.oom(&id));
        assert!(!rt.exit(&id, 0), "only a running container can end");
        assert_eq!(
            rt.container_state(&id).unwrap(),
            ContainerState::Exited {
                exit_code: 137,
                signal: Some(9),
                oom_killed: true,
                started_at: t,
                finished_at: t + Duration::from_secs(5),
            }
        );
        assert!(rt.stop_sandbox("ns_a_1").is_err(), "a container is left");
        rt.remove_container(&id).unwrap();
        rt.stop_sandbox("ns_a_1").unwrap();
        assert!(rt.sandboxes().is_empty());
        assert_eq!(
            rt.actions(),
            [
                Call::RunSandbox("ns_a_1".into()),
                Call::RunSandbox("ns_a_1".into()),
                Call::StartContainer(id.clone()),
                Call::StartContainer(id.clone()),
                Call::StopSandbox("ns_a_1".into()),
                Call::RemoveContainer(id.clone()),
                Call::StopSandbox("ns_a_1".into()),
            ]
        );
        assert!(rt.calls().contains(&Call::ContainerState(id)));
    }

    #[test]
    fn sigterm_ends_a_container_unless_it_ignores_it() {
        let rt = FakeRuntime::new();
        let sb = rt.run_sandbox(&sandbox_spec("ns_b_1")).unwrap();
        let polite = rt.start_container(&sb, &spec("polite", 0)).unwrap();
        let stubborn = rt.start_container(&sb, &spec("stubborn", 0)).unwrap();
        rt.ignore_sigterm("stubborn");
        rt.signal(&polite, SIGTERM).unwrap();
        rt.signal(&stubborn, SIGTERM).unwrap();
        assert!(matches!(
            rt.container_state(&polite).unwrap(),
            ContainerState::Exited {
                exit_code: 143,
                signal: Some(15),
                ..
            }
        ));
        assert_eq!(rt.running(), std::slice::from_ref(&stubborn));
        assert!(rt.remove_container(&stubborn).is_err(), "it runs");
        rt.kill(&stubborn).unwrap();
        assert!(matches!(
            rt.container_state(&stubborn).unwrap(),
            ContainerState::Exited {
                exit_code: 137,
                signal: Some(9),
                oom_killed: false,
                ..
            }
        ));
        assert!(
            rt.signal(&stubborn, SIGTERM).is_err(),
            "no process left to signal"
        );
    }

    #[test]
    fn scripted_failures_and_exec_results() {
        let rt = FakeRuntime::new();
        rt.fail_next_sandbox("no bridge");
        let err = rt.run_sandbox(&sandbox_spec("ns_c_1")).unwrap_err();
        assert!(err.to_string().contains("no bridge"), "{err}");
        let sb = rt.run_sandbox(&sandbox_spec("ns_c_1")).unwrap();
        rt.fail_next_start("app", "exec: \"nope\": not found");
        let err = rt.start_container(&sb, &spec("app", 0)).unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        let id = rt.start_container(&sb, &spec("app", 0)).unwrap();
        let argv = vec!["check".to_owned()];
        let run = |rt: &FakeRuntime| {
            rt.exec(&id, &argv, Duration::from_secs(1))
                .unwrap()
                .exit_code
        };
        assert_eq!(run(&rt), Some(0));
        rt.set_exec_result("app", 2);
        assert_eq!(run(&rt), Some(2));
        rt.set_exec_timed_out("app");
        assert_eq!(run(&rt), None);
        assert_eq!(rt.list().unwrap(), vec![(sb, vec![id])]);
    }
}
