//! A parameter shard's state machine: the parameters it owns, their
//! optimizer state, and the step in progress.

use vfl_nn::optim::{Optimizer, ParamState};
use vfl_nn::{FollowerModel, LeaderModel, ModelSpec, Replica, Role};

use super::{Contribution, Params, Placement, ShardError};

/// A row of a table that this shard does not own.
const NOT_OWNED: u32 = u32::MAX;

/// A shard's state between steps, for checkpoints: the values and
/// optimizer state of what it owns (rows in (slot, row) order, dense
/// tensors by index) and the steps applied.
#[derive(Clone, PartialEq)]
pub struct ShardState {
    pub steps: u64,
    pub values: Vec<f32>,
    pub state: ParamState,
    pub dense: Vec<(u32, Vec<f32>, ParamState)>,
}

/// One dense tensor this shard owns.
#[derive(Clone)]
struct DenseParam {
    index: u32,
    w: Vec<f32>,
    st: ParamState,
}

/// The step in progress: who takes part (in worker order) and what came.
struct Pending {
    step: u64,
    participants: Vec<u32>,
    got: Vec<Option<Contribution>>,
}

/// Shard `index` of one party's parameters.
pub struct Shard {
    index: usize,
    workers: usize,
    opt: Optimizer,
    /// Per slot: the row width.
    dims: Vec<usize>,
    /// Owned rows in (slot, row) order, their offsets in `values`.
    keys: Vec<(u32, u32)>,
    offs: Vec<usize>,
    /// Per slot, per row of the table: its number in `keys`, or
    /// [`NOT_OWNED`] (4 bytes per row of the table).
    at: Vec<Vec<u32>>,
    values: Vec<f32>,
    /// The step's combined row gradients (shaped like `values`), which keys
    /// were touched in this step (`stamp == generation`), and in what order.
    acc: Vec<f32>,
    stamp: Vec<u32>,
    generation: u32,
    touched: Vec<u32>,
    /// The dense gradient being combined.
    dense_acc: Vec<f32>,
    state: ParamState,
    dense: Vec<DenseParam>,
    steps: u64,
    pending: Option<Pending>,
}

