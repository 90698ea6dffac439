//! The node-wide image store: where containers' root filesystems come from.
//!
//! `coxswain image import NAME:TAG PATH` lands in [`ImageStore::import`], which takes a root
//! filesystem folder, a tar of one (plain or gzip), an OCI image layout directory, or an OCI
//! layout in a tar (`skopeo copy ... oci-archive:`, `docker save` of Docker 25 and later). The
//! store lives apart from any `--data` dir (default [`DEFAULT_ROOT`]) so that a fresh control
//! plane finds the images already imported. The image named [`HOST_IMAGE`] is the host's own
//! root, resolved by the runtime: the store refuses to import anything under that name.
//!
//! Layout of the store directory:
//!
//! - `rootfs/<hex>/`: one unpacked root filesystem per content, named by its digest (the
//!   manifest digest of an OCI image; for a folder or tar, the digest of the unpacked tree:
//!   paths, types, modes, owners and file contents). A directory never changes once in place.
//!   Re-importing a reference points it at another directory and leaves the old one alone,
//!   since containers may still run from it, until [`ImageStore::prune`] is told it is free;
//! - `index.json`: references (`busybox:latest`) with their digest and image config, replaced
//!   as a whole (temp file, fsync, rename) so that readers never see half of it;
//! - `tmp/`: imports in progress. An import unpacks there and renames the finished tree into
//!   `rootfs/` in one step, so a failed or interrupted import never leaves a half image;
//!   leftovers of processes that died are removed by [`ImageStore::open`] and `prune`;
//! - `lock`: `flock`ed around every change of `index.json` and `rootfs/`.
//!
//! Archives are treated as hostile. Image extraction has a long record of escapes (Docker's
//! CVE-2014-6407, symlinks and hard links in a layer; containerd's CVE-2021-32760, a chmod
//! through a symlink), so no entry may be absolute or contain `..`, no entry is written
//! through a symlink that an earlier entry or layer planted (every parent is checked with
//! `lstat`, never followed), an existing symlink at an entry's own path is replaced rather
//! than written through, hard links must name a file already inside, and whiteouts obey the
//! same rules. A refused archive names the offending entry. Device nodes are skipped (the
//! runtime gives containers their `/dev`), as are extended attributes (so file capabilities
//! are lost). Ownership is applied only when running as root.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::Ipv6Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, OFlag};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil;

/// Where the node-wide store lives unless the agent is told otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/coxswain/images";

/// The image name that means "the host's root filesystem, read-only". The runtime resolves
/// it; the store refuses to hold an image of that name so that it can never be shadowed.
pub const HOST_IMAGE: &str = "host";

/// The tag of a reference that names none, as Docker and Kubernetes assume.
pub const DEFAULT_TAG: &str = "latest";

/// Docker's limit on the length of a repository name (registry host included).
pub const MAX_NAME_LEN: usize = 255;

const INDEX_FILE: &str = "index.json";
const INDEX_VERSION: u32 = 1;
const LOCK_FILE: &str = "lock";
const ROOTFS_DIR: &str = "rootfs";
const TMP_DIR: &str = "tmp";

/// Bound on the JSON documents of an OCI layout (index, manifests, config): real ones are a
/// few KiB, and they are read into memory whole.
const MAX_JSON_LEN: u64 = 4 << 20;
/// Images nest at most an index of platforms in the layout's index; more is a loop or abuse.
const MAX_INDEX_DEPTH: usize = 4;
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const WHITEOUT_PREFIX: &str = ".wh.";
/// aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): never part of an image's content.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// What the root directory of an imported folder gets: the folder itself is only a container
/// for the content (often a `mkdtemp` directory, mode 0700), and a `/` that other users cannot
/// enter would break every container running as non-root.
const ROOT_DIR_META: Meta = Meta {
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtime: None,
};
/// What a directory gets when an archive holds entries under it but not the directory itself.
const IMPLICIT_DIR_META: Meta = ROOT_DIR_META;

/// Distinguishes the temporary names of one process (the pid tells processes apart).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

// ------------------------------------------------------------------------------------------
// References

/// An image reference, `NAME[:TAG]`, checked against Docker's reference grammar and written
/// the way Docker shows names: `docker.io/library/busybox`, `library/busybox` and `busybox`
/// are all `busybox`, and a missing tag is [`DEFAULT_TAG`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    name: String,
    tag: String,
}

impl Reference {
    /// Parses `NAME[:TAG]`. The name is lowercase path components (letters and digits joined
    /// by `.`, `_`, `__` or dashes) separated by `/`, optionally after a registry host (a
    /// first component with a `.` or a `:`, or `localhost`); the tag matches
    /// `[\w][\w.-]{0,127}`. Digests (`NAME@sha256:...`) are refused for now. Fails with
    /// [`Error::Config`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Reference> {
        let invalid = |reason: &str| Error::Config {
            field: "image reference".into(),
            reason: format!("{:?} {reason}", truncate(text)),
        };
        if text.is_empty() {
            return Err(invalid("is empty"));
        }
        if text.contains('@') {
            return Err(invalid(
                "names a digest (NAME@sha256:...), which is not supported yet: import and \
                 refer to images by NAME[:TAG]",
            ));
        }
        if is_hex64(text) {
            // Docker refuses these too: they read as an image ID, not a name.
            return Err(invalid(
                "is a 64-character hexadecimal string, which would be taken for an image ID",
            ));
        }
        // The tag follows the last ':' unless a '/' comes after it (then that ':' was a
        // registry port, as in `localhost:5000/app`).
        let (name, tag) = match text.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (text, DEFAULT_TAG),
        };
        if !valid_tag(tag) {
            return Err(invalid(&format!(
                "has an invalid tag {:?}: a tag is 1 to 128 letters, digits, '_', '.' or '-', \
                 and starts with a letter, digit or '_'",
                truncate(tag)
            )));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(&format!(
                "has a name of {} characters, more than {MAX_NAME_LEN}",
                name.len()
            )));
        }
        let (domain, path) = split_domain(name);
        if let Some(domain) = domain
            && !valid_domain(domain)
        {
            return Err(invalid(&format!(
                "has an invalid registry host {:?}",
                truncate(domain)
            )));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(invalid(
                "has an invalid name: it must be lowercase letters and digits, separated by \
                 '.', '_', '__' or dashes within a component and by '/' between components",
            ));
        }
        Ok(Reference {
            name: familiar_name(domain, path),
            tag: tag.to_string(),
        })
    }

    /// The name, in Docker's short form (`busybox`, `myorg/app`, `registry:5000/team/app`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether this names the host's root filesystem rather than a stored image.
    pub fn is_host(&self) -> bool {
        self.name == HOST_IMAGE
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// Splits off the registry host the way Docker does: the first component is a host if it has
/// a `.` or a `:`, is `localhost`, or has uppercase letters (which a path may not).
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Docker's familiar form: Docker Hub's host and its `library/` namespace are left out.
fn familiar_name(domain: Option<&str>, path: &str) -> String {
    match domain {
        Some(domain) if domain != "docker.io" && domain != "index.docker.io" => {
            format!("{domain}/{path}")
        }
        _ => match path.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => path.to_string(),
        },
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = tag.bytes();
    tag.len() <= 128
        && bytes.next().is_some_and(word)
        && bytes.all(|b| word(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while bytes.get(i).is_some_and(alnum) {
            i += 1;
        }
        if i == start {
            // Empty component, or a separator at the start, end or next to another.
            return false;
        }
        match bytes.get(i) {
            None => return true,
            Some(b'.') => i += 1,
            Some(b'_') => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            Some(b'-') => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            Some(_) => return false,
        }
    }
}

/// `host[:port]`, the host a DNS name of `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` labels or
/// a bracketed IPv6 address.
fn valid_domain(domain: &str) -> bool {
    let valid_port = |port: &str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return port_ok && v6.parse::<Ipv6Addr>().is_ok();
    }
    let (host, port_ok) = match domain.split_once(':') {
        Some((host, port)) => (host, valid_port(port)),
        None => (domain, true),
    };
    let valid_label = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    port_ok && host.split('.').all(valid_label)
}

// ------------------------------------------------------------------------------------------
// Images

/// What an image says about how to run it (the OCI image config's `Entrypoint`, `Cmd`, `Env`,
/// `WorkingDir` and `User`). Empty or absent for a folder or tar, which carry no config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs, in the image's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as the image config writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ImageConfig {
    /// The argv a container runs, from its `command` and `args` and this image, with
    /// Kubernetes' rules: a command replaces both the entrypoint and the image's cmd; args
    /// alone replace only the image's cmd.
    pub fn argv(&self, command: &[String], args: &[String]) -> Vec<String> {
        let (head, tail) = match (command.is_empty(), args.is_empty()) {
            (false, _) => (command, args),
            (true, false) => (self.entrypoint.as_slice(), args),
            (true, true) => (self.entrypoint.as_slice(), self.cmd.as_slice()),
        };
        head.iter().chain(tail).cloned().collect()
    }
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// `NAME:TAG`, normalised (see [`Reference`]).
    pub reference: String,
    /// `sha256:<hex>`: the manifest digest of an OCI image, or the digest of the unpacked tree
    /// of a folder or tar. Also names the rootfs directory, so two references to one content
    /// share it.
    pub id: String,
    /// The unpacked root filesystem. Never modified in place while the store holds it.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// Total size of the regular files (each hard-linked file counted once).
    pub size_bytes: u64,
    /// When this reference was imported, RFC 3339 in UTC, as Kubernetes writes times.
    pub imported_at: String,
}

