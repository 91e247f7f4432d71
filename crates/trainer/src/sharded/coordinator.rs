//! The leader's coordinator (`vfl coordinator`): hands each epoch's data
//! blocks to the worker pairs on demand and paces the synchronous steps.
//!
//! [`Coordination`] is the protocol without I/O. Before every step each
//! leader worker reports where it stands ([`party_pb::Ready`]): it filled a
//! batch from its block, or its block ran out (and which), or it holds
//! none. When every awaited report is in, the coordinator finishes the
//! blocks that ran out and grants new ones **by worker index**
//! ([`Assigner::grant_in_order`]); a worker granted a block reports again.
//! When no worker waits for a block, the workers holding a batch are the
//! step's participants ([`party_pb::Go`]). No participant and every block
//! done ends the epoch. This is the in-process [`super::ShardedTrainer`]'s
//! loop step for step, so a run over processes equals it bitwise.
//!
//! [`run`] serves it to the leader's workers over RA-TLS (admitting only
//! the leader's own processes): a worker that leaves, or reports nothing
//! within the peer timeout, fails the job, named.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::mpsc;
use vfl_bridge::Status;
use vfl_bridge::party::{CoordinatorListener, StatusStream};
use vfl_bridge::party_pb::{self, assignment::Msg as AMsg, worker_status::Msg as WMsg};

use super::Event;
use super::state::StateDir;
use crate::TrainError;
use crate::assign::{AssignError, Assigner, Grant};
use crate::store::StoreError;

/// Refusals of the coordination protocol.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CoordError {
    #[error("a sharded run needs at least one worker pair and one epoch")]
    Empty,
    #[error("worker {worker}: there are only {workers} workers")]
    UnknownWorker { worker: usize, workers: usize },
    #[error("worker {worker} reported for step {got}, but the next step is {expected}")]
    WrongStep { worker: usize, got: u64, expected: u64 },
    #[error("worker {worker} reported, but no report of it is awaited in this round")]
    NotAwaited { worker: usize },
    #[error("worker {worker} has a batch but holds no block")]
    BatchWithoutBlock { worker: usize },
    #[error("worker {worker} holds block {index} but neither filled a batch from it nor finished it")]
    Stalled { worker: usize, index: usize },
    #[error("epoch {epoch}: no worker has data, but not every block is done")]
    EpochStalled { epoch: u32 },
    #[error("epoch {epoch}: no data (refusing to train on zero examples)")]
    NoData { epoch: u32 },
    #[error("worker {worker} reported after the run finished")]
    Finished { worker: usize },
    #[error("worker {worker} reported its end-of-job work before the run finished")]
    NotFinished { worker: usize },
    #[error("worker {worker} ended at step {got}, but the run finished at step {expected}")]
    WrongEnd { worker: usize, got: u64, expected: u64 },
    #[error("worker {worker} said goodbye before the job's end was recorded")]
    NotCommitted { worker: usize },
    #[error("the coordinator's saved position: {why}")]
    BadState { why: String },
    #[error(transparent)]
    Assign(#[from] AssignError),
}

/// Whom a coordinator's message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    One(usize),
    All,
}

/// One epoch's totals, as the workers reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpochTotals {
    pub epoch: u32,
    pub steps: u64,
    pub examples: u64,
    pub loss_sum: f64,
}

/// The coordinator's state machine.
#[derive(Debug)]
pub struct Coordination {
    workers: usize,
    epochs: u32,
    seed: Option<u64>,
    ids: Vec<String>,
    epoch: u32,
    assign: Assigner,
    /// Steps applied.
    steps: u64,
    totals: EpochTotals,
    /// Reports awaited in this round, and those in.
    awaiting: BTreeSet<usize>,
    round: BTreeMap<usize, party_pb::Ready>,
    /// Within the step being prepared: who has a batch, who got no block.
    has: Vec<bool>,
    idle: Vec<bool>,
    done: bool,
    /// The epoch's block order.
    order: Vec<String>,
    /// Per worker: rows of its current block trained so far.
    rows: Vec<u64>,
    /// Save the position every this many steps (0: never).
    every: u64,
    /// No grant yet in the step being prepared.
    first_round: bool,
    /// The position to save before anything of this round is sent.
    checkpoint: Option<CoordState>,
    /// The run's id (exports are bound to it).
    run: String,
    /// After the last step: each pair's end-of-job work, then the commit.
    end: End,
}

/// Where a run is after its last step.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Training (the last step is not known yet).
    Training,
    /// `Finished` is out: the pairs that did their end-of-job work (the
    /// held-out pass and the export, for pair 0).
    Finishing(BTreeSet<usize>),
    /// The job's end is recorded (`Committed` is out): the pairs that have
    /// nothing left to do.
    Committed(BTreeSet<usize>),
}

/// The coordinator's saved position: after step `steps`, before the next
/// step's blocks are finished or granted. With every shard's state of the
/// same step it is the job's checkpoint.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CoordState {
    pub steps: u64,
    pub epoch: u32,
    pub assign: crate::assign::AssignState,
    /// Per worker: rows of its block trained through step `steps`.
    pub rows: Vec<u64>,
    /// The run's id.
    pub run: String,
    /// The job's end: every pair's end-of-job work was done after step
    /// `steps` (nothing is trained again; a restarted coordinator answers
    /// with `Committed`).
    #[serde(default)]
    pub finished: bool,
}

impl Coordination {
    /// A run of `epochs` epochs over the blocks `ids` (each epoch shuffled
    /// from `seed` plus the epoch, as a single pair's leader does) for
    /// `workers` worker pairs.
    pub fn new(workers: usize, epochs: u32, seed: Option<u64>, ids: Vec<String>) -> Result<Self, CoordError> {
        if workers == 0 || epochs == 0 {
            return Err(CoordError::Empty);
        }
        let first = super::block_order(&ids, seed, 0);
        let assign = Assigner::new(first.clone(), workers);
        Ok(Coordination {
            workers,
            epochs,
            seed,
            ids,
            epoch: 0,
            assign,
            steps: 0,
            totals: EpochTotals::default(),
            awaiting: (0..workers).collect(),
            round: BTreeMap::new(),
            has: vec![false; workers],
            idle: vec![false; workers],
            done: false,
            order: first,
            rows: vec![0; workers],
            every: 0,
            first_round: true,
            checkpoint: None,
            run: String::new(),
            end: End::Training,
        })
    }

    /// The run's id (a fresh run draws one; a restored one keeps its own).
    pub fn with_run(mut self, run: String) -> Self {
        self.run = run;
        self
    }

