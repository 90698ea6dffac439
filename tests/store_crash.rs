//! Crash tests of the replicated store as real `coxswain server` processes killed with
//! SIGKILL (`kill -9`), with no chance to flush or hand over anything:
//!
//! - one member, killed 50 times while 8 clients write: every acknowledged write (and every
//!   value a linearizable read has shown) is still there after each restart, and the revision
//!   a read reflects never goes backwards;
//! - three members, one killed while the others write far past their snapshot and log purge
//!   point: restarted at the same address it can only catch up by installing a snapshot from
//!   the leader, and then serves the acknowledged values itself.
//!
//! And one test of `--min-free-mib`: a member whose disk has less free space than that
//! refuses writes and keeps serving reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use coxswain_store::client::{Peer, Status};
use coxswain_store::{Client, Consistency, KeyValue, Kv, Txn};
use serde_json::{Value, json};

const TOKEN: &str = "store-crash-test-token";

// ---------------------------------------------------------------------------------------------
// Running `coxswain server` processes.

/// How to start one member process.
struct MemberSpec<'a> {
    id: u64,
    data: &'a Path,
    listen: &'a str,
    join: Option<&'a str>,
    snapshot_every: Option<u64>,
    /// `--min-free-mib`, the disk reserve under which writes are refused.
    min_free_mib: Option<u64>,
    /// The process's stderr is appended here.
    log: &'a Path,
}

/// A running member process. Dropping it kills the process (SIGKILL), so a failing test
/// leaves no server behind.
struct Proc {
    id: u64,
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    /// Starts the process and waits for its "listening" line. `Err` if it exits first (for
    /// example because a fixed port is still taken).
    fn spawn(spec: &MemberSpec<'_>) -> Result<Proc, String> {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(spec.log)
            .map_err(|e| format!("open {}: {e}", spec.log.display()))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coxswain"));
        cmd.arg("server")
            .args(["--id", &spec.id.to_string()])
            .arg("--data")
            .arg(spec.data)
            .args(["--listen", spec.listen, "--token", TOKEN]);
        if let Some(join) = spec.join {
            cmd.args(["--join", join]);
        }
        if let Some(k) = spec.snapshot_every {
            cmd.args(["--snapshot-every", &k.to_string()]);
        }
        if let Some(mib) = spec.min_free_mib {
            cmd.args(["--min-free-mib", &mib.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn coxswain: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = Proc {
            id: spec.id,
            child,
            addr: String::new(),
            lines,
            log: spec.log.to_path_buf(),
        };
        let prefix = format!("coxswain server: member {} listening on ", spec.id);
        match proc.wait_line(&prefix, Duration::from_secs(30)) {
            Ok(line) => {
                proc.addr = line[prefix.len()..].trim().to_string();
                Ok(proc)
            }
            Err(e) => {
                let _ = proc.child.kill();
                let status = proc.child.wait();
                Err(format!(
                    "member {} did not start ({e}; exit {status:?}); stderr:\n{}",
                    spec.id,
                    log_tail(&proc.log)
                ))
            }
        }
    }

    /// Starts the process at a fixed address, retrying while the port is still taken.
    fn spawn_retrying(spec: &MemberSpec<'_>) -> Proc {
        let mut last = String::new();
        for _ in 0..20 {
            match Proc::spawn(spec) {
                Ok(p) => return p,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        panic!("could not start member {}: {last}", spec.id);
    }

    /// Waits for the next stdout line that starts with `prefix`, skipping others.
    fn wait_line(&self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no line {prefix:?} within {timeout:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("stdout closed before a line {prefix:?}"));
                }
            }
        }
    }

    /// SIGKILL, then reap the process.
    fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let status = self.child.wait().expect("wait for the killed member");
        assert!(
            !status.success(),
            "member {} exited on its own before the kill: {status:?}",
            self.id
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of member {} ({}) ---\n{}",
                self.id,
                self.addr,
                log_tail(&self.log)
            );
        }
    }
}

/// The last lines of a log file, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Starts a member from async code without stalling the runtime's other work.
fn spawn_blocking_ok(spec: &MemberSpec<'_>) -> Proc {
    tokio::task::block_in_place(|| Proc::spawn_retrying(spec))
}

/// `GET /cluster/status` of one member.
async fn status(addr: &str) -> anyhow::Result<Status> {
    Ok(Peer::new(TOKEN).status(addr).await?)
}

