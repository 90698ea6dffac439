//! The status of each commit coxswain processes, written back into Git as a note on that
//! commit under `refs/notes/coxswain`, so `git log --notes=coxswain` shows what became of every
//! push without any coxswain tooling. A note is a short readable summary followed by a fenced
//! ```` ```json ```` block that [`parse`] reads back.
//!
//! The state of a commit only moves forward ([`can_move`]); [`write`] refuses to move it back,
//! does not rewrite a note whose content did not change, and updates the notes ref with a
//! compare-and-swap so another writer of the ref (a user running `git notes add`, a second
//! coxswain) makes us retry instead of losing their notes. [`NoteWriter`] rate-limits the writes
//! of the sync loop and [`push`] publishes the ref to a remote without force-pushing over others.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use git2::{ErrorClass, ErrorCode, Oid, Repository, Signature};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::source::RemoteAccess;
use crate::{Error, Result};

/// The notes ref coxswain owns; `git notes --ref coxswain` resolves to it.
pub const NOTES_REF: &str = "refs/notes/coxswain";

/// Where short-lived refs live while a notes commit is built. Outside `refs/notes/` so they
/// never show up as a notes namespace, and outside `refs/notes/coxswain` itself because a ref
/// cannot also be a directory.
const SCRATCH_PREFIX: &str = "refs/coxswain/scratch/";

/// The private repository (see [`private_refs`]), relative to the real one's git dir.
const PRIVATE_REFS_DIR: &str = "coxswain/notes";

/// How many times a compare-and-swap on the notes ref is retried before giving up. Each lost
/// race means another writer made progress, so this only runs out under a pathological storm.
const MAX_ATTEMPTS: u32 = 20;

/// Readable lines of a note before the summary is cut; the JSON block always has everything.
const SUMMARY_LINES: usize = 50;

/// The fallback identity, for machines (containers, CI) with no `user.name`/`user.email`.
const FALLBACK_NAME: &str = "coxswain";
const FALLBACK_EMAIL: &str = "coxswain@localhost";

/// Where a commit is in its life: `pending → applied → progressing → healthy | degraded |
/// failed`. See [`can_move`] for which transitions are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    /// Seen, not yet validated or applied.
    Pending,
    /// Its objects were written to the store in one transaction.
    Applied,
    /// Controllers are rolling the applied objects out.
    Progressing,
    /// Everything the commit asked for is running and ready.
    Healthy,
    /// Applied, but something it asked for is missing or not ready; it can recover.
    Degraded,
    /// Rejected by validation or could not be applied (or rolled out). Terminal.
    Failed,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Applied => "applied",
            CommitState::Progressing => "progressing",
            CommitState::Healthy => "healthy",
            CommitState::Degraded => "degraded",
            CommitState::Failed => "failed",
        }
    }

    /// Healthy and degraded share a rank: an applied commit goes back and forth between them as
    /// what it runs breaks and recovers.
    fn rank(self) -> u8 {
        match self {
            CommitState::Pending => 0,
            CommitState::Applied => 1,
            CommitState::Progressing => 2,
            CommitState::Healthy | CommitState::Degraded => 3,
            CommitState::Failed => 4,
        }
    }
}

impl fmt::Display for CommitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a commit's status may go from `from` to `to`.
///
/// - Staying in the same state is allowed (the details of the status may change).
/// - Otherwise the state only moves forward; skipping steps is fine (a coalesced update may
///   jump from `pending` straight to `healthy`).
/// - `healthy` and `degraded` are the same rank, so either may follow the other.
/// - `failed` is terminal, and it is an outcome of getting the commit in: it can follow
///   `pending`, `applied` or `progressing`, but not a commit that already settled as healthy
///   or degraded — later trouble there is `degraded`, which can still recover.
pub fn can_move(from: CommitState, to: CommitState) -> bool {
    use CommitState::{Degraded, Failed, Healthy};
    match (from, to) {
        (Failed, to) => to == Failed,
        (Healthy | Degraded, Failed) => false,
        (from, to) => from.rank() <= to.rank(),
    }
}

/// The status of one commit: what is written into its note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitStatus {
    /// Full hex id of the commit the note is on.
    pub commit: String,
    pub state: CommitState,
    /// When this status was produced, RFC 3339 in UTC (see [`now_rfc3339`]). Not part of what
    /// makes two statuses different.
    pub updated: String,
    /// Why the commit is in its state when the rest does not say (for instance the store error
    /// that kept it from being applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub sync: SyncSummary,
    /// Validation errors, when the commit was rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ValidationError>,
    /// Every object the commit declares.
    #[serde(default)]
    pub objects: Vec<ObjectStatus>,
}

impl CommitStatus {
    /// An empty status of `commit` in `state`, stamped now.
    pub fn new(commit: impl Into<String>, state: CommitState) -> Self {
        CommitStatus {
            commit: commit.into(),
            state,
            updated: now_rfc3339(),
            message: None,
            sync: SyncSummary::default(),
            errors: Vec::new(),
            objects: Vec::new(),
        }
    }

    /// The status of a commit that validation rejected.
    pub fn rejected(
        commit: impl Into<String>,
        diagnostics: &[coxswain_schema::Diagnostic],
    ) -> Self {
        let mut status = CommitStatus::new(commit, CommitState::Failed);
        status.errors = diagnostics.iter().map(ValidationError::from).collect();
        status
    }

    /// Equal apart from `updated`: a note is not rewritten just because time passed.
    pub fn same_content(&self, other: &CommitStatus) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let CommitStatus {
            commit,
            state,
            updated: _,
            message,
            sync,
            errors,
            objects,
        } = self;
        *commit == other.commit
            && *state == other.state
            && *message == other.message
            && *sync == other.sync
            && *errors == other.errors
            && *objects == other.objects
    }
}

/// What the sync of a commit did to the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncSummary {
    pub created: u32,
    pub updated: u32,
    pub deleted: u32,
    pub unchanged: u32,
    #[serde(default)]
    pub prune_guard: PruneGuard,
}

/// Whether the prune guard held the sync back (it would have deleted too much), and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneGuard {
    pub held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One validation error; the fields of [`coxswain_schema::Diagnostic`] that mean something
