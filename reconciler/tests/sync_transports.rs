//! The sync's whole life against every way a repository can be reached: a local path, a bare
//! repository over `file://`, and one served on loopback by `git daemon`. One scenario walks
//! the cases of the GitOps core in order (apply, refuse with file and line, fix, prune, the
//! prune guard and its trailer, a branch switch, a force-push, two quick commits, a restart of
//! the store) against a real store member, and reads the notes back with the `git` CLI, from
//! the repository itself for a local path and from the origin the notes were pushed to for a
//! remote one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coxswain_reconciler::notes::CommitState;
use coxswain_reconciler::source::{Reference, Source, SourceConfig};
use coxswain_reconciler::sync::{Outcome, SyncConfig, Syncer, read_status};
use coxswain_store::{Consistency, Kv, Member, MemberConfig};
use serde_json::{Value, json};
use support::Daemon;

// ---------------------------------------------------------------------------------------
// helpers

/// Runs git with a fixed identity and no user or system config, so the scenario behaves the
/// same on a bare CI machine and on a laptop with commit signing turned on.
fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    cmd
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_command(dir, args).output().expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  value: \"{value}\"\n"
    )
}

/// Line 7 holds an integer where the schema wants a string, line 8 a map.
const BROKEN: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\n  namespace: default\ndata:\n  value: 3\n  nested: {a: 1}\n";

/// How the syncer reaches the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// The work tree itself, opened in place.
    LocalPath,
    /// A bare origin, fetched over `file://` into a cache.
    FileUrl,
    /// A bare origin served by `git daemon` on loopback, fetched over `git://`.
    GitDaemon,
}

/// The repositories of one scenario: a work tree commits are made in and, for a remote
/// transport, the bare origin it pushes to and the syncer fetches from.
#[derive(Debug)]
struct Upstream {
    transport: Transport,
    _dir: tempfile::TempDir,
    work: PathBuf,
    origin: Option<PathBuf>,
    cache: PathBuf,
    url: String,
    _daemon: Option<Daemon>,
}

impl Upstream {
    fn new(transport: Transport) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("deploy")).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let cache = dir.path().join("cache");
        let (origin, url, daemon) = match transport {
            Transport::LocalPath => (None, work.display().to_string(), None),
            Transport::FileUrl | Transport::GitDaemon => {
                let srv = dir.path().join("srv");
                let origin = srv.join("origin.git");
                std::fs::create_dir_all(&origin).unwrap();
                git(&origin, &["init", "-q", "--bare", "-b", "main"]);
                // The work clone pushes by path; only the syncer uses the transport under test.
                git(
                    &work,
                    &["remote", "add", "origin", origin.to_str().unwrap()],
                );
                if transport == Transport::FileUrl {
                    let url = format!("file://{}", origin.display());
                    (Some(origin), url, None)
                } else {
                    let daemon = Daemon::serve(&srv);
                    let url = format!("git://127.0.0.1:{}/origin.git", daemon.port);
                    (Some(origin), url, Some(daemon))
                }
            }
        };
        Upstream {
            transport,
            _dir: dir,
            work,
            origin,
            cache,
            url,
            _daemon: daemon,
        }
    }

    fn is_remote(&self) -> bool {
        self.transport != Transport::LocalPath
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.work.join("deploy").join(file), text).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.work.join("deploy").join(file)).unwrap();
    }

    /// Commits everything in the work tree and publishes it with a plain (fast-forward) push.
    fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.push(false);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Pushes the checked-out branch to the origin (a local path has nothing to push to).
    fn push(&self, force: bool) {
        if !self.is_remote() {
            return;
        }
        let branch = git(&self.work, &["rev-parse", "--abbrev-ref", "HEAD"]);
        let mut args = vec!["push", "-q"];
        if force {
            args.push("--force");
        }
        args.extend(["origin", branch.as_str()]);
        git(&self.work, &args);
    }

    fn source_config(&self, branch: &str) -> SourceConfig {
        let mut cfg = SourceConfig::new(self.url.clone());
        cfg.reference = Reference::Branch(branch.into());
        cfg.path = Some("deploy".into());
        if self.is_remote() {
            cfg.cache_dir = Some(self.cache.clone());
            cfg.push_notes = true;
        }
        cfg
    }

    fn syncer(&self, member: &Member, branch: &str) -> Syncer {
        let source = Source::open(&self.source_config(branch)).unwrap();
        Syncer::new(member.clone(), source, SyncConfig::default()).unwrap()
    }

    /// The note on `commit` as `git notes` shows it where a user would look: the repository
    /// itself for a local path, the origin the notes were pushed to for a remote.
    fn note(&self, commit: &str) -> Option<String> {
        let show = ["notes", "--ref", "coxswain", "show", commit];
        let out = match &self.origin {
            Some(origin) => {
                let git_dir = origin.display().to_string();
                let mut args = vec!["--git-dir", git_dir.as_str()];
                args.extend(show);
                git_command(&self.work, &args).output()
            }
            None => git_command(&self.work, &show).output(),
        }
        .expect("run git notes");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn expect_note(&self, commit: &str, what: &str) -> String {
        self.note(commit).unwrap_or_else(|| {
            panic!(
                "{:?}: no note on the {what} commit {commit}",
                self.transport
            )
        })
    }
}

