//! A model or checkpoint file (safetensors with our checksum) from the
//! host's disk.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vfl_trainer::store::parse(data, std::path::Path::new("fuzz.safetensors"));
});
