//! Cgroups for pods and containers: one per pod and one per container, all under a single
//! `coxswain` parent at the root of each hierarchy (as the kubelet keeps everything under
//! `kubepods`), so the agent never touches a cgroup it did not create and one `ls` shows
//! everything it runs.
//!
//! A [`Cgroup`] carries cpu (shares or weight from the request, a CFS quota from the limit),
//! memory (a hard limit with swap turned off, so a breach ends in the OOM killer and the
//! container's `OOMKilled`) and pids limits, reports usage for the autoscaler and for status,
//! and tears down: [`Cgroup::kill_all`] then [`Cgroup::remove`] leaves no process and no
//! directory behind. [`Resources`] turns Kubernetes' quantities into those numbers with the
//! kubelet's own conversions.
//!
//! Both cgroup versions work through cgroups-rs: v1 (one directory per controller, as on a
//! hybrid host where `/sys/fs/cgroup` is a tmpfs of v1 mounts and cgroup2 sits unused at
//! `/sys/fs/cgroup/unified`) and v2 (`/sys/fs/cgroup` itself is cgroup2). The few files read
//! here by hand are those cgroups-rs does not expose (`memory.events`) or only exposes through
//! code that can panic on v2 (its v2 memory statistics unwrap their reads).

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind as IoErrorKind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cgroups_rs::cpu::CpuController;
use cgroups_rs::cpuacct::CpuAcctController;
use cgroups_rs::error::ErrorKind as CgErrorKind;
use cgroups_rs::freezer::{FreezerController, FreezerState};
use cgroups_rs::hierarchies::{self, V1, V2};
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{CgroupPid, ControllIdentifier, Controller, Hierarchy, MaxValue, Subsystem};
use coxswain_schema::quantity::Quantity;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The first component of every cgroup path the agent creates.
pub const PARENT: &str = "coxswain";

/// The CFS period, in microseconds: the kernel's default, and the kubelet's.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The weight the kernel gives a new cgroup: v1 `cpu.shares`, v2 `cpu.weight`.
const DEFAULT_SHARES: u64 = 1024;
const DEFAULT_WEIGHT: u64 = 100;

/// The fewest cpu shares a cgroup gets (the kernel's minimum); what a container or pod with
/// no cpu request gets, as a BestEffort pod does in Kubernetes.
pub const MIN_SHARES: u64 = 2;

/// The most cpu shares the kernel accepts.
pub const MAX_SHARES: u64 = 262_144;

/// The smallest CFS quota, in microseconds: the kernel refuses less than 1 ms, so the kubelet
/// rounds tiny limits up to it.
pub const MIN_QUOTA_US: u64 = 1_000;

/// How often [`Cgroup::remove`] looks whether the cgroup has emptied.
const REMOVE_POLL: Duration = Duration::from_millis(10);

/// How long [`Cgroup::kill_all`] waits for a v1 freezer to report `FROZEN`. Freezing normally
/// takes microseconds; a task stuck in uninterruptible sleep can hold it in `FREEZING`, and
/// then the kill goes ahead anyway rather than hanging the caller.
const FREEZE_WAIT: Duration = Duration::from_millis(100);

/// The controllers a cgroup must have on v1; `cpuacct` is where v1 keeps cpu usage.
const V1_REQUIRED: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
/// Used on v1 when mounted, so [`Cgroup::kill_all`] can stop forks while it kills.
const V1_OPTIONAL: [&str; 1] = ["freezer"];
/// The controllers a cgroup must have on v2 (cpu usage is in the core `cpu.stat`).
const V2_REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// One hierarchy per controller (legacy, or hybrid with an unused cgroup2 beside it).
    V1,
    /// The unified hierarchy mounted at `/sys/fs/cgroup`.
    V2,
}

impl CgroupVersion {
    /// The version in use: v2 only when `/sys/fs/cgroup` itself is cgroup2. On a hybrid host
    /// the cgroup2 mount at `/sys/fs/cgroup/unified` has the controllers taken by v1, so v1 is
    /// the one that limits anything (this is also what `hierarchies::auto()` picks).
    ///
    /// Looked up once per process: the answer is how the host was booted, and a pod start
    /// asks several times.
    pub fn detect() -> Self {
        static VERSION: OnceLock<CgroupVersion> = OnceLock::new();
        *VERSION.get_or_init(|| {
            if hierarchies::is_cgroup2_unified_mode() {
                Self::V2
            } else {
                Self::V1
            }
        })
    }

    /// The hierarchy handle cgroups-rs wants for every call. On v1 it holds the host's parsed
    /// `/proc/self/mountinfo`, which `V1::new` reads afresh each time (three times per cgroup
    /// made); the cgroup mounts are fixed at boot, so one read per process serves. A
    /// controller mounted later is not seen until the agent restarts, as with the kubelet.
    fn hierarchy(self) -> Box<dyn Hierarchy> {
        static V1_MOUNTS: OnceLock<V1> = OnceLock::new();
        match self {
            Self::V1 => Box::new(V1_MOUNTS.get_or_init(V1::new).clone()),
            Self::V2 => Box::new(V2::new()),
        }
    }
}

