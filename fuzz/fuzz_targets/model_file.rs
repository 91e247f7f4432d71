//! A model or checkpoint file (safetensors with our checksum) from the
//! host's disk.
#![no_main]

#[path = "../bodies/model_file.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
