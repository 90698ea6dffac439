//! The launcher: a small, single-threaded helper process that forks pod sandboxes and
//! containers for the agent.
//!
//! Why a separate process: the agent is multi-threaded (tokio), and a multi-threaded process
//! must not fork and then run arbitrary code (another thread may hold the allocator's lock).
//! So the agent starts the coxswain binary once more, as `coxswain __coxswain-launcher`, and
//! [`main_if_launcher`] runs before anything could start a thread. The launcher reads one JSON
//! request per line on stdin and answers one JSON line on stdout, and forks for each request;
//! forking a small single-threaded process costs far less than exec'ing a binary per
//! container, which is most of how a container starts in a few milliseconds.
//!
//! The process tree of one container:
//! - the **shim**, forked from the launcher: joins the sandbox's namespaces, makes a PID
//!   namespace for the container, starts the container's first process and waits for it; when
//!   it ends the shim writes how ([`ExitRecord`]) to the container's state dir and exits. The
//!   shim, not the agent, is the container's parent, so the agent can restart and find its
//!   containers still running (the kubelet has containerd's shims for the same reason);
//! - the **init**, PID 1 of the container, started on the shim's memory with the shim stopped
//!   until its exec ([`spawn_init`], so no page table is copied): joins the container's
//!   cgroup, makes the mount namespace (root filesystem, `/proc`, `/dev`, `/sys`, volumes,
//!   masked paths), pivots into it, closes every inherited fd, drops capabilities to runc's
//!   default set, sets `no_new_privs`, switches user and exec's the command. Nothing of the
//!   agent (its binary, its fds, its mounts) is reachable from the workload after that exec.
//!
//! A **warm container** ([`WarmContainerLaunch`]) is that tree made before any pod asks for
//! it: the init does the part of its work that does not depend on the pod, then waits on a
//! socket until [`AdoptLaunch`] hands it the pod's namespaces, cgroups and process.
//!
//! Errors before the exec come back through a close-on-exec pipe: EOF means the exec
//! happened, bytes are the reason it did not (the way runc and youki report them).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::stat::{Mode, SFlag, makedev, mknod, umask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, pipe2, pivot_root, setsid};
use serde::{Deserialize, Serialize};

use super::{BindMount, Rootfs, rootfs};

/// The first argument that makes the coxswain binary a launcher.
pub const ARG: &str = "__coxswain-launcher";

/// The capabilities a container keeps by default: runc's (and Docker's) default set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Files of `/proc` and `/sys` a container must not read: kernel memory, other tenants'
/// keys and timers (runc's default masked paths). Files get `/dev/null` bound over them,
/// directories an empty read-only tmpfs.
const MASKED: [&str; 9] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/acpi",
    "/proc/scsi",
    "/sys/firmware",
];

/// Parts of `/proc` that stay visible but read-only (runc's default read-only paths).
const READ_ONLY: [&str; 6] = [
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The `PATH` a command is looked up in when the container's environment has none (runc's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One request to the launcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    Sandbox(SandboxLaunch),
    Container(ContainerLaunch),
    Exec(ExecLaunch),
    /// Prepare a container's first process ahead of any container (see [`WarmContainerLaunch`]).
    WarmContainer(WarmContainerLaunch),
    /// Start a container from a warm one (see [`AdoptLaunch`]).
    AdoptContainer(AdoptLaunch),
    /// Let a warm container go: its first process and its shim end.
    DropWarm {
        shim: u32,
    },
}

/// A container's PID 1 made ahead, over a warm layer: a shim, and under it a process in a new
/// PID namespace with its mount namespace built (the layer as its root, `/proc`, `/dev`,
/// the masked and read-only paths of `/proc`) and pivoted into, waiting for the rest. None of
/// that depends on the pod, and it is most of what a container's PID 1 does before its exec.
/// What does depend on the pod comes with [`AdoptLaunch`]. The launcher keeps the warm one's
/// end of a socket; when the launcher lets it go (or ends), the process sees the socket close
/// and ends, and its shim with it. The answer's pid is the shim's, the warm container's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmContainerLaunch {
    /// A layer mounted ahead (`merged` holds the overlay of the image and the writable layer).
    pub layer: PathBuf,
}

/// Make a warm container (named by its shim's pid) the container of a pod: the launcher opens
/// what only the host can reach (the log, the sandbox's namespaces, the cgroups' `cgroup.procs`)
/// and hands the fds, with the process, to the waiting PID 1, which joins them, mounts what
/// belongs to the pod's namespaces (`/sys` and `/dev/mqueue`) and exec's. The answer is
/// PID 1's pid, as for [`ContainerLaunch`]; on an error nothing of the container runs and
/// the agent starts it the cold way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdoptLaunch {
    pub shim: u32,
    pub sandbox_pid: u32,
    pub join_network: bool,
    pub cgroup_procs: Vec<PathBuf>,
    pub process: Process,
    pub log: PathBuf,
    pub exit_file: PathBuf,
}

/// What a warm PID 1 is sent at adoption, with the fds: the log, the sandbox's IPC namespace,
/// its UTS and network namespaces if `join_network`, then one `cgroup.procs` per cgroup.
#[derive(Debug, Serialize, Deserialize)]
struct AdoptInit {
    process: Process,
    exit_file: PathBuf,
    join_network: bool,
}

/// The largest adoption message: a SOCK_SEQPACKET message must fit the socket's send buffer.
/// A process whose environment is larger starts the cold way.
const MAX_ADOPT_MESSAGE: usize = 96 * 1024;

/// Start a pod sandbox: a process that holds the pod's namespaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLaunch {
    pub hostname: String,
    /// New network and UTS namespaces (false with `hostNetwork`).
    pub own_network: bool,
    /// A PID namespace the containers join (`shareProcessNamespace`).
    pub own_pid: bool,
    /// The `cgroup.procs` files the holder joins.
    pub cgroup_procs: Vec<PathBuf>,
    /// A warm sandbox, made before any pod asks for it (see `runtime::warm`): the holder is
    /// the launcher's own child and dies with the launcher (a parent-death signal) until the
    /// agent adopts it for a pod with SIGUSR1. Needs `own_network` and not `own_pid`.
    #[serde(default)]
    pub warm: bool,
}

