//! `coxswain server`: one member of the replicated store, serving the internal RPC.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use coxswain_store::client::{JoinRequest, Peer};
use coxswain_store::{Error, Member, MemberConfig, server};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// This member's id, unique in the cluster (a positive number).
    #[arg(long)]
    id: u64,
    /// Where this member keeps its RocksDB and snapshots.
    #[arg(long)]
    data: PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:7400 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// Address other members reach this one at; defaults to the address listened on.
    #[arg(long)]
    advertise: Option<String>,
    /// Join the cluster that a member at this address belongs to, instead of starting a new one.
    #[arg(long)]
    join: Option<String>,
    /// The cluster's shared token (or set COXSWAIN_TOKEN).
    #[arg(long, env = "COXSWAIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Take a snapshot (and purge the log before it) every this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.id == 0 {
        bail!("--id must be a positive number");
    }
    if args.token.is_empty() {
        bail!("the cluster token is empty; pass --token or set COXSWAIN_TOKEN");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let bound = listener.local_addr()?.to_string();
    let advertise = args.advertise.clone().unwrap_or_else(|| bound.clone());
    let mut cfg = MemberConfig::new(args.id, &args.data, &advertise, &args.token);
    cfg.snapshot_every = args.snapshot_every.max(10);
    let member = Member::start(cfg, args.join.is_none())
        .await
        .with_context(|| format!("starting member {} in {}", args.id, args.data.display()))?;
    // Tests and scripts read this line to learn the port.
    println!("coxswain server: member {} listening on {bound}", args.id);
    let server = tokio::spawn(server::serve(listener, member.clone(), shutdown_signal()));
    if let Some(join) = &args.join {
        join_cluster(&args.token, join, args.id, &advertise).await?;
        println!(
            "coxswain server: member {} joined the cluster of {join}",
            args.id
        );
    }
    server.await.context("server task")??;
    Ok(())
}

/// Asks the cluster to add this member, following the hint to the leader.
async fn join_cluster(token: &str, via: &str, id: u64, addr: &str) -> anyhow::Result<()> {
    let peer = Peer::new(token);
    let mut target = via.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r: Result<(), Error> = peer
            .call(
                &target,
                "/cluster/join",
                &JoinRequest {
                    id,
                    addr: addr.into(),
                },
                Some(Duration::from_secs(30)),
            )
            .await;
        match r {
            Ok(()) => return Ok(()),
            Err(Error::NotLeader {
                leader: Some((_, leader)),
            }) => target = leader,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tracing::warn!("join via {target}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
                target = via.to_string();
            }
            Err(e) => return Err(e).with_context(|| format!("joining the cluster via {via}")),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
