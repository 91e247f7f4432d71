//! Leader <-> follower transport of enclave-vfl: the gRPC protocol (see
//! docs/protocol.md), the handshake checks, and connection management.
//!
//! The leader serves; the follower connects, retrying with backoff until a
//! deadline, so either may start first. The handshake compares application
//! id, protocol version, model fingerprint, batch size and mode, and a
//! refusal names the field with both values. [`link`] makes the session
//! survive cut connections (sequence numbers, acknowledgements, resend,
//! heartbeats) and detects a restarted peer.

mod client;
pub mod handshake;
pub mod link;
pub mod party;
pub mod secure;
pub mod server;

/// Generated code, nested like the proto packages (the scale-out protocol
/// refers to the bridge's messages).
mod generated {
    pub mod vfl {
        pub mod bridge {
            pub mod v1 {
                #![allow(clippy::all)]
                tonic::include_proto!("vfl.bridge.v1");
            }
        }
        pub mod party {
            pub mod v1 {
                #![allow(clippy::all)]
                tonic::include_proto!("vfl.party.v1");
            }
        }
    }
}

/// Generated protocol types and service stubs.
pub use generated::vfl::bridge::v1 as pb;

/// Generated types of the scale-out protocol (workers, shards, the
/// coordinator, and the pair link).
pub use generated::vfl::party::v1 as party_pb;

pub use handshake::{Checkpoints, PROTOCOL_VERSION, Settings};
pub use link::{FollowerLink, LeaderLink, LinkOptions, Meter};
pub use secure::{OnReject, RaTls, Security};
pub use tonic::{Status, Streaming};

/// Transport errors.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("peer at {addr} not reachable within {secs} s: {last}")]
    Unreachable { addr: String, secs: u64, last: String },
    #[error("no follower connected within {secs} s (listening on {addr})")]
    NoPeer { addr: String, secs: u64 },
    #[error("RA-TLS: {0}")]
    Rejected(String),
    #[error("handshake refused by the leader: {0}")]
    Refused(String),
    #[error("connection to the peer lost: {0}")]
    Lost(String),
    #[error("lost the {peer} ({why}) and it did not come back within {secs} s")]
    Gone { peer: &'static str, why: String, secs: f64 },
    #[error(
        "the {peer} restarted (process {was} is now {now}): the session starts over from the newest checkpoint both parties hold"
    )]
    PeerRestarted {
        peer: &'static str,
        was: String,
        now: String,
    },
    #[error("peer reported a failure: {0}")]
    PeerFailed(String),
    #[error("the job cannot go on: {0}")]
    Stopped(String),
    #[error("the {peer} restarted more than {max} times; giving up (--max-restarts)")]
    TooManyRestarts { peer: &'static str, max: u32 },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}; cutting the peer")]
    Link(#[from] crate::link::LinkError),
}

/// Largest message the transport accepts, from the largest tensor it must
/// carry (`rows x cols` f32 values) plus room for the envelope; at least
/// 4 MiB (gRPC's default).
pub fn message_limit(rows: usize, cols: usize) -> usize {
    (rows.saturating_mul(cols).saturating_mul(4) + (64 << 10)).max(4 << 20)
}

/// At most `max` characters of `s`, control characters replaced: for text
/// from a peer or a file that goes into a log line or an error.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}
