//! The policy file (dynamic_config.json): strict JSON (no duplicate keys)
//! and every field rule.
#![no_main]

#[path = "../bodies/policy.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
