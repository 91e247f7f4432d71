//! Party-internal messages (protobuf, after RA-TLS between a party's own
//! processes): a worker's contribution as a shard takes it (decode, then
//! the shard's checks and its combination), and a shard's values as a
//! worker's replica takes them.
#![no_main]

#[path = "../bodies/party.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
