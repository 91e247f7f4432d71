//! A whole sharded run in one process: N worker pairs and S shards per
//! party, stepped in lockstep, the blocks of every epoch handed out by
//! [`crate::assign::Assigner`]. Used by tests, `vfl bench --workers` and as
//! the reference the multi-process roles must equal.

use vfl_bridge::pb;
use vfl_data::{Batch, BatchSource};
use vfl_nn::{BinaryMetrics, ModelSpec, Role};

use std::sync::Arc;

use super::remote::{RemoteShards, ShardAddrs};
use super::{Contribution, Params, Placement, ShardError, ShardState, replica};
use crate::TrainError;
use crate::assign::{AssignError, AssignState, Assigner, Grant};
use crate::local::PassReport;
use crate::party::{FollowerParty, LeaderParty, UpdateMode};
use crate::sharded::Shard;

/// Numbered blocks of aligned data: block `i` is a pair of sources (the
/// leader's, the follower's) over the same examples.
pub trait BlockData {
    fn blocks(&self) -> usize;
    #[allow(clippy::type_complexity)]
    fn open(&self, index: usize) -> Result<(Box<dyn BatchSource + '_>, Box<dyn BatchSource + '_>), TrainError>;
}

/// Bytes moved, by link (payload: tensor and parameter values, row keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Between the parties: activations and gradients.
    pub cross: u64,
    /// Workers to shards: gradients (both parties).
    pub to_shards: u64,
    /// Shards to workers: new values, to every worker (both parties).
    pub from_shards: u64,
}

/// Where the steps' time went (seconds, summed over the steps).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StepTimes {
    /// The pairs' forward and backward passes and their exchange.
    pub compute: f64,
    /// Splitting the gradients by shard, the shards' combination and
    /// optimizer, writing the new values into every replica.
    pub params: f64,
}

/// Where an epoch stands between two steps.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPosition {
    pub epoch: u32,
    pub assign: AssignState,
    /// Per worker: rows of its current block already trained.
    pub rows: Vec<u64>,
}

/// A coordinated checkpoint of a sharded run: every shard of both parties
/// and the data position, all of the same step.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardedCheckpoint {
    pub step: u64,
    pub leader: Vec<ShardState>,
    pub follower: Vec<ShardState>,
    /// `None`: at the start of `epoch`.
    pub position: Option<EpochPosition>,
    pub epoch: u32,
}

/// How an epoch ended.
#[derive(Clone, Debug, PartialEq)]
pub enum EpochOutcome {
    Done(PassReport),
    /// Stopped after the step asked for (see [`ShardedTrainer::run_epoch`]).
    Stopped(ShardedCheckpoint),
}

/// One worker pair and its current block.
#[derive(Debug)]
struct Pair {
    leader: LeaderParty,
    follower: FollowerParty,
    lb: Batch,
    fb: Batch,
}

/// The block a worker trains, and how far.
struct Current<'d> {
    index: usize,
    lease: u64,
    rows: u64,
    leader: Box<dyn BatchSource + 'd>,
    follower: Box<dyn BatchSource + 'd>,
}

/// One party's shards: in this process, or served by shard processes.
#[derive(Debug)]
enum Shards {
    Local {
        shards: Vec<Shard>,
        /// The step begun, and each shard's new values once applied.
        begun: u64,
        applied: Vec<Option<Arc<Params>>>,
    },
    Remote(RemoteShards),
}

impl Shards {
    fn local(shards: Vec<Shard>, step: u64) -> Self {
        Shards::Local {
            applied: vec![None; shards.len()],
            shards,
            begun: step,
        }
    }