    /// Saves the position every `every` steps (0: never); see
    /// [`Coordination::take_checkpoint`].
    pub fn with_checkpoints(mut self, every: u64) -> Self {
        self.every = every;
        self
    }

    /// Resumes from a saved position (of a run of the same shape).
    pub fn restore(mut self, st: &CoordState) -> Result<Self, CoordError> {
        if st.finished {
            // The job's end: only its step and run matter.
            if st.rows.len() != self.workers || st.epoch != self.epochs {
                return Err(CoordError::BadState {
                    why: format!(
                        "the end of a run of {} workers and {} epochs, for a run of {} workers and {} epochs",
                        st.rows.len(),
                        st.epoch,
                        self.workers,
                        self.epochs
                    ),
                });
            }
            self.epoch = st.epoch;
            self.steps = st.steps;
            self.rows.clone_from(&st.rows);
            self.run.clone_from(&st.run);
            self.done = true;
            self.awaiting.clear();
            self.end = End::Committed(BTreeSet::new());
            return Ok(self);
        }
        if st.rows.len() != self.workers || st.epoch >= self.epochs {
            return Err(CoordError::BadState {
                why: format!(
                    "a position of {} workers in epoch {}, for a run of {} workers and {} epochs",
                    st.rows.len(),
                    st.epoch,
                    self.workers,
                    self.epochs
                ),
            });
        }
        self.order = super::block_order(&self.ids, self.seed, st.epoch);
        self.assign = Assigner::restore(self.order.clone(), self.workers, &st.assign)?;
        self.epoch = st.epoch;
        self.steps = st.steps;
        self.rows.clone_from(&st.rows);
        self.run.clone_from(&st.run);
        self.totals = EpochTotals {
            epoch: st.epoch,
            ..EpochTotals::default()
        };
        Ok(self)
    }

    /// The position now (saved at a fresh start, so that a restarted
    /// coordinator keeps the run's id).
    pub fn position(&self) -> CoordState {
        CoordState {
            steps: self.steps,
            epoch: self.epoch,
            assign: self.assign.state(),
            rows: self.rows.clone(),
            run: self.run.clone(),
            finished: matches!(self.end, End::Committed(_)),
        }
    }

    /// What worker `worker` resumes with: the step, the block it held and
    /// the rows of it already trained.
    pub fn plan(&self, worker: usize) -> party_pb::RunPlan {
        let block = self.assign.held_by(worker).map(|(index, lease)| party_pb::BlockGrant {
            epoch: self.epoch,
            index: index as u64,
            lease,
            block_id: self.order[index].clone(),
        });
        party_pb::RunPlan {
            epochs: self.epochs,
            resume_step: self.steps,
            skip_rows: if block.is_some() { self.rows[worker] } else { 0 },
            block,
            checkpoint_steps: self.every,
            run_id: self.run.clone(),
        }
    }

    /// The position to save now, before this round's messages go out (a
    /// checkpoint step's every report is in: every shard of both parties
    /// holds that step).
    pub fn take_checkpoint(&mut self) -> Option<CoordState> {
        self.checkpoint.take()
    }

    /// Steps applied.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Worker `worker`'s pair did its end-of-job work after `steps` steps.
    /// With every pair's in, the job's end is decided: returns the record
    /// to save (the commit point) before [`Coordination::committed`] goes
    /// to every worker.
    pub fn end_of_pair(&mut self, worker: usize, steps: u64) -> Result<Option<CoordState>, CoordError> {
        if worker >= self.workers {
            return Err(CoordError::UnknownWorker {
                worker,
                workers: self.workers,
            });
        }
        let End::Finishing(ended) = &mut self.end else {
            return Err(if matches!(self.end, End::Training) {
                CoordError::NotFinished { worker }
            } else {
                CoordError::NotAwaited { worker }
            });
        };
        if steps != self.steps {
            return Err(CoordError::WrongEnd {
                worker,
                got: steps,
                expected: self.steps,
            });
        }
        if !ended.insert(worker) {
            return Err(CoordError::NotAwaited { worker });
        }
        if ended.len() < self.workers {
            return Ok(None);
        }
        self.end = End::Committed(BTreeSet::new());
        Ok(Some(self.position()))
    }

    /// Worker `worker`'s pair is still at its end-of-job work (a
    /// heartbeat, after `Finished`).
    pub fn working(&self, worker: usize) -> Result<(), CoordError> {
        if worker >= self.workers {
            return Err(CoordError::UnknownWorker {
                worker,
                workers: self.workers,
            });
        }
        match self.end {
            End::Training => Err(CoordError::NotFinished { worker }),
            End::Finishing(_) | End::Committed(_) => Ok(()),
        }
    }

    /// The job's end is recorded.
    pub fn is_committed(&self) -> bool {
        matches!(self.end, End::Committed(_))
    }

    /// The message that ends every worker's job once it is recorded.
    pub fn committed(&self) -> party_pb::Committed {
        party_pb::Committed {
            steps: self.steps,
            run_id: self.run.clone(),
        }
    }

    /// Worker `worker`'s pair has nothing left to do (again, after a
    /// restart: that is no error). Returns whether every pair is over.
    pub fn bye(&mut self, worker: usize) -> Result<bool, CoordError> {
        if worker >= self.workers {
            return Err(CoordError::UnknownWorker {
                worker,
                workers: self.workers,
            });
        }
        let End::Committed(byes) = &mut self.end else {
            return Err(CoordError::NotCommitted { worker });
        };
        byes.insert(worker);
        Ok(byes.len() == self.workers)
    }

    /// Every pair is over: the coordinator may end.
    pub fn is_over(&self) -> bool {
        matches!(&self.end, End::Committed(b) if b.len() == self.workers)
    }

    /// The workers still owing their end-of-job report or their goodbye.
    pub fn owing(&self) -> Vec<usize> {
        let has = match &self.end {
            End::Training => return self.awaiting(),
            End::Finishing(s) | End::Committed(s) => s,
        };
        (0..self.workers).filter(|w| !has.contains(w)).collect()
    }

    /// The workers whose report is awaited.
    pub fn awaiting(&self) -> Vec<usize> {
        self.awaiting.iter().copied().collect()
    }

