//! Sharded synchronous training (N worker pairs, S shards per party), in
//! one process: it learns like a single pair, it is a function of the data,
//! the seed and N, and it resumes bitwise from a checkpoint.

use vfl_data::synth::{Synth, SynthConfig, SynthRow};
use vfl_data::{BatchSource, SynthSource};
use vfl_nn::{BinaryMetrics, ModelSpec, Replica};
use vfl_trainer::sharded::{BlockData, EpochOutcome, ShardedCheckpoint, ShardedTrainer};
use vfl_trainer::{LocalTrainer, TrainError};

pub const SLOTS: usize = 32;

/// wide_n_deep_adam's shape with 32 slots per party and narrower layers.
pub fn small_wide_n_deep() -> ModelSpec {
    let mut spec = ModelSpec::preset("wide_n_deep_adam").unwrap();
    for tower in [&mut spec.leader, &mut spec.follower] {
        tower.sparse[0].count = Some(SLOTS);
    }
    spec.leader.layers[0].units = 64;
    spec.leader.layers[1].units = 16;
    spec.follower.layers[0].units = 16;
    spec.head.input_dim = Some(32);
    spec
}

/// Synthetic rows cut into equal blocks.
pub struct SynthBlocks<'a> {
    pub generator: &'a Synth,
    pub per_block: u64,
    pub blocks: usize,
}

impl BlockData for SynthBlocks<'_> {
    fn blocks(&self) -> usize {
        self.blocks
    }
    fn open(&self, index: usize) -> Result<(Box<dyn BatchSource + '_>, Box<dyn BatchSource + '_>), TrainError> {
        let (a, b) = (index as u64 * self.per_block, (index as u64 + 1) * self.per_block);
        Ok((
            Box::new(SynthSource::new(self.generator, true, a, b)),
            Box::new(SynthSource::new(self.generator, false, a, b)),
        ))
    }
}

pub fn generator() -> Synth {
    Synth::new(SynthConfig {
        seed: 1,
        slots: SLOTS,
        ..Default::default()
    })
}

fn done(o: EpochOutcome) -> vfl_trainer::PassReport {
    match o {
        EpochOutcome::Done(r) => r,
        EpochOutcome::Stopped(_) => panic!("stopped"),
    }
}

/// Held-out AUC after `epochs` epochs with `workers` pairs and `shards`
/// shards, a global batch of 64 split over the workers.
fn held_out_auc(workers: usize, shards: usize, epochs: u32) -> f64 {
    let g = generator();
    let data = SynthBlocks {
        generator: &g,
        per_block: 1000,
        blocks: 16,
    };
    let mut t = ShardedTrainer::new(&small_wide_n_deep(), workers, shards, 1).unwrap();
    for e in 0..epochs {
        let r = done(t.run_epoch(&data, (e, Some(7)), 64 / workers, None, None).unwrap());
        assert_eq!(r.examples, 16_000);
    }
    let (a, b) = (1_000_000, 1_004_000);
    let r = t
        .evaluate(
            &mut SynthSource::new(&g, true, a, b),
            &mut SynthSource::new(&g, false, a, b),
            256,
        )
        .unwrap();
    r.metrics.auc.unwrap()
}

#[test]
fn one_two_and_four_pairs_reach_the_same_held_out_auc() {
    let aucs: Vec<f64> = [(1, 1), (2, 2), (4, 3)]
        .into_iter()
        .map(|(n, s)| held_out_auc(n, s, 2))
        .collect();
    // It learned: better than the leader's half alone can be.
    let g = generator();
    let mut oracle = BinaryMetrics::new();
    let mut row = SynthRow::default();
    for i in 1_000_000..1_004_000 {
        g.row(i, &mut row);
        let p = 1.0 / (1.0 + (-g.party_logit(&row, true)).exp());
        oracle.update(&[p], &[row.y as f32], None);
    }
    let leader_only = oracle.values().auc.unwrap();
    eprintln!("held-out AUC N=1,2,4: {aucs:?}; leader-only oracle {leader_only}");
    for (auc, n) in aucs.iter().zip([1, 2, 4]) {
        assert!(*auc > leader_only, "N={n}: {auc} vs leader-only oracle {leader_only}");
        assert!((auc - aucs[0]).abs() < 0.01, "N={n}: {auc} vs N=1: {}", aucs[0]);
    }
}

