//! `coxswain image` through the real binary, on a temp store: import a rootfs folder, list it,
//! remove it, and refuse a bad reference with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn image(store: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coxswain"))
        .arg("image")
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn import_list_and_remove_a_rootfs_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("images");
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();

    let out = image(&store, &["import", "demo:v1", rootfs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).starts_with("imported demo:v1 ("),
        "{}",
        text(&out)
    );

    let out = image(&store, &["ls"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&out);
    assert!(
        listed.lines().any(|l| l.starts_with("demo:v1 ")),
        "{listed}"
    );

    let out = image(&store, &["rm", "demo:v1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = image(&store, &["ls"]);
    assert!(!text(&out).contains("demo:v1"), "{}", text(&out));
    // Removing what is not there is a negative answer, not an error.
    assert_eq!(image(&store, &["rm", "demo:v1"]).status.code(), Some(1));
}

#[test]
fn a_bad_reference_or_source_is_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("images");
    let out = image(
        &store,
        &["import", "Bad/Name:v1", tmp.path().to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("Bad/Name"), "{}", text(&out));

    let missing = tmp.path().join("nowhere");
    let out = image(&store, &["import", "demo:v1", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nowhere"), "{}", text(&out));

    let out = image(&store, &["import", "host", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
