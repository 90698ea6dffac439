//! The Git source against real repositories made with the `git` CLI: a local work tree, a
//! bare repository over `file://`, and one served on loopback by `git daemon`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coxswain_reconciler::Error;
use coxswain_reconciler::source::watch::{DEFAULT_QUIET, REF_QUIET};
use coxswain_reconciler::source::{
    FolderSource, GitSource, Reference, Source, SourceConfig, Triggers,
};
use coxswain_schema::tree::{EntryKind, Tree};
use support::Daemon;

// ---------------------------------------------------------------------------------------
// helpers

/// Runs git with a fixed identity and no user or system config, so the tests behave the same
/// on a bare CI machine and on a laptop with commit signing turned on.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn init(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
}

/// Writes `files` (a `None` content deletes), commits everything and returns the commit id.
fn commit(dir: &Path, files: &[(&str, Option<&str>)], message: &str) -> String {
    for (path, content) in files {
        let full = dir.join(path);
        match content {
            Some(text) => {
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(&full, text).unwrap();
            }
            None => std::fs::remove_file(&full).unwrap(),
        }
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn config(repo: impl Into<String>, reference: Reference) -> SourceConfig {
    SourceConfig {
        reference,
        ..SourceConfig::new(repo)
    }
}

fn remote_config(url: &str, cache: &Path, reference: Reference) -> SourceConfig {
    SourceConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..config(url, reference)
    }
}

fn entry_paths(tree: &dyn Tree) -> Vec<String> {
    tree.entries()
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect()
}

fn is_ancestor(repo: &Path, ancestor: &str, descendant: &str) -> bool {
    Command::new("git")
        .args(["merge-base", "--is-ancestor", ancestor, descendant])
        .current_dir(repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .status()
        .unwrap()
        .success()
}

/// A bare "server" repository and a work clone that pushes to it.
struct Upstream {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Upstream {
    fn new() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("srv").join("deploy.git");
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let work = dir.path().join("work");
        init(&work);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Upstream {
            _dir: dir,
            bare,
            work,
        }
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn push(&self, args: &[&str]) {
        let mut full = vec!["push", "-q", "origin"];
        full.extend_from_slice(args);
        git(&self.work, &full);
    }
}

fn config_field(err: Error) -> String {
    match err {
        Error::Config { field, .. } => field,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// local repositories

#[test]
fn local_resolves_branch_tag_commit_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    init(repo);
    let first = commit(repo, &[("a.yaml", Some("a: 1\n"))], "first\n\nbody");
    git(repo, &["tag", "-a", "v1", "-m", "release 1"]);
    git(repo, &["tag", "light"]);
    let second = commit(repo, &[("a.yaml", Some("a: 2\n"))], "second");
    git(repo, &["branch", "dev", &first]);
    let path = repo.display().to_string();

    let head = GitSource::open(&config(&path, Reference::Branch("main".into())))
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(head.commit, second);
    assert_eq!(head.summary, "second");
    assert_eq!(head.author, "Test Author <author@example.com>");
    let ct: i64 = git(repo, &["show", "-s", "--format=%ct", &second])
        .parse()
        .unwrap();
    assert_eq!(head.time, ct);

    let tagged = GitSource::open(&config(&path, Reference::Tag("v1".into())))
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(tagged.commit, first, "an annotated tag peels to its commit");
    assert_eq!(tagged.summary, "first");
    assert_eq!(tagged.message.trim_end(), "first\n\nbody");
    let light = GitSource::open(&config(&path, Reference::Tag("light".into())))
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(light.commit, first);

    let fixed = GitSource::open(&config(&path, Reference::Commit(first[..10].to_string())))
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(fixed.commit, first, "an abbreviated id resolves");

    let dev = GitSource::open(&config(&path, Reference::Branch("dev".into())))
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(dev.commit, first);

    git(repo, &["checkout", "-q", "dev"]);
    let head = GitSource::open(&SourceConfig::local_head(&path))
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(head.commit, first, "head follows the checked-out branch");
}

#[test]
fn tree_at_a_path_reads_the_commit_not_the_work_tree() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    init(repo);
    let c = commit(
        repo,
        &[
            ("apps/web.yaml", Some("kind: web\n")),
            ("apps/sub/cm.yaml", Some("kind: cm\n")),
            ("other/x.yaml", Some("kind: x\n")),
            ("README.md", Some("hi\n")),
        ],
        "apps",
    );
    // Uncommitted edits must not show.
    std::fs::write(repo.join("apps/web.yaml"), "kind: edited\n").unwrap();
    std::fs::write(repo.join("apps/new.yaml"), "kind: new\n").unwrap();

    let mut cfg = config(repo.display().to_string(), Reference::Head);
    cfg.path = Some("apps/".into());
    let mut source = GitSource::open(&cfg).unwrap();
    assert_eq!(source.subpath(), Some("apps"));
    let head = source.fetch().unwrap();
    assert_eq!(head.commit, c);
    let tree = source.tree(&head.commit).unwrap();
    let entries = tree.entries().unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["sub/cm.yaml", "web.yaml"]);
    assert_eq!(tree.read("web.yaml").unwrap(), b"kind: web\n");
    let web = entries.iter().find(|e| e.path == "web.yaml").unwrap();
    assert_eq!(web.kind, EntryKind::File);
    assert_eq!(web.size, 10);
    assert_eq!(
        web.id.as_deref(),
        Some(git(repo, &["rev-parse", &format!("{c}:apps/web.yaml")]).as_str()),
        "entries carry the blob id"
    );
    assert_eq!(
        tree.id(),
        git(repo, &["rev-parse", &format!("{c}:apps")]),
        "the tree id is the subtree's"
    );

    // `repo` naming a folder inside the work tree is the same as `path`.
    let nested = GitSource::open(&SourceConfig::local_head(
        repo.join("apps").display().to_string(),
    ))
    .unwrap();
    assert_eq!(nested.subpath(), Some("apps"));
    assert_eq!(
        entry_paths(&nested.tree(&c).unwrap()),
        ["sub/cm.yaml", "web.yaml"]
    );

    // A path the commit does not have is a resolve error, not an empty tree.
    cfg.path = Some("missing".into());
    let err = GitSource::open(&cfg).unwrap().tree(&c).unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");
}

/// The sizes of each tree's files, by path.
fn entry_sizes(tree: &dyn Tree) -> Vec<(String, u64)> {
    tree.entries()
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.size))
        .collect()
}

