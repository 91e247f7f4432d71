//! Synchronous training over sharded parameters: N worker pairs and S
//! parameter shards per party (docs/scale-out.md).
//!
//! Worker *i* of the leader and worker *i* of the follower are a pair as in
//! a single-pair run (same messages, same checks). Each worker keeps a
//! replica of its party's model and runs its batch with the gradients
//! *collected* instead of applied ([`crate::UpdateMode::Collect`]). It sends
//! each shard the part it owns ([`Contribution`]): embedding rows by a hash
//! of (slot, row) ([`Placement`]), dense tensors round robin. A shard waits
//! for every participant of the step, combines their gradients **in worker
//! order** (weighted by the examples behind each), applies the optimizer to
//! the parameters it owns and returns their new values ([`Params`]), which
//! every worker of the party writes into its replica. Fixed order and
//! lockstep make a run a function of the data, the seed and N.
//!
//! This module is the protocol's logic without I/O: [`Shard`] is the
//! shard's state machine, [`replica`] the worker's side, [`local`] runs the
//! whole thing in one process.

pub mod coordinator;
pub mod local;
pub mod remote;
pub mod replica;
pub mod serve;
mod shard;
pub mod state;
pub mod wire;
pub mod worker;

pub use local::{BlockData, EpochOutcome, EpochPosition, ShardedCheckpoint, ShardedTrainer, StepTimes, Traffic};
pub use shard::{Shard, ShardState};

/// Epoch `epoch`'s block order: `ids` shuffled from `seed` plus the epoch,
/// as a single pair's leader does (the coordinator and the in-process
/// trainer share it, so that their runs are equal).
pub(crate) fn block_order(ids: &[String], seed: Option<u64>, epoch: u32) -> Vec<String> {
    let mut order = ids.to_vec();
    if let Some(seed) = seed {
        vfl_nn::rng::Rng::new(seed.wrapping_add(u64::from(epoch))).shuffle(&mut order);
    }
    order
}

/// Skips the first `rows` rows of a block being resumed (the batches
/// trained before the checkpoint).
pub(crate) fn skip_rows(
    source: &mut dyn vfl_data::BatchSource,
    batch: &mut vfl_data::Batch,
    rows: u64,
    batch_size: usize,
) -> Result<(), crate::TrainError> {
    let mut left = rows;
    while left > 0 {
        let want = left.min(batch_size as u64) as usize;
        if source.fill(batch, want)? != want {
            return Err(crate::assign::AssignError::BadState {
                why: "a resumed block has fewer rows than the checkpoint trained",
            }
            .into());
        }
        left -= want as u64;
    }
    Ok(())
}

/// Removes and returns the connections `pick` chooses (the shard's and the
/// coordinator's event loops dropping workers).
pub(crate) fn drain<C>(conns: &mut std::collections::BTreeMap<u64, C>, pick: impl Fn(&C) -> bool) -> Vec<C> {
    let keys: Vec<u64> = conns.iter().filter(|(_, c)| pick(c)).map(|(k, _)| *k).collect();
    keys.into_iter().filter_map(|k| conns.remove(&k)).collect()
}

/// What one client's connection said, in the event loops of the shard and
/// the coordinator.
pub(crate) enum Event<M> {
    Message(u64, M),
    /// The connection ended, and why.
    Closed(u64, String),
}

/// Reads connection `conn`'s messages (their oneof, taken by `msg`) into
/// `events` until it ends; the last event says why it ended.
pub(crate) fn spawn_reader<T, M>(
    conn: u64,
    mut inbound: vfl_bridge::Streaming<T>,
    events: tokio::sync::mpsc::Sender<Event<M>>,
    msg: fn(T) -> Option<M>,
) -> tokio::task::JoinHandle<()>
where
    T: Send + 'static,
    M: Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let ev = match inbound.message().await {
                Ok(Some(m)) => match msg(m) {
                    Some(m) => Event::Message(conn, m),
                    None => Event::Closed(conn, "an empty message".into()),
                },
                Ok(None) => Event::Closed(conn, "closed its stream".into()),
                Err(s) => Event::Closed(conn, vfl_bridge::sanitize(s.message(), 300)),
            };
            let last = matches!(ev, Event::Closed(..));
            if events.send(ev).await.is_err() || last {
                return;
            }
        }
    })
}

/// Largest party-internal message for `role`'s parameters of `spec`: a
/// shard's values when a worker joins, at most every parameter of the
/// party (4 bytes a value, 8 a row key), plus room for the envelope.
pub fn message_limit(spec: &vfl_nn::ModelSpec, role: vfl_nn::Role) -> usize {
    let tower = spec.tower(role);
    let rows: usize = tower.slots().iter().map(|s| s.vocab).sum();
    let values: usize = tower.slots().iter().map(|s| s.vocab * s.dim).sum();
    let mut width = tower.input_dim();
    let mut dense = 0usize;
    let head = (role == vfl_nn::Role::Leader).then(|| spec.head.layers.iter());
    let mut layers: Vec<usize> = tower.layers.iter().map(|l| l.units).collect();
    if let Some(h) = head {
        layers.extend(h.map(|l| l.units));
    }
    for (i, units) in layers.into_iter().enumerate() {
        if i == tower.layers.len() {
            width = spec.leader.output_dim() + spec.follower.output_dim();
        }
        dense += width * units + units;
        width = units;
    }
    (4 * (values + dense) + 8 * rows + (64 << 10)).max(4 << 20)
}

