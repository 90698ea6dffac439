//! Incremental validation: `validate_tree_with` given the previous report must give exactly
//! what a full `validate_tree` gives, while reading only the files whose content id changed
//! (and every file that has no id). An in-memory tree with content ids and a read counter
//! stands in for the Git tree, so that "not read again" can be observed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Instant;

use coxswain_schema::tree::{DirTree, EntryKind, Tree, TreeEntry};
use coxswain_schema::validate::Ident;
use coxswain_schema::{Code, Diagnostic, Error, Limits, Object, Report};
use coxswain_schema::{validate_tree, validate_tree_with};
use proptest::prelude::*;

/// A tree in memory. Files are listed with a content id (a hash of their bytes, so equal
/// bytes get equal ids, as Git blob ids do) unless their path is in `no_id`.
#[derive(Debug, Default)]
struct MemTree {
    files: BTreeMap<String, String>,
    no_id: BTreeSet<String>,
    /// Paths whose next read fails once.
    fail_next_read: Mutex<BTreeSet<String>>,
    /// Every read since the last `take_reads`, in no particular order.
    reads: Mutex<Vec<String>>,
}

impl MemTree {
    fn with(files: &[(&str, &str)]) -> Self {
        let mut t = Self::default();
        for (p, text) in files {
            t.set(p, text);
        }
        t
    }

    fn set(&mut self, path: &str, text: &str) {
        self.files.insert(path.to_string(), text.to_string());
    }

    fn remove(&mut self, path: &str) {
        self.files.remove(path);
    }

    fn rename(&mut self, from: &str, to: &str) {
        let text = self.files.remove(from).unwrap();
        self.files.insert(to.to_string(), text);
    }

    /// The paths read since the last call, sorted, repeated once per read.
    fn take_reads(&self) -> Vec<String> {
        let mut reads = std::mem::take(&mut *self.reads.lock().unwrap());
        reads.sort();
        reads
    }

    fn id_of(&self, path: &str) -> Option<String> {
        if self.no_id.contains(path) {
            return None;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.files.get(path)?.as_bytes().hash(&mut h);
        Some(format!("{:016x}", h.finish()))
    }
}

impl Tree for MemTree {
    fn entries(&self) -> coxswain_schema::Result<Vec<TreeEntry>> {
        Ok(self
            .files
            .iter()
            .map(|(path, text)| TreeEntry {
                path: path.clone(),
                kind: EntryKind::File,
                size: text.len() as u64,
                id: self.id_of(path),
            })
            .collect())
    }

