//! A pod's volumes on the node, as the kubelet's volume manager sets them up: `emptyDir`
//! (a directory, or a tmpfs for `medium: Memory`), `hostPath` (checked against the node's
//! [`HostPathPolicy`] and the volume's `type`), and `configMap` / `secret` (files written
//! with Kubernetes' atomic layout so that running containers see an update all at once).
//! [`container_mounts`] then turns a container's `volumeMounts` into bind mounts for the
//! runtime, resolving `subPath` without ever leaving the volume.
//!
//! Every volume of a pod lives in `pod_dir/<volume name>` (hostPath volumes excepted: they
//! are the host's own path), so [`cleanup`] can unmount and remove a pod's volumes from the
//! directory alone, even after an agent restart.
//!
//! The manifest is untrusted input: volume names, item paths, mount paths and sub paths may
//! not climb out with `..` or absolute paths, and symlinks are resolved and checked before a
//! path is handed out, never followed while removing. The residual risk is a race: another
//! container sharing a volume may swap a checked directory for a symlink between
//! [`container_mounts`] and the runtime's bind mount (the CVE-2017-1002101 class). Closing
//! it is the runtime's part: open the source with `O_PATH | O_NOFOLLOW`, check it is still
//! the resolved path, and mount through `/proc/self/fd/N`, as the kubelet does.
//!
//! The agent serialises the calls for one pod (prepare, refresh and cleanup of one pod never
//! run at once); nothing here locks.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use coxswain_schema::kinds::pod::{Container, HostPathType, HostPathVolumeSource, KeyToPath, Pod};
use coxswain_schema::kinds::pod::{EmptyDirVolumeSource, StorageMedium, Volume};
use coxswain_schema::names;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::env::{self, Lookup};
use crate::error::{Error, Result};
use crate::fsutil;

/// The symlink that names the current data directory of a configMap or secret volume.
const DATA_LINK: &str = "..data";
/// Where the next `..data` link is made before it is renamed over the current one.
const DATA_LINK_TMP: &str = "..data_tmp";
/// Default file mode of configMap volumes (Kubernetes uses 0644; coxswain keeps them
/// read-only for everyone).
const CONFIG_MAP_MODE: u32 = 0o444;
/// Default file mode of secret volumes: only the owner (root) may read.
const SECRET_MODE: u32 = 0o400;
/// Kubernetes' limits on a projected path and on each of its components.
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;
/// How many times [`cleanup`] unmounts before it gives up on mounts that keep reappearing.
const UNMOUNT_ROUNDS: usize = 16;

/// What backs a prepared volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory of the pod; `memory` when it is a tmpfs.
    EmptyDir { memory: bool },
    /// A path of the host.
    HostPath,
    /// Files from a ConfigMap.
    ConfigMap,
    /// Files from a Secret.
    Secret,
}

/// A volume ready to be bind-mounted into the pod's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The volume's name in the pod spec.
    pub name: String,
    /// What to bind-mount: absolute, free of symlinks when it was prepared.
    pub host_path: PathBuf,
    /// Whether every mount of it is read-only whatever the container asks (configMap and
    /// secret volumes, as in Kubernetes).
    pub read_only: bool,
    pub kind: Kind,
}

/// The host paths a pod may mount. A `hostPath` volume must resolve (symlinks followed) to a
/// path under one of `allowed_prefixes`; with none, no hostPath volume is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPathPolicy {
    pub allowed_prefixes: Vec<PathBuf>,
}

/// One bind mount of a container: `source` on the host to `destination` in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute and normalised (no `.`, no repeated `/`), relative to the container's root.
    pub destination: String,
    pub read_only: bool,
}

fn config_err(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Sets up every volume of `pod` and returns them in the spec's order. Idempotent, so the
/// agent may call it again after a restart: an existing emptyDir keeps its contents and
/// tmpfs, a configMap or secret volume is rewritten only if its data changed. On error what
/// was set up so far stays; [`cleanup`] removes it with the pod.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    policy: &HostPathPolicy,
    lookup: &dyn Lookup,
) -> Result<Vec<Prepared>> {
    let volumes = pod.spec.volumes.as_deref().unwrap_or(&[]);
    if volumes.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(pod_dir)
        .map_err(Error::io("creating the pod's volume directory", pod_dir))?;
    // Canonical: the runtime mounts these paths whatever its cwd, and the mount table, which
    // tells whether a tmpfs is already there, lists canonical paths.
    let pod_dir = fs::canonicalize(pod_dir)
        .map_err(Error::io("resolving the pod's volume directory", pod_dir))?;
    let namespace = env::pod_namespace(pod);
    let mut seen = BTreeSet::new();
    let mut prepared = Vec::with_capacity(volumes.len());
    for (i, volume) in volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        check_volume_name(volume, &field)?;
        if !seen.insert(volume.name.as_str()) {
            return Err(config_err(
                format!("{field}.name"),
                format!("duplicate volume name {:?}", volume.name),
            ));
        }
        let dir = pod_dir.join(&volume.name);
        let p = match source(volume, &field)? {
            Source::EmptyDir(ed) => empty_dir(&volume.name, ed, &dir, &field)?,
            Source::HostPath(hp) => Prepared {
                name: volume.name.clone(),
                host_path: host_path(hp, policy, &field)?,
                read_only: false,
                kind: Kind::HostPath,
            },
            Source::Projected(src) => {
                write_projected(&src, namespace, lookup, &dir)?;
                Prepared {
                    name: volume.name.clone(),
                    host_path: dir,
                    read_only: true,
                    kind: src.kind,
                }
            }
        };
        prepared.push(p);
    }
    Ok(prepared)
}

