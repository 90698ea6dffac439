//! RocksDB's C++ static constructors are linked out of the loader's list
//! (`src/rocksdb-statics.ld`) and run by the store before it opens RocksDB
//! (`src/rocksdb_statics.rs`). These tests check both halves on the real binary: the loader
//! no longer runs them, and a `coxswain server` that opens its store still has RocksDB's
//! option tables, which those constructors build, when it writes its OPTIONS file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `readelf` output for the test binary; binutils comes with the C++ compiler the build needs.
#[cfg(rocksdb_statics_deferred)]
fn readelf(args: &[&str]) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(env!("CARGO_BIN_EXE_coxswain"))
        .output()
        .expect("run readelf");
    assert!(out.status.success(), "readelf {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The size in bytes of a section, from `readelf -W -S`.
#[cfg(rocksdb_statics_deferred)]
fn section_size(sections: &str, name: &str) -> Option<u64> {
    sections.lines().find_map(|line| {
        let (_, rest) = line.split_once(']')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Name, type, address, offset, size.
        (fields.first() == Some(&name)).then(|| u64::from_str_radix(fields[4], 16).ok())?
    })
}

#[cfg(rocksdb_statics_deferred)]
#[test]
fn the_loader_no_longer_runs_rocksdbs_constructors() {
    let sections = readelf(&["-W", "-S"]);
    let deferred = section_size(&sections, ".coxswain_rocksdb_init")
        .expect("the binary has the deferred constructors' section")
        / 8;
    let loader = section_size(&sections, ".init_array").expect("the binary has .init_array") / 8;
    // RocksDB 10.4 has about 170 translation units with static objects; what the loader
    // still runs is libstdc++'s, mimalloc's and Rust's own few.
    assert!(
        deferred >= 100,
        "only {deferred} constructors were deferred"
    );
    assert!(loader < 32, "the loader still runs {loader} constructors");

    // The dynamic section's INIT_ARRAYSZ is what the loader really reads.
    let dynamic = readelf(&["-W", "-d"]);
    let size: u64 = dynamic
        .lines()
        .find(|l| l.contains("(INIT_ARRAYSZ)"))
        .and_then(|l| l.split_whitespace().rev().nth(1)?.parse().ok())
        .expect("INIT_ARRAYSZ in the dynamic section");
    assert_eq!(size / 8, loader, "INIT_ARRAYSZ is .init_array");
}

#[test]
fn a_server_has_rocksdbs_option_tables_when_it_opens_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_coxswain"))
        .args(["server", "--id", "1", "--listen", "127.0.0.1:0"])
        .args(["--token", "rocksdb-statics-test"])
        .arg("--data")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coxswain server");
    let stdout = child.stdout.take().expect("piped stdout");
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("listening on"));
    assert!(listening, "the server exited before it listened");

    // RocksDB writes its OPTIONS file when it opens the database, by walking the option
    // tables its static constructors build; with those never run it crashes or writes no names.
    let db = data.join("db");
    let deadline = Instant::now() + Duration::from_secs(10);
    let options = loop {
        let found = std::fs::read_dir(&db).ok().and_then(|entries| {
            entries
                .map_while(Result::ok)
                .find(|e| e.file_name().to_string_lossy().starts_with("OPTIONS-"))
        });
        if let Some(entry) = found {
            break std::fs::read_to_string(entry.path()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no OPTIONS file in {}",
            db.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    // The values the server sets (its 32 MiB memtable budget, half of it per family, see
    // src/server.rs and store/src/db.rs), under the names from those tables.
    assert!(
        options.contains("db_write_buffer_size=33554432"),
        "{options}"
    );
    assert!(options.contains("[CFOptions \"kv\"]"), "{options}");
    assert!(options.contains("write_buffer_size=16777216"), "{options}");
}