/// outside the process (`code` as its stable string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// JSON pointer inside the document; empty when the error is about the whole file.
    pub pointer: String,
    pub reason: String,
    pub code: String,
}

impl From<&coxswain_schema::Diagnostic> for ValidationError {
    fn from(d: &coxswain_schema::Diagnostic) -> Self {
        ValidationError {
            file: d.file.clone(),
            line: d.line,
            column: d.column,
            pointer: d.pointer.clone(),
            reason: d.reason.clone(),
            code: d.code.as_str().to_string(),
        }
    }
}

/// One object the commit declares and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// The store key of the object.
    pub key: String,
    pub kind: String,
    /// Absent for cluster-scoped kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// The manifest file that declares it, relative to the repository root.
    pub source: String,
    pub state: ObjectState,
    /// What differs between the commit and what is observed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
}

impl ObjectStatus {
    /// Worth a line in the readable summary.
    fn in_trouble(&self) -> bool {
        matches!(
            self.state,
            ObjectState::Degraded | ObjectState::Missing | ObjectState::Failed
        ) || !self.drift.is_empty()
    }
}

/// Where one object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectState {
    Pending,
    Applied,
    Progressing,
    Healthy,
    Degraded,
    /// Declared by the commit but not found in the store or on any node.
    Missing,
    Failed,
}

impl ObjectState {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectState::Pending => "pending",
            ObjectState::Applied => "applied",
            ObjectState::Progressing => "progressing",
            ObjectState::Healthy => "healthy",
            ObjectState::Degraded => "degraded",
            ObjectState::Missing => "missing",
            ObjectState::Failed => "failed",
        }
    }
}

/// One difference between the applied commit and what is observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub kind: DriftKind,
    /// Free-form, for people (`"2/3 replicas ready"`).
    pub detail: String,
}

/// The kind of a [`Drift`], stable for machines. New kinds are only ever added, so every
/// older note stays readable; a kind this version does not know (a note from a newer
/// coxswain) reads as `Other` rather than making the whole note unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftKind {
    Missing,
    NotReady,
    Failed,
    NodeLost,
    /// A rollout stopped making progress (a Deployment's `ProgressDeadlineExceeded`).
    Stalled,
    #[serde(other)]
    Other,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Missing => "missing",
            DriftKind::NotReady => "not-ready",
            DriftKind::Failed => "failed",
            DriftKind::NodeLost => "node-lost",
            DriftKind::Stalled => "stalled",
            DriftKind::Other => "other",
        }
    }
}

/// The current time in RFC 3339, UTC, second precision (as Kubernetes timestamps are).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The text of a note: a readable summary, then the status as a fenced JSON block.
///
/// ````text
/// coxswain: failed — 0 objects, 0 created, 0 updated, 0 deleted
/// apps/web.yaml:12:13 /spec/replicas: "three" is not of type "integer"
///
/// ```json
/// { ... }
/// ```
/// ````
pub fn render(status: &CommitStatus) -> String {
    let s = &status.sync;
    let mut out = format!(
        "coxswain: {} — {} objects, {} created, {} updated, {} deleted\n",
        status.state,
        status.objects.len(),
        s.created,
        s.updated,
        s.deleted
    );
    let mut lines: Vec<String> = Vec::new();
    if let Some(message) = &status.message {
        lines.push(one_line(message));
    }
    if s.prune_guard.held {
        let why = s
            .prune_guard
            .reason
            .as_deref()
            .unwrap_or("no reason recorded");
        lines.push(format!("prune guard held this sync: {}", one_line(why)));
    }
    let errors = status.errors.iter().map(|e| {
        let at = format!("{}:{}:{}", one_line(&e.file), e.line, e.column);
        if e.pointer.is_empty() {
            format!("{at} {}", one_line(&e.reason))
        } else {
            format!("{at} {}: {}", one_line(&e.pointer), one_line(&e.reason))
        }
    });
    let troubled = status.objects.iter().filter(|o| o.in_trouble()).map(|o| {
        let mut line = format!("{} ", one_line(&o.kind));
        if let Some(ns) = &o.namespace {
            line.push_str(&one_line(ns));
            line.push('/');
        }
        line.push_str(&format!(
            "{} ({}): {}",
            one_line(&o.name),
            one_line(&o.source),
            o.state.as_str()
        ));
        let drift: Vec<String> = o
            .drift
            .iter()
            .map(|d| format!("{}: {}", d.kind.as_str(), one_line(&d.detail)))
            .collect();
        if !drift.is_empty() {
            line.push_str(" — ");
            line.push_str(&drift.join("; "));
        }
        line
    });
    // Formatting stops at the cap: a commit with 10 000 errors still renders quickly.
    let budget = SUMMARY_LINES.saturating_sub(lines.len());
    let listed = status.errors.len() + status.objects.iter().filter(|o| o.in_trouble()).count();
    lines.extend(errors.chain(troubled).take(budget));
    let left = listed.saturating_sub(budget);
    for line in &lines {
        out.push_str(line);
        out.push('\n');
    }
    if left > 0 {
        out.push_str(&format!("… and {left} more (see the JSON below)\n"));
    }
    out.push_str("\n```json\n");
    out.push_str(&status_json(status));
    out.push_str("\n```\n");
    out
}

