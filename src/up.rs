//! `coxswain up`: everything on one machine. A single-member store in `./.coxswain/`, the
//! controllers and the scheduler, a local node agent, and the sync of `examples-repo/` of
//! the current checkout; while it runs it prints what is running whenever that changes.
//! Ctrl-C stops it and removes every pod it ran (processes, mounts, cgroups, the bridge).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coxswain_reconciler::prune::PrunePolicy;
use coxswain_reconciler::source::{Location, Reference, SourceConfig};
use coxswain_reconciler::sync::read_status;
use coxswain_store::{Consistency, Kv, Member};
use serde_json::Value;

use crate::agent::{Agent, NodeArgs};
use crate::server::{Settings, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Git repository to follow (a work tree or a bare repository, or a URL).
    #[arg(long, default_value = ".")]
    repo: String,
    /// The folder of manifests inside the repository.
    #[arg(long, default_value = "examples-repo")]
    path: String,
    /// Where the store keeps its data.
    #[arg(long, default_value = ".coxswain")]
    data: PathBuf,
    /// Where the store listens (`coxswain get` finds it through --data either way).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// How long pods get to stop on the way out before they are killed.
    #[arg(long, default_value = "10s", value_parser = humantime_secs)]
    stop_grace: Duration,
    #[command(flatten)]
    node: NodeArgs,
}

fn humantime_secs(text: &str) -> Result<Duration, String> {
    let digits = text.strip_suffix('s').unwrap_or(text);
    digits
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{text:?} is not a number of seconds such as 10s"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let token = local_token(&args.data)?;
    // A local checkout is followed at whatever is checked out (its HEAD), as the user sees
    // it; a URL has no checkout, so its default branch setting applies.
    let mut source = SourceConfig::local_head(args.repo.clone());
    if !matches!(source.location(), Ok(Location::Local(_))) {
        source.reference = Reference::default();
    }
    source.path = Some(args.path.clone());
    source.cache_dir = Some(args.data.join("git"));
    source.validate().context("the Git source")?;
    let settings = Settings {
        id: 1,
        data: args.data.clone(),
        listen: args.listen.clone(),
        advertise: None,
        join: None,
        token,
        snapshot_every: 10_000,
        // The embedded store shares the process with the agent and controllers, and its idle
        // memory counts: it keeps the store crate's small default.
        memtable_budget: coxswain_store::db::DEFAULT_MEMTABLE_BUDGET,
        min_free_bytes: coxswain_store::member::DEFAULT_MIN_FREE_BYTES,
        source: Some(source),
        prune: PrunePolicy::new(coxswain_reconciler::prune::DEFAULT_MAX_SHARE, false)?,
    };
    let agent = Agent::build(&args.node)?;
    let stopper = agent.stopper();
    let rt = crate::runtime::build()?;
    let result = rt.block_on(async move {
        let running = crate::server::start(settings).await?;
        let member = running.member.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        println!(
            "coxswain up: following {} in {}; node {}; data in {} (coxswain get pods -A --data {})",
            args.path,
            args.repo,
            agent.name,
            args.data.display(),
            args.data.display()
        );
        let agent_task = tokio::spawn(agent.run(Arc::new(member.clone()), stop_rx.clone()));
        let summary = tokio::spawn(print_summaries(member, stop_rx));
        shutdown_signal().await;
        println!("coxswain up: stopping");
        let _ = stop_tx.send(true);
        let agent_result = agent_task.await.context("the agent panicked")?;
        let _ = summary.await;
        running.finish().await?;
        agent_result
    });
    // The pods go last, whatever happened above: `up` must not leave processes, mounts or
    // cgroups behind.
    let grace = args.stop_grace;
    let stopped = stopper.stop_workloads(grace);
    result?;
    stopped?;
    println!("coxswain up: stopped; every pod was removed");
    Ok(ExitCode::SUCCESS)
}

/// The token of this data folder: made once, kept in `DATA/token` (mode 0600), so that a
/// restart keeps working with what `coxswain get` read before.
fn local_token(data: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// Prints the summary whenever it changes (checked twice a second) until `stop`.
async fn print_summaries(member: Member, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last = String::new();
    loop {
        match summary(&member).await {
            Ok(text) if text != last => {
                println!("{text}");
                last = text;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "could not read the summary"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The sync state and commit, the workloads and their health, and the pods on each node.
async fn summary(member: &Member) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let (record, attempt) = read_status(member, "default").await?;
    match (&attempt, &record) {
        (Some(a), _) => {
            let _ = write!(out, "── commit {} {}", short(&a.commit), a.state.as_str());
            if let Some(r) = record.as_ref().filter(|r| r.commit != a.commit) {
                let _ = write!(out, " (running {})", short(&r.commit));
            }
            out.push('\n');
            for e in &a.errors {
                let _ = writeln!(
                    out,
                    "   {}:{}:{} {} {}",
                    e.file, e.line, e.column, e.pointer, e.reason
                );
            }
        }
        (None, _) => out.push_str("── no commit synced yet\n"),
    }
    for item in list(member, "/apps/Deployment/").await? {
        let desired = item
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let int = |p: &str| item.pointer(p).and_then(Value::as_i64).unwrap_or(0);
        let _ = writeln!(
            out,
            "   deployment {}/{}: {}/{desired} ready, {} up to date, {} available",
            text(&item, "/metadata/namespace"),
            text(&item, "/metadata/name"),
            int("/status/readyReplicas"),
            int("/status/updatedReplicas"),
            int("/status/availableReplicas"),
        );
    }
    let now = chrono::Utc::now();
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in list(member, "/core/Pod/").await? {
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("(not scheduled)")
            .to_owned();
        let row = crate::get::pod_row(&pod, now);
        let ip = pod
            .pointer("/status/podIP")
            .and_then(Value::as_str)
            .unwrap_or("-");
        by_node.entry(node).or_default().push(format!(
            "{}/{} {} {} {ip}",
            text(&pod, "/metadata/namespace"),
            text(&pod, "/metadata/name"),
            row[0],
            row[1],
        ));
    }
    for (node, pods) in by_node {
        let _ = writeln!(out, "   node {node}: {} pod(s)", pods.len());
        for p in pods {
            let _ = writeln!(out, "     {p}");
        }
    }
    Ok(out.trim_end().to_owned())
}

async fn list(member: &Member, prefix: &str) -> anyhow::Result<Vec<Value>> {
    let page = member
        .list(prefix, 0, None, Consistency::Serializable)
        .await?;
    Ok(page.items.into_iter().map(|kv| kv.value).collect())
}

fn text<'a>(item: &'a Value, pointer: &str) -> &'a str {
    item.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
