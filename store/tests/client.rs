//! The network client against one real member (RocksDB in a temp dir, HTTP on a loopback
//! port): concurrent txns share requests (`POST /v1/txns`) and still each get their own
//! answer, error and revision.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use coxswain_store::client::{Peer, TxnAnswer};
use coxswain_store::{
    Client, Consistency, Error, Kv, Member, MemberConfig, Txn, TxnResult, server,
};
use serde_json::json;
use tokio::sync::oneshot;

const TOKEN: &str = "client-test-token";

struct Served {
    member: Member,
    addr: String,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let member = Member::start(MemberConfig::new(1, dir.path(), &addr, TOKEN), true)
        .await
        .expect("start member");
    member
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, member.clone(), async {
        let _ = stopped.await;
    }));
    Served {
        member,
        addr,
        _stop: stop,
        _dir: dir,
    }
}

fn obj(name: &str, data: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "default"}, "data": {"v": data}})
}

fn encoded(txn: &Txn) -> Bytes {
    Bytes::from(serde_json::to_vec(txn).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_txns_of_one_client_share_requests_and_keep_their_own_revisions() {
    let s = serve().await;
    let client = Client::new(vec![s.addr.clone()], TOKEN);
    let puts = (0..64).map(|i| {
        let client = client.clone();
        async move {
            let key = format!("/core/ConfigMap/default/c{i}");
            let r = client
                .txn(Txn::put(key.clone(), obj("c", &i.to_string())))
                .await;
            (key, i, r)
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(puts))
        .await
        .expect("every call answered");
    for (key, i, r) in results {
        let r = r.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(r.succeeded);
        let (_, kv) = s.member.get(&key, Consistency::Linearizable).await.unwrap();
        let kv = kv.expect("written");
        assert_eq!(kv.value["data"]["v"], i.to_string());
        assert_eq!(
            kv.mod_revision, r.revision,
            "{key} got the revision it was told"
        );
    }
    // 64 calls made at once, two requests out at a time: the first calls go alone and the
    // rest wait together, so far fewer requests than calls.
    let requests = client.txn_requests();
    assert!(
        requests <= 16,
        "64 concurrent txns took {requests} HTTP requests"
    );
}

/// A stand-in member that answers every `POST /v1/txns` after `delay`, and records how many
/// such requests it held at once.
async fn slow_member(delay: Duration) -> (String, Arc<AtomicUsize>, oneshot::Sender<()>) {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    let app = axum::Router::new().route(
        "/v1/txns",
        axum::routing::post(
            move |axum::Json(bodies): axum::Json<Vec<serde_json::Value>>| {
                let (now, most) = (now.clone(), most.clone());
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    let answer = TxnAnswer::Ok(TxnResult {
                        succeeded: true,
                        revision: 1,
                        deleted: vec![],
                    });
                    axum::Json(vec![answer; bodies.len()])
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    (addr, seen, stop)
}

async fn put_all_at_once(client: &Client, calls: usize) {
    let puts = (0..calls).map(|i| {
        let client = client.clone();
        async move {
            client
                .txn(Txn::put(
                    format!("/core/ConfigMap/default/q{i}"),
                    obj("q", "x"),
                ))
                .await
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(puts))
        .await
        .expect("every call answered");
    for r in results {
        assert!(r.expect("answered").succeeded);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_of_txns_gets_up_to_four_requests_out_and_a_short_one_two() {
    let (addr, most, _stop) = slow_member(Duration::from_millis(300)).await;
    // 16 callers: two go alone and the other 14 wait for one of them, as ever.
    let client = Client::new(vec![addr.clone()], TOKEN);
    put_all_at_once(&client, 16).await;
    assert_eq!(most.swap(0, Ordering::SeqCst), 2);
    // 600 callers: each time 64 wait, one more request takes them, up to four at once.
    let client = Client::new(vec![addr], TOKEN);
    put_all_at_once(&client, 600).await;
    assert_eq!(most.load(Ordering::SeqCst), 4);
    let requests = client.txn_requests();
    assert!(requests <= 8, "600 txns took {requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_txn_in_a_shared_request_fails_alone() {
    let s = serve().await;
    let peer = Peer::new(TOKEN);
    let key = |n: &str| format!("/core/ConfigMap/default/{n}");
    let too_many = Txn {
        success: (0..129)
            .map(|i| coxswain_store::Op::Delete {
                key: key(&format!("d{i}")),
            })
            .collect(),
        ..Txn::default()
    };
    let stale_cas = Txn::compare_and_swap(key("cas"), 999_999, obj("cas", "x"));
    let txns = [
        Txn::put(key("first"), obj("first", "1")),
        too_many,
        stale_cas,
        Txn::put(key("last"), obj("last", "2")),
    ];
    let bodies: Vec<Bytes> = txns.iter().map(encoded).collect();
    let answers = peer.txns(&s.addr, &bodies).await.unwrap();
    assert_eq!(answers.len(), 4);
    match &answers[0] {
        TxnAnswer::Ok(r) => assert!(r.succeeded),
        other => panic!("first put: {other:?}"),
    }
    match &answers[1] {
        TxnAnswer::Err { status, error } => {
            assert_eq!(*status, 400);
            assert!(
                error.message.contains("129 ops, over the limit of 128"),
                "{}",
                error.message
            );
        }
        other => panic!("129-op txn: {other:?}"),
    }
    match &answers[2] {
        TxnAnswer::Ok(r) => assert!(!r.succeeded, "a stale compare-and-swap must not hold"),
        other => panic!("stale cas: {other:?}"),
    }
    match &answers[3] {
        TxnAnswer::Ok(r) => assert!(r.succeeded),
        other => panic!("last put: {other:?}"),
    }
    let get = |k: String| {
        let m = s.member.clone();
        async move { m.get(&k, Consistency::Linearizable).await.unwrap().1 }
    };
    assert!(get(key("first")).await.is_some());
    assert!(get(key("last")).await.is_some());
    assert!(get(key("cas")).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writes_of_one_key_in_one_request_get_their_own_revisions() {
    let s = serve().await;
    let peer = Peer::new(TOKEN);
    let key = "/core/ConfigMap/default/twice";
    let bodies = [
        encoded(&Txn::put(key, obj("twice", "a"))),
        encoded(&Txn::put(key, obj("twice", "b"))),
    ];
    let answers = peer.txns(&s.addr, &bodies).await.unwrap();
    let revs: Vec<u64> = answers
        .into_iter()
        .map(|a| a.into_result().unwrap().revision)
        .collect();
    assert_eq!(revs.len(), 2);
    assert!(revs[0] < revs[1], "revisions {revs:?}");
    let (_, kv) = s.member.get(key, Consistency::Linearizable).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(kv.value["data"]["v"], "b");
    assert_eq!(kv.mod_revision, revs[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_txn_limit_is_refused_with_a_clear_error() {
    let s = serve().await;
    let peer = Peer::new(TOKEN);
    let bodies: Vec<Bytes> = (0..1025)
        .map(|i| {
            encoded(&Txn::put(
                format!("/core/ConfigMap/default/n{i}"),
                obj("n", "x"),
            ))
        })
        .collect();
    match peer.txns(&s.addr, &bodies).await {
        Err(Error::Remote { status, message }) => {
            assert_eq!(status, 400);
            assert!(
                message.contains("1025 transactions, over the limit of 1024"),
                "{message}"
            );
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    let (_, kv) = s
        .member
        .get("/core/ConfigMap/default/n0", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(kv.is_none(), "nothing of a refused request is written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_too_big_to_share_a_request_goes_alone_among_small_ones() {
    let s = serve().await;
    let client = Client::new(vec![s.addr.clone()], TOKEN);
    // Over the 1 MiB a shared request carries, under the 1.5 MiB value limit.
    let big = "x".repeat(1_200_000);
    let big_put = client.txn(Txn::put("/core/ConfigMap/default/big", obj("big", &big)));
    let small = (0..8).map(|i| {
        client.txn(Txn::put(
            format!("/core/ConfigMap/default/s{i}"),
            obj("s", "y"),
        ))
    });
    let (big_r, small_r) = tokio::join!(big_put, futures::future::join_all(small));
    assert!(big_r.unwrap().succeeded);
    for r in small_r {
        assert!(r.unwrap().succeeded);
    }
    let (_, kv) = s
        .member
        .get("/core/ConfigMap/default/big", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        kv.unwrap().value["data"]["v"].as_str().map(str::len),
        Some(1_200_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_every_txn_of_the_shared_request() {
    let s = serve().await;
    let client = Client::new(vec![s.addr.clone()], "not-the-token");
    let puts = (0..8).map(|i| {
        client.txn(Txn::put(
            format!("/core/ConfigMap/default/u{i}"),
            obj("u", "z"),
        ))
    });
    for r in futures::future::join_all(puts).await {
        assert!(matches!(r, Err(Error::Unauthorized)), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_leave_no_request_slot_behind() {
    let s = serve().await;
    let client = Client::new(vec![s.addr.clone()], TOKEN);
    // Each of these is dropped while its request is out, holding one of the client's two
    // request slots; the slot must come back, or the calls below would queue for ever.
    for i in 0..6 {
        let put = client.txn(Txn::put(
            format!("/core/ConfigMap/default/g{i}"),
            obj("g", "w"),
        ));
        let _ = tokio::time::timeout(Duration::from_micros(50), put).await;
    }
    let puts = (0..8).map(|i| {
        client.txn(Txn::put(
            format!("/core/ConfigMap/default/h{i}"),
            obj("h", "v"),
        ))
    });
    let results = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(puts))
        .await
        .expect("calls after abandoned ones are answered");
    for r in results {
        assert!(r.unwrap().succeeded);
    }
}
