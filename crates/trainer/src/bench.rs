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
    let pool = 8usize;
    let mut pairs = Vec::with_capacity(pool);
    let mut ls = SynthSource::new(&generator, true, 0, (pool * batch_size) as u64);
    let mut fs = SynthSource::new(&generator, false, 0, (pool * batch_size) as u64);
    for _ in 0..pool {
        let mut lb = Batch::new(slots, 0);
        let mut fb = Batch::new(slots, 0);
        ls.fill(&mut lb, batch_size)?;
        fs.fill(&mut fb, batch_size)?;
        pairs.push((lb, fb));
    }
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
    let cpu_seconds = cpu0.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    let examples = (steps as usize * batch_size) as f64;
    Ok(BenchResult {
        model: spec.name.clone(),
        batch_size,
        threads,
        steps,
        seconds,
        examples_per_sec: examples / seconds,
        cpu_seconds,
        examples_per_cpu_sec: cpu_seconds.filter(|&c| c > 0.0).map(|c| examples / c),
    })
}
