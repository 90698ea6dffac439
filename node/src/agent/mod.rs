//! The node agent proper: what ties the runtime, images, volumes and pod networking to the
//! store.
//!
//! - [`node`]: the agent's own `Node` object, its registration and its heartbeat;
//! - [`pods`]: the pod loop (Pods bound to this node become pod workers, their status goes
//!   back to the store, and an agent restart adopts what runs);
//! - [`metrics`]: per-container cpu and memory usage from the cgroups, stored as
//!   `PodMetrics` for `coxswain top` and the autoscaler;
//! - [`resolve`]: turns a pod's container into the runtime's resolved spec (image, env,
//!   argv, volumes), with ConfigMaps and Secrets from a watched in-memory cache.

pub mod metrics;
pub mod node;
pub mod pods;
pub mod resolve;
