//! The invalid corpus: every entry of `testdata/invalid/` is wrong in exactly one way, and
//! `testdata/invalid/expected.tsv` says where and why. Each entry (a file, or a folder for
//! checks that need several files) is validated as a tree of its own and must give exactly
//! the one expected diagnostic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use coxswain_schema::tree::DirTree;
use coxswain_schema::{Limits, validate_tree};

struct Row {
    entry: String,
    file: String,
    line: u32,
    column: u32,
    code: String,
    reason: String,
    limits: Limits,
}

fn invalid_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid")
}

/// Columns, tab-separated: entry, `FILE:LINE:COL`, code, a substring of the reason, and
/// optionally `limit=value` pairs (comma-separated) that replace defaults, so that limits
/// can be exercised with small files.
fn rows() -> Vec<Row> {
    let text = std::fs::read_to_string(invalid_dir().join("expected.tsv")).unwrap();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(
            cols.len() == 4 || cols.len() == 5,
            "expected.tsv:{}: need 4 or 5 columns",
            i + 1
        );
        let mut loc = cols[1].rsplitn(3, ':');
        let column = loc.next().unwrap().parse().unwrap();
        let line_no = loc.next().unwrap().parse().unwrap();
        let file = loc.next().unwrap().to_string();
        let mut limits = Limits::default();
        if let Some(spec) = cols.get(4) {
            for kv in spec.split(',') {
                let (k, v) = kv.split_once('=').unwrap();
                let n: u64 = v.parse().unwrap();
                match k {
                    "max_file_bytes" => limits.max_file_bytes = n,
                    "max_total_bytes" => limits.max_total_bytes = n,
                    "max_files" => limits.max_files = n as usize,
                    "max_depth" => limits.yaml.max_depth = n as usize,
                    "max_documents" => limits.yaml.max_documents = n as usize,
                    "max_alias_nodes" => limits.yaml.max_alias_nodes = n as usize,
                    "max_nodes" => limits.yaml.max_nodes = n as usize,
                    other => panic!("expected.tsv:{}: unknown limit {other}", i + 1),
                }
            }
        }
        out.push(Row {
            entry: cols[0].to_string(),
            file,
            line: line_no,
            column,
            code: cols[2].to_string(),
            reason: cols[3].to_string(),
            limits,
        });
    }
    out
}

#[test]
fn every_invalid_entry_fails_exactly_as_expected() {
    let rows = rows();
    let mut failures = Vec::new();
    for row in &rows {
        let tree = DirTree::new(invalid_dir().join(&row.entry)).unwrap();
        let report = validate_tree(&tree, &row.limits);
        let got: Vec<String> = report
            .diagnostics
            .iter()
            .map(|d| {
                format!(
                    "{}:{}:{} {} {}",
                    d.file,
                    d.line,
                    d.column,
                    d.code.as_str(),
                    d.reason
                )
            })
            .collect();
        let ok = report.diagnostics.len() == 1 && {
            let d = &report.diagnostics[0];
            d.file == row.file
                && d.line == row.line
                && d.column == row.column
                && d.code.as_str() == row.code
                && d.reason.contains(&row.reason)
        };
        if !ok {
            failures.push(format!(
                "{}: expected exactly `{}:{}:{} {} …{}…`, got {got:#?}",
                row.entry, row.file, row.line, row.column, row.code, row.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} entries wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_is_complete() {
    let rows = rows();
    assert!(rows.len() >= 60, "only {} invalid entries", rows.len());
    let listed: BTreeSet<&str> = rows.iter().map(|r| r.entry.as_str()).collect();
    assert_eq!(listed.len(), rows.len(), "an entry is listed twice");
    let on_disk: BTreeSet<String> = std::fs::read_dir(invalid_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "expected.tsv" && n != "README.md")
        .collect();
    let listed: BTreeSet<String> = listed.into_iter().map(String::from).collect();
    assert_eq!(on_disk, listed, "files and expected.tsv disagree");
    // Every kind of check is represented.
    let codes: BTreeSet<&str> = rows.iter().map(|r| r.code.as_str()).collect();
    for code in [
        "parse",
        "limit",
        "kind",
        "schema",
        "semantic",
        "reference",
        "duplicate",
    ] {
        assert!(codes.contains(code), "no invalid entry for code {code}");
    }
}
