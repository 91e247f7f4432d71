//! Training of enclave-vfl: the leader's and the follower's sessions, the
//! messages they exchange, and the in-process loop used by tests,
//! benchmarks and the demo.

pub mod assign;
#[cfg(feature = "bench")]
pub mod bench;
pub mod checkpoint;
pub mod local;
mod party;
pub mod progress;
pub mod remote;
pub mod sharded;
pub mod store;
pub mod wire;

pub use local::{LocalTrainer, PassReport};
pub use party::{FollowerParty, LeaderParty, StepReport, UpdateMode};
pub use store::StoreError;

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Nn(#[from] vfl_nn::NnError),
    #[error(transparent)]
    Data(#[from] vfl_data::DataError),
    #[error(transparent)]
    Bridge(#[from] vfl_bridge::BridgeError),
    #[error("bad {what}: {reason}")]
    BadTensor { what: String, reason: String },
    #[error(
        "misaligned data at iteration {iteration} ({rows}): the follower's example ids differ from the leader's; refusing to train on misaligned rows"
    )]
    Misaligned {
        iteration: u64,
        ours: String,
        theirs: String,
        rows: String,
    },
    #[error("protocol error: iteration {iteration} still awaits its gradient")]
    GradientPending { iteration: u64 },
    #[error("protocol error: gradient for iteration {got} but {pending} is pending")]
    WrongGradient { got: u64, pending: String },
    #[error("protocol error: activations for iteration {got}, expected {expected}")]
    WrongIteration { got: u64, expected: u64 },
    #[error("protocol error: iteration {iteration} is not a training iteration")]
    NotTraining { iteration: u64 },
    #[error("the leader's batch has {labels} labels for {rows} rows")]
    Labels { labels: usize, rows: usize },
    #[error("the leader's data gave {leader} rows but the follower's gave {follower} at step {step}")]
    LocalRowCounts { leader: usize, follower: usize, step: u64 },
    #[error("protocol error: {what} without a tensor")]
    NoTensor { what: &'static str },
    #[error("protocol error: batch digest of {len} bytes, expected 16")]
    DigestLength { len: usize },
    #[error("the export {path} is of run `{loaded}`, but this session evaluates run `{run}`")]
    ExportOfOtherRun { path: String, loaded: String, run: String },
    #[error(
        "eval needs a model: --load-model (an export) or a --checkpoint-path holding a checkpoint both parties have"
    )]
    NoModelToEvaluate,
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("protocol error: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error(
        "epoch {epoch}: the {longer}'s data has more rows than its peer's (they differ after {iterations} iterations); the parties' data are not aligned"
    )]
    RowCounts {
        epoch: u32,
        longer: &'static str,
        iterations: u64,
    },
    #[error("epoch {epoch}: no data (refusing to train on zero examples)")]
    NoData { epoch: u32 },
    #[error(
        "the leader resumes at epoch {} block #{} record {}, but this follower's checkpoint is at epoch {} block #{} record {} (or the block order differs)",
        leader.0, leader.1, leader.2, ours.0, ours.1, ours.2
    )]
    ResumeMismatch {
        leader: (u32, u64, u64),
        ours: (u32, u64, u64),
    },
    #[error("the leader checkpoints step {leader} but this follower is at step {ours}")]
    CheckpointStep { leader: u64, ours: u64 },
    #[error("the leader asks {asked} but this follower has no --checkpoint-path")]
    NoCheckpointPath { asked: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Shard(#[from] sharded::ShardError),
    #[error(transparent)]
    Assign(#[from] assign::AssignError),
    #[error(transparent)]
    Coord(#[from] sharded::coordinator::CoordError),
    #[error(
        "training diverged at iteration {iteration}: the loss or the gradient for the follower is not finite (lower the learning rate); nothing was sent"
    )]
    Diverged { iteration: u64 },
    #[error(transparent)]
    Seal(#[from] vfl_attest::seal::SealError),
    #[error("the leader's export id {id:?} is not one safe path component (letters, digits, '.', '_', '-')")]
    UnsafeExportId { id: String },
    #[error("the {peer} is no longer trusted: {why}")]
    PeerNoLongerTrusted { peer: &'static str, why: String },
    #[error("the leader's policy releases exports {leader:?} but this follower's releases {follower:?}")]
    ReleaseMismatch { leader: Vec<String>, follower: Vec<String> },
    #[error(
        "rollback refused: this {role} committed step {committed} of run {run}, but the session resumes from {from} (--allow-rollback accepts it)"
    )]
    Rollback {
        role: &'static str,
        committed: u64,
        run: String,
        from: String,
    },
}

/// The data schema of one party for a model spec: the spec's slots and
/// dense columns, the label and loss mask on the leader, and read-time id
/// range checks for slots that refuse out-of-range ids.
pub fn schema_for(spec: &vfl_nn::ModelSpec, role: vfl_nn::Role) -> vfl_data::Schema {
    let tower = spec.tower(role);
    let slots = tower.slots();
    let mut schema = vfl_data::Schema::new(
        slots.iter().map(|s| s.name.clone()).collect(),
        tower.dense_columns(),
        role == vfl_nn::Role::Leader,
    );
    schema.vocab = slots
        .iter()
        .map(|s| (s.out_of_range == vfl_nn::embedding::OutOfRange::Error).then_some(s.vocab as u64))
        .collect();
    schema
}
