//! Processes for local scale-out runs: `vfl shard` children for `vfl bench
//! --sharded --remote`, and the whole job (`vfl demo --workers`: shards,
//! the leader's coordinator, both parties' workers), with one simulated
//! signer per party so that each party's processes admit only their own.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use vfl_attest::PartyRole;
use vfl_nn::{ModelSpec, Role};
use vfl_trainer::sharded::remote::ShardAddrs;

/// A `vfl` child process and the address it serves.
struct ShardProcess {
    role: &'static str,
    /// Which process (`leader-shard-1`, `coordinator`, `follower-worker-0`).
    label: String,
    /// Its arguments, to restart it as it was.
    args: Vec<String>,
    child: std::process::Child,
    addr: String,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    /// What was read of its output already (lines read while waiting for
    /// a trigger, and what its killed earlier incarnations printed).
    before: Vec<String>,
}

/// Both parties' shard processes and how the workers reach them.
pub struct ShardProcesses {
    procs: Vec<ShardProcess>,
    pub leader: ShardAddrs,
    pub follower: ShardAddrs,
    /// Each party's attestation flags (leader's, follower's).
    attest: (Vec<String>, Vec<String>),
}

impl ShardProcesses {
    /// Starts `shards` shard processes per party for `workers` worker pairs
    /// of `model` (its preset name or file, as given), with a simulated
    /// two-signer set-up under `work`.
    pub fn start(
        work: &Path,
        model: &str,
        spec: &ModelSpec,
        (workers, shards): (usize, usize),
    ) -> anyhow::Result<Self> {
        Self::start_saving(work, model, spec, (workers, shards), None)
    }

    /// [`ShardProcesses::start`] whose shards save their state under
    /// `state` every so many steps.
    fn start_saving(
        work: &Path,
        model: &str,
        spec: &ModelSpec,
        (workers, shards): (usize, usize),
        state: Option<(&Path, u64)>,
    ) -> anyhow::Result<Self> {
        let sim = vfl_attest::policy::write::two_party_sim(&work.join("attestation-two-signers"))?;
        let attest = |signer: &str| -> Vec<String> {
            vec![
                "--attestation".into(),
                "simulated".into(),
                "--sim-root-key".into(),
                sim.root_key.display().to_string(),
                "--policy".into(),
                sim.policy.display().to_string(),
                "--sim-mr-signer".into(),
                signer.into(),
            ]
        };
        let mut procs = Vec::new();
        for (role, signer) in [("leader", &sim.leader_signer), ("follower", &sim.follower_signer)] {
            for s in 0..shards {
                let mut extra = attest(signer);
                if let Some((dir, every)) = state {
                    extra.extend(["--state-path".into(), dir.join(role).display().to_string()]);
                    extra.extend(["--checkpoint-steps".into(), every.to_string()]);
                }
                procs.push(start(model, (role, s, shards, workers), &extra)?);
            }
        }
        let at = |role: &str, own: PartyRole, signer: &str| -> anyhow::Result<ShardAddrs> {
            let party = if own == PartyRole::Leader {
                Role::Leader
            } else {
                Role::Follower
            };
            Ok(ShardAddrs {
                own,
                addrs: procs
                    .iter()
                    .filter(|p| p.role == role)
                    .map(|p| p.addr.clone())
                    .collect(),
                security: super::attest::sim_security(&sim.root_key, &sim.policy, signer)?,
                max_message: vfl_trainer::sharded::message_limit(spec, party),
                wait: std::time::Duration::from_secs(30),
            })
        };
        let leader = at("leader", PartyRole::Leader, &sim.leader_signer)?;
        let follower = at("follower", PartyRole::Follower, &sim.follower_signer)?;
        Ok(ShardProcesses {
            procs,
            leader,
            follower,
            attest: (attest(&sim.leader_signer), attest(&sim.follower_signer)),
        })
    }

