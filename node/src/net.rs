//! Pod networking, as the CNI `bridge` plugin with `host-local` IPAM gives it to Kubernetes
//! users: one Linux bridge per node holding the pod CIDR's gateway address, one veth pair per
//! pod (the host end a port of the bridge, the pod end `eth0` in the pod's network namespace
//! with the pod IP and a default route via the gateway), IP forwarding on, and an nftables
//! table of our own that masquerades pod traffic leaving the node. Pod IPs come from
//! [`crate::ipam`]; this module only wires them up.
//!
//! Links, addresses and routes go over rtnetlink. The rest of the runtime is blocking, so the
//! API is too: each call runs its netlink work on a short-lived thread with its own
//! current-thread tokio runtime. Work inside a pod's namespace needs that thread anyway: a
//! thread's network namespace is its own, so the worker `setns`es into the pod's namespace,
//! opens its netlink socket there (a netlink socket talks to the namespace it was created in),
//! and then ends, so the switch can never leak into another thread of the agent.
//!
//! Attaching a pod is one thread, two sockets (one opened before the `setns`, one after) and
//! a handful of round trips: the veth pair is created in one request with its host end already
//! enslaved to the bridge and up and its peer created directly inside the pod's namespace as
//! `eth0` (no temporary name on the host that could collide), then the host end is put in
//! hairpin mode while the pod side gets `lo` and `eth0` up, its address and its default route.
//! Nothing spawns a process per pod; `nft` runs only when the bridge is set up or torn down.
//!
//! Everything here is idempotent where Kubernetes expects it: [`Bridge::ensure`] on an agent
//! restart finds the bridge and keeps it (running pods keep their connectivity), the nftables
//! table is replaced atomically, and detaching a pod whose veth is already gone succeeds.
//!
//! The agent turns `net.ipv4.ip_forward` on and leaves it on, as every CNI bridge plugin does:
//! other bridges or containers on the host may rely on it by then, so turning it off on exit
//! would be the surprise.

use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    BridgePortState, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkGetRequest, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ipam;

/// The node bridge's name unless the agent's config says otherwise.
pub const DEFAULT_BRIDGE: &str = "cox0";

/// The pod's interface, named as Kubernetes users expect to find it.
pub const POD_IF: &str = "eth0";

/// The longest interface name Linux accepts (`IFNAMSIZ` less the terminating NUL).
pub const MAX_IF_NAME_LEN: usize = 15;

/// What [`host_if_name`] puts in front of the hash.
pub const HOST_IF_PREFIX: &str = "veth";

/// The prefix of the nftables table a bridge owns (`coxswain_<bridge>`).
pub const NFT_TABLE_PREFIX: &str = "coxswain_";

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Where Debian and most distributions install `nft`; a plain `nft` (looked up in `PATH`) is
/// the last resort, since an agent started by an init system may have a minimal `PATH`.
const NFT_CANDIDATES: [&str; 3] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"];

/// The `field` of the [`Error::Config`] this module returns for what has no errno.
const NET_FIELD: &str = "pod network";

/// The node bridge to set up: its name and the node's pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The bridge's interface name (e.g. [`DEFAULT_BRIDGE`]); at most [`MAX_IF_NAME_LEN`]
    /// characters of ASCII letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// The node's pod CIDR; host bits set (`10.244.0.5/24`) mean its network, as in
    /// [`ipam::Pool::open`].
    pub cidr: Ipv4Net,
}

/// The node bridge, present and configured: what [`Bridge::ensure`] returns. Plain data, so it
/// can be shared between threads and every method may run concurrently with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    name: String,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    index: u32,
    table: String,
}

impl Bridge {
    /// Makes the bridge exist as configured, creating what is missing and keeping what is
    /// there: the bridge (up, with the gateway address), `net.ipv4.ip_forward = 1` and the
    /// nftables table (masquerade for pod traffic leaving the node, accept for forwarded pod
    /// traffic). Safe to call on every agent start: pods attached to an existing bridge keep
    /// working.
    ///
    /// Fails with [`Error::Config`] for an invalid name or CIDR, or when an interface of that
    /// name exists but is not a bridge, or the bridge already has another IPv4 address (the
    /// pod CIDR changed: the CNI bridge plugin refuses too, since pods on the old range would
    /// silently lose their gateway). Netlink failures are [`Error::Sys`] with the errno.
    pub fn ensure(cfg: &BridgeConfig) -> Result<Bridge> {
        validate_if_name("bridge name", &cfg.name)?;
        let cidr = pod_cidr(cfg.cidr)?;
        let gateway = gateway_of(cidr);
        let name = cfg.name.as_str();
        let owned_name = cfg.name.clone();
        let index = run_on_worker(move || async move {
            let handle = connect("the host")?;
            let name = owned_name.as_str();
            let index = ensure_bridge_link(&handle, name, gateway).await?;
            ensure_gateway_address(&handle, name, index, gateway, cidr.prefix_len()).await?;
            Ok(index)
        })?;
        if enable_ip_forward()? {
            tracing::info!("turned on net.ipv4.ip_forward for pod traffic");
        }
        let table = nft_table(name);
        run_nft(
            &nat_ruleset(&table, name, cidr),
            "applying the pod NAT table",
        )?;
        tracing::info!(bridge = name, %cidr, %gateway, index, table, "pod network bridge ready");
        Ok(Bridge {
            name: cfg.name.clone(),
            cidr,
            gateway,
            index,
            table,
        })
    }

