//! The real [`Runtime`]: pod sandboxes and containers as Linux processes in namespaces and
//! cgroups, started through the [`launcher`](super::launcher).
//!
//! Everything the runtime knows lives in two directories, so an agent that restarts finds it
//! again ([`Runtime::list`]). The run dir holds what means something only while its
//! processes live, and dies with the machine; the agent keeps it on a tmpfs (see
//! [`prepare_run_dir`]), as runc keeps `/run/runc` and containerd `/run/containerd`. The
//! state dir holds what is data: the containers' writable layers and their logs.
//!
//! ```text
//! <run>/sandboxes/<key>/sandbox.json              the holder's pid, the pod IP
//! <run>/sandboxes/<key>/<name>.<attempt>/         one container start:
//!     container.json                              its pid, start time, process settings
//!     exit.json                                   how it ended (written by its shim)
//! <run>/ipam/                                     the pod IPs handed out (see crate::ipam)
//! <state>/containers/<key>.<name>.<attempt>/      that container's layer:
//!     upper/ work/ merged/                        its writable layer and root
//!     exec-<n>.out, exec-<n>.exit                 an exec's output and end, while it runs
//! <state>/logs/<key>/<name>/<attempt>.log         its stdout and stderr
//! <state>/layers/<n>/upper/ work/ merged/         a warm layer no container has taken
//! ```
//!
//! Why the split: a pod start makes and a pod stop deletes a handful of records, and on
//! ext4 without a journal (this project's test machine) each new inode first skips every
//! inode freed in the last minutes whose table block is still cached, a scan that grew to
//! 0.2-0.6 ms per file under a steady churn of pods. On a tmpfs a record costs a few
//! microseconds; the layers and logs, which belong on disk, are made ahead of time or once
//! per container. Layer names are flat (no directory per pod) for the same reason.
//!
//! A warm layer's `merged` is an overlay mounted in the host's mount namespace (see
//! [`super::layers`]); a container that takes one keeps it there until it is removed.
//!
//! Cgroups: `coxswain/<key>` for the pod, `coxswain/<key>/sandbox` for the holder and
//! `coxswain/<key>/<name>.<attempt>` for each container (processes only in leaves, which
//! cgroup v2 requires).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::launcher::{self, ContainerLaunch, ExecLaunch, ExitRecord, Process, Request, Response};
use super::layers::{LayerPool, LayerStats};
use super::priority;
use super::warm::{OWNER_PREFIX, Warm, WarmPool, WarmStats};
use super::{
    ContainerId, ContainerSpec, ContainerState, EXEC_OUTPUT_LIMIT, ExecOutput, Rootfs, Runtime,
    Sandbox, SandboxSpec, rootfs,
};
use crate::cgroup::{Cgroup, Resources, Usage};
use crate::error::{Error, Result};
use crate::ipam::Pool;
use crate::net::{Bridge, BridgeConfig, host_if_name};

/// How long removing a cgroup waits for its processes to be gone.
const CGROUP_REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the node's runtime is set up.
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// Where the runtime keeps its data: the containers' writable layers and logs.
    pub state_dir: PathBuf,
    /// Where the runtime keeps its records of sandboxes and containers and the pod IPs, all
    /// of which die with the machine; a tmpfs in the agent (see [`prepare_run_dir`]).
    pub run_dir: PathBuf,
    /// The coxswain binary, started as the launcher.
    pub launcher: PathBuf,
    /// The node's pod network; `None` gives pods a network namespace with only `lo`.
    pub network: Option<BridgeConfig>,
    /// The pids limit of every container (the kubelet's `podPidsLimit`).
    pub pids_max: Option<u64>,
    /// How many sandboxes to keep made ahead of pods (see [`super::warm`]); 0 turns the pool
    /// off. Used only with a `network`.
    pub warm_sandboxes: usize,
    /// How many container layers to keep mounted ahead for each of the images containers
    /// were started from last (see [`super::layers`]), each with a warm container on it
    /// (`launcher::WarmContainerLaunch`); 0 turns this off.
    pub warm_layers: usize,
}

/// The agent's default for [`LinuxConfig::warm_sandboxes`]: enough for a small burst of
/// pods, few enough that the idle cost (a sleeping process, a veth and an address each) is
/// nothing to notice.
pub const DEFAULT_WARM_SANDBOXES: usize = 4;

/// The agent's default for [`LinuxConfig::warm_layers`]: as many as warm sandboxes, so a
/// burst that takes those finds its layers too.
pub const DEFAULT_WARM_LAYERS: usize = DEFAULT_WARM_SANDBOXES;

/// The size limit of the tmpfs [`prepare_run_dir`] mounts: records are a few hundred bytes
/// each (a pod's sandbox and containers, one file per pod IP), so this is room for thousands
/// of pods while bounding what a fault could pin in memory.
const RUN_DIR_TMPFS_OPTIONS: &str = "mode=0700,size=64m";

/// Makes `dir`, the runtime's run dir, and mounts a tmpfs on it unless it is on one already
/// (as `/run` is under systemd); whether it mounted one. The mount is left in place when
/// the agent exits: the records of running containers must outlive an agent restart, and
/// they die with the machine, as the processes they describe do.
pub fn prepare_run_dir(dir: &Path) -> Result<bool> {
    fs::create_dir_all(dir).map_err(Error::io("create the run dir", dir))?;
    let on = nix::sys::statfs::statfs(dir).map_err(Error::sys(format!(
        "read the filesystem of the run dir {}",
        dir.display()
    )))?;
    if on.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
        // Root's alone, as the tmpfs mounted below is: a container's record holds its
        // environment, which may carry a secret's value.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(Error::io("make the run dir root's alone", dir))?;
        return Ok(false);
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(RUN_DIR_TMPFS_OPTIONS),
    )
    .map_err(Error::sys(format!(
        "mount a tmpfs on the run dir {}",
        dir.display()
    )))?;
    tracing::info!(dir = %dir.display(), "mounted a tmpfs for the runtime's records");
    Ok(true)
}

