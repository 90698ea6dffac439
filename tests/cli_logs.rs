//! `coxswain logs` through the real binary, on a state dir laid out as the runtime lays it
//! out (`logs/<ns>_<pod>_<uid>/<container>/<attempt>.log`): the current and previous attempt,
//! choosing a container, kubectl's errors, rotated files in order, and `-f`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn logs(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coxswain"))
        .arg("logs")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--run-dir")
        .arg(state.join("run"))
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `<state>/logs/<key>/<container>/<file>`.
fn write_log(state: &Path, key: &str, container: &str, file: &str, text: &str) {
    let dir = state.join("logs").join(key).join(container);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(file), text).unwrap();
}

#[test]
fn prints_the_current_or_the_previous_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    write_log(state, "default_web_u1", "app", "0.log", "first run\n");
    write_log(state, "default_web_u1", "app", "1.log", "second run\n");
    // Attempts compare as numbers, not as names.
    write_log(state, "default_web_u1", "app", "10.log", "eleventh run\n");

    let out = logs(state, &["web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "eleventh run\n");

    let out = logs(state, &["web", "--previous"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "second run\n");
}

#[test]
fn previous_of_a_container_that_never_restarted_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    write_log(state, "shop_x_u1", "web", "0.log", "only run\n");
    let out = logs(state, &["x", "-n", "shop", "-p"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: previous terminated container \"web\" in pod \"x\" not found"
    );
    assert_eq!(stdout(&out), "");
}

#[test]
fn a_pod_with_several_containers_needs_one_named() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    write_log(state, "default_web_u1", "b", "0.log", "from b\n");
    write_log(state, "default_web_u1", "a", "0.log", "from a\n");

    let out = logs(state, &["web"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: a container name must be specified for pod web, choose one of: [a b]"
    );

    let out = logs(state, &["web", "-c", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from b\n");

    let out = logs(state, &["web", "--container", "c"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: container c is not valid for pod web"
    );
}

#[test]
fn a_pod_not_on_this_node_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    write_log(state, "default_web_u1", "app", "0.log", "hi\n");
    let empty = tmp.path().join("empty");
    // Same name in another namespace, a name that only starts the same, no logs dir at all.
    for (state, args) in [
        (state, vec!["web", "-n", "other"]),
        (state, vec!["we"]),
        (empty.as_path(), vec!["web"]),
    ] {
        let out = logs(state, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let name = args[0];
        assert_eq!(
            stderr(&out).trim(),
            format!("error: pods \"{name}\" not found"),
            "{args:?}"
        );
    }
}

#[test]
fn rotated_files_are_printed_oldest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    write_log(state, "default_web_u1", "app", "3.log.2", "one\n");
    write_log(state, "default_web_u1", "app", "3.log.1", "two\n");
    write_log(state, "default_web_u1", "app", "3.log", "three\n");
    let out = logs(state, &["web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "one\ntwo\nthree\n");
}

/// Kills the follower even when an assertion fails first.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines the child prints, read on a thread so a test can wait with a deadline.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn follow(state: &Path, pod: &str) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_coxswain"))
            .args(["logs", pod, "-f", "--state-dir"])
            .arg(state)
            .arg("--run-dir")
            .arg(state.join("run"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

const WAIT: Duration = Duration::from_secs(10);

/// The child's exit status, failing the test if it is still running after [`WAIT`].
fn exits_within(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "follow did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn follow_prints_appended_lines_and_survives_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    write_log(state, "default_web_u1", "app", "0.log", "old\n");
    let live = state.join("logs/default_web_u1/app/0.log");
    let mut child = follow(state, "web");
    let rx = lines_of(&mut child.0);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "old");

    // As the container writes: one O_APPEND descriptor for the whole run.
    let mut writer = fs::OpenOptions::new().append(true).open(&live).unwrap();
    writer.write_all(b"new line\n").unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "new line");

    // A line the follower may not have read before the rotation moved it to `.1`, and one
    // that regrows the live file past what was printed before the follower looks again: both
    // are printed once, in order.
    writer.write_all(b"just before\n").unwrap();
    assert!(coxswain_node::logs::rotate(&live, 1, 5).unwrap());
    writer.write_all(b"after the rotation\n").unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "just before");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "after the rotation");
    // Nothing printed twice.
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "follow stopped early"
    );
}

#[test]
fn follow_stops_when_the_container_restarts_or_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path();
    write_log(state, "default_web_u1", "app", "0.log", "run 0\n");
    let mut child = follow(state, "web");
    let rx = lines_of(&mut child.0);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "run 0");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "follow stopped early"
    );

    // A restart: the last words of attempt 0 are still printed, then it ends.
    fs::OpenOptions::new()
        .append(true)
        .open(state.join("logs/default_web_u1/app/0.log"))
        .unwrap()
        .write_all(b"last words\n")
        .unwrap();
    write_log(state, "default_web_u1", "app", "1.log", "run 1\n");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "last words");
    assert!(
        rx.recv_timeout(WAIT).is_err(),
        "follow printed the new attempt"
    );
    assert!(exits_within(&mut child.0).success());

    // An exit: the runtime's exit record for the followed attempt ends it.
    let mut child = follow(state, "web");
    let rx = lines_of(&mut child.0);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "run 1");
    let record = state.join("run/sandboxes/default_web_u1/app.1");
    fs::create_dir_all(&record).unwrap();
    fs::write(record.join("exit.json"), "{}").unwrap();
    assert!(rx.recv_timeout(WAIT).is_err());
    assert!(exits_within(&mut child.0).success());
}
