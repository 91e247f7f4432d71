//! Finite-difference gradient checks for every layer type, the embedding
//! bags (all combiners, several ids per slot, empty slots), the losses and
//! the whole split model.

#![allow(clippy::needless_range_loop)] // index loops read best in finite differences

use vfl_nn::activation::Activation;
use vfl_nn::compute::Compute;
use vfl_nn::dense::{Dense, Update};
use vfl_nn::embedding::{Combiner, EmbeddingBags, OutOfRange, SlotConfig, SparseBatch};
use vfl_nn::init::InitSpec;
use vfl_nn::optim::{Optimizer, OptimizerSpec};
use vfl_nn::rng::Rng;
use vfl_nn::spec::ModelSpec;
use vfl_nn::split::{FollowerModel, LeaderModel, TowerInput};
use vfl_nn::tensor::Matrix;

const H: f32 = 1e-2;

fn close(analytic: f32, numeric: f32) -> bool {
    (analytic - numeric).abs() <= 2e-3 + 2e-2 * numeric.abs()
}

fn random_matrix(rng: &mut Rng, r: usize, c: usize) -> Matrix {
    Matrix::from_vec(r, c, (0..r * c).map(|_| rng.uniform(-1.0, 1.0)).collect()).unwrap()
}

/// Loss used to test a layer in isolation: sum(coef * output).
fn weighted_sum(out: &Matrix, coef: &Matrix) -> f32 {
    out.as_slice().iter().zip(coef.as_slice()).map(|(a, b)| a * b).sum()
}

fn sgd() -> Optimizer {
    Optimizer::new(OptimizerSpec::Sgd { learning_rate: 0.1 })
}

#[test]
fn dense_layer_gradients() {
    let cx = Compute::single();
    let mut rng = Rng::new(1);
    for act in [Activation::Identity, Activation::Relu, Activation::Sigmoid] {
        for bias in [true, false] {
            let init = InitSpec::Uniform { limit: 0.8 };
            let mut layer = Dense::new("l", 5, 4, act, bias, &init, 3, &sgd());
            if bias {
                for b in layer.bias_mut() {
                    *b = rng.uniform(-0.5, 0.5);
                }
            }
            let x = random_matrix(&mut rng, 3, 5);
            let coef = random_matrix(&mut rng, 3, 4);
            layer.forward(&cx, &x).unwrap();
            let mut dx = Matrix::default();
            layer.backward(&cx, &x, &coef, Some(&mut dx), Update::Collect).unwrap();
            let loss = |l: &mut Dense, x: &Matrix| weighted_sum(l.forward(&cx, x).unwrap(), &coef);
            // Weights.
            for i in 0..20 {
                let mut l2 = layer.clone();
                l2.weights_mut()[i] += H;
                let up = loss(&mut l2, &x);
                l2.weights_mut()[i] -= 2.0 * H;
                let down = loss(&mut l2, &x);
                let num = (up - down) / (2.0 * H);
                assert!(
                    close(layer.weight_grad()[i], num),
                    "{act:?} w[{i}]: {} vs {num}",
                    layer.weight_grad()[i]
                );
            }
            // Bias.
            for i in 0..layer.bias().len() {
                let mut l2 = layer.clone();
                l2.bias_mut()[i] += H;
                let up = loss(&mut l2, &x);
                l2.bias_mut()[i] -= 2.0 * H;
                let down = loss(&mut l2, &x);
                let num = (up - down) / (2.0 * H);
                assert!(close(layer.bias_grad()[i], num), "{act:?} b[{i}]");
            }
            // Input.
            for i in 0..15 {
                let mut xp = x.clone();
                xp.as_mut_slice()[i] += H;
                let up = loss(&mut layer.clone(), &xp);
                xp.as_mut_slice()[i] -= 2.0 * H;
                let down = loss(&mut layer.clone(), &xp);
                let num = (up - down) / (2.0 * H);
                assert!(
                    close(dx.as_slice()[i], num),
                    "{act:?} x[{i}]: {} vs {num}",
                    dx.as_slice()[i]
                );
            }
        }
    }
}

