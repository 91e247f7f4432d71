//! Data layer of enclave-vfl: batch buffers and digests, the synthetic
//! data generator, TFRecord/tf.Example and CSV readers, and data blocks.

pub mod batch;
pub mod blocks;
pub mod csv;
pub mod example;
pub mod generate;
pub mod prefetch;
mod schema;
mod source;
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
    #[error(
        "the source has {slots} slots and {dense} dense columns; the batch expects {batch_slots} slots and {batch_dense} dense columns"
    )]
    BatchShape {
        slots: usize,
        dense: usize,
        batch_slots: usize,
        batch_dense: usize,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a directory")]
    NotADirectory { file: String },
    #[error("{file}: a sealed block, and no model key to open it (--model-key)")]
    SealedWithoutKey { file: String },
    #[error("{file}: {reason}")]
    Unseal { file: String, reason: String },
    #[error("{file}: empty CSV file (no header)")]
    EmptyCsv { file: String },
    #[error("bad wildcard `{pattern}`: {reason}")]
    BadWildcard { pattern: String, reason: String },
    #[error("{root}: block id `{id}` is given by two files: {first} and {second}")]
    DuplicateBlockId {
        root: String,
        id: String,
        first: String,
        second: String,
    },
    #[error("{root}: no data files match {wildcard} (refusing to train on zero examples)")]
    NoDataFiles { root: String, wildcard: String },
    #[error("{root}: no block `{id}` in this data directory")]
    NoSuchBlock { root: String, id: String },
    #[error("cannot resume at block #{block} record {record}: the block ends before")]
    ResumePastEnd { block: usize, record: u64 },
    #[error("cannot start the reader thread: {0}")]
    ReaderThread(#[source] std::io::Error),
    #[error("{file}: record {record}: {message}")]
    Record { file: String, record: u64, message: String },
    /// The TFRecord framing is broken (a length or its checksum): the
    /// records after it cannot be found.
    #[error("{file}: record {record}: {message}")]
    Framing { file: String, record: u64, message: String },
    #[error("{file}: record {record}: feature `{feature}`: {message}")]
    Feature {
        file: String,
        record: u64,
        feature: String,
        message: String,
    },
    #[error("{file}: line {line}: {message}")]
    Line { file: String, line: u64, message: String },
}