/// Start a container in a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLaunch {
    /// The sandbox's holder process, whose namespaces the container joins.
    pub sandbox_pid: u32,
    pub join_network: bool,
    pub join_pid: bool,
    pub cgroup_procs: Vec<PathBuf>,
    pub rootfs: Rootfs,
    /// The container's own directory: `upper` and `work` of its writable layer, and `merged`,
    /// where its root is assembled.
    pub layer: PathBuf,
    /// Whether `merged` already holds the overlay of the image and the writable layer,
    /// mounted ahead in the host's namespace (a warm layer, see `super::layers`).
    #[serde(default)]
    pub premounted: bool,
    pub read_only_root_filesystem: bool,
    pub mounts: Vec<BindMount>,
    pub process: Process,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Where the shim writes the [`ExitRecord`].
    pub exit_file: PathBuf,
}

/// What runs, and as whom: shared by a container's first process and an exec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<u32>,
    pub group: Option<u32>,
    /// The capabilities kept (names like `CAP_CHOWN`); all others are dropped.
    pub capabilities: Vec<String>,
}

/// Run a command in a running container (a probe or a preStop hook).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecLaunch {
    /// The container's first process, whose namespaces the command joins.
    pub target_pid: u32,
    pub cgroup_procs: Vec<PathBuf>,
    pub process: Process,
    /// Where stdout and stderr go.
    pub output: PathBuf,
    pub exit_file: PathBuf,
}

/// The launcher's answer: the pid (as the host sees it) of what it started, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a container's (or an exec's) process ended, written by its shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: SystemTime,
}

/// Runs the launcher if this process was started as one (its first argument is [`ARG`]) and
/// returns its exit code; `None` otherwise. The binary calls this first thing in `main`,
/// before any thread exists.
pub fn main_if_launcher() -> Option<i32> {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(ARG)) {
        return None;
    }
    Some(serve())
}

fn serve() -> i32 {
    // Anything the agent's parent leaked into us must not reach a container.
    close_fds_from(3, &[]);
    // Our own session: a Ctrl-C at the agent's terminal must not reach the containers, which
    // outlive an agent restart.
    let _ = setsid();
    if thread_count() != Some(1) {
        // fork() below relies on this process having one thread.
        eprintln!("coxswain launcher: started with more than one thread; refusing to fork");
        return 2;
    }
    // A reader of our own over fd 0 (std's stdin would buffer out of sight), so the loop can
    // tell whether a request is already buffered before it waits in poll.
    let input = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("coxswain launcher: cannot read requests: {e}");
            return 2;
        }
    };
    let mut input = std::io::BufReader::new(input);
    let mut out = std::io::stdout();
    let mut warm = WarmInits::new();
    loop {
        reap();
        if input.buffer().is_empty() && !readable(input.get_ref()) {
            continue;
        }
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => match dispatch(&request, &mut warm) {
                Ok(pid) => Response {
                    pid: Some(pid),
                    error: None,
                },
                Err(error) => Response {
                    pid: None,
                    error: Some(error),
                },
            },
            Err(e) => Response {
                pid: None,
                error: Some(format!("bad launcher request: {e}")),
            },
        };
        let Ok(text) = serde_json::to_string(&response) else {
            break;
        };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    0
}

/// How long the launcher waits for a request before it reaps again. Warm sandbox holders are
/// its own children, and one killed when its pod stops stays a zombie (its pid still in
/// `/proc`) until reaped, even when no request comes to wake the launcher.
const REAP_EVERY_MS: u16 = 1000;

/// Waits up to [`REAP_EVERY_MS`] for `input` to have a request (or its end); whether it has.
fn readable(input: &File) -> bool {
    let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
    // An error (EINTR) counts as "not yet": the loop reaps and asks again.
    poll(&mut fds, PollTimeout::from(REAP_EVERY_MS)).is_ok_and(|n| n > 0)
}

