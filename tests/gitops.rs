//! The GitOps core through the real binary: `coxswain server --repo` on a repository made with
//! the `git` CLI, a commit seen through the notify watch (the poll interval is an hour, so
//! only the watch can find it), `coxswain status`, and the note read back with `git notes`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOKEN: &str = "gitops-test-token";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  value: \"{value}\"\n"
    )
}

/// The server process; killed on drop so a failing test leaves nothing behind.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `cmd` with its stdout read line by line on a thread.
    fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server { child, lines }
    }

    fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no line starting with {prefix:?} in {timeout:?}; saw {seen:#?}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_pushed_commit_is_applied_reported_and_noted() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let r = repo.path();
    git(r, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(r.join("deploy")).unwrap();
    for i in 0..4 {
        std::fs::write(
            r.join(format!("deploy/cm{i}.yaml")),
            configmap(&format!("cm{i}"), "1"),
        )
        .unwrap();
    }
    git(r, &["add", "-A"]);
    git(r, &["commit", "-q", "-m", "four configmaps"]);
    let first = git(r, &["rev-parse", "HEAD"]);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coxswain"));
    cmd.args([
        "server",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
    ])
    .arg("--data")
    .arg(data.path())
    .arg("--repo")
    .arg(r)
    .args(["--path", "deploy", "--interval", "1h"]);
    let server = Server::spawn(cmd);
    let listening = server.wait_line(
        "coxswain server: member 1 listening on ",
        Duration::from_secs(30),
    );
    let addr = listening.rsplit(' ').next().unwrap().to_string();
    let applied = server.wait_line("coxswain server: applied ", Duration::from_secs(30));
    assert!(applied.contains(&first), "{applied}");
    assert!(applied.contains("4 created"), "{applied}");

    // A new commit is found by the watch (the poll would take an hour).
    std::fs::write(r.join("deploy/cm0.yaml"), configmap("cm0", "2")).unwrap();
    git(r, &["commit", "-q", "-am", "cm0=2"]);
    let second = git(r, &["rev-parse", "HEAD"]);
    let applied = server.wait_line("coxswain server: applied ", Duration::from_secs(10));
    assert!(applied.contains(&second), "{applied}");
    assert!(
        applied.contains("0 created, 1 updated, 0 deleted, 3 unchanged"),
        "{applied}"
    );

    // `coxswain diff` plans a branch the server does not follow, and applies nothing.
    git(r, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(r.join("deploy/cm2.yaml"), configmap("cm2", "9")).unwrap();
    std::fs::remove_file(r.join("deploy/cm3.yaml")).unwrap();
    git(r, &["commit", "-q", "-am", "cm2=9, no cm3"]);
    git(r, &["checkout", "-q", "main"]);
    let diff = |rev: &str| {
        Command::new(env!("CARGO_BIN_EXE_coxswain"))
            .arg("diff")
            .arg(r.join("deploy"))
            .args(["--rev", rev, "--server", &addr, "--token", TOKEN])
            .output()
            .unwrap()
    };
    let out = diff("feature");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "changes exit 1: {text}");
    assert!(text.contains("/core/ConfigMap/default/cm2"), "{text}");
    assert!(text.contains("\"9\""), "{text}");
    assert!(text.contains("- /core/ConfigMap/default/cm3"), "{text}");
    assert!(text.contains("1 to update, 1 to delete"), "{text}");
    let out = diff("main");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A broken commit is refused with its file and line; the status says so.
    std::fs::write(
        r.join("deploy/cm1.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm1\n  namespace: default\ndata:\n  value: 3\n",
    )
    .unwrap();
    git(r, &["commit", "-q", "-am", "break cm1"]);
    let bad = git(r, &["rev-parse", "HEAD"]);
    let rejected = server.wait_line("coxswain server: rejected ", Duration::from_secs(10));
    assert!(rejected.contains(&bad), "{rejected}");
    let error = server.wait_line("  ", Duration::from_secs(5));
    assert!(error.contains("cm1.yaml:7:"), "{error}");

    let status = Command::new(env!("CARGO_BIN_EXE_coxswain"))
        .args(["status", "--server", &addr, "--token", TOKEN, "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(1),
        "a refused newest commit exits 1"
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["lastApplied"]["commit"], serde_json::json!(second));
    assert_eq!(json["lastAttempted"]["commit"], serde_json::json!(bad));
    assert_eq!(json["lastAttempted"]["state"], serde_json::json!("failed"));

    // Notes are written as the sync goes, at most once a second per commit (the first,
    // `pending`, at once); wait for each commit's final state to be written.
    let note = wait_note(&r.join(".git"), &bad, "failed");
    assert!(
        note.starts_with("coxswain: failed") && note.contains("cm1.yaml:7"),
        "{note}"
    );
    let note = wait_note(&r.join(".git"), &second, "healthy");
    assert!(note.starts_with("coxswain: healthy"), "{note}");
    drop(server);
}

/// The notes of `commit` in the repository at `git_dir`, waiting up to 10 s for one that
/// starts with `coxswain: STATE`.
fn wait_note(git_dir: &Path, commit: &str, state: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(git_dir)
            .args(["notes", "--ref", "coxswain", "show", commit])
            .output()
            .unwrap();
        let note = String::from_utf8_lossy(&out.stdout).into_owned();
        if note.starts_with(&format!("coxswain: {state}")) || Instant::now() > deadline {
            return note;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_config_file_syncs_a_remote_and_pushes_its_notes_there() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin.git");
    let work = tmp.path().join("work");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&work).unwrap();
    git(
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", "origin.git"],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(work.join("deploy")).unwrap();
    std::fs::write(work.join("deploy/a.yaml"), configmap("a", "1")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "a"]);
    let url = format!("file://{}", origin.display());
    git(&work, &["push", "-q", &url, "main"]);
    let first = git(&work, &["rev-parse", "HEAD"]);

    // Everything but the member's id comes from the file; the flag gives that.
    let config = tmp.path().join("coxswain.yaml");
    std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        &config,
        format!(
            "data: {}\nlisten: 127.0.0.1:0\ntoken_file: token\nsource:\n  repo: {url}\n  \
             ref: {{branch: main}}\n  path: deploy\n  interval: 200ms\n  push_notes: true\n",
            data.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coxswain"));
    cmd.args(["server", "--id", "1", "--config"]).arg(&config);
    let server = Server::spawn(cmd);
    server.wait_line(
        "coxswain server: member 1 listening on ",
        Duration::from_secs(30),
    );
    let applied = server.wait_line("coxswain server: applied ", Duration::from_secs(30));
    assert!(applied.contains(&first), "{applied}");

    // A push to the remote is found by the poll; its note is pushed back to the remote.
    std::fs::write(work.join("deploy/b.yaml"), configmap("b", "1")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "b"]);
    git(&work, &["push", "-q", &url, "main"]);
    let second = git(&work, &["rev-parse", "HEAD"]);
    let applied = server.wait_line("coxswain server: applied ", Duration::from_secs(10));
    assert!(applied.contains(&second), "{applied}");
    assert!(applied.contains("1 created"), "{applied}");
    let note = wait_note(&origin, &second, "healthy");
    assert!(note.starts_with("coxswain: healthy"), "{note}");
    let note = wait_note(&origin, &first, "healthy");
    assert!(note.starts_with("coxswain: healthy"), "{note}");
    // The remote was fetched into a cache under the data folder, not cloned into a work tree.
    assert!(data.join("git").is_dir());
    drop(server);
}

#[test]
fn a_bad_config_file_is_refused_with_its_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("coxswain.yaml");
    std::fs::write(
        &config,
        "id: 1\ndata: /tmp/x\ntoken: t\nsource:\n  repo: /tmp/r\n  interval: soon\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coxswain"))
        .args(["server", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!("{}:6:3: source.interval:", config.display());
    assert!(stderr.contains(&want), "{stderr}");
    assert!(stderr.contains("soon"), "{stderr}");
}