    fn read(&self, path: &str) -> coxswain_schema::Result<Vec<u8>> {
        self.reads.lock().unwrap().push(path.to_string());
        if self.fail_next_read.lock().unwrap().remove(path) {
            return Err(Error::Tree {
                path: path.to_string(),
                reason: "simulated read failure".into(),
            });
        }
        self.files
            .get(path)
            .map(|t| t.as_bytes().to_vec())
            .ok_or_else(|| Error::Tree {
                path: path.to_string(),
                reason: "no such file".into(),
            })
    }
}

/// Everything a report says, in a comparable form: the diagnostics exactly (source lines
/// included), and per file its path, id, own diagnostics, and each document's identity and
/// object.
#[derive(Debug, PartialEq)]
struct Snapshot {
    diagnostics: Vec<Diagnostic>,
    files: Vec<FileSnapshot>,
    objects: Vec<(String, Object)>,
}

type DocSnapshot = (usize, Option<Ident>, Option<Object>);

#[derive(Debug, PartialEq)]
struct FileSnapshot {
    path: String,
    id: Option<String>,
    text: String,
    diagnostics: Vec<Diagnostic>,
    docs: Vec<DocSnapshot>,
}

fn snapshot(r: &Report) -> Snapshot {
    Snapshot {
        diagnostics: r.diagnostics.clone(),
        files: r
            .files
            .iter()
            .map(|f| FileSnapshot {
                path: f.path.clone(),
                id: f.id().map(str::to_string),
                text: f.text.to_string(),
                diagnostics: f.diagnostics.clone(),
                docs: f
                    .docs
                    .iter()
                    .map(|d| (d.index, d.ident.clone(), d.object.clone()))
                    .collect(),
            })
            .collect(),
        objects: r
            .objects()
            .map(|(p, o)| (p.to_string(), o.clone()))
            .collect(),
    }
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";

const CM: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  mode: fast
";

/// `CM` without the key the Deployment reads.
const CM_NO_MODE: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  other: xxx
";

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: nginx:1.27.0
          env:
            - name: MODE
              valueFrom:
                configMapKeyRef:
                  name: settings
                  key: mode
";

const SVC: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
    - port: 80
";

const SECRET: &str = "apiVersion: v1
kind: Secret
metadata:
  name: token
  namespace: shop
stringData:
  token: hunter2
";

const BROKEN: &str = "apiVersion: v1\nkind: [\n";

fn deploy_bad() -> String {
    DEPLOY.replace("replicas: 2", "replicas: three")
}

fn svc_8080() -> String {
    SVC.replace("port: 80", "port: 8080")
}

/// One edit of the tree, what the incremental run must read for it, and the diagnostics
/// (file, code) both runs must then give, so that each step is known to do what it says.
struct Step {
    name: &'static str,
    edit: fn(&mut MemTree),
    reads: &'static [&'static str],
    diags: &'static [(&'static str, Code)],
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            name: "nothing changed",
            edit: |_| {},
            reads: &[],
            diags: &[],
        },
        Step {
            name: "add a file",
            edit: |t| t.set("secret.yaml", SECRET),
            reads: &["secret.yaml"],
            diags: &[],
        },
        Step {
            name: "change a file",
            edit: |t| t.set("svc.yaml", &svc_8080()),
            reads: &["svc.yaml"],
            diags: &[],
        },
        Step {
            name: "introduce an error",
            edit: |t| t.set("deploy.yaml", &deploy_bad()),
            reads: &["deploy.yaml"],
            diags: &[("deploy.yaml", Code::Schema)],
        },
        Step {
            name: "fix it",
            edit: |t| t.set("deploy.yaml", DEPLOY),
            reads: &["deploy.yaml"],
            diags: &[],
        },
        Step {
            name: "the ConfigMap the Deployment reads loses the key (only the ConfigMap is read)",
            edit: |t| t.set("cm.yaml", CM_NO_MODE),
            reads: &["cm.yaml"],
            diags: &[("deploy.yaml", Code::Reference)],
        },
        Step {
            name: "the key is back",
            edit: |t| t.set("cm.yaml", CM),
            reads: &["cm.yaml"],
            diags: &[],
        },
        Step {
            name: "rename a file",
            edit: |t| t.rename("svc.yaml", "net/svc.yaml"),
            reads: &["net/svc.yaml"],
            diags: &[],
        },
        Step {
            name: "the same object in a second file",
            edit: |t| t.set("dup.yaml", CM),
            reads: &["dup.yaml"],
            diags: &[("dup.yaml", Code::Duplicate)],
        },
        Step {
            name: "delete the second file",
            edit: |t| t.remove("dup.yaml"),
            reads: &[],
            diags: &[],
        },
        Step {
            name: "delete the referenced ConfigMap",
            edit: |t| t.remove("cm.yaml"),
            reads: &[],
            diags: &[("deploy.yaml", Code::Reference)],
        },
        Step {
            name: "bring it back with the same bytes (not in the previous report, so read)",
            edit: |t| t.set("cm.yaml", CM),
            reads: &["cm.yaml"],
            diags: &[],
        },
        Step {
            name: "delete the Namespace every other object is in",
            edit: |t| t.remove("ns.yaml"),
            reads: &[],
            diags: &[
                ("cm.yaml", Code::Reference),
                ("deploy.yaml", Code::Reference),
                ("net/svc.yaml", Code::Reference),
                ("secret.yaml", Code::Reference),
            ],
        },
        Step {
            name: "the Namespace is back",
            edit: |t| t.set("ns.yaml", NS),
            reads: &["ns.yaml"],
            diags: &[],
        },
        Step {
            name: "a file that does not parse",
            edit: |t| t.set("broken.yaml", BROKEN),
            reads: &["broken.yaml"],
            diags: &[("broken.yaml", Code::Parse)],
        },
        Step {
            name: "ignore it (the ignore file is read on every run)",
            edit: |t| t.set(".coxswainignore", "broken.yaml\n"),
            reads: &[".coxswainignore"],
            diags: &[],
        },
        Step {
            name: "stop ignoring it (it was not in the previous report, so read)",
            edit: |t| t.remove(".coxswainignore"),
            reads: &["broken.yaml"],
            diags: &[("broken.yaml", Code::Parse)],
        },
        Step {
            name: "several edits in one commit",
            edit: |t| {
                t.remove("broken.yaml");
                t.set("deploy.yaml", &deploy_bad());
                t.set("cm.yaml", CM_NO_MODE);
            },
            reads: &["cm.yaml", "deploy.yaml"],
            // The broken Deployment has no typed object, so its references are not checked.
            diags: &[("deploy.yaml", Code::Schema)],
        },
        Step {
            name: "revert that commit",
            edit: |t| {
                t.set("broken.yaml", BROKEN);
                t.set("deploy.yaml", DEPLOY);
                t.set("cm.yaml", CM);
            },
            reads: &["broken.yaml", "cm.yaml", "deploy.yaml"],
            diags: &[("broken.yaml", Code::Parse)],
        },
    ]
}

