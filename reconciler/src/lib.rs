//! # coxswain-reconciler — start here
//!
//! The GitOps core and the control loops: the Git source (fetch, notify, ref resolution, tree
//! diff), the sync planner (desired state against the stored inventory, with a prune guard),
//! the controller runtime, one controller per file, the scheduler with one plugin per file,
//! and the status reporter that writes git notes. Nothing is built here yet: this crate holds
//! only this paragraph until the GitOps-core issue is taken.