/// The Linux runtime. Cheap to share behind an `Arc`; calls from several threads are safe
/// (the launcher answers one request at a time, and each request takes a few milliseconds).
#[derive(Debug)]
pub struct LinuxRuntime {
    cfg: LinuxConfig,
    launcher: Arc<Launcher>,
    /// The warm containers (`launcher::WarmContainerLaunch`) made on warm layers, by the
    /// layer's path: the shim's pid, the name the launcher knows it by.
    warm_inits: Arc<WarmInits>,
    /// A launcher of its own for the warm pool's thread: a refill forks and unshares a
    /// network namespace, about a millisecond, and a pod's container start must not queue
    /// behind it.
    warm_launcher: Arc<Launcher>,
    network: Option<(Bridge, Pool)>,
    /// `None` without a network, with `warm_sandboxes` 0, and after [`LinuxRuntime::shutdown_warm`].
    warm: Mutex<Option<Arc<WarmPool>>>,
    /// `None` with `warm_layers` 0, and after [`LinuxRuntime::shutdown_warm`].
    layers: Mutex<Option<Arc<LayerPool>>>,
    /// Open cgroup handles by path: a handle removes its cgroup when dropped while empty, so
    /// the runtime keeps one for as long as the cgroup is meant to exist.
    cgroups: Mutex<HashMap<String, Cgroup>>,
}

/// A launcher process, started on first use and again if it dies.
#[derive(Debug)]
struct Launcher {
    binary: PathBuf,
    /// The launcher process's nice value.
    nice: i32,
    process: Mutex<Option<LauncherProcess>>,
}

#[derive(Debug)]
struct LauncherProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The warm containers on warm layers (see `LinuxRuntime::warm_inits`).
#[derive(Debug, Default)]
struct WarmInits {
    by_layer: Mutex<HashMap<PathBuf, u32>>,
    adopted: AtomicU64,
}

impl WarmInits {
    /// Asks `launcher` for a warm container on `layer`. A layer without one still serves, the
    /// way it did before warm containers.
    fn make(&self, launcher: &Launcher, layer: &Path) {
        let request = Request::WarmContainer(launcher::WarmContainerLaunch {
            layer: layer.to_owned(),
        });
        match launcher.request(&request) {
            Ok(shim) => {
                self.lock().insert(layer.to_owned(), shim);
            }
            Err(e) => {
                tracing::warn!(error = %e, layer = %layer.display(), "could not make a warm container")
            }
        }
    }

    fn take(&self, layer: &Path) -> Option<u32> {
        self.lock().remove(layer)
    }

    /// Lets the warm container on `layer` go, if it has one, before the layer goes.
    fn drop_for(&self, launcher: &Launcher, layer: &Path) {
        if let Some(shim) = self.take(layer) {
            let _ = launcher.request(&Request::DropWarm { shim });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, u32>> {
        self.by_layer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxRecord {
    sandbox: Sandbox,
    /// The holder's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// reused pid is never mistaken for the holder.
    start_ticks: u64,
    host_if: Option<String>,
}

/// `container.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerRecord {
    id: ContainerId,
    pid: u32,
    start_ticks: u64,
    started_at: SystemTime,
    /// What an exec in this container runs with (its env, user and capabilities).
    process: Process,
}

impl LinuxRuntime {
    /// Opens the runtime over `cfg.state_dir`, setting up the node's bridge if configured.
    pub fn new(cfg: LinuxConfig) -> Result<LinuxRuntime> {
        for (root, dir) in [
            (&cfg.run_dir, "sandboxes"),
            (&cfg.run_dir, "ipam"),
            (&cfg.state_dir, "logs"),
            (&cfg.state_dir, "layers"),
            (&cfg.state_dir, "containers"),
        ] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(Error::io("create state dir", &path))?;
        }
        let layers_dir = cfg.state_dir.join("layers");
        remove_stale_layers(&layers_dir)?;
        remove_orphan_container_layers(&cfg)?;
        let launcher = Arc::new(Launcher::new(&cfg.launcher));
        let warm_inits = Arc::new(WarmInits::default());
        let layers = if cfg.warm_layers > 0 {
            let (l, inits) = (Arc::clone(&launcher), Arc::clone(&warm_inits));
            let (l2, inits2) = (Arc::clone(&launcher), Arc::clone(&warm_inits));
            Some(Arc::new(LayerPool::start(
                cfg.warm_layers,
                Box::new(move |image| {
                    let layer = make_layer(&layers_dir, image)?;
                    inits.make(&l, &layer);
                    Ok(layer)
                }),
                Box::new(move |layer| {
                    inits2.drop_for(&l2, layer);
                    destroy_layer(layer);
                }),
            )?))
        } else {
            None
        };
        let network = match &cfg.network {
            Some(net) => {
                let pool = Pool::open(&cfg.run_dir.join("ipam"), net.cidr)?;
                let bridge = Bridge::ensure(net)?;
                free_stale_warm(&bridge, &pool)?;
                Some((bridge, pool))
            }
            None => None,
        };
        let warm_launcher = Arc::new(Launcher::background(&cfg.launcher));
        let warm = match &network {
            Some((bridge, pool)) if cfg.warm_sandboxes > 0 => {
                let (l, b, p) = (Arc::clone(&warm_launcher), bridge.clone(), pool.clone());
                let (b2, p2) = (bridge.clone(), pool.clone());
                Some(Arc::new(WarmPool::start(
                    cfg.warm_sandboxes,
                    Box::new(move || make_warm(&l, &b, &p)),
                    Box::new(move |w| destroy_warm(w, &b2, &p2)),
                )?))
            }
            _ => None,
        };
        Ok(LinuxRuntime {
            cfg,
            launcher,
            warm_inits,
            warm_launcher,
            network,
            warm: Mutex::new(warm),
            layers: Mutex::new(layers),
            cgroups: Mutex::new(HashMap::new()),
        })
    }

    /// How the warm sandbox pool has done; `None` when there is none.
    pub fn warm_stats(&self) -> Option<WarmStats> {
        self.warm_pool().map(|w| w.stats())
    }

    /// Waits until the warm sandbox pool is full, for at most `timeout`: for a benchmark or a
    /// test that wants to start from an agent that has been idle a moment. Whether it is full
    /// (`false` without a pool).
    pub fn wait_warm(&self, timeout: Duration) -> bool {
        self.warm_pool().is_some_and(|w| w.wait_full(timeout))
    }

    /// Removes the warm sandboxes and stops making them, before the agent takes its bridge
    /// down; pods that took one are not touched.
    pub fn shutdown_warm(&self) {
        let taken = self.warm.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pool) = taken {
            pool.stop();
        }
        let layers = self.layers.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pool) = layers {
            pool.stop();
        }
    }

    /// How the warm layer pool has done; `None` when there is none.
    pub fn layer_stats(&self) -> Option<LayerStats> {
        self.layer_pool().map(|p| p.stats())
    }

