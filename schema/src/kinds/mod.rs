//! The typed resource model, one file per API group (the pod template, shared by every
//! workload, has its own file).

pub mod apps;
pub mod autoscaling;
pub mod batch;
pub mod core;
pub mod pod;
