//! `vfl demo`: planted data written as TFRecord files, two epochs of
//! training read from those files, evaluation on held-out files, and a
//! short summary.
//!
//! By default the leader and the follower run as two processes talking gRPC
//! on loopback, and their training data starts unaligned (each side lacks
//! some of the other's rows, the follower's are shuffled): `vfl join`
//! aligns it first. `--in-process` runs both in this process through the
//! same message interface, on aligned data.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use vfl_data::blocks::{DataDir, ReadOptions};
use vfl_data::generate::{GenerateConfig, generate};
use vfl_data::synth::{Synth, SynthConfig, SynthRow};
use vfl_data::{BlockReader, Schema};
use vfl_nn::{BinaryMetrics, ModelSpec, Role};
use vfl_trainer::{LocalTrainer, schema_for};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model preset or spec file. The default is the wide_n_deep
    /// architecture with Adam, which learns the planted signal in two
    /// epochs (the original SGD(0.1) preset is `wide_n_deep`).
    #[arg(long, default_value = "wide_n_deep_adam")]
    model: String,
    /// Where the generated data goes (default: vfl-demo in the system's
    /// temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Training files (data blocks) per party.
    #[arg(long, default_value_t = 10)]
    files: usize,
    #[arg(long, default_value_t = 2000)]
    rows_per_file: usize,
    /// Held-out evaluation rows.
    #[arg(long, default_value_t = 4000)]
    eval_rows: usize,
    #[arg(long, default_value_t = 2)]
    epoch_num: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Threads per party (default: the machine's cores, at most 2).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the planted data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run both parties inside this process (no network) instead of as two
    /// processes talking gRPC on loopback.
    #[arg(long)]
    in_process: bool,
    /// Scale-out: train with this many worker pairs and --shards
    /// parameter shards per party, synchronously (docs/scale-out.md). Every
    /// role runs as its own process (`vfl shard`, `vfl coordinator`, `vfl
    /// worker`) over RA-TLS, with two simulated signers, one per party.
    #[arg(long)]
    workers: Option<usize>,
    /// Parameter shards per party (with --workers).
    #[arg(long, default_value_t = 2, requires = "workers")]
    shards: usize,
    /// With --workers: a coordinated checkpoint every N steps (shards and
    /// the coordinator save their state under the work directory).
    #[arg(long, default_value_t = 0, requires = "workers")]
    checkpoint_steps: u64,
    /// With --workers and --checkpoint-steps: kill this process with
    /// SIGKILL (at --kill-at) and restart it alone (`coordinator`,
    /// `leader-shard-1`, `follower-worker-0`, ...); the job resumes from
    /// its checkpoint and ends with the weights of an uninterrupted run.
    #[arg(long, requires = "checkpoint_steps")]
    kill: Option<String>,
    /// When --kill strikes: after the first checkpoint, or once training
    /// has ended (during the held-out pass and export, before the job's
    /// end is recorded).
    #[arg(long, value_enum, default_value_t = super::scale::KillAt::Checkpoint, requires = "kill")]
    kill_at: super::scale::KillAt,
}

const EVAL_FIRST_ROW: u64 = 1_000_000_000;

/// The fraction of training ids on both sides (two processes).
const SHARED: f64 = 0.8;

fn reader(dir: &std::path::Path, schema: Schema) -> anyhow::Result<BlockReader> {
    let d = DataDir::scan(dir, None)?;
    Ok(BlockReader::new(d.blocks().to_vec(), schema, ReadOptions::default()))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = ModelSpec::resolve(&a.model)?;
    let slots = spec.leader.slots().len();
    anyhow::ensure!(
        slots > 0 && slots == spec.follower.slots().len() && spec.leader.dense_columns().is_empty(),
        "the demo's planted data has the same sparse slots x_0.. on both sides and no dense columns; model {} does not fit",
        spec.name
    );
    anyhow::ensure!(
        a.batch_size > 0 && a.files > 0 && a.rows_per_file > 0,
        "sizes must be > 0"
    );
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(2)));
    let work = a
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("vfl-demo"));
    let synth = SynthConfig {
        slots,
        seed: a.seed,
        // Sharper labels than the generator's default (3.0): less label
        // noise for the 1.6 M embedding weights to memorise in 20,000 rows,
        // so the held-out AUC shows the follower's contribution (measured:
        // held-out AUC 0.79 -> 0.87, leader-only ceiling 0.79 -> 0.82; README).
        sharpness: 6.0,
        ..Default::default()
    };

    let eval_rows = write_data(&a, &work, &synth)?;
    println!(
        "model {} ({}), {} epochs, batch {}, {} thread(s) per party, kernel {}",
        spec.name,
        &spec.fingerprint()[..12],
        a.epoch_num,
        a.batch_size,
        threads,
        super::cpu_kernel()
    );
    if let Some(workers) = a.workers {
        sharded(&a, &spec, &work, (workers, threads), (&synth, eval_rows))
    } else if a.in_process {
        in_process(&a, &spec, &work, threads, &synth)
    } else {
        two_processes(&a, &work, threads, &synth, eval_rows)
    }
}

