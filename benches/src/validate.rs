//! `coxswain-bench validate`: objects per second through the whole validation pipeline
//! (list, read, parse, schema, semantic and cross-tree checks), beside
//! `kubernetes-validate --strict` on the same files, plus the cost of refusing an alias bomb.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coxswain_schema::tree::DirTree;
use coxswain_schema::validate::parse_file;
use coxswain_schema::{Limits, validate_tree};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::common::{bar, files_under, ms};
use crate::generate;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A smaller run that ends within a minute: 2,000 objects, and the peer on a sample.
    #[arg(long)]
    quick: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Skip the peer even if it is installed.
    #[arg(long)]
    no_peer: bool,
    /// Generate the repository into this (empty or new) folder and keep it, e.g. to time
    /// `coxswain validate` on it from the shell.
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    files: usize,
    objects: usize,
    bytes: u64,
    threads: usize,
    coxswain: Timing,
    /// `coxswain validate DIR` as a whole process, when the binary is built next to this one.
    cli: Option<Timing>,
    /// saphyr-parser's events alone over the same files, with no tree, schema or checks: the
    /// floor under any validator built on that parser.
    tokenize: Tokenize,
    peer: Option<Peer>,
    speedup: Option<f64>,
    alias_bomb: Bomb,
}

#[derive(Debug, Serialize)]
struct Timing {
    runs: usize,
    median_ms: f64,
    best_ms: f64,
    objects_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Tokenize {
    /// All files on this many threads, as `validate_tree` spreads them.
    threads: Timing,
    /// All files on one thread.
    one_thread: Timing,
    one_thread_mb_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Peer {
    command: String,
    files: usize,
    objects: usize,
    ms: f64,
    objects_per_sec: f64,
    /// Whether the peer also judged every file valid.
    all_valid: bool,
}

#[derive(Debug, Serialize)]
struct Bomb {
    expansion: String,
    rejected_in_ms: f64,
    peak_rss_growth_kib: Option<u64>,
    reason: String,
}

/// Peak resident memory of this process so far (Linux `VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The classic "billion laughs": 9 levels of 9 aliases, 9^9 strings if expanded. Run first,
/// in a fresh process, so the growth of peak RSS is the bomb's alone.
fn alias_bomb() -> Bomb {
    let text = coxswain_schema::yaml::alias_bomb(9, 9);
    let before = peak_rss_kib();
    let started = Instant::now();
    let file = parse_file("bomb.yaml", text.as_bytes(), &Limits::default());
    let elapsed = started.elapsed();
    let after = peak_rss_kib();
    Bomb {
        expansion: "9 levels x 9 aliases, 9^9 = 387 million nodes if expanded".into(),
        rejected_in_ms: ms(elapsed),
        peak_rss_growth_kib: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
        reason: file
            .diagnostics
            .first()
            .map_or_else(|| "NOT REJECTED".into(), |d| d.reason.clone()),
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let bomb = alias_bomb();
    let (files, runs, peer_files) = if args.quick {
        (200, 3, 30)
    } else {
        (1000, 5, 1000)
    };

    let temp = tempfile::tempdir()?;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            if std::fs::read_dir(dir)?.next().is_some() {
                bail!("{} is not empty", dir.display());
            }
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let pb = bar(files as u64, "generating manifests", args.json);
    let objects = generate::repository(&root, files, || pb.inc(1))?;
    pb.finish_and_clear();
    let paths = files_under(&root)?;
    let bytes: u64 = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();

    let tree = DirTree::new(&root)?;
    let limits = Limits::default();
    // One warm-up run, which also proves the generated repository is valid.
    let report = validate_tree(&tree, &limits);
    if !report.is_valid() {
        bail!(
            "generated repository is invalid: {:#?}",
            &report.diagnostics[..report.diagnostics.len().min(5)]
        );
    }
    if report.objects().count() != objects {
        bail!(
            "expected {objects} objects, validated {}",
            report.objects().count()
        );
    }
    let pb = bar(runs as u64, "coxswain validate", args.json);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let report = validate_tree(&tree, &limits);
        times.push(started.elapsed());
        std::hint::black_box(report);
        pb.inc(1);
    }
    pb.finish_and_clear();
    times.sort();
    let median = times[times.len() / 2];
    let cox = Timing {
        runs,
        median_ms: ms(median),
        best_ms: ms(times[0]),
        objects_per_sec: objects as f64 / median.as_secs_f64(),
    };

    let tokenize = time_tokenize(&paths, runs, objects, bytes)?;
    let cli = time_cli(&root, runs, objects)?;
    let peer = if args.no_peer {
        None
    } else {
        run_peer(&paths, peer_files, args.json)?
    };
    let speedup = peer
        .as_ref()
        .map(|p| cox.objects_per_sec / p.objects_per_sec);
    let out = Report {
        mode: if args.quick { "quick" } else { "full" },
        files: paths.len(),
        objects,
        bytes,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        coxswain: cox,
        cli,
        tokenize,
        peer,
        speedup,
        alias_bomb: bomb,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out);
    }
    Ok(())
}

/// Pulls every YAML event out of each file and drops it: what saphyr-parser costs before
/// coxswain does anything with the events.
fn time_tokenize(
    paths: &[PathBuf],
    runs: usize,
    objects: usize,
    bytes: u64,
) -> anyhow::Result<Tokenize> {
    use rayon::prelude::*;
    let texts = paths
        .iter()
        .map(std::fs::read_to_string)
        .collect::<std::io::Result<Vec<String>>>()?;
    let events = |text: &String| -> Result<usize, saphyr_parser::ScanError> {
        let mut n = 0;
        for ev in saphyr_parser::Parser::new_from_str(text) {
            ev?;
            n += 1;
        }
        Ok(n)
    };
    let timing = |parallel: bool| -> anyhow::Result<Timing> {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let n: usize = if parallel {
                texts.par_iter().map(events).sum::<Result<usize, _>>()?
            } else {
                texts.iter().map(events).sum::<Result<usize, _>>()?
            };
            times.push(started.elapsed());
            std::hint::black_box(n);
        }
        times.sort();
        let median = times[times.len() / 2];
        Ok(Timing {
            runs,
            median_ms: ms(median),
            best_ms: ms(times[0]),
            objects_per_sec: objects as f64 / median.as_secs_f64(),
        })
    };
    let threads = timing(true)?;
    let one_thread = timing(false)?;
    let one_thread_mb_per_sec = bytes as f64 / 1e6 / (one_thread.median_ms / 1000.0);
    Ok(Tokenize {
        threads,
        one_thread,
        one_thread_mb_per_sec,
    })
}

