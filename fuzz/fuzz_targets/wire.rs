//! Protocol messages from the peer (protobuf, after TLS): every message
//! type, then the tensors and digests they carry as the trainer decodes
//! them.
#![no_main]

#[path = "../bodies/wire.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
