//! The data model: what a client sends (`Txn`), what goes into one Raft entry (`Request`), and
//! what comes back (`TxnResult`, `KeyValue`, watch `Event`s). The openraft type configuration
//! is declared here once; everything else uses the aliases.

use std::fmt;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

openraft::declare_raft_types!(
    /// The openraft type configuration of the store.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        // A snapshot lives in a file from the moment it is built or received, so a snapshot of
        // any size is streamed, never held whole in memory.
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A revision is the index of the Raft log entry that made a change. 0 means "never written".
pub type Revision = u64;

/// One Raft entry's worth of client transactions. The batcher packs concurrent transactions
/// whose writes touch different keys into one entry, so they share one fsync and one revision
/// without two writes of the same key ever sharing a revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub txns: Vec<Txn>,
    /// Where the answers go, on the member that proposed the entry: not part of the entry
    /// (never written or sent), only carried with this process's own copy of it.
    #[serde(skip)]
    pub(crate) answers: crate::batcher::Answers,
}

impl Request {
    pub fn new(txns: Vec<Txn>) -> Self {
        Request {
            txns,
            answers: Default::default(),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} txn(s)", self.txns.len())
    }
}

/// A put's value as the JSON text it came in. A value is only ever looked into once, when a
/// member applies it (to set `metadata.resourceVersion`): on its way there it is read from a
/// request, written to the log, sent to followers and read back, and as a parsed tree each
/// of those steps built or walked it again, node by node; that, and the allocator under it,
/// was about a third of a busy member's CPU (docs/benchmarks.md). As text each step only
/// scans or copies it. Reading it still checks that it is well-formed JSON.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// The text of `value`.
    pub fn from_value(value: &serde_json::Value) -> JsonText {
        // A `Value` always serializes: its map keys are strings and its numbers finite.
        #[allow(clippy::expect_used)]
        let raw = serde_json::value::to_raw_value(value).expect("a JSON value serializes");
        JsonText(raw)
    }

    /// The JSON text, exactly as it was read or written.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Whether the text is a JSON object.
    pub fn is_object(&self) -> bool {
        self.get().trim_start().starts_with('{')
    }

    /// The value parsed.
    pub fn to_value(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(self.get())
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(value: serde_json::Value) -> Self {
        JsonText::from_value(&value)
    }
}

impl PartialEq for JsonText {
    /// Equal as JSON values, so `{"a": 1}` equals `{"a":1}`; texts equal as strings are
    /// equal without parsing.
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
            || matches!((self.to_value(), other.to_value()), (Ok(a), Ok(b)) if a == b)
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

/// One result per transaction of the entry, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub results: Vec<TxnResult>,
}

/// If every compare holds, `success` is applied, else `failure`; all in one Raft entry, so
/// all or nothing. A compare-and-swap is a `ModRevision` compare with one put.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    #[serde(default)]
    pub compares: Vec<Compare>,
    #[serde(default)]
    pub success: Vec<Op>,
    #[serde(default)]
    pub failure: Vec<Op>,
}

impl Txn {
    /// An unconditional put.
    pub fn put(key: impl Into<String>, value: serde_json::Value) -> Self {
        Txn {
            success: vec![Op::put(key, &value)],
            ..Txn::default()
        }
    }

    /// Put only if the key's current `mod_revision` is `revision` (0: only if absent).
    pub fn compare_and_swap(
        key: impl Into<String>,
        revision: Revision,
        value: serde_json::Value,
    ) -> Self {
        let key = key.into();
        Txn {
            compares: vec![Compare {
                key: key.clone(),
                target: Target::ModRevision,
                op: CmpOp::Equal,
                value: revision,
            }],
            success: vec![Op::put(key, &value)],
            failure: Vec::new(),
        }
    }

    /// An unconditional delete.
    pub fn delete(key: impl Into<String>) -> Self {
        Txn {
            success: vec![Op::Delete { key: key.into() }],
            ..Txn::default()
        }
    }

    /// Every key either branch may write.
    pub fn written_keys(&self) -> impl Iterator<Item = &str> {
        self.success.iter().chain(&self.failure).map(Op::key)
    }
}

