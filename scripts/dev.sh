#!/usr/bin/env bash
# One entry point for a fresh Debian machine: installs what is missing, then builds and runs
# (`run`) or runs the whole test suite (`test`). README.md prints both commands and
# .ci/run calls the `test` one, so the documented path is the one CI exercises.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

# Debian packages: libclang-dev for RocksDB's bindgen, busybox-static for the example
# images, git for the Git source and its tests, python3-pip for the parity script,
# etcd-server (the peer of the store benchmark) and protobuf-compiler (etcd-client builds its
# gRPC code with protoc), iproute2 and nftables for pod networking and its tests, and runc (the
# peer of the pods benchmark). libssl-dev and g++ bring the static libcrypto, libssl and
# libstdc++ that .cargo/config.toml links in.
APT_PACKAGES=(libclang-dev clang g++ libssl-dev busybox-static git python3 python3-pip pkg-config etcd-server protobuf-compiler iproute2 nftables runc)
# The Python peer used by the parity script and the validate benchmark.
PIP_PACKAGES=(kubernetes-validate==1.37.0)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_deps() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            echo "cargo is not installed: install Rust with rustup (https://rustup.rs) first" >&2
            exit 2
        fi
    fi
    if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
        log "installing Python packages: ${PIP_PACKAGES[*]}"
        python3 -m pip install -q "${PIP_PACKAGES[@]}" 2>/dev/null \
            || python3 -m pip install -q --break-system-packages "${PIP_PACKAGES[@]}"
    fi
}

# Reuse a warm target directory outside the clone when one exists (CI keeps one under
# /var/cache), since RocksDB alone takes about ten minutes to build on two cores.
pick_target_dir() {
    # In CI, create it so that the next run on this machine starts warm.
    if [ "${CI:-}" = "true" ] && [ -z "${CARGO_TARGET_DIR:-}" ] && [ -w /var/cache ]; then
        mkdir -p /var/cache/coxswain-target
    fi
    if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/cache/coxswain-target ] && [ -w /var/cache/coxswain-target ]; then
        export CARGO_TARGET_DIR=/var/cache/coxswain-target
    fi
    TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
}

# The busybox image the examples and the node tests run, built from Debian's busybox-static
# (a static binary and its applet links) and imported into the node-wide image store once.
busybox_image() {
    local bin=$1
    local store=${COXSWAIN_IMAGES:-/var/lib/coxswain/images}
    if [ "$(id -u)" -ne 0 ] && [ ! -w "$(dirname "$store")" ]; then
        log "not root: skipping the busybox image (the node tests need root anyway)"
        return
    fi
    if "$bin" image ls --store "$store" | grep -q '^busybox:latest '; then
        return
    fi
    log "building the busybox image from busybox-static"
    local rootfs
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,var/www}
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
    echo 'root:x:0:' >"$rootfs/etc/group"
    "$bin" image import busybox:latest "$rootfs" --store "$store"
    rm -rf "$rootfs"
}

cmd_run() {
    install_deps
    pick_target_dir
    log "building coxswain"
    # --workspace: the features every crate is built with are then those of the whole
    # workspace, as in `cargo build --release --workspace --bins` for the benchmarks, so the
    # two share one build (otherwise RocksDB alone is compiled twice, 35 minutes each here).
    cargo build --release --locked --workspace --bin coxswain
    busybox_image "$TARGET_DIR/release/coxswain"
    log "coxswain validate examples-repo"
    "$TARGET_DIR/release/coxswain" validate examples-repo
    # Pods need namespaces, cgroups and a bridge, hence root. Ctrl-C stops everything.
    log "coxswain up: the example app serves on port 8080 at each pod's IP (Ctrl-C stops it)"
    as_root "$TARGET_DIR/release/coxswain" up
}

cmd_test() {
    install_deps
    pick_target_dir
    log "cargo fmt --check"
    cargo fmt --all -- --check
    # Every cargo call below selects the same packages and targets (--workspace, all
    # targets), so Cargo resolves the same features each time and `cargo build` and
    # `cargo test` share one build of RocksDB's C++. `cargo clippy` has its own (on a cold
    # cache its librocksdb-sys build script differs only in the hash of its bindgen build
    # dependency), so a cold cache compiles RocksDB twice and a warm one not at all.
    log "cargo clippy --all-targets -- -D warnings"
    cargo clippy --locked --workspace --all-targets -- -D warnings
    log "cargo build (all targets)"
    cargo build --locked --workspace --all-targets
    busybox_image "$TARGET_DIR/debug/coxswain"
    log "cargo test"
    cargo test --locked --workspace
    log "parity with kubernetes-validate --strict"
    python3 tests/parity/k8s_parity.py --coxswain "$TARGET_DIR/debug/coxswain"
    # Smoke runs of the benchmarks (debug build, to spare CI a release build); the numbers
    # in docs/benchmarks.md come from release builds.
    log "coxswain-bench validate --quick (smoke run)"
    "$TARGET_DIR/debug/coxswain-bench" validate --quick
    log "coxswain-bench store --quick (smoke run, beside etcd)"
    "$TARGET_DIR/debug/coxswain-bench" store --quick
    log "coxswain-bench sync --quick (smoke run)"
    "$TARGET_DIR/debug/coxswain-bench" sync --quick
    log "coxswain-bench schedule --quick (smoke run)"
    "$TARGET_DIR/debug/coxswain-bench" schedule --quick
    if [ "$(id -u)" -eq 0 ]; then
        log "coxswain-bench pods --quick (smoke run, beside runc and unshare)"
        "$TARGET_DIR/debug/coxswain-bench" pods --quick
        log "coxswain-bench e2e --quick (smoke run, through coxswain up)"
        "$TARGET_DIR/debug/coxswain-bench" e2e --quick
    fi
    log "all tests passed"
}

case "${1:-}" in
    run) cmd_run ;;
    test) cmd_test ;;
    deps) install_deps ;;
    *) echo "usage: scripts/dev.sh run|test|deps" >&2; exit 2 ;;
esac
