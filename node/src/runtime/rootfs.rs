//! Resolving a path inside a container's root filesystem before the container is pivoted
//! into it, without ever leaving that root.
//!
//! An image is untrusted: its `/proc` or a volume's mount point may be a symlink to
//! `/../../etc`, and following it with the host's resolver would mount over a host path (the
//! class of runc's CVE-2021-30465). So symlinks are followed here by hand, one component at a
//! time, with `/` and `..` clamped to the container's root, as the kernel would resolve them
//! once the root is the container's.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// How many symlinks one resolution follows before giving up (the kernel's `MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;

/// The overlay mount options of a container's root: `image` below, read-only and shared, and
/// the writable layer in `layer` (its `upper` and `work`) on top.
pub fn overlay_options(image: &Path, layer: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        layer.join("upper").display(),
        layer.join("work").display()
    )
}

/// `path` (as the container sees it) resolved to a host path under `root`, following
/// symlinks as if `root` were `/`. Components that do not exist are appended as they are.
pub fn resolve_in(root: &Path, path: &str) -> Result<PathBuf> {
    // The part resolved so far, relative to root, as a stack of plain names.
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    // What is left to resolve, last component first (so pushing a symlink's target works).
    let mut todo: Vec<std::ffi::OsString> = components(Path::new(path)).into_iter().rev().collect();
    let mut followed = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            done.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&name);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(Error::Config {
                        field: path.to_owned(),
                        reason: "too many levels of symbolic links in the container's root"
                            .to_owned(),
                    });
                }
                let target =
                    fs::read_link(&candidate).map_err(Error::io("read link", &candidate))?;
                if target.is_absolute() {
                    done.clear();
                }
                todo.extend(components(&target).into_iter().rev());
            }
            _ => done.push(name),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// The normal and `..` components of a path; `/` and `.` say nothing once clamped to a root.
fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Checks a path given by a manifest for where a container runs or mounts something:
/// absolute, and no `..` (Kubernetes' validation refuses `..` in `mountPath` too; for a
/// working dir it is the shape of runc's CVE-2024-21626, which escaped through a leaked
/// directory handle).
pub fn check_container_path(field: &str, path: &str) -> Result<()> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Error::Config {
            field: field.to_owned(),
            reason: format!("{path:?} must be an absolute path"),
        });
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::Config {
            field: field.to_owned(),
            reason: format!("{path:?} must not contain '..': it would leave the container's root"),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/../../../etc", root.join("evil")).unwrap();
        symlink("../../..", root.join("usr/lib/up")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        assert_eq!(
            resolve_in(root, "/evil/passwd").unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(resolve_in(root, "/usr/lib/up/x").unwrap(), root.join("x"));
        assert_eq!(resolve_in(root, "/../../proc").unwrap(), root.join("proc"));
        assert_eq!(resolve_in(root, "/lib/x").unwrap(), root.join("usr/lib/x"));
        assert_eq!(resolve_in(root, "new/dir").unwrap(), root.join("new/dir"));
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let err = resolve_in(dir.path(), "/a").unwrap_err().to_string();
        assert!(err.contains("too many levels"), "{err}");
    }

    #[test]
    fn container_paths_must_be_absolute_without_dotdot() {
        assert!(check_container_path("workingDir", "/app").is_ok());
        let err = check_container_path("workingDir", "/app/../../etc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("workingDir") && err.contains("'..'"), "{err}");
        assert!(check_container_path("workingDir", "app").is_err());
    }
}