/// The JSON block of a note: the top-level fields one per line, and each object, error and
/// nested summary on a line of its own. Fully pretty-printed, a note of 10,000 objects is
/// about a third larger, and the note writer hashes and compresses every byte of it on every
/// applied commit.
fn status_json(status: &CommitStatus) -> String {
    let mut out = Vec::with_capacity(64 + 160 * status.objects.len());
    let mut ser = serde_json::Serializer::with_formatter(&mut out, LinePerItem::default());
    // Serializing these plain structs (strings, integers, enums) into memory cannot fail.
    if status.serialize(&mut ser).is_err() {
        return String::new();
    }
    // serde_json writes only valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// A [`serde_json`] formatter that indents the outer two levels (the status and its lists)
/// like `to_string_pretty` and writes anything deeper compactly.
#[derive(Default)]
struct LinePerItem {
    /// Containers open around the next token.
    depth: usize,
    /// Whether the innermost open container got a value (so its close goes on a new line).
    has_value: bool,
}

impl LinePerItem {
    /// Containers opened at up to this depth are laid out one item per line.
    const PRETTY: usize = 2;

    fn newline<W: ?Sized + std::io::Write>(writer: &mut W, depth: usize) -> std::io::Result<()> {
        writer.write_all(b"\n")?;
        for _ in 0..depth {
            writer.write_all(b"  ")?;
        }
        Ok(())
    }

    fn open<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        bracket: &[u8],
    ) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        bracket: &[u8],
    ) -> std::io::Result<()> {
        if self.depth <= Self::PRETTY && self.has_value {
            Self::newline(writer, self.depth - 1)?;
        }
        self.depth = self.depth.saturating_sub(1);
        writer.write_all(bracket)
    }

    fn item<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            writer.write_all(b",")?;
        }
        if self.depth <= Self::PRETTY {
            Self::newline(writer, self.depth)?;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for LinePerItem {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(writer, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(if self.depth <= Self::PRETTY {
            b": "
        } else {
            b":"
        })
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// User-controlled text (file names, reasons) must not break the one-line-per-item summary or
/// forge a fence line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Reads a note's status back from its JSON block. Anything else (a note someone edited by
/// hand, one from a future format) is an [`Error::Note`], never a panic.
pub fn parse(note: &str) -> Result<CommitStatus> {
    parse_note(note).map_err(|reason| Error::Note {
        commit: "(unknown commit)".to_string(),
        reason,
    })
}

fn parse_note(note: &str) -> std::result::Result<CommitStatus, String> {
    let lines: Vec<&str> = note.lines().collect();
    // The last opening fence: the summary above may quote anything, but JSON text has no
    // line that is exactly a fence (a newline inside a string is escaped).
    let open = lines
        .iter()
        .rposition(|l| l.trim_end() == "```json")
        .ok_or("no ```json block in the note")?;
    let body = &lines[open + 1..];
    let len = body
        .iter()
        .position(|l| l.trim_end() == "```")
        .ok_or("the ```json block is not closed")?;
    serde_json::from_str(&body[..len].join("\n")).map_err(|e| format!("the ```json block: {e}"))
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The note was written; the notes ref now points at `notes_commit`.
    Wrote { notes_commit: Oid },
    /// The note already says this; the notes ref did not move.
    Unchanged,
    /// The note is at a state this one may not follow (see [`can_move`]); left as it was.
    Skipped { current: CommitState },
}

/// Reads the status in the note of `commit`, `None` when it has no note.
pub fn read(repo: &Repository, commit: &str) -> Result<Option<CommitStatus>> {
    let target = commit_id(repo, commit)?;
    let Some(text) = note_text(repo, NOTES_REF, target)? else {
        return Ok(None);
    };
    let status = parse_note(&text).map_err(|reason| Error::Note {
        commit: commit.to_string(),
        reason,
    })?;
    if status.commit != commit {
        return Err(Error::Note {
            commit: commit.to_string(),
            reason: format!("the note is about commit {}", status.commit),
        });
    }
    Ok(Some(status))
}

/// Writes the note of `status.commit` under [`NOTES_REF`], unless the existing note is at a
/// state this one may not follow ([`Written::Skipped`]) or already says the same
/// ([`Written::Unchanged`]). Notes of other commits are carried over untouched: the notes ref
/// is moved with a compare-and-swap and the whole read-decide-write is retried when another
/// writer moved it in between. Blocking; call it from `spawn_blocking` in async code.
pub fn write(repo: &Repository, status: &CommitStatus) -> Result<Written> {
    let span = tracing::info_span!("note_write", commit = %status.commit, state = %status.state);
    let _entered = span.enter();
    let target = commit_id(repo, &status.commit)?;
    let text = render(status);
    let sig = signature(repo)?;
    let private = private_refs(repo)?;
    for attempt in 0..MAX_ATTEMPTS {
        let base = ref_target(repo, NOTES_REF)?;
        // The read and the new notes commit are both made from this snapshot of the ref, so
        // the compare-and-swap below also proves that the decision was made on current data.
        let scratch = Scratch::at(&private, base, "write")?;
        if base.is_some()
            && let Some(existing) = note_text(&private, &scratch.name, target)?
        {
            match parse_note(&existing) {
                Ok(prev) if prev.commit == status.commit => {
                    if prev.same_content(status) {
                        tracing::debug!("note already says this");
                        return Ok(Written::Unchanged);
                    }
                    if !can_move(prev.state, status.state) {
                        tracing::debug!(current = %prev.state, "refusing to move the state backwards");
                        return Ok(Written::Skipped {
                            current: prev.state,
                        });
                    }
                }
                Ok(prev) => tracing::warn!(
                    names = %prev.commit,
                    "replacing a note that is about another commit"
                ),
                Err(reason) => {
                    tracing::warn!(%reason, "replacing a note that is not a coxswain status")
                }
            }
        }
        private
            .note(&sig, &sig, Some(&scratch.name), target, &text, true)
            .map_err(Error::git(format!("writing the note of {}", status.commit)))?;
        let new = scratch.target()?.ok_or_else(|| Error::Note {
            commit: status.commit.clone(),
            reason: format!("{} vanished while the note was written", scratch.name),
        })?;
        let message = format!("coxswain: {} is {}", status.commit, status.state);
        if advance(repo, new, base, &message)? {
            tracing::info!(notes_commit = %new, "note written");
            return Ok(Written::Wrote { notes_commit: new });
        }
        tracing::debug!(attempt, "notes ref moved under us; retrying");
        backoff(attempt);
    }
    Err(gave_up(format!("writing the note of {}", status.commit)))
}

/// A full commit id that names a commit of `repo`. Short ids are refused: `Oid::from_str`
/// would pad them with zeros rather than resolve them.
fn commit_id(repo: &Repository, commit: &str) -> Result<Oid> {
    let resolve = |reason: String| Error::Resolve {
        repo: repo.path().display().to_string(),
        reference: commit.to_string(),
        reason,
    };
    if !matches!(commit.len(), 40 | 64) || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(resolve("not a full commit id".to_string()));
    }
    let oid = Oid::from_str(commit).map_err(|e| resolve(e.message().to_string()))?;
    repo.find_commit(oid)
        .map_err(|e| resolve(e.message().to_string()))?;
    Ok(oid)
}

/// The identity notes are written with: the repository's configured one, or a fixed
/// `coxswain <coxswain@localhost>` where none is configured.
fn signature(repo: &Repository) -> Result<Signature<'static>> {
    match repo.config() {
        Ok(config) => identity(&config),
        Err(e) => {
            tracing::debug!(error = %e, "no git config; using the fallback identity");
            fallback_signature()
        }
    }
}

fn identity(config: &git2::Config) -> Result<Signature<'static>> {
    let get = |key: &str| config.get_string(key).ok().filter(|v| !v.trim().is_empty());
    if let (Some(name), Some(email)) = (get("user.name"), get("user.email"))
        && let Ok(sig) = Signature::now(&name, &email)
    {
        return Ok(sig);
    }
    fallback_signature()
}

