//! `vfl demo`: planted data written as TFRecord files, two epochs of
//! training read from those files, evaluation on held-out files, and a
//! short summary.
//!
//! This runs both parties in one process through the same message
//! interface the network transport uses.

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
}

const EVAL_FIRST_ROW: u64 = 1_000_000_000;

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
        ..Default::default()
    };

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
    })?;
    let eval_files = a.eval_rows.div_ceil(a.rows_per_file).max(1);
    generate(&GenerateConfig {
        out: eval_dir.clone(),
        files: eval_files,
        rows_per_file: a.eval_rows.div_ceil(eval_files),
        first_row: EVAL_FIRST_ROW,
        synth: synth.clone(),
        gzip: false,
    })?;
    println!(
        "enclave-vfl demo: planted data in {} ({} training rows per party in {} blocks, written in {:.1} s)",
        work.display(),
        g.rows,
        a.files,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "model {} ({}), {} epochs, batch {}, {} thread(s) per party, kernel {}",
        spec.name,
        &spec.fingerprint()[..12],
        a.epoch_num,
        a.batch_size,
        threads,
        super::cpu_kernel()
    );

    let (ls, fs) = (schema_for(&spec, Role::Leader), schema_for(&spec, Role::Follower));
    let mut t = LocalTrainer::new(&spec, threads)?;
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
            r.metrics.auc.map_or("n/a".into(), |v| format!("{v:.4}"))
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let mut l = reader(&eval_dir.join("leader"), ls)?;
    let mut f = reader(&eval_dir.join("follower"), fs)?;
    let eval = t.run_pass(&mut l, &mut f, 256, false, |_| {})?;

    // The best any leader-only model could do: the hidden model's leader part.
    let generator = Synth::new(synth);
    let mut oracle = BinaryMetrics::new();
    let mut row = SynthRow::default();
    for i in EVAL_FIRST_ROW..EVAL_FIRST_ROW + eval.examples {
        generator.row(i, &mut row);
        let p = 1.0 / (1.0 + (-generator.party_logit(&row, true)).exp());
        oracle.update(&[p], &[row.y as f32], None);
    }
    let m = eval.metrics;
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    println!(
        "training: {examples} examples in {secs:.1} s = {:.0} examples/s",
        examples as f64 / secs
    );
    println!(
        "held-out evaluation ({} rows): AUC {}, log loss {:.4}, KS {}",
        m.count,
        fmt(m.auc),
        m.log_loss,
        fmt(m.ks)
    );
    println!(
        "best possible leader-only AUC (the hidden model's leader part): {}",
        fmt(oracle.values().auc)
    );
    Ok(())
}
