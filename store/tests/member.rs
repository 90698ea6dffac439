//! One member on real RocksDB in a temp dir, used in-process through the `Kv` trait.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use coxswain_store::{Consistency, Error, EventKind, Kv, Member, MemberConfig, Txn, object_key};
use serde_json::json;

async fn start(dir: &std::path::Path) -> Member {
    let mut cfg = MemberConfig::new(1, dir, "127.0.0.1:1", "token");
    cfg.history_retain = 50;
    let m = Member::start(cfg, true).await.expect("start member");
    m.wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    m
}

fn obj(name: &str, n: u64) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"n": n.to_string()}})
}

#[tokio::test]
async fn put_sets_resource_version_to_the_entry_index_and_keeps_create_revision() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    let key = object_key("", "ConfigMap", Some("default"), "a");
    let r1 = m.txn(Txn::put(&key, obj("a", 1))).await.unwrap();
    assert!(r1.succeeded);
    let (rev, kv) = m.get(&key, Consistency::Linearizable).await.unwrap();
    let kv = kv.expect("stored");
    assert!(rev >= r1.revision);
    assert_eq!(kv.mod_revision, r1.revision);
    assert_eq!(kv.create_revision, r1.revision);
    assert_eq!(
        kv.value["metadata"]["resourceVersion"],
        json!(r1.revision.to_string())
    );
    assert_eq!(kv.value["data"]["n"], json!("1"));

    let r2 = m.txn(Txn::put(&key, obj("a", 2))).await.unwrap();
    assert!(r2.revision > r1.revision);
    let (_, kv) = m.get(&key, Consistency::Serializable).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(kv.mod_revision, r2.revision);
    assert_eq!(
        kv.create_revision, r1.revision,
        "an update keeps the create revision"
    );
}

#[tokio::test]
async fn compare_and_swap_succeeds_only_on_the_current_revision() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    let key = "/core/ConfigMap/default/cas";
    // Revision 0 means "must not exist".
    let created = m
        .txn(Txn::compare_and_swap(key, 0, obj("cas", 1)))
        .await
        .unwrap();
    assert!(created.succeeded);
    let again = m
        .txn(Txn::compare_and_swap(key, 0, obj("cas", 9)))
        .await
        .unwrap();
    assert!(
        !again.succeeded,
        "create-if-absent must fail once the key exists"
    );
    let stale = m
        .txn(Txn::compare_and_swap(
            key,
            created.revision - 1,
            obj("cas", 9),
        ))
        .await
        .unwrap();
    assert!(!stale.succeeded);
    let swapped = m
        .txn(Txn::compare_and_swap(key, created.revision, obj("cas", 2)))
        .await
        .unwrap();
    assert!(swapped.succeeded);
    let (_, kv) = m.get(key, Consistency::Linearizable).await.unwrap();
    assert_eq!(kv.unwrap().value["data"]["n"], json!("2"));
}

#[tokio::test]
async fn bad_input_is_refused_before_it_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    let before = m.applied();
    let big = json!({"metadata": {"name": "big"}, "data": {"x": "a".repeat(1536 * 1024)}});
    match m.txn(Txn::put("/core/ConfigMap/default/big", big)).await {
        Err(Error::TooLarge { size, limit, .. }) => assert!(size > limit),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mut many = Txn::default();
    for i in 0..129 {
        many.success.push(coxswain_store::Op::Delete {
            key: format!("/k/{i}"),
        });
    }
    assert!(matches!(
        m.txn(many).await,
        Err(Error::TooManyOps {
            count: 129,
            limit: 128
        })
    ));
    assert!(matches!(
        m.txn(Txn::put("no-slash", json!({}))).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        m.txn(Txn::put("/k", json!("a string"))).await,
        Err(Error::InvalidValue { .. })
    ));
    assert_eq!(m.applied(), before, "nothing was proposed");
}

