//! Synthetic data in the layout of the original wide_n_deep example: per
//! party `slots` sparse features `x_0 ..`, each holding one id in
//! `[0, max_id]`; the leader also has a label `y` and a `loss_mask`.
//!
//! Labels are either random (as the original make_data.py: nothing to
//! learn) or *planted*: `y` is drawn from a hidden model in which a few
//! slots of BOTH parties matter equally, so that a federated model can beat
//! a model of either party alone. Every row is a pure function of
//! `(seed, row index)`, so the two parties' files can be generated
//! separately and still agree.

/// How labels are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelMode {
    /// Independent coin flips for `y` and `loss_mask` (the original).
    Random,
    /// `y ~ Bernoulli(sigmoid(sharpness * z))` with `z` the standardised sum
    /// of hidden per-id effects of the informative slots of both parties;
    /// `loss_mask` is 0 (every row counts).
    Planted,
}

/// Generator settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    pub slots: usize,
    pub max_id: i64,
    pub labels: LabelMode,
    pub seed: u64,
    /// Informative slots per party (the first ones).
    pub informative: usize,
    pub sharpness: f32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            slots: 512,
            max_id: 100,
            labels: LabelMode::Planted,
            seed: 0,
            informative: 8,
            sharpness: 3.0,
        }
    }
}

/// One generated row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SynthRow {
    pub index: u64,
    pub leader: Vec<i64>,
    pub follower: Vec<i64>,
    pub y: i64,
    pub loss_mask: i64,
    /// The hidden model's logit (planted mode), for tests and diagnostics.
    pub hidden_logit: f32,
}

/// The generator, holding the hidden model.
#[derive(Clone, Debug)]
pub struct Synth {
    cfg: SynthConfig,
    /// Per party: `informative x (max_id + 1)` effects.
    effects: [Vec<f32>; 2],
}

use vfl_mix::splitmix64 as mix;

pub(crate) fn unit(state: &mut u64) -> f64 {
    (mix(state) >> 11) as f64 / (1u64 << 53) as f64
}

fn normal(state: &mut u64) -> f32 {
    let u1 = 1.0 - unit(state);
    let u2 = unit(state);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl Synth {
    pub fn new(cfg: SynthConfig) -> Self {
        let width = (cfg.max_id + 1) as usize;
        let informative = cfg.informative.min(cfg.slots);
        let mut st = cfg.seed ^ 0x5EED_0FEF_FEC7;
        let mut table = || (0..informative * width).map(|_| normal(&mut st)).collect::<Vec<f32>>();
        let effects = [table(), table()];
        Synth {
            cfg: SynthConfig { informative, ..cfg },
            effects,
        }
    }

    pub fn config(&self) -> &SynthConfig {
        &self.cfg
    }

    /// Generates row `index` into `out` (reusing its buffers).
    pub fn row(&self, index: u64, out: &mut SynthRow) {
        let mut st = self.cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let range = (self.cfg.max_id + 1) as u64;
        out.index = index;
        for ids in [&mut out.leader, &mut out.follower] {
            ids.clear();
            ids.extend((0..self.cfg.slots).map(|_| (mix(&mut st) % range) as i64));
        }
        match self.cfg.labels {
            LabelMode::Random => {
                out.y = (mix(&mut st) & 1) as i64;
                out.loss_mask = (mix(&mut st) & 1) as i64;
                out.hidden_logit = 0.0;
            }
            LabelMode::Planted => {
                let width = range as usize;
                let mut z = 0.0f32;
                for (p, ids) in [&out.leader, &out.follower].into_iter().enumerate() {
                    for (s, &id) in ids.iter().take(self.cfg.informative).enumerate() {
                        z += self.effects[p][s * width + id as usize];
                    }
                }
                let z = z / ((2 * self.cfg.informative).max(1) as f32).sqrt();
                let logit = self.cfg.sharpness * z;
                let p = 1.0 / (1.0 + (-f64::from(logit)).exp());
                out.y = i64::from(unit(&mut st) < p);
                out.loss_mask = 0;
                out.hidden_logit = logit;
            }
        }
    }

    /// The part of the hidden logit that one party's features determine
    /// (planted mode): the best any single-party model can know.
    pub fn party_logit(&self, row: &SynthRow, leader: bool) -> f32 {
        let width = (self.cfg.max_id + 1) as usize;
        let (p, ids) = if leader { (0, &row.leader) } else { (1, &row.follower) };
        let z: f32 = (0..self.cfg.informative)
            .map(|s| self.effects[p][s * width + ids[s] as usize])
            .sum();
        self.cfg.sharpness * z / ((2 * self.cfg.informative).max(1) as f32).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_pure_functions_of_seed_and_index() {
        let g = Synth::new(SynthConfig {
            slots: 16,
            ..Default::default()
        });
        let (mut a, mut b) = (SynthRow::default(), SynthRow::default());
        g.row(5, &mut a);
        Synth::new(SynthConfig {
            slots: 16,
            ..Default::default()
        })
        .row(5, &mut b);
        assert_eq!(a, b);
        g.row(6, &mut b);
        assert_ne!(a.leader, b.leader);
        assert!(a.leader.iter().chain(&a.follower).all(|&v| (0..=100).contains(&v)));
    }

    #[test]
    fn planted_labels_follow_the_hidden_model() {
        let g = Synth::new(SynthConfig {
            slots: 16,
            ..Default::default()
        });
        let mut r = SynthRow::default();
        let (mut agree, n) = (0, 4000);
        let mut pos = 0;
        for i in 0..n {
            g.row(i, &mut r);
            pos += r.y;
            if (r.hidden_logit > 0.0) == (r.y == 1) {
                agree += 1;
            }
        }
        // Balanced classes, and labels mostly agree with the hidden logit.
        assert!((1600..2400).contains(&pos), "{pos}");
        assert!(agree > 3000, "{agree}");
    }

    #[test]
    fn random_labels_are_coin_flips() {
        let g = Synth::new(SynthConfig {
            slots: 4,
            labels: LabelMode::Random,
            ..Default::default()
        });
        let mut r = SynthRow::default();
        let (mut y, mut m) = (0, 0);
        for i in 0..2000 {
            g.row(i, &mut r);
            y += r.y;
            m += r.loss_mask;
        }
        assert!((800..1200).contains(&y) && (800..1200).contains(&m), "{y} {m}");
    }
}
