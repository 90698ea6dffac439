//! Reuse of per-file work between two validations of trees that share most of their files,
//! as two commits of one repository do. Only step 2 of the pipeline (read, parse, schema and
//! per-object rules: [`super::parse_file`]) is reused; listing, limits and the checks across
//! the tree always run again, because a change in one file can break or fix another one
//! that did not change (a ConfigMap losing a key its Deployment reads, a second object with
//! the same name, a Namespace deleted).
//!
//! The previous result is the previous [`Report`] rather than a separate cache: it already
//! holds every parsed file with the content id it was read under, so the caller keeps one
//! value per commit, and memory holds no second copy of every object. The price is a clone
//! of each reused file, which costs a small fraction of parsing it again.
//!
//! A file is reused only when all of these hold, since anything less could make the result
//! differ from a full validation:
//! - the path is the same (the path is part of the file's diagnostics, and `.json` files
//!   get a JSON check that `.yaml` files do not);
//! - the tree gives a content id now, and it equals the id recorded when the file was read
//!   (equal ids mean equal bytes). Files without an id are always read again;
//! - the limits [`super::parse_file`] applies are the same as when it was parsed;
//! - the earlier read succeeded (a failed read records no id, so an I/O error is retried
//!   rather than remembered).

use std::collections::HashMap;
use std::sync::Arc;

use crate::validate::{Limits, ParsedFile, Report};

/// The limits that change the result of [`super::parse_file`]. `max_files` and
/// `max_total_bytes` are not here: they are checked on the listing, which always runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileLimits {
    max_file_bytes: u64,
    max_depth: usize,
    max_documents: usize,
    max_alias_nodes: usize,
    max_nodes: usize,
}

impl FileLimits {
    pub(crate) fn of(limits: &Limits) -> Self {
        // Destructured so that a limit added to `YamlLimits` fails to compile here instead of
        // being silently left out of the comparison.
        let crate::yaml::YamlLimits {
            max_depth,
            max_documents,
            max_alias_nodes,
            max_nodes,
        } = limits.yaml;
        Self {
            max_file_bytes: limits.max_file_bytes,
            max_depth,
            max_documents,
            max_alias_nodes,
            max_nodes,
        }
    }
}

/// The files of a previous report that may be reused under the current limits, by path.
#[derive(Debug, Default)]
pub(crate) struct Reusable<'a> {
    by_path: HashMap<&'a str, &'a Arc<ParsedFile>>,
}

impl<'a> Reusable<'a> {
    pub(crate) fn new(previous: Option<&'a Report>, limits: &Limits) -> Self {
        let Some(previous) = previous else {
            return Self::default();
        };
        let now = FileLimits::of(limits);
        let by_path = previous
            .files
            .iter()
            .filter(|f| f.id.is_some() && f.limits == now)
            .map(|f| (f.path.as_str(), f))
            .collect();
        Self { by_path }
    }

    /// The earlier result for `path`, when the tree lists it now with the same content id.
    pub(crate) fn get(&self, path: &str, id: Option<&str>) -> Option<&'a Arc<ParsedFile>> {
        let id = id?;
        self.by_path
            .get(path)
            .copied()
            .filter(|f| f.id.as_deref() == Some(id))
    }
}