/// The manifest paths of a tree (what a full validation reads, the ignore file aside).
fn manifests(t: &MemTree) -> Vec<String> {
    t.files
        .keys()
        .filter(|p| p.ends_with(".yaml"))
        .cloned()
        .collect()
}

#[test]
fn a_sequence_of_edits_gives_the_full_result_and_reads_only_changed_files() {
    let limits = Limits::default();
    let mut tree = MemTree::with(&[
        ("ns.yaml", NS),
        ("cm.yaml", CM),
        ("deploy.yaml", DEPLOY),
        ("svc.yaml", SVC),
    ]);
    let mut previous = validate_tree_with(&tree, &limits, None);
    assert!(previous.is_valid(), "{:#?}", previous.diagnostics);
    assert_eq!(tree.take_reads(), manifests(&tree));
    assert!(previous.files.iter().all(|f| f.id().is_some()));

    for step in steps() {
        (step.edit)(&mut tree);
        let incremental = validate_tree_with(&tree, &limits, Some(&previous));
        let reads = tree.take_reads();
        let full = validate_tree(&tree, &limits);
        let full_reads = tree.take_reads();

        assert_eq!(
            snapshot(&incremental),
            snapshot(&full),
            "step {:?}: incremental and full results differ",
            step.name
        );
        assert_eq!(reads, step.reads, "step {:?}: files read", step.name);
        let mut want_full = manifests(&tree);
        if tree.files.contains_key(".coxswainignore") {
            want_full.push(".coxswainignore".into());
            want_full.retain(|p| p != "broken.yaml");
            want_full.sort();
        }
        assert_eq!(full_reads, want_full, "step {:?}: full reads", step.name);
        let diags: Vec<(&str, Code)> = full
            .diagnostics
            .iter()
            .map(|d| (d.file.as_str(), d.code))
            .collect();
        assert_eq!(diags, step.diags, "step {:?}: diagnostics", step.name);
        previous = incremental;
    }
}

#[test]
fn files_without_an_id_are_always_read_again() {
    let limits = Limits::default();
    let mut tree = MemTree::with(&[("ns.yaml", NS), ("cm.yaml", CM), ("deploy.yaml", DEPLOY)]);
    tree.no_id.insert("cm.yaml".into());
    let mut previous = validate_tree_with(&tree, &limits, None);
    tree.take_reads();
    let ids: Vec<(&str, Option<&str>)> = previous
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.id()))
        .collect();
    assert_eq!(ids[0].0, "cm.yaml");
    assert_eq!(ids[0].1, None, "a file listed without an id records none");
    assert!(ids[1].1.is_some() && ids[2].1.is_some());

    for _ in 0..3 {
        let next = validate_tree_with(&tree, &limits, Some(&previous));
        assert_eq!(tree.take_reads(), ["cm.yaml"]);
        assert_eq!(snapshot(&next), snapshot(&validate_tree(&tree, &limits)));
        tree.take_reads();
        previous = next;
    }

    // Without ids the content can change behind the same path and the same size; the change
    // must be seen, not the bytes parsed before.
    tree.set("cm.yaml", CM_NO_MODE);
    assert_eq!(CM.len(), CM_NO_MODE.len());
    let next = validate_tree_with(&tree, &limits, Some(&previous));
    assert_eq!(tree.take_reads(), ["cm.yaml"]);
    assert_eq!(next.diagnostics.len(), 1);
    assert_eq!(next.diagnostics[0].code, Code::Reference);
    assert_eq!(snapshot(&next), snapshot(&validate_tree(&tree, &limits)));
}

