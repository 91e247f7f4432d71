//! A sealed file from the host's disk: the envelope header and context,
//! then authenticated decryption with a fixed key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vfl_attest::seal::{Context, Sealer};

fn sealer() -> &'static Sealer {
    static S: OnceLock<Sealer> = OnceLock::new();
    S.get_or_init(|| Sealer::from_key([7; 32], "fuzz").expect("a fixed key"))
}

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.sealed");
    let _ = vfl_attest::seal::describe(data, path);
    let _ = sealer().open_file(data, &Context::new("checkpoint").with("step", 1), path);
});
