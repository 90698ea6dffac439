//! YAML (and JSON, a subset of it) into a tree that remembers where every node came from,
//! with the hard limits enforced while parsing rather than after.
//!
//! Why not serde straight from text: errors must name a line and column for any JSON pointer,
//! long after parsing, and hostile input (alias bombs, deep nesting) must be stopped before
//! it costs memory. saphyr-parser gives an event stream with positions; this module builds
//! [`Node`]s from it with an explicit stack and counts as it goes.
//!
//! Scalars resolve like `sigs.k8s.io/yaml` (what `kubectl` uses, YAML 1.1 flavoured): `yes`,
//! `no`, `on`, `off` are booleans, `0x1F` and `0o17` are integers. Quoted scalars are always
//! strings. Tags, duplicate keys and non-scalar keys are refused; merge keys (`<<`) work.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};

use crate::error::{Error, Result};

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Span {
    pub line: u32,
    pub column: u32,
}

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    /// Entries in source order; keys are unique.
    Map(Vec<Entry>),
}

/// A value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

/// One key of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

/// One non-empty document of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Position among the stream's non-empty documents, from 0.
    pub index: usize,
    pub root: Node,
}

/// Limits on one file, checked while parsing.
#[derive(Debug, Clone)]
pub struct YamlLimits {
    /// Nesting of mappings and sequences.
    pub max_depth: usize,
    /// Documents in one file, empty ones included.
    pub max_documents: usize,
    /// Nodes created by expanding aliases, in one file.
    pub max_alias_nodes: usize,
    /// Nodes in one file, aliases expanded.
    pub max_nodes: usize,
}

impl Default for YamlLimits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_documents: 500,
            max_alias_nodes: 10_000,
            max_nodes: 1_000_000,
        }
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn span_of(m: &saphyr_parser::Marker) -> Span {
    Span {
        line: to_u32(m.line()),
        column: to_u32(m.col() + 1),
    }
}

fn parse_err(span: Span, reason: impl Into<String>) -> Error {
    Error::Parse {
        line: span.line,
        column: span.column,
        reason: reason.into(),
    }
}

fn limit_err(limit: &'static str, span: Span, reason: impl Into<String>) -> Error {
    Error::Limit {
        limit,
        line: span.line,
        column: span.column,
        reason: reason.into(),
    }
}

/// Checks the bytes are UTF-8 without control characters, and returns the text without a
/// byte-order mark. Errors carry the line and column of the first offending character.
pub fn check_text(bytes: &[u8]) -> Result<&str> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            // `good` is valid UTF-8 by construction of `valid_up_to`.
            let prefix = std::str::from_utf8(good).unwrap_or("");
            return Err(parse_err(
                position_at(prefix, prefix.len()),
                "file is not valid UTF-8",
            ));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Fast path: almost every manifest is plain ASCII text.
    let suspicious = text
        .bytes()
        .any(|b| (b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r') || b >= 0x7f);
    if suspicious {
        for (i, c) in text.char_indices() {
            let bad = match c {
                '\t' | '\n' | '\r' => false,
                '\u{85}' => false,
                c if (c as u32) < 0x20 || c == '\u{7f}' => true,
                c if ('\u{80}'..='\u{9f}').contains(&c) => true,
                '\u{feff}' | '\u{fffe}' | '\u{ffff}' => true,
                _ => false,
            };
            if bad {
                return Err(parse_err(
                    position_at(text, i),
                    format!(
                        "control character U+{:04X} is not allowed in a manifest",
                        c as u32
                    ),
                ));
            }
        }
    }
    Ok(text)
}

/// Line and column (1-based, in characters) of a byte offset.
fn position_at(text: &str, offset: usize) -> Span {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let column = before[line_start..].chars().count() + 1;
    Span {
        line: to_u32(line),
        column: to_u32(column),
    }
}

/// A collection being built.
enum Frame {
    Seq {
        items: Vec<Node>,
        span: Span,
        anchor: usize,
        count: usize,
    },
    Map {
        entries: Vec<Entry>,
        /// Built once a map grows beyond a few keys, to keep duplicate checks linear.
        keys: Option<HashSet<String>>,
        pending: Option<(String, Span, bool)>,
        merges: Vec<Node>,
        span: Span,
        anchor: usize,
        count: usize,
    },
}

struct Builder<'l> {
    limits: &'l YamlLimits,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    alias_nodes: usize,
}

