//! A linearizability checker for key-value histories recorded by concurrent test clients.
//!
//! The search is Wing & Gong's, with Lowe's memoisation of visited configurations ("Testing for
//! linearizability", 2017), the algorithm porcupine implements: walk the call and return events
//! in time order, try to linearize a pending call, and backtrack when an operation's return is
//! reached before it could take effect. A configuration is the set of linearized operations
//! plus the model state; one already explored is never explored again.
//!
//! Linearizability is compositional, so each key's sub-history is checked on its own. On top of
//! that the store promises that a revision is the index of the Raft log entry that made the
//! write; writes to different keys may share an entry (the batcher packs them), so revisions are
//! unique per key only, but they must follow real time across keys: a write called after another
//! operation returned lands in a later entry than anything that operation wrote or read.
//!
//! Operations whose outcome is unknown (the client timed out or lost its connection) may take
//! effect at any moment after their call, or never. They have no return event, so they never
//! have to be linearized before a completed operation, and the search succeeds once every
//! completed operation is placed. When such a write takes effect its revision is unknown: it is
//! either one that something on the key later observed (a read, or the expectation of a
//! compare-and-swap) or one nothing observed, in which case no read or successful
//! compare-and-swap can match the state until the next write.
//!
//! Operations with unknown outcome that nothing could tell about (a read without answer; a write
//! whose effect no later operation could have noticed) are left out, since any linearization
//! with them stays valid without them. Before searching, the checker also looks for reads and
//! compare-and-swaps that saw a revision older than one a write of the key had already
//! returned: the classic stale read or lost write, shown directly by the two operations, even
//! where the search would run out of steps.
//!
//! Every key is taken to be absent before the history starts, so record the operations that
//! create the keys, or use fresh keys.
//!
//! A configuration is remembered as a 128-bit fingerprint rather than as the full set and
//! state, so that hard histories run out of steps before they run out of memory. A fingerprint
//! collision can only prune a branch that was never explored, so at worst (with probability far
//! below 2^-64) it reports a violation that is not there; it can never make a bad history pass.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

/// The search-step budget of [`check`]: far beyond what the intended histories need (20,000 ops
/// over a few keys take well under a million steps, a few million when a tenth of the outcomes
/// are unknown), yet small enough that a hopeless search gives up within seconds, also in a
/// debug build.
#[allow(dead_code)]
pub const DEFAULT_MAX_STEPS: u64 = 50_000_000;

/// Memoised configurations per key above which the search gives up, so that a history too hard
/// to check fails the test instead of exhausting the machine's memory.
const MAX_MEMO_ENTRIES: usize = 8_000_000;

/// What a client asked for.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Put {
        key: String,
        value: String,
    },
    /// `expected_revision` 0 means "only if the key does not exist".
    Cas {
        key: String,
        expected_revision: u64,
        value: String,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
}

impl Input {
    #[allow(dead_code)]
    pub fn key(&self) -> &str {
        match self {
            Input::Put { key, .. }
            | Input::Cas { key, .. }
            | Input::Get { key }
            | Input::Delete { key } => key,
        }
    }
}

/// What the client was told.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A put or a successful compare-and-swap took effect at `revision`.
    Written {
        revision: u64,
    },
    CasFailed,
    /// The value and mod revision read; `None` when the key is absent.
    Read(Option<(String, u64)>),
    /// The key is absent from `revision` on (also when it was absent already).
    Deleted {
        revision: u64,
    },
    /// No answer: the operation may or may not have taken effect, at any time after its call.
    Unknown,
}

/// One recorded operation. Times are nanoseconds from a start common to all clients.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub call: u64,
    /// `None` when the outcome is unknown, and then `output` must be [`Output::Unknown`]. With
    /// [`Output::Unknown`] a return time is ignored, since the operation may still take effect
    /// after the client gave up.
    pub ret: Option<u64>,
    pub input: Input,
    pub output: Output,
}

/// Why a history is not linearizable. Indices refer to the checked history slice. For a violation
/// shown without search (revisions against real time, a stale read), `linearized` is empty and
/// `unplaced` holds the operations involved.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose sub-history failed; for a cross-key revision violation, every key involved,
    /// joined by ", ".
    pub key: String,
    /// One line saying what went wrong.
    pub reason: String,
    /// The longest prefix of the key's operations that could be linearized, in the order found.
    pub linearized: Vec<usize>,
    /// The operations that could not be placed after that prefix; the first one is the
    /// operation whose return the search could not get past.
    pub unplaced: Vec<usize>,
    /// The operations above, rendered one per line, and the state after the prefix.
    pub details: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "not linearizable (key {}): {}", self.key, self.reason)?;
        f.write_str(&self.details)
    }
}

impl std::error::Error for Violation {}

/// Why [`check`] did not return `Ok`. Every variant must fail the test.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    NotLinearizable(Violation),
    /// The search ran out of budget: the history is neither shown linearizable nor shown not.
    /// `details` shows how far the search got, rendered like [`Violation::details`]; a history
    /// that is not linearizable usually shows its problem there.
    GaveUp {
        key: String,
        ops_on_key: usize,
        steps: u64,
        max_steps: u64,
        memo_entries: usize,
        details: String,
    },
    /// The recording itself is inconsistent (for example a return before its call).
    InvalidHistory {
        op: usize,
        reason: String,
    },
}

impl CheckError {
    #[allow(dead_code)]
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            CheckError::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

impl From<Violation> for CheckError {
    fn from(v: Violation) -> Self {
        CheckError::NotLinearizable(v)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable(v) => v.fmt(f),
            CheckError::GaveUp {
                key,
                ops_on_key,
                steps,
                max_steps,
                memo_entries,
                details,
            } => write!(
                f,
                "linearizability check gave up on key {key} ({ops_on_key} ops) after {steps} of \
                 {max_steps} search steps with {memo_entries} configurations memoised; the \
                 history was not verified, which counts as a failure. How far it got:\n{details}"
            ),
            CheckError::InvalidHistory { op, reason } => {
                write!(f, "invalid history at op #{op}: {reason}")
            }
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks `history` with [`DEFAULT_MAX_STEPS`]. Every key is taken to be absent before the
/// history starts.
#[allow(dead_code)]
pub fn check(history: &[Op]) -> Result<(), CheckError> {
    check_with_budget(history, DEFAULT_MAX_STEPS)
}

/// Checks `history`, giving up with [`CheckError::GaveUp`] after `max_steps` search steps in
/// total over all keys.
#[allow(dead_code)]
pub fn check_with_budget(history: &[Op], max_steps: u64) -> Result<(), CheckError> {
    validate(history)?;
    let lower_bounds = check_revisions(history)?;

    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.input.key()).or_default().push(i);
    }
    let mut keys: Vec<(&str, Vec<usize>)> = by_key.into_iter().collect();
    // A fixed order makes the budget, and so giving up, reproducible.
    keys.sort_unstable_by(|a, b| a.0.cmp(b.0));