/// The limits of one cgroup. `None` (and, as in Kubernetes, a limit of 0) means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// The cpu request, in millicores: sets the relative weight under contention.
    pub cpu_request_millis: Option<u64>,
    /// The cpu limit, in millicores: sets a hard CFS quota.
    pub cpu_limit_millis: Option<u64>,
    /// The memory limit, in bytes: past it the kernel's OOM killer ends a process.
    pub memory_limit_bytes: Option<u64>,
    /// The most tasks that may exist at once (the pids controller counts threads as well as
    /// processes). Kubernetes has no per-container field for it; it is the node's
    /// `podPidsLimit`.
    pub pids_max: Option<u64>,
}

impl Resources {
    /// The resources of a container from its `resources.requests` and `resources.limits`
    /// (the maps of a Kubernetes `ResourceRequirements`). Only `cpu` and `memory` matter here;
    /// other names (`ephemeral-storage`, extended resources) belong to the scheduler.
    ///
    /// As Kubernetes' defaulting does, a cpu limit without a request makes the request equal
    /// to the limit, and as its validation does, a request above its limit or a negative
    /// quantity is refused. A memory request sets no cgroup value (the kubelet sets none
    /// without the MemoryQoS feature); it is only checked against the limit.
    pub fn from_k8s(
        requests: Option<&BTreeMap<String, Quantity>>,
        limits: Option<&BTreeMap<String, Quantity>>,
    ) -> Result<Self> {
        let cpu_request = quantity(requests, "requests", "cpu")?;
        let cpu_limit = quantity(limits, "limits", "cpu")?;
        let memory_request = quantity(requests, "requests", "memory")?;
        let memory_limit = quantity(limits, "limits", "memory")?;
        for (name, request, limit) in [
            ("cpu", &cpu_request, &cpu_limit),
            ("memory", &memory_request, &memory_limit),
        ] {
            if let (Some((request, request_text)), Some((limit, limit_text))) = (request, limit)
                && request > limit
            {
                return Err(Error::Config {
                    field: format!("resources.requests.{name}"),
                    reason: format!(
                        "{request_text} must be less than or equal to {name} limit of {limit_text}"
                    ),
                });
            }
        }
        let cpu_limit = cpu_limit.map(|(v, _)| v);
        Ok(Self {
            cpu_request_millis: cpu_request.map(|(v, _)| v).or(cpu_limit),
            cpu_limit_millis: cpu_limit.filter(|&v| v > 0),
            memory_limit_bytes: memory_limit.map(|(v, _)| v).filter(|&v| v > 0),
            pids_max: None,
        })
    }

    /// v1 `cpu.shares` for the request (Kubernetes' `MilliCPUToShares`).
    pub fn cpu_shares(&self) -> u64 {
        shares_from_millis(self.cpu_request_millis.unwrap_or(0))
    }

    /// v2 `cpu.weight` for the request, from the shares as runc and the kubelet convert them.
    pub fn cpu_weight(&self) -> u64 {
        weight_from_shares(self.cpu_shares())
    }

    /// The CFS quota per [`CPU_PERIOD_US`] for the limit, or `None` for no quota (Kubernetes'
    /// `MilliCPUToQuota`).
    pub fn cpu_quota_us(&self) -> Option<u64> {
        self.cpu_limit_millis.and_then(quota_from_millis)
    }
}

/// One quantity of a requests or limits map, in millicores for cpu and bytes otherwise, with
/// its text for messages.
fn quantity(
    map: Option<&BTreeMap<String, Quantity>>,
    kind: &str,
    name: &str,
) -> Result<Option<(u64, String)>> {
    let Some(q) = map.and_then(|m| m.get(name)) else {
        return Ok(None);
    };
    let field = || format!("resources.{kind}.{name}");
    let value = if name == "cpu" {
        q.milli_value()
    } else {
        q.value()
    }
    .map_err(|e| Error::Config {
        field: field(),
        reason: e.to_string(),
    })?;
    let value = u64::try_from(value).map_err(|_| Error::Config {
        field: field(),
        reason: format!("{q} must be greater than or equal to 0"),
    })?;
    Ok(Some((value, q.as_str().to_owned())))
}

