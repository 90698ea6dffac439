//! Setting `metadata.resourceVersion` in a put's JSON text without building the value.
//!
//! Apply sets it on every put. Parsing the whole value into a tree and writing it out again
//! was most of what applying a put cost once values travelled as text (`JsonText`). Only
//! the top-level object and its `metadata` are read here, as lists of keys and raw values,
//! so each nested value is copied as text, not rebuilt.
//!
//! The result means what the tree way meant: a JSON object whose effective `metadata` (the
//! last, if the key repeats, as serde_json reads it) holds `resourceVersion` as a string.
//! Only whitespace at those two levels can differ, and a repeated key is kept rather than
//! merged (a reader still takes its last value).

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::types::Revision;

/// The keys and raw values of one JSON object, in order, repeats kept.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn write_object<'v>(out: &mut Vec<u8>, members: impl Iterator<Item = (&'v str, &'v [u8])>) {
    out.push(b'{');
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a `str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
}

/// `metadata` (an object's text) with `resourceVersion` set to `rev`: every occurrence of
/// the key gets it, in place; if there is none it is added last. `None` if `metadata` is
/// not an object.
fn metadata_with(metadata: &RawValue, rev: &[u8]) -> Option<Vec<u8>> {
    let Members(members) = serde_json::from_str(metadata.get()).ok()?;
    let found = members.iter().any(|(k, _)| k == "resourceVersion");
    let pieces = members.iter().map(|(k, v)| {
        let value = if k == "resourceVersion" {
            rev
        } else {
            v.get().as_bytes()
        };
        (k.as_str(), value)
    });
    let extra = (!found).then_some(("resourceVersion", rev));
    let mut out = Vec::with_capacity(metadata.get().len() + 32);
    write_object(&mut out, pieces.chain(extra));
    Some(out)
}

/// `text` (well-formed JSON) with `metadata.resourceVersion` set to the string of `rev`,
/// where the value is an object with an object `metadata`; anything else comes back as it
/// was.
pub(crate) fn set(text: &str, rev: Revision) -> Vec<u8> {
    let Ok(Members(members)) = serde_json::from_str::<Members<'_>>(text) else {
        return text.as_bytes().to_vec();
    };
    let rev = format!("\"{rev}\"");
    let metas: Vec<Option<Vec<u8>>> = members
        .iter()
        .map(|(k, v)| {
            if k == "metadata" {
                metadata_with(v, rev.as_bytes())
            } else {
                None
            }
        })
        .collect();
    if metas.iter().all(Option::is_none) {
        return text.as_bytes().to_vec();
    }
    let mut out = Vec::with_capacity(text.len() + 32);
    write_object(
        &mut out,
        members
            .iter()
            .zip(&metas)
            .map(|((k, v), m)| (k.as_str(), m.as_deref().unwrap_or(v.get().as_bytes()))),
    );
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    /// What apply did before: the whole value as a tree.
    fn by_tree(text: &str, rev: u64) -> Value {
        let mut v: Value = serde_json::from_str(text).expect("json");
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
        }
        v
    }

    fn by_text(text: &str, rev: u64) -> Value {
        let out = super::set(text, rev);
        serde_json::from_slice(&out).expect("the result is JSON")
    }

    #[test]
    fn the_text_means_what_the_tree_did() {
        let cases = [
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"d"},"data":{"v":"x"}}"#,
            r#"{"metadata":{"name":"a","resourceVersion":"7","uid":"u"}}"#,
            r#"{ "metadata" : { "name" : "a\"b\\c\u00e9" } , "spec" : { "x" : [ 1 , 2.50 , null ] } }"#,
            r#"{"metadata":{}}"#,
            r#"{"metadata":null,"a":1}"#,
            r#"{"metadata":[1,2]}"#,
            r#"{"kind":"NoMeta"}"#,
            r#"{}"#,
            r#"[1,2,3]"#,
            r#""text""#,
            r#"null"#,
            r#"{"metadata":{"name":"a"},"metadata":{"name":"b"}}"#,
            r#"{"metadata":{"name":"a"},"metadata":5}"#,
            r#"{"metadata":{"resourceVersion":"1","resourceVersion":"2"}}"#,
            r#"{"m\u0065tadata":{"name":"escaped key"}}"#,
            r#"{"spec":{"metadata":{"name":"nested, left alone"}}}"#,
        ];
        for text in cases {
            assert_eq!(by_text(text, 42), by_tree(text, 42), "{text}");
        }
    }

    #[test]
    fn nested_values_are_copied_as_they_were_and_order_is_kept() {
        let text =
            r#"{"kind":"K","metadata":{"name":"a","labels":{"b": 1, "a": 2}},"data":{"z": [ 1 ]}}"#;
        let out = String::from_utf8(super::set(text, 9)).expect("utf-8");
        assert_eq!(
            out,
            r#"{"kind":"K","metadata":{"name":"a","labels":{"b": 1, "a": 2},"resourceVersion":"9"},"data":{"z": [ 1 ]}}"#
        );
        let replaced = String::from_utf8(super::set(
            r#"{"metadata":{"resourceVersion":"1","name":"a"}}"#,
            9,
        ))
        .expect("utf-8");
        assert_eq!(
            replaced,
            r#"{"metadata":{"resourceVersion":"9","name":"a"}}"#
        );
        let value = json!({"metadata": {"name": "a"}});
        let out = super::set(&value.to_string(), 3);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).expect("json"),
            json!({"metadata": {"name": "a", "resourceVersion": "3"}})
        );
    }
}
