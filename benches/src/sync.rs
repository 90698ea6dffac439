//! `coxswain-bench sync`: how fast a commit gets from Git into the store, on a generated
//! repository of 10,000 objects held in a real Git repository (made with the `git` CLI) and
//! synced into a real single-member store (openraft + RocksDB in a temp dir).
//!
//! It measures the four figures the GitOps core promises, each beside its target: the first
//! full sync on an empty store (validate every file, plan, one Raft txn of every object); a
//! one-file incremental sync (one ConfigMap changed, so one object updated); a no-op poll (the
//! ref has not moved), beside `git ls-remote` asking the same question of the same repository
//! as a process, once for the local path and once through a `file://` URL, the path a remote
//! source takes (fetch into a bare cache); and commit → stored, the latency from the moment
//! `refs/heads/main` moves to the sync loop having applied that commit, woken by the notify
//! watch on the repository's refs. Timings are printed, never asserted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coxswain_reconciler::notes::SyncSummary;
use coxswain_reconciler::source::{Reference, Source, SourceConfig, Triggers};
use coxswain_reconciler::sync::{Outcome, SyncConfig, Syncer};
use coxswain_store::{Member, MemberConfig};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::common::{bar, files_under, ms};
use crate::generate;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A smaller run that ends within a minute: about 2,000 objects and fewer samples.
    #[arg(long)]
    quick: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The targets of the GitOps core issue, on the 2-core reference machine.
const TARGET_FULL_MS: f64 = 1000.0;
const TARGET_INCREMENTAL_MS: f64 = 20.0;
const TARGET_NOOP_POLL_MS: f64 = 2.0;
const TARGET_COMMIT_TO_STORED_P50_MS: f64 = 50.0;

/// The folder of the repository the source reads, as a GitOps repository usually keeps its
/// manifests below the root.
const DEPLOY: &str = "deploy";

/// How long to wait for the sync loop to apply one commit before calling the run broken.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    /// `debug` or `release`: the figures only mean something in a release build.
    build: &'static str,
    cores: usize,
    git_version: String,
    files: usize,
    objects: usize,
    full_sync: FullSync,
    incremental: Incremental,
    noop_poll: Vec<Poll>,
    commit_to_stored: Latency,
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
struct FullSync {
    /// Each run is the first sync of a fresh `Syncer` into a fresh store.
    runs: usize,
    created: u32,
    median_ms: f64,
    best_ms: f64,
    /// The very first run in this process, which also compiles the JSON schema of each kind.
    first_in_process_ms: f64,
    target_ms: f64,
}

#[derive(Debug, Serialize)]
struct Incremental {
    #[serde(flatten)]
    stats: Stats,
    /// Objects updated by each commit (one ConfigMap).
    updated_per_commit: u32,
    target_ms: f64,
}

#[derive(Debug, Serialize)]
struct Poll {
    /// `local path` or `file:// URL`.
    via: &'static str,
    repo: String,
    /// `sync_once` when the ref has not moved.
    coxswain: Stats,
    /// The first sync through this source, when it is not the one that filled the store: a
    /// fetch into an empty bare cache, validation and a plan with nothing to write.
    first_sync_ms: Option<f64>,
    peer_command: String,
    /// The peer as a process, start to exit.
    peer: Stats,
    target_ms: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
    #[serde(flatten)]
    stats: Stats,
    /// The notify watch's coalescing window (`Triggers` default), part of every sample.
    quiet_window_ms: f64,
    /// The `git update-ref` process that moves the branch, included in every sample.
    update_ref_process: Stats,
    /// Idle time between two commits, so one sample's work does not spill into the next.
    gap_ms: f64,
    target_p50_ms: f64,
}

/// Nearest-rank percentiles; `samples` is never empty where this is called, and an empty one
/// reports zeros rather than panicking.
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