/// Rewrites the configMap and secret volumes of `pod` whose data changed (a new data
/// directory, then an atomic swap of `..data`, then the old directory removed) and returns
/// whether any did. Containers see the new files without a restart, since they mount the
/// volume's directory (but not through a `subPath`, as in Kubernetes). Volumes that were never
/// prepared are left alone. Every volume is tried; the first error is returned.
pub fn refresh(pod: &Pod, pod_dir: &Path, lookup: &dyn Lookup) -> Result<bool> {
    let namespace = env::pod_namespace(pod);
    let mut changed = false;
    let mut first_error = None;
    for (i, volume) in pod.spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let result = check_volume_name(volume, &field).and_then(|()| source(volume, &field));
        let src = match result {
            Ok(Source::Projected(src)) => src,
            Ok(_) => continue,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let dir = pod_dir.join(&volume.name);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        match write_projected(&src, namespace, lookup, &dir) {
            Ok(c) => changed |= c,
            Err(e) => {
                tracing::warn!(volume = %volume.name, error = %e, "refreshing a volume failed");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(changed),
    }
}

/// Unmounts every mount under `pod_dir` (deepest first) and removes the directory tree
/// without following symlinks out of it. Nothing to do when `pod_dir` does not exist. Fails,
/// removing nothing, when mounts remain, so that a removal never reaches into a mounted
/// file system.
pub fn cleanup(pod_dir: &Path) -> Result<()> {
    match fs::symlink_metadata(pod_dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::io("inspecting the pod's volume directory", pod_dir)(
                e,
            ));
        }
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::Io {
                context: "cleaning up the pod's volumes".to_string(),
                path: pod_dir.to_path_buf(),
                source: std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "is a symlink; refusing to clean up through it",
                ),
            });
        }
        Ok(_) => {}
    }
    // Mount points in the mount table are canonical paths.
    let root = fs::canonicalize(pod_dir)
        .map_err(Error::io("resolving the pod's volume directory", pod_dir))?;
    // A caller's mistake must not unmount and delete the whole machine.
    if root.parent().is_none() {
        return Err(Error::Io {
            context: "cleaning up the pod's volumes".to_string(),
            path: root,
            source: std::io::Error::new(
                ErrorKind::InvalidInput,
                "is the root directory; refusing to clean it up",
            ),
        });
    }
    for _ in 0..UNMOUNT_ROUNDS {
        let mut mounts = mounts_under(&root)?;
        if mounts.is_empty() {
            break;
        }
        // Deepest first, and the same point as often as it is stacked.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for point in mounts {
            unmount(&point)?;
        }
    }
    let left = mounts_under(&root)?;
    if !left.is_empty() {
        let list: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Sys {
            context: format!(
                "mounts remain under {} after unmounting: {}",
                root.display(),
                list.join(", ")
            ),
            source: Errno::EBUSY,
        });
    }
    // std's remove_dir_all removes symlinks themselves and never descends through them.
    // Gone meanwhile is done: cleanup is idempotent, and two cleanups may overlap.
    match fs::remove_dir_all(&root) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(Error::io("removing the pod's volume directory", &root)(e));
        }
        _ => {}
    }
    tracing::debug!(dir = %root.display(), "removed the pod's volumes");
    Ok(())
}

fn unmount(point: &Path) -> Result<()> {
    match nix::mount::umount2(point, MntFlags::empty()) {
        // EINVAL: no longer a mount point (another round, or someone else, unmounted it).
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => {
            // A process still holds it; detach it from the tree so the directory can go, the
            // kernel frees it when the last user lets go.
            tracing::warn!(mount = %point.display(), "volume busy, detaching it");
            nix::mount::umount2(point, MntFlags::MNT_DETACH)
                .map_err(Error::sys(format!("detaching {}", point.display())))
        }
        Err(e) => Err(Error::sys(format!("unmounting {}", point.display()))(e)),
    }
}

/// Turns `container`'s `volumeMounts` into bind mounts of the `prepared` volumes of `pod`.
/// `mountPath` must be absolute without `..`, and unique; `subPath` must be relative without
/// `..` and must stay inside the volume once symlinks are resolved, otherwise the mount is
/// refused (a missing `subPath` is created as a directory, as Kubernetes does, except in the
/// read-only configMap and secret volumes).
pub fn container_mounts(
    pod: &Pod,
    container: &Container,
    prepared: &[Prepared],
) -> Result<Vec<Mount>> {
    let field = env::container_field(pod, container);
    let mut destinations = BTreeSet::new();
    let mut mounts = Vec::new();
    for (j, vm) in container.volume_mounts.iter().flatten().enumerate() {
        let mf = format!("{field}.volumeMounts[{j}]");
        let volume = prepared.iter().find(|p| p.name == vm.name).ok_or_else(|| {
            config_err(
                format!("{mf}.name"),
                format!("volume {:?} not found in the pod's volumes", vm.name),
            )
        })?;
        let destination = clean_mount_path(&vm.mount_path)
            .map_err(|why| config_err(format!("{mf}.mountPath"), why))?;
        if !destinations.insert(destination.clone()) {
            return Err(config_err(
                format!("{mf}.mountPath"),
                format!("{destination:?} must be unique"),
            ));
        }
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            None => volume.host_path.clone(),
            Some(sub) => resolve_sub_path(volume, sub, &format!("{mf}.subPath"))?,
        };
        mounts.push(Mount {
            source,
            destination,
            read_only: volume.read_only || vm.read_only == Some(true),
        });
    }
    Ok(mounts)
}