    /// After the workers left: every shard exited successfully, having
    /// applied `steps` steps.
    pub fn finish(mut self, steps: u64) -> anyhow::Result<()> {
        for mut p in std::mem::take(&mut self.procs) {
            let done = p.lines.find_map(|l| l.ok().filter(|l| l.contains("done after")));
            let status = p.child.wait()?;
            anyhow::ensure!(
                status.success()
                    && done
                        .as_deref()
                        .is_some_and(|d| d.ends_with(&format!("after {steps} steps"))),
                "a shard of the {} failed ({status}; {done:?})",
                p.role
            );
        }
        Ok(())
    }
}

/// On an error before [`ShardProcesses::finish`], no shard is left behind.
impl Drop for ShardProcesses {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// Starts `vfl shard` for `role`, shard `index` of `shards`, and waits for
/// the address it listens on.
fn start(
    model: &str,
    (role, index, shards, workers): (&'static str, usize, usize, usize),
    attest: &[String],
) -> anyhow::Result<ShardProcess> {
    let args: Vec<String> = ["shard", "--role", role, "--model", model, "--index"]
        .iter()
        .map(|s| s.to_string())
        .chain([index.to_string(), "--shards".into(), shards.to_string()])
        .chain([
            "--workers".into(),
            workers.to_string(),
            "--local-addr".into(),
            "127.0.0.1:0".into(),
        ])
        .chain(["--peer-timeout".into(), "60".into()])
        .chain(attest.iter().cloned())
        .collect();
    spawn(role, &format!("{role}-shard-{index}"), &args, true)
}

/// Starts `vfl ARGS` and, with `listens`, waits for the address its first
/// line says it listens on.
fn spawn(role: &'static str, label: &str, args: &[String], listens: bool) -> anyhow::Result<ShardProcess> {
    let exe = std::env::current_exe().context("locating the vfl executable")?;
    let what = args.iter().take(5).cloned().collect::<Vec<_>>().join(" ");
    let mut child = std::process::Command::new(&exe)
        .args(["--loglevel", "warn"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting vfl {what}"))?;
    let out = child.stdout.take().context("the child's stdout")?;
    let mut lines = std::io::BufReader::new(out).lines();
    let mut addr = String::new();
    if listens {
        let first = lines.next().transpose()?.unwrap_or_default();
        let Some((_, a)) = first.rsplit_once(" on ") else {
            let _ = child.kill();
            anyhow::bail!("vfl {what} did not start: {first:?}");
        };
        addr = a.trim().to_string();
    }
    Ok(ShardProcess {
        role,
        label: label.to_string(),
        args: args.to_vec(),
        addr,
        child,
        lines,
        before: Vec::new(),
    })
}

/// Kills `p` (SIGKILL: no clean-up of any kind) and starts it again with
/// the same arguments, listening on the same address.
fn kill_and_restart(p: &mut ShardProcess) -> anyhow::Result<()> {
    p.child.kill()?;
    p.child.wait()?;
    // What it printed before it died.
    let mut before = std::mem::take(&mut p.before);
    before.extend(p.lines.by_ref().map_while(Result::ok));
    let mut args = p.args.clone();
    if let Some(i) = args.iter().position(|a| a == "--local-addr")
        && !p.addr.is_empty()
    {
        args[i + 1].clone_from(&p.addr);
    }
    let again = spawn(p.role, &p.label, &args, !p.addr.is_empty())?;
    anyhow::ensure!(
        again.addr == p.addr,
        "{} came back on {} instead of {}",
        p.label,
        again.addr,
        p.addr
    );
    *p = again;
    p.before = before;
    Ok(())
}

/// A scale-out job's shape and run.
pub struct Job<'a> {
    pub model: &'a str,
    pub workers: usize,
    pub shards: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub threads: usize,
    pub seed: u64,
    /// Each party's training data and held-out data directories (leader's,
    /// follower's).
    pub train: (&'a Path, &'a Path),
    pub eval: (&'a Path, &'a Path),
    /// A coordinated checkpoint every so many steps (0: none).
    pub checkpoint_steps: u64,
    /// The process to kill (SIGKILL) and restart alone (`coordinator`,
    /// `leader-shard-1`, `follower-worker-0`, ...), and when.
    pub kill: Option<(&'a str, KillAt)>,
}

/// When the demo's fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KillAt {
    /// Once the coordinator saved the first checkpoint.
    Checkpoint,
    /// Once training ended (the coordinator sent `Finished`): during the
    /// pairs' end-of-job work, before the job's end is recorded.
    Finish,
    /// Once the job's end is recorded (the coordinator's commit point):
    /// during the goodbyes. The victim may have ended just before; started
    /// again, it finds its record of the end and ends at once.
    Commit,
}

impl KillAt {
    /// The coordinator's line that triggers it, and how the demo says it.
    fn trigger(self) -> (&'static str, &'static str) {
        match self {
            KillAt::Checkpoint => ("checkpoint: step", "after the first checkpoint"),
            KillAt::Finish => ("finished:", "once training ended"),
            KillAt::Commit => ("committed:", "once the job's end was recorded"),
        }
    }
}

/// What the job's processes printed.
pub struct JobOutput {
    /// The coordinator's per-epoch lines.
    pub epochs: Vec<String>,
    /// Leader worker 0's held-out line.
    pub held_out: String,
    pub steps: u64,
    /// Each party's model digest (equal on all its workers).
    pub digests: (String, String),
    /// The coordinator's last line (steps and restarts).
    pub done: String,
    /// Worker pair 0's lines saying where each party's model went.
    pub exports: Vec<String>,
}

/// Runs a whole scale-out job as processes of this binary: 2 x `shards`
/// `vfl shard`, the leader's `vfl coordinator`, and `workers` `vfl worker`
/// per party; waits for all of them and checks that each party's workers
/// end with the same model.
pub fn run_job(work: &Path, spec: &ModelSpec, job: &Job<'_>) -> anyhow::Result<JobOutput> {
    let state = work.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("clearing {}", state.display()))?;
    }
    let saving = (job.checkpoint_steps > 0).then_some((state.as_path(), job.checkpoint_steps));
    let mut shards = ShardProcesses::start_saving(work, job.model, spec, (job.workers, job.shards), saving)?;
    let (lattest, fattest) = shards.attest.clone();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let common = |dir: &Path| {
        s(&["--model", job.model, "--batch-size"])
            .into_iter()
            .chain([
                job.batch_size.to_string(),
                "--data-path".into(),
                dir.display().to_string(),
            ])
            .chain(s(&["--peer-timeout", "60", "--local-addr", "127.0.0.1:0"]))
            .collect::<Vec<_>>()
    };
    let mut args = s(&["coordinator", "--workers"]);
    args.push(job.workers.to_string());
    args.extend(common(job.train.0));
    args.extend([
        "--epoch-num".into(),
        job.epochs.to_string(),
        "--shuffle".into(),
        "--seed".into(),
    ]);
    args.push(job.seed.to_string());
    if job.checkpoint_steps > 0 {
        args.extend(["--state-path".into(), state.join("leader").display().to_string()]);
        args.extend(["--checkpoint-steps".into(), job.checkpoint_steps.to_string()]);
    }
    args.extend(lattest.iter().cloned());
    let coordinator = spawn("coordinator", "coordinator", &args, true)?;
    let coord_addr = coordinator.addr.clone();
    shards.procs.push(coordinator);
    let worker_args = |role: &str, w: usize, addrs: &ShardAddrs, dirs: (&Path, &Path)| {
        let mut a = s(&["worker", "--role", role, "--index"]);
        a.extend([w.to_string(), "--workers".into(), job.workers.to_string()]);
        a.extend([
            "--shards".into(),
            job.shards.to_string(),
            "--shard-addr".into(),
            addrs.addrs.join(","),
        ]);
        a.extend(["--threads".into(), job.threads.to_string()]);
        a.extend(common(dirs.0));
        a.extend(["--eval-data-path".into(), dirs.1.display().to_string()]);
        a.extend(["--export-path".into(), work.join("export").display().to_string()]);
        if job.checkpoint_steps > 0 {
            a.extend(["--state-path".into(), state.join(role).display().to_string()]);
        }
        a
    };
    let mut leader_addrs = Vec::new();
    for w in 0..job.workers {
        let mut a = worker_args("leader", w, &shards.leader, (job.train.0, job.eval.0));
        a.extend(["--coordinator-addr".into(), coord_addr.clone()]);
        a.extend(lattest.iter().cloned());
        let p = spawn("leader worker", &format!("leader-worker-{w}"), &a, true)?;
        leader_addrs.push(p.addr.clone());
        shards.procs.push(p);
    }
    for (w, peer) in leader_addrs.iter().enumerate() {
        let mut a = worker_args("follower", w, &shards.follower, (job.train.1, job.eval.1));
        a.extend(["--peer-addr".into(), peer.clone()]);
        a.extend(fattest.iter().cloned());
        shards
            .procs
            .push(spawn("follower worker", &format!("follower-worker-{w}"), &a, false)?);
    }
    if let Some((victim, at)) = job.kill {
        // At the trigger: kill the victim, restart it alone.
        let (trigger, when) = at.trigger();
        let coordinator = shards
            .procs
            .iter_mut()
            .find(|p| p.label == "coordinator")
            .context("no coordinator")?;
        let mut hit = false;
        for l in coordinator.lines.by_ref().map_while(Result::ok) {
            hit = l.starts_with(trigger);
            coordinator.before.push(l);
            if hit {
                break;
            }
        }
        anyhow::ensure!(hit, "the job ended before the kill's trigger ({when})");
        let p =
            shards.procs.iter_mut().find(|p| p.label == victim).with_context(|| {
                format!("no process {victim} (coordinator, leader-shard-0, follower-worker-1, ...)")
            })?;
        let ended = p.child.try_wait()?.is_some();
        kill_and_restart(p)?;
        let note = if ended { " (it had just ended)" } else { "" };
        println!("killed {victim} (SIGKILL) {when}{note}, and restarted it alone");
    }
    // Every process runs to its end; their outputs tell how it went.
    let mut outputs = Vec::new();
    let mut failed = Vec::new();
    for mut p in std::mem::take(&mut shards.procs) {
        let mut lines = std::mem::take(&mut p.before);
        lines.extend(p.lines.by_ref().map_while(Result::ok));
        let status = p.child.wait()?;
        if !status.success() {
            failed.push(format!("{} ({status})", p.role));
        }
        outputs.push((p.role, lines));
    }
    anyhow::ensure!(failed.is_empty(), "scale-out processes failed: {}", failed.join(", "));
    let find = |role: &str, prefix: &str| -> Vec<String> {
        outputs
            .iter()
            .filter(|(r, _)| *r == role)
            .flat_map(|(_, l)| l.iter().filter(|l| l.starts_with(prefix)).cloned())
            .collect()
    };
    let digest = |role: &str| -> anyhow::Result<(u64, String)> {
        let done = find(role, "worker ");
        let parsed: Vec<(u64, String)> = done
            .iter()
            .filter_map(|l| {
                let rest = l.split_once("done after ")?.1;
                let steps = rest.split_whitespace().next()?.parse().ok()?;
                Some((steps, rest.rsplit_once("model ")?.1.to_string()))
            })
            .collect();
        // A worker restarted after the job's end was recorded trains
        // nothing and holds no model (its killed incarnation may have
        // printed its own).
        let ended = done.iter().filter(|l| l.contains("the job had ended")).count();
        anyhow::ensure!(
            !parsed.is_empty()
                && (job.workers..=job.workers + 1).contains(&(parsed.len() + ended))
                && parsed.windows(2).all(|p| p[0] == p[1]),
            "the {role}s do not end alike: {done:?}"
        );
        Ok(parsed[0].clone())
    };
    let (steps, ldigest) = digest("leader worker")?;
    let (_, fdigest) = digest("follower worker")?;
    Ok(JobOutput {
        epochs: find("coordinator", "epoch "),
        held_out: find("leader worker", "held-out").into_iter().last().unwrap_or_default(),
        steps,
        digests: (ldigest, fdigest),
        done: find("coordinator", "coordinator: ")
            .into_iter()
            .last()
            .unwrap_or_default(),
        exports: [find("leader worker", "exported"), find("follower worker", "exported")].concat(),
    })
}