/// The `coxswain` binary of the same build (same target folder), if there is one.
fn coxswain_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.join("coxswain");
    bin.is_file().then_some(bin)
}

/// Times `coxswain validate DIR` end to end: process start, schema compilation, loading,
/// validation and output, as a user or a CI job runs it.
fn time_cli(dir: &Path, runs: usize, objects: usize) -> anyhow::Result<Option<Timing>> {
    let Some(bin) = coxswain_binary() else {
        eprintln!("coxswain binary not built next to coxswain-bench; skipping the CLI timing");
        return Ok(None);
    };
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let out = Command::new(&bin).arg("validate").arg(dir).output()?;
        times.push(started.elapsed());
        if !out.status.success() {
            bail!(
                "coxswain validate failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    Ok(Some(Timing {
        runs,
        median_ms: ms(median),
        best_ms: ms(times[0]),
        objects_per_sec: objects as f64 / median.as_secs_f64(),
    }))
}

/// `kubernetes-validate --strict` as a user runs it, on the first `n` files (the namespace
/// file plus apps). Absent peer: reported, not faked.
fn run_peer(paths: &[PathBuf], n: usize, quiet: bool) -> anyhow::Result<Option<Peer>> {
    if Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "kubernetes-validate is not installed; skipping the peer (pip install kubernetes-validate)"
        );
        return Ok(None);
    }
    let sample: Vec<&PathBuf> = paths.iter().take(n).collect();
    let objects = sample
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.matches("\nkind: ").count() + usize::from(t.starts_with("kind: ")))
        })
        .sum::<std::io::Result<usize>>()?;
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    pb.set_message(format!(
        "kubernetes-validate --strict on {} files ({objects} objects)",
        sample.len()
    ));
    pb.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--no-warn", "-k", "1.37.0"])
        .args(&sample)
        .output()
        .context("running kubernetes-validate")?;
    let elapsed = started.elapsed();
    pb.finish_and_clear();
    Ok(Some(Peer {
        command: "kubernetes-validate --strict --quiet --no-warn -k 1.37.0 FILES...".into(),
        files: sample.len(),
        objects,
        ms: ms(elapsed),
        objects_per_sec: objects as f64 / elapsed.as_secs_f64(),
        all_valid: output.status.success(),
    }))
}

fn print_text(r: &Report) {
    println!(
        "validate ({} mode): {} objects in {} files, {:.1} MiB, {} threads",
        r.mode,
        r.objects,
        r.files,
        r.bytes as f64 / (1024.0 * 1024.0),
        r.threads
    );
    println!("{:<34} {:>12} {:>14}", "", "time", "objects/s");
    println!(
        "{:<34} {:>9.1} ms {:>14.0}   (median of {}, best {:.1} ms)",
        "coxswain (in-process, end to end)",
        r.coxswain.median_ms,
        r.coxswain.objects_per_sec,
        r.coxswain.runs,
        r.coxswain.best_ms
    );
    if let Some(c) = &r.cli {
        println!(
            "{:<34} {:>9.1} ms {:>14.0}   (median of {}, best {:.1} ms)",
            "coxswain validate DIR (process)", c.median_ms, c.objects_per_sec, c.runs, c.best_ms
        );
    }
    let t = &r.tokenize;
    println!(
        "{:<34} {:>9.1} ms {:>14.0}   (one thread: {:.1} ms, {:.1} MB/s; no validation at all)",
        "YAML events alone (saphyr-parser)",
        t.threads.median_ms,
        t.threads.objects_per_sec,
        t.one_thread.median_ms,
        t.one_thread_mb_per_sec
    );
    match &r.peer {
        Some(p) => {
            println!(
                "{:<34} {:>9.1} ms {:>14.0}   ({} objects in {} files{}{})",
                "kubernetes-validate --strict",
                p.ms,
                p.objects_per_sec,
                p.objects,
                p.files,
                if p.files < r.files { ", a sample" } else { "" },
                if p.all_valid {
                    ""
                } else {
                    "; it REJECTED some files"
                }
            );
            if let Some(s) = r.speedup {
                println!("speed-up: {s:.0}x");
            }
        }
        None => println!("{:<34} not run", "kubernetes-validate --strict"),
    }
    println!(
        "alias bomb ({}): rejected in {:.3} ms, peak RSS grew {} KiB: {}",
        r.alias_bomb.expansion,
        r.alias_bomb.rejected_in_ms,
        r.alias_bomb
            .peak_rss_growth_kib
            .map_or_else(|| "?".into(), |k| k.to_string()),
        r.alias_bomb.reason
    );
}