    /// Worker `worker`'s contributions (one per shard) to `step`.
    fn send(&mut self, worker: usize, step: u64, ids: &[u32], cs: Vec<Contribution>) -> Result<(), TrainError> {
        match self {
            Shards::Local { shards, begun, applied } => {
                if *begun != step {
                    for s in shards.iter_mut() {
                        s.begin(step, ids)?;
                    }
                    *begun = step;
                    applied.iter_mut().for_each(|a| *a = None);
                }
                for (s, c) in cs.into_iter().enumerate() {
                    if let Some(v) = shards[s].contribute(worker as u32, c)? {
                        applied[s] = Some(Arc::new(v));
                    }
                }
                Ok(())
            }
            Shards::Remote(r) => r.send(worker, step, ids, cs),
        }
    }

    /// The step's new values, as worker `worker` receives them.
    fn receive(&mut self, worker: usize, step: u64) -> Result<Vec<Arc<Params>>, TrainError> {
        match self {
            Shards::Local { applied, .. } => applied
                .iter()
                .map(|a| {
                    a.clone().ok_or(TrainError::Unsupported(
                        "a shard has not applied the step (a participant did not contribute)",
                    ))
                })
                .collect(),
            Shards::Remote(r) => r.receive(worker, step),
        }
    }

    fn shards(&self) -> Result<&[Shard], TrainError> {
        match self {
            Shards::Local { shards, .. } => Ok(shards),
            Shards::Remote(_) => Err(TrainError::Unsupported(
                "the shards are remote: their state is in their processes",
            )),
        }
    }
}

/// A sharded run: N worker pairs in this process, stepped in lockstep,
/// with their shards in this process too or remote.
#[derive(Debug)]
pub struct ShardedTrainer {
    spec: ModelSpec,
    pairs: Vec<Pair>,
    placement: Placement,
    leader_shards: Shards,
    follower_shards: Shards,
    step: u64,
    traffic: Traffic,
    times: StepTimes,
}