    /// The bridge's interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod CIDR (its network address, host bits cleared).
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The bridge's address and every pod's default gateway: the CIDR's first host address,
    /// the one [`ipam::Pool::gateway`] sets aside.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The bridge's interface index on the host.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The name of the nftables table (family `ip`) this bridge owns.
    pub fn nft_table(&self) -> &str {
        &self.table
    }

    /// Connects the pod whose network namespace is `netns` (e.g. `/proc/<pid>/ns/net`) with
    /// the address `ip`: a veth pair whose host end `host_if` (see [`host_if_name`]) is a port
    /// of the bridge (in hairpin mode) and whose pod end is [`POD_IF`] with `ip` in the
    /// bridge's CIDR, `lo` and `eth0` up and a default route via [`Bridge::gateway`]. The host
    /// then reaches `ip` through the bridge's connected route; it returns once the kernel
    /// passes the pod's traffic (see `wait_until_passing`).
    ///
    /// Either everything is in place or nothing is: a failure after the pair exists deletes it
    /// again, so the call can simply be retried. Fails with [`Error::Config`] for an address
    /// outside the pod range (or the network, gateway or broadcast address) or an invalid
    /// `host_if`, [`Error::Io`] if `netns` cannot be opened and [`Error::Sys`] for netlink and
    /// `setns` failures (`EEXIST`: `host_if` exists on the host or `eth0` in the pod already).
    pub fn attach(&self, netns: &Path, ip: Ipv4Addr, host_if: &str) -> Result<()> {
        validate_if_name("host interface name", host_if)?;
        check_pod_ip(self.cidr, ip)?;
        let netns_file =
            File::open(netns).map_err(Error::io("opening the pod's network namespace", netns))?;
        let started = Instant::now();
        let (bridge, netns_path, owned_if) =
            (self.clone(), netns.to_path_buf(), host_if.to_owned());
        run_on_worker(move || async move {
            bridge
                .attach_on_worker(&netns_file, &netns_path, ip, &owned_if)
                .await
        })?;
        tracing::debug!(
            bridge = %self.name,
            host_if,
            %ip,
            netns = %netns.display(),
            micros = started.elapsed().as_micros(),
            "attached pod to the bridge"
        );
        Ok(())
    }

    /// The body of [`Bridge::attach`], on the worker thread (whose namespace it changes).
    async fn attach_on_worker(
        &self,
        netns_file: &File,
        netns: &Path,
        ip: Ipv4Addr,
        host_if: &str,
    ) -> Result<()> {
        // The host socket first: after the setns below, new sockets belong to the pod.
        let host = connect("the host")?;
        nix::sched::setns(netns_file, CloneFlags::CLONE_NEWNET).map_err(Error::sys(format!(
            "entering the pod's network namespace {}",
            netns.display()
        )))?;
        let pod = connect("the pod's network namespace")?;

        // One request: the host end enslaved and up, the peer born inside the pod's namespace
        // as eth0. Had the peer been made on the host first, its temporary name could clash
        // with the host's own interfaces (the host has an eth0 too). The peer cannot be up
        // from birth: the kernel configures it before pairing it, and opening an unpaired
        // veth fails with ENOTCONN.
        let peer = LinkUnspec::new_with_name(POD_IF)
            .setns_by_fd(netns_file.as_raw_fd())
            .build();
        let veth = LinkVeth::new(host_if, POD_IF)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(self.index)
            .up()
            .build();
        host.link()
            .add(veth)
            .execute()
            .await
            .map_err(nl_error(format!(
                "creating veth {host_if} on bridge {} (index {}) with its peer {POD_IF} in {} \
             (EEXIST: one of the names is taken; ENODEV: the bridge is gone, ensure it again)",
                self.name,
                self.index,
                netns.display()
            )))?;

        // Hairpin lets a frame leave through the port it came in by: a pod that reaches a
        // Service whose backend is itself gets its own packet back through its own veth (the
        // CNI bridge plugin's `hairpinMode`, the kubelet's `hairpin-veth`). The kernel ignores
        // port settings in a request that creates the link, hence a request of its own, sent
        // alongside the pod side's (another socket, another namespace).
        let hairpin = async {
            let port = LinkMessageBuilder::<LinkBridgePort>::default()
                .name(host_if)
                .set_port_kind(InfoPortKind::Bridge)
                .hairpin(true)
                .build();
            host.link()
                .set_port(port)
                .execute()
                .await
                .map_err(nl_error(format!("turning on hairpin mode on {host_if}")))
        };
        let pod_side = configure_pod_side(&pod, ip, self.cidr.prefix_len(), self.gateway);
        let forget = forget_neighbour(&host, self.index, ip);
        let configured = async {
            futures::try_join!(hairpin, pod_side, forget)?;
            wait_until_passing(&host, &pod, self.index, host_if).await
        };
        if let Err(err) = configured.await {
            // Deleting the host end takes the peer with it, so a retry starts from nothing.
            if let Err(cleanup) = delete_link_by_name(&host, host_if).await {
                tracing::warn!(host_if, error = %cleanup, "could not remove a half-made veth");
            }
            return Err(err);
        }
        Ok(())
    }

