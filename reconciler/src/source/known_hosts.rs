//! Host key verification for ssh remotes against an OpenSSH `known_hosts` file, the way Flux
//! requires one: a server whose key is not listed, or listed with another key, is refused.
//! libgit2 only consults `~/.ssh/known_hosts` of the user running it, which is not the file
//! configured for a source, so the certificate callback of a fetch asks this module instead.
//!
//! Supported: plain and comma-separated host patterns, `*`/`?` wildcards, `!` negation,
//! `[host]:port` for non-default ports, hashed names (`|1|salt|hash`, as `ssh-keyscan -H`
//! writes them) and `@revoked`. `@cert-authority` lines are skipped: libgit2 hands us the raw
//! host key, not a certificate.

use std::path::{Path, PathBuf};

use super::digest::{base64_decode, hmac_sha1};

/// The parsed entries of one `known_hosts` file.
#[derive(Clone, Debug)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    revoked: bool,
    patterns: Vec<Pattern>,
    key: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Pattern {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Glob { glob: String, negated: bool },
}

impl KnownHosts {
    /// Reads and parses `path`. A line that cannot be parsed is an error rather than skipped:
    /// a typo there would otherwise surface much later as "unknown host".
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or("");
            let mut revoked = false;
            if first.starts_with('@') {
                match first {
                    "@revoked" => revoked = true,
                    "@cert-authority" => continue,
                    other => {
                        return Err(format!(
                            "{}:{}: unknown marker {other}",
                            path.display(),
                            n + 1
                        ));
                    }
                }
                first = fields.next().unwrap_or("");
            }
            let (Some(_key_type), Some(key)) = (fields.next(), fields.next()) else {
                return Err(format!(
                    "{}:{}: expected \"hosts key-type base64-key\"",
                    path.display(),
                    n + 1
                ));
            };
            let key = base64_decode(key).ok_or_else(|| {
                format!("{}:{}: the key is not valid base64", path.display(), n + 1)
            })?;
            let patterns = first
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| parse_pattern(p).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1)))
                .collect::<Result<Vec<_>, _>>()?;
            entries.push(Entry {
                revoked,
                patterns,
                key,
            });
        }
        if entries.is_empty() {
            return Err(format!("{} lists no host keys", path.display()));
        }
        Ok(KnownHosts {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Accepts `key` (the raw SSH wire-format public key blob) for `host:port`, or says why not.
    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Result<(), String> {
        let name = if port == 22 {
            host.to_ascii_lowercase()
        } else {
            format!("[{}]:{port}", host.to_ascii_lowercase())
        };
        if self
            .entries
            .iter()
            .any(|e| e.revoked && e.key == key && (e.patterns.is_empty() || e.matches(&name)))
        {
            return Err(format!(
                "the host key of {name} is marked @revoked in {}",
                self.path.display()
            ));
        }
        let listed: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| !e.revoked && e.matches(&name))
            .collect();
        if listed.iter().any(|e| e.key == key) {
            return Ok(());
        }
        let offered = key_type(key).unwrap_or("unknown");
        if listed.is_empty() {
            Err(format!(
                "{name} is not in {}; refusing an unknown host (add its key, e.g. from \
                 ssh-keyscan)",
                self.path.display()
            ))
        } else {
            Err(format!(
                "the {offered} host key of {name} does not match any key for it in {}; \
                 refusing the connection (the key changed, or someone is in between)",
                self.path.display()
            ))
        }
    }
}

impl Entry {
    fn matches(&self, name: &str) -> bool {
        let mut positive = false;
        for p in &self.patterns {
            match p {
                Pattern::Hashed { salt, hash } => {
                    if hmac_sha1(salt, name.as_bytes()).as_slice() == hash.as_slice() {
                        positive = true;
                    }
                }
                Pattern::Glob { glob, negated } => {
                    if glob_match(glob.as_bytes(), name.as_bytes()) {
                        if *negated {
                            return false;
                        }
                        positive = true;
                    }
                }
            }
        }
        positive
    }
}

