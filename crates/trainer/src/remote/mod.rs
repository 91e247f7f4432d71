//! Two-party training over the network: the leader's and the follower's
//! drivers. Each runs in its own process; they talk through vfl-bridge.
//!
//! The leader decides the block order of every epoch (optionally shuffled
//! with a seed) and sends it; the follower refuses a plan naming a block it
//! lacks. Per iteration the follower sends its activations with the batch
//! digest, the leader checks the digest against its own batch, steps, and
//! returns the gradient. Both sides must run out of data on the same
//! iteration.
//!
//! The session runs over a [`vfl_bridge::link`]: a cut connection is
//! re-established and the session continues exactly where it was; a peer
//! that restarted (a new process) makes both parties start the session over
//! from the newest checkpoint they both hold, without restarting this
//! process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vfl_attest::PartyRole;
use vfl_bridge::pb::{self, follower_message::Msg as FMsg, leader_message::Msg as LMsg};
use vfl_bridge::secure::PeerInfo;
use vfl_bridge::{BridgeError, FollowerLink, LeaderLink, LinkOptions, Settings, message_limit, server};
use vfl_data::blocks::{DataDir, Position, ReadOptions};
use vfl_data::prefetch::{Prefetcher, position_after};
use vfl_data::{Batch, BatchSource, BlockReader};
use vfl_nn::rng::Rng;
use vfl_nn::{MetricValues, ModelSpec, Role};

use crate::checkpoint::{self, Binding, RunState, sanitize};
use crate::party::{FollowerParty, LeaderParty};
use crate::{TrainError, schema_for};

mod follower;
mod leader;

pub use follower::run_follower;
pub use leader::run_leader;

/// Settings of one party's run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub spec: ModelSpec,
    pub application_id: String,
    pub data_path: PathBuf,
    pub data_path_wildcard: Option<String>,
    pub batch_size: usize,
    pub threads: usize,
    /// Leader: address to listen on. Follower: the leader's address.
    pub addr: String,
    /// How long to wait for the peer to appear, and for any message.
    pub peer_timeout: Duration,
    pub skip_bad_records: bool,
    /// Where checkpoints are saved and resumed from.
    pub checkpoint_path: Option<PathBuf>,
    /// Checkpoints kept (the newest ones).
    pub keep_checkpoints: usize,
    /// Where the final model is exported (`<path>/<id>/<role>/`).
    pub export_path: Option<PathBuf>,
    /// When the process started (for the time-to-first-step log line).
    pub started: Instant,
    /// RA-TLS (default) or plaintext.
    pub security: vfl_bridge::Security,
    /// Encryption at rest of checkpoints and exported weights.
    pub seal: Option<std::sync::Arc<vfl_attest::seal::Sealer>>,
    /// The join whose sealed blocks --data-path holds: every sealed block
    /// must be of this join (no mixing of blocks from several joins).
    pub join_id: Option<String>,
    /// Resume from a checkpoint older than the step both parties committed
    /// (an operator's explicit decision, logged loudly).
    pub allow_rollback: bool,
    /// How often a restarted peer is taken back before the run fails.
    pub max_restarts: u32,
    /// Counters for the progress line, the logs and `--metrics-addr`.
    pub progress: std::sync::Arc<crate::progress::Progress>,
}

/// What the leader's session does. The leader decides the epochs, the
/// order of the blocks and when both parties checkpoint; the follower
/// learns them from the plans ([`FollowerTask`] has none of them).
#[derive(Clone, Debug, PartialEq)]
pub enum LeaderTask {
    Train(LeaderTrain),
    Eval(LeaderEval),
}

/// The leader's training decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderTrain {
    /// At least 1.
    pub epochs: u32,
    /// Shuffle the blocks of every epoch from this seed (plus the epoch).
    pub shuffle_seed: Option<u64>,
    /// Checkpoint every N steps and/or every N seconds (needs
    /// [`RunConfig::checkpoint_path`]).
    pub save_every_steps: Option<u64>,
    pub save_every_secs: Option<u64>,
}

/// The leader's evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderEval {
    /// The exported model to load (else the newest common checkpoint).
    pub load_model: Option<PathBuf>,
    /// Write `example_id,score` per example here.
    pub predictions_path: Option<PathBuf>,
}

/// What the follower's session does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowerTask {
    Train,
    /// The exported model to load (else the newest common checkpoint).
    Eval {
        load_model: Option<PathBuf>,
    },
}

