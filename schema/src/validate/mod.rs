//! The validation pipeline: a tree of files in, typed objects or a full list of diagnostics
//! out. All-or-nothing: a tree with any diagnostic is invalid as a whole, so a broken commit
//! never reaches the cluster.
//!
//! Steps, cheapest first so that hostile input costs little:
//! 1. list the tree, apply `.coxswainignore`, refuse symlinks that leave the tree, and check
//!    file count, file size and total size *before* reading anything;
//! 2. per file, in parallel: UTF-8 and control characters, then YAML with its limits
//!    ([`crate::yaml`]), then per document the kind lookup, the JSON Schema, typed decoding
//!    and the per-object rules ([`semantic`]);
//! 3. across the tree: duplicates, namespaces, and references ([`refs`]).
//!
//! Step 2 is [`parse_file`], separate and pure so that its result can be reused per file:
//! [`validate_tree_with`] takes the report of the previous commit and re-reads only the
//! files whose content id changed ([`incremental`] says when reuse is safe). Steps 1 and 3
//! always run, so the result is the same as that of a full [`validate_tree`].

mod incremental;
mod refs;
pub(crate) mod semantic;

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use crate::diagnostic::{Code, Diagnostic, line_of};
use crate::error::Error;
use crate::object::{self, KindInfo, Object};
use crate::tree::{EntryKind, Tree, resolve_symlink};
use crate::yaml::{self, Node, Span, YamlLimits};

/// The hard limits, each checked before the work it protects is spent.
#[derive(Debug, Clone)]
pub struct Limits {
    /// One file's size in bytes (default 1 MiB).
    pub max_file_bytes: u64,
    /// All manifest files together (default 64 MiB).
    pub max_total_bytes: u64,
    /// Number of manifest files (default 10,000).
    pub max_files: usize,
    /// Depth, documents per file, alias expansion and node count, per file.
    pub yaml: YamlLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
            max_files: 10_000,
            yaml: YamlLimits::default(),
        }
    }
}

/// The name of the ignore file, read from the root of the tree, with gitignore syntax.
pub const IGNORE_FILE: &str = ".coxswainignore";

/// Whether a path is a manifest by its extension.
pub fn is_manifest_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// One document of a file, after everything per-object was checked.
#[derive(Debug, Clone)]
pub struct ParsedDoc {
    /// Position among the file's non-empty documents.
    pub index: usize,
    /// The object, when this document is valid on its own.
    pub object: Option<Object>,
    /// Kind, namespace and name, when they could be read even from an invalid document, so
    /// that references to it and duplicates of it are still judged correctly.
    pub ident: Option<Ident>,
    /// The ConfigMaps and Secrets its pod spec needs, read once from `object`.
    pub(crate) needs: Vec<refs::Need>,
}

/// Identity of an object in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident {
    pub kind: &'static str,
    pub group: &'static str,
    /// `None` for cluster-scoped kinds; objects without a namespace are in `default`.
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for Ident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One file after [`parse_file`].
#[derive(Debug, Clone)]
pub struct ParsedFile {
    pub path: String,
    /// The text, kept so later diagnostics can quote the source line.
    pub text: Arc<str>,
    pub docs: Vec<ParsedDoc>,
    pub diagnostics: Vec<Diagnostic>,
    /// The content id the tree listed for the bytes this was parsed from (see
    /// [`crate::tree::TreeEntry::id`]); `None` when the tree knows none, when reading failed,
    /// and for [`parse_file`] called directly. Private, so that nothing but the pipeline can
    /// vouch that an id belongs to these bytes.
    id: Option<String>,
    /// The limits this was parsed under; a reload under other limits parses again.
    limits: incremental::FileLimits,
    /// The YAML trees of the documents, rebuilt from `text` only when a later check needs a
    /// position. Keeping every tree of a large repository costs more (in memory, and in
    /// the time to fault that memory in) than parsing again on the rare error path.
    nodes: OnceLock<Vec<Node>>,
}