/// Collects exited children (shims, and warm holders that were killed) so no zombies pile up;
/// running ones stay.
fn reap() {
    while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

fn thread_count() -> Option<usize> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// The warm containers this launcher made and has not let go, by their shim's pid.
type WarmInits = HashMap<u32, WarmInit>;

/// The launcher's ends of a warm container: the socket its PID 1 waits on, and the pipes its
/// error and its pid come back on.
#[derive(Debug)]
struct WarmInit {
    sock: OwnedFd,
    err_r: OwnedFd,
    pid_r: OwnedFd,
}

fn dispatch(request: &Request, warm: &mut WarmInits) -> Result<u32, String> {
    match request {
        Request::WarmContainer(w) => handle_warm(w, warm),
        Request::AdoptContainer(a) => adopt(a, warm),
        Request::DropWarm { shim } => {
            // Closing the socket ends the waiting PID 1, and its shim after it. Answered once
            // both are gone (the error pipe's end), so the agent can remove the layer
            // without PID 1 still building its mounts on it.
            if let Some(w) = warm.remove(shim) {
                drop(w.sock);
                read_error(w.err_r);
                reap();
            }
            Ok(*shim)
        }
        other => handle(other, warm),
    }
}

fn handle(request: &Request, warm: &mut WarmInits) -> Result<u32, String> {
    // A buffered byte left in stdout would be written twice, once by each side of the fork.
    let _ = std::io::stdout().flush();
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (pid_r, pid_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let launcher = nix::unistd::getpid();
    // SAFETY: the launcher has exactly one thread (checked in `serve`), so the child starts
    // with a consistent heap and no lock held by a vanished thread.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() }.map_err(|e| format!("fork: {e}"))?;
    match forked {
        ForkResult::Child => {
            drop(err_r);
            drop(pid_r);
            // A warm container sees its socket close only once no process holds the
            // launcher's end; a shim never exec's, so it must not keep a copy.
            warm.clear();
            let code = match request {
                Request::Sandbox(s) if s.warm => warm_holder(s, launcher, err_w, pid_w),
                Request::Sandbox(s) => sandbox_shim(s, err_w, pid_w),
                Request::Container(c) => container_shim(c, err_w, pid_w),
                Request::Exec(e) => exec_shim(e, err_w, pid_w),
                Request::WarmContainer(_)
                | Request::AdoptContainer(_)
                | Request::DropWarm { .. } => report(&err_w, "not a request to fork for"),
            };
            std::process::exit(code)
        }
        ForkResult::Parent { .. } => {
            drop(err_w);
            drop(pid_w);
            let pid = read_pid(pid_r);
            let error = read_error(err_r);
            reap();
            if !error.is_empty() {
                return Err(error);
            }
            pid.ok_or_else(|| "the process ended before it started".to_owned())
        }
    }
}

/// Writes an error for the launcher to read, and returns the exit code of a failed child.
fn report(err_w: &OwnedFd, message: &str) -> i32 {
    let _ = write_all_fd(err_w, message.as_bytes());
    127
}

/// Reads an error pipe to its end: empty once every writer closed it without a word (an exec
/// happened, or a warm container ended quietly).
fn read_error(err_r: OwnedFd) -> String {
    let mut error = String::new();
    let _ = File::from(err_r).read_to_string(&mut error);
    error
}

/// Reads the pid a child's `send_pid` wrote, to the pipe's end; `None` if it wrote none.
fn read_pid(pid_r: OwnedFd) -> Option<u32> {
    let mut pid = Vec::new();
    let _ = File::from(pid_r).read_to_end(&mut pid);
    let bytes: [u8; 4] = pid.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn send_pid(pid_w: OwnedFd, pid: Pid) {
    let pid = u32::try_from(pid.as_raw()).unwrap_or(0);
    let _ = File::from(pid_w).write_all(&pid.to_le_bytes());
}

/// Points stdin, stdout and stderr at `/dev/null`: a shim must not hold the agent's pipes
/// open, or the agent would never see the launcher's end.
fn detach_stdio() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

// ------------------------------------------------------------------------------------------
// The sandbox

fn sandbox_shim(req: &SandboxLaunch, err_w: OwnedFd, pid_w: OwnedFd) -> i32 {
    detach_stdio();
    let mut flags = CloneFlags::CLONE_NEWIPC;
    if req.own_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    if req.own_pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if let Err(e) = unshare(flags) {
        return report(&err_w, &format!("create the pod's namespaces: {e}"));
    }
    if req.own_network
        && let Err(e) = nix::unistd::sethostname(&req.hostname)
    {
        return report(&err_w, &format!("set hostname {:?}: {e}", req.hostname));
    }
    // SAFETY: this process is a fork of the single-threaded launcher and has started no
    // thread since.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked {
        Err(e) => report(&err_w, &format!("fork the sandbox holder: {e}")),
        Ok(ForkResult::Child) => {
            drop(pid_w);
            for procs in &req.cgroup_procs {
                if let Err(e) = fs::write(procs, "0") {
                    return report(&err_w, &format!("join cgroup {}: {e}", procs.display()));
                }
            }
            drop(err_w);
            hold()
        }
        Ok(ForkResult::Parent { child }) => {
            // The holder reparents to the launcher's reaper once we exit; its pid is all the
            // agent needs.
            send_pid(pid_w, child);
            drop(err_w);
            0
        }
    }
}

/// A warm sandbox's holder, forked straight from the launcher (no `own_pid`, so no second
/// fork is needed): new network, UTS and IPC namespaces, then a wait for the agent to adopt
/// it. Until then it must not outlive the agent, or an agent killed with SIGKILL would leave
/// holders, veths and addresses no pod owns: the parent-death signal ends it when the
/// launcher (which ends when the agent's pipe closes) is gone. Adoption is SIGUSR1, which
/// lifts that tie, and from then on it holds like any sandbox's holder.
fn warm_holder(req: &SandboxLaunch, launcher: Pid, err_w: OwnedFd, pid_w: OwnedFd) -> i32 {
    detach_stdio();
    if !req.own_network || req.own_pid {
        return report(
            &err_w,
            "a warm sandbox has its own network and no PID namespace",
        );
    }
    let flags = CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    if let Err(e) = unshare(flags) {
        return report(&err_w, &format!("create the pod's namespaces: {e}"));
    }
    if let Err(e) = nix::unistd::sethostname(&req.hostname) {
        return report(&err_w, &format!("set hostname {:?}: {e}", req.hostname));
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return report(&err_w, &format!("set the parent-death signal: {e}"));
    }
    // The launcher may have ended before the signal was armed; then nobody would send it.
    if nix::unistd::getppid() != launcher {
        return report(&err_w, "the launcher ended while the holder started");
    }
    // Blocked before the agent learns the pid, so an early SIGUSR1 waits instead of killing.
    let adopt = SigSet::from(Signal::SIGUSR1);
    if let Err(e) = adopt.thread_block() {
        return report(&err_w, &format!("block SIGUSR1: {e}"));
    }
    send_pid(pid_w, nix::unistd::getpid());
    drop(err_w);
    let _ = nix::unistd::chdir("/");
    close_fds_from(3, &[]);
    while adopt.wait() != Ok(Signal::SIGUSR1) {}
    let _ = nix::sys::prctl::set_pdeathsig(None);
    hold()
}

/// The holder's whole life: keep the namespaces alive and, as PID 1 of a shared PID
/// namespace, reap orphans. It ends only by SIGKILL (PID 1 of a namespace ignores signals it
/// has no handler for). It never starts a thread: `sleep` is a plain nanosleep.
fn hold() -> i32 {
    // Not dumpable: a container sharing its PID namespace cannot open /proc/1/exe (the
    // coxswain binary) without CAP_SYS_PTRACE, which containers do not have (CVE-2019-5736).
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = nix::unistd::chdir("/");
    close_fds_from(3, &[]);
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(_) => {}
            // Nothing to reap yet. SIGCHLD is ignored by default, so pause() would not wake
            // for an orphan's death; a short sleep bounds how long its zombie lingers.
            Err(Errno::ECHILD) => std::thread::sleep(std::time::Duration::from_secs(1)),
            Err(_) => {}
        }
    }
}

// ------------------------------------------------------------------------------------------
// Containers

/// Opens `/proc/<pid>/ns/<name>` of a process whose namespaces we join.
fn ns_file(pid: u32, name: &str) -> Result<File, String> {
    File::open(format!("/proc/{pid}/ns/{name}"))
        .map_err(|e| format!("open the {name} namespace of process {pid}: {e}"))
}