#[test]
fn fused_sgd_equals_collected_gradient_step() {
    let cx = Compute::single();
    let mut rng = Rng::new(2);
    let init = InitSpec::Uniform { limit: 0.5 };
    let opt = sgd();
    let mut fused = Dense::new("l", 6, 3, Activation::Relu, true, &init, 1, &opt);
    let mut plain = fused.clone();
    let x = random_matrix(&mut rng, 4, 6);
    let dy = random_matrix(&mut rng, 4, 3);
    fused.forward(&cx, &x).unwrap();
    fused.backward(&cx, &x, &dy, None, Update::Apply(&opt)).unwrap();
    plain.forward(&cx, &x).unwrap();
    plain.backward(&cx, &x, &dy, None, Update::Collect).unwrap();
    let g = plain.weight_grad().to_vec();
    for (i, w) in plain.weights().iter().enumerate() {
        let want = w - 0.1 * g[i];
        assert!((fused.weights()[i] - want).abs() < 1e-6);
    }
}

fn slots(combiner: Combiner) -> Vec<SlotConfig> {
    (0..3)
        .map(|i| SlotConfig {
            name: format!("s{i}"),
            vocab: 7,
            dim: 3 + i,
            combiner,
            out_of_range: OutOfRange::Error,
        })
        .collect()
}

#[test]
fn embedding_gradients_for_every_combiner() {
    // 3 examples x 3 slots; varied id counts including empty slots and a
    // repeated id within one bag and across examples.
    let ids: Vec<i64> = vec![
        1, 2, 2, /**/ 0, /**/ 6, 5, /**/ 1, /**/ 3, 3, 4, /**/ 2,
    ];
    //               ex0: s0=[1,2,2] s1=[0] s2=[6,5]; ex1: s0=[1] s1=[] s2=[3,3,4]; ex2: s0=[] s1=[2] s2=[]
    let offsets: Vec<u32> = vec![0, 3, 4, 6, 7, 7, 10, 10, 11, 11];
    let batch = SparseBatch {
        rows: 3,
        slots: 3,
        ids: &ids,
        offsets: &offsets,
    };
    for combiner in [Combiner::Mean, Combiner::Sum, Combiner::Sqrtn] {
        for threads in [1, 2] {
            let cx = Compute::new(threads).unwrap();
            let init = InitSpec::Uniform { limit: 1.0 };
            let mut emb = EmbeddingBags::new("e", &slots(combiner), &init, 4, &sgd());
            let cols = emb.out_cols();
            let mut rng = Rng::new(8);
            let coef = random_matrix(&mut rng, 3, cols);
            let mut out = Matrix::zeros(3, cols);
            emb.forward(&cx, &batch, &mut out, 0).unwrap();
            // Empty slots give zeros.
            assert!(out.row(1)[3..7].iter().all(|&v| v == 0.0));
            emb.backward(&cx, &batch, &coef, 0, Update::Collect).unwrap();
            let g = emb.collected_grad();
            for i in 0..emb.tables().len() {
                let mut e2 = emb.clone();
                let mut o = Matrix::zeros(3, cols);
                e2.tables_mut()[i] += H;
                e2.forward(&cx, &batch, &mut o, 0).unwrap();
                let up = weighted_sum(&o, &coef);
                e2.tables_mut()[i] -= 2.0 * H;
                e2.forward(&cx, &batch, &mut o, 0).unwrap();
                let down = weighted_sum(&o, &coef);
                let num = (up - down) / (2.0 * H);
                assert!(close(g[i], num), "{combiner:?} t={threads} elem {i}: {} vs {num}", g[i]);
            }
        }
    }
}

