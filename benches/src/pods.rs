//! `coxswain-bench pods`: how fast this machine starts pods through the real Linux runtime
//! (namespaces, cgroups, a veth on a bridge with a pod IP, an overlay root and the exec of
//! busybox `httpd`), beside `runc run` of the same busybox rootfs and a bare `unshare`, run in
//! the same process on the same machine.
//!
//! A "pod start" here is what the agent does per bound pod once it has seen it:
//! `run_sandbox` then `start_container` on [`LinuxRuntime`]. The clock starts just before
//! `run_sandbox`; "exec'd" is when `start_container` returns (the runtime returns once the
//! container's process has exec'd); "Ready" is when a TCP connect to the pod IP's port 8080
//! first succeeds, which is what a `tcpSocket` readiness probe would see. Timings are printed,
//! never asserted.
//!
//! Last, the idle RSS of a real `coxswain agent`: a one-member `coxswain server` and an agent
//! registered with it, with no pod, measured a few seconds after registration.
//!
//! Everything the run creates is its own (a temp state dir, a bridge and pod CIDR named after
//! the process id, runc's state in a temp dir) and is removed at the end by drop guards, also
//! when a step fails.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use coxswain_node::cgroup::{CgroupVersion, Resources};
use coxswain_node::image::{DEFAULT_ROOT, ImageStore};
use coxswain_node::net::{self, BridgeConfig};
use coxswain_node::runtime::linux::{
    DEFAULT_WARM_LAYERS, DEFAULT_WARM_SANDBOXES, LinuxConfig, LinuxRuntime, prepare_run_dir,
};
use coxswain_node::runtime::{
    ContainerId, ContainerSpec, Rootfs, Runtime, Sandbox, SandboxSpec, launcher, sandbox_key,
};
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::Value;

use crate::common::{RunDirMount, bar, ms, wait_line};
use crate::rss::Rss;
use crate::store::{TOKEN, start_coxswain};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A smaller run that ends well within a minute: 20 pods and 10 runs of each peer.
    #[arg(long)]
    quick: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The coxswain binary the runtime starts as its launcher; by default the `coxswain` next
    /// to this executable.
    #[arg(long, value_name = "PATH")]
    coxswain: Option<PathBuf>,
}

/// The targets of the node agent issue, on the 2-core reference machine.
const TARGET_EXEC_P50_MS: f64 = 5.0;
const TARGET_FASTER_THAN_RUNC: f64 = 5.0;
const TARGET_STARTS_PER_S: f64 = 200.0;
const TARGET_AGENT_RSS_MIB: f64 = 10.0;

const IMAGE: &str = "busybox:latest";
/// Debian's runc, the peer the issue names.
const RUNC: &str = "/usr/sbin/runc";
const UNSHARE_CANDIDATES: [&str; 2] = ["/usr/bin/unshare", "/bin/unshare"];
const UNSHARE_ARGS: [&str; 7] = [
    "--fork",
    "--pid",
    "--mount",
    "--uts",
    "--ipc",
    "--net",
    "/bin/true",
];

/// The port busybox `httpd` listens on in every pod.
const PORT: u16 = 8080;
/// How often readiness is polled: well below the figures measured, so polling adds at most
/// this much to a sample.
const READY_POLL: Duration = Duration::from_micros(200);
/// One connect attempt: a refused connect comes back at once, so this only bounds a lost SYN.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a pod may take to answer before the run is called broken.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The threads of the parallel starts run: one per core of the reference machine.
const THREADS: usize = 2;
/// How long a run waits for the warm pool to fill before it starts.
const WARM_FILL_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before a failed `stop_sandbox` is tried again.
const STOP_RETRY_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    /// `debug` or `release`: the figures only mean something in a release build.
    build: &'static str,
    cores: usize,
    kernel: String,
    cgroup: String,
    launcher: String,
    image: String,
    /// Pods per run (latency, sequential starts, parallel starts).
    pods: usize,
    /// What one pod start covers, in words.
    measures: &'static str,
    /// The warm-up pod, not in any other figure: start → Ready including the launcher's own
    /// start (a real agent starts it once, at boot) and cold caches.
    first_pod_ms: f64,
    latency: Latency,
    /// The same latency run on a runtime without a warm pool: every sandbox made cold.
    cold: ColdLatency,
    warm: WarmReport,
    throughput: Throughput,
    runc: Peer,
    unshare: Peer,
    launcher_rss: Option<LauncherRss>,
    agent_idle_rss: Rss,
    target_agent_rss_mib: f64,
}

/// Latency figures of one kind of sample.
#[derive(Debug, Serialize)]
struct Stats {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
    /// `run_sandbox` + `start_container`: namespaces, cgroups, veth and IP, overlay root, exec.
    start_to_exec: Stats,
    /// Of which `run_sandbox`.
    sandbox: Stats,
    /// Of which `start_container`.
    container: Stats,
    /// Until a TCP connect to the pod's port 8080 succeeds.
    start_to_ready: Stats,
    /// `stop_sandbox` of a pod with its running container, over every run (a retried stop
    /// counts both attempts).
    stop: Stats,
    /// Stops whose first `stop_sandbox` failed and that a second attempt completed: a runtime
    /// defect the figures would otherwise hide.
    stop_retried: usize,
    stop_first_failure: Option<String>,
    target_exec_p50_ms: f64,
}

