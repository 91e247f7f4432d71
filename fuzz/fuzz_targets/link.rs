//! The link's sequence and acknowledgement rules (sans-IO), driven by
//! arbitrary operations from a peer: sends of ours, and arrivals with any
//! sequence number, acknowledgement and kind. Checks the invariants the
//! resend relies on.
#![no_main]

#[path = "../bodies/link.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
