//! `vfl demo`, the first command of the README: two processes over
//! simulated RA-TLS train, export and evaluate, and the held-out AUC beats
//! the best any model of the leader's features alone could reach.

use std::process::Command;

/// The number after `key` in `text`.
fn number_after(text: &str, key: &str) -> f64 {
    let at = text.find(key).unwrap_or_else(|| panic!("no `{key}` in:\n{text}")) + key.len();
    text[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{key}` in:\n{text}"))
}

#[test]
fn demo_trains_two_processes_and_beats_the_leader_only_ceiling() {
    let work = std::env::temp_dir().join(format!("vfl-demo-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .arg("demo")
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("two processes, gRPC over mutual RA-TLS"), "{text}");
    let held_out = number_after(&text[text.find("held-out evaluation").unwrap()..], "AUC ");
    let leader_only = number_after(&text, "with the leader's features alone ");
    let both = number_after(&text, "with both parties' ");
    assert!(
        held_out > leader_only + 0.02,
        "held-out AUC {held_out} does not beat the leader-only ceiling {leader_only}:\n{text}"
    );
    assert!(
        held_out < both,
        "held-out AUC {held_out} above the hidden model's {both}?\n{text}"
    );
    assert!(work.join("predictions.csv").is_file(), "no predictions written");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn demo_with_worker_coordinator_and_shard_processes_learns() {
    let work = std::env::temp_dir().join(format!("vfl-demo-sharded-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let model = work.join("model.toml");
    std::fs::write(&model, crate::common::MODEL).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args([
            "--loglevel",
            "warn",
            "demo",
            "--workers",
            "2",
            "--shards",
            "2",
            "--files",
            "6",
        ])
        .args([
            "--rows-per-file",
            "1000",
            "--eval-rows",
            "2000",
            "--batch-size",
            "64",
            "--model",
        ])
        .arg(&model)
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("2 worker pair(s), 2 shard process(es) per party, the leader's coordinator: 9 processes"),
        "{text}"
    );
    // The coordinator's epochs, and one model per party on all its workers.
    assert!(text.contains("epoch 2: "), "{text}");
    assert!(
        text.contains("every worker of a party ends with the same model"),
        "{text}"
    );
    // Worker pair 0 exported each party's model, as a single pair does.
    for role in ["leader", "follower"] {
        let key = format!("exported the {role} model to ");
        let at = text.find(&key).unwrap_or_else(|| panic!("no `{key}` in {text}")) + key.len();
        let dir = std::path::PathBuf::from(text[at..].lines().next().unwrap());
        assert!(
            dir.starts_with(work.join("export")) && dir.ends_with(role),
            "{}",
            dir.display()
        );
        for file in ["model.safetensors", "model.toml", "manifest.json"] {
            assert!(dir.join(file).is_file(), "{} has no {file}", dir.display());
        }
    }
    let held_out = number_after(&text[text.find("held-out evaluation").unwrap()..], "AUC ");
    let leader_only = number_after(&text, "with the leader's features alone ");
    assert!(
        held_out > leader_only + 0.02,
        "held-out AUC {held_out} does not beat the leader-only ceiling {leader_only}:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn a_shard_index_outside_the_shards_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args([
            "shard",
            "--role",
            "leader",
            "--index",
            "2",
            "--shards",
            "2",
            "--workers",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--index 2 is not below --shards 2"), "{err}");
}

/// The SGX entrypoint: the enclave's command line is `vfl party`, and
/// VFL_PROCESS picks the scale-out role, its settings from VFL_* variables.
#[test]
fn vfl_party_runs_a_shard_when_vfl_process_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(["party", "--role", "leader", "--data-path", "/nonexistent"])
        .env("VFL_PROCESS", "shard")
        .env("VFL_INDEX", "2")
        .env("VFL_SHARDS", "2")
        .env("VFL_WORKERS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--index 2 is not below --shards 2"), "{err}");
}

#[test]
fn vfl_party_runs_the_coordinator_when_vfl_process_says_so() {
    let work = std::env::temp_dir().join(format!("vfl-party-coordinator-{}", std::process::id()));
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("part-0.csv"), "example_id,label\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(["party", "--role", "leader", "--data-path"])
        .arg(&data)
        .args(["--peer-timeout", "1", "--insecure-no-tls"])
        .env("VFL_PROCESS", "coordinator")
        .env("VFL_WORKERS", "2")
        .env("VFL_LOCAL_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("coordinator of the leader: 2 worker pairs, 1 blocks"),
        "{text}\n{err}"
    );
    assert!(err.contains("0 of 2 workers registered within 1 s"), "{err}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn vfl_party_refuses_an_unknown_process() {
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(["party", "--role", "leader", "--data-path", "/nonexistent"])
        .env("VFL_PROCESS", "scheduler")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'scheduler'"), "{err}");
}

/// The scale-out demo (2 pairs, 2 shards per party, small model) with a
/// coordinated checkpoint every 10 of its 96 steps; with `kill`, that
/// process is killed (SIGKILL) at that point (`--kill-at`) and restarted
/// alone. Returns each party's final model digest and the demo's output.
fn scale_out_run(tag: &str, kill: Option<(&str, &str)>) -> ((String, String), String) {
    let work = std::env::temp_dir().join(format!("vfl-demo-kill-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let model = work.join("model.toml");
    std::fs::write(&model, crate::common::MODEL).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfl"));
    cmd.args(["--loglevel", "warn", "demo", "--workers", "2", "--shards", "2"])
        .args(["--files", "6", "--rows-per-file", "1000", "--eval-rows", "1000"])
        .args(["--batch-size", "64", "--checkpoint-steps", "10", "--model"])
        .arg(&model)
        .arg("--work-dir")
        .arg(&work);
    if let Some((k, at)) = kill {
        cmd.args(["--kill", k, "--kill-at", at]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    match kill {
        Some((k, _)) => assert!(text.contains(&format!("killed {k} (SIGKILL) ")), "{text}"),
        None => assert!(text.contains("done after 96 steps, 0 restart(s)"), "{text}"),
    }
    let digest = |key: &str| {
        let at = text.find(key).unwrap_or_else(|| panic!("no `{key}` in {text}")) + key.len();
        text[at..at + 64].to_string()
    };
    let digests = (digest("same model (leader "), digest(", follower "));
    assert!(
        digests.0 != digests.1
            && digests
                .0
                .bytes()
                .chain(digests.1.bytes())
                .all(|b| b.is_ascii_hexdigit())
    );
    let _ = std::fs::remove_dir_all(&work);
    (digests, text)
}

/// The uninterrupted run's digests (computed once per test binary).
fn uninterrupted() -> &'static (String, String) {
    static RUN: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    RUN.get_or_init(|| scale_out_run("none", None).0)
}

/// `victim` killed after the first checkpoint and restarted alone: the job
/// restarted from its checkpoint (the kill was not after the end) and
/// ended with the uninterrupted run's weights.
fn killed_after_a_checkpoint(tag: &str, victim: &str) {
    let (digests, text) = scale_out_run(tag, Some((victim, "checkpoint")));
    assert!(
        text.contains(&format!("killed {victim} (SIGKILL) after the first checkpoint")),
        "{text}"
    );
    assert!(
        !text.contains(" 0 restart(s)") && text.contains("restart(s) from a checkpoint"),
        "{text}"
    );
    assert_eq!(&digests, uninterrupted());
}

#[test]
fn a_shard_killed_and_restarted_alone_ends_with_the_uninterrupted_weights() {
    killed_after_a_checkpoint("shard", "leader-shard-1");
}

#[test]
fn a_follower_worker_killed_and_restarted_alone_ends_with_the_uninterrupted_weights() {
    killed_after_a_checkpoint("fworker", "follower-worker-0");
}

#[test]
fn a_leader_worker_killed_and_restarted_alone_ends_with_the_uninterrupted_weights() {
    killed_after_a_checkpoint("lworker", "leader-worker-1");
}

#[test]
fn the_coordinator_killed_and_restarted_alone_ends_with_the_uninterrupted_weights() {
    killed_after_a_checkpoint("coordinator", "coordinator");
}

#[test]
fn a_follower_shard_killed_and_restarted_alone_ends_with_the_uninterrupted_weights() {
    killed_after_a_checkpoint("fshard", "follower-shard-0");
}

/// `victim` killed once training ended (`finish`: during the held-out pass
/// and the export, before the job's end is recorded) or once the end is
/// recorded (`commit`), and restarted alone: every process ends well and
/// the weights are the uninterrupted run's. Returns the demo's output.
fn killed_at_the_end(tag: &str, victim: &str, at: &str) -> String {
    let (digests, text) = scale_out_run(tag, Some((victim, at)));
    assert_eq!(&digests, uninterrupted(), "{text}");
    text
}

#[test]
fn the_coordinator_killed_during_the_end_of_job_work_ends_alike() {
    let text = killed_at_the_end("end-coordinator", "coordinator", "finish");
    // The end was not recorded yet: the job restarted from its checkpoint
    // (or, on a slow machine, the kill landed just after the record).
    assert!(
        text.contains("done after 96 steps, 1 restart(s)") || text.contains("the job had ended after 96 steps"),
        "{text}"
    );
}

#[test]
fn worker_pair_0_killed_during_its_export_ends_alike() {
    killed_at_the_end("end-lworker0", "leader-worker-0", "finish");
}

#[test]
fn a_follower_worker_killed_during_the_end_of_job_work_ends_alike() {
    killed_at_the_end("end-fworker", "follower-worker-1", "finish");
}

#[test]
fn a_shard_killed_during_the_end_of_job_work_ends_alike() {
    // Shards hold nothing the end needs: no restart of the job.
    let text = killed_at_the_end("end-shard", "leader-shard-1", "finish");
    assert!(text.contains("done after 96 steps, 0 restart(s)"), "{text}");
}

#[test]
fn the_coordinator_killed_after_recording_the_end_trains_nothing_again() {
    let text = killed_at_the_end("commit-coordinator", "coordinator", "commit");
    assert!(
        text.contains("coordinator: the job had ended after 96 steps before this start"),
        "{text}"
    );
}

#[test]
fn a_leader_worker_killed_after_the_recorded_end_ends_alike() {
    killed_at_the_end("commit-lworker", "leader-worker-1", "commit");
}

#[test]
fn a_follower_shard_killed_after_the_recorded_end_ends_alike() {
    killed_at_the_end("commit-fshard", "follower-shard-0", "commit");
}

/// A scale-out run's export is the single pair's format: `vfl leader` and
/// `vfl follower --mode eval` load it and score the held-out rows exactly
/// as worker pair 0 did.
#[test]
fn a_scale_out_export_evaluates_as_a_single_pair_model() {
    let work = std::env::temp_dir().join(format!("vfl-demo-export-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let model = work.join("model.toml");
    std::fs::write(&model, crate::common::MODEL).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(["--loglevel", "warn", "demo", "--workers", "2", "--shards", "2"])
        .args(["--files", "4", "--rows-per-file", "1000", "--eval-rows", "1000"])
        .args(["--batch-size", "64", "--model"])
        .arg(&model)
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let key = "exported the leader model to ";
    let at = text.find(key).unwrap_or_else(|| panic!("{text}")) + key.len();
    let export = std::path::PathBuf::from(text[at..].lines().next().unwrap());
    let export = export.parent().unwrap().to_path_buf();
    let held_out = &text[text.find("held-out evaluation").unwrap()..];
    let auc = &held_out[held_out.find("AUC ").unwrap()..][..10];
    // The demo's two simulated signers, from its policy.
    let dir = work.join("attestation-two-signers");
    let policy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("dynamic_config.json")).unwrap()).unwrap();
    let signer = |role: &str| {
        policy["sgx_mrs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["role"] == role)
            .unwrap()["mr_signer"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let attest = |role: &str| -> Vec<String> {
        [
            "--attestation",
            "simulated",
            "--sim-root-key",
            &dir.join("dev-root.pem").display().to_string(),
            "--policy",
            &dir.join("dynamic_config.json").display().to_string(),
            "--sim-mr-signer",
            &signer(role),
            "--model",
            &model.display().to_string(),
            "--load-model",
            &export.display().to_string(),
            "--data-path",
            &work.join("eval").join(role).display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let addr = format!("127.0.0.1:{}", crate::common::free_port());
    let leader = crate::common::spawn(
        &[
            "--loglevel",
            "warn",
            "leader",
            "--mode",
            "eval",
            "--batch-size",
            "256",
            "--local-addr",
            &addr,
        ],
        &attest("leader"),
    );
    let follower = crate::common::spawn(
        &[
            "--loglevel",
            "warn",
            "follower",
            "--mode",
            "eval",
            "--batch-size",
            "256",
            "--peer-addr",
            &addr,
        ],
        &attest("follower"),
    );
    let (lo, fo) = (leader.wait_with_output().unwrap(), follower.wait_with_output().unwrap());
    let ltext = String::from_utf8_lossy(&lo.stdout).into_owned();
    assert!(
        lo.status.success() && fo.status.success(),
        "{ltext}\n{}\n{}",
        String::from_utf8_lossy(&lo.stderr),
        String::from_utf8_lossy(&fo.stderr)
    );
    assert!(
        ltext.contains(auc),
        "the single pair's {ltext} differs from pair 0's {auc}"
    );
    let _ = std::fs::remove_dir_all(&work);
}
