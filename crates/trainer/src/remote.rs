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

use vfl_bridge::pb::{self, follower_message::Msg as FMsg, leader_message::Msg as LMsg};
use vfl_bridge::{BridgeError, FollowerLink, LeaderLink, LinkOptions, Settings, message_limit, server};
use vfl_data::blocks::{DataDir, Position, ReadOptions};
use vfl_data::prefetch::{Prefetcher, position_after};
use vfl_data::{Batch, BatchDigest, BatchSource, BlockReader};
use vfl_nn::rng::Rng;
use vfl_nn::{MetricValues, ModelSpec, Role};

use crate::checkpoint::{self, RunState};
use crate::party::{FollowerParty, LeaderParty};
use crate::wire::{Activations, Gradient, WireTensor};
use crate::{TrainError, schema_for};

/// Settings of one party's run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub spec: ModelSpec,
    pub application_id: String,
    pub data_path: PathBuf,
    pub data_path_wildcard: Option<String>,
    pub batch_size: usize,
    /// Leader only: epochs and shuffling.
    pub epochs: u32,
    pub shuffle_seed: Option<u64>,
    pub threads: usize,
    /// Leader: address to listen on. Follower: the leader's address.
    pub addr: String,
    /// How long to wait for the peer to appear, and for any message.
    pub peer_timeout: Duration,
    pub skip_bad_records: bool,
    /// Where checkpoints are saved and resumed from.
    pub checkpoint_path: Option<PathBuf>,
    /// Leader only: checkpoint every N steps and/or every N seconds.
    pub save_checkpoint_steps: Option<u64>,
    pub save_checkpoint_secs: Option<u64>,
    /// Checkpoints kept (the newest ones).
    pub keep_checkpoints: usize,
    /// Where the final model is exported (`<path>/<id>/<role>/`).
    pub export_path: Option<PathBuf>,
    /// Train, or evaluate (forward only).
    pub eval: bool,
    /// Eval: the exported model to load (else the newest common checkpoint).
    pub load_model: Option<PathBuf>,
    /// Eval, leader: write `example_id,score` per example here.
    pub predictions_path: Option<PathBuf>,
    /// When the process started (for the time-to-first-step log line).
    pub started: Instant,
    /// RA-TLS (default) or plaintext.
    pub security: vfl_bridge::Security,
    /// Encryption at rest of checkpoints and exported weights.
    pub seal: Option<std::sync::Arc<crate::seal::Sealer>>,
    /// Counters for the progress line, the logs and `--metrics-addr`.
    pub progress: std::sync::Arc<crate::progress::Progress>,
    /// Serve Prometheus metrics here (host:port).
    pub metrics_addr: Option<String>,
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
}