impl Builder<'_> {
    fn count(&mut self, n: usize, span: Span) -> Result<()> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.max_nodes {
            return Err(limit_err(
                "max_nodes",
                span,
                format!("more than {} YAML nodes in one file", self.limits.max_nodes),
            ));
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, span: Span) -> Result<()> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(limit_err(
                "max_depth",
                span,
                format!("nesting deeper than {} levels", self.limits.max_depth),
            ));
        }
        self.count(1, span)?;
        self.stack.push(frame);
        Ok(())
    }

    /// A finished node: remember it if anchored, then hand it to its parent. Returns the
    /// node when it is a document's root.
    fn finish(&mut self, node: Node, anchor: usize, count: usize) -> Result<Option<Node>> {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), count));
        }
        let Some(top) = self.stack.last_mut() else {
            return Ok(Some(node));
        };
        match top {
            Frame::Seq {
                items, count: c, ..
            } => {
                items.push(node);
                *c += count;
            }
            Frame::Map {
                entries,
                keys,
                pending,
                merges,
                count: c,
                ..
            } => {
                let Some((key, key_span, is_merge)) = pending.take() else {
                    // Keys are taken straight from scalar events; anything else arriving here
                    // is a collection or alias used as a key.
                    return Err(parse_err(
                        node.span,
                        "only strings, numbers and booleans can be mapping keys",
                    ));
                };
                *c += count;
                if is_merge {
                    match &node.value {
                        Value::Map(_) => merges.push(node),
                        Value::Seq(items)
                            if items.iter().all(|n| matches!(n.value, Value::Map(_))) =>
                        {
                            if let Value::Seq(items) = node.value {
                                merges.extend(items);
                            }
                        }
                        _ => {
                            return Err(parse_err(
                                node.span,
                                "the merge key `<<` needs a mapping or a list of mappings",
                            ));
                        }
                    }
                    return Ok(None);
                }
                let dup = match keys {
                    Some(set) => !set.insert(key.clone()),
                    None => entries.iter().any(|e| e.key == key),
                };
                if dup {
                    return Err(parse_err(
                        key_span,
                        format!("duplicate key {key:?}: a mapping must not repeat a key"),
                    ));
                }
                entries.push(Entry {
                    key,
                    key_span,
                    value: node,
                });
                if keys.is_none() && entries.len() > 8 {
                    *keys = Some(entries.iter().map(|e| e.key.clone()).collect());
                }
            }
        }
        Ok(None)
    }
}

fn scan_err(e: &ScanError) -> Error {
    parse_err(span_of(e.marker()), e.info().to_string())
}

fn tag_err(span: Span, tag: &saphyr_parser::Tag) -> Error {
    parse_err(
        span,
        format!(
            "explicit YAML tags are not allowed (found {}{})",
            tag.handle, tag.suffix
        ),
    )
}

/// The classic "billion laughs" document: `levels` anchored lists, each holding `width`
/// aliases of the one before, so that expanding it would create `width^levels` nodes. For
/// the tests and benchmarks of the alias limit.
pub fn alias_bomb(levels: usize, width: usize) -> String {
    let mut text = format!("l0: &l0 [{}]\n", vec!["\"lol\""; width].join(","));
    for i in 1..levels {
        let refs = vec![format!("*l{}", i - 1); width].join(",");
        text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
    }
    text
}