#[test]
fn trees_of_one_source_list_each_commits_own_sizes() {
    // The trees of a source share the blob sizes they looked up; a file that grew, one that
    // shrank, a new one, and going back to the first commit must each show the size of the
    // blob in that commit, never one remembered from another commit.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    init(repo);
    let first = commit(
        repo,
        &[("a.yaml", Some("a: 1\n")), ("b.yaml", Some("b: 12345\n"))],
        "first",
    );
    let second = commit(
        repo,
        &[
            ("a.yaml", Some("a: 1234567890\n")),
            ("b.yaml", Some("b: 1\n")),
            ("c.yaml", Some("c: 12\n")),
        ],
        "second",
    );
    let source = GitSource::open(&config(repo.display().to_string(), Reference::Head)).unwrap();
    let sizes = |commit: &str| entry_sizes(&source.tree(commit).unwrap());
    let owned = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
        list.iter().map(|(p, n)| (p.to_string(), *n)).collect()
    };
    assert_eq!(sizes(&first), owned(&[("a.yaml", 5), ("b.yaml", 9)]));
    assert_eq!(
        sizes(&second),
        owned(&[("a.yaml", 14), ("b.yaml", 5), ("c.yaml", 6)])
    );
    assert_eq!(sizes(&first), owned(&[("a.yaml", 5), ("b.yaml", 9)]));
    // And forward again, from a cache that now holds the first commit's sizes.
    assert_eq!(
        sizes(&second),
        owned(&[("a.yaml", 14), ("b.yaml", 5), ("c.yaml", 6)])
    );
}

#[test]
fn changed_paths_are_relative_to_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    init(repo);
    let old = commit(
        repo,
        &[
            ("apps/a.yaml", Some("a: 1\n")),
            ("apps/b.yaml", Some("b: 1\n")),
            ("apps/same.yaml", Some("s: 1\n")),
            ("other/c.yaml", Some("c: 1\n")),
        ],
        "one",
    );
    let new = commit(
        repo,
        &[
            ("apps/a.yaml", Some("a: 2\n")),
            ("apps/b.yaml", None),
            ("apps/d/e.yaml", Some("e: 1\n")),
            ("other/c.yaml", Some("c: 2\n")),
        ],
        "two",
    );
    let mut cfg = config(repo.display().to_string(), Reference::Head);
    cfg.path = Some("apps".into());
    let source = GitSource::open(&cfg).unwrap();
    assert_eq!(
        source.changed_paths(&old, &new).unwrap(),
        ["a.yaml", "b.yaml", "d/e.yaml"]
    );
    assert!(source.changed_paths(&new, &new).unwrap().is_empty());

    let whole = GitSource::open(&config(repo.display().to_string(), Reference::Head)).unwrap();
    assert_eq!(
        whole.changed_paths(&old, &new).unwrap(),
        [
            "apps/a.yaml",
            "apps/b.yaml",
            "apps/d/e.yaml",
            "other/c.yaml"
        ]
    );
}

