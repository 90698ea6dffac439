#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The image store against real files: imports of a folder, plain and gzip tars, OCI layouts
//! (layers, whiteouts, opaque directories, platform and tag selection, as a directory and as
//! an archive), refusal of corrupt blobs and of every path escape we know of, atomic
//! re-import and prune, the reference grammar, the reserved `host` name, cleanup after an
//! interrupted import, and a real busybox. Archives are built in the tests with the `tar`,
//! `flate2` and `sha2` crates. Only the ownership test needs root; everything lives in temp
//! dirs.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use coxswain_node::Error;
use coxswain_node::image::{DEFAULT_ROOT, ImageConfig, ImageStore, Reference};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// ---- scaffolding -------------------------------------------------------------------------

/// A temp dir that can be removed even when a test left read-only directories in it (as an
/// unprivileged run does when it imports a 0555 directory).
struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    fn new() -> Self {
        Scratch(Some(tempfile::tempdir().unwrap()))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            open_up(dir.path());
            if let Err(err) = dir.close() {
                eprintln!("cleanup: {err}");
            }
        }
    }
}

fn open_up(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            open_up(&entry.path());
        }
    }
}

fn open_store(scratch: &Scratch) -> ImageStore {
    ImageStore::open(&scratch.path().join("images")).unwrap()
}

/// What is left in a store subdirectory (`rootfs`, `tmp`).
fn entries_in(store: &ImageStore, sub: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root().join(sub))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A failed import must leave the store as it was: no reference, no rootfs, no temp.
fn assert_store_empty(store: &ImageStore) {
    assert!(store.list().unwrap().is_empty(), "{:?}", store.list());
    assert!(entries_in(store, "rootfs").is_empty());
    assert!(
        entries_in(store, "tmp").is_empty(),
        "{:?}",
        entries_in(store, "tmp")
    );
}

