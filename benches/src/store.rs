//! `coxswain-bench store`: put throughput and latency of the replicated store with 1, 16 and
//! 256 concurrent clients, on one member and on three over loopback, beside etcd 3.4 driven
//! by the same load generator through `etcd-client`; the disk's fdatasync rate as the
//! ceiling; and the resident memory of each server after many writes.
//!
//! Both systems run as separate server processes (the `coxswain` binary built beside this
//! one, and Debian's `etcd`), and both are driven over loopback, so the comparison is
//! process to process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coxswain_store::{Client, Kv, Txn};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::common::wait_line;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A smaller run that ends within a minute: 1 s per load point, 20,000 writes for RSS.
    #[arg(long)]
    quick: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Skip etcd even if it is installed.
    #[arg(long)]
    no_peer: bool,
    /// Writes before reading each server's memory (default 1,000,000; 20,000 with --quick).
    #[arg(long)]
    rss_writes: Option<u64>,
    /// Only this member count (1 or 3), to look at one point at a time (under a profiler).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["1", "3"]))]
    members: Option<String>,
    /// Only this client count (1, 16 or 256).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["1", "16", "256"]))]
    clients: Option<String>,
    /// Seconds per load point instead of 5 (1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Skip the memory phase.
    #[arg(long)]
    no_memory: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    seconds_per_point: f64,
    value_bytes: usize,
    fdatasync: Fsync,
    points: Vec<Point>,
    memory: Vec<Memory>,
}

#[derive(Debug, Serialize)]
struct Fsync {
    per_sec: f64,
    mean_us: f64,
    /// p50 of an fdatasync that follows a small append and a pause of about 300 µs: what a
    /// log's sync pays between one client's puts (an append also writes the inode, and
    /// this VM's disk is slower to take a request after a moment without one). Context for
    /// the one-client latency; the ceiling stays `mean_us`.
    append_after_pause_p50_us: f64,
}

#[derive(Debug, Serialize)]
struct Point {
    system: &'static str,
    members: usize,
    clients: usize,
    ops: u64,
    errors: u64,
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    /// CPU time (user and system) of the server processes over the point, per put: what a
    /// write costs the servers, apart from the load generator that shares the cores.
    server_cpu_us_per_put: f64,
}

#[derive(Debug, Serialize)]
struct Memory {
    system: &'static str,
    writes: u64,
    distinct_keys: u64,
    seconds: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

/// Child processes that are killed when dropped, so a failed run leaves no server behind.
pub(crate) struct Servers {
    children: Vec<Child>,
    pub(crate) addrs: Vec<String>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Servers {
    fn pid(&self) -> u32 {
        self.children.first().map_or(0, Child::id)
    }

    /// User and system CPU seconds the server processes have used so far (all threads).
    fn cpu_seconds(&self) -> f64 {
        let ticks = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
            Ok(Some(t)) if t > 0 => t as f64,
            _ => 100.0,
        };
        self.children
            .iter()
            .map(|c| {
                let stat =
                    std::fs::read_to_string(format!("/proc/{}/stat", c.id())).unwrap_or_default();
                // Fields after the command name, which is in parentheses and may hold spaces:
                // utime and stime are the 12th and 13th of them (14th and 15th in all).
                let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let field = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                (field(11) + field(12)) / ticks
            })
            .sum()
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn coxswain_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|p| p.join("coxswain"))
        .filter(|p| p.is_file());
    bin.context(
        "the coxswain binary is not built next to coxswain-bench (cargo build --bin coxswain)",
    )
}

pub(crate) const TOKEN: &str = "bench-token";

/// `members` coxswain servers of `bin` under `dir`, killed when dropped.
pub(crate) fn start_coxswain(bin: &Path, dir: &Path, members: usize) -> anyhow::Result<Servers> {
    let mut servers = Servers {
        children: Vec::new(),
        addrs: Vec::new(),
    };
    for id in 1..=members {
        let mut cmd = Command::new(bin);
        cmd.args(["server", "--id", &id.to_string(), "--listen", "127.0.0.1:0"])
            .arg("--data")
            .arg(dir.join(format!("cox-{members}-{id}")))
            .args(["--token", TOKEN])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if id > 1 {
            cmd.args(["--join", &servers.addrs[0]]);
        }
        let mut child = cmd.spawn().context("starting coxswain server")?;
        let line = wait_line(&mut child, if id > 1 { "joined" } else { "listening on" });
        servers.children.push(child);
        servers.addrs.push(line?);
    }
    Ok(servers)
}

fn start_etcd(dir: &Path, members: usize) -> anyhow::Result<Servers> {
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..members {
        peers.push(free_port()?);
        clients.push(free_port()?);
    }
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("e{i}=http://127.0.0.1:{p}"))
        .collect();
    let mut servers = Servers {
        children: Vec::new(),
        addrs: Vec::new(),
    };
    for i in 0..members {
        let child = Command::new("etcd")
            .arg("--name")
            .arg(format!("e{i}"))
            .arg("--data-dir")
            .arg(dir.join(format!("etcd-{members}-{i}")))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", clients[i]))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", clients[i]))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", peers[i]))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", peers[i]))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        servers.children.push(child);
        servers
            .addrs
            .push(format!("http://127.0.0.1:{}", clients[i]));
    }
    Ok(servers)
}

