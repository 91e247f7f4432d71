//! Sample alignment (`vfl join`): a private set intersection of example ids
//! between the leader's and the follower's enclaves, over the same mutually
//! attested TLS connection as training.
//!
//! Ids never leave an enclave, not even inside TLS: each side maps its ids
//! to tags, HMAC-SHA-256 truncated to 128 bits under a key both derive from
//! the connection's TLS exporter ([`tags`]). Rows are partitioned by tag
//! prefix into encrypted spill files so that memory stays bounded for
//! inputs far larger than memory ([`spill`]); partition by partition the
//! follower sends its tags and the leader answers which it holds too
//! ([`protocol`]). Both sides write the rows of the intersection in tag
//! order (an order both derive and neither operator chose) into data blocks
//! that training reads as they are ([`output`]), compare a digest of the
//! joined id order, and only then commit their outputs atomically.

pub mod input;
pub mod net;
pub mod output;
pub mod protocol;
mod spill;
pub mod tags;

/// The join protocol's messages (crates/join/proto/vfl/join/v1/join.proto).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/vfl.join.v1.rs"));
}

pub use protocol::{JoinConfig, JoinSummary, Role};

/// Version of the join protocol; both sides must speak the same.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why a join failed. No variant carries an example id or a feature value.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Data(#[from] vfl_data::DataError),
    #[error("{file}: {at}: duplicate example id (first at {first_file}: {first_at}); --dedupe first keeps the first")]
    Duplicate {
        file: String,
        at: String,
        first_file: String,
        first_at: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spill file: {0}")]
    Spill(#[source] vfl_attest::seal::SealError),
    #[error("spill file: {0}")]
    SpillFormat(&'static str),
    #[error("{path} exists and is not the output of an earlier join (no join-report.json); refusing to replace it")]
    OutputExists { path: String },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("the peer's frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLong { len: usize, max: usize },
    #[error("undecodable frame from the peer: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("protocol: expected {expected}, the peer sent {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("the peer's {field} differs: ours {ours}, the peer's {theirs}")]
    Disagree {
        field: &'static str,
        ours: String,
        theirs: String,
    },
    #[error("the peer failed: {0}")]
    PeerFailed(String),
    #[error("the connection to the peer was lost: {0}")]
    PeerGone(String),
    #[error("no word from the peer for {0} s (--peer-timeout)")]
    Timeout(u64),
    #[error("the two sides' joined outputs differ ({0}); nothing was written")]
    Mismatch(&'static str),
    #[error("the intersection is empty: the two sides share no example id; nothing was written")]
    EmptyIntersection,
    #[error("RA-TLS: {0}")]
    Attestation(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the peer at {addr} was not reachable within {secs} s: {last}")]
    Unreachable { addr: String, secs: u64, last: String },
    #[error("a join needs RA-TLS (its tag key comes from the TLS exporter); --insecure-no-tls cannot join")]
    NoTls,
    #[error("sealing the output: {0}")]
    Seal(#[source] vfl_attest::seal::SealError),
}

impl JoinError {
    /// What the peer is told: protocol disagreements in full, local
    /// problems (input, files, keys) only by kind, without paths.
    pub fn for_peer(&self) -> String {
        match self {
            JoinError::Data(_) | JoinError::Duplicate { .. } | JoinError::Io { .. } | JoinError::Config(_) => {
                "its input or output failed (see its log)".into()
            }
            JoinError::Spill(_) | JoinError::SpillFormat(_) | JoinError::Seal(_) => {
                "its spill or sealing failed".into()
            }
            JoinError::OutputExists { .. } => "its output path is taken".into(),
            e => e.to_string(),
        }
    }

    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        JoinError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}
