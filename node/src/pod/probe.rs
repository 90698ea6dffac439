//! Container probes: the [`Prober`] seam the worker calls, the real [`NetProber`] (HTTP GET,
//! TCP connect, exec), and the bookkeeping of one probe's schedule and thresholds
//! ([`ProbeTracker`]), which follows the kubelet's prober worker:
//!
//! - nothing runs before `initialDelaySeconds` after the container started; then one probe
//!   every `periodSeconds` (default 10), each allowed `timeoutSeconds` (default 1);
//! - the result flips only after `successThreshold` (default 1) successes or
//!   `failureThreshold` (default 3) failures in a row;
//! - a probe that could not be run at all (the runtime failed, not the container) changes
//!   nothing, as the kubelet throws such results away;
//! - before their first verdict, liveness counts as passing, readiness as failing and startup
//!   as not yet started.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use coxswain_schema::intorstr::IntOrString;
use coxswain_schema::kinds::pod::{Container, HttpGetAction, Probe, Scheme, TcpSocketAction};

use crate::runtime::{ContainerId, Runtime, Sandbox};

/// How one probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Success,
    /// The container answered wrong, or not in time; the text says how.
    Failure(String),
    /// The probe could not be run (the runtime failed); it counts neither way.
    Unknown(String),
}

/// Runs one probe against one container. The real one is [`NetProber`]; tests script one.
pub trait Prober: Send + Sync + fmt::Debug {
    fn probe(
        &self,
        probe: &Probe,
        container: &Container,
        id: &ContainerId,
        sandbox: &Sandbox,
        runtime: &dyn Runtime,
    ) -> ProbeOutcome;
}

/// The real prober: `httpGet` as a plain HTTP/1.1 request over a TCP stream, `tcpSocket` as a
/// connect, `exec` through the runtime, each bounded by the probe's `timeoutSeconds`.
///
/// As the kubelet does, HTTP and TCP probes go to the pod's IP unless the probe names a
/// `host` (a pod on the host's network is probed on `127.0.0.1`), a named port is looked up
/// in the container's `ports`, and an HTTP status from 200 to 399 is a success. Redirects are
/// not followed (a 3xx already counts as a success), and `scheme: HTTPS` is refused: there is
/// no TLS client in the node agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetProber;

/// The most of an HTTP response read to find its status line.
const STATUS_LINE_LIMIT: usize = 4096;

impl Prober for NetProber {
    fn probe(
        &self,
        probe: &Probe,
        container: &Container,
        id: &ContainerId,
        sandbox: &Sandbox,
        runtime: &dyn Runtime,
    ) -> ProbeOutcome {
        let timeout = Timing::of(probe).timeout;
        if let Some(exec) = &probe.exec {
            let argv = exec.command.clone().unwrap_or_default();
            exec_probe(runtime, id, &argv, timeout)
        } else if let Some(http) = &probe.http_get {
            http_get(http, container, sandbox, timeout)
        } else if let Some(tcp) = &probe.tcp_socket {
            tcp_socket(tcp, container, sandbox, timeout)
        } else {
            ProbeOutcome::Unknown("the probe has no handler".to_owned())
        }
    }
}

/// Runs a command in the container: success is exit status 0; running past the timeout is a
/// failure (the kubelet's `ExecProbeTimeout` behaviour).
pub fn exec_probe(
    runtime: &dyn Runtime,
    id: &ContainerId,
    argv: &[String],
    timeout: Duration,
) -> ProbeOutcome {
    if argv.is_empty() {
        return ProbeOutcome::Failure("exec probe has no command".to_owned());
    }
    match runtime.exec(id, argv, timeout) {
        Ok(out) => match out.exit_code {
            Some(0) => ProbeOutcome::Success,
            Some(code) => {
                let output = String::from_utf8_lossy(&out.output);
                ProbeOutcome::Failure(format!(
                    "command {argv:?} exited with {code}: {}",
                    output.trim_end()
                ))
            }
            None => ProbeOutcome::Failure(format!(
                "command {argv:?} timed out after {}",
                super::backoff::go_duration(timeout)
            )),
        },
        Err(e) => ProbeOutcome::Unknown(format!("exec {argv:?} in {id}: {e}")),
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            // Kubernetes accepts a numeric string too.
            if let Ok(n) = name.parse::<i32>() {
                n
            } else {
                container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| p.container_port)
                    .ok_or_else(|| format!("container has no port named {name:?}"))?
            }
        }
    };
    u16::try_from(number)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("port {number} is out of range"))
}