#[derive(Debug, Serialize)]
struct ColdLatency {
    start_to_exec: Stats,
    sandbox: Stats,
    container: Stats,
}

/// How the warm sandbox pool served each run. Each run starts from a full pool, as after an
/// agent has been idle for a moment.
#[derive(Debug, Serialize)]
struct WarmReport {
    /// Sandboxes kept ready (the agent's default).
    pool: usize,
    /// Pods of the latency run whose sandbox was taken warm.
    latency_taken: u64,
    sequential_taken: u64,
    parallel_taken: u64,
    /// Warm sandboxes made over the whole run, and attempts that failed.
    made: u64,
    failed: u64,
    /// Container layers kept mounted ahead per image (the agent's default).
    layers: usize,
    /// Containers of each run that took a warm layer.
    latency_layers_taken: u64,
    sequential_layers_taken: u64,
    parallel_layers_taken: u64,
    /// Containers of the latency run that started from the warm PID 1 made on their layer.
    latency_inits_adopted: u64,
    /// Warm layers made over the whole run, and attempts that failed.
    layers_made: u64,
    layers_failed: u64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    pods: usize,
    sequential_ms: f64,
    sequential_per_s: f64,
    threads: usize,
    parallel_ms: f64,
    parallel_per_s: f64,
    best_per_s: f64,
    target_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Peer {
    command: String,
    /// What one sample covers.
    covers: &'static str,
    /// `None` when the peer is not installed (see `skipped`).
    stats: Option<Stats>,
    skipped: Option<String>,
    /// The peer's p50 over our start → exec'd p50.
    coxswain_faster_by: Option<f64>,
    target_faster_by: Option<f64>,
}

#[derive(Debug, Serialize)]
struct LauncherRss {
    /// What this is: the launcher, one part of the agent (the agent is measured apart).
    what: &'static str,
    pid: u32,
    /// `VmRSS` once every pod is stopped.
    rss_kib: u64,
    /// `VmHWM`: its peak over the run.
    peak_kib: u64,
    /// The target for the whole agent at idle; not compared, as this is one part.
    agent_target_mib: f64,
}

/// Nearest-rank percentiles; an empty sample reports zeros rather than panicking.
fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let at = |p: f64| {
        let last = samples.len().saturating_sub(1);
        let i = ((last as f64) * p).round() as usize;
        samples.get(i.min(last)).copied().map_or(0.0, ms)
    };
    Stats {
        samples: samples.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// Removes the bench's bridge and its nftables table when dropped. Made before the runtime
/// (which creates the bridge), so it also cleans up after a runtime that failed half way.
#[derive(Debug)]
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if let Err(e) = net::teardown(&self.0) {
            eprintln!("cleanup: tearing down bridge {}: {e}", self.0);
        }
    }
}

/// The runtime under test, with every pod that may be running; dropping it stops them.
#[derive(Debug)]
struct Node {
    rt: LinuxRuntime,
    container: ContainerSpec,
    /// Warm layers the runtime keeps per image.
    warm_layers: usize,
    /// A key goes in before its sandbox starts, so a start that fails half way is cleaned up.
    live: Mutex<Vec<String>>,
    /// First attempts of `stop_sandbox` that failed (and were retried), with the error.
    stop_failures: Mutex<Vec<String>>,
    /// Unmounted after the runtime is gone, before the state dir that holds it goes.
    _run: RunDirMount,
    /// Declared last: removed after the runtime (and its launcher) are gone.
    _state: tempfile::TempDir,
}

/// One pod start: when it began and how long each call took.
#[derive(Debug)]
struct Started {
    sandbox: Sandbox,
    id: ContainerId,
    at: Instant,
    sandbox_time: Duration,
    exec_time: Duration,
    /// Whether its sandbox came from the warm pool (only exact when one pod starts at a time).
    warm: bool,
    /// Whether its container took a warm layer (as exact).
    warm_layer: bool,
}

