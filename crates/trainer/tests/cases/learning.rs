//! The in-process loop learns the planted signal: after two epochs the
//! federated model beats the best possible leader-only model (the hidden
//! model's own leader part, an oracle) on held-out rows.

use vfl_data::SynthSource;
use vfl_data::synth::{Synth, SynthConfig, SynthRow};
use vfl_nn::BinaryMetrics;
use vfl_trainer::LocalTrainer;

// The smallest model that shows it: wide_n_deep_adam's shape with 32 slots
// per party (8 of them informative, as in the default data), narrower layers.
use super::sharded::{SLOTS, small_wide_n_deep};

#[test]
fn wide_n_deep_learns_planted_labels_beyond_leader_only_oracle() {
    let spec = small_wide_n_deep();
    let generator = Synth::new(SynthConfig {
        seed: 1,
        slots: SLOTS,
        ..Default::default()
    });
    let mut t = LocalTrainer::new(&spec, 2).unwrap();
    let n = 20_000;
    let mut losses = Vec::new();
    for _ in 0..2 {
        let mut l = SynthSource::new(&generator, true, 0, n);
        let mut f = SynthSource::new(&generator, false, 0, n);
        let r = t.run_pass(&mut l, &mut f, 32, true, |_| {}).unwrap();
        assert_eq!(r.examples, n);
        losses.push(r.mean_loss);
    }
    let (a, b) = (1_000_000, 1_002_000);
    let mut l = SynthSource::new(&generator, true, a, b);
    let mut f = SynthSource::new(&generator, false, a, b);
    let r = t.run_pass(&mut l, &mut f, 256, false, |_| {}).unwrap();
    assert_eq!(r.examples, 2000);
    let mut oracle = BinaryMetrics::new();
    let mut row = SynthRow::default();
    for i in a..b {
        generator.row(i, &mut row);
        let p = 1.0 / (1.0 + (-generator.party_logit(&row, true)).exp());
        oracle.update(&[p], &[row.y as f32], None);
    }
    let auc = r.metrics.auc.unwrap();
    let leader_only = oracle.values().auc.unwrap();
    assert!(
        auc > leader_only + 0.02,
        "federated {auc} vs leader-only oracle {leader_only}"
    );
    assert!(losses[1] < losses[0], "training loss did not fall: {losses:?}");
}