#[tokio::test]
async fn a_paged_list_reads_every_page_at_the_first_pages_revision() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    for i in 0..10 {
        m.txn(Txn::put(format!("/core/ConfigMap/ns/c{i}"), obj("c", i)))
            .await
            .unwrap();
    }
    let page1 = m
        .list("/core/ConfigMap/ns/", 4, None, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(page1.items.len(), 4);
    let token = page1.continue_token.clone().expect("more pages");
    // Change the rest of the range after the first page: delete one, update one, add one.
    m.txn(Txn::delete("/core/ConfigMap/ns/c5")).await.unwrap();
    m.txn(Txn::put("/core/ConfigMap/ns/c6", obj("c", 600)))
        .await
        .unwrap();
    m.txn(Txn::put("/core/ConfigMap/ns/c55", obj("c", 55)))
        .await
        .unwrap();

    let mut items = page1.items.clone();
    let mut token = Some(token);
    while let Some(t) = token {
        let page = m
            .list(
                "/core/ConfigMap/ns/",
                4,
                Some(&t),
                Consistency::Linearizable,
            )
            .await
            .unwrap();
        assert_eq!(page.revision, page1.revision, "every page at one revision");
        items.extend(page.items);
        token = page.continue_token;
    }
    let names: Vec<_> = items
        .iter()
        .map(|kv| kv.key.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
    );
    let c6 = items.iter().find(|kv| kv.key.ends_with("/c6")).unwrap();
    assert_eq!(
        c6.value["data"]["n"],
        json!("6"),
        "the value as of the list's revision"
    );

    let fresh = m
        .list("/core/ConfigMap/ns/", 0, None, Consistency::Serializable)
        .await
        .unwrap();
    assert_eq!(fresh.items.len(), 10, "c5 gone, c55 added");
    assert!(fresh.continue_token.is_none());
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_changes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    let first = m.txn(Txn::put("/w/a", obj("a", 1))).await.unwrap();
    m.txn(Txn::put("/other/x", obj("x", 1))).await.unwrap();
    m.txn(Txn::delete("/w/a")).await.unwrap();
    let mut stream = m.watch("/w/", first.revision, true).await.unwrap();
    for i in 0..5 {
        m.txn(Txn::put("/w/b", obj("b", i))).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let batch = tokio::time::timeout(Duration::from_secs(5), stream.recv())
            .await
            .expect("watch delivered in time")
            .expect("stream open")
            .expect("no error");
        for ev in batch.events {
            assert!(ev.kv.key.starts_with("/w/"));
            seen.push((batch.revision, ev.kind, ev.prev.is_some()));
        }
    }
    assert_eq!(seen[0].1, EventKind::Put);
    assert_eq!(seen[1].1, EventKind::Delete);
    assert!(seen[1].2, "a delete carries the previous value when asked");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "strictly increasing revisions: {seen:?}"
    );
}

#[tokio::test]
async fn watching_a_compacted_revision_is_an_error_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    for i in 0..80 {
        m.txn(Txn::put("/c/k", obj("k", i))).await.unwrap();
    }
    match m.watch("/c/", 1, false).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, 1);
            assert!(compacted > 1);
        }
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
}

#[tokio::test]
async fn concurrent_writes_share_raft_entries() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    let before = m.applied();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.txn(Txn::put(format!("/b/{i}"), obj("b", i)))
                .await
                .unwrap()
        }));
    }
    let mut revisions = std::collections::BTreeSet::new();
    for t in tasks {
        revisions.insert(t.await.unwrap().revision);
    }
    let entries = m.applied() - before;
    assert!(
        entries < 200 && revisions.len() < 200,
        "200 concurrent txns took {entries} entries ({} distinct revisions); batching should pack them",
        revisions.len()
    );
}