/// The error of a forward pass of the three test slots over `rows`
/// examples, with `threads` threads.
fn forward_error(threads: usize, rows: usize, ids: &[i64], offsets: &[u32]) -> String {
    let cx = Compute::new(threads).unwrap();
    let mut emb = EmbeddingBags::new("e", &slots(Combiner::Mean), &InitSpec::default(), 0, &sgd());
    let batch = SparseBatch {
        rows,
        slots: 3,
        ids,
        offsets,
    };
    let mut out = Matrix::zeros(rows, emb.out_cols());
    emb.forward(&cx, &batch, &mut out, 0).unwrap_err().to_string()
}

#[test]
fn embedding_rejects_out_of_range_ids_naming_slot_example_and_id() {
    let offsets = [0, 1, 2, 3, 4, 5, 6];
    let err = forward_error(1, 2, &[1, 2, 3, 4, 5, 99], &offsets);
    assert!(
        err.contains("slot s2") && err.contains("example 1") && err.contains("id 99"),
        "{err}"
    );
    let err = forward_error(1, 2, &[-1, 2, 3, 4, 5, 6], &offsets);
    assert!(
        err.contains("slot s0") && err.contains("example 0") && err.contains("id -1"),
        "{err}"
    );
}

#[test]
fn with_two_threads_the_earliest_out_of_range_id_is_reported() {
    // Two threads split the examples; both halves hold a bad id, and the
    // error must name the first one in example order, as with one thread.
    let ids = [1, 2, 70, 4, 5, 6, 1, 80, 3, 1, 2, 3];
    let offsets: Vec<u32> = (0..=12).collect();
    for threads in [1, 2, 4] {
        let err = forward_error(threads, 4, &ids, &offsets);
        assert!(
            err.contains("slot s2") && err.contains("example 0") && err.contains("id 70"),
            "threads={threads}: {err}"
        );
    }
}

#[test]
fn decreasing_offsets_are_refused_naming_example_and_slot() {
    // Example 1, slot 1 ends (4) before it starts (5).
    let (ids, offsets) = ([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 5, 4, 6]);
    let err = forward_error(1, 2, &ids, &offsets);
    assert!(
        err.contains("non-decreasing") && err.contains("example 1, slot 1"),
        "{err}"
    );
    let mut emb = EmbeddingBags::new("e", &slots(Combiner::Mean), &InitSpec::default(), 0, &sgd());
    let batch = SparseBatch {
        rows: 2,
        slots: 3,
        ids: &ids,
        offsets: &offsets,
    };
    let grad = Matrix::zeros(2, emb.out_cols());
    let err = emb
        .backward(&Compute::single(), &batch, &grad, 0, Update::Collect)
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-decreasing"), "{err}");
}

#[test]
fn offsets_not_starting_at_zero_are_refused() {
    let err = forward_error(1, 1, &[1, 2, 3], &[1, 1, 2, 3]);
    assert!(err.contains("from 0"), "{err}");
}

#[test]
fn hashed_slots_accept_any_id_deterministically() {
    let cx = Compute::single();
    let mut cfg = slots(Combiner::Sum);
    cfg.iter_mut().for_each(|s| s.out_of_range = OutOfRange::Hash);
    let mut emb = EmbeddingBags::new("e", &cfg, &InitSpec::Uniform { limit: 1.0 }, 0, &sgd());
    let ids = vec![1_000_000_007, -5, 3];
    let offsets = vec![0, 1, 2, 3];
    let batch = SparseBatch {
        rows: 1,
        slots: 3,
        ids: &ids,
        offsets: &offsets,
    };
    let mut a = Matrix::zeros(1, emb.out_cols());
    let mut b = Matrix::zeros(1, emb.out_cols());
    emb.forward(&cx, &batch, &mut a, 0).unwrap();
    emb.forward(&cx, &batch, &mut b, 0).unwrap();
    assert!(a.bitwise_eq(&b));
    assert!(a.row(0)[..3].iter().any(|&v| v != 0.0));
    // In-range ids are not hashed.
    assert_eq!(&a.row(0)[7..], &emb.table(2)[3 * 5..4 * 5]);
}