/// One reference as `index.json` records it. The rootfs path is derived from the id (and
/// the store's root) when read, so that the store directory may be moved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    reference: String,
    id: String,
    #[serde(default)]
    config: ImageConfig,
    size_bytes: u64,
    imported_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: Vec<Record>,
}

/// What an import produced before it is committed to the store.
#[derive(Debug)]
struct Unpacked {
    id: String,
    config: ImageConfig,
    size_bytes: u64,
}

// ------------------------------------------------------------------------------------------
// The store

/// The node-wide image store in one directory. Cheap to clone and share (`&self`
/// everywhere); several stores, in one process or many, may use one directory at once.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if missing) the store in `root`, and removes what imports of dead
    /// processes left in its `tmp/`. Fails with [`Error::State`] if `index.json` is not one
    /// this store writes.
    pub fn open(root: &Path) -> Result<ImageStore> {
        // Absolute, because rootfs paths handed to the runtime must not depend on its cwd.
        let root = std::path::absolute(root)
            .map_err(Error::io("resolving the image store directory", root))?;
        let store = ImageStore { root };
        for dir in [store.root.clone(), store.rootfs_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(Error::io("creating the image store", &dir))?;
        }
        store.read_index()?;
        {
            let _lock = store.lock()?;
            store.remove_stale_temps();
        }
        tracing::debug!(root = %store.root.display(), "opened image store");
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports `source` (a rootfs folder, a tar or gzip tar of one, an OCI image layout, or
    /// an OCI layout in a tar) as `reference` (`NAME[:TAG]`), replacing what that reference
    /// named before. The old rootfs stays in place for containers running from it.
    ///
    /// Fails with [`Error::Config`] for an invalid or reserved reference and for a source
    /// that is unusable or unsafe (naming the archive entry or blob), and with
    /// [`Error::Io`] when reading the source or writing the store fails. Nothing of a failed
    /// import stays in the store.
    pub fn import(&self, reference: &str, source: &Path) -> Result<Image> {
        let reference = Reference::parse(reference)?;
        if reference.is_host() {
            return Err(Error::Config {
                field: "image reference".into(),
                reason: format!(
                    "{reference}: the name {HOST_IMAGE:?} is reserved for the host's root \
                     filesystem and cannot be imported"
                ),
            });
        }
        let metadata =
            fs::metadata(source).map_err(Error::io("reading the image source", source))?;
        let staging = TempTree::create(&self.tmp_dir(), "import")?;
        let rootfs = staging.path().join("rootfs");
        let mut unpacker = Unpacker::new(&rootfs, source)?;
        let unpacked = if metadata.is_dir() {
            if is_oci_layout(source) {
                import_oci(source, source, &reference, unpacker)?
            } else {
                self.check_not_inside(source)?;
                copy_folder(source, &mut unpacker)?;
                unpacker.finish_content()?
            }
        } else if metadata.is_file() {
            unpack_tar_file(source, &mut unpacker)?;
            if is_oci_layout(&rootfs) {
                // An OCI archive: what was unpacked is the layout, not the image.
                drop(unpacker);
                let layout = staging.path().join("layout");
                fs::rename(&rootfs, &layout)
                    .map_err(Error::io("setting aside an unpacked OCI archive", &rootfs))?;
                import_oci(&layout, source, &reference, Unpacker::new(&rootfs, source)?)?
            } else if is_legacy_docker_archive(&rootfs) {
                return Err(bad_source(
                    source,
                    "is a `docker save` archive of the format before Docker 25 (manifest.json, \
                     no oci-layout), not a root filesystem: save it with Docker 25 or later, or \
                     convert it with `skopeo copy docker-archive:IN oci-archive:OUT`",
                ));
            } else {
                unpacker.finish_content()?
            }
        } else {
            return Err(bad_source(
                source,
                "is neither a directory nor a file (expected a rootfs folder, a tar or an OCI \
                 image layout)",
            ));
        };
        // One syncfs instead of an fsync per file: after the rename below the image is
        // visible, so its content must already be durable (a crash must not leave an image
        // of empty files), and this is the only write barrier it needs.
        let dir = File::open(&rootfs).map_err(Error::io("opening the unpacked image", &rootfs))?;
        nix::unistd::syncfs(&dir).map_err(Error::sys("syncing the unpacked image to disk"))?;
        let image = self.commit(&reference, unpacked, &rootfs)?;
        tracing::info!(
            reference = %image.reference,
            id = %image.id,
            source = %source.display(),
            size_bytes = image.size_bytes,
            "imported image"
        );
        Ok(image)
    }

    /// The image `reference` names, if the store has it. `host` is never stored, so it is
    /// `None` here; the runtime resolves it.
    pub fn get(&self, reference: &str) -> Result<Option<Image>> {
        let reference = Reference::parse(reference)?.to_string();
        Ok(self
            .read_index()?
            .images
            .into_iter()
            .find(|record| record.reference == reference)
            .map(|record| self.image(record)))
    }

    /// Every image, ordered by reference.
    pub fn list(&self) -> Result<Vec<Image>> {
        Ok(self
            .read_index()?
            .images
            .into_iter()
            .map(|record| self.image(record))
            .collect())
    }

    /// Forgets `reference` and returns what it named, or `None` if the store did not have
    /// it. The rootfs stays until [`ImageStore::prune`], since a container may run from it.
    pub fn remove(&self, reference: &str) -> Result<Option<Image>> {
        let reference = Reference::parse(reference)?.to_string();
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let Some(position) = index
            .images
            .iter()
            .position(|record| record.reference == reference)
        else {
            return Ok(None);
        };
        let record = index.images.remove(position);
        self.write_index(&index)?;
        tracing::info!(%reference, id = %record.id, "removed image reference");
        Ok(Some(self.image(record)))
    }

    /// Deletes every rootfs that no reference names and that is not in `in_use` (the ids of
    /// images that containers still run from), and what dead imports left in `tmp/`. Returns
    /// the ids deleted.
    pub fn prune(&self, in_use: &[&str]) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        let index = self.read_index()?;
        let keep: HashSet<&str> = index
            .images
            .iter()
            .map(|record| record.id.as_str())
            .chain(in_use.iter().copied())
            .collect();
        let rootfs_dir = self.rootfs_dir();
        let read_dir =
            fs::read_dir(&rootfs_dir).map_err(Error::io("listing image roots", &rootfs_dir))?;
        let mut removed = Vec::new();
        for dirent in read_dir {
            let dirent = dirent.map_err(Error::io("listing image roots", &rootfs_dir))?;
            let name = dirent.file_name();
            let Some(hex) = name.to_str().filter(|name| is_hex64(name)) else {
                tracing::warn!(path = %dirent.path().display(), "leaving a stray entry in the image store alone");
                continue;
            };
            let id = format!("sha256:{hex}");
            if keep.contains(id.as_str()) {
                continue;
            }
            // Moved out first: deleting takes a while, and a half-deleted tree must never be
            // visible under an id (an import of the same content would reuse it).
            let trash = self.tmp_dir().join(temp_name("trash"));
            let path = dirent.path();
            fs::rename(&path, &trash).map_err(Error::io("moving an unused image root", &path))?;
            remove_tree(&trash).map_err(Error::io("deleting an unused image root", &trash))?;
            tracing::info!(%id, "pruned unused image root");
            removed.push(id);
        }
        self.remove_stale_temps();
        Ok(removed)
    }

    fn rootfs_dir(&self) -> PathBuf {
        self.root.join(ROOTFS_DIR)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn image(&self, record: Record) -> Image {
        let hex = record.id.strip_prefix("sha256:").unwrap_or(&record.id);
        Image {
            rootfs: self.rootfs_dir().join(hex),
            reference: record.reference,
            id: record.id,
            config: record.config,
            size_bytes: record.size_bytes,
            imported_at: record.imported_at,
        }
    }

    /// Puts an unpacked rootfs in place under its id (or keeps the one already there, whose
    /// content is the same) and points `reference` at it.
    fn commit(&self, reference: &Reference, unpacked: Unpacked, rootfs: &Path) -> Result<Image> {
        let Some(hex) = unpacked.id.strip_prefix("sha256:") else {
            return Err(Error::State {
                path: rootfs.to_path_buf(),
                reason: format!("unpacked image has a malformed id {:?}", unpacked.id),
            });
        };
        let _lock = self.lock()?;
        let target = self.rootfs_dir().join(hex);
        match fs::symlink_metadata(&target) {
            Ok(_) => {
                tracing::debug!(id = %unpacked.id, "content already in the store; reusing it");
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {
                fs::rename(rootfs, &target)
                    .map_err(Error::io("moving the unpacked image into place", &target))?;
                sync_dir(&self.rootfs_dir())?;
            }
            Err(err) => return Err(Error::io("checking the image root", target)(err)),
        }
        let record = Record {
            reference: reference.to_string(),
            id: unpacked.id,
            config: unpacked.config,
            size_bytes: unpacked.size_bytes,
            imported_at: rfc3339(SystemTime::now()),
        };
        let mut index = self.read_index()?;
        index
            .images
            .retain(|existing| existing.reference != record.reference);
        index.images.push(record.clone());
        index.images.sort_by(|a, b| a.reference.cmp(&b.reference));
        self.write_index(&index)?;
        Ok(self.image(record))
    }

    fn read_index(&self) -> Result<IndexFile> {
        let path = self.root.join(INDEX_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                return Ok(IndexFile {
                    version: INDEX_VERSION,
                    images: Vec::new(),
                });
            }
            Err(err) => return Err(Error::io("reading the image index", path)(err)),
        };
        let state_error = |reason: String| Error::State {
            path: path.clone(),
            reason,
        };
        let index: IndexFile = serde_json::from_str(&text)
            .map_err(|err| state_error(format!("is not an image index: {err}")))?;
        if index.version != INDEX_VERSION {
            return Err(state_error(format!(
                "has version {}, this agent reads version {INDEX_VERSION}",
                index.version
            )));
        }
        // The id becomes a path under rootfs/: only a plain digest may get there.
        if let Some(bad) = index
            .images
            .iter()
            .find(|record| !record.id.strip_prefix("sha256:").is_some_and(is_hex64))
        {
            return Err(state_error(format!(
                "image {:?} has a malformed id {:?}",
                truncate(&bad.reference),
                truncate(&bad.id)
            )));
        }
        Ok(index)
    }

    /// Replaces `index.json` whole: written to a temporary file, synced, renamed over.
    fn write_index(&self, index: &IndexFile) -> Result<()> {
        let path = self.root.join(INDEX_FILE);
        let mut json = serde_json::to_vec_pretty(index).map_err(|err| Error::State {
            path: path.clone(),
            reason: format!("cannot encode the image index: {err}"),
        })?;
        json.push(b'\n');
        let temp = TempTree(self.tmp_dir().join(temp_name("index")));
        fsutil::write_new_synced(temp.path(), &json, "a temporary image index")?;
        fs::rename(temp.path(), &path).map_err(Error::io("replacing the image index", &path))?;
        sync_dir(&self.root)
    }

    /// Takes the store's exclusive lock until the guard drops.
    fn lock(&self) -> Result<Flock<File>> {
        fsutil::lock_exclusive(&self.root.join(LOCK_FILE), "image store")
    }

    /// Removes what processes that are gone left in `tmp/` (an import killed mid-way, a
    /// prune interrupted while deleting). Best effort: a leftover only costs space.
    fn remove_stale_temps(&self) {
        let tmp = self.tmp_dir();
        let Ok(read_dir) = fs::read_dir(&tmp) else {
            return;
        };
        for dirent in read_dir.flatten() {
            let name = dirent.file_name();
            let Some(pid) = name.to_str().and_then(temp_owner) else {
                continue;
            };
            if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            let path = dirent.path();
            tracing::info!(path = %path.display(), pid, "removing what an interrupted image import left");
            if let Err(err) = remove_tree(&path) {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove a stale temporary");
            }
        }
    }

    /// Refuses a source folder that holds the store: copying it would copy the copy.
    fn check_not_inside(&self, source: &Path) -> Result<()> {
        let source_real =
            fs::canonicalize(source).map_err(Error::io("resolving the image source", source))?;
        let root_real = fs::canonicalize(&self.root)
            .map_err(Error::io("resolving the image store directory", &self.root))?;
        if root_real.starts_with(&source_real) {
            return Err(bad_source(
                source,
                format!(
                    "holds the image store itself ({}); import a folder that holds only the \
                     root filesystem",
                    self.root.display()
                ),
            ));
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Sources

/// Whether `dir` is an OCI image layout (`oci-layout` and `index.json`, as regular files).
fn is_oci_layout(dir: &Path) -> bool {
    let is_file = |name: &str| fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file());
    is_file("oci-layout") && is_file("index.json")
}

/// Whether an unpacked tar is Docker's old `docker save` format rather than a rootfs: a
/// top-level `manifest.json` and none of the directories every rootfs has.
fn is_legacy_docker_archive(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join("manifest.json")).is_ok_and(|m| m.is_file())
        && ["bin", "etc", "usr"]
            .iter()
            .all(|name| fs::symlink_metadata(dir.join(name)).is_err())
}

/// How a tar stream is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    /// Recognised but not supported (no decoder among our dependencies).
    Unsupported(&'static str),
}

fn compression(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Unsupported("zstd")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Unsupported("xz")
    } else if magic.starts_with(b"BZh") {
        Compression::Unsupported("bzip2")
    } else {
        Compression::None
    }
}

/// Feeds a possibly gzip-compressed tar stream to `unpacker`; returns its number of entries.
fn apply_tar_stream<R: Read>(
    unpacker: &mut Unpacker,
    label: &Path,
    what: &str,
    reader: R,
) -> Result<u64> {
    let mut buffered = BufReader::new(reader);
    let magic = buffered
        .fill_buf()
        .map_err(Error::io(format!("reading {what}"), label))?;
    match compression(magic) {
        Compression::Gzip => unpacker.apply_tar(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::None => unpacker.apply_tar(buffered),
        Compression::Unsupported(kind) => Err(bad_source(
            label,
            format!("{what} is {kind}-compressed; only plain and gzip tars are supported"),
        )),
    }
}

fn unpack_tar_file(source: &Path, unpacker: &mut Unpacker) -> Result<()> {
    let file = File::open(source).map_err(Error::io("opening the image source", source))?;
    let entries = apply_tar_stream(unpacker, source, "the archive", file)?;
    if entries == 0 {
        return Err(bad_source(
            source,
            "holds no entries (is it a tar archive?)",
        ));
    }
    Ok(())
}

/// Copies a rootfs folder without following any symlink in it, keeping hard links linked.
fn copy_folder(source: &Path, unpacker: &mut Unpacker) -> Result<()> {
    unpacker.put_dir("", Path::new(""), ROOT_DIR_META)?;
    // First path seen of each multiply-linked file, to link the others to it.
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir_rel) = pending.pop() {
        let dir = source.join(&dir_rel);
        let mut dirents = fs::read_dir(&dir)
            .and_then(|read_dir| read_dir.collect::<io::Result<Vec<_>>>())
            .map_err(Error::io("listing the image source", &dir))?;
        dirents.sort_by_key(fs::DirEntry::file_name);
        for dirent in dirents {
            let rel = dir_rel.join(dirent.file_name());
            let name = rel.to_string_lossy().into_owned();
            let path = dirent.path();
            let metadata = fs::symlink_metadata(&path)
                .map_err(Error::io("reading the image source", &path))?;
            let meta = Meta {
                mode: metadata.mode() & 0o7777,
                uid: metadata.uid(),
                gid: metadata.gid(),
                mtime: u64::try_from(metadata.mtime()).ok(),
            };
            let kind = metadata.file_type();
            if kind.is_dir() {
                unpacker.put_dir(&name, &rel, meta)?;
                pending.push(rel);
            } else if kind.is_file() {
                if metadata.nlink() > 1 {
                    let key = (metadata.dev(), metadata.ino());
                    if let Some(first) = linked.get(&key) {
                        unpacker.put_hardlink(&name, &rel, first)?;
                        continue;
                    }
                    linked.insert(key, rel.clone());
                }
                let mut file = OpenOptions::new()
                    .read(true)
                    .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
                    .open(&path)
                    .map_err(Error::io("reading the image source", &path))?;
                unpacker.put_file(&name, &rel, meta, &mut file)?;
            } else if kind.is_symlink() {
                let target =
                    fs::read_link(&path).map_err(Error::io("reading the image source", &path))?;
                unpacker.put_symlink(&name, &rel, &target, meta)?;
            } else if kind.is_fifo() {
                unpacker.put_fifo(&name, &rel, meta)?;
            } else if kind.is_socket() {
                unpacker.skip(&name, "a socket");
            } else {
                unpacker.skip(&name, "a device node");
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// OCI image layouts

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct OciManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
struct OciImageConfig {
    #[serde(default)]
    config: Option<OciContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct OciContainerConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OciLayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    image_layout_version: String,
}

/// Imports the image `reference` selects from the OCI layout in `layout` (`label` is what
/// error messages call the source): index → manifest → config and layers, every blob checked
/// against its digest and size, layers applied in order with whiteouts.
fn import_oci(
    layout: &Path,
    label: &Path,
    reference: &Reference,
    mut unpacker: Unpacker,
) -> Result<Unpacked> {
    let version_bytes = read_json_file(&layout.join("oci-layout"), label, "oci-layout")?;
    let version: OciLayoutFile = parse_json(&version_bytes, label, "oci-layout")?;
    if !version.image_layout_version.starts_with("1.") {
        return Err(bad_source(
            label,
            format!(
                "is an OCI image layout of version {:?}; version 1.x is supported",
                truncate(&version.image_layout_version)
            ),
        ));
    }
    let index_bytes = read_json_file(&layout.join("index.json"), label, "index.json")?;
    let index: OciIndex = parse_json(&index_bytes, label, "index.json")?;
    let (manifest_desc, manifest_bytes) = resolve_manifest(layout, label, reference, &index, 0)?;
    let manifest: OciManifest = parse_json(&manifest_bytes, label, "the image manifest")?;
    let media_type = Some(manifest_desc.media_type.as_str())
        .filter(|media_type| !media_type.is_empty())
        .or(manifest.media_type.as_deref());
    if let Some(media_type) = media_type
        && !MANIFEST_MEDIA_TYPES.contains(&media_type)
    {
        return Err(bad_source(
            label,
            format!(
                "manifest {} is a {:?}, not an image manifest",
                manifest_desc.digest,
                truncate(media_type)
            ),
        ));
    }
    let config_bytes = read_blob(layout, label, &manifest.config, "the image config")?;
    let config: OciImageConfig = parse_json(&config_bytes, label, "the image config")?;
    let count = manifest.layers.len();
    for (i, layer) in manifest.layers.iter().enumerate() {
        unpacker.begin_layer(format!("layer {}/{count} ({}): ", i + 1, layer.digest));
        apply_layer(layout, label, layer, &mut unpacker)?;
    }
    let (_, size_bytes) = unpacker.finish()?;
    let container = config.config.unwrap_or_default();
    Ok(Unpacked {
        id: manifest_desc.digest,
        config: ImageConfig {
            entrypoint: container.entrypoint.unwrap_or_default(),
            cmd: container.cmd.unwrap_or_default(),
            env: container.env.unwrap_or_default(),
            working_dir: container.working_dir.filter(|dir| !dir.is_empty()),
            user: container.user.filter(|user| !user.is_empty()),
        },
        size_bytes,
    })
}

/// Follows indexes (nested ones too) down to one image manifest; returns its descriptor and
/// its verified bytes.
fn resolve_manifest(
    layout: &Path,
    label: &Path,
    reference: &Reference,
    index: &OciIndex,
    depth: usize,
) -> Result<(Descriptor, Vec<u8>)> {
    let descriptor = choose_manifest(label, reference, &index.manifests)?;
    let bytes = read_blob(layout, label, descriptor, "manifest")?;
    let is_index = if descriptor.media_type.is_empty() {
        // Untyped descriptor: the document says what it is, or its shape does.
        let probe: serde_json::Value = parse_json(&bytes, label, "manifest")?;
        probe
            .get("mediaType")
            .and_then(serde_json::Value::as_str)
            .map_or_else(
                || probe.get("manifests").is_some(),
                |media_type| INDEX_MEDIA_TYPES.contains(&media_type),
            )
    } else {
        INDEX_MEDIA_TYPES.contains(&descriptor.media_type.as_str())
    };
    if !is_index {
        return Ok((descriptor.clone(), bytes));
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(bad_source(
            label,
            format!("image indexes nest more than {MAX_INDEX_DEPTH} deep"),
        ));
    }
    let nested: OciIndex = parse_json(&bytes, label, "image index")?;
    resolve_manifest(layout, label, reference, &nested, depth + 1)
}

/// Picks the one descriptor to follow: the only one; else the one for this host's platform
/// (as a container runtime pulling a multi-platform image does); else the one whose
/// `org.opencontainers.image.ref.name` is the reference's tag (a layout holding several tags).
fn choose_manifest<'a>(
    label: &Path,
    reference: &Reference,
    manifests: &'a [Descriptor],
) -> Result<&'a Descriptor> {
    match manifests {
        [] => return Err(bad_source(label, "the OCI index lists no manifests")),
        [only] => return Ok(only),
        _ => {}
    }
    let arch = host_architecture();
    let for_host: Vec<&Descriptor> = manifests
        .iter()
        .filter(|descriptor| {
            descriptor
                .platform
                .as_ref()
                .is_some_and(|platform| platform.os == "linux" && platform.architecture == arch)
        })
        .collect();
    if let [only] = for_host.as_slice() {
        return Ok(only);
    }
    let candidates = if for_host.is_empty() {
        manifests.iter().collect()
    } else {
        for_host
    };
    let full = reference.to_string();
    let tagged: Vec<&Descriptor> = candidates
        .into_iter()
        .filter(|descriptor| {
            descriptor
                .annotations
                .get(REF_NAME_ANNOTATION)
                .is_some_and(|name| name == reference.tag() || *name == full)
        })
        .collect();
    if let [only] = tagged.as_slice() {
        return Ok(only);
    }
    let listed: Vec<String> = manifests
        .iter()
        .map(|descriptor| {
            let platform = descriptor.platform.as_ref().map_or_else(
                || "no platform".to_string(),
                |platform| format!("{}/{}", platform.os, platform.architecture),
            );
            let name = descriptor
                .annotations
                .get(REF_NAME_ANNOTATION)
                .map_or(String::new(), |name| {
                    format!(", {REF_NAME_ANNOTATION}={name}")
                });
            format!("{} ({platform}{name})", descriptor.digest)
        })
        .collect();
    Err(bad_source(
        label,
        format!(
            "the OCI index lists {} manifests and none is the one for linux/{arch} or tagged \
             {:?}: {}",
            manifests.len(),
            reference.tag(),
            listed.join(", ")
        ),
    ))
}

/// The platform's architecture in the OCI (Go) spelling.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        other => other,
    }
}

/// Applies one layer blob, checking its digest and size over the whole blob as it is read.
/// Unpacking happens before the check completes, but into the import's private temp dir,
/// which is discarded if the blob turns out corrupt.
fn apply_layer(
    layout: &Path,
    label: &Path,
    layer: &Descriptor,
    unpacker: &mut Unpacker,
) -> Result<()> {
    let media_type = layer.media_type.as_str();
    if media_type.contains("zstd") || media_type.contains("encrypted") {
        return Err(bad_source(
            label,
            format!(
                "layer {} has media type {media_type:?}; only plain and gzip tar layers are \
                 supported",
                layer.digest
            ),
        ));
    }
    let file = open_blob(layout, label, &layer.digest, "layer")?;
    // One byte past the declared size, so that a longer blob is noticed.
    let mut hashing = HashingReader::new(file.take(layer.size.saturating_add(1)));
    let what = format!("layer {}", layer.digest);
    let applied = apply_tar_stream(unpacker, label, &what, &mut hashing);
    // Whatever the tar reader left (end-of-archive blocks, padding, the gzip trailer) still
    // belongs to the blob's digest.
    let drained = io::copy(&mut hashing, &mut io::sink());
    let (size, digest) = hashing.finish();
    if drained.is_ok() {
        // Checked before the unpack result: a corrupt blob usually also fails to unpack, and
        // "corrupt" is the true and more useful message then.
        verify_blob(label, "layer", layer, size, &digest)?;
    }
    applied?;
    drained.map_err(Error::io(format!("reading layer {}", layer.digest), label))?;
    Ok(())
}

/// Reads a JSON blob whole (bounded) and checks its digest and size.
fn read_blob(layout: &Path, label: &Path, descriptor: &Descriptor, what: &str) -> Result<Vec<u8>> {
    if descriptor.size > MAX_JSON_LEN {
        return Err(bad_source(
            label,
            format!(
                "{what} {} declares {} bytes, more than the {MAX_JSON_LEN} accepted",
                descriptor.digest, descriptor.size
            ),
        ));
    }
    let file = open_blob(layout, label, &descriptor.digest, what)?;
    let mut reader = HashingReader::new(file.take(descriptor.size.saturating_add(1)));
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(Error::io(
        format!("reading {what} {}", descriptor.digest),
        label,
    ))?;
    let (size, digest) = reader.finish();
    verify_blob(label, what, descriptor, size, &digest)?;
    Ok(bytes)
}

fn verify_blob(
    label: &Path,
    what: &str,
    descriptor: &Descriptor,
    size: u64,
    digest: &[u8; 32],
) -> Result<()> {
    let actual = format!("sha256:{}", hex(digest));
    if actual == descriptor.digest && size == descriptor.size {
        return Ok(());
    }
    Err(bad_source(
        label,
        format!(
            "{what} blob {} is corrupt or was tampered with: its content is {actual} of {size} \
             bytes, the manifest says {} bytes",
            descriptor.digest, descriptor.size
        ),
    ))
}

/// Opens `blobs/sha256/<hex>` for `digest`, refusing anything but a plain sha256 digest (the
/// digest becomes a path) and anything but a regular file (a FIFO or device in an unpacked
/// OCI archive must not hang or flood the import).
fn open_blob(layout: &Path, label: &Path, digest: &str, what: &str) -> Result<File> {
    let Some(hex) = digest.strip_prefix("sha256:").filter(|hex| is_hex64(hex)) else {
        return Err(bad_source(
            label,
            format!(
                "{what} has the digest {:?}; only sha256:<64 lowercase hex digits> is supported",
                truncate(digest)
            ),
        ));
    };
    let path = layout.join("blobs").join("sha256").join(hex);
    open_regular(&path, label, &format!("{what} {digest}"))
}

fn open_regular(path: &Path, label: &Path, what: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|err| match err.kind() {
            ErrorKind::NotFound => bad_source(label, format!("{what} is missing")),
            _ => Error::io(format!("opening {what}"), path)(err),
        })?;
    let metadata = file
        .metadata()
        .map_err(Error::io(format!("opening {what}"), path))?;
    if !metadata.is_file() {
        return Err(bad_source(label, format!("{what} is not a regular file")));
    }
    Ok(file)
}