fn fallback_signature() -> Result<Signature<'static>> {
    Signature::now(FALLBACK_NAME, FALLBACK_EMAIL).map_err(Error::git("making the note signature"))
}

fn ref_target(repo: &Repository, name: &str) -> Result<Option<Oid>> {
    match repo.refname_to_id(name) {
        Ok(oid) => Ok(Some(oid)),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!("reading {name}"))(e)),
    }
}

/// The note of `target` under the notes ref `notes_ref`, with its blob id.
fn note_of(repo: &Repository, notes_ref: &str, target: Oid) -> Result<Option<(Oid, String)>> {
    match repo.find_note(Some(notes_ref), target) {
        Ok(note) => Ok(Some((
            note.id(),
            String::from_utf8_lossy(note.message_bytes()).into_owned(),
        ))),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(Error::git(format!(
            "reading the note of {target} in {notes_ref}"
        ))(e)),
    }
}

fn note_text(repo: &Repository, notes_ref: &str, target: Oid) -> Result<Option<String>> {
    Ok(note_of(repo, notes_ref, target)?.map(|(_, text)| text))
}

/// Moves [`NOTES_REF`] from `base` to `new` if nobody moved it since `base` was read. `false`
/// means we lost a race and the caller should start over from the ref's new value.
fn advance(repo: &Repository, new: Oid, base: Option<Oid>, message: &str) -> Result<bool> {
    let moved = match base {
        Some(base) => repo.reference_matching(NOTES_REF, new, true, base, message),
        None => repo.reference(NOTES_REF, new, false, message),
    };
    match moved {
        Ok(_) => Ok(true),
        // Modified: compare failed; Exists: someone created it first; Locked: someone is
        // updating it right now; NotFound: someone deleted it after we read it.
        Err(e)
            if matches!(
                e.code(),
                ErrorCode::Modified | ErrorCode::Exists | ErrorCode::Locked | ErrorCode::NotFound
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(Error::git(format!("updating {NOTES_REF}"))(e)),
    }
}

/// Sleeps a little longer after each lost race, with jitter so two losers do not collide again.
fn backoff(attempt: u32) {
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 3_000_000)
        .unwrap_or(0);
    let base = Duration::from_millis(2 * u64::from(attempt.min(10) + 1));
    std::thread::sleep(base + Duration::from_nanos(u64::from(jitter)));
}

fn gave_up(context: String) -> Error {
    Error::Git {
        context,
        source: git2::Error::new(
            ErrorCode::Modified,
            ErrorClass::Reference,
            format!("{NOTES_REF} kept moving; gave up after {MAX_ATTEMPTS} attempts"),
        ),
    }
}

/// A repository of coxswain's own inside the real one's git dir that reads and writes the
/// real repository's objects but keeps refs of its own, for the [`Scratch`] refs of a notes
/// commit being built. In the real repository such a ref would be seen by everyone listing its
/// refs at that moment, and one that vanishes in the middle of a listing fails git's
/// receive-pack (a user's push: "bad object") and libgit2's `file://` fetch. The objects of a
/// notes commit are unreferenced in the real repository until [`NOTES_REF`] moves to them,
/// milliseconds later; `git gc` keeps unreferenced loose objects for two weeks
/// (`gc.pruneExpire`), so it cannot take them in between.
fn private_refs(repo: &Repository) -> Result<Repository> {
    let dir = repo.path().join(PRIVATE_REFS_DIR);
    let private = match Repository::open_bare(&dir) {
        Ok(private) => private,
        Err(e) if e.code() == ErrorCode::NotFound => create_private(&dir)?,
        Err(e) => return Err(Error::git(format!("opening {}", dir.display()))(e)),
    };
    let odb = repo
        .odb()
        .map_err(Error::git("opening the object database"))?;
    private.set_odb(&odb).map_err(Error::git(format!(
        "sharing the objects with {}",
        dir.display()
    )))?;
    Ok(private)
}

/// Makes the private repository at `dir` whole elsewhere and renames it into place, so a
/// concurrent writer (another thread, a second coxswain) never opens a half-made one and the
/// loser of the race simply uses the winner's.
fn create_private(dir: &Path) -> Result<Repository> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let staging = dir.with_extension(format!(
        "new-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Repository::init_bare(&staging)
        .map_err(Error::git(format!("creating {}", staging.display())))?;
    if let Err(e) = std::fs::rename(&staging, dir) {
        // Best effort: a leftover staging folder holds no refs anyone reads.
        let _ = std::fs::remove_dir_all(&staging);
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.display().to_string(),
                source: e,
            });
        }
    }
    Repository::open_bare(dir).map_err(Error::git(format!("opening {}", dir.display())))
}

/// A short-lived ref that libgit2's note functions can work on without touching
/// [`NOTES_REF`] (`git_note_create` moves the ref it is given with no compare, so it must
/// never be given the shared one). Deleted on drop.
struct Scratch<'r> {
    repo: &'r Repository,
    name: String,
}

impl std::fmt::Debug for Scratch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").field("name", &self.name).finish()
    }
}

