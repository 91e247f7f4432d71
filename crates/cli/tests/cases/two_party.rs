//! The leader and the follower as two OS processes on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vfl_data::tfrecord::{RecordReader, RecordWriter};

use crate::proxy;
use proxy::Proxy;

use crate::common;
use crate::common::{MODEL, finish, free_port, spawn};

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vfl-2p-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.toml"), MODEL).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
            .args([
                "data",
                "generate",
                "--files",
                "4",
                "--rows-per-file",
                "300",
                "--slots",
                "16",
                "--out",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Fixture { dir }
    }

    /// Simulated RA-TLS flags for both parties (one development root).
    fn security(&self) -> Vec<String> {
        common::sim_flags(&self.dir.join("attestation"))
    }

    fn model(&self) -> PathBuf {
        self.dir.join("model.toml")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn leader(f: &Fixture, port: u16, extra: &[&str]) -> Child {
    let mut a: Vec<String> = vec![
        "--data-path".into(),
        f.dir.join("leader").display().to_string(),
        "--model".into(),
        f.model().display().to_string(),
        "--local-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    a.extend(f.security());
    a.extend(extra.iter().map(|s| s.to_string()));
    spawn(&["leader", "--peer-timeout", "20"], &a)
}

fn follower(f: &Fixture, port: u16, extra: &[&str]) -> Child {
    let model = extra
        .iter()
        .position(|a| *a == "--model")
        .map(|i| extra[i + 1].to_string());
    let extra: Vec<&str> = match extra.iter().position(|a| *a == "--model") {
        Some(i) => extra[..i].iter().chain(&extra[i + 2..]).copied().collect(),
        None => extra.to_vec(),
    };
    let mut a: Vec<String> = vec![
        "--data-path".into(),
        f.dir.join("follower").display().to_string(),
        "--model".into(),
        model.unwrap_or_else(|| f.model().display().to_string()),
        "--peer-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    a.extend(f.security());
    a.extend(extra.iter().map(|s| s.to_string()));
    spawn(&["follower", "--peer-timeout", "20"], &a)
}

fn auc_of(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.contains("last epoch: AUC"))
        .unwrap_or_else(|| panic!("no AUC in {out}"));
    line.split("AUC ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn follower_first_then_leader_trains() {
    let f = Fixture::new("ff");
    let port = free_port();
    let fo = follower(&f, port, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let le = leader(&f, port, &["--epoch-num", "3", "--shuffle"]);
    let (lok, lout) = finish(le);
    let (fok, fout) = finish(fo);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("3 epochs") && lout.contains("3600 examples"), "{lout}");
    assert!(fout.contains("3600 examples"), "{fout}");
    // Planted labels: the third epoch's training AUC is well above chance.
    assert!(auc_of(&lout) > 0.7, "{lout}");
}

/// The original's scripts pass both addresses to both roles: accepted, the
/// unused one logged as ignored.
#[test]
fn both_addresses_on_both_roles_are_accepted_and_the_unused_one_is_logged() {
    let f = Fixture::new("both-addrs");
    let port = free_port();
    let other = format!("127.0.0.1:{}", free_port());
    let le = leader(&f, port, &["--peer-addr", &other]);
    let fo = follower(&f, port, &["--local-addr", &other]);
    let (lok, lout) = finish(le);
    let (fok, fout) = finish(fo);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("--peer-addr is ignored by the leader"), "{lout}");
    assert!(fout.contains("--local-addr is ignored by the follower"), "{fout}");
}

/// Through a TCP proxy (as behind a load balancer) the follower's first
/// attempts reach a proxy whose backend is not up: those connections close
/// before TLS says anything. That is not a refusal; the follower retries.
#[test]
fn follower_first_through_a_proxy_whose_backend_is_not_up_yet_trains() {
    let f = Fixture::new("fp");
    let port = free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap());
    let fo = follower(&f, proxy.addr.port(), &[]);
    std::thread::sleep(Duration::from_millis(500));
    let le = leader(&f, port, &[]);
    let (lok, lout) = finish(le);
    let (fok, fout) = finish(fo);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(proxy.accepted() >= 1, "the follower never got through");
    assert!(fout.contains("1200 examples"), "{fout}");
}

#[test]
fn leader_first_then_follower_after_a_5s_gap_trains() {
    let f = Fixture::new("lf");
    let port = free_port();
    let le = leader(&f, port, &[]);
    std::thread::sleep(Duration::from_secs(5));
    let fo = follower(&f, port, &[]);
    let (lok, lout) = finish(le);
    let (fok, fout) = finish(fo);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("1200 examples"), "{lout}");
}

fn refused(extra_follower: &[&str], field: &str) {
    let f = Fixture::new(field);
    let port = free_port();
    let mut la: Vec<String> = vec![
        "--data-path".into(),
        f.dir.join("leader").display().to_string(),
        "--model".into(),
        f.model().display().to_string(),
        "--local-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    la.extend(f.security());
    let le = spawn(&["leader", "--peer-timeout", "3"], &la);
    let fo = follower(&f, port, extra_follower);
    let (fok, fout) = finish(fo);
    let (lok, lout) = finish(le);
    assert!(!fok && !lok, "follower:\n{fout}\nleader:\n{lout}");
    assert!(fout.contains("refused") && fout.contains(field), "{fout}");
    assert!(lout.contains("refusing follower") && lout.contains(field), "{lout}");
}

#[test]
fn mismatched_batch_size_is_refused_at_connect() {
    refused(&["--batch-size", "64"], "batch_size");
}

#[test]
fn mismatched_application_id_is_refused_at_connect() {
    refused(&["--application-id", "other-job"], "application_id");
}

#[test]
fn mismatched_model_spec_is_refused_at_connect() {
    // The follower uses a preset; the leader the fixture's spec file.
    refused(&["--model", "wide_n_deep"], "model_fingerprint");
}

#[test]
fn follower_gives_up_on_a_leader_that_never_comes() {
    let f = Fixture::new("noleader");
    let port = free_port();
    let started = std::time::Instant::now();
    let mut fa: Vec<String> = vec![
        "--data-path".into(),
        f.dir.join("follower").display().to_string(),
        "--model".into(),
        f.model().display().to_string(),
        "--peer-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    fa.extend(f.security());
    let fo = spawn(&["follower", "--peer-timeout", "2"], &fa);
    let (ok, out) = finish(fo);
    assert!(!ok && out.contains("not reachable within 2 s"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn leader_gives_up_on_a_follower_that_never_comes() {
    let f = Fixture::new("nofollower");
    let mut la: Vec<String> = vec![
        "--data-path".into(),
        f.dir.join("leader").display().to_string(),
        "--model".into(),
        f.model().display().to_string(),
        "--local-addr".into(),
        "127.0.0.1:0".into(),
    ];
    la.extend(f.security());
    let le = spawn(&["leader", "--peer-timeout", "2"], &la);
    let (ok, out) = finish(le);
    assert!(!ok && out.contains("no follower connected within 2 s"), "{out}");
}

/// Swaps records `a` and `b` of a TFRecord file.
fn swap_records(path: &Path, a: usize, b: usize) {
    let mut r = RecordReader::open(path, vfl_data::tfrecord::Compression::Auto).unwrap();
    let mut recs = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        recs.push(rec.to_vec());
    }
    recs.swap(a, b);
    let mut w = RecordWriter::new(Vec::new());
    for rec in &recs {
        w.write_record(rec).unwrap();
    }
    std::fs::write(path, w.into_inner()).unwrap();
}

#[test]
fn misaligned_rows_stop_training_with_a_clear_error() {
    let f = Fixture::new("misaligned");
    swap_records(&f.dir.join("follower/01.tfrecord"), 10, 11);
    let port = free_port();
    let le = leader(&f, port, &[]);
    let fo = follower(&f, port, &[]);
    let (lok, lout) = finish(le);
    let (fok, fout) = finish(fo);
    assert!(!lok && !fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("misaligned data") && lout.contains("block #1"), "{lout}");
    assert!(fout.contains("misaligned data"), "{fout}");
}

#[test]
fn a_block_the_follower_lacks_is_an_error() {
    let f = Fixture::new("lacks");
    std::fs::remove_file(f.dir.join("follower/02.tfrecord")).unwrap();
    let port = free_port();
    let le = leader(&f, port, &[]);
    let fo = follower(&f, port, &[]);
    let (lok, lout) = finish(le);
    let (fok, fout) = finish(fo);
    assert!(!lok && !fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(fout.contains("no block `02`"), "{fout}");
    assert!(lout.contains("no block `02`"), "{lout}");
}

#[test]
fn the_default_is_sgx_attestation_and_outside_an_enclave_the_error_says_what_to_do() {
    let f = Fixture::new("default-sgx");
    let policy = f.dir.join("attestation");
    let flags = common::sim_flags(&policy);
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(["leader", "--local-addr", "127.0.0.1:0", "--data-path"])
        .arg(f.dir.join("leader"))
        .args(["--policy", &flags[5], "--attestation-device"])
        .arg(f.dir.join("no-such-device"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not running inside a Gramine SGX enclave") && err.contains("--attestation simulated"),
        "{err}"
    );
}

#[test]
fn without_a_policy_the_error_names_the_flag() {
    let f = Fixture::new("no-policy");
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .current_dir(&f.dir)
        .args(["follower", "--peer-addr", "127.0.0.1:1", "--data-path"])
        .arg(f.dir.join("follower"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no policy: give --policy FILE"), "{err}");
}

#[test]
fn plaintext_when_asked_explicitly_trains_with_a_warning() {
    let f = Fixture::new("plaintext");
    let port = free_port();
    let base = |role: &str| -> Vec<String> {
        vec![
            "--insecure-no-tls".into(),
            "--data-path".into(),
            f.dir.join(role).display().to_string(),
            "--model".into(),
            f.model().display().to_string(),
        ]
    };
    let mut la = base("leader");
    la.extend(["--local-addr".into(), format!("127.0.0.1:{port}")]);
    let mut fa = base("follower");
    fa.extend(["--peer-addr".into(), format!("127.0.0.1:{port}")]);
    let l = spawn(&["leader", "--peer-timeout", "20"], &la);
    let fo = spawn(&["follower", "--peer-timeout", "20"], &fa);
    let (lok, lout) = finish(l);
    let (fok, fout) = finish(fo);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("WARNING: --insecure-no-tls") && fout.contains("WARNING: --insecure-no-tls"));
}

/// One party claims an mr_enclave the other's policy does not list: both
/// exit with an error, the refusing side's log names the field with the
/// expected and presented values, the refused side's log says it was refused.
fn unlisted_mr_enclave(bad_role: &str) {
    let f = Fixture::new(&format!("unlisted-{bad_role}"));
    let port = free_port();
    let rogue = "22".repeat(32);
    let args = |role: &str| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--data-path".into(),
            f.dir.join(role).display().to_string(),
            "--model".into(),
            f.model().display().to_string(),
        ];
        a.extend(f.security());
        if role == bad_role {
            a.extend(["--sim-mr-enclave".into(), rogue.clone()]);
        }
        a
    };
    let mut la = args("leader");
    la.extend(["--local-addr".into(), format!("127.0.0.1:{port}")]);
    let mut fa = args("follower");
    fa.extend(["--peer-addr".into(), format!("127.0.0.1:{port}")]);
    let l = spawn(&["leader", "--peer-timeout", "10"], &la);
    let fo = spawn(&["follower", "--peer-timeout", "10"], &fa);
    let (lok, lout) = finish(l);
    let (fok, fout) = finish(fo);
    assert!(!lok && !fok, "leader:\n{lout}\nfollower:\n{fout}");
    let (judge, judged) = if bad_role == "follower" {
        (&lout, &fout)
    } else {
        (&fout, &lout)
    };
    let expected = common::attest_self(&f.dir.join("attestation"), &[])["mr_enclave"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        judge.contains(&format!("mr_enclave expected {expected} got {rogue}")),
        "refusing side:\n{judge}"
    );
    assert!(
        judged.contains("did not accept our evidence") || judged.contains("the peer refused the connection"),
        "refused side:\n{judged}"
    );
    assert!(
        !lout.contains("examples in"),
        "the leader trained with a refused peer:\n{lout}"
    );
}

#[test]
fn a_follower_with_an_unlisted_mr_enclave_is_refused_and_both_logs_say_why() {
    unlisted_mr_enclave("follower");
}

#[test]
fn a_leader_with_an_unlisted_mr_enclave_is_refused_and_both_logs_say_why() {
    unlisted_mr_enclave("leader");
}

/// Runs leader and follower with the given extra flags each; returns
/// their outputs (asserting success).
fn pair(leader_args: &[String], follower_args: &[String]) -> (String, String) {
    let port = free_port();
    let mut la = leader_args.to_vec();
    la.extend(["--local-addr".to_string(), format!("127.0.0.1:{port}")]);
    let mut fa = follower_args.to_vec();
    fa.extend(["--peer-addr".to_string(), format!("127.0.0.1:{port}")]);
    let sec = common::sim_flags(&std::env::temp_dir().join(format!("vfl-2p-pair-attestation-{}", std::process::id())));
    la.extend(sec.iter().cloned());
    fa.extend(sec);
    let l = spawn(&["leader", "--peer-timeout", "20"], &la);
    let f = spawn(&["follower", "--peer-timeout", "20"], &fa);
    let (lok, lout) = finish(l);
    let (fok, fout) = finish(f);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    (lout, fout)
}

#[test]
fn trains_exports_and_evaluates_beyond_the_best_leader_only_model() {
    use vfl_data::synth::{Synth, SynthConfig, SynthRow};
    let d = std::env::temp_dir().join(format!("vfl-2p-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let gen_data = |out: &str, files: &str, rows: &str, first: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_vfl"))
            .args([
                "data",
                "generate",
                "--slots",
                "16",
                "--files",
                files,
                "--rows-per-file",
                rows,
                "--first-row",
                first,
            ])
            .arg("--out")
            .arg(d.join(out))
            .output()
            .unwrap();
        assert!(o.status.success());
    };
    gen_data("train", "4", "2500", "0");
    gen_data("eval", "1", "2000", "1000000");
    std::fs::write(
        d.join("model.toml"),
        MODEL.replace("learning_rate = 0.01", "learning_rate = 0.003"),
    )
    .unwrap();
    let p = |x: &str| d.join(x).display().to_string();
    let common = |role: &str, data: &str| -> Vec<String> {
        vec![
            "--model".into(),
            p("model.toml"),
            "--data-path".into(),
            p(&format!("{data}/{role}")),
        ]
    };
    let mut la = common("leader", "train");
    la.extend(["--epoch-num", "2", "--shuffle", "--export-path"].map(String::from));
    la.push(p("export"));
    let mut fa = common("follower", "train");
    fa.extend(["--export-path".to_string(), p("export")]);
    let (lout, _) = pair(&la, &fa);
    assert!(lout.contains("model exported to"), "{lout}");
    let id = std::fs::read_dir(d.join("export"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for role in ["leader", "follower"] {
        for f in ["model.safetensors", "model.toml", "manifest.json"] {
            assert!(id.join(role).join(f).exists(), "missing {role}/{f}");
        }
    }
    let mut le = common("leader", "eval");
    le.extend([
        "--mode".into(),
        "eval".into(),
        "--load-model".into(),
        id.display().to_string(),
    ]);
    le.extend(["--predictions-path".into(), p("pred.csv")]);
    let mut fe = common("follower", "eval");
    fe.extend([
        "--mode".into(),
        "eval".into(),
        "--load-model".into(),
        id.display().to_string(),
    ]);
    let (lout, fout) = pair(&le, &fe);
    assert!(
        lout.contains("2000 examples") && fout.contains("2000 examples"),
        "{lout}\n{fout}"
    );
    let auc = auc_of(&lout);
    let preds = std::fs::read_to_string(d.join("pred.csv")).unwrap();
    assert_eq!(preds.lines().count(), 2001);
    assert!(preds.starts_with("example_id,score\n1000000,"));
    // The best any leader-only model could do: the hidden model's leader part.
    let g = Synth::new(SynthConfig {
        slots: 16,
        ..Default::default()
    });
    let mut oracle = vfl_nn::BinaryMetrics::new();
    let mut row = SynthRow::default();
    for i in 1_000_000..1_002_000 {
        g.row(i, &mut row);
        let p = 1.0 / (1.0 + (-g.party_logit(&row, true)).exp());
        oracle.update(&[p], &[row.y as f32], None);
    }
    let leader_only = oracle.values().auc.unwrap();
    assert!(
        auc > 0.5 && auc > leader_only + 0.03,
        "eval AUC {auc} vs leader-only {leader_only}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs `vfl party` for both roles with the role from VFL_ROLE and addresses
/// from the environment (as the SGX manifest runs it), a policy that pins
/// our own identity ("self") plus `policy_extra`, and checkpoints and
/// exports sealed with a key file; returns the export directory and the key
/// flag.
fn party_pair(f: &Fixture, policy_extra: serde_json::Value) -> (PathBuf, String) {
    let att = f.dir.join("attestation-self");
    std::fs::create_dir_all(&att).unwrap();
    let policy = att.join("dynamic_config.json");
    let me = common::attest_self(&att, &[]);
    let mut p = serde_json::json!({
        "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
        "sgx_mrs": [{"mr_enclave": "self", "mr_signer": "self", "isv_prod_id": "1", "min_isv_svn": "1", "mode": "simulated"}],
        "allow_simulated": true, "simulated_roots": [me["simulated_root"].clone()],
    });
    for (k, v) in policy_extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    std::fs::write(&policy, p.to_string()).unwrap();
    let key = f.dir.join("model.key");
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    let port = free_port();
    let run = |role: &str| {
        Command::new(env!("CARGO_BIN_EXE_vfl"))
            .args([
                "party",
                "--peer-timeout",
                "20",
                "--attestation",
                "simulated",
                "--sim-root-key",
            ])
            .arg(att.join("dev-root.pem"))
            .arg("--policy")
            .arg(&policy)
            .arg("--data-path")
            .arg(f.dir.join(role))
            .arg("--model")
            .arg(f.model())
            .arg("--checkpoint-path")
            .arg(f.dir.join("ckpt").join(role))
            .arg("--export-path")
            .arg(f.dir.join("export"))
            .arg("--model-key")
            .arg(format!("file:{}", key.display()))
            .args(["--save-checkpoint-steps", "10"])
            .env("VFL_ROLE", role)
            .env("VFL_LOCAL_ADDR", format!("127.0.0.1:{port}"))
            .env("VFL_PEER_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let l = run("leader");
    let fo = run("follower");
    let (lok, lout) = finish(l);
    let (fok, fout) = finish(fo);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("1200 examples"), "{lout}");
    let export = std::fs::read_dir(f.dir.join("export"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    (export, format!("file:{}", key.display()))
}

fn vfl_cmd(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfl")).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Without both parties' consent every output stays sealed: no plaintext
/// export exists, and `vfl model decrypt` refuses exports, checkpoints and
/// the run record alike.
#[test]
fn party_command_with_self_policy_keeps_every_output_sealed() {
    let f = Fixture::new("party-self");
    let (export, keyarg) = party_pair(&f, serde_json::json!({}));
    for role in ["leader", "follower"] {
        let model = export.join(role).join("model.safetensors");
        assert!(std::fs::read(&model).unwrap().starts_with(b"VFLSEAL2"));
        assert!(!export.join(role).join("model.plain.safetensors").exists());
        let m = model.display().to_string();
        let (ok, _, err) = vfl_cmd(&["model", "inspect", &m]);
        assert!(!ok && err.contains("give --model-key"), "{err}");
        let (ok, out, _) = vfl_cmd(&["model", "inspect", &m, "--model-key", &keyarg]);
        assert!(
            ok && out.contains("encrypted: model;") && out.contains(&format!("role={role}")) && out.contains("tensor "),
            "{out}"
        );
        let plain = f.dir.join(format!("plain-{role}.safetensors"));
        let (ok, _, err) = vfl_cmd(&[
            "model",
            "decrypt",
            &m,
            "--out",
            plain.to_str().unwrap(),
            "--model-key",
            &keyarg,
        ]);
        assert!(!ok && err.contains("was not released"), "{err}");
        assert!(!plain.exists());
    }
    let ckpt_dir = f.dir.join("ckpt").join("follower");
    let ckpt = vfl_trainer_ckpt(&ckpt_dir);
    assert!(std::fs::read(&ckpt).unwrap().starts_with(b"VFLSEAL2"));
    for sealed in [ckpt, ckpt_dir.join("run.sealed")] {
        let out = f.dir.join("never.safetensors");
        let (ok, _, err) = vfl_cmd(&[
            "model",
            "decrypt",
            sealed.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model-key",
            &keyarg,
        ]);
        assert!(!ok && err.contains("is never decrypted"), "{err}");
        assert!(!out.exists());
    }
}

/// With both policies releasing both exports, each party writes a plaintext
/// copy beside the sealed export, equal to what decrypting the sealed one
/// gives.
#[test]
fn released_exports_are_plaintext_and_equal_the_sealed_ones() {
    let f = Fixture::new("party-release");
    let (export, keyarg) = party_pair(&f, serde_json::json!({"release_exports": ["leader", "follower"]}));
    for role in ["leader", "follower"] {
        let dir = export.join(role);
        let released = std::fs::read(dir.join("model.plain.safetensors")).unwrap();
        let out = f.dir.join(format!("decrypted-{role}.safetensors"));
        let (ok, _, err) = vfl_cmd(&[
            "model",
            "decrypt",
            dir.join("model.safetensors").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model-key",
            &keyarg,
        ]);
        assert!(ok, "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), released);
        let (_, out, _) = vfl_cmd(&["model", "inspect", out.to_str().unwrap()]);
        assert!(out.contains("not encrypted"), "{out}");
    }
}

/// The newest checkpoint file in `dir`.
fn vfl_trainer_ckpt(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ckpt-"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

#[test]
fn the_leader_serves_prometheus_metrics_while_it_waits() {
    use std::io::{Read, Write};
    let f = Fixture::new("metrics");
    let port = free_port();
    let metrics = free_port();
    let mut l = leader(&f, port, &["--metrics-addr", &format!("127.0.0.1:{metrics}")]);
    let started = std::time::Instant::now();
    let body = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", metrics)) {
            write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            break out;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no metrics endpoint");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = l.kill();
    let _ = l.wait();
    assert!(body.contains("vfl_steps_total{role=\"leader\"} 0"), "{body}");
    assert!(body.contains("vfl_reconnects_total"), "{body}");
}

/// With `--on-reject retry` the leader refuses a follower it must not train
/// with, keeps listening, and trains with the acceptable one that comes next.
#[test]
fn with_on_reject_retry_the_leader_waits_for_an_acceptable_follower() {
    let f = Fixture::new("retry");
    let port = free_port();
    let l = leader(&f, port, &["--on-reject", "retry"]);
    let rogue = follower(&f, port, &["--sim-mr-enclave", &"44".repeat(32)]);
    let (rok, rout) = finish(rogue);
    assert!(
        !rok && rout.contains("did not accept our evidence"),
        "rogue follower:\n{rout}"
    );
    let good = follower(&f, port, &[]);
    let (gok, gout) = finish(good);
    let (lok, lout) = finish(l);
    assert!(gok && lok, "leader:\n{lout}\nfollower:\n{gout}");
    assert!(lout.contains(&format!("got {}", "44".repeat(32))), "{lout}");
    assert!(lout.contains("still waiting for an acceptable follower"), "{lout}");
    assert!(lout.contains("1200 examples"), "{lout}");
}

/// A policy whose only entry admits our (simulated) identity as the leader:
/// the leader refuses it in the follower's role, naming the entry, and the
/// follower reports the refusal.
#[test]
fn a_peer_admitted_only_in_the_other_role_is_refused() {
    let f = Fixture::new("role");
    let att = f.dir.join("attestation-role");
    std::fs::create_dir_all(&att).unwrap();
    let me = common::attest_self(&att, &["--role", "leader"]);
    let policy = att.join("dynamic_config.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
            "sgx_mrs": [me["sgx_mrs_entry"].clone()],
            "allow_simulated": true, "simulated_roots": [me["simulated_root"].clone()],
        })
        .to_string(),
    )
    .unwrap();
    assert_eq!(me["sgx_mrs_entry"]["role"], "leader");
    let sec: Vec<String> = vec![
        "--attestation".into(),
        "simulated".into(),
        "--sim-root-key".into(),
        att.join("dev-root.pem").display().to_string(),
        "--policy".into(),
        policy.display().to_string(),
    ];
    let port = free_port();
    let data = |role: &str| f.dir.join(role).display().to_string();
    let model = f.model().display().to_string();
    let mut l = spawn(
        &[
            "leader",
            "--peer-timeout",
            "20",
            "--data-path",
            &data("leader"),
            "--model",
            &model,
        ],
        &[vec!["--local-addr".into(), format!("127.0.0.1:{port}")], sec.clone()].concat(),
    );
    let fo = spawn(
        &[
            "follower",
            "--peer-timeout",
            "20",
            "--data-path",
            &data("follower"),
            "--model",
            &model,
        ],
        &[vec!["--peer-addr".into(), format!("127.0.0.1:{port}")], sec].concat(),
    );
    let (fok, fout) = finish(fo);
    let _ = l.kill();
    let (_, lout) = finish(l);
    assert!(!fok, "{fout}");
    assert!(
        fout.contains("handshake refused by the leader") && fout.contains("allow it only as leader"),
        "follower:\n{fout}\nleader:\n{lout}"
    );
}

/// After a run, one party's newest checkpoints vanish (its host deleted
/// them): resuming from the older common checkpoint is refused as a
/// rollback on both sides, unless both parties allow it.
#[test]
fn resuming_below_the_committed_step_is_refused_as_a_rollback() {
    let f = Fixture::new("rollback");
    let (ck_leader, ck_follower) = (
        f.dir.join("ckpt").join("leader").display().to_string(),
        f.dir.join("ckpt").join("follower").display().to_string(),
    );
    let pair = |extra: &[&str]| {
        let port = free_port();
        let mut le = vec!["--checkpoint-path", &ck_leader[..], "--save-checkpoint-steps", "5"];
        le.extend_from_slice(extra);
        let l = leader(&f, port, &le);
        let mut fe = vec!["--checkpoint-path", &ck_follower[..]];
        fe.extend_from_slice(extra);
        let fo = follower(&f, port, &fe);
        let (fok, fout) = finish(fo);
        (fok, fout, l)
    };
    let (ok, out, l) = pair(&[]);
    let (lok, lout) = finish(l);
    assert!(ok && lok, "follower:\n{out}\nleader:\n{lout}");
    // 1200 rows / batch 32 = 38 steps; checkpoints at 20..35, committed 35.
    let newest = vfl_trainer_ckpt(&f.dir.join("ckpt").join("follower"));
    assert!(newest.ends_with("ckpt-0000000035.safetensors"), "{}", newest.display());
    std::fs::remove_file(&newest).unwrap();
    let (ok, out, mut l) = pair(&[]);
    let _ = l.kill();
    let _ = l.wait();
    assert!(!ok, "{out}");
    assert!(
        out.contains("rollback refused: the leader committed step 35") && out.contains("step 30"),
        "{out}"
    );
    let (ok, out, l) = pair(&["--allow-rollback"]);
    let (lok, lout) = finish(l);
    assert!(ok && lok, "follower:\n{out}\nleader:\n{lout}");
    assert!(lout.contains("ROLLBACK ALLOWED"), "{lout}");
}

/// A follower speaking the protocol by hand answers the leader's plan with
/// activations (the wrong message kind) full of recognisable bytes: the
/// leader's error, its log and the failure reason it sends name the
/// message's kind and shape, never its bytes.
#[test]
fn a_desynchronised_peer_gets_no_tensor_bytes_into_errors_or_logs() {
    use vfl_bridge::pb;
    let f = Fixture::new("desync");
    let port = free_port();
    let l = spawn(
        &[
            "leader",
            "--peer-timeout",
            "20",
            "--insecure-no-tls",
            "--loglevel",
            "debug",
        ],
        &[
            "--data-path".into(),
            f.dir.join("leader").display().to_string(),
            "--model".into(),
            f.model().display().to_string(),
            "--local-addr".into(),
            format!("127.0.0.1:{port}"),
        ],
    );
    let spec = vfl_nn::ModelSpec::from_toml_str(MODEL, "test").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let reason = rt.block_on(async {
        let mut client = loop {
            match pb::bridge_client::BridgeClient::connect(format!("http://127.0.0.1:{port}")).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let reply = client
            .hello(pb::HelloRequest {
                protocol_version: vfl_bridge::PROTOCOL_VERSION,
                application_id: "vfl".into(),
                role: "follower".into(),
                model_fingerprint: spec.fingerprint(),
                batch_size: 32,
                mode: "train".into(),
                process_id: "raw-follower".into(),
                release_exports: vec!["follower".into(), "leader".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.accepted, "{}", reply.reason);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut sent = false;
        loop {
            let m = inbound
                .message()
                .await
                .unwrap()
                .expect("the leader closed without a failure");
            match m.msg {
                Some(pb::leader_message::Msg::Plan(_)) if !sent => {
                    sent = true;
                    let act = pb::Activations {
                        iteration: 0,
                        batch_digest: vec![0xAB; 16],
                        train: true,
                        tensor: Some(pb::Tensor {
                            shape: vec![32, 8],
                            data: vec![0xAB; 32 * 8 * 4].into(),
                        }),
                    };
                    tx.send(pb::FollowerMessage {
                        session_id: reply.session_id.clone(),
                        seq: 1,
                        ack: m.seq,
                        msg: Some(pb::follower_message::Msg::Activations(act)),
                    })
                    .await
                    .unwrap();
                }
                Some(pb::leader_message::Msg::Failure(f)) => break f.reason,
                _ => {}
            }
        }
    });
    let (ok, out) = finish(l);
    assert!(!ok, "{out}");
    assert!(
        reason.contains(
            "expected the plan's acknowledgement, got Activations (iteration 0, tensor [32, 8] (1024 bytes))"
        ),
        "{reason}"
    );
    for text in [&reason, &out] {
        // What a Debug dump would show: the tensor as `b"\xab\xab..."`, the
        // digest as `[171, 171, ...]`.
        for leak in ["\\xab", "\\xAB", "171, 171"] {
            assert!(!text.contains(leak), "`{leak}` in:\n{text}");
        }
    }
    assert!(out.contains("got Activations"), "{out}");
}
