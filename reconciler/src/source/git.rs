//! The Git source: finds the commit a [`SourceConfig`] points at and reads what is in it.
//!
//! A local repository is opened where it is: no fetch, no copy, and notes are written
//! straight into it. A remote one is fetched by libgit2 into a bare cache, one folder per URL
//! under `cache_dir`, fetching only the configured ref with a forced refspec so a force-push
//! is followed like any other move. Nothing here assumes fast-forward: every poll resolves the
//! ref afresh and hands back whatever commit it names.
//!
//! All calls block (disk, network); an async caller runs them on `spawn_blocking`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, FetchOptions,
    FetchPrune, Oid, ProxyOptions, RemoteCallbacks, Repository,
};

use super::config::{
    Auth, Location, Reference, SourceConfig, Transport, absolute, cache_folder_name,
};
use super::known_hosts::KnownHosts;
use super::tree::{GitTree, SizeCache, subtree_id};
use crate::error::{Error, Result};

/// The commit a ref resolved to, with what a status report shows about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Full hex id.
    pub commit: String,
    pub message: String,
    /// The first paragraph of the message on one line.
    pub summary: String,
    /// `Name <email>`.
    pub author: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
}

/// A repository and the ref in it that a source follows.
pub struct GitSource {
    config: SourceConfig,
    location: Location,
    /// How the repository is named in logs and errors: the URL, or the local path.
    display: String,
    repo: Repository,
    /// Where to open another handle on the same repository (for a [`GitTree`]).
    reopen: PathBuf,
    /// `path` of the config, prefixed with the folder `repo` named inside a work tree.
    subpath: Option<String>,
    access: RemoteAccess,
    last: Option<Head>,
    /// Blob sizes of the last tree read, for the next one (see [`GitTree::with_sizes`]).
    sizes: SizeCache,
}

/// How to talk to a remote repository: credentials from the config and the ssh host key
/// check. Fetching and pushing notes share it, so both authenticate and verify the same way.
#[derive(Clone, Debug, Default)]
pub struct RemoteAccess {
    auth: Option<Auth>,
    known_hosts: Option<KnownHosts>,
    /// Port of an ssh remote, which host key lookups need.
    ssh_port: u16,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("repo", &self.display)
            .field("git_dir", &self.repo.path())
            .field("reference", &self.config.reference)
            .field("subpath", &self.subpath)
            .finish_non_exhaustive()
    }
}

impl GitSource {
    /// Validates `config` and opens the repository: in place for a local path, or the bare
    /// cache (created when missing) for a remote URL. Does not fetch.
    pub fn open(config: &SourceConfig) -> Result<GitSource> {
        config.validate()?;
        let location = config.location()?;
        let mut subpath = config.subpath()?;
        let _span = tracing::info_span!("git_open", repo = %config.repo).entered();
        let (repo, reopen, display, known_hosts, ssh_port) = match &location {
            Location::Local(path) => {
                let abs = absolute(path)?;
                if !abs.exists() {
                    return Err(Error::Config {
                        field: "repo".into(),
                        reason: format!("{} does not exist", abs.display()),
                    });
                }
                let repo = Repository::discover(&abs).map_err(|e| {
                    if e.code() == git2::ErrorCode::NotFound {
                        Error::Config {
                            field: "repo".into(),
                            reason: format!(
                                "{} is not inside a Git repository (a plain folder is a \
                                 folder source)",
                                abs.display()
                            ),
                        }
                    } else {
                        Error::git(format!("opening {}", abs.display()))(e)
                    }
                })?;
                // `repo` may name a folder inside a work tree (`coxswain up` on
                // `examples-repo/`): that folder becomes a prefix of `path`.
                let reopen = match repo.workdir() {
                    Some(workdir) => {
                        let workdir = canonical(workdir)?;
                        let here = canonical(&abs)?;
                        if let Ok(rel) = here.strip_prefix(&workdir)
                            && !rel.as_os_str().is_empty()
                        {
                            let rel = rel.to_string_lossy().into_owned();
                            subpath = Some(match subpath {
                                Some(p) => format!("{rel}/{p}"),
                                None => rel,
                            });
                        }
                        workdir
                    }
                    None => canonical(repo.path())?,
                };
                (repo, reopen, abs.display().to_string(), None, 22)
            }
            Location::Remote { url, transport } => {
                let cache_root = config.cache_dir.as_deref().ok_or_else(|| Error::Config {
                    field: "cache_dir".into(),
                    reason: "a remote repository needs a folder for its bare cache".into(),
                })?;
                let known_hosts = match config.auth.as_ref().and_then(|a| a.known_hosts.as_ref()) {
                    Some(path) if *transport == Transport::Ssh => {
                        Some(KnownHosts::load(path).map_err(|reason| Error::Config {
                            field: "auth.known_hosts".into(),
                            reason,
                        })?)
                    }
                    _ => None,
                };
                let port = if *transport == Transport::Ssh {
                    ssh_port(url)?
                } else {
                    22
                };
                let dir = absolute(&cache_root.join(cache_folder_name(url)))?;
                let repo = open_cache(&dir)?;
                (repo, dir, url.clone(), known_hosts, port)
            }
        };
        tracing::debug!(git_dir = %repo.path().display(), subpath = ?subpath, "opened");
        Ok(GitSource {
            config: config.clone(),
            location,
            display,
            repo,
            reopen,
            subpath,
            access: RemoteAccess {
                auth: config.auth.clone(),
                known_hosts,
                ssh_port,
            },
            last: None,
            sizes: SizeCache::default(),
        })
    }

