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
    /// Also measure sharded runs, as WORKERSxSHARDS (e.g. `1x1,2x2`): that
    /// many worker pairs and parameter shards per party, in this process,
    /// each pair training a full batch per step. Interleaved with the
    /// single pair of the same batch size and threads.
    #[arg(long, value_delimiter = ',', value_parser = parse_sharded)]
    sharded: Vec<(usize, usize)>,
    /// With --sharded: the shards as `vfl shard` processes over RA-TLS on
    /// loopback (simulated evidence), not in this process.
    #[arg(long, requires = "sharded")]
    remote: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_sharded(s: &str) -> Result<(usize, usize), String> {
    let (w, sh) = s.split_once('x').ok_or("expected WORKERSxSHARDS, e.g. 2x2")?;
    let n = |v: &str| {
        v.parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(format!("{v:?} is not a positive count"))
    };
    Ok((n(w)?, n(sh)?))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = ModelSpec::resolve(&a.model)?;
    if !a.sharded.is_empty() {
        return sharded(&a, &spec);
    }
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

/// One sharded measurement, its shards in this process or (--remote) in
/// `vfl shard` processes.
fn measure_sharded(
    a: &Args,
    spec: &ModelSpec,
    (b, t): (usize, usize),
    (w, s): (usize, usize),
    steps: u64,
) -> anyhow::Result<vfl_trainer::bench::ShardedBenchResult> {
    const WARMUP: u64 = 3;
    if !a.remote {
        return Ok(vfl_trainer::bench::sharded_throughput(
            spec,
            (b, t),
            (w, s),
            WARMUP,
            steps,
        )?);
    }
    let work = std::env::temp_dir().join(format!("vfl-bench-shards-{}", std::process::id()));
    let shards = super::scale::ShardProcesses::start(&work, &a.model, spec, (w, s))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let trainer =
        vfl_trainer::sharded::ShardedTrainer::remote(spec, (w, t), rt.handle(), &shards.leader, &shards.follower)?;
    let r = vfl_trainer::bench::sharded_throughput_of(trainer, spec, (b, t, s), WARMUP, steps)?;
    shards.finish(WARMUP + steps)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(r)
}

/// A sharded configuration's label, throughputs and ratios to the single
/// pair over the rounds, and its last measurement.
type Row = (
    String,
    Vec<f64>,
    Vec<f64>,
    Option<vfl_trainer::bench::ShardedBenchResult>,
);

/// Single pair and sharded runs, interleaved round by round; per sharded
/// configuration its throughput relative to the single pair measured in the
/// same round (median over rounds), bytes per example and step-time split.
fn sharded(a: &Args, spec: &ModelSpec) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..a.rounds {
        let mut i = 0;
        for &b in &a.batch_sizes {
            for &t in &a.threads {
                let steps = a.examples.div_ceil(b as u64).max(1);
                let single =
                    train_throughput(spec, b, t, 3, steps).with_context(|| format!("benchmark B={b} threads={t}"))?;
                for &(w, s) in &a.sharded {
                    let r = measure_sharded(a, spec, (b, t), (w, s), steps.div_ceil(w as u64))
                        .with_context(|| format!("sharded benchmark B={b} threads={t} {w}x{s}"))?;
                    if a.json {
                        println!(
                            "{}",
                            serde_json::json!({"round": round, "single": single, "sharded": r, "kernel": super::cpu_kernel()})
                        );
                    }
                    if rows.len() <= i {
                        rows.push((format!("{b:>6} {t:>8} {w:>8} {s:>7}"), Vec::new(), Vec::new(), None));
                    }
                    rows[i].1.push(r.result.examples_per_sec);
                    rows[i].2.push(r.result.examples_per_sec / single.examples_per_sec);
                    rows[i].3 = Some(r);
                    i += 1;
                }
            }
        }
    }
    if a.json {
        return Ok(());
    }
    println!(
        "model {} | kernel {} | {} rounds | sharded in one process (pairs stepped one after another), vs the single pair of the same round",
        spec.name,
        super::cpu_kernel(),
        a.rounds
    );
    println!(
        "{:>6} {:>8} {:>8} {:>7} {:>10} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "batch", "threads", "workers", "shards", "ex/s", "vs 1", "cross B/ex", "up B/ex", "down B/ex", "params"
    );
    for (label, eps, ratio, last) in &rows {
        let Some(r) = last else { continue };
        println!(
            "{label} {:>10.0} {:>8.3} {:>10.0} {:>10.0} {:>10.0} {:>7.1}%",
            median(eps).unwrap_or(0.0),
            median(ratio).unwrap_or(0.0),
            r.cross_bytes,
            r.to_shards_bytes,
            r.from_shards_bytes,
            100.0 * r.params_share
        );
    }
    Ok(())
}

/// The median of `v`, if any.
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}
