//! A model or checkpoint file (safetensors with our checksum) from the
//! host's disk.

/// One input.
pub fn run(data: &[u8]) {
    let _ = vfl_trainer::store::parse(data, std::path::Path::new("fuzz.safetensors"));
}
