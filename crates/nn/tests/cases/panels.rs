//! The tower's panelled backward pass (the first layer hands its input
//! gradient to the embeddings a block of columns at a time) must give
//! the same model as handing it over as one matrix, for any panel width,
//! optimizer and thread count: each gradient element is the same sum, only
//! computed in pieces (bitwise when the pieces are whole kernel registers).

use vfl_nn::compute::Compute;
use vfl_nn::rng::Rng;
use vfl_nn::spec::ModelSpec;
use vfl_nn::split::{FollowerModel, TowerInput};
use vfl_nn::{Matrix, SparseBatch};

fn spec(optimizer: &str) -> ModelSpec {
    let text = format!(
        r#"
name = "panels"
seed = 9
init = {{ kind = "uniform", limit = 0.3 }}
optimizer = {optimizer}

[leader]
sparse = [{{ prefix = "a", count = 2, vocab = 5, dim = 4 }}]
layers = [{{ units = 4 }}]

[follower]
sparse = [{{ prefix = "x", count = 40, vocab = 13, dim = 8 }}]
dense = [{{ prefix = "d", count = 3 }}]
layers = [{{ units = 16, activation = "relu" }}, {{ units = 4 }}]

[head]
layers = [{{ units = 2, bias = false }}]
loss = "softmax_cross_entropy"
"#
    );
    ModelSpec::from_toml_str(&text, "test").unwrap()
}

struct Batch {
    ids: Vec<i64>,
    offsets: Vec<u32>,
    dense: Vec<f32>,
}

/// `rows` examples of 40 slots with 0..=3 ids each (repeats included).
fn batch(rng: &mut Rng, rows: usize) -> Batch {
    let (mut ids, mut offsets) = (Vec::new(), vec![0u32]);
    for _ in 0..rows * 40 {
        let n = (rng.uniform(0.0, 4.0) as usize).min(3);
        for _ in 0..n {
            ids.push((rng.uniform(0.0, 13.0) as i64).min(12));
        }
        offsets.push(ids.len() as u32);
    }
    let dense = (0..rows * 3).map(|_| rng.uniform(-1.0, 1.0)).collect();
    Batch { ids, offsets, dense }
}

/// All tensors of the follower after `steps` training steps with panels of
/// `width` columns (0: one matrix).
fn train(optimizer: &str, threads: usize, width: usize, steps: usize) -> Vec<Vec<f32>> {
    let cx = Compute::new(threads).unwrap();
    let mut model = FollowerModel::new(&spec(optimizer));
    model.tower.set_backward_panel_cols(width);
    let mut rng = Rng::new(4);
    let rows = 7;
    for _ in 0..steps {
        let b = batch(&mut rng, rows);
        let inp = TowerInput {
            rows,
            sparse: Some(SparseBatch {
                rows,
                slots: 40,
                ids: &b.ids,
                offsets: &b.offsets,
            }),
            dense: Some(&b.dense),
        };
        model.forward(&cx, &inp).unwrap();
        let grad = Matrix::from_vec(rows, 4, (0..rows * 4).map(|_| rng.uniform(-1.0, 1.0)).collect()).unwrap();
        model.backward(&cx, &inp, &grad).unwrap();
    }
    model.tensors_mut().into_iter().map(|t| t.data.to_vec()).collect()
}

fn bitwise(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()))
}

#[test]
fn panelled_backward_equals_one_matrix_bitwise() {
    for optimizer in [
        r#"{ kind = "sgd", learning_rate = 0.1 }"#,
        r#"{ kind = "adam", learning_rate = 0.01 }"#,
        r#"{ kind = "adagrad", learning_rate = 0.1 }"#,
    ] {
        for threads in [1, 2] {
            let whole = train(optimizer, threads, 0, 4);
            // The model did learn something: it is not its initial state.
            assert!(!bitwise(&whole, &train(optimizer, threads, 0, 0)), "{optimizer}");
            // 256: two panels (256 + 64 columns) and the dense one; 64: five
            // slot panels. Column blocks that are multiples of the kernel's
            // 16-float registers give bitwise the same sums.
            for width in [256, 64] {
                let panelled = train(optimizer, threads, width, 4);
                assert!(
                    bitwise(&whole, &panelled),
                    "{optimizer} threads={threads} width={width}"
                );
            }
            // 24: three slots per panel; 5: narrower than a slot, one slot
            // per panel. Narrow blocks go through the kernel's edge path,
            // which may sum in another order: equal to float rounding.
            for width in [24, 5] {
                let panelled = train(optimizer, threads, width, 4);
                let diff = whole
                    .iter()
                    .flatten()
                    .zip(panelled.iter().flatten())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(diff < 1e-5, "{optimizer} threads={threads} width={width}: {diff}");
            }
        }
    }
}

#[test]
fn forward_of_a_slot_range_equals_those_columns_of_the_whole_forward() {
    use vfl_nn::embedding::{Combiner, EmbeddingBags, OutOfRange, SlotConfig};
    use vfl_nn::init::InitSpec;
    use vfl_nn::optim::{Optimizer, OptimizerSpec};
    let slots: Vec<SlotConfig> = (0..40)
        .map(|i| SlotConfig {
            name: format!("x{i}"),
            vocab: 13,
            dim: 1 + i % 5,
            combiner: Combiner::Mean,
            out_of_range: OutOfRange::Error,
        })
        .collect();
    let opt = Optimizer::new(OptimizerSpec::Sgd { learning_rate: 0.1 });
    let mut emb = EmbeddingBags::new("e", &slots, &InitSpec::Uniform { limit: 1.0 }, 3, &opt);
    let b = batch(&mut Rng::new(6), 9);
    let sparse = SparseBatch {
        rows: 9,
        slots: 40,
        ids: &b.ids,
        offsets: &b.offsets,
    };
    for threads in [1, 2] {
        let cx = Compute::new(threads).unwrap();
        let mut whole = Matrix::zeros(9, emb.out_cols());
        emb.forward(&cx, &sparse, &mut whole, 0).unwrap();
        let checked = emb.check_batch(&sparse).unwrap();
        // Columns of slots 7..19 in the whole output (dims cycle 1..=5).
        let (c0, c1) = (
            (0..7).map(|i| 1 + i % 5).sum::<usize>(),
            (0..19).map(|i| 1 + i % 5).sum::<usize>(),
        );
        // Into a wider matrix, from column 2: the rest stays untouched.
        let mut part = Matrix::from_vec(9, c1 - c0 + 3, vec![7.0; 9 * (c1 - c0 + 3)]).unwrap();
        emb.forward_slots(&cx, &checked, 7..19, &mut part, 2).unwrap();
        for r in 0..9 {
            assert_eq!(
                &part.row(r)[2..2 + c1 - c0],
                &whole.row(r)[c0..c1],
                "threads={threads} row {r}"
            );
            assert_eq!(part.row(r)[..2], [7.0, 7.0]);
            assert_eq!(part.row(r)[2 + c1 - c0], 7.0);
        }
        // A range outside the slots is an error, not a panic.
        let err = emb.forward_slots(&cx, &checked, 30..41, &mut part, 0).unwrap_err();
        assert!(err.to_string().contains("30..41"), "{err}");
    }
}