impl<'r> Scratch<'r> {
    fn at(repo: &'r Repository, target: Option<Oid>, purpose: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{SCRATCH_PREFIX}{purpose}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if let Some(target) = target {
            repo.reference(&name, target, true, "coxswain: scratch")
                .map_err(Error::git(format!("creating {name}")))?;
        }
        Ok(Scratch { repo, name })
    }

    fn target(&self) -> Result<Option<Oid>> {
        ref_target(self.repo, &self.name)
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Ok(mut reference) = self.repo.find_reference(&self.name)
            && let Err(e) = reference.delete()
        {
            tracing::warn!(name = %self.name, error = %e, "could not delete a scratch ref");
        }
    }
}

/// Pushes [`NOTES_REF`] to `remote_url`, never by force. When the remote's notes ref moved
/// (another coxswain, a user's `git push origin refs/notes/coxswain`), fetches it, re-writes
/// our notes on top of it (for a commit noted on both sides, ours wins only if it is a status
/// that may follow theirs) and pushes again. Does nothing when there are no notes. Blocking.
pub fn push(repo: &Repository, remote_url: &str, access: Option<&RemoteAccess>) -> Result<()> {
    let shown = redact(remote_url);
    let span = tracing::info_span!("note_push", remote = %shown);
    let _entered = span.enter();
    if ref_target(repo, NOTES_REF)?.is_none() {
        tracing::debug!("no notes to push");
        return Ok(());
    }
    let mut remote = repo
        .remote_anonymous(remote_url)
        .map_err(Error::git(format!("opening remote {shown}")))?;
    for attempt in 0..MAX_ATTEMPTS {
        let Some(why) = push_once(&mut remote, access, &shown)? else {
            tracing::info!("notes pushed");
            return Ok(());
        };
        tracing::debug!(attempt, %why, "push refused; merging the remote's notes");
        let fetched = Scratch::at(repo, None, "fetched")?;
        fetch_notes(&mut remote, &fetched.name, access, &shown)?;
        let Some(theirs) = fetched.target()? else {
            // Refused, yet the remote has no notes ref: not a race we can resolve.
            return Err(refused(&shown, why));
        };
        let ours = ref_target(repo, NOTES_REF)?;
        if let Some(ours) = ours
            && (ours == theirs
                || repo
                    .graph_descendant_of(ours, theirs)
                    .map_err(Error::git("comparing notes histories"))?)
        {
            // We already contain theirs, so the refusal was not about a moved ref (a hook,
            // permissions); retrying would only repeat it.
            return Err(refused(&shown, why));
        }
        merge_onto(repo, theirs)?;
    }
    Err(gave_up(format!("pushing {NOTES_REF} to {shown}")))
}

/// One push attempt: `None` when it went through, `Some(why)` when the remote refused it.
fn push_once(
    remote: &mut git2::Remote<'_>,
    access: Option<&RemoteAccess>,
    shown: &str,
) -> Result<Option<String>> {
    let refused: RefCell<Option<String>> = RefCell::new(None);
    let mut callbacks = access.map(RemoteAccess::callbacks).unwrap_or_default();
    callbacks.push_update_reference(|name, status| {
        if let Some(status) = status {
            *refused.borrow_mut() = Some(format!("{name}: {status}"));
        }
        Ok(())
    });
    let mut options = git2::PushOptions::new();
    options.remote_callbacks(callbacks);
    let spec = format!("{NOTES_REF}:{NOTES_REF}");
    match remote.push(&[spec.as_str()], Some(&mut options)) {
        Ok(()) => {}
        // libgit2 checks fast-forward itself for some transports instead of letting the
        // remote reject it.
        Err(e) if e.code() == ErrorCode::NotFastForward => {
            return Ok(Some(e.message().to_string()));
        }
        Err(e) => return Err(Error::git(format!("pushing {NOTES_REF} to {shown}"))(e)),
    }
    drop(options);
    Ok(refused.take())
}

fn fetch_notes(
    remote: &mut git2::Remote<'_>,
    into: &str,
    access: Option<&RemoteAccess>,
    shown: &str,
) -> Result<()> {
    let callbacks = access.map(RemoteAccess::callbacks).unwrap_or_default();
    let mut options = git2::FetchOptions::new();
    options
        .remote_callbacks(callbacks)
        .download_tags(git2::AutotagOption::None)
        // FETCH_HEAD belongs to whoever fetches the branches of this repository.
        .update_fetchhead(false);
    let spec = format!("+{NOTES_REF}:{into}");
    remote
        .fetch(&[spec.as_str()], Some(&mut options), None)
        .map_err(Error::git(format!("fetching {NOTES_REF} from {shown}")))
}

/// Re-writes every local note that the fetched notes commit `theirs` lacks (or holds an
/// earlier state of) on top of it, and moves [`NOTES_REF`] there, so the next push is a
/// fast-forward that keeps their notes.
fn merge_onto(repo: &Repository, theirs: Oid) -> Result<()> {
    let sig = signature(repo)?;
    let private = private_refs(repo)?;
    for attempt in 0..MAX_ATTEMPTS {
        let ours = ref_target(repo, NOTES_REF)?;
        let local = Scratch::at(&private, ours, "local")?;
        let merged = Scratch::at(&private, Some(theirs), "merged")?;
        if ours.is_some() {
            let entries: Vec<(Oid, Oid)> = private
                .notes(Some(&local.name))
                .map_err(Error::git("listing local notes"))?
                .collect::<std::result::Result<_, _>>()
                .map_err(Error::git("listing local notes"))?;
            let mut rewritten = 0usize;
            for (blob, annotated) in entries {
                let remote_note = note_of(&private, &merged.name, annotated)?;
                if remote_note.as_ref().is_some_and(|(id, _)| *id == blob) {
                    continue;
                }
                let Some((_, ours_text)) = note_of(&private, &local.name, annotated)? else {
                    continue;
                };
                if keep_ours(remote_note.as_ref().map(|(_, t)| t.as_str()), &ours_text) {
                    private
                        .note(&sig, &sig, Some(&merged.name), annotated, &ours_text, true)
                        .map_err(Error::git(format!("re-writing the note of {annotated}")))?;
                    rewritten += 1;
                }
            }
            tracing::debug!(rewritten, "local notes re-written onto the remote's");
        }
        let new = merged.target()?.unwrap_or(theirs);
        if advance(repo, new, ours, "coxswain: notes merged with the remote's")? {
            return Ok(());
        }
        backoff(attempt);
    }
    Err(gave_up(format!("merging the remote's {NOTES_REF}")))
}