impl Shard {
    /// Shard `index` of `placement` for `role`'s parameters of `spec`,
    /// initialised exactly as a single pair's model is (same seed, same
    /// streams), serving `workers` worker pairs.
    pub fn new(
        spec: &ModelSpec,
        role: Role,
        index: usize,
        placement: Placement,
        workers: usize,
    ) -> Result<Self, ShardError> {
        if workers == 0 {
            return Err(ShardError::NoWorkers);
        }
        let model: Box<dyn Replica> = match role {
            Role::Leader => Box::new(LeaderModel::new(spec)),
            Role::Follower => Box::new(FollowerModel::new(spec)),
        };
        let opt = Optimizer::new(spec.optimizer.clone());
        let mut dense = Vec::new();
        for (l, layer) in model.dense_layers().into_iter().enumerate() {
            let mut tensors = vec![(2 * l, layer.weights())];
            if layer.has_bias() {
                tensors.push((2 * l + 1, layer.bias()));
            }
            for (i, w) in tensors {
                if placement.dense(i) == index {
                    dense.push(DenseParam {
                        index: i as u32,
                        w: w.to_vec(),
                        st: opt.new_state(w.len()),
                    });
                }
            }
        }
        let (mut dims, mut keys, mut offs, mut values, mut at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if let Some(emb) = model.embeddings() {
            for s in 0..emb.num_slots() {
                let cfg = emb.slot_config(s);
                dims.push(cfg.dim);
                let mut local = vec![NOT_OWNED; cfg.vocab];
                for r in 0..cfg.vocab as u32 {
                    if placement.row(s, r) == index {
                        local[r as usize] = keys.len() as u32;
                        keys.push((s as u32, r));
                        offs.push(values.len());
                        values.extend_from_slice(emb.row(s, r).unwrap_or_default());
                    }
                }
                at.push(local);
            }
        }
        Ok(Shard {
            index,
            workers,
            state: opt.new_state(values.len()),
            opt,
            dims,
            acc: vec![0.0; values.len()],
            stamp: vec![0; keys.len()],
            generation: 0,
            touched: Vec::new(),
            dense_acc: Vec::new(),
            keys,
            offs,
            at,
            values,
            dense,
            steps: 0,
            pending: None,
        })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// Steps applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The step begun and not yet applied, with its participants (sorted).
    pub fn pending(&self) -> Option<(u64, &[u32])> {
        self.pending.as_ref().map(|p| (p.step, &p.participants[..]))
    }

    /// Drops the step begun, if any (its contributions were never applied):
    /// a participant was lost and the job restarts from a checkpoint.
    pub fn abort(&mut self) {
        self.pending = None;
    }

    /// Embedding rows owned.
    pub fn rows(&self) -> usize {
        self.keys.len()
    }

    /// Begins step `step` (the one after the last applied) with these
    /// participants (worker indices; they are combined in ascending order).
    pub fn begin(&mut self, step: u64, participants: &[u32]) -> Result<(), ShardError> {
        let shard = self.index;
        if let Some(p) = &self.pending {
            let missing = p
                .participants
                .iter()
                .zip(&p.got)
                .filter(|(_, g)| g.is_none())
                .map(|(w, _)| *w)
                .collect();
            return Err(ShardError::StepInProgress {
                shard,
                step: p.step,
                missing,
            });
        }
        if step != self.steps + 1 {
            return Err(ShardError::WrongStep {
                shard,
                got: step,
                expected: self.steps + 1,
            });
        }
        let mut participants = participants.to_vec();
        participants.sort_unstable();
        participants.dedup();
        if participants.is_empty() {
            return Err(ShardError::NoParticipants { shard });
        }
        if let Some(&w) = participants.iter().find(|&&w| w as usize >= self.workers) {
            return Err(ShardError::UnknownWorker {
                shard,
                worker: w,
                workers: self.workers,
            });
        }
        self.pending = Some(Pending {
            step,
            got: vec![None; participants.len()],
            participants,
        });
        Ok(())
    }

    /// Worker `worker`'s gradients for the step begun. When they are the
    /// last the step waits for, the step is applied and the new values of
    /// everything it changed are returned (for every worker's replica).
    pub fn contribute(&mut self, worker: u32, c: Contribution) -> Result<Option<Params>, ShardError> {
        let shard = self.index;
        if worker as usize >= self.workers {
            return Err(ShardError::UnknownWorker {
                shard,
                worker,
                workers: self.workers,
            });
        }
        let Some(p) = &self.pending else {
            return Err(ShardError::NotBegun { shard, worker });
        };
        let Some(slot) = p.participants.iter().position(|&w| w == worker) else {
            return Err(ShardError::NotParticipant {
                shard,
                worker,
                step: p.step,
            });
        };
        if p.got[slot].is_some() {
            return Err(ShardError::Duplicate {
                shard,
                worker,
                step: p.step,
            });
        }
        self.check(worker, &c)?;
        let p = self.pending.as_mut().ok_or(ShardError::NotBegun { shard, worker })?;
        p.got[slot] = Some(c);
        if p.got.iter().any(Option::is_none) {
            return Ok(None);
        }
        let done = self.pending.take().map(|p| p.got).unwrap_or_default();
        Ok(Some(self.apply(done.into_iter().flatten().collect())))
    }

    /// Everything a contribution must satisfy before it counts.
    fn check(&mut self, worker: u32, c: &Contribution) -> Result<(), ShardError> {
        let shard = self.index;
        if c.examples == 0 {
            return Err(ShardError::NoExamples { shard, worker });
        }
        let g = &c.grads;
        for (k, own) in self.dense.iter().enumerate() {
            let Some((index, v)) = g.dense.get(k) else {
                return Err(ShardError::MissingDense {
                    shard,
                    worker,
                    index: own.index,
                });
            };
            if *index != own.index {
                return Err(if self.dense.iter().any(|d| d.index == *index) {
                    ShardError::MissingDense {
                        shard,
                        worker,
                        index: own.index,
                    }
                } else {
                    ShardError::NotOwned {
                        shard,
                        worker,
                        what: format!("dense tensor {index}"),
                    }
                });
            }
            if v.len() != own.w.len() {
                return Err(ShardError::Shape {
                    shard,
                    worker,
                    what: format!("dense tensor {index}"),
                    got: v.len(),
                    expected: own.w.len(),
                });
            }
        }
        if let Some((index, _)) = g.dense.get(self.dense.len()) {
            return Err(ShardError::NotOwned {
                shard,
                worker,
                what: format!("dense tensor {index}"),
            });
        }
        let mut width = 0usize;
        let generation = self.next_generation();
        for &(s, r) in &g.rows {
            let Some(i) = self.key(s, r) else {
                return Err(ShardError::NotOwned {
                    shard,
                    worker,
                    what: format!("slot {s} row {r}"),
                });
            };
            if self.stamp[i] == generation {
                return Err(ShardError::RepeatedRow {
                    shard,
                    worker,
                    slot: s,
                    row: r,
                });
            }
            self.stamp[i] = generation;
            width += self.dims[s as usize];
        }
        if g.values.len() != width {
            return Err(ShardError::Shape {
                shard,
                worker,
                what: "the embedding rows".into(),
                got: g.values.len(),
                expected: width,
            });
        }
        // Without a short cut, so that it vectorizes (one pass at memory speed).
        let finite = |v: &[f32]| !v.iter().fold(false, |bad, x| bad | !x.is_finite());
        if !finite(&g.values) || !g.dense.iter().all(|(_, v)| finite(v)) {
            return Err(ShardError::NonFinite { shard, worker });
        }
        Ok(())
    }

    /// Combines the step's contributions (in worker order, each weighted by
    /// its share of the step's examples) and applies the optimizer.
    fn apply(&mut self, got: Vec<Contribution>) -> Params {
        let total: u64 = got.iter().map(|c| u64::from(c.examples)).sum();
        let weights: Vec<f32> = got.iter().map(|c| c.examples as f32 / total as f32).collect();
        self.opt.begin_step();
        let mut out = Params::default();
        let mut g = std::mem::take(&mut self.dense_acc);
        for (k, d) in self.dense.iter_mut().enumerate() {
            // One contribution (weight 1): its gradient as it came.
            let grad: &[f32] = if let [only] = &got[..] {
                &only.grads.dense[k].1
            } else {
                g.clear();
                g.resize(d.w.len(), 0.0);
                for (c, &f) in got.iter().zip(&weights) {
                    axpy(&mut g, &c.grads.dense[k].1, f);
                }
                &g
            };
            self.opt.apply_param(&mut d.w, grad, &mut d.st);
            out.dense.push((d.index, d.w.clone()));
        }
        self.dense_acc = g;
        // Rows: combined in `acc`, in the order they first appear, worker
        // by worker.
        let generation = self.next_generation();
        self.touched.clear();
        for (c, &f) in got.iter().zip(&weights) {
            let mut at = 0;
            for &(s, r) in &c.grads.rows {
                let Some(i) = self.key(s, r) else { continue };
                let (off, dim) = (self.offs[i], self.dims[s as usize]);
                let g = &c.grads.values[at..at + dim];
                at += dim;
                let sum = &mut self.acc[off..off + dim];
                if self.stamp[i] != generation {
                    self.stamp[i] = generation;
                    self.touched.push(i as u32);
                    sum.fill(0.0);
                }
                axpy(sum, g, f);
            }
        }
        // In key order, runs of consecutive owned rows at once: their
        // values lie side by side, so that the optimizer sweeps memory.
        self.touched.sort_unstable();
        let total: usize = self
            .touched
            .iter()
            .map(|&i| self.dims[self.keys[i as usize].0 as usize])
            .sum();
        out.rows.reserve(self.touched.len());
        out.values.reserve(total);
        let mut k = 0;
        while k < self.touched.len() {
            let first = self.touched[k] as usize;
            let mut last = first;
            while self.touched.get(k + 1).is_some_and(|&n| n as usize == last + 1) {
                last += 1;
                k += 1;
            }
            k += 1;
            let lo = self.offs[first];
            let hi = self.offs[last] + self.dims[self.keys[last].0 as usize];
            let a = if self.state.a.is_empty() {
                &mut [][..]
            } else {
                &mut self.state.a[lo..hi]
            };
            let b = if self.state.b.is_empty() {
                &mut [][..]
            } else {
                &mut self.state.b[lo..hi]
            };
            self.opt.apply(&mut self.values[lo..hi], &self.acc[lo..hi], a, b);
            out.rows.extend_from_slice(&self.keys[first..=last]);
            out.values.extend_from_slice(&self.values[lo..hi]);
        }
        self.steps += 1;
        out
    }

    /// The number of an owned row in `keys`.
    fn key(&self, slot: u32, row: u32) -> Option<usize> {
        match self.at.get(slot as usize)?.get(row as usize) {
            Some(&i) if i != NOT_OWNED => Some(i as usize),
            _ => None,
        }
    }

    /// A fresh stamp for `stamp` (all stamps cleared when it wraps).
    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
        self.generation
    }

    /// Every value this shard owns (for a replica that (re)joins).
    pub fn dump(&self) -> Params {
        Params {
            dense: self.dense.iter().map(|d| (d.index, d.w.clone())).collect(),
            rows: self.keys.clone(),
            values: self.values.clone(),
        }
    }

    /// The state to checkpoint (a step in progress is not part of it).
    pub fn state(&self) -> ShardState {
        ShardState {
            steps: self.steps,
            values: self.values.clone(),
            state: self.state.clone(),
            dense: self
                .dense
                .iter()
                .map(|d| (d.index, d.w.clone(), d.st.clone()))
                .collect(),
        }
    }

    /// Whether `st` is a state of this shard (sizes and tensors), without
    /// changing anything.
    pub fn check_state(&self, st: &ShardState) -> Result<(), ShardError> {
        let bad = |why: String| ShardError::BadState { shard: self.index, why };
        let fits = |s: &ParamState, want: &ParamState| s.a.len() == want.a.len() && s.b.len() == want.b.len();
        if st.values.len() != self.values.len() || !fits(&st.state, &self.state) {
            return Err(bad(format!(
                "{} row values, this shard owns {}",
                st.values.len(),
                self.values.len()
            )));
        }
        if st.dense.len() != self.dense.len() {
            return Err(bad(format!(
                "{} dense tensors, this shard owns {}",
                st.dense.len(),
                self.dense.len()
            )));
        }
        for ((i, w, s), d) in st.dense.iter().zip(&self.dense) {
            if *i != d.index || w.len() != d.w.len() || !fits(s, &d.st) {
                return Err(bad(format!("dense tensor {i} does not match tensor {}", d.index)));
            }
        }
        Ok(())
    }

    /// Resumes from [`Shard::state`] of the same shard of the same model;
    /// a step in progress is dropped. Nothing changes when `st` does not
    /// fit.
    pub fn restore(&mut self, st: &ShardState) -> Result<(), ShardError> {
        self.check_state(st)?;
        self.values.clone_from(&st.values);
        self.state = st.state.clone();
        for ((_, w, s), d) in st.dense.iter().zip(&mut self.dense) {
            d.w.clone_from(w);
            d.st = s.clone();
        }
        self.steps = st.steps;
        self.opt.set_step(st.steps);
        self.pending = None;
        Ok(())
    }
}

// Parameters and gradients are derived from the parties' data (on the
// follower, from the leader's labels): Debug says sizes, never values.
impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Shard {{ index: {}, workers: {}, rows: {}, dense: {}, steps: {} }}",
            self.index,
            self.workers,
            self.keys.len(),
            self.dense.len(),
            self.steps
        )
    }
}

