//! Container logs on disk: size-based rotation, and finding a pod's container logs for
//! `coxswain logs`.
//!
//! The runtime appends a container's stdout and stderr to
//! `<state>/logs/<sandbox key>/<container name>/<attempt>.log` (see
//! [`runtime::linux`](crate::runtime::linux)); the container itself holds that file open with
//! `O_APPEND`, so nothing in the agent sits between it and the file. Rotation therefore has
//! to work without the writer's cooperation ([`rotate`]), and rotated files sit next to the
//! live one as `<attempt>.log.1` (newest) … `<attempt>.log.N` (oldest). Reading a log
//! ([`files`]) means its rotated files oldest first, then the live file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// The size at which a log is rotated: the kubelet's `containerLogMaxSize` default (10Mi).
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// How many files one log may have, the live one included: the kubelet's
/// `containerLogMaxFiles` default.
pub const DEFAULT_MAX_FILES: usize = 5;

/// The suffix of a rotated file while it is being copied; [`files`] never lists it, so a
/// reader never sees a half-copied file, and a copy cut short by a crash is overwritten by
/// the next rotation.
const COPY_SUFFIX: &str = "rotating";

/// Rotates the log at `path` if it holds `max_bytes` or more: its rotated files shift up one
/// (`.1` → `.2` …; those that would pass `max_files` are removed), the live file is copied to
/// `<path>.1`, and the live file is truncated to zero. Returns whether it rotated; a missing
/// file (its pod was just removed) is not an error and does not rotate.
///
/// `max_files` counts the live file, as the kubelet's `containerLogMaxFiles` does, so at most
/// `max_files - 1` rotated files are kept; like the kubelet, it must be at least 2.
///
/// This is logrotate's *copytruncate*: the container keeps writing through its own `O_APPEND`
/// descriptor, which we cannot swap for a new file, and with `O_APPEND` each write lands at
/// the file's current end, so after the truncation the writer simply continues at offset 0.
/// As with copytruncate, bytes written between the copy reaching the end of the file and the
/// truncation are lost; the copy and the truncation use one descriptor back to back so that
/// window is a single system call wide. A reader that lists the files during a rotation may
/// also miss or repeat the lines being moved.
pub fn rotate(path: &Path, max_bytes: u64, max_files: usize) -> Result<bool> {
    check_limits(max_bytes, max_files)?;
    let mut live = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("open log to rotate", path)(e)),
    };
    let size = live
        .metadata()
        .map_err(Error::io("stat log to rotate", path))?
        .len();
    if size < max_bytes {
        return Ok(false);
    }
    // Shift first and rename the copy to `.1` only after the truncation: `coxswain logs -f`
    // takes a new `.1` as the sign of a finished rotation, and reads the lines it had not
    // printed yet from that copy.
    let keep = max_files - 1;
    for (n, old) in rotated(path)?.into_iter().rev() {
        if n >= keep {
            fs::remove_file(&old).map_err(Error::io("remove old rotated log", &old))?;
        } else {
            let to = numbered(path, n + 1);
            fs::rename(&old, &to).map_err(Error::io("shift rotated log", &old))?;
        }
    }
    let copy_path = suffixed(path, COPY_SUFFIX);
    let mut copy = File::create(&copy_path).map_err(Error::io("create rotated log", &copy_path))?;
    // Reads to the end as it is now, including what the container appended since the stat.
    io::copy(&mut live, &mut copy).map_err(Error::io("copy log", path))?;
    live.set_len(0).map_err(Error::io("truncate log", path))?;
    drop(copy);
    let first = numbered(path, 1);
    fs::rename(&copy_path, &first).map_err(Error::io("rename rotated log", &copy_path))?;
    tracing::debug!(log = %path.display(), bytes = size, "rotated container log");
    Ok(true)
}