fn write_file(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn expect_config_error(result: Result<impl std::fmt::Debug, Error>, needles: &[&str]) -> String {
    let err = result.expect_err("should have been refused");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    let message = err.to_string();
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    message
}

// ---- tar building ------------------------------------------------------------------------

/// One tar entry, written with raw header fields so that tests can build archives the `tar`
/// crate's own path checks would refuse to write.
#[derive(Clone)]
struct Entry {
    name: String,
    kind: tar::EntryType,
    mode: u32,
    data: Vec<u8>,
    link: Option<String>,
    uid: u64,
    gid: u64,
}

fn entry(name: &str, kind: tar::EntryType, mode: u32) -> Entry {
    Entry {
        name: name.into(),
        kind,
        mode,
        data: Vec::new(),
        link: None,
        uid: 0,
        gid: 0,
    }
}

fn dir(name: &str, mode: u32) -> Entry {
    entry(name, tar::EntryType::Directory, mode)
}

fn file(name: &str, data: &[u8], mode: u32) -> Entry {
    Entry {
        data: data.to_vec(),
        ..entry(name, tar::EntryType::Regular, mode)
    }
}

fn symlink_entry(name: &str, target: &str) -> Entry {
    Entry {
        link: Some(target.into()),
        ..entry(name, tar::EntryType::Symlink, 0o777)
    }
}

fn hardlink(name: &str, target: &str) -> Entry {
    Entry {
        link: Some(target.into()),
        ..entry(name, tar::EntryType::Link, 0o644)
    }
}

impl Entry {
    fn owned(self, uid: u64, gid: u64) -> Self {
        Entry { uid, gid, ..self }
    }
}

fn raw(field: &mut [u8], value: &str) {
    assert!(
        value.len() < field.len(),
        "{value} too long for a raw header"
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value.as_bytes());
}

fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_ustar();
        raw(&mut header.as_old_mut().name, &e.name);
        if let Some(link) = &e.link {
            raw(&mut header.as_old_mut().linkname, link);
        }
        header.set_entry_type(e.kind);
        header.set_mode(e.mode);
        header.set_uid(e.uid);
        header.set_gid(e.gid);
        header.set_mtime(1_700_000_000);
        header.set_size(e.data.len() as u64);
        header.set_cksum();
        builder.append(&header, e.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

// ---- OCI layouts -------------------------------------------------------------------------

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI image layout under construction.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Stores a blob and returns its descriptor.
    fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = digest(bytes);
        fs::write(self.blob_path(&digest), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// Stores config, layers and manifest; returns the manifest's descriptor.
    fn image(&self, config: &Value, layers: &[(&str, Vec<u8>)]) -> Value {
        let config = self.blob(OCI_CONFIG, &serde_json::to_vec(config).unwrap());
        let layers: Vec<Value> = layers
            .iter()
            .map(|(media_type, bytes)| self.blob(media_type, bytes))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layers,
        });
        self.blob(OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap())
    }

    fn write_index(&self, manifests: Vec<Value>) {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

fn with(mut descriptor: Value, key: &str, value: Value) -> Value {
    descriptor[key] = value;
    descriptor
}

fn empty_config() -> Value {
    json!({"architecture": host_arch(), "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
}

// ---- folders -----------------------------------------------------------------------------

#[test]
fn a_folder_is_copied_with_modes_symlinks_hard_links_and_fifos() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let src = scratch.path().join("src");
    write_file(&src.join("bin/tool"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&src.join("etc/secret"), b"s3cret", 0o600);
    write_file(&src.join("usr/bin/su"), b"setuid", 0o4755);
    fs::create_dir_all(src.join("etc/empty")).unwrap();
    symlink("tool", src.join("bin/alias")).unwrap();
    // Dangling on the host, meaningful inside the container: must be copied, not followed.
    symlink("/etc/nowhere-on-this-host", src.join("abs-link")).unwrap();
    fs::hard_link(src.join("bin/tool"), src.join("bin/tool2")).unwrap();
    write_file(&src.join("ro/inside"), b"ro", 0o444);
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    nix::unistd::mkfifo(
        src.join("pipe").as_path(),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();

    let image = store.import("demo:1", &src).unwrap();

    assert_eq!(image.reference, "demo:1");
    assert!(
        image.id.starts_with("sha256:") && image.id.len() == 71,
        "{}",
        image.id
    );
    assert_eq!(image.config, ImageConfig::default());
    assert!(image.rootfs.starts_with(store.root()));
    let root = &image.rootfs;
    assert_eq!(
        fs::read(root.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode(&root.join("bin/tool")), 0o755);
    assert_eq!(fs::read(root.join("etc/secret")).unwrap(), b"s3cret");
    assert_eq!(mode(&root.join("etc/secret")), 0o600);
    assert_eq!(mode(&root.join("usr/bin/su")), 0o4755);
    assert!(root.join("etc/empty").is_dir());
    assert_eq!(
        fs::read_link(root.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::read_link(root.join("abs-link")).unwrap(),
        Path::new("/etc/nowhere-on-this-host")
    );
    assert_eq!(
        fs::metadata(root.join("bin/tool")).unwrap().ino(),
        fs::metadata(root.join("bin/tool2")).unwrap().ino(),
        "hard links must stay linked"
    );
    assert_eq!(mode(&root.join("ro")), 0o555);
    assert_eq!(fs::read(root.join("ro/inside")).unwrap(), b"ro");
    assert!(
        fs::symlink_metadata(root.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(mode(&root.join("pipe")), 0o640);
    // The folder is a container for the content: the image root is always enterable.
    assert_eq!(mode(root), 0o755);
    // tool and tool2 are one file; symlinks and the FIFO hold no data.
    let expected = [b"#!/bin/sh\necho hi\n".len(), 6, 6, 2]
        .iter()
        .sum::<usize>();
    assert_eq!(image.size_bytes, expected as u64);

    assert_eq!(store.get("demo:1").unwrap(), Some(image.clone()));
    assert_eq!(store.list().unwrap(), vec![image.clone()]);
    // Node-wide and durable: another opening (a fresh agent) sees it.
    let reopened = ImageStore::open(store.root()).unwrap();
    assert_eq!(reopened.get("demo:1").unwrap(), Some(image.clone()));

    // Content-addressed: the same tree under another name shares the rootfs.
    let again = store.import("other", &src).unwrap();
    assert_eq!(again.id, image.id);
    assert_eq!(again.rootfs, image.rootfs);
    assert_eq!(entries_in(&store, "rootfs").len(), 1);
    assert!(entries_in(&store, "tmp").is_empty());
}

#[test]
fn a_folder_holding_the_store_is_refused() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    write_file(&scratch.path().join("bin/sh"), b"x", 0o755);
    expect_config_error(store.import("loop", scratch.path()), &["image store"]);
    assert_store_empty(&store);
}

// ---- tars --------------------------------------------------------------------------------

fn rootfs_entries() -> Vec<Entry> {
    vec![
        dir("./", 0o755),
        dir("etc/", 0o755),
        file("etc/hostname", b"box\n", 0o644),
        // No entry for bin/: it must be made anyway.
        file("bin/app", b"\x7fELF pretend", 0o755),
        symlink_entry("bin/alias", "app"),
        hardlink("bin/app2", "bin/app"),
        file("./etc/./motd", b"hello\n", 0o600),
        dir("tmp", 0o1777),
        // The same path twice: the later entry wins, as with tar -x.
        file("etc/hostname", b"box2\n", 0o644),
    ]
}

fn check_rootfs_tar_import(root: &Path) {
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"box2\n");
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"hello\n");
    assert_eq!(mode(&root.join("etc/motd")), 0o600);
    assert_eq!(fs::read(root.join("bin/app")).unwrap(), b"\x7fELF pretend");
    assert_eq!(mode(&root.join("bin/app")), 0o755);
    assert!(root.join("bin").is_dir());
    assert_eq!(mode(&root.join("bin")), 0o755);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    assert_eq!(
        fs::read_link(root.join("bin/alias")).unwrap(),
        Path::new("app")
    );
    assert_eq!(
        fs::metadata(root.join("bin/app")).unwrap().ino(),
        fs::metadata(root.join("bin/app2")).unwrap().ino()
    );
    // Directory mtimes are set last, so what was written into them did not disturb them.
    let mtime = fs::metadata(root.join("etc")).unwrap().mtime();
    assert_eq!(mtime, 1_700_000_000);
}

#[test]
fn plain_and_gzip_tars_import_to_the_same_content() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let bytes = tar_bytes(&rootfs_entries());
    let plain = scratch.path().join("rootfs.tar");
    let gz = scratch.path().join("rootfs.tar.gz");
    fs::write(&plain, &bytes).unwrap();
    fs::write(&gz, gzip(&bytes)).unwrap();

    let from_plain = store.import("plain", &plain).unwrap();
    check_rootfs_tar_import(&from_plain.rootfs);
    assert_eq!(from_plain.reference, "plain:latest");
    let expected = b"box2\n".len() + b"\x7fELF pretend".len() + b"hello\n".len();
    assert_eq!(from_plain.size_bytes, expected as u64);

    let from_gz = store.import("gz:v1", &gz).unwrap();
    check_rootfs_tar_import(&from_gz.rootfs);
    assert_eq!(from_gz.id, from_plain.id, "same tree, same digest");
    assert_eq!(from_gz.rootfs, from_plain.rootfs);

    // A different tree gets a different digest.
    let mut changed = rootfs_entries();
    changed.push(file("etc/extra", b"x", 0o644));
    let other = scratch.path().join("other.tar");
    fs::write(&other, tar_bytes(&changed)).unwrap();
    assert_ne!(store.import("other", &other).unwrap().id, from_plain.id);
}

#[test]
fn files_that_are_not_tars_are_refused() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let empty = scratch.path().join("empty.tar");
    fs::write(&empty, b"").unwrap();
    expect_config_error(store.import("x", &empty), &["no entries"]);
    let text = scratch.path().join("notes.txt");
    fs::write(
        &text,
        "just some text, long enough to fill a header block? no.\n".repeat(20),
    )
    .unwrap();
    let err = store.import("x", &text).unwrap_err();
    assert!(err.to_string().contains("tar"), "{err}");
    let legacy = scratch.path().join("docker-save.tar");
    fs::write(
        &legacy,
        tar_bytes(&[
            file("manifest.json", b"[]", 0o644),
            file("repositories", b"{}", 0o644),
            file("0123abcd/layer.tar", b"", 0o644),
        ]),
    )
    .unwrap();
    expect_config_error(store.import("x", &legacy), &["docker save", "skopeo"]);
    let zstd = scratch.path().join("rootfs.tar.zst");
    fs::write(&zstd, [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]).unwrap();
    expect_config_error(store.import("x", &zstd), &["zstd"]);
    assert_store_empty(&store);
}

// ---- path escapes ------------------------------------------------------------------------

/// Every archive here tries to write, link or chmod outside the image. Each must be refused,
/// name the offending entry, touch nothing outside, and leave the store empty.
#[test]
fn tars_that_escape_the_image_root_are_refused_naming_the_entry() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let outside = scratch.path().join("outside");
    write_file(&outside.join("victim"), b"safe", 0o644);
    let outside_mode = mode(&outside);
    let out = outside.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<Entry>, String)> = vec![
        (
            "parent dir",
            vec![file("../escaped", b"x", 0o644)],
            "../escaped".into(),
        ),
        (
            "parent dir inside a path",
            vec![dir("a", 0o755), file("a/../../escaped", b"x", 0o644)],
            "a/../../escaped".into(),
        ),
        (
            "absolute path",
            vec![file(&format!("{out}/escaped"), b"x", 0o644)],
            format!("{out}/escaped"),
        ),
        (
            "file through a planted absolute symlink",
            vec![
                symlink_entry("link", &out),
                file("link/escaped", b"x", 0o644),
            ],
            "link/escaped".into(),
        ),
        (
            "file through a planted relative symlink",
            vec![symlink_entry("up", ".."), file("up/escaped", b"x", 0o644)],
            "up/escaped".into(),
        ),
        (
            "file through a symlink deeper down",
            vec![
                dir("d", 0o755),
                symlink_entry("d/link", &out),
                file("d/link/escaped", b"x", 0o644),
            ],
            "d/link/escaped".into(),
        ),
        (
            "directory through a planted symlink",
            vec![symlink_entry("link", &out), dir("link/escaped", 0o777)],
            "link/escaped".into(),
        ),
        (
            "hard link climbing out",
            vec![hardlink("stolen", "../outside/victim")],
            "stolen".into(),
        ),
        (
            "hard link to an absolute path",
            vec![hardlink("stolen", &format!("{out}/victim"))],
            "stolen".into(),
        ),
        (
            "hard link through a planted symlink",
            vec![
                symlink_entry("link", &out),
                hardlink("stolen", "link/victim"),
            ],
            "stolen".into(),
        ),
        (
            "hard link to nothing",
            vec![hardlink("stolen", "not/there")],
            "stolen".into(),
        ),
    ];
    for (case, entries, name) in cases {
        let archive = scratch.path().join("evil.tar");
        fs::write(&archive, tar_bytes(&entries)).unwrap();
        let message = expect_config_error(store.import("evil", &archive), &[name.as_str()]);
        eprintln!("{case}: {message}");
        assert_store_empty(&store);
        let outside_now: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside_now, ["victim"], "{case}: wrote outside");
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"safe", "{case}");
        assert_eq!(mode(&outside.join("victim")), 0o644, "{case}");
        assert_eq!(mode(&outside), outside_mode, "{case}: chmod outside");
        assert!(!scratch.path().join("escaped").exists(), "{case}");
        assert!(!store.root().join("escaped").exists(), "{case}");
    }
}

