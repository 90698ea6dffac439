//! Label selectors: the structured form in manifests ([`LabelSelector`]) and the string form
//! of `kubectl -l` (`app=web,tier in (a,b),!canary`), both compiled to one [`Selector`] that
//! every controller uses to match labels.
//!
//! Semantics follow `k8s.io/apimachinery/pkg/labels`: requirements are ANDed; an empty
//! selector matches everything; `!=` and `notin` match objects that lack the key.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::error::{Error, Result};
use crate::names;

/// `LabelSelector` as written in a manifest.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One `matchExpressions` entry.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    pub values: Option<Vec<String>>,
}

/// The operators of `matchExpressions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// The operator of a compiled requirement; the string form also has `=` and `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One compiled requirement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            Op::Equals | Op::In => v.is_some_and(|v| self.values.contains(v)),
            Op::NotEquals | Op::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        }
    }
}

/// A compiled selector: requirements sorted by key, ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }

    /// Whether the selector has no requirement (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// A selector from plain `key: value` pairs (a Service's selector, `nodeSelector`).
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut reqs = Vec::with_capacity(map.len());
        for (k, v) in map {
            reqs.push(requirement(
                &render_map(map),
                k,
                Op::Equals,
                std::iter::once(v.clone()).collect(),
            )?);
        }
        Ok(Self::sorted(reqs))
    }

    /// Compiles the structured form, checking keys, values and operator/value rules.
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Self> {
        let mut reqs = Vec::new();
        let text = || serde_json::to_string(sel).unwrap_or_default();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(requirement(
                &text(),
                k,
                Op::Equals,
                std::iter::once(v.clone()).collect(),
            )?);
        }
        for e in sel.match_expressions.iter().flatten() {
            let op = match e.operator {
                SelectorOperator::In => Op::In,
                SelectorOperator::NotIn => Op::NotIn,
                SelectorOperator::Exists => Op::Exists,
                SelectorOperator::DoesNotExist => Op::DoesNotExist,
            };
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            reqs.push(requirement(&text(), &e.key, op, values)?);
        }
        Ok(Self::sorted(reqs))
    }

    /// Parses the string form: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
    /// separated by commas.
    pub fn parse(text: &str) -> Result<Self> {
        let mut p = Parser { text, pos: 0 };
        let mut reqs = Vec::new();
        p.skip_ws();
        if p.at_end() {
            return Ok(Self::everything());
        }
        loop {
            reqs.push(p.requirement()?);
            p.skip_ws();
            if p.at_end() {
                break;
            }
            p.expect(',')?;
        }
        Ok(Self::sorted(reqs))
    }

    fn sorted(mut reqs: Vec<Requirement>) -> Self {
        reqs.sort();
        Self { reqs }
    }
}