fn settings(cfg: &RunConfig, process_id: &str) -> Settings {
    Settings {
        application_id: cfg.application_id.clone(),
        model_fingerprint: cfg.spec.fingerprint(),
        batch_size: cfg.batch_size as u32,
        mode: if cfg.eval { "eval" } else { "train" }.into(),
        process_id: process_id.to_string(),
        checkpoint_steps: match cfg.checkpoint_path.clone() {
            Some(dir) => vfl_bridge::Checkpoints::from_fn(move || checkpoint::list(&dir)),
            None => vfl_bridge::Checkpoints::fixed(Vec::new()),
        },
        resume_session: String::new(),
    }
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
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn limit(cfg: &RunConfig) -> usize {
    message_limit(
        cfg.batch_size,
        cfg.spec.follower.output_dim().max(cfg.spec.leader.output_dim()),
    )
}

fn tensor_pb(t: WireTensor) -> pb::Tensor {
    pb::Tensor {
        shape: t.shape,
        data: t.data.into(),
    }
}

fn tensor_wire(t: Option<pb::Tensor>, what: &str) -> Result<WireTensor, TrainError> {
    let t = t.ok_or_else(|| TrainError::Protocol(format!("{what} without a tensor")))?;
    Ok(WireTensor {
        shape: t.shape,
        data: t.data.to_vec(),
    })
}

/// Checks and converts an activations message.
fn activations(a: pb::Activations) -> Result<Activations, TrainError> {
    let digest: [u8; 16] =
        a.batch_digest.as_slice().try_into().map_err(|_| {
            TrainError::Protocol(format!("batch digest of {} bytes, expected 16", a.batch_digest.len()))
        })?;
    Ok(Activations {
        iteration: a.iteration,
        digest: BatchDigest(digest),
        train: a.train,
        tensor: tensor_wire(a.tensor, "activations")?,
    })
}

async fn start_metrics(cfg: &RunConfig) -> Result<(), TrainError> {
    if let Some(addr) = &cfg.metrics_addr {
        let bound = crate::progress::serve_metrics(addr, cfg.progress.clone()).await?;
        tracing::info!(addr = %bound, "serving Prometheus metrics at /metrics");
    }
    Ok(())
}

/// Runs the leader: listens, admits one follower, trains, finishes.
pub async fn run_leader(
    cfg: RunConfig,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<RunSummary, TrainError> {
    let data = DataDir::scan(&cfg.data_path, cfg.data_path_wildcard.as_deref())?;
    start_metrics(&cfg).await?;
    let process_id = vfl_bridge::handshake::new_process_id();
    let mut listener = server::listen(
        &cfg.addr,
        settings(&cfg, &process_id),
        limit(&cfg),
        cfg.security.clone(),
    )
    .await?;
    on_listen(listener.local_addr);
    tracing::info!(addr = %listener.local_addr, blocks = data.blocks().len(), "leader listening");
    let exit_on_reject =
        matches!(&cfg.security, vfl_bridge::Security::RaTls(t) if t.on_reject == vfl_bridge::OnReject::Exit);
    let deadline = tokio::time::Instant::now() + cfg.peer_timeout;
    let waited = loop {
        tokio::select! {
            s = listener.sessions.recv() => break Ok(s),
            Some(reason) = listener.rejections.recv() => {
                if exit_on_reject {
                    break Err(reason);
                }
                tracing::warn!(%reason, "still waiting for an acceptable follower");
            }
            _ = tokio::time::sleep_until(deadline) => break Ok(None),
        }
    };
    let session = match waited {
        Ok(Some(s)) => s,
        Err(reason) => {
            listener.shutdown().await;
            return Err(BridgeError::Rejected(reason).into());
        }
        Ok(None) => {
            let addr = listener.local_addr.to_string();
            listener.shutdown().await;
            return Err(BridgeError::NoPeer {
                addr,
                secs: cfg.peer_timeout.as_secs(),
            }
            .into());
        }
    };
    let mut link = LeaderLink::new(session, &mut listener.sessions, link_options(&cfg));
    let result = loop {
        let r = if cfg.eval {
            evaluate_lead(&cfg, &data, &mut link).await
        } else {
            lead(&cfg, &data, &mut link).await
        };
        match r {
            Err(TrainError::Bridge(e @ BridgeError::PeerRestarted { .. })) if link.restart() => {
                tracing::warn!(error = %e, resume_step = ?link.resume_step(), "starting the session over");
            }
            r => break r,
        }
    };
    finish(&mut link, &result, cfg.peer_timeout).await;
    drop(link);
    listener.shutdown().await;
    result
}

/// After the run: tells the follower about a failure, or waits until it has
/// the last messages (Finish), before the endpoint stops.
async fn finish(link: &mut LeaderLink<'_>, result: &Result<RunSummary, TrainError>, wait: Duration) {
    match result {
        Err(e) => {
            link.send(LMsg::Failure(pb::Failure { reason: e.to_string() })).await;
            link.flush(Duration::from_secs(1)).await;
        }
        Ok(_) => {
            if !link.flush(wait).await {
                tracing::warn!("the follower did not acknowledge the end of the run (it may still have it)");
            }
        }
    }
}

fn link_options(cfg: &RunConfig) -> LinkOptions {
    LinkOptions::new(cfg.peer_timeout, cfg.progress.clone())
}

async fn lead(cfg: &RunConfig, data: &DataDir, link: &mut LeaderLink<'_>) -> Result<RunSummary, TrainError> {
    let session_id = link.session_id().to_string();
    let resume_step = link.resume_step();
    let fingerprint = cfg.spec.fingerprint();
    let schema = schema_for(&cfg.spec, Role::Leader);
    let opts = cfg.read_options();
    let mut party = LeaderParty::new(&cfg.spec, cfg.threads)?;
    let mut state = RunState::default();
    if let (Some(step), Some(dir)) = (resume_step, &cfg.checkpoint_path) {
        state = checkpoint::load(
            dir,
            step,
            Role::Leader,
            &fingerprint,
            party.model_mut().tensors_mut(),
            cfg.seal.as_deref(),
        )?;
        party.restore_counters(state.next_iteration, state.opt_step);
        tracing::info!(
            step,
            epoch = state.epoch,
            block = state.block,
            record = state.record,
            "resumed from checkpoint"
        );
    }
    let (mut loss_sum, mut skipped, mut trained) = (0f64, 0u64, 0u64);
    let mut last_epoch = None;
    let start = Instant::now();
    let mut last_save = Instant::now();
    let mut resuming = resume_step.is_some();
    for epoch in state.epoch..cfg.epochs {
        cfg.progress.set_epoch(u64::from(epoch));
        let (order, start_pos) = if resuming {
            (
                state.plan.clone(),
                Position {
                    block: state.block as usize,
                    record: state.record,
                },
            )
        } else {
            let mut order = data.ids();
            if let Some(seed) = cfg.shuffle_seed {
                Rng::new(seed.wrapping_add(u64::from(epoch))).shuffle(&mut order);
            }
            (order, Position::default())
        };
        resuming = false;
        let last = epoch + 1 == cfg.epochs;
        link.send(LMsg::Plan(pb::EpochPlan {
            epoch,
            block_ids: order.clone(),
            last,
            start_block: start_pos.block as u64,
            start_record: start_pos.record,
        }))
        .await;
        match link.recv().await? {
            FMsg::PlanAck(a) if a.epoch == epoch => {}
            FMsg::Failure(f) => return Err(BridgeError::PeerFailed(f.reason).into()),
            other => {
                return Err(TrainError::Protocol(format!(
                    "expected the plan's acknowledgement, got {other:?}"
                )));
            }
        }
        let mut reader = BlockReader::new(data.select(&order)?, schema.clone(), opts);
        reader.seek(start_pos)?;
        // Decode the next batches on a reader thread while this one trains.
        let mut reader = Prefetcher::spawn(reader, cfg.batch_size, 2)?;
        party.take_metrics();
        let mut iterations = 0u64;
        loop {
            match link.recv().await? {
                FMsg::Activations(a) => {
                    let Some(batch) = reader.next_batch()? else {
                        return Err(TrainError::Protocol(format!(
                            "epoch {epoch}: the follower has more rows than the leader (leader data ended after {iterations} iterations)"
                        )));
                    };
                    let act = activations(a)?;
                    let (report, grad) = tokio::task::block_in_place(|| party.train_step(&batch, &act))?;
                    state.steps += 1;
                    state.examples += report.rows as u64;
                    cfg.progress.step(report.rows as u64, report.loss);
                    if let Some(pos) = position_after(&batch) {
                        let within = pos.block as f64 / order.len().max(1) as f64;
                        cfg.progress
                            .set_fraction((f64::from(epoch) + within) / f64::from(cfg.epochs.max(1)));
                    }
                    iterations += 1;
                    trained += report.rows as u64;
                    loss_sum += f64::from(report.loss) * report.rows as f64;
                    let due = cfg.checkpoint_path.is_some()
                        && (cfg.save_checkpoint_steps.is_some_and(|k| k > 0 && state.steps % k == 0)
                            || cfg
                                .save_checkpoint_secs
                                .is_some_and(|s| last_save.elapsed() >= Duration::from_secs(s)));
                    let checkpoint_step = if due { state.steps } else { 0 };
                    link.send(LMsg::Gradient(pb::Gradient {
                        iteration: grad.iteration,
                        tensor: Some(tensor_pb(grad.tensor)),
                        checkpoint_step,
                    }))
                    .await;
                    if let (true, Some(dir)) = (due, &cfg.checkpoint_path) {
                        let pos = position_after(&batch).unwrap_or(start_pos);
                        let (next_iteration, opt_step) = party.counters();
                        let st = RunState {
                            epoch,
                            plan: order.clone(),
                            block: pos.block as u64,
                            record: pos.record,
                            next_iteration,
                            opt_step,
                            ..state.clone()
                        };
                        let tensors = party.model_mut().tensors_mut();
                        tokio::task::block_in_place(|| {
                            checkpoint::save(
                                dir,
                                state.steps,
                                Role::Leader,
                                &fingerprint,
                                tensors,
                                &st,
                                cfg.keep_checkpoints,
                                cfg.seal.as_deref(),
                            )
                        })?;
                        match link.recv().await? {
                            FMsg::CheckpointDone(d) if d.step == state.steps => {}
                            FMsg::Failure(f) => return Err(BridgeError::PeerFailed(f.reason).into()),
                            other => {
                                return Err(TrainError::Protocol(format!("expected CheckpointDone, got {other:?}")));
                            }
                        }
                        last_save = Instant::now();
                        tracing::info!(step = state.steps, "checkpoint saved by both parties");
                    }
                    if trained == report.rows as u64 {
                        tracing::info!(
                            ms_since_start = cfg.started.elapsed().as_millis() as u64,
                            "first training step done"
                        );
                    }
                    if state.steps % 100 == 0 {
                        tracing::info!(epoch, step = state.steps, loss = report.loss, "training");
                    }
                    reader.recycle(batch);
                }
                FMsg::EndOfData(e) => {
                    if reader.next_batch()?.is_some() || e.iterations != iterations {
                        return Err(TrainError::Protocol(format!(
                            "epoch {epoch}: the follower's data ended after {} iterations but the leader has more rows (after {iterations} iterations)",
                            e.iterations
                        )));
                    }
                    break;
                }
                FMsg::Failure(f) => return Err(BridgeError::PeerFailed(f.reason).into()),
                other => {
                    return Err(TrainError::Protocol(format!(
                        "unexpected message from the follower: {other:?}"
                    )));
                }
            }
        }
        if iterations == 0 && start_pos == Position::default() {
            return Err(TrainError::Protocol(format!(
                "epoch {epoch}: no data (refusing to train on zero examples)"
            )));
        }
        skipped += reader.finish().map_or(0, |r| r.skipped());
        let m = party.take_metrics().values();
        tracing::info!(epoch, iterations, auc = ?m.auc, "epoch done");
        cfg.progress.set_auc(m.auc);
        last_epoch = Some(m);
    }
    let seconds = start.elapsed().as_secs_f64();
    let export_id = format!(
        "{}-{session_id}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    link.send(LMsg::Finish(pb::Finish {
        summary: format!("{} steps, {} examples", state.steps, state.examples),
        export_id: export_id.clone(),
    }))
    .await;
    let export_dir = match &cfg.export_path {
        None => None,
        Some(p) => {
            let manifest = serde_json::json!({
                "role": "leader",
                "step": state.steps,
                "examples": state.examples,
                "epochs": cfg.epochs,
                "session": session_id,
                "model": cfg.spec.name,
                "model_fingerprint": fingerprint,
                "data_fingerprint": data_fingerprint(data),
                "resumed_from": resume_step,
                "last_epoch_metrics": last_epoch,
            });
            Some(checkpoint::export(
                p,
                &export_id,
                Role::Leader,
                &cfg.spec,
                party.model_mut().tensors_mut(),
                manifest,
                cfg.seal.as_deref(),
            )?)
        }
    };
    Ok(RunSummary {
        session_id,
        epochs: cfg.epochs,
        steps: state.steps,
        examples: state.examples,
        seconds,
        mean_loss: if trained == 0 { 0.0 } else { loss_sum / trained as f64 },
        last_epoch,
        skipped_records: skipped,
        resumed_from: resume_step,
        export_dir,
    })
}

