#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Pod volumes on a real file system: configMap and secret volumes with Kubernetes' atomic
//! layout and modes, refreshes that swap `..data` in one step (checked by a concurrent
//! reader) and leave no old data behind, hostPath policy (including the symlink trick),
//! subPath escapes, and cleanup that unmounts and never follows a symlink out. The tmpfs
//! tests need root. Every test works in its own temp dir, and a guard cleans up (unmounting
//! first) even when the test fails.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use coxswain_node::Error;
use coxswain_node::env::Lookup;
use coxswain_node::volume::{self, HostPathPolicy, Kind, Prepared};
use coxswain_schema::kinds::pod::Pod;
use serde_json::json;

/// ConfigMaps and Secrets of the `default` namespace, changeable while a test runs.
#[derive(Default)]
struct Objects {
    config_maps: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    secrets: Mutex<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl Objects {
    fn set_cm(&self, name: &str, data: &[(&str, &str)]) {
        self.config_maps.lock().unwrap().insert(
            name.into(),
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }
    fn set_secret(&self, name: &str, data: &[(&str, &[u8])]) {
        self.secrets.lock().unwrap().insert(
            name.into(),
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        );
    }
}

impl Lookup for Objects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        if namespace != "default" {
            return None;
        }
        self.config_maps.lock().unwrap().get(name).cloned()
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        if namespace != "default" {
            return None;
        }
        self.secrets.lock().unwrap().get(name).cloned()
    }
}

fn pod(volumes: serde_json::Value, mounts: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "uid": "u-1"},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "volumeMounts": mounts}],
            "volumes": volumes,
        },
    }))
    .unwrap()
}

/// A temp dir holding a pod's volume directory (`<tmp>/pods/u-1/volumes`); cleans the
/// volumes up (unmounting any tmpfs) before the temp dir goes, pass or fail.
struct Scratch {
    tmp: tempfile::TempDir,
    pod_dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let pod_dir = tmp.path().join("pods/u-1/volumes");
        Self { tmp, pod_dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = volume::cleanup(&self.pod_dir) {
            eprintln!("cleanup of {}: {e}", self.pod_dir.display());
        }
    }
}