/// Polls `status` of `addr` until `done` holds; the last status either way.
async fn poll_status(
    addr: &str,
    timeout: Duration,
    done: impl Fn(&Status) -> bool,
) -> (bool, Option<Status>) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(s) = status(addr).await {
            let ok = done(&s);
            last = Some(s);
            if ok {
                return (true, last);
            }
        }
        if Instant::now() >= deadline {
            return (false, last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tiny xorshift64, so the test needs no `rand`.
struct XorShift(u64);

impl XorShift {
    fn seeded(extra: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        XorShift((nanos ^ extra.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The writer's counter inside a stored value.
fn counter_of(kv: &KeyValue) -> u64 {
    kv.value["data"]["counter"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: no data.counter in {}", kv.key, kv.value))
}

fn check_resource_version(kv: &KeyValue) {
    assert_eq!(
        kv.value["metadata"]["resourceVersion"],
        Value::String(kv.mod_revision.to_string()),
        "{}: resourceVersion is not the mod revision: {kv:?}",
        kv.key
    );
    assert!(
        kv.create_revision >= 1 && kv.create_revision <= kv.mod_revision,
        "{}: create revision {} after mod revision {}",
        kv.key,
        kv.create_revision,
        kv.mod_revision
    );
}

// ---------------------------------------------------------------------------------------------
// Test 1: one member, kill -9 during writes, 50 times.

/// The newest write of a key known to be durable: acknowledged to a writer, or shown by a
/// linearizable read.
#[derive(Debug, Clone, Copy)]
struct Known {
    revision: u64,
    counter: u64,
}

#[derive(Default)]
struct Book {
    /// The newest known-durable write of each key.
    known: Mutex<HashMap<String, Known>>,
    /// Every counter ever sent for a key, acknowledged or not.
    attempted: Mutex<HashMap<String, BTreeSet<u64>>>,
    /// Highest revision seen by any acknowledgement or read.
    max_seen: AtomicU64,
    counter: AtomicU64,
    acked: AtomicU64,
    unknown: AtomicU64,
    /// Writes with an unknown outcome that a later read found applied.
    surfaced: AtomicU64,
}

async fn writer(client: Client, book: Arc<Book>, stop: Arc<AtomicBool>, w: usize) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let slot = n % 20;
        n += 1;
        let key = format!("/crash/w{w}/{slot}");
        let c = book.counter.fetch_add(1, Ordering::SeqCst) + 1;
        book.attempted
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .insert(c);
        let value = json!({
            "metadata": {"name": format!("w{w}-{slot}")},
            "data": {"counter": c, "writer": w},
        });
        // Anything acknowledged before this write was sent must have a lower revision.
        let before = book.max_seen.load(Ordering::SeqCst);
        match client.txn(Txn::put(key.clone(), value)).await {
            Ok(r) => {
                assert!(r.succeeded, "{key}: unconditional put did not succeed");
                assert!(
                    r.revision > before,
                    "{key}: acknowledged at revision {} although revision {before} was \
                     already acknowledged or read before it was sent",
                    r.revision
                );
                book.max_seen.fetch_max(r.revision, Ordering::SeqCst);
                book.acked.fetch_add(1, Ordering::SeqCst);
                let mut known = book.known.lock().unwrap();
                let e = known.entry(key).or_insert(Known {
                    revision: 0,
                    counter: 0,
                });
                if r.revision > e.revision {
                    *e = Known {
                        revision: r.revision,
                        counter: c,
                    };
                }
            }
            Err(_) => {
                // Unknown outcome: the member may have died with the write in its log.
                book.unknown.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// After a restart and before any write: everything known durable is still there, no value
/// appears that was never written, and read revisions do not go backwards.
async fn check_after_restart(client: &Client, book: &Book, start: usize) -> usize {
    let floor = book.max_seen.load(Ordering::SeqCst);
    let (rev, kv) = client
        .get("/crash/probe", Consistency::Linearizable)
        .await
        .unwrap_or_else(|e| panic!("start {start}: first read failed: {e}"));
    assert!(
        kv.is_none(),
        "start {start}: /crash/probe was never written"
    );
    assert!(
        rev >= floor,
        "start {start}: read revision {rev} went back below {floor}, seen before the kill"
    );
    book.max_seen.fetch_max(rev, Ordering::SeqCst);

    let mut keys: Vec<String> = book.attempted.lock().unwrap().keys().cloned().collect();
    keys.sort();
    for key in &keys {
        let floor = book.max_seen.load(Ordering::SeqCst);
        let (rev, kv) = client
            .get(key, Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("start {start}: read {key}: {e}"));
        assert!(
            rev >= floor,
            "start {start}: read of {key} at revision {rev}, below {floor} seen before"
        );
        book.max_seen.fetch_max(rev, Ordering::SeqCst);
        let known = book.known.lock().unwrap().get(key).copied();
        let attempted = book.attempted.lock().unwrap().get(key).cloned();
        let Some(kv) = kv else {
            assert!(
                known.is_none(),
                "start {start}: {key} is gone, but {known:?} was acknowledged or read"
            );
            continue;
        };
        check_resource_version(&kv);
        assert!(
            kv.mod_revision <= rev,
            "start {start}: {key} has mod revision {} above the read's revision {rev}",
            kv.mod_revision
        );
        let c = counter_of(&kv);
        assert!(
            attempted.as_ref().is_some_and(|a| a.contains(&c)),
            "start {start}: {key} holds counter {c}, which was never written to it"
        );
        if let Some(k) = known {
            assert!(
                kv.mod_revision >= k.revision,
                "start {start}: {key} went back from revision {} (counter {}) to {} \
                 (counter {c}) across the kill",
                k.revision,
                k.counter,
                kv.mod_revision
            );
            if kv.mod_revision == k.revision {
                assert_eq!(
                    c, k.counter,
                    "start {start}: {key} at revision {} holds another write than the one \
                     acknowledged there",
                    k.revision
                );
            } else {
                assert!(
                    c > k.counter,
                    "start {start}: {key} at newer revision {} holds older counter {c} \
                     (known: {k:?})",
                    kv.mod_revision
                );
            }
        }
        // What a linearizable read showed is committed: it must survive the next kills too.
        if known.is_none_or(|k| kv.mod_revision > k.revision) {
            book.surfaced.fetch_add(1, Ordering::SeqCst);
            book.known.lock().unwrap().insert(
                key.clone(),
                Known {
                    revision: kv.mod_revision,
                    counter: c,
                },
            );
        }
    }
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_survives_50_kill_9_during_writes() {
    const KILLS: usize = 50;
    const WRITERS: usize = 8;
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("member-1");
    let log = dir.path().join("member-1.log");
    let book = Arc::new(Book::default());
    let mut rng = XorShift::seeded(1);
    let mut reads = 0usize;

    for start in 0..=KILLS {
        let mut proc = spawn_blocking_ok(&MemberSpec {
            id: 1,
            data: &data,
            listen: "127.0.0.1:0",
            join: None,
            snapshot_every: None,
            min_free_mib: None,
            log: &log,
        });
        let client = Client::new(vec![proc.addr.clone()], TOKEN);
        // Also waits out the election: the first read is served by a leader.
        reads += check_after_restart(&client, &book, start).await + 1;
        if start == KILLS {
            break;
        }

        let stop = Arc::new(AtomicBool::new(false));
        let acked_before = book.acked.load(Ordering::SeqCst);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(client.clone(), book.clone(), stop.clone(), w)))
            .collect();
        // Kill only once writes are flowing (a loaded machine can take a while after a
        // restart), then at a random moment among them.
        let flowing = Instant::now() + Duration::from_secs(20);
        while book.acked.load(Ordering::SeqCst) == acked_before && Instant::now() < flowing {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next() % 301)).await;
        proc.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("a writer did not stop after the kill")
                .unwrap();
        }
        assert!(
            book.acked.load(Ordering::SeqCst) > acked_before,
            "start {start}: no write was acknowledged while the member was up"
        );
    }

    let known = book.known.lock().unwrap().len();
    eprintln!(
        "single member: {KILLS} kill -9s, {} acknowledged writes, {} with unknown outcome \
         ({} of them found applied), {known} keys checked after each restart \
         ({reads} linearizable reads), max revision {}, {:.1} s",
        book.acked.load(Ordering::SeqCst),
        book.unknown.load(Ordering::SeqCst),
        book.surfaced.load(Ordering::SeqCst),
        book.max_seen.load(Ordering::SeqCst),
        began.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Test 2: a member killed while the others write past the purge point catches up by snapshot.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_rejoins_and_catches_up_by_snapshot() {
    const SNAPSHOT_EVERY: u64 = 50;
    const WRITES: usize = 500;
    const WRITERS: usize = 5;
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = |id: u64| dir.path().join(format!("member-{id}"));
    let log = |id: u64| dir.path().join(format!("member-{id}.log"));

    let (d1, l1) = (data(1), log(1));
    let m1 = spawn_blocking_ok(&MemberSpec {
        id: 1,
        data: &d1,
        listen: "127.0.0.1:0",
        join: None,
        snapshot_every: Some(SNAPSHOT_EVERY),
        min_free_mib: None,
        log: &l1,
    });
    let addr1 = m1.addr.clone();
    let mut procs = vec![m1];
    for id in [2, 3] {
        let (d, l) = (data(id), log(id));
        let p = spawn_blocking_ok(&MemberSpec {
            id,
            data: &d,
            listen: "127.0.0.1:0",
            join: Some(&addr1),
            snapshot_every: Some(SNAPSHOT_EVERY),
            min_free_mib: None,
            log: &l,
        });
        let joined = format!("coxswain server: member {id} joined the cluster of {addr1}");
        tokio::task::block_in_place(|| p.wait_line(&joined, Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("member {id}: {e}\n{}", log_tail(&l)));
        procs.push(p);
    }
    let addrs: BTreeMap<u64, String> = procs.iter().map(|p| (p.id, p.addr.clone())).collect();
    let addr3 = addrs[&3].clone();

    let (ok, st) = poll_status(&addr1, Duration::from_secs(10), |s| {
        s.voters == vec![1, 2, 3] && s.learners.is_empty()
    })
    .await;
    assert!(ok, "member 1 does not see voters 1, 2, 3: {st:?}");

    // Some data member 3 has before it dies.
    let all = Client::new(addrs.values().cloned().collect(), TOKEN);
    let mut last_before = 0;
    for i in 0..20u64 {
        let r = all
            .txn(Txn::put(
                format!("/snap/early/{i}"),
                json!({"metadata": {"name": format!("early-{i}")}, "data": {"counter": i}}),
            ))
            .await
            .unwrap();
        last_before = r.revision;
    }
    let (ok, st) = poll_status(&addr3, Duration::from_secs(30), |s| {
        s.applied >= last_before
    })
    .await;
    assert!(
        ok,
        "member 3 did not apply revision {last_before} before the kill: {st:?}"
    );
    let applied3 = st.unwrap().applied;

    let mut m3 = procs.pop().unwrap();
    m3.kill9();
    drop(m3);

    // Write far past the snapshot interval through the two live members.
    let live = Client::new(vec![addrs[&1].clone(), addrs[&2].clone()], TOKEN);
    let acked: Arc<Mutex<HashMap<String, Known>>> = Arc::default();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let live = live.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for n in 0..(WRITES / WRITERS) as u64 {
                    let key = format!("/snap/w{w}/{}", n % 10);
                    let counter = (w as u64) * 1_000_000 + n;
                    let value = json!({
                        "metadata": {"name": format!("w{w}-{}", n % 10)},
                        "data": {"counter": counter},
                    });
                    let r = live
                        .txn(Txn::put(key.clone(), value))
                        .await
                        .unwrap_or_else(|e| panic!("put {key} with two live members: {e}"));
                    assert!(r.succeeded);
                    let mut acked = acked.lock().unwrap();
                    let prev = acked.insert(
                        key.clone(),
                        Known {
                            revision: r.revision,
                            counter,
                        },
                    );
                    assert!(
                        prev.is_none_or(|p| p.revision < r.revision),
                        "{key}: later put acknowledged at lower revision {} than {prev:?}",
                        r.revision
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), WRITERS * 10);
    let last_rev = acked.values().map(|k| k.revision).max().unwrap();
    // Puts of different keys may share an entry, but each writer's own puts follow one
    // another, so there are at least as many new entries as one writer made puts.
    let per_writer = (WRITES / WRITERS) as u64;
    assert!(
        last_rev >= last_before + per_writer,
        "{WRITES} puts after revision {last_before} ended at revision {last_rev}"
    );

    // The leader must have snapshotted and purged past what member 3 had.
    let st1 = status(&addr1).await.unwrap();
    let leader = st1.leader.expect("member 1 knows no leader");
    assert!(
        leader == 1 || leader == 2,
        "leader is {leader}, not a live member"
    );
    let (ok, st) = poll_status(&addrs[&leader], Duration::from_secs(30), |s| {
        s.purged.is_some_and(|p| p > applied3)
    })
    .await;
    assert!(
        ok,
        "leader {leader} did not purge its log past {applied3}, the last entry member 3 \
         applied: {st:?}"
    );
    let purged = st.unwrap().purged.unwrap();

    // Restart member 3: same id, data and address, no --join.
    let (d3, l3) = (data(3), log(3));
    let m3 = spawn_blocking_ok(&MemberSpec {
        id: 3,
        data: &d3,
        listen: &addr3,
        join: None,
        snapshot_every: Some(SNAPSHOT_EVERY),
        min_free_mib: None,
        log: &l3,
    });
    assert_eq!(m3.addr, addr3, "member 3 came back at another address");
    procs.push(m3);

    let (ok, st) = poll_status(&addr3, Duration::from_secs(60), |s| s.applied >= last_rev).await;
    assert!(
        ok,
        "restarted member 3 did not catch up to revision {last_rev} within 60 s: {st:?}"
    );
    let st3 = st.unwrap();
    let snap = st3
        .snapshot
        .unwrap_or_else(|| panic!("member 3 caught up without a snapshot: {st3:?}"));
    assert!(
        snap > applied3,
        "member 3's snapshot ends at {snap}, not past what it had before the kill ({applied3}): \
         {st3:?}"
    );
    assert_eq!(st3.voters, vec![1, 2, 3], "member 3's view: {st3:?}");

    // Member 3 alone, serializable: its own state.
    let only3 = Client::new(vec![addr3.clone()], TOKEN);
    let mut keys: Vec<&String> = acked.keys().collect();
    keys.sort();
    for key in keys {
        let want = acked[key];
        let (rev, kv) = only3
            .get(key, Consistency::Serializable)
            .await
            .unwrap_or_else(|e| panic!("member 3: read {key}: {e}"));
        assert!(
            rev >= last_rev,
            "member 3 read {key} at {rev}, below {last_rev}"
        );
        let kv = kv.unwrap_or_else(|| panic!("member 3 does not have {key}"));
        check_resource_version(&kv);
        assert_eq!(
            (kv.mod_revision, counter_of(&kv)),
            (want.revision, want.counter),
            "member 3: {key} differs from the last acknowledged put"
        );
    }
    for i in 0..20u64 {
        let key = format!("/snap/early/{i}");
        let (_, kv) = only3.get(&key, Consistency::Serializable).await.unwrap();
        let kv = kv.unwrap_or_else(|| panic!("member 3 lost {key}"));
        assert_eq!(counter_of(&kv), i, "member 3: {key}");
    }

    eprintln!(
        "snapshot catch-up: member 3 applied {applied3} before the kill; {WRITES} puts up to \
         revision {last_rev}; leader {leader} purged up to {purged}; member 3 came back with \
         snapshot at {snap} and applied {}; {} keys equal; {:.1} s",
        st3.applied,
        acked.len() + 20,
        began.elapsed().as_secs_f64()
    );
}

/// Free bytes for unprivileged writers on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() * s.fragment_size()
}

/// `--min-free-mib` reaches the member: started again with a reserve above what its disk
/// has free, it answers a put with HTTP 507 and a message saying why, and still serves the
/// object written before. A reserve of 0 (off) lets the first put through on any disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_above_the_free_space_refuses_writes_and_keeps_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("member-1");
    let log = dir.path().join("member-1.log");
    let spec = |min_free_mib| MemberSpec {
        id: 1,
        data: &data,
        listen: "127.0.0.1:0",
        join: None,
        snapshot_every: None,
        min_free_mib: Some(min_free_mib),
        log: &log,
    };
    let key = "/core/ConfigMap/default/reserve";
    let obj = |n: u64| json!({"metadata": {"name": "reserve"}, "data": {"n": n.to_string()}});

    let mut proc = spawn_blocking_ok(&spec(0));
    let client = Client::new(vec![proc.addr.clone()], TOKEN);
    let written = client.txn(Txn::put(key, obj(1))).await.unwrap();
    assert!(written.succeeded);
    proc.kill9();
    drop(proc);

    // A GiB more than is free now (the flag takes up to 1 TiB, far above this disk).
    let over = free_bytes(dir.path()) / (1 << 20) + 1024;
    let proc = spawn_blocking_ok(&spec(over));
    let client = Client::new(vec![proc.addr.clone()], TOKEN);
    let stored_n = || async {
        let (_, kv) = client.get(key, Consistency::Linearizable).await.unwrap();
        kv.expect("the object written before").value["data"]["n"].clone()
    };
    assert_eq!(stored_n().await, "1");
    let refused = client.txn(Txn::put(key, obj(2))).await.unwrap_err();
    match &refused {
        coxswain_store::Error::Remote { status, message } => {
            assert_eq!(*status, 507, "{refused}");
            assert!(message.contains("nearly full"), "{message}");
        }
        other => panic!("expected a 507 from the member, got {other:?}"),
    }
    assert_eq!(stored_n().await, "1", "the refused put changed nothing");
}
