//! The JSON Schemas in `schema/schemas/` and the Rust types agree: the files are exactly what
//! the types generate, and every valid example round-trips through both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use coxswain_schema::object::{Object, generated_schema};
use coxswain_schema::tree::DirTree;
use coxswain_schema::{KINDS, Limits, validate_tree};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `COXSWAIN_BLESS=1 cargo test -p coxswain-schema schemas_match` rewrites the files after a
/// change to the types; without it, any drift fails the test.
#[test]
fn schemas_match_the_types() {
    let bless = std::env::var_os("COXSWAIN_BLESS").is_some();
    let mut stale = Vec::new();
    for info in KINDS {
        let schema = generated_schema(info).expect("every kind has a schema");
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = crate_dir().join("schemas").join(info.schema_file);
        if bless {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(info.schema_file);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas out of date: {stale:?}; run COXSWAIN_BLESS=1 cargo test -p coxswain-schema schemas_match"
    );
}

#[test]
fn every_schema_compiles_and_pins_its_kind() {
    for info in KINDS {
        let schema: serde_json::Value = serde_json::from_str(info.schema_text).unwrap();
        if let Err(e) = jsonschema::validator_for(&schema) {
            panic!("{} does not compile: {e}", info.schema_file);
        }
        assert!(
            schema.get("properties").is_some(),
            "{} is empty",
            info.schema_file
        );
        assert_eq!(schema["properties"]["kind"]["const"], info.kind);
        assert_eq!(
            schema["properties"]["apiVersion"]["const"],
            info.api_version
        );
    }
}

/// Numbers written as strings (`cpu: 1` becomes the quantity `"1"`) are the one change a
/// round trip may make.
fn same_modulo_quantity_text(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => {
            // Kubernetes treats `field: null` as absent; so does a round trip.
            let xs: Vec<_> = x.iter().filter(|(_, v)| !v.is_null()).collect();
            xs.len() == y.len()
                && xs
                    .iter()
                    .all(|(k, v)| y.get(*k).is_some_and(|w| same_modulo_quantity_text(v, w)))
        }
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(v, w)| same_modulo_quantity_text(v, w))
        }
        (J::Number(n), J::String(s)) => n.to_string() == *s,
        _ => a == b,
    }
}

/// Validates `path` (a folder or one file) as one tree and round-trips every document.
/// Returns the kind of each document.
fn round_trip_dir(dir: &Path) -> Vec<&'static str> {
    let tree = DirTree::new(dir).unwrap();
    let report = validate_tree(&tree, &Limits::default());
    assert!(
        report.is_valid(),
        "{dir:?} is not valid: {:#?}",
        report.diagnostics
    );
    let mut kinds = Vec::new();
    let mut validators = std::collections::HashMap::new();
    for file in &report.files {
        for doc in &file.docs {
            let input = file
                .root(doc.index)
                .expect("the document parses again")
                .to_json();
            let obj = doc.object.as_ref().expect("valid document has an object");
            let out = obj.to_value().unwrap();
            assert!(
                same_modulo_quantity_text(&input, &out),
                "{}: round trip changed the document\n in: {input:#}\nout: {out:#}",
                file.path
            );
            // What the types write, the schema accepts, and it decodes to the same object.
            let again = Object::from_value(obj.info(), out.clone()).unwrap();
            assert_eq!(&again, obj, "{}: second decode differs", file.path);
            let validator = validators.entry(obj.info().kind).or_insert_with(|| {
                let schema: serde_json::Value =
                    serde_json::from_str(obj.info().schema_text).unwrap();
                jsonschema::validator_for(&schema).unwrap()
            });
            let errors: Vec<String> = validator.iter_errors(&out).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{}: schema rejects the serialised object: {errors:?}",
                file.path
            );
            kinds.push(obj.info().kind);
        }
    }
    kinds
}

#[test]
fn valid_corpus_round_trips_through_types_and_schemas() {
    // Each file of the corpus is a tree of its own, as in the parity script.
    let mut n = 0;
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(crate_dir().join("testdata/valid")).unwrap() {
        let kinds = round_trip_dir(&entry.unwrap().path());
        n += kinds.len();
        seen.extend(kinds);
    }
    assert!(n >= 30, "only {n} documents in the valid corpus");
    let kinds: std::collections::BTreeSet<&str> = KINDS.iter().map(|k| k.kind).collect();
    assert_eq!(seen, kinds, "the valid corpus must cover every kind");
}

#[test]
fn examples_repo_round_trips() {
    let n = round_trip_dir(&crate_dir().join("../examples-repo")).len();
    assert!(n >= 4);
}