fn config_error(err: Error) -> (String, String) {
    match err {
        Error::Config { field, reason } => (field, reason),
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `names` sorted, to compare with [`entries`].
fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    names.sort();
    names
}

fn data_target(dir: &Path) -> String {
    fs::read_link(dir.join("..data"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// How many times `point` is mounted with file system `fstype`, from the mount table.
fn mounted(point: &Path, fstype: &str) -> usize {
    let point = point.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let fs_type = line.split(" - ").nth(1).and_then(|r| r.split(' ').next());
            fields.get(4) == Some(&point) && fs_type == Some(fstype)
        })
        .count()
}

fn no_host_paths() -> HostPathPolicy {
    HostPathPolicy::default()
}

#[test]
fn config_map_volume_has_the_atomic_layout_and_read_only_files() {
    let s = Scratch::new();
    let objects = Objects::default();
    objects.set_cm("app", &[("app.conf", "port=80\n"), ("level", "debug")]);
    let p = pod(
        json!([{"name": "config", "configMap": {"name": "app"}}]),
        json!([]),
    );
    let prepared = volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    let dir = s.pod_dir.join("config");
    assert_eq!(
        prepared,
        [Prepared {
            name: "config".into(),
            host_path: dir.clone(),
            read_only: true,
            kind: Kind::ConfigMap,
        }]
    );
    let target = data_target(&dir);
    assert!(
        target.starts_with("..") && target != "..data" && !target.contains('/'),
        "{target}"
    );
    assert_eq!(
        entries(&dir),
        sorted(&["..data", target.as_str(), "app.conf", "level"])
    );
    assert_eq!(
        fs::read_link(dir.join("app.conf")).unwrap(),
        Path::new("..data/app.conf")
    );
    assert_eq!(
        fs::read_to_string(dir.join("app.conf")).unwrap(),
        "port=80\n"
    );
    assert_eq!(fs::read_to_string(dir.join("level")).unwrap(), "debug");
    assert_eq!(mode(&dir.join("app.conf")), 0o444);
    assert_eq!(mode(&dir.join("level")), 0o444);
    assert_eq!(mode(&dir.join(&target)), 0o755);

    // Preparing again (an agent restart) leaves identical data alone.
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    assert_eq!(data_target(&dir), target);
}

#[test]
fn config_map_items_rename_nest_and_set_modes() {
    let s = Scratch::new();
    let objects = Objects::default();
    objects.set_cm("app", &[("app.conf", "A"), ("other", "B")]);
    let p = pod(
        json!([{"name": "config", "configMap": {
            "name": "app",
            "defaultMode": 0o440,
            "items": [
                {"key": "app.conf", "path": "etc/app/main.conf", "mode": 0o600},
                {"key": "other", "path": "other.txt"},
            ],
        }}]),
        json!([]),
    );
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    let dir = s.pod_dir.join("config");
    let target = data_target(&dir);
    assert_eq!(
        entries(&dir),
        sorted(&["..data", target.as_str(), "etc", "other.txt"])
    );
    assert_eq!(
        fs::read_link(dir.join("etc")).unwrap(),
        Path::new("..data/etc")
    );
    assert_eq!(
        fs::read_to_string(dir.join("etc/app/main.conf")).unwrap(),
        "A"
    );
    assert_eq!(mode(&dir.join("etc/app/main.conf")), 0o600);
    assert_eq!(mode(&dir.join("other.txt")), 0o440);
}

#[test]
fn refresh_swaps_data_and_removes_the_old_version() {
    let s = Scratch::new();
    let objects = Objects::default();
    objects.set_cm("app", &[("keep", "v1"), ("drop", "x")]);
    let p = pod(
        json!([{"name": "config", "configMap": {"name": "app"}}]),
        json!([]),
    );
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    let dir = s.pod_dir.join("config");
    let old = data_target(&dir);
    assert!(
        !volume::refresh(&p, &s.pod_dir, &objects).unwrap(),
        "nothing changed yet"
    );
    assert_eq!(data_target(&dir), old);

    objects.set_cm("app", &[("keep", "v2"), ("new", "n")]);
    assert!(volume::refresh(&p, &s.pod_dir, &objects).unwrap());
    let new = data_target(&dir);
    assert_ne!(new, old);
    assert!(!dir.join(&old).exists(), "the old data dir must be removed");
    assert!(
        fs::symlink_metadata(dir.join("..data"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        entries(&dir),
        sorted(&["..data", new.as_str(), "keep", "new"])
    );
    assert_eq!(fs::read_to_string(dir.join("keep")).unwrap(), "v2");
    assert_eq!(fs::read_to_string(dir.join("new")).unwrap(), "n");

    // A mode change alone is a change too.
    let p2 = pod(
        json!([{"name": "config", "configMap": {"name": "app", "defaultMode": 0o404}}]),
        json!([]),
    );
    assert!(volume::refresh(&p2, &s.pod_dir, &objects).unwrap());
    assert_eq!(mode(&dir.join("keep")), 0o404);
    assert!(!volume::refresh(&p2, &s.pod_dir, &objects).unwrap());
}

#[test]
fn readers_see_a_whole_old_or_new_file_during_refreshes() {
    let s = Scratch::new();
    let objects = Objects::default();
    let one = "1".repeat(64 * 1024);
    let two = "2".repeat(64 * 1024);
    objects.set_cm("app", &[("data", &one)]);
    let p = pod(
        json!([{"name": "config", "configMap": {"name": "app"}}]),
        json!([]),
    );
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    let file = s.pod_dir.join("config/data");
    let stop = AtomicBool::new(false);
    let (reads, bad) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut reads, mut bad) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match fs::read_to_string(&file) {
                    Ok(text) if text == one || text == two => reads += 1,
                    Ok(text) => bad.push(format!("torn read of {} bytes", text.len())),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (reads, bad)
        });
        for i in 0..60 {
            objects.set_cm("app", &[("data", if i % 2 == 0 { &two } else { &one })]);
            assert!(volume::refresh(&p, &s.pod_dir, &objects).unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(
        bad.is_empty(),
        "{} bad reads, first: {:?}",
        bad.len(),
        bad.first()
    );
    assert!(reads > 0);
    // 60 refreshes, and exactly one data dir left.
    let dir = s.pod_dir.join("config");
    assert_eq!(
        entries(&dir),
        sorted(&["..data", data_target(&dir).as_str(), "data"])
    );
}

#[test]
fn secret_volume_files_are_owner_read_only() {
    let s = Scratch::new();
    let objects = Objects::default();
    let key: &[u8] = &[0, 159, 146, 150, 255];
    objects.set_secret("tls", &[("tls.key", key), ("tls.crt", b"CERT")]);
    let p = pod(
        json!([
            {"name": "tls", "secret": {"secretName": "tls"}},
            {"name": "crt", "secret": {"secretName": "tls", "items": [
                {"key": "tls.crt", "path": "cert.pem", "mode": 0o444}]}},
        ]),
        json!([]),
    );
    let prepared = volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    assert!(
        prepared
            .iter()
            .all(|v| v.read_only && v.kind == Kind::Secret)
    );
    let dir = s.pod_dir.join("tls");
    assert_eq!(fs::read(dir.join("tls.key")).unwrap(), key);
    assert_eq!(mode(&dir.join("tls.key")), 0o400);
    assert_eq!(mode(&dir.join("tls.crt")), 0o400);
    let crt = s.pod_dir.join("crt");
    assert_eq!(fs::read(crt.join("cert.pem")).unwrap(), b"CERT");
    assert_eq!(mode(&crt.join("cert.pem")), 0o444);
    assert!(!crt.join("tls.key").exists(), "items select keys");
}

#[test]
fn missing_objects_fail_unless_optional() {
    let s = Scratch::new();
    let objects = Objects::default();
    let p = pod(
        json!([
            {"name": "fine", "emptyDir": {}},
            {"name": "db", "secret": {"secretName": "db"}},
        ]),
        json!([]),
    );
    let (field, reason) =
        config_error(volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap_err());
    assert_eq!(field, "spec.volumes[1].secret");
    assert_eq!(reason, "secret \"db\" not found");

    let p = pod(
        json!([{"name": "opt", "configMap": {"name": "absent", "optional": true}}]),
        json!([]),
    );
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    let dir = s.pod_dir.join("opt");
    assert_eq!(
        entries(&dir),
        sorted(&["..data", data_target(&dir).as_str()])
    );
    // When the object appears, a refresh brings its files.
    objects.set_cm("absent", &[("k", "v")]);
    assert!(volume::refresh(&p, &s.pod_dir, &objects).unwrap());
    assert_eq!(fs::read_to_string(dir.join("k")).unwrap(), "v");
}

#[test]
fn refresh_leaves_unprepared_pods_alone() {
    let s = Scratch::new();
    let objects = Objects::default();
    objects.set_cm("app", &[("k", "v")]);
    let p = pod(
        json!([{"name": "config", "configMap": {"name": "app"}}]),
        json!([]),
    );
    assert!(!volume::refresh(&p, &s.pod_dir, &objects).unwrap());
    assert!(!s.pod_dir.exists());
}

fn host_path_pod(path: &str, type_: Option<&str>) -> Pod {
    let mut hp = json!({"path": path});
    if let Some(t) = type_ {
        hp["type"] = json!(t);
    }
    pod(json!([{"name": "host", "hostPath": hp}]), json!([]))
}

#[test]
fn host_path_must_resolve_under_an_allowed_prefix() {
    let s = Scratch::new();
    let objects = Objects::default();
    let allowed = s.path("allowed");
    let outside = s.path("outside");
    fs::create_dir_all(allowed.join("data")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), "x").unwrap();
    let policy = HostPathPolicy {
        allowed_prefixes: vec![allowed.clone()],
    };
    let prepare = |path: &Path, t: Option<&str>| {
        volume::prepare(
            &host_path_pod(path.to_str().unwrap(), t),
            &s.pod_dir,
            &policy,
            &objects,
        )
    };

    let ok = prepare(&allowed.join("data"), None).unwrap();
    assert_eq!(
        ok[0].host_path,
        allowed.join("data").canonicalize().unwrap()
    );
    assert_eq!((ok[0].kind, ok[0].read_only), (Kind::HostPath, false));

    let (field, reason) = config_error(prepare(&outside, None).unwrap_err());
    assert_eq!(field, "spec.volumes[0].hostPath.path");
    assert_eq!(
        reason,
        format!(
            "{} is not under an allowed prefix ({})",
            outside.display(),
            allowed.display()
        )
    );
    // A prefix is whole path components: `allowed2` is not under `allowed`.
    fs::create_dir_all(s.path("allowed2")).unwrap();
    assert!(prepare(&s.path("allowed2"), None).is_err());

    // The symlink trick: a link inside the allowed prefix pointing out of it.
    symlink(&outside, allowed.join("link")).unwrap();
    let (field, reason) = config_error(prepare(&allowed.join("link"), None).unwrap_err());
    assert_eq!(field, "spec.volumes[0].hostPath.path");
    assert!(
        reason.contains("resolves to") && reason.contains("not under an allowed prefix"),
        "{reason}"
    );
    assert!(prepare(&allowed.join("link/secret.txt"), Some("File")).is_err());
    // Nor through a link to a path that does not exist yet.
    let err = prepare(&allowed.join("link/new"), Some("DirectoryOrCreate")).unwrap_err();
    assert!(config_error(err).1.contains("not under an allowed prefix"));
    assert!(
        !outside.join("new").exists(),
        "nothing may be created outside"
    );

    // `..` and relative paths are refused before any lookup.
    let climb = format!("{}/../outside", allowed.display());
    let (_, reason) = config_error(prepare(Path::new(&climb), None).unwrap_err());
    assert!(reason.contains("must not contain '..'"), "{reason}");
    let (_, reason) = config_error(prepare(Path::new("relative/path"), None).unwrap_err());
    assert!(reason.contains("absolute"), "{reason}");

    // No prefixes: no host paths at all.
    let err = volume::prepare(
        &host_path_pod(allowed.to_str().unwrap(), None),
        &s.pod_dir,
        &HostPathPolicy::default(),
        &objects,
    )
    .unwrap_err();
    assert!(config_error(err).1.contains("none are configured"));
}

#[test]
fn host_path_types_check_and_create() {
    let s = Scratch::new();
    let objects = Objects::default();
    let root = s.path("host");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("file"), "f").unwrap();
    let sock = root.join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let policy = HostPathPolicy {
        allowed_prefixes: vec![root.clone(), PathBuf::from("/dev/null")],
    };
    let prepare = |path: &Path, t: &str| {
        volume::prepare(
            &host_path_pod(path.to_str().unwrap(), Some(t)),
            &s.pod_dir,
            &policy,
            &objects,
        )
    };

    prepare(&root.join("made/deep"), "DirectoryOrCreate").unwrap();
    assert!(root.join("made/deep").is_dir());
    assert_eq!(mode(&root.join("made/deep")), 0o755);
    prepare(&root.join("made"), "Directory").unwrap();
    prepare(&root.join("new.log"), "FileOrCreate").unwrap();
    assert!(root.join("new.log").is_file());
    assert_eq!(mode(&root.join("new.log")), 0o644);
    prepare(&root.join("file"), "File").unwrap();
    prepare(&sock, "Socket").unwrap();
    prepare(Path::new("/dev/null"), "CharDevice").unwrap();
    prepare(&root.join("file"), "").unwrap();

    for (path, t, field, want) in [
        (root.join("file"), "Directory", "type", "is not a directory"),
        (
            root.join("file"),
            "DirectoryOrCreate",
            "type",
            "is not a directory",
        ),
        (root.join("made"), "File", "type", "is not a file"),
        (root.join("made"), "FileOrCreate", "type", "is not a file"),
        (root.join("file"), "Socket", "type", "is not a socket file"),
        (
            root.join("file"),
            "CharDevice",
            "type",
            "is not a character device",
        ),
        (
            PathBuf::from("/dev/null"),
            "BlockDevice",
            "type",
            "is not a block device",
        ),
        (root.join("absent"), "Directory", "path", "does not exist"),
        (root.join("absent"), "", "path", "does not exist"),
        (root.join("no/parent.txt"), "FileOrCreate", "path", ""),
    ] {
        let err = prepare(&path, t).unwrap_err();
        if want.is_empty() {
            // A missing parent is an I/O error on the path, as Kubernetes does not create it.
            assert!(matches!(err, Error::Io { .. }), "{err:?}");
            continue;
        }
        let (got_field, reason) = config_error(err);
        assert_eq!(got_field, format!("spec.volumes[0].hostPath.{field}"));
        assert!(reason.contains(want), "{t} on {}: {reason}", path.display());
    }
    assert!(!root.join("no").exists());
}

#[test]
fn empty_dir_on_disk_is_world_writable_and_keeps_its_contents() {
    let s = Scratch::new();
    let p = pod(json!([{"name": "scratch", "emptyDir": {}}]), json!([]));
    let prepared = volume::prepare(&p, &s.pod_dir, &no_host_paths(), &Objects::default()).unwrap();
    let dir = s.pod_dir.join("scratch");
    assert_eq!(prepared[0].host_path, dir);
    assert_eq!(prepared[0].kind, Kind::EmptyDir { memory: false });
    assert!(dir.is_dir());
    assert_eq!(mode(&dir), 0o777);
    fs::write(dir.join("work"), "kept").unwrap();
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &Objects::default()).unwrap();
    assert_eq!(fs::read_to_string(dir.join("work")).unwrap(), "kept");
}

#[test]
fn bad_volume_names_are_refused() {
    let s = Scratch::new();
    for name in ["../escape", "a/b", "..", "UPPER"] {
        let p = pod(json!([{"name": name, "emptyDir": {}}]), json!([]));
        let err = volume::prepare(&p, &s.pod_dir, &no_host_paths(), &Objects::default());
        assert_eq!(config_error(err.unwrap_err()).0, "spec.volumes[0].name");
    }
    assert!(!s.path("pods/u-1/escape").exists());
    let p = pod(
        json!([{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]),
        json!([]),
    );
    let err = volume::prepare(&p, &s.pod_dir, &no_host_paths(), &Objects::default());
    assert!(config_error(err.unwrap_err()).1.contains("duplicate"));
}

#[test]
fn container_mounts_map_volumes_and_read_only() {
    let s = Scratch::new();
    let objects = Objects::default();
    objects.set_cm("app", &[("app.conf", "A")]);
    let p = pod(
        json!([{"name": "config", "configMap": {"name": "app"}}, {"name": "work", "emptyDir": {}}]),
        json!([
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "work", "mountPath": "//work/./dir/"},
            {"name": "work", "mountPath": "/ro", "readOnly": true},
            {"name": "config", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
        ]),
    );
    let prepared = volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    let mounts = volume::container_mounts(&p, &p.spec.containers[0], &prepared).unwrap();
    let got: Vec<(&str, bool)> = mounts
        .iter()
        .map(|m| (m.destination.as_str(), m.read_only))
        .collect();
    assert_eq!(
        got,
        [
            ("/etc/app", true),
            ("/work/dir", false),
            ("/ro", true),
            ("/etc/app.conf", true)
        ]
    );
    let config = s.pod_dir.join("config");
    assert_eq!(mounts[0].source, config);
    assert_eq!(mounts[1].source, s.pod_dir.join("work"));
    // A subPath into a configMap volume is the file inside the current data dir.
    let real_config = config.canonicalize().unwrap();
    assert_eq!(
        mounts[3].source,
        real_config.join(data_target(&config)).join("app.conf")
    );

    for (mount, field, want) in [
        (
            json!({"name": "nope", "mountPath": "/x"}),
            "name",
            "volume \"nope\" not found",
        ),
        (
            json!({"name": "work", "mountPath": "x"}),
            "mountPath",
            "absolute",
        ),
        (
            json!({"name": "work", "mountPath": "/a/../etc"}),
            "mountPath",
            "'..'",
        ),
        (
            json!({"name": "config", "mountPath": "/x", "subPath": "absent"}),
            "subPath",
            "does not exist",
        ),
    ] {
        let p = pod(
            json!([]),
            json!([{"name": "work", "mountPath": "/first"}, mount]),
        );
        let err = volume::container_mounts(&p, &p.spec.containers[0], &prepared).unwrap_err();
        let (got_field, reason) = config_error(err);
        assert_eq!(
            got_field,
            format!("spec.containers[0].volumeMounts[1].{field}")
        );
        assert!(reason.contains(want), "{reason}");
    }
    let p = pod(
        json!([]),
        json!([{"name": "work", "mountPath": "/same"}, {"name": "config", "mountPath": "/same/"}]),
    );
    let err = volume::container_mounts(&p, &p.spec.containers[0], &prepared).unwrap_err();
    assert!(config_error(err).1.contains("unique"));
}

#[test]
fn sub_path_may_not_leave_the_volume() {
    let s = Scratch::new();
    let p = pod(json!([{"name": "work", "emptyDir": {}}]), json!([]));
    let prepared = volume::prepare(&p, &s.pod_dir, &no_host_paths(), &Objects::default()).unwrap();
    let vol = s.pod_dir.join("work");
    let outside = s.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), "x").unwrap();
    // What a malicious container could plant in its volume.
    symlink(&outside, vol.join("escape")).unwrap();
    symlink(outside.join("secret.txt"), vol.join("file-escape")).unwrap();
    symlink("..", vol.join("up")).unwrap();
    fs::create_dir_all(vol.join("inner")).unwrap();
    symlink("inner", vol.join("inside")).unwrap();
    symlink(vol.join("inner"), vol.join("inside-abs")).unwrap();
    symlink("/nonexistent-target", vol.join("dangling")).unwrap();
    fs::write(vol.join("plain"), "p").unwrap();

    let mount = |sub: &str| {
        let p = pod(
            json!([]),
            json!([{"name": "work", "mountPath": "/m", "subPath": sub}]),
        );
        volume::container_mounts(&p, &p.spec.containers[0], &prepared)
    };
    for (sub, want) in [
        ("escape", "leaves the volume"),
        ("escape/secret.txt", "leaves the volume"),
        ("file-escape", "leaves the volume"),
        ("up", "leaves the volume"),
        ("up/work/inner", "leaves the volume"),
        ("inner/../../outside", "'..'"),
        ("../outside", "'..'"),
        ("/etc", "relative"),
        ("dangling", "symlink to nothing"),
        ("plain/below", "is not a directory"),
    ] {
        let (field, reason) = config_error(mount(sub).unwrap_err());
        assert_eq!(field, "spec.containers[0].volumeMounts[0].subPath");
        assert!(reason.contains(want), "{sub}: {reason}");
    }
    assert!(!outside.join("secret.txt/below").exists());

    let real_vol = vol.canonicalize().unwrap();
    let resolved = |sub: &str| mount(sub).unwrap()[0].source.clone();
    assert_eq!(resolved("inner"), real_vol.join("inner"));
    assert_eq!(resolved("inside"), real_vol.join("inner"));
    assert_eq!(resolved("inside-abs"), real_vol.join("inner"));
    assert_eq!(resolved("plain"), real_vol.join("plain"));
    // A missing subPath is created as a directory inside the volume, with its mode.
    assert_eq!(
        resolved("inside/new/deeper"),
        real_vol.join("inner/new/deeper")
    );
    assert!(vol.join("inner/new/deeper").is_dir());
    assert_eq!(mode(&vol.join("inner/new")), 0o777);
}

