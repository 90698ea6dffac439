//! NodePorts: a pod asking for a host port fits only nodes where no bound pod holds the same
//! port and protocol on an overlapping address.

use coxswain_schema::kinds::pod::{PodSpec, Protocol};

use super::NodeInfo;
use super::framework::{CycleState, Reason};
use super::pod_info::PodInfo;

/// Kubernetes' `ErrReason` of the NodePorts plugin.
pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

/// The address Kubernetes assumes for a host port with no `hostIP`: every address.
const WILDCARD_IP: &str = "0.0.0.0";

/// One host port a pod binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: Protocol,
    pub port: i32,
}

impl HostPort {
    /// Two binds clash on the same port and protocol when either is on every address or
    /// both are on the same one (Kubernetes' `HostPortInfo.CheckConflict`).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == WILDCARD_IP || other.ip == WILDCARD_IP)
    }
}

/// The host ports of the app containers. A `hostNetwork` pod binds its container ports on
/// the host, so (as Kubernetes' defaulting does) those count as host ports too.
pub fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    let host_network = spec.host_network.unwrap_or(false);
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p
                .host_port
                .or(host_network.then_some(p.container_port))
                .filter(|&port| port > 0)?;
            let ip = match p.host_ip.as_deref() {
                None | Some("") => WILDCARD_IP.to_string(),
                Some(ip) => ip.to_string(),
            };
            Some(HostPort {
                ip,
                protocol: p.protocol.unwrap_or_default(),
                port,
            })
        })
        .collect()
}

/// Rejects the node if any wanted host port clashes with one in use there.
pub fn filter<'n>(pod: &PodInfo, node: &'n NodeInfo, _: &CycleState<'_>) -> Result<(), Reason<'n>> {
    let clash = pod
        .host_ports
        .iter()
        .any(|want| node.used_ports().iter().any(|used| want.conflicts(used)));
    if clash {
        Err(Reason::Fixed(REASON))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, pod_json};
    use serde_json::json;

    fn ports_pod(name: &str, ports: serde_json::Value) -> PodInfo {
        PodInfo::new(&pod_json(
            name,
            json!({"containers": [{"name": "c", "image": "i", "ports": ports}]}),
        ))
    }

    #[test]
    fn host_ports_conflict_by_port_protocol_and_address() {
        // (port held by a bound pod, port wanted, passes)
        let cases = [
            (
                json!([{"containerPort": 80, "hostPort": 8080}]),
                json!([{"containerPort": 80, "hostPort": 8080}]),
                false,
            ),
            (
                json!([{"containerPort": 80, "hostPort": 8080}]),
                json!([{"containerPort": 80, "hostPort": 8081}]),
                true,
            ),
            (
                json!([{"containerPort": 80, "hostPort": 8080}]),
                json!([{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]),
                true,
            ),
            (
                json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}]),
                json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.2"}]),
                true,
            ),
            (
                json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}]),
                json!([{"containerPort": 80, "hostPort": 8080}]),
                false,
            ),
            (
                json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}]),
                json!([{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}]),
                false,
            ),
            // A container port without hostPort binds nothing on the host.
            (
                json!([{"containerPort": 80}]),
                json!([{"containerPort": 80}]),
                true,
            ),
        ];
        for (held, wanted, want) in cases {
            let mut n = NodeInfo::new(node("n", "1", "1Gi", "10"));
            n.add_pod(std::sync::Arc::new(ports_pod("bound", held.clone())));
            let got = filter(&ports_pod("p", wanted.clone()), &n, &CycleState::default());
            assert_eq!(got.is_ok(), want, "held {held} wanted {wanted}");
            if !want {
                assert_eq!(got, Err(Reason::Fixed(REASON)));
            }
        }
    }

    #[test]
    fn host_network_pods_bind_their_container_ports() {
        let p = pod_json(
            "p",
            json!({"hostNetwork": true, "containers": [{"name": "c", "image": "i",
                "ports": [{"containerPort": 53, "protocol": "UDP"}]}]}),
        );
        assert_eq!(
            host_ports(&p.spec),
            vec![HostPort {
                ip: WILDCARD_IP.into(),
                protocol: Protocol::UDP,
                port: 53
            }]
        );
    }
}
