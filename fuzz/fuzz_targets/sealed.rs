//! A sealed file from the host's disk: the envelope header and context,
//! then authenticated decryption with a fixed key.
#![no_main]

#[path = "../bodies/sealed.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
