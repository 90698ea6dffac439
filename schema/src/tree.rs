//! "A tree of files": the one seam between where manifests come from (a folder, the tree of a
//! Git commit) and the loader. The Git source implements [`Tree`] over git2 blobs, so a commit
//! is validated without a checkout.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// What one path in a tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    /// A symbolic link and the target it names (as written, relative or absolute).
    Symlink {
        target: String,
    },
}

/// One file or symlink of a tree; `path` is relative to the tree root, with `/` separators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub path: String,
    pub kind: EntryKind,
    /// Size in bytes, known before reading, so size limits cost no I/O.
    pub size: u64,
    /// A content id, when the source knows one without reading the file (the Git blob id).
    /// Equal ids mean equal bytes, which lets a reload reuse what was parsed before.
    pub id: Option<String>,
}

/// A source of manifest files.
pub trait Tree: Sync {
    /// Every file and symlink below the root, recursively. Directories are not listed;
    /// `.git` is never entered.
    fn entries(&self) -> Result<Vec<TreeEntry>>;
    /// The bytes of one file listed by [`Tree::entries`].
    fn read(&self, path: &str) -> Result<Vec<u8>>;
}

/// A folder on disk. A single file also works: it is a tree of one entry.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
    single_file: bool,
}

impl DirTree {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let meta = std::fs::metadata(&root).map_err(|source| Error::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self {
            single_file: meta.is_file(),
            root,
        })
    }

    fn walk(&self, dir: &Path, rel: &str, out: &mut Vec<TreeEntry>) -> Result<()> {
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io)?;
        // A stable order makes diagnostics and "first defined at" messages reproducible.
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(Error::Tree {
                    path: format!("{rel}{}", name.to_string_lossy()),
                    reason: "file name is not valid UTF-8".into(),
                });
            };
            if name == ".git" {
                continue;
            }
            let path = entry.path();
            let rel_path = format!("{rel}{name}");
            // symlink_metadata: never follow a link while walking.
            let meta = std::fs::symlink_metadata(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                out.push(TreeEntry {
                    path: rel_path,
                    kind: EntryKind::Symlink {
                        target: target.to_string_lossy().into_owned(),
                    },
                    size: 0,
                    id: None,
                });
            } else if meta.is_dir() {
                self.walk(&path, &format!("{rel_path}/"), out)?;
            } else if meta.is_file() {
                out.push(TreeEntry {
                    path: rel_path,
                    kind: EntryKind::File,
                    size: meta.len(),
                    // A folder has no cheap content id; its files are always read again.
                    id: None,
                });
            }
        }
        Ok(())
    }
}

impl Tree for DirTree {
    fn entries(&self) -> Result<Vec<TreeEntry>> {
        if self.single_file {
            let name = self
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta = std::fs::metadata(&self.root).map_err(|source| Error::Io {
                path: self.root.clone(),
                source,
            })?;
            return Ok(vec![TreeEntry {
                path: name,
                kind: EntryKind::File,
                size: meta.len(),
                id: None,
            }]);
        }
        let mut out = Vec::new();
        self.walk(&self.root, "", &mut out)?;
        Ok(out)
    }

    fn read(&self, path: &str) -> Result<Vec<u8>> {
        let full = if self.single_file {
            self.root.clone()
        } else {
            self.root.join(path)
        };
        std::fs::read(&full).map_err(|source| Error::Io { path: full, source })
    }
}

/// Where a symlink at `link` (a tree path) pointing at `target` lands, as a tree path, or
/// `None` when it leaves the tree. Purely lexical, so it means the same for a folder and for
/// a Git tree, and never touches the file system (a link out of the tree is never followed,
/// not even to look).
pub fn resolve_symlink(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for comp in Path::new(target).components() {
        match comp {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_lexically_and_never_leave_the_tree() {
        let cases = [
            ("a.yaml", "b.yaml", Some("b.yaml")),
            ("dir/a.yaml", "../b.yaml", Some("b.yaml")),
            ("dir/a.yaml", "./x/../c.yaml", Some("dir/c.yaml")),
            ("a.yaml", "../outside.yaml", None),
            ("dir/a.yaml", "../../etc/passwd", None),
            ("a.yaml", "/etc/passwd", None),
        ];
        for (link, target, want) in cases {
            assert_eq!(
                resolve_symlink(link, target).as_deref(),
                want,
                "{link} -> {target}"
            );
        }
    }
}