#[test]
fn a_folder_tree_is_never_served_stale_bytes() {
    // DirTree knows no content ids, so a previous report must not stop it from seeing an
    // edit that keeps the path and the size.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ns.yaml"), NS).unwrap();
    std::fs::write(dir.path().join("cm.yaml"), CM).unwrap();
    std::fs::write(dir.path().join("deploy.yaml"), DEPLOY).unwrap();
    let tree = DirTree::new(dir.path()).unwrap();
    let limits = Limits::default();
    let previous = validate_tree(&tree, &limits);
    assert!(previous.is_valid(), "{:#?}", previous.diagnostics);

    std::fs::write(dir.path().join("cm.yaml"), CM_NO_MODE).unwrap();
    let next = validate_tree_with(&tree, &limits, Some(&previous));
    assert_eq!(
        next.diagnostics
            .iter()
            .map(|d| (d.file.as_str(), d.code))
            .collect::<Vec<_>>(),
        [("deploy.yaml", Code::Reference)]
    );
    assert_eq!(snapshot(&next), snapshot(&validate_tree(&tree, &limits)));
}

#[test]
fn a_failed_read_is_retried_not_remembered() {
    let limits = Limits::default();
    let tree = MemTree::with(&[("ns.yaml", NS), ("cm.yaml", CM), ("deploy.yaml", DEPLOY)]);
    tree.fail_next_read.lock().unwrap().insert("cm.yaml".into());
    let failed = validate_tree_with(&tree, &limits, None);
    tree.take_reads();
    assert!(
        failed
            .diagnostics
            .iter()
            .any(|d| d.file == "cm.yaml" && d.code == Code::Io),
        "{:#?}",
        failed.diagnostics
    );

    let next = validate_tree_with(&tree, &limits, Some(&failed));
    assert_eq!(tree.take_reads(), ["cm.yaml"]);
    assert!(next.is_valid(), "{:#?}", next.diagnostics);
    assert_eq!(snapshot(&next), snapshot(&validate_tree(&tree, &limits)));
}

#[test]
fn other_limits_parse_every_file_again() {
    let tree = MemTree::with(&[("ns.yaml", NS), ("cm.yaml", CM), ("deploy.yaml", DEPLOY)]);
    let roomy = Limits::default();
    let mut tight = Limits::default();
    tight.yaml.max_depth = 4;

    let first = validate_tree_with(&tree, &roomy, None);
    assert!(first.is_valid());
    tree.take_reads();

    let second = validate_tree_with(&tree, &tight, Some(&first));
    assert_eq!(tree.take_reads(), manifests(&tree));
    assert_eq!(snapshot(&second), snapshot(&validate_tree(&tree, &tight)));
    tree.take_reads();
    assert!(
        second
            .diagnostics
            .iter()
            .any(|d| d.file == "deploy.yaml" && d.code == Code::Limit),
        "{:#?}",
        second.diagnostics
    );

    let third = validate_tree_with(&tree, &roomy, Some(&second));
    assert_eq!(tree.take_reads(), manifests(&tree));
    assert!(third.is_valid(), "{:#?}", third.diagnostics);

    // Limits only checked on the listing do not invalidate what was parsed.
    let mut fewer_files = roomy.clone();
    fewer_files.max_files = 100;
    fewer_files.max_total_bytes = 1024 * 1024;
    let fourth = validate_tree_with(&tree, &fewer_files, Some(&third));
    assert_eq!(tree.take_reads(), Vec::<String>::new());
    assert_eq!(
        snapshot(&fourth),
        snapshot(&validate_tree(&tree, &fewer_files))
    );
}

// --- property test: random edit sequences ----------------------------------------------

const PATHS: &[&str] = &["a.yaml", "b.yaml", "c/d.yaml", "e.json"];

