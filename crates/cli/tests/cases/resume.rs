//! Kill -9 of the follower, of the leader, and of both during training,
//! then restart what was killed: the parties agree on the newest checkpoint
//! both hold, resume from it (in-flight blocks are not skipped), and the
//! exported final weights equal those of an uninterrupted run, bitwise. And
//! connections cut by a proxy mid-run: no iteration lost or applied twice.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::free_port;
use crate::proxy;
use proxy::Proxy;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vfl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vfl"))
}

/// The data, the attestation set-up and the uninterrupted run ("straight")
/// every test compares with, made once per test binary (under cargo's
/// directory for test files; earlier binaries' copies older than an hour
/// are removed).
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if e.file_name().to_string_lossy().starts_with("resume-base-")
                && stale.is_some_and(|age| age > Duration::from_secs(3600))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let d = root.join(format!("resume-base-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let out = vfl()
            .args(["data", "generate", "--files", "4", "--rows-per-file", "300", "--out"])
            .arg(d.join("data"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let (lout, _) = run_both(&d, "straight");
        assert!(lout.contains("2 epochs"), "{lout}");
        d
    })
}

/// A test's own directory for its runs (removed at the end).
fn setup(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("vfl-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Starts one party of run `run` under `d` (its own checkpoint and export
/// dirs) with the data and attestation set-up under `shared`.
fn party(shared: &Path, d: &Path, run: &str, role: &str, port: u16) -> Child {
    let mut c = vfl();
    c.arg(role)
        .args(common::sim_flags(&shared.join("attestation")))
        .args(["--model", "wide_n_deep_adam", "--threads", "1", "--peer-timeout", "30"])
        .arg("--data-path")
        .arg(shared.join("data").join(role))
        .arg("--checkpoint-path")
        .arg(d.join(run).join("ckpt").join(role))
        .arg("--export-path")
        .arg(d.join(run).join("export"));
    if role == "leader" {
        c.args([
            "--local-addr",
            &format!("127.0.0.1:{port}"),
            "--epoch-num",
            "2",
            "--shuffle",
            "--save-checkpoint-steps",
            "4",
        ]);
    } else {
        c.args(["--peer-addr", &format!("127.0.0.1:{port}")]);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn run_both(d: &Path, run: &str) -> (String, String) {
    let port = free_port();
    let l = party(d, d, run, "leader", port);
    let f = party(d, d, run, "follower", port);
    outputs(l, f)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// When to kill.
#[derive(Clone, Copy)]
enum When {
    /// Once the follower holds the checkpoint of this step.
    After(u64),
    /// While `role` writes a checkpoint, after it holds this step's.
    DuringWrite(&'static str, u64),
}

/// The temporary files of unfinished checkpoint writes of `role`.
fn temp_files(d: &Path, run: &str, role: &str) -> Vec<String> {
    std::fs::read_dir(d.join(run).join("ckpt").join(role))
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".ckpt-") && n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until a checkpoint write of `role` is in progress (looking every
/// half millisecond, sleeping between looks); false after a minute.
fn wait_for_temp_file(d: &Path, run: &str, role: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if !temp_files(d, run, role).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    false
}

/// Fails the test with both parties' logs.
fn stuck(mut l: Child, mut f: Child, step: u64) -> ! {
    let _ = l.kill();
    let _ = f.kill();
    let (lo, fo) = (l.wait_with_output().unwrap(), f.wait_with_output().unwrap());
    panic!(
        "no checkpoint {step} within a minute\nleader:\n{}\nfollower:\n{}",
        text(&lo),
        text(&fo)
    );
}

/// Waits for both parties; both must succeed. Their logs.
fn outputs(l: Child, f: Child) -> (String, String) {
    let lo = l.wait_with_output().unwrap();
    let fo = f.wait_with_output().unwrap();
    assert!(
        lo.status.success() && fo.status.success(),
        "leader:\n{}\nfollower:\n{}",
        text(&lo),
        text(&fo)
    );
    (text(&lo), text(&fo))
}

/// The exported model file of `role` in run `run`.
/// The exported weights of `role` (the tensors: the metadata names the run,
/// which differs between two runs).
fn exported(d: &Path, run: &str, role: &str) -> std::collections::BTreeMap<String, vfl_trainer::store::Tensor> {
    let root = d.join(run).join("export");
    let id = std::fs::read_dir(&root).unwrap().next().unwrap().unwrap().path();
    vfl_trainer::store::read(&id.join(role).join("model.safetensors"), None)
        .unwrap()
        .tensors
}

/// Waits until `role`'s checkpoint directory holds a checkpoint of at least
/// `step`; false after a minute.
fn wait_for_checkpoint(d: &Path, run: &str, role: &str, step: u64) -> bool {
    let dir = d.join(run).join("ckpt").join(role);
    let start = Instant::now();
    loop {
        let best = std::fs::read_dir(&dir)
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_prefix("ckpt-")?
                            .strip_suffix(".safetensors")?
                            .parse::<u64>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if best >= step {
            return true;
        }
        if start.elapsed() > Duration::from_secs(60) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills the parties in `kill` once the follower has checkpoint `at_step`
/// and starts only those again: a surviving party notices the restart and
/// starts the session over from the newest checkpoint both hold, without
/// being restarted itself.
fn interrupted(name: &str, kill: &[&str], when: When) {
    let base = base();
    let d = setup(name);
    let port = free_port();
    let mut l = party(base, &d.0, "broken", "leader", port);
    let mut f = party(base, &d.0, "broken", "follower", port);
    let (watch, step) = match when {
        When::After(step) => ("follower", step),
        When::DuringWrite(role, step) => (role, step),
    };
    if !wait_for_checkpoint(&d.0, "broken", watch, step) {
        stuck(l, f, step);
    }
    if let When::DuringWrite(..) = when
        && !wait_for_temp_file(&d.0, "broken", watch)
    {
        stuck(l, f, step);
    }
    for who in kill {
        let c = if *who == "leader" { &mut l } else { &mut f };
        c.kill().unwrap(); // SIGKILL
        assert!(!c.wait().unwrap().success());
    }
    if let When::DuringWrite(role, _) = when {
        let left = temp_files(&d.0, "broken", role);
        assert!(
            !left.is_empty(),
            "the kill came after the {role}'s checkpoint write had finished"
        );
    }
    if kill.contains(&"leader") {
        l = party(base, &d.0, "broken", "leader", port);
    }
    if kill.contains(&"follower") {
        f = party(base, &d.0, "broken", "follower", port);
    }
    let (lout, fout) = outputs(l, f);
    for role in ["leader", "follower"] {
        let left = temp_files(&d.0, "broken", role);
        assert!(left.is_empty(), "{role}: temporary files left behind: {left:?}");
    }
    for (role, out) in [("leader", &lout), ("follower", &fout)] {
        assert!(out.contains("resumed from the checkpoint of step"), "{role}:\n{out}");
        if !kill.contains(&role) {
            assert!(
                out.contains("restarted (process"),
                "{role} did not notice the restart:\n{out}"
            );
        }
    }
    for role in ["leader", "follower"] {
        assert!(
            exported(base, "straight", role) == exported(&d.0, "broken", role),
            "{role}: weights differ after resume"
        );
    }
}

#[test]
fn kill_follower_restart_it_alone_and_the_weights_are_identical() {
    interrupted("kf", &["follower"], When::After(12));
}

#[test]
fn kill_leader_restart_it_alone_and_the_weights_are_identical() {
    interrupted("kl", &["leader"], When::After(28));
}

#[test]
fn kill_both_and_resume_gives_identical_weights() {
    interrupted("kb", &["leader", "follower"], When::After(44));
}

#[test]
fn kill_follower_during_its_checkpoint_write_and_the_weights_are_identical() {
    interrupted("kfw", &["follower"], When::DuringWrite("follower", 16));
}

#[test]
fn kill_leader_during_its_checkpoint_write_and_the_weights_are_identical() {
    interrupted("klw", &["leader"], When::DuringWrite("leader", 36));
}

/// A proxy between the parties cuts every connection several times during
/// training (wherever the iteration happens to be): the follower reconnects,
/// both resend what was not acknowledged, and the final weights equal an
/// uninterrupted run's, so no iteration was lost or applied twice.
#[test]
fn connection_cuts_during_training_lose_and_repeat_no_iteration() {
    let base = base();
    let d = setup("cut");
    let port = free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap());
    let l = party(base, &d.0, "cut", "leader", port);
    let f = party(base, &d.0, "cut", "follower", proxy.addr.port());
    let mut cuts = 0;
    for (step, delay_ms) in [(8, 0), (16, 3), (28, 0), (40, 7), (52, 1)] {
        if !wait_for_checkpoint(&d.0, "cut", "follower", step) {
            stuck(l, f, step);
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        cuts += proxy.cut();
    }
    let (lout, fout) = outputs(l, f);
    assert!(cuts >= 5, "only {cuts} connections cut");
    assert!(lout.contains("the follower reconnected"), "{lout}");
    assert!(fout.contains("reconnected to the leader"), "{fout}");
    assert!(
        !lout.contains("restarted (process"),
        "a reconnect was taken for a restart:\n{lout}"
    );
    for role in ["leader", "follower"] {
        assert!(
            exported(base, "straight", role) == exported(&d.0, "cut", role),
            "{role}: weights differ after the connection cuts"
        );
    }
}
