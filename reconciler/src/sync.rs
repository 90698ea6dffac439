//! The sync: one commit in, one Raft entry out.
//!
//! [`Syncer::sync_once`] resolves the source's ref, validates the tree at that commit (reusing
//! the parse of unchanged files from the previous commit), plans it against the Git-owned
//! objects in the store, asks the prune guard, and applies the plan with
//! [`coxswain_store::Member::txn_commit`]: every create, update and delete, the sync record
//! and the attempt record in one txn. The txn compares the sync record's revision (so two
//! syncs never interleave) and the revision of every object it updates or deletes (so a
//! controller's status write in between is never lost); a failed compare reloads the
//! inventory and plans again.
//!
//! Why a Git-owned inventory from the store rather than a list kept in the record: the
//! objects themselves carry the ownership label, so the inventory cannot disagree with what
//! is stored, and it survives restarts and leader changes for free.
//!
//! After the apply, [`Syncer::refresh_health`] follows the applied commit's objects in the
//! store ([`crate::health`]) and moves its note on (`applied → progressing → healthy |
//! degraded`), and keeps the rolled-up state in the sync record (and in the attempt record
//! while it is about the same commit), where `coxswain status` shows it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use coxswain_schema::{Limits, Report};
use coxswain_store::{
    CmpOp, Compare, Consistency, KeyValue, Kv, Member, Op, Revision, Target, Txn, object_key,
};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::health::{self, Snapshot};
use crate::notes::{
    self, CommitState, CommitStatus, NoteWriter, ObjectState, ObjectStatus, PruneGuard, PushTarget,
    SyncSummary, ValidationError, now_rfc3339,
};
use crate::plan::{self, Desired, Plan, is_git_owned};
use crate::prune::{self, ALLOW_PRUNE_TRAILER, ALLOW_PRUNE_VALUE, PrunePolicy, Verdict};
use crate::source::{Head, Source};

/// The API group of coxswain's own records in the store.
pub const GROUP: &str = "coxswain.dev";

/// The key of the record of the last applied commit of source `name`.
pub fn record_key(name: &str) -> String {
    object_key(GROUP, "SyncRecord", None, name)
}

/// The key of the record of the last attempted commit of source `name` (applied, held or
/// rejected): what `coxswain status` shows.
pub fn attempt_key(name: &str) -> String {
    object_key(GROUP, "SyncAttempt", None, name)
}

/// The last applied commit, stored at [`record_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    pub api_version: String,
    pub kind: String,
    pub metadata: RecordMeta,
    pub commit: String,
    pub applied_at: String,
    pub summary: SyncSummary,
    /// The commit's rolled-up health (`applied`, `progressing`, `healthy` or `degraded`), as
    /// its note says. Absent in records written before health was followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CommitState>,
}

/// The last attempted commit, stored at [`attempt_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncAttempt {
    pub api_version: String,
    pub kind: String,
    pub metadata: RecordMeta,
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_line: Option<String>,
    pub attempted_at: String,
    pub state: CommitState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub sync: SyncSummary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ValidationError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// What one call of [`Syncer::sync_once`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The ref still names the commit last attempted: nothing was read or written.
    Unchanged { commit: String },
    /// The commit is in the store, at `revision`.
    Applied {
        commit: String,
        revision: Revision,
        summary: SyncSummary,
    },
    /// The commit is invalid; nothing was applied.
    Rejected {
        commit: String,
        errors: Vec<ValidationError>,
    },
    /// The prune guard held the commit back; nothing was applied.
    Held { commit: String, reason: String },
}

/// What one call of [`Syncer::refresh_health`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The commit last applied, whose health this is.
    pub commit: String,
    pub state: CommitState,
    /// Whether the status changed since the last evaluation (and a note was submitted).
    pub changed: bool,
}

/// Settings of one sync loop.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Names the source's records (`default` for the one source of `coxswain up`).
    pub name: String,
    pub limits: Limits,
    pub prune: PrunePolicy,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            name: "default".into(),
            limits: Limits::default(),
            prune: PrunePolicy::default(),
        }
    }
}