/// For a commit noted on both sides with different text: ours replaces theirs only when both
/// are coxswain statuses of the same commit and ours may follow theirs. A note we cannot read
/// is someone else's, and is kept.
fn keep_ours(theirs: Option<&str>, ours: &str) -> bool {
    let Some(theirs) = theirs else {
        return true;
    };
    match (parse_note(theirs), parse_note(ours)) {
        (Ok(theirs), Ok(ours)) => {
            theirs.commit == ours.commit
                && !theirs.same_content(&ours)
                && can_move(theirs.state, ours.state)
        }
        _ => false,
    }
}

fn refused(shown: &str, why: String) -> Error {
    Error::Git {
        context: format!("pushing {NOTES_REF} to {shown}"),
        source: git2::Error::new(ErrorCode::GenericError, ErrorClass::Reference, why),
    }
}

/// A URL fit for logs: `https://user:token@host/x` loses its credentials.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) if authority.contains('@') => {
                let host = authority.rsplit('@').next().unwrap_or_default();
                format!("{scheme}://***@{host}/{path}")
            }
            None if rest.contains('@') => {
                let host = rest.rsplit('@').next().unwrap_or_default();
                format!("{scheme}://***@{host}")
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The default for [`NoteWriter`]: at most one write per commit per second.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// How a [`NoteWriter`] fared, returned by [`NoteWriter::close`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub wrote: u64,
    pub unchanged: u64,
    pub skipped: u64,
    /// Writes that returned an error (logged); a later submit of that commit tries again.
    pub failed: u64,
    /// Pushes of the notes ref to the remote that went through.
    pub pushed: u64,
    /// Pushes that failed (logged); the notes stay in the cache and go with the next push.
    pub push_failed: u64,
}

/// Where a [`NoteWriter`] pushes the notes ref after writing: the source's remote.
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub url: String,
    pub access: RemoteAccess,
}

/// Rate-limits note writes for the sync loop: statuses submitted for one commit are coalesced
/// to the latest, written at most once per interval per commit (the first at once, then the
/// latest when the interval is up), and whatever is still pending is written on
/// [`close`](NoteWriter::close) or drop. Git work runs in `spawn_blocking`.
#[derive(Debug)]
pub struct NoteWriter {
    shared: Arc<Shared>,
    task: Option<JoinHandle<WriterStats>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Latest unwritten status per commit; coalescing happens here, so memory is bounded by
    /// the number of commits, not the number of submits.
    pending: Mutex<HashMap<String, CommitStatus>>,
    wake: Notify,
    closing: AtomicBool,
}

impl NoteWriter {
    /// Starts a writer for the repository at `repo_path`, with [`DEFAULT_INTERVAL`]. Must be
    /// called inside a tokio runtime.
    pub fn open(repo_path: &Path) -> Result<Self> {
        Self::with_interval(repo_path, DEFAULT_INTERVAL)
    }

    pub fn with_interval(repo_path: &Path, interval: Duration) -> Result<Self> {
        Self::with_push(repo_path, interval, None)
    }

    /// A writer that also pushes the notes ref to `push` after each round of writes, at most
    /// once per interval, and once more on close when something is still unpushed.
    pub fn with_push(
        repo_path: &Path,
        interval: Duration,
        push: Option<PushTarget>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Config {
            field: "note writer".to_string(),
            reason: format!("needs a tokio runtime: {e}"),
        })?;
        let repo = Repository::open(repo_path)
            .map_err(Error::git(format!("opening {}", repo_path.display())))?;
        let shared = Arc::new(Shared::default());
        let span = tracing::info_span!("note_writer", repo = %repo_path.display());
        let task = runtime.spawn(
            run(
                Arc::new(Mutex::new(repo)),
                Arc::clone(&shared),
                interval,
                push,
            )
            .instrument(span),
        );
        Ok(NoteWriter {
            shared,
            task: Some(task),
        })
    }

    /// Queues `status` for writing, replacing a pending status of the same commit unless that
    /// one is at a state this one may not follow.
    pub fn submit(&self, status: CommitStatus) {
        {
            let mut pending = lock(&self.shared.pending);
            match pending.get(&status.commit) {
                Some(queued) if !can_move(queued.state, status.state) => {}
                _ => {
                    pending.insert(status.commit.clone(), status);
                }
            }
        }
        self.shared.wake.notify_one();
    }

    /// Writes what is still pending, stops, and says how it went.
    pub async fn close(mut self) -> WriterStats {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "note writer task ended abnormally");
                WriterStats::default()
            }),
            None => WriterStats::default(),
        }
    }
}