impl std::fmt::Debug for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ShardState {{ steps: {}, values: {}, dense: {} }}",
            self.steps,
            self.values.len(),
            self.dense.len()
        )
    }
}

fn axpy(o: &mut [f32], x: &[f32], a: f32) {
    for (o, x) in o.iter_mut().zip(x) {
        *o += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        let mut spec = ModelSpec::preset("wide_n_deep_adam").unwrap();
        for tower in [&mut spec.leader, &mut spec.follower] {
            tower.sparse[0].count = Some(2);
        }
        spec.leader.layers[0].units = 4;
        spec.leader.layers[1].units = 2;
        spec.follower.layers[0].units = 2;
        spec.head.input_dim = Some(4);
        spec
    }

    /// Shard 0 of 2 for 2 workers, step 1 begun with both.
    fn shard() -> Shard {
        let mut s = Shard::new(&spec(), Role::Follower, 0, Placement::new(2).unwrap(), 2).unwrap();
        s.begin(1, &[0, 1]).unwrap();
        s
    }

    /// A well-formed contribution to `s`: every owned dense tensor, its
    /// first owned row.
    fn good(s: &Shard) -> Contribution {
        let (slot, row) = s.keys[0];
        Contribution {
            examples: 3,
            grads: Params {
                dense: s.dense.iter().map(|d| (d.index, vec![0.5; d.w.len()])).collect(),
                rows: vec![(slot, row)],
                values: vec![0.25; s.dims[slot as usize]],
            },
        }
    }

    #[test]
    fn a_step_applies_when_the_last_participant_arrives() {
        let mut s = shard();
        let before = s.dump();
        assert_eq!(s.contribute(1, good(&s)).unwrap(), None);
        let new = s.contribute(0, good(&s)).unwrap().expect("applied");
        assert_eq!(s.steps(), 1);
        assert_eq!(new.rows, vec![s.keys[0]]);
        assert_ne!(new.dense, before.dense);
        // The next step can begin.
        s.begin(2, &[1]).unwrap();
    }

    #[test]
    fn combination_is_weighted_by_examples_in_worker_order() {
        // Plain SGD: the applied step is lr times the weighted gradient.
        let mut sp = spec();
        sp.optimizer = vfl_nn::optim::OptimizerSpec::Sgd { learning_rate: 1.0 };
        let mut s = Shard::new(&sp, Role::Follower, 0, Placement::new(1).unwrap(), 2).unwrap();
        s.begin(1, &[1, 0]).unwrap();
        let w0 = s.dense[0].w[0];
        let mut a = good(&s);
        a.examples = 1;
        a.grads.dense.iter_mut().for_each(|(_, v)| v.fill(4.0));
        let mut b = good(&s);
        b.examples = 3;
        b.grads.dense.iter_mut().for_each(|(_, v)| v.fill(0.0));
        s.contribute(0, a).unwrap();
        s.contribute(1, b).unwrap().unwrap();
        assert_eq!(s.dense[0].w[0], w0 - 1.0);
    }

    #[test]
    fn no_shards() {
        assert_eq!(Placement::new(0).unwrap_err(), ShardError::NoShards);
    }

    #[test]
    fn no_workers() {
        let e = Shard::new(&spec(), Role::Leader, 0, Placement::new(1).unwrap(), 0).unwrap_err();
        assert_eq!(e, ShardError::NoWorkers);
    }

    #[test]
    fn wrong_step() {
        let mut s = Shard::new(&spec(), Role::Leader, 0, Placement::new(1).unwrap(), 1).unwrap();
        assert!(matches!(
            s.begin(2, &[0]),
            Err(ShardError::WrongStep {
                got: 2,
                expected: 1,
                ..
            })
        ));
    }

    #[test]
    fn step_in_progress() {
        let mut s = shard();
        s.contribute(0, good(&s)).unwrap();
        match s.begin(2, &[0]) {
            Err(ShardError::StepInProgress { step: 1, missing, .. }) => assert_eq!(missing, vec![1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_participants() {
        let mut s = Shard::new(&spec(), Role::Leader, 0, Placement::new(1).unwrap(), 1).unwrap();
        assert!(matches!(s.begin(1, &[]), Err(ShardError::NoParticipants { .. })));
    }

    #[test]
    fn unknown_worker_at_begin() {
        let mut s = Shard::new(&spec(), Role::Leader, 0, Placement::new(1).unwrap(), 2).unwrap();
        assert!(matches!(
            s.begin(1, &[0, 2]),
            Err(ShardError::UnknownWorker { worker: 2, .. })
        ));
    }

    #[test]
    fn unknown_worker_contributing() {
        let mut s = shard();
        let c = good(&s);
        assert!(matches!(
            s.contribute(7, c),
            Err(ShardError::UnknownWorker { worker: 7, .. })
        ));
    }

    #[test]
    fn not_begun() {
        let mut s = Shard::new(&spec(), Role::Follower, 0, Placement::new(2).unwrap(), 2).unwrap();
        let c = good(&s);
        assert!(matches!(
            s.contribute(0, c),
            Err(ShardError::NotBegun { worker: 0, .. })
        ));
    }

    #[test]
    fn not_participant() {
        let mut s = Shard::new(&spec(), Role::Follower, 0, Placement::new(2).unwrap(), 2).unwrap();
        s.begin(1, &[0]).unwrap();
        let c = good(&s);
        assert!(matches!(
            s.contribute(1, c),
            Err(ShardError::NotParticipant { worker: 1, step: 1, .. })
        ));
    }

    #[test]
    fn duplicate() {
        let mut s = shard();
        s.contribute(0, good(&s)).unwrap();
        let c = good(&s);
        assert!(matches!(
            s.contribute(0, c),
            Err(ShardError::Duplicate { worker: 0, step: 1, .. })
        ));
    }

    #[test]
    fn row_not_owned() {
        let mut s = shard();
        let mut c = good(&s);
        let foreign = (0..101).find(|&r| s.key(0, r).is_none()).unwrap();
        c.grads.rows = vec![(0, foreign)];
        assert!(matches!(s.contribute(0, c), Err(ShardError::NotOwned { .. })));
        // Refused contributions do not count: the worker may still send.
        let c = good(&s);
        s.contribute(0, c).unwrap();
    }

    #[test]
    fn dense_not_owned() {
        let mut s = shard();
        let mut c = good(&s);
        let foreign = (0..100u32).find(|i| !s.dense.iter().any(|d| d.index == *i)).unwrap();
        c.grads.dense.push((foreign, vec![0.0; 4]));
        assert!(matches!(s.contribute(0, c), Err(ShardError::NotOwned { .. })));
    }

    #[test]
    fn dense_shape() {
        let mut s = shard();
        let mut c = good(&s);
        c.grads.dense[0].1.pop();
        assert!(matches!(s.contribute(0, c), Err(ShardError::Shape { .. })));
    }

    #[test]
    fn row_values_shape() {
        let mut s = shard();
        let mut c = good(&s);
        c.grads.values.push(1.0);
        assert!(matches!(s.contribute(0, c), Err(ShardError::Shape { .. })));
    }

    #[test]
    fn missing_dense() {
        let mut s = shard();
        let mut c = good(&s);
        let first = c.grads.dense.remove(0).0;
        assert!(matches!(
            s.contribute(0, c),
            Err(ShardError::MissingDense { index, .. }) if index == first
        ));
    }

    #[test]
    fn repeated_row() {
        let mut s = shard();
        let mut c = good(&s);
        c.grads.rows.push(c.grads.rows[0]);
        let v = c.grads.values.clone();
        c.grads.values.extend(v);
        assert!(matches!(s.contribute(0, c), Err(ShardError::RepeatedRow { .. })));
    }

    #[test]
    fn no_examples() {
        let mut s = shard();
        let mut c = good(&s);
        c.examples = 0;
        assert!(matches!(
            s.contribute(0, c),
            Err(ShardError::NoExamples { worker: 0, .. })
        ));
    }

    #[test]
    fn non_finite() {
        let mut s = shard();
        let mut c = good(&s);
        c.grads.values[0] = f32::NAN;
        let e = s.contribute(0, c).unwrap_err();
        assert!(matches!(e, ShardError::NonFinite { worker: 0, .. }));
        assert!(!e.to_string().contains("NaN"));
    }

    #[test]
    fn restore_of_another_shard_is_refused() {
        let p = Placement::new(2).unwrap();
        let a = Shard::new(&spec(), Role::Follower, 0, p, 1).unwrap();
        let mut b = Shard::new(&spec(), Role::Follower, 1, p, 1).unwrap();
        let mut st = a.state();
        if st.values.len() == b.values.len() {
            st.values.push(0.0);
        }
        assert!(matches!(b.restore(&st), Err(ShardError::BadState { shard: 1, .. })));
    }

    #[test]
    fn restore_resumes_the_step_count_and_drops_a_step_in_progress() {
        let mut s = shard();
        s.contribute(0, good(&s)).unwrap();
        s.contribute(1, good(&s)).unwrap().unwrap();
        let st = s.state();
        s.begin(2, &[0]).unwrap();
        let mut fresh = Shard::new(&spec(), Role::Follower, 0, Placement::new(2).unwrap(), 2).unwrap();
        fresh.restore(&st).unwrap();
        assert_eq!(fresh.state(), st);
        s.restore(&st).unwrap();
        s.begin(2, &[0, 1]).unwrap();
    }

    #[test]
    fn shards_partition_the_parameters() {
        let p = Placement::new(3).unwrap();
        let shards: Vec<Shard> = (0..3)
            .map(|i| Shard::new(&spec(), Role::Leader, i, p, 1).unwrap())
            .collect();
        let rows: usize = shards.iter().map(Shard::rows).sum();
        assert_eq!(rows, 2 * 101);
        assert!(shards.iter().all(|s| s.rows() > 40), "rows spread over the shards");
        let mut dense: Vec<u32> = shards.iter().flat_map(|s| s.dense.iter().map(|d| d.index)).collect();
        dense.sort_unstable();
        let model = LeaderModel::new(&spec());
        let want: usize = model.dense_layers().iter().map(|l| 1 + usize::from(l.has_bias())).sum();
        assert_eq!(dense.len(), want);
        dense.dedup();
        assert_eq!(dense.len(), want);
    }
}