/// Applying a plan found the store changed underneath (another sync, or a controller's write
/// to an object being updated); plan again from a fresh inventory.
const MAX_CONFLICTS: usize = 5;

/// The sync loop's state for one source on one member.
#[derive(Debug)]
pub struct Syncer {
    member: Member,
    source: Source,
    config: SyncConfig,
    notes: Option<NoteWriter>,
    /// The report of the last commit validated, whose per-file work the next reuses.
    previous: Option<Report>,
    /// The Git-owned objects as this member last saw them, and the revision of the sync
    /// record they go with (0: no record); stale when the record has moved since.
    owned: BTreeMap<String, Value>,
    record_revision: Revision,
    inventory_loaded: bool,
    last_attempt: Option<String>,
    /// The commit this syncer last applied; only it is planned again by `resync`.
    last_applied: Option<String>,
    /// The blob id of every file of the commit last applied, by path, and whether `owned`
    /// is still exactly what that apply left (no reload since).
    applied_blobs: HashMap<String, String>,
    applied_blobs_valid: bool,
    /// The desired objects of each file of the last valid commit, with the file's blob id.
    desired_cache: HashMap<String, (String, Vec<Arc<Desired>>)>,
    /// All of them, in key order: what the next commit keeps, less the files it changed.
    desired_sorted: Vec<Arc<Desired>>,
    /// The status of the commit last applied as its note was last told it: what
    /// `refresh_health` evaluates again and compares with.
    health: Option<CommitStatus>,
    /// The commit and state of the stored sync record, as last read or written: where a
    /// re-apply after a restart or a leader change takes the commit's reached state from.
    stored_state: Option<(String, CommitState)>,
}