impl ParsedFile {
    /// The content id of the bytes this file was parsed from, as the tree listed it, when
    /// the tree knew one and the read succeeded.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The YAML tree of document `index` (as in [`ParsedDoc::index`]).
    pub fn root(&self, index: usize) -> Option<&Node> {
        self.nodes
            .get_or_init(|| {
                // The text already passed the limits once; these only bound the second pass.
                let limits = YamlLimits {
                    max_depth: usize::MAX,
                    max_documents: usize::MAX,
                    max_alias_nodes: usize::MAX,
                    max_nodes: usize::MAX,
                };
                yaml::parse_stream(&self.text, &limits)
                    .map(|docs| docs.into_iter().map(|d| d.root).collect())
                    .unwrap_or_default()
            })
            .get(index)
    }

    /// Where a JSON pointer of a document is in the file.
    pub fn locate(&self, doc: &ParsedDoc, pointer: &str) -> Span {
        self.root(doc.index)
            .map_or(Span { line: 1, column: 1 }, |r| r.locate(pointer))
    }

    /// A diagnostic at a pointer of document `doc` of this file.
    pub(crate) fn diag_at(
        &self,
        doc: &ParsedDoc,
        pointer: &str,
        code: Code,
        reason: String,
    ) -> Diagnostic {
        let span = self.locate(doc, pointer);
        self.diag_at_span(span, pointer, code, reason)
    }

    fn diag_at_span(&self, span: Span, pointer: &str, code: Code, reason: String) -> Diagnostic {
        Diagnostic {
            file: self.path.clone(),
            line: span.line,
            column: span.column,
            pointer: pointer.to_string(),
            reason,
            code,
            source_line: line_of(&self.text, span.line),
        }
    }
}

/// The result of validating a tree.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Manifest files read (after ignores). Shared, so that the next validation reuses an
    /// unchanged file's result without copying its objects (a one-file commit in a large
    /// repository would otherwise copy every object of the tree).
    pub files: Vec<Arc<ParsedFile>>,
    /// Every problem found, in file order. Empty means the tree is valid.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// Every document that is a valid object, with the file it came from.
    pub fn objects(&self) -> impl Iterator<Item = (&str, &Object)> {
        self.files.iter().flat_map(|f| {
            f.docs
                .iter()
                .filter_map(move |d| d.object.as_ref().map(|o| (f.path.as_str(), o)))
        })
    }

    /// Number of documents (valid or not) across the tree.
    pub fn document_count(&self) -> usize {
        self.files.iter().map(|f| f.docs.len()).sum()
    }
}

fn file_diag(
    path: &str,
    code: Code,
    line: u32,
    column: u32,
    reason: String,
    text: Option<&str>,
) -> Diagnostic {
    Diagnostic {
        file: path.to_string(),
        line,
        column,
        pointer: String::new(),
        reason,
        code,
        source_line: text.and_then(|t| line_of(t, line)),
    }
}

/// The `max_file_bytes` check, made from the listed size before reading and again in
/// [`parse_file`], which can be called on its own.
fn file_too_big(path: &str, size: u64, limits: &Limits) -> Option<Diagnostic> {
    (size > limits.max_file_bytes).then(|| {
        file_diag(
            path,
            Code::Limit,
            1,
            1,
            format!(
                "file is {}, more than the {} allowed (limit max_file_bytes)",
                mib(size),
                mib(limits.max_file_bytes)
            ),
            None,
        )
    })
}

fn mib(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    } else {
        format!("{bytes} bytes")
    }
}

/// Validates a whole tree. Never panics on input; I/O problems become diagnostics too, so
/// the caller always gets one complete answer.
pub fn validate_tree(tree: &dyn Tree, limits: &Limits) -> Report {
    validate_tree_with(tree, limits, None)
}