    /// Worker `worker`'s report; returns what to send, in order.
    pub fn ready(&mut self, worker: usize, r: &party_pb::Ready) -> Result<Vec<(To, AMsg)>, CoordError> {
        if self.done {
            return Err(CoordError::Finished { worker });
        }
        if worker >= self.workers {
            return Err(CoordError::UnknownWorker {
                worker,
                workers: self.workers,
            });
        }
        if r.step != self.steps + 1 {
            return Err(CoordError::WrongStep {
                worker,
                got: r.step,
                expected: self.steps + 1,
            });
        }
        if !self.awaiting.remove(&worker) {
            return Err(CoordError::NotAwaited { worker });
        }
        self.totals.examples = self.totals.examples.saturating_add(r.rows);
        self.totals.loss_sum += r.loss_sum;
        self.rows[worker] = self.rows[worker].saturating_add(r.rows);
        self.round.insert(worker, *r);
        if !self.awaiting.is_empty() {
            return Ok(Vec::new());
        }
        if self.first_round && self.every > 0 && self.steps > 0 && self.steps.is_multiple_of(self.every) {
            self.checkpoint = Some(CoordState {
                steps: self.steps,
                epoch: self.epoch,
                assign: self.assign.state(),
                rows: self.rows.clone(),
                run: self.run.clone(),
                finished: false,
            });
        }
        self.first_round = false;
        self.resolve()
    }

    /// Every awaited report is in: finish, grant, or decide the step.
    fn resolve(&mut self) -> Result<Vec<(To, AMsg)>, CoordError> {
        let round = std::mem::take(&mut self.round);
        for (&w, r) in &round {
            if r.finished {
                self.assign.finish(w, r.index as usize, r.lease)?;
            }
        }
        let mut needing = Vec::new();
        for (&w, r) in &round {
            match (r.has_batch, self.assign.held_by(w)) {
                (true, Some(_)) => self.has[w] = true,
                (true, None) => return Err(CoordError::BatchWithoutBlock { worker: w }),
                (false, Some((index, _))) => return Err(CoordError::Stalled { worker: w, index }),
                (false, None) if !self.idle[w] => needing.push(w),
                (false, None) => {}
            }
        }
        let mut out = Vec::new();
        for (w, g) in self.assign.grant_in_order(&needing)? {
            match g {
                Grant::Block { index, id, lease } => {
                    self.awaiting.insert(w);
                    self.rows[w] = 0;
                    out.push((
                        To::One(w),
                        AMsg::Grant(party_pb::BlockGrant {
                            epoch: self.epoch,
                            index: index as u64,
                            lease,
                            block_id: id,
                        }),
                    ));
                }
                Grant::Wait | Grant::EpochDone => {
                    self.idle[w] = true;
                    out.push((To::One(w), AMsg::None(party_pb::NoBlock {})));
                }
            }
        }
        if !self.awaiting.is_empty() {
            return Ok(out);
        }
        // Nobody waits for a block: the step, or the epoch's end.
        let participants: Vec<u32> = (0..self.workers).filter(|&w| self.has[w]).map(|w| w as u32).collect();
        self.has.iter_mut().for_each(|h| *h = false);
        self.idle.iter_mut().for_each(|i| *i = false);
        self.awaiting = (0..self.workers).collect();
        self.first_round = true;
        if !participants.is_empty() {
            self.steps += 1;
            self.totals.steps += 1;
            out.push((
                To::All,
                AMsg::Go(party_pb::Go {
                    step: self.steps,
                    participants,
                }),
            ));
            return Ok(out);
        }
        if !self.assign.epoch_done() {
            return Err(CoordError::EpochStalled { epoch: self.epoch });
        }
        if self.totals.steps == 0 {
            return Err(CoordError::NoData { epoch: self.epoch });
        }
        out.push((
            To::All,
            AMsg::EpochEnd(party_pb::EpochEnd {
                epoch: self.epoch,
                steps: self.totals.steps,
            }),
        ));
        self.epoch += 1;
        if self.epoch == self.epochs {
            self.done = true;
            self.awaiting.clear();
            self.end = End::Finishing(BTreeSet::new());
            out.push((To::All, AMsg::Finished(party_pb::Finished { steps: self.steps })));
        } else {
            self.order = super::block_order(&self.ids, self.seed, self.epoch);
            self.assign = Assigner::new(self.order.clone(), self.workers);
        }
        Ok(out)
    }

    /// The totals of the epoch that ended last (or is running), reset for
    /// the next.
    pub fn take_totals(&mut self) -> EpochTotals {
        let next = EpochTotals {
            epoch: self.epoch,
            ..EpochTotals::default()
        };
        std::mem::replace(&mut self.totals, next)
    }
}

/// What the coordinator serves.
#[derive(Clone)]
pub struct CoordinatorConfig {
    pub workers: usize,
    pub epochs: u32,
    pub seed: Option<u64>,
    /// The leader's data blocks (the follower's have the same ids).
    pub block_ids: Vec<String>,
    pub model_fingerprint: String,
    pub batch_size: usize,
    /// How long to wait for the workers to register, and for a report.
    pub peer_timeout: Duration,
    /// Where the position is saved, and every how many steps (0: never;
    /// the shards' `--checkpoint-steps` must be the same).
    pub state: Option<StateDir>,
    pub checkpoint_every: u64,
    /// How often a lost worker may restart the job before it fails.
    pub max_restarts: u32,
    /// Called at each milestone (a checkpoint once it is saved, the end of
    /// training once `Finished` is out, the job's end once it is saved).
    pub on_milestone: Option<std::sync::Arc<dyn Fn(Milestone) + Send + Sync>>,
}

/// A point of a coordinated run worth telling (the CLI prints them; the
/// demo's fault injection waits for them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    /// The position after this step is saved: a checkpoint of the job.
    Checkpoint(u64),
    /// Training ended after this step; the pairs do their end-of-job work.
    Finished(u64),
    /// The job's end after this step is saved (the commit point).
    Committed(u64),
}

/// How a coordinated run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct CoordOutcome {
    pub steps: u64,
    /// The epochs' totals (an epoch interrupted by a restart counts from
    /// the checkpoint it resumed at).
    pub epochs: Vec<EpochTotals>,
    /// How often the job restarted from a checkpoint (a lost worker, or
    /// this coordinator starting from its saved position).
    pub restarts: u32,
    /// The job's end was already recorded when this coordinator started
    /// (it only answered the workers that came).
    pub ended_before: bool,
}

struct Conn {
    worker: Option<usize>,
    tx: mpsc::Sender<Result<party_pb::Assignment, Status>>,
    reader: tokio::task::JoinHandle<()>,
}

fn fail(why: String) -> TrainError {
    TrainError::Bridge(vfl_bridge::BridgeError::Lost(why))
}