impl Syncer {
    /// A syncer for `source` on `member`. Notes are written into the source's repository
    /// when it is Git (a folder has no commit to write them on).
    pub fn new(member: Member, source: Source, config: SyncConfig) -> Result<Syncer> {
        let notes = match &source {
            Source::Git(git) => {
                let push = git
                    .note_remote()
                    .map(|(url, access)| PushTarget { url, access });
                Some(NoteWriter::with_push(
                    git.git_dir(),
                    notes::DEFAULT_INTERVAL,
                    push,
                )?)
            }
            Source::Folder(_) => None,
        };
        Ok(Syncer {
            member,
            source,
            config,
            notes,
            previous: None,
            owned: BTreeMap::new(),
            record_revision: 0,
            inventory_loaded: false,
            last_attempt: None,
            last_applied: None,
            applied_blobs: HashMap::new(),
            applied_blobs_valid: false,
            desired_cache: HashMap::new(),
            desired_sorted: Vec::new(),
            health: None,
            stored_state: None,
        })
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Writes the notes still pending; call before dropping the syncer at shutdown.
    pub async fn close(mut self) {
        if let Some(n) = self.notes.take() {
            n.close().await;
        }
    }

    /// Looks at the source once and applies what is new.
    pub async fn sync_once(&mut self) -> Result<Outcome> {
        self.look(false).await
    }

    /// Like [`sync_once`](Syncer::sync_once), but when the source is still at the commit last
    /// applied, plans that commit again against the store and puts back what was changed or
    /// deleted outside Git, as Flux does on every interval. Returns `Unchanged` when the
    /// store still matches. A commit that was held or rejected is not retried.
    pub async fn resync(&mut self) -> Result<Outcome> {
        self.look(true).await
    }

    async fn look(&mut self, heal: bool) -> Result<Outcome> {
        let started = Instant::now();
        let (commit, head) = self.resolve()?;
        let again = self.last_attempt.as_deref() == Some(commit.as_str());
        if again && !(heal && self.last_applied.as_deref() == Some(commit.as_str())) {
            return Ok(Outcome::Unchanged { commit });
        }
        let span = tracing::info_span!("sync", source = %self.config.name, commit = %commit, resync = again);
        self.sync_commit(commit, head, started, again)
            .instrument(span)
            .await
    }

    /// `again`: the commit was applied before and this is a drift check (no pending note,
    /// nothing written when the store still matches).
    async fn sync_commit(
        &mut self,
        commit: String,
        head: Option<Head>,
        started: Instant,
        again: bool,
    ) -> Result<Outcome> {
        if again {
            // Drift happens outside the sync, so the cached inventory cannot show it.
            self.inventory_loaded = false;
        } else {
            self.submit_note(CommitStatus::new(commit.clone(), CommitState::Pending));
        }

        let report = self.validate(&commit)?;
        if !report.is_valid() {
            let status = CommitStatus::rejected(commit.clone(), &report.diagnostics);
            let errors = status.errors.clone();
            tracing::warn!(
                errors = errors.len(),
                "commit rejected; the last good commit keeps running"
            );
            self.record_unapplied(&commit, head.as_ref(), status)
                .await?;
            // The invalid report is not kept: its files are re-parsed when fixed anyway, and
            // the valid previous report stays the better base.
            return Ok(Outcome::Rejected { commit, errors });
        }
        let desired = self.desired(&report)?;
        // Files whose blob is the one last applied: their objects are in the store as they
        // are, as long as the inventory is the one that apply left.
        // Looked up once per desired object, so with a fast hash.
        let settled: FxHashSet<String> = report
            .files
            .iter()
            .filter(|f| {
                f.id().is_some_and(|id| {
                    self.applied_blobs.get(&f.path).map(String::as_str) == Some(id)
                })
            })
            .map(|f| f.path.clone())
            .collect();
        let blobs: HashMap<String, String> = report
            .files
            .iter()
            .filter_map(|f| f.id().map(|id| (f.path.clone(), id.to_string())))
            .collect();
        self.previous = Some(report);

        let allow_trailer = self.allows_prune(&commit)?;
        let mut conflicts = 0;
        loop {
            self.refresh_inventory().await?;
            // A reload (restart, another leader, a conflict, a drift check) may show changes
            // the last apply did not make, so nothing is taken as settled after one.
            let settled = |d: &Desired| self.applied_blobs_valid && settled.contains(&d.file);
            let plan = plan::plan_settled(&desired, &self.owned, settled);
            let verdict = prune::check(&plan, self.owned.len(), &self.config.prune, allow_trailer);
            if let Verdict::Held { reason } = &verdict {
                tracing::warn!(%reason, "prune guard held the commit");
                let mut status = CommitStatus::new(commit.clone(), CommitState::Pending);
                status.sync = summary(&plan, Some(reason.clone()));
                status.message = Some(reason.clone());
                self.record_unapplied(&commit, head.as_ref(), status)
                    .await?;
                return Ok(Outcome::Held {
                    commit,
                    reason: reason.clone(),
                });
            }
            if let Verdict::Allowed { reason, .. } = &verdict {
                tracing::info!(%reason, "prune allowed");
            }
            if again
                && plan.creates.is_empty()
                && plan.updates.is_empty()
                && plan.deletes.is_empty()
            {
                return Ok(Outcome::Unchanged { commit });
            }
            if again {
                tracing::warn!(
                    recreated = plan.creates.len(),
                    restored = plan.updates.len(),
                    removed = plan.deletes.len(),
                    "the store drifted from the applied commit; correcting"
                );
            }
            let reached = self.reached_state(&commit);
            match self.apply(&commit, head.as_ref(), &plan, reached).await? {
                Some((revision, sync)) => {
                    tracing::info!(
                        revision,
                        created = sync.created,
                        updated = sync.updated,
                        deleted = sync.deleted,
                        unchanged = sync.unchanged,
                        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                        "applied"
                    );
                    let mut status = CommitStatus::new(commit.clone(), CommitState::Applied);
                    status.sync = sync.clone();
                    status.objects = desired.iter().map(|d| object_status(d)).collect();
                    // The writer drops this `applied` when the note is already further on
                    // (a drift correction, a restart); what is tracked keeps that state, so
                    // the next health refresh cannot move the note backwards either.
                    self.submit_note(status.clone());
                    status.state = reached;
                    self.health = Some(status);
                    self.stored_state = Some((commit.clone(), reached));
                    self.last_attempt = Some(commit.clone());
                    self.last_applied = Some(commit.clone());
                    self.applied_blobs = blobs;
                    self.applied_blobs_valid = true;
                    return Ok(Outcome::Applied {
                        commit,
                        revision,
                        summary: sync,
                    });
                }
                None => {
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(Error::Conflict {
                            commit,
                            attempts: conflicts,
                        });
                    }
                    tracing::debug!(conflicts, "the store moved under the sync; planning again");
                    self.inventory_loaded = false;
                }
            }
        }
    }