/// Parses every document of a stream. Empty documents are skipped, as kubectl does.
pub fn parse_stream(text: &str, limits: &YamlLimits) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    let mut b = Builder {
        limits,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        alias_nodes: 0,
    };
    let mut doc_count = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, sp) = event.map_err(|e| scan_err(&e))?;
        let span = span_of(&sp.start);
        let done = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => None,
            Event::DocumentStart(_) => {
                doc_count += 1;
                if doc_count > limits.max_documents {
                    return Err(limit_err(
                        "max_documents",
                        span,
                        format!("more than {} documents in one file", limits.max_documents),
                    ));
                }
                // Anchors are scoped to their document.
                b.anchors.clear();
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(tag) = tag {
                    return Err(tag_err(span, &tag));
                }
                b.count(1, span)?;
                if let Some(Frame::Map { pending, .. }) = b.stack.last_mut()
                    && pending.is_none()
                {
                    let is_merge = style == ScalarStyle::Plain && text == "<<";
                    *pending = Some((text.into_owned(), span, is_merge));
                    continue;
                }
                let value = resolve(text, style);
                if let Value::Float(f) = value
                    && !f.is_finite()
                {
                    // kubectl turns YAML into JSON before sending it, and JSON has no
                    // infinity or NaN, so such a manifest could never be applied.
                    return Err(parse_err(
                        span,
                        "infinity and NaN (.inf, .nan) cannot be represented in JSON; quote the value if it is a string",
                    ));
                }
                let node = Node { value, span };
                b.finish(node, anchor, 1)?
            }
            Event::Alias(id) => {
                let Some(count) = b.anchors.get(&id).map(|(_, c)| *c) else {
                    return Err(parse_err(span, "alias refers to an unknown anchor"));
                };
                b.alias_nodes = b.alias_nodes.saturating_add(count);
                if b.alias_nodes > limits.max_alias_nodes {
                    return Err(limit_err(
                        "max_alias_nodes",
                        span,
                        format!(
                            "aliases expand to more than {} nodes (an alias bomb?)",
                            limits.max_alias_nodes
                        ),
                    ));
                }
                b.count(count, span)?;
                let Some(mut node) = b.anchors.get(&id).map(|(n, _)| n.clone()) else {
                    return Err(parse_err(span, "alias refers to an unknown anchor"));
                };
                node.span = span;
                b.finish(node, 0, count)?
            }
            Event::SequenceStart(anchor, tag) => {
                if let Some(tag) = tag {
                    return Err(tag_err(span, &tag));
                }
                let frame = Frame::Seq {
                    items: Vec::new(),
                    span,
                    anchor,
                    count: 1,
                };
                b.open(frame, span)?;
                None
            }
            Event::MappingStart(anchor, tag) => {
                if let Some(tag) = tag {
                    return Err(tag_err(span, &tag));
                }
                let frame = Frame::Map {
                    entries: Vec::new(),
                    keys: None,
                    pending: None,
                    merges: Vec::new(),
                    span,
                    anchor,
                    count: 1,
                };
                b.open(frame, span)?;
                None
            }
            Event::SequenceEnd => match b.stack.pop() {
                Some(Frame::Seq {
                    items,
                    span,
                    anchor,
                    count,
                }) => b.finish(
                    Node {
                        value: Value::Seq(items),
                        span,
                    },
                    anchor,
                    count,
                )?,
                _ => return Err(parse_err(span, "unbalanced sequence end")),
            },
            Event::MappingEnd => match b.stack.pop() {
                Some(Frame::Map {
                    mut entries,
                    merges,
                    span,
                    anchor,
                    count,
                    ..
                }) => {
                    merge_into(&mut entries, merges);
                    b.finish(
                        Node {
                            value: Value::Map(entries),
                            span,
                        },
                        anchor,
                        count,
                    )?
                }
                _ => return Err(parse_err(span, "unbalanced mapping end")),
            },
        };
        if let Some(root) = done {
            let empty = matches!(root.value, Value::Null);
            if !empty {
                docs.push(Document {
                    index: docs.len(),
                    root,
                });
            }
        }
    }
    Ok(docs)
}

/// YAML merge keys: keys written in the mapping win, then earlier merged mappings.
fn merge_into(entries: &mut Vec<Entry>, merges: Vec<Node>) {
    if merges.is_empty() {
        return;
    }
    let mut seen: HashSet<String> = entries.iter().map(|e| e.key.clone()).collect();
    for m in merges {
        if let Value::Map(es) = m.value {
            for e in es {
                if seen.insert(e.key.clone()) {
                    entries.push(e);
                }
            }
        }
    }
}

/// Resolves a scalar to a typed value. Only plain scalars can be anything but a string.
fn resolve(text: Cow<'_, str>, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::String(text.into_owned());
    }
    let s: &str = &text;
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "y" | "Y" | "on" | "On" | "ON" => {
            return Value::Bool(true);
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "n" | "N" | "off" | "Off" | "OFF" => {
            return Value::Bool(false);
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return Value::String(text.into_owned());
    }
    if let Some(i) = parse_int(s) {
        return Value::Int(i);
    }
    if looks_like_float(s)
        && let Ok(f) = s.replace('_', "").parse::<f64>()
        && f.is_finite()
    {
        return Value::Float(f);
    }
    Value::String(text.into_owned())
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let body: Cow<'_, str> = if body.contains('_') {
        Cow::Owned(body.replace('_', ""))
    } else {
        Cow::Borrowed(body)
    };
    let (digits, radix) = if let Some(h) = body.strip_prefix("0x") {
        (h, 16)
    } else if let Some(o) = body.strip_prefix("0o") {
        (o, 8)
    } else if let Some(b) = body.strip_prefix("0b") {
        (b, 2)
    } else if body.len() > 1 && body.starts_with('0') && body.bytes().all(|c| c.is_ascii_digit()) {
        (&body[1..], 8)
    } else {
        (&*body, 10)
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let v = i64::from_str_radix(digits, radix).ok()?;
    Some(if neg { -v } else { v })
}

fn looks_like_float(s: &str) -> bool {
    let b = s.trim_start_matches(['-', '+']);
    let mut digits = 0;
    let mut dot = 0;
    let mut exp = false;
    let mut prev = b' ';
    for c in b.bytes() {
        match c {
            b'0'..=b'9' if !exp => digits += 1,
            b'0'..=b'9' => {}
            b'_' if !exp => {}
            b'.' if !exp => dot += 1,
            b'e' | b'E' if !exp && digits > 0 => exp = true,
            b'-' | b'+' if prev == b'e' || prev == b'E' => {}
            _ => return false,
        }
        prev = c;
    }
    digits > 0 && dot <= 1 && !prev.eq_ignore_ascii_case(&b'e')
}