// ------------------------------------------------------------------------------------------
// Volume sources

/// A configMap or secret volume, the two kinds written as files.
#[derive(Debug)]
struct Projected<'a> {
    kind: Kind,
    /// The ConfigMap or Secret.
    object: &'a str,
    items: Option<&'a [KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    /// `spec.volumes[i].configMap` or `spec.volumes[i].secret`.
    field: String,
}

#[derive(Debug)]
enum Source<'a> {
    EmptyDir(&'a EmptyDirVolumeSource),
    HostPath(&'a HostPathVolumeSource),
    Projected(Projected<'a>),
}

fn source<'a>(volume: &'a Volume, field: &str) -> Result<Source<'a>> {
    let mut found = Vec::new();
    if let Some(ed) = &volume.empty_dir {
        found.push(Source::EmptyDir(ed));
    }
    if let Some(hp) = &volume.host_path {
        found.push(Source::HostPath(hp));
    }
    if let Some(cm) = &volume.config_map {
        found.push(Source::Projected(Projected {
            kind: Kind::ConfigMap,
            object: &cm.name,
            items: cm.items.as_deref(),
            default_mode: cm.default_mode,
            optional: cm.optional == Some(true),
            field: format!("{field}.configMap"),
        }));
    }
    if let Some(s) = &volume.secret {
        found.push(Source::Projected(Projected {
            kind: Kind::Secret,
            object: &s.secret_name,
            items: s.items.as_deref(),
            default_mode: s.default_mode,
            optional: s.optional == Some(true),
            field: format!("{field}.secret"),
        }));
    }
    match (found.pop(), found.is_empty()) {
        (Some(src), true) => Ok(src),
        (None, _) => Err(config_err(
            field,
            "must specify a volume type (emptyDir, hostPath, configMap or secret)",
        )),
        (Some(_), false) => Err(config_err(field, "may not specify more than 1 volume type")),
    }
}

/// A volume name becomes a directory name: it must be a DNS-1123 label, which also rules
/// out `/`, `.` and `..`.
fn check_volume_name(volume: &Volume, field: &str) -> Result<()> {
    names::is_dns1123_label(&volume.name).map_err(|why| config_err(format!("{field}.name"), why))
}

fn empty_dir(name: &str, ed: &EmptyDirVolumeSource, dir: &Path, field: &str) -> Result<Prepared> {
    let memory = ed.medium == Some(StorageMedium::Memory);
    ensure_plain_dir(dir, "creating an emptyDir volume")?;
    // World-writable as in Kubernetes, whatever user the containers run as; set outright
    // because the umask would narrow a mode given at creation.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777))
        .map_err(Error::io("setting the mode of an emptyDir volume", dir))?;
    if memory && !mounts_under(dir)?.iter().any(|m| m == dir) {
        let mut options = String::from("mode=0777");
        if let Some(limit) = &ed.size_limit {
            let bytes = limit
                .value()
                .map_err(|e| config_err(format!("{field}.emptyDir.sizeLimit"), e.to_string()))?;
            if bytes < 0 {
                return Err(config_err(
                    format!("{field}.emptyDir.sizeLimit"),
                    format!("{limit} must not be negative"),
                ));
            }
            // tmpfs reads `size=0` as "no limit"; a zero limit keeps the default size instead.
            if bytes > 0 {
                options.push_str(&format!(",size={bytes}"));
            }
        }
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(Error::sys(format!(
            "mounting a tmpfs for emptyDir volume {name:?} on {}",
            dir.display()
        )))?;
        tracing::debug!(volume = name, dir = %dir.display(), options, "mounted a tmpfs");
    }
    Ok(Prepared {
        name: name.to_string(),
        host_path: dir.to_path_buf(),
        read_only: false,
        kind: Kind::EmptyDir { memory },
    })
}

/// Creates `dir` (one level) if missing; refuses anything but a real directory there, so a
/// planted symlink is never written through.
fn ensure_plain_dir(dir: &Path, context: &str) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Io {
            context: context.to_string(),
            path: dir.to_path_buf(),
            source: std::io::Error::new(ErrorKind::AlreadyExists, "exists and is not a directory"),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .map_err(Error::io(context, dir)),
        Err(e) => Err(Error::io(context, dir)(e)),
    }
}

// ------------------------------------------------------------------------------------------
// hostPath

