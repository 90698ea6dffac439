//! Lays out the release binary's code so that what coxswain runs sits together.
//!
//! Why: an idle process's resident code is most of its memory, and the kernel maps code in
//! 64 KiB pieces around each page it faults in. With the linker's default order the few
//! thousand functions coxswain really runs are spread over the whole 23 MB of code, so
//! nearly all of it ends up resident (docs/benchmarks.md, "Idle memory"). LLD's
//! `--symbol-ordering-file` puts the functions listed in `src/hot-symbols.txt` first, in
//! one run; `scripts/hot-symbols.sh` makes that list from real runs under callgrind.
//!
//! Only release builds with LLD get the flag: GNU ld does not know it, and Rust links with
//! its own LLD on x86_64 Linux since 1.90. A name the list has and the build does not (after
//! a change of code or toolchain) is skipped quietly; the binary is the same, only less
//! compact, until the list is made again.

use std::path::Path;
use std::process::Command;

fn main() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hot-symbols.txt");
    println!("cargo::rerun-if-changed=src/hot-symbols.txt");
    println!("cargo::rerun-if-env-changed=COXSWAIN_NO_SYMBOL_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !release
        || target != "x86_64-unknown-linux-gnu"
        || !rustc_links_with_lld()
        || !list.is_file()
        || std::env::var_os("COXSWAIN_NO_SYMBOL_ORDER").is_some()
    {
        return;
    }
    println!(
        "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Rust 1.90 made its bundled LLD the default linker for x86_64-unknown-linux-gnu.
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(release) = text.lines().find_map(|l| l.strip_prefix("release: ")) else {
        return false;
    };
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