/// A symlink planted first and then overwritten by a file or directory of the same name is
/// replaced: the later entry never writes, or chmods, through it (containerd's
/// CVE-2021-32760 was a chmod through such a link).
#[test]
fn entries_over_a_planted_symlink_replace_the_link() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let outside = scratch.path().join("outside");
    write_file(&outside.join("victim"), b"safe", 0o644);
    let outside_mode = mode(&outside);
    let out = outside.to_str().unwrap();
    let victim = format!("{out}/victim");
    let archive = scratch.path().join("tricky.tar");
    fs::write(
        &archive,
        tar_bytes(&[
            symlink_entry("f", &victim),
            file("f", b"mine", 0o777),
            symlink_entry("d", out),
            dir("d", 0o777),
            symlink_entry("h", &victim),
            // A hard link to a symlink links the symlink itself, never what it points to.
            hardlink("h2", "h"),
        ]),
    )
    .unwrap();
    let image = store.import("tricky", &archive).unwrap();
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"safe");
    assert_eq!(mode(&outside.join("victim")), 0o644);
    assert_eq!(mode(&outside), outside_mode);
    let root = &image.rootfs;
    assert!(fs::symlink_metadata(root.join("f")).unwrap().is_file());
    assert_eq!(fs::read(root.join("f")).unwrap(), b"mine");
    assert!(fs::symlink_metadata(root.join("d")).unwrap().is_dir());
    assert_eq!(mode(&root.join("d")), 0o777);
    assert!(
        fs::symlink_metadata(root.join("h2"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

// ---- OCI layouts -------------------------------------------------------------------------

fn lower_layer() -> Vec<u8> {
    tar_bytes(&[
        dir("etc", 0o755),
        file("etc/keep", b"keep", 0o644),
        file("etc/gone", b"gone", 0o644),
        file("etc/replaced", b"old", 0o644),
        dir("opaque", 0o755),
        file("opaque/old", b"old", 0o644),
        dir("opaque/sub", 0o755),
        file("opaque/sub/deep", b"deep", 0o644),
        dir("var/cache", 0o755),
        file("var/cache/blob", b"cache", 0o644),
        dir("usr/bin", 0o755),
        file("usr/bin/tool", b"tool", 0o755),
    ])
}

fn upper_layer() -> Vec<u8> {
    tar_bytes(&[
        file("etc/.wh.gone", b"", 0o644),
        file("etc/replaced", b"new!", 0o644),
        dir("opaque", 0o700),
        // Written by this layer before and after the opaque marker: both stay.
        file("opaque/before", b"b", 0o644),
        file("opaque/.wh..wh..opq", b"", 0o644),
        file("opaque/after", b"a", 0o644),
        // A whiteout of a whole directory.
        file("var/.wh.cache", b"", 0o644),
    ])
}

fn app_config() -> Value {
    json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/tool"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/usr/bin", "MODE=test"],
            "WorkingDir": "/srv",
            "User": "1000:1000"
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    })
}