    for (_, indices) in &keys {
        check_stale_observations(history, indices)?;
    }

    let mut budget = Budget {
        used: 0,
        max: max_steps,
    };
    for (key, indices) in &keys {
        let problem = KeyProblem::build(history, indices, &lower_bounds)?;
        match problem.search(&mut budget) {
            Outcome::Linearizable => {}
            Outcome::Stuck(stuck) => {
                return Err(CheckError::NotLinearizable(
                    problem.violation(history, stuck),
                ));
            }
            Outcome::GaveUp {
                memo_entries,
                progress,
            } => {
                return Err(CheckError::GaveUp {
                    key: (*key).to_owned(),
                    ops_on_key: problem.ops.len(),
                    steps: budget.used,
                    max_steps,
                    memo_entries,
                    details: problem.violation(history, progress).details,
                });
            }
        }
    }
    Ok(())
}

fn is_unknown(op: &Op) -> bool {
    op.output == Output::Unknown
}

/// Rejects recordings the model cannot interpret; silently skipping them could hide a bug.
fn validate(history: &[Op]) -> Result<(), CheckError> {
    for (i, op) in history.iter().enumerate() {
        let shape_ok = matches!(
            (&op.input, &op.output),
            (_, Output::Unknown)
                | (Input::Put { .. }, Output::Written { .. })
                | (
                    Input::Cas { .. },
                    Output::Written { .. } | Output::CasFailed
                )
                | (Input::Get { .. }, Output::Read(_))
                | (Input::Delete { .. }, Output::Deleted { .. })
        );
        if !shape_ok {
            return Err(invalid(
                history,
                i,
                "the output does not fit the kind of operation",
            ));
        }
        match op.ret {
            None if !is_unknown(op) => {
                return Err(invalid(
                    history,
                    i,
                    "a known output needs a return time; record Output::Unknown when the \
                     outcome is unknown",
                ));
            }
            Some(ret) if ret < op.call && !is_unknown(op) => {
                return Err(invalid(history, i, "it returned before it was called"));
            }
            _ => {}
        }
    }
    Ok(())
}

fn invalid(history: &[Op], i: usize, why: &str) -> CheckError {
    CheckError::InvalidHistory {
        op: i,
        reason: format!("{}: {why}", describe(history, i)),
    }
}

/// The revision a completed write reports.
fn written_revision(op: &Op) -> Option<u64> {
    match op.output {
        Output::Written { revision } | Output::Deleted { revision } => Some(revision),
        _ => None,
    }
}

/// A log index the operation certainly took effect at or after: what it wrote, or the mod
/// revision it read.
fn observed_revision(op: &Op) -> Option<u64> {
    match &op.output {
        Output::Read(Some((_, revision))) => Some(*revision),
        _ => written_revision(op),
    }
}

/// Checks what follows from revisions being Raft log indices, and returns for every operation
/// the highest revision written or read by an operation that returned before it was called:
/// anything the operation writes must land above that.
fn check_revisions(history: &[Op]) -> Result<Vec<u64>, CheckError> {
    let mut owner: HashMap<(&str, u64), usize> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        let Some(revision) = written_revision(op) else {
            continue;
        };
        if revision == 0 {
            return Err(direct_violation(
                history,
                &[i],
                "a write reported revision 0, which is never a Raft log index".to_owned(),
            ));
        }
        if let Some(&first) = owner.get(&(op.input.key(), revision)) {
            return Err(direct_violation(
                history,
                &[first, i],
                format!(
                    "two writes of one key both report revision {revision}; every write of a \
                     key has its own log entry, so one was acknowledged and then lost or reused"
                ),
            ));
        }
        owner.insert((op.input.key(), revision), i);
    }

    let mut completions: Vec<(u64, u64, usize)> = history
        .iter()
        .enumerate()
        .filter(|(_, op)| !is_unknown(op))
        .filter_map(|(i, op)| Some((op.ret?, observed_revision(op)?, i)))
        .collect();
    completions.sort_unstable();
    let mut by_call: Vec<usize> = (0..history.len()).collect();
    by_call.sort_by_key(|&i| history[i].call);

    let mut lower_bounds = vec![0; history.len()];
    let mut highest: Option<(u64, usize)> = None;
    let mut next = 0;
    for &i in &by_call {
        let call = history[i].call;
        while let Some(&(ret, revision, j)) = completions.get(next) {
            if ret >= call {
                break;
            }
            if highest.is_none_or(|(best, _)| revision > best) {
                highest = Some((revision, j));
            }
            next += 1;
        }
        let Some((bound, witness)) = highest else {
            continue;
        };
        lower_bounds[i] = bound;
        if let Some(revision) = written_revision(&history[i])
            && revision <= bound
        {
            return Err(direct_violation(
                history,
                &[witness, i],
                format!(
                    "op #{i} was called after op #{witness} returned, yet its revision {revision} \
                     is not above revision {bound}, which op #{witness} wrote or read; revisions \
                     are log indices and must follow real time"
                ),
            ));
        }
    }
    Ok(lower_bounds)
}