fn read_json_file(path: &Path, label: &Path, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path, label, what)?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io(format!("reading {what}"), path))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_JSON_LEN {
        return Err(bad_source(
            label,
            format!("{what} is larger than {MAX_JSON_LEN} bytes"),
        ));
    }
    Ok(bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], label: &Path, what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|err| bad_source(label, format!("{what} is not valid: {err}")))
}

// ------------------------------------------------------------------------------------------
// Unpacking

/// Metadata of an entry as the source declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    mode: u32,
    uid: u32,
    gid: u32,
    /// Seconds since the epoch; not part of the content digest.
    mtime: Option<u64>,
}

/// What the unpacked tree holds at one path, as the source declared it: the basis of the
/// content digest of folder and tar imports, and of the size.
#[derive(Debug, Clone)]
enum Node {
    Dir(Meta),
    File {
        meta: Meta,
        size: u64,
        sha256: [u8; 32],
        /// A further name of a file counted already (a hard link).
        linked: bool,
    },
    Symlink {
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
    Fifo(Meta),
}

/// Writes a tree from entries (of a tar, a layer or a folder walk) into a private directory,
/// refusing any entry that would land outside it. Directories are created owner-writable and
/// get their declared mode, owner and mtime in [`Unpacker::finish`], so that a read-only
/// directory can still be filled and its mtime is not disturbed by what goes into it.
#[derive(Debug)]
struct Unpacker {
    root: PathBuf,
    /// The source as error messages name it.
    source: PathBuf,
    /// Prefix of error messages (which layer).
    context: String,
    /// Whether this process may set ownership (and so does).
    as_root: bool,
    /// OCI layer semantics: `.wh.` entries delete instead of being written.
    whiteouts: bool,
    nodes: BTreeMap<PathBuf, Node>,
    /// Paths the current layer wrote (and their parents): whiteouts hide only lower layers.
    layer: HashSet<PathBuf>,
}

impl Unpacker {
    fn new(root: &Path, source: &Path) -> Result<Unpacker> {
        DirBuilder::new()
            .mode(0o700)
            .create(root)
            .map_err(Error::io("creating the image root", root))?;
        let mut nodes = BTreeMap::new();
        nodes.insert(PathBuf::new(), Node::Dir(IMPLICIT_DIR_META));
        Ok(Unpacker {
            root: root.to_path_buf(),
            source: source.to_path_buf(),
            context: String::new(),
            as_root: nix::unistd::geteuid().is_root(),
            whiteouts: false,
            nodes,
            layer: HashSet::new(),
        })
    }