/// Every weight of both parties as the shards hold them.
fn weights(t: &ShardedTrainer) -> Vec<u32> {
    let (l, f) = t.shard_states().unwrap();
    l.iter()
        .chain(&f)
        .flat_map(|s| {
            s.values
                .iter()
                .chain(&s.state.a)
                .chain(&s.state.b)
                .chain(s.dense.iter().flat_map(|(_, w, st)| w.iter().chain(&st.a).chain(&st.b)))
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn short_run(workers: usize, shards: usize) -> ShardedTrainer {
    let g = generator();
    let data = SynthBlocks {
        generator: &g,
        per_block: 300,
        blocks: 7,
    };
    let mut t = ShardedTrainer::new(&small_wide_n_deep(), workers, shards, 1).unwrap();
    for e in 0..2 {
        done(t.run_epoch(&data, (e, Some(3)), 32, None, None).unwrap());
    }
    t
}

#[test]
fn two_runs_with_the_same_n_are_bitwise_identical() {
    let (a, b) = (short_run(3, 2), short_run(3, 2));
    assert_eq!(a.steps(), b.steps());
    assert_eq!(weights(&a), weights(&b));
    // And N matters (the steps combine other batches).
    assert_ne!(weights(&a), weights(&short_run(2, 2)));
}

#[test]
fn every_replica_equals_the_shards_after_training() {
    let t = short_run(3, 2);
    let dense = |m: &dyn Replica| -> Vec<Vec<f32>> {
        m.dense_layers()
            .iter()
            .flat_map(|l| [l.weights().to_vec(), l.bias().to_vec()])
            .collect()
    };
    let tables = |m: &dyn Replica| m.embeddings().map(|e| e.tables().to_vec());
    let (l0, f0) = t.replica(0).unwrap();
    for w in 1..3 {
        let (l, f) = t.replica(w).unwrap();
        assert!(dense(l) == dense(l0) && tables(l) == tables(l0), "leader replica {w}");
        assert!(dense(f) == dense(f0) && tables(f) == tables(f0), "follower replica {w}");
    }
}

#[test]
fn one_pair_sharded_equals_the_single_pair_bitwise() {
    // Adam: the shards apply the same element-wise update to the same
    // collected gradients, whatever the number of shards.
    let g = generator();
    let spec = small_wide_n_deep();
    let data = SynthBlocks {
        generator: &g,
        per_block: 2000,
        blocks: 1,
    };
    let mut sharded = ShardedTrainer::new(&spec, 1, 3, 1).unwrap();
    done(sharded.run_epoch(&data, (0, None), 32, None, None).unwrap());
    let mut single = LocalTrainer::new(&spec, 1).unwrap();
    single
        .run_pass(
            &mut SynthSource::new(&g, true, 0, 2000),
            &mut SynthSource::new(&g, false, 0, 2000),
            32,
            true,
            |_| {},
        )
        .unwrap();
    let (l, f) = sharded.replica(0).unwrap();
    let bits = |m: &dyn Replica| -> Vec<u32> {
        let mut v: Vec<f32> = m.embeddings().map(|e| e.tables().to_vec()).unwrap_or_default();
        for layer in m.dense_layers() {
            v.extend_from_slice(layer.weights());
            v.extend_from_slice(layer.bias());
        }
        v.iter().map(|x| x.to_bits()).collect()
    };
    assert!(bits(l) == bits(single.leader.model()), "leader weights differ");
    assert!(bits(f) == bits(single.follower.model()), "follower weights differ");
}

/// Trains two epochs, stopping after `stop` steps with a checkpoint that a
/// fresh trainer (every process restarted) resumes.
fn interrupted(stop: u64) -> (ShardedTrainer, ShardedCheckpoint) {
    let g = generator();
    let data = SynthBlocks {
        generator: &g,
        per_block: 300,
        blocks: 7,
    };
    let spec = small_wide_n_deep();
    let mut t = ShardedTrainer::new(&spec, 3, 2, 1).unwrap();
    let ck = match t.run_epoch(&data, (0, Some(3)), 32, None, Some(stop)).unwrap() {
        EpochOutcome::Stopped(ck) => ck,
        EpochOutcome::Done(_) => panic!("the epoch ended before step {stop}"),
    };
    drop(t);
    let mut t = ShardedTrainer::new(&spec, 3, 2, 1).unwrap();
    t.restore(&ck).unwrap();
    done(
        t.run_epoch(&data, (0, Some(3)), 32, ck.position.as_ref(), None)
            .unwrap(),
    );
    done(t.run_epoch(&data, (1, Some(3)), 32, None, None).unwrap());
    (t, ck)
}

#[test]
fn a_restart_from_a_mid_epoch_checkpoint_ends_bitwise_identical() {
    let whole = short_run(3, 2);
    // Inside a block for some workers, at a block's end for others.
    for stop in [5, 19] {
        let (t, ck) = interrupted(stop);
        assert_eq!(ck.step, stop);
        assert_eq!(t.steps(), whole.steps(), "stop at {stop}");
        assert!(weights(&t) == weights(&whole), "stop at {stop}: weights differ");
    }
}

#[test]
fn a_checkpoint_of_another_shard_count_is_refused() {
    let (_, ck) = interrupted(5);
    let mut t = ShardedTrainer::new(&small_wide_n_deep(), 3, 3, 1).unwrap();
    assert!(matches!(
        t.restore(&ck),
        Err(TrainError::Shard(vfl_trainer::sharded::ShardError::BadState { .. }))
    ));
}

#[test]
fn a_checkpoint_with_one_bad_shard_changes_no_shard() {
    let (_, mut ck) = interrupted(5);
    ck.follower[1].steps = 4;
    let mut t = ShardedTrainer::new(&small_wide_n_deep(), 3, 2, 1).unwrap();
    let before = weights(&t);
    assert!(matches!(
        t.restore(&ck),
        Err(TrainError::Shard(vfl_trainer::sharded::ShardError::BadState {
            shard: 1,
            ..
        }))
    ));
    assert!(weights(&t) == before, "a shard was restored before the refusal");
}