async fn start_member(dir: &Path) -> Member {
    // A member that was just shut down lets go of RocksDB's lock only when its threads notice,
    // so a restart retries the open instead of guessing how long that takes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let member = loop {
        match Member::start(MemberConfig::new(1, dir, "127.0.0.1:1", "token"), true).await {
            Ok(m) => break m,
            Err(e) => {
                assert!(Instant::now() < deadline, "the member did not start: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    member
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    member
}

async fn stored(member: &Member, name: &str) -> Option<Value> {
    let key = format!("/core/ConfigMap/default/{name}");
    let (_, kv) = member.get(&key, Consistency::Linearizable).await.unwrap();
    kv.map(|kv| kv.value)
}

async fn value_of(member: &Member, name: &str) -> Option<String> {
    stored(member, name)
        .await
        .and_then(|v| v["data"]["value"].as_str().map(str::to_string))
}

/// (created, updated, deleted, unchanged) of an applied outcome, and its commit.
fn applied(outcome: Outcome, step: &str) -> (String, (u32, u32, u32, u32)) {
    match outcome {
        Outcome::Applied {
            commit, summary, ..
        } => (
            commit,
            (
                summary.created,
                summary.updated,
                summary.deleted,
                summary.unchanged,
            ),
        ),
        other => panic!("{step}: expected Applied, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// the scenario

async fn scenario(t: Transport) {
    let store_dir = tempfile::tempdir().unwrap();
    let up = Upstream::new(t);
    let mut m = start_member(store_dir.path()).await;

    // A commit is applied.
    for i in 0..8 {
        up.write(&format!("cm{i}.yaml"), &configmap(&format!("cm{i}"), "1"));
    }
    let first = up.commit("eight configmaps");
    let mut s = up.syncer(&m, "main");
    let (commit, counts) = applied(s.sync_once().await.unwrap(), "first commit");
    assert_eq!(commit, first);
    assert_eq!(counts, (8, 0, 0, 0));
    for i in 0..8 {
        assert_eq!(value_of(&m, &format!("cm{i}")).await.as_deref(), Some("1"));
    }
    let cm0 = stored(&m, "cm0").await.unwrap();
    assert_eq!(
        cm0["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        json!("coxswain")
    );
    let (record, _) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().commit, first);
    assert_eq!(
        s.sync_once().await.unwrap(),
        Outcome::Unchanged {
            commit: first.clone()
        },
        "the same commit again must be a no-op poll"
    );

    // A bad commit is not applied: the last good commit keeps running.
    up.write("cm1.yaml", &configmap("cm1", "2"));
    up.write("broken.yaml", BROKEN);
    let bad = up.commit("a broken configmap");
    let Outcome::Rejected { commit, errors } = s.sync_once().await.unwrap() else {
        panic!("the broken commit was not rejected")
    };
    assert_eq!(commit, bad);
    assert!(
        errors
            .iter()
            .any(|e| e.file.ends_with("broken.yaml") && e.line >= 7),
        "errors should name broken.yaml and its line: {errors:?}"
    );
    assert_eq!(value_of(&m, "cm1").await.as_deref(), Some("1"));
    assert!(stored(&m, "broken").await.is_none());
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().commit, first);
    let attempt = attempt.unwrap();
    assert_eq!(
        (attempt.commit.as_str(), attempt.state),
        (bad.as_str(), CommitState::Failed)
    );

    // The fix is applied, with the change that came along with the broken file.
    up.write("broken.yaml", &configmap("broken", "3"));
    let fixed = up.commit("fix it");
    let (commit, counts) = applied(s.sync_once().await.unwrap(), "the fix");
    assert_eq!(commit, fixed);
    assert_eq!(counts, (1, 1, 0, 7));
    assert_eq!(value_of(&m, "cm1").await.as_deref(), Some("2"));
    assert_eq!(value_of(&m, "broken").await.as_deref(), Some("3"));
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().commit, fixed);
    assert_eq!(attempt.unwrap().state, CommitState::Applied);

    // Deleting a file prunes its object (1 of 9 is under the guard's quarter).
    up.remove("cm7.yaml");
    let dropped = up.commit("drop cm7");
    let (commit, counts) = applied(s.sync_once().await.unwrap(), "the delete");
    assert_eq!(commit, dropped);
    assert_eq!(counts, (0, 0, 1, 8));
    assert!(stored(&m, "cm7").await.is_none());

    // A mass delete (3 of 8) is held by the guard; nothing is deleted.
    for i in 0..3 {
        up.remove(&format!("cm{i}.yaml"));
    }
    let held = up.commit("remove three");
    let Outcome::Held { commit, reason } = s.sync_once().await.unwrap() else {
        panic!("a 3-of-8 delete was not held")
    };
    assert_eq!(commit, held);
    assert!(reason.contains('3'), "{reason}");
    for i in 0..3 {
        assert!(
            stored(&m, &format!("cm{i}")).await.is_some(),
            "cm{i} was deleted while held"
        );
    }
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().commit, dropped);
    let attempt = attempt.unwrap();
    assert_eq!(attempt.commit, held);
    assert!(attempt.sync.prune_guard.held);

    // ... and goes through with the trailer.
    let allowed = up.commit("remove three, really\n\nCoxswain-Allow-Prune: yes");
    let (commit, counts) = applied(s.sync_once().await.unwrap(), "the allowed prune");
    assert_eq!(commit, allowed);
    assert_eq!(counts, (0, 0, 3, 5));
    for i in 0..3 {
        assert!(stored(&m, &format!("cm{i}")).await.is_none());
    }
    for name in ["cm3", "cm4", "cm5", "cm6", "broken"] {
        assert!(stored(&m, name).await.is_some(), "{name} was pruned too");
    }
    s.close().await;
    // Closing waits for the notes (and, for a remote, their push): they are readable now.
    let note = up.expect_note(&bad, "bad");
    assert!(note.contains("failed"), "{note}");
    assert!(note.contains("broken.yaml:"), "{note}");
    assert!(up.expect_note(&held, "held").contains("prune guard held"));

    // A branch switch: the source is reconfigured to follow `other`, whose content differs
    // (broken dropped, o1 added, cm3 changed); the store ends up matching that branch.
    git(&up.work, &["checkout", "-q", "-b", "other"]);
    up.remove("broken.yaml");
    up.write("o1.yaml", &configmap("o1", "1"));
    up.write("cm3.yaml", &configmap("cm3", "o"));
    let other = up.commit("the other branch");
    let mut s = up.syncer(&m, "other");
    let (commit, counts) = applied(s.sync_once().await.unwrap(), "the branch switch");
    assert_eq!(commit, other);
    assert_eq!(counts, (1, 1, 1, 3));
    assert!(stored(&m, "broken").await.is_none());
    assert_eq!(value_of(&m, "o1").await.as_deref(), Some("1"));
    assert_eq!(value_of(&m, "cm3").await.as_deref(), Some("o"));
    let (record, _) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().commit, other);

    // A force-push: `other` is rewritten to a commit that does not descend from the one
    // applied, and that commit's content is what the store gets.
    git(&up.work, &["reset", "-q", "--hard", "HEAD~1"]);
    up.write("cm5.yaml", &configmap("cm5", "f"));
    git(&up.work, &["add", "-A"]);
    git(&up.work, &["commit", "-q", "-m", "rewritten"]);
    up.push(true);
    let rewritten = git(&up.work, &["rev-parse", "HEAD"]);
    let (commit, counts) = applied(s.sync_once().await.unwrap(), "the force-push");
    assert_eq!(commit, rewritten);
    assert_eq!(counts, (1, 2, 1, 2));
    assert!(stored(&m, "o1").await.is_none());
    assert_eq!(value_of(&m, "broken").await.as_deref(), Some("3"));
    assert_eq!(value_of(&m, "cm3").await.as_deref(), Some("1"));
    assert_eq!(value_of(&m, "cm5").await.as_deref(), Some("f"));

    // Two quick commits before the next look: only the newest is applied.
    up.write("cm4.yaml", &configmap("cm4", "2"));
    let middle = up.commit("cm4=2");
    up.write("cm4.yaml", &configmap("cm4", "3"));
    up.write("cm8.yaml", &configmap("cm8", "1"));
    let newest = up.commit("cm4=3, cm8");
    let (commit, counts) = applied(s.sync_once().await.unwrap(), "the quick commits");
    assert_eq!(commit, newest);
    assert_eq!(counts, (1, 1, 0, 4));
    assert_eq!(value_of(&m, "cm4").await.as_deref(), Some("3"));
    assert_eq!(value_of(&m, "cm8").await.as_deref(), Some("1"));
    s.close().await;

    // A restart of the server: the member stops and starts again on the same data, a commit
    // lands while it is down, and the new syncer plans against the stored inventory (an
    // update of the same object, not a create of everything).
    let cm6_uid = stored(&m, "cm6").await.unwrap()["metadata"]["uid"].clone();
    assert!(cm6_uid.is_string());
    m.shutdown().await.unwrap();
    drop(m);
    up.write("cm6.yaml", &configmap("cm6", "r"));
    let while_down = up.commit("cm6=r while the server is down");
    m = start_member(store_dir.path()).await;
    let (record, _) = read_status(&m, "default").await.unwrap();
    assert_eq!(
        record.expect("the sync record survives a restart").commit,
        newest
    );
    let mut s = up.syncer(&m, "other");
    let (commit, counts) = applied(s.sync_once().await.unwrap(), "the resumed sync");
    assert_eq!(commit, while_down);
    assert_eq!(counts, (0, 1, 0, 5));
    let cm6 = stored(&m, "cm6").await.unwrap();
    assert_eq!(cm6["data"]["value"], json!("r"));
    assert_eq!(
        cm6["metadata"]["uid"], cm6_uid,
        "cm6 was re-created rather than updated"
    );
    assert_eq!(
        s.sync_once().await.unwrap(),
        Outcome::Unchanged {
            commit: while_down.clone()
        }
    );
    s.close().await;
    m.shutdown().await.unwrap();

    // Every commit that was looked at has its status in a note; the skipped one has none.
    for (commit, what) in [
        (&first, "first"),
        (&fixed, "fixed"),
        (&dropped, "prune"),
        (&allowed, "allowed prune"),
        (&other, "branch switch"),
        (&rewritten, "force-pushed"),
        (&newest, "newest"),
        (&while_down, "resumed"),
    ] {
        let note = up.expect_note(commit, what);
        assert!(
            note.starts_with("coxswain: applied"),
            "{t:?}: the {what} note: {note}"
        );
    }
    assert!(
        up.note(&middle).is_none(),
        "{t:?}: the skipped commit got a note"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_path() {
    scenario(Transport::LocalPath).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_url() {
    scenario(Transport::FileUrl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_daemon() {
    scenario(Transport::GitDaemon).await;
}
