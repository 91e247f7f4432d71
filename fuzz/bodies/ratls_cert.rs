//! A peer's RA-TLS certificate, as the handshake sees it before anything is
//! authenticated: evidence extraction (both OIDs, the simulated extension),
//! quote view and binding, then the whole verifier (dcap-qvl included):
//! simulated evidence under the fuzz development root, hardware quotes with
//! Intel's sample collateral (policy and root in
//! crates/attest/tests/fixtures/fuzz/), at a fixed time inside both
//! collaterals' validity.

use std::sync::{Arc, OnceLock};

use vfl_attest::collateral::FileCollateral;
use vfl_attest::{Clock, Policy, Verifier};

/// 2025-06-20T00:00:00Z: inside the sample collateral's validity (and the
/// seeds' simulated collateral is issued for it).
pub const FUZZ_TIME: u64 = 1_750_377_600;

/// The attestation fixtures, found from the package this body is compiled
/// in (the fuzz crate, or the test suite that replays the corpus).
fn fixtures() -> std::path::PathBuf {
    let mut dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let f = dir.join("crates/attest/tests/fixtures");
        if f.is_dir() {
            return f;
        }
        assert!(dir.pop(), "no crates/attest/tests/fixtures above the package");
    }
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let policy = Policy::parse(
            include_bytes!("../../crates/attest/tests/fixtures/fuzz/policy.json"),
            "fuzz",
        )
        .expect("the fuzz policy parses");
        let collateral = FileCollateral::load(&fixtures().join("dcap-qvl/sgx_quote_collateral.json"))
            .expect("Intel's sample collateral");
        Verifier::new(policy, Some(Arc::new(collateral)), Clock::Fixed(FUZZ_TIME))
    })
}

/// Once, before the first input.
pub fn init() {
    // libfuzzer-sys's panic hook aborts even on panics that are caught;
    // the verifier catches its dependencies' panics (as a party does),
    // so only print them here: a panic escaping the target still aborts
    // (libfuzzer-sys checks for it around every input).
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
}

/// One input.
pub fn run(data: &[u8]) {
    if let Ok(ev) = vfl_attest::cert::extract(data)
        && let Ok(view) = vfl_attest::quote::QuoteView::parse(&ev.quote)
    {
        let _ = ev.check_binding(&view.report_data());
    }
    let _ = verifier().verify_cert(data);
}
