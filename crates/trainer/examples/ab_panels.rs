//! In-process A/B benchmark of the tower's panelled backward pass.
//!
//! Two trainers of `wide_n_deep`, one handing the first layer's input
//! gradient to the embeddings in panels of `A` columns, the other in panels
//! of `B` columns (0: as one matrix), take turns step by step on the same
//! batches, so that a shared, noisy machine slows both alike; the median of
//! the per-step speed ratios is far steadier than comparing two runs.
//!
//! ```text
//! cargo run --release -p vfl-trainer --example ab_panels -- [batch] [steps] [A] [B] [threads]
//! ```
//! Defaults: 256 100 0 256 1. `A` = `B` gives an A/A check of the method.
use std::time::Instant;

use vfl_data::synth::{Synth, SynthConfig};
use vfl_data::{Batch, BatchSource, SynthSource};
use vfl_nn::ModelSpec;
use vfl_trainer::local::LocalTrainer;

fn arg(i: usize, default: usize) -> usize {
    std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (bs, steps, wa, wb, threads) = (
        arg(1, 256).max(1),
        arg(2, 100).max(1),
        arg(3, 0),
        arg(4, 256),
        arg(5, 1),
    );
    let spec = ModelSpec::preset("wide_n_deep").ok_or("no wide_n_deep preset")?;
    let slots = spec.leader.slots().len();
    let generator = Synth::new(SynthConfig {
        slots,
        max_id: 100,
        ..Default::default()
    });
    let pool = 8;
    let mut ls = SynthSource::new(&generator, true, 0, (pool * bs) as u64);
    let mut fs = SynthSource::new(&generator, false, 0, (pool * bs) as u64);
    let mut pairs = Vec::new();
    for _ in 0..pool {
        let (mut lb, mut fb) = (Batch::new(slots, 0), Batch::new(slots, 0));
        ls.fill(&mut lb, bs)?;
        fs.fill(&mut fb, bs)?;
        pairs.push((lb, fb));
    }
    let mut trainers = [LocalTrainer::new(&spec, threads)?, LocalTrainer::new(&spec, threads)?];
    for (t, w) in trainers.iter_mut().zip([wa, wb]) {
        t.leader.model_mut().tower.set_backward_panel_cols(w);
        t.follower.model_mut().tower.set_backward_panel_cols(w);
    }
    let warmup = 5;
    let mut secs = [Vec::new(), Vec::new()];
    for i in 0..steps + warmup {
        let (lb, fb) = &pairs[i % pool];
        // Alternate which one goes first.
        for k in [i % 2, 1 - i % 2] {
            let t = Instant::now();
            trainers[k].train_step(lb, fb)?;
            if i >= warmup {
                secs[k].push(t.elapsed().as_secs_f64());
            }
        }
    }
    let mut ratios: Vec<f64> = secs[0].iter().zip(&secs[1]).map(|(a, b)| a / b).collect();
    let r = median(&mut ratios);
    let (q1, q3) = (ratios[ratios.len() / 4], ratios[3 * ratios.len() / 4]);
    let [mut sa, mut sb] = secs;
    println!(
        "batch {bs}, {threads} thread(s), {steps} steps each: panels {wa}: {:.0} ex/s, panels {wb}: {:.0} ex/s \
         (medians); speed of {wb} over {wa}: median {r:.3}, quartiles {q1:.3}..{q3:.3}",
        bs as f64 / median(&mut sa),
        bs as f64 / median(&mut sb),
    );
    Ok(())
}
