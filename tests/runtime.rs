//! The Linux runtime end to end, as root: real sandboxes and containers started by the real
//! `coxswain` binary as launcher, in real namespaces, cgroups and network, with the busybox
//! image that `scripts/dev.sh` imports into the node's image store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use coxswain_node::cgroup::{Cgroup, CgroupVersion, Resources};
use coxswain_node::image::ImageStore;
use coxswain_node::net::BridgeConfig;
use coxswain_node::runtime::linux::{LinuxConfig, LinuxRuntime, prepare_run_dir};
use coxswain_node::runtime::{
    BindMount, ContainerId, ContainerSpec, ContainerState, Rootfs, Runtime, Sandbox, SandboxSpec,
};

const IMAGES: &str = "/var/lib/coxswain/images";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The root filesystem of the busybox image in the node's image store.
fn busybox() -> PathBuf {
    ImageStore::open(Path::new(IMAGES))
        .unwrap()
        .get("busybox:latest")
        .unwrap()
        .expect("busybox:latest is in the image store (scripts/dev.sh imports it)")
        .rootfs
}

/// A runtime over `state` with this binary as its launcher and the tests' pids limit.
fn runtime(
    state: &Path,
    network: Option<BridgeConfig>,
    warm_sandboxes: usize,
    warm_layers: usize,
) -> LinuxRuntime {
    LinuxRuntime::new(LinuxConfig {
        state_dir: state.to_owned(),
        run_dir: common::run_dir(state),
        launcher: PathBuf::from(env!("CARGO_BIN_EXE_coxswain")),
        network,
        pids_max: Some(256),
        warm_sandboxes,
        warm_layers,
    })
    .unwrap()
}

/// One runtime with its own state dir, bridge and pod CIDR, torn down on drop.
struct Node {
    rt: LinuxRuntime,
    busybox: PathBuf,
    sandboxes: std::sync::Mutex<Vec<String>>,
    state: tempfile::TempDir,
}

impl Node {
    fn new(network: bool) -> Node {
        Node::build(network, 0, 0)
    }

    /// With a network and a pool of `warm` sandboxes made ahead of pods.
    fn with_warm(warm: usize) -> Node {
        Node::build(true, warm, 0)
    }

    /// `warm_layers` container layers kept mounted ahead per image: the agent's way, here
    /// apart so that the other tests know which way their containers start.
    fn build(network: bool, warm_sandboxes: usize, warm_layers: usize) -> Node {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 1000) * 16 + n;
        let state = tempfile::tempdir().unwrap();
        let network = network.then(|| BridgeConfig {
            name: format!("cxr{tag}"),
            cidr: format!("10.123.{}.0/24", tag % 250).parse().unwrap(),
        });
        let busybox = busybox();
        let rt = runtime(state.path(), network, warm_sandboxes, warm_layers);
        Node {
            rt,
            busybox,
            sandboxes: Default::default(),
            state,
        }
    }

    /// A node keeping one warm layer, and a sandbox `name` on it, after a first container
    /// of the image has exited: the pool has then made a layer, and a warm container on it.
    fn with_warm_container(name: &str) -> (Node, Sandbox) {
        let node = Node::build(false, 0, 1);
        let sb = node.sandbox(name, false);
        let first = node
            .rt
            .start_container(&sb, &node.spec("first", "true"))
            .unwrap();
        node.wait_exit(&first, Duration::from_secs(10));
        assert!(
            wait_until(Duration::from_secs(10), || node.rt.warm_init_pids().len()
                == 1),
            "a warm container on the refilled layer"
        );
        (node, sb)
    }

    fn sandbox(&self, name: &str, share_pid: bool) -> Sandbox {
        let key = format!(
            "test_{name}_{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.sandboxes.lock().unwrap().push(key.clone());
        self.rt
            .run_sandbox(&SandboxSpec {
                key,
                hostname: name.to_owned(),
                host_network: false,
                share_process_namespace: share_pid,
                resources: Resources::default(),
            })
            .unwrap()
    }

    fn spec(&self, name: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.to_owned(),
            attempt: 0,
            rootfs: Rootfs::Image(self.busybox.clone()),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/bin".into())],
            working_dir: None,
            user: None,
            group: None,
            mounts: vec![],
            resources: Resources::default(),
            read_only_root_filesystem: false,
            add_capabilities: vec![],
            drop_capabilities: vec![],
        }
    }

    fn wait_exit(&self, id: &ContainerId, timeout: Duration) -> ContainerState {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.rt.container_state(id).unwrap();
            if matches!(state, ContainerState::Exited { .. }) || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn log(&self, id: &ContainerId) -> String {
        std::fs::read_to_string(self.rt.log_path(id)).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for key in self.sandboxes.lock().unwrap().iter() {
            if let Err(e) = self.rt.stop_sandbox(key) {
                eprintln!("cleanup of sandbox {key}: {e}");
            }
        }
        self.rt.shutdown_warm();
        if let Some(bridge) = self.rt.bridge()
            && let Err(e) = bridge.teardown()
        {
            eprintln!("cleanup of bridge: {e}");
        }
    }
}