/// The machine at the newest saved position, or at the start.
fn resume(cfg: &CoordinatorConfig) -> Result<Coordination, TrainError> {
    let fresh = Coordination::new(cfg.workers, cfg.epochs, cfg.seed, cfg.block_ids.clone())?
        .with_checkpoints(cfg.checkpoint_every)
        .with_run(vfl_bridge::handshake::new_run_id());
    let Some(sd) = &cfg.state else { return Ok(fresh) };
    let Some(&step) = sd.steps().last() else {
        return Ok(fresh);
    };
    let bytes = sd.load_bytes(step)?.ok_or_else(|| CoordError::BadState {
        why: format!("its saved position of step {step} disappeared"),
    })?;
    let st: CoordState = serde_json::from_slice(&bytes).map_err(|e| CoordError::BadState {
        why: format!("step {step}: {e}"),
    })?;
    if st.steps != step {
        return Err(CoordError::BadState {
            why: format!("the file of step {step} holds step {}", st.steps),
        }
        .into());
    }
    Ok(fresh.restore(&st)?)
}

/// Serves the run on `listener` until it is over; returns its steps,
/// every epoch's totals and the restarts.
///
/// Training: a worker that leaves restarts the job from its last
/// checkpoint (every worker is told, the position is reloaded, and all N
/// must register again within the peer timeout; at most `max_restarts`
/// times). After the last step (`Finished`) every pair does its end-of-job
/// work (the held-out pass and the export, for pair 0) and reports it; a
/// worker lost before every report is in still restarts the job. With
/// every report in, the job's end is saved (the commit point: nothing is
/// trained again, a restarted coordinator answers every registration with
/// `Committed`) and `Committed` goes out; the coordinator then waits (each
/// time at most the peer timeout) for every pair's goodbye, answering a
/// worker that registers again with `Committed`. Fails, telling every
/// worker, when a worker breaks the protocol, when the workers do not
/// (re)register in time, or when none reports within the peer timeout.
pub async fn run(cfg: CoordinatorConfig, mut listener: CoordinatorListener) -> Result<CoordOutcome, TrainError> {
    // Started again after the job ended and every pair said goodbye:
    // nothing is left to do.
    if let Some(sd) = &cfg.state
        && let Some(end) = sd.load_end()?
        && end.complete
    {
        tracing::info!(step = end.steps, "the job had ended, every pair's part too");
        let _ = tokio::time::timeout(cfg.peer_timeout, listener.shutdown()).await;
        return Ok(CoordOutcome {
            steps: end.steps,
            epochs: Vec::new(),
            restarts: 0,
            ended_before: true,
        });
    }
    let mut machine = resume(&cfg)?;
    let ended_before = machine.is_committed();
    if ended_before {
        tracing::info!(
            step = machine.steps(),
            "the job's end is recorded: answering the workers that come"
        );
    } else if machine.steps() > 0 {
        tracing::info!(step = machine.steps(), "resuming from the saved position");
    }
    // A fresh run's start is a checkpoint too (its run id survives a
    // restart of this process before the first one).
    if cfg.state.as_ref().is_some_and(|sd| sd.steps().is_empty()) {
        save_position(&cfg, &machine.position())?;
    }
    let (ev_tx, mut events) = mpsc::channel::<Event<WMsg>>(64);
    let mut conns: BTreeMap<u64, Conn> = BTreeMap::new();
    let mut next_conn = 0u64;
    let mut registered = 0usize;
    // A coordinator that starts from a saved position restarts the job.
    let mut restarts = u32::from(machine.steps() > 0 && !ended_before);
    let mut epochs = Vec::new();
    let deadline = tokio::time::sleep(cfg.peer_timeout);
    tokio::pin!(deadline);
    let result: Result<(), TrainError> = loop {
        if machine.is_over() {
            break Ok(());
        }
        tokio::select! {
            s = listener.streams.recv() => {
                let Some(StatusStream { inbound, outbound, .. }) = s else {
                    break Err(fail("the coordinator's listener stopped".into()));
                };
                next_conn += 1;
                let conn = next_conn;
                let reader = super::spawn_reader(conn, inbound, ev_tx.clone(), |m: party_pb::WorkerStatus| m.msg);
                conns.insert(conn, Conn { worker: None, tx: outbound, reader });
            }
            Some(reason) = listener.rejections.recv() => {
                tracing::warn!(%reason, "refused a connection's evidence");
            }
            Some(ev) = events.recv() => match ev {
                Event::Closed(conn, why) => {
                    if let Some(c) = conns.remove(&conn) && let Some(w) = c.worker {
                        if machine.is_committed() {
                            // Nothing is trained again: it may come back for
                            // the end, or not.
                            tracing::info!(worker = w, %why, "a worker left after the job's end");
                            continue;
                        }
                        match restart(&cfg, &mut conns, &mut restarts, (w, &why)) {
                            Ok(m) => machine = m,
                            Err(e) => break Err(e),
                        }
                        registered = 0;
                        deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                    }
                }
                Event::Message(conn, _) if !conns.contains_key(&conn) => {}
                Event::Message(conn, WMsg::Register(r)) if r.if_ended && !machine.is_committed() => {
                    // Only asking whether the job has ended: it has not.
                    if let Some(c) = conns.remove(&conn) {
                        let _ = c.tx.try_send(Ok(failure("the job's end is not recorded")));
                        c.reader.abort();
                    }
                }
                Event::Message(conn, WMsg::Register(r)) => {
                    if machine.is_committed() {
                        // After the end a worker that registers again
                        // replaces its earlier stream (whose close may still
                        // be on the way).
                        let w = r.worker as usize;
                        for c in super::drain(&mut conns, |c| c.worker == Some(w)) {
                            c.reader.abort();
                        }
                    }
                    match check_register(&cfg, &conns, conn, &r) {
                        Ok(w) => {
                            if let Some(c) = conns.get_mut(&conn) {
                                c.worker = Some(w);
                            }
                            deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                            if machine.is_committed() {
                                tracing::info!(worker = w, "worker registered after the job's end");
                                if let Some(c) = conns.get(&conn) {
                                    let _ = c.tx.try_send(Ok(party_pb::Assignment {
                                        msg: Some(AMsg::Committed(machine.committed())),
                                    }));
                                }
                                continue;
                            }
                            registered += 1;
                            tracing::info!(worker = w, "worker registered");
                            if registered == cfg.workers {
                                for c in conns.values() {
                                    let Some(w) = c.worker else { continue };
                                    let plan = AMsg::Plan(machine.plan(w));
                                    let _ = c.tx.try_send(Ok(party_pb::Assignment { msg: Some(plan) }));
                                }
                            }
                        }
                        Err((why, fatal)) => {
                            tracing::error!(%why, "refusing a worker");
                            if let Some(c) = conns.remove(&conn) {
                                let msg = if fatal {
                                    party_pb::Assignment {
                                        msg: Some(AMsg::Fatal(vfl_bridge::sanitize(&why, 1000))),
                                    }
                                } else {
                                    failure(&why)
                                };
                                let _ = c.tx.try_send(Ok(msg));
                                c.reader.abort();
                            }
                        }
                    }
                }
                Event::Message(conn, msg) => {
                    let Some(w) = conns.get(&conn).and_then(|c| c.worker) else {
                        tracing::error!("a report before Register; dropping the connection");
                        if let Some(c) = conns.remove(&conn) {
                            c.reader.abort();
                        }
                        continue;
                    };
                    if registered < cfg.workers && !machine.is_committed() {
                        break Err(fail(format!("worker {w} reported before every worker registered")));
                    }
                    deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                    let outs = match msg {
                        WMsg::Ready(r) => machine.ready(w, &r),
                        WMsg::Finished(f) => match machine.end_of_pair(w, f.steps) {
                            Ok(None) => continue,
                            Ok(Some(end)) => {
                                // The commit point: saved before anyone hears of it.
                                if let Err(e) = save_position(&cfg, &end) {
                                    break Err(e);
                                }
                                tracing::info!(step = end.steps, "the job's end is recorded");
                                milestone(&cfg, Milestone::Committed(end.steps));
                                Ok(vec![(To::All, AMsg::Committed(machine.committed()))])
                            }
                            Err(e) => Err(e),
                        },
                        WMsg::Working(f) => match machine.working(w) {
                            Ok(()) => {
                                // Relayed to the workers waiting for the end
                                // (a heartbeat: one that cannot take it now
                                // will take the next).
                                let msg = party_pb::Assignment { msg: Some(AMsg::Working(f)) };
                                for c in conns.values().filter(|c| c.worker.is_some_and(|o| o != w)) {
                                    let _ = c.tx.try_send(Ok(msg.clone()));
                                }
                                continue;
                            }
                            Err(e) => Err(e),
                        },
                        WMsg::Bye(_) => match machine.bye(w) {
                            Ok(_) => {
                                // Ending its stream tells it the goodbye is taken.
                                if let Some(c) = conns.remove(&conn) {
                                    c.reader.abort();
                                }
                                continue;
                            }
                            Err(e) => Err(e),
                        },
                        // Both kinds are matched above.
                        WMsg::Register(_) => Err(CoordError::NotAwaited { worker: w }),
                    };
                    let outs = match outs {
                        Ok(o) => o,
                        // After the end is recorded nothing fails the job:
                        // only the connection that broke the protocol goes.
                        Err(e) if machine.is_committed() => {
                            tracing::warn!(worker = w, error = %e, "dropping a worker that broke the protocol after the job's end");
                            if let Some(c) = conns.remove(&conn) {
                                let _ = c.tx.try_send(Ok(failure(&e.to_string())));
                                c.reader.abort();
                            }
                            continue;
                        }
                        Err(e) => break Err(e.into()),
                    };
                    // The position is saved before anything of this round
                    // goes out.
                    if let Some(ck) = machine.take_checkpoint() {
                        if let Err(e) = save_position(&cfg, &ck) {
                            break Err(e);
                        }
                        if cfg.state.is_some() {
                            milestone(&cfg, Milestone::Checkpoint(ck.steps));
                        }
                    }
                    let ends = outs.iter().find_map(|(_, m)| match m {
                        AMsg::Finished(f) => Some(f.steps),
                        _ => None,
                    });
                    match deliver(&conns, outs, &mut machine, &mut epochs) {
                        Ok(()) => {}
                        // Its process is gone (its Closed event is still on
                        // the way): a lost worker, unless the end is recorded.
                        Err(Undelivered::Gone(_)) if machine.is_committed() => {}
                        Err(Undelivered::Gone(w)) => {
                            match restart(&cfg, &mut conns, &mut restarts, (w, "its stream is closed")) {
                                Ok(m) => machine = m,
                                Err(e) => break Err(e),
                            }
                            registered = 0;
                            deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                            continue;
                        }
                        // After the record it only loses its connection.
                        Err(Undelivered::Stalled(w)) if machine.is_committed() => {
                            tracing::warn!(worker = w, "dropping a worker that does not read, after the job's end");
                            for c in super::drain(&mut conns, |c| c.worker == Some(w)) {
                                c.reader.abort();
                            }
                        }
                        Err(Undelivered::Stalled(w)) => {
                            break Err(fail(format!("worker {w} does not read its assignments")));
                        }
                    }
                    if let Some(t) = ends {
                        milestone(&cfg, Milestone::Finished(t));
                    }
                }
            },
            () = &mut deadline => {
                if machine.is_committed() {
                    tracing::warn!(
                        workers = ?machine.owing(),
                        "no goodbye from these workers within the peer timeout; the job's end is recorded, stopping"
                    );
                    break Ok(());
                }
                break Err(fail(if registered < cfg.workers {
                    format!(
                        "{} of {} workers registered within {} s",
                        registered,
                        cfg.workers,
                        cfg.peer_timeout.as_secs()
                    )
                } else if machine.is_done() {
                    format!(
                        "no end-of-job report from workers {:?} within {} s",
                        machine.owing(),
                        cfg.peer_timeout.as_secs()
                    )
                } else {
                    format!(
                        "no report from workers {:?} for step {} within {} s",
                        machine.awaiting(),
                        machine.steps() + 1,
                        cfg.peer_timeout.as_secs()
                    )
                }));
            }
        }
    };
    if let Err(e) = &result {
        // The job has failed: retrying cannot help.
        let msg = party_pb::Assignment {
            msg: Some(AMsg::Fatal(vfl_bridge::sanitize(&e.to_string(), 1000))),
        };
        for c in conns.values() {
            let _ = c.tx.try_send(Ok(msg.clone()));
        }
    }
    for c in conns.values() {
        c.reader.abort();
    }
    drop(conns);
    if result.is_ok()
        && machine.is_over()
        && let Some(sd) = &cfg.state
    {
        // Every pair said goodbye: started again, it ends at once (with
        // goodbyes owed it answers the workers again).
        let end = crate::sharded::state::JobEnd {
            run: machine.committed().run_id,
            steps: machine.steps(),
            complete: true,
            done: Vec::new(),
        };
        if let Err(e) = sd.save_end(&end) {
            tracing::warn!(error = %e, "could not record the job's end");
        }
    }
    if tokio::time::timeout(cfg.peer_timeout, listener.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the coordinator's server did not stop in time");
    }
    result.map(|()| CoordOutcome {
        steps: machine.steps(),
        epochs,
        restarts,
        ended_before,
    })
}

