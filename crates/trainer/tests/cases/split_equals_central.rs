//! Split equals centralized, and determinism.
//!
//! The "centralized" model below is the same network written as one model
//! from the numeric primitives (embedding bags and dense layers), with one
//! optimizer and no split machinery: no towers, no head object, no wire
//! messages, no digests. Its parameters are created under the same names as
//! the split model's, so both start from identical weights.
//!
//! The split run must end with bitwise identical weights: both runs perform
//! the same floating-point operations in the same order (the exchange only
//! copies f32 values exactly, through little-endian bytes), and the matrix
//! kernel splits work identically for a fixed thread count. Any routing
//! mistake (a gradient sent to the wrong side, a wrong split point of the
//! head's input, a missed or doubled optimizer step) breaks the equality.

use vfl_data::SynthSource;
use vfl_data::synth::{Synth, SynthConfig};
use vfl_data::{Batch, BatchSource};
use vfl_nn::compute::Compute;
use vfl_nn::dense::{Dense, Update};
use vfl_nn::embedding::{EmbeddingBags, SparseBatch};
use vfl_nn::loss::loss_and_grad;
use vfl_nn::optim::Optimizer;
use vfl_nn::{Matrix, ModelSpec};
use vfl_trainer::LocalTrainer;

const SPEC: &str = r#"
name = "split-vs-central"
seed = 21
init = { kind = "uniform", limit = 0.2 }
optimizer = { kind = "adam", learning_rate = 0.01 }

[leader]
sparse = [{ prefix = "x_", count = 6, vocab = 101, dim = 8 }]
layers = [{ units = 32, activation = "relu" }, { units = 8 }]

[follower]
sparse = [{ prefix = "x_", count = 6, vocab = 101, dim = 8 }]
layers = [{ units = 8, activation = "relu" }]

[head]
layers = [{ units = 2, bias = false }]
loss = "softmax_cross_entropy"
"#;

struct Central {
    opt: Optimizer,
    emb_l: EmbeddingBags,
    l0: Dense,
    l1: Dense,
    emb_f: EmbeddingBags,
    f0: Dense,
    head: Dense,
}

fn sparse(b: &Batch) -> SparseBatch<'_> {
    SparseBatch {
        rows: b.rows,
        slots: b.slots,
        ids: &b.ids,
        offsets: &b.offsets,
    }
}

impl Central {
    fn new(spec: &ModelSpec) -> Self {
        let opt = Optimizer::new(spec.optimizer.clone());
        let (init, seed) = (&spec.init, spec.seed);
        let dense = |name: &str, i, o, l: &vfl_nn::spec::LayerSpec| {
            Dense::new(name, i, o, l.activation, l.bias, init, seed, &opt)
        };
        Central {
            emb_l: EmbeddingBags::new("leader/emb", &spec.leader.slots(), init, seed, &opt),
            l0: dense("leader/dense_0", 48, 32, &spec.leader.layers[0]),
            l1: dense("leader/dense_1", 32, 8, &spec.leader.layers[1]),
            emb_f: EmbeddingBags::new("follower/emb", &spec.follower.slots(), init, seed, &opt),
            f0: dense("follower/dense_0", 48, 8, &spec.follower.layers[0]),
            head: dense("head/dense_0", 16, 2, &spec.head.layers[0]),
            opt,
        }
    }

    fn step(&mut self, cx: &Compute, lb: &Batch, fb: &Batch) {
        let mut xf = Matrix::zeros(fb.rows, 48);
        self.emb_f.forward(cx, &sparse(fb), &mut xf, 0).unwrap();
        let act = self.f0.forward(cx, &xf).unwrap().clone();
        self.opt.begin_step();
        let mut xl = Matrix::zeros(lb.rows, 48);
        self.emb_l.forward(cx, &sparse(lb), &mut xl, 0).unwrap();
        self.l0.forward(cx, &xl).unwrap();
        let h0 = self.l0.output().clone();
        self.l1.forward(cx, &h0).unwrap();
        let mut cat = Matrix::default();
        Matrix::concat_cols_into(self.l1.output(), &act, &mut cat).unwrap();
        self.head.forward(cx, &cat).unwrap();
        let (mut dlogits, mut scores) = (Matrix::default(), Vec::new());
        let w = (!lb.weights.is_empty()).then_some(&lb.weights[..]);
        loss_and_grad(
            vfl_nn::loss::LossKind::SoftmaxCrossEntropy,
            self.head.output(),
            &lb.labels,
            w,
            &mut dlogits,
            &mut scores,
        )
        .unwrap();
        let up = Update::Apply(&self.opt);
        let mut dcat = Matrix::default();
        self.head.backward(cx, &cat, &dlogits, Some(&mut dcat), up).unwrap();
        let (mut d_own, mut d_act) = (Matrix::default(), Matrix::default());
        dcat.split_cols_into(8, &mut d_own, &mut d_act).unwrap();
        let mut dh0 = Matrix::default();
        self.l1.backward(cx, &h0, &d_own, Some(&mut dh0), up).unwrap();
        let mut dxl = Matrix::default();
        self.l0.backward(cx, &xl, &dh0, Some(&mut dxl), up).unwrap();
        self.emb_l.backward(cx, &sparse(lb), &dxl, 0, up).unwrap();
        // The follower side, with the same step count as the leader's.
        let mut dxf = Matrix::default();
        self.f0.backward(cx, &xf, &d_act, Some(&mut dxf), up).unwrap();
        self.emb_f.backward(cx, &sparse(fb), &dxf, 0, up).unwrap();
    }

