//! Property tests: whatever bytes arrive, loading never panics and stays within its limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::OnceLock;

use coxswain_schema::validate::parse_file;
use coxswain_schema::yaml::{YamlLimits, parse_stream};
use coxswain_schema::{Code, Limits};
use proptest::prelude::*;

/// The valid corpus, read once for all cases.
fn corpus() -> &'static [(String, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(read_corpus)
}

fn read_corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/valid");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A mutation of a valid manifest: the kinds of damage an editor or a merge does.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Replace(usize, u8),
    DuplicateLine(usize),
    Swap(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(vec![
        b":".to_vec(),
        b"- ".to_vec(),
        b"&a ".to_vec(),
        b"*a".to_vec(),
        b"!!str ".to_vec(),
        b"\n  ".to_vec(),
        b"{".to_vec(),
        b"]".to_vec(),
        b"'".to_vec(),
        b"\"".to_vec(),
        b"<<: *a\n".to_vec(),
        b"---\n".to_vec(),
        b"\t".to_vec(),
        b"\xff".to_vec(),
        b"\x07".to_vec(),
        b"? ".to_vec(),
        b"|\n".to_vec(),
        b"#".to_vec(),
        b"0x".to_vec(),
        b"1e9999".to_vec(),
    ]);
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), interesting).prop_map(|(a, s)| Mutation::Insert(a, s)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Replace(a, b)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match m {
            Mutation::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(len);
                bytes.drain(at..end);
            }
            Mutation::Insert(at, s) => {
                let at = at % (len + 1);
                bytes.splice(at..at, s.iter().copied());
            }
            Mutation::Replace(at, b) => bytes[at % len] = *b,
            Mutation::DuplicateLine(at) => {
                let at = at % len;
                let start = bytes[..at]
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |p| p + 1);
                let end = bytes[at..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(len, |p| at + p + 1);
                let line = bytes[start..end].to_vec();
                bytes.splice(end..end, line);
            }
            Mutation::Swap(a, b) => bytes.swap(a % len, b % len),
        }
    }
    bytes
}

/// Small limits, so that random input actually reaches them.
fn tight() -> Limits {
    Limits {
        max_file_bytes: 64 * 1024,
        yaml: YamlLimits {
            max_depth: 8,
            max_documents: 4,
            max_alias_nodes: 50,
            max_nodes: 400,
        },
        ..Limits::default()
    }
}

/// What "within the limits" means for one parsed file.
fn assert_within(limits: &Limits, bytes: &[u8]) {
    let file = parse_file("x.yaml", bytes, limits);
    assert!(file.docs.len() <= limits.yaml.max_documents);
    for d in &file.diagnostics {
        assert!(
            d.line >= 1 && d.column >= 1,
            "diagnostic without a position: {d:?}"
        );
        assert!(!d.reason.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(docs) = parse_stream(text, &limits.yaml)
    {
        for doc in docs {
            assert!(depth(&doc.root.to_json()) <= limits.yaml.max_depth * 2);
        }
    }
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        assert_within(&Limits::default(), &bytes);
        assert_within(&tight(), &bytes);
    }

    #[test]
    fn random_yaml_like_text_never_panics(text in "[a-z:\\-\\[\\]{}&*!|>'\"#, \n?<]{0,400}") {
        assert_within(&Limits::default(), text.as_bytes());
        assert_within(&tight(), text.as_bytes());
    }

    #[test]
    fn mutated_manifests_never_panic(
        pick in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let files = corpus();
        let (_, bytes) = &files[pick.index(files.len())];
        let bytes = apply(bytes.clone(), &muts);
        assert_within(&Limits::default(), &bytes);
        assert_within(&tight(), &bytes);
    }

    /// Nested anchors and aliases of random shape either load within the alias budget or
    /// stop with the alias limit.
    #[test]
    fn alias_chains_respect_the_budget(width in 1usize..12, levels in 1usize..12) {
        let mut text = String::from("a0: &a0 [x]\n");
        for i in 1..=levels {
            let refs = vec![format!("*a{}", i - 1); width].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let limits = YamlLimits::default();
        match parse_stream(&text, &limits) {
            Ok(docs) => {
                let total = count(&docs[0].root.to_json());
                prop_assert!(total <= limits.max_alias_nodes + 10 * levels * width + 100);
            }
            Err(coxswain_schema::Error::Limit { limit, .. }) => {
                prop_assert!(limit == "max_alias_nodes" || limit == "max_nodes");
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

fn count(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(count).sum::<usize>(),
        serde_json::Value::Object(o) => 1 + o.values().map(count).sum::<usize>(),
        _ => 1,
    }
}

#[test]
fn billion_laughs_is_refused_by_the_alias_limit() {
    let text = coxswain_schema::yaml::alias_bomb(9, 9);
    let file = parse_file("bomb.yaml", text.as_bytes(), &Limits::default());
    assert_eq!(file.diagnostics.len(), 1);
    assert_eq!(file.diagnostics[0].code, Code::Limit);
    assert!(
        file.diagnostics[0].reason.contains("max_alias_nodes"),
        "{:?}",
        file.diagnostics[0]
    );
}