    /// The commit (or, for a folder, a content fingerprint) the source is at now.
    fn resolve(&mut self) -> Result<(String, Option<Head>)> {
        match &mut self.source {
            Source::Git(git) => {
                let head = tokio::task::block_in_place(|| git.fetch())?;
                Ok((head.commit.clone(), Some(head)))
            }
            Source::Folder(folder) => {
                let print = tokio::task::block_in_place(|| folder.fingerprint())?;
                Ok((format!("folder-{print:016x}"), None))
            }
        }
    }

    fn validate(&self, commit: &str) -> Result<Report> {
        let _span = tracing::info_span!("validate").entered();
        let previous = self.previous.as_ref();
        let limits = &self.config.limits;
        tokio::task::block_in_place(|| match &self.source {
            Source::Git(git) => {
                let tree = git.tree(commit)?;
                Ok(coxswain_schema::validate::validate_tree_with(
                    &tree, limits, previous,
                ))
            }
            Source::Folder(folder) => {
                let tree = folder.tree()?;
                Ok(coxswain_schema::validate::validate_tree_with(
                    &tree, limits, previous,
                ))
            }
        })
    }

    /// The desired objects of a valid report, sorted by key. The objects of a file whose blob
    /// is the one seen last time are reused rather than encoded again: encoding every object
    /// of a large repository is most of what a one-file commit would otherwise cost.
    fn desired(&mut self, report: &Report) -> Result<Vec<Arc<Desired>>> {
        // Taken out first: after an error neither is kept, so the two never disagree about
        // which files the sorted set holds.
        let mut previous = std::mem::take(&mut self.desired_cache);
        let previous_sorted = std::mem::take(&mut self.desired_sorted);
        let mut cache = HashMap::with_capacity(report.files.len());
        let mut out: Vec<Arc<Desired>> = Vec::new();
        let mut fresh: Vec<Arc<Desired>> = Vec::new();
        let mut reused: FxHashSet<&str> = FxHashSet::default();
        for file in &report.files {
            let cached = file.id().and_then(|id| {
                previous
                    .remove(&file.path)
                    .filter(|(cached, _)| cached == id)
            });
            let objects = match cached {
                Some((_, objects)) => {
                    reused.insert(file.path.as_str());
                    objects
                }
                None => {
                    let objects = file
                        .docs
                        .iter()
                        .filter_map(|d| d.object.as_ref())
                        .map(|o| Desired::from_object(&file.path, o).map(Arc::new))
                        .collect::<Result<Vec<_>>>()?;
                    fresh.extend(objects.iter().cloned());
                    objects
                }
            };
            out.extend(objects.iter().cloned());
            if let Some(id) = file.id() {
                cache.insert(file.path.clone(), (id.to_string(), objects));
            }
        }
        // The objects of a reused file are the ones the last sorted set holds for it.
        let kept: Vec<Arc<Desired>> = previous_sorted
            .into_iter()
            .filter(|d| reused.contains(d.file.as_str()))
            .collect();
        let sorted = match plan::merge_sorted(kept, fresh) {
            Some(sorted) => sorted,
            None => plan::sorted_by_key(out)?,
        };
        self.desired_cache = cache;
        self.desired_sorted = sorted.clone();
        Ok(sorted)
    }

