//! openraft's own conformance suite for log stores and state machines, run on our RocksDB
//! storage in temp dirs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use coxswain_store::{LogStore, StateMachine, StorageError, TypeConfig, db};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db =
            db::open(&dir.path().join("db"), db::DEFAULT_MEMTABLE_BUDGET).expect("open rocksdb");
        let sm = StateMachine::open(db.clone(), &dir.path().join("snapshots"), 1000)
            .expect("open state machine");
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb() {
    Suite::test_all(RocksBuilder).expect("openraft storage suite");
}