#[test]
fn trailers_are_parsed_from_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    init(repo);
    let plain = commit(
        repo,
        &[("a.yaml", Some("a: 1\n"))],
        "add a\n\nNo trailers: here, really.",
    );
    let pruning = commit(
        repo,
        &[("a.yaml", None)],
        "remove a\n\nThe body.\n\nCoxswain-Allow-Prune: yes\nSigned-off-by: Someone <s@example.com>",
    );
    let source = GitSource::open(&SourceConfig::local_head(repo.display().to_string())).unwrap();
    assert_eq!(
        source
            .trailer(&pruning, "Coxswain-Allow-Prune")
            .unwrap()
            .as_deref(),
        Some("yes")
    );
    assert_eq!(
        source
            .trailer(&pruning, "coxswain-allow-prune")
            .unwrap()
            .as_deref(),
        Some("yes"),
        "keys compare without case"
    );
    assert_eq!(
        source
            .trailer(&pruning, "Signed-off-by")
            .unwrap()
            .as_deref(),
        Some("Someone <s@example.com>")
    );
    assert_eq!(source.trailer(&pruning, "Reviewed-by").unwrap(), None);
    assert_eq!(
        source.trailer(&plain, "Coxswain-Allow-Prune").unwrap(),
        None
    );
    assert_eq!(source.trailer(&plain, "No trailers").unwrap(), None);
}

#[test]
fn a_no_op_poll_of_a_local_repository_is_cheap() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    init(repo);
    let files: Vec<(String, String)> = (0..200)
        .map(|i| (format!("apps/f{i}.yaml"), format!("n: {i}\n")))
        .collect();
    let refs: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), Some(c.as_str())))
        .collect();
    let c = commit(repo, &refs, "many files");
    let mut source = GitSource::open(&config(
        repo.display().to_string(),
        Reference::Branch("main".into()),
    ))
    .unwrap();
    assert_eq!(source.fetch().unwrap().commit, c);
    let rounds = 500;
    let start = Instant::now();
    for _ in 0..rounds {
        assert_eq!(source.fetch().unwrap().commit, c);
    }
    let per_poll = start.elapsed() / rounds;
    println!("no-op poll of a local repository: {per_poll:?} per fetch (target: well under 2 ms)");
    let start = Instant::now();
    for _ in 0..rounds {
        assert_eq!(source.resolve().unwrap(), c);
    }
    println!("resolve alone: {:?}", start.elapsed() / rounds);
}

// ---------------------------------------------------------------------------------------
// remote repositories