    /// Starts the next OCI layer.
    fn begin_layer(&mut self, context: String) {
        self.context = context;
        self.whiteouts = true;
        self.layer.clear();
    }

    /// Applies a tar stream; returns its number of entries.
    fn apply_tar<R: Read>(&mut self, reader: R) -> Result<u64> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|err| self.tar_error(err))?;
        let mut count = 0;
        for entry in entries {
            let mut entry = entry.map_err(|err| self.tar_error(err))?;
            count += 1;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions()
                || kind.is_pax_local_extensions()
                || kind.is_gnu_longname()
                || kind.is_gnu_longlink()
            {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = entry
                .path()
                .map_err(|err| self.tar_error(err))?
                .into_owned();
            let rel = self.relative(&name, &path)?;
            if self.whiteouts && self.whiteout(&name, &rel)? {
                continue;
            }
            let meta = self.header_meta(&name, entry.header())?;
            let link = entry
                .link_name()
                .map_err(|err| self.tar_error(err))?
                .map(Cow::into_owned);
            match kind {
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => self.put_file(&name, &rel, meta, &mut entry)?,
                tar::EntryType::Directory => self.put_dir(&name, &rel, meta)?,
                tar::EntryType::Symlink => {
                    let Some(target) = link else {
                        return Err(self.refuse(&name, "is a symlink without a target"));
                    };
                    self.put_symlink(&name, &rel, &target, meta)?;
                }
                tar::EntryType::Link => {
                    let Some(target) = link else {
                        return Err(self.refuse(&name, "is a hard link without a target"));
                    };
                    let target_rel = clean_relative(&target).map_err(|why| {
                        self.refuse(&name, format!("is a hard link to {target:?}, which {why}"))
                    })?;
                    self.put_hardlink(&name, &rel, &target_rel)?;
                }
                tar::EntryType::Fifo => self.put_fifo(&name, &rel, meta)?,
                tar::EntryType::Char | tar::EntryType::Block => self.skip(&name, "a device node"),
                other => self.skip(&name, &format!("an entry of unsupported type {other:?}")),
            }
        }
        Ok(count)
    }