    /// Disconnects a pod: deletes the host end `host_if` (the kernel deletes its peer in the
    /// pod's namespace with it). A veth that is already gone is not an error, so detaching
    /// twice, or after the pod's namespace died, succeeds.
    ///
    /// Refuses ([`Error::Config`]) to delete an interface that is not a veth, or one enslaved
    /// to another bridge: a wrong name must never take down the host's own interfaces.
    pub fn detach(&self, host_if: &str) -> Result<()> {
        validate_if_name("host interface name", host_if)?;
        let (bridge, host_if) = (self.clone(), host_if.to_owned());
        run_on_worker(move || async move {
            let host_if = host_if.as_str();
            let host = connect("the host")?;
            let Some(link) = find_link(&host, host_if).await? else {
                tracing::debug!(host_if, "veth already gone");
                return Ok(());
            };
            if link_kind(&link) != Some(&InfoKind::Veth) {
                return Err(Error::Config {
                    field: NET_FIELD.into(),
                    reason: format!("refusing to detach {host_if}: it is not a veth"),
                });
            }
            // A veth whose bridge was deleted has no controller any more; one enslaved to
            // another bridge belongs to someone else.
            if let Some(controller) = link_controller(&link)
                && controller != bridge.index
            {
                return Err(Error::Config {
                    field: NET_FIELD.into(),
                    reason: format!(
                        "refusing to detach {host_if}: it is a port of interface index \
                         {controller}, not of bridge {} (index {})",
                        bridge.name, bridge.index
                    ),
                });
            }
            match host.link().del(link.header.index).execute().await {
                Ok(()) => {}
                // Someone else (a concurrent detach, the pod's namespace going away) won.
                Err(err) if errno_of(&err) == Some(Errno::ENODEV) => {}
                Err(err) => return Err(nl_error(format!("deleting veth {host_if}"))(err)),
            }
            tracing::debug!(host_if, bridge = %bridge.name, "detached pod from the bridge");
            Ok(())
        })
    }

    /// Removes the bridge and its nftables table; see [`teardown`]. Meant for when no pod is
    /// attached any more (veths still enslaved are released by the kernel, not deleted).
    pub fn teardown(&self) -> Result<()> {
        teardown(&self.name)
    }
}

/// Removes the bridge `bridge_name` and its nftables table, whichever of them exists (so it
/// can clean up after a failed [`Bridge::ensure`], and running it twice is harmless). Refuses
/// ([`Error::Config`]) to delete an interface of that name that is not a bridge. Leaves
/// `ip_forward` on (see the module's documentation).
pub fn teardown(bridge_name: &str) -> Result<()> {
    validate_if_name("bridge name", bridge_name)?;
    let owned_name = bridge_name.to_owned();
    let link = run_on_worker(move || async move {
        let bridge_name = owned_name.as_str();
        let host = connect("the host")?;
        let Some(link) = find_link(&host, bridge_name).await? else {
            return Ok(());
        };
        if link_kind(&link) != Some(&InfoKind::Bridge) {
            return Err(Error::Config {
                field: NET_FIELD.into(),
                reason: format!("refusing to tear down {bridge_name}: it is not a bridge"),
            });
        }
        match host.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(err) if errno_of(&err) == Some(Errno::ENODEV) => Ok(()),
            Err(err) => Err(nl_error(format!("deleting bridge {bridge_name}"))(err)),
        }
    });
    // The table goes even if the link could not: a table without its bridge only costs rules.
    let table = run_nft(
        &delete_table_ruleset(&nft_table(bridge_name)),
        "deleting the pod NAT table",
    );
    link?;
    table?;
    tracing::info!(bridge = bridge_name, "pod network bridge torn down");
    Ok(())
}