#[test]
fn file_url_fetches_into_a_bare_cache_and_follows_a_force_push() {
    let up = Upstream::new();
    let one = commit(&up.work, &[("apps/a.yaml", Some("a: 1\n"))], "one");
    let two = commit(&up.work, &[("apps/b.yaml", Some("b: 1\n"))], "two");
    up.push(&["main"]);
    let cache = tempfile::tempdir().unwrap();

    let mut cfg = remote_config(
        &up.file_url(),
        cache.path(),
        Reference::Branch("main".into()),
    );
    cfg.path = Some("apps".into());
    let mut source = GitSource::open(&cfg).unwrap();
    assert!(source.is_remote());
    let notes_repo = source.repo_for_notes().path().to_path_buf();
    assert!(
        notes_repo.starts_with(std::fs::canonicalize(cache.path()).unwrap())
            || notes_repo.starts_with(cache.path()),
        "notes go to the cache: {}",
        notes_repo.display()
    );
    assert!(source.repo_for_notes().is_bare());
    let head = source.fetch().unwrap();
    assert_eq!(head.commit, two);
    assert_eq!(
        entry_paths(&source.tree(&two).unwrap()),
        ["a.yaml", "b.yaml"]
    );
    assert_eq!(source.changed_paths(&one, &two).unwrap(), ["b.yaml"]);
    assert_eq!(
        source.fetch().unwrap().commit,
        two,
        "a second fetch changes nothing"
    );

    // A new commit is fetched.
    let three = commit(&up.work, &[("apps/c.yaml", Some("c: 1\n"))], "three");
    up.push(&["main"]);
    assert_eq!(source.fetch().unwrap().commit, three);

    // Rewrite history and force-push: the new tip does not descend from the old one.
    git(&up.work, &["reset", "-q", "--hard", &one]);
    let rewritten = commit(&up.work, &[("apps/z.yaml", Some("z: 1\n"))], "rewritten");
    up.push(&["--force", "main"]);
    assert!(!is_ancestor(&up.work, &three, &rewritten));
    let head = source.fetch().unwrap();
    assert_eq!(head.commit, rewritten, "a force-push is followed");
    assert_eq!(
        source.changed_paths(&three, &rewritten).unwrap(),
        ["b.yaml", "c.yaml", "z.yaml"]
    );

    // The cache is one stable folder per URL: opening again reuses it.
    let again = GitSource::open(&cfg).unwrap();
    assert_eq!(
        again.repo_for_notes().path(),
        source.repo_for_notes().path()
    );
    assert_eq!(
        again.resolve().unwrap(),
        rewritten,
        "resolves from the cache without a fetch"
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
}

#[test]
fn file_url_fetches_only_the_configured_ref() {
    let up = Upstream::new();
    let main = commit(&up.work, &[("a.yaml", Some("a: 1\n"))], "main");
    git(&up.work, &["tag", "v1"]);
    git(&up.work, &["checkout", "-q", "-b", "other"]);
    commit(&up.work, &[("b.yaml", Some("b: 1\n"))], "other");
    up.push(&["main", "other", "v1"]);
    let cache = tempfile::tempdir().unwrap();
    let mut source = GitSource::open(&remote_config(
        &up.file_url(),
        cache.path(),
        Reference::Branch("main".into()),
    ))
    .unwrap();
    assert_eq!(source.fetch().unwrap().commit, main);
    // libgit2's file:// transport packs the objects of every advertised ref whatever was
    // asked for, so only refs are checked here; the git daemon test checks objects too.
    let cached = source.repo_for_notes();
    assert!(cached.find_reference("refs/heads/main").is_ok());
    assert!(
        cached.find_reference("refs/heads/other").is_err(),
        "only the configured branch is fetched"
    );
    assert!(
        cached.find_reference("refs/tags/v1").is_err(),
        "tags are not fetched along"
    );
}

#[test]
fn git_daemon_branch_tag_commit_switch_and_force_push() {
    let up = Upstream::new();
    let base = up.bare.parent().unwrap().to_path_buf();
    let daemon = Daemon::serve(&base);
    let url = format!("git://127.0.0.1:{}/deploy.git", daemon.port);

    let one = commit(&up.work, &[("apps/a.yaml", Some("a: 1\n"))], "one");
    git(&up.work, &["tag", "-a", "v1", "-m", "v1"]);
    let two = commit(&up.work, &[("apps/a.yaml", Some("a: 2\n"))], "two");
    git(&up.work, &["checkout", "-q", "-b", "staging", &one]);
    let staging = commit(&up.work, &[("apps/s.yaml", Some("s: 1\n"))], "staging");
    git(&up.work, &["checkout", "-q", "main"]);
    up.push(&["main", "staging", "v1"]);
    let cache = tempfile::tempdir().unwrap();

    // Branch.
    let mut source = GitSource::open(&remote_config(
        &url,
        cache.path(),
        Reference::Branch("main".into()),
    ))
    .unwrap();
    assert_eq!(source.fetch().unwrap().commit, two);
    // Over the smart protocol only what `main` needs comes over: not `staging`, not the tag.
    let cached = source.repo_for_notes();
    assert!(
        cached
            .find_commit(git2::Oid::from_str(&staging).unwrap())
            .is_err()
    );
    assert!(cached.find_reference("refs/heads/staging").is_err());
    assert!(cached.find_reference("refs/tags/v1").is_err());

    // Tag (annotated, peeled to its commit).
    let mut tagged = GitSource::open(&remote_config(
        &url,
        cache.path(),
        Reference::Tag("v1".into()),
    ))
    .unwrap();
    assert_eq!(tagged.fetch().unwrap().commit, one);

    // A fixed commit that is not in the cache yet (only reachable from `staging`, which no
    // source has fetched into this fresh cache).
    let fresh = tempfile::tempdir().unwrap();
    let mut fixed = GitSource::open(&remote_config(
        &url,
        fresh.path(),
        Reference::Commit(staging.clone()),
    ))
    .unwrap();
    let head = fixed.fetch().unwrap();
    assert_eq!(head.commit, staging);
    assert_eq!(head.summary, "staging");

    // Branch switch (a config change): the new branch does not descend from the old tip.
    assert!(!is_ancestor(&up.work, &two, &staging));
    source
        .set_reference(Reference::Branch("staging".into()))
        .unwrap();
    assert_eq!(source.fetch().unwrap().commit, staging);
    assert_eq!(
        source.changed_paths(&two, &staging).unwrap(),
        ["apps/a.yaml", "apps/s.yaml"]
    );
    // Reopening with another branch over the same cache works the same way.
    let mut back = GitSource::open(&remote_config(
        &url,
        cache.path(),
        Reference::Branch("main".into()),
    ))
    .unwrap();
    assert_eq!(back.fetch().unwrap().commit, two);

    // A force-push over the daemon.
    git(&up.work, &["reset", "-q", "--hard", &one]);
    let forced = commit(&up.work, &[("apps/f.yaml", Some("f: 1\n"))], "forced");
    up.push(&["--force", "main"]);
    assert_eq!(back.fetch().unwrap().commit, forced);
    assert_eq!(
        entry_paths(&back.tree(&forced).unwrap()),
        ["apps/a.yaml", "apps/f.yaml"]
    );

    // A branch the daemon does not have.
    let mut missing = GitSource::open(&remote_config(
        &url,
        cache.path(),
        Reference::Branch("nope".into()),
    ))
    .unwrap();
    let err = missing.fetch().unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
    drop(daemon);
}

// ---------------------------------------------------------------------------------------
// errors

#[test]
fn bad_configs_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here").display().to_string();
    assert_eq!(
        config_field(GitSource::open(&SourceConfig::new(&missing)).unwrap_err()),
        "repo"
    );
    // A folder outside any repository is not a Git source.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let err = GitSource::open(&SourceConfig::local_head(plain.display().to_string())).unwrap_err();
    assert!(
        err.to_string().contains("not inside a Git repository"),
        "{err}"
    );
    assert_eq!(config_field(err), "repo");

    let mut cfg = SourceConfig::new("file:///srv/repo.git");
    assert_eq!(
        config_field(GitSource::open(&cfg).unwrap_err()),
        "cache_dir"
    );
    cfg.cache_dir = Some(dir.path().to_path_buf());
    cfg.path = Some("../escape".into());
    assert_eq!(config_field(GitSource::open(&cfg).unwrap_err()), "path");
    cfg.path = None;
    cfg.reference = Reference::Head;
    assert_eq!(
        config_field(GitSource::open(&cfg).unwrap_err()),
        "reference"
    );
    cfg.reference = Reference::Branch("bad..name".into());
    assert_eq!(
        config_field(GitSource::open(&cfg).unwrap_err()),
        "reference.branch"
    );
    cfg.reference = Reference::Commit("not-hex".into());
    assert_eq!(
        config_field(GitSource::open(&cfg).unwrap_err()),
        "reference.commit"
    );

    // A config file with a typo is refused, naming the unknown field.
    let typo = serde_json::from_str::<SourceConfig>(r#"{"repo": ".", "intervall": "1m"}"#);
    assert!(typo.unwrap_err().to_string().contains("intervall"));
    let bad_interval = serde_json::from_str::<SourceConfig>(r#"{"repo": ".", "interval": "soon"}"#);
    assert!(bad_interval.unwrap_err().to_string().contains("soon"));

    // ssh needs a known_hosts file, and one that exists and parses.
    let mut ssh = SourceConfig::new("git@example.com:team/deploy.git");
    ssh.cache_dir = Some(dir.path().to_path_buf());
    assert_eq!(
        config_field(GitSource::open(&ssh).unwrap_err()),
        "auth.known_hosts"
    );
    ssh.auth = Some(coxswain_reconciler::source::Auth {
        known_hosts: Some(dir.path().join("no-such-known-hosts")),
        ..Default::default()
    });
    assert_eq!(
        config_field(GitSource::open(&ssh).unwrap_err()),
        "auth.known_hosts"
    );
}

#[test]
fn a_ref_that_does_not_exist_is_a_resolve_error() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    init(repo);
    commit(repo, &[("a.yaml", Some("a: 1\n"))], "one");
    let path = repo.display().to_string();
    for reference in [
        Reference::Branch("nope".into()),
        Reference::Tag("v9".into()),
        Reference::Commit("deadbeefdeadbeef".into()),
    ] {
        let err = GitSource::open(&config(&path, reference.clone()))
            .unwrap()
            .fetch()
            .unwrap_err();
        match &err {
            Error::Resolve {
                repo, reference: r, ..
            } => {
                assert_eq!(repo, &path);
                assert_eq!(r, &reference.to_string());
            }
            other => panic!("expected Error::Resolve for {reference}, got {other:?}"),
        }
        println!("{err}");
    }

    // Over file://: the remote is asked, and a missing branch is not served from the cache.
    let up = Upstream::new();
    commit(&up.work, &[("a.yaml", Some("a: 1\n"))], "one");
    up.push(&["main"]);
    let cache = tempfile::tempdir().unwrap();
    let err = GitSource::open(&remote_config(
        &up.file_url(),
        cache.path(),
        Reference::Branch("gone".into()),
    ))
    .unwrap()
    .fetch()
    .unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    assert!(err.to_string().contains("refs/heads/gone"), "{err}");

    // A branch deleted upstream after it was fetched is an error, not the stale copy.
    git(&up.work, &["branch", "feature"]);
    up.push(&["feature"]);
    let mut feature = GitSource::open(&remote_config(
        &up.file_url(),
        cache.path(),
        Reference::Branch("feature".into()),
    ))
    .unwrap();
    feature.fetch().unwrap();
    up.push(&["--delete", "feature"]);
    assert!(matches!(feature.fetch(), Err(Error::Resolve { .. })));

    // An empty repository has no HEAD commit yet.
    let empty = tempfile::tempdir().unwrap();
    init(empty.path());
    let err = GitSource::open(&SourceConfig::local_head(
        empty.path().display().to_string(),
    ))
    .unwrap()
    .fetch()
    .unwrap_err();
    assert!(err.to_string().contains("no commits yet"), "{err}");
}

// ---------------------------------------------------------------------------------------
// triggers

#[tokio::test]
async fn a_commit_in_a_local_repository_wakes_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().to_path_buf();
    init(&repo);
    commit(&repo, &[("a.yaml", Some("a: 1\n"))], "one");
    let mut source = GitSource::open(&config(
        repo.display().to_string(),
        Reference::Branch("main".into()),
    ))
    .unwrap();
    source.fetch().unwrap();
    let mut triggers = Triggers::for_git(&source).unwrap();
    // A ref moves by one atomic rename, so its watch does not wait for more.
    assert_eq!(triggers.quiet(), REF_QUIET);

    let start = Instant::now();
    let new = commit(&repo, &[("a.yaml", Some("a: 2\n"))], "two");
    let wake = tokio::time::timeout(Duration::from_secs(5), triggers.wait())
        .await
        .expect("the watch must fire within 5 s of a commit");
    println!("commit seen by the watch after {:?}", start.elapsed());
    assert!(wake.fs_events > 0, "{wake:?}");
    assert!(!wake.poll);
    // The window is short enough that the same rename's last event may come in a second
    // wake-up on a loaded machine; take those before checking what else wakes the watch.
    let mut stragglers = 0;
    while let Ok(wake) = tokio::time::timeout(Duration::from_millis(200), triggers.wait()).await {
        assert!(wake.fs_events > 0 && !wake.poll, "{wake:?}");
        stragglers += 1;
        assert!(stragglers < 3, "one commit keeps waking the watch");
    }
    assert_eq!(source.fetch().unwrap().commit, new);

    // Our own reads do not wake it (the fetch above opened the ref files) ...
    let quiet = tokio::time::timeout(Duration::from_millis(300), triggers.wait()).await;
    assert!(quiet.is_err(), "reading refs woke the watch: {quiet:?}");
    // ... and neither does writing a status note.
    git(
        &repo,
        &[
            "notes",
            "--ref=coxswain",
            "add",
            "-m",
            "status: applied",
            &new,
        ],
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), triggers.wait()).await;
    assert!(quiet.is_err(), "a note woke the watch: {quiet:?}");

    // A new branch, a tag, a checkout all move refs.
    git(&repo, &["tag", "v2"]);
    tokio::time::timeout(Duration::from_secs(5), triggers.wait())
        .await
        .expect("a tag wakes the watch");
    git(&repo, &["checkout", "-q", "-b", "topic"]);
    tokio::time::timeout(Duration::from_secs(5), triggers.wait())
        .await
        .expect("a checkout wakes the watch");
}

