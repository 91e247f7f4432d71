//! The join protocol's frames from the peer: length-prefixed protobuf
//! frames, and Tags chunks fed to the leader's matcher (partition
//! checks, ordering, chunk bounds) and Matches to the follower's reader.
#![no_main]

#[path = "../bodies/join_frames.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