/// A layout whose index.json points at an image index of two platforms: a decoy (whose
/// blobs are missing, so choosing it fails) and this host's. Returns the real manifest's
/// digest.
fn build_two_layer_layout(dir: PathBuf) -> (Layout, String) {
    let layout = Layout::new(dir);
    let real = layout.image(
        &app_config(),
        &[
            (LAYER_TAR, lower_layer()),
            (LAYER_GZIP, gzip(&upper_layer())),
        ],
    );
    let decoy_arch = if host_arch() == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    };
    let decoy = json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest(b"a manifest that is not in this layout"),
        "size": 37,
        "platform": {"os": "linux", "architecture": decoy_arch},
    });
    let real_digest = real["digest"].as_str().unwrap().to_string();
    let platforms = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [decoy, with(real, "platform", json!({"os": "linux", "architecture": host_arch()}))],
    });
    let nested = layout.blob(OCI_INDEX, &serde_json::to_vec(&platforms).unwrap());
    layout.write_index(vec![with(
        nested,
        "annotations",
        json!({"org.opencontainers.image.ref.name": "v1"}),
    )]);
    (layout, real_digest)
}

fn check_two_layer_image(root: &Path) {
    assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"keep");
    assert!(!root.join("etc/gone").exists(), "whiteout must delete");
    assert!(
        !root.join("etc/.wh.gone").exists(),
        "whiteouts are not content"
    );
    assert_eq!(fs::read(root.join("etc/replaced")).unwrap(), b"new!");
    let mut opaque: Vec<_> = fs::read_dir(root.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    opaque.sort();
    assert_eq!(
        opaque,
        ["after", "before"],
        "opaque dir keeps only the upper layer"
    );
    assert_eq!(mode(&root.join("opaque")), 0o700);
    assert!(!root.join("var/cache").exists());
    assert!(root.join("var").is_dir());
    assert_eq!(fs::read(root.join("usr/bin/tool")).unwrap(), b"tool");
}