#[tokio::test]
async fn a_commit_in_a_linked_worktree_wakes_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("main");
    init(&repo);
    commit(&repo, &[("a.yaml", Some("a: 1\n"))], "one");
    let wt = dir.path().join("wt");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "feature",
            wt.to_str().unwrap(),
        ],
    );
    let mut source = GitSource::open(&SourceConfig::local_head(wt.display().to_string())).unwrap();
    let (git_dir, common_dir) = source.watch_dirs().unwrap();
    assert_ne!(git_dir, common_dir, "a linked worktree has its own git dir");
    source.fetch().unwrap();
    let mut triggers = Triggers::for_git(&source).unwrap();
    let new = commit(&wt, &[("b.yaml", Some("b: 1\n"))], "in the worktree");
    tokio::time::timeout(Duration::from_secs(5), triggers.wait())
        .await
        .expect("a commit in the worktree wakes the watch");
    assert_eq!(source.fetch().unwrap().commit, new);
    assert_eq!(
        entry_paths(&source.tree(&new).unwrap()),
        ["a.yaml", "b.yaml"]
    );
}

#[tokio::test]
async fn a_burst_of_commits_gives_few_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().to_path_buf();
    init(&repo);
    commit(&repo, &[("a.yaml", Some("a: 0\n"))], "zero");
    let source = GitSource::open(&config(
        repo.display().to_string(),
        Reference::Branch("main".into()),
    ))
    .unwrap();
    // A quiet window wider than the gap between two `git commit` processes on a slow machine.
    let mut triggers = Triggers::for_git(&source)
        .unwrap()
        .with_coalescing(Duration::from_millis(400), Duration::from_secs(10));
    let commits = 10;
    let writer = {
        let repo = repo.clone();
        std::thread::spawn(move || {
            for i in 1..=commits {
                commit(&repo, &[("a.yaml", Some(&format!("a: {i}\n")))], "burst");
            }
        })
    };
    let mut wakes = 0;
    let mut events = 0;
    // The burst is over when two seconds pass with no wake-up.
    while let Ok(wake) = tokio::time::timeout(Duration::from_secs(2), triggers.wait()).await {
        assert!(!wake.poll);
        wakes += 1;
        events += wake.fs_events;
    }
    writer.join().unwrap();
    println!("{commits} commits: {events} relevant fs events, {wakes} wake-ups");
    assert!(wakes >= 1, "the burst was not seen at all");
    assert!(
        events >= commits,
        "every commit moved the branch: {events} events"
    );
    assert!(
        wakes <= 3,
        "{wakes} wake-ups for one burst of {commits} commits"
    );
}