/// Compares a key's revision with a number. An absent key has revision 0 on both targets, as
/// in etcd, so `ModRevision == 0` means "does not exist" and `ModRevision > 0` "exists".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub target: Target,
    pub op: CmpOp,
    pub value: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    ModRevision,
    CreateRevision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CmpOp {
    pub fn holds(self, actual: Revision, expected: Revision) -> bool {
        match self {
            CmpOp::Equal => actual == expected,
            CmpOp::NotEqual => actual != expected,
            CmpOp::Less => actual < expected,
            CmpOp::Greater => actual > expected,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", try_from = "OpWire")]
pub enum Op {
    /// Creates or replaces the object. If it is a JSON object with a `metadata` object, the
    /// store sets `metadata.resourceVersion` to the revision of this write.
    Put {
        key: String,
        value: JsonText,
    },
    Delete {
        key: String,
    },
}

/// How an [`Op`] is read: the same JSON as serde's internally tagged form, read as one flat
/// struct. serde reads an internally tagged enum by first copying the whole object into a
/// buffer of its own, so each put's value was built twice; that was a tenth of a busy
/// member's CPU (docs/benchmarks.md). As before, fields an op does not use are ignored.
#[derive(Deserialize)]
struct OpWire {
    op: OpKind,
    key: String,
    // `Some(Null)` for `"value": null`, which is a value like any other; `None` if absent.
    #[serde(default, deserialize_with = "present")]
    value: Option<JsonText>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum OpKind {
    Put,
    Delete,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<JsonText>, D::Error> {
    JsonText::deserialize(d).map(Some)
}

impl TryFrom<OpWire> for Op {
    type Error = &'static str;

    fn try_from(w: OpWire) -> Result<Op, Self::Error> {
        match (w.op, w.value) {
            (OpKind::Put, Some(value)) => Ok(Op::Put { key: w.key, value }),
            (OpKind::Put, None) => Err("missing field `value`"),
            (OpKind::Delete, _) => Ok(Op::Delete { key: w.key }),
        }
    }
}

impl Op {
    /// A put of `value` at `key`.
    pub fn put(key: impl Into<String>, value: &serde_json::Value) -> Op {
        Op::Put {
            key: key.into(),
            value: JsonText::from_value(value),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Whether the compares held (so `success` ran rather than `failure`).
    pub succeeded: bool,
    /// The revision of the entry: the new `mod_revision` of every key this txn wrote, and the
    /// store's revision right after it.
    pub revision: Revision,
    /// Per op of the branch that ran: for a delete, whether the key existed.
    pub deleted: Vec<bool>,
}

/// A stored object with its revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: serde_json::Value,
    /// The revision of the write that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// The revision of the last write, equal to `metadata.resourceVersion`.
    pub mod_revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. For a delete, `kv.value` is null and `kv.mod_revision` is the delete's revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The value before this change, if the watcher asked for it and the key existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<KeyValue>,
}

/// All events of one revision that match a watch, delivered together and in revision order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// How a read is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Confirmed with a quorum through openraft's read index, then served once this member
    /// has applied that far: never stale.
    #[default]
    Linearizable,
    /// This member's state as it is: fast, possibly behind the leader.
    Serializable,
}

/// One page of a list, read at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListPage {
    pub revision: Revision,
    pub items: Vec<KeyValue>,
    /// Pass back to get the next page at the same revision; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

/// The store key of an object: `/{group}/{kind}/{namespace}/{name}`, or
/// `/{group}/{kind}/{name}` for a cluster-scoped kind. The core group is spelled `core`.
pub fn object_key(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    match namespace {
        Some(ns) => format!("/{group}/{kind}/{ns}/{name}"),
        None => format!("/{group}/{kind}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_group_kind_namespace_name() {
        assert_eq!(
            object_key("apps", "Deployment", Some("web"), "api"),
            "/apps/Deployment/web/api"
        );
        assert_eq!(
            object_key("", "Namespace", None, "web"),
            "/core/Namespace/web"
        );
    }

    #[test]
    fn absent_key_compares_as_revision_zero() {
        assert!(CmpOp::Equal.holds(0, 0));
        assert!(!CmpOp::Greater.holds(0, 0));
        assert!(CmpOp::Less.holds(3, 5));
        assert!(CmpOp::NotEqual.holds(3, 5));
    }

    #[test]
    fn ops_read_back_what_they_write_and_the_tag_may_come_anywhere() {
        let put = Op::put(
            "/t/a",
            &serde_json::json!({"metadata": {"name": "a"}, "n": [1, 2]}),
        );
        let delete = Op::Delete { key: "/t/b".into() };
        for op in [&put, &delete] {
            let json = serde_json::to_string(op).expect("serialize");
            assert!(json.starts_with(r#"{"op":"#), "{json}");
            assert_eq!(&serde_json::from_str::<Op>(&json).expect("read"), op);
        }
        let tag_last: Op = serde_json::from_str(
            r#"{"key":"/t/a","value":{"metadata":{"name":"a"},"n":[1,2]},"op":"put"}"#,
        )
        .expect("read");
        assert_eq!(tag_last, put);
        // A delete ignores a value, as any op ignores fields it does not use.
        let delete_with_value: Op =
            serde_json::from_str(r#"{"op":"delete","key":"/t/b","value":1,"x":2}"#).expect("read");
        assert_eq!(delete_with_value, delete);
    }

    #[test]
    fn a_null_value_is_a_value_and_a_missing_one_an_error() {
        let null: Op =
            serde_json::from_str(r#"{"op":"put","key":"/t/a","value":null}"#).expect("read");
        assert_eq!(null, Op::put("/t/a", &serde_json::Value::Null));
        let missing = serde_json::from_str::<Op>(r#"{"op":"put","key":"/t/a"}"#)
            .expect_err("a put needs a value")
            .to_string();
        assert!(missing.contains("missing field `value`"), "{missing}");
        let unknown = serde_json::from_str::<Op>(r#"{"op":"patch","key":"/t/a"}"#)
            .expect_err("no such op")
            .to_string();
        assert!(unknown.contains("unknown variant `patch`"), "{unknown}");
        let no_key = serde_json::from_str::<Op>(r#"{"op":"delete"}"#)
            .expect_err("an op needs a key")
            .to_string();
        assert!(no_key.contains("missing field `key`"), "{no_key}");
    }
}