fn container_shim(req: &ContainerLaunch, err_w: OwnedFd, pid_w: OwnedFd) -> i32 {
    detach_stdio();
    let joined = (|| -> Result<(), String> {
        let mut join = vec![("ipc", CloneFlags::CLONE_NEWIPC)];
        if req.join_network {
            join.push(("uts", CloneFlags::CLONE_NEWUTS));
            join.push(("net", CloneFlags::CLONE_NEWNET));
        }
        if req.join_pid {
            join.push(("pid", CloneFlags::CLONE_NEWPID));
        }
        for (name, flag) in join {
            let file = ns_file(req.sandbox_pid, name)?;
            setns(&file, flag).map_err(|e| format!("join the pod's {name} namespace: {e}"))?;
        }
        if !req.join_pid {
            unshare(CloneFlags::CLONE_NEWPID)
                .map_err(|e| format!("create the container's PID namespace: {e}"))?;
        }
        Ok(())
    })();
    if let Err(e) = joined {
        return report(&err_w, &e);
    }
    match spawn_init(req, &err_w) {
        Err(e) => report(&err_w, &e),
        Ok(child) => {
            send_pid(pid_w, child);
            drop(err_w);
            wait_and_record(child, &req.exit_file);
            0
        }
    }
}

/// Forks the shim of a warm container and answers at once with its pid: the rest of its
/// making (a PID namespace, PID 1 and its mounts) goes on while the launcher serves the next
/// request, and an adoption that comes before it is done waits in PID 1's socket.
fn handle_warm(req: &WarmContainerLaunch, warm: &mut WarmInits) -> Result<u32, String> {
    let _ = std::io::stdout().flush();
    let (sock, init_sock) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (pid_r, pid_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the launcher has exactly one thread (checked in `serve`), as in `handle`.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() }.map_err(|e| format!("fork: {e}"))?;
    match forked {
        ForkResult::Child => {
            drop((sock, err_r, pid_r));
            warm.clear();
            std::process::exit(warm_container_shim(req, init_sock, err_w, pid_w))
        }
        ForkResult::Parent { child } => {
            drop((init_sock, err_w, pid_w));
            let shim = u32::try_from(child.as_raw()).map_err(|e| format!("pid: {e}"))?;
            warm.insert(shim, WarmInit { sock, err_r, pid_r });
            Ok(shim)
        }
    }
}

/// The shim of a warm container: a PID namespace, and in it PID 1 on this process's memory
/// (as [`spawn_init`]), which builds the container's mounts and waits. PID 1 sends the path
/// of the exit record over a pipe just before its exec; if it ends without one (let go
/// before adoption, or failed), there is nothing to record.
fn warm_container_shim(
    req: &WarmContainerLaunch,
    sock: OwnedFd,
    err_w: OwnedFd,
    pid_w: OwnedFd,
) -> i32 {
    detach_stdio();
    // Until adopted this is refill work (see `priority`): a process group of its own, which
    // PID 1 joins too, so the launcher can raise both at once at adoption.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let _ = super::priority::set_thread_nice(super::priority::BACKGROUND_NICE);
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        return report(
            &err_w,
            &format!("create the container's PID namespace: {e}"),
        );
    }
    // PID 1 writes the exit record's path here just before its exec (and a NUL after it if
    // the exec failed); the write end closes at the exec. A pipe rather than the memory PID 1
    // shares with this process: under valgrind a CLONE_VM child gets a copy.
    let (path_r, path_w) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(ends) => ends,
        Err(e) => return report(&err_w, &format!("pipe: {e}")),
    };
    let spawned = spawn_on_shim_memory(Box::new(|| -> isize {
        match warm_init(req, &sock, &err_w, &path_w) {
            Some(error) => report(&err_w, &error) as isize,
            None => 0,
        }
    }));
    drop(path_w);
    let child = match spawned {
        Ok(child) => child,
        Err(e) => return report(&err_w, &e),
    };
    let mut path = Vec::new();
    let _ = File::from(path_r).read_to_end(&mut path);
    let exit_file = (!path.is_empty() && !path.contains(&0))
        .then(|| PathBuf::from(std::ffi::OsString::from_vec(path)));
    match exit_file {
        Some(path) => {
            send_pid(pid_w, child);
            drop(err_w);
            wait_and_record(child, &path);
        }
        None => {
            drop((pid_w, err_w));
            let _ = waitpid(child, None);
        }
    }
    0
}

/// A warm container's PID 1: the mounts that do not depend on the pod, then a wait for the
/// adoption, then the rest and the exec. `None` when the launcher let it go before adopting
/// it; the reason otherwise (it returns only without an exec).
fn warm_init(
    req: &WarmContainerLaunch,
    sock: &OwnedFd,
    err_w: &OwnedFd,
    path_w: &OwnedFd,
) -> Option<String> {
    if let Err(e) = warm_mounts(&req.layer.join("merged")) {
        return Some(e);
    }
    // Ready: past the pivot, the layer's path on the host no longer matters, so the agent
    // may move it (the launcher waits for this before it hands the container over).
    if let Err(e) = nix::sys::socket::send(sock.as_raw_fd(), b"r", MsgFlags::MSG_NOSIGNAL) {
        return Some(format!("tell the launcher the container is ready: {e}"));
    }
    let (init, fds) = match receive_adoption(sock) {
        Ok(Some(adoption)) => adoption,
        Ok(None) => return None,
        Err(e) => return Some(e),
    };
    let error = match adopted(&init, fds, err_w, path_w) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // No exec: there is no container whose end the shim should record.
    let _ = nix::unistd::write(path_w, b"\0");
    Some(error)
}

/// What [`build_container`] does before a container's cgroups and namespaces matter: a mount
/// namespace with `root` (a warm layer, already mounted) as its root, `/proc` (of the PID
/// namespace this process is PID 1 of), `/dev` without `mqueue`, `/proc`'s masked and
/// read-only paths, and the pivot.
fn warm_mounts(root: &Path) -> Result<(), String> {
    own_mount_namespace(
        "create the container's mount namespace",
        CloneFlags::empty(),
    )?;
    let prior = umask(Mode::empty());
    let built = mount_proc(root)
        .and_then(|()| mount_dev(root))
        .and_then(|()| mount_point(root, "/sys", true).map(drop))
        .and_then(|()| mask(root, |p| p.starts_with("/proc/")));
    umask(prior);
    built?;
    pivot(root)
}