/// The host a probe connects to: its own `host`, else the pod's IP.
fn probe_host(host: Option<&str>, sandbox: &Sandbox) -> String {
    match host.filter(|h| !h.is_empty()) {
        Some(h) => h.to_owned(),
        None => sandbox.pod_ip.unwrap_or(Ipv4Addr::LOCALHOST).to_string(),
    }
}

fn resolve_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1)))
        .map_err(|e| format!("dial tcp {addr}: {e}"))
}

/// `tcpSocket`: success when a connection opens within the timeout.
pub fn tcp_socket(
    action: &TcpSocketAction,
    container: &Container,
    sandbox: &Sandbox,
    timeout: Duration,
) -> ProbeOutcome {
    let run = || -> Result<(), String> {
        let port = resolve_port(&action.port, container)?;
        let addr = resolve_addr(&probe_host(action.host.as_deref(), sandbox), port)?;
        connect(addr, timeout).map(drop)
    };
    match run() {
        Ok(()) => ProbeOutcome::Success,
        Err(e) => ProbeOutcome::Failure(e),
    }
}

/// `httpGet`: one `GET` with `Connection: close`; success on a status from 200 to 399.
pub fn http_get(
    action: &HttpGetAction,
    container: &Container,
    sandbox: &Sandbox,
    timeout: Duration,
) -> ProbeOutcome {
    match http_status(action, container, sandbox, timeout) {
        Ok(code) if (200..400).contains(&code) => ProbeOutcome::Success,
        Ok(code) => ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
        Err(e) => ProbeOutcome::Failure(e),
    }
}

fn http_status(
    action: &HttpGetAction,
    container: &Container,
    sandbox: &Sandbox,
    timeout: Duration,
) -> Result<u16, String> {
    if action.scheme == Some(Scheme::HTTPS) {
        return Err("HTTPS probes are not supported: the node agent has no TLS client".to_owned());
    }
    let deadline = Instant::now() + timeout;
    let port = resolve_port(&action.port, container)?;
    let host = probe_host(action.host.as_deref(), sandbox);
    let addr = resolve_addr(&host, port)?;
    let request = http_request(action, &host, port)?;

    let mut stream = connect(addr, timeout)?;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "Get http://{addr}: timeout after {}",
                    super::backoff::go_duration(timeout)
                )
            })
    };
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        if head.len() >= STATUS_LINE_LIMIT {
            return Err(format!("{addr} sent no HTTP status line"));
        }
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(|e| e.to_string())?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "Get http://{addr}: timeout after {}",
                    super::backoff::go_duration(timeout)
                ));
            }
            Err(e) => return Err(format!("reading from {addr}: {e}")),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head).ok_or_else(|| format!("{addr} sent no HTTP status line"))
}

/// The request line and headers. Refuses a CR or LF in the path or a header, which would let
/// a manifest smuggle a second request.
fn http_request(action: &HttpGetAction, host: &str, port: u16) -> Result<String, String> {
    let clean = |what: &str, s: &str| {
        if s.contains(['\r', '\n']) {
            Err(format!("{what} {s:?} has a line break"))
        } else {
            Ok(())
        }
    };
    let mut path = action.path.clone().unwrap_or_default();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    clean("path", &path)?;
    let headers = action.http_headers.as_deref().unwrap_or_default();
    for h in headers {
        clean("header", &h.name)?;
        clean("header", &h.value)?;
    }
    let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        if host.contains(':') {
            req.push_str(&format!("Host: [{host}]:{port}\r\n"));
        } else {
            req.push_str(&format!("Host: {host}:{port}\r\n"));
        }
    }
    if !has("user-agent") {
        req.push_str("User-Agent: kube-probe/coxswain\r\n");
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for h in headers {
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("Connection: close\r\n\r\n");
    Ok(req)
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// A probe's timing fields with Kubernetes' defaults (and its minimum of 1 where 0 or less
/// would mean nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(default).max(min)).unwrap_or(0))
        };
        let count =
            |v: Option<i32>, default: i32| u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1);
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0, 0),
            period: secs(probe.period_seconds, 10, 1),
            timeout: secs(probe.timeout_seconds, 1, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// The schedule and verdict of one probe of one running container.
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    pub timing: Timing,
    /// When it runs next.
    pub due: Instant,
    /// The verdict so far: `None` before the first one (for startup probes).
    pub result: Option<bool>,
    /// The outcome of the latest run and how many in a row had it.
    last: Option<bool>,
    run: u32,
    /// Until the first success, the wait after a failure (see [`ProbeTracker::ramp_up`]).
    ramp: Option<Duration>,
}

