//! The agent's copy of ConfigMaps and Secrets against a real single-member store (RocksDB in
//! a temp dir): an object written while the agent is still listing reaches it by the watch.
//! No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coxswain_node::agent::pods::watch_objects;
use coxswain_node::agent::resolve::ObjectCache;
use coxswain_node::env::Lookup;
use coxswain_store::watch::WatchStream;
use coxswain_store::{
    Consistency, EventKind, KeyValue, Kv, ListPage, Member, Revision, Txn, TxnResult,
};
use serde_json::json;
use support::member;

fn config_map(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "demo"},
        "data": {"index.html": name},
    })
}

/// A store where a commit lands right after the agent's first list of ConfigMaps has been
/// answered: the list does not have it, and only a watch from that list's revision does.
#[derive(Debug)]
struct LandsAfterFirstList {
    inner: Member,
    landed: AtomicBool,
}

impl Kv for LandsAfterFirstList {
    async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> coxswain_store::Result<(Revision, Option<KeyValue>)> {
        self.inner.get(key, consistency).await
    }

    async fn list(
        &self,
        prefix: &str,
        limit: usize,
        continue_token: Option<&str>,
        consistency: Consistency,
    ) -> coxswain_store::Result<ListPage> {
        let page = self
            .inner
            .list(prefix, limit, continue_token, consistency)
            .await?;
        if prefix == "/core/ConfigMap/" && !self.landed.swap(true, Ordering::SeqCst) {
            let late = Txn::put("/core/ConfigMap/demo/late", config_map("late"));
            self.inner.txn(late).await?;
        }
        Ok(page)
    }

    async fn txn(&self, txn: Txn) -> coxswain_store::Result<TxnResult> {
        self.inner.txn(txn).await
    }

    async fn watch(
        &self,
        prefix: &str,
        from: Revision,
        prev: bool,
    ) -> coxswain_store::Result<WatchStream> {
        self.inner.watch(prefix, from, prev).await
    }
}

#[tokio::test]
async fn a_config_map_written_between_the_lists_arrives_by_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let m = member(dir.path()).await;
    m.txn(Txn::put("/core/ConfigMap/demo/early", config_map("early")))
        .await
        .unwrap();

    let store = LandsAfterFirstList {
        inner: m.clone(),
        landed: AtomicBool::new(false),
    };
    let objects = ObjectCache::default();
    let [mut config_maps, _secrets] = watch_objects(&store, &objects).await.unwrap();
    assert!(
        store.landed.load(Ordering::SeqCst),
        "the late commit landed"
    );
    assert!(objects.config_map("demo", "early").is_some(), "listed");
    assert!(
        objects.config_map("demo", "late").is_none(),
        "not in the list"
    );

    let batch = tokio::time::timeout(Duration::from_secs(5), config_maps.recv())
        .await
        .expect("the watch delivers the late ConfigMap")
        .expect("the watch is open")
        .unwrap();
    let late = batch
        .events
        .iter()
        .find(|e| e.kv.key == "/core/ConfigMap/demo/late")
        .expect("the late ConfigMap's event");
    assert_eq!(late.kind, EventKind::Put);
    m.shutdown().await.unwrap();
}