/// Rotates every `*.log` under `logs_dir` (see [`rotate`]) and returns how many it rotated.
/// The agent calls it every few seconds. One log that fails does not stop the others: the
/// failure is logged and the walk goes on. A missing `logs_dir` has nothing to rotate.
/// Symbolic links are not followed, so nothing outside the logs dir is ever truncated.
pub fn rotate_all(logs_dir: &Path, max_bytes: u64, max_files: usize) -> Result<usize> {
    check_limits(max_bytes, max_files)?;
    let mut rotated_count = 0;
    let mut dirs = vec![logs_dir.to_path_buf()];
    let mut top = true;
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A pod's logs vanish when its sandbox is removed, possibly mid-walk.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) if top => return Err(Error::io("read logs dir", &dir)(e)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read log dir");
                continue;
            }
        };
        top = false;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "log") {
                match rotate(&path, max_bytes, max_files) {
                    Ok(true) => rotated_count += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot rotate container log"),
                }
            }
        }
    }
    Ok(rotated_count)
}

/// The files that make up the log whose live file is `live`: its rotated files oldest first,
/// then `live` itself (listed even if it does not exist yet).
pub fn files(live: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = rotated(live)?.into_iter().rev().map(|(_, p)| p).collect();
    out.push(live.to_path_buf());
    Ok(out)
}

/// One container's logs within one pod, as [`find`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLogs {
    /// The pod's sandbox key (`<namespace>_<name>_<uid>`).
    pub sandbox: String,
    /// The container's name.
    pub container: String,
    /// The folder holding one `<attempt>.log` per start of the container.
    pub dir: PathBuf,
    /// The attempts that have a log, in ascending order.
    pub attempts: Vec<u32>,
}

impl ContainerLogs {
    /// The live log of the latest attempt (the running container, or the last to run); none
    /// if the container has not started yet.
    pub fn current(&self) -> Option<PathBuf> {
        self.attempts.last().map(|a| self.path(*a))
    }

    /// The log of the attempt before the latest (`kubectl logs --previous`); none if the
    /// container has started only once.
    pub fn previous(&self) -> Option<PathBuf> {
        let n = self.attempts.len();
        n.checked_sub(2)
            .and_then(|i| self.attempts.get(i))
            .map(|a| self.path(*a))
    }

    /// The live log file of one attempt.
    pub fn path(&self, attempt: u32) -> PathBuf {
        self.dir.join(format!("{attempt}.log"))
    }

    /// The attempts that have a log now, in ascending order (read again from disk, so a
    /// follower notices a restart).
    pub fn refresh_attempts(&self) -> Result<Vec<u32>> {
        attempts(&self.dir)
    }
}