/// The first retry of a readiness probe that failed before it ever passed.
pub const RAMP_FIRST: Duration = Duration::from_millis(25);

impl ProbeTracker {
    /// A tracker for a container that started at `started`; its first run is due
    /// `initialDelaySeconds` later, but never before `not_before`.
    pub fn new(
        probe: &Probe,
        started: Instant,
        not_before: Instant,
        initial: Option<bool>,
    ) -> Self {
        let timing = Timing::of(probe);
        let due = started
            .checked_add(timing.initial_delay)
            .unwrap_or(started)
            .max(not_before);
        Self {
            timing,
            due,
            result: initial,
            last: None,
            run: 0,
            ramp: None,
        }
    }

    /// Until its first success, retries a failed run after [`RAMP_FIRST`], doubling up to
    /// the period, instead of a whole period later.
    ///
    /// Meant for a readiness probe of a container that is not Ready yet: its first run comes
    /// right after the exec, often before the server listens, and the kubelet would then keep
    /// the pod unready for a full `periodSeconds` (1 s at least) although it is ready a few
    /// milliseconds later. A failure there changes nothing (the container is not Ready
    /// already), so probing sooner costs a handful of extra probes at most (six before the
    /// ramp reaches a 1 s period) and never an action. Liveness and startup probes keep
    /// Kubernetes' cadence: their failures count towards a restart.
    pub fn ramp_up(mut self) -> Self {
        self.ramp = Some(RAMP_FIRST);
        self
    }

    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.due
    }

    /// Records an outcome at `now` and schedules the next run. Returns the verdict when this
    /// outcome reached a threshold (`Some(true)`: success, `Some(false)`: failure), `None`
    /// while the run is below it or the probe could not run.
    pub fn record(&mut self, outcome: &ProbeOutcome, now: Instant) -> Option<bool> {
        let mut wait = self.timing.period;
        if matches!(outcome, ProbeOutcome::Success) {
            self.ramp = None;
        } else if let Some(ramp) = self.ramp {
            wait = ramp.min(wait);
            self.ramp = Some(ramp.saturating_mul(2)).filter(|r| *r < self.timing.period);
        }
        self.due = now.checked_add(wait).unwrap_or(now);
        let ok = match outcome {
            ProbeOutcome::Success => true,
            ProbeOutcome::Failure(_) => false,
            ProbeOutcome::Unknown(_) => return None,
        };
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.timing.success_threshold
        } else {
            self.timing.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        self.result = Some(ok);
        Some(ok)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;

    use coxswain_schema::kinds::pod::{ContainerPort, ExecAction, HttpHeader};

    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerSpec, Rootfs, SandboxSpec};

    fn sandbox_on_localhost() -> Sandbox {
        Sandbox {
            key: "ns_p_u".into(),
            pid: 1,
            pod_ip: Some(Ipv4Addr::LOCALHOST),
            host_network: false,
            share_process_namespace: false,
        }
    }

    fn container_with_port(name: &str, port: u16) -> Container {
        Container {
            name: "c".into(),
            image: "img".into(),
            ports: Some(vec![ContainerPort {
                name: Some(name.into()),
                container_port: i32::from(port),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    /// Serves one connection with `response`, and hands back the request it read.
    fn serve_once(response: &'static str) -> (u16, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            conn.write_all(response.as_bytes()).unwrap();
            String::from_utf8(req).unwrap()
        });
        (port, handle)
    }

    fn get(port: IntOrString, path: &str) -> HttpGetAction {
        HttpGetAction {
            path: Some(path.into()),
            port,
            host: None,
            scheme: None,
            http_headers: Some(vec![HttpHeader {
                name: "X-Probe".into(),
                value: "yes".into(),
            }]),
        }
    }

    #[test]
    fn http_get_succeeds_on_2xx_and_3xx_and_sends_a_well_formed_request() {
        for (response, ok) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            ("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", true),
            ("HTTP/1.0 404 Not Found\r\n\r\n", false),
            ("HTTP/1.1 500 Internal Server Error\r\n\r\n", false),
        ] {
            let (port, server) = serve_once(response);
            // The named port resolves through the container's ports.
            let c = container_with_port("http", port);
            let out = http_get(
                &get(IntOrString::String("http".into()), "healthz"),
                &c,
                &sandbox_on_localhost(),
                Duration::from_secs(2),
            );
            let req = server.join().unwrap();
            assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
            assert!(
                req.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
                "{req}"
            );
            assert!(req.contains("X-Probe: yes\r\n"), "{req}");
            assert!(req.contains("Connection: close\r\n"), "{req}");
            assert_eq!(out == ProbeOutcome::Success, ok, "{response:?}: {out:?}");
            if !ok {
                let code = &response[9..12];
                assert_eq!(
                    out,
                    ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
                );
            }
        }
    }

    #[test]
    fn http_get_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, then says nothing until the client has given up.
        let server = thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            thread::sleep(Duration::from_millis(600));
            drop(conn);
        });
        let started = Instant::now();
        let out = http_get(
            &get(IntOrString::Int(i32::from(port)), "/"),
            &Container::default(),
            &sandbox_on_localhost(),
            Duration::from_millis(200),
        );
        let took = started.elapsed();
        server.join().unwrap();
        assert!(
            matches!(&out, ProbeOutcome::Failure(m) if m.contains("timeout")),
            "{out:?}"
        );
        assert!(took < Duration::from_millis(550), "took {took:?}");
    }

    #[test]
    fn http_get_refuses_line_breaks_and_https_and_unknown_ports() {
        let mut bad = get(IntOrString::Int(1), "/a\r\nX: y");
        let out = http_get(
            &bad,
            &Container::default(),
            &sandbox_on_localhost(),
            Duration::from_secs(1),
        );
        assert!(
            matches!(&out, ProbeOutcome::Failure(m) if m.contains("line break")),
            "{out:?}"
        );
        bad.path = Some("/".into());
        bad.scheme = Some(Scheme::HTTPS);
        let out = http_get(
            &bad,
            &Container::default(),
            &sandbox_on_localhost(),
            Duration::from_secs(1),
        );
        assert!(
            matches!(&out, ProbeOutcome::Failure(m) if m.contains("HTTPS")),
            "{out:?}"
        );
        let named = get(IntOrString::String("metrics".into()), "/");
        let out = http_get(
            &named,
            &Container::default(),
            &sandbox_on_localhost(),
            Duration::from_secs(1),
        );
        assert!(
            matches!(&out, ProbeOutcome::Failure(m) if m.contains("no port named")),
            "{out:?}"
        );
    }

    #[test]
    fn tcp_socket_succeeds_only_when_something_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let action = TcpSocketAction {
            port: IntOrString::Int(i32::from(port)),
            host: None,
        };
        let c = Container::default();
        let out = tcp_socket(&action, &c, &sandbox_on_localhost(), Duration::from_secs(1));
        assert_eq!(out, ProbeOutcome::Success);
        drop(listener);
        let out = tcp_socket(&action, &c, &sandbox_on_localhost(), Duration::from_secs(1));
        assert!(matches!(out, ProbeOutcome::Failure(_)), "{out:?}");
    }

    #[test]
    fn exec_probes_go_through_the_runtime() {
        let rt = Arc::new(FakeRuntime::new());
        let sandbox = rt
            .run_sandbox(&SandboxSpec {
                key: "ns_p_u".into(),
                hostname: "p".into(),
                host_network: false,
                share_process_namespace: false,
                resources: Default::default(),
            })
            .unwrap();
        let spec = ContainerSpec {
            name: "app".into(),
            attempt: 0,
            rootfs: Rootfs::Host,
            argv: vec!["sleep".into()],
            env: vec![],
            working_dir: None,
            user: None,
            group: None,
            mounts: vec![],
            resources: Default::default(),
            read_only_root_filesystem: false,
            add_capabilities: vec![],
            drop_capabilities: vec![],
        };
        let id = rt.start_container(&sandbox, &spec).unwrap();
        let probe = Probe {
            exec: Some(ExecAction {
                command: Some(vec!["check".into()]),
            }),
            ..Default::default()
        };
        let c = Container::default();
        assert_eq!(
            NetProber.probe(&probe, &c, &id, &sandbox, rt.as_ref()),
            ProbeOutcome::Success
        );
        rt.set_exec_result("app", 3);
        let out = NetProber.probe(&probe, &c, &id, &sandbox, rt.as_ref());
        assert!(
            matches!(&out, ProbeOutcome::Failure(m) if m.contains("exited with 3")),
            "{out:?}"
        );
        rt.set_exec_timed_out("app");
        let out = NetProber.probe(&probe, &c, &id, &sandbox, rt.as_ref());
        assert!(
            matches!(&out, ProbeOutcome::Failure(m) if m.contains("timed out")),
            "{out:?}"
        );
        // A container that is gone cannot be probed: that counts neither way.
        rt.exit(&id, 0);
        let out = NetProber.probe(&probe, &c, &id, &sandbox, rt.as_ref());
        assert!(matches!(out, ProbeOutcome::Unknown(_)), "{out:?}");
    }

    #[test]
    fn timing_defaults_follow_kubernetes() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.initial_delay, Duration::ZERO);
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        let t = Timing::of(&Probe {
            period_seconds: Some(0),
            timeout_seconds: Some(-1),
            failure_threshold: Some(0),
            ..Default::default()
        });
        assert_eq!(
            (t.period, t.timeout),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
        assert_eq!(t.failure_threshold, 1);
    }

    #[test]
    fn thresholds_need_runs_in_a_row_and_unknown_counts_neither_way() {
        let t0 = Instant::now();
        let probe = Probe {
            initial_delay_seconds: Some(5),
            period_seconds: Some(2),
            success_threshold: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        };
        let mut p = ProbeTracker::new(&probe, t0, t0, Some(false));
        assert!(!p.is_due(t0 + Duration::from_secs(4)));
        assert!(p.is_due(t0 + Duration::from_secs(5)));
        let fail = ProbeOutcome::Failure("no".into());
        let s = |n| t0 + Duration::from_secs(n);
        assert_eq!(p.record(&ProbeOutcome::Success, s(5)), None);
        assert_eq!(p.due, s(7));
        assert_eq!(p.record(&ProbeOutcome::Unknown("rt".into()), s(7)), None);
        assert_eq!(p.record(&ProbeOutcome::Success, s(9)), Some(true));
        assert_eq!(p.result, Some(true));
        assert_eq!(p.record(&fail, s(11)), None);
        assert_eq!(p.record(&fail, s(13)), None);
        assert_eq!(
            p.record(&ProbeOutcome::Success, s(15)),
            None,
            "a success breaks the run"
        );
        assert_eq!(p.record(&fail, s(17)), None);
        assert_eq!(p.record(&fail, s(19)), None);
        assert_eq!(p.record(&fail, s(21)), Some(false));
        assert_eq!(p.result, Some(false));
    }

    #[test]
    fn a_ramped_readiness_probe_retries_sooner_until_its_first_success() {
        let t0 = Instant::now();
        let probe = Probe {
            period_seconds: Some(1),
            ..Default::default()
        };
        let ms = |n| t0 + Duration::from_millis(n);
        let fail = ProbeOutcome::Failure("refused".into());
        let mut p = ProbeTracker::new(&probe, t0, t0, Some(false)).ramp_up();
        // 25, 50, 100, 200, 400, 800 ms, then the period.
        let mut now = 0;
        for wait in [25, 50, 100, 200, 400, 800, 1000, 1000] {
            p.record(&fail, ms(now));
            assert_eq!(p.due, ms(now + wait), "after the failure at {now} ms");
            now += wait;
        }
        assert_eq!(p.record(&ProbeOutcome::Success, ms(now)), Some(true));
        assert_eq!(p.due, ms(now + 1000));
        // Once it has passed, a failure waits the whole period again.
        p.record(&fail, ms(now + 1000));
        assert_eq!(p.due, ms(now + 2000));

        // Without the ramp, Kubernetes' cadence.
        let mut plain = ProbeTracker::new(&probe, t0, t0, Some(false));
        plain.record(&fail, t0);
        assert_eq!(plain.due, ms(1000));
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 200\r\n"), Some(200));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 x\r\n"), None);
    }
}
