//! One regression test per input the fuzzers found (fixtures/fuzz/).

use std::sync::Arc;

use vfl_attest::collateral::FileCollateral;
use vfl_attest::devpki::DevRoot;
use vfl_attest::{Clock, Policy, Rejection, Verifier};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The ratls_cert fuzz target's verifier: simulated evidence under the fuzz
/// root, hardware quotes with Intel's sample collateral, at its fixed time.
fn fuzz_verifier() -> Verifier {
    let root = DevRoot::from_pem(&std::fs::read_to_string(format!("{FIX}/fuzz/dev-root.pem")).unwrap()).unwrap();
    let policy = Policy::parse(
        format!(
            r#"{{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
                "sgx_mrs":[{{"mr_enclave":"{0}","mode":"simulated"}},{{"mr_enclave":"{0}"}}],
                "allowed_tcb_statuses":["UpToDate","ConfigurationAndSWHardeningNeeded"],
                "allow_simulated":true,"simulated_roots":["{1}"]}}"#,
            "07".repeat(32),
            hex::encode(root.fingerprint())
        )
        .as_bytes(),
        "fuzz",
    )
    .unwrap();
    let collateral = FileCollateral::load(std::path::Path::new(&format!(
        "{FIX}/dcap-qvl/sgx_quote_collateral.json"
    )))
    .unwrap();
    Verifier::new(policy, Some(Arc::new(collateral)), Clock::Fixed(1_750_377_600))
}

/// Collateral that trips an assert inside dcap-qvl's webpki CRL check is a
/// refusal, not a panic (a handshake task would have died with it).
#[test]
fn collateral_that_trips_an_assert_in_the_crl_check_is_a_refusal() {
    let cert = std::fs::read(format!("{FIX}/fuzz/ratls_cert-crl-assert.der")).unwrap();
    match fuzz_verifier().verify_cert(&cert) {
        Err(Rejection::Quote(why)) => assert!(why.contains("malformed collateral"), "{why}"),
        other => panic!("expected a refusal of the quote, got {other:?}"),
    }
}
