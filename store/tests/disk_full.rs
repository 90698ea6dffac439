//! A member on a filesystem that fills up: writes are refused with a clear error before
//! RocksDB runs out of space, reads go on, and writes come back once space is freed. Real
//! RocksDB on a real, small tmpfs (mounting one needs root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../node/tests/support/mod.rs"]
mod root_support;

use std::time::Duration;

use coxswain_store::{Consistency, Error, Kv, Member, MemberConfig, Txn};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::json;

/// Unmounts the test's tmpfs however the test ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() * s.fragment_size()
}

#[tokio::test]
async fn a_nearly_full_disk_refuses_writes_keeps_reads_and_recovers() {
    if !root_support::require_root("a_nearly_full_disk_refuses_writes_keeps_reads_and_recovers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    mount(
        Some("tmpfs"),
        dir.path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=96m"),
    )
    .expect("mount a 96 MiB tmpfs");
    let _mounted = Mounted(dir.path().to_path_buf());

    let reserve = 16 << 20;
    let mut cfg = MemberConfig::new(1, dir.path().join("member"), "127.0.0.1:1", "token");
    cfg.min_free_bytes = reserve;
    cfg.memtable_budget = 4 << 20;
    let m = Member::start(cfg, true).await.expect("start member");
    m.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    let key = "/core/ConfigMap/default/a";
    let obj = |n: u64| json!({"metadata": {"name": "a"}, "data": {"n": n.to_string()}});
    let first = m.txn(Txn::put(key, obj(1))).await.unwrap();

    // Leave less than the reserve free.
    let filler = dir.path().join("filler");
    let fill = free_bytes(dir.path()).saturating_sub(reserve / 2);
    let f = std::fs::File::create(&filler).unwrap();
    nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::empty(),
        0,
        i64::try_from(fill).unwrap(),
    )
    .expect("fill the tmpfs");
    drop(f);
    assert!(free_bytes(dir.path()) < reserve);
    // The member reads the free space at most every 200 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let refused = m.txn(Txn::put(key, obj(2))).await.unwrap_err();
    assert!(
        matches!(refused, Error::NoSpace { reserve: r, .. } if r == reserve),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("nearly full"), "{refused}");
    assert!(!refused.is_retryable());
    let batch = m
        .txns(vec![Txn::put("/core/ConfigMap/default/b", obj(3))])
        .await;
    assert!(matches!(batch[0], Err(Error::NoSpace { .. })), "{batch:?}");
    let (_, kv) = m.get(key, Consistency::Linearizable).await.unwrap();
    assert_eq!(
        kv.expect("still there").mod_revision,
        first.revision,
        "reads go on, and the refused write changed nothing"
    );

    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = m
        .txn(Txn::put(key, obj(4)))
        .await
        .expect("writes come back");
    assert!(again.revision > first.revision);
    let (_, kv) = m.get(key, Consistency::Linearizable).await.unwrap();
    assert_eq!(kv.unwrap().value["data"]["n"], json!("4"));
    m.shutdown().await.unwrap();
}