/// [`validate_tree`], reusing the per-file work of `previous` (the report of an earlier
/// validation, typically of the previous commit) for every file whose path and content id
/// ([`crate::tree::TreeEntry::id`]) are unchanged. Changed, new and id-less files are read and
/// parsed; files gone from the tree are dropped; the limits on the listing and the checks
/// across the tree (duplicates, namespaces, references) always run on the whole tree. The
/// result is the same as that of [`validate_tree`] on `tree`, whatever `previous` is.
pub fn validate_tree_with(tree: &dyn Tree, limits: &Limits, previous: Option<&Report>) -> Report {
    let mut report = Report::default();
    let entries = match tree.entries() {
        Ok(e) => e,
        Err(err) => {
            report
                .diagnostics
                .push(file_diag(".", Code::Io, 1, 1, err.to_string(), None));
            return report;
        }
    };
    let ignore = build_ignore(tree, &entries, &mut report.diagnostics);

    let mut to_read = Vec::new();
    let mut total: u64 = 0;
    for entry in &entries {
        if entry.path == IGNORE_FILE
            || ignore.as_ref().is_some_and(|ig| {
                ig.matched_path_or_any_parents(&entry.path, false)
                    .is_ignore()
            })
        {
            continue;
        }
        match &entry.kind {
            EntryKind::Symlink { target } => {
                // A link inside the tree is skipped: its target is loaded under its own path.
                // A link out of the tree is never followed, and is an error rather than a
                // silent skip, since the user clearly meant something by it.
                if resolve_symlink(&entry.path, target).is_none() {
                    report.diagnostics.push(file_diag(
                        &entry.path,
                        Code::Limit,
                        1,
                        1,
                        format!("symlink points outside the tree ({target}); coxswain never follows a symlink out of the tree"),
                        None,
                    ));
                }
            }
            EntryKind::File if is_manifest_path(&entry.path) => {
                if to_read.len() == limits.max_files {
                    report.diagnostics.push(file_diag(
                        &entry.path,
                        Code::Limit,
                        1,
                        1,
                        format!(
                            "more than {} manifest files in the tree (limit max_files)",
                            limits.max_files
                        ),
                        None,
                    ));
                    return report;
                }
                if let Some(d) = file_too_big(&entry.path, entry.size, limits) {
                    report.diagnostics.push(d);
                    continue;
                }
                total = total.saturating_add(entry.size);
                if total > limits.max_total_bytes {
                    report.diagnostics.push(file_diag(
                        &entry.path,
                        Code::Limit,
                        1,
                        1,
                        format!("manifests add up to more than {} with this file (limit max_total_bytes)", mib(limits.max_total_bytes)),
                        None,
                    ));
                    return report;
                }
                to_read.push((entry.path.as_str(), entry.id.as_deref()));
            }
            EntryKind::File => {}
        }
    }

    let reusable = incremental::Reusable::new(previous, limits);
    report.files = to_read
        .par_iter()
        .map(|&(path, id)| {
            if let Some(earlier) = reusable.get(path, id) {
                return Arc::clone(earlier);
            }
            Arc::new(match tree.read(path) {
                Ok(bytes) => ParsedFile {
                    id: id.map(str::to_string),
                    ..parse_file(path, &bytes, limits)
                },
                Err(err) => ParsedFile {
                    path: path.to_string(),
                    text: Arc::from(""),
                    docs: Vec::new(),
                    diagnostics: vec![file_diag(path, Code::Io, 1, 1, err.to_string(), None)],
                    id: None,
                    limits: incremental::FileLimits::of(limits),
                    nodes: OnceLock::new(),
                },
            })
        })
        .collect();
    for f in &report.files {
        report.diagnostics.extend(f.diagnostics.iter().cloned());
    }
    report.diagnostics.extend(refs::check_tree(&report.files));
    report
}

fn build_ignore(
    tree: &dyn Tree,
    entries: &[crate::tree::TreeEntry],
    diags: &mut Vec<Diagnostic>,
) -> Option<ignore::gitignore::Gitignore> {
    entries
        .iter()
        .find(|e| e.path == IGNORE_FILE && e.kind == EntryKind::File)?;
    let text = match tree.read(IGNORE_FILE) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => {
            diags.push(file_diag(
                IGNORE_FILE,
                Code::Io,
                1,
                1,
                err.to_string(),
                None,
            ));
            return None;
        }
    };
    let mut builder = ignore::gitignore::GitignoreBuilder::new("");
    for (i, line) in text.lines().enumerate() {
        if let Err(err) = builder.add_line(None, line) {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            diags.push(file_diag(
                IGNORE_FILE,
                Code::Parse,
                n,
                1,
                err.to_string(),
                Some(&text),
            ));
        }
    }
    match builder.build() {
        Ok(g) => Some(g),
        Err(err) => {
            diags.push(file_diag(
                IGNORE_FILE,
                Code::Parse,
                1,
                1,
                err.to_string(),
                Some(&text),
            ));
            None
        }
    }
}

