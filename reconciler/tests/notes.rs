#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The commit status notes against real repositories made with the `git` CLI: what `git notes`
//! shows, forward-only states, no rewrite of unchanged notes, independence of notes of
//! different commits, other writers of the notes ref (the CLI, concurrent threads, another
//! clone pushing to the same remote), and the rate-limited writer.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use coxswain_reconciler::Error;
use coxswain_reconciler::notes::{
    self, CommitState, CommitStatus, Drift, DriftKind, NoteWriter, ObjectState, ObjectStatus,
    PushTarget, Written,
};
use coxswain_reconciler::source::RemoteAccess;
use git2::Repository;
use tempfile::TempDir;

fn git_output(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .output()
        .unwrap()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// A repository on `main` with `n` commits; returns their full ids, oldest first.
fn fixture(n: usize) -> (TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["-c", "init.defaultBranch=main", "init", "-q"]);
    let mut shas = Vec::new();
    for i in 0..n {
        git(
            dir.path(),
            &[
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                &format!("commit {i}"),
            ],
        );
        shas.push(git(dir.path(), &["rev-parse", "HEAD"]));
    }
    (dir, shas)
}

fn notes_head(dir: &Path) -> Option<String> {
    let out = git_output(dir, &["rev-parse", "--verify", "-q", "refs/notes/coxswain"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn notes_commits(dir: &Path) -> usize {
    git(dir, &["rev-list", "--count", "refs/notes/coxswain"])
        .parse()
        .unwrap()
}

fn show_note(dir: &Path, sha: &str) -> String {
    git(dir, &["notes", "--ref", "coxswain", "show", sha])
}

fn status(sha: &str, state: CommitState) -> CommitStatus {
    let mut s = CommitStatus::new(sha, state);
    s.sync.created = 3;
    s.sync.updated = 1;
    s.sync.unchanged = 8;
    s.objects = vec![
        ObjectStatus {
            key: "Deployment/default/web".into(),
            kind: "Deployment".into(),
            namespace: Some("default".into()),
            name: "web".into(),
            source: "apps/web.yaml".into(),
            state: ObjectState::Healthy,
            drift: vec![],
        },
        ObjectStatus {
            key: "Service/default/web".into(),
            kind: "Service".into(),
            namespace: Some("default".into()),
            name: "web".into(),
            source: "apps/web.yaml".into(),
            state: ObjectState::Healthy,
            drift: vec![],
        },
    ];
    s
}

fn open(dir: &Path) -> Repository {
    Repository::open(dir).unwrap()
}

#[test]
fn note_is_readable_by_git_notes_show_and_git_log() {
    let (dir, shas) = fixture(2);
    let repo = open(dir.path());
    let mut healthy = status(&shas[1], CommitState::Degraded);
    healthy.objects[0].state = ObjectState::Degraded;
    healthy.objects[0].drift = vec![Drift {
        kind: DriftKind::NotReady,
        detail: "2/3 replicas ready".into(),
    }];
    assert!(matches!(
        notes::write(&repo, &healthy).unwrap(),
        Written::Wrote { .. }
    ));

    let shown = show_note(dir.path(), &shas[1]);
    let mut lines = shown.lines();
    assert_eq!(
        lines.next(),
        Some("coxswain: degraded — 2 objects, 3 created, 1 updated, 0 deleted")
    );
    assert_eq!(
        lines.next(),
        Some("Deployment default/web (apps/web.yaml): degraded — not-ready: 2/3 replicas ready")
    );
    assert!(shown.contains("\n```json\n{"), "{shown}");
    assert!(shown.contains("\"state\": \"degraded\""), "{shown}");
    assert_eq!(notes::parse(&shown).unwrap(), healthy);

    let log = git(dir.path(), &["log", "--notes=coxswain", "-1", &shas[1]]);
    assert!(log.contains("Notes (coxswain):"), "{log}");
    assert!(log.contains("coxswain: degraded — 2 objects"), "{log}");
    // The other commit has no note.
    assert!(
        !git_output(
            dir.path(),
            &["notes", "--ref", "coxswain", "show", &shas[0]]
        )
        .status
        .success()
    );
}

#[test]
fn a_rejected_commit_lists_its_errors() {
    let (dir, shas) = fixture(1);
    let repo = open(dir.path());
    let diagnostics = [coxswain_schema::Diagnostic {
        file: "path/file.yaml".into(),
        line: 14,
        column: 3,
        pointer: "/spec/replicas".into(),
        reason: "\"three\" is not of type \"integer\"".into(),
        code: coxswain_schema::Code::Schema,
        source_line: None,
    }];
    let rejected = CommitStatus::rejected(&shas[0], &diagnostics);
    notes::write(&repo, &rejected).unwrap();

    let shown = show_note(dir.path(), &shas[0]);
    assert!(
        shown.starts_with("coxswain: failed — 0 objects, 0 created, 0 updated, 0 deleted\n"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "\npath/file.yaml:14:3 /spec/replicas: \"three\" is not of type \"integer\"\n"
        ),
        "{shown}"
    );
    let back = notes::read(&repo, &shas[0]).unwrap().unwrap();
    assert_eq!(back, rejected);
    assert_eq!(back.errors[0].code, "schema");
    assert_eq!(back.errors[0].pointer, "/spec/replicas");
}

#[test]
fn read_round_trips_and_refuses_hand_edits() {
    let (dir, shas) = fixture(3);
    let repo = open(dir.path());
    let written = status(&shas[0], CommitState::Progressing);
    notes::write(&repo, &written).unwrap();
    assert_eq!(notes::read(&repo, &shas[0]).unwrap(), Some(written));
    assert_eq!(notes::read(&repo, &shas[1]).unwrap(), None);

    git(
        dir.path(),
        &[
            "notes",
            "--ref",
            "coxswain",
            "add",
            "-m",
            "looks fine to me",
            &shas[1],
        ],
    );
    assert!(matches!(
        notes::read(&repo, &shas[1]),
        Err(Error::Note { .. })
    ));
    // A valid status copied onto the wrong commit is refused too.
    let copied = notes::render(&status(&shas[0], CommitState::Healthy));
    git(
        dir.path(),
        &["notes", "--ref", "coxswain", "add", "-m", &copied, &shas[2]],
    );
    assert!(matches!(
        notes::read(&repo, &shas[2]),
        Err(Error::Note { .. })
    ));
    // Short ids are not guessed at.
    assert!(matches!(
        notes::read(&repo, &shas[0][..12]),
        Err(Error::Resolve { .. })
    ));
}

#[test]
fn the_state_only_moves_forward() {
    let (dir, shas) = fixture(2);
    let repo = open(dir.path());
    let (a, b) = (&shas[0], &shas[1]);
    let state_of = |sha: &str| notes::read(&repo, sha).unwrap().unwrap().state;

    assert!(matches!(
        notes::write(&repo, &status(a, CommitState::Applied)).unwrap(),
        Written::Wrote { .. }
    ));
    assert_eq!(
        notes::write(&repo, &status(a, CommitState::Pending)).unwrap(),
        Written::Skipped {
            current: CommitState::Applied
        }
    );
    assert_eq!(state_of(a), CommitState::Applied);

    for next in [
        CommitState::Healthy,
        CommitState::Degraded,
        CommitState::Healthy,
    ] {
        assert!(
            matches!(
                notes::write(&repo, &status(a, next)).unwrap(),
                Written::Wrote { .. }
            ),
            "to {next}"
        );
        assert_eq!(state_of(a), next);
    }
    assert_eq!(
        notes::write(&repo, &status(a, CommitState::Progressing)).unwrap(),
        Written::Skipped {
            current: CommitState::Healthy
        }
    );

    assert!(matches!(
        notes::write(&repo, &status(b, CommitState::Failed)).unwrap(),
        Written::Wrote { .. }
    ));
    for later in [
        CommitState::Pending,
        CommitState::Applied,
        CommitState::Healthy,
        CommitState::Degraded,
    ] {
        assert_eq!(
            notes::write(&repo, &status(b, later)).unwrap(),
            Written::Skipped {
                current: CommitState::Failed
            },
            "failed -> {later}"
        );
    }
    assert_eq!(state_of(b), CommitState::Failed);
}

#[test]
fn an_unchanged_status_does_not_move_the_notes_ref() {
    let (dir, shas) = fixture(1);
    let repo = open(dir.path());
    let first = status(&shas[0], CommitState::Healthy);
    notes::write(&repo, &first).unwrap();
    let head = notes_head(dir.path()).unwrap();

    let mut again = first.clone();
    again.updated = "2099-01-01T00:00:00Z".into();
    assert_eq!(notes::write(&repo, &again).unwrap(), Written::Unchanged);
    assert_eq!(notes_head(dir.path()).unwrap(), head);
    assert_eq!(notes_commits(dir.path()), 1);

    // Same state, different details: rewritten.
    again.sync.unchanged += 1;
    assert!(matches!(
        notes::write(&repo, &again).unwrap(),
        Written::Wrote { .. }
    ));
    assert_ne!(notes_head(dir.path()).unwrap(), head);
    assert_eq!(notes_commits(dir.path()), 2);
}

#[test]
fn notes_of_two_commits_are_independent() {
    let (dir, shas) = fixture(2);
    let repo = open(dir.path());
    let (a, b) = (&shas[0], &shas[1]);
    notes::write(&repo, &status(a, CommitState::Healthy)).unwrap();
    let note_a = show_note(dir.path(), a);

    notes::write(&repo, &status(b, CommitState::Applied)).unwrap();
    notes::write(&repo, &status(b, CommitState::Degraded)).unwrap();
    assert_eq!(show_note(dir.path(), a), note_a);
    assert_eq!(
        notes::read(&repo, b).unwrap().unwrap().state,
        CommitState::Degraded
    );
    assert_eq!(
        notes::read(&repo, a).unwrap().unwrap().state,
        CommitState::Healthy
    );
    let listed = git(dir.path(), &["notes", "--ref", "coxswain", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
}

#[test]
fn a_note_added_with_the_git_cli_survives_our_writes() {
    let (dir, shas) = fixture(3);
    let repo = open(dir.path());
    git(
        dir.path(),
        &[
            "notes",
            "--ref",
            "coxswain",
            "add",
            "-m",
            "reviewed by ada",
            &shas[1],
        ],
    );
    notes::write(&repo, &status(&shas[0], CommitState::Applied)).unwrap();
    git(
        dir.path(),
        &[
            "notes",
            "--ref",
            "coxswain",
            "add",
            "-m",
            "reviewed by bob",
            &shas[2],
        ],
    );
    notes::write(&repo, &status(&shas[0], CommitState::Healthy)).unwrap();

    assert_eq!(show_note(dir.path(), &shas[1]), "reviewed by ada");
    assert_eq!(show_note(dir.path(), &shas[2]), "reviewed by bob");
    assert_eq!(
        notes::read(&repo, &shas[0]).unwrap().unwrap().state,
        CommitState::Healthy
    );
    // Our writes stack on the CLI's commits instead of replacing the ref.
    assert_eq!(notes_commits(dir.path()), 4);
}

#[test]
fn concurrent_writers_retry_instead_of_clobbering() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 8;
    let (dir, shas) = fixture(THREADS * PER_THREAD + 1);
    let hand_noted = shas.last().unwrap().clone();
    git(
        dir.path(),
        &[
            "notes",
            "--ref",
            "coxswain",
            "add",
            "-m",
            "by hand",
            &hand_noted,
        ],
    );
    std::thread::scope(|scope| {
        for chunk in shas[..THREADS * PER_THREAD].chunks(PER_THREAD) {
            let path = dir.path();
            scope.spawn(move || {
                // One handle per thread, as separate processes would have.
                let repo = open(path);
                for sha in chunk {
                    let wrote = notes::write(&repo, &status(sha, CommitState::Applied)).unwrap();
                    assert!(matches!(wrote, Written::Wrote { .. }));
                }
            });
        }
    });
    let repo = open(dir.path());
    for sha in &shas[..THREADS * PER_THREAD] {
        assert_eq!(
            notes::read(&repo, sha).unwrap().map(|s| s.state),
            Some(CommitState::Applied),
            "note of {sha} was lost"
        );
    }
    assert_eq!(show_note(dir.path(), &hand_noted), "by hand");
    assert_eq!(notes_commits(dir.path()), THREADS * PER_THREAD + 1);
    // Scratch refs are cleaned up.
    let refs = git(dir.path(), &["for-each-ref", "--format=%(refname)"]);
    assert!(!refs.contains("refs/coxswain/"), "{refs}");
}

/// A bare remote holding `main` of `local`, and its `file://` URL.
fn bare_remote(local: &Path) -> (TempDir, String) {
    let remote = tempfile::tempdir().unwrap();
    git(remote.path(), &["init", "-q", "--bare", "-b", "main"]);
    let url = format!("file://{}", remote.path().display());
    git(local, &["push", "-q", &url, "main"]);
    (remote, url)
}

#[test]
fn push_publishes_notes_to_a_bare_remote() {
    let (dir, shas) = fixture(2);
    let (remote, url) = bare_remote(dir.path());
    let repo = open(dir.path());

    // Nothing to push yet: not an error, and nothing appears.
    notes::push(&repo, &url, None).unwrap();
    assert_eq!(notes_head(remote.path()), None);

    notes::write(&repo, &status(&shas[1], CommitState::Healthy)).unwrap();
    notes::push(&repo, &url, None).unwrap();
    let shown = show_note(remote.path(), &shas[1]);
    assert!(
        shown.starts_with("coxswain: healthy — 2 objects, 3 created, 1 updated, 0 deleted"),
        "{shown}"
    );
    assert_eq!(notes_head(remote.path()), notes_head(dir.path()));

    // Pushing again with nothing new is fine.
    notes::push(&repo, &url, None).unwrap();
    assert_eq!(notes_head(remote.path()), notes_head(dir.path()));
}

#[test]
fn push_merges_when_the_remote_notes_moved() {
    let (dir, shas) = fixture(3);
    let (remote, url) = bare_remote(dir.path());
    let repo = open(dir.path());
    notes::write(&repo, &status(&shas[0], CommitState::Applied)).unwrap();
    notes::push(&repo, &url, None).unwrap();

    // Another clone moves the remote's notes: a hand note on one commit, and a second
    // coxswain that saw commit 0 become healthy.
    let other = tempfile::tempdir().unwrap();
    git(other.path(), &["clone", "-q", &url, "."]);
    git(
        other.path(),
        &[
            "fetch",
            "-q",
            "origin",
            "refs/notes/coxswain:refs/notes/coxswain",
        ],
    );
    git(
        other.path(),
        &[
            "notes",
            "--ref",
            "coxswain",
            "add",
            "-m",
            "from elsewhere",
            &shas[1],
        ],
    );
    let other_repo = open(other.path());
    notes::write(&other_repo, &status(&shas[0], CommitState::Healthy)).unwrap();
    git(
        other.path(),
        &["push", "-q", "origin", "refs/notes/coxswain"],
    );
    let theirs = notes_head(remote.path()).unwrap();

    // Meanwhile we note commit 2, and (behind the times) commit 0 as progressing.
    notes::write(&repo, &status(&shas[2], CommitState::Degraded)).unwrap();
    notes::write(&repo, &status(&shas[0], CommitState::Progressing)).unwrap();
    notes::push(&repo, &url, None).unwrap();

    let pushed = notes_head(remote.path()).unwrap();
    assert_ne!(pushed, theirs);
    assert!(
        git_output(
            remote.path(),
            &["merge-base", "--is-ancestor", &theirs, &pushed]
        )
        .status
        .success(),
        "the remote's notes were force-pushed over"
    );
    assert_eq!(show_note(remote.path(), &shas[1]), "from elsewhere");
    assert!(show_note(remote.path(), &shas[2]).starts_with("coxswain: degraded"));
    // Their healthy beats our progressing: the state does not go back on the remote.
    assert!(show_note(remote.path(), &shas[0]).starts_with("coxswain: healthy"));
    // And our own ref now has everything the remote has.
    assert_eq!(notes_head(dir.path()), Some(pushed));
    assert_eq!(show_note(dir.path(), &shas[1]), "from elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn note_writer_coalesces_rapid_submits() {
    let (dir, shas) = fixture(2);
    let writer = NoteWriter::open(dir.path()).unwrap();
    let mut last = None;
    for i in 0..100u32 {
        let state = match i {
            0 => CommitState::Pending,
            1 => CommitState::Applied,
            2 => CommitState::Progressing,
            _ => CommitState::Healthy,
        };
        let mut s = status(&shas[0], state);
        s.sync.unchanged = i;
        writer.submit(s.clone());
        last = Some(s);
    }
    // A backwards submit after the final state is not what gets written.
    writer.submit(status(&shas[0], CommitState::Pending));
    let stats = writer.close().await;

    let commits = notes_commits(dir.path());
    assert!(
        (1..=3).contains(&commits),
        "{commits} notes commits for 100 submits"
    );
    assert_eq!(stats.wrote as usize, commits, "{stats:?}");
    assert_eq!(stats.failed, 0);
    let repo = open(dir.path());
    let written = notes::read(&repo, &shas[0]).unwrap().unwrap();
    assert!(written.same_content(&last.unwrap()), "{written:?}");
}

#[tokio::test]
async fn note_writer_writes_the_latest_state_when_the_interval_is_up() {
    let (dir, shas) = fixture(2);
    let writer = NoteWriter::with_interval(dir.path(), Duration::from_millis(300)).unwrap();
    writer.submit(status(&shas[0], CommitState::Applied));
    writer.submit(status(&shas[1], CommitState::Applied));
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.submit(status(&shas[0], CommitState::Progressing));
    writer.submit(status(&shas[0], CommitState::Healthy));

    // Without closing: the trailing write comes from the timer.
    let repo = open(dir.path());
    let mut state = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        state = notes::read(&repo, &shas[0]).unwrap().map(|s| s.state);
        if state == Some(CommitState::Healthy) {
            break;
        }
    }
    assert_eq!(state, Some(CommitState::Healthy));
    assert_eq!(
        notes::read(&repo, &shas[1]).unwrap().map(|s| s.state),
        Some(CommitState::Applied)
    );
    let stats = writer.close().await;
    // Two commits written at once, then one trailing write of the first.
    assert_eq!(stats.wrote, 3, "{stats:?}");
    assert_eq!(notes_commits(dir.path()), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn note_writer_pushes_its_notes_to_the_remote() {
    let (dir, shas) = fixture(2);
    let (remote, url) = bare_remote(dir.path());
    let target = PushTarget {
        url,
        access: RemoteAccess::default(),
    };
    let writer =
        NoteWriter::with_push(dir.path(), Duration::from_millis(200), Some(target)).unwrap();
    writer.submit(status(&shas[0], CommitState::Applied));
    writer.submit(status(&shas[1], CommitState::Applied));
    writer.submit(status(&shas[0], CommitState::Healthy));
    let stats = writer.close().await;

    assert_eq!(stats.push_failed, 0, "{stats:?}");
    assert!(stats.pushed >= 1, "{stats:?}");
    assert_eq!(notes_head(remote.path()), notes_head(dir.path()));
    assert!(show_note(remote.path(), &shas[0]).starts_with("coxswain: healthy"));
    assert!(show_note(remote.path(), &shas[1]).starts_with("coxswain: applied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_push_keeps_the_notes_written_locally() {
    let (dir, shas) = fixture(1);
    let gone = tempfile::tempdir().unwrap();
    let target = PushTarget {
        url: format!("file://{}/missing.git", gone.path().display()),
        access: RemoteAccess::default(),
    };
    let writer =
        NoteWriter::with_push(dir.path(), Duration::from_millis(200), Some(target)).unwrap();
    writer.submit(status(&shas[0], CommitState::Applied));
    let stats = writer.close().await;

    assert_eq!(stats.wrote, 1, "{stats:?}");
    assert_eq!(stats.pushed, 0, "{stats:?}");
    assert!(stats.push_failed >= 1, "{stats:?}");
    assert!(show_note(dir.path(), &shas[0]).starts_with("coxswain: applied"));
}

/// Whoever lists the repository's refs while notes are written (a user's `git push` into it,
/// a `file://` fetch from it) sees the branch and the notes ref, never a work-in-progress ref:
/// git's receive-pack fails a push with "bad object" when a listed ref vanishes before it is
/// read.
#[test]
fn writing_notes_shows_no_ref_but_the_notes_ref_to_readers_of_the_repository() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (dir, shas) = fixture(40);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let repo = open(&path);
            let mut seen = BTreeSet::new();
            let mut listings = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for r in repo.references().unwrap() {
                    // A ref deleted between the listing and its read is an error here: that
                    // is the race itself, so its name is what we want.
                    match r {
                        Ok(r) => seen.insert(r.name().unwrap_or("?").to_string()),
                        Err(e) => seen.insert(format!("vanished: {}", e.message())),
                    };
                }
                listings += 1;
            }
            (seen, listings)
        })
    };
    let repo = open(dir.path());
    for sha in &shas {
        for state in [CommitState::Applied, CommitState::Healthy] {
            notes::write(&repo, &status(sha, state)).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (seen, listings) = reader.join().unwrap();
    assert!(
        listings > 50,
        "the refs were listed during the writes ({listings} times)"
    );
    let expected = ["refs/heads/main", "refs/notes/coxswain"];
    let unexpected: Vec<_> = seen
        .iter()
        .filter(|n| !expected.contains(&n.as_str()))
        .take(5)
        .collect();
    assert!(unexpected.is_empty(), "readers saw {unexpected:?}");
    assert!(seen.contains("refs/notes/coxswain"));
    assert_eq!(notes_commits(dir.path()), 80);
    assert!(show_note(dir.path(), &shas[39]).contains("healthy"));
}
