#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Pod networking against the real kernel: a bridge with the gateway address, veth pairs into
//! real network namespaces (held by `unshare --net sleep`), reachability from the host and
//! between pods, egress through the masquerade rule, idempotent ensure/detach/teardown, and
//! refusals to touch interfaces that are not ours. Needs root.
//!
//! Every test has its own bridge (`cxt<pid><n>`), its own /24 from 10.244.0.0/16 and its own
//! namespaces, all removed by guards even when the test fails, so the tests run in parallel.
//! `ip_forward` is left on (the agent turns it on for good, as CNI's bridge plugin does).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use coxswain_node::Error;
use coxswain_node::net::{self, Bridge, BridgeConfig, POD_IF};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bridge name and pod CIDR no other test of this run uses (and, through the pid, unlikely
/// to be used by another run at the same time).
fn unique_config() -> (u32, BridgeConfig) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let name = format!("cxt{}{n}", pid % 10000);
    // 16 slots of 16 /24s by pid (more than this file has tests), the counter picks within
    // the slot.
    let third = (pid % 16) * 16 + n % 16;
    let cidr: Ipv4Net = format!("10.244.{third}.0/24").parse().unwrap();
    (third, BridgeConfig { name, cidr })
}

/// Host address `host` of `cidr` (`.host`).
fn host_addr(cidr: Ipv4Net, host: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + host)
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"))
}

