//! # coxswain-store — start here
//!
//! The replicated store of the whole cluster: an openraft log and a RocksDB state machine,
//! with revisions (the Raft log index of each write), `get`/`list`/`txn`/`watch` and
//! compare-and-swap on `resourceVersion`. See `../shared/DESIGN.md` and issue "The replicated
//! store". Nothing is built here yet: this crate holds only this paragraph until that issue is
//! taken, so that nothing pretends to work.
