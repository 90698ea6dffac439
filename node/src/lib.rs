//! # coxswain-node — start here
//!
//! The node agent (kubelet and container runtime in one): pod lifecycle, the Linux runtime
//! behind one syscall trait (namespaces via nix, cgroups via cgroups-rs), images, volumes,
//! probes, logs, heartbeat, pod networking and the service proxy. Nothing is built here yet:
//! this crate holds only this paragraph until the node-agent issue is taken.