    fn allows_prune(&self, commit: &str) -> Result<bool> {
        match &self.source {
            Source::Git(git) => Ok(git
                .trailer(commit, ALLOW_PRUNE_TRAILER)?
                .is_some_and(|v| v.eq_ignore_ascii_case(ALLOW_PRUNE_VALUE))),
            Source::Folder(_) => Ok(false),
        }
    }

    /// Ends the attempt of a commit that applied nothing (rejected or held): the attempt
    /// record, the note, and no second look at the same commit.
    async fn record_unapplied(
        &mut self,
        commit: &str,
        head: Option<&Head>,
        status: CommitStatus,
    ) -> Result<()> {
        let value = to_value(&attempt(&self.config.name, commit, head, &status))?;
        self.member
            .txn(Txn::put(attempt_key(&self.config.name), value))
            .await?;
        self.submit_note(status);
        self.last_attempt = Some(commit.to_string());
        Ok(())
    }

    /// The state `commit` already reached when it is the commit last applied (by this
    /// syncer, or by whoever wrote the stored record), else `applied`: applying it again (a
    /// drift correction, a restart) does not take its health back.
    fn reached_state(&self, commit: &str) -> CommitState {
        let reached = match (&self.health, &self.stored_state) {
            (Some(h), _) if h.commit == commit => h.state,
            (_, Some((c, state))) if c == commit => *state,
            _ => CommitState::Applied,
        };
        match reached {
            CommitState::Progressing | CommitState::Healthy | CommitState::Degraded => reached,
            _ => CommitState::Applied,
        }
    }

    /// Evaluates the health of the commit last applied against the store, submits its note
    /// when the status changed (the note never moves backwards: a settled commit that
    /// regresses becomes `degraded`), and keeps the rolled-up state in the sync record.
    /// `None` when this syncer has applied nothing yet. Call it after each apply and when
    /// workloads change in the store; it reads only the prefixes the commit's objects live
    /// under.
    pub async fn refresh_health(&mut self) -> Result<Option<HealthReport>> {
        let Some(current) = self.health.clone() else {
            return Ok(None);
        };
        let span =
            tracing::info_span!("health", source = %self.config.name, commit = %current.commit);
        async move {
            let snapshot = Snapshot::load(&self.member, &current.objects).await?;
            let next = health::evaluate(&current, &snapshot);
            let changed = !next.same_content(&current);
            let commit = next.commit.clone();
            let state = next.state;
            if changed {
                tracing::info!(state = %state, was = %current.state, "commit health changed");
                self.submit_note(next.clone());
                self.health = Some(next);
            }
            self.record_state(&commit, state).await?;
            Ok(Some(HealthReport {
                commit,
                state,
                changed,
            }))
        }
        .instrument(span)
        .await
    }

    /// Writes `state` into the sync record of `commit` (and into the attempt record when
    /// that is about the same commit, so `coxswain status` shows it), unless the record
    /// already says it. The write compares both records' revisions: when the record moved
    /// since this syncer read it (another leader's sync), it is not ours to change.
    async fn record_state(&mut self, commit: &str, state: CommitState) -> Result<()> {
        if self
            .stored_state
            .as_ref()
            .is_some_and(|(c, s)| c == commit && *s == state)
        {
            return Ok(());
        }
        let name = self.config.name.clone();
        let (_, record) = self
            .member
            .get(&record_key(&name), Consistency::Linearizable)
            .await?;
        let Some(record) = record.filter(|kv| kv.mod_revision == self.record_revision) else {
            tracing::debug!("the sync record moved; leaving its state to the next sync");
            return Ok(());
        };
        let Ok(mut value) = serde_json::from_value::<SyncRecord>(record.value) else {
            return Ok(());
        };
        if value.commit != commit {
            return Ok(());
        }
        value.state = Some(state);
        let mut txn = Txn::default();
        txn.compares
            .push(at_revision(&record_key(&name), record.mod_revision));
        txn.success
            .push(Op::put(record_key(&name), &to_value(&value)?));
        let (_, attempt) = self
            .member
            .get(&attempt_key(&name), Consistency::Linearizable)
            .await?;
        if let Some(kv) = attempt
            && let Ok(mut a) = serde_json::from_value::<SyncAttempt>(kv.value)
            && a.commit == commit
        {
            a.state = state;
            txn.compares
                .push(at_revision(&attempt_key(&name), kv.mod_revision));
            txn.success
                .push(Op::put(attempt_key(&name), &to_value(&a)?));
        }
        let result = self.member.txn(txn).await?;
        if result.succeeded {
            // This write moved the record: remembering its revision keeps the inventory
            // from being reloaded for nothing on the next sync.
            self.record_revision = result.revision;
            self.stored_state = Some((commit.to_string(), state));
        } else {
            tracing::debug!("the sync records moved while the health was written");
        }
        Ok(())
    }

