//! One tf.Example record from a data file, decoded by the streaming decoder
//! into a batch (leader schema with label and mask, sparse slots with a
//! vocabulary check, dense columns).
#![no_main]

#[path = "../bodies/tf_example.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