/// Waits for the adoption message; `None` if the launcher closed the socket instead.
fn receive_adoption(sock: &OwnedFd) -> Result<Option<(AdoptInit, Vec<OwnedFd>)>, String> {
    let mut buf = vec![0u8; MAX_ADOPT_MESSAGE];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_ADOPT_FDS]);
    let (bytes, raw) = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("wait for the container: {e}")),
            Ok(msg) => {
                let mut raw = Vec::new();
                for cmsg in msg
                    .cmsgs()
                    .map_err(|e| format!("read the container's fds: {e}"))?
                {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        raw.extend(fds);
                    }
                }
                break (msg.bytes, raw);
            }
        }
    };
    // SAFETY: each fd came with this message (SCM_RIGHTS installs them in this process) and
    // nothing else owns it.
    #[allow(unsafe_code)]
    let fds: Vec<OwnedFd> = raw
        .into_iter()
        .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        .collect();
    if bytes == 0 {
        return Ok(None);
    }
    let text = buf
        .get(..bytes)
        .ok_or("the adoption message overran its buffer")?;
    let init: AdoptInit =
        serde_json::from_slice(text).map_err(|e| format!("bad adoption message: {e}"))?;
    Ok(Some((init, fds)))
}

/// The most fds an adoption carries: the log, three namespaces and the cgroups.
const MAX_ADOPT_FDS: usize = 16;

/// A warm PID 1 made the container: the rest of [`build_container`], on the fds `fds` in the
/// order [`AdoptInit`] gives. Returns only on failure.
fn adopted(
    init: &AdoptInit,
    fds: Vec<OwnedFd>,
    err_w: &OwnedFd,
    path_w: &OwnedFd,
) -> Result<Never, String> {
    let mut fds = fds.into_iter();
    let mut next = |what: &str| fds.next().ok_or_else(|| format!("no fd for {what}"));
    // Never closed by a drop, as in build_container.
    let log = ManuallyDrop::new(File::from(next("the log")?));
    let mut join = vec![("ipc", CloneFlags::CLONE_NEWIPC, next("ipc")?)];
    if init.join_network {
        join.push(("uts", CloneFlags::CLONE_NEWUTS, next("uts")?));
        join.push(("net", CloneFlags::CLONE_NEWNET, next("net")?));
    }
    for procs in fds {
        step(
            "join the container's cgroup",
            nix::unistd::write(&procs, b"0").map(drop),
        )?;
    }
    for (name, flag, fd) in join {
        step(
            &format!("join the pod's {name} namespace"),
            setns(&fd, flag),
        )?;
        // Closed here, by its drop: `exec_process` closes every fd past stderr, and a drop
        // after a failed exec would close it a second time.
        drop(fd);
    }
    step(
        "create the container's cgroup namespace",
        unshare(CloneFlags::CLONE_NEWCGROUP),
    )?;
    let root = Path::new("/");
    let prior = umask(Mode::empty());
    let built = mount_mqueue(root)
        .and_then(|()| mount_sys(root))
        .and_then(|()| mask(root, |p| p.starts_with("/sys/")));
    umask(prior);
    built?;
    enter_working_dir(init.process.working_dir.as_deref())?;
    let null =
        ManuallyDrop::new(File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?);
    write_all_fd(path_w, init.exit_file.as_os_str().as_bytes())?;
    exec_process(&init.process, &log, &null, err_w, Some(path_w))
}