/// Finds a read, or a successful compare-and-swap, that saw a revision of a key below one that a
/// write of the key had returned before the observer was called: a stale read or a lost write,
/// whatever the operations with unknown outcome did. The search would find it too, but with many
/// of those operations it can run out of steps first, and this names the two operations at once.
fn check_stale_observations(history: &[Op], indices: &[usize]) -> Result<(), CheckError> {
    let mut writes: Vec<(u64, u64, usize)> = indices
        .iter()
        .filter_map(|&i| Some((history[i].ret?, written_revision(&history[i])?, i)))
        .collect();
    writes.sort_unstable();
    let mut observers: Vec<(u64, u64, usize)> = indices
        .iter()
        .filter_map(|&i| {
            let op = &history[i];
            let seen = match (&op.input, &op.output) {
                (_, Output::Read(Some((_, revision)))) => *revision,
                (
                    Input::Cas {
                        expected_revision, ..
                    },
                    Output::Written { .. },
                ) if *expected_revision != 0 => *expected_revision,
                _ => return None,
            };
            Some((op.call, seen, i))
        })
        .collect();
    observers.sort_unstable();

    let mut newest: Option<(u64, usize)> = None;
    let mut next = 0;
    for &(call, seen, i) in &observers {
        while let Some(&(ret, revision, w)) = writes.get(next) {
            if ret >= call {
                break;
            }
            if newest.is_none_or(|(best, _)| revision > best) {
                newest = Some((revision, w));
            }
            next += 1;
        }
        if let Some((revision, w)) = newest
            && seen < revision
        {
            return Err(direct_violation(
                history,
                &[w, i],
                format!(
                    "op #{i} saw revision {seen}, but op #{w} had written revision {revision} of \
                     the same key and returned before op #{i} was called: a stale read or a lost \
                     write"
                ),
            ));
        }
    }
    Ok(())
}

/// A violation shown without search, by the operations involved.
fn direct_violation(history: &[Op], ops: &[usize], reason: String) -> CheckError {
    let mut keys: Vec<&str> = ops.iter().map(|&i| history[i].input.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut lines = vec!["  operations involved:".to_owned()];
    lines.extend(ops.iter().map(|&i| format!("    {}", describe(history, i))));
    CheckError::NotLinearizable(Violation {
        key: keys.join(", "),
        reason,
        linearized: Vec::new(),
        unplaced: ops.to_vec(),
        details: lines.join("\n"),
    })
}

#[derive(Debug)]
struct Budget {
    used: u64,
    max: u64,
}

/// The model state of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cur {
    Absent,
    Present {
        value: u32,
        revision: u64,
    },
    /// Written by an operation with an unknown outcome at a revision nothing observed.
    Hidden {
        value: u32,
    },
}

impl Cur {
    fn after_write(value: Option<u32>, revision: u64) -> Cur {
        match value {
            Some(value) => Cur::Present { value, revision },
            None => Cur::Absent,
        }
    }

    /// Whether a compare-and-swap expecting `expected` (0: absent) succeeds.
    fn satisfies(self, expected: u64) -> bool {
        match self {
            Cur::Absent => expected == 0,
            Cur::Present { revision, .. } => revision == expected,
            // The expectation of a compare-and-swap that succeeded is an observed revision, so
            // a write that could have had it takes it as a candidate instead; and one that
            // failed is explained by the hidden revision being any other.
            Cur::Hidden { .. } => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    cur: Cur,
    /// The key's latest revision (a lower bound of it after a hidden write): every later
    /// write of the key must be above it, also after a delete.
    last: u64,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A put (`expected: None`), a compare-and-swap that took or may have taken effect, or a
    /// delete (`value: None`); `revision: None` when the outcome is unknown.
    Write {
        value: Option<u32>,
        expected: Option<u64>,
        revision: Option<u64>,
    },
    CasFailed {
        expected: u64,
    },
    Read(Cur),
}

#[derive(Debug)]
struct KeyOp {
    /// Index in the whole history.
    hist: usize,
    kind: Kind,
    /// Completed, so it must be linearized before its return.
    known: bool,
    /// For completed writes, the place in the key's revision order.
    rank: Option<usize>,
    /// For writes with an unknown outcome: revisions observed on the key that they may have
    /// taken, in increasing order.
    candidates: Vec<u64>,
    /// For writes with an unknown outcome: whether taking effect unobserved may be needed.
    hidden_ok: bool,
    /// See `check_revisions`.
    lower_bound: u64,
}

impl KeyOp {
    /// Known operations have one way to take effect; an unknown write has one per candidate
    /// revision, then possibly the unobserved one.
    fn alternatives(&self) -> usize {
        if self.known {
            1
        } else {
            self.candidates.len() + usize::from(self.hidden_ok)
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// On a call entry of a completed operation, its return entry.
    ret_entry: Option<usize>,
}

#[derive(Debug, Default)]
struct Interner<'a> {
    ids: HashMap<&'a str, u32>,
    names: Vec<&'a str>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, s: &'a str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(s, id);
        self.names.push(s);
        id
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).copied().unwrap_or("?")
    }
}

#[derive(Debug)]
struct KeyProblem<'a> {
    values: Interner<'a>,
    ops: Vec<KeyOp>,
    entries: Vec<Entry>,
    /// Revisions of the key's completed writes, ascending; index = rank.
    known_write_revs: Vec<u64>,
    known_count: usize,
    /// Random per-operation keys whose XOR over the linearized set fingerprints that set.
    zobrist: Vec<u128>,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    entry: usize,
    state: State,
    alt: usize,
}

#[derive(Debug)]
struct Stuck {
    prefix: Vec<usize>,
    pending: Vec<usize>,
    blocking: Option<usize>,
    state: State,
}