impl Node {
    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// The tree as JSON, as Kubernetes turns YAML into JSON before validating.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// Where a JSON pointer points: the key of the last mapping step (so "unknown field"
    /// points at the field), else the node; for a pointer that leads nowhere, the deepest
    /// node that exists.
    pub fn locate(&self, pointer: &str) -> Span {
        let mut node = self;
        let mut span = self.span;
        if pointer.is_empty() {
            return span;
        }
        for raw in pointer.split('/').skip(1) {
            let token = raw.replace("~1", "/").replace("~0", "~");
            match &node.value {
                Value::Map(entries) => match entries.iter().find(|e| e.key == token) {
                    Some(e) => {
                        span = e.key_span;
                        node = &e.value;
                    }
                    None => return span,
                },
                Value::Seq(items) => match token.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(n) => {
                        span = n.span;
                        node = n;
                    }
                    None => return span,
                },
                _ => return span,
            }
        }
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<Document>> {
        parse_stream(s, &YamlLimits::default())
    }

    #[test]
    fn scalars_resolve_like_kubectl() {
        let d = parse("a: 1\nb: '1'\nc: yes\nd: 0.5\ne: 0x10\nf: ~\ng: 1e3\nh: web\ni: 010\nj: \"\"\nk: 1.2.3\n").unwrap();
        let j = d[0].root.to_json();
        assert_eq!(
            j,
            serde_json::json!({"a":1,"b":"1","c":true,"d":0.5,"e":16,"f":null,"g":1000.0,"h":"web","i":8,"j":"","k":"1.2.3"})
        );
    }

    #[test]
    fn positions_and_pointers() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n    - name: a\n      image: b\n";
        let d = parse(text).unwrap();
        let root = &d[0].root;
        assert_eq!(root.locate("/metadata/name"), Span { line: 4, column: 3 });
        assert_eq!(
            root.locate("/spec/containers/0/image"),
            Span { line: 8, column: 7 }
        );
        assert_eq!(
            root.locate("/spec/containers/0"),
            Span { line: 7, column: 7 }
        );
        // A pointer into nothing falls back to the deepest existing node.
        assert_eq!(
            root.locate("/spec/containers/0/nope"),
            Span { line: 7, column: 7 }
        );
    }

    #[test]
    fn multi_documents_skip_empty_ones() {
        let d = parse("---\na: 1\n---\n# nothing\n---\nb: 2\n...\n").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].index, 1);
        assert_eq!(d[1].root.span.line, 6);
    }

    #[test]
    fn refuses_infinity_and_nan() {
        for bad in ["a: .inf\n", "a: -.Inf\n", "a: [.nan]\n"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("cannot be represented in JSON"), "{bad:?}: {e}");
        }
        assert!(parse("a: '.inf'\n").is_ok());
    }

    #[test]
    fn refuses_tags_and_duplicate_keys() {
        let e = parse("a: !!str 1\n").unwrap_err().to_string();
        assert!(e.contains("tags are not allowed"), "{e}");
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Parse {
                    line: 3,
                    column: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(parse("? [a]\n: 1\n").is_err());
    }

    #[test]
    fn merge_keys_and_aliases() {
        let d = parse("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\nl: *b\n").unwrap();
        let j = d[0].root.to_json();
        assert_eq!(j["m"], serde_json::json!({"x":1,"y":3}));
        assert_eq!(j["l"], serde_json::json!({"x":1,"y":2}));
    }

    #[test]
    fn limits_are_enforced() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(matches!(
            parse(&deep),
            Err(Error::Limit {
                limit: "max_depth",
                ..
            })
        ));
        let docs = "---\na: 1\n".repeat(501);
        assert!(matches!(
            parse(&docs),
            Err(Error::Limit {
                limit: "max_documents",
                ..
            })
        ));
        let bomb = alias_bomb(12, 10);
        assert!(matches!(
            parse(&bomb),
            Err(Error::Limit {
                limit: "max_alias_nodes",
                ..
            })
        ));
    }

    #[test]
    fn text_checks() {
        assert!(check_text(b"a: 1\n").is_ok());
        assert_eq!(check_text("\u{feff}a: 1".as_bytes()).unwrap(), "a: 1");
        // A control character and an invalid UTF-8 byte, both at line 2, column 4.
        for bad in [&b"a: 1\nb: \x07\n"[..], &b"a: 1\nb: \xff\n"[..]] {
            let e = check_text(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Parse {
                        line: 2,
                        column: 4,
                        ..
                    }
                ),
                "{e}"
            );
        }
    }
}