    /// How many warm layers over `image` are ready now (for a benchmark or a test that
    /// wants to start from a pool that has been idle a moment).
    pub fn warm_layers_ready(&self, image: &Path) -> usize {
        self.layer_pool().map_or(0, |p| p.ready(image))
    }

    fn layer_pool(&self) -> Option<Arc<LayerPool>> {
        self.layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a warm layer over `spec`'s image from the pool, if it has one ready, with the
    /// warm container made on it, if any. The layer is still where the pool made it.
    fn take_layer(&self, spec: &ContainerSpec) -> Option<(PathBuf, Option<u32>)> {
        let Rootfs::Image(image) = &spec.rootfs else {
            return None;
        };
        if spec.read_only_root_filesystem {
            return None;
        }
        let layer = self.layer_pool().and_then(|p| p.take(image))?;
        let shim = self.warm_inits.take(&layer);
        Some((layer, shim))
    }

    /// Gives a cold start its layer at `dir`: the warm layer `warm` moved there if there is
    /// one and it moves, the directories of a new one otherwise. Whether it is mounted
    /// already (`ContainerLaunch::premounted`).
    fn cold_layer(&self, warm: Option<&Path>, dir: &Path) -> Result<bool> {
        if let Some(layer) = warm {
            match fs::rename(layer, dir) {
                Ok(()) => return Ok(true),
                Err(e) => {
                    tracing::warn!(error = %e, layer = %layer.display(), "could not take a warm layer; making one");
                    destroy_layer(layer);
                }
            }
        }
        make_layer_dirs(dir)?;
        Ok(false)
    }

    /// The shims of the warm containers ready now (for tests of what ends with them).
    pub fn warm_init_pids(&self) -> Vec<u32> {
        self.warm_inits.lock().values().copied().collect()
    }

    /// How many containers started from a warm container (for the benchmark and tests).
    pub fn warm_inits_adopted(&self) -> u64 {
        self.warm_inits.adopted.load(Ordering::Relaxed)
    }

    /// Starts a container's PID 1: from the warm container `warm` if there is one and the
    /// container can use it, the cold way otherwise (and if the warm one fails).
    fn launch_container(
        &self,
        mut launch: ContainerLaunch,
        warm: Option<(PathBuf, u32)>,
    ) -> Result<u32> {
        let Some((from, shim)) = warm else {
            return self.request(&Request::Container(launch));
        };
        let adoption = Request::AdoptContainer(launcher::AdoptLaunch {
            shim,
            sandbox_pid: launch.sandbox_pid,
            join_network: launch.join_network,
            cgroup_procs: launch.cgroup_procs.clone(),
            process: launch.process.clone(),
            log: launch.log.clone(),
            exit_file: launch.exit_file.clone(),
        });
        match self.request(&adoption) {
            Ok(pid) => {
                // Past its pivot (the launcher waited for that), so the layer can move under
                // it to where the container's other records expect it.
                if let Err(e) = fs::rename(&from, &launch.layer) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    destroy_layer(&from);
                    return Err(Error::io(
                        "move the warm layer to its container",
                        &launch.layer,
                    )(e));
                }
                self.warm_inits.adopted.fetch_add(1, Ordering::Relaxed);
                Ok(pid)
            }
            Err(e) => {
                // Nothing of the container ran; its cold start reports the same error again
                // if it is the container's own (a missing program).
                tracing::warn!(error = %e, shim, "a warm container failed; starting the container the cold way");
                launch.premounted = self.cold_layer(Some(&from), &launch.layer)?;
                self.request(&Request::Container(launch))
            }
        }
    }

    /// The holders of the warm sandboxes ready now (for tests).
    pub fn warm_pids(&self) -> Vec<u32> {
        self.warm_pool().map(|w| w.pids()).unwrap_or_default()
    }

    /// The pids of the launchers that are running, the warm pool's included (for tests of
    /// what dies with them).
    pub fn launcher_pids(&self) -> Vec<u32> {
        [&self.launcher, self.warm_launcher.as_ref()]
            .iter()
            .filter_map(|l| l.pid())
            .collect()
    }

    /// The pool, if any, without holding the runtime's lock on it (waits happen outside).
    fn warm_pool(&self) -> Option<Arc<WarmPool>> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The node's bridge, if it has one (for teardown by `coxswain up` and tests).
    pub fn bridge(&self) -> Option<&Bridge> {
        self.network.as_ref().map(|(b, _)| b)
    }

    fn sandbox_dir(&self, key: &str) -> PathBuf {
        sandbox_dir(&self.cfg, key)
    }

    /// The container's records (in the run dir).
    fn container_dir(&self, id: &ContainerId) -> PathBuf {
        container_dir(&self.cfg, id)
    }

    /// The container's layer (in the state dir).
    fn layer_dir(&self, id: &ContainerId) -> PathBuf {
        layer_dir(&self.cfg, id)
    }

    /// Makes warm sandbox `w` the sandbox of `spec`'s pod: its holder into the pod's cgroup
    /// (`procs`), the pod's hostname, its address handed to the pod, and the holder told it
    /// now belongs to a pod (SIGUSR1: it stops dying with the launcher).
    fn adopt(
        &self,
        w: &Warm,
        spec: &SandboxSpec,
        procs: &[PathBuf],
        pool: &Pool,
    ) -> Result<SandboxRecord> {
        for file in procs {
            fs::write(file, w.pid.to_string()).map_err(Error::io("move the warm holder", file))?;
        }
        // Made at the warm launcher's lower priority; the pod's holder is not refill work.
        if let Err(e) = priority::set_nice(w.pid, 0) {
            tracing::debug!(error = %e, pid = w.pid, "could not raise the holder's priority");
        }
        set_hostname(w.pid, &spec.hostname)?;
        kill(Pid::from_raw(w.pid as i32), Signal::SIGUSR1)
            .map_err(Error::sys(format!("adopt warm sandbox holder {}", w.pid)))?;
        pool.reassign(w.ip, &w.owner, &spec.key)?;
        Ok(SandboxRecord {
            sandbox: Sandbox {
                key: spec.key.clone(),
                pid: w.pid,
                pod_ip: Some(w.ip),
                host_network: false,
                share_process_namespace: false,
            },
            start_ticks: w.start_ticks,
            host_if: Some(w.host_if.clone()),
        })
    }

    /// Sends one request to the launcher.
    fn request(&self, request: &Request) -> Result<u32> {
        self.launcher.request(request)
    }