impl Node {
    fn new(
        launcher: &Path,
        busybox: &Path,
        network: BridgeConfig,
        warm_sandboxes: usize,
        warm_layers: usize,
    ) -> anyhow::Result<Node> {
        let state = tempfile::tempdir().context("creating the runtime's state dir")?;
        // A tmpfs, as the agent has it.
        let run = RunDirMount(state.path().join("run"));
        prepare_run_dir(&run.0).context("preparing the runtime's run dir")?;
        let rt = LinuxRuntime::new(LinuxConfig {
            state_dir: state.path().to_owned(),
            run_dir: run.0.clone(),
            launcher: launcher.to_owned(),
            network: Some(network),
            // A bound like a node's `podPidsLimit`, so the pids controller is configured as
            // it would be on a real node.
            pids_max: Some(1024),
            warm_sandboxes,
            warm_layers,
        })
        .context("opening the Linux runtime")?;
        // A small web pod as one would write it: a cpu request and a memory limit, so each
        // start configures the cpu and memory controllers as well.
        let resources = Resources {
            cpu_request_millis: Some(100),
            memory_limit_bytes: Some(64 * 1024 * 1024),
            ..Resources::default()
        };
        let container = ContainerSpec {
            name: "web".into(),
            attempt: 0,
            rootfs: Rootfs::Image(busybox.to_owned()),
            argv: ["httpd", "-f", "-p", "8080", "-h", "/"]
                .map(String::from)
                .to_vec(),
            env: vec![("PATH".into(), "/bin".into())],
            working_dir: None,
            user: None,
            group: None,
            mounts: vec![],
            resources,
            read_only_root_filesystem: false,
            add_capabilities: vec![],
            drop_capabilities: vec![],
        };
        Ok(Node {
            rt,
            container,
            warm_layers,
            live: Mutex::new(Vec::new()),
            stop_failures: Mutex::new(Vec::new()),
            _run: run,
            _state: state,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_failures(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.stop_failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the agent will do for one bound pod: its sandbox, then its container.
    fn start_pod(&self, run: &str, n: usize) -> anyhow::Result<Started> {
        let name = format!("{run}-{n}");
        // Unique to this process and run, made as the agent makes it from a pod's uid.
        let key = sandbox_key("bench", &name, &format!("{}-{name}", std::process::id()));
        self.live().push(key.clone());
        let spec = SandboxSpec {
            key: key.clone(),
            hostname: name,
            host_network: false,
            share_process_namespace: false,
            resources: self.container.resources,
        };
        let taken_before = self.warm_taken();
        let layers_before = self.layers_taken();
        let at = Instant::now();
        let sandbox = self
            .rt
            .run_sandbox(&spec)
            .with_context(|| format!("run_sandbox {key}"))?;
        let sandbox_time = at.elapsed();
        let id = self
            .rt
            .start_container(&sandbox, &self.container)
            .with_context(|| format!("start_container in {key}"))?;
        let exec_time = at.elapsed();
        Ok(Started {
            sandbox,
            id,
            at,
            sandbox_time,
            exec_time,
            warm: self.warm_taken() > taken_before,
            warm_layer: self.layers_taken() > layers_before,
        })
    }

    fn warm_taken(&self) -> u64 {
        self.rt.warm_stats().map_or(0, |w| w.taken)
    }

    fn layers_taken(&self) -> u64 {
        self.rt.layer_stats().map_or(0, |l| l.taken)
    }

    /// Lets the pools fill, as they would on an agent idle for a moment; a pool that cannot
    /// fill in that time is reported by its counts, not hidden.
    fn let_warm_fill(&self) {
        let deadline = Instant::now() + WARM_FILL_TIMEOUT;
        self.rt.wait_warm(WARM_FILL_TIMEOUT);
        if let Rootfs::Image(image) = &self.container.rootfs {
            while self.rt.warm_layers_ready(image) < self.warm_layers && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Waits until the pod answers a TCP connect on [`PORT`]; returns when it first did.
    fn wait_ready(&self, pod: &Started) -> anyhow::Result<Instant> {
        let ip = pod
            .sandbox
            .pod_ip
            .with_context(|| format!("pod {} got no IP", pod.sandbox.key))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match connect(ip) {
                Ok(at) => return Ok(at),
                Err(_) if Instant::now() < deadline => std::thread::sleep(READY_POLL),
                Err(e) => {
                    let state = self.rt.container_state(&pod.id);
                    let log = fs::read_to_string(self.rt.log_path(&pod.id)).unwrap_or_default();
                    bail!(
                        "pod {} ({ip}) did not answer on port {PORT} within {READY_TIMEOUT:?}: \
                         {e}; its container is {state:?}; its log: {log:?}",
                        pod.sandbox.key
                    );
                }
            }
        }
    }

    /// Stops every pod started so far; returns how long each `stop_sandbox` took.
    fn stop_all(&self) -> anyhow::Result<Vec<Duration>> {
        let keys = std::mem::take(&mut *self.live());
        let mut times = Vec::with_capacity(keys.len());
        for (n, key) in keys.iter().enumerate() {
            let started = Instant::now();
            // `stop_sandbox` is idempotent, so a failed attempt is tried once more; the failure
            // is recorded for the report rather than hidden.
            let stopped = self.rt.stop_sandbox(key).or_else(|first| {
                self.stop_failures().push(format!("{key}: {first}"));
                std::thread::sleep(STOP_RETRY_PAUSE);
                self.rt.stop_sandbox(key)
            });
            if let Err(e) = stopped {
                // This one and the rest are left to the drop guard, which tries once more.
                self.live().extend(keys[n..].iter().cloned());
                return Err(e).with_context(|| format!("stop_sandbox {key}"));
            }
            times.push(started.elapsed());
        }
        Ok(times)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for key in std::mem::take(&mut *self.live()) {
            if let Err(e) = self.rt.stop_sandbox(&key) {
                eprintln!("cleanup: stopping pod {key}: {e}");
            }
        }
    }
}

/// One TCP connect to the pod; the time it succeeded.
fn connect(ip: Ipv4Addr) -> std::io::Result<Instant> {
    let stream = TcpStream::connect_timeout(&SocketAddr::from((ip, PORT)), CONNECT_TIMEOUT)?;
    let at = Instant::now();
    drop(stream);
    Ok(at)
}

/// Sample counts of one mode.
#[derive(Debug)]
struct Plan {
    pods: usize,
    peer_runs: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "coxswain-bench pods needs root: it creates namespaces, cgroups, a bridge with \
             veths and nftables rules, and runs runc (run it as root or with sudo)"
        );
    }
    let plan = if args.quick {
        Plan {
            pods: 20,
            peer_runs: 10,
        }
    } else {
        Plan {
            pods: 100,
            peer_runs: 100,
        }
    };
    let hidden = args.json;

    let launcher = match &args.coxswain {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("coxswain"),
    };
    if !launcher.is_file() {
        bail!(
            "the launcher {} is missing: build it with cargo build --release --workspace --bins \
             (or point --coxswain at a coxswain binary)",
            launcher.display()
        );
    }
    let launcher = std::path::absolute(&launcher)
        .with_context(|| format!("resolving {}", launcher.display()))?;
    let store = ImageStore::open(Path::new(DEFAULT_ROOT))
        .with_context(|| format!("opening the image store {DEFAULT_ROOT}"))?;
    let busybox = store
        .get(IMAGE)?
        .with_context(|| {
            format!("{IMAGE} is not in the image store {DEFAULT_ROOT}: scripts/dev.sh imports it")
        })?
        .rootfs;

    // Named after the process, so two runs (or a run and a crashed one's leftovers) never
    // share a bridge; a /24 holds the 100 pods of a run with room for the round-robin IPAM.
    let pid = std::process::id();
    let network = BridgeConfig {
        name: format!("cxb{}", pid % 10_000),
        cidr: format!("10.124.{}.0/24", pid % 250).parse()?,
    };
    let _bridge = BridgeGuard(network.name.clone());
    let node = Node::new(
        &launcher,
        &busybox,
        network.clone(),
        DEFAULT_WARM_SANDBOXES,
        DEFAULT_WARM_LAYERS,
    )?;

    // The first pod also starts the launcher and warms the page cache; a real agent pays that
    // once, at boot, so it is reported apart.
    let first = node.start_pod("first", 0)?;
    let first_pod = node.wait_ready(&first)?.saturating_duration_since(first.at);
    let mut stops = node.stop_all()?;

    node.let_warm_fill();
    let pb = bar(plan.pods as u64, "pod start → Ready, one by one", hidden);
    let adopted_before = node.rt.warm_inits_adopted();
    let lat = latency_run(&node, "lat", plan.pods, &pb)?;
    let latency_inits_adopted = node.rt.warm_inits_adopted() - adopted_before;
    pb.finish_and_clear();
    stops.extend(node.stop_all()?);
    let latency_taken = lat.warm;
    let latency_layers_taken = lat.warm_layers;

    let pb = bar(
        plan.pods as u64 * 2,
        "pod starts, as fast as possible",
        hidden,
    );
    node.let_warm_fill();
    let (before, layers_before) = (node.warm_taken(), node.layers_taken());
    let sequential = starts_sequential(&node, plan.pods, &pb)?;
    let sequential_taken = node.warm_taken() - before;
    let sequential_layers_taken = node.layers_taken() - layers_before;
    stops.extend(node.stop_all()?);
    node.let_warm_fill();
    let (before, layers_before) = (node.warm_taken(), node.layers_taken());
    let parallel = starts_parallel(&node, plan.pods, &pb)?;
    let parallel_taken = node.warm_taken() - before;
    let parallel_layers_taken = node.layers_taken() - layers_before;
    stops.extend(node.stop_all()?);
    pb.finish_and_clear();
    let warm_stats = node.rt.warm_stats().unwrap_or_default();
    let layer_stats = node.rt.layer_stats().unwrap_or_default();

    // Every pod is stopped: the launcher is as idle as it gets.
    let launcher_rss = launcher_rss()?;
    let stop_failures = std::mem::take(&mut *node.stop_failures());
    drop(node);

    // The same latency run without the warm pools, on the same bridge (the first runtime's
    // pods are all gone), so the pools' share of the figures is seen in one run.
    let cold_node = Node::new(&launcher, &busybox, network, 0, 0)?;
    let first = cold_node.start_pod("cold-first", 0)?;
    cold_node.wait_ready(&first)?;
    let pb = bar(
        plan.pods as u64,
        "pod start → Ready, warm pools off",
        hidden,
    );
    let cold = latency_run(&cold_node, "cold", plan.pods, &pb)?;
    pb.finish_and_clear();
    drop(cold_node);

    let agent_idle_rss = agent_idle_rss(&launcher, hidden)?;

    let exec = stats(lat.exec);
    let runc = runc_peer(&busybox, plan.peer_runs, exec.p50_ms, hidden)?;
    let unshare = unshare_peer(plan.peer_runs, exec.p50_ms, hidden)?;

    let per_s = |d: Duration| plan.pods as f64 / d.as_secs_f64().max(f64::EPSILON);
    let report = Report {
        mode: if args.quick { "quick" } else { "full" },
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cgroup: match CgroupVersion::detect() {
            CgroupVersion::V1 => "v1".into(),
            CgroupVersion::V2 => "v2".into(),
        },
        launcher: launcher.display().to_string(),
        image: format!("{IMAGE} ({})", busybox.display()),
        pods: plan.pods,
        measures: "run_sandbox (pid, mount, uts, ipc and net namespaces; pod and sandbox \
                   cgroups; a veth on the bridge with the pod IP and its route) then \
                   start_container (container cgroup with cpu, memory and pids settings, overlay \
                   root, /proc /dev /sys, capabilities, exec of busybox httpd), on LinuxRuntime \
                   as the agent calls it per bound pod",
        first_pod_ms: ms(first_pod),
        latency: Latency {
            start_to_exec: exec,
            sandbox: stats(lat.sandbox),
            container: stats(lat.container),
            start_to_ready: stats(lat.ready),
            stop: stats(stops),
            stop_retried: stop_failures.len(),
            stop_first_failure: stop_failures.first().cloned(),
            target_exec_p50_ms: TARGET_EXEC_P50_MS,
        },
        cold: ColdLatency {
            start_to_exec: stats(cold.exec),
            sandbox: stats(cold.sandbox),
            container: stats(cold.container),
        },
        warm: WarmReport {
            pool: DEFAULT_WARM_SANDBOXES,
            latency_taken,
            sequential_taken,
            parallel_taken,
            made: warm_stats.made,
            failed: warm_stats.failed,
            layers: DEFAULT_WARM_LAYERS,
            latency_layers_taken,
            sequential_layers_taken,
            parallel_layers_taken,
            latency_inits_adopted,
            layers_made: layer_stats.made,
            layers_failed: layer_stats.failed,
        },
        throughput: Throughput {
            pods: plan.pods,
            sequential_ms: ms(sequential),
            sequential_per_s: per_s(sequential),
            threads: THREADS,
            parallel_ms: ms(parallel),
            parallel_per_s: per_s(parallel),
            best_per_s: per_s(sequential).max(per_s(parallel)),
            target_per_s: TARGET_STARTS_PER_S,
        },
        runc,
        unshare,
        launcher_rss,
        agent_idle_rss,
        target_agent_rss_mib: TARGET_AGENT_RSS_MIB,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

/// The samples of one latency run.
#[derive(Debug, Default)]
struct LatencyRun {
    sandbox: Vec<Duration>,
    container: Vec<Duration>,
    exec: Vec<Duration>,
    ready: Vec<Duration>,
    /// How many sandboxes came from the warm pool.
    warm: u64,
    /// How many containers took a warm layer.
    warm_layers: u64,
}

/// Starts `pods` pods one at a time, each waited for until Ready before the next.
fn latency_run(
    node: &Node,
    run: &str,
    pods: usize,
    pb: &ProgressBar,
) -> anyhow::Result<LatencyRun> {
    let mut r = LatencyRun::default();
    for n in 0..pods {
        let pod = node.start_pod(run, n)?;
        let at = node.wait_ready(&pod)?;
        r.sandbox.push(pod.sandbox_time);
        r.container
            .push(pod.exec_time.saturating_sub(pod.sandbox_time));
        r.exec.push(pod.exec_time);
        r.ready.push(at.saturating_duration_since(pod.at));
        r.warm += u64::from(pod.warm);
        r.warm_layers += u64::from(pod.warm_layer);
        pb.inc(1);
    }
    Ok(r)
}

/// Starts `pods` pods one after another with no wait between them; the clock stops when the
/// last has exec'd. Each is then checked to answer, off the clock, so a start that only
/// looked successful cannot count.
fn starts_sequential(node: &Node, pods: usize, pb: &ProgressBar) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut all = Vec::with_capacity(pods);
    for n in 0..pods {
        all.push(node.start_pod("seq", n)?);
        pb.inc(1);
    }
    let took = started.elapsed();
    for pod in &all {
        node.wait_ready(pod)?;
    }
    Ok(took)
}

/// As [`starts_sequential`], with [`THREADS`] threads sharing one runtime (as the agent's
/// blocking pool will).
fn starts_parallel(node: &Node, pods: usize, pb: &ProgressBar) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let all = std::thread::scope(|s| -> anyhow::Result<Vec<Started>> {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || -> anyhow::Result<Vec<Started>> {
                    let mut mine = Vec::new();
                    for n in (t..pods).step_by(THREADS) {
                        mine.push(node.start_pod("par", n)?);
                        pb.inc(1);
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(pods);
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow!("a start thread panicked"))??);
        }
        Ok(all)
    })?;
    let took = started.elapsed();
    for pod in &all {
        node.wait_ready(pod)?;
    }
    Ok(took)
}

/// Stops (SIGINT, then SIGKILL after 10 s) and reaps a child on drop, so a failed step
/// leaves no agent behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap_or(i32::MAX)),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The idle RSS of `coxswain agent`: a one-member `coxswain server` in a temp dir, and an
/// agent (own state dir, bridge and pod CIDR) registered with it and running no pod.
fn agent_idle_rss(coxswain: &Path, hidden: bool) -> anyhow::Result<Rss> {
    let pb = bar(1, "agent idle RSS", hidden);
    let dir = tempfile::tempdir().context("making a temp dir")?;
    let run = RunDirMount(dir.path().join("run"));
    let server = start_coxswain(coxswain, dir.path(), 1)?;
    let address = server.addrs.first().cloned().unwrap_or_default();

    let pid = std::process::id();
    let bridge = format!("cxa{}", pid % 10_000);
    let _bridge = BridgeGuard(bridge.clone());
    let mut agent = Command::new(coxswain);
    agent
        .args(["agent", "--server", &address, "--token", TOKEN])
        .args(["--name", &format!("bench-agent-{pid}"), "--bridge", &bridge])
        .args(["--pod-cidr", &format!("10.125.{}.0/24", pid % 250)])
        .arg("--state-dir")
        .arg(dir.path().join("node"))
        .arg("--run-dir")
        .arg(&run.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut agent = ChildGuard(agent.spawn().context("starting coxswain agent")?);
    wait_line(&mut agent.0, "coxswain agent: node ")?;
    // Registration, the first heartbeat and the first (empty) usage sample happen at once;
    // what is left is the idle loop.
    std::thread::sleep(Duration::from_secs(5));
    let rss = Rss::of(agent.0.id())?;
    pb.inc(1);
    pb.finish_and_clear();
    drop(agent);
    drop(server);
    Ok(rss)
}

/// The launcher: the child of this process started with [`launcher::ARG`].
fn launcher_rss() -> anyhow::Result<Option<LauncherRss>> {
    let me = std::process::id();
    for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look; one that is gone is simply not it.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state, then ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == launcher::ARG.as_bytes())
        {
            continue;
        }
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        return Ok(Some(LauncherRss {
            what: "launcher RSS (the agent's fork helper)",
            pid,
            rss_kib: kib("VmRSS:"),
            peak_kib: kib("VmHWM:"),
            agent_target_mib: TARGET_AGENT_RSS_MIB,
        }));
    }
    Ok(None)
}

/// Times `cmd` from spawn to exit; fails with its stderr if it does not succeed.
fn time_process(cmd: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// Deletes whatever runc still knows in its (temporary) state root when dropped.
#[derive(Debug)]
struct RuncGuard<'a> {
    root: &'a Path,
}

impl RuncGuard<'_> {
    fn command(&self) -> Command {
        let mut cmd = Command::new(RUNC);
        cmd.arg("--root").arg(self.root);
        cmd
    }
}

