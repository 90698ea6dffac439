//! The container runtime behind one small trait, [`Runtime`]: what the pod lifecycle logic
//! asks of the machine (start a pod sandbox, start a container in it, signal it, read how it
//! ended, run a command in it). Like the kubelet's CRI, the trait speaks in resolved specs —
//! argv, env, mounts and limits are worked out before they reach it — so the lifecycle logic
//! can be tested against the recording fake ([`fake::FakeRuntime`]) and the real thing
//! ([`linux::LinuxRuntime`]) stays free of Kubernetes' rules.
//!
//! The calls are blocking and short (a few milliseconds): the agent runs them on tokio's
//! blocking pool. Nothing here waits for a container to exit; its end is read back with
//! [`Runtime::container_status`], because the agent must be able to restart and find its
//! containers still running (so it cannot be their parent).

mod background;
pub mod fake;
pub mod launcher;
pub mod layers;
pub mod linux;
mod priority;
mod rootfs;
pub mod warm;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cgroup::{Resources, Usage};
use crate::error::Result;

/// What a pod sandbox is made of: the namespaces its containers share, its cgroup and, unless
/// it uses the host's network, its own network namespace with an IP on the node's bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// Unique per pod on this node and usable as a file and cgroup name; the agent makes it
    /// from the pod's namespace, name and uid (see [`sandbox_key`]).
    pub key: String,
    /// The pod's hostname (`spec.hostname`, else its name), set in its own UTS namespace.
    pub hostname: String,
    /// `spec.hostNetwork`: the pod uses the node's network (and its hostname).
    pub host_network: bool,
    /// `spec.shareProcessNamespace`: all containers see each other's processes.
    pub share_process_namespace: bool,
    /// The pod cgroup's limits (the sum of its containers', as the kubelet sets them).
    pub resources: Resources,
}

/// A running pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub key: String,
    /// The process (as the host sees it) that holds the pod's namespaces.
    pub pid: u32,
    /// The pod's IP: its own on the bridge, or `None` with the host's network.
    pub pod_ip: Option<Ipv4Addr>,
    /// Whether the sandbox has its own network namespace.
    pub host_network: bool,
    /// Whether containers join the sandbox's PID namespace.
    pub share_process_namespace: bool,
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Rootfs {
    /// An unpacked image in the store; the container writes to its own layer above it.
    Image(PathBuf),
    /// The image `host`: the host's own root, read-only.
    Host,
}

/// Everything needed to start one container, already resolved by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    /// How many times this container has been started before in this pod (its
    /// `restartCount`); each start is a fresh container with its own id and log file.
    pub attempt: u32,
    pub rootfs: Rootfs,
    /// The command line, after `$(VAR)` expansion; `argv[0]` is looked up in the container's
    /// `PATH` when it has no `/`.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// An absolute path inside the container; `None` is `/` (or the image's working dir,
    /// which the agent has already applied).
    pub working_dir: Option<String>,
    /// `runAsUser` and `runAsGroup`; `None` is root.
    pub user: Option<u32>,
    pub group: Option<u32>,
    pub mounts: Vec<BindMount>,
    pub resources: Resources,
    pub read_only_root_filesystem: bool,
    /// Capabilities beyond the default set (names as in Kubernetes: `NET_ADMIN`).
    pub add_capabilities: Vec<String>,
    /// Capabilities to drop from the default set (`ALL` drops all).
    pub drop_capabilities: Vec<String>,
}

/// A host file or directory (a prepared volume) made visible inside a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindMount {
    pub source: PathBuf,
    /// An absolute path inside the container.
    pub destination: String,
    pub read_only: bool,
}

/// One start of one container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerId {
    pub sandbox: String,
    pub name: String,
    pub attempt: u32,
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.sandbox, self.name, self.attempt)
    }
}

/// What a container is doing, as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    Running {
        /// Its first process, as the host sees it.
        pid: u32,
        started_at: SystemTime,
    },
    Exited {
        /// The exit status, or 128 + the signal number when a signal ended it (as a shell
        /// and Kubernetes report it).
        exit_code: i32,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// The kernel's OOM killer ended a process of the container.
        oom_killed: bool,
        started_at: SystemTime,
        finished_at: SystemTime,
    },
    /// The runtime has no such container (never started, or removed).
    Unknown,
}

/// How a command run in a container ([`Runtime::exec`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code; `None` when it ran past its timeout and was killed.
    pub exit_code: Option<i32>,
    /// Its stdout and stderr together, cut at [`EXEC_OUTPUT_LIMIT`] bytes.
    pub output: Vec<u8>,
}

/// How much of an exec's output is kept (the kubelet keeps 10 KiB of a probe's output).
pub const EXEC_OUTPUT_LIMIT: usize = 10 * 1024;

/// What the lifecycle logic needs of the machine. Every call is short; none waits for a
/// container to end, except [`Runtime::exec`], which waits at most its timeout.
pub trait Runtime: Send + Sync + fmt::Debug {
    /// Starts a pod sandbox. Starting a sandbox that already runs returns the running one.
    fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox>;
    /// Stops a sandbox and frees what it held (processes, cgroup, IP, network link). Its
    /// containers must have been removed first. Stopping one that is gone is not an error.
    fn stop_sandbox(&self, key: &str) -> Result<()>;
    /// Starts a container in a sandbox; returns once its process has exec'd the command (or
    /// with the reason it could not).
    fn start_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<ContainerId>;
    /// What a container is doing now.
    fn container_state(&self, id: &ContainerId) -> Result<ContainerState>;
    /// Sends a signal to the container's first process (`SIGTERM` for a graceful stop).
    fn signal(&self, id: &ContainerId, signal: i32) -> Result<()>;
    /// Kills every process of the container (`SIGKILL` through its cgroup).
    fn kill(&self, id: &ContainerId) -> Result<()>;
    /// Removes an exited container: its cgroup and writable layer. Its log stays until its
    /// pod is removed, so `logs --previous` can read it.
    fn remove_container(&self, id: &ContainerId) -> Result<()>;
    /// Runs a command in a running container (exec probes, preStop) and waits at most
    /// `timeout` for it.
    fn exec(&self, id: &ContainerId, argv: &[String], timeout: Duration) -> Result<ExecOutput>;
    /// The sandboxes and containers the runtime knows, for adoption after an agent restart.
    fn list(&self) -> Result<Vec<(Sandbox, Vec<ContainerId>)>>;
    /// The log file of a container.
    fn log_path(&self, id: &ContainerId) -> PathBuf;
    /// What a running container has used so far (cpu time and working set, from its
    /// cgroup); `None` when it is not running.
    fn usage(&self, id: &ContainerId) -> Result<Option<Usage>>;
}

/// The sandbox key of a pod: `<namespace>_<name>_<uid>` as the kubelet names pod directories
/// (`/var/log/pods/<ns>_<name>_<uid>`). Namespace and name are DNS labels/subdomains, so `_`
/// cannot occur in them and the key is unambiguous; anything outside `[a-z0-9.-]` in the uid
/// is dropped, so the key is always a safe file name.
pub fn sandbox_key(namespace: &str, name: &str, uid: &str) -> String {
    let uid: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("{namespace}_{name}_{uid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_key_is_a_safe_file_name() {
        assert_eq!(
            sandbox_key("default", "web-0", "AB/../c"),
            "default_web-0_abc"
        );
        assert_eq!(sandbox_key("ns", "p", "1234-abcd"), "ns_p_1234-abcd");
    }
}