    fn cgroup_create(&self, path: &str, res: &Resources) -> Result<Vec<PathBuf>> {
        let cgroup = Cgroup::create(path, res)?;
        let procs = cgroup
            .paths()
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect();
        self.cgroups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), cgroup);
        Ok(procs)
    }

    /// Runs `f` on the cgroup at `path` if it exists (opening it after an agent restart).
    fn with_cgroup<T>(
        &self,
        path: &str,
        f: impl FnOnce(&Cgroup) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut map = self.cgroups.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(path) {
            match Cgroup::open(path)? {
                Some(cg) => {
                    map.insert(path.to_owned(), cg);
                }
                None => return Ok(None),
            }
        }
        match map.get(path) {
            Some(cg) => f(cg).map(Some),
            None => Ok(None),
        }
    }

    fn cgroup_remove(&self, path: &str) -> Result<()> {
        let taken = self
            .cgroups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
        let cgroup = match taken {
            Some(cg) => cg,
            None => match Cgroup::open(path)? {
                Some(cg) => cg,
                None => return Ok(()),
            },
        };
        cgroup.kill_all()?;
        cgroup.remove_blocking(CGROUP_REMOVE_TIMEOUT)
    }

    fn read_sandbox(&self, key: &str) -> Result<Option<SandboxRecord>> {
        read_json(&self.sandbox_dir(key).join("sandbox.json"))
    }

    fn read_container(&self, id: &ContainerId) -> Result<Option<ContainerRecord>> {
        read_json(&self.container_dir(id).join("container.json"))
    }
}

impl Launcher {
    /// A launcher of `binary`, not started until its first request.
    fn new(binary: &Path) -> Launcher {
        Launcher {
            binary: binary.to_owned(),
            nice: 0,
            process: Mutex::new(None),
        }
    }

    /// A launcher for refills, at `priority::BACKGROUND_NICE` (and so is what it forks).
    fn background(binary: &Path) -> Launcher {
        Launcher {
            nice: priority::BACKGROUND_NICE,
            ..Launcher::new(binary)
        }
    }

    /// Sends one request to the launcher, starting it if needed (and again if it died).
    fn request(&self, request: &Request) -> Result<u32> {
        let mut line = serde_json::to_string(request).map_err(|e| Error::State {
            path: self.binary.clone(),
            reason: format!("encode launcher request: {e}"),
        })?;
        // One write: a line written in two parts (`writeln!` on an unbuffered pipe) wakes
        // the launcher twice, and a trace showed the second write a few hundred microseconds
        // late when the agent's thread lost its core in between.
        line.push('\n');
        let mut guard = self.process.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.spawn()?);
            }
            let Some(launcher) = guard.as_mut() else {
                continue;
            };
            let mut answer = String::new();
            let sent = launcher
                .stdin
                .write_all(line.as_bytes())
                .and_then(|()| launcher.stdout.read_line(&mut answer));
            match sent {
                Ok(n) if n > 0 => {
                    let response: Response =
                        serde_json::from_str(&answer).map_err(|e| Error::State {
                            path: self.binary.clone(),
                            reason: format!("bad launcher answer {answer:?}: {e}"),
                        })?;
                    return match (response.pid, response.error) {
                        (Some(pid), None) => Ok(pid),
                        (_, Some(error)) => Err(Error::Launch { reason: error }),
                        (None, None) => Err(Error::Launch {
                            reason: "the launcher gave no pid".to_owned(),
                        }),
                    };
                }
                // The launcher died (EOF or a broken pipe): start a new one and retry once;
                // a request is only ever half-done if the launcher crashed mid-fork, which
                // leaves at most an orphan the next list() shows.
                _ => {
                    if let Some(mut dead) = guard.take() {
                        let _ = dead.child.kill();
                        let _ = dead.child.wait();
                    }
                    tracing::warn!(attempt, "the launcher is gone; starting a new one");
                }
            }
        }
        Err(Error::Launch {
            reason: "the launcher keeps dying".to_owned(),
        })
    }

    fn spawn(&self) -> Result<LauncherProcess> {
        let mut child = Command::new(&self.binary)
            .arg(launcher::ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_clear()
            .spawn()
            .map_err(Error::io("start the launcher", &self.binary))?;
        // Set either way: a child starts with the nice value of the thread that forked it,
        // and the main launcher may be started by a refill thread (a warm container's
        // request), whose lower priority every container it starts would then inherit.
        if let Err(e) = priority::set_nice(child.id(), self.nice) {
            tracing::warn!(error = %e, nice = self.nice, "could not set the launcher's priority");
        }
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(Error::Launch {
                reason: "the launcher has no pipes".to_owned(),
            });
        };
        Ok(LauncherProcess {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    fn pid(&self) -> Option<u32> {
        let guard = self.process.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|l| l.child.id())
    }

    /// Closes the launcher's stdin, which ends it, and waits for it.
    fn close(&self) {
        let taken = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut l) = taken {
            drop(l.stdin);
            let _ = l.child.wait();
        }
    }
}

/// Makes a container layer's directories in `dir`: `upper` and `work` for the overlay's
/// writable layer, `merged` where the root is mounted.
fn make_layer_dirs(dir: &Path) -> Result<()> {
    for sub in ["upper", "work", "merged"] {
        fs::create_dir_all(dir.join(sub)).map_err(Error::io("create container layer", dir))?;
    }
    Ok(())
}

/// Numbers warm layers apart within one agent process.
static LAYER_SEQ: AtomicU64 = AtomicU64::new(0);