/// One load generator for both systems.
#[derive(Clone)]
enum Target {
    Coxswain(Client),
    // Boxed: etcd's client is 1.6 KiB, and a Target is cloned per load task.
    Etcd(Box<etcd_client::Client>),
}

impl Target {
    async fn put(
        &self,
        key: String,
        value: &serde_json::Value,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        match self {
            Target::Coxswain(c) => {
                c.txn(Txn::put(key, value.clone())).await?;
            }
            Target::Etcd(c) => {
                c.kv_client().put(key, bytes.to_vec(), None).await?;
            }
        }
        Ok(())
    }
}

async fn connect(system: &'static str, servers: &Servers) -> anyhow::Result<Target> {
    let value = serde_json::json!({"metadata": {"name": "ready"}});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let target = match system {
            "coxswain" => Some(Target::Coxswain(Client::new(servers.addrs.clone(), TOKEN))),
            _ => etcd_client::Client::connect(&servers.addrs, None)
                .await
                .ok()
                .map(|c| Target::Etcd(Box::new(c))),
        };
        if let Some(t) = target
            && t.put("/ready".into(), &value, b"{}").await.is_ok()
        {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("{system} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn value_of(size: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "bench", "namespace": "default"},
        "data": {"v": "x".repeat(size)},
    })
}

