//! What a Git source is told to follow: the repository, the ref, the folder inside it, the
//! poll interval, where remote repositories are cached, and how to authenticate. Validation
//! happens here, before any network or disk access, so a mistake is reported with the field
//! it came from instead of as a libgit2 error halfway through a fetch.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// Flux polls a `GitRepository` every minute unless told otherwise; so do we.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// A Git source: a repository, a ref in it and a folder inside that ref's tree.
///
/// In a config file (field names as in YAML/JSON):
///
/// ```yaml
/// repo: ssh://git@example.com/team/deploy.git
/// reference: {branch: main}     # or {tag: v1.2.0}, {commit: 1a2b3c…}, or head (local only)
/// path: clusters/prod
/// interval: 1m
/// cache_dir: /var/lib/coxswain/git
/// auth: {private_key: /etc/coxswain/id_ed25519, known_hosts: /etc/coxswain/known_hosts}
/// push_notes: true              # push refs/notes/coxswain back to the remote
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A local path (a work tree, a folder inside one, or a bare repository), or a URL:
    /// `file://`, `git://`, `http(s)://`, `ssh://` or the scp-like `user@host:path`.
    pub repo: String,
    /// What to follow; Flux calls it `ref`, which is accepted too.
    #[serde(default, alias = "ref")]
    pub reference: Reference,
    /// A folder inside the repository; only the manifests below it are read.
    #[serde(default)]
    pub path: Option<String>,
    /// How often to look for a new commit when nothing (a watch, a webhook) says so sooner.
    #[serde(
        default = "default_interval",
        deserialize_with = "deserialize_duration"
    )]
    pub interval: Duration,
    /// Where bare caches of remote repositories live, one folder per URL. Required for a
    /// remote repository; unused for a local one.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Credentials for a remote repository.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Push the status notes (`refs/notes/coxswain`) to a remote repository after writing
    /// them into the cache. Off by default: it needs write access, which a read-only deploy
    /// key lacks. A local repository gets its notes written in place either way.
    #[serde(default)]
    pub push_notes: bool,
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}

/// The ref a source follows.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reference {
    /// The tip of a branch (`refs/heads/<name>`); follows force-pushes.
    Branch(String),
    /// A tag (`refs/tags/<name>`), annotated or not; a moved tag is followed.
    Tag(String),
    /// One commit (full or abbreviated hex); never changes.
    Commit(String),
    /// Whatever `HEAD` of a local repository points at, so `coxswain up` follows the
    /// branch that is checked out. Not allowed for a remote repository.
    Head,
}

impl Default for Reference {
    fn default() -> Self {
        Reference::Branch("main".to_string())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Branch(b) => write!(f, "branch {b}"),
            Reference::Tag(t) => write!(f, "tag {t}"),
            Reference::Commit(c) => write!(f, "commit {c}"),
            Reference::Head => f.write_str("HEAD"),
        }
    }
}

impl Reference {
    /// The full ref name this follows, when it follows one.
    pub fn refname(&self) -> Option<String> {
        match self {
            Reference::Branch(b) => Some(format!("refs/heads/{b}")),
            Reference::Tag(t) => Some(format!("refs/tags/{t}")),
            Reference::Commit(_) => None,
            Reference::Head => Some("HEAD".to_string()),
        }
    }
}

/// Credentials for a remote repository. Over HTTPS: `username` with `password` (basic), or a
/// `token` (sent as the password, with `username` or `git` as the user, which GitHub, GitLab
/// and Gitea all accept). Over SSH: a `private_key` file (or the ssh-agent when absent) and a
/// `known_hosts` file that the server's host key must be listed in.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    #[serde(default)]
    pub private_key_passphrase: Option<Secret>,
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
}

/// A password, token or passphrase. `Debug` never shows it, so a config can be logged.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the repository of a config is, as far as the transport goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A path on this machine, opened in place.
    Local(PathBuf),
    /// A URL fetched into a bare cache.
    Remote { url: String, transport: Transport },
}

/// The transport of a remote URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    File,
    Git,
    Http,
    Https,
    Ssh,
}

impl SourceConfig {
    /// A config for `repo` with every other field at its default.
    pub fn new(repo: impl Into<String>) -> Self {
        SourceConfig {
            repo: repo.into(),
            reference: Reference::default(),
            path: None,
            interval: DEFAULT_INTERVAL,
            cache_dir: None,
            auth: None,
            push_notes: false,
        }
    }

    /// What `coxswain up` uses: whatever is checked out in the local repository at `repo`.
    pub fn local_head(repo: impl Into<String>) -> Self {
        SourceConfig {
            reference: Reference::Head,
            ..SourceConfig::new(repo)
        }
    }

