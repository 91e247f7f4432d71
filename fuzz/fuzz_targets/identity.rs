//! Identity files a peer hands over for `vfl attest trust`, and the policy
//! files they are merged into.
#![no_main]

#[path = "../bodies/identity.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