    pub fn config(&self) -> &SourceConfig {
        &self.config
    }

    /// The folder inside the repository that manifests are read from (`None`: the root).
    pub fn subpath(&self) -> Option<&str> {
        self.subpath.as_deref()
    }

    /// True when the repository is fetched into a bare cache.
    pub fn is_remote(&self) -> bool {
        matches!(self.location, Location::Remote { .. })
    }

    /// Where and how to push notes: the remote URL and its access, when the source is remote
    /// and the config asks for notes to be pushed (`push_notes`).
    pub fn note_remote(&self) -> Option<(String, RemoteAccess)> {
        match &self.location {
            Location::Remote { url, .. } if self.config.push_notes => {
                Some((url.clone(), self.access.clone()))
            }
            _ => None,
        }
    }

    /// The repository's git dir and common dir (they differ for a linked worktree), for a
    /// local repository; a remote one changes only when we fetch, so there is nothing to watch.
    pub fn watch_dirs(&self) -> Option<(PathBuf, PathBuf)> {
        match self.location {
            Location::Local(_) => Some((
                self.repo.path().to_path_buf(),
                self.repo.commondir().to_path_buf(),
            )),
            Location::Remote { .. } => None,
        }
    }

    /// Follows another ref from the next [`GitSource::fetch`] on (a config change). The
    /// commit it names need not descend from the one before.
    pub fn set_reference(&mut self, reference: Reference) -> Result<()> {
        let mut next = self.config.clone();
        next.reference = reference;
        next.validate()?;
        self.config = next;
        self.last = None;
        Ok(())
    }

    /// Fetches (a remote only) and resolves the ref to its commit.
    pub fn fetch(&mut self) -> Result<Head> {
        let span = tracing::info_span!(
            "git_fetch",
            repo = %self.display,
            reference = %self.config.reference,
        );
        let _enter = span.enter();
        if let Location::Remote { url, .. } = &self.location {
            self.fetch_remote(url)?;
        }
        let oid = self.resolve_oid()?;
        // The cheap path of a poll that finds nothing new: a ref read and a peel, no tree,
        // and the description of the commit is the one made when it was new.
        if let Some(last) = &self.last
            && last.commit == oid.to_string()
        {
            return Ok(last.clone());
        }
        let head = self.describe_oid(oid)?;
        tracing::info!(commit = %head.commit, summary = %head.summary, "resolved");
        self.last = Some(head.clone());
        Ok(head)
    }

    /// The commit the ref names now, without fetching and without reading any tree.
    pub fn resolve(&self) -> Result<String> {
        self.resolve_oid().map(|oid| oid.to_string())
    }

    /// What a commit says about itself.
    pub fn describe(&self, commit: &str) -> Result<Head> {
        let oid = self.commit_oid(commit)?;
        self.describe_oid(oid)
    }