    /// The content digest of the tree and its size, once everything is applied.
    fn finish_content(self) -> Result<Unpacked> {
        let (id, size_bytes) = self.finish()?;
        Ok(Unpacked {
            id,
            config: ImageConfig::default(),
            size_bytes,
        })
    }

    /// Gives every directory its declared metadata (deepest first, so that a parent's mtime
    /// and mode come after its children's) and returns the tree's digest and size.
    fn finish(self) -> Result<(String, u64)> {
        for (rel, node) in self.nodes.iter().rev() {
            let Node::Dir(meta) = node else {
                continue;
            };
            let path = self.root.join(rel);
            let dir = match OpenOptions::new()
                .read(true)
                .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
                .open(&path)
            {
                Ok(dir) => dir,
                Err(err) => {
                    return Err(Error::io("setting a directory's metadata", path)(err));
                }
            };
            if let Some(mtime) = meta.mtime
                && let Err(err) = dir.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
            {
                tracing::debug!(path = %path.display(), error = %err, "cannot set a directory's mtime");
            }
            if self.as_root {
                std::os::unix::fs::fchown(&dir, Some(meta.uid), Some(meta.gid))
                    .map_err(Error::io("setting a directory's owner", &path))?;
            }
            dir.set_permissions(fs::Permissions::from_mode(meta.mode))
                .map_err(Error::io("setting a directory's mode", &path))?;
        }
        Ok(self.digest())
    }