#[test]
fn sparse_updates_touch_only_rows_in_the_batch() {
    let cx = Compute::new(2).unwrap();
    for spec in [
        OptimizerSpec::Sgd { learning_rate: 0.5 },
        OptimizerSpec::Adagrad {
            learning_rate: 0.5,
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        },
        OptimizerSpec::Adam {
            learning_rate: 0.5,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        },
    ] {
        let mut opt = Optimizer::new(spec.clone());
        let mut emb = EmbeddingBags::new("e", &slots(Combiner::Mean), &InitSpec::Uniform { limit: 1.0 }, 0, &opt);
        let before = emb.tables().to_vec();
        let ids = vec![1, 4, 6];
        let offsets = vec![0, 1, 2, 3];
        let batch = SparseBatch {
            rows: 1,
            slots: 3,
            ids: &ids,
            offsets: &offsets,
        };
        let mut out = Matrix::zeros(1, emb.out_cols());
        emb.forward(&cx, &batch, &mut out, 0).unwrap();
        let grad = Matrix::from_vec(1, emb.out_cols(), vec![1.0; emb.out_cols()]).unwrap();
        opt.begin_step();
        emb.backward(&cx, &batch, &grad, 0, Update::Apply(&opt)).unwrap();
        let after = emb.tables();
        // Slot tables: s0 rows of 3 from 0, s1 rows of 4 from 21, s2 rows of 5 from 49.
        let touched = [(0, 1, 3), (21, 4, 4), (49, 6, 5)];
        for i in 0..after.len() {
            let hit = touched
                .iter()
                .any(|&(off, row, dim)| i >= off + row * dim && i < off + (row + 1) * dim);
            assert_eq!(after[i] != before[i], hit, "{spec:?} elem {i}");
        }
    }
}

const SPEC: &str = r#"
name = "gradcheck"
seed = 5
init = { kind = "uniform", limit = 0.7 }
optimizer = { kind = "sgd", learning_rate = 0.1 }

[leader]
sparse = [{ prefix = "a", count = 2, vocab = 5, dim = 3, combiner = "mean" }]
dense = [{ name = "d0" }, { name = "d1" }]
layers = [{ units = 4, activation = "sigmoid" }, { units = 3 }]

[follower]
sparse = [{ name = "b", vocab = 6, dim = 2, combiner = "sum" }]
dense = [{ prefix = "f", count = 3 }]
layers = [{ units = 3, activation = "sigmoid" }]

[head]
layers = [{ units = 4, activation = "sigmoid" }, { units = 2, bias = false }]
loss = "softmax_cross_entropy"
input_dim = 6
"#;

struct Data {
    l_ids: Vec<i64>,
    l_off: Vec<u32>,
    l_dense: Vec<f32>,
    f_ids: Vec<i64>,
    f_off: Vec<u32>,
    f_dense: Vec<f32>,
    labels: Vec<f32>,
    weights: Vec<f32>,
}

impl Data {
    fn leader(&self) -> TowerInput<'_> {
        TowerInput {
            rows: 4,
            sparse: Some(SparseBatch {
                rows: 4,
                slots: 2,
                ids: &self.l_ids,
                offsets: &self.l_off,
            }),
            dense: Some(&self.l_dense),
        }
    }
    fn follower(&self) -> TowerInput<'_> {
        TowerInput {
            rows: 4,
            sparse: Some(SparseBatch {
                rows: 4,
                slots: 1,
                ids: &self.f_ids,
                offsets: &self.f_off,
            }),
            dense: Some(&self.f_dense),
        }
    }
}

