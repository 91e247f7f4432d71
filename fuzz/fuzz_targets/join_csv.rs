//! CSV rows as `vfl join` converts them into tf.Examples (the header, the
//! id column, typed cells): no panic, and what it writes decodes.
#![no_main]

#[path = "../bodies/join_csv.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
