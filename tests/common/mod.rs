//! Helpers shared by the root-only integration tests. Each test binary uses a subset, hence
//! the `dead_code` allowance.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;

// One rule for every root-only test, in this crate and in the node crate.
#[path = "../../node/tests/support/mod.rs"]
mod support;
pub use support::require_root;

/// The run dir these tests give a runtime with state dir `state` (the agent's `--run-dir`).
/// A spawned agent mounts a tmpfs there, which [`Leftovers`] unmounts.
pub fn run_dir(state: &Path) -> PathBuf {
    state.join("run")
}

/// Kills what a test's pods left behind, unmounts the run dir's tmpfs and removes its
/// bridge, also when the test panics: pod processes outlive their agent by design, so a
/// failed run would otherwise leave a sandbox (and its veth, whose name is derived from the
/// pod) to break the next run.
pub struct Leftovers {
    pub state: PathBuf,
    pub bridge: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in all_pids(&self.state) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // EINVAL when nothing is mounted there (a runtime in the test's own process).
        let _ = nix::mount::umount2(&run_dir(&self.state), nix::mount::MntFlags::MNT_DETACH);
        let _ = coxswain_node::net::teardown(&self.bridge);
    }
}

/// The pid recorded at `pointer` in the JSON file `path`.
pub fn pid_in(path: &Path, pointer: &str) -> Option<i32> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    i32::try_from(v.pointer(pointer)?.as_u64()?).ok()
}

/// Every sandbox holder and container pid the runtime has on record under `state`.
pub fn all_pids(state: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for sandbox in std::fs::read_dir(run_dir(state).join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        pids.extend(pid_in(&sandbox.path().join("sandbox.json"), "/sandbox/pid"));
        for c in std::fs::read_dir(sandbox.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            pids.extend(pid_in(&c.path().join("container.json"), "/pid"));
        }
    }
    pids
}
