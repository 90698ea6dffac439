//! `coxswain agent --server ADDR --token T`: the node agent. It registers this machine as a
//! Node, heartbeats it, and runs the Pods bound to it as real processes (see the node crate's
//! `agent` module). Stopping the agent (Ctrl-C, SIGTERM) leaves its workloads running, as
//! stopping the kubelet does; the next agent adopts them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coxswain_node::agent::metrics;
use coxswain_node::agent::node::{NodeConfig, host_node, run_heartbeat};
use coxswain_node::agent::pods::{self, PodsConfig};
use coxswain_node::agent::resolve::{NodeResolver, ObjectCache};
use coxswain_node::image::ImageStore;
use coxswain_node::logs;
use coxswain_node::net::BridgeConfig;
use coxswain_node::pod::{NetProber, WorkerConfig};
use coxswain_node::runtime::Runtime;
use coxswain_node::runtime::linux::{
    DEFAULT_WARM_LAYERS, DEFAULT_WARM_SANDBOXES, LinuxConfig, LinuxRuntime, prepare_run_dir,
};
use coxswain_node::volume::HostPathPolicy;
use coxswain_store::{Client, Kv};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A store member to talk to (host:port of `coxswain server`); repeat for several.
    #[arg(long, required = true)]
    server: Vec<String>,
    /// The cluster's shared token (or set COXSWAIN_TOKEN).
    #[arg(long, env = "COXSWAIN_TOKEN", hide_env_values = true)]
    token: String,
    #[command(flatten)]
    node: NodeArgs,
}

/// The node's own settings, shared by `coxswain agent` and `coxswain up`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The Node's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Where the runtime keeps its data: the containers' writable layers, their logs and the
    /// pods' volumes.
    #[arg(long, default_value = "/var/lib/coxswain/node")]
    state_dir: PathBuf,
    /// Where the runtime keeps its records of sandboxes and containers and the pod IPs, all
    /// of which die with the machine; a tmpfs is mounted there unless it is on one already.
    #[arg(long, default_value = "/run/coxswain/node")]
    run_dir: PathBuf,
    /// The node-wide image store.
    #[arg(long, default_value = "/var/lib/coxswain/images")]
    images: PathBuf,
    /// The node's pod CIDR; the bridge takes its first address.
    #[arg(long, default_value = "10.88.0.0/24")]
    pod_cidr: String,
    /// The node's bridge.
    #[arg(long, default_value = "cox0")]
    bridge: String,
    /// A host path prefix hostPath volumes may use; repeat for several (none: no hostPath).
    #[arg(long = "host-path-prefix")]
    host_path_prefixes: Vec<PathBuf>,
    /// A label for the Node, KEY=VALUE; repeat for several.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The first crash-loop back-off, in seconds (the kubelet's is 10).
    #[arg(long, default_value_t = 10.0)]
    backoff_base: f64,
    /// The most pids one container may have.
    #[arg(long, default_value_t = 4096)]
    pids_max: u64,
    /// How many pod sandboxes (namespaces, veth and IP) to keep made ahead of pods, so a pod
    /// starts without waiting for them; 0 turns this off.
    #[arg(long, default_value_t = DEFAULT_WARM_SANDBOXES)]
    warm_sandboxes: usize,
    /// How many container layers (the writable layer and the overlay over the image) to keep
    /// mounted ahead for each of the last images containers started from, each with a
    /// container's first process made on it (its mounts built, waiting for a pod); 0 turns
    /// this off.
    #[arg(long, default_value_t = DEFAULT_WARM_LAYERS)]
    warm_layers: usize,
    /// A container log is rotated once it holds this many bytes (the kubelet's
    /// containerLogMaxSize, 10Mi).
    #[arg(long, default_value_t = logs::DEFAULT_MAX_BYTES)]
    log_max_bytes: u64,
    /// How many files one container's log may span, the live one included (the kubelet's
    /// containerLogMaxFiles); at least 2.
    #[arg(long, default_value_t = logs::DEFAULT_MAX_FILES)]
    log_max_files: usize,
    /// How often each container's cpu and memory usage is sampled and stored as PodMetrics,
    /// in seconds (metrics-server's resolution is 15).
    #[arg(long, default_value_t = 15.0)]
    metrics_period: f64,
}