    /// Where the repository is. Follows Git's own rule for telling an scp-like address
    /// (`host:path`, a colon before any slash) from a local path.
    pub fn location(&self) -> Result<Location> {
        let repo = self.repo.trim();
        if repo.is_empty() {
            return Err(config("repo", "is empty"));
        }
        if repo.chars().any(char::is_control) {
            return Err(config("repo", "contains control characters"));
        }
        if let Some((scheme, rest)) = repo.split_once("://") {
            let transport = match scheme.to_ascii_lowercase().as_str() {
                "file" => Transport::File,
                "git" => Transport::Git,
                "http" => Transport::Http,
                "https" => Transport::Https,
                "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
                other => {
                    return Err(config(
                        "repo",
                        format!(
                            "unsupported URL scheme {other:?} (use file, git, http, https or ssh)"
                        ),
                    ));
                }
            };
            if transport == Transport::File {
                if !rest.starts_with('/') {
                    return Err(config(
                        "repo",
                        "a file:// URL needs an absolute path (file:///path/to/repo)",
                    ));
                }
            } else {
                let authority = rest.split('/').next().unwrap_or("");
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                if host.is_empty() || host.starts_with(':') {
                    return Err(config("repo", "the URL has no host"));
                }
                if matches!(transport, Transport::Http | Transport::Https)
                    && authority.contains('@')
                {
                    // A user or token in the URL would end up in logs and in the cache
                    // folder's config; auth keeps it out of both.
                    return Err(config(
                        "repo",
                        "do not put credentials in the URL; use auth.username and \
                         auth.password or auth.token",
                    ));
                }
            }
            return Ok(Location::Remote {
                url: repo.to_string(),
                transport,
            });
        }
        if let Some(colon) = repo.find(':')
            && !repo[..colon].contains('/')
        {
            let host = repo[..colon]
                .rsplit_once('@')
                .map_or(&repo[..colon], |(_, h)| h);
            if host.is_empty() {
                return Err(config("repo", "the scp-like address has no host"));
            }
            return Ok(Location::Remote {
                url: repo.to_string(),
                transport: Transport::Ssh,
            });
        }
        Ok(Location::Local(PathBuf::from(repo)))
    }

    /// True when the repository is a path on this machine.
    pub fn is_local(&self) -> bool {
        matches!(self.location(), Ok(Location::Local(_)))
    }

    /// `path` as a clean relative path (`a/b`), or `None` for the repository root.
    pub fn subpath(&self) -> Result<Option<String>> {
        let Some(raw) = &self.path else {
            return Ok(None);
        };
        normalize_subpath(raw).map_err(|reason| config("path", reason))
    }

    /// Checks every field, without touching the disk or the network.
    pub fn validate(&self) -> Result<()> {
        let location = self.location()?;
        self.validate_reference(&location)?;
        self.subpath()?;
        if self.interval.is_zero() {
            return Err(config("interval", "must be more than zero"));
        }
        if let Location::Remote { .. } = location {
            match &self.cache_dir {
                None => {
                    return Err(config(
                        "cache_dir",
                        "a remote repository needs a folder for its bare cache",
                    ));
                }
                Some(dir) if dir.as_os_str().is_empty() => {
                    return Err(config("cache_dir", "is empty"));
                }
                Some(_) => {}
            }
        }
        if let Some(auth) = &self.auth {
            validate_auth(auth, &location)?;
        } else if let Location::Remote {
            transport: Transport::Ssh,
            ..
        } = location
        {
            return Err(config(
                "auth.known_hosts",
                "an ssh repository needs a known_hosts file to verify the server's host key",
            ));
        }
        Ok(())
    }

