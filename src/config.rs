//! `coxswain server --config FILE`: the same settings as the flags, in a YAML file. A flag
//! given on the command line wins over the file, so one file can serve every member of a
//! cluster with `--id` and `--listen` set per member.
//!
//! The file is read with the schema crate's YAML parser (the one manifests go through, with
//! its limits and its refusal of tags), and a mistake is reported as
//! `FILE:LINE:COLUMN: FIELD: REASON`, as manifest errors are.
//!
//! ```yaml
//! id: 1
//! data: /var/lib/coxswain
//! listen: 0.0.0.0:7400
//! token_file: /etc/coxswain/token
//! source:
//!   repo: https://git.example.com/team/deploy.git
//!   ref: {branch: main}
//!   path: clusters/prod
//!   interval: 1m
//!   cache_dir: /var/lib/coxswain/git
//!   auth: {token: glpat-…}
//!   push_notes: true
//! prune:
//!   max_share: 0.25
//!   allow: false
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use coxswain_reconciler::source::{Secret, SourceConfig};
use coxswain_schema::yaml::{YamlLimits, parse_stream};
use serde::Deserialize;

/// What a config file may hold; every field is optional, since flags may supply it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub join: Option<String>,
    /// The cluster token itself; `token_file` keeps it out of the config.
    pub token: Option<Secret>,
    /// A file holding the cluster token (surrounding whitespace is ignored).
    pub token_file: Option<PathBuf>,
    pub snapshot_every: Option<u64>,
    /// MiB of RocksDB memtables (`--memtable-mib`), 1 to 4096.
    #[serde(default, deserialize_with = "memtable_mib")]
    pub memtable_mib: Option<u64>,
    /// MiB kept free on the data folder's disk (`--min-free-mib`), 0 (off) to 1048576.
    #[serde(default, deserialize_with = "min_free_mib")]
    pub min_free_mib: Option<u64>,
    /// The Git source to sync, with the fields of [`SourceConfig`].
    pub source: Option<SourceConfig>,
    #[serde(default)]
    pub prune: PruneFile,
}

/// The prune guard's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneFile {
    pub max_share: Option<f64>,
    #[serde(default)]
    pub allow: bool,
}

impl FileConfig {
    /// The token from `token` or `token_file`, whichever the file gives.
    pub fn token(&self, file: &Path) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => bail!(
                "{}: token, token_file: give one of them, not both",
                file.display()
            ),
            (Some(t), None) => Ok(Some(t.expose().to_string())),
            (None, Some(path)) => {
                // A relative path is relative to the config file, as in kubeconfig.
                let path = file.parent().unwrap_or(Path::new(".")).join(path);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("{}: token_file: reading {}", file.display(), path.display())
                })?;
                Ok(Some(text.trim().to_string()))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Reads and checks the config file at `path`.
pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// The memtable budgets `coxswain server` accepts, in MiB (flag and file alike).
pub const MEMTABLE_MIB: std::ops::RangeInclusive<u64> = 1..=4096;

/// The disk reserves `coxswain server` accepts, in MiB (flag and file alike): 0 turns the
/// check off; the top, 1 TiB, keeps the shift to bytes far from overflowing.
pub const MIN_FREE_MIB: std::ops::RangeInclusive<u64> = 0..=1 << 20;

/// The memtable budget in MiB, in [`MEMTABLE_MIB`].
fn memtable_mib<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    mib_in(d, &MEMTABLE_MIB)
}

/// The disk reserve in MiB, in [`MIN_FREE_MIB`].
fn min_free_mib<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    mib_in(d, &MIN_FREE_MIB)
}

