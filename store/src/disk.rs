//! The disk reserve: a member refuses writes while its data directory's filesystem has less
//! free space than `MemberConfig::min_free_bytes`, so RocksDB does not run out of space in
//! the middle of a write. openraft treats any storage error as fatal: a member that hit
//! `ENOSPC` writing a snapshot stopped for good and answered every request "shutting down"
//! (docs/benchmarks.md). A member that refuses writes keeps serving reads and watches, and
//! takes writes again as soon as space is freed. etcd's NOSPACE alarm stops writes the same
//! way, but must be disarmed by hand.
//!
//! Only new writes are refused; entries a leader replicates to this member still land, as
//! they must for the cluster to commit, and use the reserve.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::{Error, Result};

/// How long, in milliseconds, a reading of the free space is trusted: a write then costs no
/// syscall, and a freed disk takes writes again within this much time.
const RECHECK_MS: u64 = 200;

pub(crate) struct Reserve {
    dir: PathBuf,
    min_free: u64,
    start: Instant,
    /// Free bytes at the last reading, and when it was taken (ms after `start`, plus one so
    /// that 0 means never).
    free: AtomicU64,
    read_at: AtomicU64,
}

impl Reserve {
    pub(crate) fn new(dir: &Path, min_free: u64) -> Reserve {
        Reserve {
            dir: dir.to_path_buf(),
            min_free,
            start: Instant::now(),
            free: AtomicU64::new(u64::MAX),
            read_at: AtomicU64::new(0),
        }
    }

    /// Fails with `NoSpace` while the free space is under the reserve.
    pub(crate) fn check(&self) -> Result<()> {
        if self.min_free == 0 {
            return Ok(());
        }
        let free = self.free();
        if free < self.min_free {
            return Err(Error::NoSpace {
                path: self.dir.display().to_string(),
                free,
                reserve: self.min_free,
            });
        }
        Ok(())
    }

    fn free(&self) -> u64 {
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let read_at = self.read_at.load(Ordering::Relaxed);
        if read_at != 0 && now.saturating_sub(read_at) < RECHECK_MS {
            return self.free.load(Ordering::Relaxed);
        }
        // Two callers may both read it at once; both store a fresh reading, so no harm.
        let free = match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()),
            Err(e) => {
                // Not knowing is no reason to refuse writes; RocksDB reports real failures.
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free disk space");
                u64::MAX
            }
        };
        self.free.store(free, Ordering::Relaxed);
        self.read_at.store(now, Ordering::Relaxed);
        free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_over_the_free_space_refuses_and_zero_never_does() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Reserve::new(dir.path(), 0).check().is_ok());
        assert!(Reserve::new(dir.path(), 1).check().is_ok());
        let err = Reserve::new(dir.path(), u64::MAX).check().unwrap_err();
        match &err {
            Error::NoSpace { free, reserve, .. } => {
                assert!(*free > 0 && *free < u64::MAX);
                assert_eq!(*reserve, u64::MAX);
            }
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert!(err.to_string().contains("free"), "{err}");
    }
}
