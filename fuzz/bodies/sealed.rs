//! A sealed file from the host's disk: the envelope header and context,
//! then authenticated decryption with a fixed key.

use std::sync::OnceLock;

use vfl_attest::seal::{Context, Sealer};

fn sealer() -> &'static Sealer {
    static S: OnceLock<Sealer> = OnceLock::new();
    S.get_or_init(|| Sealer::from_key([7; 32], "fuzz").expect("a fixed key"))
}

/// One input.
pub fn run(data: &[u8]) {
    let path = std::path::Path::new("fuzz.sealed");
    let _ = vfl_attest::seal::describe(data, path);
    let _ = sealer().open_file(data, &Context::new("checkpoint").with("step", 1), path);
}