fn exit_code(state: &ContainerState) -> Option<i32> {
    match state {
        ContainerState::Exited { exit_code, .. } => Some(*exit_code),
        _ => None,
    }
}

#[test]
fn a_container_has_the_pod_hostname_and_is_pid_1() {
    if !common::require_root("a_container_has_the_pod_hostname_and_is_pid_1") {
        return;
    }
    let node = Node::new(false);
    let sb = node.sandbox("rt-host", false);
    let id = node
        .rt
        .start_container(
            &sb,
            &node.spec(
                "main",
                "hostname; echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '",
            ),
        )
        .unwrap();
    let state = node.wait_exit(&id, Duration::from_secs(10));
    assert_eq!(exit_code(&state), Some(0), "{state:?}: {}", node.log(&id));
    let log = node.log(&id);
    assert!(log.starts_with("rt-host\n"), "{log}");
    assert!(log.contains("pid=1\n"), "{log}");
    assert!(log.contains("sh -c hostname"), "{log}");
}

#[test]
fn a_container_keeps_only_stdio_no_new_privs_and_fewer_capabilities() {
    if !common::require_root("a_container_keeps_only_stdio_no_new_privs_and_fewer_capabilities") {
        return;
    }
    let node = Node::new(false);
    let sb = node.sandbox("rt-sec", false);
    // The container's first process is the command itself; another process (an exec) looks
    // at it, since a shell looking at itself would count its own directory and pipe fds.
    let mut spec = node.spec("main", "");
    spec.argv = vec!["sleep".into(), "30".into()];
    let id = node.rt.start_container(&sb, &spec).unwrap();
    let out = node
        .rt
        .exec(
            &id,
            &[
                "sh".into(),
                "-c".into(),
                "echo fds: $(ls /proc/1/fd); \
                 grep -E '^(NoNewPrivs|CapEff|CapBnd)' /proc/1/status; \
                 for f in /proc/kcore /proc/keys /proc/timer_list; do \
                   [ -e $f ] && echo \"masked $f $(wc -c < $f)\"; done; true"
                    .into(),
            ],
            Duration::from_secs(10),
        )
        .unwrap();
    let log = String::from_utf8_lossy(&out.output).into_owned();
    assert_eq!(out.exit_code, Some(0), "{log}");
    assert!(log.contains("fds: 0 1 2\n"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    let caps = |name: &str| {
        let hex = log
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim();
        u64::from_str_radix(hex, 16).unwrap()
    };
    // runc's default set is 14 capabilities: CAP_CHOWN(0) .. CAP_SETFCAP(31).
    assert_eq!(caps("CapEff:").count_ones(), 14, "{log}");
    assert_eq!(caps("CapBnd:"), caps("CapEff:"), "{log}");
    assert_eq!(
        caps("CapEff:") & (1 << 21),
        0,
        "CAP_SYS_ADMIN must be gone: {log}"
    );
    // /proc/kcore and its kind are masked by /dev/null: they read as empty.
    let masked: Vec<&str> = log.lines().filter(|l| l.starts_with("masked ")).collect();
    assert!(!masked.is_empty(), "{log}");
    assert!(masked.iter().all(|l| l.ends_with(" 0")), "{log}");
}

#[test]
fn usage_counts_a_busy_containers_cpu_and_memory() {
    if !common::require_root("usage_counts_a_busy_containers_cpu_and_memory") {
        return;
    }
    let node = Node::new(false);
    let sb = node.sandbox("rt-usage", false);
    // 8 MB held in a shell variable, then a busy loop.
    let spec = node.spec(
        "busy",
        "x=$(head -c 8000000 /dev/zero | tr '\\0' a); echo held; while :; do :; done",
    );
    let id = node.rt.start_container(&sb, &spec).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.log(&id).contains("held") {
        assert!(
            Instant::now() < deadline,
            "never filled its memory: {}",
            node.log(&id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = node
        .rt
        .usage(&id)
        .unwrap()
        .expect("a running container has usage");
    std::thread::sleep(Duration::from_millis(500));
    let second = node
        .rt
        .usage(&id)
        .unwrap()
        .expect("a running container has usage");
    let burnt = second.cpu_usage_ns - first.cpu_usage_ns;
    // A busy loop on a 2-core machine gets far more than a tenth of a core in half a second,
    // even under a parallel test run.
    assert!(burnt >= 50_000_000, "only {burnt} ns of cpu in 500 ms");
    assert!(
        second.memory_bytes >= 8_000_000,
        "working set {} bytes, yet 8 MB are held",
        second.memory_bytes
    );
    node.rt.kill(&id).unwrap();
    node.wait_exit(&id, Duration::from_secs(10));
    assert_eq!(
        node.rt.usage(&id).unwrap(),
        None,
        "an exited container has no usage"
    );
}

#[test]
fn a_memory_limit_ends_in_oom_killed() {
    if !common::require_root("a_memory_limit_ends_in_oom_killed") {
        return;
    }
    let node = Node::new(false);
    let sb = node.sandbox("rt-oom", false);
    let mut spec = node.spec(
        "hog",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
    );
    spec.resources.memory_limit_bytes = Some(32 * 1024 * 1024);
    let id = node.rt.start_container(&sb, &spec).unwrap();
    let state = node.wait_exit(&id, Duration::from_secs(30));
    match state {
        ContainerState::Exited {
            oom_killed,
            exit_code,
            ..
        } => {
            assert!(oom_killed, "exit {exit_code}: {}", node.log(&id));
            assert!(!node.log(&id).contains("survived"));
        }
        other => panic!("not exited: {other:?}"),
    }
}

#[test]
fn exec_runs_in_the_container_and_reports_its_exit_code() {
    if !common::require_root("exec_runs_in_the_container_and_reports_its_exit_code") {
        return;
    }
    let node = Node::new(false);
    let sb = node.sandbox("rt-exec", false);
    let id = node
        .rt
        .start_container(&sb, &node.spec("main", "echo ready > /tmp/ready; sleep 30"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let out = loop {
        let out = node
            .rt
            .exec(
                &id,
                &["cat".into(), "/tmp/ready".into()],
                Duration::from_secs(5),
            )
            .unwrap();
        if out.exit_code == Some(0) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        out.exit_code,
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&out.output)
    );
    assert_eq!(out.output, b"ready\n");
    let failed = node
        .rt
        .exec(
            &id,
            &["sh".into(), "-c".into(), "exit 3".into()],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(failed.exit_code, Some(3));
    let slow = node
        .rt
        .exec(
            &id,
            &["sleep".into(), "10".into()],
            Duration::from_millis(200),
        )
        .unwrap();
    assert_eq!(slow.exit_code, None, "a timed-out exec has no exit code");
    node.rt.signal(&id, libc_sigterm()).unwrap();
    let state = node.wait_exit(&id, Duration::from_secs(5));
    // sh as PID 1 ignores SIGTERM without a handler; the kill through the cgroup ends it.
    if exit_code(&state).is_none() {
        node.rt.kill(&id).unwrap();
        let state = node.wait_exit(&id, Duration::from_secs(5));
        assert_eq!(exit_code(&state), Some(137), "{state:?}");
    }
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

#[test]
fn an_empty_dir_is_shared_by_two_containers() {
    if !common::require_root("an_empty_dir_is_shared_by_two_containers") {
        return;
    }
    let node = Node::new(false);
    let sb = node.sandbox("rt-vol", false);
    let vol = tempfile::tempdir().unwrap();
    let mount = BindMount {
        source: vol.path().to_owned(),
        destination: "/shared".into(),
        read_only: false,
    };
    let mut writer = node.spec("writer", "echo hello > /shared/greeting");
    writer.mounts = vec![mount.clone()];
    let w = node.rt.start_container(&sb, &writer).unwrap();
    assert_eq!(
        exit_code(&node.wait_exit(&w, Duration::from_secs(10))),
        Some(0)
    );
    let mut reader = node.spec("reader", "cat /shared/greeting");
    reader.mounts = vec![mount];
    let r = node.rt.start_container(&sb, &reader).unwrap();
    assert_eq!(
        exit_code(&node.wait_exit(&r, Duration::from_secs(10))),
        Some(0)
    );
    assert_eq!(node.log(&r), "hello\n");
}

#[test]
fn an_escaping_working_dir_is_refused() {
    if !common::require_root("an_escaping_working_dir_is_refused") {
        return;
    }
    let node = Node::new(false);
    let sb = node.sandbox("rt-wd", false);
    let mut spec = node.spec("main", "pwd");
    spec.working_dir = Some("/../../../etc".into());
    let err = node.rt.start_container(&sb, &spec).unwrap_err().to_string();
    assert!(err.contains("workingDir") && err.contains(".."), "{err}");
}

/// The nice value of process `pid` (field 19 of its `stat`).
fn nice_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[16].parse().unwrap()
}

/// Starts a container `missing` whose program is not in the image; the start fails and
/// says which program.
fn fails_naming_the_missing_program(node: &Node, sb: &Sandbox) {
    let mut missing = node.spec("missing", "");
    missing.argv = vec!["/bin/no-such-program".into()];
    let err = node
        .rt
        .start_container(sb, &missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/bin/no-such-program"), "{err}");
}

/// The container's PID 1 runs on the shim's memory until its exec (`spawn_init`): one whose
/// exec fails reports why (its fds already closed, nothing may close them again), and leaves
/// the launcher able to start the next.
#[test]
fn a_program_missing_from_the_image_fails_the_start_and_the_next_one_starts() {
    if !common::require_root(
        "a_program_missing_from_the_image_fails_the_start_and_the_next_one_starts",
    ) {
        return;
    }
    let node = Node::new(false);
    let sb = node.sandbox("rt-noprog", false);
    fails_naming_the_missing_program(&node, &sb);

    let mut next = node.spec("next", "echo $((6 * 7))");
    next.attempt = 1;
    let id = node.rt.start_container(&sb, &next).unwrap();
    assert_eq!(
        exit_code(&node.wait_exit(&id, Duration::from_secs(10))),
        Some(0)
    );
    assert_eq!(node.log(&id), "42\n");
}

#[test]
fn a_missing_program_fails_a_warm_start_too_and_leaves_no_exit_record() {
    if !common::require_root("a_missing_program_fails_a_warm_start_too_and_leaves_no_exit_record") {
        return;
    }
    let (node, sb) = Node::with_warm_container("rt-warm-noprog");
    fails_naming_the_missing_program(&node, &sb);
    assert_eq!(node.rt.warm_inits_adopted(), 0);
    let record = common::run_dir(node.state.path())
        .join("sandboxes")
        .join(&sb.key)
        .join("missing.0");
    assert!(!record.exists(), "nothing of the failed start is left");

    assert!(
        wait_until(Duration::from_secs(10), || node.rt.warm_init_pids().len()
            == 1),
        "a refill"
    );
    let id = node
        .rt
        .start_container(&sb, &node.spec("next", "echo $((6 * 7))"))
        .unwrap();
    assert_eq!(
        exit_code(&node.wait_exit(&id, Duration::from_secs(10))),
        Some(0)
    );
    assert_eq!(node.log(&id), "42\n");
    assert_eq!(node.rt.warm_inits_adopted(), 1, "the next one started warm");
}

#[test]
fn httpd_in_a_pod_answers_from_the_host_and_pods_get_distinct_ips() {
    if !common::require_root("httpd_in_a_pod_answers_from_the_host_and_pods_get_distinct_ips") {
        return;
    }
    let node = Node::new(true);
    let a = node.sandbox("rt-web-a", false);
    let b = node.sandbox("rt-web-b", false);
    let (ip_a, ip_b) = (a.pod_ip.unwrap(), b.pod_ip.unwrap());
    assert_ne!(ip_a, ip_b);
    for sb in [&a, &b] {
        let spec = node.spec(
            "web",
            "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www",
        );
        node.rt.start_container(sb, &spec).unwrap();
    }
    for (ip, host) in [(ip_a, "rt-web-a"), (ip_b, "rt-web-b")] {
        let body = http_get(ip, 8080, Duration::from_secs(10));
        assert!(body.ends_with(&format!("{host}\n")), "{ip}: {body}");
    }
}

fn http_get(ip: Ipv4Addr, port: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            write!(s, "GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if !body.is_empty() => return body,
            _ if Instant::now() > deadline => panic!("no answer from {ip}:{port}: {attempt:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The owner recorded for each allocated pod IP of a node's state dir.
fn ipam_owners(state: &Path) -> Vec<(String, String)> {
    let mut owners = Vec::new();
    for entry in std::fs::read_dir(common::run_dir(state).join("ipam"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<Ipv4Addr>().is_ok() {
            let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
            owners.push((name, owner.trim_end().to_owned()));
        }
    }
    owners
}

fn process_alive(pid: u32) -> bool {
    // A killed holder may linger as a zombie until its parent reaps it: that is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ok()
}

#[test]
fn a_warm_sandbox_becomes_the_pods_with_its_hostname_ip_and_cgroup() {
    if !common::require_root("a_warm_sandbox_becomes_the_pods_with_its_hostname_ip_and_cgroup") {
        return;
    }
    let node = Node::with_warm(2);
    assert!(
        node.rt.wait_warm(Duration::from_secs(20)),
        "{:?}",
        node.rt.warm_stats()
    );
    let warm_before = node.rt.warm_pids();
    assert_eq!(warm_before.len(), 2);

    let sb = node.sandbox("rt-warm", false);
    let stats = node.rt.warm_stats().unwrap();
    assert_eq!(stats.taken, 1, "{stats:?}");
    assert_eq!(
        sb.pid, warm_before[0],
        "the oldest warm holder became the pod's"
    );

    // The address is filed under the pod now, not under a warm owner.
    let ip = sb.pod_ip.unwrap();
    let owners = ipam_owners(node.state.path());
    let owner = owners
        .iter()
        .find(|(a, _)| *a == ip.to_string())
        .map(|(_, o)| o.clone());
    assert_eq!(
        owner.as_deref(),
        Some(node.sandboxes.lock().unwrap()[0].as_str()),
        "{owners:?}"
    );

    // The holder is in the pod's sandbox cgroup.
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", sb.pid)).unwrap();
    let key = node.sandboxes.lock().unwrap()[0].clone();
    assert!(
        cgroups.contains(&format!("/coxswain/{key}/sandbox")),
        "{cgroups}"
    );

    // The container sees the pod's hostname and answers at the pod's IP.
    let spec = node.spec(
        "web",
        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    node.rt.start_container(&sb, &spec).unwrap();
    let body = http_get(ip, 8080, Duration::from_secs(10));
    assert!(body.ends_with("rt-warm\n"), "{body}");

    // A warm holder is its launcher's child: once its pod stops, the launcher reaps it
    // without waiting for another request, so its pid leaves /proc.
    let other = node.sandbox("rt-warm-2", false);
    assert_eq!(node.rt.warm_stats().unwrap().taken, 2);
    let other_key = node.sandboxes.lock().unwrap()[1].clone();
    node.rt.stop_sandbox(&other_key).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !Path::new(&format!(
            "/proc/{}",
            other.pid
        ))
        .exists()),
        "the stopped pod's holder {} was not reaped",
        other.pid
    );

    // The agent dies (its launchers with it): sandboxes no pod took go, the pod's stays.
    assert!(
        node.rt.wait_warm(Duration::from_secs(20)),
        "{:?}",
        node.rt.warm_stats()
    );
    let unclaimed = node.rt.warm_pids();
    assert!(!unclaimed.contains(&sb.pid));
    let launchers = node.rt.launcher_pids();
    assert_eq!(launchers.len(), 2, "the pods' launcher and the warm pool's");
    for launcher in launchers {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(launcher).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || unclaimed
            .iter()
            .all(|p| !process_alive(*p))),
        "warm holders {unclaimed:?} outlived their launcher"
    );
    assert!(
        process_alive(sb.pid),
        "the pod's holder died with the launcher"
    );
    let body = http_get(ip, 8080, Duration::from_secs(10));
    assert!(body.ends_with("rt-warm\n"), "{body}");

    // Shutting the pool down leaves no warm address behind.
    node.rt.shutdown_warm();
    let owners = ipam_owners(node.state.path());
    assert!(
        owners.iter().all(|(_, o)| !o.starts_with("warm-")),
        "{owners:?}"
    );
}

#[test]
fn a_warm_sandbox_takes_the_pods_resources_with_its_cgroup() {
    if !common::require_root("a_warm_sandbox_takes_the_pods_resources_with_its_cgroup") {
        return;
    }
    let node = Node::with_warm(1);
    assert!(
        node.rt.wait_warm(Duration::from_secs(20)),
        "{:?}",
        node.rt.warm_stats()
    );
    let key = format!("test_rt-warm-res_{}", std::process::id());
    node.sandboxes.lock().unwrap().push(key.clone());
    let resources = Resources {
        cpu_limit_millis: Some(500),
        memory_limit_bytes: Some(256 << 20),
        ..Resources::default()
    };
    let sb = node
        .rt
        .run_sandbox(&SandboxSpec {
            key: key.clone(),
            hostname: "rt-warm-res".to_owned(),
            host_network: false,
            share_process_namespace: false,
            resources,
        })
        .unwrap();
    assert_eq!(node.rt.warm_stats().unwrap().taken, 1);
    let pod = Cgroup::open(&format!("coxswain/{key}")).unwrap().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", sb.pid)).unwrap();
    assert!(
        cgroups.contains(&format!("/coxswain/{key}/sandbox")),
        "{cgroups}"
    );
    let file = |controller: &str, v1: &str, v2: &str| {
        let dir = pod
            .paths()
            .iter()
            .find(|d| d.controllers.iter().any(|c| c == controller))
            .unwrap()
            .path
            .clone();
        let name = match pod.version() {
            CgroupVersion::V1 => v1,
            CgroupVersion::V2 => v2,
        };
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        file("memory", "memory.limit_in_bytes", "memory.max"),
        (256u64 << 20).to_string()
    );
    let quota = file("cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(quota.starts_with("50000"), "{quota}");
}

#[test]
fn addresses_of_a_dead_agents_warm_sandboxes_are_freed_on_start() {
    if !common::require_root("addresses_of_a_dead_agents_warm_sandboxes_are_freed_on_start") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let tag = (std::process::id() % 1000) * 16 + n;
    let cidr: ipnet::Ipv4Net = format!("10.123.{}.0/24", tag % 250).parse().unwrap();
    let network = BridgeConfig {
        name: format!("cxr{tag}"),
        cidr,
    };
    // What an agent killed with SIGKILL leaves: an address filed under a warm owner, and one
    // of a pod, which must stay.
    let ipam = common::run_dir(state.path()).join("ipam");
    std::fs::create_dir_all(&ipam).unwrap();
    let base = u32::from(cidr.network());
    let (stale, pod) = (Ipv4Addr::from(base + 50), Ipv4Addr::from(base + 51));
    std::fs::write(ipam.join(stale.to_string()), "warm-999999-7\n").unwrap();
    std::fs::write(ipam.join(pod.to_string()), "some-pod\n").unwrap();
    let rt = runtime(state.path(), Some(network), 0, 0);
    let owners = ipam_owners(state.path());
    if let Some(bridge) = rt.bridge() {
        bridge.teardown().unwrap();
    }
    assert_eq!(owners, vec![(pod.to_string(), "some-pod".to_owned())]);
}

/// The mount points of this process's mount namespace (the host's) under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_container_on_a_warm_layer_gets_a_fresh_root_and_the_layer_goes_with_it() {
    if !common::require_root(
        "a_container_on_a_warm_layer_gets_a_fresh_root_and_the_layer_goes_with_it",
    ) {
        return;
    }
    let node = Node::build(false, 0, 1);
    let state = node.state.path().to_owned();
    let sb = node.sandbox("rt-layer", false);
    // The first container of the image finds no layer ready and makes its own.
    let first = node
        .rt
        .start_container(
            &sb,
            &node.spec("first", "echo first > /written; cat /written"),
        )
        .unwrap();
    assert_eq!(
        exit_code(&node.wait_exit(&first, Duration::from_secs(10))),
        Some(0)
    );
    assert_eq!(node.log(&first), "first\n");
    let stats = node.rt.layer_stats().unwrap();
    assert_eq!((stats.taken, stats.missed), (0, 1), "{stats:?}");
    // The pool then mounts one over the image, in the host's namespace.
    assert!(
        wait_until(Duration::from_secs(10), || node
            .rt
            .warm_layers_ready(&node.busybox)
            == 1),
        "a warm layer over busybox"
    );
    let warm_mounts = mounts_under(&state.join("layers"));
    assert_eq!(warm_mounts.len(), 1, "{warm_mounts:?}");
    // The next container takes it: a root of its own (nothing the first wrote), writable.
    let second = node
        .rt
        .start_container(
            &sb,
            &node.spec(
                "second",
                "test ! -e /written && echo mine > /mine && cat /mine && hostname && echo $$ \
                 && ls /sys/class/net && grep -o ' /dev/mqueue mqueue' /proc/mounts \
                 && grep NoNewPrivs /proc/self/status && ls /proc/self/fd \
                 && cut -d' ' -f19 /proc/self/stat",
            ),
        )
        .unwrap();
    assert_eq!(
        exit_code(&node.wait_exit(&second, Duration::from_secs(10))),
        Some(0)
    );
    // It started from the warm container made on that layer: PID 1 of its own namespace,
    // with the pod's hostname, `/sys` of the pod's network namespace (only `lo`, where the
    // host has more), the pod's message queues, the same hardening as a cold start, and the
    // normal priority (nice 0), not that of the refill it was made in.
    assert_eq!(
        node.log(&second),
        "mine\nrt-layer\n1\nlo\n /dev/mqueue mqueue\nNoNewPrivs:\t1\n0\n1\n2\n3\n0\n"
    );
    assert_eq!(node.rt.layer_stats().unwrap().taken, 1);
    assert_eq!(node.rt.warm_inits_adopted(), 1);
    // The launcher (there is no warm sandbox pool here, so no second one) is at the normal
    // priority, whichever thread happened to start it: its cold containers inherit it.
    let launchers = node.rt.launcher_pids();
    assert_eq!(launchers.len(), 1, "{launchers:?}");
    assert_eq!(nice_of(launchers[0]), 0);
    let second_dir = state
        .join("containers")
        .join(format!("{}.second.0", sb.key));
    assert_eq!(
        mounts_under(&second_dir),
        vec![second_dir.join("merged").to_string_lossy().into_owned()],
        "the taken layer is the container's root, mounted in its directory"
    );
    let second_record = common::run_dir(&state)
        .join("sandboxes")
        .join(&sb.key)
        .join("second.0");
    assert!(second_record.join("container.json").exists());
    assert!(
        second_dir.join("upper/mine").exists(),
        "what the container wrote is in its own upper layer"
    );
    // Removing the container unmounts its layer; stopping the pool, the ones not taken.
    node.rt.remove_container(&second).unwrap();
    assert_eq!(mounts_under(&second_dir), Vec::<String>::new());
    assert!(!second_dir.exists());
    assert!(!second_record.exists());
    assert!(
        wait_until(Duration::from_secs(10), || node
            .rt
            .warm_layers_ready(&node.busybox)
            == 1),
        "a refill"
    );
    node.rt.shutdown_warm();
    assert_eq!(mounts_under(&state), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(state.join("layers")).unwrap().count(), 0);
}

#[test]
fn a_container_with_a_volume_on_a_warm_layer_starts_cold_and_its_warm_process_ends() {
    if !common::require_root(
        "a_container_with_a_volume_on_a_warm_layer_starts_cold_and_its_warm_process_ends",
    ) {
        return;
    }
    let (node, sb) = Node::with_warm_container("rt-warm-vol");
    let warm = node.rt.warm_init_pids();
    // Made ahead at the refills' lower priority.
    for pid in &warm {
        assert_eq!(nice_of(*pid), 10);
    }
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("in"), "from the host\n").unwrap();
    let mut spec = node.spec("second", "cat /vol/in");
    spec.mounts = vec![BindMount {
        source: vol.path().to_owned(),
        destination: "/vol".into(),
        read_only: true,
    }];
    let second = node.rt.start_container(&sb, &spec).unwrap();
    assert_eq!(
        exit_code(&node.wait_exit(&second, Duration::from_secs(10))),
        Some(0)
    );
    assert_eq!(node.log(&second), "from the host\n");
    assert_eq!(node.rt.layer_stats().unwrap().taken, 1, "it took the layer");
    assert_eq!(node.rt.warm_inits_adopted(), 0, "but not the warm process");
    assert!(
        wait_until(Duration::from_secs(10), || warm
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())),
        "the warm process it did not use ended: {warm:?}"
    );
    // The pool's next warm container, too, ends with the pool.
    assert!(
        wait_until(Duration::from_secs(10), || node.rt.warm_init_pids().len()
            == 1),
        "a refill"
    );
    let refill = node.rt.warm_init_pids();
    node.rt.shutdown_warm();
    assert!(
        wait_until(Duration::from_secs(10), || refill
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())),
        "the pool's warm process ended with it: {refill:?}"
    );
}

#[test]
fn warm_layers_a_dead_agent_left_are_unmounted_and_removed_on_start() {
    if !common::require_root("warm_layers_a_dead_agent_left_are_unmounted_and_removed_on_start") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let busybox = busybox();
    // What an agent killed with SIGKILL leaves: a layer mounted over the image.
    let stale = state.path().join("layers/7");
    for sub in ["upper", "work", "merged"] {
        std::fs::create_dir_all(stale.join(sub)).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        busybox.display(),
        stale.join("upper").display(),
        stale.join("work").display()
    );
    let mounted = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(stale.join("merged"))
        .status()
        .unwrap();
    assert!(mounted.success());
    assert_eq!(mounts_under(state.path()).len(), 1);
    let rt = runtime(state.path(), None, 0, 0);
    assert_eq!(mounts_under(state.path()), Vec::<String>::new());
    assert!(!stale.exists());
    drop(rt);
}

#[test]
fn layers_of_containers_with_no_record_are_removed_on_start_and_the_others_kept() {
    if !common::require_root(
        "layers_of_containers_with_no_record_are_removed_on_start_and_the_others_kept",
    ) {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    // After a reboot the run dir's tmpfs is empty, but the layers on disk are still there;
    // a container whose record survived (an agent restart) keeps its layer.
    let containers = state.path().join("containers");
    let kept = containers.join("default_web.v1_u1.app.0");
    let orphan = containers.join("default_gone_u2.app.3");
    for layer in [&kept, &orphan] {
        std::fs::create_dir_all(layer.join("upper")).unwrap();
        std::fs::write(layer.join("upper/data"), "written").unwrap();
    }
    let stray = containers.join("not-a-layer-name");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::create_dir_all(
        common::run_dir(state.path()).join("sandboxes/default_web.v1_u1/app.0"),
    )
    .unwrap();
    let rt = runtime(state.path(), None, 0, 0);
    assert!(
        kept.join("upper/data").exists(),
        "a recorded container's layer stays"
    );
    assert!(!orphan.exists(), "a layer with no record goes");
    assert!(!stray.exists(), "a name no container has goes");
    drop(rt);
}

#[test]
fn the_run_dir_gets_a_tmpfs_once_and_keeps_one_it_is_on() {
    if !common::require_root("the_run_dir_gets_a_tmpfs_once_and_keeps_one_it_is_on") {
        return;
    }
    let tmpfs = nix::sys::statfs::TMPFS_MAGIC;
    let on_tmpfs = |p: &Path| nix::sys::statfs::statfs(p).unwrap().filesystem_type() == tmpfs;
    // /var/tmp is on disk on a Debian machine like CI's; the test needs that to mean anything.
    let parent = tempfile::tempdir_in("/var/tmp").unwrap();
    assert!(!on_tmpfs(parent.path()), "/var/tmp is on disk here");
    let run = parent.path().join("run");
    assert!(
        prepare_run_dir(&run).unwrap(),
        "a tmpfs is mounted on a run dir on disk"
    );
    let _unmount = Unmount(run.clone());
    assert!(on_tmpfs(&run));
    assert!(
        !prepare_run_dir(&run).unwrap(),
        "an agent that restarts finds its tmpfs (and its records) and mounts no second one"
    );
    assert_eq!(mounts_under(parent.path()).len(), 1);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&run), 0o700, "container records are root's alone");
    // A run dir on a tmpfs already (as /run is under systemd) gets no mount, and the same mode.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let run = shm.path().join("run");
    assert!(!prepare_run_dir(&run).unwrap());
    assert_eq!(mounts_under(shm.path()), Vec::<String>::new());
    assert_eq!(mode(&run), 0o700);
}

/// Unmounts a test's tmpfs, also when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
