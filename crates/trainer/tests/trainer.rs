//! Integration tests of the training crate, one module per area, all in
//! one test binary.

#[path = "cases/learning.rs"]
mod learning;
#[path = "cases/metrics.rs"]
mod metrics;
#[path = "cases/sealing.rs"]
mod sealing;
#[path = "cases/sharded.rs"]
mod sharded;
#[path = "cases/sharded_procs.rs"]
mod sharded_procs;
#[path = "cases/sharded_remote.rs"]
mod sharded_remote;
#[path = "cases/split_equals_central.rs"]
mod split_equals_central;
