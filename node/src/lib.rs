//! # coxswain-node — start here
//!
//! The node agent (kubelet and container runtime in one): pod lifecycle, the Linux runtime
//! behind one syscall trait (namespaces via nix, cgroups via cgroups-rs), images, volumes,
//! probes, logs, heartbeat, pod networking and the service proxy. Built so far: the pieces
//! the runtime stands on, each usable and tested on its own:
//!
//! - [`cgroup`]: one cgroup per pod and per container under a `coxswain` parent, on cgroup v1
//!   (hybrid, as on this machine) and v2, with cpu, memory and pids limits from a container's
//!   resources, usage, OOM-kill detection and teardown;
//! - [`image`]: the node-wide image store: imports a rootfs folder, a (gzip) tar or an OCI
//!   image layout as `NAME:TAG` into content-addressed, atomically replaced root filesystems,
//!   unpacking archives so that no entry can land outside the image;
//! - [`ipam`]: pod IPs from the node's pod CIDR, in a file-backed allocator that survives
//!   restarts and never hands one address out twice (as CNI's host-local plugin does).
//!
//! Errors are [`Error`]; nothing here panics on input.

pub mod cgroup;
pub mod error;
mod fsutil;
pub mod image;
pub mod ipam;

pub use error::{Error, Result};
