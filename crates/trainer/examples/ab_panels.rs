//! In-process A/B of the panelled backward pass: two trainers, one with it
//! off, one with it on, stepping alternately on the same batches, so that
//! a noisy machine slows both alike. Prints the median per-step ratio.
use std::time::Instant;

use vfl_data::synth::{Synth, SynthConfig};
use vfl_data::{Batch, BatchSource, SynthSource};
use vfl_nn::ModelSpec;
use vfl_trainer::local::LocalTrainer;

fn main() {
    let bs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let steps: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let spec = ModelSpec::preset("wide_n_deep").unwrap();
    let slots = spec.leader.slots().len();
    let generator = Synth::new(SynthConfig {
        slots,
        max_id: 100,
        ..Default::default()
    });
    let pool = 8usize;
    let mut ls = SynthSource::new(&generator, true, 0, (pool * bs) as u64);
    let mut fs = SynthSource::new(&generator, false, 0, (pool * bs) as u64);
    let mut pairs = Vec::new();
    for _ in 0..pool {
        let (mut lb, mut fb) = (Batch::new(slots, 0), Batch::new(slots, 0));
        ls.fill(&mut lb, bs).unwrap();
        fs.fill(&mut fb, bs).unwrap();
        pairs.push((lb, fb));
    }
    let mut a = LocalTrainer::new(&spec, 1).unwrap();
    let mut b = LocalTrainer::new(&spec, 1).unwrap();
    let arg = |i: usize, d: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (wa, wb) = (arg(3, 0), arg(4, 256));
    for (t, w) in [(&mut a, wa), (&mut b, wb)] {
        t.leader.model_mut().tower.set_backward_panel_cols(w);
        t.follower.model_mut().tower.set_backward_panel_cols(w);
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..steps + 5 {
        let (lb, fb) = &pairs[i % pool];
        let order: [bool; 2] = if i % 2 == 0 { [false, true] } else { [true, false] };
        for on in order {
            let t = Instant::now();
            if on {
                b.train_step(lb, fb).unwrap();
            } else {
                a.train_step(lb, fb).unwrap();
            }
            let s = t.elapsed().as_secs_f64();
            if i >= 5 {
                if on { tb.push(s) } else { ta.push(s) }
            }
        }
    }
    let mut ratios: Vec<f64> = ta.iter().zip(&tb).map(|(x, y)| x / y).collect();
    ratios.sort_by(f64::total_cmp);
    ta.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    let med = |v: &[f64]| v[v.len() / 2];
    println!(
        "B={bs}: panels {wa}: {:.0} ex/s, panels {wb}: {:.0} ex/s (medians); median speed ratio {:.3} (quartiles {:.3}..{:.3})",
        bs as f64 / med(&ta),
        bs as f64 / med(&tb),
        med(&ratios),
        ratios[ratios.len() / 4],
        ratios[3 * ratios.len() / 4]
    );
}