/// The host-side veth name for a pod: [`HOST_IF_PREFIX`] and the first 11 hex digits of the
/// SHA-256 of `pod_key` (a pod UID, or `namespace/name`), 15 characters in all. Stable across
/// agent restarts, so a restarted agent finds (and can detach) the veths it made; 44 bits keep
/// collisions between the pods of one node out of the question.
pub fn host_if_name(pod_key: &str) -> String {
    const HEX_DIGITS: usize = MAX_IF_NAME_LEN - HOST_IF_PREFIX.len();
    let digest = Sha256::digest(pod_key.as_bytes());
    let mut name = String::with_capacity(MAX_IF_NAME_LEN);
    name.push_str(HOST_IF_PREFIX);
    for byte in digest.iter() {
        name.push_str(&format!("{byte:02x}"));
    }
    name.truncate(MAX_IF_NAME_LEN);
    debug_assert_eq!(name.len(), HOST_IF_PREFIX.len() + HEX_DIGITS);
    name
}

/// Checks an interface name this module will create, look up or write into an nftables
/// rule: 1 to [`MAX_IF_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_` and `.`, and not
/// `.` or `..`. Stricter than the kernel (which takes any byte but `/`, `:` and whitespace),
/// so that a name can never break out of the quoted string in a ruleset.
pub fn validate_if_name(field: &str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty".to_string()
    } else if name.len() > MAX_IF_NAME_LEN {
        format!(
            "is {} bytes long, more than the kernel's {MAX_IF_NAME_LEN}",
            name.len()
        )
    } else if name == "." || name == ".." {
        "must not be \".\" or \"..\"".to_string()
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "may only hold ASCII letters, digits, '-', '_' and '.'".to_string()
    } else {
        return Ok(());
    };
    Err(Error::Config {
        field: field.into(),
        reason: format!("{name:?} {reason}"),
    })
}

/// The nftables table (family `ip`) owned by the bridge `bridge_name`.
pub fn nft_table(bridge_name: &str) -> String {
    format!("{NFT_TABLE_PREFIX}{bridge_name}")
}

/// The CIDR the bridge serves: `cidr`'s network, refused when no pod address would be left.
fn pod_cidr(cidr: Ipv4Net) -> Result<Ipv4Net> {
    let cidr = cidr.trunc();
    if cidr.prefix_len() > ipam::MAX_PREFIX_LEN {
        return Err(Error::Config {
            field: "pod CIDR".into(),
            reason: format!(
                "{cidr} leaves no address for pods once the gateway is set aside (the prefix \
                 must be /{} or shorter)",
                ipam::MAX_PREFIX_LEN
            ),
        });
    }
    Ok(cidr)
}

/// The first host address of `cidr` (a truncated CIDR of /30 or shorter, so `+ 1` stays
/// inside it), as [`ipam::Pool::gateway`] computes it.
fn gateway_of(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()).saturating_add(1))
}

/// A pod address must be a host address of the pod CIDR other than the gateway.
fn check_pod_ip(cidr: Ipv4Net, ip: Ipv4Addr) -> Result<()> {
    let reason = if !cidr.contains(&ip) {
        format!("{ip} is outside the pod CIDR {cidr}")
    } else if ip == cidr.network() || ip == cidr.broadcast() {
        format!("{ip} is the network or broadcast address of {cidr}")
    } else if ip == gateway_of(cidr) {
        format!("{ip} is the gateway of {cidr}")
    } else {
        return Ok(());
    };
    Err(Error::Config {
        field: "pod IP".into(),
        reason,
    })
}

/// A stable, locally administered MAC for the bridge (`02:63:` and the gateway's octets). A
/// bridge without a set address takes the lowest MAC among its ports and changes it as pods
/// come and go, which leaves every other pod's ARP entry for the gateway stale; a set
/// address never changes.
fn bridge_mac(gateway: Ipv4Addr) -> Vec<u8> {
    let [a, b, c, d] = gateway.octets();
    vec![0x02, 0x63, a, b, c, d]
}

/// The ruleset that (re)creates the bridge's table in one `nft -f` transaction: declaring the
/// table first makes the `delete` succeed when it does not exist yet, and the transaction is
/// atomic, so traffic never sees a moment without the rules.
///
/// The forward chain only helps where other filter chains accept by default: an nftables
/// `accept` ends the packet's walk through this table's chain, not through the chains of
/// other tables at the same hook, so a host firewall that drops forwarded traffic in its own
/// table must allow the pod CIDR itself.
fn nat_ruleset(table: &str, bridge: &str, cidr: Ipv4Net) -> String {
    format!(
        "table ip {table} {{}}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cidr} oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {cidr} accept\n\
         \t\tip daddr {cidr} accept\n\
         \t}}\n\
         }}\n"
    )
}