impl Stuck {
    fn prefix_only(prefix: Vec<usize>, state: State) -> Stuck {
        Stuck {
            prefix,
            pending: Vec::new(),
            blocking: None,
            state,
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Linearizable,
    Stuck(Stuck),
    GaveUp {
        memo_entries: usize,
        progress: Stuck,
    },
}

fn raise(slot: &mut Option<u64>, t: u64) {
    *slot = Some(slot.map_or(t, |s| s.max(t)));
}

/// The time until which an operation can still be linearized.
fn deadline(op: &Op) -> u64 {
    match op.ret {
        Some(ret) if !is_unknown(op) => ret,
        _ => u64::MAX,
    }
}

impl<'a> KeyProblem<'a> {
    fn build(
        history: &'a [Op],
        indices: &[usize],
        lower_bounds: &[u64],
    ) -> Result<Self, CheckError> {
        let mut values = Interner::default();
        let mut read_obs: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut cas_obs: HashSet<u64> = HashSet::new();
        let mut known_revs: HashSet<u64> = HashSet::new();
        // Latest deadlines of the operations an unobserved unknown write could explain: a
        // failed compare-and-swap, and for deletes anything that found the key absent.
        let mut cas_failed_until: Option<u64> = None;
        let mut absence_until: Option<u64> = None;

        for &i in indices {
            let op = &history[i];
            if let Some(revision) = written_revision(op) {
                known_revs.insert(revision);
            }
            match (&op.input, &op.output) {
                (Input::Get { .. }, Output::Read(Some((value, revision)))) => {
                    let id = values.id(value);
                    read_obs.entry(*revision).or_default().push(id);
                }
                (Input::Get { .. }, Output::Read(None)) => raise(&mut absence_until, deadline(op)),
                (
                    Input::Cas {
                        expected_revision, ..
                    },
                    Output::CasFailed,
                ) => {
                    raise(&mut cas_failed_until, deadline(op));
                    if *expected_revision != 0 {
                        raise(&mut absence_until, deadline(op));
                    }
                }
                (
                    Input::Cas {
                        expected_revision, ..
                    },
                    Output::Written { .. } | Output::Unknown,
                ) => {
                    if *expected_revision == 0 {
                        raise(&mut absence_until, deadline(op));
                    } else {
                        cas_obs.insert(*expected_revision);
                    }
                }
                _ => {}
            }
        }

        let mut ops = Vec::with_capacity(indices.len());
        for &i in indices {
            let op = &history[i];
            let unknown = is_unknown(op);
            let kind = match (&op.input, &op.output) {
                // A read changes nothing, so one without an answer constrains nothing.
                (Input::Get { .. }, Output::Unknown) => continue,
                (Input::Get { .. }, Output::Read(None)) => Kind::Read(Cur::Absent),
                (Input::Get { .. }, Output::Read(Some((value, revision)))) => {
                    Kind::Read(Cur::Present {
                        value: values.id(value),
                        revision: *revision,
                    })
                }
                (Input::Put { value, .. }, Output::Written { revision }) => Kind::Write {
                    value: Some(values.id(value)),
                    expected: None,
                    revision: Some(*revision),
                },
                (Input::Put { value, .. }, Output::Unknown) => Kind::Write {
                    value: Some(values.id(value)),
                    expected: None,
                    revision: None,
                },
                (
                    Input::Cas {
                        expected_revision,
                        value,
                        ..
                    },
                    Output::Written { revision },
                ) => Kind::Write {
                    value: Some(values.id(value)),
                    expected: Some(*expected_revision),
                    revision: Some(*revision),
                },
                (
                    Input::Cas {
                        expected_revision, ..
                    },
                    Output::CasFailed,
                ) => Kind::CasFailed {
                    expected: *expected_revision,
                },
                (
                    Input::Cas {
                        expected_revision,
                        value,
                        ..
                    },
                    Output::Unknown,
                ) => Kind::Write {
                    value: Some(values.id(value)),
                    expected: Some(*expected_revision),
                    revision: None,
                },
                (Input::Delete { .. }, Output::Deleted { revision }) => Kind::Write {
                    value: None,
                    expected: None,
                    revision: Some(*revision),
                },
                (Input::Delete { .. }, Output::Unknown) => Kind::Write {
                    value: None,
                    expected: None,
                    revision: None,
                },
                _ => {
                    return Err(invalid(
                        history,
                        i,
                        "the output does not fit the kind of operation",
                    ));
                }
            };

            let lower_bound = lower_bounds.get(i).copied().unwrap_or(0);
            let mut candidates = Vec::new();
            let mut hidden_ok = false;
            if unknown && let Kind::Write { value, .. } = kind {
                match value {
                    Some(v) => {
                        // A revision read with another value belongs to another write.
                        let fits = |r: &u64| read_obs.get(r).is_none_or(|vs| vs.contains(&v));
                        candidates = read_obs
                            .iter()
                            .filter(|(_, vs)| vs.contains(&v))
                            .map(|(r, _)| *r)
                            .chain(cas_obs.iter().copied().filter(fits))
                            .filter(|r| *r > lower_bound && !known_revs.contains(r))
                            .collect();
                        candidates.sort_unstable();
                        candidates.dedup();
                        // Unobserved, the write only shows through a compare-and-swap failing
                        // before the next write; reads and successful ones cannot match it.
                        hidden_ok = cas_failed_until.is_some_and(|t| t >= op.call);
                    }
                    None => hidden_ok = absence_until.is_some_and(|t| t >= op.call),
                }
                // Nothing could tell whether it took effect: any linearization that includes
                // it stays valid without it, so leaving it out loses nothing and keeps the
                // search from trying it at every step.
                if candidates.is_empty() && !hidden_ok {
                    continue;
                }
            }
            ops.push(KeyOp {
                hist: i,
                kind,
                known: !unknown,
                rank: None,
                candidates,
                hidden_ok,
                lower_bound,
            });
        }

        let mut ranked: Vec<(u64, usize)> = ops
            .iter()
            .enumerate()
            .filter_map(|(j, o)| match o.kind {
                Kind::Write {
                    revision: Some(r), ..
                } => Some((r, j)),
                _ => None,
            })
            .collect();
        ranked.sort_unstable();
        for (rank, &(_, j)) in ranked.iter().enumerate() {
            ops[j].rank = Some(rank);
        }
        let known_write_revs = ranked.iter().map(|&(r, _)| r).collect();

        // Calls sort before returns at equal times: operations that merely touch count as
        // concurrent, so only a return strictly before a call orders two operations.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (j, o) in ops.iter().enumerate() {
            let op = &history[o.hist];
            events.push((op.call, false, j));
            if o.known {
                events.push((deadline(op), true, j));
            }
        }
        events.sort_unstable();
        let mut entries: Vec<Entry> = Vec::with_capacity(events.len());
        let mut call_entry = vec![usize::MAX; ops.len()];
        for &(_, is_ret, j) in &events {
            let idx = entries.len();
            if is_ret {
                if let Some(call) = entries.get_mut(call_entry[j]) {
                    call.ret_entry = Some(idx);
                }
            } else {
                call_entry[j] = idx;
            }
            entries.push(Entry {
                op: j,
                is_call: !is_ret,
                ret_entry: None,
            });
        }

        let mut seed = 0x6c69_6e63_6865_636b_u64;
        let zobrist = (0..ops.len())
            .map(|_| (u128::from(splitmix64(&mut seed)) << 64) | u128::from(splitmix64(&mut seed)))
            .collect();
        let known_count = ops.iter().filter(|o| o.known).count();
        Ok(KeyProblem {
            values,
            ops,
            entries,
            known_write_revs,
            known_count,
            zobrist,
        })
    }

    /// The state after `op` takes effect (in its `alt`-th way) in `s`, if it can.
    fn step(&self, op: &KeyOp, alt: usize, s: State, next_rank: usize) -> Option<State> {
        match op.kind {
            Kind::Read(seen) => (s.cur == seen).then_some(s),
            Kind::CasFailed { expected } => (!s.cur.satisfies(expected)).then_some(s),
            Kind::Write {
                value,
                expected,
                revision,
            } => {
                if let Some(expected) = expected
                    && !s.cur.satisfies(expected)
                {
                    return None;
                }
                // Completed writes of a key take effect in revision order. Enforcing that here
                // rather than only through `last` cuts dead branches before they grow.
                let ceiling = self
                    .known_write_revs
                    .get(next_rank)
                    .copied()
                    .unwrap_or(u64::MAX);
                match revision {
                    Some(revision) => {
                        (op.rank == Some(next_rank) && revision > s.last).then(|| State {
                            cur: Cur::after_write(value, revision),
                            last: revision,
                        })
                    }
                    None => match op.candidates.get(alt) {
                        Some(&revision) => {
                            (revision > s.last && revision < ceiling).then(|| State {
                                cur: Cur::after_write(value, revision),
                                last: revision,
                            })
                        }
                        None => {
                            // Its revision is above the key's and above anything that returned
                            // before its call, and below the next completed write's.
                            let last = s.last.max(op.lower_bound).saturating_add(1);
                            let cur = match value {
                                Some(value) => Cur::Hidden { value },
                                None => Cur::Absent,
                            };
                            (last < ceiling).then_some(State { cur, last })
                        }
                    },
                }
            }
        }
    }

    fn search(&self, budget: &mut Budget) -> Outcome {
        // A doubly linked list over the entries with sentinels; lifting an operation unlinks
        // its entries, and backtracking relinks them in reverse order (dancing links).
        let m = self.entries.len();
        let head = m;
        let tail = m + 1;
        let mut next = vec![usize::MAX; m + 2];
        let mut prev = vec![usize::MAX; m + 2];
        let mut last_node = head;
        for node in (0..m).chain(std::iter::once(tail)) {
            next[last_node] = node;
            prev[node] = last_node;
            last_node = node;
        }

        let mut memo: HashSet<u128> = HashSet::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut state = State {
            cur: Cur::Absent,
            last: 0,
        };
        let mut set_hash: u128 = 0;
        let mut next_rank = 0;
        let mut known_left = self.known_count;
        let mut deepest: Vec<usize> = Vec::new();
        let mut deepest_state = state;
        let mut stuck: Option<Stuck> = None;
        let mut cur = next[head];
        let mut first_alt = 0;

        loop {
            // Unknown operations never have to be placed, so completed ones decide success.
            if known_left == 0 {
                return Outcome::Linearizable;
            }
            if budget.used >= budget.max {
                return Outcome::GaveUp {
                    memo_entries: memo.len(),
                    progress: stuck.unwrap_or_else(|| Stuck::prefix_only(deepest, deepest_state)),
                };
            }
            budget.used += 1;

            let entry = if cur == tail {
                None
            } else {
                self.entries.get(cur).copied()
            };
            match entry {
                Some(Entry {
                    op: j,
                    is_call: true,
                    ret_entry,
                }) => {
                    let op = &self.ops[j];
                    let mut placed = false;
                    for alt in first_alt..op.alternatives() {
                        let Some(new_state) = self.step(op, alt, state, next_rank) else {
                            continue;
                        };
                        let new_hash = set_hash ^ self.zobrist[j];
                        if !memo.insert(fingerprint(new_hash, new_state)) {
                            continue;
                        }
                        if memo.len() > MAX_MEMO_ENTRIES {
                            return Outcome::GaveUp {
                                memo_entries: memo.len(),
                                progress: stuck
                                    .unwrap_or_else(|| Stuck::prefix_only(deepest, deepest_state)),
                            };
                        }
                        stack.push(Frame {
                            entry: cur,
                            state,
                            alt,
                        });
                        state = new_state;
                        set_hash = new_hash;
                        unlink(&mut next, &mut prev, cur);
                        if let Some(r) = ret_entry {
                            unlink(&mut next, &mut prev, r);
                        }
                        if op.known {
                            known_left -= 1;
                        }
                        if op.rank.is_some() {
                            next_rank += 1;
                        }
                        if stack.len() > deepest.len() {
                            deepest = stack.iter().map(|f| self.entries[f.entry].op).collect();
                            deepest_state = state;
                            stuck = None;
                        }
                        placed = true;
                        break;
                    }
                    cur = if placed { next[head] } else { next[cur] };
                    first_alt = 0;
                }
                _ => {
                    // A return reached before its operation took effect (the tail is reached
                    // only if the list is inconsistent, and is treated the same way). The first
                    // time this happens at the deepest level, the stack is the longest prefix.
                    if stuck.is_none() && stack.len() == deepest.len() {
                        let mut pending = Vec::new();
                        let mut node = next[head];
                        while node != cur && node != tail {
                            if self.entries[node].is_call {
                                pending.push(self.entries[node].op);
                            }
                            node = next[node];
                        }
                        let blocking = (cur != tail).then(|| self.entries[cur].op);
                        stuck = Some(Stuck {
                            prefix: deepest.clone(),
                            pending,
                            blocking,
                            state,
                        });
                    }
                    let Some(frame) = stack.pop() else {
                        return Outcome::Stuck(
                            stuck.unwrap_or_else(|| Stuck::prefix_only(deepest, deepest_state)),
                        );
                    };
                    let Entry {
                        op: j, ret_entry, ..
                    } = self.entries[frame.entry];
                    if let Some(r) = ret_entry {
                        relink(&mut next, &mut prev, r);
                    }
                    relink(&mut next, &mut prev, frame.entry);
                    let op = &self.ops[j];
                    if op.known {
                        known_left += 1;
                    }
                    if op.rank.is_some() {
                        next_rank -= 1;
                    }
                    set_hash ^= self.zobrist[j];
                    state = frame.state;
                    cur = frame.entry;
                    first_alt = frame.alt + 1;
                }
            }
        }
    }

    fn violation(&self, history: &[Op], stuck: Stuck) -> Violation {
        let hist = |j: usize| self.ops[j].hist;
        let linearized: Vec<usize> = stuck.prefix.iter().map(|&j| hist(j)).collect();
        let mut unplaced: Vec<usize> = stuck.blocking.map(hist).into_iter().collect();
        unplaced.extend(
            stuck
                .pending
                .iter()
                .filter(|&&j| Some(j) != stuck.blocking)
                .map(|&j| hist(j)),
        );
        let key = self
            .ops
            .first()
            .map_or(String::new(), |o| history[o.hist].input.key().to_owned());

        let unknown_pending = unplaced
            .iter()
            .filter(|&&i| is_unknown(&history[i]))
            .count();
        let reason = match stuck.blocking {
            Some(b) => format!(
                "op #{} returned before it could take effect: after the longest linearizable \
                 prefix ({} of {} ops on the key), none of the {} pending ops ({} of them with \
                 unknown outcome) can come next",
                hist(b),
                linearized.len(),
                self.ops.len(),
                unplaced.len(),
                unknown_pending,
            ),
            None => format!(
                "the {} ops on the key have no linearization (longest linearizable prefix: {} ops)",
                self.ops.len(),
                linearized.len(),
            ),
        };

        const SHOWN: usize = 12;
        let skip = linearized.len().saturating_sub(SHOWN);
        let mut lines = vec![format!(
            "  longest linearizable prefix: {} ops{}",
            linearized.len(),
            if skip > 0 {
                format!(", the last {SHOWN} shown")
            } else {
                String::new()
            },
        )];
        lines.extend(
            linearized[skip..]
                .iter()
                .map(|&i| format!("    {}", describe(history, i))),
        );
        lines.push(format!(
            "  state after that prefix: {}",
            self.show_state(stuck.state)
        ));
        lines.push("  ops that could not be linearized next:".to_owned());
        // Unknown outcomes pile up from the start of the history and are rarely the culprit,
        // so they come after the completed operations and only a few are shown.
        let (completed, unknown): (Vec<usize>, Vec<usize>) =
            unplaced.iter().partition(|&&i| !is_unknown(&history[i]));
        lines.extend(
            completed
                .iter()
                .chain(unknown.iter().take(SHOWN / 2))
                .map(|&i| format!("    {}", describe(history, i))),
        );
        if unknown.len() > SHOWN / 2 {
            lines.push(format!(
                "    ... and {} more ops with unknown outcome",
                unknown.len() - SHOWN / 2
            ));
        }
        Violation {
            key,
            reason,
            linearized,
            unplaced,
            details: lines.join("\n"),
        }
    }

    fn show_state(&self, state: State) -> String {
        match state.cur {
            Cur::Absent => format!("absent (latest revision {})", state.last),
            Cur::Present { value, revision } => {
                format!("{} @{revision}", clip(self.values.name(value)))
            }
            Cur::Hidden { value } => format!(
                "{} at an unobserved revision >= {} (written by an op with unknown outcome)",
                clip(self.values.name(value)),
                state.last
            ),
        }
    }
}

fn unlink(next: &mut [usize], prev: &mut [usize], node: usize) {
    next[prev[node]] = next[node];
    prev[next[node]] = prev[node];
}

fn relink(next: &mut [usize], prev: &mut [usize], node: usize) {
    next[prev[node]] = node;
    prev[next[node]] = node;
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fingerprint(set_hash: u128, state: State) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        (salt, set_hash, state).hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

fn clip(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}...")
    }
}