/// Kubernetes' `MilliCPUToShares`: 1024 shares per cpu, at least [`MIN_SHARES`] (so that a
/// request of 0 or none still runs, at the lowest weight) and at most [`MAX_SHARES`].
pub fn shares_from_millis(millis: u64) -> u64 {
    (millis.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// runc's `ConvertCPUSharesToCgroupV2Value`, which the kubelet uses too: maps shares
/// `[2, 262144]` linearly onto v2's weight `[1, 10000]`.
pub fn weight_from_shares(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Kubernetes' `MilliCPUToQuota`: a limit of 0 sets no quota; otherwise the limit's share of
/// [`CPU_PERIOD_US`], at least [`MIN_QUOTA_US`].
pub fn quota_from_millis(millis: u64) -> Option<u64> {
    if millis == 0 {
        return None;
    }
    Some((millis.saturating_mul(CPU_PERIOD_US) / 1000).max(MIN_QUOTA_US))
}

/// What a cgroup has used, for the autoscaler and for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Cpu time consumed since the cgroup was created, in nanoseconds (a counter: the
    /// autoscaler takes the rate between two readings).
    pub cpu_usage_ns: u64,
    /// The working set in bytes: usage less the inactive file cache, which the kernel can
    /// drop at once. It is the figure Kubernetes reports (`kubectl top`, the metrics API) and
    /// its autoscaler scales on.
    pub memory_bytes: u64,
}

/// One directory of a cgroup: on v1 one per hierarchy (a hierarchy may hold several
/// controllers, as `cpu,cpuacct` often does), on v2 the single unified directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The controllers of this directory's hierarchy that the cgroup uses (on v2, cgroups-rs
    /// counts the core freezer among them).
    pub controllers: Vec<String>,
    /// The directory; a process joins by writing its pid to `cgroup.procs` in it.
    pub path: PathBuf,
}

/// A pod's or a container's cgroup, created with [`Cgroup::create`].
///
/// Dropping the handle removes the cgroup if, and only if, it is empty: the kernel refuses to
/// remove one that still has processes or child cgroups, so a drop never kills anything and
/// never blocks. Keep the handle for as long as the cgroup is meant to exist, including while
/// a process is being placed into it by path.
#[derive(Debug)]
pub struct Cgroup {
    path: String,
    version: CgroupVersion,
    /// The controllers this cgroup was created with (cgroups-rs names).
    controllers: Vec<String>,
    inner: cgroups_rs::Cgroup,
    dirs: Vec<CgroupDir>,
}

impl Cgroup {
    /// Creates (or, if it exists, takes over) the cgroup at `path`, relative to the root of
    /// each hierarchy, and applies `res`. `path` must be `coxswain/<name>[/<name>...]`, e.g.
    /// `coxswain/pod-<uid>` for a pod and `coxswain/pod-<uid>/<container>` for one of its
    /// containers; missing parents, the `coxswain` parent included, are created.
    ///
    /// On v2 a cgroup with child cgroups may hold no processes of its own (the kernel's "no
    /// internal processes" rule), so processes go into the leaves (containers).
    pub fn create(path: &str, res: &Resources) -> Result<Cgroup> {
        // One look before: a new cgroup starts at the kernel's defaults, which `apply` then
        // need not write again (three syscalls a value, a few values a cgroup, three cgroups
        // a pod start).
        let fresh = !Self::v1_or_unified_dir(path).is_dir();
        let cgroup = Self::make(path)?;
        cgroup.apply_from(res, fresh)?;
        tracing::debug!(path, version = ?cgroup.version, ?res, "cgroup created");
        Ok(cgroup)
    }

    /// Takes over a cgroup that already exists, keeping its limits: how an agent that
    /// restarted finds the cgroups of the containers it adopts. `None` if it is gone.
    pub fn open(path: &str) -> Result<Option<Cgroup>> {
        check_path(path)?;
        if !Self::v1_or_unified_dir(path).is_dir() {
            return Ok(None);
        }
        Self::make(path).map(Some)
    }

    /// The directory of `path` in the memory hierarchy (v1) or the unified one (v2): where
    /// to look whether a cgroup exists.
    fn v1_or_unified_dir(path: &str) -> PathBuf {
        match CgroupVersion::detect() {
            CgroupVersion::V1 => Path::new("/sys/fs/cgroup/memory").join(path),
            CgroupVersion::V2 => Path::new("/sys/fs/cgroup").join(path),
        }
    }

    /// Creates the cgroup's directories, or takes over existing ones, without setting limits.
    fn make(path: &str) -> Result<Cgroup> {
        check_path(path)?;
        let version = CgroupVersion::detect();
        let available: Vec<String> = version
            .hierarchy()
            .subsystems()
            .iter()
            .map(Subsystem::controller_name)
            .collect();
        let (required, optional): (&[&str], &[&str]) = match version {
            CgroupVersion::V1 => (&V1_REQUIRED, &V1_OPTIONAL),
            CgroupVersion::V2 => (&V2_REQUIRED, &[]),
        };
        if let Some(missing) = required.iter().find(|c| !available.iter().any(|a| a == *c)) {
            return Err(Error::Cgroup {
                path: path.to_owned(),
                reason: format!(
                    "the {missing} controller is not available on this host's cgroup {version:?}"
                ),
            });
        }
        let wanted: Vec<String> = required
            .iter()
            .chain(optional)
            .filter(|c| available.iter().any(|a| a == *c))
            .map(|c| (*c).to_owned())
            .collect();

        // On v1 cgroups-rs makes each controller's directory with one mkdir, so the first two
        // pods of a fresh node, made at once, race to create their common parent and one of
        // them fails. The parents are made here, where an existing one is fine; when the
        // parent is there in the memory hierarchy (all but a node's first pod) one look
        // stands for the ten calls of making sure in each.
        if version == CgroupVersion::V1
            && let Some((parent, _)) = path.rsplit_once('/')
            && !Self::v1_or_unified_dir(parent).is_dir()
        {
            for sub in version.hierarchy().subsystems() {
                if wanted.contains(&sub.controller_name()) {
                    let dir = sub.to_controller().path().join(parent);
                    std::fs::create_dir_all(&dir).map_err(|e| Error::Cgroup {
                        path: path.to_owned(),
                        reason: format!("could not create {}: {e}", dir.display()),
                    })?;
                }
            }
        }
        let new = || match version {
            CgroupVersion::V1 => cgroups_rs::Cgroup::new_with_specified_controllers(
                version.hierarchy(),
                path,
                Some(wanted.clone()),
            ),
            // On v2 every controller the root offers is enabled down the path, as runc and
            // the kubelet do. Naming ours instead would go through cgroups-rs' check against
            // `cgroup.controllers`, which does not trim the file's newline and so refuses
            // whichever controller is listed last.
            CgroupVersion::V2 => cgroups_rs::Cgroup::new(version.hierarchy(), path),
        };
        // On v2 cgroups-rs checks that a parent exists before making it, so an agent (or a
        // test) creating a sibling at the same moment can make it fail with EEXIST; the second
        // attempt finds the parent there.
        let inner = new().or_else(|_| new()).map_err(cg_err(path, "create"))?;
        // What the handle has: on v2 that is every root controller plus the freezer, which
        // cgroups-rs always offers there (it is a core file, not a controller).
        let controllers: Vec<String> = inner
            .subsystems()
            .iter()
            .map(Subsystem::controller_name)
            .collect();

        let mut dirs: Vec<CgroupDir> = Vec::new();
        for sub in inner.subsystems() {
            let controller = sub.to_controller();
            let dir = controller.path().to_path_buf();
            match dirs.iter_mut().find(|d| d.path == dir) {
                Some(d) => d.controllers.push(sub.controller_name()),
                None => dirs.push(CgroupDir {
                    controllers: vec![sub.controller_name()],
                    path: dir,
                }),
            }
        }
        let cgroup = Cgroup {
            path: path.to_owned(),
            version,
            controllers,
            inner,
            dirs,
        };
        // cgroups-rs only logs a failed mkdir on v1; find out here rather than at the first
        // write. Returning drops `cgroup`, which removes whatever did get created.
        if let Some(dir) = cgroup.dirs.iter().find(|d| !d.path.is_dir()) {
            return Err(Error::Cgroup {
                path: path.to_owned(),
                reason: format!("could not create {}", dir.path.display()),
            });
        }
        Ok(cgroup)
    }

    /// Sets every limit of `res`, lifting those it leaves unset, so applying to a cgroup that
    /// already exists (after an agent restart, or to resize in place) leaves no old value.
    pub fn apply(&self, res: &Resources) -> Result<()> {
        self.apply_from(res, false)
    }

    /// [`Cgroup::apply`]; with `fresh`, for a cgroup just made, a value the kernel starts a
    /// new cgroup at (no quota, no memory or pids limit, the default weight) is not written.
    fn apply_from(&self, res: &Resources, fresh: bool) -> Result<()> {
        let path = self.path.as_str();
        let cpu: &CpuController = self.controller("cpu")?;
        let (weight, default_weight) = match self.version {
            CgroupVersion::V1 => (res.cpu_shares(), DEFAULT_SHARES),
            CgroupVersion::V2 => (res.cpu_weight(), DEFAULT_WEIGHT),
        };
        if !(fresh && weight == default_weight) {
            cpu.set_shares(weight)
                .map_err(cg_err(path, "set cpu weight"))?;
        }
        let quota = match res.cpu_quota_us() {
            Some(q) => i64::try_from(q).map_err(|_| too_big(path, "cpu limit"))?,
            // -1 is v1's "no quota"; cgroups-rs writes it as `max` on v2.
            None => -1,
        };
        // A new cgroup has no quota and the default period, which is ours.
        if !(fresh && quota == -1) {
            cpu.set_cfs_quota_and_period(Some(quota), Some(CPU_PERIOD_US))
                .map_err(cg_err(path, "set cpu quota"))?;
        }

        let memory: &MemController = self.controller("memory")?;
        let limit = match res.memory_limit_bytes.filter(|&b| b > 0) {
            Some(b) => i64::try_from(b).map_err(|_| too_big(path, "memory limit"))?,
            None => -1,
        };
        let dir = memory.path();
        match self.version {
            // Nothing to lift or set: a new cgroup has no memory (nor memory+swap) limit.
            CgroupVersion::V1 if fresh && limit == -1 => {}
            CgroupVersion::V1 => {
                // Swap off, as the kubelet has it, so the limit is a limit and not a slow
                // spill to disk. v1 wants memory+swap >= memory at every step: lift it, set
                // memory, then pin memory+swap to the same value. The file exists only with
                // swap accounting.
                let memsw = dir.join("memory.memsw.limit_in_bytes").exists();
                if memsw {
                    memory
                        .set_memswap_limit(-1)
                        .map_err(cg_err(path, "lift memory+swap limit"))?;
                }
                memory
                    .set_limit(limit)
                    .map_err(cg_err(path, "set memory limit"))?;
                if memsw && limit >= 0 {
                    memory
                        .set_memswap_limit(limit)
                        .map_err(cg_err(path, "set memory+swap limit"))?;
                }
            }
            CgroupVersion::V2 => {
                if !(fresh && limit == -1) {
                    memory
                        .set_limit(limit)
                        .map_err(cg_err(path, "set memory.max"))?;
                }
                // On v2 this file is swap alone; 0 is the kubelet's NoSwap.
                if dir.join("memory.swap.max").exists() {
                    memory
                        .set_memswap_limit(0)
                        .map_err(cg_err(path, "set memory.swap.max"))?;
                }
            }
        }

        let pids: &PidController = self.controller("pids")?;
        let max = match res.pids_max.filter(|&n| n > 0) {
            Some(n) => MaxValue::Value(i64::try_from(n).map_err(|_| too_big(path, "pids max"))?),
            None => MaxValue::Max,
        };
        if !(fresh && max == MaxValue::Max) {
            pids.set_pid_max(max)
                .map_err(cg_err(path, "set pids.max"))?;
        }
        Ok(())
    }

    /// The path relative to each hierarchy's root, as given to [`Cgroup::create`].
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The cgroup version this cgroup lives in.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Every directory of this cgroup: a process placed by path (between fork and exec, or
    /// with `clone3`'s `CLONE_INTO_CGROUP` on v2) must join each of them.
    pub fn paths(&self) -> &[CgroupDir] {
        &self.dirs
    }

    /// Moves process `pid`, with all its threads, into this cgroup (every controller). Its
    /// children from now on are born inside.
    pub fn add_task(&self, pid: u32) -> Result<()> {
        self.inner
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .map_err(cg_err(&self.path, &format!("add process {pid}")))
    }

    /// The processes in this cgroup and in its descendants, sorted. An unreadable cgroup reads
    /// as empty (what cgroups-rs does), which [`Cgroup::remove`] then notices when the kernel
    /// refuses to remove it.
    pub fn procs(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = std::iter::once(self.inner.procs())
            .chain(self.descendants().iter().map(|p| self.load(p).procs()))
            .flatten()
            .filter_map(|p| u32::try_from(p.pid).ok())
            // cgroups-rs reads an unparsable line as pid 0, and kill(0) would signal our own
            // process group.
            .filter(|&p| p != 0)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Cpu and memory used by this cgroup and its descendants.
    pub fn usage(&self) -> Result<Usage> {
        // cgroups-rs reads a missing file as 0; a vanished cgroup must not look idle.
        self.check_exists()?;
        let path = self.path.as_str();
        match self.version {
            CgroupVersion::V1 => {
                let cpuacct: &CpuAcctController = self.controller("cpuacct")?;
                let memory: &MemController = self.controller("memory")?;
                let stat = memory.memory_stat();
                Ok(Usage {
                    cpu_usage_ns: cpuacct.cpuacct().usage,
                    memory_bytes: stat
                        .usage_in_bytes
                        .saturating_sub(stat.stat.total_inactive_file),
                })
            }
            CgroupVersion::V2 => {
                let cpu: &CpuController = self.controller("cpu")?;
                let usage_usec = keyed_value(&cpu.cpu().stat, "usage_usec")
                    .ok_or_else(|| unreadable(path, "cpu.stat has no usage_usec"))?;
                let dir = self.controller::<MemController>("memory")?.path();
                let current = read_file(dir, "memory.current")?;
                let current: u64 = current
                    .trim()
                    .parse()
                    .map_err(|_| unreadable(path, "memory.current is not a number"))?;
                let inactive =
                    keyed_value(&read_file(dir, "memory.stat")?, "inactive_file").unwrap_or(0);
                Ok(Usage {
                    cpu_usage_ns: usage_usec.saturating_mul(1000),
                    memory_bytes: current.saturating_sub(inactive),
                })
            }
        }
    }

    /// How many processes the kernel's OOM killer has ended in this cgroup (v1
    /// `memory.oom_control`, v2 `memory.events`, which also counts descendants). It counts
    /// kills for the limit and system-wide OOM kills alike, as Kubernetes' `OOMKilled` does.
    pub fn oom_kill_count(&self) -> Result<u64> {
        self.check_exists()?;
        let memory: &MemController = self.controller("memory")?;
        match self.version {
            CgroupVersion::V1 => Ok(memory.memory_stat().oom_control.oom_kill),
            CgroupVersion::V2 => {
                let events = read_file(memory.path(), "memory.events")?;
                keyed_value(&events, "oom_kill")
                    .ok_or_else(|| unreadable(&self.path, "memory.events has no oom_kill"))
            }
        }
    }

    /// Whether the OOM killer has ended any process here: with a container's main process
    /// killed by SIGKILL, its status becomes `OOMKilled`.
    pub fn oom_killed(&self) -> Result<bool> {
        Ok(self.oom_kill_count()? > 0)
    }

    /// Sends SIGKILL to every process in the cgroup and its descendants, and returns without
    /// waiting for them to die ([`Cgroup::remove`] waits). On v2 this is `cgroup.kill`, which
    /// the kernel does atomically. Elsewhere (v1, v2 before Linux 5.14) the cgroup is frozen
    /// first, as runc does, so that no process can fork a child past the kill, then thawed so
    /// the pending SIGKILLs take effect; waiting for the freeze may block for up to 100 ms.
    pub fn kill_all(&self) -> Result<()> {
        if self.version == CgroupVersion::V2 {
            match self.inner.kill() {
                Ok(()) => return Ok(()),
                Err(e) if *e.kind() == CgErrorKind::InvalidOperation => {}
                Err(e) => return Err(cg_err(&self.path, "write cgroup.kill")(e)),
            }
        }
        let freezer: Option<&FreezerController> = self.controller("freezer").ok();
        let frozen = freezer.is_some_and(|f| self.freeze(f));
        let killed = self.signal_all(Signal::SIGKILL);
        if let (true, Some(f)) = (frozen, freezer) {
            f.thaw().map_err(cg_err(&self.path, "thaw"))?;
        }
        killed
    }

    /// Waits until the cgroup and its descendants have no process, for at most `timeout`,
    /// polling without blocking the runtime, then removes them all (children first). Removing
    /// a cgroup that is already gone succeeds. A cgroup still busy at the deadline is an
    /// error and stays in place, so the caller can [`Cgroup::kill_all`] and try again.
    pub async fn remove(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.empty_by(deadline, timeout)? {
            tokio::time::sleep(REMOVE_POLL).await;
        }
        let tree = self.removal_order();
        let path = self.path.clone();
        let (version, controllers) = (self.version, self.controllers.clone());
        // cgroups-rs retries a busy rmdir with sleeps; keep those off the async threads.
        tokio::task::spawn_blocking(move || delete_tree(version, &controllers, &tree))
            .await
            .map_err(|e| Error::Cgroup {
                path,
                reason: format!("removal task failed: {e}"),
            })?
    }

    /// [`Cgroup::remove`] for callers outside an async runtime (a `Drop`, a test guard):
    /// sleeps between its looks instead of awaiting.
    pub fn remove_blocking(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.empty_by(deadline, timeout)? {
            std::thread::sleep(REMOVE_POLL);
        }
        delete_tree(self.version, &self.controllers, &self.removal_order())
    }

    /// Whether the subtree is empty; an error once `deadline` has passed with it still busy.
    fn empty_by(&self, deadline: Instant, timeout: Duration) -> Result<bool> {
        let procs = self.procs();
        if procs.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Err(Error::Cgroup {
                path: self.path.clone(),
                reason: format!(
                    "still has {} process(es) after {timeout:?}: {procs:?}",
                    procs.len()
                ),
            });
        }
        Ok(false)
    }

    /// Descendants deepest first, then this cgroup: the order the kernel can remove them in.
    fn removal_order(&self) -> Vec<String> {
        let mut tree = self.descendants();
        tree.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
        tree.push(self.path.clone());
        tree
    }

    /// Freezes the cgroup and waits (briefly) for the kernel to confirm; whether it froze.
    fn freeze(&self, freezer: &FreezerController) -> bool {
        if let Err(e) = freezer.freeze() {
            tracing::warn!(path = %self.path, error = %e, "could not freeze before killing");
            return false;
        }
        let deadline = Instant::now() + FREEZE_WAIT;
        while !matches!(freezer.state(), Ok(FreezerState::Frozen)) {
            if Instant::now() >= deadline {
                tracing::warn!(path = %self.path, "still freezing; killing anyway");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Sends `signal` to every process of the subtree; a process already gone is no error.
    fn signal_all(&self, signal: Signal) -> Result<()> {
        let me = std::process::id();
        let mut first_error = None;
        for pid in self.procs() {
            // Never the agent itself, nor init, should they ever end up in here.
            if pid == me || pid == 1 {
                tracing::warn!(path = %self.path, pid, "not signalling a process of the agent's own");
                continue;
            }
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            match kill(Pid::from_raw(raw), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    first_error.get_or_insert(Error::Sys {
                        context: format!("cgroup {}: send {signal} to {pid}", self.path),
                        source: e,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The paths (relative, like `self.path`) of every cgroup below this one, found in all of
    /// its directories.
    fn descendants(&self) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        for dir in &self.dirs {
            walk(&dir.path, &self.path, &mut found);
        }
        found.sort();
        found.dedup();
        found
    }

    /// A cgroups-rs handle to `path` with this cgroup's controllers.
    fn load(&self, path: &str) -> cgroups_rs::Cgroup {
        load(self.version, &self.controllers, path)
    }

    fn controller<'a, T>(&'a self, name: &str) -> Result<&'a T>
    where
        &'a T: From<&'a Subsystem>,
        T: Controller + ControllIdentifier,
    {
        self.inner
            .controller_of::<T>()
            .ok_or_else(|| Error::Cgroup {
                path: self.path.clone(),
                reason: format!("has no {name} controller"),
            })
    }

    fn check_exists(&self) -> Result<()> {
        match self.dirs.iter().find(|d| !d.path.is_dir()) {
            Some(d) => Err(Error::Cgroup {
                path: self.path.clone(),
                reason: format!("{} no longer exists", d.path.display()),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // One rmdir per directory, no retries: the kernel refuses while processes or child
        // cgroups remain (EBUSY), which is exactly when the cgroup must stay.
        for dir in &self.dirs {
            match fs::remove_dir(&dir.path) {
                Ok(()) => {
                    tracing::debug!(path = %dir.path.display(), "empty cgroup removed on drop")
                }
                Err(e) if e.kind() == IoErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => {}
                Err(e) => {
                    tracing::warn!(path = %dir.path.display(), error = %e, "cgroup left on drop");
                }
            }
        }
    }
}

fn load(version: CgroupVersion, controllers: &[String], path: &str) -> cgroups_rs::Cgroup {
    cgroups_rs::Cgroup::load_with_specified_controllers(
        version.hierarchy(),
        path,
        controllers.to_vec(),
    )
}

/// Removes each cgroup of `tree` in order (children before parents); one already gone is
/// skipped.
fn delete_tree(version: CgroupVersion, controllers: &[String], tree: &[String]) -> Result<()> {
    for path in tree {
        let cgroup = load(version, controllers, path);
        if cgroup.exists() {
            cgroup.delete().map_err(cg_err(path, "remove"))?;
        }
    }
    tracing::debug!(path = tree.last().map(String::as_str), "cgroup removed");
    Ok(())
}

/// Adds to `found` the relative path of every directory below `dir`, where `dir` is the
/// cgroup at relative path `rel`. Cgroup filesystems hold no symlinks, so this ends.
fn walk(dir: &Path, rel: &str, found: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let child = format!("{rel}/{name}");
        walk(&entry.path(), &child, found);
        found.push(child);
    }
}

/// Accepts `coxswain/<name>[/<name>...]` with names of letters, digits, `-`, `_` and `.`:
/// anything else could escape the parent (`..`), name another tool's cgroup, or (an
/// absolute path) make cgroups-rs panic on a path outside its mount.
fn check_path(path: &str) -> Result<()> {
    let bad = |reason: &str| Error::Config {
        field: "cgroup path".to_owned(),
        reason: format!("{path:?} {reason}"),
    };
    let mut parts = path.split('/');
    if parts.next() != Some(PARENT) {
        return Err(bad(&format!("must start with {PARENT}/")));
    }
    let mut count = 0;
    for part in parts {
        count += 1;
        if part.is_empty() || part == "." || part == ".." {
            return Err(bad("has an empty, `.` or `..` component"));
        }
        if part.len() > 255 {
            return Err(bad("has a component longer than 255 bytes"));
        }
        if !part
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            return Err(bad(
                "may only hold letters, digits, '-', '_', '.' and '/' between names",
            ));
        }
    }
    if count == 0 {
        return Err(bad(&format!("must name a cgroup below {PARENT}/")));
    }
    Ok(())
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn read_file(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    fs::read_to_string(&path).map_err(Error::io("read cgroup file", path))
}

fn cg_err(path: &str, what: &str) -> impl FnOnce(cgroups_rs::error::Error) -> Error {
    let path = path.to_owned();
    let what = what.to_owned();
    move |e| Error::Cgroup {
        path,
        reason: format!("{what}: {e}"),
    }
}

fn unreadable(path: &str, reason: &str) -> Error {
    Error::Cgroup {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn too_big(path: &str, what: &str) -> Error {
    Error::Cgroup {
        path: path.to_owned(),
        reason: format!("{what} is too large for the kernel"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_milli_cpu_to_shares() {
        for (millis, shares) in [
            (0, 2),
            (1, 2),
            (2, 2),
            (10, 10),
            (100, 102),
            (250, 256),
            (500, 512),
            (1000, 1024),
            (2500, 2560),
            (256_000, 262_144),
            (300_000, 262_144),
            (u64::MAX, 262_144),
        ] {
            assert_eq!(shares_from_millis(millis), shares, "{millis}m");
        }
    }

    #[test]
    fn weight_follows_runc_conversion() {
        for (shares, weight) in [
            (0, 1),
            (2, 1),
            (102, 4),
            (256, 10),
            (1024, 39),
            (2048, 79),
            (262_144, 10_000),
            (1_000_000, 10_000),
        ] {
            assert_eq!(weight_from_shares(shares), weight, "{shares} shares");
        }
    }

    #[test]
    fn quota_follows_milli_cpu_to_quota() {
        for (millis, quota) in [
            (0, None),
            (1, Some(1_000)),
            (9, Some(1_000)),
            (10, Some(1_000)),
            (11, Some(1_100)),
            (200, Some(20_000)),
            (1000, Some(100_000)),
            (1500, Some(150_000)),
        ] {
            assert_eq!(quota_from_millis(millis), quota, "{millis}m");
        }
    }

    /// A requests or limits map as written in a test table.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity::new(*v)))
            .collect()
    }

    #[test]
    fn from_k8s_converts_quantities() {
        let r = |cpu_req, cpu_lim, mem| Resources {
            cpu_request_millis: cpu_req,
            cpu_limit_millis: cpu_lim,
            memory_limit_bytes: mem,
            pids_max: None,
        };
        let cases: &[(Pairs, Pairs, Resources)] = &[
            (&[], &[], r(None, None, None)),
            (&[("cpu", "250m")], &[], r(Some(250), None, None)),
            (
                &[("cpu", "0.1"), ("memory", "64Mi")],
                &[("cpu", "1"), ("memory", "128Mi")],
                r(Some(100), Some(1000), Some(128 << 20)),
            ),
            // Kubernetes defaults a missing request to the limit.
            (&[], &[("cpu", "500m")], r(Some(500), Some(500), None)),
            (&[], &[("memory", "1G")], r(None, None, Some(1_000_000_000))),
            // A limit of 0 is no limit.
            (
                &[],
                &[("cpu", "0"), ("memory", "0")],
                r(Some(0), None, None),
            ),
            // Other resources are the scheduler's business.
            (
                &[("ephemeral-storage", "1Gi")],
                &[("example.com/gpu", "1")],
                r(None, None, None),
            ),
            // Fractions of a millicore or byte round up, as Kubernetes' ScaledValue does.
            (&[("cpu", "0.0001")], &[], r(Some(1), None, None)),
        ];
        for (requests, limits, want) in cases {
            let got = Resources::from_k8s(Some(&map(requests)), Some(&map(limits))).unwrap();
            assert_eq!(&got, want, "requests {requests:?} limits {limits:?}");
        }
        assert_eq!(
            Resources::from_k8s(None, None).unwrap(),
            r(None, None, None)
        );
    }

    #[test]
    fn from_k8s_refuses_bad_quantities() {
        let cases: &[(Pairs, Pairs, &str)] = &[
            (&[("cpu", "2")], &[("cpu", "1")], "resources.requests.cpu"),
            (
                &[("memory", "256Mi")],
                &[("memory", "128Mi")],
                "resources.requests.memory",
            ),
            (&[("cpu", "-1")], &[], "resources.requests.cpu"),
            (&[], &[("memory", "-5")], "resources.limits.memory"),
            (&[], &[("cpu", "lots")], "resources.limits.cpu"),
            (&[("memory", "1Xi")], &[], "resources.requests.memory"),
        ];
        for (requests, limits, want_field) in cases {
            match Resources::from_k8s(Some(&map(requests)), Some(&map(limits))) {
                Err(Error::Config { field, .. }) => assert_eq!(&field, want_field),
                other => panic!("requests {requests:?} limits {limits:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn resources_derive_cgroup_values() {
        let none = Resources::default();
        assert_eq!(
            (none.cpu_shares(), none.cpu_weight(), none.cpu_quota_us()),
            (2, 1, None)
        );
        let some = Resources {
            cpu_request_millis: Some(1000),
            cpu_limit_millis: Some(200),
            ..Resources::default()
        };
        assert_eq!(
            (some.cpu_shares(), some.cpu_weight(), some.cpu_quota_us()),
            (1024, 39, Some(20_000))
        );
    }

    #[test]
    fn paths_must_stay_below_the_parent() {
        for ok in [
            "coxswain/pod-1",
            "coxswain/pod-0b1c/app",
            "coxswain/a.b_c-D",
        ] {
            check_path(ok).unwrap();
        }
        for bad in [
            "",
            "coxswain",
            "coxswain/",
            "/coxswain/x",
            "coxswain/../x",
            "coxswain/./x",
            "coxswain//x",
            "coxswain/x/",
            "other/x",
            "coxswainx/y",
            "coxswain/a b",
            "coxswain/a\nb",
            "kubepods/x",
        ] {
            assert!(
                matches!(check_path(bad), Err(Error::Config { .. })),
                "{bad:?} was accepted"
            );
        }
        let long = format!("coxswain/{}", "a".repeat(256));
        assert!(check_path(&long).is_err());
    }

    #[test]
    fn create_refuses_a_bad_path_before_touching_anything() {
        // Validation comes first, so this holds without root and without cgroups.
        assert!(matches!(
            Cgroup::create("../etc", &Resources::default()),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let events = "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "oom"), Some(2));
        assert_eq!(keyed_value(events, "oom_group_kill"), Some(0));
        assert_eq!(keyed_value(events, "missing"), None);
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(keyed_value(stat, "usage_usec"), Some(123_456));
        assert_eq!(keyed_value("usage_usec x\n", "usage_usec"), None);
    }
}