fn write_all_fd(fd: &OwnedFd, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err("write: no progress".to_owned()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

/// Hands a warm container its pod: see [`AdoptLaunch`].
fn adopt(req: &AdoptLaunch, warm: &mut WarmInits) -> Result<u32, String> {
    let w = warm
        .remove(&req.shim)
        .ok_or_else(|| format!("no warm container {}", req.shim))?;
    // Its mounts may still be in the making (a layer made a moment ago).
    let mut ready = [0u8; 1];
    let got = loop {
        match nix::sys::socket::recv(w.sock.as_raw_fd(), &mut ready, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    if got != Ok(1) {
        let error = read_error(w.err_r);
        return Err(if error.is_empty() {
            "the warm container ended before it was ready".to_owned()
        } else {
            error
        });
    }
    let init = AdoptInit {
        process: req.process.clone(),
        exit_file: req.exit_file.clone(),
        join_network: req.join_network,
    };
    let message = serde_json::to_vec(&init).map_err(|e| format!("encode adoption: {e}"))?;
    if message.len() > MAX_ADOPT_MESSAGE {
        return Err(format!(
            "the process is too large for a warm container ({} bytes)",
            message.len()
        ));
    }
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc_o_cloexec())
        .open(&req.log)
        .map_err(|e| format!("open log {}: {e}", req.log.display()))?;
    let mut fds: Vec<OwnedFd> = vec![log.into(), ns_file(req.sandbox_pid, "ipc")?.into()];
    if req.join_network {
        fds.push(ns_file(req.sandbox_pid, "uts")?.into());
        fds.push(ns_file(req.sandbox_pid, "net")?.into());
    }
    for procs in &req.cgroup_procs {
        let file = OpenOptions::new()
            .write(true)
            .open(procs)
            .map_err(|e| format!("open {}: {e}", procs.display()))?;
        fds.push(file.into());
    }
    if fds.len() > MAX_ADOPT_FDS {
        return Err(format!("too many fds for a warm container ({})", fds.len()));
    }
    // From here it is the pod's start, no longer refill work.
    let _ = super::priority::set_group_nice(req.shim, 0);
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = sendmsg::<()>(
        w.sock.as_raw_fd(),
        &[std::io::IoSlice::new(&message)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    drop(fds);
    drop(w.sock);
    let error = read_error(w.err_r);
    if !error.is_empty() {
        return Err(error);
    }
    sent.map_err(|e| format!("hand the container to its warm process: {e}"))?;
    let pid = read_pid(w.pid_r);
    reap();
    pid.ok_or_else(|| "the warm container ended before it started".to_owned())
}

/// The stack the container's PID 1 runs on until its exec. Far more than `build_container`
/// needs; the pages it never touches cost nothing.
const INIT_STACK: usize = 1 << 20;

/// The page at the low end of that stack that faults instead of letting an overflow write
/// over the shim's memory below it.
const GUARD: usize = 4096;

/// Starts the container's PID 1 the way `posix_spawn` starts a program: in this process's
/// memory (`CLONE_VM`), with this process stopped until the child's exec or exit
/// (`CLONE_VFORK`). A `fork` copies the shim's page tables only for the exec to throw the copy
/// away again: in a trace of 82 starts here, the fork took 0.18 ms and the exec 0.37 ms at the
/// median, against 0.05 and 0.13 ms this way (`docs/benchmarks.md`). Returns once the child
/// has exec'd or failed.
fn spawn_init(req: &ContainerLaunch, err_w: &OwnedFd) -> Result<Pid, String> {
    spawn_on_shim_memory(Box::new(|| -> isize {
        // Its fds, namespaces and credentials are its own; its memory is the shim's, so it
        // returns (the clone wrapper then ends it with _exit) rather than run exit handlers
        // on the shim's state.
        let error = container_init(req, err_w);
        report(err_w, &error) as isize
    }))
}

/// Runs `child` as a new process on this (the shim's) memory, with the shim stopped until the
/// child exec's or ends, as `spawn_init` explains.
fn spawn_on_shim_memory(child: Box<dyn FnMut() -> isize + '_>) -> Result<Pid, String> {
    let size = std::num::NonZeroUsize::new(INIT_STACK).ok_or("no stack size")?;
    // SAFETY: a fresh private mapping, touched by nothing else; `Stack` unmaps it when this
    // function returns, after the child has left it (CLONE_VFORK returns only then).
    #[allow(unsafe_code)]
    let stack = Stack(
        unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                size,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_PRIVATE | nix::sys::mman::MapFlags::MAP_STACK,
            )
        }
        .map_err(|e| format!("map the container's first stack: {e}"))?,
    );
    // SAFETY: the first page of the mapping made above.
    #[allow(unsafe_code)]
    unsafe { nix::sys::mman::mprotect(stack.0, GUARD, nix::sys::mman::ProtFlags::PROT_NONE) }
        .map_err(|e| format!("guard the container's first stack: {e}"))?;
    // SAFETY: the mapping's INIT_STACK bytes past its guard page are readable and writable,
    // and only the child uses them.
    #[allow(unsafe_code)]
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(stack.0.as_ptr().cast::<u8>().add(GUARD), INIT_STACK - GUARD)
    };
    // SAFETY: the shim has one thread and holds no lock (it is a fork of the single-threaded
    // launcher), and CLONE_VFORK keeps it stopped while the child runs on its memory, so the
    // child's allocations are those of this thread going on. The child never unwinds into
    // the shim's frames: it ends in exec or in a return from this closure on its own stack.
    #[allow(unsafe_code)]
    let cloned = unsafe {
        nix::sched::clone(
            child,
            bytes,
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
            Some(Signal::SIGCHLD as i32),
        )
    };
    cloned.map_err(|e| format!("start the container: {e}"))
}

/// The mapping [`spawn_init`] runs PID 1 on, unmapped when dropped.
struct Stack(std::ptr::NonNull<std::ffi::c_void>);

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping `spawn_init` made, INIT_STACK bytes; the child has exec'd or
        // ended by the time it is dropped, so nothing runs on it.
        #[allow(unsafe_code)]
        let _ = unsafe { nix::sys::mman::munmap(self.0, INIT_STACK) };
    }
}

/// Waits for `child` and writes how it ended to `exit_file` (atomically, so a reader never
/// sees half a record).
fn wait_and_record(child: Pid, exit_file: &Path) {
    let (exit_code, signal) = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (128 + sig as i32, Some(sig as i32)),
            Ok(_) | Err(Errno::EINTR) => continue,
            // ECHILD cannot happen for our own child; record an unknown end rather than none.
            Err(_) => break (255, None),
        }
    };
    let record = ExitRecord {
        exit_code,
        signal,
        finished_at: SystemTime::now(),
    };
    if let Ok(text) = serde_json::to_vec(&record) {
        let tmp = exit_file.with_extension("tmp");
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(&tmp, exit_file);
        }
    }
}

/// PID 1 of the container, up to the exec. Returns only on failure, with the reason.
fn container_init(req: &ContainerLaunch, err_w: &OwnedFd) -> String {
    match build_container(req, err_w) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Unshares a mount namespace (and `also`) and makes every mount in it a slave: no mount made
/// in it may propagate back to the host.
fn own_mount_namespace(what: &str, also: CloneFlags) -> Result<(), String> {
    step(what, unshare(CloneFlags::CLONE_NEWNS | also))?;
    step(
        "make / a slave mount",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        ),
    )
}

/// The uninhabited success of a function that ends in exec.
enum Never {}

fn step<T>(what: &str, r: nix::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn build_container(req: &ContainerLaunch, err_w: &OwnedFd) -> Result<Never, String> {
    // Opened while the host's filesystem is still in view; after the pivot it is not.
    // Never closed by a drop: `exec_process` closes every fd past stderr before its exec, so
    // a drop after a failed exec would close them a second time (std aborts on that in a
    // debug build, and the reason of the failure would be lost).
    let log = ManuallyDrop::new(
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc_o_cloexec())
            .open(&req.log)
            .map_err(|e| format!("open log {}: {e}", req.log.display()))?,
    );
    let null =
        ManuallyDrop::new(File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?);
    for procs in &req.cgroup_procs {
        fs::write(procs, "0").map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
    }
    own_mount_namespace(
        "create the container's mount and cgroup namespaces",
        CloneFlags::CLONE_NEWCGROUP,
    )?;
    let root = req.layer.join("merged");
    mount_root(req, &root)?;
    let prior = umask(Mode::empty());
    mount_system(&root)?;
    for m in &req.mounts {
        bind_volume(&root, m)?;
    }
    mask(&root, |_| true)?;
    if req.read_only_root_filesystem || matches!(req.rootfs, Rootfs::Host) {
        step(
            "make the root filesystem read-only",
            mount(
                None::<&str>,
                &root,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            ),
        )?;
    }
    umask(prior);
    pivot(&root)?;
    enter_working_dir(req.process.working_dir.as_deref())?;
    exec_process(&req.process, &log, &null, err_w, None)
}