    /// The manifests folder of `commit`, read with no checkout.
    pub fn tree(&self, commit: &str) -> Result<GitTree> {
        let oid = self.commit_oid(commit)?;
        let repo = Repository::open(&self.reopen)
            .map_err(Error::git(format!("opening {}", self.reopen.display())))?;
        Ok(GitTree::at(repo, oid, self.subpath.as_deref(), commit)?.with_sizes(self.sizes.clone()))
    }

    /// Files below the source's folder that differ between two commits, relative to that
    /// folder, sorted. A folder missing from one side counts as empty there.
    pub fn changed_paths(&self, old: &str, new: &str) -> Result<Vec<String>> {
        let _span = tracing::debug_span!("changed_paths", old, new).entered();
        let find = |commit: &str| -> Result<Option<git2::Tree<'_>>> {
            let oid = self.commit_oid(commit)?;
            match subtree_id(&self.repo, oid, self.subpath.as_deref(), commit)? {
                Some(id) => self
                    .repo
                    .find_tree(id)
                    .map(Some)
                    .map_err(Error::git(format!("reading tree {id}"))),
                None => Ok(None),
            }
        };
        let (old_tree, new_tree) = (find(old)?, find(new)?);
        let diff = self
            .repo
            .diff_tree_to_tree(old_tree.as_ref(), new_tree.as_ref(), None)
            .map_err(Error::git(format!("diffing {old}..{new}")))?;
        let mut paths = BTreeSet::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(p) = file.path() {
                    paths.insert(p.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        Ok(paths.into_iter().collect())
    }

    /// The value of trailer `key` (`Coxswain-Allow-Prune: yes`) in `commit`'s message; keys
    /// compare without case, as Git's do, and the last one given wins.
    pub fn trailer(&self, commit: &str, key: &str) -> Result<Option<String>> {
        let oid = self.commit_oid(commit)?;
        let c = self
            .repo
            .find_commit(oid)
            .map_err(Error::git(format!("reading commit {oid}")))?;
        let message = String::from_utf8_lossy(c.message_bytes()).into_owned();
        let trailers = git2::message_trailers_strs(&message)
            .map_err(Error::git(format!("parsing the trailers of {oid}")))?;
        Ok(trailers
            .iter()
            .rfind(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim().to_string()))
    }

    /// The repository notes go into: the local repository itself, or the bare cache of a
    /// remote (from where they can be pushed).
    pub fn repo_for_notes(&self) -> &Repository {
        &self.repo
    }

    /// The git dir of [`GitSource::repo_for_notes`], to open another handle on another thread.
    pub fn git_dir(&self) -> &Path {
        self.repo.path()
    }

    fn resolve_oid(&self) -> Result<Oid> {
        let reference = &self.config.reference;
        let not_found = |reason: String| Error::Resolve {
            repo: self.display.clone(),
            reference: reference.to_string(),
            reason,
        };
        let found = match reference {
            Reference::Head => self.repo.head(),
            Reference::Branch(_) | Reference::Tag(_) => {
                let name = reference.refname().unwrap_or_default();
                self.repo.find_reference(&name)
            }
            Reference::Commit(hex) => {
                return self
                    .repo
                    .find_commit_by_prefix(hex)
                    .map(|c| c.id())
                    .map_err(|e| not_found(e.message().to_string()));
            }
        };
        let r = found.map_err(|e| match e.code() {
            git2::ErrorCode::NotFound => not_found(format!("no {reference} in this repository")),
            git2::ErrorCode::UnbornBranch => not_found("HEAD has no commits yet".to_string()),
            _ => not_found(e.message().to_string()),
        })?;
        r.peel_to_commit()
            .map(|c| c.id())
            .map_err(|e| not_found(format!("does not point at a commit: {}", e.message())))
    }

    /// A full hex id, an abbreviation, or anything `git rev-parse` takes, to a commit id.
    fn commit_oid(&self, commit: &str) -> Result<Oid> {
        let resolve = |reason: String| Error::Resolve {
            repo: self.display.clone(),
            reference: commit.to_string(),
            reason,
        };
        if commit.len() == 40
            && let Ok(oid) = Oid::from_str(commit)
        {
            return match self.repo.find_object(oid, None) {
                Ok(o) => o
                    .peel_to_commit()
                    .map(|c| c.id())
                    .map_err(|e| resolve(e.message().to_string())),
                Err(e) => Err(resolve(e.message().to_string())),
            };
        }
        self.repo
            .revparse_single(commit)
            .and_then(|o| o.peel_to_commit())
            .map(|c| c.id())
            .map_err(|e| resolve(e.message().to_string()))
    }

    fn describe_oid(&self, oid: Oid) -> Result<Head> {
        let c = self
            .repo
            .find_commit(oid)
            .map_err(Error::git(format!("reading commit {oid}")))?;
        let author = c.author();
        Ok(Head {
            commit: oid.to_string(),
            message: String::from_utf8_lossy(c.message_bytes()).into_owned(),
            summary: c
                .summary_bytes()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default(),
            author: format!(
                "{} <{}>",
                String::from_utf8_lossy(author.name_bytes()),
                String::from_utf8_lossy(author.email_bytes())
            ),
            time: c.time().seconds(),
        })
    }

    /// Brings the configured ref of the remote into the cache, see [`Self::fetch_once`].
    ///
    /// libgit2's local transport (`file://`) lists the served repository's refs and then
    /// reads each one, so a ref that another writer deletes in between (the notes writer's
    /// short-lived refs when a coxswain writes notes into that repository, a user's tooling)
    /// fails the attempt with "reference not found". That says nothing about the ref we want,
    /// so the attempt is made again; a fetch is idempotent.
    fn fetch_remote(&self, url: &str) -> Result<()> {
        const ATTEMPTS: u32 = 8;
        let mut attempt = 1;
        loop {
            match self.fetch_once(url) {
                Err(Error::Git { source, context })
                    if attempt < ATTEMPTS
                        // The transport reports it as a generic error of class Reference.
                        && source.class() == git2::ErrorClass::Reference
                        && source.message().ends_with("not found") =>
                {
                    tracing::debug!(attempt, %context, error = %source, "a listed ref vanished; fetching again");
                    // Step out of step with a writer that is mid-burst.
                    std::thread::sleep(std::time::Duration::from_millis(2 * u64::from(attempt)));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One fetch. Asks the remote for its refs first: when the ref has not moved, no pack is
    /// negotiated at all; when it is gone, that is an error rather than a silent sync of the
    /// stale copy in the cache.
    fn fetch_once(&self, url: &str) -> Result<()> {
        let reference = &self.config.reference;
        let (wanted, refspecs): (Option<String>, Vec<String>) = match reference {
            Reference::Branch(_) | Reference::Tag(_) => {
                let name = reference.refname().unwrap_or_default();
                (Some(name.clone()), vec![format!("+{name}:{name}")])
            }
            Reference::Commit(hex) => {
                if self.repo.find_commit_by_prefix(hex).is_ok() {
                    // A commit never changes: once it is in the cache there is nothing to fetch.
                    return Ok(());
                }
                // Servers need not let us ask for a bare commit id (GitHub does, git daemon
                // does not by default), so take every branch and tag it may be reachable from.
                (
                    None,
                    vec![
                        "+refs/heads/*:refs/heads/*".to_string(),
                        "+refs/tags/*:refs/tags/*".to_string(),
                    ],
                )
            }
            Reference::Head => {
                return Err(Error::Config {
                    field: "reference".into(),
                    reason: "head is only for a local repository".into(),
                });
            }
        };
        let mut remote = self
            .repo
            .remote_anonymous(url)
            .map_err(Error::git(format!("remote {url}")))?;
        let mut proxy = ProxyOptions::new();
        proxy.auto();
        let mut conn = remote
            .connect_auth(Direction::Fetch, Some(self.callbacks()), Some(proxy))
            .map_err(Error::git(format!("connecting to {url}")))?;
        if let Some(name) = &wanted {
            let advertised = conn
                .list()
                .map_err(Error::git(format!("listing the refs of {url}")))?
                .iter()
                .find(|h| h.name() == name)
                .map(|h| h.oid());
            let Some(advertised) = advertised else {
                return Err(Error::Resolve {
                    repo: url.to_string(),
                    reference: reference.to_string(),
                    reason: format!("the remote has no {name}"),
                });
            };
            if self.repo.refname_to_id(name).ok() == Some(advertised) {
                tracing::debug!(%advertised, "up to date");
                return Ok(());
            }
        }
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(self.callbacks())
            .download_tags(AutotagOption::None)
            .update_fetchhead(false)
            .prune(FetchPrune::Off);
        let started = std::time::Instant::now();
        conn.remote()
            .fetch(&refspecs, Some(&mut options), Some("coxswain: fetch"))
            .map_err(Error::git(format!("fetching {reference} from {url}")))?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "fetched"
        );
        Ok(())
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        self.access.callbacks()
    }
}

impl RemoteAccess {
    /// Credentials from the config, and the ssh host key check. Each credential type is
    /// offered once per call: libgit2 asks again after a rejection, and answering with the
    /// same credential forever would turn a wrong password into a hang.
    pub fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut callbacks = RemoteCallbacks::new();
        let auth = self.auth.as_ref();
        let mut tried = CredentialType::empty();
        callbacks.credentials(move |_url, user_from_url, allowed| {
            let user = auth
                .and_then(|a| a.username.as_deref())
                .or(user_from_url)
                .unwrap_or("git");
            let secret = auth.and_then(|a| a.token.as_ref().or(a.password.as_ref()));
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && !tried.contains(CredentialType::USER_PASS_PLAINTEXT)
                && let Some(secret) = secret
            {
                tried |= CredentialType::USER_PASS_PLAINTEXT;
                return Cred::userpass_plaintext(user, secret.expose());
            }
            if allowed.contains(CredentialType::SSH_KEY) && !tried.contains(CredentialType::SSH_KEY)
            {
                tried |= CredentialType::SSH_KEY;
                return match auth.and_then(|a| a.private_key.as_deref()) {
                    Some(key) => Cred::ssh_key(
                        user,
                        None,
                        key,
                        auth.and_then(|a| a.private_key_passphrase.as_ref())
                            .map(|p| p.expose()),
                    ),
                    None => Cred::ssh_key_from_agent(user),
                };
            }
            if allowed.contains(CredentialType::USERNAME)
                && !tried.contains(CredentialType::USERNAME)
            {
                tried |= CredentialType::USERNAME;
                return Cred::username(user);
            }
            Err(git2::Error::from_str(
                "authentication failed: no other credentials to try (see auth in the source \
                 config)",
            ))
        });
        let known_hosts = self.known_hosts.as_ref();
        let port = self.ssh_port;
        callbacks.certificate_check(move |cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: libgit2's own verification against the system's CA roots stands.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let verdict = match (known_hosts, hostkey.hostkey()) {
                (Some(known), Some(key)) => known.check(host, port, key),
                (None, _) => Err("no known_hosts file to verify the host key against".into()),
                (_, None) => Err("the server's raw host key is not available".into()),
            };
            match verdict {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(reason) => {
                    tracing::warn!(host, %reason, "ssh host key rejected");
                    Err(git2::Error::from_str(&reason))
                }
            }
        });
        callbacks
    }
}

/// Opens the bare cache at `dir`, creating it on first use.
fn open_cache(dir: &Path) -> Result<Repository> {
    if dir.join("HEAD").exists() {
        return Repository::open_bare(dir)
            .map_err(Error::git(format!("opening the cache {}", dir.display())));
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    tracing::info!(cache = %dir.display(), "creating bare cache");
    Repository::init_bare(dir).map_err(Error::git(format!("creating the cache {}", dir.display())))
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The port of `ssh://[user@]host[:port]/path`; 22 for that without a port and for scp-like
/// `user@host:path`.
fn ssh_port(url: &str) -> Result<u16> {
    let Some((_, rest)) = url.split_once("://") else {
        return Ok(22);
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // `[::1]:2222`: the port follows the bracket.
    let port = match host_port.rsplit_once(']') {
        Some((_, after)) => after.strip_prefix(':'),
        None => host_port.rsplit_once(':').map(|(_, p)| p),
    };
    match port {
        None | Some("") => Ok(22),
        Some(p) => p.parse().map_err(|_| Error::Config {
            field: "repo".into(),
            reason: format!("{p:?} is not a port number"),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ssh_ports() {
        assert_eq!(ssh_port("git@example.com:org/r.git").unwrap(), 22);
        assert_eq!(ssh_port("ssh://git@example.com/org/r.git").unwrap(), 22);
        assert_eq!(
            ssh_port("ssh://git@example.com:2222/org/r.git").unwrap(),
            2222
        );
        assert_eq!(ssh_port("ssh://[::1]:2200/r.git").unwrap(), 2200);
        assert!(ssh_port("ssh://h:port/r").is_err());
    }
}