/// Runs the follower: connects (retrying until the peer timeout), follows
/// the leader's plans, trains, and returns when the leader finishes.
pub async fn run_follower(cfg: RunConfig) -> Result<RunSummary, TrainError> {
    let data = DataDir::scan(&cfg.data_path, cfg.data_path_wildcard.as_deref())?;
    start_metrics(&cfg).await?;
    let process_id = vfl_bridge::handshake::new_process_id();
    let mut link = FollowerLink::connect(
        &cfg.addr,
        settings(&cfg, &process_id),
        limit(&cfg),
        cfg.security.clone(),
        link_options(&cfg),
    )
    .await?;
    let result = loop {
        let reply = link.reply();
        tracing::info!(session = %reply.session_id, leader = %reply.process_id, "connected to the leader");
        let r = if cfg.eval {
            evaluate_follow(&cfg, &data, &mut link).await
        } else {
            follow(&cfg, &data, &mut link).await
        };
        match r {
            Err(TrainError::Bridge(e @ BridgeError::PeerRestarted { .. })) if link.restart() => {
                tracing::warn!(error = %e, "starting the session over");
            }
            r => break r,
        }
    };
    if let Err(e) = &result
        && !matches!(e, TrainError::Bridge(BridgeError::PeerFailed(_)))
    {
        link.send(FMsg::Failure(pb::Failure { reason: e.to_string() })).await;
        link.flush(Duration::from_secs(1)).await;
    }
    result
}

