//! Scale-out messages (protobuf, after RA-TLS): contributions through a
//! shard, values into a replica, reports through the coordinator's state
//! machine, the workers' messages decoded.
#![no_main]

#[path = "../bodies/party.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