/// Runs `git` in `dir` as a bare CI machine would: a fixed identity, no signing (a user's
/// global `commit.gpgsign` would otherwise prompt), and no automatic gc, whose background
/// repack would land in the middle of a timed sample.
fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = git_command(dir, args)
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.args(["-c", "commit.gpgsign=false", "-c", "gc.auto=0"])
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "coxswain-bench")
        .env("GIT_AUTHOR_EMAIL", "bench@coxswain.invalid")
        .env("GIT_COMMITTER_NAME", "coxswain-bench")
        .env("GIT_COMMITTER_EMAIL", "bench@coxswain.invalid");
    cmd
}

/// The generated files that hold a ConfigMap with `LOG_LEVEL`, which the incremental and
/// latency samples edit (one file per commit).
fn app_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in files_under(dir)? {
        if std::fs::read_to_string(&p)?.contains("\n  LOG_LEVEL: ") {
            out.push(p);
        }
    }
    if out.is_empty() {
        bail!("the generated repository has no ConfigMap with LOG_LEVEL to change");
    }
    Ok(out)
}

/// Changes one ConfigMap value, to a value no earlier change used, so every commit updates
/// exactly one object. Files are visited in a stride so consecutive commits touch different
/// folders, as unrelated changes by different people would.
fn change_one_file(apps: &[PathBuf], seq: usize) -> anyhow::Result<()> {
    let path = &apps[(seq * 7919) % apps.len()];
    let text = std::fs::read_to_string(path)?;
    let key = "\n  LOG_LEVEL: ";
    let start = text
        .find(key)
        .map(|i| i + key.len())
        .with_context(|| format!("{} has no LOG_LEVEL", path.display()))?;
    let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
    let changed = format!("{}bench-{seq}{}", &text[..start], &text[end..]);
    std::fs::write(path, changed)?;
    Ok(())
}

fn source_config(repo: &str, cache_dir: Option<PathBuf>) -> SourceConfig {
    let mut cfg = SourceConfig::new(repo);
    cfg.reference = Reference::Branch("main".into());
    cfg.path = Some(DEPLOY.into());
    cfg.cache_dir = cache_dir;
    cfg
}

async fn start_member(dir: &Path) -> anyhow::Result<Member> {
    // Nothing dials the advertised address: the member is never asked to join or serve.
    let member = Member::start(
        MemberConfig::new(1, dir, "127.0.0.1:1", "bench-token"),
        true,
    )
    .await
    .context("starting the store member")?;
    member
        .wait_for_leader(Duration::from_secs(10))
        .await
        .context("waiting for the store member to lead")?;
    Ok(member)
}

/// `sync_once` that must apply; anything else means the generated repository or the bench is
/// broken, and a timing of it would be meaningless.
async fn apply_once(syncer: &mut Syncer) -> anyhow::Result<(String, SyncSummary, Duration)> {
    let started = Instant::now();
    let outcome = syncer.sync_once().await?;
    let elapsed = started.elapsed();
    match outcome {
        Outcome::Applied {
            commit, summary, ..
        } => Ok((commit, summary, elapsed)),
        other => bail!("expected the commit to be applied, got {other:?}"),
    }
}

/// One member, one syncer, and the store's data folder, kept alive together.
#[derive(Debug)]
struct Running {
    member: Member,
    syncer: Syncer,
    _store_dir: tempfile::TempDir,
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.syncer.close().await;
        self.member.shutdown().await?;
        Ok(())
    }
}

