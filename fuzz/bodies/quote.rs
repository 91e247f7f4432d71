//! Quote bytes from a peer: our strict structure check, the report view, the
//! PCK-certificate lookup key and dcap-qvl's own parser.

/// Once, before the first input.
pub fn init() {
    // Print panics the code under test catches (see ratls_cert.rs);
    // escaping ones still abort.
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
}

/// One input.
pub fn run(data: &[u8]) {
    let _ = vfl_attest::quote::check_quote_structure(data);
    if let Ok(v) = vfl_attest::quote::QuoteView::parse(data) {
        let _ = v.identity();
        let _ = v.report_data();
    }
    let _ = vfl_attest::pccs::CollateralKey::of_quote(data);
    let _ = vfl_attest::pccs::verify_pck_chain(data, 1_750_377_600);
    let _ = dcap_qvl::quote::Quote::parse(data);
}
