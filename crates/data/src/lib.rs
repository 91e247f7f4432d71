//! Data layer of enclave-vfl: batch buffers and digests, the synthetic
//! data generator, TFRecord/tf.Example and CSV readers, and data blocks.

pub mod atomic;
pub mod batch;
pub mod blocks;
pub mod csv;
pub mod example;
pub mod generate;
pub mod prefetch;
pub mod schema;
pub mod source;
pub mod synth;
pub mod tfrecord;

pub use batch::{Batch, BatchDigest, RowSource};
pub use blocks::{BlockFile, BlockReader, DataDir, Position, ReadOptions, Unseal};
pub use schema::Schema;
pub use source::{BatchSource, SynthSource};

/// Errors of the data layer. Each names the file, the record (or line)
/// and the feature (or column) concerned where there is one.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Schema(String),
    #[error("{file}: {message}")]
    Io { file: String, message: String },
    #[error("{file}: record {record}: {message}")]
    Record { file: String, record: u64, message: String },
    #[error("{file}: record {record}: feature `{feature}`: {message}")]
    Feature {
        file: String,
        record: u64,
        feature: String,
        message: String,
    },
    #[error("{file}: line {line}: {message}")]
    Line { file: String, line: u64, message: String },
    #[error("{0}")]
    Other(String),
}