#[test]
fn an_oci_layout_applies_layers_whiteouts_and_opaque_dirs_and_keeps_the_config() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let (layout, manifest_digest) = build_two_layer_layout(scratch.path().join("layout"));

    let image = store
        .import("registry.example.com:5000/team/app:v1", &layout.dir)
        .unwrap();

    assert_eq!(image.reference, "registry.example.com:5000/team/app:v1");
    assert_eq!(
        image.id, manifest_digest,
        "an OCI image is named by its manifest"
    );
    assert_eq!(
        image.rootfs,
        store
            .root()
            .join("rootfs")
            .join(manifest_digest.strip_prefix("sha256:").unwrap())
    );
    check_two_layer_image(&image.rootfs);
    assert_eq!(
        image.config,
        ImageConfig {
            entrypoint: vec!["/usr/bin/tool".into()],
            cmd: vec!["--serve".into()],
            env: vec!["PATH=/usr/bin".into(), "MODE=test".into()],
            working_dir: Some("/srv".into()),
            user: Some("1000:1000".into()),
        }
    );
    assert_eq!(
        image.config.argv(&[], &[]),
        ["/usr/bin/tool".to_string(), "--serve".to_string()]
    );
    // keep, replaced, before, after, tool.
    assert_eq!(image.size_bytes, 4 + 4 + 1 + 1 + 4);
    assert_eq!(
        store.get("registry.example.com:5000/team/app:v1").unwrap(),
        Some(image)
    );
}

#[test]
fn an_oci_archive_imports_like_its_layout() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let (layout, manifest_digest) = build_two_layer_layout(scratch.path().join("layout"));
    let archive = scratch.path().join("app.oci.tar");
    let mut builder = tar::Builder::new(fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &layout.dir).unwrap();
    builder.into_inner().unwrap().sync_all().unwrap();

    let image = store.import("app:v1", &archive).unwrap();
    assert_eq!(image.id, manifest_digest);
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    check_two_layer_image(&image.rootfs);
    // The unpacked layout was only a step: it is not part of the image or the store.
    assert!(!image.rootfs.join("oci-layout").exists());
    assert!(entries_in(&store, "tmp").is_empty());
}

#[test]
fn a_layout_of_several_tags_imports_the_one_the_reference_names() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let layout = Layout::new(scratch.path().join("layout"));
    let tagged = |tag: &str| {
        let layer = tar_bytes(&[file("tag", tag.as_bytes(), 0o644)]);
        let manifest = layout.image(&empty_config(), &[(LAYER_TAR, layer)]);
        with(
            manifest,
            "annotations",
            json!({"org.opencontainers.image.ref.name": tag}),
        )
    };
    let manifests = vec![tagged("1.0"), tagged("2.0")];
    layout.write_index(manifests);

    let image = store.import("app:2.0", &layout.dir).unwrap();
    assert_eq!(fs::read(image.rootfs.join("tag")).unwrap(), b"2.0");
    let image = store.import("app:1.0", &layout.dir).unwrap();
    assert_eq!(fs::read(image.rootfs.join("tag")).unwrap(), b"1.0");
    expect_config_error(
        store.import("app:3.0", &layout.dir),
        &["2 manifests", "3.0"],
    );
}

