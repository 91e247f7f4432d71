//! Offline checks: Intel's real sample quote through dcap-qvl, the policy
//! parser, MRSIGNER computation and the SGX device attester against a directory.

use std::path::Path;

use vfl_attest::collateral::FileCollateral;
use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::sgx::EnclaveIdentity;
use vfl_attest::verify::{Root, verify_quote};
use vfl_attest::{
    AttestError, Attester, Clock, Identity, Mode, Policy, SgxAttester, SimAttester, SimIdentity, Verifier,
};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// 2025-06-20T00:00:00Z: inside the sample collateral's validity window.
const SAMPLE_TIME: u64 = 1_750_377_600;

fn sample() -> (Vec<u8>, dcap_qvl::QuoteCollateralV3) {
    let quote = std::fs::read(format!("{FIX}/dcap-qvl/sgx_quote")).unwrap();
    let coll = FileCollateral::load(Path::new(&format!("{FIX}/dcap-qvl/sgx_quote_collateral.json"))).unwrap();
    (quote, coll.collateral().clone())
}

#[test]
fn intel_sample_quote_verifies_at_a_pinned_time() {
    let (quote, coll) = sample();
    let r = verify_quote(&quote, &coll, &Root::Intel, SAMPLE_TIME).unwrap();
    let mr_enclave = hex::encode(r.identity.sgx().unwrap().mr_enclave);
    let mr_signer = hex::encode(r.identity.sgx().unwrap().mr_signer);
    assert!(
        mr_enclave.starts_with("33d8736d") && mr_enclave.ends_with("452fbb"),
        "{mr_enclave}"
    );
    assert!(
        mr_signer.starts_with("815f42f1") && mr_signer.ends_with("a3e0e6"),
        "{mr_signer}"
    );
    assert_eq!(r.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert_eq!(r.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert!(!r.debug);
}

#[test]
fn intel_sample_quote_is_refused_after_its_collateral_expired() {
    let (quote, coll) = sample();
    let err = verify_quote(&quote, &coll, &Root::Intel, SAMPLE_TIME + 400 * 86_400)
        .unwrap_err()
        .to_string();
    assert!(err.contains("collateral is not valid"), "{err}");
}

#[test]
fn intel_sample_quote_is_refused_under_a_development_root() {
    let (quote, coll) = sample();
    let root = DevRoot::generate().unwrap();
    let a = SimAttester::new(
        &root,
        &SimIdentity {
            mr_enclave: [1; 32],
            mr_signer: None,
            isv_prod_id: 1,
            isv_svn: 1,
            debug: false,
        },
        &SimPlatformOptions::fresh(SAMPLE_TIME),
    )
    .unwrap();
    let dev_root = a.sim_evidence().unwrap().root_der;
    assert!(verify_quote(&quote, &coll, &Root::Dev(dev_root), SAMPLE_TIME).is_err());
}

#[test]
fn one_flipped_byte_anywhere_in_the_sample_quote_is_refused() {
    let (quote, coll) = sample();
    let mut accepted = Vec::new();
    for i in 0..quote.len() {
        let mut q = quote.clone();
        q[i] ^= 0xff;
        if verify_quote(&q, &coll, &Root::Intel, SAMPLE_TIME).is_ok() {
            accepted.push(i);
        }
    }
    assert!(
        accepted.is_empty(),
        "quotes with these bytes flipped were accepted: {accepted:?}"
    );
}

#[test]
fn sample_quote_policy_appraisal_names_the_status() {
    let (quote, coll) = sample();
    let r = verify_quote(&quote, &coll, &Root::Intel, SAMPLE_TIME).unwrap();
    let policy = |statuses: &str| {
        Policy::parse(
            format!(
                r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
                "sgx_mrs":[{{"mr_enclave":"{}","mr_signer":"{}","isv_prod_id":"0","isv_svn":"0"}}]{statuses}}}"#,
                hex::encode(r.identity.sgx().unwrap().mr_enclave),
                hex::encode(r.identity.sgx().unwrap().mr_signer)
            )
            .as_bytes(),
            "p",
        )
        .unwrap()
    };
    let strict = Verifier::new(policy(""), None, Clock::Fixed(SAMPLE_TIME));
    let err = strict.appraise(&r, Mode::Sgx).unwrap_err().to_string();
    assert!(
        err.contains("TCB status ConfigurationAndSWHardeningNeeded is not allowed"),
        "{err}"
    );
    assert!(err.contains("INTEL-SA-00615"), "{err}");
    let lenient = Verifier::new(
        policy(r#","allowed_tcb_statuses":["UpToDate","ConfigurationAndSWHardeningNeeded"]"#),
        None,
        Clock::Fixed(SAMPLE_TIME),
    );
    assert_eq!(lenient.appraise(&r, Mode::Sgx).unwrap(), vec![0]);
}

#[test]
fn sample_quote_in_a_certificate_is_not_bound_to_its_key() {
    let (quote, coll) = sample();
    let key = vfl_attest::cert::new_key().unwrap();
    let ev = vfl_attest::cert::CertEvidence {
        legacy_quote: Some(quote),
        tcg: None,
        sim: None,
    };
    let der = vfl_attest::cert::build_cert(&key, &ev).unwrap();
    let p = Policy::parse(br#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off","sgx_mrs":[]}"#, "p").unwrap();
    let v = Verifier::new(
        p,
        Some(std::sync::Arc::new(
            FileCollateral::load(Path::new(&format!("{FIX}/dcap-qvl/sgx_quote_collateral.json"))).unwrap(),
        )),
        Clock::Fixed(SAMPLE_TIME),
    );
    let _ = coll;
    let err = v.verify_cert(&der).unwrap_err().to_string();
    assert!(err.contains("not bound to the certificate key"), "{err}");
}

// ---- policy parsing: one test per malformed field ----

const GOOD: &str = r#"{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on","verify_in_enclave":"off","other":[],
  "sgx_mrs":[{"mr_enclave":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","mr_signer":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","isv_prod_id":"0","isv_svn":"0"}]}"#;

fn policy_err(json: &str) -> String {
    Policy::parse(json.as_bytes(), "dynamic_config.json")
        .unwrap_err()
        .to_string()
}

#[test]
fn original_dynamic_config_parses_unchanged() {
    let p = Policy::parse(GOOD.as_bytes(), "dynamic_config.json").unwrap();
    assert!(p.verify_mr_enclave && p.verify_mr_signer && p.verify_isv_prod_id && p.verify_isv_svn);
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.entries[0].mr_enclave, Some([0xaa; 32]));
    assert_eq!(p.allowed_tcb_statuses, ["UpToDate"]);
    assert!(!p.allow_debug && !p.allow_simulated);
}

