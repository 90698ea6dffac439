//! # coxswain-node — start here
//!
//! The node agent: the kubelet and the container runtime in one. A pod bound to this node
//! becomes real processes in Linux namespaces and cgroups, and its status flows back to the
//! store. Read in this order:
//!
//! - [`runtime`]: the [`runtime::Runtime`] trait (sandboxes, containers, exec) with the real
//!   [`runtime::linux::LinuxRuntime`] and a recording fake; [`runtime::launcher`] is the
//!   single-threaded helper process that forks sandboxes and containers (namespaces,
//!   pivot_root, masked paths, capabilities, no_new_privs) so the multi-threaded agent never
//!   forks;
//! - [`pod`]: the pod worker, Kubernetes' lifecycle rules (init containers, restart policy,
//!   crash-loop backoff, probes, graceful stop, PodStatus) against that trait;
//! - [`env`] and [`volume`]: a container's environment (`valueFrom`, `$(VAR)`) and its
//!   volumes (emptyDir, hostPath, configMap, secret);
//! - [`cgroup`]: one cgroup per pod and per container under a `coxswain` parent, on cgroup v1
//!   and v2, with cpu, memory and pids limits, usage and OOM-kill detection;
//! - [`net`] and [`ipam`]: the node's bridge, a veth and an IP per pod from a file-backed
//!   allocator, NAT for egress (the CNI bridge plugin with host-local IPAM);
//! - [`image`]: the node-wide image store (a rootfs folder, a tar or an OCI layout);
//! - [`agent`]: the Node object, registration and heartbeat.
//!
//! Errors are [`Error`]; nothing here panics on input.

pub mod agent;
pub mod cgroup;
pub mod env;
pub mod error;
mod fsutil;
pub mod image;
pub mod ipam;
pub mod logs;
pub mod net;
pub mod pod;
pub mod runtime;
pub mod volume;

pub use error::{Error, Result};
