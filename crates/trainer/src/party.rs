//! The two parties' training sessions: each owns its model part and its
//! compute threads and talks to the other only through the protocol's
//! messages ([`vfl_bridge::pb`], tensors through [`crate::wire`]).

use vfl_data::Batch;
use vfl_nn::{BinaryMetrics, Compute, FollowerModel, LeaderModel, Matrix, ModelSpec, SparseBatch, TowerInput};

use crate::TrainError;
use crate::wire;
use vfl_bridge::pb;

/// Views a batch as a tower input.
pub fn tower_input(batch: &Batch) -> TowerInput<'_> {
    TowerInput {
        rows: batch.rows,
        sparse: (batch.slots > 0).then_some(SparseBatch {
            rows: batch.rows,
            slots: batch.slots,
            ids: &batch.ids,
            offsets: &batch.offsets,
        }),
        dense: (batch.dense_cols > 0).then_some(&batch.dense[..]),
    }
}

/// What one leader step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub iteration: u64,
    pub loss: f32,
    pub rows: usize,
}

/// Who applies a training step's parameter gradients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateMode {
    /// The party's own optimizer, at once (a single pair).
    #[default]
    Apply,
    /// Nobody here: they are collected for the parameter shards of a
    /// sharded run ([`crate::sharded`]), which send the new values back.
    Collect,
}

/// The follower's side.
#[derive(Debug)]
pub struct FollowerParty {
    mode: UpdateMode,
    model: FollowerModel,
    cx: Compute,
    next_iteration: u64,
    /// Iteration whose activations were sent and await a gradient.
    pending: Option<u64>,
    grad: Matrix,
}

impl FollowerParty {
    pub fn new(spec: &ModelSpec, threads: usize) -> Result<Self, TrainError> {
        Ok(FollowerParty {
            mode: UpdateMode::Apply,
            model: FollowerModel::new(spec),
            cx: Compute::new(threads)?,
            next_iteration: 0,
            pending: None,
            grad: Matrix::default(),
        })
    }

    pub fn model(&self) -> &FollowerModel {
        &self.model
    }

    /// Who applies the gradients of the following steps.
    pub fn set_update_mode(&mut self, mode: UpdateMode) {
        self.mode = mode;
    }

    pub fn model_mut(&mut self) -> &mut FollowerModel {
        &mut self.model
    }

    pub fn next_iteration(&self) -> u64 {
        self.next_iteration
    }

    /// (next iteration, optimizer steps), for checkpoints.
    pub fn counters(&self) -> (u64, u64) {
        (self.next_iteration, self.model.opt.step())
    }

    /// Restores [`FollowerParty::counters`] from a checkpoint.
    pub fn restore_counters(&mut self, next_iteration: u64, opt_step: u64) {
        self.next_iteration = next_iteration;
        self.pending = None;
        self.model.opt.set_step(opt_step);
    }

    /// Runs the tower on `batch` and returns the message for the leader. In
    /// training, the next call must be [`FollowerParty::apply_gradient`].
    pub fn forward(&mut self, batch: &Batch, train: bool) -> Result<pb::Activations, TrainError> {
        if let Some(it) = self.pending {
            return Err(TrainError::GradientPending { iteration: it });
        }
        let iteration = self.next_iteration;
        let act = self.model.forward(&self.cx, &tower_input(batch))?;
        let msg = pb::Activations {
            iteration,
            batch_digest: batch.digest().0.to_vec(),
            train,
            tensor: Some(wire::encode(act)),
        };
        self.next_iteration += 1;
        if train {
            self.pending = Some(iteration);
        }
        Ok(msg)
    }

    /// Applies the leader's gradient to the tower (same `batch` as the
    /// forward pass).
    pub fn apply_gradient(&mut self, batch: &Batch, g: &pb::Gradient) -> Result<(), TrainError> {
        match self.pending {
            Some(it) if it == g.iteration => {}
            other => {
                return Err(TrainError::WrongGradient {
                    got: g.iteration,
                    pending: other.map_or("none".to_string(), |i| i.to_string()),
                });
            }
        }
        let shape = (batch.rows, self.model.tower.output_dim());
        wire::decode_into(g.tensor.as_ref(), "gradient from the leader", shape, &mut self.grad)?;
        match self.mode {
            UpdateMode::Apply => self.model.backward(&self.cx, &tower_input(batch), &self.grad)?,
            UpdateMode::Collect => self.model.backward_collect(&self.cx, &tower_input(batch), &self.grad)?,
        }
        self.pending = None;
        Ok(())
    }
}

/// The leader's side.
#[derive(Debug)]
pub struct LeaderParty {
    mode: UpdateMode,
    model: LeaderModel,
    cx: Compute,
    peer_cols: usize,
    next_iteration: u64,
    act: Matrix,
    metrics: BinaryMetrics,
}