impl ShardedTrainer {
    /// `workers` pairs, `shards` shards per party, `threads` per worker.
    pub fn new(spec: &ModelSpec, workers: usize, shards: usize, threads: usize) -> Result<Self, TrainError> {
        if workers == 0 {
            return Err(ShardError::NoWorkers.into());
        }
        let placement = Placement::new(shards)?;
        let pairs = new_pairs(spec, workers, threads)?;
        let shards_of = |role| {
            (0..shards)
                .map(|s| Shard::new(spec, role, s, placement, workers))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(ShardedTrainer {
            spec: spec.clone(),
            pairs,
            placement,
            leader_shards: Shards::local(shards_of(Role::Leader)?, 0),
            follower_shards: Shards::local(shards_of(Role::Follower)?, 0),
            step: 0,
            traffic: Traffic::default(),
            times: StepTimes::default(),
        })
    }

    /// `workers` pairs in this process whose shards are served elsewhere
    /// (`vfl shard`, [`super::serve`]): every worker joins every shard of
    /// its party and its replica takes their values. Blocks on `rt`.
    pub fn remote(
        spec: &ModelSpec,
        (workers, threads): (usize, usize),
        rt: &tokio::runtime::Handle,
        leader: &ShardAddrs,
        follower: &ShardAddrs,
    ) -> Result<Self, TrainError> {
        if workers == 0 {
            return Err(ShardError::NoWorkers.into());
        }
        if leader.addrs.len() != follower.addrs.len() {
            return Err(TrainError::Unsupported("both parties need the same number of shards"));
        }
        let placement = Placement::new(leader.addrs.len())?;
        let mut pairs = new_pairs(spec, workers, threads)?;
        let fp = spec.fingerprint();
        let (l, ldump, lsteps) = RemoteShards::connect(rt.clone(), leader, (0..workers, workers), (&fp, 0, 0, ""))?;
        let (f, fdump, fsteps) = RemoteShards::connect(rt.clone(), follower, (0..workers, workers), (&fp, 0, 0, ""))?;
        if lsteps != fsteps {
            return Err(TrainError::CheckpointStep {
                leader: lsteps,
                ours: fsteps,
            });
        }
        // Resuming needs the data position of that step, which only an
        // in-process checkpoint holds so far.
        if lsteps != 0 {
            return Err(TrainError::Unsupported(
                "the shards have trained already; resuming a run over remote shards is not built yet",
            ));
        }
        for (w, p) in pairs.iter_mut().enumerate() {
            for v in &ldump[w] {
                replica::apply(p.leader.model_mut(), w, v)?;
            }
            for v in &fdump[w] {
                replica::apply(p.follower.model_mut(), w, v)?;
            }
        }
        Ok(ShardedTrainer {
            spec: spec.clone(),
            pairs,
            placement,
            leader_shards: Shards::Remote(l),
            follower_shards: Shards::Remote(f),
            step: lsteps,
            traffic: Traffic::default(),
            times: StepTimes::default(),
        })
    }

    pub fn workers(&self) -> usize {
        self.pairs.len()
    }

    /// Ends the run: remote shards are told it is finished (they end;
    /// a trainer dropped without this is a lost worker to them). Returns
    /// the steps trained.
    pub fn finish(mut self) -> Result<u64, TrainError> {
        for shards in [&mut self.leader_shards, &mut self.follower_shards] {
            if let Shards::Remote(r) = shards {
                r.done(self.step, "")?;
            }
        }
        Ok(self.step)
    }

    /// Steps trained.
    pub fn steps(&self) -> u64 {
        self.step
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    pub fn times(&self) -> StepTimes {
        self.times
    }

    /// One synchronous step on given batches: pair `w` trains
    /// `batches[w]` (leader's, follower's; at most one per pair). The
    /// batches are lent, not copied (benchmarks).
    pub fn train_step(&mut self, batches: &mut [(Batch, Batch)]) -> Result<u64, TrainError> {
        if batches.len() > self.pairs.len() || batches.is_empty() {
            return Err(ShardError::NoParticipants { shard: 0 }.into());
        }
        let swap = |pairs: &mut [Pair], batches: &mut [(Batch, Batch)]| {
            for (p, (l, f)) in pairs.iter_mut().zip(batches.iter_mut()) {
                std::mem::swap(&mut p.lb, l);
                std::mem::swap(&mut p.fb, f);
            }
        };
        swap(&mut self.pairs, batches);
        let participants: Vec<usize> = (0..batches.len()).collect();
        let r = self.step(&participants, &mut BinaryMetrics::new());
        swap(&mut self.pairs, batches);
        Ok(r?.0)
    }

    /// Every shard's state (both parties), the run's weights as the shards
    /// hold them (shards in this process only).
    pub fn shard_states(&self) -> Result<(Vec<ShardState>, Vec<ShardState>), TrainError> {
        Ok((
            self.leader_shards.shards()?.iter().map(Shard::state).collect(),
            self.follower_shards.shards()?.iter().map(Shard::state).collect(),
        ))
    }

    /// The leader's and follower's models of worker `w` (their replicas,
    /// equal to the shards' values after every step).
    pub fn replica(&self, w: usize) -> Option<(&vfl_nn::LeaderModel, &vfl_nn::FollowerModel)> {
        self.pairs.get(w).map(|p| (p.leader.model(), p.follower.model()))
    }

    /// A checkpoint at the start of `epoch` (between epochs).
    pub fn checkpoint_at_epoch(&self, epoch: u32) -> Result<ShardedCheckpoint, TrainError> {
        let (leader, follower) = self.shard_states()?;
        Ok(ShardedCheckpoint {
            step: self.step,
            leader,
            follower,
            position: None,
            epoch,
        })
    }

    /// Restores every shard from a checkpoint and rebuilds every worker's
    /// replica from the shards (a process that restarts does this too).
    pub fn restore(&mut self, ck: &ShardedCheckpoint) -> Result<(), TrainError> {
        for (shards, states) in [(&self.leader_shards, &ck.leader), (&self.follower_shards, &ck.follower)] {
            let Shards::Local { shards, .. } = shards else {
                return Err(TrainError::Unsupported(
                    "the shards are remote: each restores its own checkpoint",
                ));
            };
            if states.len() != shards.len() {
                return Err(ShardError::BadState {
                    shard: 0,
                    why: format!("a checkpoint of {} shards for {}", states.len(), shards.len()),
                }
                .into());
            }
            for (s, st) in shards.iter().zip(states) {
                s.check_state(st)?;
                if st.steps != ck.step {
                    return Err(ShardError::BadState {
                        shard: s.index(),
                        why: format!("its state is of step {}, the checkpoint's is {}", st.steps, ck.step),
                    }
                    .into());
                }
            }
        }
        // Everything fits: only now is anything changed.
        for (shards, states) in [
            (&mut self.leader_shards, &ck.leader),
            (&mut self.follower_shards, &ck.follower),
        ] {
            let Shards::Local { shards, begun, applied } = shards else {
                continue;
            };
            for (s, st) in shards.iter_mut().zip(states) {
                s.restore(st)?;
            }
            *begun = ck.step;
            applied.iter_mut().for_each(|a| *a = None);
        }
        self.step = ck.step;
        for (w, p) in self.pairs.iter_mut().enumerate() {
            for s in self.leader_shards.shards()? {
                replica::apply(p.leader.model_mut(), w, &s.dump())?;
            }
            for s in self.follower_shards.shards()? {
                replica::apply(p.follower.model_mut(), w, &s.dump())?;
            }
        }
        Ok(())
    }

    /// Trains epoch `epoch` over `data` (blocks shuffled from `seed` plus
    /// the epoch, as a single pair's leader does), from `from` if resuming
    /// inside it. With `stop_after`, stops after that step and returns its
    /// checkpoint.
    pub fn run_epoch(
        &mut self,
        data: &dyn BlockData,
        (epoch, seed): (u32, Option<u64>),
        batch_size: usize,
        from: Option<&EpochPosition>,
        stop_after: Option<u64>,
    ) -> Result<EpochOutcome, TrainError> {
        let n = self.pairs.len();
        if stop_after.is_some() && matches!(self.leader_shards, Shards::Remote(_)) {
            return Err(TrainError::Unsupported(
                "a checkpoint of remote shards is taken by the shards (not built yet)",
            ));
        }
        let ids: Vec<String> = (0..data.blocks()).map(|b| b.to_string()).collect();
        let order = super::block_order(&ids, seed, epoch);
        let mut assign = match from {
            Some(p) => Assigner::restore(order.clone(), n, &p.assign)?,
            None => Assigner::new(order.clone(), n),
        };
        let mut current: Vec<Option<Current<'_>>> = (0..n).map(|_| None).collect();
        if let Some(p) = from {
            for (w, cur) in current.iter_mut().enumerate() {
                if let Some((index, lease)) = assign.held_by(w) {
                    let mut c = open(data, &order, index, lease)?;
                    let skip = p.rows.get(w).copied().unwrap_or(0);
                    skip_rows(&mut c, skip, &mut self.pairs[w], batch_size)?;
                    *cur = Some(c);
                }
            }
        }
        let mut metrics = BinaryMetrics::new();
        let (mut steps, mut examples, mut loss_sum) = (0u64, 0u64, 0f64);
        loop {
            let have = self.fill(data, &order, &mut assign, &mut current, batch_size)?;
            let participants: Vec<usize> = (0..n).filter(|&w| have[w]).collect();
            if participants.is_empty() {
                if !assign.epoch_done() {
                    return Err(TrainError::Unsupported(
                        "no worker has data but the epoch's blocks are not all done",
                    ));
                }
                break;
            }
            let (rows, loss) = self.step(&participants, &mut metrics)?;
            steps += 1;
            examples += rows;
            loss_sum += loss;
            if stop_after == Some(self.step) {
                let (leader, follower) = self.shard_states()?;
                return Ok(EpochOutcome::Stopped(ShardedCheckpoint {
                    step: self.step,
                    leader,
                    follower,
                    position: Some(EpochPosition {
                        epoch,
                        assign: assign.state(),
                        rows: current.iter().map(|c| c.as_ref().map_or(0, |c| c.rows)).collect(),
                    }),
                    epoch,
                }));
            }
        }
        if examples == 0 && from.is_none() {
            return Err(TrainError::NoData { epoch });
        }
        Ok(EpochOutcome::Done(PassReport {
            steps,
            examples,
            mean_loss: if examples == 0 { 0.0 } else { loss_sum / examples as f64 },
            metrics: metrics.values(),
        }))
    }

    /// Gives every worker a batch for the next step if it can: from its
    /// block, else from the blocks granted (by worker index) to those that
    /// need one. Returns who has a batch.
    fn fill<'d>(
        &mut self,
        data: &'d dyn BlockData,
        order: &[String],
        assign: &mut Assigner,
        current: &mut [Option<Current<'d>>],
        batch_size: usize,
    ) -> Result<Vec<bool>, TrainError> {
        let n = self.pairs.len();
        let mut have = vec![false; n];
        let mut idle = vec![false; n];
        loop {
            for w in 0..n {
                let Some(c) = current[w].as_mut() else { continue };
                if have[w] {
                    continue;
                }
                let p = &mut self.pairs[w];
                let nl = c.leader.fill(&mut p.lb, batch_size)?;
                let nf = c.follower.fill(&mut p.fb, batch_size)?;
                if nl != nf {
                    return Err(TrainError::LocalRowCounts {
                        leader: nl,
                        follower: nf,
                        step: self.step,
                    });
                }
                if nl == 0 {
                    assign.finish(w, c.index, c.lease)?;
                    current[w] = None;
                } else {
                    c.rows += nl as u64;
                    have[w] = true;
                }
            }
            let needing: Vec<usize> = (0..n).filter(|&w| current[w].is_none() && !idle[w]).collect();
            if needing.is_empty() {
                return Ok(have);
            }
            for (w, g) in assign.grant_in_order(&needing)? {
                match g {
                    Grant::Block { index, lease, .. } => current[w] = Some(open(data, order, index, lease)?),
                    Grant::Wait | Grant::EpochDone => idle[w] = true,
                }
            }
        }
    }

    /// One synchronous step of `participants` (ascending worker indices,
    /// each with its batches filled): every pair's exchange, every
    /// contribution to its shards, the new values into every replica.
    /// Returns the step's rows and loss sum.
    fn step(&mut self, participants: &[usize], metrics: &mut BinaryMetrics) -> Result<(u64, f64), TrainError> {
        let step = self.step + 1;
        let ids: Vec<u32> = participants.iter().map(|&w| w as u32).collect();
        let (mut rows, mut loss) = (0u64, 0f64);
        let mut clock = std::time::Instant::now();
        for &w in participants {
            let p = &mut self.pairs[w];
            let act = p.follower.forward(&p.fb, true)?;
            let (report, grad) = p.leader.train_step(&p.lb, &act)?;
            p.follower.apply_gradient(&p.fb, &grad)?;
            self.times.compute += lap(&mut clock);
            self.traffic.cross += tensor_bytes(&act.tensor) + tensor_bytes(&grad.tensor);
            let weights = (!p.lb.weights.is_empty()).then_some(&p.lb.weights[..]);
            metrics.update(p.leader.scores(), &p.lb.labels, weights);
            rows += report.rows as u64;
            loss += f64::from(report.loss) * report.rows as f64;
            let examples = report.rows as u32;
            let lc = replica::contributions(p.leader.model(), &self.placement, examples);
            let fc = replica::contributions(p.follower.model(), &self.placement, examples);
            self.traffic.to_shards += lc.iter().chain(&fc).map(|c| c.grads.payload_bytes()).sum::<u64>();
            self.leader_shards.send(w, step, &ids, lc)?;
            self.follower_shards.send(w, step, &ids, fc)?;
            self.times.params += lap(&mut clock);
        }
        // Every worker, participant or not, takes the step's new values.
        for (w, p) in self.pairs.iter_mut().enumerate() {
            for v in self.leader_shards.receive(w, step)? {
                self.traffic.from_shards += v.payload_bytes();
                replica::apply(p.leader.model_mut(), w, &v)?;
            }
            for v in self.follower_shards.receive(w, step)? {
                self.traffic.from_shards += v.payload_bytes();
                replica::apply(p.follower.model_mut(), w, &v)?;
            }
        }
        self.times.params += lap(&mut clock);
        self.step = step;
        Ok((rows, loss))
    }

    /// Evaluates the model (worker 0's replica, equal to the shards') over
    /// two aligned sources.
    pub fn evaluate(
        &mut self,
        leader: &mut dyn BatchSource,
        follower: &mut dyn BatchSource,
        batch_size: usize,
    ) -> Result<PassReport, TrainError> {
        let p = &mut self.pairs[0];
        p.leader.take_metrics();
        let (mut steps, mut examples, mut loss_sum) = (0u64, 0u64, 0f64);
        loop {
            let nl = leader.fill(&mut p.lb, batch_size)?;
            let nf = follower.fill(&mut p.fb, batch_size)?;
            if nl != nf {
                return Err(TrainError::LocalRowCounts {
                    leader: nl,
                    follower: nf,
                    step: steps,
                });
            }
            if nl == 0 {
                break;
            }
            let act = p.follower.forward(&p.fb, false)?;
            let r = p.leader.eval_step(&p.lb, &act)?;
            steps += 1;
            examples += r.rows as u64;
            loss_sum += f64::from(r.loss) * r.rows as f64;
        }
        Ok(PassReport {
            steps,
            examples,
            mean_loss: if examples == 0 { 0.0 } else { loss_sum / examples as f64 },
            metrics: p.leader.take_metrics().values(),
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
}

/// Seconds since `clock`, which restarts.
fn lap(clock: &mut std::time::Instant) -> f64 {
    let now = std::time::Instant::now();
    let d = now.duration_since(*clock).as_secs_f64();
    *clock = now;
    d
}

fn tensor_bytes(t: &Option<pb::Tensor>) -> u64 {
    t.as_ref().map_or(0, |t| t.data.len() as u64)
}

/// `workers` pairs whose parties collect their gradients.
fn new_pairs(spec: &ModelSpec, workers: usize, threads: usize) -> Result<Vec<Pair>, TrainError> {
    let mut pairs = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut leader = LeaderParty::new(spec, threads)?;
        let mut follower = FollowerParty::new(spec, threads)?;
        leader.set_update_mode(UpdateMode::Collect);
        follower.set_update_mode(UpdateMode::Collect);
        pairs.push(Pair {
            leader,
            follower,
            lb: Batch::new(spec.leader.slots().len(), spec.leader.dense_columns().len()),
            fb: Batch::new(spec.follower.slots().len(), spec.follower.dense_columns().len()),
        });
    }
    Ok(pairs)
}

/// Opens block `order[index]` for a grant.
fn open<'d>(data: &'d dyn BlockData, order: &[String], index: usize, lease: u64) -> Result<Current<'d>, TrainError> {
    let id = order
        .get(index)
        .and_then(|id| id.parse::<usize>().ok())
        .ok_or(AssignError::BadState {
            why: "a grant outside the epoch's order",
        })?;
    let (leader, follower) = data.open(id)?;
    Ok(Current {
        index,
        lease,
        rows: 0,
        leader,
        follower,
    })
}

/// Skips the first `rows` rows of a block being resumed (the batches
/// trained before the checkpoint).
fn skip_rows(c: &mut Current<'_>, rows: u64, p: &mut Pair, batch_size: usize) -> Result<(), TrainError> {
    super::skip_rows(&mut *c.leader, &mut p.lb, rows, batch_size)?;
    super::skip_rows(&mut *c.follower, &mut p.fb, rows, batch_size)?;
    c.rows = rows;
    Ok(())
}