/// Saves the coordinator's position (a checkpoint, or the job's end).
fn save_position(cfg: &CoordinatorConfig, st: &CoordState) -> Result<(), TrainError> {
    let Some(sd) = &cfg.state else { return Ok(()) };
    let json = serde_json::to_vec(st).map_err(StoreError::encode("coordinator position"))?;
    sd.save_bytes(st.steps, &json)
}

fn milestone(cfg: &CoordinatorConfig, m: Milestone) {
    if let Some(f) = &cfg.on_milestone {
        f(m);
    }
}

/// Why a message did not reach a worker.
enum Undelivered {
    /// Its stream is closed: the worker's process is gone.
    Gone(usize),
    /// Its queue is full: it does not read.
    Stalled(usize),
}

/// Sends the machine's messages, without waiting.
fn deliver(
    conns: &BTreeMap<u64, Conn>,
    outs: Vec<(To, AMsg)>,
    machine: &mut Coordination,
    epochs: &mut Vec<EpochTotals>,
) -> Result<(), Undelivered> {
    for (to, msg) in outs {
        if let AMsg::EpochEnd(e) = &msg {
            let t = machine.take_totals();
            tracing::info!(
                epoch = e.epoch,
                steps = t.steps,
                examples = t.examples,
                mean_loss = t.loss_sum / t.examples.max(1) as f64,
                "epoch done"
            );
            epochs.push(t);
        }
        for c in conns.values() {
            let Some(w) = c.worker else { continue };
            if to != To::All && to != To::One(w) {
                continue;
            }
            match c.tx.try_send(Ok(party_pb::Assignment { msg: Some(msg.clone()) })) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Undelivered::Gone(w)),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(Undelivered::Stalled(w)),
            }
        }
    }
    Ok(())
}

