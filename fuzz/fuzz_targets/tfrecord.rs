//! TFRecord framing (length, masked CRC32C of length and data) of a data
//! file, plain and GZIP-compressed.
#![no_main]

#[path = "../bodies/tfrecord.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
