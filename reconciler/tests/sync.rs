//! The sync end to end inside one process: real Git repositories made with the `git` CLI, a
//! real store member on RocksDB in a temp dir, notes read back with `git notes`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use coxswain_reconciler::notes::CommitState;
use coxswain_reconciler::plan;
use coxswain_reconciler::source::{Reference, Source, SourceConfig};
use coxswain_reconciler::sync::{Outcome, SyncConfig, Syncer, load_owned, read_status};
use coxswain_schema::{Limits, validate_tree};
use coxswain_store::{Consistency, Kv, Member, MemberConfig, Op, Txn};
use serde_json::json;

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

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
        Repo { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path().join("deploy").join(file), text).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.path().join("deploy").join(file)).unwrap();
    }

    fn commit(&self, message: &str) -> String {
        git(self.path(), &["add", "-A"]);
        git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(self.path(), &["rev-parse", "HEAD"])
    }

    fn note(&self, commit: &str) -> String {
        git(self.path(), &["notes", "--ref", "coxswain", "show", commit])
    }
}

async fn member(dir: &Path) -> Member {
    let m = Member::start(MemberConfig::new(1, dir, "127.0.0.1:1", "token"), true)
        .await
        .unwrap();
    m.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    m
}

fn source_config(repo: &Repo) -> SourceConfig {
    let mut cfg = SourceConfig::new(repo.path().display().to_string());
    cfg.reference = Reference::Branch("main".into());
    cfg.path = Some("deploy".into());
    cfg
}

fn syncer(member: &Member, repo: &Repo) -> Syncer {
    let source = Source::open(&source_config(repo)).unwrap();
    Syncer::new(member.clone(), source, SyncConfig::default()).unwrap()
}