/// Makes one warm layer over `image` in `dir`: its directories and the overlay at `merged`.
fn make_layer(dir: &Path, image: &Path) -> Result<PathBuf> {
    let layer = dir.join(LAYER_SEQ.fetch_add(1, Ordering::Relaxed).to_string());
    let made = (|| -> Result<()> {
        make_layer_dirs(&layer)?;
        let options = rootfs::overlay_options(image, &layer);
        mount(
            Some("overlay"),
            &layer.join("merged"),
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(Error::sys(format!(
            "mount a warm layer over {}",
            image.display()
        )))
    })();
    match made {
        Ok(()) => Ok(layer),
        Err(e) => {
            let _ = fs::remove_dir_all(&layer);
            Err(e)
        }
    }
}

/// Unmounts the overlay of a layer made warm, if it is mounted here; a container's own
/// overlay (made the cold way) lives in its mount namespace and is not.
fn unmount_layer(dir: &Path) {
    let merged = dir.join("merged");
    match umount2(&merged, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
        Err(e) => {
            tracing::warn!(error = %e, path = %merged.display(), "could not unmount a container layer")
        }
    }
}

/// Unmounts and removes a warm layer.
fn destroy_layer(layer: &Path) {
    unmount_layer(layer);
    if let Err(e) = fs::remove_dir_all(layer) {
        tracing::warn!(error = %e, layer = %layer.display(), "could not remove a warm layer");
    }
}

/// Removes the warm layers an earlier agent left: nothing took them, and their overlays may
/// still be mounted.
fn remove_stale_layers(dir: &Path) -> Result<()> {
    remove_layers(dir, "remove a stale warm layer", |_| false)
}

/// Removes the layers of containers the run dir has no record of: after a reboot emptied
/// the run dir's tmpfs, no process uses them and nothing else would ever remove them. A
/// container whose layer was taken but whose record dir is gone is gone too: the record dir
/// is made before the layer is taken and removed after it.
fn remove_orphan_container_layers(cfg: &LinuxConfig) -> Result<()> {
    remove_layers(
        &cfg.state_dir.join("containers"),
        "remove the layer of a container with no record",
        |name| {
            name.to_str()
                .and_then(parse_layer_name)
                .is_some_and(|id| container_dir(cfg, &id).is_dir())
        },
    )
}

/// Unmounts and removes each layer in `dir` whose name `keep` does not want.
fn remove_layers(
    dir: &Path,
    what: &'static str,
    keep: impl Fn(&std::ffi::OsStr) -> bool,
) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(Error::io("read", dir))? {
        let entry = entry.map_err(Error::io("read", dir))?;
        if keep(&entry.file_name()) {
            continue;
        }
        let layer = entry.path();
        tracing::info!(layer = %layer.display(), "{what}");
        unmount_layer(&layer);
        fs::remove_dir_all(&layer).map_err(Error::io(what, &layer))?;
    }
    Ok(())
}

fn sandbox_dir(cfg: &LinuxConfig, key: &str) -> PathBuf {
    cfg.run_dir.join("sandboxes").join(key)
}

fn container_dir(cfg: &LinuxConfig, id: &ContainerId) -> PathBuf {
    sandbox_dir(cfg, &id.sandbox).join(format!("{}.{}", id.name, id.attempt))
}

fn layer_dir(cfg: &LinuxConfig, id: &ContainerId) -> PathBuf {
    cfg.state_dir
        .join("containers")
        .join(format!("{}.{}.{}", id.sandbox, id.name, id.attempt))
}

/// The container a layer's name (`<key>.<name>.<attempt>`) belongs to. Read from the right:
/// a container name is a DNS label (no dots) and an attempt a number, while a key may hold
/// dots (from the pod's name).
fn parse_layer_name(name: &str) -> Option<ContainerId> {
    let (rest, attempt) = name.rsplit_once('.')?;
    let (key, cname) = rest.rsplit_once('.')?;
    Some(ContainerId {
        sandbox: key.to_owned(),
        name: cname.to_owned(),
        attempt: attempt.parse().ok()?,
    })
}

/// Removes `dir` and what is in it, if it is there. A shim may still write a record into a
/// container's dir just after its last process ended, which makes the removal fail with
/// "not empty"; a few short retries cover that.
fn remove_dir_retrying(dir: &Path, what: &'static str) -> Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(Error::io(what, dir)(e)),
        }
    }
}

/// Numbers warm sandboxes apart within one agent process.
static WARM_SEQ: AtomicU64 = AtomicU64::new(0);

/// Makes one warm sandbox: a holder from the launcher, an address, a veth.
fn make_warm(launcher: &Launcher, bridge: &Bridge, pool: &Pool) -> Result<Warm> {
    let owner = format!(
        "{OWNER_PREFIX}{}-{}",
        std::process::id(),
        WARM_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let pid = launcher.request(&Request::Sandbox(launcher::SandboxLaunch {
        hostname: owner.clone(),
        own_network: true,
        own_pid: false,
        cgroup_procs: Vec::new(),
        warm: true,
    }))?;
    let start_ticks = start_ticks(pid).ok_or_else(|| Error::Launch {
        reason: format!("the warm sandbox holder {pid} died at start"),
    })?;
    let wired = (|| -> Result<(std::net::Ipv4Addr, String)> {
        let ip = pool.allocate(&owner)?;
        let host_if = host_if_name(&owner);
        bridge.attach(Path::new(&format!("/proc/{pid}/ns/net")), ip, &host_if)?;
        Ok((ip, host_if))
    })();
    match wired {
        Ok((ip, host_if)) => Ok(Warm {
            owner,
            pid,
            start_ticks,
            ip,
            host_if,
        }),
        Err(e) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = pool.release(&owner);
            Err(e)
        }
    }
}

/// Removes a warm sandbox no pod took: its holder, its veth (which would go with the holder's
/// namespace anyway, but later) and its address.
fn destroy_warm(w: &Warm, bridge: &Bridge, pool: &Pool) {
    if alive(w.pid, w.start_ticks) {
        let _ = kill(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
    }
    if let Err(e) = bridge.detach(&w.host_if) {
        tracing::warn!(host_if = %w.host_if, error = %e, "could not remove a warm sandbox's veth");
    }
    if let Err(e) = pool.release(&w.owner) {
        tracing::warn!(owner = %w.owner, error = %e, "could not free a warm sandbox's address");
    }
}

/// Frees what warm sandboxes of an earlier agent left: their holders died with that agent's
/// launcher, and their veths with the holders' namespaces, but their addresses are on disk.
fn free_stale_warm(bridge: &Bridge, pool: &Pool) -> Result<()> {
    for (addr, owner) in pool.list()? {
        if owner.starts_with(OWNER_PREFIX) {
            let host_if = host_if_name(&owner);
            if let Err(e) = bridge.detach(&host_if) {
                tracing::warn!(%host_if, error = %e, "could not remove a stale warm veth");
            }
            pool.release(&owner)?;
            tracing::debug!(%addr, owner, "freed a stale warm sandbox's address");
        }
    }
    Ok(())
}

/// Sets the hostname in the UTS namespace of process `pid`: the calling thread joins that
/// namespace, sets the name and goes back to its own. The namespace is per thread, so the
/// agent's other threads never leave the host's. This used to be done from a thread spawned
/// for it, which a `perf trace` of warm starts put at 0.5-0.9 ms a pod (3 ms for the first),
/// a fifth of a warm start; two `setns` calls cost microseconds.
fn set_hostname(pid: u32, hostname: &str) -> Result<()> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/uts"));
    let pod = fs::File::open(&path).map_err(Error::io("open the pod's UTS namespace", &path))?;
    let own_path = Path::new("/proc/thread-self/ns/uts");
    let own = fs::File::open(own_path).map_err(Error::io("open our UTS namespace", own_path))?;
    setns(&pod, CloneFlags::CLONE_NEWUTS).map_err(Error::sys(format!(
        "enter the UTS namespace {}",
        path.display()
    )))?;
    let set = nix::unistd::sethostname(hostname)
        .map_err(Error::sys(format!("set hostname {hostname:?}")));
    // Going back to a namespace this thread was in a moment ago, through an fd it holds,
    // cannot be refused to the same credentials; should it ever be, the thread keeps the
    // pod's hostname, which is worth an error in the log and on the start.
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWUTS) {
        tracing::error!(error = %e, "could not return to the agent's UTS namespace");
        return Err(Error::sys("return to the agent's UTS namespace".to_owned())(e));
    }
    set
}