/// The first sync into a fresh store, `runs` times. Returns the last store and syncer, which
/// the later phases go on with.
async fn full_syncs(
    repo: &Path,
    runs: usize,
    objects: usize,
    pb: &ProgressBar,
) -> anyhow::Result<(FullSync, Running)> {
    let mut times = Vec::with_capacity(runs);
    let mut created = 0;
    let mut kept = None;
    for run in 0..runs {
        let store_dir = tempfile::tempdir()?;
        let member = start_member(store_dir.path()).await?;
        let source = Source::open(&source_config(&repo.display().to_string(), None))?;
        let mut syncer = Syncer::new(member.clone(), source, SyncConfig::default())?;
        let (_, summary, elapsed) = apply_once(&mut syncer).await?;
        if summary.created as usize != objects {
            bail!(
                "the full sync created {} objects, expected {objects}",
                summary.created
            );
        }
        created = summary.created;
        times.push(elapsed);
        pb.inc(1);
        let running = Running {
            member,
            syncer,
            _store_dir: store_dir,
        };
        if run + 1 < runs {
            running.stop().await?;
        } else {
            kept = Some(running);
        }
    }
    let running = kept.context("no full sync ran")?;
    let first = times.first().copied().unwrap_or_default();
    times.sort_unstable();
    Ok((
        FullSync {
            runs,
            created,
            median_ms: times.get(times.len() / 2).copied().map_or(0.0, ms),
            best_ms: times.first().copied().map_or(0.0, ms),
            first_in_process_ms: ms(first),
            target_ms: TARGET_FULL_MS,
        },
        running,
    ))
}

/// Commits one changed file with `git commit` and times the `sync_once` that applies it.
async fn incremental(
    repo: &Path,
    syncer: &mut Syncer,
    apps: &[PathBuf],
    seq: &mut usize,
    samples: usize,
    pb: &ProgressBar,
) -> anyhow::Result<Incremental> {
    let mut times = Vec::with_capacity(samples);
    let mut updated = 0;
    for _ in 0..samples {
        change_one_file(apps, *seq)?;
        git(
            repo,
            &["commit", "-q", "-a", "-m", &format!("bench: change {seq}")],
        )?;
        *seq += 1;
        let head = git(repo, &["rev-parse", "HEAD"])?;
        let (commit, summary, elapsed) = apply_once(syncer).await?;
        if commit != head {
            bail!("synced {commit}, but main is at {head}");
        }
        if (summary.created, summary.updated, summary.deleted) != (0, 1, 0) {
            bail!("a one-file commit should update one object; it did {summary:?}");
        }
        updated = summary.updated;
        times.push(elapsed);
        pb.inc(1);
    }
    Ok(Incremental {
        stats: stats(times),
        updated_per_commit: updated,
        target_ms: TARGET_INCREMENTAL_MS,
    })
}

/// `sync_once` with the ref where it was, `samples` times.
async fn noop_polls(
    syncer: &mut Syncer,
    samples: usize,
    pb: &ProgressBar,
) -> anyhow::Result<Stats> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let outcome = syncer.sync_once().await?;
        times.push(started.elapsed());
        if !matches!(outcome, Outcome::Unchanged { .. }) {
            bail!("a poll with the ref unmoved did work: {outcome:?}");
        }
        pb.inc(1);
    }
    Ok(stats(times))
}

/// `git ls-remote TARGET refs/heads/main` as a process, start to exit: the same question a
/// no-op poll answers (where is the branch now?), asked the way a script or a shell-out
/// implementation would.
fn ls_remote(dir: &Path, target: &str, runs: usize) -> anyhow::Result<Stats> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let out = git_command(dir, &["ls-remote", target, "refs/heads/main"]).output()?;
        times.push(started.elapsed());
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "git ls-remote {target} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(stats(times))
}

/// What the sync loop reports back to the committer.
#[derive(Debug)]
enum Event {
    Applied {
        commit: String,
        at: Instant,
        summary: SyncSummary,
    },
    Unexpected(String),
}