/// Which shard owns which parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    shards: usize,
}

impl Placement {
    /// `shards` parameter shards (at least 1).
    pub fn new(shards: usize) -> Result<Self, ShardError> {
        if shards == 0 {
            return Err(ShardError::NoShards);
        }
        Ok(Placement { shards })
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard of embedding row `row` of slot `slot`: a hash of both, so
    /// that the hot rows of every slot spread over all shards.
    pub fn row(&self, slot: usize, row: u32) -> usize {
        let key = ((slot as u64) << 32) | u64::from(row);
        (vfl_nn::embedding::hash_id(key as i64) % self.shards as u64) as usize
    }

    /// The shard of dense tensor `index` ([`vfl_nn::Replica`]'s numbering).
    pub fn dense(&self, index: usize) -> usize {
        index % self.shards
    }
}

/// Parameter values or gradients addressed like [`vfl_nn::Replica`]: dense
/// tensors by index, embedding rows by (slot, row) with their values packed
/// in `values` (each row `dim` of its slot long).
#[derive(Clone, Default, PartialEq)]
pub struct Params {
    pub dense: Vec<(u32, Vec<f32>)>,
    pub rows: Vec<(u32, u32)>,
    pub values: Vec<f32>,
}

// Values are gradients or parameters derived from the parties' data: Debug
// says sizes only.
impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Params {{ dense: {}, rows: {}, values: {} }}",
            self.dense.len(),
            self.rows.len(),
            self.values.len()
        )
    }
}

impl Params {
    /// Bytes of payload: 4 per value, 8 per row key, 4 per dense index
    /// (framing and the transport's encryption excluded).
    pub fn payload_bytes(&self) -> u64 {
        let dense: usize = self.dense.iter().map(|(_, v)| 4 + 4 * v.len()).sum();
        (dense + 8 * self.rows.len() + 4 * self.values.len()) as u64
    }
}

/// One worker's gradients for one shard and step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contribution {
    /// The examples behind the gradients (their weight in the sum).
    pub examples: u32,
    pub grads: Params,
}

/// Refusals of the sharded protocol: a worker or shard that breaks it, or
/// state that does not fit.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShardError {
    #[error("a sharded run needs at least one parameter shard")]
    NoShards,
    #[error("a sharded run needs at least one worker pair")]
    NoWorkers,
    #[error("shard {shard}: step {got} begun, but the next step is {expected}")]
    WrongStep { shard: usize, got: u64, expected: u64 },
    #[error("shard {shard}: step {step} is still waiting for workers {missing:?}")]
    StepInProgress { shard: usize, step: u64, missing: Vec<u32> },
    #[error("shard {shard}: a step needs at least one participant")]
    NoParticipants { shard: usize },
    #[error("shard {shard}: worker {worker} is not one of the {workers} workers")]
    UnknownWorker { shard: usize, worker: u32, workers: usize },
    #[error("shard {shard}: gradients from worker {worker} but no step is begun")]
    NotBegun { shard: usize, worker: u32 },
    #[error("shard {shard}: worker {worker} does not take part in step {step}")]
    NotParticipant { shard: usize, worker: u32, step: u64 },
    #[error("shard {shard}: worker {worker} sent gradients for step {step} twice")]
    Duplicate { shard: usize, worker: u32, step: u64 },
    #[error("shard {shard}: worker {worker} sent a gradient for {what}, which this shard does not own")]
    NotOwned { shard: usize, worker: u32, what: String },
    #[error(
        "shard {shard}: worker {worker}'s gradient for {what} has the wrong size ({got} values, expected {expected})"
    )]
    Shape {
        shard: usize,
        worker: u32,
        what: String,
        got: usize,
        expected: usize,
    },
    #[error("shard {shard}: worker {worker} sent no gradient for dense tensor {index}")]
    MissingDense { shard: usize, worker: u32, index: u32 },
    #[error("shard {shard}: worker {worker} sent slot {slot} row {row} twice in one step")]
    RepeatedRow {
        shard: usize,
        worker: u32,
        slot: u32,
        row: u32,
    },
    #[error("shard {shard}: worker {worker} sent gradients of zero examples")]
    NoExamples { shard: usize, worker: u32 },
    #[error("shard {shard}: worker {worker}'s gradient holds a non-finite value")]
    NonFinite { shard: usize, worker: u32 },
    #[error("worker {worker}: new values for {what}, which this replica does not have")]
    NoSuchParam { worker: usize, what: String },
    #[error("shard {shard}: the checkpoint does not fit this shard ({why})")]
    BadState { shard: usize, why: String },
}