/// Everything that can be checked on one file alone. Pure, so its result can be cached by
/// content.
pub fn parse_file(path: &str, bytes: &[u8], limits: &Limits) -> ParsedFile {
    let mut file = ParsedFile {
        path: path.to_string(),
        text: Arc::from(""),
        docs: Vec::new(),
        diagnostics: Vec::new(),
        id: None,
        limits: incremental::FileLimits::of(limits),
        nodes: OnceLock::new(),
    };
    if let Some(d) = file_too_big(path, bytes.len() as u64, limits) {
        file.diagnostics.push(d);
        return file;
    }
    let text = match yaml::check_text(bytes) {
        Ok(t) => t,
        Err(err) => {
            file.diagnostics.push(error_diag(path, err, None));
            return file;
        }
    };
    file.text = Arc::from(text);
    let docs = match yaml::parse_stream(text, &limits.yaml) {
        Ok(d) => d,
        Err(err) => {
            file.diagnostics.push(error_diag(path, err, Some(text)));
            return file;
        }
    };
    // JSON is a subset of YAML, so the YAML parser also takes YAML-only syntax (a trailing
    // comma, comments, single quotes, bare keys) in a `.json` file; kubectl decodes such a
    // file with a JSON decoder and would fail on it. Checked after the YAML limits, which
    // protect this pass too.
    if path.to_ascii_lowercase().ends_with(".json")
        && let Err(diag) = check_json(path, text)
    {
        file.diagnostics.push(diag);
        return file;
    }
    for doc in docs {
        let mut pd = ParsedDoc {
            index: doc.index,
            object: None,
            ident: None,
            needs: Vec::new(),
        };
        let problems = check_document(&mut pd, &doc.root);
        pd.needs = pd.object.as_ref().map(refs::needs_of).unwrap_or_default();
        for (pointer, code, reason) in problems {
            let span = doc.root.locate(&pointer);
            let d = file.diag_at_span(span, &pointer, code, reason);
            file.diagnostics.push(d);
        }
        file.docs.push(pd);
    }
    file
}