    fn digest(&self) -> (String, u64) {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        for (rel, node) in &self.nodes {
            hasher.update(rel.as_os_str().as_bytes());
            hasher.update([0]);
            let line = match node {
                Node::Dir(meta) => format!("d {:o} {} {}\n", meta.mode, meta.uid, meta.gid),
                Node::File {
                    meta,
                    size: file_size,
                    sha256,
                    linked,
                } => {
                    if !linked {
                        size = size.saturating_add(*file_size);
                    }
                    format!(
                        "f {:o} {} {} {file_size} {} {linked}\n",
                        meta.mode,
                        meta.uid,
                        meta.gid,
                        hex(sha256)
                    )
                }
                Node::Symlink { target, uid, gid } => {
                    let target = target.as_os_str().as_bytes();
                    // Length-prefixed: a target may hold any byte but NUL.
                    hasher.update(format!("l {uid} {gid} {} ", target.len()));
                    hasher.update(target);
                    "\n".to_string()
                }
                Node::Fifo(meta) => format!("p {:o} {} {}\n", meta.mode, meta.uid, meta.gid),
            };
            hasher.update(line);
        }
        (format!("sha256:{}", hex(&hasher.finalize())), size)
    }

    fn put_dir(&mut self, name: &str, rel: &Path, meta: Meta) -> Result<()> {
        if rel.as_os_str().is_empty() {
            // The archive's `./`: the image root's own metadata.
            self.nodes.insert(PathBuf::new(), Node::Dir(meta));
            return Ok(());
        }
        let path = self.prepare(name, rel)?;
        if !self.clear(name, rel, &path, true)? {
            DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(self.io_error(name, &path))?;
        }
        self.record(rel, Node::Dir(meta));
        Ok(())
    }

    fn put_file(&mut self, name: &str, rel: &Path, meta: Meta, data: &mut dyn Read) -> Result<()> {
        let path = self.prepare_leaf(name, rel)?;
        // create_new is O_EXCL: it never opens an existing file, nor follows a symlink.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(self.io_error(name, &path))?;
        let mut writer = HashingWriter {
            inner: &mut file,
            hasher: Sha256::new(),
            written: 0,
        };
        io::copy(data, &mut writer).map_err(self.io_error(name, &path))?;
        let size = writer.written;
        let sha256: [u8; 32] = writer.hasher.finalize().into();
        if let Some(mtime) = meta.mtime {
            file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
                .map_err(self.io_error(name, &path))?;
        }
        // Owner before mode: chown clears setuid and setgid bits.
        if self.as_root {
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                .map_err(self.io_error(name, &path))?;
        }
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(self.io_error(name, &path))?;
        self.record(
            rel,
            Node::File {
                meta,
                size,
                sha256,
                linked: false,
            },
        );
        Ok(())
    }