/// Finds the logs of `container` in the pod `namespace/pod` under `logs_dir`.
///
/// The pod's folder is `<namespace>_<pod>_<uid>`. A pod deleted and created again under the
/// same name leaves one folder per uid until the old sandbox is removed; then the most
/// recently modified one wins (the folder's or any of its container folders' modification
/// time, which changes when a container starts), since that is the pod that exists now.
///
/// With no `container`, a pod with exactly one container's logs means that one. Errors are
/// [`Error::Config`] whose reason is what kubectl says: `pods "x" not found`,
/// `a container name must be specified for pod web, choose one of: [a b]`,
/// `container c is not valid for pod web`.
pub fn find(
    logs_dir: &Path,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
) -> Result<ContainerLogs> {
    let not_found = || Error::Config {
        field: "pod".into(),
        reason: format!("pods \"{pod}\" not found"),
    };
    let prefix = format!("{namespace}_{pod}_");
    let entries = match fs::read_dir(logs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(Error::io("read logs dir", logs_dir)(e)),
    };
    let mut best: Option<(SystemTime, String, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(Error::io("read logs dir", logs_dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // Names and namespaces cannot hold '_' and the key's uid never does, so a uid with
        // a '_' in it belongs to another pod whose name merely starts the same way.
        let Some(uid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if uid.is_empty() || uid.contains('_') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        let modified = newest_mtime(&path)?;
        let newer = match &best {
            None => true,
            Some((t, n, _)) => (modified, &name) > (*t, n),
        };
        if newer {
            best = Some((modified, name, path));
        }
    }
    let (_, sandbox, pod_dir) = best.ok_or_else(not_found)?;
    let mut names = Vec::new();
    for entry in fs::read_dir(&pod_dir).map_err(Error::io("read pod log dir", &pod_dir))? {
        let entry = entry.map_err(Error::io("read pod log dir", &pod_dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir())
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    names.sort();
    // The name is matched against what is on disk and never joined as given, so a
    // `-c ../..` cannot lead outside the pod's folder.
    let chosen = match container {
        Some(c) => names
            .iter()
            .find(|n| *n == c)
            .cloned()
            .ok_or_else(|| Error::Config {
                field: "container".into(),
                reason: format!("container {c} is not valid for pod {pod}"),
            })?,
        None => match names.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(Error::Config {
                    field: "container".into(),
                    reason: format!(
                        "a container name must be specified for pod {pod}, choose one of: [{}]",
                        names.join(" ")
                    ),
                });
            }
        },
    };
    let dir = pod_dir.join(&chosen);
    Ok(ContainerLogs {
        attempts: attempts(&dir)?,
        sandbox,
        container: chosen,
        dir,
    })
}

/// The attempts with a `<attempt>.log` in a container's log folder, ascending.
fn attempts(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("read container log dir", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("read container log dir", dir))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The newest modification time of a pod's log folder and its container folders.
fn newest_mtime(pod_dir: &Path) -> Result<SystemTime> {
    let mtime = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .map_err(Error::io("stat pod log dir", p))
    };
    let mut newest = mtime(pod_dir)?;
    for entry in fs::read_dir(pod_dir)
        .map_err(Error::io("read pod log dir", pod_dir))?
        .flatten()
    {
        if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    Ok(newest)
}

/// The rotated files of the log at `live` as (number, path), ascending by number.
fn rotated(live: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let (Some(dir), Some(base)) = (live.parent(), live.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{base}.");
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("read log dir", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("read log dir", dir))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The `n`th rotated file of the log at `live` (`<live>.<n>`; 1 is the newest).
pub fn numbered(live: &Path, n: usize) -> PathBuf {
    suffixed(live, &n.to_string())
}

fn suffixed(live: &Path, suffix: &str) -> PathBuf {
    let mut s = live.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn check_limits(max_bytes: u64, max_files: usize) -> Result<()> {
    if max_bytes == 0 {
        return Err(Error::Config {
            field: "containerLogMaxSize".into(),
            reason: "must be greater than 0".into(),
        });
    }
    if max_files < 2 {
        return Err(Error::Config {
            field: "containerLogMaxFiles".into(),
            reason: format!("must be at least 2 (the live file and one rotated), got {max_files}"),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn rotates_only_at_the_size_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("0.log");
        fs::write(&log, "12345").unwrap();
        assert!(!rotate(&log, 6, 3).unwrap());
        assert_eq!(names(tmp.path()), ["0.log"]);
        assert!(rotate(&log, 5, 3).unwrap());
        assert_eq!(names(tmp.path()), ["0.log", "0.log.1"]);
        assert_eq!(
            fs::read_to_string(tmp.path().join("0.log.1")).unwrap(),
            "12345"
        );
        assert_eq!(fs::read(&log).unwrap().len(), 0);
        // A missing log (its pod just went away) is no error.
        assert!(!rotate(&tmp.path().join("9.log"), 5, 3).unwrap());
    }

    #[test]
    fn keeps_at_most_max_files_counting_the_live_one() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("0.log");
        for round in 1..=4 {
            fs::write(&log, format!("round {round}\n")).unwrap();
            assert!(rotate(&log, 1, 3).unwrap());
        }
        fs::write(&log, "live\n").unwrap();
        assert_eq!(names(tmp.path()), ["0.log", "0.log.1", "0.log.2"]);
        let order: Vec<String> = files(&log)
            .unwrap()
            .iter()
            .map(|p| fs::read_to_string(p).unwrap())
            .collect();
        assert_eq!(order, ["round 3\n", "round 4\n", "live\n"]);
    }

    #[test]
    fn a_lowered_max_files_drops_the_stranded_files() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("0.log");
        for n in 1..=4 {
            fs::write(suffixed(&log, &n.to_string()), format!("{n}")).unwrap();
        }
        fs::write(&log, "new").unwrap();
        assert!(rotate(&log, 1, 2).unwrap());
        assert_eq!(names(tmp.path()), ["0.log", "0.log.1"]);
        assert_eq!(fs::read_to_string(numbered(&log, 1)).unwrap(), "new");
    }

    #[test]
    fn an_append_writer_keeps_writing_into_the_truncated_file() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("0.log");
        // As the container holds it: opened once with O_APPEND, never reopened.
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writer.write_all(b"before rotation\n").unwrap();
        assert!(rotate(&log, 1, 5).unwrap());
        writer.write_all(b"after rotation\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "after rotation\n");
        assert_eq!(
            fs::read_to_string(numbered(&log, 1)).unwrap(),
            "before rotation\n"
        );
    }

    #[test]
    fn rotate_all_walks_every_container_log_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        let web = logs.join("default_web_u1/app");
        let db = logs.join("default_db_u2/db");
        fs::create_dir_all(&web).unwrap();
        fs::create_dir_all(&db).unwrap();
        fs::write(web.join("0.log"), "x".repeat(10)).unwrap();
        fs::write(web.join("1.log"), "small").unwrap();
        fs::write(db.join("0.log"), "y".repeat(10)).unwrap();
        // Not a live log: neither rotated files nor other files are rotated again.
        fs::write(db.join("0.log.1"), "z".repeat(10)).unwrap();
        fs::write(db.join("notes.txt"), "z".repeat(10)).unwrap();
        assert_eq!(rotate_all(&logs, 8, 5).unwrap(), 2);
        assert_eq!(names(&web), ["0.log", "0.log.1", "1.log"]);
        assert_eq!(names(&db), ["0.log", "0.log.1", "0.log.2", "notes.txt"]);
        assert_eq!(
            fs::read_to_string(db.join("0.log.1")).unwrap(),
            "y".repeat(10)
        );
        assert_eq!(rotate_all(&tmp.path().join("absent"), 8, 5).unwrap(), 0);
    }

    #[test]
    fn refuses_limits_the_kubelet_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("0.log");
        fs::write(&log, "x").unwrap();
        assert!(matches!(rotate(&log, 1, 1), Err(Error::Config { .. })));
        assert!(matches!(rotate(&log, 0, 5), Err(Error::Config { .. })));
        assert_eq!(fs::read_to_string(&log).unwrap(), "x");
    }

    fn reason(err: Error) -> String {
        match err {
            Error::Config { reason, .. } => reason,
            other => panic!("not a Config error: {other}"),
        }
    }

    #[test]
    fn find_picks_the_container_and_its_attempts() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path();
        fs::create_dir_all(logs.join("default_web_u1/a")).unwrap();
        fs::create_dir_all(logs.join("default_web_u1/b")).unwrap();
        fs::create_dir_all(logs.join("default_web-2_u9/a")).unwrap();
        for n in [0, 2, 10] {
            fs::write(logs.join(format!("default_web_u1/a/{n}.log")), "").unwrap();
        }
        fs::write(logs.join("default_web_u1/a/10.log.1"), "").unwrap();
        let found = find(logs, "default", "web", Some("a")).unwrap();
        assert_eq!(found.sandbox, "default_web_u1");
        assert_eq!(found.attempts, [0, 2, 10]);
        assert_eq!(found.current(), Some(logs.join("default_web_u1/a/10.log")));
        assert_eq!(found.previous(), Some(logs.join("default_web_u1/a/2.log")));

        assert_eq!(
            reason(find(logs, "default", "web", None).unwrap_err()),
            "a container name must be specified for pod web, choose one of: [a b]"
        );
        assert_eq!(
            reason(find(logs, "default", "web", Some("../b")).unwrap_err()),
            "container ../b is not valid for pod web"
        );
        assert_eq!(
            reason(find(logs, "other", "web", None).unwrap_err()),
            "pods \"web\" not found"
        );
        let one = find(logs, "default", "web-2", None).unwrap();
        assert_eq!(one.container, "a");
        assert_eq!(one.current(), None);
        assert_eq!(one.previous(), None);
    }

    #[test]
    fn find_prefers_the_newest_of_several_uids() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path();
        fs::create_dir_all(logs.join("default_web_old/app")).unwrap();
        fs::create_dir_all(logs.join("default_web_new/app")).unwrap();
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for p in ["default_web_old", "default_web_old/app"] {
            File::open(logs.join(p)).unwrap().set_modified(old).unwrap();
        }
        // "old" sorts after "new" by name, so only the time can make "new" win.
        assert_eq!(
            find(logs, "default", "web", None).unwrap().sandbox,
            "default_web_new"
        );
    }
}