/// Whether the demo trains on aligned data (no join first).
fn aligned(a: &Args) -> bool {
    a.in_process || a.workers.is_some()
}

/// Writes the planted training and held-out data under `work`; the number
/// of held-out rows.
fn write_data(a: &Args, work: &std::path::Path, synth: &SynthConfig) -> anyhow::Result<u64> {
    let t0 = Instant::now();
    let train_dir = work.join("train");
    let eval_dir = work.join("eval");
    for dir in [&train_dir, &eval_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    let g = generate(&GenerateConfig {
        out: train_dir.clone(),
        files: a.files,
        rows_per_file: a.rows_per_file,
        first_row: 0,
        synth: synth.clone(),
        gzip: false,
        // Two processes: unaligned, for `vfl join` to align first.
        shared: (!aligned(a)).then_some(SHARED),
        shuffle_follower: !aligned(a),
        ..Default::default()
    })?;
    let eval_files = a.eval_rows.div_ceil(a.rows_per_file).max(1);
    generate(&GenerateConfig {
        out: eval_dir.clone(),
        files: eval_files,
        rows_per_file: a.eval_rows.div_ceil(eval_files),
        first_row: EVAL_FIRST_ROW,
        synth: synth.clone(),
        gzip: false,
        ..Default::default()
    })?;
    if aligned(a) {
        println!(
            "enclave-vfl demo: planted data in {} ({} training rows per party in {} blocks, written in {:.1} s)",
            work.display(),
            g.rows,
            a.files,
            t0.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "enclave-vfl demo: planted data in {} ({} leader and {} follower training rows in {} blocks each, \
             {:.0}% of ids on both sides, the follower's rows shuffled; written in {:.1} s)",
            work.display(),
            g.rows,
            g.follower_rows,
            a.files,
            SHARED * 100.0,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok((eval_files * a.eval_rows.div_ceil(eval_files)) as u64)
}

/// Both parties in this process: train, evaluate on the held-out rows,
/// report.
fn in_process(
    a: &Args,
    spec: &ModelSpec,
    work: &std::path::Path,
    threads: usize,
    synth: &SynthConfig,
) -> anyhow::Result<()> {
    let (train_dir, eval_dir) = (work.join("train"), work.join("eval"));
    let (ls, fs) = (schema_for(spec, Role::Leader), schema_for(spec, Role::Follower));
    let mut t = LocalTrainer::new(spec, threads)?;
    let start = Instant::now();
    let mut examples = 0;
    for epoch in 0..a.epoch_num {
        let mut l = reader(&train_dir.join("leader"), ls.clone())?;
        let mut f = reader(&train_dir.join("follower"), fs.clone())?;
        let r = t.run_pass(&mut l, &mut f, a.batch_size, true, |s| {
            if s.iteration % 200 == 0 {
                tracing::debug!(iteration = s.iteration, loss = s.loss, "step");
            }
        })?;
        examples += r.examples;
        println!(
            "epoch {}: {} steps, mean loss {:.4}, train AUC {}",
            epoch + 1,
            r.steps,
            r.mean_loss,
            super::four(r.metrics.auc)
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let mut l = reader(&eval_dir.join("leader"), ls)?;
    let mut f = reader(&eval_dir.join("follower"), fs)?;
    let eval = t.run_pass(&mut l, &mut f, 256, false, |_| {})?;

    let m = eval.metrics;
    println!(
        "training: {examples} examples in {secs:.1} s = {:.0} examples/s",
        examples as f64 / secs
    );
    held_out(&m, synth, eval.examples);
    Ok(())
}

/// Scale-out: the whole job as processes of this binary (`vfl shard` x 2S,
/// the leader's `vfl coordinator`, `vfl worker` x 2N) over RA-TLS with one
/// simulated signer per party; train, evaluate on the held-out rows (worker
/// pair 0), report.
fn sharded(
    a: &Args,
    spec: &ModelSpec,
    work: &std::path::Path,
    (workers, threads): (usize, usize),
    (synth, eval_rows): (&SynthConfig, u64),
) -> anyhow::Result<()> {
    anyhow::ensure!(workers > 0 && a.shards > 0, "--workers and --shards must be > 0");
    println!(
        "scale-out: {workers} worker pair(s), {} shard process(es) per party, the leader's coordinator: \
         {} processes over RA-TLS (one simulated signer per party); synchronous steps, each pair {} rows",
        a.shards,
        2 * workers + 2 * a.shards + 1,
        a.batch_size
    );
    let (train_dir, eval_dir) = (work.join("train"), work.join("eval"));
    let (tl, tf, el, ef) = (
        train_dir.join("leader"),
        train_dir.join("follower"),
        eval_dir.join("leader"),
        eval_dir.join("follower"),
    );
    let start = Instant::now();
    let out = super::scale::run_job(
        work,
        spec,
        &super::scale::Job {
            model: &a.model,
            workers,
            shards: a.shards,
            epochs: a.epoch_num,
            batch_size: a.batch_size,
            threads,
            seed: a.seed,
            train: (&tl, &tf),
            eval: (&el, &ef),
            checkpoint_steps: a.checkpoint_steps,
            kill: a.kill.as_deref().map(|k| (k, a.kill_at)),
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    for e in &out.epochs {
        println!("{e}");
    }
    let examples = (a.files * a.rows_per_file * a.epoch_num) as f64;
    println!(
        "training: {} synchronous steps, {examples:.0} examples in {secs:.1} s = {:.0} examples/s (all processes, \
         start-up included); every worker of a party ends with the same model (leader {}, follower {})",
        out.steps,
        examples / secs,
        &out.digests.0,
        &out.digests.1
    );
    println!("{}", out.done);
    for e in &out.exports {
        println!("{e}");
    }
    if out.held_out.is_empty() {
        // Leader worker 0 was killed after the job's end was recorded (a
        // kill at its end may land just after it), before it printed its
        // evaluation (the export is written).
        anyhow::ensure!(
            a.kill.as_deref() == Some("leader-worker-0") && a.kill_at != super::scale::KillAt::Checkpoint,
            "worker pair 0 reported no held-out evaluation"
        );
        println!("held-out evaluation: not reported (worker pair 0 was killed after the job's end was recorded)");
    } else {
        println!("{}", out.held_out);
    }
    println!("{}", best_possible(synth, eval_rows));
    Ok(())
}

/// The held-out metrics and the best possible AUCs on those rows.
fn held_out(m: &vfl_nn::MetricValues, synth: &SynthConfig, rows: u64) {
    println!(
        "held-out evaluation ({} rows): AUC {}, log loss {:.4}, KS {}",
        m.count,
        super::four(m.auc),
        m.log_loss,
        super::four(m.ks)
    );
    println!("{}", best_possible(synth, rows));
}

/// The best possible AUCs on the evaluation rows, as a printable line: of a
/// leader-only model (the hidden model's leader part) and of a model of
/// both parties' features (the hidden model itself).
fn best_possible(synth: &SynthConfig, rows: u64) -> String {
    let generator = Synth::new(synth.clone());
    let (mut leader, mut both) = (BinaryMetrics::new(), BinaryMetrics::new());
    let mut row = SynthRow::default();
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
    for i in EVAL_FIRST_ROW..EVAL_FIRST_ROW + rows {
        generator.row(i, &mut row);
        let y = [row.y as f32];
        leader.update(&[sigmoid(generator.party_logit(&row, true))], &y, None);
        both.update(&[sigmoid(row.hidden_logit)], &y, None);
    }
    format!(
        "best possible AUC (the hidden model): with the leader's features alone {}, with both parties' {}",
        super::four(leader.values().auc),
        super::four(both.values().auc)
    )
}

/// A development root and a policy accepting this binary in simulated mode
/// (both demo parties run the same binary, so each accepts the other);
/// returns the attestation flags for both parties.
fn simulated_security(work: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let (key, policy_path) = super::attest::self_accepting_sim_policy(&work.join("attestation"))?;
    Ok(vec![
        "--attestation".into(),
        "simulated".into(),
        "--sim-root-key".into(),
        key.display().to_string(),
        "--policy".into(),
        policy_path.display().to_string(),
    ])
}

/// Runs `vfl leader` and `vfl follower` as two processes on loopback and
/// returns their standard outputs.
fn run_pair(leader: &[String], follower: &[String], security: &[String]) -> anyhow::Result<(String, String)> {
    run_commands(&["leader"], leader, &["follower"], follower, security)
}

/// Runs two `vfl` subcommands (the leader's listening, the follower's
/// dialling it) as two processes on loopback; their standard outputs.
fn run_commands(
    leader_cmd: &[&str],
    leader: &[String],
    follower_cmd: &[&str],
    follower: &[String],
    security: &[String],
) -> anyhow::Result<(String, String)> {
    let exe = std::env::current_exe().context("locating the vfl executable")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let spawn = |role: &[&str], args: &[String], addr_flag: &str| {
        std::process::Command::new(&exe)
            .args(["--loglevel", "warn"])
            .args(role)
            .args([addr_flag, &format!("127.0.0.1:{port}")])
            .args(security)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting vfl {}", role.join(" ")))
    };
    let l = spawn(leader_cmd, leader, "--local-addr")?;
    let f = spawn(follower_cmd, follower, "--peer-addr")?;
    let lo = l.wait_with_output()?;
    let fo = f.wait_with_output()?;
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    if !lo.status.success() || !fo.status.success() {
        anyhow::bail!(
            "a party failed\nleader:\n{}{}\nfollower:\n{}{}",
            out(&lo),
            err(&lo),
            out(&fo),
            err(&fo)
        );
    }
    Ok((out(&lo), out(&fo)))
}

fn two_processes(
    a: &Args,
    work: &std::path::Path,
    threads: usize,
    synth: &SynthConfig,
    eval_rows: u64,
) -> anyhow::Result<()> {
    let security = simulated_security(work)?;
    let raw = work.join("train");
    println!(
        "alignment: vfl join leader / follower, a private set intersection of ids inside the enclaves \
         (over mutual RA-TLS on loopback; simulated attestation: a development PKI stands in for SGX)"
    );
    let joined = work.join("joined");
    let join_args = |role: &str| -> Vec<String> {
        vec![
            "--data-path".into(),
            raw.join(role).display().to_string(),
            "--output-path".into(),
            joined.join(role).display().to_string(),
            "--rows-per-block".into(),
            a.rows_per_file.to_string(),
        ]
    };
    let (jl, _) = run_commands(
        &["join", "leader"],
        &join_args("leader"),
        &["join", "follower"],
        &join_args("follower"),
        &security,
    )?;
    jl.lines().for_each(|l| println!("  {l}"));
    println!(
        "training: leader and follower as two processes, gRPC over mutual RA-TLS on loopback \
         (simulated attestation: a development PKI stands in for SGX)"
    );
    let export = work.join("export");
    let _ = std::fs::remove_dir_all(&export);
    let p = |x: PathBuf| x.display().to_string();
    let common = |role: &str, data: &str| -> Vec<String> {
        vec![
            "--model".into(),
            a.model.clone(),
            "--batch-size".into(),
            a.batch_size.to_string(),
            "--threads".into(),
            threads.to_string(),
            "--data-path".into(),
            p(work.join(data).join(role)),
        ]
    };
    let mut la = common("leader", "joined");
    la.extend([
        "--epoch-num".into(),
        a.epoch_num.to_string(),
        "--shuffle".into(),
        "--export-path".into(),
        p(export.clone()),
    ]);
    let mut fa = common("follower", "joined");
    fa.extend(["--export-path".into(), p(export.clone())]);
    let (lout, _) = run_pair(&la, &fa, &security)?;
    lout.lines().for_each(|l| println!("  {l}"));
    let id = std::fs::read_dir(&export)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .context("no export was written")?;
    let mut le = common("leader", "eval");
    le.extend(["--mode".into(), "eval".into(), "--load-model".into(), p(id.clone())]);
    le.extend(["--predictions-path".into(), p(work.join("predictions.csv"))]);
    let mut fe = common("follower", "eval");
    fe.extend(["--mode".into(), "eval".into(), "--load-model".into(), p(id.clone())]);
    let (eout, _) = run_pair(&le, &fe, &security)?;
    println!("held-out evaluation:");
    eout.lines().for_each(|l| println!("  {l}"));
    println!("{}", best_possible(synth, eval_rows));
    println!(
        "outputs: model in {}, predictions in {}",
        id.display(),
        work.join("predictions.csv").display()
    );
    Ok(())
}
