//! TDX parties through the binary: `vfl attest verify` on Intel's TDX sample
//! with a `tdx_mrs` policy, and a two-party run between a (simulated) SGX
//! leader and a (simulated) TDX follower, each admitted by its list.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{MODEL, finish, free_port, spawn};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../attest/tests/fixtures/dcap-qvl");
/// Inside the `tdx_quote` collateral's window.
const AT: &str = "2025-06-20T00:00:00Z";

fn vfl(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfl")).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vfl-tdx-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, v: &serde_json::Value) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn verify(policy: Option<&str>) -> (bool, String, String) {
    let (q, c) = (format!("{FIX}/tdx_quote"), format!("{FIX}/tdx_quote_collateral.json"));
    let mut args = vec!["attest", "verify", "--quote", &q, "--collateral", &c, "--at", AT];
    if let Some(p) = policy {
        args.extend(["--policy", p]);
    }
    vfl(&args)
}

fn sample_mr_td() -> String {
    let (ok, out, err) = verify(None);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tee_type"], "tdx");
    assert_eq!(v["quote_version"], 4);
    v["mr_td"].as_str().unwrap().to_string()
}

#[test]
fn verify_applies_tdx_mrs_a_pinned_mr_td_is_accepted() {
    let d = Dir::new("pinned");
    let mr_td = sample_mr_td();
    assert!(mr_td.starts_with("91eb2b44"), "{mr_td}");
    let p = d.write(
        "p.json",
        &serde_json::json!({"tdx_mrs": [{"mr_td": "00".repeat(48)}, {"mr_td": mr_td, "role": "follower"}]}),
    );
    let (ok, out, err) = verify(Some(&p));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["policy"]["list"], "tdx_mrs");
    assert_eq!(v["policy"]["matched_entries"], serde_json::json!([1]));
    assert_eq!(v["policy"]["admitted_as"], serde_json::json!(["follower"]));
}

#[test]
fn verify_refuses_another_mr_td_naming_the_field() {
    let d = Dir::new("other");
    let p = d.write("p.json", &serde_json::json!({"tdx_mrs": [{"mr_td": "ab".repeat(48)}]}));
    let (ok, _, err) = verify(Some(&p));
    assert!(!ok);
    assert!(err.contains("tdx_mrs[0]: mr_td expected abab"), "{err}");
}

#[test]
fn verify_with_an_sgx_only_policy_refuses_a_tdx_quote() {
    let d = Dir::new("sgx-only");
    let p = d.write(
        "p.json",
        &serde_json::json!({
            "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
            "sgx_mrs": [{"mr_enclave": "11".repeat(32), "mr_signer": "22".repeat(32), "isv_prod_id": "1", "isv_svn": "1"}],
        }),
    );
    let (ok, _, err) = verify(Some(&p));
    assert!(!ok);
    assert!(err.contains("tdx_mrs is empty or missing"), "{err}");
}