impl LeaderParty {
    pub fn new(spec: &ModelSpec, threads: usize) -> Result<Self, TrainError> {
        Ok(LeaderParty {
            mode: UpdateMode::Apply,
            model: LeaderModel::new(spec),
            cx: Compute::new(threads)?,
            peer_cols: spec.follower.output_dim(),
            next_iteration: 0,
            act: Matrix::default(),
            metrics: BinaryMetrics::new(),
        })
    }

    pub fn model(&self) -> &LeaderModel {
        &self.model
    }

    /// Who applies the gradients of the following steps.
    pub fn set_update_mode(&mut self, mode: UpdateMode) {
        self.mode = mode;
    }

    pub fn model_mut(&mut self) -> &mut LeaderModel {
        &mut self.model
    }

    /// (next iteration, optimizer steps), for checkpoints.
    pub fn counters(&self) -> (u64, u64) {
        (self.next_iteration, self.model.opt.step())
    }

    /// Restores [`LeaderParty::counters`] from a checkpoint.
    pub fn restore_counters(&mut self, next_iteration: u64, opt_step: u64) {
        self.next_iteration = next_iteration;
        self.model.opt.set_step(opt_step);
    }

    /// Metrics accumulated since the last [`LeaderParty::take_metrics`].
    pub fn metrics(&self) -> &BinaryMetrics {
        &self.metrics
    }

    pub fn take_metrics(&mut self) -> BinaryMetrics {
        std::mem::take(&mut self.metrics)
    }

    /// Checks the message against the leader's own batch: iteration order
    /// and batch digest (misaligned rows must never train silently).
    fn accept(&mut self, batch: &Batch, act: &pb::Activations) -> Result<(), TrainError> {
        if act.iteration != self.next_iteration {
            return Err(TrainError::WrongIteration {
                got: act.iteration,
                expected: self.next_iteration,
            });
        }
        let own = batch.digest();
        let theirs = wire::digest(act)?;
        if own != theirs {
            let first = batch.sources.first().copied();
            let last = batch.sources.last().copied();
            return Err(TrainError::Misaligned {
                iteration: act.iteration,
                ours: own.to_string(),
                theirs: theirs.to_string(),
                rows: match (first, last) {
                    (Some(a), Some(b)) => format!(
                        "block #{} record {} .. block #{} record {}",
                        a.block, a.record, b.block, b.record
                    ),
                    _ => "an empty batch".into(),
                },
            });
        }
        if batch.labels.len() != batch.rows {
            return Err(TrainError::Labels {
                labels: batch.labels.len(),
                rows: batch.rows,
            });
        }
        wire::decode_into(
            act.tensor.as_ref(),
            "follower activations",
            (batch.rows, self.peer_cols),
            &mut self.act,
        )?;
        Ok(())
    }

    /// One training step: returns the report and the gradient to send back
    /// (asking for no checkpoint).
    pub fn train_step(
        &mut self,
        batch: &Batch,
        act: &pb::Activations,
    ) -> Result<(StepReport, pb::Gradient), TrainError> {
        if !act.train {
            return Err(TrainError::NotTraining {
                iteration: act.iteration,
            });
        }
        self.accept(batch, act)?;
        let weights = (!batch.weights.is_empty()).then_some(&batch.weights[..]);
        let inp = tower_input(batch);
        let v = match self.mode {
            UpdateMode::Apply => self
                .model
                .train_step(&self.cx, &inp, &self.act, &batch.labels, weights)?,
            UpdateMode::Collect => self
                .model
                .collect_step(&self.cx, &inp, &self.act, &batch.labels, weights)?,
        };
        self.metrics.update(self.model.head.scores(), &batch.labels, weights);
        // A diverged model must not send a gradient whose non-finite entries
        // tell the follower which rows (and labels) blew up.
        if !v.loss.is_finite() || self.model.grad_for_follower().first_non_finite().is_some() {
            return Err(TrainError::Diverged {
                iteration: act.iteration,
            });
        }
        let g = pb::Gradient {
            iteration: act.iteration,
            tensor: Some(wire::encode(self.model.grad_for_follower())),
            checkpoint_step: 0,
        };
        self.next_iteration += 1;
        Ok((
            StepReport {
                iteration: act.iteration,
                loss: v.loss,
                rows: batch.rows,
            },
            g,
        ))
    }

    /// One evaluation step (forward only, no gradient).
    pub fn eval_step(&mut self, batch: &Batch, act: &pb::Activations) -> Result<StepReport, TrainError> {
        self.accept(batch, act)?;
        let weights = (!batch.weights.is_empty()).then_some(&batch.weights[..]);
        let v = self
            .model
            .eval_step(&self.cx, &tower_input(batch), &self.act, &batch.labels, weights)?;
        self.metrics.update(self.model.head.scores(), &batch.labels, weights);
        self.next_iteration += 1;
        Ok(StepReport {
            iteration: act.iteration,
            loss: v.loss,
            rows: batch.rows,
        })
    }

    /// Scores of the last step, one per row.
    pub fn scores(&self) -> &[f32] {
        self.model.head.scores()
    }
}
