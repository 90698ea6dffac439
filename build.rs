//! Lays out the release binary's code so that what coxswain runs sits together.
//!
//! Why: an idle process's resident code is most of its memory, and the kernel maps code in
//! 64 KiB pieces around each page it faults in. With the linker's default order the few
//! thousand functions coxswain really runs are spread over the whole 23 MB of code, so
//! nearly all of it ends up resident (docs/benchmarks.md, "Idle memory"). LLD's
//! `--symbol-ordering-file` puts the functions listed in `src/hot-symbols.txt` first, in
//! one run; `scripts/hot-symbols.sh` makes that list from real runs under callgrind.
//!
//! It also packs the relative relocations (see `main`), and in every profile moves RocksDB's
//! C++ static constructors out of the loader's way (`src/rocksdb-statics.ld`, run later by
//! `src/rocksdb_statics.rs`). Only builds linked by LLD get these flags (Rust links with its
//! own LLD on x86_64 Linux since 1.90; GNU ld has no `--symbol-ordering-file`). A name the
//! list has and the build does not (after a change of code or toolchain) is skipped quietly;
//! the binary is the same, only less compact, until the list is made again.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // Read when the script runs, not baked in when it was compiled: clones of the project
    // that share a target directory share this script's binary too, and each must hand the
    // linker its own list.
    let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo::rerun-if-changed=src/hot-symbols.txt");
    println!("cargo::rerun-if-env-changed=COXSWAIN_NO_SYMBOL_ORDER");
    println!("cargo::rustc-check-cfg=cfg(rocksdb_statics_deferred)");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || !rustc_links_with_lld() {
        return;
    }
    // In every profile, so that the tests, which run the debug binary, run this path too.
    println!("cargo::rerun-if-changed=src/rocksdb-statics.ld");
    let Some(statics) = copied(&root, "src/rocksdb-statics.ld") else {
        return;
    };
    println!("cargo::rustc-link-arg-bins=-Wl,-T,{}", statics.display());
    println!("cargo::rustc-cfg=rocksdb_statics_deferred");
    if !release {
        return;
    }
    if std::env::var_os("COXSWAIN_NO_SYMBOL_ORDER").is_none()
        && let Some(list) = copied(&root, "src/hot-symbols.txt")
    {
        println!(
            "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    // The binary's 41,000 relative relocations take 1 MB as RELA entries, which the dynamic
    // loader reads whole at every start, so each process has that 1 MB resident; packed
    // (DT_RELR) they take a few KB. The loader must know DT_RELR: glibc 2.36 and later.
    if host_glibc_at_least(2, 36) {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// A copy of the project's file `relative` in this build's `OUT_DIR`, for the linker to
/// read. Not the file itself: cargo keeps this script's output across clones that share a
/// target directory, and a path into one clone breaks every link once that clone is gone
/// (CI's clone, removed after its run, did that). `None`, with a warning, when the file
/// cannot be copied; the flags that need it are left out.
fn copied(root: &std::ffi::OsStr, relative: &str) -> Option<PathBuf> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR")?);
    let name = Path::new(relative).file_name()?;
    let copy = out.join(name);
    match std::fs::copy(Path::new(root).join(relative), &copy) {
        Ok(_) => Some(copy),
        Err(e) => {
            println!("cargo::warning=cannot copy {relative} for the linker: {e}");
            None
        }
    }
}

/// `getconf GNU_LIBC_VERSION` prints e.g. `glibc 2.36`; the binary runs where it is built.
fn host_glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    version_at_least(version, major, minor)
}

/// Whether a dotted version (`1.95.0`, `2.36`, `1.96.0-nightly`) is at least `major.minor`.
fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Rust 1.90 made its bundled LLD the default linker for x86_64-unknown-linux-gnu.
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("release: "))
        .is_some_and(|release| version_at_least(release, 1, 90))
}