/// Deletes `table` whether or not it exists (nft 1.0.6 has no `destroy`).
fn delete_table_ruleset(table: &str) -> String {
    format!("table ip {table} {{}}\ndelete table ip {table}\n")
}

/// Feeds `ruleset` to `nft -f -`.
fn run_nft(ruleset: &str, context: &str) -> Result<()> {
    let nft = NFT_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|path| path.exists())
        .map_or_else(|| PathBuf::from("nft"), Path::to_path_buf);
    let mut child = Command::new(&nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("{context}: starting nft"), &nft))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A few hundred bytes: the pipe takes them without nft having to read concurrently.
        stdin.write_all(ruleset.as_bytes()).map_err(Error::io(
            format!("{context}: writing the ruleset to nft"),
            &nft,
        ))?;
    }
    let output = child
        .wait_with_output()
        .map_err(Error::io(format!("{context}: waiting for nft"), &nft))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::Io {
            context: context.to_string(),
            path: nft,
            source: std::io::Error::other(format!(
                "nft -f - exited with {}: {}",
                output.status,
                stderr.trim()
            )),
        });
    }
    Ok(())
}

/// Turns on IPv4 forwarding; `Ok(true)` if it was off. Reads first, so an agent that lacks
/// the right to write (but finds it on already) does not fail.
fn enable_ip_forward() -> Result<bool> {
    let current =
        fs::read_to_string(IP_FORWARD).map_err(Error::io("reading ip_forward", IP_FORWARD))?;
    if current.trim() == "1" {
        return Ok(false);
    }
    fs::write(IP_FORWARD, "1\n").map_err(Error::io("turning on ip_forward", IP_FORWARD))?;
    Ok(true)
}

/// Runs `work` to completion on a new thread with its own current-thread runtime, and
/// returns its result. The thread ends soon after, taking any `setns` with it; the result is
/// handed back before the runtime and the thread are torn down (which costs as much again as
/// the netlink work in a debug build), so the caller does not wait for that.
fn run_on_worker<T, W, F>(work: W) -> Result<T>
where
    T: Send + 'static,
    W: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<T>>,
{
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("coxswain-net".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let result = runtime.block_on(work());
                    // The caller may go on now; dropping the runtime happens after.
                    let _ = sender.send(result);
                    return;
                }
                Err(err) => Err(Error::Config {
                    field: NET_FIELD.into(),
                    reason: format!("cannot start a netlink runtime: {err}"),
                }),
            };
            let _ = sender.send(result);
        })
        .map_err(|err| Error::Config {
            field: NET_FIELD.into(),
            reason: format!("cannot start a netlink worker thread: {err}"),
        })?;
    // The sender only goes away unsent if the worker panicked.
    receiver.recv().unwrap_or_else(|_| {
        Err(Error::Config {
            field: NET_FIELD.into(),
            reason: "the netlink worker thread panicked".into(),
        })
    })
}

/// Opens a netlink connection in the calling thread's network namespace and drives it on the
/// current runtime. Must run inside the runtime (the socket registers with its reactor).
fn connect(place: &str) -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|err| Error::Config {
        field: NET_FIELD.into(),
        reason: format!("cannot open a netlink socket in {place}: {err}"),
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Finds or creates the bridge `name` and makes sure it is up; returns its index.
async fn ensure_bridge_link(handle: &Handle, name: &str, gateway: Ipv4Addr) -> Result<u32> {
    let link = match find_link(handle, name).await? {
        Some(link) => link,
        None => {
            let bridge = LinkBridge::new(name).address(bridge_mac(gateway)).build();
            match handle.link().add(bridge).execute().await {
                Ok(()) => tracing::info!(bridge = name, "created the pod network bridge"),
                // A concurrent ensure made it first: fine, as long as it is a bridge.
                Err(err) if errno_of(&err) == Some(Errno::EEXIST) => {}
                Err(err) => return Err(nl_error(format!("creating bridge {name}"))(err)),
            }
            find_link(handle, name)
                .await?
                .ok_or_else(|| Error::Config {
                    field: NET_FIELD.into(),
                    reason: format!("bridge {name} vanished right after it was created"),
                })?
        }
    };
    if link_kind(&link) != Some(&InfoKind::Bridge) {
        return Err(Error::Config {
            field: "bridge name".into(),
            reason: format!("interface {name} exists and is not a bridge"),
        });
    }
    let index = link.header.index;
    if !link.header.flags.contains(LinkFlags::Up) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_error(format!("bringing bridge {name} up")))?;
    }
    Ok(index)
}