/// Checks a hostPath volume against the policy and its `type` (creating the directory or
/// file the `...OrCreate` types ask for) and returns its canonical path.
fn host_path(hp: &HostPathVolumeSource, policy: &HostPathPolicy, field: &str) -> Result<PathBuf> {
    let path_field = format!("{field}.hostPath.path");
    let type_field = format!("{field}.hostPath.type");
    let raw = hp.path.as_str();
    if raw.contains('\0') {
        return Err(config_err(path_field, "must not contain a NUL byte"));
    }
    if !raw.starts_with('/') {
        return Err(config_err(
            path_field,
            format!("{raw:?} must be an absolute path"),
        ));
    }
    if Path::new(raw)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(config_err(
            path_field,
            format!("{raw:?} must not contain '..'"),
        ));
    }
    let resolved = resolve_existing_prefix(Path::new(raw))
        .map_err(|e| Error::io("resolving a hostPath volume", raw)(e))?;
    check_allowed(raw, &resolved, policy, &path_field)?;

    let kind = hp.type_.unwrap_or(HostPathType::Unset);
    let exists = fs::metadata(&resolved).ok();
    let fail = |what: &str| {
        config_err(
            type_field.clone(),
            format!("hostPath type check failed: {raw} is not {what}"),
        )
    };
    match (kind, exists) {
        (HostPathType::DirectoryOrCreate, None) => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&resolved)
                .map_err(Error::io("creating a hostPath directory", &resolved))?;
            tracing::info!(path = %resolved.display(), "created a hostPath directory");
        }
        (HostPathType::FileOrCreate, None) => {
            // The parent must exist: Kubernetes does not create it for a file.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&resolved)
            {
                Ok(_) => tracing::info!(path = %resolved.display(), "created a hostPath file"),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("creating a hostPath file", &resolved)(e)),
            }
        }
        (_, None) => {
            return Err(config_err(path_field, format!("{raw} does not exist")));
        }
        (HostPathType::DirectoryOrCreate | HostPathType::Directory, Some(m)) if !m.is_dir() => {
            return Err(fail("a directory"));
        }
        (HostPathType::FileOrCreate | HostPathType::File, Some(m)) if !m.is_file() => {
            return Err(fail("a file"));
        }
        (HostPathType::Socket, Some(m)) if !m.file_type().is_socket() => {
            return Err(fail("a socket file"));
        }
        (HostPathType::CharDevice, Some(m)) if !m.file_type().is_char_device() => {
            return Err(fail("a character device"));
        }
        (HostPathType::BlockDevice, Some(m)) if !m.file_type().is_block_device() => {
            return Err(fail("a block device"));
        }
        _ => {}
    }
    // Resolve again now that the path exists: a symlink planted while it was being created
    // must not carry the mount elsewhere.
    let canonical =
        fs::canonicalize(&resolved).map_err(Error::io("resolving a hostPath volume", &resolved))?;
    check_allowed(raw, &canonical, policy, &path_field)?;
    Ok(canonical)
}