/// Worker `lost` is gone: every other registered worker is told and
/// dropped, and the job restarts from the newest saved position (all N
/// must register again). Fails after `max_restarts`.
fn restart(
    cfg: &CoordinatorConfig,
    conns: &mut BTreeMap<u64, Conn>,
    restarts: &mut u32,
    (lost, why): (usize, &str),
) -> Result<Coordination, TrainError> {
    *restarts += 1;
    if *restarts > cfg.max_restarts {
        return Err(fail(format!(
            "worker {lost} was lost ({why}) after {} restarts of the job; giving up",
            cfg.max_restarts
        )));
    }
    let msg = failure(&format!(
        "worker {lost} was lost ({why}); the job restarts from its last checkpoint"
    ));
    for c in super::drain(conns, |c| c.worker.is_some()) {
        let _ = c.tx.try_send(Ok(msg.clone()));
        c.reader.abort();
    }
    let machine = resume(cfg)?;
    tracing::warn!(
        worker = lost,
        %why,
        step = machine.steps(),
        "worker lost: the job restarts from its last checkpoint"
    );
    Ok(machine)
}

fn failure(reason: &str) -> party_pb::Assignment {
    party_pb::Assignment {
        msg: Some(AMsg::Failure(vfl_bridge::sanitize(reason, 1000))),
    }
}