#[test]
fn policy_digest_changes_with_the_file() {
    let a = Policy::parse(GOOD.as_bytes(), "a").unwrap();
    let b = Policy::parse(GOOD.replace("\"0\"}", "\"1\"}").as_bytes(), "b").unwrap();
    assert_ne!(a.digest_hex(), b.digest_hex());
}

#[test]
fn policy_rejects_short_hex() {
    let e = policy_err(&GOOD.replace(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "AAAA",
    ));
    assert!(
        e.contains("sgx_mrs[0].mr_enclave") && e.contains("64 hex digits"),
        "{e}"
    );
}

#[test]
fn policy_rejects_non_hex() {
    let e = policy_err(&GOOD.replace(
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        &"zz".repeat(32),
    ));
    assert!(e.contains("sgx_mrs[0].mr_signer") && e.contains("not hex"), "{e}");
}

#[test]
fn policy_rejects_flag_that_is_neither_on_nor_off() {
    let e = policy_err(&GOOD.replace(r#""verify_mr_signer":"on""#, r#""verify_mr_signer":"ON""#));
    assert!(e.contains("verify_mr_signer") && e.contains("\"on\" or \"off\""), "{e}");
}

#[test]
fn policy_rejects_missing_flag() {
    let e = policy_err(&GOOD.replace(r#""verify_isv_svn":"on","#, ""));
    assert!(e.contains("verify_isv_svn: missing"), "{e}");
}

#[test]
fn policy_rejects_all_flags_off() {
    let e = policy_err(&GOOD.replace(":\"on\"", ":\"off\""));
    assert!(e.contains("every verify flag is off"), "{e}");
}

#[test]
fn policy_rejects_unknown_key() {
    let e = policy_err(&GOOD.replace("verify_in_enclave", "verify_mr_enclav"));
    assert!(e.contains("verify_mr_enclav: unknown key"), "{e}");
}

#[test]
fn policy_rejects_unknown_entry_key() {
    let e = policy_err(&GOOD.replace(r#""isv_svn":"0""#, r#""isv_svm":"0""#));
    assert!(e.contains("sgx_mrs[0].isv_svm: unknown key"), "{e}");
}

#[test]
fn policy_rejects_missing_field_whose_check_is_on() {
    let e = policy_err(&GOOD.replace(r#""isv_prod_id":"0","#, ""));
    assert!(e.contains("sgx_mrs[0].isv_prod_id: missing"), "{e}");
}

#[test]
fn policy_rejects_non_decimal_id() {
    let e = policy_err(&GOOD.replace(r#""isv_prod_id":"0""#, r#""isv_prod_id":"0x1""#));
    assert!(
        e.contains("sgx_mrs[0].isv_prod_id") && e.contains("not a decimal number"),
        "{e}"
    );
}

#[test]
fn policy_rejects_id_over_16_bits() {
    let e = policy_err(&GOOD.replace(r#""isv_svn":"0""#, r#""isv_svn":"70000""#));
    assert!(e.contains("sgx_mrs[0].isv_svn") && e.contains("16 bits"), "{e}");
}

#[test]
fn policy_rejects_both_isv_svn_and_minimum() {
    let e = policy_err(&GOOD.replace(r#""isv_svn":"0""#, r#""isv_svn":"0","min_isv_svn":"1""#));
    assert!(e.contains("not both"), "{e}");
}

#[test]
fn policy_rejects_unknown_tcb_status() {
    let e = policy_err(&GOOD.replace(r#""other":[]"#, r#""allowed_tcb_statuses":["Revoked"]"#));
    assert!(e.contains("allowed_tcb_statuses") && e.contains("Revoked"), "{e}");
}

#[test]
fn policy_rejects_simulation_without_roots() {
    let e = policy_err(&GOOD.replace(r#""other":[]"#, r#""allow_simulated":true"#));
    assert!(e.contains("simulated_roots"), "{e}");
}

#[test]
fn policy_rejects_non_boolean_allow_debug() {
    let e = policy_err(&GOOD.replace(r#""other":[]"#, r#""allow_debug":"yes""#));
    assert!(e.contains("allow_debug: must be true or false"), "{e}");
}

#[test]
fn policy_rejects_invalid_json() {
    let e = policy_err("{\"verify_mr_enclave\":");
    assert!(e.contains("dynamic_config.json: (json)"), "{e}");
}

#[test]
fn empty_sgx_mrs_rejects_every_enclave() {
    let p = Policy::parse(
        GOOD.replace(&GOOD[GOOD.find("[{").unwrap()..GOOD.rfind('}').unwrap()], "[]")
            .as_bytes(),
        "p",
    )
    .unwrap();
    let id = EnclaveIdentity {
        mr_enclave: [0xaa; 32],
        mr_signer: [0xbb; 32],
        isv_prod_id: 0,
        isv_svn: 0,
        attributes: [5; 16],
    };
    assert!(
        p.check_identity(&Identity::Sgx(id.clone()), Mode::Sgx)
            .unwrap_err()
            .0
            .contains("accepts no enclave")
    );
}

#[test]
fn any_entry_may_match_and_flags_off_ignore_fields() {
    let json = r#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
      "sgx_mrs":[{"mr_enclave":"0101010101010101010101010101010101010101010101010101010101010101"},
                 {"mr_enclave":"0202020202020202020202020202020202020202020202020202020202020202","mr_signer":"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"}]}"#;
    let p = Policy::parse(json.as_bytes(), "p").unwrap();
    let id = |m: u8| EnclaveIdentity {
        mr_enclave: [m; 32],
        mr_signer: [9; 32],
        isv_prod_id: 4,
        isv_svn: 4,
        attributes: [5; 16],
    };
    assert_eq!(p.check_identity(&Identity::Sgx(id(2).clone()), Mode::Sgx), Ok(vec![1]));
    assert_eq!(p.check_identity(&Identity::Sgx(id(1).clone()), Mode::Sgx), Ok(vec![0]));
    let e = p
        .check_identity(&Identity::Sgx(id(3).clone()), Mode::Sgx)
        .unwrap_err()
        .0;
    assert!(
        e.contains("sgx_mrs[0]: mr_enclave expected") && e.contains("sgx_mrs[1]: mr_enclave expected"),
        "{e}"
    );
}

// ---- MRSIGNER ----

const EXPECTED_MRSIGNER: &str = "03c4738a93eea396559449ae34e02f6af1233b14804e7a33416e9f5bad96ba3d";

fn mrsigner_of(file: &str) -> Result<[u8; 32], AttestError> {
    vfl_attest::mrsigner::from_pem(&std::fs::read(format!("{FIX}/signing-key/{file}")).unwrap())
}

#[test]
fn mrsigner_from_every_key_format() {
    for f in [
        "test-only-enclave-key.pkcs1.pem",
        "test-only-enclave-key.pkcs8.pem",
        "test-only-enclave-key.pub.pem",
        "test-only-enclave-key.rsapub.pem",
    ] {
        assert_eq!(hex::encode(mrsigner_of(f).unwrap()), EXPECTED_MRSIGNER, "{f}");
    }
}

#[test]
fn mrsigner_refuses_a_key_sgx_cannot_use() {
    let e = mrsigner_of("test-only-rsa2048-e65537.pem").unwrap_err().to_string();
    assert!(e.contains("RSA-3072") && e.contains("2048 bits"), "{e}");
}

#[test]
fn mrsigner_refuses_non_rsa_pem() {
    let root = DevRoot::generate().unwrap();
    let _ = root;
    let e =
        vfl_attest::mrsigner::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap_err();
    assert!(e.to_string().contains("not an RSA key"), "{e}");
}

// ---- the SGX device attester, against a directory standing in for /dev/attestation ----

fn device_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vfl-attest-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn sgx_attester_refuses_a_missing_device() {
    let e = SgxAttester::open(Path::new("/nonexistent/attestation"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not running inside a Gramine SGX enclave"), "{e}");
}

#[test]
fn sgx_attester_refuses_gramine_direct() {
    let d = device_dir("direct");
    std::fs::create_dir_all(d.join("keys")).unwrap();
    let e = SgxAttester::open(&d).err().unwrap().to_string();
    assert!(e.contains("gramine-direct"), "{e}");
}

#[test]
fn sgx_attester_refuses_attestation_type_none() {
    let d = device_dir("none");
    std::fs::write(d.join("attestation_type"), "none").unwrap();
    let e = SgxAttester::open(&d).err().unwrap().to_string();
    assert!(e.contains("sgx.remote_attestation = \"dcap\""), "{e}");
}

#[test]
fn sgx_attester_writes_report_data_and_reads_the_quote() {
    let d = device_dir("dcap");
    std::fs::write(d.join("attestation_type"), "dcap").unwrap();
    // Stand in for the quoting enclave: a quote over report data R.
    let root = DevRoot::generate().unwrap();
    let sim = SimAttester::new(
        &root,
        &SimIdentity {
            mr_enclave: [4; 32],
            mr_signer: None,
            isv_prod_id: 1,
            isv_svn: 1,
            debug: false,
        },
        &SimPlatformOptions::fresh(Clock::System.now()),
    )
    .unwrap();
    let r = [0x5c; 64];
    std::fs::write(d.join("quote"), sim.quote(&r).unwrap()).unwrap();
    let a = SgxAttester::open(&d).unwrap();
    let q = a.quote(&r).unwrap();
    assert_eq!(std::fs::read(d.join("user_report_data")).unwrap(), r);
    assert_eq!(
        vfl_attest::quote::QuoteView::parse(&q)
            .unwrap()
            .identity()
            .sgx()
            .unwrap()
            .mr_enclave,
        [4; 32]
    );
    // A device whose quote does not carry what we wrote is refused.
    let e = a.quote(&[0x11; 64]).unwrap_err().to_string();
    assert!(e.contains("does not carry the report data"), "{e}");
}

#[test]
fn self_entries_resolve_to_our_own_identity() {
    let json = r#"{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"on","verify_isv_svn":"on",
      "sgx_mrs":[{"mr_enclave":"self","isv_prod_id":"1","min_isv_svn":"1"}]}"#;
    let mut p = Policy::parse(json.as_bytes(), "p").unwrap();
    assert!(p.uses_self());
    let me = EnclaveIdentity {
        mr_enclave: [7; 32],
        mr_signer: [1; 32],
        isv_prod_id: 1,
        isv_svn: 3,
        attributes: [5; 16],
    };
    // Unbound, "self" matches nothing.
    assert!(p.check_identity(&Identity::Sgx(me.clone()), Mode::Sgx).is_err());
    p.bind_self(&Identity::Sgx(me.clone()));
    assert_eq!(p.check_identity(&Identity::Sgx(me.clone()), Mode::Sgx), Ok(vec![0]));
    let other = EnclaveIdentity {
        mr_enclave: [8; 32],
        ..me.clone()
    };
    let e = p
        .check_identity(&Identity::Sgx(other.clone()), Mode::Sgx)
        .unwrap_err()
        .0;
    assert!(
        e.contains(&format!(
            "mr_enclave expected {} got {}",
            hex::encode([7u8; 32]),
            hex::encode([8u8; 32])
        )),
        "{e}"
    );
}
