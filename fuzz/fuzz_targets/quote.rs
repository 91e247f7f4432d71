//! Quote bytes from a peer: our strict structure check, the report view, the
//! PCK-certificate lookup key and dcap-qvl's own parser.
#![no_main]

#[path = "../bodies/quote.rs"]
mod body;

libfuzzer_sys::fuzz_target!(init: body::init(), |data: &[u8]| body::run(data));
