//! Small pieces every benchmark uses: milliseconds for reports, the progress bar, the list
//! of files a generated repository holds, waiting for a started server's line, and
//! unmounting an agent's run dir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A progress bar on stderr, hidden when the report goes to stdout as JSON.
pub fn bar(len: u64, msg: &'static str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>32} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// Every file below `dir`, sorted.
pub fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the server's stdout until a line containing `want`; returns the address from its
/// "listening on ADDR" line.
pub fn wait_line(child: &mut Child, want: &str) -> anyhow::Result<String> {
    let out = child.stdout.take().context("no stdout")?;
    let mut reader = BufReader::new(out);
    let mut line = String::new();
    let mut addr = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("server exited before printing {want:?}");
        }
        if let Some((_, a)) = line.trim().split_once("listening on ") {
            addr = a.to_string();
        }
        if line.contains(want) {
            // Keep draining so the server never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            return Ok(addr);
        }
    }
}

/// Unmounts what a `coxswain agent`, `coxswain up` or `prepare_run_dir` mounted at a run dir
/// (a tmpfs left in place for the agent that follows), so the temp dir holding it can be
/// removed. Declare it after the temp dir, so it drops first.
#[derive(Debug)]
pub struct RunDirMount(pub PathBuf);

impl Drop for RunDirMount {
    fn drop(&mut self) {
        // EINVAL: nothing is mounted there (the process never got that far).
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