/// Whether the text is a stream of JSON values, as kubectl reads a `.json` file.
fn check_json(path: &str, text: &str) -> Result<(), Diagnostic> {
    // Into `Value` rather than `IgnoredAny`: serde_json's fast path for ignored values
    // reports a trailing comma as "key must be a string".
    let stream = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
    for value in stream {
        let Err(err) = value else { continue };
        let message = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        let message = message.strip_suffix(&suffix).unwrap_or(&message);
        // serde_json counts lines from 1 and columns in bytes, pointing at the byte it
        // stopped at; diagnostics count characters.
        let line_start: usize = text
            .split_inclusive('\n')
            .take(err.line().saturating_sub(1))
            .map(str::len)
            .sum();
        let mut offset = line_start
            .saturating_add(err.column().saturating_sub(1))
            .min(text.len());
        // serde_json stops at the closing bracket; the fault is the comma before it.
        if message == "trailing comma"
            && let Some(comma) = text
                .get(..offset)
                .and_then(|t| t.trim_end().strip_suffix(','))
        {
            offset = comma.len();
        }
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let reason = format!("not valid JSON: {message}");
        return Err(file_diag(
            path,
            Code::Parse,
            to_u32(line),
            to_u32(column),
            reason,
            Some(text),
        ));
    }
    Ok(())
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn error_diag(path: &str, err: Error, text: Option<&str>) -> Diagnostic {
    match err {
        Error::Parse {
            line,
            column,
            reason,
        } => file_diag(path, Code::Parse, line, column, reason, text),
        Error::Limit {
            limit,
            line,
            column,
            reason,
        } => file_diag(
            path,
            Code::Limit,
            line,
            column,
            format!("{reason} (limit {limit})"),
            text,
        ),
        other => file_diag(path, Code::Io, 1, 1, other.to_string(), text),
    }
}

/// Kind lookup, schema, typed decoding and per-object rules for one document. Sets
/// `doc.object` when it is valid and `doc.ident` whenever the identity is readable.
fn check_document(doc: &mut ParsedDoc, root: &Node) -> Vec<(String, Code, String)> {
    let mut out = Vec::new();
    if !matches!(root.value, yaml::Value::Map(_)) {
        out.push((
            String::new(),
            Code::Kind,
            "a manifest must be a mapping with apiVersion, kind and metadata".to_string(),
        ));
        return out;
    }
    let api_version = root.get("apiVersion").and_then(|n| match &n.value {
        yaml::Value::String(s) => Some(s.as_str()),
        _ => None,
    });
    let kind = root.get("kind").and_then(|n| match &n.value {
        yaml::Value::String(s) => Some(s.as_str()),
        _ => None,
    });
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        if api_version.is_none() {
            out.push((
                "/apiVersion".into(),
                Code::Kind,
                "apiVersion is required and must be a string (e.g. apps/v1)".into(),
            ));
        }
        if kind.is_none() {
            out.push((
                "/kind".into(),
                Code::Kind,
                "kind is required and must be a string (e.g. Deployment)".into(),
            ));
        }
        return out;
    };
    let Some(info) = object::lookup(api_version, kind) else {
        let reason = match object::lookup_kind(kind) {
            Some(k) => (
                "/apiVersion",
                format!(
                    "{kind} is served as apiVersion {:?}, not {api_version:?}",
                    k.api_version
                ),
            ),
            None => (
                "/kind",
                format!(
                    "unsupported kind {kind:?} (apiVersion {api_version:?}); supported kinds: {}",
                    object::KINDS
                        .iter()
                        .map(|k| format!("{}/{}", k.api_version, k.kind))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        };
        out.push((reason.0.into(), Code::Kind, reason.1));
        return out;
    };
    let value = root.to_json();
    doc.ident = ident_of(info, &value);
    let idx = object::KINDS.iter().position(|k| k == info).unwrap_or(0);
    let validator = match object::validator(idx) {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            out.push((
                String::new(),
                Code::Schema,
                format!(
                    "internal: schema {} does not compile: {e}",
                    info.schema_file
                ),
            ));
            return out;
        }
        None => return out,
    };
    if !validator.is_valid(&value) {
        for err in validator.iter_errors(&value) {
            push_schema_error(&err, &mut out);
        }
        return out;
    }
    match Object::from_value(info, value) {
        Ok(obj) => {
            let mut errs = semantic::Errs::default();
            semantic::check_object(&obj, &mut errs);
            if errs.0.is_empty() {
                doc.object = Some(obj);
            }
            out.extend(errs.0.into_iter().map(|(p, r)| (p, Code::Semantic, r)));
        }
        // The schema and the types are generated from each other, so this is only reachable
        // through a value the schema cannot express. The usual one is a whole number written
        // as a decimal (`8080.0`, `1e3`): JSON Schema counts it as an integer, serde does
        // not. Point at it rather than at the whole document.
        Err(e) => match integral_float(validator, root) {
            Some((ptr, n)) => out.push((
                ptr,
                Code::Schema,
                format!("{n:?} is written as a decimal number, but this field takes an integer; write it without a fraction or exponent"),
            )),
            None => out.push((String::new(), Code::Schema, e.to_string())),
        },
    }
    out
}

/// The first whole number written as a decimal where the schema wants an integer. Found by
/// putting 0.5 in place of every such number and asking the schema which of them it then
/// refuses; only run once decoding failed, so it costs nothing on valid input.
fn integral_float(validator: &jsonschema::Validator, root: &Node) -> Option<(String, f64)> {
    let mut found = Vec::new();
    collect_integral_floats(root, String::new(), &mut found);
    if found.is_empty() {
        return None;
    }
    let mut probe = root.to_json();
    for (ptr, _) in &found {
        if let Some(v) = probe.pointer_mut(ptr) {
            *v = serde_json::json!(0.5);
        }
    }
    let refused: std::collections::HashSet<String> = validator
        .iter_errors(&probe)
        .map(|err| err.instance_path().as_str().to_string())
        .collect();
    found.into_iter().find(|(ptr, _)| refused.contains(ptr))
}

fn collect_integral_floats(node: &Node, ptr: String, out: &mut Vec<(String, f64)>) {
    match &node.value {
        yaml::Value::Float(f) if f.fract() == 0.0 => out.push((ptr, *f)),
        yaml::Value::Seq(items) => {
            for (i, n) in items.iter().enumerate() {
                collect_integral_floats(n, format!("{ptr}/{i}"), out);
            }
        }
        yaml::Value::Map(entries) => {
            for e in entries {
                let key = e.key.replace('~', "~0").replace('/', "~1");
                collect_integral_floats(&e.value, format!("{ptr}/{key}"), out);
            }
        }
        _ => {}
    }
}

/// One JSON Schema error as diagnostics.
fn push_schema_error(err: &jsonschema::ValidationError<'_>, out: &mut Vec<(String, Code, String)>) {
    use jsonschema::error::ValidationErrorKind;
    let base = err.instance_path().as_str().to_string();
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for key in unexpected {
                out.push((
                    format!("{base}/{}", key.replace('~', "~0").replace('/', "~1")),
                    Code::Schema,
                    format!(
                        "unknown field {key:?}: coxswain does not support it, and never ignores a field silently"
                    ),
                ));
            }
        }
        // Every optional field is `anyOf: [<its schema>, {type: null}]`, and the error of
        // the anyOf alone says neither what is wrong nor where below it ("… is not valid
        // under any of the schemas listed in the 'anyOf' keyword", at `resources:` for a
        // bad `cpu` three levels down). With the null branch set aside, the errors of the
        // one branch left do.
        ValidationErrorKind::AnyOf { context } => {
            let branches: Vec<_> = context
                .iter()
                .filter(|branch| !is_null_branch(branch, err))
                .collect();
            match branches.as_slice() {
                [branch] if !branch.is_empty() => {
                    for e in branch.iter() {
                        push_schema_error(e, out);
                    }
                }
                _ => out.push((base, Code::Schema, err.to_string())),
            }
        }
        // Optional scalars are `type: [T, "null"]`. Saying that `three` "is not of types
        // null, integer" is true but reads as if null were the fix; name only the real types.
        ValidationErrorKind::Type {
            kind: jsonschema::error::TypeKind::Multiple(types),
        } if types.contains(jsonschema::JsonType::Null) => {
            let wanted: Vec<String> = types
                .into_iter()
                .filter(|t| *t != jsonschema::JsonType::Null)
                .map(|t| format!("{:?}", t.as_str()))
                .collect();
            let what = if wanted.len() == 1 { "type" } else { "types" };
            out.push((
                base,
                Code::Schema,
                format!("{} is not of {what} {}", err.instance(), wanted.join(", ")),
            ));
        }
        _ => out.push((base, Code::Schema, err.to_string())),
    }
}

/// Whether the errors of an anyOf branch only say "this is not null" about the value itself.
fn is_null_branch(
    branch: &[jsonschema::ValidationError<'_>],
    parent: &jsonschema::ValidationError<'_>,
) -> bool {
    use jsonschema::error::{TypeKind, ValidationErrorKind};
    matches!(branch, [e] if e.instance_path() == parent.instance_path()
        && matches!(e.kind(), ValidationErrorKind::Type { kind: TypeKind::Single(jsonschema::JsonType::Null) }))
}

fn ident_of(info: &'static KindInfo, value: &serde_json::Value) -> Option<Ident> {
    let meta = value.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let namespace = if info.namespaced {
        Some(
            meta.get("namespace")
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_string(),
        )
    } else {
        None
    };
    Some(Ident {
        kind: info.kind,
        group: info.group,
        namespace,
        name,
    })
}
