//! # coxswain-webhooks — start here
//!
//! The HTTP surface (axum): push and pull-request webhook receivers, PR preview diffs, the
//! read-only status REST API, `/metrics` and `/healthz`. Nothing is built here yet: this crate
//! holds only this paragraph until the webhooks issue is taken.