fn parse_pattern(p: &str) -> Result<Pattern, String> {
    if let Some(rest) = p.strip_prefix("|1|") {
        let (salt, hash) = rest
            .split_once('|')
            .ok_or_else(|| format!("malformed hashed host {p:?}"))?;
        let salt = base64_decode(salt).ok_or_else(|| format!("malformed hashed host {p:?}"))?;
        let hash = base64_decode(hash).ok_or_else(|| format!("malformed hashed host {p:?}"))?;
        return Ok(Pattern::Hashed { salt, hash });
    }
    let (glob, negated) = match p.strip_prefix('!') {
        Some(rest) => (rest, true),
        None => (p, false),
    };
    Ok(Pattern::Glob {
        glob: glob.to_ascii_lowercase(),
        negated,
    })
}

/// `*` any run, `?` one character; everything else literal.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && (glob[g] == b'?' || glob[g] == text[t]) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == b'*' {
            star = Some((g, t));
            g += 1;
        } else if let Some((sg, st)) = star {
            g = sg + 1;
            t = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

/// The algorithm name at the start of an SSH public key blob.
fn key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g";

    fn kh(text: &str) -> KnownHosts {
        KnownHosts::parse(text, Path::new("known_hosts")).unwrap()
    }

    fn key(b64: &str) -> Vec<u8> {
        base64_decode(b64).unwrap()
    }

    #[test]
    fn plain_hosts_and_ports() {
        let k = kh(&format!(
            "# comment\nexample.com,10.0.0.1 ssh-ed25519 {KEY_A}\n[git.local]:2222 ssh-ed25519 {KEY_B} me@host\n"
        ));
        k.check("example.com", 22, &key(KEY_A)).unwrap();
        k.check("EXAMPLE.com", 22, &key(KEY_A)).unwrap();
        k.check("10.0.0.1", 22, &key(KEY_A)).unwrap();
        let err = k.check("example.com", 22, &key(KEY_B)).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        assert!(err.contains("ssh-ed25519"), "{err}");
        let err = k.check("example.com", 2222, &key(KEY_A)).unwrap_err();
        assert!(err.contains("not in"), "{err}");
        k.check("git.local", 2222, &key(KEY_B)).unwrap();
        assert!(k.check("other.org", 22, &key(KEY_A)).is_err());
    }

    #[test]
    fn hashed_hosts() {
        // Made with HMAC-SHA1 over the host name and salt "0123456789abcdefghij", as
        // `ssh-keygen -H` does.
        let k = kh(&format!(
            "|1|MDEyMzQ1Njc4OWFiY2RlZmdoaWo=|jaHXoMQTU/+rEgquOJTQzPGCF4I= ssh-ed25519 {KEY_A}\n\
             |1|MDEyMzQ1Njc4OWFiY2RlZmdoaWo=|B4JlprCduyj/8/3b1qnq1ugMSoY= ssh-ed25519 {KEY_B}\n"
        ));
        k.check("example.com", 22, &key(KEY_A)).unwrap();
        k.check("example.com", 2222, &key(KEY_B)).unwrap();
        assert!(k.check("example.org", 22, &key(KEY_A)).is_err());
        assert!(k.check("example.com", 22, &key(KEY_B)).is_err());
    }

    #[test]
    fn wildcards_negation_and_revocation() {
        let k = kh(&format!(
            "*.corp.example,!evil.corp.example ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 {KEY_B}\n\
             @cert-authority *.corp.example ssh-ed25519 {KEY_B}\n"
        ));
        k.check("git.corp.example", 22, &key(KEY_A)).unwrap();
        assert!(k.check("evil.corp.example", 22, &key(KEY_A)).is_err());
        let err = k.check("git.corp.example", 22, &key(KEY_B)).unwrap_err();
        assert!(err.contains("revoked"), "{err}");
    }

    #[test]
    fn malformed_files_are_errors() {
        let p = Path::new("kh");
        assert!(KnownHosts::parse("", p).is_err());
        assert!(KnownHosts::parse("host ssh-ed25519\n", p).is_err());
        assert!(KnownHosts::parse("host ssh-ed25519 !!notbase64\n", p).is_err());
        assert!(KnownHosts::parse(&format!("@weird host ssh-ed25519 {KEY_A}"), p).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"*.x.y", b"a.b.x.y"));
        assert!(!glob_match(b"*.x.y", b"x.y"));
        assert!(!glob_match(b"a*b", b"acbd"));
    }
}
