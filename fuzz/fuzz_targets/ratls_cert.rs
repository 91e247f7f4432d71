//! A peer's RA-TLS certificate, as the handshake sees it before anything is
//! authenticated: evidence extraction (both OIDs, the simulated extension),
//! quote view and binding, then the whole verifier (dcap-qvl included) under
//! a policy that admits simulated evidence from one root.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vfl_attest::{Clock, Policy, Verifier};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let policy = Policy::parse(
            br#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
                "sgx_mrs":[{"mr_enclave":"self","mode":"simulated"},{"mr_enclave":"self"}],
                "allow_simulated":true,"simulated_roots":["0000000000000000000000000000000000000000000000000000000000000000"]}"#,
            "fuzz",
        )
        .expect("the fuzz policy parses");
        Verifier::new(policy, None, Clock::System)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = vfl_attest::cert::extract(data) {
        if let Ok(view) = vfl_attest::sgx::QuoteView::parse(&ev.quote) {
            let _ = ev.check_binding(&view.report_data());
        }
    }
    let _ = verifier().verify_cert(data);
});