/// Gives the bridge the gateway address unless it has it; refuses a bridge that holds
/// another IPv4 address.
async fn ensure_gateway_address(
    handle: &Handle,
    name: &str,
    index: u32,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<()> {
    let addresses: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl_error(format!("listing the addresses of bridge {name}")))?;
    let mut has_gateway = false;
    for message in &addresses {
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS only differs from it on
        // point-to-point links.
        let local = message.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Local(std::net::IpAddr::V4(addr)) => Some(*addr),
            _ => None,
        });
        let Some(addr) = local.or_else(|| {
            message.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(std::net::IpAddr::V4(addr)) => Some(*addr),
                _ => None,
            })
        }) else {
            continue;
        };
        if addr == gateway && message.header.prefix_len == prefix_len {
            has_gateway = true;
        } else {
            return Err(Error::Config {
                field: "pod CIDR".into(),
                reason: format!(
                    "bridge {name} already has {addr}/{} instead of {gateway}/{prefix_len} (did \
                     the pod CIDR change? delete the bridge once no pod uses it)",
                    message.header.prefix_len
                ),
            });
        }
    }
    if !has_gateway {
        match handle
            .address()
            .add(index, gateway.into(), prefix_len)
            .execute()
            .await
        {
            Ok(()) => {}
            // A concurrent ensure added the same address.
            Err(err) if errno_of(&err) == Some(Errno::EEXIST) => {}
            Err(err) => {
                return Err(nl_error(format!(
                    "adding {gateway}/{prefix_len} to bridge {name}"
                ))(err));
            }
        }
    }
    Ok(())
}

/// Removes the host's ARP entry for `ip` on the bridge, if it has one. An address is handed
/// out again once its pod is gone, and the host keeps the entry of the pod that had it (the
/// old veth's MAC) REACHABLE for up to 45 s after its last use, then probes it for 8 s more:
/// until then every packet from the host (probes, a Service's traffic) to the new pod would go
/// to a MAC no one has. Without the entry the host asks again, and the new pod answers.
/// (The CNI bridge plugin sends a gratuitous ARP from the pod for the same reason; that also
/// reaches other pods' caches, which this does not.) A failure here is logged, not fatal: the
/// entry expires by itself in the end.
async fn forget_neighbour(host: &Handle, bridge: u32, ip: Ipv4Addr) -> Result<()> {
    let mut entry = NeighbourMessage::default();
    entry.header.family = AddressFamily::Inet;
    entry.header.ifindex = bridge;
    entry
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    match host.neighbours().del(entry).execute().await {
        Ok(()) => tracing::debug!(%ip, "forgot the host's ARP entry of an earlier pod"),
        Err(err) if errno_of(&err) == Some(Errno::ENOENT) => {}
        Err(err) => tracing::warn!(%ip, error = %err, "could not remove the host's ARP entry"),
    }
    Ok(())
}

/// How long [`Bridge::attach`] waits for the kernel to pass the new veth's traffic.
const LINK_READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the bridge and the host end `host_if` are up, the host end forwarding as a
/// bridge port, and the pod's `eth0` up. The kernel turns carrier changes into those states,
/// and gives a device its queue, in a work item of its own (linkwatch) that may run after
/// every request above has returned; until then frames through the device are dropped. For
/// the bridge it can be slower still: its carrier comes on with its first port, and the
/// kernel rate-limits such events of a bridge to one a second (a bridge made with `ip` and
/// given its first port at once came up after 0.93-1.02 s here). The host's first ARP
/// request lost so, it asks again only a second later; a probe or a one-second ping in that
/// window fails (the net tests did, under load). Past [`LINK_READY_TIMEOUT`] it warns and
/// returns: the link does come up in the end, and failing the pod for it would only start it
/// again.
async fn wait_until_passing(host: &Handle, pod: &Handle, bridge: u32, host_if: &str) -> Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(50);
    loop {
        let (bridge_link, host_end, pod_end) = futures::try_join!(
            find_link_by_index(host, bridge),
            find_link(host, host_if),
            find_link(pod, POD_IF)
        )?;
        let bridge_ready = bridge_link.as_ref().is_some_and(oper_up);
        let host_ready = host_end
            .as_ref()
            .is_some_and(|link| oper_up(link) && forwarding(link));
        let pod_ready = pod_end.as_ref().is_some_and(oper_up);
        if bridge_ready && host_ready && pod_ready {
            if started.elapsed() > Duration::from_millis(10) {
                tracing::debug!(
                    host_if,
                    millis = started.elapsed().as_millis(),
                    "waited for the pod's link to pass traffic"
                );
            }
            return Ok(());
        }
        if started.elapsed() >= LINK_READY_TIMEOUT {
            tracing::warn!(
                host_if,
                bridge_ready,
                host_ready,
                pod_ready,
                "the pod's link did not pass traffic within 2 s; going on"
            );
            return Ok(());
        }
        // The kernel usually gets there within a few hundred microseconds, and tokio's timer
        // rounds every sleep up to a millisecond, which a pod start would pay each time. This
        // thread and its runtime exist for this one call (see `run_on_worker`), so blocking
        // it holds up nothing else.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Whether the kernel reports the link's operational state as up (carrier seen).
fn oper_up(link: &LinkMessage) -> bool {
    link.attributes
        .iter()
        .any(|attr| matches!(attr, LinkAttribute::OperState(State::Up)))
}

/// Whether the link is a bridge port in the forwarding state.
fn forwarding(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|info| match info {
            LinkInfo::PortData(InfoPortData::BridgePort(port)) => port
                .iter()
                .any(|p| matches!(p, InfoBridgePort::State(BridgePortState::Forwarding))),
            _ => false,
        }),
        _ => false,
    })
}

