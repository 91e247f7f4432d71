//! Shared by the CLI tests: simulated RA-TLS set-up for two parties.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// A small model over 16 slots (data of `vfl data generate --slots 16`).
#[allow(dead_code)]
pub const MODEL: &str = r#"
name = "two-party-test"
seed = 3
init = { kind = "uniform", limit = 0.05 }
optimizer = { kind = "adam", learning_rate = 0.01 }
[leader]
sparse = [{ prefix = "x_", count = 16, vocab = 101, dim = 8 }]
layers = [{ units = 32, activation = "relu" }, { units = 8 }]
[follower]
sparse = [{ prefix = "x_", count = 16, vocab = 101, dim = 8 }]
layers = [{ units = 8, activation = "relu" }]
[head]
layers = [{ units = 2, bias = false }]
loss = "softmax_cross_entropy"
"#;

/// A loopback port that was free a moment ago.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `vfl ARGS EXTRA` with its output captured.
#[allow(dead_code)]
pub fn spawn(args: &[&str], extra: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(args)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a party; whether it succeeded, and its stdout and stderr.
#[allow(dead_code)]
pub fn finish(c: Child) -> (bool, String) {
    let Output { status, stdout, stderr } = c.wait_with_output().unwrap();
    (
        status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    )
}

/// `vfl attest self` with a development root under `dir`, plus extra flags.
#[allow(dead_code)]
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
#[allow(dead_code)]
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
