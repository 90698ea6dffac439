//! `coxswain-bench e2e`: a commit to running pods, through the real binary. `coxswain up`
//! follows a temporary Git repository; each run commits a Deployment of 10 busybox `httpd`
//! replicas (a tcpSocket readiness probe every second) and times the commit until the store
//! shows all 10 Ready, then commits the file's removal and waits until the pods are gone.
//! Also the RSS of the `coxswain up` process (store, controllers, scheduler, agent and sync in
//! one) once no pod runs: 3 s after the last pod left the store, and once the process is idle
//! (under 1% of a core for 2 s in a row; the agent is still stopping pods for a few seconds
//! after their objects are gone).
//!
//! Needs root (pods are real processes in namespaces and cgroups) and the busybox image that
//! `scripts/dev.sh` imports.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coxswain_store::{Client, Consistency, Kv};
use serde::Serialize;
use serde_json::Value;

use crate::common::{RunDirMount, bar, ms};
use crate::rss::Rss;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A smaller run that ends well within a minute: 5 runs instead of 20.
    #[arg(long)]
    quick: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The coxswain binary to run; by default the `coxswain` next to this executable.
    #[arg(long, value_name = "PATH")]
    coxswain: Option<PathBuf>,
}

const REPLICAS: usize = 10;
const TARGET_P50_MS: f64 = 300.0;
const TARGET_IDLE_RSS_MIB: f64 = 40.0;
/// How long to wait for `coxswain up` to go quiet before reading its idle RSS anyway.
const IDLE_WAIT_LIMIT_S: u64 = 30;
/// Kubernetes' pod startup SLO (p99), and Flux's and Argo CD's default poll intervals.
const K8S_POD_STARTUP_SLO_MS: f64 = 5_000.0;
const NS: &str = "bench";

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    build: &'static str,
    runs: usize,
    replicas: usize,
    commit_to_all_ready_ms: Stats,
    target_p50_ms: f64,
    kubernetes_pod_startup_slo_p99_ms: f64,
    /// 3 s after the last pod left the store (the only figure before 2026-12-05).
    rss_3s_after_last_pod: Rss,
    /// Once the process is idle, `idle_after_s` after the 3 s above.
    idle_rss: Rss,
    idle_after_s: f64,
    /// False if the process never went quiet within the limit; `idle_rss` is then read at it.
    went_quiet: bool,
    target_idle_rss_mib: f64,
}

#[derive(Debug, Serialize)]
struct Stats {
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn stats(mut xs: Vec<Duration>) -> Stats {
    xs.sort();
    let at = |p: f64| {
        let i = ((p / 100.0) * (xs.len().saturating_sub(1)) as f64).round() as usize;
        xs.get(i).copied().map(ms).unwrap_or(0.0)
    };
    Stats {
        p50: at(50.0),
        p99: at(99.0),
        min: xs.first().copied().map(ms).unwrap_or(0.0),
        max: xs.last().copied().map(ms).unwrap_or(0.0),
    }
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn commit(repo: &Path, message: &str) -> anyhow::Result<()> {
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", message])?;
    Ok(())
}

fn deployment(run: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {NS}
spec:
  replicas: {REPLICAS}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: busybox:latest
          command: ["sh", "-c"]
          args: ["mkdir -p /www && echo run {run} > /www/index.html && exec httpd -f -p 8080 -h /www"]
          readinessProbe:
            tcpSocket:
              port: 8080
            periodSeconds: 1
"#
    )
}

/// `coxswain up`, killed (and its pods with it, by its own Ctrl-C path) on drop.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Up {
    fn wait_line(&self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        bail!("coxswain up printed no line starting with {prefix:?}")
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .context("stopping coxswain up")?;
        let status = self.child.wait().context("waiting for coxswain up")?;
        if !status.success() {
            bail!("coxswain up ended with {status}");
        }
        Ok(())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

async fn pods(client: &Client) -> anyhow::Result<Vec<Value>> {
    let page = client
        .list(
            &format!("/core/Pod/{NS}/"),
            10_000,
            None,
            Consistency::Linearizable,
        )
        .await
        .context("listing the pods")?;
    Ok(page.items.into_iter().map(|kv| kv.value).collect())
}

async fn wait_pods(
    client: &Client,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if done(&pods(client).await?) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "coxswain-bench e2e needs root: its pods are real processes in namespaces and cgroups"
        );
    }
    let runs = if args.quick { 5 } else { 20 };
    let binary = match &args.coxswain {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("coxswain"),
    };
    if !binary.is_file() {
        bail!(
            "{} is missing: build it with cargo build --release --workspace --bins (or pass --coxswain)",
            binary.display()
        );
    }
    let tmp = tempfile::tempdir().context("a temporary folder")?;
    let run_dir = RunDirMount(tmp.path().join("run"));
    let repo = tmp.path().join("repo");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(repo.join("deploy")).context("creating the repository")?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(
        repo.join("deploy/namespace.yaml"),
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n"),
    )
    .context("writing the namespace")?;
    commit(&repo, "namespace")?;

