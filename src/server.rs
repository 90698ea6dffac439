//! `coxswain server`: one member of the replicated store, serving the internal RPC.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use coxswain_reconciler::controller::deployment::DeploymentController;
use coxswain_reconciler::controller::gc::GarbageCollector;
use coxswain_reconciler::controller::namespace::NamespaceController;
use coxswain_reconciler::controller::replicaset::ReplicaSetController;
use coxswain_reconciler::controller::scheduler::SchedulerController;
use coxswain_reconciler::controller::{Manager, ManagerConfig, leader_flag};
use coxswain_reconciler::prune::PrunePolicy;
use coxswain_reconciler::source::{Reference, Source, SourceConfig};
use coxswain_reconciler::sync::{Outcome, SyncConfig, Syncer};
use coxswain_store::client::{JoinRequest, JoinResponse, Peer};
use coxswain_store::{Error, Member, MemberConfig, server};

use crate::config::FileConfig;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read these settings from a YAML file; flags given as well win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This member's id, unique in the cluster (a positive number).
    #[arg(long)]
    id: Option<u64>,
    /// Where this member keeps its RocksDB and snapshots.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:7400 (port 0 picks a free port) [default:
    /// 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<String>,
    /// Address other members reach this one at; defaults to the address listened on.
    #[arg(long)]
    advertise: Option<String>,
    /// Join the cluster that a member at this address belongs to, instead of starting a new one.
    #[arg(long)]
    join: Option<String>,
    /// The cluster's shared token (or set COXSWAIN_TOKEN).
    #[arg(long, env = "COXSWAIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Take a snapshot (and purge the log before it) every this many entries [default: 10000].
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// MiB of RocksDB memtables, all column families together [default: 32]. Larger ones
    /// flush and compact less under heavy writes; `coxswain up` keeps 8.
    #[arg(long, value_parser = clap::value_parser!(u64).range(crate::config::MEMTABLE_MIB))]
    memtable_mib: Option<u64>,
    /// MiB to keep free on the data folder's disk [default: 128]. Below it the member
    /// refuses writes (HTTP 507) and keeps serving reads, before RocksDB runs out of space
    /// mid-write; 0 turns the check off.
    #[arg(long, value_parser = clap::value_parser!(u64).range(crate::config::MIN_FREE_MIB))]
    min_free_mib: Option<u64>,
    #[command(flatten)]
    sync: SyncArgs,
}

/// The Git source this member syncs while it is the leader (none: store only).
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Repository to sync from: a local path, file://, git://, https:// or ssh.
    #[arg(long)]
    repo: Option<String>,
    /// Folder inside the repository that holds the manifests.
    #[arg(long)]
    path: Option<String>,
    /// Follow this branch (the default is main).
    #[arg(long, conflicts_with_all = ["tag", "commit"])]
    branch: Option<String>,
    /// Follow this tag.
    #[arg(long, conflicts_with = "commit")]
    tag: Option<String>,
    /// Stay at this commit.
    #[arg(long)]
    commit: Option<String>,
    /// Look for a new commit this often when no watch or webhook says so sooner (e.g. 30s, 1m).
    #[arg(long, value_parser = coxswain_reconciler::source::parse_duration)]
    interval: Option<Duration>,
    /// Where bare caches of remote repositories are kept (default: DATA/git).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Push the status notes (refs/notes/coxswain) to a remote repository.
    #[arg(long)]
    push_notes: bool,
    /// Hold back a commit that deletes more than this share of the Git-owned objects
    /// [default: 0.25].
    #[arg(long)]
    prune_max_share: Option<f64>,
    /// Let every commit prune, whatever it deletes.
    #[arg(long)]
    allow_prune: bool,
}

/// A dedicated member's memtable budget: under heavy writes it takes about a quarter less disk
/// traffic per put than the embedded store's 8 MiB (docs/benchmarks.md), and memory after a
/// million writes stays near 60 MiB.
const SERVER_MEMTABLE_MIB: u64 = 32;