fn data() -> Data {
    let mut rng = Rng::new(77);
    Data {
        l_ids: vec![0, 1, 2, 3, 4, 4, 1, 0, 2],
        l_off: vec![0, 1, 2, 4, 5, 6, 6, 8, 9],
        l_dense: (0..8).map(|_| rng.uniform(-1.0, 1.0)).collect(),
        f_ids: vec![5, 0, 1, 2, 2],
        f_off: vec![0, 1, 3, 3, 5],
        f_dense: (0..12).map(|_| rng.uniform(-1.0, 1.0)).collect(),
        labels: vec![0.0, 1.0, 1.0, 0.0],
        weights: vec![1.0, 1.0, 0.0, 1.0],
    }
}

fn full_loss(cx: &Compute, l: &mut LeaderModel, f: &mut FollowerModel, d: &Data) -> f32 {
    let act = f.forward(cx, &d.follower()).unwrap().clone();
    l.eval_step(cx, &d.leader(), &act, &d.labels, Some(&d.weights))
        .unwrap()
        .loss
}

/// Gradients of the Collect pass, in the order of `tensors_mut`.
fn leader_grads(l: &LeaderModel) -> Vec<Vec<f32>> {
    let mut g = vec![l.tower.embeddings().unwrap().collected_grad()];
    for layer in l.tower.layers().iter().chain(l.head.layers()) {
        g.push(layer.weight_grad().to_vec());
        if layer.has_bias() {
            g.push(layer.bias_grad().to_vec());
        }
    }
    g
}

fn follower_grads(f: &FollowerModel) -> Vec<Vec<f32>> {
    let mut g = vec![f.tower.embeddings().unwrap().collected_grad()];
    for layer in f.tower.layers() {
        g.push(layer.weight_grad().to_vec());
        if layer.has_bias() {
            g.push(layer.bias_grad().to_vec());
        }
    }
    g
}

#[test]
fn whole_split_model_gradients() {
    let spec = ModelSpec::from_toml_str(SPEC, "test").unwrap();
    let cx = Compute::single();
    let d = data();
    let mut leader = LeaderModel::new(&spec);
    let mut follower = FollowerModel::new(&spec);
    // Analytic gradients through the split interface, without updates.
    let act = follower.forward(&cx, &d.follower()).unwrap().clone();
    leader.tower.forward(&cx, &d.leader()).unwrap();
    let own = leader.tower.output().clone();
    leader
        .head
        .step(&cx, &own, &act, &d.labels, Some(&d.weights), Some(Update::Collect))
        .unwrap();
    let g_own = leader.head.grad_own().clone();
    let g_peer = leader.head.grad_peer().clone();
    leader
        .tower
        .backward(&cx, &d.leader(), &g_own, Update::Collect)
        .unwrap();
    follower
        .tower
        .backward(&cx, &d.follower(), &g_peer, Update::Collect)
        .unwrap();
    let lg = leader_grads(&leader);
    let fg = follower_grads(&follower);

    let mut checked = 0;
    for (party, grads) in [("leader", &lg), ("follower", &fg)] {
        let n_tensors = grads.len();
        for t in 0..n_tensors {
            let len = grads[t].len();
            for i in 0..len {
                let eval = |delta: f32| {
                    let mut l2 = LeaderModel::new(&spec);
                    let mut f2 = FollowerModel::new(&spec);
                    {
                        let mut ts = if party == "leader" {
                            l2.tensors_mut()
                        } else {
                            f2.tensors_mut()
                        };
                        ts[t].data[i] += delta;
                    }
                    full_loss(&cx, &mut l2, &mut f2, &d)
                };
                let num = (eval(H) - eval(-H)) / (2.0 * H);
                assert!(
                    close(grads[t][i], num),
                    "{party} tensor {t} elem {i}: {} vs {num}",
                    grads[t][i]
                );
                checked += 1;
            }
        }
    }
    // Every parameter entry of both parties (117 leader + 30 follower).
    assert_eq!(checked, 147);
}