    fn submit_note(&self, status: CommitStatus) {
        if let Some(n) = &self.notes {
            n.submit(status);
        }
    }

    /// Reloads the Git-owned objects when the sync record moved since they were loaded (a
    /// restart, another leader's sync, or a conflict).
    async fn refresh_inventory(&mut self) -> Result<()> {
        let (_, record) = self
            .member
            .get(&record_key(&self.config.name), Consistency::Linearizable)
            .await?;
        let revision = record.as_ref().map_or(0, |kv| kv.mod_revision);
        if self.inventory_loaded && revision == self.record_revision {
            return Ok(());
        }
        self.owned = load_owned(&self.member)
            .instrument(tracing::info_span!("load_inventory"))
            .await?;
        self.applied_blobs_valid = false;
        self.record_revision = revision;
        self.inventory_loaded = true;
        let stored = record.and_then(|kv| serde_json::from_value::<SyncRecord>(kv.value).ok());
        if self.last_attempt.is_none()
            && let Some(r) = &stored
        {
            tracing::info!(commit = %r.commit, "resuming from the stored sync record");
        }
        self.stored_state = stored.map(|r| (r.commit, r.state.unwrap_or(CommitState::Applied)));
        Ok(())
    }

    /// One txn for the whole plan. `None` when a compare failed (the store moved). `reached`
    /// is the state the records give the commit (see `reached_state`).
    async fn apply(
        &mut self,
        commit: &str,
        head: Option<&Head>,
        plan: &Plan,
        reached: CommitState,
    ) -> Result<Option<(Revision, SyncSummary)>> {
        let name = &self.config.name;
        let now = now_rfc3339();
        let mut txn = Txn::default();
        txn.compares
            .push(at_revision(&record_key(name), self.record_revision));
        let mut written: BTreeMap<String, Option<Value>> = BTreeMap::new();
        for c in &plan.creates {
            let value = c.stored(&now, &uuid::Uuid::new_v4().to_string());
            txn.success.push(Op::put(c.key.clone(), &value));
            written.insert(c.key.clone(), Some(value));
        }
        for u in &plan.updates {
            txn.compares
                .push(at_revision(&u.key, resource_version(&u.before)));
            let value = u.stored();
            txn.success.push(Op::put(u.key.clone(), &value));
            written.insert(u.key.clone(), Some(value));
        }
        for d in &plan.deletes {
            txn.compares
                .push(at_revision(&d.key, resource_version(&d.before)));
            txn.success.push(Op::Delete { key: d.key.clone() });
            written.insert(d.key.clone(), None);
        }
        let sync = summary(plan, None);
        let record = SyncRecord {
            api_version: format!("{GROUP}/v1"),
            kind: "SyncRecord".into(),
            metadata: RecordMeta {
                name: name.clone(),
                resource_version: None,
            },
            commit: commit.to_string(),
            applied_at: now.clone(),
            summary: sync.clone(),
            state: Some(reached),
        };
        txn.success
            .push(Op::put(record_key(name), &to_value(&record)?));
        let mut status = CommitStatus::new(commit, reached);
        status.sync = sync.clone();
        txn.success.push(Op::put(
            attempt_key(name),
            &to_value(&attempt(name, commit, head, &status))?,
        ));
        let span = tracing::info_span!(
            "apply",
            creates = plan.creates.len(),
            updates = plan.updates.len(),
            deletes = plan.deletes.len()
        );
        let result = self.member.txn_commit(txn).instrument(span).await?;
        if !result.succeeded {
            return Ok(None);
        }
        for (key, value) in written {
            match value {
                Some(mut v) => {
                    // What the store set, so the next update of this object compares on it.
                    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert(
                            "resourceVersion".into(),
                            Value::String(result.revision.to_string()),
                        );
                    }
                    self.owned.insert(key, v);
                }
                None => {
                    self.owned.remove(&key);
                }
            }
        }
        self.record_revision = result.revision;
        Ok(Some((result.revision, sync)))
    }
}

