//! Numeric core of enclave-vfl.
//!
//! Row-major `f32` matrices on the `gemm` crate, sparse embedding bags,
//! dense layers, losses, optimizers (with sparse row updates), streaming
//! metrics, the declarative model spec, and the split model: each party's
//! tower plus the leader's head. This crate knows nothing about files or
//! networks; the data and trainer crates feed it.

pub mod activation;
mod aligned;
pub mod compute;
pub mod dense;
pub mod embedding;
pub mod init;
pub mod loss;
mod metrics;
pub mod optim;
pub mod rng;
pub mod spec;
pub mod split;
pub mod tensor;

pub use compute::Compute;
pub use dense::Update;
pub use embedding::SparseBatch;
pub use metrics::{BinaryMetrics, MetricValues};
pub use spec::{ModelSpec, Role};
pub use split::{FollowerModel, LeaderModel, Replica, TowerInput};
pub use tensor::Matrix;

/// Errors of the numeric core.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        what: String,
        expected: String,
        got: String,
    },
    #[error("slot {slot}: example {example} has id {id}, outside the table's range [0, {vocab})")]
    IdOutOfRange {
        slot: String,
        example: usize,
        id: i64,
        vocab: usize,
    },
    #[error("{0}")]
    Input(String),
    #[error("model spec {origin}: field `{field}`: {reason}")]
    Spec {
        origin: String,
        field: String,
        reason: String,
    },
    #[error("model spec {origin}: {message}")]
    SpecParse { origin: String, message: String },
    #[error("{0}")]
    Runtime(String),
}