/// How often the agent looks for logs to rotate; the kubelet checks every 10 s as well.
const LOG_ROTATE_EVERY: Duration = Duration::from_secs(10);

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let agent = Agent::build(&args.node)?;
    let client = Arc::new(Client::new(args.server.clone(), &args.token));
    let rt = crate::runtime::build()?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        println!(
            "coxswain agent: node {} running pods from {}",
            agent.name,
            args.server.join(",")
        );
        let running = tokio::spawn(agent.run(client, stop_rx));
        tokio::select! {
            () = crate::server::shutdown_signal() => {}
            r = running => {
                return r.context("the agent panicked")?;
            }
        }
        let _ = stop_tx.send(true);
        println!("coxswain agent: stopped; workloads keep running");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A node agent, set up and ready to run against a store: `coxswain agent` runs one over
/// the network client, `coxswain up` one over its own in-process member.
pub struct Agent {
    pub name: String,
    node_cfg: NodeConfig,
    runtime: Arc<LinuxRuntime>,
    resolver: Arc<NodeResolver>,
    pods: PodsConfig,
    logs_dir: PathBuf,
    log_max_bytes: u64,
    log_max_files: usize,
    metrics_period: Duration,
    bridge: String,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Checks the settings and sets up the runtime (its state dir, the launcher, the bridge).
    pub fn build(args: &NodeArgs) -> anyhow::Result<Agent> {
        let name = match &args.name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .context("reading the host name")?
                .to_string_lossy()
                .to_lowercase(),
        };
        let cidr: ipnet::Ipv4Net = args
            .pod_cidr
            .parse()
            .with_context(|| format!("--pod-cidr {:?} is not an IPv4 CIDR", args.pod_cidr))?;
        let mut node_cfg = NodeConfig::new(&name);
        node_cfg.pod_cidr = Some(cidr.to_string());
        for label in &args.labels {
            let (k, v) = label
                .split_once('=')
                .with_context(|| format!("--label {label:?} is not KEY=VALUE"))?;
            node_cfg.labels.insert(k.to_owned(), v.to_owned());
        }
        node_cfg.validate().context("the node's settings")?;
        if !(args.backoff_base.is_finite() && args.backoff_base > 0.0) {
            anyhow::bail!("--backoff-base must be a positive number of seconds");
        }
        if !(args.metrics_period.is_finite() && args.metrics_period >= 1.0) {
            anyhow::bail!("--metrics-period must be at least 1 second");
        }
        if args.log_max_bytes == 0 || args.log_max_files < 2 {
            anyhow::bail!("--log-max-bytes must be above 0 and --log-max-files at least 2");
        }