    // Its own node name, bridge, pod range and state, so it never meets a running coxswain.
    let tag = std::process::id() % 10_000;
    let mut child = Command::new(&binary)
        .arg("up")
        .arg("--repo")
        .arg(&repo)
        .args([
            "--path",
            "deploy",
            "--listen",
            "127.0.0.1:0",
            "--stop-grace",
            "2s",
        ])
        .arg("--data")
        .arg(&data)
        .args([
            "--name",
            &format!("bench-{tag}"),
            "--bridge",
            &format!("cxq{tag}"),
        ])
        .args(["--pod-cidr", &format!("10.127.{}.0/24", tag % 250)])
        .arg("--state-dir")
        .arg(tmp.path().join("node"))
        .arg("--run-dir")
        .arg(&run_dir.0)
        .stdout(Stdio::piped())
        // Its warnings (a slow write, a failed probe) explain an outlier; they are rare.
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("coxswain up's stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut up = Up { child, lines };
    let listening = up.wait_line("coxswain server: member 1 listening on ")?;
    let addr = listening.rsplit(' ').next().unwrap_or_default().to_string();
    let token = std::fs::read_to_string(data.join("token")).context("reading the token")?;
    let client = Client::new(vec![addr], token.trim());
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;

    let pb = bar(runs as u64, "commit → 10 pods Ready", args.json);
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        std::fs::write(repo.join("deploy/web.yaml"), deployment(run)).context("writing")?;
        let started = Instant::now();
        commit(&repo, &format!("web, run {run}"))?;
        rt.block_on(wait_pods(&client, "10 Ready pods", |p| {
            p.len() == REPLICAS && p.iter().all(is_ready)
        }))?;
        times.push(started.elapsed());
        std::fs::remove_file(repo.join("deploy/web.yaml")).context("removing")?;
        commit(&repo, "no web\n\nCoxswain-Allow-Prune: yes")?;
        rt.block_on(wait_pods(&client, "no pods", <[Value]>::is_empty))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    // The pods' processes go a moment after their objects; let the agent settle.
    std::thread::sleep(Duration::from_secs(3));
    let rss_3s_after_last_pod = Rss::of(up.child.id())?;
    let (idle_after, went_quiet) =
        crate::rss::wait_quiet(up.child.id(), Duration::from_secs(IDLE_WAIT_LIMIT_S))?;
    let idle_rss = Rss::of(up.child.id())?;
    up.stop()?;

    let report = Report {
        mode: if args.quick { "quick" } else { "full" },
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        runs,
        replicas: REPLICAS,
        commit_to_all_ready_ms: stats(times),
        target_p50_ms: TARGET_P50_MS,
        kubernetes_pod_startup_slo_p99_ms: K8S_POD_STARTUP_SLO_MS,
        rss_3s_after_last_pod,
        idle_rss,
        idle_after_s: idle_after.as_secs_f64(),
        went_quiet,
        target_idle_rss_mib: TARGET_IDLE_RSS_MIB,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let s = &report.commit_to_all_ready_ms;
    println!(
        "e2e ({} build, {} run): git commit of a {}-replica Deployment → all Ready, {} runs",
        report.build, report.mode, report.replicas, report.runs
    );
    println!(
        "  commit → all Ready   p50 {:.0} ms  p99 {:.0} ms  (min {:.0}, max {:.0})   target p50 ≤ {:.0} ms; \
         Kubernetes' pod-startup SLO is {:.0} ms p99",
        s.p50, s.p99, s.min, s.max, report.target_p50_ms, report.kubernetes_pod_startup_slo_p99_ms
    );
    println!(
        "  coxswain up RSS 3 s after the last pod left {}",
        report.rss_3s_after_last_pod.describe()
    );
    println!(
        "  coxswain up idle RSS {}  (target ≤ {:.0} MiB; read {:.0} s later, {})",
        report.idle_rss.describe(),
        report.target_idle_rss_mib,
        report.idle_after_s,
        if report.went_quiet {
            "once under 1% CPU for 2 s"
        } else {
            "it never went quiet"
        }
    );
    Ok(())
}