#[test]
fn cleanup_removes_the_tree_without_following_symlinks_out() {
    let s = Scratch::new();
    let objects = Objects::default();
    objects.set_cm("app", &[("k", "v")]);
    let p = pod(
        json!([{"name": "work", "emptyDir": {}}, {"name": "config", "configMap": {"name": "app"}}]),
        json!([]),
    );
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &objects).unwrap();
    let outside = s.path("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("sub/precious"), "keep me").unwrap();
    symlink(&outside, s.pod_dir.join("work/link-dir")).unwrap();
    symlink(
        outside.join("sub/precious"),
        s.pod_dir.join("work/link-file"),
    )
    .unwrap();

    volume::cleanup(&s.pod_dir).unwrap();
    assert!(!s.pod_dir.exists());
    assert_eq!(
        fs::read_to_string(outside.join("sub/precious")).unwrap(),
        "keep me"
    );
    // Cleaning up what is gone is fine.
    volume::cleanup(&s.pod_dir).unwrap();

    // A pod directory that is itself a symlink is refused, its target untouched.
    let real = s.path("real-pod");
    fs::create_dir_all(real.join("v")).unwrap();
    fs::write(real.join("v/f"), "x").unwrap();
    let link = s.path("link-pod");
    symlink(&real, &link).unwrap();
    let err = volume::cleanup(&link).unwrap_err();
    assert!(err.to_string().contains("is a symlink"), "{err}");
    assert!(real.join("v/f").exists());
}