async fn follow(cfg: &RunConfig, data: &DataDir, link: &mut FollowerLink) -> Result<RunSummary, TrainError> {
    let reply = link.reply().clone();
    let session_id = reply.session_id.as_str();
    let fingerprint = cfg.spec.fingerprint();
    let schema = schema_for(&cfg.spec, Role::Follower);
    let opts = cfg.read_options();
    let mut party = FollowerParty::new(&cfg.spec, cfg.threads)?;
    let mut state = RunState::default();
    let resumed_from = reply.resume.then_some(reply.resume_step);
    let mut expect_resume = None;
    if let Some(step) = resumed_from {
        let dir = cfg.checkpoint_path.as_ref().ok_or_else(|| {
            TrainError::Protocol("the leader asks to resume but this follower has no --checkpoint-path".into())
        })?;
        state = checkpoint::load(
            dir,
            step,
            Role::Follower,
            &fingerprint,
            party.model_mut().tensors_mut(),
            cfg.seal.as_deref(),
        )?;
        party.restore_counters(state.next_iteration, state.opt_step);
        tracing::info!(step, "resumed from checkpoint");
        expect_resume = Some(state.clone());
    }
    let (mut epochs, mut skipped) = (0u32, 0u64);
    let start = Instant::now();
    loop {
        match link.recv().await? {
            LMsg::Plan(plan) => {
                let start_pos = Position {
                    block: plan.start_block as usize,
                    record: plan.start_record,
                };
                if let Some(r) = expect_resume.take()
                    && (r.plan != plan.block_ids
                        || r.epoch != plan.epoch
                        || (r.block, r.record) != (plan.start_block, plan.start_record))
                {
                    return Err(TrainError::Protocol(format!(
                        "the leader resumes at epoch {} block #{} record {}, but this follower's checkpoint is at epoch {} block #{} record {} (or the block order differs)",
                        plan.epoch, plan.start_block, plan.start_record, r.epoch, r.block, r.record
                    )));
                }
                let blocks = data.select(&plan.block_ids)?;
                let mut reader = BlockReader::new(blocks, schema.clone(), opts);
                reader.seek(start_pos)?;
                let mut reader = Prefetcher::spawn(reader, cfg.batch_size, 2)?;
                link.send(FMsg::PlanAck(pb::PlanAck { epoch: plan.epoch })).await;
                cfg.progress.set_epoch(u64::from(plan.epoch));
                let mut iterations = 0u64;
                loop {
                    let Some(batch) = reader.next_batch()? else {
                        link.send(FMsg::EndOfData(pb::EndOfData {
                            epoch: plan.epoch,
                            iterations,
                        }))
                        .await;
                        break;
                    };
                    let n = batch.rows;
                    let act = tokio::task::block_in_place(|| party.forward(&batch, true))?;
                    link.send(FMsg::Activations(pb::Activations {
                        iteration: act.iteration,
                        batch_digest: act.digest.0.to_vec(),
                        train: true,
                        tensor: Some(tensor_pb(act.tensor)),
                    }))
                    .await;
                    let g = match link.recv().await? {
                        LMsg::Gradient(g) => g,
                        LMsg::Failure(f) => return Err(BridgeError::PeerFailed(f.reason).into()),
                        other => return Err(TrainError::Protocol(format!("expected a gradient, got {other:?}"))),
                    };
                    let grad = Gradient {
                        iteration: g.iteration,
                        tensor: tensor_wire(g.tensor, "gradient")?,
                    };
                    tokio::task::block_in_place(|| party.apply_gradient(&batch, &grad))?;
                    iterations += 1;
                    state.steps += 1;
                    state.examples += n as u64;
                    cfg.progress.step(n as u64, f32::NAN);
                    if g.checkpoint_step > 0 {
                        if g.checkpoint_step != state.steps {
                            return Err(TrainError::Protocol(format!(
                                "the leader checkpoints step {} but this follower is at step {}",
                                g.checkpoint_step, state.steps
                            )));
                        }
                        let dir = cfg.checkpoint_path.as_ref().ok_or_else(|| {
                            TrainError::Protocol(
                                "the leader saves a checkpoint but this follower has no --checkpoint-path".into(),
                            )
                        })?;
                        let pos = position_after(&batch).unwrap_or(start_pos);
                        let (next_iteration, opt_step) = party.counters();
                        let st = RunState {
                            epoch: plan.epoch,
                            plan: plan.block_ids.clone(),
                            block: pos.block as u64,
                            record: pos.record,
                            next_iteration,
                            opt_step,
                            ..state.clone()
                        };
                        let tensors = party.model_mut().tensors_mut();
                        tokio::task::block_in_place(|| {
                            checkpoint::save(
                                dir,
                                st.steps,
                                Role::Follower,
                                &fingerprint,
                                tensors,
                                &st,
                                cfg.keep_checkpoints,
                                cfg.seal.as_deref(),
                            )
                        })?;
                        link.send(FMsg::CheckpointDone(pb::CheckpointDone { step: st.steps }))
                            .await;
                    }
                    reader.recycle(batch);
                }
                skipped += reader.finish().map_or(0, |r| r.skipped());
                epochs += 1;
            }
            LMsg::Finish(fin) => {
                link.ack_now().await;
                let export_dir = match &cfg.export_path {
                    None => None,
                    Some(p) => {
                        let manifest = serde_json::json!({
                            "role": "follower",
                            "step": state.steps,
                            "examples": state.examples,
                            "session": session_id,
                            "model": cfg.spec.name,
                            "model_fingerprint": fingerprint,
                            "data_fingerprint": data_fingerprint(data),
                            "resumed_from": resumed_from,
                        });
                        Some(checkpoint::export(
                            p,
                            &fin.export_id,
                            Role::Follower,
                            &cfg.spec,
                            party.model_mut().tensors_mut(),
                            manifest,
                            cfg.seal.as_deref(),
                        )?)
                    }
                };
                return Ok(RunSummary {
                    session_id: session_id.to_string(),
                    epochs,
                    steps: state.steps,
                    examples: state.examples,
                    seconds: start.elapsed().as_secs_f64(),
                    mean_loss: 0.0,
                    last_epoch: None,
                    skipped_records: skipped,
                    resumed_from,
                    export_dir,
                });
            }
            LMsg::Failure(f) => return Err(BridgeError::PeerFailed(f.reason).into()),
            other => {
                return Err(TrainError::Protocol(format!(
                    "unexpected message from the leader: {other:?}"
                )));
            }
        }
    }
}

