//! The whole loop, as root, through the real binary: `coxswain up` follows a temporary Git
//! repository made with `git`; a committed Deployment of busybox httpd becomes three real
//! processes answering HTTP at their pod IPs; a changed command rolls out within
//! `maxUnavailable`; a killed container comes back; a commit scales; a broken commit touches
//! nothing and its note names the file and line; deleting the file removes the pods with
//! their processes and cgroups; every commit's note ends in the right state; Ctrl-C leaves
//! nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coxswain_store::{Client, Consistency, Kv};
use serde_json::Value;

const NS: &str = "e2e";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn commit(repo: &Path, message: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: e2e\n";

/// The Deployment under test; `text` goes into the command (so changing it is a new pod
/// template) and ends up in the page each pod serves.
fn deployment(replicas: &str, text: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: e2e
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 1
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: httpd
          image: busybox:latest
          command: ["sh", "-c"]
          args: ["mkdir -p /www && echo {text} from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
          readinessProbe:
            tcpSocket:
              port: 8080
            periodSeconds: 1
"#
    )
}

/// `coxswain up`, its stdout read line by line; killed on drop if the test did not stop it.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Up {
    fn wait_line(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("coxswain up printed no line starting with {prefix:?}")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sandbox_key(pod: &Value) -> String {
    coxswain_node::runtime::sandbox_key(
        NS,
        pod["metadata"]["name"].as_str().unwrap(),
        pod["metadata"]["uid"].as_str().unwrap(),
    )
}

/// The pid of the pod's httpd container (its first run's record is replaced on a restart).
fn container_pid(state: &Path, pod: &Value) -> Option<i32> {
    let dir = common::run_dir(state)
        .join("sandboxes")
        .join(sandbox_key(pod));
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("httpd."))
        .filter_map(|e| common::pid_in(&e.path().join("container.json"), "/pid"))
        .find(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// The pod's cgroup directories that exist (v1: one per controller; v2: one).
fn cgroup_dirs(pod: &Value) -> Vec<PathBuf> {
    let key = sandbox_key(pod);
    ["memory", "cpu", "pids", "unified", ""]
        .iter()
        .map(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join("coxswain")
                .join(&key)
        })
        .filter(|p| p.is_dir())
        .collect()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap().to_string()
}

fn template_hash(pod: &Value) -> String {
    pod["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn http_get(ip: &str) -> std::io::Result<String> {
    let addr = format!("{ip}:8080").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET / HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn note(repo: &Path, commit: &str) -> String {
    let out = Command::new("git")
        .args(["notes", "--ref", "coxswain", "show", commit])
        .current_dir(repo)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_note(repo: &Path, commit: &str, state: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = note(repo, commit);
        if text.starts_with(&format!("coxswain: {state}")) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the note on {commit} never said {state}; it says:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Cluster {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Cluster {
    fn pods(&self) -> Vec<Value> {
        let page = self
            .rt
            .block_on(self.client.list(
                &format!("/core/Pod/{NS}/"),
                10_000,
                None,
                Consistency::Linearizable,
            ))
            .unwrap();
        page.items.into_iter().map(|kv| kv.value).collect()
    }

    /// Polls the pods until `done` says so.
    fn wait_pods(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let pods = self.pods();
            if done(&pods) {
                return pods;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: pods are {:#?}",
                pods.iter()
                    .map(|p| (name(p), p["status"].clone()))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn all_ready(n: usize) -> impl Fn(&[Value]) -> bool {
    move |pods| pods.len() == n && pods.iter().all(is_ready)
}

#[test]
fn a_committed_deployment_runs_rolls_heals_scales_and_goes_away() {
    if !common::require_root("a_committed_deployment_runs_rolls_heals_scales_and_goes_away") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let data = tmp.path().join("data");
    let state = tmp.path().join("node");
    let tag = std::process::id() % 10_000;
    let (node, bridge, cidr) = (
        format!("e2e-{tag}"),
        format!("cxe{tag}"),
        format!("10.126.{}.0/24", tag % 250),
    );
    let _leftovers = common::Leftovers {
        state: state.clone(),
        bridge: bridge.clone(),
    };
    std::fs::create_dir_all(repo.join("deploy")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("deploy/namespace.yaml"), NAMESPACE).unwrap();
    let c_namespace = commit(&repo, "the namespace");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coxswain"));
    cmd.arg("up")
        .arg("--repo")
        .arg(&repo)
        .args([
            "--path",
            "deploy",
            "--listen",
            "127.0.0.1:0",
            "--stop-grace",
            "2s",
        ])
        .arg("--data")
        .arg(&data)
        .args(["--name", &node, "--bridge", &bridge, "--pod-cidr", &cidr])
        .args(["--backoff-base", "0.2", "--metrics-period", "1"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--run-dir")
        .arg(common::run_dir(&state))
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let up = Up { child, lines };
    let listening = up.wait_line(
        "coxswain server: member 1 listening on ",
        Duration::from_secs(30),
    );
    let addr = listening.rsplit(' ').next().unwrap().to_string();
    let token = std::fs::read_to_string(data.join("token")).unwrap();
    let cluster = Cluster {
        rt: tokio::runtime::Runtime::new().unwrap(),
        client: Client::new(vec![addr.clone()], token.trim()),
    };
    wait_note(&repo, &c_namespace, "healthy", Duration::from_secs(30));

    // 1. Three replicas, timed from the commit to all Ready; each answers at its pod IP.
    std::fs::write(repo.join("deploy/web.yaml"), deployment("3", "v1")).unwrap();
    let started = Instant::now();
    let c_v1 = commit(&repo, "web: 3 replicas of httpd");
    let pods = cluster.wait_pods("3 Ready", Duration::from_secs(60), all_ready(3));
    println!(
        "commit -> all 3 pods Ready: {} ms",
        started.elapsed().as_millis()
    );
    for p in &pods {
        let ip = p["status"]["podIP"].as_str().unwrap();
        let body = http_get(ip).unwrap();
        assert!(
            body.contains(&format!("v1 from {}", name(p))),
            "{ip}: {body}"
        );
        assert_eq!(p["spec"]["nodeName"], node.as_str());
        let scheduled = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["status"] == "True");
        assert!(scheduled, "{p:#}");
    }
    wait_note(&repo, &c_v1, "healthy", Duration::from_secs(30));

    // `coxswain get` finds the running coxswain through its data folder.
    let out = Command::new(env!("CARGO_BIN_EXE_coxswain"))
        .args(["get", "pods", "-n", NS, "-o", "json", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    // `coxswain top` shows each pod's usage, sampled from its cgroups every second here.
    let names: BTreeSet<String> = pods.iter().map(name).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_coxswain"))
            .args(["top", "pods", "-n", NS, "--data"])
            .arg(&data)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        let shown: BTreeSet<String> = rows.iter().map(|r| r[0].to_owned()).collect();
        if shown == names {
            let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
            assert_eq!(header, ["NAME", "CPU(cores)", "MEMORY(bytes)"], "{text}");
            for r in &rows {
                assert!(r[1].ends_with('m') && r[2].ends_with("Mi"), "{text}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "top never showed the pods {names:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // 2. A changed command rolls out; sampled throughout, Ready pods never drop below
    // replicas - maxUnavailable = 2.
    let old: BTreeSet<String> = pods.iter().map(name).collect();
    let old_hash = template_hash(&pods[0]);
    std::fs::write(repo.join("deploy/web.yaml"), deployment("3", "v2")).unwrap();
    let c_v2 = commit(&repo, "web: v2");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut min_ready = usize::MAX;
    let mut samples = 0;
    let pods = loop {
        let pods = cluster.pods();
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        min_ready = min_ready.min(ready);
        samples += 1;
        let done = pods.len() == 3
            && pods
                .iter()
                .all(|p| is_ready(p) && !old.contains(&name(p)) && template_hash(p) != old_hash);
        if done {
            break pods;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish: {pods:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("rolling update: {samples} samples, at least {min_ready} of 3 Ready throughout");
    assert!(
        min_ready >= 2,
        "only {min_ready} pods were Ready at one point"
    );
    for p in &pods {
        let body = http_get(p["status"]["podIP"].as_str().unwrap()).unwrap();
        assert!(body.contains("v2 from"), "{body}");
    }
    wait_note(&repo, &c_v2, "healthy", Duration::from_secs(30));

    // 3. A killed container process comes back in the same pod.
    let victim = pods[0].clone();
    let pid = container_pid(&state, &victim).expect("the container's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let victim_name = name(&victim);
    let pods = cluster.wait_pods(
        "the killed container restarted",
        Duration::from_secs(60),
        |pods| {
            pods.len() == 3
                && pods.iter().all(is_ready)
                && pods.iter().any(|p| {
                    name(p) == victim_name
                        && p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1)
                })
        },
    );
    let back = pods.iter().find(|p| name(p) == victim_name).unwrap();
    let new_pid = container_pid(&state, back).expect("the restarted container's pid");
    assert_ne!(new_pid, pid);
    assert!(
        http_get(back["status"]["podIP"].as_str().unwrap())
            .unwrap()
            .contains("v2 from")
    );
    // The note dipped (a pod was not Ready) and recovers.
    wait_note(&repo, &c_v2, "healthy", Duration::from_secs(30));

    // 4. Scaling is a commit.
    std::fs::write(repo.join("deploy/web.yaml"), deployment("5", "v2")).unwrap();
    let c_scale = commit(&repo, "web: 5 replicas");
    let pods = cluster.wait_pods("5 Ready", Duration::from_secs(60), all_ready(5));
    let hash = template_hash(&pods[0]);
    assert!(
        pods.iter().all(|p| template_hash(p) == hash),
        "one template"
    );
    wait_note(&repo, &c_scale, "healthy", Duration::from_secs(30));

    // 5. A broken commit in between touches nothing, and its note names the file and line.
    let running: BTreeMap<String, i32> = pods
        .iter()
        .map(|p| (name(p), container_pid(&state, p).unwrap()))
        .collect();
    std::fs::write(repo.join("deploy/web.yaml"), deployment("lots", "v3")).unwrap();
    let c_bad = commit(&repo, "web: broken");
    let bad_note = wait_note(&repo, &c_bad, "failed", Duration::from_secs(30));
    assert!(bad_note.contains("web.yaml:7"), "{bad_note}");
    std::thread::sleep(Duration::from_secs(1));
    let now: BTreeMap<String, i32> = cluster
        .pods()
        .iter()
        .map(|p| (name(p), container_pid(&state, p).unwrap_or(-1)))
        .collect();
    assert_eq!(now, running, "the broken commit changed the running pods");

    // 6. Deleting the file removes the pods, their processes and their cgroups. One of two
    // objects is more than the prune guard lets through unasked, hence the trailer.
    let pods = cluster.pods();
    let cgroups: Vec<PathBuf> = pods.iter().flat_map(cgroup_dirs).collect();
    assert!(!cgroups.is_empty(), "no pod cgroup found to watch");
    let pids: Vec<i32> = common::all_pids(&state);
    assert!(pids.len() >= 10, "5 holders and 5 containers: {pids:?}");
    std::fs::remove_file(repo.join("deploy/web.yaml")).unwrap();
    let c_delete = commit(&repo, "web: gone\n\nCoxswain-Allow-Prune: yes");
    cluster.wait_pods("no pods", Duration::from_secs(60), <[Value]>::is_empty);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        || cgroups.iter().any(|c| c.exists())
    {
        assert!(
            Instant::now() < deadline,
            "left behind: processes {:?}, cgroups {:?}",
            pids.iter()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .collect::<Vec<_>>(),
            cgroups.iter().filter(|c| c.exists()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_note(&repo, &c_delete, "healthy", Duration::from_secs(30));

    // 7. Every commit's note ended in the right state.
    for (commit, state) in [
        (&c_namespace, "healthy"),
        (&c_v1, "healthy"),
        (&c_v2, "healthy"),
        (&c_scale, "healthy"),
        (&c_bad, "failed"),
        (&c_delete, "healthy"),
    ] {
        let text = note(&repo, commit);
        assert!(
            text.starts_with(&format!("coxswain: {state}")),
            "{commit}: {text}"
        );
    }

    // 8. Ctrl-C stops it cleanly: exit 0, the bridge gone.
    let mut up = up;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    up.wait_line("coxswain up: stopped", Duration::from_secs(30));
    let status = up.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "the bridge {bridge} outlived coxswain up"
    );
}