#[tokio::test]
async fn webhook_trigger_wakes_the_loop_for_its_repository() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    commit(dir.path(), &[("a.yaml", Some("a: 1\n"))], "one");
    let source = GitSource::open(&config(
        dir.path().display().to_string(),
        Reference::Branch("main".into()),
    ))
    .unwrap();
    let mut triggers = Triggers::for_git(&source).unwrap();
    let hook = triggers.webhook();
    let from_elsewhere = hook.clone();
    std::thread::spawn(move || {
        from_elsewhere.trigger("", "refs/heads/other");
        from_elsewhere.trigger("", "refs/heads/main");
    })
    .join()
    .unwrap();
    let wake = tokio::time::timeout(Duration::from_secs(5), triggers.wait())
        .await
        .expect("the webhook wakes the loop");
    assert_eq!(
        wake.webhooks, 1,
        "the push to another branch is not counted"
    );
    assert_eq!(wake.reason(), "webhook");
}

#[tokio::test]
async fn a_plain_folder_is_watched_and_read_as_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("manifests");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.yaml"), "a: 1\n").unwrap();
    let cfg = SourceConfig {
        interval: Duration::from_secs(60),
        ..SourceConfig::local_head(root.display().to_string())
    };
    let source = match Source::open(&cfg).unwrap() {
        Source::Folder(folder) => folder,
        Source::Git(git) => panic!("a folder outside Git opened as {git:?}"),
    };
    assert_eq!(entry_paths(&source.tree().unwrap()), ["a.yaml"]);
    let before = source.fingerprint().unwrap();
    assert_eq!(
        before,
        source.fingerprint().unwrap(),
        "stable while nothing changes"
    );

    let mut triggers = Source::Folder(source.clone()).triggers().unwrap();
    // Files are written one by one: a folder's watch waits for them to settle.
    assert_eq!(triggers.quiet(), DEFAULT_QUIET);
    let start = Instant::now();
    std::fs::write(root.join("sub/b.yaml"), "b: 1\n").unwrap();
    let wake = tokio::time::timeout(Duration::from_secs(5), triggers.wait())
        .await
        .expect("a new file wakes the folder watch");
    println!("folder change seen after {:?}", start.elapsed());
    assert!(wake.fs_events > 0);
    assert_eq!(
        entry_paths(&source.tree().unwrap()),
        ["a.yaml", "sub/b.yaml"]
    );
    assert_ne!(before, source.fingerprint().unwrap());

    // A folder source refuses refs, and a Git repository is not a folder.
    let mut tagged = cfg.clone();
    tagged.reference = Reference::Tag("v1".into());
    assert_eq!(
        config_field(FolderSource::open(&tagged).unwrap_err()),
        "reference"
    );
    let repo = dir.path().join("repo");
    init(&repo);
    commit(&repo, &[("a.yaml", Some("a: 1\n"))], "one");
    assert!(matches!(
        Source::open(&SourceConfig::local_head(repo.display().to_string())).unwrap(),
        Source::Git(_)
    ));
}