impl Drop for RuncGuard<'_> {
    fn drop(&mut self) {
        let listed = self.command().args(["list", "-q"]).output();
        let Ok(out) = listed else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let deleted = self
                .command()
                .args(["delete", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !deleted.is_ok_and(|s| s.success()) {
                eprintln!("cleanup: runc delete -f {id} failed");
            }
        }
    }
}

/// Sets `path` (object keys) in a JSON document to `value`; the parents must exist.
fn set_field(doc: &mut Value, path: &[&str], value: Value) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else {
        bail!("no field to set");
    };
    let mut at = doc;
    for key in parents {
        at = at
            .get_mut(*key)
            .with_context(|| format!("the runc spec has no {}", path.join(".")))?;
    }
    at.as_object_mut()
        .with_context(|| format!("the runc spec's {} is not an object", parents.join(".")))?
        .insert((*last).to_owned(), value);
    Ok(())
}

/// `runc run` of the busybox rootfs running `/bin/true`, start to exit, `runs` times.
fn runc_peer(rootfs: &Path, runs: usize, ours_p50_ms: f64, hidden: bool) -> anyhow::Result<Peer> {
    let covers = "runc run, start to exit: namespaces (runc spec's default set: pid, net with \
                  only lo, ipc, uts, mount, cgroup), cgroups, the read-only busybox root, exec \
                  of /bin/true, its exit and runc's teardown; no veth or pod IP";
    let mut peer = Peer {
        command: format!("{RUNC} run --bundle BUNDLE ID (busybox rootfs, /bin/true)"),
        covers,
        stats: None,
        skipped: None,
        coxswain_faster_by: None,
        target_faster_by: Some(TARGET_FASTER_THAN_RUNC),
    };
    if !Path::new(RUNC).is_file() {
        peer.skipped = Some(format!("{RUNC} is not installed (apt-get install runc)"));
        return Ok(peer);
    }
    let bundle = tempfile::tempdir().context("creating the runc bundle dir")?;
    let state = tempfile::tempdir().context("creating runc's state root")?;
    let guard = RuncGuard { root: state.path() };
    time_process(
        guard
            .command()
            .arg("spec")
            .arg("--bundle")
            .arg(bundle.path()),
    )
    .context("runc spec")?;
    let config = bundle.path().join("config.json");
    let text = fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
    let mut spec: Value = serde_json::from_slice(&text).context("parsing runc's config.json")?;
    let root = rootfs
        .to_str()
        .with_context(|| format!("the rootfs path {} is not UTF-8", rootfs.display()))?;
    set_field(&mut spec, &["root", "path"], Value::from(root))?;
    set_field(&mut spec, &["root", "readonly"], Value::from(true))?;
    set_field(&mut spec, &["process", "terminal"], Value::from(false))?;
    set_field(
        &mut spec,
        &["process", "args"],
        Value::from(vec!["/bin/true"]),
    )?;
    fs::write(&config, serde_json::to_vec_pretty(&spec)?)
        .with_context(|| format!("writing {}", config.display()))?;

    let pb = bar(runs as u64, "runc run (busybox /bin/true)", hidden);
    let pid = std::process::id();
    let mut times = Vec::with_capacity(runs);
    for n in 0..runs {
        let id = format!("cxbench-{pid}-{n}");
        let took = time_process(
            guard
                .command()
                .arg("run")
                .arg("--bundle")
                .arg(bundle.path())
                .arg(&id),
        )?;
        times.push(took);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let stats = stats(times);
    peer.coxswain_faster_by = Some(stats.p50_ms / ours_p50_ms.max(f64::EPSILON));
    peer.stats = Some(stats);
    Ok(peer)
}

/// A bare `unshare` of the same namespaces running the host's `/bin/true`, `runs` times.
fn unshare_peer(runs: usize, ours_p50_ms: f64, hidden: bool) -> anyhow::Result<Peer> {
    let mut peer = Peer {
        command: format!("unshare {}", UNSHARE_ARGS.join(" ")),
        covers: "unshare, start to exit: new pid, mount, uts, ipc and net namespaces and the \
                 exec of the host's /bin/true; no cgroup, root filesystem or network",
        stats: None,
        skipped: None,
        coxswain_faster_by: None,
        target_faster_by: None,
    };
    let Some(unshare) = UNSHARE_CANDIDATES.iter().find(|p| Path::new(p).is_file()) else {
        peer.skipped = Some("unshare (util-linux) is not installed".into());
        return Ok(peer);
    };
    let pb = bar(runs as u64, "bare unshare", hidden);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(time_process(Command::new(unshare).args(UNSHARE_ARGS))?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let stats = stats(times);
    peer.coxswain_faster_by = Some(stats.p50_ms / ours_p50_ms.max(f64::EPSILON));
    peer.stats = Some(stats);
    Ok(peer)
}

/// One row of the table: the figure, its measured value, its target and whether it is met.
fn row(figure: &str, measured: String, target: &str, met: Option<bool>) {
    let met = match met {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "",
    };
    println!("{figure:<48} {measured:>12} {target:>12}  {met}");
}

fn print_text(r: &Report) {
    println!(
        "pods ({} mode, {} build): {} pods per run, {} cores, kernel {}, cgroup {}",
        r.mode, r.build, r.pods, r.cores, r.kernel, r.cgroup
    );
    if r.build == "debug" {
        println!("(a debug build: these figures are not the product's; run a release build)");
    }
    println!(
        "A pod start here is the runtime path the node agent runs per bound pod, timed from \
         just before run_sandbox."
    );
    println!("image {}; launcher {}", r.image, r.launcher);
    println!();
    println!("{:<48} {:>12} {:>12}  met?", "figure", "measured", "target");
    let l = &r.latency;
    row(
        "pod start → exec'd, p50",
        format!("{:.2} ms", l.start_to_exec.p50_ms),
        &format!("≤ {:.0} ms", l.target_exec_p50_ms),
        Some(l.start_to_exec.p50_ms <= l.target_exec_p50_ms),
    );
    row(
        "pod start → exec'd, p99",
        format!("{:.2} ms", l.start_to_exec.p99_ms),
        "",
        None,
    );
    row(
        "  of which run_sandbox, p50",
        format!("{:.2} ms", l.sandbox.p50_ms),
        "",
        None,
    );
    row(
        "  of which start_container, p50",
        format!("{:.2} ms", l.container.p50_ms),
        "",
        None,
    );
    let w = &r.warm;
    row(
        &format!("  sandboxes taken from the warm pool ({})", w.pool),
        format!("{} of {}", w.latency_taken, r.pods),
        "",
        None,
    );
    row(
        &format!("  containers on a warm layer ({} per image)", w.layers),
        format!("{} of {}", w.latency_layers_taken, r.pods),
        "",
        None,
    );
    row(
        "  containers from a warm PID 1 on that layer",
        format!("{} of {}", w.latency_inits_adopted, r.pods),
        "",
        None,
    );
    row(
        "pod start → exec'd, p50, warm pools off",
        format!("{:.2} ms", r.cold.start_to_exec.p50_ms),
        "",
        None,
    );
    row(
        "  of which run_sandbox, p50",
        format!("{:.2} ms", r.cold.sandbox.p50_ms),
        "",
        None,
    );
    row(
        "  of which start_container, p50",
        format!("{:.2} ms", r.cold.container.p50_ms),
        "",
        None,
    );
    row(
        "pod start → Ready (TCP connect :8080), p50",
        format!("{:.2} ms", l.start_to_ready.p50_ms),
        "",
        None,
    );
    row(
        "pod start → Ready (TCP connect :8080), p99",
        format!("{:.2} ms", l.start_to_ready.p99_ms),
        "",
        None,
    );
    let t = &r.throughput;
    row(
        &format!(
            "starts/s, one after another ({}/{} warm)",
            w.sequential_taken, w.sequential_layers_taken
        ),
        format!("{:.0}/s", t.sequential_per_s),
        "",
        None,
    );
    row(
        &format!(
            "starts/s, {} threads ({}/{} warm)",
            t.threads, w.parallel_taken, w.parallel_layers_taken
        ),
        format!("{:.0}/s", t.parallel_per_s),
        "",
        None,
    );
    row(
        "starts/s, the better",
        format!("{:.0}/s", t.best_per_s),
        &format!("≥ {:.0}/s", t.target_per_s),
        Some(t.best_per_s >= t.target_per_s),
    );
    for (name, peer) in [("runc run", &r.runc), ("bare unshare", &r.unshare)] {
        match (&peer.stats, &peer.skipped) {
            (Some(s), _) => {
                row(
                    &format!("{name}, p50 (p99 {:.1} ms)", s.p99_ms),
                    format!("{:.2} ms", s.p50_ms),
                    "",
                    None,
                );
                let faster = peer.coxswain_faster_by.unwrap_or(0.0);
                row(
                    &format!("  coxswain exec'd p50 vs {name} p50"),
                    format!("{faster:.1}× faster"),
                    &peer
                        .target_faster_by
                        .map(|t| format!("≥ {t:.0}×"))
                        .unwrap_or_default(),
                    peer.target_faster_by.map(|t| faster >= t),
                );
            }
            // A peer that is not installed cannot be compared with: neither met nor missed.
            (None, _) => row(name, "skipped".into(), "", None),
        }
    }
    match &r.launcher_rss {
        Some(rss) => row(
            rss.what,
            format!("{:.1} MiB", rss.rss_kib as f64 / 1024.0),
            &format!("(agent ≤ {:.0} MiB)", rss.agent_target_mib),
            None,
        ),
        None => row(
            "launcher RSS (the agent's fork helper)",
            "not found".into(),
            "",
            None,
        ),
    }
    row(
        "coxswain agent idle RSS",
        r.agent_idle_rss.describe(),
        &format!("≤ {:.0} MiB", r.target_agent_rss_mib),
        Some(r.agent_idle_rss.rss_mib <= r.target_agent_rss_mib),
    );
    println!();
    println!(
        "pod start: {}. {} pods one after another, each waited for until Ready before the \
         next; Ready polls a TCP connect every {} µs. The first pod of the run (it also starts \
         the launcher, once per agent) is left out: {:.1} ms to Ready.",
        r.measures,
        r.pods,
        READY_POLL.as_micros(),
        r.first_pod_ms
    );
    println!(
        "warm pool: the runtime keeps {} sandboxes (namespaces, veth, IP) made ahead, as the \
         agent does by default; a pod takes one and only gets its hostname, its cgroups and \
         the IP handed over. Each run starts from a full pool; a pod that finds it empty has \
         its sandbox made cold. Made over the run: {}, failed: {}. The runtime also keeps {} \
         container layers (the writable layer's directories and the overlay over the image) \
         mounted ahead for each image used last; a container of that image takes one, and with \
         it the PID 1 made on it (its PID and mount namespaces, /proc, /dev, masks and pivot \
         done). Made over the run: {}, failed: {}. The starts/s rows count sandboxes/layers taken warm. \
         \"warm pools off\" is the same latency run on a runtime with neither.",
        w.pool, w.made, w.failed, w.layers, w.layers_made, w.layers_failed
    );
    println!(
        "starts/s: {} pods started back to back, the clock stopping when the last has exec'd \
         ({:.0} ms one after another, {:.0} ms on {} threads sharing the runtime); every one was \
         then checked to answer on :8080. stop_sandbox of a running pod: p50 {:.2} ms, p99 \
         {:.2} ms over {}.",
        t.pods,
        t.sequential_ms,
        t.parallel_ms,
        t.threads,
        l.stop.p50_ms,
        l.stop.p99_ms,
        l.stop.samples
    );
    if let Some(first) = &l.stop_first_failure {
        println!(
            "RUNTIME DEFECT: {} stop_sandbox call(s) failed and succeeded when tried again; the \
             first: {first}",
            l.stop_retried
        );
    }
    for peer in [&r.runc, &r.unshare] {
        match (&peer.stats, &peer.skipped) {
            (Some(s), _) => println!(
                "{}: {} runs of `{}`; covers {}.",
                peer.command.split_whitespace().next().unwrap_or(""),
                s.samples,
                peer.command,
                peer.covers
            ),
            (None, Some(why)) => println!("{}: skipped: {why}", peer.command),
            (None, None) => {}
        }
    }
    println!(
        "Ours ends at the exec (the container keeps running); the peers' samples end at their \
         process's exit, which includes tearing down what they made."
    );
    if let Some(rss) = &r.launcher_rss {
        println!(
            "launcher RSS: VmRSS of pid {} (the `coxswain {}` child of this bench) once every pod \
             is stopped; its peak over the run was {:.1} MiB. It is one part of the agent, not \
             the agent, so it is not compared with the agent's target; the agent's own idle RSS \
             is measured on a real `coxswain agent` process at the end.",
            rss.pid,
            launcher::ARG,
            rss.peak_kib as f64 / 1024.0
        );
    }
}