impl Drop for NoteWriter {
    /// Dropping without `close` still writes what is pending, in the background.
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the map or repository half-updated in a
    // way that matters more than losing the writer, so poison is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn run(
    repo: Arc<Mutex<Repository>>,
    shared: Arc<Shared>,
    interval: Duration,
    push_to: Option<PushTarget>,
) -> WriterStats {
    let mut stats = WriterStats::default();
    let mut last_write: HashMap<String, Instant> = HashMap::new();
    // Notes written since the last push that went through; pushed at most once per interval
    // so that a remote that is down is not hammered, and once more on close. A new writer
    // pushes once at start, which carries what an earlier run could not push.
    let mut unpushed =
        push_to.is_some() && matches!(ref_target(&lock(&repo), NOTES_REF), Ok(Some(_)));
    let mut last_push: Option<Instant> = None;
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        let now = Instant::now();
        last_write.retain(|_, at| now.duration_since(*at) < interval);
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let mut pending = lock(&shared.pending);
            let commits: Vec<String> = pending.keys().cloned().collect();
            for commit in commits {
                match last_write.get(&commit) {
                    Some(at) if !closing => {
                        let at = *at + interval;
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                    _ => due.extend(pending.remove(&commit)),
                }
            }
        }
        for status in due {
            let commit = status.commit.clone();
            let repo = Arc::clone(&repo);
            let written = tokio::task::spawn_blocking(move || write(&lock(&repo), &status)).await;
            match written {
                Ok(Ok(Written::Wrote { .. })) => {
                    stats.wrote += 1;
                    unpushed = true;
                }
                Ok(Ok(Written::Unchanged)) => stats.unchanged += 1,
                Ok(Ok(Written::Skipped { .. })) => stats.skipped += 1,
                Ok(Err(e)) => {
                    tracing::warn!(%commit, error = %e, "could not write the note");
                    stats.failed += 1;
                }
                Err(e) => {
                    tracing::warn!(%commit, error = %e, "note write task failed");
                    stats.failed += 1;
                }
            }
            last_write.insert(commit, Instant::now());
        }
        if let Some(target) = push_to.as_ref().filter(|_| unpushed) {
            let due_at = last_push.map(|at| at + interval);
            if closing || due_at.is_none_or(|at| at <= Instant::now()) {
                let repo = Arc::clone(&repo);
                let target = target.clone();
                let pushed = tokio::task::spawn_blocking(move || {
                    push(&lock(&repo), &target.url, Some(&target.access))
                })
                .await;
                last_push = Some(Instant::now());
                match pushed {
                    Ok(Ok(())) => {
                        stats.pushed += 1;
                        unpushed = false;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not push the notes");
                        stats.push_failed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "note push task failed");
                        stats.push_failed += 1;
                    }
                }
                // On close one attempt is all there is; the notes stay in the cache and the
                // next start pushes them.
                if closing {
                    unpushed = false;
                }
            }
            if unpushed && let Some(at) = last_push.map(|at| at + interval) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if closing {
            if lock(&shared.pending).is_empty() {
                return stats;
            }
            continue;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use CommitState::{Applied, Degraded, Failed, Healthy, Pending, Progressing};

    #[test]
    fn state_moves_only_forward() {
        let all = [Pending, Applied, Progressing, Healthy, Degraded, Failed];
        // Rows are `from`, columns are `to`, in the order of `all`.
        let table = [
            [true, true, true, true, true, true],      // pending
            [false, true, true, true, true, true],     // applied
            [false, false, true, true, true, true],    // progressing
            [false, false, false, true, true, false],  // healthy
            [false, false, false, true, true, false],  // degraded
            [false, false, false, false, false, true], // failed
        ];
        for (i, from) in all.iter().enumerate() {
            for (j, to) in all.iter().enumerate() {
                assert_eq!(can_move(*from, *to), table[i][j], "{from} -> {to}");
            }
        }
    }

    #[test]
    fn states_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&Progressing).unwrap(),
            "\"progressing\""
        );
        assert_eq!(
            serde_json::from_str::<CommitState>("\"degraded\"").unwrap(),
            Degraded
        );
        assert_eq!(
            serde_json::to_string(&DriftKind::NodeLost).unwrap(),
            "\"node-lost\""
        );
    }

    #[test]
    fn drift_kinds_round_trip_and_unknown_ones_read_as_other() {
        for kind in [
            DriftKind::Missing,
            DriftKind::NotReady,
            DriftKind::Failed,
            DriftKind::NodeLost,
            DriftKind::Stalled,
            DriftKind::Other,
        ] {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(text, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<DriftKind>(&text).unwrap(), kind);
        }
        assert_eq!(
            serde_json::from_str::<DriftKind>("\"from-the-future\"").unwrap(),
            DriftKind::Other
        );
    }

    #[test]
    fn now_is_rfc3339_utc_in_seconds() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
        assert!(chrono::DateTime::parse_from_rfc3339(&now).is_ok(), "{now}");
    }

    fn sample() -> CommitStatus {
        let mut s = CommitStatus::new("a".repeat(40), Degraded);
        s.sync = SyncSummary {
            created: 3,
            updated: 1,
            deleted: 0,
            unchanged: 8,
            prune_guard: PruneGuard::default(),
        };
        s.objects = vec![
            ObjectStatus {
                key: "Deployment/default/web".into(),
                kind: "Deployment".into(),
                namespace: Some("default".into()),
                name: "web".into(),
                source: "apps/web.yaml".into(),
                state: ObjectState::Degraded,
                drift: vec![Drift {
                    kind: DriftKind::NotReady,
                    detail: "2/3 replicas ready".into(),
                }],
            },
            ObjectStatus {
                key: "Namespace/apps".into(),
                kind: "Namespace".into(),
                namespace: None,
                name: "apps".into(),
                source: "ns.yaml".into(),
                state: ObjectState::Healthy,
                drift: vec![],
            },
        ];
        s
    }

    #[test]
    fn render_has_summary_lines_then_json() {
        let mut s = sample();
        s.errors = vec![ValidationError {
            file: "path/file.yaml".into(),
            line: 14,
            column: 3,
            pointer: "/spec/replicas".into(),
            reason: "must be\nan integer".into(),
            code: "schema".into(),
        }];
        s.sync.prune_guard = PruneGuard {
            held: true,
            reason: Some("would delete 40 of 50 objects".into()),
        };
        let text = render(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "coxswain: degraded — 2 objects, 3 created, 1 updated, 0 deleted"
        );
        assert_eq!(
            lines[1],
            "prune guard held this sync: would delete 40 of 50 objects"
        );
        assert_eq!(
            lines[2],
            "path/file.yaml:14:3 /spec/replicas: must be an integer"
        );
        assert_eq!(
            lines[3],
            "Deployment default/web (apps/web.yaml): degraded — not-ready: 2/3 replicas ready"
        );
        assert_eq!(lines[4], "");
        assert_eq!(lines[5], "```json");
        assert_eq!(*lines.last().unwrap(), "```");
        assert!(
            !text.contains("Namespace apps"),
            "healthy objects get no line"
        );
        assert_eq!(parse(&text).unwrap(), s);
    }

    #[test]
    fn the_json_block_gives_each_object_and_error_one_line() {
        let mut s = sample();
        s.errors = vec![ValidationError {
            file: "a.yaml".into(),
            line: 2,
            column: 1,
            pointer: String::new(),
            reason: "bad".into(),
            code: "parse".into(),
        }];
        let text = render(&s);
        let open = text.find("```json\n").unwrap() + "```json\n".len();
        let json = &text[open..text.rfind("\n```").unwrap()];
        let lines: Vec<&str> = json.lines().collect();
        let expected = [
            "{".to_string(),
            format!("  \"commit\": \"{}\",", "a".repeat(40)),
            "  \"state\": \"degraded\",".into(),
            format!("  \"updated\": \"{}\",", s.updated),
            "  \"sync\": {".into(),
            "    \"created\": 3,".into(),
            "    \"updated\": 1,".into(),
            "    \"deleted\": 0,".into(),
            "    \"unchanged\": 8,".into(),
            "    \"pruneGuard\": {\"held\":false}".into(),
            "  },".into(),
            "  \"errors\": [".into(),
            "    {\"file\":\"a.yaml\",\"line\":2,\"column\":1,\"pointer\":\"\",\"reason\":\"bad\",\"code\":\"parse\"}".into(),
            "  ],".into(),
            "  \"objects\": [".into(),
            "    {\"key\":\"Deployment/default/web\",\"kind\":\"Deployment\",\"namespace\":\"default\",\"name\":\"web\",\"source\":\"apps/web.yaml\",\"state\":\"degraded\",\"drift\":[{\"kind\":\"not-ready\",\"detail\":\"2/3 replicas ready\"}]},".into(),
            "    {\"key\":\"Namespace/apps\",\"kind\":\"Namespace\",\"name\":\"apps\",\"source\":\"ns.yaml\",\"state\":\"healthy\"}".into(),
            "  ]".into(),
            "}".into(),
        ];
        assert_eq!(lines, expected);
        assert_eq!(parse(&text).unwrap(), s);
        // The point of the layout: a note of many objects is much smaller than pretty JSON.
        let mut many = sample();
        many.objects = (0..1000)
            .map(|i| ObjectStatus {
                key: format!("/apps/Deployment/team-{}/web-{i}", i % 10),
                kind: "Deployment".into(),
                namespace: Some(format!("team-{}", i % 10)),
                name: format!("web-{i}"),
                source: format!("apps/team-{}/web-{i}.yaml", i % 10),
                state: ObjectState::Applied,
                drift: vec![],
            })
            .collect();
        let (ours, pretty) = (
            status_json(&many).len(),
            serde_json::to_string_pretty(&many).unwrap().len(),
        );
        println!("1000 objects: {ours} bytes, pretty-printed {pretty}");
        assert!(
            ours * 5 < pretty * 4,
            "{ours} bytes against {pretty} pretty"
        );
        // Empty lists close on the same line, as in `to_string_pretty`.
        let empty = CommitStatus::new("c".repeat(40), Pending);
        let text = render(&empty);
        assert!(text.contains("\n  \"objects\": []\n}\n```\n"), "{text}");
        assert_eq!(parse(&text).unwrap(), empty);
    }

    #[test]
    fn render_caps_the_summary() {
        let mut s = CommitStatus::new("b".repeat(40), Failed);
        s.errors = (0..120)
            .map(|i| ValidationError {
                file: format!("f{i}.yaml"),
                line: 1,
                column: 1,
                pointer: String::new(),
                reason: "bad".into(),
                code: "parse".into(),
            })
            .collect();
        let text = render(&s);
        assert!(text.contains("f49.yaml:1:1 bad\n"));
        assert!(!text.contains("f50.yaml:1:1 bad\n"));
        assert!(text.contains("… and 70 more (see the JSON below)"));
        assert_eq!(parse(&text).unwrap().errors.len(), 120);
    }

    #[test]
    fn parse_refuses_bad_notes_without_panicking() {
        let good = render(&sample());
        let bad = [
            String::new(),
            "just a hand-written note".to_string(),
            "```json\n{\"commit\": \"x\"".to_string(),
            "```json\n{not json}\n```\n".to_string(),
            good.replace("\"degraded\"", "\"exploded\""),
            good.replace("\"commit\"", "\"kommit\""),
            "```json\n```\n".to_string(),
            "```json\n[1, 2]\n```".to_string(),
        ];
        for note in bad {
            match parse(&note) {
                Err(Error::Note { .. }) => {}
                other => panic!("{note:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn a_fence_in_user_text_does_not_confuse_parse() {
        let mut s = sample();
        s.objects[0].source = "```json\n{}\n```".into();
        s.message = Some("```json".into());
        let text = render(&s);
        assert_eq!(parse(&text).unwrap(), s);
    }

    #[test]
    fn same_content_ignores_the_timestamp_only() {
        let a = sample();
        let mut b = a.clone();
        b.updated = "2001-01-01T00:00:00Z".into();
        assert!(a.same_content(&b));
        b.sync.unchanged += 1;
        assert!(!a.same_content(&b));
    }

    #[test]
    fn identity_falls_back_when_none_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "").unwrap();
        let config = git2::Config::open(&path).unwrap();
        let sig = identity(&config).unwrap();
        assert_eq!(sig.name().unwrap(), FALLBACK_NAME);
        assert_eq!(sig.email().unwrap(), FALLBACK_EMAIL);

        std::fs::write(&path, "[user]\n\tname = Ada\n\temail = ada@example.com\n").unwrap();
        let config = git2::Config::open(&path).unwrap();
        let sig = identity(&config).unwrap();
        assert_eq!(sig.name().unwrap(), "Ada");
        assert_eq!(sig.email().unwrap(), "ada@example.com");
    }

    #[test]
    fn redact_hides_credentials() {
        assert_eq!(
            redact("https://user:tok@example.com/org/repo.git"),
            "https://***@example.com/org/repo.git"
        );
        assert_eq!(redact("https://example.com/r"), "https://example.com/r");
        assert_eq!(redact("file:///tmp/x"), "file:///tmp/x");
        assert_eq!(redact("ssh://git@host"), "ssh://***@host");
    }
}
