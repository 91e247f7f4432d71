//! `vfl join` as two OS processes over simulated RA-TLS: from unaligned
//! files to a trained model, sealed joined blocks, and refusals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::common;
use crate::common::{MODEL, finish, free_port, spawn as vfl};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vfl-join-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.toml"), MODEL).unwrap();
        Dir(d)
    }
    fn p(&self, s: &str) -> String {
        self.0.join(s).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unaligned data: 80% of ids on both sides, the follower's shuffled.
fn generate(d: &Dir, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args([
            "data",
            "generate",
            "--files",
            "3",
            "--rows-per-file",
            "400",
            "--slots",
            "16",
        ])
        .args(["--shared", "0.8", "--shuffle-follower", "--out"])
        .arg(d.0.join("raw"))
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `vfl CMD` for `role` (the leader listening on `port`, the follower
/// dialling it) with `args(role)` and the security flags.
fn side(cmd: &[&str], role: &str, port: u16, sec: &[String], args: &dyn Fn(&str) -> Vec<String>) -> Child {
    let mut a = args(role);
    a.push(
        if role == "leader" {
            "--local-addr"
        } else {
            "--peer-addr"
        }
        .into(),
    );
    a.push(format!("127.0.0.1:{port}"));
    a.extend(sec.iter().cloned());
    let cmd: Vec<&str> = cmd.iter().map(|c| if *c == "ROLE" { role } else { c }).collect();
    vfl(&cmd, &a)
}

/// Both sides of `vfl CMD` at once (ROLE in CMD stands for the role);
/// (leader ok, leader output, follower ok, follower output).
fn pair(cmd: &[&str], sec: &[String], args: &dyn Fn(&str) -> Vec<String>) -> (bool, String, bool, String) {
    let port = free_port();
    let (l, f) = (
        side(cmd, "leader", port, sec, args),
        side(cmd, "follower", port, sec, args),
    );
    let (lok, lout) = finish(l);
    let (fok, fout) = finish(f);
    (lok, lout, fok, fout)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A join of raw/ROLE into joined/ROLE with `extra(role)`.
fn join(d: &Dir, sec: &[String], extra: &dyn Fn(&str) -> Vec<String>) -> (bool, String, bool, String) {
    pair(&["join", "ROLE"], sec, &|role| {
        let mut a = strings(&["--rows-per-block", "250", "--peer-timeout", "20"]);
        a.extend([
            "--data-path".into(),
            d.p(&format!("raw/{role}")),
            "--output-path".into(),
            d.p(&format!("joined/{role}")),
            "--model".into(),
            d.p("model.toml"),
        ]);
        a.extend(extra(role));
        a
    })
}

/// Training on `data`/ROLE with `extra`.
fn train(d: &Dir, sec: &[String], data: &str, extra: &[&str]) -> (bool, String, bool, String) {
    pair(&["ROLE"], sec, &|role| {
        let mut a = vec![
            "--data-path".into(),
            d.p(&format!("{data}/{role}")),
            "--model".into(),
            d.p("model.toml"),
        ];
        if !extra.contains(&"--peer-timeout") {
            a.extend(strings(&["--peer-timeout", "20"]));
        }
        a.extend(strings(extra));
        a
    })
}

fn none(_: &str) -> Vec<String> {
    Vec::new()
}

fn digest_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains("joined id order digest"))
        .unwrap_or_else(|| panic!("{out}"))
}

fn digest(out: &str) -> String {
    digest_line(out).split_whitespace().nth(6).unwrap().to_string()
}

fn blocks(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn unaligned_files_join_and_then_train() {
    let d = Dir::new("train");
    generate(&d, &[]);
    let sec = common::sim_flags(&d.0.join("attestation"));
    let (lok, lout, fok, fout) = join(&d, &sec, &none);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert_eq!(digest(&lout), digest(&fout));
    assert!(lout.contains("intersection"), "{lout}");
    let lb = blocks(&d.0.join("joined/leader"));
    assert_eq!(
        lb.iter().filter(|n| n.ends_with(".tfrecord")).count(),
        blocks(&d.0.join("joined/follower")).len() - 1
    );
    assert!(lb.contains(&"join-report.json".to_string()));
    // Training on the joined blocks passes every per-batch id digest check.
    let (lok, l, fok, f) = train(&d, &sec, "joined", &["--batch-size", "64"]);
    assert!(lok && fok && l.contains("done"), "{l}\n{f}");
    // Training on the raw (unaligned) data fails on the first batch.
    let (lok, lout, _, _) = train(&d, &sec, "raw", &[]);
    assert!(!lok && lout.contains("misaligned"), "{lout}");
}

#[test]
fn csv_input_and_sealed_output_train_with_the_same_key() {
    let d = Dir::new("sealed");
    generate(&d, &["--csv"]);
    let mut sec = common::sim_flags(&d.0.join("attestation"));
    // Sealed high-water marks of this key: not in the shared default cache.
    sec.extend(["--collateral-cache".to_string(), d.p("cache")]);
    std::fs::write(d.0.join("key"), [7u8; 32]).unwrap();
    let key = format!("file:{}", d.p("key"));
    let with_key = |_: &str| strings(&["--model-key", &key]);
    let (lok, lout, fok, fout) = join(&d, &sec, &with_key);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    let lb = blocks(&d.0.join("joined/leader"));
    assert!(lb.iter().any(|n| n.ends_with(".tfrecord.sealed")), "{lb:?}");
    assert!(!lb.iter().any(|n| n.ends_with(".tfrecord")), "{lb:?}");
    // Without the key, training cannot read them.
    let (lok, lout, _, _) = train(&d, &sec, "joined", &["--peer-timeout", "3"]);
    assert!(!lok && lout.contains("training needs the model key"), "{lout}");
    // With it, they train.
    let (lok, l, fok, f) = train(&d, &sec, "joined", &["--model-key", &key, "--batch-size", "64"]);
    assert!(lok && fok && l.contains("done"), "{l}\n{f}");
    // A block of an earlier join among this join's blocks is refused.
    let block = d.0.join("joined/leader/part-000001.tfrecord.sealed");
    let earlier = std::fs::read(&block).unwrap();
    let (lok, lout, fok, fout) = join(&d, &sec, &with_key);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    std::fs::write(&block, earlier).unwrap();
    let (lok, lout, _, _) = train(&d, &sec, "joined", &["--model-key", &key, "--peer-timeout", "5"]);
    assert!(!lok && lout.contains("sealed with join"), "{lout}");
    // So is a plaintext block among sealed ones.
    std::fs::write(d.0.join("joined/leader/part-000001.tfrecord.sealed"), b"").unwrap();
    std::fs::rename(
        d.0.join("joined/leader/part-000001.tfrecord.sealed"),
        d.0.join("joined/leader/part-000001.tfrecord"),
    )
    .unwrap();
    let (lok, lout, _, _) = train(&d, &sec, "joined", &["--model-key", &key, "--peer-timeout", "5"]);
    assert!(
        !lok && lout.contains("a plaintext block among a join's sealed blocks"),
        "{lout}"
    );
}

#[test]
fn a_follower_the_policy_does_not_admit_is_refused_and_nothing_is_written() {
    let d = Dir::new("refused");
    generate(&d, &[]);
    let sec = common::sim_flags(&d.0.join("attestation"));
    // The follower claims another product id than the policy lists.
    let claim = |role: &str| match role {
        "follower" => strings(&["--sim-isv-prod-id", "9"]),
        _ => Vec::new(),
    };
    let (lok, lout, fok, fout) = join(&d, &sec, &claim);
    assert!(!lok && !fok, "leader:\n{lout}\nfollower:\n{fout}");
    assert!(lout.contains("isv_prod_id"), "{lout}");
    assert!(!d.0.join("joined/leader").exists() && !d.0.join("joined/follower").exists());
}

#[test]
fn without_tls_a_join_is_refused() {
    let d = Dir::new("insecure");
    generate(&d, &[]);
    let (lok, lout, _, _) = join(&d, &strings(&["--insecure-no-tls"]), &none);
    assert!(!lok && lout.contains("TLS exporter"), "{lout}");
}

#[test]
fn a_follower_killed_mid_join_leaves_no_output_and_a_rerun_succeeds() {
    use std::io::{BufRead, BufReader};
    let d = Dir::new("kill");
    // Enough rows that the follower is still reading when it is killed.
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args([
            "data",
            "generate",
            "--files",
            "2",
            "--rows-per-file",
            "400000",
            "--slots",
            "4",
        ])
        .args(["--csv", "--shared", "0.8", "--shuffle-follower", "--out"])
        .arg(d.0.join("raw"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sec = common::sim_flags(&d.0.join("attestation"));
    let port = free_port();
    let paths = |role: &str| {
        vec![
            "--data-path".into(),
            d.p(&format!("raw/{role}")),
            "--output-path".into(),
            d.p(&format!("joined/{role}")),
            "--peer-timeout".into(),
            "10".into(),
        ]
    };
    let side = |role: &str| side(&["join", "ROLE"], role, port, &sec, &paths);
    let mut l = side("leader");
    let mut f = side("follower");
    // The leader logs when both sides start reading: kill the follower then.
    let mut err = BufReader::new(l.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("the leader ended before reading: {log}");
        }
        log.push_str(&line);
        if line.contains("join: reading the input") {
            break;
        }
    }
    f.kill().unwrap();
    let _ = f.wait();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = l.wait().unwrap();
    assert!(!status.success(), "{log}{rest}");
    assert!(rest.contains("connection"), "{rest}");
    assert!(!d.0.join("joined/leader").exists() && !d.0.join("joined/follower").exists());
    // A rerun succeeds and cleans what the killed follower left.
    let (lok, lout, fok, fout) = pair(&["join", "ROLE"], &sec, &paths);
    assert!(lok && fok, "leader:\n{lout}\nfollower:\n{fout}");
    let left: Vec<_> = std::fs::read_dir(d.0.join("joined"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn party_mode_join_aligns_into_the_join_path_and_training_reads_it() {
    let d = Dir::new("party");
    generate(&d, &[]);
    let sec = common::sim_flags(&d.0.join("attestation"));
    let run = |mode: &str| {
        let args = |role: &str| {
            let mut a = vec!["--role".into(), role.into(), "--mode".into(), mode.into()];
            a.extend([
                "--data-path".into(),
                d.p(&format!("raw/{role}")),
                "--join-path".into(),
                d.p(&format!("joined/{role}")),
                "--model".into(),
                d.p("model.toml"),
            ]);
            a
        };
        let (lok, lout, fok, fout) = pair(&["party"], &sec, &args);
        assert!(lok && fok, "{mode}: leader:\n{lout}\nfollower:\n{fout}");
        lout
    };
    let joined = run("join");
    assert!(joined.contains("intersection"), "{joined}");
    assert!(d.0.join("joined/leader/join-report.json").is_file());
    // Training reads the joined blocks (the raw ones would be misaligned).
    let trained = run("train");
    assert!(
        trained.contains("reading the joined blocks") && trained.contains("done"),
        "{trained}"
    );
}