fn render_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Builds a requirement after Kubernetes' checks: a qualified key, valid values, and the
/// number of values each operator needs.
fn requirement(sel: &str, key: &str, op: Op, values: BTreeSet<String>) -> Result<Requirement> {
    let fail = |reason: String| Error::Selector {
        selector: sel.to_string(),
        reason,
    };
    names::is_qualified_name(key).map_err(|r| fail(format!("key {r}")))?;
    match op {
        Op::In | Op::NotIn if values.is_empty() => {
            return Err(fail(format!(
                "key {key:?}: values must be non-empty for operator In and NotIn"
            )));
        }
        Op::Equals | Op::NotEquals if values.len() != 1 => {
            return Err(fail(format!("key {key:?}: exactly one value is required")));
        }
        Op::Exists | Op::DoesNotExist if !values.is_empty() => {
            return Err(fail(format!(
                "key {key:?}: values must be empty for operator Exists and DoesNotExist"
            )));
        }
        _ => {}
    }
    for v in &values {
        names::is_label_value(v).map_err(|r| fail(format!("key {key:?}: {r}")))?;
    }
    Ok(Requirement {
        key: key.to_string(),
        op,
        values,
    })
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let list = || r.values.iter().cloned().collect::<Vec<_>>().join(",");
            match r.op {
                Op::Equals => write!(f, "{}={}", r.key, list())?,
                Op::NotEquals => write!(f, "{}!={}", r.key, list())?,
                Op::In => write!(f, "{} in ({})", r.key, list())?,
                Op::NotIn => write!(f, "{} notin ({})", r.key, list())?,
                Op::Exists => write!(f, "{}", r.key)?,
                Op::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Selector {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// A small hand-written lexer: the grammar is five productions, and Kubernetes' own parser
/// is hand-written too, which keeps error positions meaningful.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }
    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }
    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }
    fn fail(&self, reason: impl std::fmt::Display) -> Error {
        Error::Selector {
            selector: self.text.to_string(),
            reason: format!("at character {}: {reason}", self.pos + 1),
        }
    }
    fn expect(&mut self, c: char) -> Result<()> {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            Ok(())
        } else {
            Err(self.fail(format!("expected {c:?}")))
        }
    }
    /// A key or value token: everything up to a delimiter.
    fn word(&mut self) -> &str {
        self.skip_ws();
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || "=!(),".contains(c))
            .unwrap_or(self.rest().len());
        self.pos += len;
        &self.text[start..start + len]
    }
    fn requirement(&mut self) -> Result<Requirement> {
        self.skip_ws();
        if self.rest().starts_with('!') {
            self.pos += 1;
            let key = self.word().to_string();
            return requirement(self.text, &key, Op::DoesNotExist, BTreeSet::new())
                .map_err(|e| self.reword(e));
        }
        let key = self.word().to_string();
        if key.is_empty() {
            return Err(self.fail("expected a label key"));
        }
        self.skip_ws();
        let rest = self.rest();
        let (op, skip) = if rest.starts_with("==") {
            (Some(Op::Equals), 2)
        } else if rest.starts_with("!=") {
            (Some(Op::NotEquals), 2)
        } else if rest.starts_with('=') {
            (Some(Op::Equals), 1)
        } else if rest.is_empty() || rest.starts_with(',') {
            (None, 0)
        } else {
            let save = self.pos;
            match self.word() {
                "in" => (Some(Op::In), 0),
                "notin" => (Some(Op::NotIn), 0),
                other => {
                    let other = other.to_string();
                    self.pos = save;
                    return Err(self.fail(format!(
                        "expected one of '=', '==', '!=', 'in', 'notin', ',' after key {key:?}, found {other:?}"
                    )));
                }
            }
        };
        self.pos += skip;
        let (op, values) = match op {
            None => (Op::Exists, BTreeSet::new()),
            Some(op @ (Op::Equals | Op::NotEquals)) => {
                let v = self.word().to_string();
                (op, std::iter::once(v).collect())
            }
            Some(op) => {
                self.expect('(')?;
                let mut values = BTreeSet::new();
                loop {
                    let v = self.word().to_string();
                    self.skip_ws();
                    if v.is_empty() && self.rest().starts_with(')') && values.is_empty() {
                        break;
                    }
                    values.insert(v);
                    self.skip_ws();
                    if self.rest().starts_with(',') {
                        self.pos += 1;
                        continue;
                    }
                    break;
                }
                self.expect(')')?;
                (op, values)
            }
        };
        requirement(self.text, &key, op, values).map_err(|e| self.reword(e))
    }
    fn reword(&self, e: Error) -> Error {
        match e {
            Error::Selector { reason, .. } => self.fail(reason),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn string_form_parses_and_matches() {
        let s = Selector::parse("app=web,tier in (a,b),!canary").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])));
        assert!(!s.matches(&labels(&[("tier", "a")])));
        assert_eq!(s.to_string(), "app=web,!canary,tier in (a,b)");
        // Display output parses back to the same selector.
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn string_form_operators() {
        let l = labels(&[("env", "prod"), ("x", "")]);
        for (sel, want) in [
            ("env==prod", true),
            ("env!=prod", false),
            ("other!=prod", true),
            ("env notin (dev, test)", true),
            ("other notin (a)", true),
            ("env", true),
            ("missing", false),
            ("x=", true),
            ("  env = prod , x ", true),
            ("", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn string_form_errors() {
        for bad in [
            "app=web,",
            "tier in a",
            "tier in (a",
            "tier in ()",
            "app=we b",
            "!",
            "Bad Key=1",
            "app=web=x",
            "app >= 1",
            "-x=1",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn structured_form() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        let s = Selector::from_label_selector(&sel).unwrap();
        assert_eq!(s, Selector::parse("app=web,tier in (a,b),!canary").unwrap());
        let bad: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "tier", "operator": "In", "values": []}]
        }))
        .unwrap();
        assert!(Selector::from_label_selector(&bad).is_err());
        let bad: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["a"]}]
        }))
        .unwrap();
        assert!(Selector::from_label_selector(&bad).is_err());
        assert!(
            Selector::from_label_selector(&LabelSelector::default())
                .unwrap()
                .matches(&labels(&[]))
        );
    }

    #[test]
    fn from_map_is_equality() {
        let s = Selector::from_map(&labels(&[("app", "web")])).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "db")])));
    }
}