/// The real sync loop, as `coxswain up` runs it: sync, then wait for the next trigger.
async fn sync_loop(
    mut syncer: Syncer,
    mut triggers: Triggers,
    events: mpsc::UnboundedSender<Event>,
    mut stop: oneshot::Receiver<()>,
) -> Syncer {
    loop {
        let event = match syncer.sync_once().await {
            Ok(Outcome::Applied {
                commit, summary, ..
            }) => Some(Event::Applied {
                commit,
                at: Instant::now(),
                summary,
            }),
            Ok(Outcome::Unchanged { .. }) => None,
            Ok(other) => Some(Event::Unexpected(format!("{other:?}"))),
            Err(e) => Some(Event::Unexpected(e.to_string())),
        };
        if let Some(event) = event {
            // The receiver is gone only when the bench has given up already.
            let _ = events.send(event);
        }
        tokio::select! {
            _ = triggers.wait() => {}
            _ = &mut stop => break,
        }
    }
    syncer
}

/// Commit → stored through the notify watch. Each commit object is built first (`git add`,
/// `write-tree`, `commit-tree`, none of which touch a watched ref); then the clock starts and
/// `git update-ref` moves `refs/heads/main`, as a push would land; the sample ends when the
/// sync loop has that commit applied.
async fn commit_to_stored(
    repo: &Path,
    running: Running,
    apps: &[PathBuf],
    seq: &mut usize,
    samples: usize,
    pb: &ProgressBar,
) -> anyhow::Result<(Latency, Running)> {
    let Running {
        member,
        syncer,
        _store_dir,
    } = running;
    let triggers = syncer.source().triggers()?;
    let quiet = triggers.quiet();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(sync_loop(syncer, triggers, tx, stop_rx));
    let gap = Duration::from_millis(100);

    let mut parent = git(repo, &["rev-parse", "refs/heads/main"])?;
    let mut latencies = Vec::with_capacity(samples);
    let mut update_ref = Vec::with_capacity(samples);
    let mut failure = None;
    for _ in 0..samples {
        tokio::time::sleep(gap).await;
        change_one_file(apps, *seq)?;
        git(repo, &["add", "-A"])?;
        let tree = git(repo, &["write-tree"])?;
        let message = format!("bench: commit {seq}");
        *seq += 1;
        let commit = git(repo, &["commit-tree", &tree, "-p", &parent, "-m", &message])?;
        let t0 = Instant::now();
        git(repo, &["update-ref", "refs/heads/main", &commit, &parent])?;
        update_ref.push(t0.elapsed());
        parent = commit.clone();
        let applied = loop {
            match tokio::time::timeout(APPLY_TIMEOUT, rx.recv()).await {
                Ok(Some(Event::Applied {
                    commit: c,
                    at,
                    summary,
                })) if c == commit => break Ok((at, summary)),
                // A commit applied late from an earlier sample cannot happen (each sample
                // waits for its own), but skipping one is harmless.
                Ok(Some(Event::Applied { .. })) => {}
                Ok(Some(Event::Unexpected(what))) => break Err(what),
                Ok(None) => break Err("the sync loop ended".into()),
                Err(_) => break Err(format!("commit {commit} not applied in {APPLY_TIMEOUT:?}")),
            }
        };
        match applied {
            Ok((at, summary)) => {
                if summary.updated != 1 {
                    failure = Some(format!("commit {commit} did {summary:?}"));
                    break;
                }
                latencies.push(at.saturating_duration_since(t0));
            }
            Err(what) => {
                failure = Some(what);
                break;
            }
        }
        pb.inc(1);
    }
    // Stop the loop before reporting a failure, so its syncer's notes are flushed either way.
    let _ = stop_tx.send(());
    let syncer = task.await.context("the sync loop panicked")?;
    let running = Running {
        member,
        syncer,
        _store_dir,
    };
    if let Some(what) = failure {
        running.stop().await?;
        bail!("commit → stored: {what}");
    }
    Ok((
        Latency {
            stats: stats(latencies),
            quiet_window_ms: ms(quiet),
            update_ref_process: stats(update_ref),
            gap_ms: ms(gap),
            target_p50_ms: TARGET_COMMIT_TO_STORED_P50_MS,
        },
        running,
    ))
}