async fn stored(member: &Member, name: &str) -> Option<serde_json::Value> {
    let key = format!("/core/ConfigMap/default/{name}");
    let (_, kv) = member.get(&key, Consistency::Linearizable).await.unwrap();
    kv.map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_apply_bad_ones_are_refused_with_file_and_line_and_deletes_prune() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let repo = Repo::new();
    for i in 0..8 {
        repo.write(&format!("cm{i}.yaml"), &configmap(&format!("cm{i}"), "1"));
    }
    let c1 = repo.commit("eight configmaps");
    let mut s = syncer(&m, &repo);

    // A commit is applied.
    let Outcome::Applied {
        summary, revision, ..
    } = s.sync_once().await.unwrap()
    else {
        panic!("first commit not applied")
    };
    assert_eq!(
        (summary.created, summary.updated, summary.deleted),
        (8, 0, 0)
    );
    let cm0 = stored(&m, "cm0").await.expect("cm0 stored");
    assert_eq!(cm0["data"]["value"], json!("1"));
    assert_eq!(
        cm0["metadata"]["resourceVersion"],
        json!(revision.to_string())
    );
    assert_eq!(
        cm0["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        json!("coxswain")
    );
    assert!(
        cm0["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    // The same commit again is a no-op poll.
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Unchanged { .. }
    ));

    // A bad commit is not applied: the store keeps the last good commit.
    repo.write("cm1.yaml", &configmap("cm1", "2"));
    repo.write(
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\n  namespace: default\ndata:\n  value: 3\n  nested: {a: 1}\n",
    );
    let bad = repo.commit("a broken configmap");
    let Outcome::Rejected { errors, .. } = s.sync_once().await.unwrap() else {
        panic!("the broken commit was not rejected")
    };
    assert!(
        errors
            .iter()
            .any(|e| e.file.ends_with("broken.yaml") && e.line >= 7),
        "errors should name broken.yaml and its line: {errors:?}"
    );
    assert_eq!(
        stored(&m, "cm1").await.unwrap()["data"]["value"],
        json!("1")
    );
    assert!(stored(&m, "broken").await.is_none());
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_eq!(record.unwrap().commit, c1);
    let attempt = attempt.unwrap();
    assert_eq!(
        (attempt.commit.as_str(), attempt.state),
        (bad.as_str(), CommitState::Failed)
    );

    // The fix is applied; only what changed is written.
    repo.write(
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\n  namespace: default\ndata:\n  value: \"3\"\n",
    );
    let fixed = repo.commit("fix it");
    let Outcome::Applied { summary, .. } = s.sync_once().await.unwrap() else {
        panic!("the fix was not applied")
    };
    assert_eq!(
        (
            summary.created,
            summary.updated,
            summary.deleted,
            summary.unchanged
        ),
        (1, 1, 0, 7)
    );
    assert_eq!(
        stored(&m, "cm1").await.unwrap()["data"]["value"],
        json!("2")
    );
    assert_eq!(
        stored(&m, "cm1").await.unwrap()["metadata"]["generation"],
        json!(2)
    );

    // Deleting a file prunes its object (1 of 9 is under the guard's 25%).
    repo.remove("cm7.yaml");
    repo.commit("drop cm7");
    let Outcome::Applied { summary, .. } = s.sync_once().await.unwrap() else {
        panic!("the delete was not applied")
    };
    assert_eq!(summary.deleted, 1);
    assert!(stored(&m, "cm7").await.is_none());

    // A commit that changes nothing writes only its status.
    let before = m.applied();
    let empty = repo.commit("nothing");
    let Outcome::Applied {
        summary, revision, ..
    } = s.sync_once().await.unwrap()
    else {
        panic!("the empty commit was not recorded")
    };
    assert_eq!(
        (summary.created, summary.updated, summary.deleted),
        (0, 0, 0)
    );
    assert_eq!(revision, before + 1, "one entry: the records only");
    assert!(
        stored(&m, "cm0").await.unwrap()["metadata"]["resourceVersion"]
            != json!(revision.to_string())
    );

    s.close().await;
    // The notes are readable with git, and the bad commit's names the file and line.
    let note = repo.note(&bad);
    assert!(note.contains("failed"), "{note}");
    assert!(note.contains("broken.yaml:"), "{note}");
    assert!(repo.note(&fixed).contains("applied"));
    assert!(repo.note(&empty).contains("applied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_delete_is_held_until_the_trailer_allows_it() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let repo = Repo::new();
    for i in 0..4 {
        repo.write(&format!("cm{i}.yaml"), &configmap(&format!("cm{i}"), "1"));
    }
    repo.commit("four");
    let mut s = syncer(&m, &repo);
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));

    for i in 0..3 {
        repo.remove(&format!("cm{i}.yaml"));
    }
    let held = repo.commit("remove three");
    let Outcome::Held { reason, .. } = s.sync_once().await.unwrap() else {
        panic!("a 75% delete was not held")
    };
    assert!(reason.contains('3'), "{reason}");
    assert!(
        stored(&m, "cm0").await.is_some(),
        "nothing may be deleted while held"
    );
    let (record, attempt) = read_status(&m, "default").await.unwrap();
    assert_ne!(record.unwrap().commit, held);
    assert!(attempt.unwrap().sync.prune_guard.held);

    repo.commit("remove three, really\n\nCoxswain-Allow-Prune: yes");
    let Outcome::Applied { summary, .. } = s.sync_once().await.unwrap() else {
        panic!("the trailer did not let the prune through")
    };
    assert_eq!(summary.deleted, 3);
    assert!(stored(&m, "cm0").await.is_none());
    assert!(stored(&m, "cm3").await.is_some());
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_commits_apply_the_newest_and_a_new_syncer_resumes_from_the_store() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let repo = Repo::new();
    repo.write("a.yaml", &configmap("a", "1"));
    for name in ["b", "d", "e", "f", "g", "h"] {
        repo.write(&format!("{name}.yaml"), &configmap(name, "1"));
    }
    repo.commit("a, b and five more");
    let mut s = syncer(&m, &repo);
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));
    s.close().await;

    // Two commits before the next look: only the newest is applied.
    repo.write("a.yaml", &configmap("a", "2"));
    let middle = repo.commit("a=2");
    repo.write("a.yaml", &configmap("a", "3"));
    repo.write("c.yaml", &configmap("c", "1"));
    let newest = repo.commit("a=3, c");

    // A fresh syncer (as after a restart) finds the inventory in the store, so it updates
    // rather than creates, and would prune what Git dropped.
    let mut s = syncer(&m, &repo);
    let Outcome::Applied {
        commit, summary, ..
    } = s.sync_once().await.unwrap()
    else {
        panic!("not applied")
    };
    assert_eq!(commit, newest);
    assert_eq!(
        (summary.created, summary.updated, summary.unchanged),
        (1, 1, 6)
    );
    assert_eq!(stored(&m, "a").await.unwrap()["data"]["value"], json!("3"));
    s.close().await;
    let middle_note = Command::new("git")
        .args(["notes", "--ref", "coxswain", "show", &middle])
        .current_dir(repo.path())
        .output()
        .unwrap();
    assert!(
        !middle_note.status.success(),
        "the skipped commit got a note"
    );

    // A force-push back to an older state applies that state.
    git(repo.path(), &["reset", "-q", "--hard", "HEAD~2"]);
    let mut s = syncer(&m, &repo);
    let Outcome::Applied { summary, .. } = s.sync_once().await.unwrap() else {
        panic!("the reset was not applied")
    };
    assert_eq!((summary.updated, summary.deleted), (1, 1));
    assert_eq!(stored(&m, "a").await.unwrap()["data"]["value"], json!("1"));
    assert!(stored(&m, "c").await.is_none());
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_between_plan_and_apply_is_kept() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let repo = Repo::new();
    repo.write("a.yaml", &configmap("a", "1"));
    repo.commit("a");
    let mut s = syncer(&m, &repo);
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));

    // A controller writes status to the object after the syncer cached it.
    let mut obj = stored(&m, "a").await.unwrap();
    obj["status"] = json!({"observed": true});
    m.txn(Txn {
        compares: vec![],
        success: vec![Op::put("/core/ConfigMap/default/a", &obj)],
        failure: vec![],
    })
    .await
    .unwrap();

    repo.write("a.yaml", &configmap("a", "2"));
    repo.commit("a=2");
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));
    let a = stored(&m, "a").await.unwrap();
    assert_eq!(a["data"]["value"], json!("2"));
    assert_eq!(
        a["status"],
        json!({"observed": true}),
        "the status write was lost"
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_puts_back_what_was_changed_or_deleted_outside_git() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let repo = Repo::new();
    for name in ["a", "b", "c", "d", "e"] {
        repo.write(&format!("{name}.yaml"), &configmap(name, "1"));
    }
    let commit = repo.commit("five");
    let mut s = syncer(&m, &repo);
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));
    // Nothing drifted: no write at all.
    let (rev_before, _) = m
        .get("/core/ConfigMap/default/a", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(matches!(
        s.resync().await.unwrap(),
        Outcome::Unchanged { .. }
    ));
    let (rev_after, _) = m
        .get("/core/ConfigMap/default/a", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(rev_before, rev_after, "a resync without drift wrote");

    // Someone deletes one object and edits another behind Git's back.
    m.txn(Txn {
        success: vec![Op::Delete {
            key: "/core/ConfigMap/default/b".into(),
        }],
        ..Txn::default()
    })
    .await
    .unwrap();
    let mut edited = stored(&m, "c").await.unwrap();
    edited["data"]["value"] = json!("hand-edited");
    m.txn(Txn::put("/core/ConfigMap/default/c", edited))
        .await
        .unwrap();

    // A look for new commits does not touch the applied commit...
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Unchanged { .. }
    ));
    assert!(stored(&m, "b").await.is_none());
    // ...the resync of the interval puts both back.
    let Outcome::Applied {
        commit: healed,
        summary,
        ..
    } = s.resync().await.unwrap()
    else {
        panic!("the drift was not corrected")
    };
    assert_eq!(healed, commit);
    assert_eq!(
        (
            summary.created,
            summary.updated,
            summary.deleted,
            summary.unchanged
        ),
        (1, 1, 0, 3)
    );
    assert_eq!(stored(&m, "b").await.unwrap()["data"]["value"], json!("1"));
    assert_eq!(stored(&m, "c").await.unwrap()["data"]["value"], json!("1"));
    assert!(matches!(
        s.resync().await.unwrap(),
        Outcome::Unchanged { .. }
    ));
    s.close().await;
}