fn mib_in<'de, D: serde::Deserializer<'de>>(
    d: D,
    range: &std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, D::Error> {
    let mib = u64::deserialize(d)?;
    if !range.contains(&mib) {
        return Err(serde::de::Error::custom(format!(
            "{mib} is not between {} and {}",
            range.start(),
            range.end()
        )));
    }
    Ok(Some(mib))
}

/// Parses config text; `name` is how errors name the file.
pub fn parse(text: &str, name: &str) -> anyhow::Result<FileConfig> {
    let docs =
        parse_stream(text, &YamlLimits::default()).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let root = match docs.as_slice() {
        [] => return Ok(FileConfig::default()),
        [doc] => &doc.root,
        [_, second, ..] => {
            let at = second.root.span;
            bail!(
                "{name}:{}:{}: a config file holds one YAML document",
                at.line,
                at.column
            )
        }
    };
    let json = root.to_json();
    if json.is_null() {
        return Ok(FileConfig::default());
    }
    serde_path_to_error::deserialize(json).map_err(|e| {
        let field = e.path().to_string();
        let pointer = pointer_of(e.path());
        let at = root.locate(&pointer);
        anyhow::anyhow!("{name}:{}:{}: {field}: {}", at.line, at.column, e.inner())
    })
}

/// The JSON pointer of a serde path (`source.auth.token` → `/source/auth/token`), which the
/// YAML tree locates.
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use coxswain_reconciler::source::Reference;
    use std::time::Duration;

    #[test]
    fn a_full_file_is_read() {
        let cfg = parse(
            "id: 2\ndata: /var/lib/c\nlisten: 0.0.0.0:7400\ntoken: s3cret\nmemtable_mib: 64\n\
             min_free_mib: 0\n\
             source:\n  repo: file:///srv/deploy.git\n  ref: {tag: v1}\n  path: prod\n  \
             interval: 30s\n  cache_dir: /tmp/c\n  push_notes: true\n\
             prune:\n  max_share: 0.5\n  allow: true\n",
            "c.yaml",
        )
        .unwrap();
        assert_eq!(cfg.id, Some(2));
        assert_eq!(cfg.memtable_mib, Some(64));
        assert_eq!(cfg.min_free_mib, Some(0));
        assert_eq!(
            cfg.token(Path::new("c.yaml")).unwrap().as_deref(),
            Some("s3cret")
        );
        let source = cfg.source.unwrap();
        assert_eq!(source.reference, Reference::Tag("v1".into()));
        assert_eq!(source.interval, Duration::from_secs(30));
        assert!(source.push_notes);
        assert_eq!(cfg.prune.max_share, Some(0.5));
        assert!(cfg.prune.allow);
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let cfg = parse("# nothing yet\n", "c.yaml").unwrap();
        assert!(cfg.id.is_none() && cfg.source.is_none());
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let cases = [
            // An unknown field, pointed at by its key.
            (
                "id: 1\nsource:\n  repo: x\n  interval_s: 5\n",
                "c.yaml:4:3: source.interval_s: unknown field",
            ),
            // A wrong type deep inside.
            (
                "source:\n  repo: x\n  interval: soon\n",
                "c.yaml:3:3: source.interval:",
            ),
            ("id: one\n", "c.yaml:1:1: id:"),
            (
                "prune:\n  max_share: lots\n",
                "c.yaml:2:3: prune.max_share:",
            ),
            (
                "id: 1\nmemtable_mib: 0\n",
                "c.yaml:2:1: memtable_mib: 0 is not between 1 and 4096",
            ),
            (
                "min_free_mib: 2000000\n",
                "c.yaml:1:1: min_free_mib: 2000000 is not between 0 and 1048576",
            ),
            ("min_free_mib: -1\n", "c.yaml:1:1: min_free_mib:"),
            (
                "a: 1\n---\nb: 2\n",
                "c.yaml:3:1: a config file holds one YAML document",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text, "c.yaml").unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "{text:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn the_token_comes_from_one_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abc\n").unwrap();
        let file = dir.path().join("c.yaml");
        let cfg = parse("token_file: token\n", "c.yaml").unwrap();
        assert_eq!(cfg.token(&file).unwrap().as_deref(), Some("abc"));
        let both = parse("token: x\ntoken_file: token\n", "c.yaml").unwrap();
        assert!(both.token(&file).is_err());
    }
}
