//! `vfl demo`: planted data, two epochs of training, evaluation on held-out
//! rows, and a short summary.
//!
//! This runs both parties in one process through the same message
//! interface the network transport uses.

use std::time::Instant;

use vfl_data::SynthSource;
use vfl_data::synth::{Synth, SynthConfig, SynthRow};
use vfl_nn::{BinaryMetrics, ModelSpec};
use vfl_trainer::LocalTrainer;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model preset or spec file. The default is the wide_n_deep
    /// architecture with Adam, which learns the planted signal in two
    /// epochs (the original SGD(0.1) preset is `wide_n_deep`).
    #[arg(long, default_value = "wide_n_deep_adam")]
    model: String,
    /// Training rows per party.
    #[arg(long, default_value_t = 20_000)]
    rows: u64,
    /// Held-out evaluation rows.
    #[arg(long, default_value_t = 4_000)]
    eval_rows: u64,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = ModelSpec::resolve(&a.model)?;
    let slots = spec.leader.slots().len();
    anyhow::ensure!(
        slots > 0 && slots == spec.follower.slots().len() && spec.leader.dense_columns().is_empty(),
        "the demo's planted data has the same sparse slots on both sides and no dense columns; model {} does not fit",
        spec.name
    );
    anyhow::ensure!(a.batch_size > 0, "--batch-size must be > 0");
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(2)));
    let generator = Synth::new(SynthConfig {
        slots,
        seed: a.seed,
        ..Default::default()
    });
    let mut t = LocalTrainer::new(&spec, threads)?;
    println!(
        "enclave-vfl demo: model {} ({}), {} planted rows x {} epochs, batch {}, {} thread(s) per party, kernel {}",
        spec.name,
        &spec.fingerprint()[..12],
        a.rows,
        a.epoch_num,
        a.batch_size,
        threads,
        super::cpu_kernel()
    );
    let start = Instant::now();
    let mut examples = 0;
    for epoch in 0..a.epoch_num {
        let mut l = SynthSource::new(&generator, true, 0, a.rows);
        let mut f = SynthSource::new(&generator, false, 0, a.rows);
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
    let (a0, a1) = (1u64 << 40, (1u64 << 40) + a.eval_rows);
    let mut l = SynthSource::new(&generator, true, a0, a1);
    let mut f = SynthSource::new(&generator, false, a0, a1);
    let eval = t.run_pass(&mut l, &mut f, 256, false, |_| {})?;
    let mut oracle = BinaryMetrics::new();
    let mut row = SynthRow::default();
    for i in a0..a1 {
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