    fn validate_reference(&self, location: &Location) -> Result<()> {
        match &self.reference {
            Reference::Branch(name) | Reference::Tag(name) => {
                let (field, kind) = if matches!(self.reference, Reference::Branch(_)) {
                    ("reference.branch", "branch")
                } else {
                    ("reference.tag", "tag")
                };
                if name.is_empty() {
                    return Err(config(field, "is empty"));
                }
                // The ref names Git itself would refuse (`..`, spaces, `~`, a trailing `.lock`):
                // refusing them here gives a message naming the field instead of "not found".
                let full = self.reference.refname().unwrap_or_default();
                if name.starts_with("refs/") || !git2::Reference::is_valid_name(&full) {
                    return Err(config(
                        field,
                        format!("{name:?} is not a valid {kind} name"),
                    ));
                }
            }
            Reference::Commit(hex) => {
                let ok =
                    (4..=64).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit());
                if !ok {
                    return Err(config(
                        "reference.commit",
                        format!("{hex:?} is not a commit id (4 to 40 hex digits)"),
                    ));
                }
            }
            Reference::Head => {
                if !matches!(location, Location::Local(_)) {
                    return Err(config(
                        "reference",
                        "head is only for a local repository; name a branch, tag or commit",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn validate_auth(auth: &Auth, location: &Location) -> Result<()> {
    let transport = match location {
        Location::Local(_) => {
            return Err(config("auth", "a local repository takes no credentials"));
        }
        Location::Remote { transport, .. } => *transport,
    };
    let http_fields = auth.password.is_some() || auth.token.is_some();
    let ssh_fields = auth.private_key.is_some()
        || auth.private_key_passphrase.is_some()
        || auth.known_hosts.is_some();
    match transport {
        Transport::Https | Transport::Http => {
            if ssh_fields {
                let field = if auth.private_key.is_some() {
                    "auth.private_key"
                } else if auth.known_hosts.is_some() {
                    "auth.known_hosts"
                } else {
                    "auth.private_key_passphrase"
                };
                return Err(config(field, "is for ssh repositories, not http(s)"));
            }
            if auth.password.is_some() && auth.token.is_some() {
                return Err(config("auth.token", "give a token or a password, not both"));
            }
            if auth.password.is_some() && auth.username.as_deref().is_none_or(str::is_empty) {
                return Err(config("auth.username", "a password needs a user name"));
            }
            if transport == Transport::Http && http_fields {
                let field = if auth.token.is_some() {
                    "auth.token"
                } else {
                    "auth.password"
                };
                return Err(config(
                    field,
                    "credentials are not sent over plain http; use https",
                ));
            }
        }
        Transport::Ssh => {
            if auth.token.is_some() {
                return Err(config("auth.token", "is for https repositories, not ssh"));
            }
            if auth.password.is_some() {
                return Err(config(
                    "auth.password",
                    "is for https repositories, not ssh",
                ));
            }
            if auth.private_key_passphrase.is_some() && auth.private_key.is_none() {
                return Err(config(
                    "auth.private_key_passphrase",
                    "is set but auth.private_key is not",
                ));
            }
            match &auth.known_hosts {
                None => {
                    return Err(config(
                        "auth.known_hosts",
                        "an ssh repository needs a known_hosts file to verify the server's \
                         host key",
                    ));
                }
                Some(p) if p.as_os_str().is_empty() => {
                    return Err(config("auth.known_hosts", "is empty"));
                }
                Some(_) => {}
            }
            if auth
                .private_key
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty())
            {
                return Err(config("auth.private_key", "is empty"));
            }
        }
        Transport::File | Transport::Git => {
            if http_fields || ssh_fields || auth.username.is_some() {
                return Err(config(
                    "auth",
                    "file:// and git:// repositories take no credentials",
                ));
            }
        }
    }
    Ok(())
}

/// `a/./b/` → `a/b`; refuses absolute paths, `..` and `.git`, which would leave the tree or
/// read Git's own files.
fn normalize_subpath(raw: &str) -> std::result::Result<Option<String>, String> {
    if raw.starts_with('/') {
        return Err(format!("{raw:?} must be relative to the repository root"));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{raw:?} must not contain '..'")),
            ".git" => return Err(format!("{raw:?} must not point into .git")),
            p if p.chars().any(char::is_control) => {
                return Err(format!("{raw:?} contains control characters"));
            }
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

fn config(field: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Parses a duration the way Kubernetes and Flux write them: a sequence of number+unit pairs
/// (`90s`, `1m30s`, `1h`, `500ms`); a bare number means seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{text:?}: a number needs a unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("{text:?}: expected a number before {rest:?}"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let step = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use ms, s, m or h)"
                ));
            }
        };
        total = total.saturating_add(step);
    }
    Ok(total)
}

fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// A stable, readable folder name for the cache of `url`: its host and path made safe for a
/// file name, plus a hash of the whole URL so two URLs never share a folder.
pub(crate) fn cache_folder_name(url: &str) -> String {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    // The user part says nothing about which repository this is.
    let without_user = match without_scheme.split_once('@') {
        Some((user, rest)) if !user.contains('/') => rest,
        _ => without_scheme,
    };
    let mut slug: String = without_user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = slug.trim_matches(|c| c == '_' || c == '.').to_string();
    slug = trimmed.chars().take(60).collect();
    let digest = super::digest::sha1(url.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    if slug.is_empty() {
        hex
    } else {
        format!("{slug}-{hex}")
    }
}

/// The path of a local repository, made absolute against the current directory.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn field(err: Error) -> String {
        match err {
            Error::Config { field, .. } => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn locations_follow_gits_rules() {
        let loc = |s: &str| SourceConfig::new(s).location().unwrap();
        assert_eq!(loc("./deploy"), Location::Local("./deploy".into()));
        assert_eq!(
            loc("/srv/a:b/repo"),
            Location::Local("/srv/a:b/repo".into())
        );
        assert!(matches!(
            loc("git@github.com:org/repo.git"),
            Location::Remote {
                transport: Transport::Ssh,
                ..
            }
        ));
        assert!(matches!(
            loc("file:///srv/repo.git"),
            Location::Remote {
                transport: Transport::File,
                ..
            }
        ));
        assert!(matches!(
            loc("https://example.com/r.git"),
            Location::Remote {
                transport: Transport::Https,
                ..
            }
        ));
        assert_eq!(
            field(SourceConfig::new("ftp://x/y").location().unwrap_err()),
            "repo"
        );
        assert_eq!(
            field(SourceConfig::new("file://rel").location().unwrap_err()),
            "repo"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let remote = |f: &dyn Fn(&mut SourceConfig)| {
            let mut c = SourceConfig::new("https://example.com/r.git");
            c.cache_dir = Some("/tmp/cache".into());
            f(&mut c);
            field(c.validate().unwrap_err())
        };
        assert_eq!(remote(&|c| c.cache_dir = None), "cache_dir");
        assert_eq!(remote(&|c| c.interval = Duration::ZERO), "interval");
        assert_eq!(remote(&|c| c.path = Some("../up".into())), "path");
        assert_eq!(remote(&|c| c.path = Some("/abs".into())), "path");
        assert_eq!(
            remote(&|c| c.reference = Reference::Branch("a..b".into())),
            "reference.branch"
        );
        assert_eq!(
            remote(&|c| c.reference = Reference::Tag("v 1".into())),
            "reference.tag"
        );
        assert_eq!(
            remote(&|c| c.reference = Reference::Commit("xyz".into())),
            "reference.commit"
        );
        assert_eq!(remote(&|c| c.reference = Reference::Head), "reference");
        assert_eq!(
            remote(&|c| c.repo = "https://user:pw@example.com/r.git".into()),
            "repo"
        );
        assert_eq!(
            remote(&|c| {
                c.auth = Some(Auth {
                    password: Some(Secret::new("pw")),
                    ..Auth::default()
                })
            }),
            "auth.username"
        );
        assert_eq!(
            remote(&|c| {
                c.auth = Some(Auth {
                    private_key: Some("/k".into()),
                    ..Auth::default()
                })
            }),
            "auth.private_key"
        );
        let mut ssh = SourceConfig::new("git@example.com:r.git");
        ssh.cache_dir = Some("/tmp/cache".into());
        assert_eq!(field(ssh.validate().unwrap_err()), "auth.known_hosts");
        ssh.auth = Some(Auth {
            known_hosts: Some("/etc/kh".into()),
            ..Auth::default()
        });
        ssh.validate().unwrap();
        let mut local = SourceConfig::local_head(".");
        local.validate().unwrap();
        local.auth = Some(Auth::default());
        assert_eq!(field(local.validate().unwrap_err()), "auth");
    }

    #[test]
    fn config_files_deserialize_and_reject_unknown_fields() {
        let c: SourceConfig = serde_json::from_value(serde_json::json!({
            "repo": "https://example.com/r.git",
            "ref": {"tag": "v1"},
            "path": "./apps/",
            "interval": "1m30s",
            "cache_dir": "/var/cache",
            "auth": {"token": "s3cr3t-token"}
        }))
        .unwrap();
        assert_eq!(c.reference, Reference::Tag("v1".into()));
        assert_eq!(c.interval, Duration::from_secs(90));
        assert_eq!(c.subpath().unwrap().as_deref(), Some("apps"));
        c.validate().unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");

        let d: SourceConfig = serde_json::from_value(serde_json::json!({"repo": "."})).unwrap();
        assert_eq!(d.reference, Reference::Branch("main".into()));
        assert_eq!(d.interval, DEFAULT_INTERVAL);
        let head: SourceConfig =
            serde_json::from_value(serde_json::json!({"repo": ".", "reference": "head"})).unwrap();
        assert_eq!(head.reference, Reference::Head);

        let unknown = serde_json::from_value::<SourceConfig>(
            serde_json::json!({"repo": ".", "branch": "main"}),
        );
        assert!(unknown.unwrap_err().to_string().contains("branch"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h5m").unwrap(), Duration::from_secs(3900));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn cache_names_are_stable_readable_and_distinct() {
        let a = cache_folder_name("https://example.com/org/repo.git");
        assert_eq!(a, cache_folder_name("https://example.com/org/repo.git"));
        assert!(a.starts_with("example.com_org_repo.git-"), "{a}");
        assert_ne!(a, cache_folder_name("ssh://example.com/org/repo.git"));
        assert!(!cache_folder_name("ssh://git@h/r").contains("git@"));
    }
}