/// Inside the pod's namespace: `lo` and `eth0` up, the address on `eth0`, the default route.
/// The independent requests go out together, so the whole costs three round trips.
async fn configure_pod_side(
    pod: &Handle,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<()> {
    let lo_up = async {
        pod.link()
            .set(LinkUnspec::new_with_name("lo").up().build())
            .execute()
            .await
            .map_err(nl_error("bringing lo up in the pod"))
    };
    let eth0_up = async {
        pod.link()
            .set(LinkUnspec::new_with_name(POD_IF).up().build())
            .execute()
            .await
            .map_err(nl_error(format!("bringing {POD_IF} up in the pod")))
    };
    // The address needs eth0's index, which only the pod's namespace knows.
    let eth0 = async {
        find_link(pod, POD_IF).await?.ok_or_else(|| Error::Config {
            field: NET_FIELD.into(),
            reason: format!("{POD_IF} is missing in the pod right after it was created"),
        })
    };
    let ((), (), eth0) = futures::try_join!(lo_up, eth0_up, eth0)?;
    pod.address()
        .add(eth0.header.index, ip.into(), prefix_len)
        .execute()
        .await
        .map_err(nl_error(format!(
            "adding {ip}/{prefix_len} to {POD_IF} in the pod"
        )))?;
    // The kernel finds the route's device from the gateway, reachable through eth0's
    // connected route that the address just created.
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .build();
    pod.route()
        .add(default_route)
        .execute()
        .await
        .map_err(nl_error(format!(
            "adding the default route via {gateway} in the pod"
        )))?;
    Ok(())
}

/// The link named `name`, or `None` if there is none.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let request = handle.link().get().match_name(name);
    first_link(request, || format!("looking up interface {name}")).await
}

/// The link with interface index `index`, or `None` if there is none.
async fn find_link_by_index(handle: &Handle, index: u32) -> Result<Option<LinkMessage>> {
    let request = handle.link().get().match_index(index);
    first_link(request, || format!("looking up interface index {index}")).await
}

/// What a lookup by name or index answers; the kernel's ENODEV is `None`.
async fn first_link(
    request: LinkGetRequest,
    context: impl FnOnce() -> String,
) -> Result<Option<LinkMessage>> {
    match request.execute().try_next().await {
        Ok(link) => Ok(link),
        Err(err) if errno_of(&err) == Some(Errno::ENODEV) => Ok(None),
        Err(err) => Err(nl_error(context())(err)),
    }
}

/// Deletes the link named `name`; already gone is fine.
async fn delete_link_by_name(handle: &Handle, name: &str) -> Result<()> {
    let message = LinkUnspec::new_with_name(name).build();
    match handle.link().del_with_message(message).execute().await {
        Ok(()) => Ok(()),
        Err(err) if errno_of(&err) == Some(Errno::ENODEV) => Ok(()),
        Err(err) => Err(nl_error(format!("deleting interface {name}"))(err)),
    }
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Controller(index) if *index != 0 => Some(*index),
        _ => None,
    })
}

/// The errno a netlink error carries, if it is one the kernel sent.
fn errno_of(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(message) => message
            .code
            .map(|code| Errno::from_raw(code.get().saturating_abs())),
        _ => None,
    }
}