fn millis(ns: u64) -> String {
    format!("{}.{:06}ms", ns / 1_000_000, ns % 1_000_000)
}

fn describe(history: &[Op], i: usize) -> String {
    let Some(op) = history.get(i) else {
        return format!("#{i} (out of range)");
    };
    let ret = match op.ret {
        Some(ret) if !is_unknown(op) => millis(ret),
        _ => "?".to_owned(),
    };
    let input = match &op.input {
        Input::Put { key, value } => format!("put {key} = {}", clip(value)),
        Input::Cas {
            key,
            expected_revision: 0,
            value,
        } => {
            format!("cas {key} if absent = {}", clip(value))
        }
        Input::Cas {
            key,
            expected_revision,
            value,
        } => {
            format!("cas {key} if @{expected_revision} = {}", clip(value))
        }
        Input::Get { key } => format!("get {key}"),
        Input::Delete { key } => format!("delete {key}"),
    };
    let output = match &op.output {
        Output::Written { revision } => format!("written @{revision}"),
        Output::CasFailed => "cas failed".to_owned(),
        Output::Read(None) => "absent".to_owned(),
        Output::Read(Some((value, revision))) => format!("{} @{revision}", clip(value)),
        Output::Deleted { revision } => format!("deleted @{revision}"),
        Output::Unknown => "outcome unknown".to_owned(),
    };
    format!(
        "#{i} client {} [{} .. {}] {input} -> {output}",
        op.client,
        millis(op.call),
        ret
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Input {
        Input::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn cas(key: &str, expected_revision: u64, value: &str) -> Input {
        Input::Cas {
            key: key.into(),
            expected_revision,
            value: value.into(),
        }
    }

    fn get(key: &str) -> Input {
        Input::Get { key: key.into() }
    }

    fn del(key: &str) -> Input {
        Input::Delete { key: key.into() }
    }

    fn written(revision: u64) -> Output {
        Output::Written { revision }
    }

    fn deleted(revision: u64) -> Output {
        Output::Deleted { revision }
    }

    fn seen(value: &str, revision: u64) -> Output {
        Output::Read(Some((value.into(), revision)))
    }

    fn absent() -> Output {
        Output::Read(None)
    }

    fn op(client: usize, call: u64, ret: u64, input: Input, output: Output) -> Op {
        Op {
            client,
            call,
            ret: Some(ret),
            input,
            output,
        }
    }

    fn lost(client: usize, call: u64, input: Input) -> Op {
        Op {
            client,
            call,
            ret: None,
            input,
            output: Output::Unknown,
        }
    }

    fn assert_linearizable(history: &[Op]) {
        if let Err(e) = check(history) {
            panic!("expected a linearizable history, got:\n{e}");
        }
    }

    fn violation(history: &[Op]) -> Violation {
        match check(history) {
            Err(CheckError::NotLinearizable(v)) => {
                assert!(!v.to_string().is_empty());
                v
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_history_passes() {
        assert_linearizable(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(0, 2, 3, get("a"), seen("x", 1)),
            op(0, 4, 5, cas("a", 1, "y"), written(2)),
            op(0, 6, 7, cas("a", 1, "z"), Output::CasFailed),
            op(0, 8, 9, get("a"), seen("y", 2)),
            op(0, 10, 11, del("a"), deleted(3)),
            op(0, 12, 13, get("a"), absent()),
            op(0, 14, 15, cas("a", 0, "w"), written(4)),
            op(0, 16, 17, cas("a", 0, "q"), Output::CasFailed),
            op(0, 18, 19, del("b"), deleted(5)),
            op(0, 20, 21, put("b", "v"), written(6)),
            op(0, 22, 23, get("b"), seen("v", 6)),
        ]);
        assert_linearizable(&[]);
    }

    #[test]
    fn concurrent_writes_with_a_read_of_either_pass() {
        for read in [absent(), seen("x", 1), seen("y", 2)] {
            assert_linearizable(&[
                op(0, 0, 10, put("a", "x"), written(1)),
                op(1, 2, 12, put("a", "y"), written(2)),
                op(2, 5, 15, get("a"), read),
                op(2, 20, 21, get("a"), seen("y", 2)),
            ]);
        }
    }

    #[test]
    fn writes_to_different_keys_may_share_a_revision_when_concurrent() {
        assert_linearizable(&[
            op(0, 0, 10, put("a", "x"), written(1)),
            op(1, 2, 12, put("b", "y"), written(1)),
            op(2, 20, 21, get("a"), seen("x", 1)),
        ]);
    }

    #[test]
    fn stale_read_after_a_completed_write_fails() {
        let v = violation(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(0, 2, 3, put("a", "y"), written(2)),
            op(1, 4, 5, get("a"), seen("x", 1)),
        ]);
        assert_eq!(v.key, "a");
        assert_eq!(v.unplaced, vec![1, 2]);
        assert!(v.reason.contains("stale read"), "{v}");
        // Only the search sees this one: the write of "y" was still running when the second
        // read was called, but the first read had already seen it.
        let v = violation(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(1, 2, 10, put("a", "y"), written(2)),
            op(2, 3, 4, get("a"), seen("y", 2)),
            op(2, 5, 6, get("a"), seen("x", 1)),
        ]);
        assert_eq!(v.linearized, vec![0, 1, 2]);
        assert_eq!(v.unplaced, vec![3]);
        assert!(
            v.to_string().contains("longest linearizable prefix: 3 ops"),
            "{v}"
        );
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        violation(&[
            op(1, 0, 10, put("a", "x"), written(1)),
            op(2, 1, 20, put("a", "y"), written(2)),
            op(3, 30, 31, get("a"), seen("x", 1)),
        ]);
        // The new leader lacks the acknowledged write and hands its index out again.
        let v = violation(&[
            op(1, 0, 1, put("a", "x"), written(1)),
            op(2, 2, 3, put("a", "y"), written(2)),
            op(3, 10, 11, put("a", "z"), written(2)),
        ]);
        assert!(v.reason.contains("revision 2"), "{v}");
    }

    #[test]
    fn two_cas_with_the_same_expectation_cannot_both_succeed() {
        let v = violation(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(1, 2, 5, cas("a", 1, "y"), written(2)),
            op(2, 3, 6, cas("a", 1, "z"), written(3)),
        ]);
        assert_eq!(v.linearized, vec![0, 1]);
        assert_eq!(v.unplaced, vec![2]);
        assert_linearizable(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(1, 2, 5, cas("a", 1, "y"), written(2)),
            op(2, 3, 6, cas("a", 1, "z"), Output::CasFailed),
        ]);
    }

    #[test]
    fn unknown_write_observed_later_passes() {
        assert_linearizable(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            lost(1, 2, put("a", "y")),
            op(2, 10, 11, get("a"), seen("y", 2)),
        ]);
        // Observed only through a later compare-and-swap's expectation.
        assert_linearizable(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            lost(1, 2, cas("a", 1, "y")),
            op(2, 10, 11, cas("a", 2, "z"), written(3)),
            op(2, 12, 13, get("a"), seen("z", 3)),
        ]);
        // An unknown delete explains a later absence.
        assert_linearizable(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            lost(1, 2, del("a")),
            op(2, 5, 6, get("a"), absent()),
        ]);
        // An unknown write that took effect unobserved explains a failed compare-and-swap.
        assert_linearizable(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            lost(1, 2, put("a", "y")),
            op(2, 5, 6, cas("a", 1, "z"), Output::CasFailed),
        ]);
        // Without the unknown write, each of those fails.
        violation(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(2, 10, 11, get("a"), seen("y", 2)),
        ]);
        violation(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(2, 5, 6, cas("a", 1, "z"), Output::CasFailed),
        ]);
        violation(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(2, 5, 6, get("a"), absent()),
        ]);
    }

    #[test]
    fn unknown_write_never_observed_passes() {
        assert_linearizable(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            lost(1, 2, put("a", "y")),
            lost(3, 2, del("a")),
            lost(4, 3, get("a")),
            op(2, 10, 11, get("a"), seen("x", 1)),
            op(2, 12, 13, put("a", "z"), written(5)),
            op(2, 14, 15, get("a"), seen("z", 5)),
        ]);
    }

    #[test]
    fn unknown_write_cannot_explain_a_read_before_its_call() {
        violation(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(2, 2, 3, get("a"), seen("y", 2)),
            lost(1, 4, put("a", "y")),
        ]);
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        violation(&[
            op(0, 0, 1, put("a", "x"), written(1)),
            op(1, 2, 3, get("a"), seen("x", 7)),
        ]);
    }

    #[test]
    fn revisions_going_backwards_fail() {
        violation(&[
            op(0, 0, 1, put("a", "x"), written(5)),
            op(0, 2, 3, put("a", "y"), written(3)),
        ]);
        // Revisions are log indices, so this holds across keys too.
        let v = violation(&[
            op(0, 0, 1, put("a", "x"), written(5)),
            op(1, 2, 3, put("b", "y"), written(3)),
        ]);
        assert_eq!(v.key, "a, b");
        // Concurrent writes take effect in revision order, whatever their call order.
        assert_linearizable(&[
            op(0, 0, 10, put("a", "x"), written(5)),
            op(1, 1, 11, put("a", "y"), written(3)),
            op(2, 12, 13, get("a"), seen("x", 5)),
        ]);
        violation(&[
            op(0, 0, 10, put("a", "x"), written(5)),
            op(1, 1, 11, put("a", "y"), written(3)),
            op(2, 12, 13, get("a"), seen("y", 3)),
        ]);
    }

    #[test]
    fn touching_intervals_count_as_concurrent() {
        assert_linearizable(&[
            op(0, 0, 5, put("a", "x"), written(2)),
            op(1, 5, 10, put("a", "y"), written(1)),
            op(2, 11, 12, get("a"), seen("x", 2)),
        ]);
    }

    #[test]
    fn malformed_histories_are_rejected() {
        let bad = check(&[op(0, 5, 4, put("a", "x"), written(1))]);
        assert!(
            matches!(bad, Err(CheckError::InvalidHistory { op: 0, .. })),
            "{bad:?}"
        );
        let bad = check(&[op(0, 0, 1, get("a"), written(1))]);
        assert!(
            matches!(bad, Err(CheckError::InvalidHistory { op: 0, .. })),
            "{bad:?}"
        );
        let bad = check(&[Op {
            client: 0,
            call: 0,
            ret: None,
            input: get("a"),
            output: absent(),
        }]);
        assert!(
            matches!(bad, Err(CheckError::InvalidHistory { op: 0, .. })),
            "{bad:?}"
        );
    }

    /// Operations with random overlapping intervals around increasing linearization points,
    /// outputs from a sequential model, a global log index as revision, and `unknown_percent`
    /// of the operations unanswered (half of those not taking effect).
    fn generated_history(seed: u64, len: usize, keys: u64, unknown_percent: u64) -> Vec<Op> {
        let mut rng = seed;
        let mut roll = move |n: u64| splitmix64(&mut rng) % n.max(1);
        let mut state: HashMap<String, Option<(String, u64)>> = HashMap::new();
        let mut log_index = 0;
        let mut history = Vec::with_capacity(len);
        for i in 0..len {
            let at = 10_000 + i as u64 * 1_000;
            let call = at - roll(4_000);
            let ret = at + roll(4_000);
            let client = roll(8) as usize;
            let key = format!("k{}", roll(keys));
            let value = format!("v{i}");
            let current = state.get(&key).cloned().flatten();
            let unknown = roll(100) < unknown_percent;
            let applies = !unknown || roll(2) == 0;
            let kind = roll(10);
            let (input, output) = if kind < 3 {
                if applies {
                    log_index += 1;
                    state.insert(key.clone(), Some((value.clone(), log_index)));
                }
                (put(&key, &value), written(log_index))
            } else if kind < 6 {
                let expected = if roll(2) == 0 {
                    current.as_ref().map_or(0, |c| c.1)
                } else {
                    roll(log_index + 1)
                };
                let holds = match &current {
                    None => expected == 0,
                    Some((_, r)) => *r == expected,
                };
                if holds && applies {
                    log_index += 1;
                    state.insert(key.clone(), Some((value.clone(), log_index)));
                    (cas(&key, expected, &value), written(log_index))
                } else {
                    (cas(&key, expected, &value), Output::CasFailed)
                }
            } else if kind < 7 {
                if applies {
                    log_index += 1;
                    state.insert(key.clone(), None);
                }
                (del(&key), deleted(log_index))
            } else {
                (get(&key), Output::Read(current))
            };
            history.push(if unknown {
                lost(client, call, input)
            } else {
                op(client, call, ret, input, output)
            });
        }
        history
    }

    #[test]
    fn generated_linearizable_histories_pass() {
        for seed in 1..=3 {
            let history = generated_history(seed, 1_500, 6, 5);
            if let Err(e) = check(&history) {
                panic!("seed {seed}:\n{e}");
            }
        }
    }

    #[test]
    fn generated_history_with_a_stale_read_fails() {
        let mut history = generated_history(11, 600, 3, 0);
        let by_revision: HashMap<(String, u64), usize> = history
            .iter()
            .enumerate()
            .filter_map(|(i, o)| Some(((o.input.key().to_owned(), written_revision(o)?), i)))
            .collect();
        // A read that certainly follows the write it saw, turned into a read of an older write.
        let mut corrupted = None;
        for (g, o) in history.iter().enumerate() {
            let Output::Read(Some((_, r))) = &o.output else {
                continue;
            };
            let Some(&w) = by_revision.get(&(o.input.key().to_owned(), *r)) else {
                continue;
            };
            if history[w].ret.is_none_or(|ret| ret >= o.call) {
                continue;
            }
            let older = history.iter().filter_map(|p| match (&p.input, &p.output) {
                (
                    Input::Put { key, value } | Input::Cas { key, value, .. },
                    Output::Written { revision },
                ) if key == o.input.key() && revision < r => Some((value.clone(), *revision)),
                _ => None,
            });
            if let Some(stale) = older.max_by_key(|s| s.1) {
                corrupted = Some((g, stale));
                break;
            }
        }
        let (g, stale) = corrupted.expect("the generated history has a suitable read");
        history[g].output = Output::Read(Some(stale));
        let v = violation(&history);
        assert!(v.unplaced.contains(&g), "{v}");
    }

    #[test]
    fn generated_history_with_a_wrong_value_fails() {
        let mut history = generated_history(13, 600, 3, 0);
        let g = history
            .iter()
            .rposition(|o| matches!(o.output, Output::Read(Some(_))))
            .expect("the generated history has a read of a value");
        if let Output::Read(Some((value, _))) = &mut history[g].output {
            *value = "never written".to_owned();
        }
        let v = violation(&history);
        assert_eq!(v.unplaced.first(), Some(&g), "{v}");
    }

    #[test]
    fn exhausted_budget_is_an_error_not_a_pass() {
        let history = generated_history(5, 300, 2, 5);
        assert_linearizable(&history);
        let gave_up = check_with_budget(&history, 10);
        assert!(
            matches!(gave_up, Err(CheckError::GaveUp { .. })),
            "{gave_up:?}"
        );
        assert!(gave_up.is_err_and(|e| e.to_string().contains("gave up")));
    }
}
