//! [`Tree`] over the tree of a Git commit, read from the object database with no checkout,
//! so a commit can be validated and applied while the work tree holds something else (or
//! there is no work tree at all, as in a bare cache).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use coxswain_schema::tree::{EntryKind, Tree, TreeEntry};
use git2::{ObjectType, Oid, Repository};

use crate::error::{Error, Result};

/// A subtree of one commit. `git2::Repository` is `Send` but not `Sync`, and the loader reads
/// files from several threads, so reads take turns on a mutex; parsing still runs in parallel.
pub struct GitTree {
    repo: Mutex<Repository>,
    tree: Oid,
    /// Blob ids by path, recorded by `entries`, so that `read` goes straight to the blob
    /// instead of walking the path from the root tree again for every file.
    blobs: Mutex<HashMap<String, Oid>>,
    /// Blob sizes by id, shared by the trees of one source: a blob's size never changes, and
    /// reading it from the object header costs a file open and an inflate per loose object,
    /// which for a large repository was a tenth of a one-file commit's sync.
    sizes: SizeCache,
}

/// Sizes of the blobs of the last tree listed; see [`GitTree::with_sizes`].
#[derive(Debug, Clone, Default)]
pub struct SizeCache(Arc<Mutex<HashMap<Oid, u64>>>);

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
    /// The folder `path` (inside a work tree) as it is in commit `rev` (anything
    /// `git rev-parse` understands: `HEAD~1`, a branch, a tag, a hash).
    pub fn open(path: &Path, rev: &str) -> Result<Self> {
        let abs = std::fs::canonicalize(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let repo = Repository::discover(&abs).map_err(Error::git(format!(
            "{} is not inside a Git repository",
            path.display()
        )))?;
        let Some(workdir) = repo.workdir() else {
            return Err(Error::Config {
                field: "path".to_string(),
                reason: format!("the repository of {} has no work tree", path.display()),
            });
        };
        let workdir = std::fs::canonicalize(workdir).map_err(|source| Error::Io {
            path: workdir.display().to_string(),
            source,
        })?;
        let rel = abs
            .strip_prefix(&workdir)
            .unwrap_or(Path::new(""))
            .to_string_lossy()
            .into_owned();
        let reference = format!("revision {rev:?}");
        let commit = repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(|e| Error::Resolve {
                repo: workdir.display().to_string(),
                reference: reference.clone(),
                reason: e.message().to_string(),
            })?
            .id();
        let subpath = (!rel.is_empty()).then_some(rel.as_str());
        Self::at(repo, commit, subpath, &reference)
    }

    /// The folder `subpath` (`None`: the root) of `commit` in `repo`; `reference` names the
    /// commit in errors.
    pub fn at(
        repo: Repository,
        commit: Oid,
        subpath: Option<&str>,
        reference: &str,
    ) -> Result<Self> {
        let tree =
            subtree_id(&repo, commit, subpath, reference)?.ok_or_else(|| Error::Resolve {
                repo: repo.path().display().to_string(),
                reference: reference.to_string(),
                reason: format!(
                    "the folder {} does not exist in commit {commit}",
                    subpath.unwrap_or(".")
                ),
            })?;
        Ok(Self {
            repo: Mutex::new(repo),
            tree,
            blobs: Mutex::new(HashMap::new()),
            sizes: SizeCache::default(),
        })
    }

    /// Shares `sizes` with the other trees of the same repository: `entries` takes the size
    /// of a blob listed before from it, and leaves in it the sizes of this tree's blobs only,
    /// so it holds one repository state at a time.
    pub fn with_sizes(mut self, sizes: SizeCache) -> Self {
        self.sizes = sizes;
        self
    }

    /// The Git id of this (sub)tree: two commits with the same id here have identical
    /// manifests, so the second needs no new validation.
    pub fn id(&self) -> String {
        self.tree.to_string()
    }
}

/// The id of the tree at `subpath` in `commit`; `None` when that path does not exist there or
/// is not a folder.
pub(crate) fn subtree_id(
    repo: &Repository,
    commit: Oid,
    subpath: Option<&str>,
    reference: &str,
) -> Result<Option<Oid>> {
    let resolve = |reason: String| Error::Resolve {
        repo: repo.path().display().to_string(),
        reference: reference.to_string(),
        reason,
    };
    let commit = repo
        .find_commit(commit)
        .map_err(|e| resolve(e.message().to_string()))?;
    let root = commit.tree().map_err(Error::git(format!(
        "reading the tree of commit {}",
        commit.id()
    )))?;
    let Some(sub) = subpath else {
        return Ok(Some(root.id()));
    };
    match root.get_path(Path::new(sub)) {
        Ok(entry) if entry.kind() == Some(ObjectType::Tree) => Ok(Some(entry.id())),
        Ok(_) => Err(resolve(format!(
            "{sub} is a file, not a folder, in commit {}",
            commit.id()
        ))),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!(
            "looking up {sub} in commit {}",
            commit.id()
        ))(e)),
    }
}

impl Tree for GitTree {
    fn entries(&self) -> coxswain_schema::Result<Vec<TreeEntry>> {
        let repo = self.repo.lock().map_err(|e| tree_err(".", e))?;
        let tree = repo.find_tree(self.tree).map_err(|e| tree_err(".", e))?;
        let odb = repo.odb().map_err(|e| tree_err(".", e))?;
        let mut known = self.sizes.0.lock().map_err(|e| tree_err(".", e))?;
        let mut sizes = HashMap::with_capacity(known.len());
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
            let size = match known.get(&entry.id()) {
                Some(size) => *size,
                None => match odb.read_header(entry.id()) {
                    Ok((size, _)) => size as u64,
                    Err(e) => {
                        failure = Some(tree_err(&path, e));
                        return git2::TreeWalkResult::Abort;
                    }
                },
            };
            sizes.insert(entry.id(), size);
            ids.insert(path.clone(), entry.id());
            out.push(TreeEntry {
                path,
                kind,
                size,
                id: Some(entry.id().to_string()),
            });
            git2::TreeWalkResult::Ok
        })
        .map_err(|e| tree_err(".", e))?;
        if let Some(e) = failure {
            return Err(e);
        }
        *known = sizes;
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
