//! A plain folder of manifests that is not in a Git repository: no commits, no refs and no
//! notes, just files that are read again when they change (see
//! [`Triggers::for_folder`](super::watch::Triggers::for_folder)). Useful for trying manifests
//! out before they go into Git.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use coxswain_schema::tree::DirTree;

use super::config::{Reference, SourceConfig, absolute};
use crate::error::{Error, Result};

/// A folder on disk, watched and re-read as a whole.
#[derive(Clone, Debug)]
pub struct FolderSource {
    root: PathBuf,
    interval: Duration,
}

impl FolderSource {
    /// The folder `repo`/`path` of a config whose `repo` is a local path. A folder has no
    /// refs, so the reference must be left at its default or be `head`.
    pub fn open(config: &SourceConfig) -> Result<FolderSource> {
        if !config.is_local() {
            return Err(Error::Config {
                field: "repo".into(),
                reason: "a folder source needs a local path".into(),
            });
        }
        if !matches!(config.reference, Reference::Head) && config.reference != Reference::default()
        {
            return Err(Error::Config {
                field: "reference".into(),
                reason: "a plain folder has no branches, tags or commits".into(),
            });
        }
        config.validate()?;
        let mut root = absolute(Path::new(config.repo.trim()))?;
        if let Some(sub) = config.subpath()? {
            root.push(sub);
        }
        if !root.is_dir() {
            return Err(Error::Config {
                field: if config.path.is_some() {
                    "path"
                } else {
                    "repo"
                }
                .into(),
                reason: format!("{} is not a folder", root.display()),
            });
        }
        Ok(FolderSource {
            root,
            interval: config.interval,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The manifests as they are on disk now.
    pub fn tree(&self) -> Result<DirTree> {
        Ok(DirTree::new(&self.root)?)
    }

    /// A number that changes when any file below the root is added, removed, resized or
    /// rewritten (by its modification time), so a wake-up that changed nothing (an editor's
    /// swap file, a poll) can skip parsing. Reads metadata only.
    pub fn fingerprint(&self) -> Result<u64> {
        // DefaultHasher::new() has fixed keys: the value is stable for the life of the
        // process, which is as long as anyone compares it.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hash_dir(&self.root, &mut hasher)?;
        Ok(hasher.finish())
    }
}

fn hash_dir(dir: &Path, hasher: &mut impl Hasher) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        name.hash(hasher);
        meta.len().hash(hasher);
        if let Ok(modified) = meta.modified() {
            modified.hash(hasher);
        }
        if meta.is_dir() {
            hash_dir(&path, hasher)?;
        }
    }
    Ok(())
}