async fn load(
    target: &Target,
    clients: usize,
    run_for: Duration,
    value: &serde_json::Value,
) -> (u64, u64, f64, Vec<u32>) {
    let bytes = Arc::new(serde_json::to_vec(value).unwrap_or_default());
    let value = Arc::new(value.clone());
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let target = target.clone();
        let value = value.clone();
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("/bench/c{c}/k{}", i % 1000);
                i += 1;
                let t = Instant::now();
                match target.put(key, &value, &bytes).await {
                    Ok(()) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    (all.len() as u64, errors, secs, all)
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    u64::from(sorted[i.min(sorted.len() - 1)])
}

/// fdatasync of a 4 KiB write in a loop: the most one durable write at a time can do here.
/// Then the same disk's fdatasync as a log sees it between one client's puts (see
/// [`Fsync::append_after_pause_p50_us`]), in about `run_for` again.
fn fdatasync_rate(dir: &Path, run_for: Duration) -> anyhow::Result<Fsync> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let file = std::fs::File::create(&path)?;
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run_for {
        file.write_at(&block, 0)?;
        file.sync_data()?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;

    // About the size of one put's log record.
    let mut log = std::fs::File::create(dir.join("fsync-append-probe"))?;
    let record = vec![7u8; 600];
    let mut syncs = Vec::new();
    let start = Instant::now();
    while start.elapsed() < run_for {
        log.write_all(&record)?;
        let at = Instant::now();
        log.sync_data()?;
        syncs.push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
        std::thread::sleep(Duration::from_micros(300));
    }
    syncs.sort_unstable();
    Ok(Fsync {
        per_sec: n as f64 / secs,
        mean_us: secs * 1e6 / n.max(1) as f64,
        append_after_pause_p50_us: percentile(&syncs, 0.5) as f64,
    })
}

fn rss_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn memory_after(
    system: &'static str,
    servers: &Servers,
    target: &Target,
    writes: u64,
    value: &serde_json::Value,
    pb: &ProgressBar,
) -> anyhow::Result<Memory> {
    const CLIENTS: u64 = 64;
    const KEYS: u64 = 100_000;
    let bytes = Arc::new(serde_json::to_vec(value)?);
    let value = Arc::new(value.clone());
    let start = Instant::now();
    let mut tasks = Vec::new();
    let pb = pb.clone();
    for c in 0..CLIENTS {
        let target = target.clone();
        let value = value.clone();
        let bytes = bytes.clone();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            let mut errors = 0u64;
            let mut first = None;
            while i < writes {
                if let Err(e) = target
                    .put(format!("/rss/k{}", i % KEYS), &value, &bytes)
                    .await
                {
                    errors += 1;
                    first.get_or_insert_with(|| format!("write {i}: {e:#}"));
                }
                if i % 1000 < CLIENTS {
                    pb.set_position(i);
                }
                i += CLIENTS;
            }
            (errors, first)
        }));
    }
    let mut errors = 0;
    let mut first = None;
    for t in tasks {
        if let Ok((n, e)) = t.await {
            errors += n;
            first = first.or(e);
        }
    }
    if errors > writes / 100 {
        bail!(
            "{system}: {errors} of {writes} writes failed; the first: {}",
            first.unwrap_or_default()
        );
    }
    let (rss, peak) = rss_of(servers.pid());
    Ok(Memory {
        system,
        writes,
        distinct_keys: KEYS.min(writes),
        seconds: start.elapsed().as_secs_f64(),
        rss_mib: rss,
        peak_rss_mib: peak,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let seconds = args.seconds.unwrap_or(if args.quick { 1.0 } else { 5.0 });
    let per_point = Duration::try_from_secs_f64(seconds)
        .map_err(|e| anyhow::anyhow!("--seconds {seconds}: {e}"))?;
    // A filter is one of the listed values (clap checked), so it parses.
    let wanted =
        |filter: &Option<String>, n: &usize| filter.as_ref().is_none_or(|f| *f == n.to_string());
    let member_counts: Vec<usize> = [1, 3]
        .into_iter()
        .filter(|m| wanted(&args.members, m))
        .collect();
    let client_counts: Vec<usize> = [1, 16, 256]
        .into_iter()
        .filter(|c| wanted(&args.clients, c))
        .collect();
    let rss_writes = args
        .rss_writes
        .unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    let value_bytes = 256;
    let value = value_of(value_bytes);
    let etcd = !args.no_peer && Command::new("etcd").arg("--version").output().is_ok();
    if !etcd && !args.no_peer {
        eprintln!("etcd is not installed; skipping the peer (apt install etcd-server)");
    }
    // Data on the same disk as the fsync probe: the benchmark's temp dir.
    let tmp = tempfile::tempdir()?;
    let fsync = fdatasync_rate(tmp.path(), Duration::from_secs(1))?;

    let coxswain = coxswain_binary()?;
    let mut systems: Vec<&'static str> = vec!["coxswain"];
    if etcd {
        systems.push("etcd");
    }
    let pb = if args.json {
        ProgressBar::hidden()
    } else {
        let pb =
            ProgressBar::new((systems.len() * member_counts.len() * client_counts.len()) as u64);
        pb.set_style(
            ProgressStyle::with_template("{msg:>40} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb
    };
    let mut points = Vec::new();
    for &members in &member_counts {
        for &system in &systems {
            let servers = match system {
                "coxswain" => start_coxswain(&coxswain, tmp.path(), members)?,
                _ => start_etcd(tmp.path(), members)?,
            };
            let target = connect(system, &servers).await?;
            for &clients in &client_counts {
                pb.set_message(format!(
                    "{system}, {members} member(s), {clients} client(s)"
                ));
                let cpu_before = servers.cpu_seconds();
                let (ops, errors, secs, lat) = load(&target, clients, per_point, &value).await;
                let cpu = servers.cpu_seconds() - cpu_before;
                points.push(Point {
                    system,
                    members,
                    clients,
                    ops,
                    errors,
                    ops_per_sec: ops as f64 / secs,
                    p50_us: percentile(&lat, 0.5),
                    p99_us: percentile(&lat, 0.99),
                    server_cpu_us_per_put: cpu * 1e6 / ops.max(1) as f64,
                });
                pb.inc(1);
            }
            drop(servers);
        }
    }
    pb.finish_and_clear();

    let mut memory = Vec::new();
    for &system in systems.iter().filter(|_| !args.no_memory) {
        let servers = match system {
            "coxswain" => start_coxswain(&coxswain, tmp.path(), 1)?,
            _ => start_etcd(tmp.path(), 1)?,
        };
        let target = connect(system, &servers).await?;
        let pb = if args.json {
            ProgressBar::hidden()
        } else {
            let pb = ProgressBar::new(rss_writes);
            pb.set_style(
                ProgressStyle::with_template("{msg:>40} [{bar:30}] {pos}/{len} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            pb.set_message(format!("{system}: writes before reading RSS"));
            pb
        };
        memory.push(memory_after(system, &servers, &target, rss_writes, &value, &pb).await?);
        pb.finish_and_clear();
    }

    let report = Report {
        mode: if args.quick { "quick" } else { "full" },
        seconds_per_point: per_point.as_secs_f64(),
        value_bytes,
        fdatasync: fsync,
        points,
        memory,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn print_text(r: &Report) {
    println!(
        "store ({} mode): puts of a {}-byte JSON value, {:.0} s per point, over loopback",
        r.mode, r.value_bytes, r.seconds_per_point
    );
    println!(
        "disk: fdatasync of 4 KiB {:.0}/s ({:.0} us each), the ceiling for one durable write at a time",
        r.fdatasync.per_sec, r.fdatasync.mean_us
    );
    println!(
        "disk: fdatasync of a 600-byte append after a 300 us pause, p50 {:.0} us (what a log's sync pays between one client's puts)",
        r.fdatasync.append_after_pause_p50_us
    );
    println!(
        "{:<10} {:>7} {:>7} {:>12} {:>10} {:>10} {:>7} {:>12}",
        "system", "members", "clients", "puts/s", "p50 us", "p99 us", "errors", "cpu us/put"
    );
    for p in &r.points {
        println!(
            "{:<10} {:>7} {:>7} {:>12.0} {:>10} {:>10} {:>7} {:>12.1}",
            p.system,
            p.members,
            p.clients,
            p.ops_per_sec,
            p.p50_us,
            p.p99_us,
            p.errors,
            p.server_cpu_us_per_put
        );
    }
    println!("(cpu us/put: user and system CPU of the server processes over the point, per put)");
    for m in &r.memory {
        println!(
            "{:<10} RSS after {} writes over {} keys ({:.1} s): {:.1} MiB now, {:.1} MiB peak",
            m.system, m.writes, m.distinct_keys, m.seconds, m.rss_mib, m.peak_rss_mib
        );
    }
}