/// Train or evaluate, as both parties' handshakes must agree; an
/// evaluation's export, if any.
#[derive(Clone, Copy, Debug)]
enum Mode<'a> {
    Train,
    Eval { load_model: Option<&'a std::path::Path> },
}

impl LeaderTask {
    fn mode(&self) -> Mode<'_> {
        match self {
            LeaderTask::Train(_) => Mode::Train,
            LeaderTask::Eval(e) => Mode::Eval {
                load_model: e.load_model.as_deref(),
            },
        }
    }
}

impl FollowerTask {
    fn mode(&self) -> Mode<'_> {
        match self {
            FollowerTask::Train => Mode::Train,
            FollowerTask::Eval { load_model } => Mode::Eval {
                load_model: load_model.as_deref(),
            },
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub session_id: String,
    pub epochs: u32,
    pub steps: u64,
    pub examples: u64,
    pub seconds: f64,
    pub mean_loss: f64,
    /// Leader only: metrics of the last epoch's training batches.
    pub last_epoch: Option<MetricValues>,
    pub skipped_records: u64,
    /// The checkpoint step the run resumed from.
    pub resumed_from: Option<u64>,
    pub export_dir: Option<PathBuf>,
}

impl RunConfig {
    /// How this party reads its data blocks.
    fn read_options(&self) -> ReadOptions {
        ReadOptions {
            skip_bad_records: self.skip_bad_records,
            ..Default::default()
        }
    }

