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
use coxswain_node::agent::node::{NodeConfig, host_node, run_heartbeat};
use coxswain_node::agent::pods::{self, PodsConfig};
use coxswain_node::agent::resolve::{NodeResolver, ObjectCache};
use coxswain_node::image::ImageStore;
use coxswain_node::net::BridgeConfig;
use coxswain_node::pod::{NetProber, WorkerConfig};
use coxswain_node::runtime::Runtime;
use coxswain_node::runtime::linux::{LinuxConfig, LinuxRuntime};
use coxswain_node::volume::HostPathPolicy;
use coxswain_store::Client;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A store member to talk to (host:port of `coxswain server`); repeat for several.
    #[arg(long, required = true)]
    server: Vec<String>,
    /// The cluster's shared token (or set COXSWAIN_TOKEN).
    #[arg(long, env = "COXSWAIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The Node's name [default: the host name].
    #[arg(long)]
    name: Option<String>,
    /// Where the runtime keeps its sandboxes, containers, logs and pod IPs.
    #[arg(long, default_value = "/var/lib/coxswain/node")]
    state_dir: PathBuf,
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
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
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

    let launcher = std::env::current_exe().context("finding the coxswain binary")?;
    let runtime = Arc::new(
        LinuxRuntime::new(LinuxConfig {
            state_dir: args.state_dir.clone(),
            launcher,
            network: Some(BridgeConfig {
                name: args.bridge.clone(),
                cidr,
            }),
            pids_max: Some(args.pids_max),
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
    let resolver = Arc::new(resolver);
    let mut worker = WorkerConfig::new(&name);
    worker.host_ip = host_ip;
    worker.backoff_base = Duration::from_secs_f64(args.backoff_base);
    let cfg = PodsConfig {
        worker,
        relist: Duration::from_secs(1),
    };
    let client = Arc::new(Client::new(args.server.clone(), &args.token));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let heartbeat = {
            let (client, node_cfg, stop_rx) = (client.clone(), node_cfg.clone(), stop_rx.clone());
            tokio::spawn(async move { run_heartbeat(client.as_ref(), &node_cfg, stop_rx).await })
        };
        let runtime_dyn: Arc<dyn Runtime> = runtime.clone();
        let loop_task = tokio::spawn(pods::run(
            client.clone(),
            runtime_dyn,
            resolver,
            Arc::new(NetProber),
            cfg,
            stop_rx,
        ));
        println!(
            "coxswain agent: node {name} running pods from {}",
            args.server.join(",")
        );
        tokio::select! {
            () = crate::server::shutdown_signal() => {}
            r = loop_task => {
                let _ = stop_tx.send(true);
                r.context("the pod loop panicked")?.context("the pod loop")?;
                return Ok(());
            }
        }
        let _ = stop_tx.send(true);
        let _ = heartbeat.await;
        println!("coxswain agent: stopped; workloads keep running");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
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
