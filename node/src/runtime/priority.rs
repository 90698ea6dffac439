//! The CPU priority of the work done ahead of pods: the warm pools' refill threads, the warm
//! pool's launcher and what it forks, and warm containers until they are adopted.
//!
//! On two cores a pod start shares the machine with the refills its own start triggered (a
//! network namespace and a veth, an overlay mount, a container's mounts), and a trace showed
//! the start's processes waiting a millisecond for a core while refills ran. Refills are at
//! `nice` [`BACKGROUND_NICE`], so a start, at 0, comes first; what a pod adopts (a warm
//! sandbox's holder, a warm container's shim and PID 1) goes back to 0 when it does. `nice`
//! rather than `SCHED_IDLE`: a refill holds the IP pool's lock for a moment, and an idle-class
//! holder could be starved while a start waits for that lock (tried, see
//! `docs/benchmarks.md`).
//!
//! nix has no `setpriority`, so this calls libc's (as nix re-exports it).

use std::io;

use nix::libc;

/// The `nice` of refill work.
pub const BACKGROUND_NICE: i32 = 10;

/// Sets the nice value of the calling thread (Linux keeps one per thread).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    set(libc::PRIO_PROCESS, 0, nice)
}

/// Sets the nice value of process (or thread) `pid`.
pub fn set_nice(pid: u32, nice: i32) -> io::Result<()> {
    set(libc::PRIO_PROCESS, pid, nice)
}

/// Sets the nice value of every process in process group `pgrp`.
pub fn set_group_nice(pgrp: u32, nice: i32) -> io::Result<()> {
    set(libc::PRIO_PGRP, pgrp, nice)
}

fn set(which: libc::__priority_which_t, who: u32, nice: i32) -> io::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    #[allow(unsafe_code)]
    let r = unsafe { libc::setpriority(which, who as libc::id_t, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