#[test]
fn corrupt_or_missing_blobs_are_refused_and_leave_nothing() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let build = |name: &str| {
        let layout = Layout::new(scratch.path().join(name));
        let layer = tar_bytes(&[file("hello", b"hello, world", 0o644)]);
        let manifest = layout.image(&empty_config(), &[(LAYER_TAR, layer.clone())]);
        layout.write_index(vec![manifest]);
        (layout, digest(&layer))
    };

    // One byte of file content flipped: the tar still parses, only the digest can tell.
    let (layout, layer_digest) = build("flipped");
    let path = layout.blob_path(&layer_digest);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes
        .windows(12)
        .position(|w| w == b"hello, world")
        .unwrap();
    bytes[at] = b'j';
    fs::write(&path, bytes).unwrap();
    expect_config_error(
        store.import("app", &layout.dir),
        &["corrupt", &layer_digest],
    );
    assert_store_empty(&store);

    // A layer longer than its descriptor says.
    let (layout, layer_digest) = build("longer");
    let mut blob = fs::OpenOptions::new()
        .append(true)
        .open(layout.blob_path(&layer_digest))
        .unwrap();
    blob.write_all(&[0; 512]).unwrap();
    expect_config_error(
        store.import("app", &layout.dir),
        &["corrupt", &layer_digest],
    );
    assert_store_empty(&store);

    // A gzip layer cut short: it fails to decompress, and is reported as corrupt.
    let layout = Layout::new(scratch.path().join("truncated"));
    let layer = gzip(&tar_bytes(&[file("hello", &[7; 4096], 0o644)]));
    let manifest = layout.image(&empty_config(), &[(LAYER_GZIP, layer.clone())]);
    layout.write_index(vec![manifest]);
    fs::write(layout.blob_path(&digest(&layer)), &layer[..layer.len() / 2]).unwrap();
    expect_config_error(
        store.import("app", &layout.dir),
        &["corrupt", &digest(&layer)],
    );
    assert_store_empty(&store);

    // A manifest that is not there.
    let layout = Layout::new(scratch.path().join("missing"));
    layout.write_index(vec![json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest(b"nothing"),
        "size": 7,
    })]);
    expect_config_error(store.import("app", &layout.dir), &["missing"]);
    assert_store_empty(&store);

    // A digest that would be a path.
    let layout = Layout::new(scratch.path().join("traversal"));
    layout.write_index(vec![json!({
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:../../../../etc/passwd",
        "size": 7,
    })]);
    expect_config_error(store.import("app", &layout.dir), &["only sha256"]);
    assert_store_empty(&store);
}

/// Escapes that need two layers: a symlink planted by a lower layer, used by an upper
/// layer's file or whiteout.
#[test]
fn layers_cannot_write_or_delete_through_a_symlink_planted_below() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let outside = scratch.path().join("outside");
    write_file(&outside.join("victim"), b"safe", 0o644);
    let out = outside.to_str().unwrap();
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        ("file", vec![file("etc/passwd", b"x", 0o644)], "etc/passwd"),
        (
            "whiteout",
            vec![file("etc/.wh.victim", b"", 0o644)],
            "etc/.wh.victim",
        ),
        (
            "opaque",
            vec![file("etc/.wh..wh..opq", b"", 0o644)],
            "etc/.wh..wh..opq",
        ),
        ("whiteout of ..", vec![file(".wh..", b"", 0o644)], ".wh.."),
    ];
    for (case, upper, name) in cases {
        let layout = Layout::new(scratch.path().join(format!("layout-{case}")));
        let lower = tar_bytes(&[symlink_entry("etc", out)]);
        let manifest = layout.image(
            &empty_config(),
            &[(LAYER_TAR, lower), (LAYER_TAR, tar_bytes(&upper))],
        );
        layout.write_index(vec![manifest]);
        let message = expect_config_error(store.import("evil", &layout.dir), &[name, "layer 2/2"]);
        eprintln!("{case}: {message}");
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"safe", "{case}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "{case}");
        assert_store_empty(&store);
    }
}

// ---- replacing, removing, pruning --------------------------------------------------------

#[test]
fn reimport_replaces_atomically_and_the_old_rootfs_stays_until_pruned() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let v1 = scratch.path().join("v1");
    let v2 = scratch.path().join("v2");
    write_file(&v1.join("version"), b"1", 0o644);
    write_file(&v2.join("version"), b"2", 0o644);

    let old = store.import("app:latest", &v1).unwrap();
    let old_file = old.rootfs.join("version");

    // Readers running during re-imports always find a whole image, old or new.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) || reads == 0 {
                let image = store.get("app").unwrap().expect("reference vanished");
                let version = fs::read(image.rootfs.join("version")).unwrap();
                assert!(version == b"1" || version == b"2", "{version:?}");
                reads += 1;
            }
            reads
        })
    };
    for round in 0..6 {
        let source = if round % 2 == 0 { &v2 } else { &v1 };
        store.import("app", source).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let new = store.import("docker.io/library/app", &v2).unwrap();

    assert_ne!(new.id, old.id);
    assert_ne!(new.rootfs, old.rootfs);
    assert_eq!(store.get("app").unwrap().unwrap().rootfs, new.rootfs);
    assert_eq!(store.list().unwrap().len(), 1);
    // A container started from the old image still has its files.
    assert_eq!(fs::read(&old_file).unwrap(), b"1");
    assert_eq!(fs::read(new.rootfs.join("version")).unwrap(), b"2");

    // In use: kept.
    assert!(store.prune(&[old.id.as_str()]).unwrap().is_empty());
    assert_eq!(fs::read(&old_file).unwrap(), b"1");
    // Free: deleted; the referenced one stays.
    assert_eq!(store.prune(&[]).unwrap(), vec![old.id.clone()]);
    assert!(!old.rootfs.exists());
    assert_eq!(fs::read(new.rootfs.join("version")).unwrap(), b"2");

    // remove forgets the reference; the rootfs goes with the next prune.
    assert_eq!(
        store.remove("app:latest").unwrap().map(|i| i.id),
        Some(new.id.clone())
    );
    assert_eq!(store.get("app").unwrap(), None);
    assert_eq!(store.remove("app").unwrap(), None);
    assert!(new.rootfs.exists());
    assert_eq!(store.prune(&[]).unwrap(), vec![new.id]);
    assert_store_empty(&store);
}

