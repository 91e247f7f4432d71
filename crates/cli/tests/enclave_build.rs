//! The enclave build (`--no-default-features`, no `dev` feature) can
//! neither produce nor accept simulated evidence and seals only with the
//! MRENCLAVE key. These tests exist only in that build:
//! `cargo test --release -p vfl-cli --no-default-features --test enclave_build`
//! (run by `scripts/enclave-build-check.sh` in CI, which builds the enclave
//! variant of `vfl` in the same invocation and then checks its refusals).
#![cfg(not(feature = "dev"))]

use std::path::Path;

use vfl_attest::attester::SimEvidence;
use vfl_attest::collateral::FileCollateral;
use vfl_attest::policy::PolicyErrorKind;
use vfl_attest::seal::KeySource;
use vfl_attest::{Clock, Policy, Rejection, Verifier, cert};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../attest/tests/fixtures");

#[test]
fn a_policy_that_allows_simulation_is_refused() {
    let e = Policy::parse(
        format!(
            r#"{{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
                "sgx_mrs":[],"allow_simulated":true,"simulated_roots":["{}"]}}"#,
            "ab".repeat(32)
        )
        .as_bytes(),
        "p",
    )
    .unwrap_err();
    assert_eq!(e.kind, PolicyErrorKind::SimulationNotBuilt);
}

#[test]
fn a_certificate_with_simulated_evidence_is_refused() {
    // A quote whose report data binds the certificate key (its signature no
    // longer verifies, but the simulated extension is refused before that).
    use rcgen::PublicKeyData;
    let key = cert::new_key().unwrap();
    let mut quote = std::fs::read(format!("{FIX}/dcap-qvl/sgx_quote")).unwrap();
    let at = vfl_attest::sgx::HEADER_LEN + 320;
    quote[at..at + 64].copy_from_slice(&cert::legacy_report_data(&key.subject_public_key_info()));
    let evidence = cert::CertEvidence {
        legacy_quote: Some(quote),
        tcg: None,
        sim: Some(SimEvidence {
            root_der: vec![0x30, 0x00],
            collateral: FileCollateral::load(Path::new(&format!("{FIX}/dcap-qvl/sgx_quote_collateral.json")))
                .unwrap()
                .collateral()
                .clone(),
        }),
    };
    let der = cert::build_cert(&key, &evidence).unwrap();
    let policy = Policy::parse(
        br#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off","sgx_mrs":[]}"#,
        "p",
    )
    .unwrap();
    let v = Verifier::new(policy, None, Clock::System);
    let e = v.verify_cert(&der).unwrap_err();
    assert!(matches!(e, Rejection::SimulationNotBuilt), "{e}");
}

#[test]
fn only_the_mrenclave_sealing_key_is_accepted() {
    assert_eq!("sgx-mrenclave".parse::<KeySource>().unwrap(), KeySource::SgxMrEnclave);
    for s in ["file:/k", "env:K", "none", "sgx-mrsigner"] {
        let e = s.parse::<KeySource>().unwrap_err();
        assert!(!e.is_empty(), "{s}");
    }
}
