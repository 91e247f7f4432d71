//! `vfl bench`: in-process training throughput.

use anyhow::Context;
use vfl_nn::ModelSpec;
use vfl_trainer::bench::train_throughput;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model preset name or spec file (needs sparse slots only).
    #[arg(long, default_value = "wide_n_deep")]
    model: String,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "32,256")]
    batch_sizes: Vec<usize>,
    /// Thread counts to measure (per party).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Examples per measurement (rounded up to whole batches).
    #[arg(long, default_value_t = 40_000)]
    examples: u64,
    /// Measurement rounds; configurations are interleaved round by round so
    /// that noise from other jobs spreads over all of them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = ModelSpec::resolve(&a.model)?;
    let n = a.batch_sizes.len() * a.threads.len();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut per_cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    for round in 0..a.rounds {
        let mut i = 0;
        for &b in &a.batch_sizes {
            for &t in &a.threads {
                let steps = a.examples.div_ceil(b as u64).max(1);
                let r =
                    train_throughput(&spec, b, t, 3, steps).with_context(|| format!("benchmark B={b} threads={t}"))?;
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"round": round, "result": r, "kernel": super::cpu_kernel()})
                    );
                }
                results[i].push(r.examples_per_sec);
                per_cpu[i].extend(r.examples_per_cpu_sec);
                i += 1;
            }
        }
    }
    if !a.json {
        println!(
            "model {} | kernel {} | {} rounds | examples/s of wall time (median, min, max) and per CPU-second (median)",
            spec.name,
            super::cpu_kernel(),
            a.rounds
        );
        println!(
            "{:>6} {:>8} {:>10} {:>10} {:>10} {:>12}",
            "batch", "threads", "median", "min", "max", "per-cpu-s"
        );
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let mut i = 0;
        for &b in &a.batch_sizes {
            for &t in &a.threads {
                let v = &results[i];
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(0.0, f64::max);
                let cpu = median(&per_cpu[i]).map_or("n/a".to_string(), |c| format!("{c:.0}"));
                println!(
                    "{b:>6} {t:>8} {:>10.0} {lo:>10.0} {hi:>10.0} {cpu:>12}",
                    median(v).unwrap_or(0.0)
                );
                i += 1;
            }
        }
    }
    Ok(())
}