#[test]
fn memory_empty_dir_is_a_tmpfs_of_the_size_limit() {
    if !support::require_root("memory_empty_dir_is_a_tmpfs_of_the_size_limit") {
        return;
    }
    let s = Scratch::new();
    let p = pod(
        json!([
            {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
            {"name": "big", "emptyDir": {"medium": "Memory"}},
        ]),
        json!([]),
    );
    let prepared = volume::prepare(&p, &s.pod_dir, &no_host_paths(), &Objects::default()).unwrap();
    assert_eq!(prepared[0].kind, Kind::EmptyDir { memory: true });
    let cache = s.pod_dir.join("cache");
    let big = s.pod_dir.join("big");
    assert_eq!(mounted(&cache, "tmpfs"), 1);
    assert_eq!(mounted(&big, "tmpfs"), 1);
    let stat = nix::sys::statvfs::statvfs(&cache).unwrap();
    assert_eq!(stat.blocks() * stat.fragment_size(), 4 * 1024 * 1024);
    let big_stat = nix::sys::statvfs::statvfs(&big).unwrap();
    assert!(big_stat.blocks() * big_stat.fragment_size() > 4 * 1024 * 1024);
    assert_eq!(mode(&cache), 0o777);
    fs::write(cache.join("f"), "in memory").unwrap();

    // Idempotent: no second tmpfs on top, the contents stay.
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &Objects::default()).unwrap();
    assert_eq!(mounted(&cache, "tmpfs"), 1);
    assert_eq!(fs::read_to_string(cache.join("f")).unwrap(), "in memory");

    volume::cleanup(&s.pod_dir).unwrap();
    assert_eq!(mounted(&cache, "tmpfs"), 0);
    assert_eq!(mounted(&big, "tmpfs"), 0);
    assert!(!s.pod_dir.exists());
}

#[test]
fn cleanup_unmounts_stacked_and_nested_mounts() {
    if !support::require_root("cleanup_unmounts_stacked_and_nested_mounts") {
        return;
    }
    let s = Scratch::new();
    let p = pod(
        json!([{"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]),
        json!([]),
    );
    volume::prepare(&p, &s.pod_dir, &no_host_paths(), &Objects::default()).unwrap();
    let cache = s.pod_dir.join("cache");
    // A second tmpfs stacked on the first and one nested inside it, as a crashed or
    // concurrent agent might leave.
    let tmpfs = |at: &Path| {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
    };
    tmpfs(&cache);
    fs::create_dir(cache.join("nested")).unwrap();
    tmpfs(&cache.join("nested"));
    assert_eq!(mounted(&cache, "tmpfs"), 2);
    volume::cleanup(&s.pod_dir).unwrap();
    assert_eq!(mounted(&cache, "tmpfs"), 0);
    assert_eq!(mounted(&cache.join("nested"), "tmpfs"), 0);
    assert!(!s.pod_dir.exists());
}