fn attempt(name: &str, commit: &str, head: Option<&Head>, status: &CommitStatus) -> SyncAttempt {
    SyncAttempt {
        api_version: format!("{GROUP}/v1"),
        kind: "SyncAttempt".into(),
        metadata: RecordMeta {
            name: name.to_string(),
            resource_version: None,
        },
        commit: commit.to_string(),
        summary_line: head.map(|h| h.summary.clone()),
        attempted_at: status.updated.clone(),
        state: status.state,
        message: status.message.clone(),
        sync: status.sync.clone(),
        errors: status.errors.clone(),
    }
}

fn summary(plan: &Plan, held: Option<String>) -> SyncSummary {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    SyncSummary {
        created: count(plan.creates.len()),
        updated: count(plan.updates.len()),
        deleted: count(plan.deletes.len()),
        unchanged: count(plan.unchanged),
        prune_guard: PruneGuard {
            held: held.is_some(),
            reason: held,
        },
    }
}

fn object_status(d: &Desired) -> ObjectStatus {
    ObjectStatus {
        key: d.key.clone(),
        kind: d.kind.clone(),
        namespace: d.namespace.clone(),
        name: d.name.clone(),
        source: d.file.clone(),
        state: ObjectState::Applied,
        drift: Vec::new(),
    }
}

/// The compare "`key` is still at `revision`" (0: absent).
fn at_revision(key: &str, revision: Revision) -> Compare {
    Compare {
        key: key.to_string(),
        target: Target::ModRevision,
        op: CmpOp::Equal,
        value: revision,
    }
}

/// The revision a stored object was read at; 0 (absent) for a value without one, which can
/// only fail the compare and so leads to a fresh read, never to a lost write.
fn resource_version(v: &Value) -> Revision {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn to_value(v: &impl Serialize) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Config {
        field: "sync record".into(),
        reason: e.to_string(),
    })
}

/// The Git-owned objects in the store, by key, as stored: what a commit is planned against.
pub async fn load_owned(kv: &impl Kv) -> Result<BTreeMap<String, Value>> {
    let page = kv.list("/", 0, None, Consistency::Linearizable).await?;
    Ok(page
        .items
        .into_iter()
        .filter(|kv| is_git_owned(&kv.value))
        .map(|kv| (kv.key, kv.value))
        .collect())
}

/// Reads the records `coxswain status` shows.
pub async fn read_status(
    kv: &impl Kv,
    name: &str,
) -> Result<(Option<SyncRecord>, Option<SyncAttempt>)> {
    fn decode<T: serde::de::DeserializeOwned>(kv: Option<KeyValue>) -> Option<T> {
        kv.and_then(|kv| serde_json::from_value(kv.value).ok())
    }
    let (_, record) = kv.get(&record_key(name), Consistency::Linearizable).await?;
    let (_, attempt) = kv
        .get(&attempt_key(name), Consistency::Linearizable)
        .await?;
    Ok((decode(record), decode(attempt)))
}
