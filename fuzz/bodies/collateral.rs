//! Collateral from the host's cache or a PCCS (QuoteCollateralV3 JSON) and
//! the numbers the freshness check reads out of it.

/// One input.
pub fn run(data: &[u8]) {
    if let Ok(c) = vfl_attest::collateral::parse(data) {
        let _ = vfl_attest::freshness::marks_of_collateral(&c);
    }
}
