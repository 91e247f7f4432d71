//! `vfl attest`: verify, self, mrsigner.

use std::process::Command;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../attest/tests/fixtures");

fn vfl(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfl")).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn sample_args(at: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "attest".to_string(),
        "verify".into(),
        "--quote".into(),
        format!("{FIX}/dcap-qvl/sgx_quote"),
        "--collateral".into(),
        format!("{FIX}/dcap-qvl/sgx_quote_collateral.json"),
    ];
    if let Some(t) = at {
        a.extend(["--at".into(), t.into()]);
    }
    a
}

#[test]
fn verify_prints_the_report_of_intels_sample_quote() {
    let a = sample_args(Some("2025-06-20T00:00:00Z"));
    let (ok, out, err) = vfl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tee_type"], "sgx");
    assert!(v["mr_enclave"].as_str().unwrap().starts_with("33d8736d"));
    assert!(v["mr_signer"].as_str().unwrap().starts_with("815f42f1"));
    assert_eq!(v["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        v["advisory_ids"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
}

#[test]
fn verify_fails_with_the_reason_once_the_collateral_expired() {
    let a = sample_args(None);
    let (ok, _, err) = vfl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(err.contains("collateral is not valid"), "{err}");
}

#[test]
fn verify_with_a_policy_that_does_not_list_the_enclave_fails_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("vfl-attest-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"verify_mr_enclave":"on","verify_mr_signer":"off","verify_isv_prod_id":"off","verify_isv_svn":"off",
               "allowed_tcb_statuses":["ConfigurationAndSWHardeningNeeded"],"sgx_mrs":[{{"mr_enclave":"{}"}}]}}"#,
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let mut a = sample_args(Some("2025-06-20T00:00:00Z"));
    a.extend(["--policy".into(), policy.display().to_string()]);
    let (ok, _, err) = vfl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok);
    assert!(
        err.contains(&format!("mr_enclave expected {}", "ab".repeat(32))),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verify_rejects_a_malformed_time() {
    let a = sample_args(Some("yesterday"));
    let (ok, _, err) = vfl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok && err.contains("not an RFC 3339 time"), "{err}");
}

#[test]
fn mrsigner_of_a_test_key() {
    let key = format!("{FIX}/signing-key/test-only-enclave-key.pub.pem");
    let (ok, out, err) = vfl(&["attest", "mrsigner", "--key", &key]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "03c4738a93eea396559449ae34e02f6af1233b14804e7a33416e9f5bad96ba3d"
    );
}

#[test]
fn self_outside_an_enclave_in_sgx_mode_says_so() {
    let (ok, _, err) = vfl(&["attest", "self", "--attestation-device", "/nonexistent/attestation"]);
    assert!(!ok && err.contains("not running inside a Gramine SGX enclave"), "{err}");
}

#[test]
fn trust_adds_a_peer_identity_to_a_policy_once() {
    let dir = std::env::temp_dir().join(format!("vfl-attest-trust-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ident = dir.join("peer.json");
    std::fs::write(
        &ident,
        serde_json::json!({"mr_enclave": "cd".repeat(32), "mr_signer": "ef".repeat(32), "isv_prod_id": 1, "isv_svn": 3, "debug": false})
            .to_string(),
    )
    .unwrap();
    let policy = dir.join("dynamic_config.json");
    let args = [
        "attest",
        "trust",
        "--min-svn",
        "--identity",
        ident.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ];
    let (ok, out, err) = vfl(&args);
    assert!(ok, "{err}");
    assert!(out.contains("added sgx_mrs entry"), "{out}");
    let (ok, out, _) = vfl(&args);
    assert!(ok && out.contains("already accepts"), "{out}");
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&policy).unwrap()).unwrap();
    assert_eq!(p["sgx_mrs"].as_array().unwrap().len(), 1);
    assert_eq!(p["sgx_mrs"][0]["mr_enclave"], "cd".repeat(32));
    assert_eq!(p["sgx_mrs"][0]["min_isv_svn"], "3");
    // A broken identity file is refused and the policy is left as it was.
    std::fs::write(&ident, r#"{"mr_enclave": "zz"}"#).unwrap();
    let before = std::fs::read(&policy).unwrap();
    let (ok, _, err) = vfl(&args);
    assert!(!ok && err.contains("no mr_signer"), "{err}");
    assert_eq!(std::fs::read(&policy).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verify_with_a_policy_that_lists_the_enclave_reports_the_matching_entry() {
    let a = sample_args(Some("2025-06-20T00:00:00Z"));
    let (ok, out, err) = vfl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dir = std::env::temp_dir().join(format!("vfl-attest-cli-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
            "allowed_tcb_statuses": ["ConfigurationAndSWHardeningNeeded"],
            "sgx_mrs": [
                {"mr_enclave": "00".repeat(32), "mr_signer": v["mr_signer"], "isv_prod_id": "0", "isv_svn": "0"},
                {"mr_enclave": v["mr_enclave"], "mr_signer": v["mr_signer"], "isv_prod_id": "0", "min_isv_svn": "0"},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let mut a = a;
    a.extend(["--policy".into(), policy.display().to_string()]);
    let (ok, out, err) = vfl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["policy"]["matched_entry"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}