/// Loads the model for evaluation: an export if given, else the
/// checkpoint both parties agreed on.
fn load_for_eval(
    cfg: &RunConfig,
    role: Role,
    resume_step: Option<u64>,
    tensors: Vec<vfl_nn::split::TensorMut<'_>>,
) -> Result<String, TrainError> {
    let fingerprint = cfg.spec.fingerprint();
    if let Some(p) = &cfg.load_model {
        checkpoint::load_export(p, role, &fingerprint, tensors, cfg.seal.as_deref())?;
        return Ok(format!("export {}", p.display()));
    }
    match (resume_step, &cfg.checkpoint_path) {
        (Some(step), Some(dir)) => {
            checkpoint::load(dir, step, role, &fingerprint, tensors, cfg.seal.as_deref())?;
            Ok(format!("checkpoint of step {step}"))
        }
        _ => Err(TrainError::Protocol(
            "eval needs a model: --load-model (an export) or a --checkpoint-path holding a checkpoint both parties have".into(),
        )),
    }
}

async fn evaluate_lead(cfg: &RunConfig, data: &DataDir, link: &mut LeaderLink<'_>) -> Result<RunSummary, TrainError> {
    let session_id = link.session_id().to_string();
    let resume_step = link.resume_step();
    let schema = schema_for(&cfg.spec, Role::Leader);
    let opts = cfg.read_options();
    let mut party = LeaderParty::new(&cfg.spec, cfg.threads)?;
    let source = load_for_eval(cfg, Role::Leader, resume_step, party.model_mut().tensors_mut())?;
    tracing::info!(%source, "evaluating");
    let order = data.ids();
    link.send(LMsg::Plan(pb::EpochPlan {
        epoch: 0,
        block_ids: order.clone(),
        last: true,
        start_block: 0,
        start_record: 0,
    }))
    .await;
    match link.recv().await? {
        FMsg::PlanAck(_) => {}
        FMsg::Failure(f) => return Err(BridgeError::PeerFailed(f.reason).into()),
        other => {
            return Err(TrainError::Protocol(format!(
                "expected the plan's acknowledgement, got {other:?}"
            )));
        }
    }
    let mut reader = BlockReader::new(data.select(&order)?, schema.clone(), opts);
    let mut batch = Batch::new(schema.slots.len(), schema.dense.len());
    let mut predictions = String::from("example_id,score\n");
    let (mut steps, mut examples, mut loss_sum) = (0u64, 0u64, 0f64);
    let start = Instant::now();
    loop {
        match link.recv().await? {
            FMsg::Activations(a) => {
                if reader.fill(&mut batch, cfg.batch_size)? == 0 {
                    return Err(TrainError::Protocol(
                        "the follower has more rows than the leader".into(),
                    ));
                }
                let act = Activations {
                    train: false,
                    ..activations(a)?
                };
                let report = tokio::task::block_in_place(|| party.eval_step(&batch, &act))?;
                if cfg.predictions_path.is_some() {
                    for (r, score) in party.scores().iter().enumerate() {
                        let id = String::from_utf8_lossy(batch.example_id(r));
                        predictions.push_str(&format!("{id},{score}\n"));
                    }
                }
                steps += 1;
                examples += report.rows as u64;
                loss_sum += f64::from(report.loss) * report.rows as f64;
            }
            FMsg::EndOfData(e) => {
                if reader.fill(&mut batch, cfg.batch_size)? > 0 || e.iterations != steps {
                    return Err(TrainError::Protocol(
                        "the leader has more rows than the follower".into(),
                    ));
                }
                break;
            }
            FMsg::Failure(f) => return Err(BridgeError::PeerFailed(f.reason).into()),
            other => {
                return Err(TrainError::Protocol(format!(
                    "unexpected message from the follower: {other:?}"
                )));
            }
        }
    }
    if examples == 0 {
        return Err(TrainError::Protocol("no data to evaluate".into()));
    }
    if let Some(p) = &cfg.predictions_path {
        vfl_data::atomic::write_atomic(p, |w| w.write_all(predictions.as_bytes()))
            .map_err(|e| TrainError::Store(format!("{}: {e}", p.display())))?;
    }
    link.send(LMsg::Finish(pb::Finish {
        summary: format!("evaluated {examples} examples"),
        export_id: String::new(),
    }))
    .await;
    Ok(RunSummary {
        session_id,
        epochs: 1,
        steps,
        examples,
        seconds: start.elapsed().as_secs_f64(),
        mean_loss: loss_sum / examples as f64,
        last_epoch: Some(party.take_metrics().values()),
        skipped_records: reader.skipped(),
        resumed_from: None,
        export_dir: None,
    })
}