fn container_cgroup(id: &ContainerId) -> String {
    format!("coxswain/{}/{}.{}", id.sandbox, id.name, id.attempt)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

/// Writes `value` as JSON through a temporary file and a rename, so a crash never leaves half
/// a record.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::State {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("rename", path))
}

/// A process's start time in clock ticks since boot, or `None` if it is gone.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')'
    // are plain. Field 22 is the 20th after it.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `ticks` (and not a zombie).
fn alive(pid: u32, ticks: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, after)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = after.split_whitespace();
    let state = fields.next();
    state != Some("Z")
        && state != Some("X")
        && fields.nth(18).and_then(|t| t.parse::<u64>().ok()) == Some(ticks)
}

/// The capability set a container keeps: runc's default, plus `add`, minus `drop` (`ALL`
/// drops everything not added), with Kubernetes' names (`NET_ADMIN`) or the kernel's.
pub fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let norm = |c: &String| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let drop: Vec<String> = drop.iter().map(norm).collect();
    let mut keep: Vec<String> = if drop.iter().any(|d| d == "CAP_ALL") {
        Vec::new()
    } else {
        launcher::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for c in add.iter().map(norm) {
        if !keep.contains(&c) {
            keep.push(c);
        }
    }
    keep
}

impl Runtime for LinuxRuntime {
    fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox> {
        let _span = tracing::debug_span!("run_sandbox", key = %spec.key).entered();
        if let Some(rec) = self.read_sandbox(&spec.key)?
            && alive(rec.sandbox.pid, rec.start_ticks)
        {
            return Ok(rec.sandbox);
        }
        let dir = self.sandbox_dir(&spec.key);
        fs::create_dir_all(&dir).map_err(Error::io("create sandbox dir", &dir))?;
        let pod_cgroup = format!("coxswain/{}", spec.key);
        self.cgroup_create(&pod_cgroup, &spec.resources)?;
        let procs = self.cgroup_create(&format!("{pod_cgroup}/sandbox"), &Resources::default())?;
        let own_network = !spec.host_network;
        // A sandbox that died is made again cold: its pod may still hold an address, which
        // the cold path's allocation finds again and a warm one would double.
        if own_network
            && !spec.share_process_namespace
            && let Some((_, pool)) = &self.network
            && let Some(warm) = self.warm_pool()
            && !dir.join("sandbox.json").exists()
        {
            while let Some(w) = warm.take() {
                if !alive(w.pid, w.start_ticks) {
                    warm.discard(&w);
                    continue;
                }
                match self.adopt(&w, spec, &procs, pool) {
                    Ok(record) => {
                        write_json(&dir.join("sandbox.json"), &record)?;
                        tracing::debug!(pid = w.pid, pod_ip = %w.ip, owner = %w.owner, "sandbox taken warm");
                        return Ok(record.sandbox);
                    }
                    Err(e) => {
                        // Its address may be the pod's by now; the cold path allocates anew.
                        tracing::warn!(error = %e, owner = %w.owner, "could not take a warm sandbox; making one");
                        let _ = kill(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
                        warm.discard(&w);
                        let _ = pool.release(&spec.key);
                        break;
                    }
                }
            }
        }
        let pid = self.request(&Request::Sandbox(launcher::SandboxLaunch {
            hostname: spec.hostname.clone(),
            own_network,
            own_pid: spec.share_process_namespace,
            cgroup_procs: procs,
            warm: false,
        }))?;
        let ticks = start_ticks(pid).ok_or_else(|| Error::Launch {
            reason: format!("the sandbox holder {pid} died at start"),
        })?;
        let mut record = SandboxRecord {
            sandbox: Sandbox {
                key: spec.key.clone(),
                pid,
                pod_ip: None,
                host_network: spec.host_network,
                share_process_namespace: spec.share_process_namespace,
            },
            start_ticks: ticks,
            host_if: None,
        };
        if own_network && let Some((bridge, pool)) = &self.network {
            let wired = (|| -> Result<(std::net::Ipv4Addr, String)> {
                let ip = pool.allocate(&spec.key)?;
                let host_if = host_if_name(&spec.key);
                bridge.attach(Path::new(&format!("/proc/{pid}/ns/net")), ip, &host_if)?;
                Ok((ip, host_if))
            })();
            match wired {
                Ok((ip, host_if)) => {
                    record.sandbox.pod_ip = Some(ip);
                    record.host_if = Some(host_if);
                }
                Err(e) => {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    let _ = pool.release(&spec.key);
                    return Err(e);
                }
            }
        }
        write_json(&dir.join("sandbox.json"), &record)?;
        tracing::debug!(pid, pod_ip = ?record.sandbox.pod_ip, "sandbox started");
        Ok(record.sandbox)
    }

    fn stop_sandbox(&self, key: &str) -> Result<()> {
        let _span = tracing::debug_span!("stop_sandbox", key).entered();
        let record = self.read_sandbox(key)?;
        if let Some(rec) = &record
            && alive(rec.sandbox.pid, rec.start_ticks)
        {
            let _ = kill(Pid::from_raw(rec.sandbox.pid as i32), Signal::SIGKILL);
        }
        if let Some((bridge, pool)) = &self.network {
            if let Some(host_if) = record.as_ref().and_then(|r| r.host_if.as_deref()) {
                bridge.detach(host_if)?;
            }
            pool.release(key)?;
        }
        let pod_cgroup = format!("coxswain/{key}");
        // Containers left behind (the caller should have removed them) go with the pod.
        if let Ok(entries) = fs::read_dir(self.sandbox_dir(key)) {
            for entry in entries.flatten() {
                if let Some(name) = entry.file_name().to_str()
                    && let Some((cname, attempt)) = name.rsplit_once('.')
                    && let Ok(attempt) = attempt.parse()
                {
                    let id = ContainerId {
                        sandbox: key.to_owned(),
                        name: cname.to_owned(),
                        attempt,
                    };
                    self.remove_container(&id)?;
                }
            }
        }
        self.cgroup_remove(&format!("{pod_cgroup}/sandbox"))?;
        self.cgroup_remove(&pod_cgroup)?;
        for dir in [
            self.sandbox_dir(key),
            self.cfg.state_dir.join("logs").join(key),
        ] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &dir)(e)),
            }
        }
        Ok(())
    }

    fn start_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<ContainerId> {
        let id = ContainerId {
            sandbox: sandbox.key.clone(),
            name: spec.name.clone(),
            attempt: spec.attempt,
        };
        let _span = tracing::debug_span!("start_container", id = %id).entered();
        if let Some(dir) = &spec.working_dir {
            rootfs::check_container_path("workingDir", dir)?;
        }
        for m in &spec.mounts {
            rootfs::check_container_path("volumeMounts.mountPath", &m.destination)?;
        }
        // The record dir first: a layer with no record dir is an orphan (see
        // remove_orphan_container_layers).
        let dir = self.container_dir(&id);
        fs::create_dir_all(&dir).map_err(Error::io("create container dir", &dir))?;
        let layer = self.layer_dir(&id);
        // A layer with a warm container stays where the pool made it until the adoption is
        // past the container's pivot (see `launch_container`). A warm PID 1 has its own PID
        // namespace, and its root has left the host's tree behind, so a volume's source is
        // out of its reach: those containers start cold, on the layer alone.
        let usable = spec.mounts.is_empty() && !sandbox.share_process_namespace;
        let (warm, spare) = match self.take_layer(spec) {
            Some((from, Some(shim))) if usable => (Some((from, shim)), None),
            Some((from, shim)) => {
                if let Some(shim) = shim {
                    let _ = self.request(&Request::DropWarm { shim });
                }
                (None, Some(from))
            }
            None => (None, None),
        };
        let premounted = if warm.is_some() {
            false
        } else {
            match self.cold_layer(spare.as_deref(), &layer) {
                Ok(premounted) => premounted,
                Err(e) => {
                    let _ = self.remove_container(&id);
                    return Err(e);
                }
            }
        };
        let log = self.log_path(&id);
        if let Some(parent) = log.parent() {
            fs::create_dir_all(parent).map_err(Error::io("create log dir", parent))?;
        }
        let mut resources = spec.resources;
        resources.pids_max = resources.pids_max.or(self.cfg.pids_max);
        let procs = self.cgroup_create(&container_cgroup(&id), &resources)?;
        let process = Process {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            working_dir: spec.working_dir.clone(),
            user: spec.user,
            group: spec.group,
            capabilities: capabilities(&spec.add_capabilities, &spec.drop_capabilities),
        };
        let started_at = SystemTime::now();
        let launch = ContainerLaunch {
            sandbox_pid: sandbox.pid,
            join_network: !sandbox.host_network,
            join_pid: sandbox.share_process_namespace,
            cgroup_procs: procs,
            rootfs: spec.rootfs.clone(),
            layer,
            premounted,
            read_only_root_filesystem: spec.read_only_root_filesystem,
            mounts: spec.mounts.clone(),
            process: process.clone(),
            log,
            exit_file: dir.join("exit.json"),
        };
        let pid = match self.launch_container(launch, warm) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = self.remove_container(&id);
                return Err(e);
            }
        };
        // A command that ends at once may be gone before we look; its exit record says how.
        let start_ticks = start_ticks(pid).unwrap_or(0);
        write_json(
            &dir.join("container.json"),
            &ContainerRecord {
                id: id.clone(),
                pid,
                start_ticks,
                started_at,
                process,
            },
        )?;
        Ok(id)
    }

    fn container_state(&self, id: &ContainerId) -> Result<ContainerState> {
        let Some(rec) = self.read_container(id)? else {
            return Ok(ContainerState::Unknown);
        };
        let dir = self.container_dir(id);
        let exit: Option<ExitRecord> = read_json(&dir.join("exit.json"))?;
        match exit {
            Some(exit) => {
                let oom = self
                    .with_cgroup(&container_cgroup(id), |cg| cg.oom_killed())?
                    .unwrap_or(false);
                Ok(ContainerState::Exited {
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                    oom_killed: oom && exit.signal == Some(Signal::SIGKILL as i32),
                    started_at: rec.started_at,
                    finished_at: exit.finished_at,
                })
            }
            None if alive(rec.pid, rec.start_ticks) => Ok(ContainerState::Running {
                pid: rec.pid,
                started_at: rec.started_at,
            }),
            // The shim writes the exit record just after the process ends; give it a moment
            // before deciding the record will never come (the shim itself was killed).
            None => {
                let deadline = Instant::now() + Duration::from_millis(100);
                while Instant::now() < deadline {
                    if let Some(exit) = read_json::<ExitRecord>(&dir.join("exit.json"))? {
                        let _ = exit;
                        return self.container_state(id);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(ContainerState::Exited {
                    exit_code: 255,
                    signal: None,
                    oom_killed: false,
                    started_at: rec.started_at,
                    finished_at: SystemTime::now(),
                })
            }
        }
    }

    fn signal(&self, id: &ContainerId, signal: i32) -> Result<()> {
        let Some(rec) = self.read_container(id)? else {
            return Ok(());
        };
        if !alive(rec.pid, rec.start_ticks) {
            return Ok(());
        }
        let signal = Signal::try_from(signal).map_err(Error::sys(format!("signal {signal}")))?;
        match kill(Pid::from_raw(rec.pid as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::sys(format!("send {signal} to {id}"))(e)),
        }
    }

    fn kill(&self, id: &ContainerId) -> Result<()> {
        self.with_cgroup(&container_cgroup(id), |cg| cg.kill_all())?;
        Ok(())
    }

    fn remove_container(&self, id: &ContainerId) -> Result<()> {
        self.cgroup_remove(&container_cgroup(id))?;
        let dir = self.container_dir(id);
        // The shim is outside the container's cgroup: an empty cgroup does not yet mean it
        // has written the exit record, and a write racing the removal below would leave the
        // directory half-deleted. Give it the moment it needs.
        if dir.join("container.json").exists() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !dir.join("exit.json").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // The container's mounts lived in its own mount namespace and went with its last
        // process; only a warm layer's overlay is mounted in ours, and then plain files.
        let layer = self.layer_dir(id);
        unmount_layer(&layer);
        remove_dir_retrying(&layer, "remove container layer")?;
        // The record dir last (see remove_orphan_container_layers).
        remove_dir_retrying(&dir, "remove container dir")
    }

    fn exec(&self, id: &ContainerId, argv: &[String], timeout: Duration) -> Result<ExecOutput> {
        let Some(rec) = self.read_container(id)? else {
            return Err(Error::Launch {
                reason: format!("container {id} not found"),
            });
        };
        // In the layer, on disk: an exec's output is not bounded while it runs, and the run
        // dir is memory.
        let dir = self.layer_dir(id);
        let n = EXEC_SEQ.fetch_add(1, Ordering::Relaxed);
        let output = dir.join(format!("exec-{n}.out"));
        let exit_file = dir.join(format!("exec-{n}.exit"));
        let mut cgroup_procs = Vec::new();
        self.with_cgroup(&container_cgroup(id), |cg| {
            cgroup_procs = cg
                .paths()
                .iter()
                .map(|d| d.path.join("cgroup.procs"))
                .collect();
            Ok(())
        })?;
        let mut process = rec.process.clone();
        process.argv = argv.to_vec();
        let pid = self.request(&Request::Exec(ExecLaunch {
            target_pid: rec.pid,
            cgroup_procs,
            process,
            output: output.clone(),
            exit_file: exit_file.clone(),
        }));
        let result = pid.and_then(|pid| {
            let deadline = Instant::now() + timeout;
            let mut pause = Duration::from_micros(200);
            let exit_code = loop {
                if let Some(exit) = read_json::<ExitRecord>(&exit_file)? {
                    break Some(exit.exit_code);
                }
                if Instant::now() >= deadline {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    break None;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            };
            let mut out = Vec::new();
            if let Ok(f) = fs::File::open(&output) {
                let _ = f.take(EXEC_OUTPUT_LIMIT as u64).read_to_end(&mut out);
            }
            Ok(ExecOutput {
                exit_code,
                output: out,
            })
        });
        let _ = fs::remove_file(&output);
        let _ = fs::remove_file(&exit_file);
        result
    }

    fn list(&self) -> Result<Vec<(Sandbox, Vec<ContainerId>)>> {
        let root = self.cfg.run_dir.join("sandboxes");
        let mut out = Vec::new();
        let entries = fs::read_dir(&root).map_err(Error::io("list sandboxes", &root))?;
        for entry in entries.flatten() {
            let Some(key) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(rec) = self.read_sandbox(&key)? else {
                continue;
            };
            let mut containers = Vec::new();
            if let Ok(dirs) = fs::read_dir(entry.path()) {
                for d in dirs.flatten() {
                    if let Ok(Some(c)) =
                        read_json::<ContainerRecord>(&d.path().join("container.json"))
                    {
                        containers.push(c.id);
                    }
                }
            }
            containers.sort();
            out.push((rec.sandbox, containers));
        }
        out.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        Ok(out)
    }

    fn usage(&self, id: &ContainerId) -> Result<Option<Usage>> {
        let Some(rec) = self.read_container(id)? else {
            return Ok(None);
        };
        // Only a live container is read: an exited one is about to be removed, and opening
        // its cgroup here would race that removal. A container that ends between this check
        // and the read fails the read ("no longer exists"), which the caller skips.
        if self.container_dir(id).join("exit.json").exists() || !alive(rec.pid, rec.start_ticks) {
            return Ok(None);
        }
        self.with_cgroup(&container_cgroup(id), Cgroup::usage)
    }

    fn log_path(&self, id: &ContainerId) -> PathBuf {
        self.cfg
            .state_dir
            .join("logs")
            .join(&id.sandbox)
            .join(&id.name)
            .join(format!("{}.log", id.attempt))
    }
}

/// Numbers exec output files apart within one agent process.
static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

impl Drop for LinuxRuntime {
    fn drop(&mut self) {
        // Warm sandboxes first, while the launcher still runs: otherwise the refill thread
        // could start a new launcher just to make one more.
        self.shutdown_warm();
        // Closing the launcher's stdin ends it; its containers live on (they are not its
        // children's children in any way that ties them to it).
        self.launcher.close();
        self.warm_launcher.close();
        // Handles must not remove cgroups of containers that outlive this runtime: a handle
        // only removes an empty cgroup, which is what we want for those anyway.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_runc_defaults_with_add_and_drop() {
        let keep = capabilities(&["NET_ADMIN".into()], &["KILL".into(), "cap_chown".into()]);
        assert!(keep.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(!keep.contains(&"CAP_KILL".to_owned()));
        assert!(!keep.contains(&"CAP_CHOWN".to_owned()));
        assert!(keep.contains(&"CAP_SETUID".to_owned()));
        assert!(!keep.contains(&"CAP_SYS_ADMIN".to_owned()));
        assert_eq!(
            capabilities(&["NET_RAW".into()], &["ALL".into()]),
            vec!["CAP_NET_RAW"]
        );
    }

    #[test]
    fn layer_names_read_from_the_right() {
        let cfg = LinuxConfig {
            state_dir: PathBuf::from("/s"),
            run_dir: PathBuf::from("/r"),
            launcher: PathBuf::from("/bin/coxswain"),
            network: None,
            pids_max: None,
            warm_sandboxes: 0,
            warm_layers: 0,
        };
        let id = ContainerId {
            sandbox: "default_web.v1_u1".into(),
            name: "app".into(),
            attempt: 12,
        };
        let layer = layer_dir(&cfg, &id);
        assert_eq!(layer, Path::new("/s/containers/default_web.v1_u1.app.12"));
        let name = layer
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert_eq!(parse_layer_name(name), Some(id.clone()));
        assert_eq!(
            container_dir(&cfg, &id),
            Path::new("/r/sandboxes/default_web.v1_u1/app.12")
        );
        for bad in ["app.12", "a.b.x", "noattempt", ""] {
            assert_eq!(parse_layer_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn start_ticks_reads_our_own_process() {
        let me = std::process::id();
        let ticks = start_ticks(me).unwrap_or(0);
        assert!(ticks > 0);
        assert!(alive(me, ticks));
        assert!(!alive(me, ticks + 1));
    }
}
