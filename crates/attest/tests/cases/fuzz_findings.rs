//! One regression test per input the fuzzers found (fixtures/fuzz/).

use std::sync::Arc;

use vfl_attest::collateral::FileCollateral;
use vfl_attest::devpki::DevRoot;
use vfl_attest::{Clock, Policy, Rejection, Verifier};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The ratls_cert fuzz target's verifier: simulated evidence under the fuzz
/// root, hardware quotes with Intel's sample collateral, at its fixed time.
fn fuzz_verifier() -> Verifier {
    let policy = Policy::parse(&std::fs::read(format!("{FIX}/fuzz/policy.json")).unwrap(), "fuzz").unwrap();
    let collateral = FileCollateral::load(std::path::Path::new(&format!(
        "{FIX}/dcap-qvl/sgx_quote_collateral.json"
    )))
    .unwrap();
    Verifier::new(policy, Some(Arc::new(collateral)), Clock::Fixed(1_750_377_600))
}

/// The fuzz policy trusts the fuzz root (else simulated inputs would stop at
/// the root check and never reach the quote verifier).
#[test]
fn the_fuzz_policy_trusts_the_fuzz_root() {
    let root = DevRoot::from_pem(&std::fs::read_to_string(format!("{FIX}/fuzz/dev-root.pem")).unwrap()).unwrap();
    let policy = Policy::parse(&std::fs::read(format!("{FIX}/fuzz/policy.json")).unwrap(), "fuzz").unwrap();
    assert_eq!(policy.simulated_roots, vec![root.fingerprint()]);
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