    /// A reader of `blocks` as this party reads them; sealed joined blocks
    /// open with this party's model key and must be of this job, role and
    /// policy, and the block asked for.
    fn block_reader(&self, role: Role, blocks: Vec<vfl_data::BlockFile>, schema: vfl_data::Schema) -> BlockReader {
        let mut r = BlockReader::new(blocks, schema, self.read_options());
        if let Some(sealer) = &self.seal {
            r.set_unseal(joined_blocks(
                sealer.clone(),
                (&self.application_id, role, &self.security.policy_digest()),
                self.join_id.as_deref(),
            ));
        }
        r
    }
}

/// How a party opens sealed joined blocks (`vfl join` under a model key):
/// with its key, bound to the job, its role, the policy, the join and the
/// block asked for.
pub fn joined_blocks(
    sealer: std::sync::Arc<vfl_attest::seal::Sealer>,
    (app, role, policy_digest): (&str, Role, &str),
    join_id: Option<&str>,
) -> std::sync::Arc<dyn vfl_data::Unseal> {
    let mut context = vfl_attest::seal::Context::joined_block(app, role.as_str(), policy_digest);
    if let Some(join) = join_id {
        context = context.with("join", join);
    }
    std::sync::Arc::new(JoinedBlocks { sealer, context })
}

/// Opens sealed joined blocks (`vfl join` under a model key).
struct JoinedBlocks {
    sealer: std::sync::Arc<vfl_attest::seal::Sealer>,
    context: vfl_attest::seal::Context,
}

impl vfl_data::Unseal for JoinedBlocks {
    fn unseal(&self, block: &vfl_data::BlockFile, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let expected = self.context.clone().with("block", &block.id);
        self.sealer
            .open_file(sealed, &expected, &block.path)
            .map(|(_, plain)| plain)
            .map_err(|e| e.to_string())
    }
}

/// What this party's files are bound to.
fn binding(cfg: &RunConfig, role: Role) -> Binding {
    Binding {
        app: cfg.application_id.clone(),
        role,
        model: cfg.spec.fingerprint(),
        policy: cfg.security.policy_digest(),
    }
}

/// This party's run record, checked at start: a record that does not open
/// (another job, model or policy, or altered) stops the party before it
/// talks to anyone.
fn read_record(cfg: &RunConfig, role: Role) -> Result<Option<checkpoint::RunRecord>, TrainError> {
    match &cfg.checkpoint_path {
        Some(dir) => checkpoint::read_record(dir, &binding(cfg, role), cfg.seal.as_deref()),
        None => Ok(None),
    }
}

/// What this party holds for the handshake: in evaluation of an export,
/// the export's run (both parties must evaluate exports of the same run, so
/// a model of one run is never paired with a peer model of another);
/// otherwise its run record and checkpoints.
fn settings(cfg: &RunConfig, mode: Mode<'_>, role: Role, process_id: &str) -> Result<Settings, TrainError> {
    let export = match mode {
        Mode::Eval { load_model } => load_model,
        Mode::Train => None,
    };
    let held = match (export, cfg.checkpoint_path.clone()) {
        (Some(export), _) => vfl_bridge::Checkpoints::held(vfl_bridge::handshake::Held {
            run_id: checkpoint::export_run(export, &binding(cfg, role), cfg.seal.as_deref())?,
            ..Default::default()
        }),
        (_, Some(dir)) => {
            let (bind, seal) = (binding(cfg, role), cfg.seal.clone());
            vfl_bridge::Checkpoints::from_fn(move || match checkpoint::read_record(&dir, &bind, seal.as_deref()) {
                Ok(Some(r)) => vfl_bridge::handshake::Held {
                    run_id: r.run_id,
                    committed_step: r.committed_step,
                    steps: checkpoint::list(&dir),
                },
                Ok(None) => vfl_bridge::handshake::Held::default(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the run record; offering no checkpoints");
                    vfl_bridge::handshake::Held::default()
                }
            })
        }
        (_, None) => vfl_bridge::Checkpoints::held(Default::default()),
    };
    Ok(Settings {
        application_id: cfg.application_id.clone(),
        model_fingerprint: cfg.spec.fingerprint(),
        batch_size: cfg.batch_size as u32,
        mode: match mode {
            Mode::Train => "train",
            Mode::Eval { .. } => "eval",
        }
        .into(),
        process_id: process_id.to_string(),
        checkpoint_steps: held,
        resume_session: String::new(),
        release_exports: cfg.security.release_exports(),
        allow_rollback: cfg.allow_rollback,
    })
}

/// Records at the start of a training session that this party belongs to
/// run `run_id` and that `resume` (a step both hold) is committed.
fn start_run(cfg: &RunConfig, role: Role, run_id: &str, resume: Option<u64>) -> Result<(), TrainError> {
    if let Some(dir) = &cfg.checkpoint_path {
        checkpoint::commit(
            dir,
            &binding(cfg, role),
            cfg.seal.as_deref(),
            run_id,
            resume.unwrap_or(0),
        )?;
    }
    Ok(())
}

/// Verifies the peer's evidence again (current collateral and time): a
/// peer whose platform was revoked or fell below the policy's TCB floor
/// during a long run stops being trusted. `peer_role`: what it plays.
fn reverify(cfg: &RunConfig, peer: &PeerInfo, peer_role: PartyRole) -> Result<(), TrainError> {
    if let vfl_bridge::Security::RaTls(t) = &cfg.security {
        let report = tokio::task::block_in_place(|| t.reverify(peer, peer_role)).map_err(|why| {
            TrainError::PeerNoLongerTrusted {
                peer: peer_role.as_str(),
                why,
            }
        })?;
        tracing::debug!(peer = %report, "peer re-verified");
    }
    Ok(())
}

/// Longest failure reason sent to or taken from the peer.
const REASON_MAX: usize = 1000;

/// A failure reason fit to send to the peer or log: capped, no control
/// characters (our errors name message kinds and sizes, never contents).
fn reason(e: &TrainError) -> String {
    sanitize(&e.to_string(), REASON_MAX)
}

/// The peer's failure, sanitised before it reaches our logs.
fn peer_failed(f: pb::Failure) -> TrainError {
    BridgeError::PeerFailed(sanitize(&f.reason, REASON_MAX)).into()
}

fn shape(t: &Option<pb::Tensor>) -> String {
    match t {
        Some(t) => format!("tensor {:?} ({} bytes)", t.shape, t.data.len()),
        None => "no tensor".into(),
    }
}

/// A follower message's kind and sizes, never its contents: activations
/// are the follower's secret and must not reach logs or errors.
fn describe_f(m: &FMsg) -> String {
    match m {
        FMsg::Activations(a) => format!("Activations (iteration {}, {})", a.iteration, shape(&a.tensor)),
        FMsg::PlanAck(a) => format!("PlanAck (epoch {})", a.epoch),
        FMsg::EndOfData(e) => format!("EndOfData (epoch {}, {} iterations)", e.epoch, e.iterations),
        FMsg::Failure(f) => format!("Failure ({} bytes of reason)", f.reason.len()),
        FMsg::CheckpointDone(d) => format!("CheckpointDone (step {})", d.step),
        FMsg::Heartbeat(_) => "Heartbeat".into(),
    }
}

/// A leader message's kind and sizes, never its contents: gradients carry
/// information about the leader's labels.
fn describe_l(m: &LMsg) -> String {
    match m {
        LMsg::Plan(p) => format!("Plan (epoch {}, {} blocks)", p.epoch, p.block_ids.len()),
        LMsg::Gradient(g) => format!("Gradient (iteration {}, {})", g.iteration, shape(&g.tensor)),
        LMsg::Finish(_) => "Finish".into(),
        LMsg::Failure(f) => format!("Failure ({} bytes of reason)", f.reason.len()),
        LMsg::Heartbeat(_) => "Heartbeat".into(),
    }
}

/// The export manifest's fields both roles write.
fn manifest(
    cfg: &RunConfig,
    (role, bind): (Role, &Binding),
    state: &RunState,
    session: &str,
    data: &DataDir,
    resumed_from: Option<u64>,
) -> serde_json::Value {
    serde_json::json!({
        "role": role.as_str(),
        "step": state.steps,
        "examples": state.examples,
        "session": session,
        "model": cfg.spec.name,
        "model_fingerprint": bind.model,
        "data_fingerprint": data_fingerprint(data),
        "resumed_from": resumed_from,
    })
}

/// SHA-256 over the data directory's block ids and file sizes.
fn data_fingerprint(data: &DataDir) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for b in data.blocks() {
        h.update(b.id.as_bytes());
        h.update([0]);
        h.update(std::fs::metadata(&b.path).map_or(0, |m| m.len()).to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn limit(cfg: &RunConfig) -> usize {
    message_limit(
        cfg.batch_size,
        cfg.spec.follower.output_dim().max(cfg.spec.leader.output_dim()),
    )
}

fn link_options(cfg: &RunConfig) -> LinkOptions {
    LinkOptions {
        max_restarts: cfg.max_restarts,
        ..LinkOptions::new(cfg.peer_timeout, cfg.progress.clone())
    }
}

/// The records an epoch skipped (`--skip-bad-records`), with the first
/// reasons logged: the file, the record and what was wrong, never a value.
fn skipped_records(epoch: u32, reader: Option<&BlockReader>) -> u64 {
    let Some(r) = reader else { return 0 };
    if r.skipped() > 0 {
        let reasons: Vec<String> = r.skip_reasons().iter().map(|s| sanitize(s, 300)).collect();
        tracing::warn!(epoch, skipped = r.skipped(), first_reasons = ?reasons, "bad records skipped (--skip-bad-records)");
    }
    r.skipped()
}

/// Where in the data a checkpoint is taken: the epoch, its block order and
/// the position after the batch just trained.
struct At<'a> {
    epoch: u32,
    plan: &'a [String],
    pos: Position,
}

/// Saves this party's checkpoint of step `state.steps` (both parties call
/// it for the same step), with the data position and the iteration and
/// optimizer counters.
// One coordinated save's inputs; bundling them would only move the list.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    cfg: &RunConfig,
    dir: &std::path::Path,
    role: Role,
    run: &str,
    tensors: Vec<vfl_nn::split::TensorMut<'_>>,
    state: &RunState,
    at: At<'_>,
    (next_iteration, opt_step): (u64, u64),
) -> Result<(), TrainError> {
    let st = RunState {
        epoch: at.epoch,
        plan: at.plan.to_vec(),
        block: at.pos.block as u64,
        record: at.pos.record,
        next_iteration,
        opt_step,
        ..state.clone()
    };
    tokio::task::block_in_place(|| {
        checkpoint::save(
            dir,
            st.steps,
            &binding(cfg, role),
            run,
            tensors,
            &st,
            cfg.keep_checkpoints,
            cfg.seal.as_deref(),
        )
    })
}

/// Loads the model for evaluation: an export if given, else the
/// checkpoint both parties agreed on.
fn load_for_eval(
    cfg: &RunConfig,
    role: Role,
    load_model: Option<&std::path::Path>,
    (run, resume_step): (&str, Option<u64>),
    tensors: Vec<vfl_nn::split::TensorMut<'_>>,
) -> Result<String, TrainError> {
    let bind = binding(cfg, role);
    if let Some(p) = load_model {
        let loaded = checkpoint::load_export(p, &bind, tensors, cfg.seal.as_deref())?;
        // The export named at the handshake could have been swapped since.
        if loaded != run {
            return Err(TrainError::ExportOfOtherRun {
                path: p.display().to_string(),
                loaded,
                run: run.to_string(),
            });
        }
        return Ok(format!("export {} (run {run})", p.display()));
    }
    match (resume_step, &cfg.checkpoint_path) {
        (Some(step), Some(dir)) => {
            checkpoint::load(dir, step, &bind, run, tensors, cfg.seal.as_deref())?;
            Ok(format!("checkpoint of step {step}"))
        }
        _ => Err(TrainError::NoModelToEvaluate),
    }
}