/// Another writer creating and deleting refs in the served repository (a coxswain writing its
/// notes there, a user's tooling) must not fail a `file://` fetch: libgit2's local transport
/// lists the refs and then reads each, and one deleted in between used to end the fetch with
/// "reference not found".
#[test]
fn a_file_url_fetch_survives_refs_coming_and_going_in_the_served_repository() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let up = Upstream::new();
    // No `gc --auto` after a push, packing the loose objects the churned refs point at
    // while the other thread writes them.
    git(&up.bare, &["config", "gc.auto", "0"]);
    commit(&up.work, &[("a.yaml", Some("a: 0\n"))], "zero");
    up.push(&["main"]);
    let cache = tempfile::tempdir().unwrap();
    let cfg = remote_config(
        &up.file_url(),
        cache.path(),
        Reference::Branch("main".into()),
    );
    let mut source = GitSource::open(&cfg).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // Held by the churn while one of its refs exists, and by the test's own pushes: `git
    // receive-pack` fails on a ref that vanishes while it reads the refs ("bad object"), and
    // what is under test is the fetch, not the push.
    let gate = Arc::new(Mutex::new(()));
    let churn = {
        let stop = Arc::clone(&stop);
        let gate = Arc::clone(&gate);
        let bare = up.bare.clone();
        std::thread::spawn(move || {
            let repo = git2::Repository::open_bare(&bare).unwrap();
            let target = repo.refname_to_id("refs/heads/main").unwrap();
            let mut made = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("refs/churn/{}", made % 8);
                {
                    let _held = gate.lock().unwrap();
                    // Like the notes writer: a ref lives for about a millisecond, then is gone.
                    repo.reference(&name, target, true, "churn").unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                    repo.find_reference(&name).unwrap().delete().unwrap();
                }
                std::thread::sleep(Duration::from_millis(1));
                made += 1;
            }
            made
        })
    };
    let mut last = String::new();
    for round in 0..2000 {
        if round % 200 == 0 {
            last = commit(
                &up.work,
                &[("a.yaml", Some(&format!("a: {round}\n")))],
                "next",
            );
            let _held = gate.lock().unwrap();
            up.push(&["main"]);
        }
        let head = source.fetch();
        if let Err(e) = &head {
            stop.store(true, Ordering::Relaxed);
            panic!("fetch {round} failed while refs churned: {e}");
        }
        assert_eq!(head.unwrap().commit, last);
    }
    stop.store(true, Ordering::Relaxed);
    let made = churn.join().unwrap();
    assert!(
        made > 100,
        "the refs churned during the fetches ({made} made)"
    );
}
