//! Shared by the CLI tests: simulated RA-TLS set-up for two parties.

use std::path::Path;
use std::process::Command;

/// `vfl attest self` with a development root under `dir`, plus extra flags.
pub fn attest_self(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(["attest", "self", "--attestation", "simulated", "--sim-root-key"])
        .arg(dir.join("dev-root.pem"))
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Creates a development root and a policy (under `dir`) that accepts this
/// vfl binary in simulated mode; returns the flags both parties pass.
pub fn sim_flags(dir: &Path) -> Vec<String> {
    let policy_path = dir.join("dynamic_config.json");
    let flags = vec![
        "--attestation".into(),
        "simulated".into(),
        "--sim-root-key".into(),
        dir.join("dev-root.pem").display().to_string(),
        "--policy".into(),
        policy_path.display().to_string(),
    ];
    if policy_path.exists() {
        return flags;
    }
    std::fs::create_dir_all(dir).unwrap();
    let me = attest_self(dir, &[]);
    let policy = serde_json::json!({
        "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
        "sgx_mrs": [me["sgx_mrs_entry"].clone()],
        "allow_simulated": true,
        "simulated_roots": [me["simulated_root"].clone()],
    });
    let tmp = dir.join("dynamic_config.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&policy).unwrap()).unwrap();
    std::fs::rename(&tmp, &policy_path).unwrap();
    flags
}