/// The settings of one member, from the flags over the config file over the defaults.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) id: u64,
    pub(crate) data: PathBuf,
    pub(crate) listen: String,
    pub(crate) advertise: Option<String>,
    pub(crate) join: Option<String>,
    pub(crate) token: String,
    pub(crate) snapshot_every: u64,
    /// Bytes of RocksDB memtables (`MemberConfig::memtable_budget`).
    pub(crate) memtable_budget: usize,
    /// Bytes kept free on the data folder's disk (`MemberConfig::min_free_bytes`).
    pub(crate) min_free_bytes: u64,
    pub(crate) source: Option<SourceConfig>,
    pub(crate) prune: PrunePolicy,
}

impl Settings {
    fn resolve(args: Args) -> anyhow::Result<Settings> {
        let (file, file_token) = match &args.config {
            Some(path) => {
                let file = crate::config::load(path)?;
                let token = file.token(path)?;
                (file, token)
            }
            None => (FileConfig::default(), None),
        };
        let Some(id) = args.id.or(file.id) else {
            bail!("the member id is missing: pass --id or set id in the config file");
        };
        if id == 0 {
            bail!("--id must be a positive number");
        }
        let Some(data) = args.data.or(file.data) else {
            bail!("the data folder is missing: pass --data or set data in the config file");
        };
        let token = args.token.or(file_token).unwrap_or_default();
        if token.is_empty() {
            bail!(
                "the cluster token is missing; pass --token, set COXSWAIN_TOKEN, or set token or token_file in the config file"
            );
        }
        let s = args.sync;
        let mut source = match (s.repo, file.source) {
            (Some(repo), Some(from_file)) => Some(SourceConfig { repo, ..from_file }),
            (Some(repo), None) => Some(SourceConfig::new(repo)),
            (None, from_file) => from_file,
        };
        if let Some(cfg) = source.as_mut() {
            if s.path.is_some() {
                cfg.path = s.path;
            }
            match (s.branch, s.tag, s.commit) {
                (_, Some(t), _) => cfg.reference = Reference::Tag(t),
                (_, _, Some(c)) => cfg.reference = Reference::Commit(c),
                (Some(b), _, _) => cfg.reference = Reference::Branch(b),
                _ => {}
            }
            if let Some(i) = s.interval {
                cfg.interval = i;
            }
            if let Some(dir) = s.cache_dir {
                cfg.cache_dir = Some(dir);
            }
            if cfg.cache_dir.is_none() {
                cfg.cache_dir = Some(data.join("git"));
            }
            cfg.push_notes |= s.push_notes;
            cfg.validate()?;
        } else if s.path.is_some() || s.branch.is_some() || s.tag.is_some() || s.commit.is_some() {
            bail!(
                "--path, --branch, --tag and --commit need a source: pass --repo or set source in the config file"
            );
        }
        let prune = PrunePolicy::new(
            s.prune_max_share
                .or(file.prune.max_share)
                .unwrap_or(coxswain_reconciler::prune::DEFAULT_MAX_SHARE),
            s.allow_prune || file.prune.allow,
        )?;
        Ok(Settings {
            id,
            data,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:7400".to_string()),
            advertise: args.advertise.or(file.advertise),
            join: args.join.or(file.join),
            token,
            snapshot_every: args
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(10_000),
            // Both are within `config::MEMTABLE_MIB` (clap and the file's reader check), so
            // the shift cannot overflow.
            memtable_budget: (args
                .memtable_mib
                .or(file.memtable_mib)
                .unwrap_or(SERVER_MEMTABLE_MIB) as usize)
                << 20,
            // Within `config::MIN_FREE_MIB` (clap and the file's reader check): no overflow.
            min_free_bytes: args
                .min_free_mib
                .or(file.min_free_mib)
                .map_or(coxswain_store::member::DEFAULT_MIN_FREE_BYTES, |mib| {
                    mib << 20
                }),
            source,
            prune,
        })
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(args)?;
    let rt = crate::runtime::build()?;
    rt.block_on(async move {
        let running = start(settings).await?;
        shutdown_signal().await;
        running.finish().await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A started member: its RPC server, its sync loop (with a source) and its controllers.
pub(crate) struct Running {
    pub member: Member,
    /// Where the member is reached (its advertised address).
    pub address: String,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    sync: Option<tokio::task::JoinHandle<()>>,
    controllers: tokio::task::JoinHandle<coxswain_reconciler::Result<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Stops the sync loop and the controllers, then the RPC server and the member, and
    /// waits for all of them.
    pub async fn finish(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(sync) = self.sync {
            sync.await.context("sync task")?;
        }
        self.controllers
            .await
            .context("controllers task")?
            .context("the controllers")?;
        self.server.await.context("server task")??;
        Ok(())
    }
}

/// Starts one member from its settings and returns once it serves.
pub(crate) async fn start(args: Settings) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let bound = listener.local_addr()?.to_string();
    let advertise = args.advertise.clone().unwrap_or_else(|| bound.clone());
    let mut cfg = MemberConfig::new(args.id, &args.data, &advertise, &args.token);
    cfg.snapshot_every = args.snapshot_every.max(10);
    cfg.memtable_budget = args.memtable_budget;
    cfg.min_free_bytes = args.min_free_bytes;
    let member = Member::start(cfg, args.join.is_none())
        .await
        .with_context(|| format!("starting member {} in {}", args.id, args.data.display()))?;
    // `coxswain get --data` finds this member through its data folder.
    crate::get::write_endpoint(&args.data, &advertise, &args.token)?;
    // Tests and scripts read this line to learn the port.
    println!("coxswain server: member {} listening on {bound}", args.id);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sync = match &args.source {
        Some(source) => Some(start_sync(
            source,
            args.prune,
            member.clone(),
            stop_rx.clone(),
        )?),
        None => None,
    };
    let controllers = {
        let manager = control_plane(&member);
        let leader = leader_flag(&member);
        let mut stop = stop_rx.clone();
        tokio::spawn(manager.run(leader, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    let server = {
        let mut stop = stop_rx.clone();
        tokio::spawn(server::serve(listener, member.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    if let Some(join) = &args.join {
        let joined = join_cluster(&args.token, join, args.id, &advertise).await?;
        // The leader's first append gave this member its cluster id; the answer must agree.
        if joined.cluster.as_deref() != member.cluster_id() {
            bail!(
                "joined cluster {:?} but this member holds cluster id {:?}",
                joined.cluster,
                member.cluster_id()
            );
        }
        println!(
            "coxswain server: member {} joined the cluster of {join} (cluster {})",
            args.id,
            joined.cluster.as_deref().unwrap_or("?")
        );
    }
    Ok(Running {
        member,
        address: advertise,
        stop: stop_tx,
        server,
        sync,
        controllers,
    })
}

/// The controllers and the scheduler; every member runs them while it is the Raft leader.
fn control_plane(member: &Member) -> Manager<Member> {
    let mut manager = Manager::new(Arc::new(member.clone()), ManagerConfig::default());
    manager
        .add(DeploymentController::default())
        .add(ReplicaSetController::default())
        .add(SchedulerController)
        .add(GarbageCollector::default())
        .add(NamespaceController);
    manager
}

/// Opens the source and runs the sync loop while this member leads; the loop writes its
/// pending notes and ends when `stop` turns true.
fn start_sync(
    cfg: &SourceConfig,
    prune: PrunePolicy,
    member: Member,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let source = Source::open(cfg).context("opening the Git source")?;
    let mut triggers = source.triggers().context("watching the Git source")?;
    let config = SyncConfig {
        prune,
        ..SyncConfig::default()
    };
    let mut syncer = Syncer::new(member.clone(), source, config)?;
    let id = member.id();
    let mut metrics = member.raft().metrics();
    // The health of the applied commit follows its workloads: a change under these prefixes
    // (controllers' status writes, the node agents' Pod status) asks for a health refresh.
    // Bursts (a rollout writes many objects) are coalesced: a refresh runs at most once per
    // `HEALTH_COALESCE`, that long after the first change it covers.
    const HEALTH_PREFIXES: [&str; 2] = ["/apps/", "/core/Pod/"];
    const HEALTH_COALESCE: Duration = Duration::from_millis(150);
    let changed = Arc::new(tokio::sync::Notify::new());
    let watchers: Vec<tokio::task::JoinHandle<()>> = HEALTH_PREFIXES
        .into_iter()
        .map(|prefix| {
            let member = member.clone();
            let changed = Arc::clone(&changed);
            let mut stop = stop.clone();
            // A second handle to read the flag while `stop.wait_for` holds the first.
            let stopping = stop.clone();
            tokio::spawn(async move {
                loop {
                    match coxswain_store::Kv::watch(&member, prefix, 0, false).await {
                        Ok(mut stream) => {
                            // Changes made while no watch ran were missed: look once.
                            changed.notify_one();
                            loop {
                                tokio::select! {
                                    batch = stream.recv() => match batch {
                                        Some(Ok(_)) => changed.notify_one(),
                                        // At shutdown the store ends its watches before
                                        // this task sees `stop`; that is not worth a warning.
                                        _ if *stopping.borrow() => return,
                                        Some(Err(e)) => {
                                            tracing::warn!("health watch of {prefix}: {e}; watching again");
                                            break;
                                        }
                                        None => break,
                                    },
                                    _ = stop.wait_for(|s| *s) => return,
                                }
                            }
                        }
                        Err(_) if *stopping.borrow() => return,
                        Err(e) => tracing::warn!("health watch of {prefix}: {e}; retrying"),
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            })
        })
        .collect();
    Ok(tokio::spawn(async move {
        // The poll interval is also when the applied commit is checked against the store
        // and drift is put back, as Flux does; a watch or webhook wake-up only looks for new
        // commits.
        let mut poll = false;
        let mut sync_now = true;
        let mut applied: Option<String> = None;
        let mut last_health: Option<(String, coxswain_reconciler::notes::CommitState)> = None;
        // When the coalesced health refresh is due; `None`: no change waiting for one.
        let mut health_due: Option<tokio::time::Instant> = None;
        loop {
            let leads = metrics.borrow().current_leader == Some(id);
            if leads && sync_now {
                let outcome = match poll {
                    true => syncer.resync().await,
                    false => syncer.sync_once().await,
                };
                match outcome {
                    Ok(Outcome::Unchanged { .. }) => {}
                    Ok(Outcome::Applied {
                        commit, summary, ..
                    }) => {
                        let what = match applied.as_deref() == Some(commit.as_str()) {
                            true => "corrected drift of",
                            false => "applied",
                        };
                        println!(
                            "coxswain server: {what} {commit}: {} created, {} updated, {} deleted, {} unchanged",
                            summary.created, summary.updated, summary.deleted, summary.unchanged
                        );
                        applied = Some(commit);
                    }
                    Ok(Outcome::Rejected { commit, errors }) => {
                        println!(
                            "coxswain server: rejected {commit}: {} error(s); the last good commit keeps running",
                            errors.len()
                        );
                        for e in &errors {
                            println!(
                                "  {}:{}:{} {} {}",
                                e.file, e.line, e.column, e.pointer, e.reason
                            );
                        }
                    }
                    Ok(Outcome::Held { commit, reason }) => {
                        println!("coxswain server: held {commit}: {reason}")
                    }
                    Err(e) => tracing::warn!("sync: {e}"),
                }
                // After every look (an apply, a drift check, a new term as leader) the
                // health is evaluated at once rather than after the next workload change.
                health_due = Some(tokio::time::Instant::now());
            }
            sync_now = false;
            if leads && health_due.is_some_and(|at| at <= tokio::time::Instant::now()) {
                health_due = None;
                match syncer.refresh_health().await {
                    Ok(Some(report)) => {
                        let now = Some((report.commit.clone(), report.state));
                        if report.changed && last_health != now {
                            println!("coxswain server: {} is {}", report.commit, report.state);
                        }
                        last_health = now;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("health: {e}"),
                }
            }
            // A follower also wakes when it becomes the leader, to sync at once.
            tokio::select! {
                wake = triggers.wait() => {
                    poll = wake.poll;
                    sync_now = true;
                }
                _ = metrics.wait_for(|m| m.current_leader == Some(id)), if !leads => {
                    poll = false;
                    sync_now = true;
                }
                () = changed.notified(), if health_due.is_none() => {
                    health_due = Some(tokio::time::Instant::now() + HEALTH_COALESCE);
                }
                () = tokio::time::sleep_until(health_due.unwrap_or_else(tokio::time::Instant::now)), if leads && health_due.is_some() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        syncer.close().await;
        for watcher in watchers {
            let _ = watcher.await;
        }
    }))
}

/// Asks the cluster to add this member, following the hint to the leader.
async fn join_cluster(token: &str, via: &str, id: u64, addr: &str) -> anyhow::Result<JoinResponse> {
    let peer = Peer::new(token);
    let mut target = via.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r: Result<JoinResponse, Error> = peer
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
            Ok(joined) => return Ok(joined),
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

pub(crate) async fn shutdown_signal() {
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