fn contents() -> Vec<String> {
    vec![
        NS.to_string(),
        CM.to_string(),
        CM_NO_MODE.to_string(),
        DEPLOY.to_string(),
        deploy_bad(),
        SVC.to_string(),
        SECRET.to_string(),
        BROKEN.to_string(),
        // Valid JSON, so that `e.json` can be valid too.
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}"#.to_string(),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Set(usize, usize),
    Remove(usize),
    /// List the file without a content id from now on, or with one again.
    ToggleId(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let n = contents().len();
    prop_oneof![
        4 => (0..PATHS.len(), 0..n).prop_map(|(p, c)| Edit::Set(p, c)),
        1 => (0..PATHS.len()).prop_map(Edit::Remove),
        1 => (0..PATHS.len()).prop_map(Edit::ToggleId),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_edit_sequence_matches_a_full_validation(
        start in prop::collection::vec(0..contents().len(), PATHS.len()),
        commits in prop::collection::vec(prop::collection::vec(edit(), 1..4), 1..8),
    ) {
        let limits = Limits::default();
        let pool = contents();
        let mut tree = MemTree::default();
        for (p, c) in PATHS.iter().zip(&start) {
            tree.set(p, &pool[*c]);
        }
        let mut previous = validate_tree_with(&tree, &limits, None);
        tree.take_reads();
        for commit in commits {
            let before: BTreeMap<String, Option<String>> =
                tree.files.keys().map(|p| (p.clone(), tree.id_of(p))).collect();
            for e in commit {
                match e {
                    Edit::Set(p, c) => tree.set(PATHS[p], &pool[c]),
                    Edit::Remove(p) => tree.remove(PATHS[p]),
                    Edit::ToggleId(p) => {
                        if !tree.no_id.remove(PATHS[p]) {
                            tree.no_id.insert(PATHS[p].to_string());
                        }
                    }
                }
            }
            let incremental = validate_tree_with(&tree, &limits, Some(&previous));
            let reads = tree.take_reads();
            let full = validate_tree(&tree, &limits);
            tree.take_reads();
            prop_assert_eq!(snapshot(&incremental), snapshot(&full));

            // Read: every file with no id now, or whose id is not the one it was read under.
            let want: Vec<String> = tree
                .files
                .keys()
                .filter(|p| {
                    let now = tree.id_of(p);
                    now.is_none() || before.get(*p) != Some(&now)
                })
                .cloned()
                .collect();
            prop_assert_eq!(reads, want);
            previous = incremental;
        }
    }
}

// --- timing ----------------------------------------------------------------------------

/// One file of the generated tree: nine ConfigMaps and a Deployment that reads one of them.
fn generated_file(i: usize, value: &str) -> String {
    let mut out = String::new();
    for j in 0..9 {
        out.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}-{j}\n  labels:\n    app: app-{i}\ndata:\n  mode: {value}\n  level: \"{j}\"\n---\n"
        ));
    }
    out.push_str(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{i}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: app-{i}
  template:
    metadata:
      labels:
        app: app-{i}
    spec:
      containers:
        - name: app
          image: registry.example.com/app:{i}
          env:
            - name: MODE
              valueFrom:
                configMapKeyRef:
                  name: cm-{i}-0
                  key: mode
"
    ));
    out
}

/// At the scale of the sync benchmark (10,000 objects in 1,000 files, one file changed):
/// incremental equals full and reads one file. It also prints both times (no timing is
/// asserted; see `--nocapture`).
#[test]
fn at_scale_incremental_equals_full_and_reads_one_file() {
    let limits = Limits::default();
    let mut tree = MemTree::default();
    for i in 0..1000 {
        tree.set(&format!("apps/app-{i:04}.yaml"), &generated_file(i, "fast"));
    }
    let started = Instant::now();
    let previous = validate_tree(&tree, &limits);
    let full_first = started.elapsed();
    assert!(previous.is_valid(), "{:#?}", &previous.diagnostics[..1]);
    assert_eq!(previous.objects().count(), 10_000);
    tree.take_reads();

    tree.set("apps/app-0500.yaml", &generated_file(500, "slow"));

    let started = Instant::now();
    let incremental = validate_tree_with(&tree, &limits, Some(&previous));
    let incremental_time = started.elapsed();
    let reads = tree.take_reads();

    let started = Instant::now();
    let full = validate_tree(&tree, &limits);
    let full_time = started.elapsed();
    tree.take_reads();

    let started = Instant::now();
    let unchanged = validate_tree_with(&tree, &limits, Some(&incremental));
    let unchanged_time = started.elapsed();

    // Two parts of the incremental time, measured alone: the clone of every reused file out
    // of the previous report (made in parallel in the pipeline, on one thread here), and
    // the listing. The rest is the checks across the tree, which always run.
    let started = Instant::now();
    let copy = incremental.files.clone();
    let clone_time = started.elapsed();
    drop(copy);
    // The in-memory tree hashes every file to list it; a Git tree has its ids for free.
    let started = Instant::now();
    let listed = tree.entries().unwrap().len();
    let list_time = started.elapsed();
    assert_eq!(listed, 1000);

    assert_eq!(reads, ["apps/app-0500.yaml"]);
    assert_eq!(snapshot(&incremental), snapshot(&full));
    assert_eq!(snapshot(&unchanged), snapshot(&full));
    println!(
        "1,000 files, 10,000 objects, {} threads (debug build):",
        rayon_threads()
    );
    println!("  full, first run          {:>10.1?}", full_first);
    println!("  full, one file changed   {:>10.1?}", full_time);
    println!("  incremental, one changed {:>10.1?}", incremental_time);
    println!("  incremental, no change   {:>10.1?}", unchanged_time);
    println!("  (clone all files, 1 thread {:>9.1?})", clone_time);
    println!("  (list the tree            {:>9.1?})", list_time);
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
