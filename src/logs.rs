//! `coxswain logs POD [-c CONTAINER] [-f] [--previous]`: a container's logs on this node, read
//! from the agent's state dir (`coxswain_node::logs`), as `kubectl logs` prints them. It needs
//! no running agent or store: the logs are files, and the answer for a pod that is not on
//! this node is `pods "x" not found`.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use coxswain_node::Error;
use coxswain_node::logs::{self, ContainerLogs};

/// How often `-f` looks for new output: short enough to feel live, long enough to cost
/// nothing.
const POLL: Duration = Duration::from_millis(100);

/// The most `-f` holds in memory between reading and printing.
const CHUNK: u64 = 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod's name.
    pod: String,
    /// The pod's namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The container; may be left out when the pod has only one.
    #[arg(short, long)]
    container: Option<String>,
    /// Keep printing what the container writes, until it exits or restarts (or Ctrl-C).
    #[arg(short, long)]
    follow: bool,
    /// Print the log of the container's previous run instead (after a restart).
    #[arg(short, long)]
    previous: bool,
    /// The agent's state dir (its --state-dir), where the logs live.
    #[arg(long, default_value = "/var/lib/coxswain/node")]
    state_dir: PathBuf,
    /// The agent's run dir (its --run-dir), where `--follow` learns that a container ended.
    #[arg(long, default_value = "/run/coxswain/node")]
    run_dir: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let found = match logs::find(
        &args.state_dir.join("logs"),
        &args.namespace,
        &args.pod,
        args.container.as_deref(),
    ) {
        Ok(found) => found,
        // Config errors are the negative answers (no such pod or container), worded as
        // kubectl words them.
        Err(Error::Config { reason, .. }) => return Ok(refuse(&reason)),
        Err(e) => return Err(e).context("finding the container's logs"),
    };
    let (live, attempt) = if args.previous {
        match (found.previous(), found.attempts.iter().rev().nth(1)) {
            (Some(path), Some(attempt)) => (path, *attempt),
            _ => {
                return Ok(refuse(&format!(
                    "previous terminated container \"{}\" in pod \"{}\" not found",
                    found.container, args.pod
                )));
            }
        }
    } else {
        match (found.current(), found.attempts.last()) {
            (Some(path), Some(attempt)) => (path, *attempt),
            _ => {
                return Ok(refuse(&format!(
                    "container \"{}\" in pod \"{}\" is waiting to start",
                    found.container, args.pod
                )));
            }
        }
    };
    let mut out = io::stdout().lock();
    let result = if args.follow && !args.previous {
        follow(&args.run_dir, &found, attempt, &live, &mut out)
    } else {
        print_all(&live, &mut out)
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `coxswain logs web | head` closing the pipe early is not a failure.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).with_context(|| format!("reading {}", live.display())),
    }
}

/// Prints a negative answer and returns its exit code.
fn refuse(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

/// Prints a log: its rotated files oldest first, then the live file.
fn print_all(live: &Path, out: &mut impl Write) -> io::Result<()> {
    for path in files(live)? {
        copy_from(&path, 0, out)?;
    }
    out.flush()
}

/// Prints the log, then what is appended to the live file, until the attempt ends: its exit
/// record appears, a newer attempt starts, or its logs are removed with the pod.
///
/// Rotation copies the live file and truncates it under us, and a fast writer can grow it
/// past what we printed before we look again, so its size alone cannot tell. What tells is
/// `.1`: the rotation shifts the old one away first and renames its finished copy into place
/// only after truncating, so a `.1` that is not the one we saw last means a rotation is
/// complete, and that copy's bytes past what we printed are the lines written since our last
/// read. Then printing restarts at the live file's start. Since a rotation can also happen
/// while we read, what was read is printed only if `.1` is still the same afterwards and the
/// file is still at least that long. A live file that shrinks with `.1`
/// unchanged was truncated by someone else (or we looked between a rotation's truncation and
/// its rename, a window of one system call): printing restarts at its start too, and the
/// copy that may show up at the next poll is not printed again.
fn follow(
    run_dir: &Path,
    found: &ContainerLogs,
    attempt: u32,
    live: &Path,
    out: &mut impl Write,
) -> io::Result<()> {
    let newest_rotated = logs::numbered(live, 1);
    let mut seen_rotated = identity(&newest_rotated);
    for path in files(live)?.iter().filter(|p| p.as_path() != live) {
        copy_from(path, 0, out)?;
    }
    // Kept open, so a log removed with its pod still reads to its end.
    let mut file = match File::open(live) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return out.flush(),
        Err(e) => return Err(e),
    };
    let exit_record = run_dir
        .join("sandboxes")
        .join(&found.sandbox)
        .join(format!("{}.{attempt}", found.container))
        .join("exit.json");
    let mut offset = 0u64;
    // The poll at which the live file shrank with no new `.1`: a new `.1` at that poll or
    // the next is that same rotation, whose tail was not printed from the copy.
    let mut shrank_at: Option<u64> = None;
    for poll in 0u64.. {
        // Checked before reading, so that everything written before the end is printed.
        let ended = exit_record.exists()
            || found
                .refresh_attempts()
                .map(|a| a.last() != Some(&attempt))
                .unwrap_or(true);
        loop {
            let rotated = identity(&newest_rotated);
            if rotated != seen_rotated {
                seen_rotated = rotated;
                if shrank_at.is_none_or(|p| poll - p > 1) {
                    copy_from(&newest_rotated, offset, out)?;
                }
                shrank_at = None;
                offset = 0;
            }
            // Read first and print only once no rotation is seen to have happened meanwhile:
            // bytes read from a file truncated and regrown during the read are not the log.
            let mut chunk = Vec::new();
            file.seek(SeekFrom::Start(offset))?;
            (&mut file).take(CHUNK).read_to_end(&mut chunk)?;
            if identity(&newest_rotated) != seen_rotated {
                continue;
            }
            let read_to = offset.saturating_add(chunk.len() as u64);
            if file.metadata()?.len() < read_to {
                shrank_at = Some(poll);
                offset = 0;
                continue;
            }
            if chunk.is_empty() {
                break;
            }
            out.write_all(&chunk)?;
            offset = read_to;
        }
        out.flush()?;
        if ended {
            break;
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// What tells one rotated file from the next under the same name. The inode alone is not
/// enough: with `max_files` 2 the old `.1` is removed just before its successor is created,
/// and the file system may hand out the same inode number again.
fn identity(path: &Path) -> Option<(u64, u64, u64, i64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// The files of a log, oldest first; I/O errors as `io::Error` for the printing loop.
fn files(live: &Path) -> io::Result<Vec<PathBuf>> {
    logs::files(live).map_err(io::Error::other)
}

/// Prints `path` from `offset` to its end; a file rotated away meanwhile prints nothing.
fn copy_from(path: &Path, offset: u64, out: &mut impl Write) -> io::Result<u64> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    io::copy(&mut file, out)
}