#[test]
fn what_an_interrupted_import_left_is_removed_on_open() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    // A pid above pid_max can never be alive: an import that died.
    let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead = store.root().join(format!("tmp/import-{}-0", pid_max + 1));
    write_file(&dead.join("rootfs/bin/half"), b"half", 0o755);
    fs::set_permissions(dead.join("rootfs/bin"), fs::Permissions::from_mode(0o555)).unwrap();
    // This process is alive: its temporaries are imports in progress and must stay.
    let live = store
        .root()
        .join(format!("tmp/import-{}-999999", std::process::id()));
    fs::create_dir_all(&live).unwrap();

    let reopened = ImageStore::open(store.root()).unwrap();
    assert!(!dead.exists());
    assert!(live.exists());
    fs::remove_dir(&live).unwrap();
    assert_store_empty(&reopened);
}

// ---- references --------------------------------------------------------------------------

#[test]
fn references_follow_dockers_grammar_and_normalisation() {
    let long_tag = "t".repeat(128);
    let valid: &[(&str, &str)] = &[
        ("busybox", "busybox:latest"),
        ("busybox:1.36", "busybox:1.36"),
        ("library/busybox", "busybox:latest"),
        ("docker.io/busybox", "busybox:latest"),
        ("docker.io/library/busybox:1.36", "busybox:1.36"),
        ("index.docker.io/library/busybox", "busybox:latest"),
        ("docker.io/myorg/app:v1", "myorg/app:v1"),
        ("docker.io/library/a/b", "library/a/b:latest"),
        ("localhost/app", "localhost/app:latest"),
        (
            "localhost:5000/team/app:v1.2.3-rc_1",
            "localhost:5000/team/app:v1.2.3-rc_1",
        ),
        ("localhost:5000", "localhost:5000"),
        (
            "registry.example.com/a/b/c:TAG_1",
            "registry.example.com/a/b/c:TAG_1",
        ),
        (
            "Registry.Example.com/app",
            "Registry.Example.com/app:latest",
        ),
        ("192.168.1.10:5000/app", "192.168.1.10:5000/app:latest"),
        ("[::1]:5000/app:v1", "[::1]:5000/app:v1"),
        ("org/a-b__c.d_e/f--g", "org/a-b__c.d_e/f--g:latest"),
        ("app:_private", "app:_private"),
    ];
    for (text, normal) in valid {
        let reference =
            Reference::parse(text).unwrap_or_else(|err| panic!("{text:?} should be valid: {err}"));
        assert_eq!(reference.to_string(), *normal, "{text:?}");
    }
    let with_long_tag = Reference::parse(&format!("app:{long_tag}")).unwrap();
    assert_eq!(with_long_tag.tag(), long_tag);
    assert_eq!(Reference::parse("busybox").unwrap().name(), "busybox");

    let hex = "a".repeat(64);
    let invalid: &[(String, &str)] = &[
        (String::new(), "empty"),
        ("Busybox".into(), "invalid name"),
        ("org/Busybox".into(), "invalid name"),
        ("busybox:".into(), "invalid tag"),
        ("busybox:-x".into(), "invalid tag"),
        ("busybox:.x".into(), "invalid tag"),
        (format!("busybox:{long_tag}t"), "invalid tag"),
        ("busybox:a/b".into(), "registry host"),
        (format!("busybox@sha256:{hex}"), "digest"),
        (format!("busybox:1@sha256:{hex}"), "digest"),
        ("bad..name".into(), "invalid name"),
        ("a___b".into(), "invalid name"),
        ("a._b".into(), "invalid name"),
        ("-app".into(), "invalid name"),
        ("app-".into(), "invalid name"),
        ("app/".into(), "invalid name"),
        ("/app".into(), "invalid name"),
        ("a//b".into(), "invalid name"),
        ("a b".into(), "invalid name"),
        ("app:with space".into(), "invalid tag"),
        ("exa_mple.com/app".into(), "registry host"),
        ("example.com:port/app".into(), "registry host"),
        ("-example.com/app".into(), "registry host"),
        ("[::g]:5000/app".into(), "registry host"),
        (hex.clone(), "hexadecimal"),
        (format!("{}/app", "a".repeat(252)), "more than 255"),
    ];
    for (text, reason) in invalid {
        let err = Reference::parse(text).expect_err(text);
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        assert!(err.to_string().contains(reason), "{text:?}: {err}");
    }
}

