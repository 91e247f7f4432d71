//! Throughput benchmark of the in-process training step.

use std::time::Instant;

use vfl_data::synth::{Synth, SynthConfig};
use vfl_data::{Batch, BatchSource, SynthSource};
use vfl_nn::ModelSpec;

use crate::TrainError;
use crate::local::LocalTrainer;

/// One benchmark measurement.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BenchResult {
    pub model: String,
    pub batch_size: usize,
    pub threads: usize,
    pub steps: u64,
    pub seconds: f64,
    pub examples_per_sec: f64,
    /// CPU seconds used by the whole process during the measurement
    /// (Linux only; `None` elsewhere).
    pub cpu_seconds: Option<f64>,
    /// Examples per CPU-second: time lost to other jobs on a shared machine
    /// does not count here, unlike in `examples_per_sec`.
    pub examples_per_cpu_sec: Option<f64>,
}

/// CPU time (user + system) of this process, from /proc (Linux; USER_HZ is
/// 100 ticks per second on every Linux ABI).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `pool` pairs of aligned synthetic batches.
fn batch_pool(
    generator: &Synth,
    slots: usize,
    batch_size: usize,
    pool: usize,
) -> Result<Vec<(Batch, Batch)>, TrainError> {
    let mut pairs = Vec::with_capacity(pool);
    let mut ls = SynthSource::new(generator, true, 0, (pool * batch_size) as u64);
    let mut fs = SynthSource::new(generator, false, 0, (pool * batch_size) as u64);
    for _ in 0..pool {
        let mut lb = Batch::new(slots, 0);
        let mut fb = Batch::new(slots, 0);
        ls.fill(&mut lb, batch_size)?;
        fs.fill(&mut fb, batch_size)?;
        pairs.push((lb, fb));
    }
    Ok(pairs)
}

/// The synthetic data the benchmarks use for `spec`: sparse slots only,
/// the same count on both sides, ids inside every table.
fn synth_for(spec: &ModelSpec) -> Result<(Synth, usize), TrainError> {
    let slots = spec.leader.slots().len();
    if slots != spec.follower.slots().len() || !spec.leader.dense_columns().is_empty() {
        return Err(TrainError::Unsupported(
            "the benchmark needs a model whose parties have the same number of sparse slots and no dense columns",
        ));
    }
    let vocab = spec
        .leader
        .slots()
        .iter()
        .chain(&spec.follower.slots())
        .map(|s| s.vocab)
        .min()
        .unwrap_or(1);
    let generator = Synth::new(SynthConfig {
        slots,
        max_id: vocab as i64 - 1,
        ..Default::default()
    });
    Ok((generator, slots))
}

/// Trains `steps` steps of `spec` (which must use synthetic-compatible
/// sparse slots, e.g. wide_n_deep) at `batch_size`, after `warmup` steps,
/// cycling over a pre-generated pool of batches so that data generation is
/// not measured.
pub fn train_throughput(
    spec: &ModelSpec,
    batch_size: usize,
    threads: usize,
    warmup: u64,
    steps: u64,
) -> Result<BenchResult, TrainError> {
    let (generator, slots) = synth_for(spec)?;
    let pairs = batch_pool(&generator, slots, batch_size, 8)?;
    let pool = pairs.len();
    let mut t = LocalTrainer::new(spec, threads)?;
    for i in 0..warmup {
        let (lb, fb) = &pairs[i as usize % pool];
        t.train_step(lb, fb)?;
    }
    let cpu0 = process_cpu_seconds();
    let start = Instant::now();
    for i in 0..steps {
        let (lb, fb) = &pairs[i as usize % pool];
        t.train_step(lb, fb)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(result(
        spec,
        (batch_size, threads, steps),
        seconds,
        cpu0,
        steps as f64 * batch_size as f64,
    ))
}

fn result(
    spec: &ModelSpec,
    (batch_size, threads, steps): (usize, usize, u64),
    seconds: f64,
    cpu0: Option<f64>,
    examples: f64,
) -> BenchResult {
    let cpu_seconds = cpu0.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    BenchResult {
        model: spec.name.clone(),
        batch_size,
        threads,
        steps,
        seconds,
        examples_per_sec: examples / seconds,
        cpu_seconds,
        examples_per_cpu_sec: cpu_seconds.filter(|&c| c > 0.0).map(|c| examples / c),
    }
}

/// A sharded in-process measurement: throughput, bytes per example on each
/// link, and where the step time went.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ShardedBenchResult {
    pub workers: usize,
    pub shards: usize,
    pub result: BenchResult,
    /// Bytes per example: between the parties, workers to shards, shards
    /// to workers (payload).
    pub cross_bytes: f64,
    pub to_shards_bytes: f64,
    pub from_shards_bytes: f64,
    /// Share of the step time in the pairs' compute and in the parameter
    /// path (split, combine, optimizer, replica writes).
    pub compute_share: f64,
    pub params_share: f64,
}

/// [`train_throughput`] of a sharded run: `workers` pairs (each
/// `threads` threads, stepped one after the other in this process) and
/// `shards` shards per party in this process, each pair training
/// `batch_size` rows a step.
pub fn sharded_throughput(
    spec: &ModelSpec,
    (batch_size, threads): (usize, usize),
    (workers, shards): (usize, usize),
    warmup: u64,
    steps: u64,
) -> Result<ShardedBenchResult, TrainError> {
    let t = crate::sharded::ShardedTrainer::new(spec, workers, shards, threads)?;
    sharded_throughput_of(t, spec, (batch_size, threads, shards), warmup, steps)
}

/// [`sharded_throughput`] of a given trainer (its shards local or
/// remote).
pub fn sharded_throughput_of(
    mut t: crate::sharded::ShardedTrainer,
    spec: &ModelSpec,
    (batch_size, threads, shards): (usize, usize, usize),
    warmup: u64,
    steps: u64,
) -> Result<ShardedBenchResult, TrainError> {
    let workers = t.workers();
    let (generator, slots) = synth_for(spec)?;
    let mut pool = batch_pool(&generator, slots, batch_size, 8.max(workers))?;
    let mut next = 0;
    let mut run = |t: &mut crate::sharded::ShardedTrainer, n: u64| -> Result<(), TrainError> {
        for _ in 0..n {
            let start = next % (pool.len() - workers + 1);
            t.train_step(&mut pool[start..start + workers])?;
            next += workers;
        }
        Ok(())
    };
    run(&mut t, warmup)?;
    let (traffic0, times0) = (t.traffic(), t.times());
    let cpu0 = process_cpu_seconds();
    let clock = Instant::now();
    run(&mut t, steps)?;
    let seconds = clock.elapsed().as_secs_f64();
    let examples = (steps * (workers * batch_size) as u64) as f64;
    let (tr, ti) = (t.traffic(), t.times());
    let (compute, params) = (ti.compute - times0.compute, ti.params - times0.params);
    t.finish()?;
    Ok(ShardedBenchResult {
        workers,
        shards,
        result: result(spec, (batch_size, threads, steps), seconds, cpu0, examples),
        cross_bytes: (tr.cross - traffic0.cross) as f64 / examples,
        to_shards_bytes: (tr.to_shards - traffic0.to_shards) as f64 / examples,
        from_shards_bytes: (tr.from_shards - traffic0.from_shards) as f64 / examples,
        compute_share: compute / (compute + params).max(f64::MIN_POSITIVE),
        params_share: params / (compute + params).max(f64::MIN_POSITIVE),
    })
}