/// A closure for `map_err` on a netlink result: the kernel's errno as [`Error::Sys`], anything
/// else (a malformed reply, a closed connection) as [`Error::Config`] with the text.
fn nl_error(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let context = context.into();
    move |err| match errno_of(&err) {
        Some(source) => Error::Sys { context, source },
        None => Error::Config {
            field: NET_FIELD.into(),
            reason: format!("{context}: {err}"),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn host_if_names_are_stable_short_and_distinct() {
        let a = host_if_name("6c6a5b0e-8f1a-4c39-9d2e-3b5e4f1a2c7d");
        assert_eq!(a, host_if_name("6c6a5b0e-8f1a-4c39-9d2e-3b5e4f1a2c7d"));
        assert_eq!(a.len(), MAX_IF_NAME_LEN);
        assert!(a.starts_with(HOST_IF_PREFIX), "{a}");
        assert!(
            a[HOST_IF_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit()),
            "{a}"
        );
        validate_if_name("host interface name", &a).unwrap();
        // SHA-256 of the empty string starts e3b0c44298f: the digits really are the hash's.
        assert_eq!(host_if_name(""), "vethe3b0c44298f");
        let names: std::collections::HashSet<_> = (0..1000)
            .map(|i| host_if_name(&format!("pod-{i}")))
            .collect();
        assert_eq!(names.len(), 1000);
    }

    #[test]
    fn interface_names_are_validated() {
        for good in ["cox0", "a", "br-pods_1.x", "vethe3b0c44298f"] {
            validate_if_name("n", good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "a b",
            "a/b",
            "a:b",
            "a\"b",
            "a;b",
            "é",
            "a\nb",
        ] {
            let err = validate_if_name("n", bad).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn gateway_is_the_first_host_like_ipam() {
        let dir = tempfile::tempdir().unwrap();
        for cidr in ["10.244.3.0/24", "10.88.0.77/16", "192.168.5.8/30"] {
            let cidr = pod_cidr(net(cidr)).unwrap();
            let pool = ipam::Pool::open(&dir.path().join(cidr.to_string().replace('/', "_")), cidr)
                .unwrap();
            assert_eq!(gateway_of(cidr), pool.gateway(), "{cidr}");
        }
        assert_eq!(pod_cidr(net("10.88.0.77/24")).unwrap(), net("10.88.0.0/24"));
        for cidr in ["10.0.0.0/31", "10.0.0.0/32"] {
            assert!(
                matches!(pod_cidr(net(cidr)), Err(Error::Config { .. })),
                "{cidr}"
            );
        }
    }

    #[test]
    fn pod_ips_must_be_host_addresses_other_than_the_gateway() {
        let cidr = net("10.244.3.0/24");
        check_pod_ip(cidr, addr("10.244.3.2")).unwrap();
        check_pod_ip(cidr, addr("10.244.3.254")).unwrap();
        for bad in [
            "10.244.3.0",
            "10.244.3.1",
            "10.244.3.255",
            "10.244.4.2",
            "8.8.8.8",
        ] {
            let err = check_pod_ip(cidr, addr(bad)).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn the_nat_ruleset_replaces_the_table_in_one_transaction() {
        let rules = nat_ruleset("coxswain_cox0", "cox0", net("10.244.0.0/24"));
        let lines: Vec<&str> = rules.lines().map(str::trim).collect();
        // Declare, delete, recreate: in this order, so the delete never fails.
        assert_eq!(lines[0], "table ip coxswain_cox0 {}");
        assert_eq!(lines[1], "delete table ip coxswain_cox0");
        assert_eq!(lines[2], "table ip coxswain_cox0 {");
        assert!(lines.contains(&"type nat hook postrouting priority srcnat; policy accept;"));
        assert!(lines.contains(&"ip saddr 10.244.0.0/24 oifname != \"cox0\" masquerade"));
        assert!(lines.contains(&"type filter hook forward priority filter; policy accept;"));
        assert!(lines.contains(&"ip saddr 10.244.0.0/24 accept"));
        assert!(lines.contains(&"ip daddr 10.244.0.0/24 accept"));
        assert_eq!(rules.matches("masquerade").count(), 1);
        assert_eq!(
            delete_table_ruleset("coxswain_cox0"),
            "table ip coxswain_cox0 {}\ndelete table ip coxswain_cox0\n"
        );
        assert_eq!(nft_table("cox0"), "coxswain_cox0");
    }

    #[test]
    fn the_bridge_mac_is_fixed_and_locally_administered_unicast() {
        let mac = bridge_mac(addr("10.244.3.1"));
        assert_eq!(mac, vec![0x02, 0x63, 10, 244, 3, 1]);
        // Bit 1 of the first octet: locally administered; bit 0: unicast.
        assert_eq!(mac[0] & 0b11, 0b10);
    }

    #[test]
    fn netlink_errnos_become_sys_errors() {
        let mut message = rtnetlink::packet_core::ErrorMessage::default();
        message.code = std::num::NonZeroI32::new(-libc_enodev());
        let err = rtnetlink::Error::NetlinkError(message);
        assert_eq!(errno_of(&err), Some(Errno::ENODEV));
        match nl_error("looking up x")(err) {
            Error::Sys { context, source } => {
                assert_eq!(context, "looking up x");
                assert_eq!(source, Errno::ENODEV);
            }
            other => panic!("expected Sys, got {other:?}"),
        }
        let other = nl_error("y")(rtnetlink::Error::RequestFailed);
        assert!(matches!(other, Error::Config { .. }), "{other}");
    }

    fn libc_enodev() -> i32 {
        Errno::ENODEV as i32
    }
}
