//! End-to-end tests of `coxswain validate`: the real binary, real folders, real Git
//! repositories made with the `git` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coxswain(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coxswain"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  a: b\n";
const BAD_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: three
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: busybox
";

#[test]
fn examples_repo_is_valid() {
    let out = coxswain(&["validate", "examples-repo"], &repo_root());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("valid: 4 objects in 4 files"), "{stdout}");
}

#[test]
fn invalid_folder_exits_1_with_located_errors_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cm.yaml"), CONFIGMAP).unwrap();
    std::fs::write(dir.path().join("web.yaml"), BAD_DEPLOYMENT).unwrap();

    let out = coxswain(&["validate", "."], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("--> web.yaml:6:3"), "{text}");
    assert!(text.contains("6 |   replicas: three"), "{text}");
    assert!(text.contains("invalid: 1 error in 1 file"), "{text}");

    let out = coxswain(&["validate", ".", "--output", "json"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["files"], 2);
    assert_eq!(json["objects"], 1, "the ConfigMap is valid on its own");
    let err = &json["errors"][0];
    assert_eq!(err["file"], "web.yaml");
    assert_eq!(err["line"], 6);
    assert_eq!(err["column"], 3);
    assert_eq!(err["pointer"], "/spec/replicas");
    assert_eq!(err["code"], "schema");
    assert!(err["reason"].as_str().unwrap().contains("three"));
}

#[test]
fn rev_reads_the_commit_not_the_work_tree() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "-q"]);
    std::fs::create_dir(repo.join("deploy")).unwrap();
    std::fs::write(repo.join("deploy/cm.yaml"), CONFIGMAP).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "good"]);
    std::fs::write(repo.join("deploy/web.yaml"), BAD_DEPLOYMENT).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-qm", "bad"]);
    // Fix the work tree without committing: --rev must still see the broken commit.
    std::fs::remove_file(repo.join("deploy/web.yaml")).unwrap();

    let out = coxswain(&["validate", "deploy", "--rev", "HEAD"], repo);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("--> web.yaml:6:3"));

    let out = coxswain(&["validate", "deploy", "--rev", "HEAD~1"], repo);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = coxswain(&["validate", "deploy"], repo);
    assert_eq!(out.status.code(), Some(0), "the work tree is valid");

    let out = coxswain(&["validate", "deploy", "--rev", "no-such-branch"], repo);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot resolve revision"));
}

#[test]
fn coxswainignore_excludes_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cm.yaml"), CONFIGMAP).unwrap();
    std::fs::create_dir(dir.path().join("drafts")).unwrap();
    std::fs::write(dir.path().join("drafts/web.yaml"), BAD_DEPLOYMENT).unwrap();
    assert_eq!(
        coxswain(&["validate", "."], dir.path()).status.code(),
        Some(1)
    );
    std::fs::write(dir.path().join(".coxswainignore"), "drafts/\n").unwrap();
    let out = coxswain(&["validate", "."], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = coxswain(&["validate", "does-not-exist"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does-not-exist"));
    assert_eq!(
        coxswain(&["validate", "--output", "xml"], dir.path())
            .status
            .code(),
        Some(2)
    );
    assert_eq!(coxswain(&["frobnicate"], dir.path()).status.code(), Some(2));
    let out = coxswain(&["validate", ".", "--rev", "HEAD"], dir.path());
    assert_eq!(out.status.code(), Some(2), "not a Git repository");
}