/// `O_CLOEXEC` for `OpenOptions::custom_flags` (std adds it anyway; stated for the reader).
fn libc_o_cloexec() -> i32 {
    OFlag::O_CLOEXEC.bits()
}

fn mount_root(req: &ContainerLaunch, root: &Path) -> Result<(), String> {
    match &req.rootfs {
        // The copy of the host's mounts this namespace started with has it already.
        Rootfs::Image(_) if req.premounted && !req.read_only_root_filesystem => Ok(()),
        Rootfs::Image(lower) if !req.read_only_root_filesystem => {
            // The image stays untouched and shared; the container writes to its own upper
            // layer, which goes away with the container.
            let data = rootfs::overlay_options(lower, &req.layer);
            step(
                "mount the container's root filesystem (overlay)",
                mount(
                    Some("overlay"),
                    root,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(data.as_str()),
                ),
            )
        }
        Rootfs::Image(lower) => step(
            "bind the image as the root filesystem",
            mount(
                Some(lower.as_path()),
                root,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        ),
        Rootfs::Host => step(
            "bind the host's root",
            mount(
                Some("/"),
                root,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        ),
    }
}

/// `/proc`, a minimal `/dev` and a read-only `/sys`, as runc gives every container.
fn mount_system(root: &Path) -> Result<(), String> {
    mount_proc(root)?;
    mount_sys(root)?;
    mount_dev(root)?;
    mount_mqueue(root)
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// `/proc` of the PID namespace this process is in.
fn mount_proc(root: &Path) -> Result<(), String> {
    let proc = mount_point(root, "/proc", true)?;
    step(
        "mount /proc",
        mount(
            Some("proc"),
            &proc,
            Some("proc"),
            NOSUID_NODEV_NOEXEC,
            None::<&str>,
        ),
    )
}

/// `/sys`, read-only; its `class/net` shows the network namespace this process is in.
fn mount_sys(root: &Path) -> Result<(), String> {
    let sys = mount_point(root, "/sys", true)?;
    step(
        "mount /sys",
        mount(
            Some("sysfs"),
            &sys,
            Some("sysfs"),
            NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
            None::<&str>,
        ),
    )
}

/// `/dev`: a tmpfs with the usual device nodes and links, `pts` and `shm`, and the mount point
/// of `mqueue` (see [`mount_mqueue`]).
fn mount_dev(root: &Path) -> Result<(), String> {
    let dev = mount_point(root, "/dev", true)?;
    step(
        "mount /dev",
        mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        step(
            &format!("create /dev/{name}"),
            mknod(
                &dev.join(name),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            ),
        )?;
    }
    for dir in ["pts", "shm", "mqueue"] {
        fs::create_dir(dev.join(dir)).map_err(|e| format!("create /dev/{dir}: {e}"))?;
    }
    step(
        "mount /dev/pts",
        mount(
            Some("devpts"),
            &dev.join("pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    step(
        "mount /dev/shm",
        mount(
            Some("shm"),
            &dev.join("shm"),
            Some("tmpfs"),
            NOSUID_NODEV_NOEXEC,
            Some("mode=1777,size=65536k"),
        ),
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("create /dev/{link}: {e}"))?;
    }
    Ok(())
}

/// `/dev/mqueue`, the POSIX message queues of the IPC namespace this process is in.
fn mount_mqueue(root: &Path) -> Result<(), String> {
    let dir = rootfs::resolve_in(root, "/dev/mqueue").map_err(|e| e.to_string())?;
    step(
        "mount /dev/mqueue",
        mount(
            Some("mqueue"),
            &dir,
            Some("mqueue"),
            NOSUID_NODEV_NOEXEC,
            None::<&str>,
        ),
    )
}

/// The host path of `path` inside the container's root, created (a directory, or an empty
/// file) if missing, never outside the root.
fn mount_point(root: &Path, path: &str, dir: bool) -> Result<PathBuf, String> {
    let host = rootfs::resolve_in(root, path).map_err(|e| e.to_string())?;
    if !host.exists() {
        if dir {
            fs::create_dir_all(&host)
        } else {
            if let Some(parent) = host.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("create {path}: {e}"))?;
            }
            File::create(&host).map(|_| ())
        }
        .map_err(|e| format!("create mount point {path}: {e}"))?;
    }
    Ok(host)
}

fn bind_volume(root: &Path, m: &BindMount) -> Result<(), String> {
    let dir = m.source.is_dir();
    let target = mount_point(root, &m.destination, dir)?;
    step(
        &format!("mount {} at {}", m.source.display(), m.destination),
        mount(
            Some(m.source.as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    if m.read_only {
        step(
            &format!("make {} read-only", m.destination),
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
    }
    Ok(())
}

/// Masks the paths of [`MASKED`] and makes those of [`READ_ONLY`] read-only, those of them
/// `select` picks (a warm container does `/proc`'s ahead and `/sys`'s at adoption).
fn mask(root: &Path, select: fn(&str) -> bool) -> Result<(), String> {
    let null = root.join("dev/null");
    for path in MASKED.into_iter().filter(|p| select(p)) {
        let host = rootfs::resolve_in(root, path).map_err(|e| e.to_string())?;
        let Ok(meta) = fs::metadata(&host) else {
            continue;
        };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &host,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some(null.as_path()),
                &host,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        step(&format!("mask {path}"), r)?;
    }
    for path in READ_ONLY.into_iter().filter(|p| select(p)) {
        let host = rootfs::resolve_in(root, path).map_err(|e| e.to_string())?;
        if !host.exists() {
            continue;
        }
        step(
            &format!("bind {path}"),
            mount(
                Some(host.as_path()),
                &host,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
        step(
            &format!("make {path} read-only"),
            mount(
                None::<&str>,
                &host,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None::<&str>,
            ),
        )?;
    }
    Ok(())
}

/// Makes `root` the root and drops every trace of the host's tree: `pivot_root(".", ".")`
/// stacks the old root under the new one, and the lazy unmount takes it away.
fn pivot(root: &Path) -> Result<(), String> {
    step("enter the root filesystem", nix::unistd::chdir(root))?;
    step("pivot_root", pivot_root(".", "."))?;
    step("detach the host's root", umount2(".", MntFlags::MNT_DETACH))?;
    step("enter /", nix::unistd::chdir("/"))
}

fn enter_working_dir(dir: Option<&str>) -> Result<(), String> {
    let Some(dir) = dir else { return Ok(()) };
    rootfs::check_container_path("workingDir", dir).map_err(|e| e.to_string())?;
    // As runc does, a missing working dir is created. The host is no longer in view, so no
    // path can lead outside the container here.
    if !Path::new(dir).exists() {
        fs::create_dir_all(dir).map_err(|e| format!("create workingDir {dir}: {e}"))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    }
    step(&format!("enter workingDir {dir}"), nix::unistd::chdir(dir))
}

/// Everything from the container's process settings up to the exec: fds, capabilities,
/// no_new_privs, user, stdio, and the command. Returns only on failure.
/// `also_keep` (close-on-exec, like `err_w`) stays open up to the exec too: a warm PID 1's
/// pipe to its shim, which it writes to if the exec fails.
fn exec_process(
    p: &Process,
    out: &File,
    input: &File,
    err_w: &OwnedFd,
    also_keep: Option<&OwnedFd>,
) -> Result<Never, String> {
    let program = find_program(p)?;
    let argv = cstrings(&p.argv)?;
    let env = cstrings(
        &p.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
    )?;
    step("set stdin", nix::unistd::dup2_stdin(input))?;
    step("set stdout", nix::unistd::dup2_stdout(out))?;
    step("set stderr", nix::unistd::dup2_stderr(out))?;
    // Only 0-2 cross the exec: everything else is closed now, and the error pipe closes by
    // itself at the exec (close-on-exec), which tells the launcher the exec happened.
    close_fds_from(
        3,
        &[err_w.as_raw_fd(), also_keep.map_or(-1, AsRawFd::as_raw_fd)],
    );
    drop_capabilities(&p.capabilities)?;
    step("set no_new_privs", nix::sys::prctl::set_no_new_privs())?;
    if let Some(gid) = p.group.or(p.user.map(|_| 0)) {
        step("setgroups", nix::unistd::setgroups(&[Gid::from_raw(gid)]))?;
        step("setgid", nix::unistd::setgid(Gid::from_raw(gid)))?;
    }
    if let Some(uid) = p.user {
        step("setuid", nix::unistd::setuid(Uid::from_raw(uid)))?;
    }
    let e = nix::unistd::execve(&program, &argv, &env);
    Err(match e {
        Err(e) => format!(
            "exec {:?}: {e}",
            p.argv.first().map(String::as_str).unwrap_or("")
        ),
        Ok(never) => match never {},
    })
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, String> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL byte")))
        .collect()
}

/// `argv[0]` as a path: used as it is when it has a `/`, else looked up in the container's
/// `PATH` (the container's, not the launcher's, as runc does).
fn find_program(p: &Process) -> Result<CString, String> {
    let name = p
        .argv
        .first()
        .ok_or_else(|| "no command to run".to_owned())?;
    if name.contains('/') {
        return CString::new(name.as_bytes()).map_err(|_| format!("{name:?} contains a NUL byte"));
    }
    let path = p
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return CString::new(candidate.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("{name:?} contains a NUL byte"));
        }
    }
    Err(format!(
        "exec: {name:?}: executable file not found in $PATH"
    ))
}

fn drop_capabilities(keep: &[String]) -> Result<(), String> {
    use caps::{CapSet, Capability};
    let keep: caps::CapsHashSet = keep
        .iter()
        .filter_map(|name| name.parse::<Capability>().ok())
        .collect();
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        }
    }
    // What a root process keeps across exec is bounded by the bounding set; a non-root one
    // keeps only what is inheritable and ambient, and ambient stays empty as in Kubernetes.
    caps::set(None, CapSet::Inheritable, &keep)
        .map_err(|e| format!("set inheritable capabilities: {e}"))
}

/// Closes every fd from `first` up, except `keep`. Listed first, then closed, because closing
/// while reading `/proc/self/fd` would close the directory's own fd under the reader.
fn close_fds_from(first: i32, keep: &[i32]) {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first && !keep.contains(&fd))
        .collect();
    for fd in fds {
        // The directory's own fd is in the list and already closed by now: EBADF is fine.
        let _ = nix::unistd::close(fd);
    }
}

// ------------------------------------------------------------------------------------------
// Exec in a running container

fn exec_shim(req: &ExecLaunch, err_w: OwnedFd, pid_w: OwnedFd) -> i32 {
    detach_stdio();
    let prepared = (|| -> Result<(File, File, File), String> {
        let output = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&req.output)
            .map_err(|e| format!("open {}: {e}", req.output.display()))?;
        let null = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
        let mnt = ns_file(req.target_pid, "mnt")?;
        for (name, flag) in [
            ("ipc", CloneFlags::CLONE_NEWIPC),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("net", CloneFlags::CLONE_NEWNET),
            ("pid", CloneFlags::CLONE_NEWPID),
        ] {
            let file = ns_file(req.target_pid, name)?;
            setns(&file, flag)
                .map_err(|e| format!("join the container's {name} namespace: {e}"))?;
        }
        Ok((output, null, mnt))
    })();
    let (output, null, mnt) = match prepared {
        Ok(p) => p,
        Err(e) => return report(&err_w, &e),
    };
    // SAFETY: a fork of the single-threaded launcher that has started no thread.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked {
        Err(e) => report(&err_w, &format!("fork the exec: {e}")),
        Ok(ForkResult::Child) => {
            drop(pid_w);
            let error = (|| -> Result<Never, String> {
                for procs in &req.cgroup_procs {
                    fs::write(procs, "0")
                        .map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
                }
                step(
                    "join the container's mount namespace",
                    setns(&mnt, CloneFlags::CLONE_NEWNS),
                )?;
                let dir = req.process.working_dir.as_deref().unwrap_or("/");
                step(&format!("enter {dir}"), nix::unistd::chdir(dir))?;
                exec_process(&req.process, &output, &null, &err_w, None)
            })();
            match error {
                Ok(never) => match never {},
                Err(e) => report(&err_w, &e),
            }
        }
        Ok(ForkResult::Parent { child }) => {
            send_pid(pid_w, child);
            drop(err_w);
            wait_and_record(child, &req.exit_file);
            0
        }
    }
}