fn stdout_of(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

fn nft_table_exists(table: &str) -> bool {
    run("nft", &["list", "table", "ip", table]).status.success()
}

/// Tears the test's bridge and table down on drop, whether or not `ensure` got that far.
struct BridgeGuard {
    name: String,
}

impl BridgeGuard {
    fn new(cfg: &BridgeConfig) -> Self {
        Self {
            name: cfg.name.clone(),
        }
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if let Err(e) = net::teardown(&self.name) {
            eprintln!("cleanup: teardown {}: {e}", self.name);
        }
    }
}

/// A network namespace held open by `unshare --net sleep`; the process is killed on drop,
/// which frees the namespace and with it the pod end of any veth.
struct PodNetns {
    child: Child,
}

impl PodNetns {
    fn spawn() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let netns = Self { child };
        // The child runs in our namespace until `unshare` has done its work: wait for the
        // link to point elsewhere before anyone uses the path.
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read_link(netns.path()) {
                Ok(theirs) if theirs != ours => break,
                _ => {}
            }
            assert!(Instant::now() < deadline, "unshare never made a namespace");
            std::thread::sleep(Duration::from_millis(2));
        }
        netns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.child.id()))
    }

    /// Runs a command inside the namespace.
    fn run(&self, args: &[&str]) -> Output {
        let netns = format!("--net={}", self.path().display());
        let mut all = vec![netns.as_str()];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    fn stdout_of(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nsenter {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes a host link made by the test itself on drop (an ifb standing in for a foreign interface, an outside veth).
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if link_exists(&self.0) {
            let out = run("ip", &["link", "del", "dev", &self.0]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: ip link del {}: {}",
                    self.0,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

fn ping_ok(out: &Output) -> bool {
    out.status.success()
}

/// One ping from the host (busybox's: this machine has no iputils).
fn host_pings(ip: Ipv4Addr) -> Output {
    run("busybox", &["ping", "-c", "1", "-W", "1", &ip.to_string()])
}

fn pod_pings(pod: &PodNetns, ip: Ipv4Addr) -> Output {
    pod.run(&["busybox", "ping", "-c", "1", "-W", "1", &ip.to_string()])
}

/// What a command printed, both streams, for failure messages.
fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn attach_gives_the_pod_eth0_its_address_a_default_route_and_host_reachability() {
    if !support::require_root(
        "attach_gives_the_pod_eth0_its_address_a_default_route_and_host_reachability",
    ) {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let gateway = host_addr(cfg.cidr, 1);
    assert_eq!(bridge.gateway(), gateway);
    assert_eq!(bridge.cidr(), cfg.cidr);
    assert_eq!(bridge.name(), cfg.name);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let bridge_addrs = stdout_of("ip", &["-4", "-o", "addr", "show", "dev", &cfg.name]);
    assert!(
        bridge_addrs.contains(&format!("inet {gateway}/24")),
        "{bridge_addrs}"
    );

    let pod = PodNetns::spawn();
    let ip = host_addr(cfg.cidr, 2);
    let host_if = net::host_if_name(&format!("attach-{}", cfg.name));
    let started = Instant::now();
    bridge.attach(&pod.path(), ip, &host_if).unwrap();
    eprintln!("attach took {:?}", started.elapsed());

    let addrs = pod.stdout_of(&["ip", "-4", "-o", "addr", "show", "dev", POD_IF]);
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    let routes = pod.stdout_of(&["ip", "-4", "route", "show"]);
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("default via {gateway} dev {POD_IF}"))),
        "{routes}"
    );
    let lo = pod.stdout_of(&["ip", "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "lo is not up: {lo}");
    let eth0 = pod.stdout_of(&["ip", "-o", "link", "show", "dev", POD_IF]);
    assert!(eth0.contains(",UP"), "eth0 is not up: {eth0}");

    let host_end = stdout_of("ip", &["-o", "link", "show", "dev", &host_if]);
    assert!(
        host_end.contains(&format!("master {}", cfg.name)),
        "{host_end}"
    );
    assert!(host_end.contains(",UP"), "host end is not up: {host_end}");
    let details = stdout_of("ip", &["-d", "-o", "link", "show", "dev", &host_if]);
    assert!(details.contains("hairpin on"), "no hairpin: {details}");

    let out = host_pings(ip);
    assert!(ping_ok(&out), "host cannot ping the pod: {}", printed(&out));
    // And the pod reaches its gateway (the bridge's address) the other way round.
    let out = pod_pings(&pod, gateway);
    assert!(
        ping_ok(&out),
        "pod cannot ping its gateway: {}",
        printed(&out)
    );

    bridge.detach(&host_if).unwrap();
}

#[test]
fn two_pods_on_one_bridge_reach_each_other() {
    if !support::require_root("two_pods_on_one_bridge_reach_each_other") {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let (pod_a, pod_b) = (PodNetns::spawn(), PodNetns::spawn());
    let (ip_a, ip_b) = (host_addr(cfg.cidr, 2), host_addr(cfg.cidr, 3));
    let (if_a, if_b) = (
        net::host_if_name(&format!("{}-a", cfg.name)),
        net::host_if_name(&format!("{}-b", cfg.name)),
    );
    bridge.attach(&pod_a.path(), ip_a, &if_a).unwrap();
    bridge.attach(&pod_b.path(), ip_b, &if_b).unwrap();

    let out = pod_pings(&pod_a, ip_b);
    assert!(ping_ok(&out), "a cannot ping b: {}", printed(&out));
    let out = pod_pings(&pod_b, ip_a);
    assert!(ping_ok(&out), "b cannot ping a: {}", printed(&out));

    // Detaching one pod leaves the other reachable (the bridge's address did not move).
    bridge.detach(&if_a).unwrap();
    let out = host_pings(ip_b);
    assert!(
        ping_ok(&out),
        "b unreachable after a left: {}",
        printed(&out)
    );
    let out = pod_pings(&pod_b, ip_a);
    assert!(!ping_ok(&out), "a still answers after its detach");
    bridge.detach(&if_b).unwrap();
}

#[test]
fn ensure_twice_keeps_one_bridge_one_address_one_masquerade_and_running_pods() {
    if !support::require_root(
        "ensure_twice_keeps_one_bridge_one_address_one_masquerade_and_running_pods",
    ) {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let first = Bridge::ensure(&cfg).unwrap();
    let pod = PodNetns::spawn();
    let ip = host_addr(cfg.cidr, 7);
    let host_if = net::host_if_name(&format!("{}-idem", cfg.name));
    first.attach(&pod.path(), ip, &host_if).unwrap();

    // An agent restart: ensure again (twice), as a fresh process would; the first of them
    // finds the bridge down (an admin's `ip link set down`) and brings it back up.
    stdout_of("ip", &["link", "set", "dev", &cfg.name, "down"]);
    let second = Bridge::ensure(&cfg).unwrap();
    let state = stdout_of("ip", &["-o", "link", "show", "dev", &cfg.name]);
    assert!(
        state.contains(",UP"),
        "ensure left the bridge down: {state}"
    );
    let third = Bridge::ensure(&cfg).unwrap();
    assert_eq!(first, second);
    assert_eq!(second, third);

    let bridges = stdout_of("ip", &["-o", "link", "show", "type", "bridge"]);
    let named = bridges
        .lines()
        .filter(|l| l.contains(&format!(": {}:", cfg.name)))
        .count();
    assert_eq!(named, 1, "{bridges}");
    let addrs = stdout_of("ip", &["-4", "-o", "addr", "show", "dev", &cfg.name]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");

    let table = stdout_of("nft", &["list", "table", "ip", third.nft_table()]);
    assert_eq!(table.matches("masquerade").count(), 1, "{table}");
    assert!(
        table.contains(&format!(
            "ip saddr {} oifname != \"{}\" masquerade",
            cfg.cidr, cfg.name
        )),
        "{table}"
    );
    assert_eq!(table.matches(" accept\n").count(), 2, "{table}");

    // The pod attached before the re-ensures still answers.
    let out = host_pings(ip);
    assert!(ping_ok(&out), "pod lost after re-ensure: {}", printed(&out));
    third.detach(&host_if).unwrap();
}

#[test]
fn masquerade_lets_pods_reach_a_network_that_has_no_route_back_to_them() {
    if !support::require_root("masquerade_lets_pods_reach_a_network_that_has_no_route_back_to_them")
    {
        return;
    }
    let (third, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let pod = PodNetns::spawn();
    let ip = host_addr(cfg.cidr, 2);
    let host_if = net::host_if_name(&format!("{}-nat", cfg.name));
    bridge.attach(&pod.path(), ip, &host_if).unwrap();

    // "Outside": another namespace behind its own veth, on 10.245.<third>.0/30, which knows
    // only that /30. Its replies reach the pod only if they go to the host's address there,
    // that is, if the host masqueraded the pod's packets on their way out.
    let outside = PodNetns::spawn();
    let outside_if = format!("cxo{}", cfg.name.trim_start_matches("cxt"));
    let _outside_link = LinkGuard(outside_if.clone());
    let outside_pid = outside.child.id().to_string();
    stdout_of(
        "ip",
        &[
            "link",
            "add",
            &outside_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &outside_pid,
        ],
    );
    let host_side = format!("10.245.{third}.1/30");
    let far_side = format!("10.245.{third}.2/30");
    stdout_of("ip", &["addr", "add", &host_side, "dev", &outside_if]);
    stdout_of("ip", &["link", "set", &outside_if, "up"]);
    outside.stdout_of(&["ip", "addr", "add", &far_side, "dev", "eth0"]);
    outside.stdout_of(&["ip", "link", "set", "eth0", "up"]);
    let routes = outside.stdout_of(&["ip", "-4", "route", "show"]);
    assert!(!routes.contains("default"), "{routes}");

    let far: Ipv4Addr = far_side.trim_end_matches("/30").parse().unwrap();
    let out = pod_pings(&pod, far);
    assert!(
        ping_ok(&out),
        "the pod cannot reach the outside namespace: {}",
        printed(&out)
    );

    // Without the table the same ping must fail: the NAT, not some route, made it work.
    let out = run("nft", &["delete", "table", "ip", bridge.nft_table()]);
    assert!(out.status.success(), "{}", printed(&out));
    // A new ping process uses a new ICMP id, so a new conntrack flow that no rule NATs.
    let out = pod_pings(&pod, far);
    assert!(
        !ping_ok(&out),
        "the outside answered without masquerade: the test proves nothing"
    );
    bridge.detach(&host_if).unwrap();
}

#[test]
fn detach_removes_the_host_veth_and_the_pod_eth0_and_twice_is_fine() {
    if !support::require_root("detach_removes_the_host_veth_and_the_pod_eth0_and_twice_is_fine") {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let pod = PodNetns::spawn();
    let host_if = net::host_if_name(&format!("{}-detach", cfg.name));
    bridge
        .attach(&pod.path(), host_addr(cfg.cidr, 9), &host_if)
        .unwrap();
    assert!(link_exists(&host_if));

    bridge.detach(&host_if).unwrap();
    assert!(!link_exists(&host_if), "host veth survived detach");
    let out = pod.run(&["ip", "link", "show", "dev", POD_IF]);
    assert!(!out.status.success(), "eth0 survived detach in the pod");
    bridge.detach(&host_if).unwrap();
    bridge.detach(&net::host_if_name("never-attached")).unwrap();

    // The same pod can be attached again afterwards (a restarted pod sandbox).
    bridge
        .attach(&pod.path(), host_addr(cfg.cidr, 9), &host_if)
        .unwrap();
    let out = host_pings(host_addr(cfg.cidr, 9));
    assert!(
        ping_ok(&out),
        "re-attached pod unreachable: {}",
        printed(&out)
    );
    bridge.detach(&host_if).unwrap();
}

#[test]
fn attach_returns_once_the_bridge_and_both_ends_pass_traffic() {
    if !support::require_root("attach_returns_once_the_bridge_and_both_ends_pass_traffic") {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    // A bridge made and brought up just before, as `ip` does it: its carrier comes on with
    // its first port, and the kernel takes that up to a second later (rate-limited), during
    // which the host's frames through the bridge are dropped.
    stdout_of("ip", &["link", "add", &cfg.name, "type", "bridge"]);
    stdout_of("ip", &["link", "set", &cfg.name, "up"]);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let pod = PodNetns::spawn();
    let host_if = net::host_if_name(&format!("{}-ready", cfg.name));
    let ip = host_addr(cfg.cidr, 12);
    bridge.attach(&pod.path(), ip, &host_if).unwrap();

    let sys = |path: String| std::fs::read_to_string(&path).unwrap().trim().to_string();
    let bridge_state = sys(format!("/sys/class/net/{}/operstate", cfg.name));
    let port_state = sys(format!("/sys/class/net/{host_if}/brport/state"));
    let host_state = sys(format!("/sys/class/net/{host_if}/operstate"));
    // `ip` prints the operational state; /sys inside the pod's namespace would still show the
    // host's interfaces.
    let pod_link = pod.stdout_of(&["ip", "-o", "link", "show", "dev", POD_IF]);
    assert_eq!(bridge_state, "up", "the bridge");
    assert_eq!(port_state, "3", "the host end's port state (3: forwarding)");
    assert_eq!(host_state, "up", "the host end");
    assert!(
        pod_link.contains(" state UP "),
        "the pod's eth0: {pod_link}"
    );
    let out = host_pings(ip);
    assert!(ping_ok(&out), "{ip} is unreachable: {}", printed(&out));
    bridge.detach(&host_if).unwrap();
}

#[test]
fn an_address_handed_to_a_new_pod_is_reached_at_once_despite_the_old_pods_arp_entry() {
    if !support::require_root(
        "an_address_handed_to_a_new_pod_is_reached_at_once_despite_the_old_pods_arp_entry",
    ) {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let ip = host_addr(cfg.cidr, 11);
    let old = PodNetns::spawn();
    let old_if = net::host_if_name(&format!("{}-old", cfg.name));
    bridge.attach(&old.path(), ip, &old_if).unwrap();
    let out = host_pings(ip);
    assert!(ping_ok(&out), "first pod unreachable: {}", printed(&out));
    bridge.detach(&old_if).unwrap();
    drop(old);
    // What the host holds for a while after talking to a pod that is gone: its MAC, still
    // REACHABLE (the kernel keeps it so for 15-45 s, then probes it).
    let stale_mac = "02:00:00:00:00:11";
    let ip_text = ip.to_string();
    stdout_of(
        "ip",
        &[
            "neigh",
            "replace",
            &ip_text,
            "lladdr",
            stale_mac,
            "dev",
            &cfg.name,
            "nud",
            "reachable",
        ],
    );
    assert!(stdout_of("ip", &["neigh", "show", &ip_text, "dev", &cfg.name]).contains(stale_mac));

    let new = PodNetns::spawn();
    let new_if = net::host_if_name(&format!("{}-new", cfg.name));
    bridge.attach(&new.path(), ip, &new_if).unwrap();
    let entry = stdout_of("ip", &["neigh", "show", &ip_text, "dev", &cfg.name]);
    assert!(
        !entry.contains(stale_mac),
        "the old pod's entry survived: {entry}"
    );
    let out = host_pings(ip);
    assert!(
        ping_ok(&out),
        "the new pod at {ip} is unreachable: {}",
        printed(&out)
    );
    bridge.detach(&new_if).unwrap();
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    if !support::require_root("a_failed_attach_leaves_nothing_behind") {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let pod = PodNetns::spawn();
    let host_if = net::host_if_name(&format!("{}-fail", cfg.name));

    // Bad inputs are refused before anything is made.
    for bad_ip in [
        host_addr(cfg.cidr, 1),
        host_addr(cfg.cidr, 255),
        Ipv4Addr::new(192, 0, 2, 77),
    ] {
        let err = bridge.attach(&pod.path(), bad_ip, &host_if).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{bad_ip}: {err}");
    }
    let err = bridge
        .attach(&pod.path(), host_addr(cfg.cidr, 2), "no/slash")
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let err = bridge
        .attach(
            &PathBuf::from("/proc/self/ns/does-not-exist"),
            host_addr(cfg.cidr, 2),
            &host_if,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // Not a namespace at all: setns refuses it.
    let err = bridge
        .attach(
            &PathBuf::from("/proc/self/status"),
            host_addr(cfg.cidr, 2),
            &host_if,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Sys { .. }), "{err}");
    assert!(!link_exists(&host_if));

    // The pod already has an eth0: the pair cannot be made, and no host end is left over.
    pod.stdout_of(&["ip", "link", "add", POD_IF, "type", "ifb"]);
    let err = bridge
        .attach(&pod.path(), host_addr(cfg.cidr, 2), &host_if)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sys {
                source: nix::errno::Errno::EEXIST,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        !link_exists(&host_if),
        "a failed attach left {host_if} behind"
    );

    // The pod already has the default route (say, a half-configured sandbox): the pair is
    // made, the route fails, and the pair is deleted again.
    pod.stdout_of(&["ip", "link", "del", POD_IF]);
    pod.stdout_of(&["ip", "link", "add", "ifbx9", "type", "ifb"]);
    pod.stdout_of(&["ip", "link", "set", "ifbx9", "up"]);
    pod.stdout_of(&["ip", "route", "add", "default", "dev", "ifbx9"]);
    let err = bridge
        .attach(&pod.path(), host_addr(cfg.cidr, 2), &host_if)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Sys {
                source: nix::errno::Errno::EEXIST,
                ..
            }
        ),
        "{err}"
    );
    assert!(!link_exists(&host_if), "a half-made pair was left behind");
    let out = pod.run(&["ip", "link", "show", "dev", POD_IF]);
    assert!(!out.status.success(), "eth0 left behind in the pod");
}

#[test]
fn ensure_refuses_a_non_bridge_and_teardown_leaves_it_alone() {
    if !support::require_root("ensure_refuses_a_non_bridge_and_teardown_leaves_it_alone") {
        return;
    }
    let (_, cfg) = unique_config();
    let _foreign = LinkGuard(cfg.name.clone());
    stdout_of("ip", &["link", "add", &cfg.name, "type", "ifb"]);
    let err = Bridge::ensure(&cfg).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let err = net::teardown(&cfg.name).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(
        link_exists(&cfg.name),
        "teardown deleted someone else's interface"
    );
    assert!(!nft_table_exists(&net::nft_table(&cfg.name)));
}

#[test]
fn ensure_refuses_a_bridge_with_another_address() {
    if !support::require_root("ensure_refuses_a_bridge_with_another_address") {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    // The pod CIDR changed under the same bridge name.
    let other = BridgeConfig {
        name: cfg.name.clone(),
        cidr: "10.246.0.0/24".parse().unwrap(),
    };
    let err = Bridge::ensure(&other).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let addrs = stdout_of("ip", &["-4", "-o", "addr", "show", "dev", &cfg.name]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");
    assert!(
        addrs.contains(&format!("inet {}/24", bridge.gateway())),
        "{addrs}"
    );
    // Invalid configs never reach the kernel.
    for (name, cidr) in [
        ("bad name!", "10.244.0.0/24"),
        ("sixteen-chars-xx", "10.244.0.0/24"),
        ("cxok", "10.244.0.0/31"),
    ] {
        let err = Bridge::ensure(&BridgeConfig {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
        })
        .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{name} {cidr}: {err}");
    }
    assert!(!link_exists("cxok"));
}

#[test]
fn detach_refuses_interfaces_that_are_not_pod_veths() {
    if !support::require_root("detach_refuses_interfaces_that_are_not_pod_veths") {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let foreign = format!("cxd{}", cfg.name.trim_start_matches("cxt"));
    let _foreign = LinkGuard(foreign.clone());
    stdout_of("ip", &["link", "add", &foreign, "type", "ifb"]);
    let err = bridge.detach(&foreign).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(link_exists(&foreign), "detach deleted a foreign interface");
    // Nor the bridge itself.
    let err = bridge.detach(bridge.name()).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    assert!(link_exists(bridge.name()));
}

#[test]
fn teardown_leaves_no_link_and_no_table_and_twice_is_fine() {
    if !support::require_root("teardown_leaves_no_link_and_no_table_and_twice_is_fine") {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    assert!(link_exists(&cfg.name));
    assert!(nft_table_exists(bridge.nft_table()));

    bridge.teardown().unwrap();
    assert!(!link_exists(&cfg.name), "bridge survived teardown");
    assert!(
        !nft_table_exists(bridge.nft_table()),
        "nft table survived teardown"
    );
    bridge.teardown().unwrap();
    net::teardown(&cfg.name).unwrap();

    // And it comes back after a teardown, as on the next `coxswain up`.
    let again = Bridge::ensure(&cfg).unwrap();
    assert!(link_exists(&cfg.name));
    assert!(nft_table_exists(again.nft_table()));
    again.teardown().unwrap();
    assert!(!link_exists(&cfg.name));
}

#[test]
fn many_pods_attach_in_parallel() {
    if !support::require_root("many_pods_attach_in_parallel") {
        return;
    }
    let (_, cfg) = unique_config();
    let _guard = BridgeGuard::new(&cfg);
    let bridge = Bridge::ensure(&cfg).unwrap();
    let pods: Vec<PodNetns> = (0..8).map(|_| PodNetns::spawn()).collect();
    let timings: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (bridge, cfg) = (&bridge, &cfg);
                scope.spawn(move || {
                    let ip = host_addr(cfg.cidr, 10 + i as u32);
                    let host_if = net::host_if_name(&format!("{}-par-{i}", cfg.name));
                    let started = Instant::now();
                    bridge.attach(&pod.path(), ip, &host_if).unwrap();
                    started.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("parallel attach timings: {timings:?}");
    for i in 0..pods.len() {
        let ip = host_addr(cfg.cidr, 10 + i as u32);
        let out = host_pings(ip);
        assert!(
            ping_ok(&out),
            "pod {i} ({ip}) unreachable: {}",
            printed(&out)
        );
    }
    for i in 0..pods.len() {
        bridge
            .detach(&net::host_if_name(&format!("{}-par-{i}", cfg.name)))
            .unwrap();
    }
}