#[test]
fn host_is_reserved_and_never_stored() {
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let src = scratch.path().join("src");
    write_file(&src.join("etc/os-release"), b"fake", 0o644);
    for name in ["host", "host:latest", "host:v1", "docker.io/library/host"] {
        assert!(Reference::parse(name).unwrap().is_host(), "{name}");
        expect_config_error(store.import(name, &src), &["reserved"]);
    }
    assert_store_empty(&store);
    assert_eq!(store.get("host").unwrap(), None);
    // Only the bare name is special: a registry's `host` repository is an ordinary image.
    assert!(
        !Reference::parse("registry.example.com/host")
            .unwrap()
            .is_host()
    );
    assert!(store.import("registry.example.com/host", &src).is_ok());
    // Digests are refused by import too, before the source is even looked at.
    expect_config_error(
        store.import(
            &format!("app@sha256:{}", "0".repeat(64)),
            Path::new("/nonexistent"),
        ),
        &["digest"],
    );
    assert_eq!(DEFAULT_ROOT, "/var/lib/coxswain/images");
}

// ---- a real image ------------------------------------------------------------------------

#[test]
fn a_busybox_rootfs_imports_and_runs() {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI installs busybox-static: /bin/busybox must exist there"
        );
        eprintln!("skipped a_busybox_rootfs_imports_and_runs: no /bin/busybox");
        return;
    }
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let src = scratch.path().join("busybox");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::copy(busybox, src.join("bin/busybox")).unwrap();
    fs::set_permissions(src.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    for applet in ["sh", "ls", "echo", "cat"] {
        symlink("busybox", src.join("bin").join(applet)).unwrap();
    }
    fs::create_dir_all(src.join("tmp")).unwrap();
    fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();

    let image = store.import("busybox:test", &src).unwrap();
    let root = &image.rootfs;
    assert_eq!(
        fs::read(root.join("bin/busybox")).unwrap(),
        fs::read(busybox).unwrap()
    );
    assert_eq!(mode(&root.join("bin/busybox")), 0o755);
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    for applet in ["sh", "ls", "echo", "cat"] {
        assert_eq!(
            fs::read_link(root.join("bin").join(applet)).unwrap(),
            Path::new("busybox")
        );
    }
    assert_eq!(image.size_bytes, fs::metadata(busybox).unwrap().len());
    // The copy is a working binary; through a symlink busybox picks the applet by argv[0].
    let output = std::process::Command::new(root.join("bin/echo"))
        .arg("hello from the image")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout, b"hello from the image\n");
}

// ---- ownership (root) --------------------------------------------------------------------

#[test]
fn ownership_is_preserved_when_root() {
    if !support::require_root("ownership_is_preserved_when_root") {
        return;
    }
    let scratch = Scratch::new();
    let store = open_store(&scratch);
    let owner = |path: &Path| {
        let meta = fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid())
    };

    let src = scratch.path().join("src");
    write_file(&src.join("data/file"), b"x", 0o4750);
    std::os::unix::fs::chown(src.join("data/file"), Some(1234), Some(5678)).unwrap();
    // chown clears setuid: set the mode again, as an image would have it.
    fs::set_permissions(src.join("data/file"), fs::Permissions::from_mode(0o4750)).unwrap();
    std::os::unix::fs::chown(src.join("data"), Some(4321), Some(8765)).unwrap();
    symlink("file", src.join("data/link")).unwrap();
    std::os::unix::fs::lchown(src.join("data/link"), Some(1111), Some(2222)).unwrap();
    let image = store.import("owned:folder", &src).unwrap();
    assert_eq!(owner(&image.rootfs.join("data/file")), (1234, 5678));
    assert_eq!(mode(&image.rootfs.join("data/file")), 0o4750);
    assert_eq!(owner(&image.rootfs.join("data")), (4321, 8765));
    assert_eq!(owner(&image.rootfs.join("data/link")), (1111, 2222));
    assert_eq!(owner(&image.rootfs), (0, 0));

    let archive = scratch.path().join("owned.tar");
    fs::write(
        &archive,
        tar_bytes(&[
            dir("srv", 0o750).owned(2000, 3000),
            file("srv/app", b"app", 0o2755).owned(2345, 6789),
            symlink_entry("srv/link", "app").owned(7, 8),
        ]),
    )
    .unwrap();
    let image = store.import("owned:tar", &archive).unwrap();
    assert_eq!(owner(&image.rootfs.join("srv")), (2000, 3000));
    assert_eq!(owner(&image.rootfs.join("srv/app")), (2345, 6789));
    assert_eq!(mode(&image.rootfs.join("srv/app")), 0o2755);
    assert_eq!(owner(&image.rootfs.join("srv/link")), (7, 8));
}