    /// All weights in the order of the split model's `tensors_mut`
    /// (optimizer states included).
    fn weights(&mut self) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        let emb = |e: &mut EmbeddingBags, out: &mut Vec<Vec<f32>>| {
            let (t, a, b) = e.parts_mut();
            out.extend([t.to_vec(), a.to_vec(), b.to_vec()]);
        };
        let dense = |d: &mut Dense, out: &mut Vec<Vec<f32>>| {
            let has_bias = d.has_bias();
            let (w, b, sw, sb) = d.parts_mut();
            out.push(w.clone());
            if has_bias {
                out.push(b.clone());
            }
            out.extend([sw.a.clone(), sw.b.clone()]);
            if has_bias {
                out.extend([sb.a.clone(), sb.b.clone()]);
            }
        };
        emb(&mut self.emb_l, &mut out);
        dense(&mut self.l0, &mut out);
        dense(&mut self.l1, &mut out);
        dense(&mut self.head, &mut out);
        emb(&mut self.emb_f, &mut out);
        dense(&mut self.f0, &mut out);
        out
    }
}

fn batches(n_batches: usize, batch: usize) -> Vec<(Batch, Batch)> {
    let generator = Synth::new(SynthConfig {
        slots: 6,
        informative: 3,
        seed: 9,
        ..Default::default()
    });
    let total = (n_batches * batch) as u64;
    let mut l = SynthSource::new(&generator, true, 0, total);
    let mut f = SynthSource::new(&generator, false, 0, total);
    (0..n_batches)
        .map(|_| {
            let (mut lb, mut fb) = (Batch::new(6, 0), Batch::new(6, 0));
            l.fill(&mut lb, batch).unwrap();
            f.fill(&mut fb, batch).unwrap();
            (lb, fb)
        })
        .collect()
}

fn split_weights(t: &mut LocalTrainer) -> Vec<Vec<f32>> {
    let order = |v: Vec<vfl_nn::split::TensorMut<'_>>| v.into_iter().map(|t| t.data.to_vec()).collect::<Vec<_>>();
    let mut out = order(t.leader.model_mut().tensors_mut());
    out.extend(order(t.follower.model_mut().tensors_mut()));
    out
}

fn bitwise_equal(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()))
}

#[test]
fn split_training_equals_centralized_training_bitwise() {
    let spec = ModelSpec::from_toml_str(SPEC, "test").unwrap();
    let data = batches(30, 64);
    for threads in [1, 2] {
        let cx = Compute::new(threads).unwrap();
        let mut central = Central::new(&spec);
        let mut split = LocalTrainer::new(&spec, threads).unwrap();
        // Identical starting points (same names, same seeds).
        let start_c = central.weights();
        let start_s: Vec<Vec<f32>> = split_weights(&mut split).into_iter().collect();
        let strip = |v: Vec<Vec<f32>>| v.into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>();
        assert!(
            bitwise_equal(&strip(start_c), &strip(start_s)),
            "different initial weights"
        );
        for (lb, fb) in &data {
            central.step(&cx, lb, fb);
            split.train_step(lb, fb).unwrap();
        }
        let c = strip(central.weights());
        let s = strip(split_weights(&mut split));
        assert!(
            bitwise_equal(&c, &s),
            "threads={threads}: split and centralized weights differ"
        );
        // And training did move the weights.
        assert!(!bitwise_equal(&c, &strip(Central::new(&spec).weights())));
    }
}

#[test]
fn training_is_deterministic_for_a_thread_count() {
    let spec = ModelSpec::from_toml_str(SPEC, "test").unwrap();
    let data = batches(20, 32);
    for threads in [1, 2] {
        let run = || {
            let mut t = LocalTrainer::new(&spec, threads).unwrap();
            for (lb, fb) in &data {
                t.train_step(lb, fb).unwrap();
            }
            split_weights(&mut t)
        };
        assert!(bitwise_equal(&run(), &run()), "threads={threads}");
    }
    // A different seed gives different weights (the check can fail).
    let mut other = spec.clone();
    other.seed += 1;
    let mut a = LocalTrainer::new(&spec, 1).unwrap();
    let mut b = LocalTrainer::new(&other, 1).unwrap();
    assert!(!bitwise_equal(&split_weights(&mut a), &split_weights(&mut b)));
}

#[test]
fn wide_n_deep_is_deterministic_with_two_threads() {
    let spec = ModelSpec::preset("wide_n_deep").unwrap();
    let generator = Synth::new(SynthConfig::default());
    let run = || {
        let mut t = LocalTrainer::new(&spec, 2).unwrap();
        let mut l = SynthSource::new(&generator, true, 0, 640);
        let mut f = SynthSource::new(&generator, false, 0, 640);
        t.run_pass(&mut l, &mut f, 64, true, |_| {}).unwrap();
        split_weights(&mut t)
    };
    assert!(bitwise_equal(&run(), &run()));
}
