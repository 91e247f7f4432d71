//! The in-process training loop: both parties in one process, exchanging
//! the same wire messages the network transport carries. Used by tests,
//! benchmarks and the in-process demo.

use vfl_data::{Batch, BatchSource};
use vfl_nn::{MetricValues, ModelSpec};

use crate::TrainError;
use crate::party::{FollowerParty, LeaderParty, StepReport};

/// Both parties, wired back to back.
#[derive(Debug)]
pub struct LocalTrainer {
    pub leader: LeaderParty,
    pub follower: FollowerParty,
    leader_batch: Batch,
    follower_batch: Batch,
}

/// Totals of a pass over the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassReport {
    pub steps: u64,
    pub examples: u64,
    pub mean_loss: f64,
    pub metrics: MetricValues,
}

impl LocalTrainer {
    /// Each party gets its own compute context of `threads` threads.
    pub fn new(spec: &ModelSpec, threads: usize) -> Result<Self, TrainError> {
        Ok(LocalTrainer {
            leader: LeaderParty::new(spec, threads)?,
            follower: FollowerParty::new(spec, threads)?,
            leader_batch: Batch::new(spec.leader.slots().len(), spec.leader.dense_columns().len()),
            follower_batch: Batch::new(spec.follower.slots().len(), spec.follower.dense_columns().len()),
        })
    }

    /// One training step on a pair of aligned batches.
    pub fn train_step(&mut self, leader: &Batch, follower: &Batch) -> Result<StepReport, TrainError> {
        let act = self.follower.forward(follower, true)?;
        let (report, grad) = self.leader.train_step(leader, &act)?;
        self.follower.apply_gradient(follower, &grad)?;
        Ok(report)
    }

    /// One evaluation step.
    pub fn eval_step(&mut self, leader: &Batch, follower: &Batch) -> Result<StepReport, TrainError> {
        let act = self.follower.forward(follower, false)?;
        self.leader.eval_step(leader, &act)
    }

    /// Runs over two aligned sources until both end (training or
    /// evaluation). `on_step` sees every step's report.
    pub fn run_pass(
        &mut self,
        leader: &mut dyn BatchSource,
        follower: &mut dyn BatchSource,
        batch_size: usize,
        train: bool,
        mut on_step: impl FnMut(&StepReport),
    ) -> Result<PassReport, TrainError> {
        self.leader.take_metrics();
        let (mut steps, mut examples, mut loss_sum) = (0u64, 0u64, 0f64);
        let mut lb = std::mem::take(&mut self.leader_batch);
        let mut fb = std::mem::take(&mut self.follower_batch);
        let result = loop {
            let nl = match leader.fill(&mut lb, batch_size) {
                Ok(n) => n,
                Err(e) => break Err(e.into()),
            };
            let nf = match follower.fill(&mut fb, batch_size) {
                Ok(n) => n,
                Err(e) => break Err(e.into()),
            };
            if nl != nf {
                break Err(TrainError::LocalRowCounts {
                    leader: nl,
                    follower: nf,
                    step: steps,
                });
            }
            if nl == 0 {
                break Ok(());
            }
            let r = if train {
                self.train_step(&lb, &fb)
            } else {
                self.eval_step(&lb, &fb)
            };
            match r {
                Ok(r) => {
                    steps += 1;
                    examples += r.rows as u64;
                    loss_sum += f64::from(r.loss) * r.rows as f64;
                    on_step(&r);
                }
                Err(e) => break Err(e),
            }
        };
        self.leader_batch = lb;
        self.follower_batch = fb;
        result?;
        Ok(PassReport {
            steps,
            examples,
            mean_loss: if examples == 0 { 0.0 } else { loss_sum / examples as f64 },
            metrics: self.leader.take_metrics().values(),
        })
    }
}