/// A one-file commit is planned from the files that changed (the others are taken as settled
/// and their objects reused); after each kind of edit, a fresh syncer comparing every object
/// must find nothing left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_syncs_leave_the_store_as_a_full_sync_would() {
    let store_dir = tempfile::tempdir().unwrap();
    let m = member(store_dir.path()).await;
    let repo = Repo::new();
    for name in ["a", "b", "c", "d", "e", "f"] {
        repo.write(&format!("{name}.yaml"), &configmap(name, "1"));
    }
    repo.commit("six");
    let mut s = syncer(&m, &repo);
    assert!(matches!(
        s.sync_once().await.unwrap(),
        Outcome::Applied { .. }
    ));

    type Edit = fn(&Repo);
    let edits: [(&str, Edit, (u32, u32, u32)); 4] = [
        (
            "change one file",
            |r| r.write("a.yaml", &configmap("a", "2")),
            (0, 1, 0),
        ),
        (
            "add a file",
            |r| r.write("g.yaml", &configmap("g", "1")),
            (1, 0, 0),
        ),
        (
            "move an object to another file",
            |r| {
                r.remove("b.yaml");
                r.write(
                    "c.yaml",
                    &format!("{}---\n{}", configmap("c", "1"), configmap("b", "1")),
                );
            },
            (0, 1, 0),
        ),
        ("delete a file", |r| r.remove("d.yaml"), (0, 0, 1)),
    ];
    for (what, edit, (created, updated, deleted)) in edits {
        edit(&repo);
        repo.commit(what);
        let Outcome::Applied { summary, .. } = s.sync_once().await.unwrap() else {
            panic!("{what}: not applied")
        };
        assert_eq!(
            (summary.created, summary.updated, summary.deleted),
            (created, updated, deleted),
            "{what}"
        );
        // The whole commit planned from scratch against the store, without writing (a
        // write would move the sync record and make `s` reload, skipping the settled path).
        let Source::Git(git) = Source::open(&source_config(&repo)).unwrap() else {
            panic!("not a Git source")
        };
        let commit = git.resolve().unwrap();
        let report = validate_tree(&git.tree(&commit).unwrap(), &Limits::default());
        assert!(report.is_valid(), "{what}");
        let desired = plan::desired_from_report(&report).unwrap();
        let full = plan::plan(&desired, &load_owned(&m).await.unwrap());
        assert!(
            full.is_empty(),
            "{what}: a full plan found what the incremental one missed: {}",
            full.summary()
        );
    }
    assert_eq!(
        stored(&m, "b").await.unwrap()["metadata"]["annotations"]["coxswain.dev/source-file"],
        json!("c.yaml")
    );
    s.close().await;
}