/// The log keeps recent entries decoded and the state machine answers a txn from that copy;
/// an entry over that cache's 1 MiB is read back from RocksDB without its replies, and is
/// answered from what openraft returns instead.
#[tokio::test]
async fn a_write_too_big_for_the_decoded_log_tail_is_answered_all_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    let mut value = obj("big", 1);
    value["data"]["blob"] = json!("x".repeat(1200 * 1024));
    let key = "/core/ConfigMap/default/big";
    let big = m.txn(Txn::put(key, value)).await.unwrap();
    assert!(big.succeeded);
    let small = m
        .txn(Txn::put("/core/ConfigMap/default/small", obj("small", 1)))
        .await
        .unwrap();
    assert!(small.revision > big.revision);
    let (_, kv) = m.get(key, Consistency::Linearizable).await.unwrap();
    let kv = kv.expect("stored");
    assert_eq!(kv.mod_revision, big.revision);
    assert_eq!(
        kv.value["data"]["blob"].as_str().map(str::len),
        Some(1200 * 1024)
    );
}

/// What one `POST /v1/txns` carries reaches the batcher at once: the txns share one entry
/// (a quiet member would otherwise propose the first ones alone), a bad one fails alone, and
/// a second write of a key gets an entry of its own.
#[tokio::test]
async fn txns_that_came_together_share_an_entry_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    let mut txns: Vec<Txn> = (0..10)
        .map(|i| Txn::put(format!("/core/ConfigMap/default/t{i}"), obj("t", i)))
        .collect();
    txns.insert(
        3,
        Txn::put("/core/ConfigMap/default/bad", json!(["not an object"])),
    );
    txns.push(Txn::put("/core/ConfigMap/default/t0", obj("t", 99)));
    let answers = m.txns(txns).await;
    assert_eq!(answers.len(), 12);
    assert!(
        matches!(answers[3], Err(Error::InvalidValue { .. })),
        "{:?}",
        answers[3]
    );
    let revisions: Vec<u64> = answers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, a)| a.as_ref().expect("a good txn succeeds").revision)
        .collect();
    let first = revisions[0];
    assert!(
        revisions[..10].iter().all(|r| *r == first),
        "ten puts of ten keys share one entry: {revisions:?}"
    );
    assert!(
        revisions[10] > first,
        "the second write of t0 has an entry of its own: {revisions:?}"
    );
    let (_, kv) = m
        .get("/core/ConfigMap/default/t0", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(kv.unwrap().value["data"]["n"], json!("99"));
}

#[tokio::test]
async fn data_and_revision_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let m = start(dir.path()).await;
        // The only voter syncs its appends in place, so the writes below take that path.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !m.syncs_in_place() {
            assert!(
                std::time::Instant::now() < deadline,
                "a lone member syncs in place"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut last = 0;
        for i in 0..20 {
            last = m
                .txn(Txn::put(format!("/r/{i}"), obj("r", i)))
                .await
                .unwrap()
                .revision;
        }
        m.shutdown().await.unwrap();
        last
    };
    // The old member's threads let go of RocksDB's lock once they see the shutdown.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = start(dir.path()).await;
    let (rev, kv) = m.get("/r/19", Consistency::Linearizable).await.unwrap();
    assert!(rev >= last, "revision went backwards: {rev} < {last}");
    assert_eq!(kv.unwrap().mod_revision, last);
    let next = m.txn(Txn::put("/r/new", obj("n", 0))).await.unwrap();
    assert!(next.revision > last);
}

#[tokio::test]
async fn a_commit_sync_may_exceed_the_client_op_limit_and_lands_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path()).await;
    let mut commit = Txn::default();
    for i in 0..2_000u64 {
        commit.success.push(coxswain_store::Op::Put {
            key: object_key("", "ConfigMap", Some("default"), &format!("c{i}")),
            value: obj(&format!("c{i}"), i).into(),
        });
    }
    assert!(matches!(
        m.txn(commit.clone()).await,
        Err(Error::TooManyOps { limit: 128, .. })
    ));
    let r = m.txn_commit(commit).await.unwrap();
    assert!(r.succeeded);
    let page = m
        .list(
            "/core/ConfigMap/default/",
            0,
            None,
            Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2_000);
    assert!(page.items.iter().all(|kv| kv.mod_revision == r.revision));
}
