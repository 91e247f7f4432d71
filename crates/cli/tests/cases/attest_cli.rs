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
fn trust_adds_a_role_entry_to_a_policy_once() {
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
        "--role",
        "follower",
        "--identity",
        ident.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ];
    let (ok, out, err) = vfl(&args);
    assert!(ok, "{err}");
    assert!(out.contains("now trusts the follower running enclave self"), "{out}");
    // The file's own mr_enclave is not followed (it would admit the peer's code).
    assert!(err.contains("--pin-enclave"), "{err}");
    let (ok, out, _) = vfl(&args);
    assert!(ok && out.contains("already trusts"), "{out}");
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&policy).unwrap()).unwrap();
    assert_eq!(p["sgx_mrs"].as_array().unwrap().len(), 1);
    assert_eq!(p["sgx_mrs"][0]["mr_enclave"], "self");
    // Only on request.
    let mut pinned = args.to_vec();
    pinned.push("--pin-enclave");
    let (ok, _, err) = vfl(&pinned);
    assert!(ok, "{err}");
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&policy).unwrap()).unwrap();
    assert_eq!(p["sgx_mrs"].as_array().unwrap().len(), 2);
    assert!(
        p["sgx_mrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mr_enclave"] == "cd".repeat(32))
    );
    assert_eq!(p["sgx_mrs"][0]["role"], "follower");
    assert_eq!(p["sgx_mrs"][0]["min_isv_svn"], "3");
    // An identity without a role and no --role is refused.
    let args_no_role: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--role" && *a != "follower")
        .collect();
    let (ok, _, err) = vfl(&args_no_role);
    assert!(!ok && err.contains("no role"), "{err}");
    // A broken identity file is refused and the policy is left as it was.
    std::fs::write(&ident, r#"{"mr_enclave": "zz", "role": "leader"}"#).unwrap();
    let before = std::fs::read(&policy).unwrap();
    let (ok, _, err) = vfl(&args);
    assert!(!ok && err.contains("no mr_signer"), "{err}");
    assert_eq!(std::fs::read(&policy).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The deployment workflow without hand-editing: each party makes an
/// identity file from its own signing key, both trust both files in
/// either order, and they end up with byte-identical policies (hence the
/// same MRENCLAVE) that admit each signer only in its own role.
#[test]
fn two_parties_trusting_each_other_get_the_same_policy_in_any_order() {
    let dir = std::env::temp_dir().join(format!("vfl-attest-2trust-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../attest/tests/fixtures/signing-key/test-only-enclave-key.pkcs8.pem"
    );
    let leader = dir.join("leader.json");
    let (ok, _, err) = vfl(&[
        "attest",
        "party",
        "--role",
        "leader",
        "--key",
        key,
        "--out",
        leader.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // The follower's identity, as its own `vfl attest party` would write it.
    let follower = dir.join("follower.json");
    std::fs::write(
        &follower,
        serde_json::json!({"role": "follower", "mr_signer": "ab".repeat(32), "isv_prod_id": "1", "isv_svn": "1"})
            .to_string(),
    )
    .unwrap();
    let trust = |policy: &std::path::Path, ident: &std::path::Path| {
        let (ok, _, err) = vfl(&[
            "attest",
            "trust",
            "--min-svn",
            "--identity",
            ident.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
    };
    let (a, b) = (dir.join("a.json"), dir.join("b.json"));
    trust(&a, &leader);
    trust(&a, &follower);
    trust(&b, &follower);
    trust(&b, &leader);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let p = vfl_attest::Policy::load(&a).unwrap();
    assert!(p.verify_mr_enclave && p.verify_mr_signer);
    assert_eq!(p.entries.len(), 2);
    let roles: Vec<_> = p.entries.iter().map(|e| e.role).collect();
    assert_eq!(
        roles,
        [
            Some(vfl_attest::PartyRole::Follower),
            Some(vfl_attest::PartyRole::Leader)
        ]
    );
    assert!(p.entries.iter().all(|e| e.mr_enclave_self));
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
    assert_eq!(v["policy"]["matched_entries"], serde_json::json!([1]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A party with hardware evidence refuses a policy that admits simulated
/// peers, before it takes a quote (a stand-in /dev/attestation that has a
/// sealing key but would give no quote).
#[test]
fn an_sgx_party_refuses_a_policy_that_admits_simulated_peers() {
    let dir = std::env::temp_dir().join(format!("vfl-attest-sgxsim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dev = dir.join("attestation");
    std::fs::create_dir_all(dev.join("keys")).unwrap();
    std::fs::write(dev.join("attestation_type"), "dcap").unwrap();
    std::fs::write(dev.join("keys/_sgx_mrenclave"), [3u8; 16]).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let policy = dir.join("p.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
            "sgx_mrs": [{"mr_enclave": "self", "mr_signer": "ab".repeat(32), "isv_prod_id": "1", "isv_svn": "1", "mode": "simulated"}],
            "allow_simulated": true, "simulated_roots": ["cd".repeat(32)],
        })
        .to_string(),
    )
    .unwrap();
    let (ok, _, err) = vfl(&[
        "leader",
        "--attestation",
        "sgx",
        "--attestation-device",
        dev.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--data-path",
        dir.join("data").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("this party runs with hardware evidence"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A policy file with a key given twice is refused, naming the key.
#[test]
fn a_policy_with_a_duplicate_key_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("vfl-attest-dup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.json");
    std::fs::write(
        &policy,
        r#"{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[],"allow_debug":false,"allow_debug":true}"#,
    )
    .unwrap();
    let (ok, _, err) = vfl(&[
        "leader",
        "--attestation",
        "simulated",
        "--sim-root-key",
        dir.join("root.pem").to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--data-path",
        dir.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("allow_debug: the key appears twice"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