    fn put_symlink(&mut self, name: &str, rel: &Path, target: &Path, meta: Meta) -> Result<()> {
        let path = self.prepare_leaf(name, rel)?;
        // The target is content, never followed here: it means something only inside the
        // container, where the rootfs is `/`.
        std::os::unix::fs::symlink(target, &path).map_err(self.io_error(name, &path))?;
        if self.as_root {
            std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))
                .map_err(self.io_error(name, &path))?;
        }
        self.record(
            rel,
            Node::Symlink {
                target: target.to_path_buf(),
                uid: meta.uid,
                gid: meta.gid,
            },
        );
        Ok(())
    }

    fn put_hardlink(&mut self, name: &str, rel: &Path, target: &Path) -> Result<()> {
        if rel == target {
            // A link to itself: the name already holds that file.
            return Ok(());
        }
        if target.as_os_str().is_empty() || !self.parents_are_dirs(name, target)? {
            return Err(self.refuse(
                name,
                format!("is a hard link to {target:?}, which is not a file in the image"),
            ));
        }
        let target_path = self.root.join(target);
        let node = match (fs::symlink_metadata(&target_path), self.nodes.get(target)) {
            (Ok(metadata), Some(node)) if !metadata.is_dir() => node.clone(),
            _ => {
                return Err(self.refuse(
                    name,
                    format!("is a hard link to {target:?}, which is not a file in the image"),
                ));
            }
        };
        let path = self.prepare_leaf(name, rel)?;
        // link(2) does not follow a symlink at the target: linking one links the symlink.
        fs::hard_link(&target_path, &path).map_err(self.io_error(name, &path))?;
        let node = match node {
            Node::File {
                meta, size, sha256, ..
            } => Node::File {
                meta,
                size,
                sha256,
                linked: true,
            },
            other => other,
        };
        self.record(rel, node);
        Ok(())
    }

    fn put_fifo(&mut self, name: &str, rel: &Path, meta: Meta) -> Result<()> {
        let path = self.prepare_leaf(name, rel)?;
        nix::unistd::mkfifo(
            path.as_path(),
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(|errno| self.io_error(name, &path)(errno.into()))?;
        if self.as_root {
            std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid))
                .map_err(self.io_error(name, &path))?;
        }
        // The path is the FIFO just made (mkfifo never follows a symlink), so chmod is safe.
        fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode))
            .map_err(self.io_error(name, &path))?;
        self.record(rel, Node::Fifo(meta));
        Ok(())
    }

    fn skip(&self, name: &str, what: &str) {
        tracing::warn!(
            source = %self.source.display(),
            entry = name,
            "{}skipping {what}: images hold files, directories, links and FIFOs only (the \
             runtime gives containers their /dev)",
            self.context
        );
    }

    /// Handles a whiteout entry; `false` if `rel` is not one.
    fn whiteout(&mut self, name: &str, rel: &Path) -> Result<bool> {
        let Some(file_name) = rel.file_name().and_then(|file_name| file_name.to_str()) else {
            return Ok(false);
        };
        let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(false);
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if file_name == OPAQUE_WHITEOUT {
            if self.parents_are_dirs(name, rel)? {
                self.clear_lower(parent)?;
            }
            return Ok(true);
        }
        if file_name.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(true);
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(self.refuse(name, "is a whiteout that names no file in its directory"));
        }
        let target = parent.join(hidden);
        if self.layer.contains(&target) || !self.parents_are_dirs(name, &target)? {
            return Ok(true);
        }
        let path = self.root.join(&target);
        match fs::symlink_metadata(&path) {
            Ok(metadata) => {
                remove_entry(&path, &metadata).map_err(self.io_error(name, &path))?;
                self.forget(&target);
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(self.io_error(name, &path)(err)),
        }
        Ok(true)
    }

    /// An opaque directory: removes everything under `dir` that lower layers put there,
    /// keeping what this layer wrote (the marker may come before or after it).
    fn clear_lower(&mut self, dir: &Path) -> Result<()> {
        let path = self.root.join(dir);
        let children: Vec<(PathBuf, bool)> = fs::read_dir(&path)
            .and_then(|read_dir| {
                read_dir
                    .map(|dirent| {
                        let dirent = dirent?;
                        Ok((dir.join(dirent.file_name()), dirent.file_type()?.is_dir()))
                    })
                    .collect()
            })
            .map_err(Error::io("clearing an opaque directory", &path))?;
        for (child, is_dir) in children {
            if !self.layer.contains(&child) {
                let child_path = self.root.join(&child);
                let metadata = fs::symlink_metadata(&child_path)
                    .map_err(Error::io("clearing an opaque directory", &child_path))?;
                remove_entry(&child_path, &metadata)
                    .map_err(Error::io("clearing an opaque directory", &child_path))?;
                self.forget(&child);
            } else if is_dir {
                self.clear_lower(&child)?;
            }
        }
        Ok(())
    }

    /// [`Unpacker::prepare`] for anything but a directory, which can never be the root and
    /// replaces whatever is at its path.
    fn prepare_leaf(&mut self, name: &str, rel: &Path) -> Result<PathBuf> {
        if rel.as_os_str().is_empty() {
            return Err(self.refuse(name, "would replace the image root"));
        }
        let path = self.prepare(name, rel)?;
        self.clear(name, rel, &path, false)?;
        Ok(path)
    }

    /// Makes sure every parent of `rel` is a real directory inside the root, creating missing
    /// ones, and refuses the entry if one is a symlink (an earlier entry or layer may have
    /// planted it to point anywhere) or not a directory. Returns `rel`'s full path.
    fn prepare(&mut self, name: &str, rel: &Path) -> Result<PathBuf> {
        let mut current = PathBuf::new();
        for component in rel.parent().into_iter().flat_map(Path::components) {
            current.push(component);
            let path = self.root.join(&current);
            match fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    return Err(self.through_symlink(name, &current));
                }
                Ok(_) => {
                    return Err(
                        self.refuse(name, format!("lies under {current:?}, a non-directory"))
                    );
                }
                Err(err) if err.kind() == ErrorKind::NotFound => {
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(self.io_error(name, &path))?;
                    self.nodes
                        .insert(current.clone(), Node::Dir(IMPLICIT_DIR_META));
                }
                Err(err) => return Err(self.io_error(name, &path)(err)),
            }
            self.layer.insert(current.clone());
        }
        Ok(self.root.join(rel))
    }

    /// Whether every parent of `rel` exists as a real directory, without creating any;
    /// refuses the entry if one is a symlink.
    fn parents_are_dirs(&self, name: &str, rel: &Path) -> Result<bool> {
        let mut current = PathBuf::new();
        for component in rel.parent().into_iter().flat_map(Path::components) {
            current.push(component);
            let path = self.root.join(&current);
            match fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    return Err(self.through_symlink(name, &current));
                }
                Ok(_) => return Ok(false),
                Err(err) if err.kind() == ErrorKind::NotFound => return Ok(false),
                Err(err) => return Err(self.io_error(name, &path)(err)),
            }
        }
        Ok(true)
    }

    /// Removes what is at `path` unless it is a directory and `keep_dir` (a directory entry
    /// over an existing directory merges into it). Returns whether a directory was kept.
    fn clear(&mut self, name: &str, rel: &Path, path: &Path, keep_dir: bool) -> Result<bool> {
        match fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() && keep_dir => Ok(true),
            Ok(metadata) => {
                // A symlink is unlinked, never followed: this is what keeps a planted link
                // from redirecting the write.
                remove_entry(path, &metadata).map_err(self.io_error(name, path))?;
                self.forget(rel);
                Ok(false)
            }
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
            Err(err) => Err(self.io_error(name, path)(err)),
        }
    }

    fn record(&mut self, rel: &Path, node: Node) {
        self.nodes.insert(rel.to_path_buf(), node);
        self.layer.insert(rel.to_path_buf());
    }

    /// Drops `rel` and everything under it from the tree's record. Descendants sort right
    /// after their ancestor (paths compare component by component).
    fn forget(&mut self, rel: &Path) {
        let gone: Vec<PathBuf> = self
            .nodes
            .range(rel.to_path_buf()..)
            .take_while(|(path, _)| path.starts_with(rel))
            .map(|(path, _)| path.clone())
            .collect();
        for path in gone {
            self.nodes.remove(&path);
        }
    }

    fn relative(&self, name: &str, path: &Path) -> Result<PathBuf> {
        clean_relative(path).map_err(|why| self.refuse(name, why))
    }

    fn header_meta(&self, name: &str, header: &tar::Header) -> Result<Meta> {
        let mode = header
            .mode()
            .map_err(|err| self.refuse(name, format!("has an unreadable mode: {err}")))?;
        let id = |value: io::Result<u64>, what: &str| {
            value
                .ok()
                .and_then(|value| u32::try_from(value).ok())
                .ok_or_else(|| self.refuse(name, format!("has an unreadable or too large {what}")))
        };
        Ok(Meta {
            mode: mode & 0o7777,
            uid: id(header.uid(), "uid")?,
            gid: id(header.gid(), "gid")?,
            mtime: header.mtime().ok(),
        })
    }

    fn refuse(&self, name: &str, why: impl fmt::Display) -> Error {
        bad_source(
            &self.source,
            format!("{}entry {:?} {why}", self.context, truncate(name)),
        )
    }

    fn through_symlink(&self, name: &str, symlink: &Path) -> Error {
        self.refuse(
            name,
            format!(
                "would be written through the symlink {symlink:?} (an earlier entry or layer \
                 put it there; following it could write outside the image)"
            ),
        )
    }

    fn io_error(&self, name: &str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
        Error::io(
            format!("{}unpacking entry {:?}", self.context, truncate(name)),
            path.to_path_buf(),
        )
    }

    fn tar_error(&self, err: io::Error) -> Error {
        Error::io(
            format!("{}reading the tar archive", self.context),
            &self.source,
        )(err)
    }
}