        let launcher = std::env::current_exe().context("finding the coxswain binary")?;
        prepare_run_dir(&args.run_dir).context("preparing the runtime's run dir")?;
        let runtime = Arc::new(
            LinuxRuntime::new(LinuxConfig {
                state_dir: args.state_dir.clone(),
                run_dir: args.run_dir.clone(),
                launcher,
                network: Some(BridgeConfig {
                    name: args.bridge.clone(),
                    cidr,
                }),
                pids_max: Some(args.pids_max),
                warm_sandboxes: args.warm_sandboxes,
                warm_layers: args.warm_layers,
            })
            .context("setting up the container runtime")?,
        );
        let host_ip = host_ip().map(|ip| ip.to_string());
        let objects = Arc::new(ObjectCache::default());
        let mut resolver = NodeResolver::new(
            ImageStore::open(&args.images).context("opening the image store")?,
            objects,
            HostPathPolicy {
                allowed_prefixes: args.host_path_prefixes.clone(),
            },
            args.state_dir.join("volumes"),
            name.clone(),
            host_ip.clone(),
        );
        resolver.node_allocatable = host_node(&node_cfg)
            .context("reading the host's capacity")?
            .status
            .and_then(|s| s.allocatable)
            .unwrap_or_default();
        let mut worker = WorkerConfig::new(&name);
        worker.host_ip = host_ip;
        worker.backoff_base = Duration::from_secs_f64(args.backoff_base);
        Ok(Agent {
            name,
            node_cfg,
            runtime,
            resolver: Arc::new(resolver),
            pods: PodsConfig {
                worker,
                relist: Duration::from_secs(1),
            },
            logs_dir: args.state_dir.join("logs"),
            log_max_bytes: args.log_max_bytes,
            log_max_files: args.log_max_files,
            metrics_period: Duration::from_secs_f64(args.metrics_period),
            bridge: args.bridge.clone(),
        })
    }

    /// Registers the Node, heartbeats it, rotates logs, samples usage and runs the pods bound to it until
    /// `stop` turns true. The workloads keep running after it returns.
    pub async fn run<K: Kv + 'static>(
        self,
        kv: Arc<K>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let heartbeat = {
            let (kv, node_cfg, stop) = (kv.clone(), self.node_cfg.clone(), stop.clone());
            tokio::spawn(async move { run_heartbeat(kv.as_ref(), &node_cfg, stop).await })
        };
        let rotation = tokio::spawn(rotate_logs(
            self.logs_dir.clone(),
            self.log_max_bytes,
            self.log_max_files,
            stop.clone(),
        ));
        let runtime: Arc<dyn Runtime> = self.runtime.clone();
        let metrics = tokio::spawn(metrics::run(
            kv.clone(),
            runtime.clone(),
            self.name.clone(),
            self.metrics_period,
            stop.clone(),
        ));
        let result = pods::run(
            kv,
            runtime,
            self.resolver.clone(),
            Arc::new(NetProber),
            self.pods.clone(),
            stop,
        )
        .await;
        let _ = heartbeat.await;
        let _ = rotation.await;
        match metrics.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the usage sampler stopped"),
            Err(e) => tracing::warn!(error = %e, "the usage sampler panicked"),
        }
        result.context("the pod loop")
    }

    /// Hands out the pieces a caller needs to stop the workloads after [`Agent::run`] took
    /// the agent.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            runtime: self.runtime.clone(),
            resolver: self.resolver.clone(),
            bridge: self.bridge.clone(),
        }
    }
}

/// Stops an agent's workloads after the agent itself has stopped (see [`Agent::stopper`]).
pub struct Stopper {
    runtime: Arc<LinuxRuntime>,
    resolver: Arc<NodeResolver>,
    bridge: String,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("bridge", &self.bridge)
            .finish_non_exhaustive()
    }
}

impl Stopper {
    /// Stops every pod (SIGTERM, then SIGKILL after `grace`), removes their sandboxes,
    /// cgroups and mounts, and takes the pod bridge down.
    pub fn stop_workloads(&self, grace: Duration) -> anyhow::Result<()> {
        pods::stop_all(self.runtime.as_ref(), &self.resolver, grace)
            .context("stopping the pods")?;
        self.runtime.shutdown_warm();
        coxswain_node::net::teardown(&self.bridge).context("removing the pod bridge")?;
        Ok(())
    }
}

/// Rotates the containers' logs every [`LOG_ROTATE_EVERY`] until told to stop. The walk
/// touches the disk, so it runs off the async threads.
async fn rotate_logs(
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(LOG_ROTATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let dir = dir.clone();
        let done =
            tokio::task::spawn_blocking(move || logs::rotate_all(&dir, max_bytes, max_files)).await;
        match done {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(rotated = n, "rotated container logs"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot rotate container logs"),
            Err(e) => tracing::warn!(error = %e, "the log rotation task failed"),
        }
    }
}

/// The address this host reaches the network from: the source address of a route to a
/// public address. A UDP connect sends nothing.
fn host_ip() -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}