/// `path` with its longest existing ancestor canonicalised and the missing rest appended
/// (which has no `..`, so it cannot climb back out).
fn resolve_existing_prefix(path: &Path) -> std::io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut current = path;
    loop {
        match fs::canonicalize(current) {
            Ok(mut found) => {
                for name in missing.iter().rev() {
                    found.push(name);
                }
                return Ok(found);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (current.parent(), current.file_name()) else {
                    return Err(e);
                };
                missing.push(name.to_os_string());
                current = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

fn check_allowed(raw: &str, resolved: &Path, policy: &HostPathPolicy, field: &str) -> Result<()> {
    // Prefixes are resolved too, so that `/data -> /mnt/data` on the node allows what it says.
    let prefixes: Vec<PathBuf> = policy
        .allowed_prefixes
        .iter()
        .filter(|p| p.is_absolute())
        .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    if prefixes.iter().any(|p| resolved.starts_with(p)) {
        return Ok(());
    }
    let list: Vec<String> = policy
        .allowed_prefixes
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let allowed = if list.is_empty() {
        "none are configured on this node".to_string()
    } else {
        list.join(", ")
    };
    let subject = if Path::new(raw) == resolved {
        format!("{raw} is not under an allowed prefix ({allowed})")
    } else {
        format!(
            "{raw} resolves to {}, which is not under an allowed prefix ({allowed})",
            resolved.display()
        )
    };
    Err(config_err(field, subject))
}

// ------------------------------------------------------------------------------------------
// configMap and secret volumes

/// One file of a configMap or secret volume.
#[derive(Debug, PartialEq, Eq)]
struct FileSpec {
    data: Vec<u8>,
    mode: u32,
}

/// Writes the files of a configMap or secret volume into `dir`; whether anything changed.
fn write_projected(
    src: &Projected<'_>,
    namespace: &str,
    lookup: &dyn Lookup,
    dir: &Path,
) -> Result<bool> {
    let payload = payload(src, namespace, lookup)?;
    let changed = write_atomic(dir, &payload)?;
    if changed {
        tracing::debug!(dir = %dir.display(), object = src.object, files = payload.len(), "wrote volume data");
    }
    Ok(changed)
}

/// The files a configMap or secret volume holds: every key, or the `items` chosen, with
/// their modes. A missing object is an empty volume when optional, else an error; so is a
/// missing item key.
fn payload(
    src: &Projected<'_>,
    namespace: &str,
    lookup: &dyn Lookup,
) -> Result<BTreeMap<PathBuf, FileSpec>> {
    let (what, default) = match src.kind {
        Kind::Secret => ("secret", SECRET_MODE),
        _ => ("configmap", CONFIG_MAP_MODE),
    };
    let data: Option<BTreeMap<String, Vec<u8>>> = match src.kind {
        Kind::Secret => lookup.secret(namespace, src.object),
        _ => lookup.config_map(namespace, src.object).map(|text| {
            let mut all: BTreeMap<String, Vec<u8>> =
                text.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            all.extend(
                lookup
                    .config_map_binary(namespace, src.object)
                    .unwrap_or_default(),
            );
            all
        }),
    };
    let mode_of = |mode: i32, field: String| -> Result<u32> {
        u32::try_from(mode)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                config_err(
                    field,
                    "must be a number between 0 and 0777 (octal), both inclusive",
                )
            })
    };
    let default_mode = match src.default_mode {
        Some(m) => mode_of(m, format!("{}.defaultMode", src.field))?,
        None => default,
    };
    let Some(data) = data else {
        if src.optional {
            return Ok(BTreeMap::new());
        }
        return Err(config_err(
            src.field.clone(),
            format!("{what} {:?} not found", src.object),
        ));
    };
    let mut files = BTreeMap::new();
    match src.items {
        None => {
            for (key, bytes) in data {
                let path = clean_relative(&key, true).map_err(|why| {
                    config_err(
                        src.field.clone(),
                        format!("key {key:?} cannot be a file name: {why}"),
                    )
                })?;
                files.insert(
                    path,
                    FileSpec {
                        data: bytes,
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for (j, item) in items.iter().enumerate() {
                let ifield = format!("{}.items[{j}]", src.field);
                // Cloned, not taken: two items may project one key to two paths.
                let Some(bytes) = data.get(&item.key).cloned() else {
                    if src.optional {
                        continue;
                    }
                    return Err(config_err(
                        format!("{ifield}.key"),
                        format!("key {:?} not found in {what} {:?}", item.key, src.object),
                    ));
                };
                let path = clean_relative(&item.path, true)
                    .map_err(|why| config_err(format!("{ifield}.path"), why))?;
                let mode = match item.mode {
                    Some(m) => mode_of(m, format!("{ifield}.mode"))?,
                    None => default_mode,
                };
                if files.contains_key(&path) {
                    return Err(config_err(
                        format!("{ifield}.path"),
                        format!("duplicate path {:?}", item.path),
                    ));
                }
                files.insert(path, FileSpec { data: bytes, mode });
            }
        }
    }
    // A path that is a file cannot also be a directory of another path (`a` and `a/b`).
    for path in files.keys() {
        for ancestor in path.ancestors().skip(1) {
            if !ancestor.as_os_str().is_empty() && files.contains_key(ancestor) {
                return Err(config_err(
                    src.field.clone(),
                    format!(
                        "path {:?} is both a file and the directory of {:?}",
                        ancestor.display().to_string(),
                        path.display().to_string()
                    ),
                ));
            }
        }
    }
    Ok(files)
}

/// Kubernetes' atomic writer: the files go into a new `..<timestamp>` directory, a
/// `..data_tmp` symlink to it is renamed over `..data` (one atomic step in which every file
/// changes at once for a reader), each top-level name gets a `name -> ..data/name` link,
/// and what the old version had (its directory, links of keys now gone) is removed. Does
/// nothing and returns false when `dir` already holds exactly `payload`.
fn write_atomic(dir: &Path, payload: &BTreeMap<PathBuf, FileSpec>) -> Result<bool> {
    ensure_plain_dir(dir, "creating a volume directory")?;
    let tops: BTreeSet<OsString> = payload
        .keys()
        .filter_map(|p| p.iter().next().map(|c| c.to_os_string()))
        .collect();
    let data_link = dir.join(DATA_LINK);
    if let Ok(current) = fs::read_link(&data_link)
        && holds(dir, &current, payload, &tops)
    {
        return Ok(false);
    }

    let data_name = new_data_dir(dir)?;
    let data_dir = dir.join(&data_name);
    let mut parents = BTreeSet::new();
    for (rel, spec) in payload {
        let path = data_dir.join(rel);
        if let Some(parent) = path.parent()
            && parent != data_dir
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(Error::io("creating a volume subdirectory", parent))?;
            parents.insert(parent.to_path_buf());
        }
        fsutil::write_new_synced(&path, &spec.data, "a volume file")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(spec.mode))
            .map_err(Error::io("setting the mode of a volume file", &path))?;
    }
    for parent in &parents {
        fsutil::sync_dir(parent, "volume data")?;
    }
    // Made 0700 so no one reads a file before its mode is set; opened up only now.
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755)).map_err(Error::io(
        "setting the mode of a volume data directory",
        &data_dir,
    ))?;
    fsutil::sync_dir(&data_dir, "volume data")?;

    let tmp_link = dir.join(DATA_LINK_TMP);
    remove_entry(&tmp_link)?;
    std::os::unix::fs::symlink(&data_name, &tmp_link)
        .map_err(Error::io("linking new volume data", &tmp_link))?;
    // rename(2) cannot replace a directory by a symlink; `..data` is only ever a symlink
    // unless someone else wrote here.
    if fs::symlink_metadata(&data_link).is_ok_and(|m| !m.file_type().is_symlink()) {
        remove_entry(&data_link)?;
    }
    fs::rename(&tmp_link, &data_link).map_err(Error::io("switching volume data", &data_link))?;
    fsutil::sync_dir(dir, "volume")?;

    for name in &tops {
        let link = dir.join(name);
        let want = Path::new(DATA_LINK).join(name);
        match fs::read_link(&link) {
            Ok(target) if target == want => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // Another link, or not a link at all: replace it.
            _ => remove_entry(&link)?,
        }
        std::os::unix::fs::symlink(&want, &link)
            .map_err(Error::io("linking a volume file", &link))?;
    }
    let entries = fs::read_dir(dir).map_err(Error::io("listing a volume directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("listing a volume directory", dir))?;
        let name = entry.file_name();
        if name == DATA_LINK || name == data_name.as_os_str() || tops.contains(&name) {
            continue;
        }
        // Old data directories, and the links of keys the object no longer has.
        remove_entry(&entry.path())?;
    }
    fsutil::sync_dir(dir, "volume")?;
    Ok(true)
}

/// Whether `dir`, whose `..data` points at `current`, holds exactly `payload` (contents and
/// modes), with its links and nothing else. Anything unreadable or unexpected counts as
/// "no": rewriting is always safe.
fn holds(
    dir: &Path,
    current: &Path,
    payload: &BTreeMap<PathBuf, FileSpec>,
    tops: &BTreeSet<OsString>,
) -> bool {
    let mut parts = current.components();
    let (Some(Component::Normal(data_name)), None) = (parts.next(), parts.next()) else {
        return false;
    };
    let mut found = BTreeMap::new();
    if !list_files(&dir.join(data_name), Path::new(""), &mut found) {
        return false;
    }
    if found.len() != payload.len() {
        return false;
    }
    for (rel, spec) in payload {
        match found.get(rel) {
            Some((path, mode)) if *mode == spec.mode => {
                if !fs::read(path).is_ok_and(|data| data == spec.data) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let Ok(entry) = entry else { return false };
        names.insert(entry.file_name());
    }
    let mut want: BTreeSet<OsString> = tops.clone();
    want.insert(DATA_LINK.into());
    want.insert(data_name.to_os_string());
    names == want
        && tops.iter().all(|name| {
            fs::read_link(dir.join(name)).is_ok_and(|t| t == Path::new(DATA_LINK).join(name))
        })
}

/// Collects the regular files under `dir` (relative path to full path and mode) without
/// following symlinks; false when it meets anything else or cannot read.
fn list_files(dir: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, (PathBuf, u32)>) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            return false;
        };
        let rel = rel.join(entry.file_name());
        if meta.is_dir() {
            if !list_files(&entry.path(), &rel, out) {
                return false;
            }
        } else if meta.is_file() {
            out.insert(rel, (entry.path(), meta.mode() & 0o7777));
        } else {
            return false;
        }
    }
    true
}