async fn evaluate_follow(cfg: &RunConfig, data: &DataDir, link: &mut FollowerLink) -> Result<RunSummary, TrainError> {
    let reply = link.reply().clone();
    let session_id = reply.session_id.as_str();
    let schema = schema_for(&cfg.spec, Role::Follower);
    let opts = cfg.read_options();
    let mut party = FollowerParty::new(&cfg.spec, cfg.threads)?;
    let resume = reply.resume.then_some(reply.resume_step);
    let source = load_for_eval(cfg, Role::Follower, resume, party.model_mut().tensors_mut())?;
    tracing::info!(%source, "evaluating");
    let mut batch = Batch::new(schema.slots.len(), schema.dense.len());
    let (mut steps, mut examples) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        match link.recv().await? {
            LMsg::Plan(plan) => {
                let mut reader = BlockReader::new(data.select(&plan.block_ids)?, schema.clone(), opts);
                link.send(FMsg::PlanAck(pb::PlanAck { epoch: plan.epoch })).await;
                loop {
                    let n = reader.fill(&mut batch, cfg.batch_size)?;
                    if n == 0 {
                        link.send(FMsg::EndOfData(pb::EndOfData {
                            epoch: plan.epoch,
                            iterations: steps,
                        }))
                        .await;
                        break;
                    }
                    let act = tokio::task::block_in_place(|| party.forward(&batch, false))?;
                    link.send(FMsg::Activations(pb::Activations {
                        iteration: act.iteration,
                        batch_digest: act.digest.0.to_vec(),
                        train: false,
                        tensor: Some(tensor_pb(act.tensor)),
                    }))
                    .await;
                    steps += 1;
                    examples += n as u64;
                }
            }
            LMsg::Finish(_) => {
                link.ack_now().await;
                return Ok(RunSummary {
                    session_id: session_id.to_string(),
                    epochs: 1,
                    steps,
                    examples,
                    seconds: start.elapsed().as_secs_f64(),
                    mean_loss: 0.0,
                    last_epoch: None,
                    skipped_records: 0,
                    resumed_from: None,
                    export_dir: None,
                });
            }
            LMsg::Failure(f) => return Err(BridgeError::PeerFailed(f.reason).into()),
            other => {
                return Err(TrainError::Protocol(format!(
                    "unexpected message from the leader: {other:?}"
                )));
            }
        }
    }
}