#[test]
fn tdx_attestation_outside_a_td_says_what_to_do() {
    let d = Dir::new("no-td");
    let (ok, _, err) = vfl(&[
        "attest",
        "self",
        "--attestation",
        "tdx",
        "--tsm-report-root",
        &d.0.join("missing").display().to_string(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("no configfs-tsm report interface") && err.contains("simulated-tdx"),
        "{err}"
    );
}

/// `vfl attest self` of a simulated party; its identity file.
fn self_of(dir: &Path, attestation: &str, role: &str) -> serde_json::Value {
    let (ok, out, err) = vfl(&[
        "attest",
        "self",
        "--attestation",
        attestation,
        "--role",
        role,
        "--sim-root-key",
        &dir.join(format!("{role}-root.pem")).display().to_string(),
    ]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// A simulated SGX leader and a simulated TDX follower, each with its own
/// development root; `leader_td` overrides the follower entry the leader's
/// policy holds. Returns both logs and whether each succeeded.
fn mixed_run(name: &str, leader_td: Option<serde_json::Value>) -> ((bool, String), (bool, String)) {
    let d = Dir::new(name);
    let dir = &d.0;
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args([
            "data",
            "generate",
            "--files",
            "2",
            "--rows-per-file",
            "200",
            "--slots",
            "16",
            "--out",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("model.toml"), MODEL).unwrap();
    let leader = self_of(dir, "simulated", "leader");
    let follower = self_of(dir, "simulated-tdx", "follower");
    assert_eq!(follower["tee_type"], "tdx");
    assert_eq!(follower["tdx_mrs_entry"]["mode"], "simulated");
    let leader_policy = d.write(
        "leader-policy.json",
        &serde_json::json!({
            "tdx_mrs": [leader_td.unwrap_or_else(|| follower["tdx_mrs_entry"].clone())],
            "allow_simulated": true, "simulated_roots": [follower["simulated_root"].clone()],
        }),
    );
    let follower_policy = d.write(
        "follower-policy.json",
        &serde_json::json!({
            "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
            "sgx_mrs": [leader["sgx_mrs_entry"].clone()],
            "allow_simulated": true, "simulated_roots": [leader["simulated_root"].clone()],
        }),
    );
    let port = free_port();
    let model = dir.join("model.toml").display().to_string();
    let data = |r: &str| dir.join(r).display().to_string();
    let root = |r: &str| dir.join(format!("{r}-root.pem")).display().to_string();
    let l = spawn(
        &["leader", "--peer-timeout", "20", "--epoch-num", "1"],
        &[
            "--data-path",
            &data("leader"),
            "--model",
            &model,
            "--local-addr",
            &format!("127.0.0.1:{port}"),
            "--attestation",
            "simulated",
            "--sim-root-key",
            &root("leader"),
            "--policy",
            &leader_policy,
        ]
        .map(String::from),
    );
    let f = spawn(
        &["follower", "--peer-timeout", "20"],
        &[
            "--data-path",
            &data("follower"),
            "--model",
            &model,
            "--peer-addr",
            &format!("127.0.0.1:{port}"),
            "--attestation",
            "simulated-tdx",
            "--sim-root-key",
            &root("follower"),
            "--policy",
            &follower_policy,
        ]
        .map(String::from),
    );
    let fo = finish(f);
    let mut l = l;
    if !fo.0 {
        let _ = l.kill();
    }
    (finish(l), fo)
}

#[test]
fn an_sgx_leader_and_a_tdx_follower_train_each_admitted_by_its_list() {
    let ((lok, lout), (fok, fout)) = mixed_run("mixed", None);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("1 epochs") && lout.contains("400 examples"), "{lout}");
    assert!(fout.contains("400 examples"), "{fout}");
    // Each side logged the peer it admitted, with the list that admitted it.
    assert!(
        lout.contains("simulated peer (tdx) mr_td=") && lout.contains("tdx_mrs[0]"),
        "{lout}"
    );
    assert!(
        fout.contains("simulated peer (sgx) mr_enclave=") && fout.contains("sgx_mrs[0]"),
        "{fout}"
    );
}

#[test]
fn an_sgx_leader_refuses_a_td_whose_mr_td_it_does_not_pin() {
    let other = serde_json::json!({"mode": "simulated", "role": "follower", "mr_td": "ab".repeat(48)});
    let ((_, lout), (fok, fout)) = mixed_run("mixed-refused", Some(other));
    assert!(!fok, "{fout}");
    assert!(
        lout.contains("tdx_mrs[0]: mr_td expected abab") || fout.contains("tdx_mrs[0]: mr_td expected abab"),
        "leader:\n{lout}\nfollower:\n{fout}"
    );
}

#[test]
fn trust_adds_a_td_identity_to_tdx_mrs_once() {
    let d = Dir::new("trust");
    // As a hardware TD's identity file reads (no "mode": "simulated").
    let mut me = self_of(&d.0, "simulated-tdx", "follower");
    me["tdx_mrs_entry"].as_object_mut().unwrap().remove("mode");
    let ident = d.write("td.json", &me);
    let policy = d.0.join("dynamic_config.json").display().to_string();
    let args = ["attest", "trust", "--identity", &ident, "--policy", &policy];
    let (ok, out, err) = vfl(&args);
    assert!(ok, "{err}");
    assert!(out.contains("now trusts the follower TD mr_td"), "{out}");
    let (ok, out, _) = vfl(&args);
    assert!(ok && out.contains("already trusts"), "{out}");
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&policy).unwrap()).unwrap();
    assert!(p.get("sgx_mrs").is_none(), "{p}");
    let entries = p["tdx_mrs"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0], me["tdx_mrs_entry"]);
    // An enclave identity added later gets its list and the enclave flags.
    let mut sgx = self_of(&d.0, "simulated", "leader");
    sgx["sgx_mrs_entry"].as_object_mut().unwrap().remove("mode");
    sgx.as_object_mut().unwrap().remove("mode");
    let sgx_ident = d.write("sgx.json", &sgx);
    let (ok, _, err) = vfl(&["attest", "trust", "--identity", &sgx_ident, "--policy", &policy]);
    assert!(ok, "{err}");
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&policy).unwrap()).unwrap();
    assert_eq!(p["sgx_mrs"].as_array().unwrap().len(), 1);
    assert_eq!(p["verify_mr_enclave"], "on");
    assert_eq!(p["tdx_mrs"].as_array().unwrap().len(), 1);
}

#[test]
fn trust_refuses_a_td_identity_without_rtmr2() {
    let d = Dir::new("trust-weak");
    let mut me = self_of(&d.0, "simulated-tdx", "follower");
    me["tdx_mrs_entry"].as_object_mut().unwrap().remove("rtmr2");
    let ident = d.write("td.json", &me);
    let policy = d.0.join("dynamic_config.json");
    let (ok, _, err) = vfl(&[
        "attest",
        "trust",
        "--identity",
        &ident,
        "--policy",
        &policy.display().to_string(),
    ]);
    assert!(!ok);
    assert!(err.contains("no rtmr2"), "{err}");
    assert!(!policy.exists());
}

/// A TD has no sealing key: without --model-key (or with none) a TDX party
/// refuses to start, before it touches the report interface.
#[test]
fn a_tdx_party_needs_a_model_key() {
    let d = Dir::new("no-key");
    let p = d.write(
        "p.json",
        &serde_json::json!({"tdx_mrs": [{"role": "leader", "mr_td": "11".repeat(48), "rtmr0": "00".repeat(48),
                                          "rtmr1": "22".repeat(48), "rtmr2": "33".repeat(48)}]}),
    );
    for key in [None, Some("none"), Some("sgx-mrenclave")] {
        let mut args = vec![
            "follower",
            "--attestation",
            "tdx",
            "--policy",
            &p,
            "--data-path",
            "/nonexistent",
            "--peer-addr",
            "127.0.0.1:9",
        ];
        if let Some(k) = key {
            args.extend(["--model-key", k]);
        }
        let (ok, _, err) = vfl(&args);
        assert!(!ok);
        assert!(err.contains("a TD has no sealing key"), "{key:?}: {err}");
    }
}