/// Creates a new, private `..<UTC timestamp>` data directory in `dir` and returns its name.
fn new_data_dir(dir: &Path) -> Result<OsString> {
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let mut last = None;
    for n in 0..100u32 {
        let name = if n == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        match DirBuilder::new().mode(0o700).create(dir.join(&name)) {
            Ok(()) => return Ok(name.into()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(Error::io(
                    "creating a volume data directory",
                    dir.join(&name),
                )(e));
            }
        }
    }
    Err(Error::Io {
        context: "creating a volume data directory".to_string(),
        path: dir.join(stamp),
        source: last.unwrap_or_else(|| ErrorKind::AlreadyExists.into()),
    })
}

/// Removes a file, symlink (not its target) or directory tree; a missing one is fine.
fn remove_entry(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    match result {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(Error::io("removing old volume data", path)(e))
        }
        _ => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------
// Paths from the manifest

/// A relative path from a manifest, normalised (`a//./b` is `a/b`), or why it is refused:
/// empty, absolute, a `..` component, a NUL byte, or too long. With `reserve_dotdot`, its
/// first component may not start with `..` either: those names belong to the atomic
/// writer's own entries.
fn clean_relative(path: &str, reserve_dotdot: bool) -> std::result::Result<PathBuf, String> {
    if path.contains('\0') {
        return Err(format!("{path:?} must not contain a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} must be a relative path"));
    }
    if path.len() > MAX_PATH {
        return Err(format!("{path:?} must be at most {MAX_PATH} bytes long"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let Some(first) = parts.first() else {
        return Err(format!("{path:?} must name a file"));
    };
    if parts.contains(&"..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    if let Some(long) = parts.iter().find(|p| p.len() > MAX_NAME) {
        return Err(format!(
            "{long:?} in {path:?} must be at most {MAX_NAME} bytes long"
        ));
    }
    if reserve_dotdot && first.starts_with("..") {
        return Err(format!("{path:?} must not start with '..'"));
    }
    Ok(parts.iter().collect())
}

/// A `mountPath`, normalised, or why it is refused: not absolute, a `..` component, a NUL
/// byte, or the container's root itself.
fn clean_mount_path(path: &str) -> std::result::Result<String, String> {
    if path.contains('\0') {
        return Err(format!("{path:?} must not contain a NUL byte"));
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    if parts.is_empty() {
        return Err(format!(
            "{path:?} must not be the container's root directory"
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The host path of `sub` inside `volume`, every symlink on the way resolved and checked to
/// stay inside the volume. Missing directories are created (with the volume root's mode, as
/// the kubelet does) in emptyDir and hostPath volumes.
fn resolve_sub_path(volume: &Prepared, sub: &str, field: &str) -> Result<PathBuf> {
    let rel = clean_relative(sub, false).map_err(|why| config_err(field, why))?;
    let root = fs::canonicalize(&volume.host_path)
        .map_err(Error::io("resolving a volume", &volume.host_path))?;
    let may_create = matches!(volume.kind, Kind::EmptyDir { .. } | Kind::HostPath);
    let names: Vec<&std::ffi::OsStr> = rel.iter().collect();
    let mut current = root.clone();
    let mut walked = PathBuf::new();
    for (k, name) in names.iter().enumerate() {
        walked.push(name);
        let next = current.join(name);
        match fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = match fs::canonicalize(&next) {
                    Ok(t) => t,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return Err(config_err(
                            field,
                            format!("{sub:?}: {} is a symlink to nothing", walked.display()),
                        ));
                    }
                    Err(e) => return Err(Error::io("resolving a subPath", &next)(e)),
                };
                if !target.starts_with(&root) {
                    return Err(config_err(
                        field,
                        format!(
                            "{sub:?} leaves the volume: {} is a symlink to a path outside it",
                            walked.display()
                        ),
                    ));
                }
                current = target;
            }
            Ok(meta) => {
                if k + 1 < names.len() && !meta.is_dir() {
                    return Err(config_err(
                        field,
                        format!("{sub:?}: {} is not a directory", walked.display()),
                    ));
                }
                current = next;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !may_create {
                    return Err(config_err(
                        field,
                        format!("{sub:?} does not exist in the volume"),
                    ));
                }
                let mode = fs::metadata(&root)
                    .map_err(Error::io("inspecting a volume", &root))?
                    .mode()
                    & 0o7777;
                match DirBuilder::new().mode(0o700).create(&next) {
                    Ok(()) => fs::set_permissions(&next, fs::Permissions::from_mode(mode))
                        .map_err(Error::io("setting the mode of a subPath", &next))?,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io("creating a subPath", &next)(e)),
                }
                // Whatever is there now (another writer may have raced us) is checked below.
                current = next;
            }
            Err(e) => return Err(Error::io("resolving a subPath", &next)(e)),
        }
    }
    let resolved =
        fs::canonicalize(&current).map_err(Error::io("resolving a subPath", &current))?;
    if !resolved.starts_with(&root) {
        return Err(config_err(
            field,
            format!(
                "{sub:?} resolves to {}, outside the volume",
                resolved.display()
            ),
        ));
    }
    Ok(resolved)
}

// ------------------------------------------------------------------------------------------
// The mount table

/// The mount points at or under `root` (a canonical path), once per mount, in the order of
/// the mount table.
fn mounts_under(root: &Path) -> Result<Vec<PathBuf>> {
    const MOUNTINFO: &str = "/proc/self/mountinfo";
    let text =
        fs::read_to_string(MOUNTINFO).map_err(Error::io("reading the mount table", MOUNTINFO))?;
    Ok(mount_points(&text)
        .into_iter()
        .filter(|p| p.starts_with(root))
        .collect())
}

/// The mount points of a `mountinfo` text (its fifth field, with the kernel's octal escapes
/// of space, tab, newline and backslash undone).
fn mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .collect()
}

fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&[b'\\', a, b, c]) = bytes.get(i..i + 4)
            && [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value =
                (u32::from(a - b'0') << 6) | (u32::from(b - b'0') << 3) | u32::from(c - b'0');
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Maps {
        config_maps: BTreeMap<String, BTreeMap<String, String>>,
        binary: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
        secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    }

    impl Lookup for Maps {
        fn config_map(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
            self.config_maps.get(&format!("{ns}/{name}")).cloned()
        }
        fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            self.secrets.get(&format!("{ns}/{name}")).cloned()
        }
        fn config_map_binary(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            self.binary.get(&format!("{ns}/{name}")).cloned()
        }
    }

    fn maps() -> Maps {
        let mut m = Maps::default();
        m.config_maps.insert(
            "default/app".into(),
            [("a.conf", "A"), ("b.conf", "B")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        m.binary.insert(
            "default/app".into(),
            [("blob".to_string(), vec![0u8, 1, 2])].into(),
        );
        m.secrets.insert(
            "default/db".into(),
            [("password".to_string(), b"pw".to_vec())].into(),
        );
        m
    }

    fn projected<'a>(
        kind: Kind,
        object: &'a str,
        items: Option<&'a [KeyToPath]>,
        optional: bool,
    ) -> Projected<'a> {
        Projected {
            kind,
            object,
            items,
            default_mode: None,
            optional,
            field: "spec.volumes[0].configMap".to_string(),
        }
    }

    fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        }
    }

    fn reason(err: Error) -> (String, String) {
        match err {
            Error::Config { field, reason } => (field, reason),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(clean_relative("a/b", true).unwrap(), Path::new("a/b"));
        assert_eq!(clean_relative("./a//b/.", true).unwrap(), Path::new("a/b"));
        assert_eq!(clean_relative("..a/b", false).unwrap(), Path::new("..a/b"));
        assert_eq!(clean_relative("a/..b", true).unwrap(), Path::new("a/..b"));
        for (bad, reserve, why) in [
            ("", true, "must name a file"),
            (".", true, "must name a file"),
            ("/etc/passwd", true, "relative"),
            ("../x", false, "'..'"),
            ("a/../../x", false, "'..'"),
            ("a/..", false, "'..'"),
            ("..data", true, "start with '..'"),
            ("..2024_01_01/x", true, "start with '..'"),
            ("a\0b", true, "NUL"),
        ] {
            let err = clean_relative(bad, reserve).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(clean_relative(&"x".repeat(256), true).is_err());
        assert!(clean_relative(&"x/".repeat(2100), true).is_err());
    }

    #[test]
    fn mount_paths() {
        assert_eq!(clean_mount_path("/data").unwrap(), "/data");
        assert_eq!(clean_mount_path("//etc/./app/").unwrap(), "/etc/app");
        for bad in ["data", "/a/../etc", "/", "/./", "/a\0"] {
            assert!(clean_mount_path(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn mountinfo_parsing_undoes_escapes() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    40 22 0:39 / /var/pods/a\\040b/v\\134x rw - tmpfs tmpfs rw,size=1024k\n\
                    41 22 0:40 / /odd\\05 rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points(text),
            [
                PathBuf::from("/"),
                PathBuf::from("/var/pods/a b/v\\x"),
                PathBuf::from("/odd\\05"),
            ]
        );
    }

    #[test]
    fn payload_of_all_keys_with_default_modes() {
        let m = maps();
        let files = payload(
            &projected(Kind::ConfigMap, "app", None, false),
            "default",
            &m,
        )
        .unwrap();
        let got: Vec<(String, &[u8], u32)> = files
            .iter()
            .map(|(p, s)| (p.display().to_string(), s.data.as_slice(), s.mode))
            .collect();
        assert_eq!(
            got,
            [
                ("a.conf".to_string(), &b"A"[..], 0o444),
                ("b.conf".to_string(), &b"B"[..], 0o444),
                ("blob".to_string(), &[0u8, 1, 2][..], 0o444),
            ]
        );
        let files = payload(&projected(Kind::Secret, "db", None, false), "default", &m).unwrap();
        assert_eq!(files[Path::new("password")].mode, 0o400);
        let mut src = projected(Kind::Secret, "db", None, false);
        src.default_mode = Some(0o440);
        assert_eq!(
            payload(&src, "default", &m).unwrap()[Path::new("password")].mode,
            0o440
        );
    }

    #[test]
    fn payload_items_select_rename_and_set_modes() {
        let m = maps();
        let items = [
            item("a.conf", "conf/main.conf", Some(0o600)),
            item("a.conf", "copy", None),
            item("missing", "never", None),
        ];
        let err = payload(
            &projected(Kind::ConfigMap, "app", Some(&items), false),
            "default",
            &m,
        )
        .unwrap_err();
        let (field, why) = reason(err);
        assert_eq!(field, "spec.volumes[0].configMap.items[2].key");
        assert_eq!(why, "key \"missing\" not found in configmap \"app\"");

        let files = payload(
            &projected(Kind::ConfigMap, "app", Some(&items), true),
            "default",
            &m,
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[Path::new("conf/main.conf")],
            FileSpec {
                data: b"A".to_vec(),
                mode: 0o600
            }
        );
        assert_eq!(
            files[Path::new("copy")],
            FileSpec {
                data: b"A".to_vec(),
                mode: 0o444
            }
        );
    }

    #[test]
    fn payload_refusals() {
        let m = maps();
        let cases: [(Vec<KeyToPath>, &str, &str); 5] = [
            (
                vec![item("a.conf", "../escape", None)],
                "items[0].path",
                "'..'",
            ),
            (
                vec![item("a.conf", "/etc/passwd", None)],
                "items[0].path",
                "relative",
            ),
            (
                vec![item("a.conf", "..data", None)],
                "items[0].path",
                "start with '..'",
            ),
            (
                vec![item("a.conf", "x", None), item("b.conf", "./x", None)],
                "items[1].path",
                "duplicate path",
            ),
            (
                vec![item("a.conf", "x", Some(0o1777))],
                "items[0].mode",
                "0777",
            ),
        ];
        for (items, want_field, want) in cases {
            let err = payload(
                &projected(Kind::ConfigMap, "app", Some(&items), false),
                "default",
                &m,
            )
            .unwrap_err();
            let (field, why) = reason(err);
            assert_eq!(field, format!("spec.volumes[0].configMap.{want_field}"));
            assert!(why.contains(want), "{why:?} should contain {want:?}");
        }
        let items = [item("a.conf", "x", None), item("b.conf", "x/y", None)];
        let (_, why) = reason(
            payload(
                &projected(Kind::ConfigMap, "app", Some(&items), false),
                "default",
                &m,
            )
            .unwrap_err(),
        );
        assert!(why.contains("both a file and the directory"), "{why}");
        // A key that cannot be a file name (the store validates keys; this is the backstop).
        let mut bad = Maps::default();
        bad.config_maps.insert(
            "default/bad".into(),
            [("..data".to_string(), "x".to_string())].into(),
        );
        assert!(
            payload(
                &projected(Kind::ConfigMap, "bad", None, false),
                "default",
                &bad
            )
            .is_err()
        );
    }

    #[test]
    fn payload_of_a_missing_object() {
        let m = maps();
        let (field, why) = reason(
            payload(&projected(Kind::Secret, "nope", None, false), "default", &m).unwrap_err(),
        );
        assert_eq!(field, "spec.volumes[0].configMap");
        assert_eq!(why, "secret \"nope\" not found");
        // Namespaced: the same name elsewhere is not found either.
        assert!(payload(&projected(Kind::Secret, "db", None, false), "other", &m).is_err());
        assert!(
            payload(&projected(Kind::Secret, "nope", None, true), "default", &m)
                .unwrap()
                .is_empty()
        );
    }
}
