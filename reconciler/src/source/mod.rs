//! Where desired state comes from: a Git repository (local, or fetched into a bare cache) or,
//! for trying things out, a plain folder.
//!
//! Layout: [`config`] (what to follow, validated up front) → [`git`] (open, fetch, resolve the
//! ref to a commit, diff two commits, read trailers) → [`tree`] (the manifests of a commit
//! as a `coxswain_schema::tree::Tree`, read with no checkout) and [`watch`] (when to look
//! again: notify on local refs, webhooks, the poll interval, coalesced). [`folder`] is the
//! plain-folder counterpart of [`git`]; [`known_hosts`] checks ssh host keys.

pub mod config;
mod digest;
pub mod folder;
pub mod git;
pub mod known_hosts;
pub mod tree;
pub mod watch;

use std::path::Path;

pub use config::{
    Auth, DEFAULT_INTERVAL, Location, Reference, Secret, SourceConfig, Transport, parse_duration,
};
pub use folder::FolderSource;
pub use git::{GitSource, Head, RemoteAccess};
pub use tree::{GitTree, SizeCache};
pub use watch::{Triggers, Wake, WebhookTrigger};

use crate::error::Result;

/// A source opened from a config: Git when the path or URL is a repository, a folder when it
/// is a local path outside any repository.
#[derive(Debug)]
pub enum Source {
    Git(Box<GitSource>),
    Folder(FolderSource),
}

impl Source {
    /// Opens what `config` names, picking [`FolderSource`] only for a local path that no Git
    /// repository contains.
    pub fn open(config: &SourceConfig) -> Result<Source> {
        config.validate()?;
        if let Location::Local(path) = config.location()?
            && path.exists()
            && !in_git_repository(&path)
        {
            return Ok(Source::Folder(FolderSource::open(config)?));
        }
        Ok(Source::Git(Box::new(GitSource::open(config)?)))
    }

    /// The triggers that fit the source.
    pub fn triggers(&self) -> Result<Triggers> {
        match self {
            Source::Git(git) => Triggers::for_git(git),
            Source::Folder(folder) => Triggers::for_folder(folder),
        }
    }
}

/// True when `path` is inside a Git repository (work tree, git dir or bare repository).
pub fn in_git_repository(path: &Path) -> bool {
    git2::Repository::discover(path).is_ok()
}
