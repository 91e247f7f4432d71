//! Collateral from the host's cache or a PCCS (QuoteCollateralV3 JSON) and
//! the numbers the freshness check reads out of it.
#![no_main]

#[path = "../bodies/collateral.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
