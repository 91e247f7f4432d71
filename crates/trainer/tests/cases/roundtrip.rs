//! Property tests: a checkpoint saved (sealed or not) loads back exactly,
//! weights and run state alike.

use proptest::prelude::*;
use vfl_attest::seal::Sealer;
use vfl_nn::{ModelSpec, Role};
use vfl_trainer::checkpoint::{self, Binding, RunState};

const SPEC: &str = r#"
name = "roundtrip"
seed = 1
optimizer = { kind = "adam", learning_rate = 0.01 }
[leader]
sparse = [{ prefix = "x_", count = 2, vocab = 7, dim = 3 }]
layers = [{ units = 4, activation = "relu" }]
[follower]
sparse = [{ prefix = "x_", count = 2, vocab = 7, dim = 3 }]
layers = [{ units = 2 }]
[head]
layers = [{ units = 1 }]
loss = "sigmoid_cross_entropy"
"#;

fn state() -> impl Strategy<Value = RunState> {
    (
        any::<u32>(),
        proptest::collection::vec("[a-z0-9/_.-]{1,12}", 0..6),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(epoch, plan, block, record, steps, examples, next_iteration, opt_step)| RunState {
                epoch,
                plan,
                block,
                record,
                steps,
                examples,
                next_iteration,
                opt_step,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn a_checkpoint_loads_back_exactly(seed in any::<u64>(), st in state(), sealed in any::<bool>(), step in 1u64..1_000_000) {
        let spec = ModelSpec::from_toml_str(SPEC, "t").unwrap();
        let bind = Binding { app: "a".into(), role: Role::Leader, model: spec.fingerprint(), policy: "p".into() };
        let dir = std::env::temp_dir().join(format!("vfl-rt-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = Sealer::from_key([9; 32], "t").unwrap();
        let sealer = sealed.then_some(&key);
        let mut m = vfl_nn::split::LeaderModel::new(&spec);
        // Arbitrary finite weights.
        let mut x = seed | 1;
        for t in m.tensors_mut() {
            for v in t.data.iter_mut() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                *v = f32::from_bits((x as u32) & 0x7f7f_ffff) * if x & 1 == 0 { 1.0 } else { -1.0 };
            }
        }
        let saved: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
        checkpoint::save(&dir, step, &bind, "run", m.tensors_mut(), &st, 2, sealer).unwrap();
        let mut back = vfl_nn::split::LeaderModel::new(&spec);
        for t in back.tensors_mut() { t.data.fill(0.0); }
        let loaded = checkpoint::load(&dir, step, &bind, "run", back.tensors_mut(), sealer).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let got: Vec<Vec<f32>> = back.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
        prop_assert_eq!(got.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        saved.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>());
        prop_assert_eq!(loaded, RunState { steps: st.steps, ..st.clone() });
    }
}