/// An archive path as a plain relative path, or why it is not one.
fn clean_relative(path: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("contains `..`, which could climb out of the image");
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("is an absolute path, which could land outside the image");
            }
        }
    }
    Ok(rel)
}

/// Removes a file, symlink or FIFO (unlinked, never followed) or a whole directory.
fn remove_entry(path: &Path, metadata: &fs::Metadata) -> io::Result<()> {
    if metadata.is_dir() {
        // std's remove_dir_all does not follow symlinks inside the tree (CVE-2022-21658).
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

// ------------------------------------------------------------------------------------------
// Helpers

fn bad_source(source: &Path, reason: impl Into<String>) -> Error {
    Error::Config {
        field: format!("image source {}", source.display()),
        reason: reason.into(),
    }
}

/// Counts and hashes what passes through.
#[derive(Debug)]
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
        }
    }

    fn finish(self) -> (u64, [u8; 32]) {
        (self.read, self.hasher.finalize().into())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = buf.get(..n).unwrap_or(buf);
        self.hasher.update(data);
        self.read = self
            .read
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        Ok(n)
    }
}

#[derive(Debug)]
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let data = buf.get(..n).unwrap_or(buf);
        self.hasher.update(data);
        self.written = self
            .written
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A directory (or file) under `tmp/`, removed on drop unless renamed away first.
#[derive(Debug)]
struct TempTree(PathBuf);

impl TempTree {
    fn create(tmp: &Path, kind: &str) -> Result<TempTree> {
        let path = tmp.join(temp_name(kind));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(Error::io("creating an import directory", &path))?;
        Ok(TempTree(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if let Err(err) = remove_tree(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %err, "cannot remove a temporary; prune will retry");
        }
    }
}

/// `<kind>-<pid>-<counter>`: the pid tells whether its owner is still alive.
fn temp_name(kind: &str) -> String {
    format!(
        "{kind}-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid in a [`temp_name`], or `None` for names this store does not make.
fn temp_owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let counter = parts.next()?;
    let pid = parts.next()?;
    let kind = parts.next()?;
    if kind.is_empty() || counter.parse::<u64>().is_err() {
        return None;
    }
    pid.parse().ok()
}

/// Removes a file or a whole tree, if present. A tree unpacked without root may hold
/// directories without write permission for their owner; those are opened up and the
/// removal retried.
fn remove_tree(path: &Path) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !metadata.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::PermissionDenied => {
            open_up(path);
            fs::remove_dir_all(path)
        }
        Err(err) => Err(err),
    }
}

/// Gives the owner rwx on every directory of a tree (never following symlinks).
fn open_up(dir: &Path) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(metadata) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !metadata.is_dir() {
            continue;
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o700 != 0o700 {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(read_dir) = fs::read_dir(&dir) {
            for dirent in read_dir.flatten() {
                if dirent.file_type().is_ok_and(|kind| kind.is_dir()) {
                    pending.push(dirent.path());
                }
            }
        }
    }
}

/// Makes a directory's entries (renames, removals) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    fsutil::sync_dir(dir, "image store")
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// RFC 3339 in UTC with second precision, as Kubernetes timestamps are.
fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Shortens text quoted in error messages so that a hostile archive cannot flood a status.
fn truncate(text: &str) -> &str {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn argv_follows_kubernetes_command_and_args_rules() {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let config = ImageConfig {
            entrypoint: strings(&["/entry"]),
            cmd: strings(&["default"]),
            ..ImageConfig::default()
        };
        assert_eq!(config.argv(&[], &[]), strings(&["/entry", "default"]));
        assert_eq!(
            config.argv(&strings(&["/bin/sh"]), &[]),
            strings(&["/bin/sh"])
        );
        assert_eq!(
            config.argv(&[], &strings(&["x"])),
            strings(&["/entry", "x"])
        );
        assert_eq!(
            config.argv(&strings(&["/bin/sh"]), &strings(&["-c", "true"])),
            strings(&["/bin/sh", "-c", "true"])
        );
    }

    #[test]
    fn temp_names_round_trip_and_strangers_are_ignored() {
        let name = temp_name("import");
        assert_eq!(temp_owner(&name), Some(std::process::id()));
        assert_eq!(temp_owner("trash-12-0"), Some(12));
        for stranger in [
            "import",
            "import-12",
            "-12-0",
            "import-x-0",
            "import-12-x",
            "lost+found",
        ] {
            assert_eq!(temp_owner(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn clean_relative_drops_dots_and_refuses_escapes() {
        assert_eq!(
            clean_relative(Path::new("./a/./b/")).unwrap(),
            Path::new("a/b")
        );
        assert_eq!(clean_relative(Path::new("./")).unwrap(), Path::new(""));
        assert!(clean_relative(Path::new("a/../b")).is_err());
        assert!(clean_relative(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn compression_is_detected_by_magic_bytes() {
        assert_eq!(compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Unsupported("zstd")
        );
        assert_eq!(compression(b"BZh91AY"), Compression::Unsupported("bzip2"));
        assert_eq!(compression(b"etc/\0\0\0"), Compression::None);
        assert_eq!(compression(b""), Compression::None);
    }

    #[test]
    fn forget_removes_a_path_and_its_descendants_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::new(&dir.path().join("root"), dir.path()).unwrap();
        for path in ["a", "a/b", "a/b/c", "a.x", "ab", "b"] {
            unpacker
                .nodes
                .insert(PathBuf::from(path), Node::Dir(IMPLICIT_DIR_META));
        }
        unpacker.forget(Path::new("a"));
        let left: Vec<_> = unpacker.nodes.keys().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(left, ["", "a.x", "ab", "b"]);
    }
}
