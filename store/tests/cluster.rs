//! Three members, each with its own RocksDB in a temp dir and its own HTTP server on a real
//! loopback port, talking the real internal RPC. "Killing" a member here stops its server and
//! its Raft at once, without a graceful hand-over; `kill -9` of whole processes is in the
//! root crate's `tests/store_crash.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coxswain_store::{Client, Consistency, Error, Kv, Member, MemberConfig, Txn, server};
use serde_json::json;
use support::lincheck::{self, Input, Op, Output};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "cluster-test-token";

struct Running {
    member: Member,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

struct TestMember {
    id: u64,
    dir: PathBuf,
    addr: String,
    snapshot_every: u64,
    running: Option<Running>,
}

impl TestMember {
    async fn start(&mut self, bootstrap: bool) {
        // The port is fixed at first start so the others find the member at the same
        // address after a restart; binding may need a moment while the old socket closes.
        let listener = loop {
            match tokio::net::TcpListener::bind(&self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.addr = listener.local_addr().unwrap().to_string();
        let mut cfg = MemberConfig::new(self.id, &self.dir, &self.addr, TOKEN);
        cfg.snapshot_every = self.snapshot_every;
        cfg.history_retain = 100_000;
        let member = loop {
            // RocksDB's lock is released once the killed member's tasks have wound down.
            match Member::start(cfg.clone(), bootstrap).await {
                Ok(m) => break m,
                Err(Error::Rocks { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("start member {}: {e}", self.id),
            }
        };
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(server::serve(listener, member.clone(), async {
            let _ = stopped.await;
        }));
        self.running = Some(Running {
            member,
            stop,
            server,
        });
    }

    async fn kill(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            let mut server = r.server;
            if tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }

    fn member(&self) -> &Member {
        &self.running.as_ref().expect("member is running").member
    }
}

async fn cluster(snapshot_every: u64) -> (Vec<TestMember>, Vec<tempfile::TempDir>) {
    let mut dirs = Vec::new();
    let mut members = Vec::new();
    for id in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        members.push(TestMember {
            id,
            dir: dir.path().to_path_buf(),
            addr: "127.0.0.1:0".into(),
            snapshot_every,
            running: None,
        });
        dirs.push(dir);
    }
    members[0].start(true).await;
    members[0]
        .member()
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    for i in 1..3 {
        members[i].start(false).await;
        let (id, addr) = (members[i].id, members[i].addr.clone());
        members[0].member().add_member(id, &addr).await.unwrap();
    }
    (members, dirs)
}

/// Polls `check` for up to 10 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_lone_voter_syncs_its_log_in_place() {
    let (mut members, _dirs) = cluster(10_000).await;
    // Three voters: each hands its fsyncs to the flusher thread, so a leader's Raft task
    // keeps heartbeating while its disk works.
    for m in &members {
        eventually("a member of three stops syncing in place", || {
            !m.member().syncs_in_place()
        })
        .await;
    }
    client(&members)
        .txn(Txn::put("/t/a", json!({"v": 1})))
        .await
        .unwrap();
    // Down to one voter: the leader removes the other two and syncs in place from then on.
    let leader = leader_index(&members).await.expect("a leader");
    for i in (0..3).filter(|i| *i != leader) {
        let id = members[i].id;
        members[leader].member().remove_member(id).await.unwrap();
        members[i].kill().await;
    }
    let lone = members[leader].member();
    eventually("the lone voter syncs in place", || lone.syncs_in_place()).await;
    let r = lone.txn(Txn::put("/t/b", json!({"v": 2}))).await.unwrap();
    assert!(r.succeeded);
    let (_, kv) = lone.get("/t/b", Consistency::Linearizable).await.unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(json!({"v": 2})));
    members[leader].kill().await;
}

fn client(members: &[TestMember]) -> Client {
    let mut c = Client::new(members.iter().map(|m| m.addr.clone()).collect(), TOKEN);
    c.retry_for = Duration::from_secs(15);
    c
}

async fn leader_index(members: &[TestMember]) -> Option<usize> {
    for m in members.iter().filter(|m| m.running.is_some()) {
        if let Ok(id) = m.member().wait_for_leader(Duration::from_secs(5)).await {
            return members
                .iter()
                .position(|x| x.id == id && x.running.is_some());
        }
    }
    None
}

/// What the test clients recorded, with times relative to one start.
struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn value_of(v: &serde_json::Value) -> String {
    v["data"]["v"].as_str().unwrap_or_default().to_string()
}

async fn client_loop(
    client: Client,
    id: usize,
    rec: Arc<Recorder>,
    until: Instant,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
) {
    let mut n = 0u64;
    let mut known: BTreeMap<String, u64> = BTreeMap::new();
    while Instant::now() < until {
        n += 1;
        let key = format!("/lin/k{}", (n as usize * 7 + id) % 6);
        let value = format!("c{id}-{n}");
        let obj = json!({"metadata": {"name": "x"}, "data": {"v": value}});
        let call = rec.now();
        let (input, output) = match n % 3 {
            0 => {
                let r = client.get(&key, Consistency::Linearizable).await;
                let out = match r {
                    Ok((_, kv)) => {
                        if let Some(kv) = &kv {
                            known.insert(key.clone(), kv.mod_revision);
                        }
                        Output::Read(kv.map(|kv| (value_of(&kv.value), kv.mod_revision)))
                    }
                    Err(_) => continue, // a failed read constrains nothing
                };
                (Input::Get { key: key.clone() }, out)
            }
            1 => {
                let expected = known.get(&key).copied().unwrap_or(0);
                let r = client.txn(Txn::compare_and_swap(&key, expected, obj)).await;
                let out = match r {
                    Ok(t) if t.succeeded => {
                        known.insert(key.clone(), t.revision);
                        acked
                            .lock()
                            .unwrap()
                            .entry(key.clone())
                            .and_modify(|r| *r = (*r).max(t.revision))
                            .or_insert(t.revision);
                        Output::Written {
                            revision: t.revision,
                        }
                    }
                    Ok(_) => Output::CasFailed,
                    Err(_) => Output::Unknown,
                };
                (
                    Input::Cas {
                        key: key.clone(),
                        expected_revision: expected,
                        value,
                    },
                    out,
                )
            }
            _ => {
                let r = client.txn(Txn::put(&key, obj)).await;
                let out = match r {
                    Ok(t) => {
                        known.insert(key.clone(), t.revision);
                        acked
                            .lock()
                            .unwrap()
                            .entry(key.clone())
                            .and_modify(|r| *r = (*r).max(t.revision))
                            .or_insert(t.revision);
                        Output::Written {
                            revision: t.revision,
                        }
                    }
                    Err(_) => Output::Unknown,
                };
                (
                    Input::Put {
                        key: key.clone(),
                        value,
                    },
                    out,
                )
            }
        };
        let ret = match output {
            Output::Unknown => None,
            _ => Some(rec.now()),
        };
        rec.ops.lock().unwrap().push(Op {
            client: id,
            call,
            ret,
            input,
            output,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_keeps_acknowledged_writes_and_a_linearizable_history() {
    let (mut members, _dirs) = cluster(10_000).await;
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        ops: Mutex::new(Vec::new()),
    });
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let until = Instant::now() + Duration::from_secs(12);
    let c = client(&members);
    // A watcher across the leader changes: every revision once, in order.
    let mut watch = c.watch("/lin/", 1, false).await.unwrap();
    let watched = tokio::spawn(async move {
        let mut revs = Vec::new();
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(20), watch.recv()).await
        {
            match item {
                Ok(b) => revs.push(b.revision),
                Err(e) => panic!("watch failed: {e}"),
            }
        }
        revs
    });
    let mut clients = Vec::new();
    for id in 0..8 {
        clients.push(tokio::spawn(client_loop(
            c.clone(),
            id,
            rec.clone(),
            until,
            acked.clone(),
        )));
    }
    let mut kills = 0;
    while Instant::now() + Duration::from_secs(3) < until {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let Some(l) = leader_index(&members).await else {
            continue;
        };
        members[l].kill().await;
        kills += 1;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        members[l].start(false).await;
    }
    for t in clients {
        t.await.unwrap();
    }
    assert!(kills >= 3, "only {kills} leader kills happened");

    // Final reads of every key join the history, so a lost write shows up as a violation.
    let acked = acked.lock().unwrap().clone();
    for (key, rev) in &acked {
        let call = rec.now();
        let (_, kv) = c.get(key, Consistency::Linearizable).await.unwrap();
        let kv = kv.expect("an acknowledged key exists");
        assert!(
            kv.mod_revision >= *rev,
            "{key}: acknowledged revision {rev} is gone (now {})",
            kv.mod_revision
        );
        rec.ops.lock().unwrap().push(Op {
            client: 99,
            call,
            ret: Some(rec.now()),
            input: Input::Get { key: key.clone() },
            output: Output::Read(Some((value_of(&kv.value), kv.mod_revision))),
        });
    }
    let history = rec.ops.lock().unwrap().clone();
    let writes = history
        .iter()
        .filter(|o| matches!(o.output, Output::Written { .. }))
        .count();
    assert!(
        writes > 100,
        "too few acknowledged writes to mean anything: {writes}"
    );
    let unknown = history
        .iter()
        .filter(|o| o.output == Output::Unknown)
        .count();
    eprintln!(
        "leader loss: {kills} leader kills, {} ops, {writes} acknowledged writes, {unknown} with unknown outcome",
        history.len()
    );
    if let Err(v) = lincheck::check(&history) {
        panic!("history of {} ops is not linearizable: {v}", history.len());
    }

    // Let the watcher drain, then check it saw every acknowledged write's revision once.
    let last = acked.values().copied().max().unwrap_or(0);
    drop(c);
    let revs = watched.await.unwrap();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "watch revisions not strictly increasing"
    );
    for o in &history {
        if let Output::Written { revision } = o.output {
            assert!(
                revs.binary_search(&revision).is_ok(),
                "watch missed revision {revision}"
            );
        }
    }
    assert!(revs.last().copied().unwrap_or(0) >= last);
    for m in &mut members {
        m.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_behind_a_purged_log_catches_up_by_snapshot() {
    let (mut members, _dirs) = cluster(50).await;
    let c = client(&members);
    members[2].kill().await;
    let mut last = 0;
    for i in 0..300 {
        last = c
            .txn(Txn::put(
                format!("/snap/{}", i % 40),
                json!({"data": {"i": i}}),
            ))
            .await
            .unwrap()
            .revision;
    }
    let l = leader_index(&members).await.expect("leader");
    let purged = members[l].member().raft().metrics().borrow().purged;
    assert!(
        purged.is_some_and(|p| p.index > 10),
        "the leader should have purged its log after a snapshot, purged = {purged:?}"
    );
    members[2].start(false).await;
    let m3 = members[2].member().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while m3.applied() < last && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        m3.applied() >= last,
        "member 3 applied {} < {last}",
        m3.applied()
    );
    let snapshot = m3.raft().metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "member 3 should hold a snapshot");
    // /snap/39 was last written by i = 279 (300 writes over 40 keys).
    let (_, kv) = m3.get("/snap/39", Consistency::Serializable).await.unwrap();
    assert_eq!(kv.expect("caught-up data").value["data"]["i"], json!(279));
    for m in &mut members {
        m.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_forward_writes_and_linearizable_reads_and_reject_wrong_tokens() {
    let (mut members, _dirs) = cluster(10_000).await;
    let l = leader_index(&members).await.unwrap();
    let f = (l + 1) % 3;
    let follower = Client::new(vec![members[f].addr.clone()], TOKEN);
    let r = follower
        .txn(Txn::put("/fwd/a", json!({"data": {"x": 1}})))
        .await
        .unwrap();
    let (rev, kv) = follower
        .get("/fwd/a", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(rev >= r.revision);
    assert_eq!(kv.unwrap().mod_revision, r.revision);

    let wrong = Client::new(vec![members[f].addr.clone()], "not-the-token");
    match wrong.get("/fwd/a", Consistency::Serializable).await {
        Err(Error::Unauthorized) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    // Removing a member takes it out of the voters.
    let leader = members[l].member().clone();
    let victim = members[f].id;
    leader.remove_member(victim).await.unwrap();
    let voters: Vec<u64> = leader
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert!(
        !voters.contains(&victim),
        "voters still include {victim}: {voters:?}"
    );
    for m in &mut members {
        m.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_back_on_an_empty_disk_without_join_stays_apart_from_the_old_cluster() {
    let (mut members, _dirs) = cluster(10_000).await;
    let c = client(&members);
    for i in 0..20 {
        c.txn(Txn::put(format!("/id/{i}"), json!({"data": {"i": i}})))
            .await
            .unwrap();
    }
    let ids: Vec<Option<String>> = members
        .iter()
        .map(|m| m.member().cluster_id().map(str::to_string))
        .collect();
    assert!(
        ids[0].is_some() && ids.iter().all(|i| i == &ids[0]),
        "every member should hold the bootstrapped cluster's id: {ids:?}"
    );

    // A follower loses its disk and comes back as `coxswain server` without --join would:
    // bootstrapping a new one-member cluster at the old address.
    let l = leader_index(&members).await.unwrap();
    let v = (l + 1) % 3;
    // A crashed process writes nothing more; an in-process member's Raft core would go on
    // (elections write the vote), so it is shut down before its disk is wiped, and the wipe
    // is retried while RocksDB finishes closing its files.
    let crashed = members[v].member().clone();
    members[v].kill().await;
    crashed.shutdown().await.unwrap();
    drop(crashed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = std::fs::remove_dir_all(&members[v].dir) {
        assert!(std::time::Instant::now() < deadline, "wiping the disk: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::create_dir_all(&members[v].dir).unwrap();
    members[v].start(true).await;
    let imposter = members[v].member().clone();
    imposter
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(imposter.cluster_id().is_some());
    assert_ne!(imposter.cluster_id(), ids[0].as_deref());

    // The old cluster goes on with its two other members; its leader keeps sending appends to
    // the old address all along.
    let old: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != v)
        .map(|(_, m)| m.addr.clone())
        .collect();
    let mut oc = Client::new(old, TOKEN);
    oc.retry_for = Duration::from_secs(15);
    let mut last = 0;
    for i in 0..50 {
        last = oc
            .txn(Txn::put(
                format!("/id/after/{i}"),
                json!({"data": {"i": i}}),
            ))
            .await
            .unwrap()
            .revision;
    }
    let own = imposter
        .txn(Txn::put("/id/imposter", json!({"data": {"x": 1}})))
        .await
        .unwrap();
    // Heartbeats every 100 ms: a second gives the old leader many chances to overwrite it.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (_, kv) = imposter
        .get("/id/0", Consistency::Serializable)
        .await
        .unwrap();
    assert!(kv.is_none(), "the old cluster's data reached the new one");
    assert!(
        imposter.applied() < last,
        "imposter applied {} of the old cluster's {last}",
        imposter.applied()
    );
    let (_, kv) = imposter
        .get("/id/imposter", Consistency::Serializable)
        .await
        .unwrap();
    assert_eq!(
        kv.expect("the imposter's acknowledged write").mod_revision,
        own.revision
    );
    assert_eq!(
        imposter.raft().metrics().borrow().current_leader,
        Some(members[v].id),
        "the imposter should still lead its own cluster"
    );
    let (_, kv) = members[l]
        .member()
        .get("/id/imposter", Consistency::Serializable)
        .await
        .unwrap();
    assert!(kv.is_none(), "the imposter's write reached the old cluster");

    // A Raft message carrying another cluster's id is refused outright.
    let stranger = "00000000-0000-4000-8000-000000000000";
    let peer = coxswain_store::client::Peer::new(TOKEN)
        .with_cluster(Arc::new(std::sync::OnceLock::from(stranger.to_string())));
    let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(1_000, 99), None);
    let r: Result<serde_json::Value, Error> =
        peer.call(&members[l].addr, "/raft/vote", &vote, None).await;
    match r {
        Err(Error::Remote {
            status: 409,
            message,
        }) => {
            assert!(message.contains("cluster mismatch"), "{message}")
        }
        other => panic!("expected a 409 cluster mismatch, got {other:?}"),
    }
    for m in &mut members {
        m.kill().await;
    }
}