/// No-op polls through a `file://` URL: a second syncer on the same store, whose source
/// fetches into a bare cache and asks the repository for its refs on every poll.
async fn file_url_polls(
    repo: &Path,
    member: &Member,
    polls: usize,
    peer_runs: usize,
    pb: &ProgressBar,
) -> anyhow::Result<Poll> {
    let cache = tempfile::tempdir()?;
    let url = format!("file://{}", repo.display());
    let source = Source::open(&source_config(&url, Some(cache.path().to_path_buf())))?;
    // Its own name, so its records do not interleave with those of the local source; the
    // objects are the same and owned by Git either way, so its first sync writes none.
    let config = SyncConfig {
        name: "bench-file-url".into(),
        ..SyncConfig::default()
    };
    let mut syncer = Syncer::new(member.clone(), source, config)?;
    let (_, summary, first) = apply_once(&mut syncer).await?;
    if summary.created + summary.updated + summary.deleted != 0 {
        bail!("the file:// source found changes in an up-to-date store: {summary:?}");
    }
    let coxswain = noop_polls(&mut syncer, polls, pb).await?;
    syncer.close().await;
    Ok(Poll {
        via: "file:// URL",
        repo: url.clone(),
        coxswain,
        first_sync_ms: Some(ms(first)),
        peer_command: format!("git ls-remote {url} refs/heads/main"),
        peer: ls_remote(repo, &url, peer_runs)?,
        target_ms: TARGET_NOOP_POLL_MS,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // The syncer reads Git with `block_in_place`, which needs the multi-threaded runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

/// Sample counts of one mode.
#[derive(Debug)]
struct Plan {
    files: usize,
    full_runs: usize,
    incremental: usize,
    polls: usize,
    url_polls: usize,
    peer_runs: usize,
    latency: usize,
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let plan = if args.quick {
        Plan {
            files: 201,
            full_runs: 3,
            incremental: 5,
            polls: 200,
            url_polls: 50,
            peer_runs: 5,
            latency: 15,
        }
    } else {
        Plan {
            files: 1001,
            full_runs: 3,
            incremental: 20,
            polls: 1000,
            url_polls: 200,
            peer_runs: 20,
            latency: 50,
        }
    };
    let hidden = args.json;
    let git_version = git(Path::new("."), &["--version"]).context("git is required")?;

    let temp = tempfile::tempdir()?;
    let repo = temp.path().join("repo");
    let deploy = repo.join(DEPLOY);
    std::fs::create_dir_all(&deploy)?;
    let pb = bar(plan.files as u64, "generating manifests", hidden);
    let objects = generate::repository(&deploy, plan.files, || pb.inc(1))?;
    pb.finish_and_clear();
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "bench: generated manifests"])?;
    let apps = app_files(&deploy)?;

    let pb = bar(
        plan.full_runs as u64,
        "full sync (fresh store each)",
        hidden,
    );
    let (full_sync, mut running) = full_syncs(&repo, plan.full_runs, objects, &pb).await?;
    pb.finish_and_clear();

    let mut seq = 0;
    let pb = bar(plan.incremental as u64, "one-file incremental sync", hidden);
    let incremental = incremental(
        &repo,
        &mut running.syncer,
        &apps,
        &mut seq,
        plan.incremental,
        &pb,
    )
    .await?;
    pb.finish_and_clear();

    let pb = bar(plan.polls as u64, "no-op poll, local path", hidden);
    let local = noop_polls(&mut running.syncer, plan.polls, &pb).await?;
    pb.finish_and_clear();
    let repo_path = repo.display().to_string();
    let local = Poll {
        via: "local path",
        repo: repo_path.clone(),
        coxswain: local,
        first_sync_ms: None,
        peer_command: format!("git ls-remote {repo_path} refs/heads/main"),
        peer: ls_remote(&repo, &repo_path, plan.peer_runs)?,
        target_ms: TARGET_NOOP_POLL_MS,
    };

    let pb = bar(plan.latency as u64, "commit → stored (watch)", hidden);
    let (commit_to_stored, running) =
        commit_to_stored(&repo, running, &apps, &mut seq, plan.latency, &pb).await?;
    pb.finish_and_clear();

    let pb = bar(plan.url_polls as u64, "no-op poll, file:// URL", hidden);
    let url = file_url_polls(&repo, &running.member, plan.url_polls, plan.peer_runs, &pb).await;
    pb.finish_and_clear();
    running.stop().await?;
    let url = url?;

    let report = Report {
        mode: if args.quick { "quick" } else { "full" },
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        git_version,
        files: plan.files,
        objects,
        full_sync,
        incremental,
        noop_poll: vec![local, url],
        commit_to_stored,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn print_text(r: &Report) {
    println!(
        "sync ({} mode, {} build): {} objects in {} files, {} cores, {}",
        r.mode, r.build, r.objects, r.files, r.cores, r.git_version
    );
    if r.build == "debug" {
        println!("(a debug build: these figures are not the product's; run a release build)");
    }
    println!("{:<40} {:>11} {:>11}", "", "measured", "target");
    let f = &r.full_sync;
    println!(
        "{:<40} {:>8.1} ms {:>8.0} ms   median of {} runs, each on a fresh store; best {:.1} ms; \
         the first in the process {:.1} ms (it also compiles the JSON schemas)",
        format!("first full sync ({} created)", f.created),
        f.median_ms,
        f.target_ms,
        f.runs,
        f.best_ms,
        f.first_in_process_ms
    );
    let i = &r.incremental;
    println!(
        "{:<40} {:>8.2} ms {:>8.0} ms   p50 of {} commits; p99 {:.2} ms, max {:.2} ms",
        format!("one-file incremental ({} updated)", i.updated_per_commit),
        i.stats.p50_ms,
        i.target_ms,
        i.stats.samples,
        i.stats.p99_ms,
        i.stats.max_ms
    );
    for p in &r.noop_poll {
        println!(
            "{:<40} {:>8.3} ms {:>8.0} ms   p50 of {}; p99 {:.3} ms, max {:.3} ms",
            format!("no-op poll, {}", p.via),
            p.coxswain.p50_ms,
            p.target_ms,
            p.coxswain.samples,
            p.coxswain.p99_ms,
            p.coxswain.max_ms
        );
        println!(
            "{:<40} {:>8.3} ms {:>11}   p50 of {} runs of `{}`, a process",
            "  beside: git ls-remote", p.peer.p50_ms, "", p.peer.samples, p.peer_command
        );
        if let Some(first) = p.first_sync_ms {
            println!(
                "{:<40} {:>8.1} ms {:>11}   fetch into an empty bare cache, validate, plan; \
                 nothing to write",
                "  first sync through it", first, ""
            );
        }
    }
    let l = &r.commit_to_stored;
    println!(
        "{:<40} {:>8.1} ms {:>8.0} ms   p50 of {} commits; p99 {:.1} ms, max {:.1} ms",
        "commit → stored (notify watch)",
        l.stats.p50_ms,
        l.target_p50_ms,
        l.stats.samples,
        l.stats.p99_ms,
        l.stats.max_ms
    );
    println!(
        "  from just before `git update-ref` moves refs/heads/main (that process: p50 {:.1} ms) \
         to the sync loop's sync_once returning Applied: the inotify event, the watch's \
         {:.0} ms quiet window that coalesces a burst of ref writes into one wake-up, then \
         resolve, validate (unchanged files reused), plan and one Raft txn; {:.0} ms idle \
         between commits",
        l.update_ref_process.p50_ms, l.quiet_window_ms, l.gap_ms
    );
    println!(
        "  every applied commit also gets a git note listing all its objects, written in the \
         background by the note writer; on a live system it overlaps the next commit too"
    );
}
