//! [`Tree`] over the tree of a Git commit, read from the object database with no checkout.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, bail};
use coxswain_schema::tree::{EntryKind, Tree, TreeEntry};
use git2::{ObjectType, Oid, Repository};

/// A subtree of one commit. `git2::Repository` is `Send` but not `Sync`, and the loader reads
/// files from several threads, so reads take turns on a mutex; parsing still runs in parallel.
pub struct GitTree {
    repo: Mutex<Repository>,
    tree: Oid,
    /// Blob ids by path, recorded by `entries`, so that `read` goes straight to the blob
    /// instead of walking the path from the root tree again for every file.
    blobs: Mutex<HashMap<String, Oid>>,
}

impl std::fmt::Debug for GitTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitTree").field("tree", &self.tree).finish()
    }
}

const SYMLINK_MODE: i32 = 0o120000;

fn tree_err(path: &str, e: impl std::fmt::Display) -> coxswain_schema::Error {
    coxswain_schema::Error::Tree {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

impl GitTree {
    /// The folder `path` (inside a work tree) as it is in commit `rev`.
    pub fn open(path: &Path, rev: &str) -> anyhow::Result<Self> {
        let abs = std::fs::canonicalize(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let repo = Repository::discover(&abs)
            .with_context(|| format!("{} is not inside a Git repository", path.display()))?;
        let Some(workdir) = repo.workdir() else {
            bail!("the repository of {} has no work tree", path.display());
        };
        let workdir = std::fs::canonicalize(workdir)?;
        let rel = abs.strip_prefix(&workdir).unwrap_or(Path::new(""));
        let tree = Self::subtree(&repo, rel, rev)?;
        Ok(Self {
            repo: Mutex::new(repo),
            tree,
            blobs: Mutex::new(HashMap::new()),
        })
    }

    fn subtree(repo: &Repository, rel: &Path, rev: &str) -> anyhow::Result<Oid> {
        let commit = repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .with_context(|| format!("cannot resolve revision {rev:?} to a commit"))?;
        let root = commit.tree()?;
        Ok(if rel.as_os_str().is_empty() {
            root.id()
        } else {
            let entry = root
                .get_path(rel)
                .with_context(|| format!("{} does not exist in {rev}", rel.display()))?;
            if entry.kind() != Some(ObjectType::Tree) {
                bail!("{} is not a folder in {rev}", rel.display());
            }
            entry.id()
        })
    }
}

impl Tree for GitTree {
    fn entries(&self) -> coxswain_schema::Result<Vec<TreeEntry>> {
        let repo = self.repo.lock().map_err(|e| tree_err(".", e))?;
        let tree = repo.find_tree(self.tree).map_err(|e| tree_err(".", e))?;
        let odb = repo.odb().map_err(|e| tree_err(".", e))?;
        let mut out = Vec::new();
        let mut ids = HashMap::new();
        let mut failure = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() != Some(ObjectType::Blob) {
                // Sub-trees are walked into; submodules (commits) are not part of this tree.
                return git2::TreeWalkResult::Ok;
            }
            let Ok(name) = entry.name() else {
                // Not UTF-8: cannot be a manifest path we could report on.
                return git2::TreeWalkResult::Ok;
            };
            let path = format!("{dir}{name}");
            let kind = if entry.filemode() == SYMLINK_MODE {
                match repo.find_blob(entry.id()) {
                    Ok(b) => EntryKind::Symlink {
                        target: String::from_utf8_lossy(b.content()).into_owned(),
                    },
                    Err(e) => {
                        failure = Some(tree_err(&path, e));
                        return git2::TreeWalkResult::Abort;
                    }
                }
            } else {
                EntryKind::File
            };
            // The header gives the size without inflating the blob, so size limits cost
            // nothing for files that are too big.
            let size = match odb.read_header(entry.id()) {
                Ok((size, _)) => size as u64,
                Err(e) => {
                    failure = Some(tree_err(&path, e));
                    return git2::TreeWalkResult::Abort;
                }
            };
            ids.insert(path.clone(), entry.id());
            out.push(TreeEntry { path, kind, size });
            git2::TreeWalkResult::Ok
        })
        .map_err(|e| tree_err(".", e))?;
        if let Some(e) = failure {
            return Err(e);
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        *self.blobs.lock().map_err(|e| tree_err(".", e))? = ids;
        Ok(out)
    }

    fn read(&self, path: &str) -> coxswain_schema::Result<Vec<u8>> {
        let known = self
            .blobs
            .lock()
            .map_err(|e| tree_err(path, e))?
            .get(path)
            .copied();
        let repo = self.repo.lock().map_err(|e| tree_err(path, e))?;
        let id = match known {
            Some(id) => id,
            // A path `entries` did not list (or `entries` was not called): look it up.
            None => {
                let tree = repo.find_tree(self.tree).map_err(|e| tree_err(path, e))?;
                let entry = tree
                    .get_path(Path::new(path))
                    .map_err(|e| tree_err(path, e))?;
                entry.id()
            }
        };
        let blob = repo.find_blob(id).map_err(|e| tree_err(path, e))?;
        Ok(blob.content().to_vec())
    }
}