/// The worker index a registration takes, or why it is refused and
/// whether retrying cannot help (a worker of another run's shape).
fn check_register(
    cfg: &CoordinatorConfig,
    conns: &BTreeMap<u64, Conn>,
    conn: u64,
    r: &party_pb::Register,
) -> Result<usize, (String, bool)> {
    if conns.get(&conn).is_some_and(|c| c.worker.is_some()) {
        return Err(("registered twice".into(), true));
    }
    if r.model_fingerprint != cfg.model_fingerprint {
        return Err((
            format!(
                "model {} but this run's is {}",
                vfl_bridge::sanitize(&r.model_fingerprint, 64),
                cfg.model_fingerprint
            ),
            true,
        ));
    }
    if r.workers as usize != cfg.workers || r.batch_size as usize != cfg.batch_size {
        return Err((
            format!(
                "{} workers with batch {}, but this run has {} with batch {}",
                r.workers, r.batch_size, cfg.workers, cfg.batch_size
            ),
            true,
        ));
    }
    let w = r.worker as usize;
    if w >= cfg.workers || conns.values().any(|c| c.worker == Some(w)) {
        // Taken: perhaps by its own previous connection, not yet closed.
        return Err((format!("worker index {w} is out of range or taken"), w >= cfg.workers));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("b{i}")).collect()
    }

    fn ready(step: u64) -> party_pb::Ready {
        party_pb::Ready {
            step,
            ..Default::default()
        }
    }

    fn with_batch(step: u64) -> party_pb::Ready {
        party_pb::Ready {
            step,
            has_batch: true,
            ..Default::default()
        }
    }

    fn finished(step: u64, index: u64, lease: u64) -> party_pb::Ready {
        party_pb::Ready {
            step,
            finished: true,
            index,
            lease,
            ..Default::default()
        }
    }

    fn grant(m: &AMsg) -> (u64, u64) {
        match m {
            AMsg::Grant(g) => (g.index, g.lease),
            other => panic!("not a grant: {other:?}"),
        }
    }

    #[test]
    fn grants_by_worker_index_whatever_the_report_order() {
        let mut c = Coordination::new(2, 1, None, ids(3)).unwrap();
        assert!(c.ready(1, &ready(1)).unwrap().is_empty());
        let out = c.ready(0, &ready(1)).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0, grant(&out[0].1)), (To::One(0), (0, 1)));
        assert_eq!((out[1].0, grant(&out[1].1)), (To::One(1), (1, 2)));
        assert!(c.ready(1, &with_batch(1)).unwrap().is_empty());
        let out = c.ready(0, &with_batch(1)).unwrap();
        assert_eq!(
            out,
            vec![(
                To::All,
                AMsg::Go(party_pb::Go {
                    step: 1,
                    participants: vec![0, 1]
                })
            )]
        );
        assert_eq!(c.steps(), 1);
    }

    /// Uneven speeds: worker 1's blocks run out at once, worker 0's later;
    /// every block is trained exactly once and the epoch ends when all are.
    #[test]
    fn every_block_once_under_uneven_speeds() {
        let mut c = Coordination::new(2, 1, Some(7), ids(5)).unwrap();
        let mut held: [Option<(u64, u64)>; 2] = [None, None];
        let mut trained = Vec::new();
        // Worker 0's blocks last 3 steps, worker 1's 1 step.
        let mut left = [0u32; 2];
        let mut step = 1;
        let mut out = {
            c.ready(0, &ready(1)).unwrap();
            c.ready(1, &ready(1)).unwrap()
        };
        loop {
            let mut reports = Vec::new();
            let mut go = None;
            for (to, m) in out {
                match (to, m) {
                    (To::One(w), AMsg::Grant(g)) => {
                        trained.push(g.block_id.clone());
                        held[w] = Some((g.index, g.lease));
                        left[w] = if w == 0 { 3 } else { 1 };
                        reports.push((w, with_batch(step)));
                    }
                    (To::One(_), AMsg::None(_)) => {}
                    (To::All, AMsg::Go(g)) => go = Some(g),
                    (To::All, AMsg::EpochEnd(_)) => {}
                    (To::All, AMsg::Finished(_)) => {
                        let mut sorted = trained.clone();
                        sorted.sort();
                        assert_eq!(sorted, ids(5));
                        return;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            out = Vec::new();
            for (w, r) in reports {
                out.extend(c.ready(w, &r).unwrap());
            }
            if let Some(g) = go {
                step = g.step + 1;
                // After the step: each participant used one batch.
                for w in 0..2 {
                    let r = match held[w] {
                        Some((index, lease)) => {
                            left[w] -= 1;
                            if left[w] == 0 {
                                held[w] = None;
                                finished(step, index, lease)
                            } else {
                                with_batch(step)
                            }
                        }
                        None => ready(step),
                    };
                    out.extend(c.ready(w, &r).unwrap());
                }
            }
        }
    }

    #[test]
    fn an_idle_round_ends_the_epoch_then_the_run() {
        let mut c = Coordination::new(1, 2, None, ids(1)).unwrap();
        let out = c.ready(0, &ready(1)).unwrap();
        let (index, lease) = grant(&out[0].1);
        c.ready(0, &with_batch(1)).unwrap();
        let out = c.ready(0, &finished(2, index, lease)).unwrap();
        // Epoch 0 ends (the block is done, nobody has a batch); epoch 1's
        // first round starts at the same step.
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(out[0].1, AMsg::None(_)));
        assert!(matches!(
            out[1].1,
            AMsg::EpochEnd(party_pb::EpochEnd { epoch: 0, steps: 1 })
        ));
        let out = c.ready(0, &ready(2)).unwrap();
        let (index, lease) = grant(&out[0].1);
        c.ready(0, &with_batch(2)).unwrap();
        let out = c.ready(0, &finished(3, index, lease)).unwrap();
        assert!(matches!(
            out.last().unwrap().1,
            AMsg::Finished(party_pb::Finished { steps: 2 })
        ));
        assert!(c.is_done());
        assert_eq!(c.ready(0, &ready(3)), Err(CoordError::Finished { worker: 0 }));
    }

    /// Two workers, one block of one batch: training ends after step 1.
    fn finished_run() -> Coordination {
        let mut c = Coordination::new(2, 1, None, ids(1)).unwrap().with_run("r1".into());
        c.ready(0, &ready(1)).unwrap();
        let out = c.ready(1, &ready(1)).unwrap();
        let (index, lease) = grant(&out[0].1);
        c.ready(0, &with_batch(1)).unwrap();
        c.ready(0, &finished(2, index, lease)).unwrap();
        let out = c.ready(1, &ready(2)).unwrap();
        assert!(matches!(
            out.last().unwrap().1,
            AMsg::Finished(party_pb::Finished { steps: 1 })
        ));
        c
    }

    #[test]
    fn the_end_is_recorded_once_every_pair_did_its_end_of_job_work() {
        let mut c = finished_run();
        assert!(!c.is_committed());
        assert_eq!(c.end_of_pair(1, 1), Ok(None));
        assert_eq!(c.owing(), vec![0]);
        let end = c.end_of_pair(0, 1).unwrap().expect("the record to save");
        assert!(end.finished && end.steps == 1 && end.run == "r1");
        assert!(c.is_committed() && !c.is_over());
        assert_eq!(
            c.committed(),
            party_pb::Committed {
                steps: 1,
                run_id: "r1".into()
            }
        );
        assert_eq!(c.bye(0), Ok(false));
        // A worker restarted after its goodbye says it again.
        assert_eq!(c.bye(0), Ok(false));
        assert_eq!(c.bye(1), Ok(true));
        assert!(c.is_over());
    }

    #[test]
    fn a_restored_end_answers_with_committed_and_trains_nothing() {
        let mut c = finished_run();
        c.end_of_pair(0, 1).unwrap();
        let end = c.end_of_pair(1, 1).unwrap().unwrap();
        let json = serde_json::to_vec(&end).unwrap();
        let back: CoordState = serde_json::from_slice(&json).unwrap();
        let mut r = Coordination::new(2, 1, None, ids(1)).unwrap().restore(&back).unwrap();
        assert!(r.is_committed() && r.is_done());
        assert_eq!(
            r.committed(),
            party_pb::Committed {
                steps: 1,
                run_id: "r1".into()
            }
        );
        assert_eq!(r.ready(0, &ready(2)), Err(CoordError::Finished { worker: 0 }));
        assert_eq!(r.bye(1), Ok(false));
    }

    #[test]
    fn refuses_an_end_of_another_run_shape() {
        let mut c = finished_run();
        c.end_of_pair(0, 1).unwrap();
        let end = c.end_of_pair(1, 1).unwrap().unwrap();
        assert!(matches!(
            Coordination::new(2, 2, None, ids(1)).unwrap().restore(&end),
            Err(CoordError::BadState { .. })
        ));
    }

    #[test]
    fn refuses_an_end_of_job_report_while_training() {
        let mut c = Coordination::new(2, 1, None, ids(2)).unwrap();
        assert_eq!(c.end_of_pair(0, 0), Err(CoordError::NotFinished { worker: 0 }));
    }

    #[test]
    fn refuses_an_end_at_another_step() {
        let mut c = finished_run();
        assert_eq!(
            c.end_of_pair(0, 2),
            Err(CoordError::WrongEnd {
                worker: 0,
                got: 2,
                expected: 1
            })
        );
    }

    #[test]
    fn refuses_a_second_end_of_job_report() {
        let mut c = finished_run();
        c.end_of_pair(0, 1).unwrap();
        assert_eq!(c.end_of_pair(0, 1), Err(CoordError::NotAwaited { worker: 0 }));
    }

    #[test]
    fn refuses_an_end_of_job_report_of_an_unknown_worker() {
        let mut c = finished_run();
        assert_eq!(
            c.end_of_pair(2, 1),
            Err(CoordError::UnknownWorker { worker: 2, workers: 2 })
        );
    }

    #[test]
    fn refuses_a_heartbeat_while_training() {
        let c = Coordination::new(2, 1, None, ids(2)).unwrap();
        assert_eq!(c.working(1), Err(CoordError::NotFinished { worker: 1 }));
        assert_eq!(finished_run().working(1), Ok(()));
    }

    #[test]
    fn refuses_a_goodbye_before_the_end_is_recorded() {
        let mut c = finished_run();
        c.end_of_pair(0, 1).unwrap();
        assert_eq!(c.bye(0), Err(CoordError::NotCommitted { worker: 0 }));
    }

    #[test]
    fn refuses_an_unknown_worker() {
        let mut c = Coordination::new(2, 1, None, ids(2)).unwrap();
        assert_eq!(
            c.ready(2, &ready(1)),
            Err(CoordError::UnknownWorker { worker: 2, workers: 2 })
        );
    }

    #[test]
    fn refuses_a_report_for_another_step() {
        let mut c = Coordination::new(1, 1, None, ids(2)).unwrap();
        assert_eq!(
            c.ready(0, &ready(2)),
            Err(CoordError::WrongStep {
                worker: 0,
                got: 2,
                expected: 1
            })
        );
    }

    #[test]
    fn refuses_a_report_not_awaited() {
        let mut c = Coordination::new(2, 1, None, ids(2)).unwrap();
        c.ready(0, &ready(1)).unwrap();
        assert_eq!(c.ready(0, &ready(1)), Err(CoordError::NotAwaited { worker: 0 }));
    }

    #[test]
    fn refuses_a_batch_without_a_block() {
        let mut c = Coordination::new(1, 1, None, ids(2)).unwrap();
        assert_eq!(
            c.ready(0, &with_batch(1)),
            Err(CoordError::BatchWithoutBlock { worker: 0 })
        );
    }

    #[test]
    fn refuses_a_held_block_neither_used_nor_finished() {
        let mut c = Coordination::new(1, 1, None, ids(2)).unwrap();
        c.ready(0, &ready(1)).unwrap();
        assert_eq!(c.ready(0, &ready(1)), Err(CoordError::Stalled { worker: 0, index: 0 }));
    }

    #[test]
    fn refuses_finishing_a_block_not_held() {
        let mut c = Coordination::new(1, 1, None, ids(2)).unwrap();
        assert!(matches!(
            c.ready(0, &finished(1, 1, 0)),
            Err(CoordError::Assign(AssignError::NotHeld {
                worker: 0,
                index: 1,
                ..
            }))
        ));
    }

    #[test]
    fn refuses_an_epoch_without_data() {
        let mut c = Coordination::new(1, 1, None, ids(1)).unwrap();
        let out = c.ready(0, &ready(1)).unwrap();
        let (index, lease) = grant(&out[0].1);
        // The only block is empty.
        assert_eq!(
            c.ready(0, &finished(1, index, lease)),
            Err(CoordError::NoData { epoch: 0 })
        );
    }

    /// Drives one worker through `steps` steps of a run over `blocks`
    /// blocks of 2 batches each; returns the position saved last.
    fn drive(c: &mut Coordination, steps: u64) -> Option<CoordState> {
        let mut saved = None;
        let mut held: Option<(u64, u64, u32)> = None;
        let mut out = c.ready(0, &ready(c.steps() + 1)).unwrap();
        while c.steps() < steps {
            saved = c.take_checkpoint().or(saved);
            match out.pop().map(|(_, m)| m) {
                Some(AMsg::Grant(g)) => {
                    held = Some((g.index, g.lease, 2));
                    out = c.ready(0, &with_batch(c.steps() + 1)).unwrap();
                }
                Some(AMsg::Go(_)) => {
                    let (index, lease, left) = held.expect("a block");
                    let next = c.steps() + 1;
                    let mut r = if left == 1 {
                        held = None;
                        finished(next, index, lease)
                    } else {
                        held = Some((index, lease, left - 1));
                        with_batch(next)
                    };
                    r.rows = 10;
                    out = c.ready(0, &r).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        c.take_checkpoint().or(saved)
    }

    #[test]
    fn a_checkpoint_step_saves_the_position_once_its_reports_are_in() {
        let mut c = Coordination::new(1, 1, None, ids(4)).unwrap().with_checkpoints(3);
        let st = drive(&mut c, 4).expect("step 3 saved");
        assert_eq!(st.steps, 3);
        // Steps 1 and 2 trained block 0, step 3 the first batch of block 1:
        // held, with its 10 rows trained.
        assert_eq!(st.assign.held.get(&0).map(|&(i, _)| i), Some(1));
        assert_eq!(st.assign.done, 1);
        assert_eq!(st.rows, vec![10]);
    }

    #[test]
    fn a_restored_coordinator_replans_the_block_and_its_rows() {
        let mut c = Coordination::new(1, 1, None, ids(4)).unwrap().with_checkpoints(3);
        let st = drive(&mut c, 4).unwrap();
        let r = Coordination::new(1, 1, None, ids(4)).unwrap().restore(&st).unwrap();
        assert_eq!(r.steps(), 3);
        let plan = r.plan(0);
        assert_eq!(plan.resume_step, 3);
        assert_eq!(plan.block.map(|b| (b.index, b.block_id)), Some((1, "b1".to_string())));
        assert_eq!(plan.skip_rows, 10);
        // A fresh run plans nothing held.
        let fresh = Coordination::new(1, 1, None, ids(4)).unwrap().plan(0);
        assert_eq!((fresh.resume_step, fresh.block, fresh.skip_rows), (0, None, 0));
    }

    #[test]
    fn refuses_a_saved_position_of_another_run_shape() {
        let mut c = Coordination::new(1, 1, None, ids(4)).unwrap().with_checkpoints(3);
        let st = drive(&mut c, 4).unwrap();
        let e = Coordination::new(2, 1, None, ids(4)).unwrap().restore(&st).unwrap_err();
        assert!(matches!(e, CoordError::BadState { .. }), "{e}");
        let e = Coordination::new(1, 1, None, ids(2)).unwrap().restore(&st).unwrap_err();
        assert!(matches!(e, CoordError::Assign(AssignError::BadState { .. })), "{e}");
    }

    #[test]
    fn refuses_an_empty_run() {
        assert_eq!(Coordination::new(0, 1, None, ids(1)).err(), Some(CoordError::Empty));
        assert_eq!(Coordination::new(1, 0, None, ids(1)).err(), Some(CoordError::Empty));
    }
}
