//! The follower's driver: connects, follows the leader's plans, sends
//! activations, applies gradients, checkpoints when told and exports.

use super::*;

/// Runs the follower: connects (retrying until the peer timeout), follows
/// the leader's plans, trains, and returns when the leader finishes.
pub async fn run_follower(cfg: RunConfig, task: FollowerTask) -> Result<RunSummary, TrainError> {
    let data = DataDir::scan(&cfg.data_path, cfg.data_path_wildcard.as_deref())?;
    read_record(&cfg, Role::Follower)?;
    let process_id = vfl_bridge::handshake::new_process_id();
    let mut link = FollowerLink::connect(
        &cfg.addr,
        settings(&cfg, task.mode(), Role::Follower, &process_id)?,
        limit(&cfg),
        cfg.security.clone(),
        link_options(&cfg),
    )
    .await?;
    let result = loop {
        let reply = link.reply();
        tracing::info!(session = %reply.session_id, leader = %reply.process_id, "connected to the leader");
        let r = match &task {
            FollowerTask::Eval { load_model } => evaluate_follow(&cfg, load_model.as_deref(), &data, &mut link).await,
            FollowerTask::Train => follow(&cfg, &data, &mut link).await,
        };
        match r {
            Err(TrainError::Bridge(e @ BridgeError::PeerRestarted { .. })) => match link.restart() {
                Ok(true) => {
                    tracing::warn!(error = %e, "starting the session over");
                }
                Ok(false) => break Err(e.into()),
                Err(gave_up) => break Err(gave_up.into()),
            },
            r => break r,
        }
    };
    if let Err(e) = &result
        && !matches!(e, TrainError::Bridge(BridgeError::PeerFailed(_)))
    {
        let _ = link.send(FMsg::Failure(pb::Failure { reason: reason(e) })).await;
        link.flush(Duration::from_secs(1)).await;
    }
    result
}

/// The follower's training session, phase by phase: [`Follow::start`]
/// (checks of the leader's answer, resume from a checkpoint), then the
/// leader's messages: per plan [`Follow::epoch`] (each step in
/// [`Follow::step`], checkpoints when asked in [`Follow::checkpoint`]),
/// then [`Follow::finish`] (export, summary).
struct Follow<'s> {
    cfg: &'s RunConfig,
    data: &'s DataDir,
    link: &'s mut FollowerLink,
    reply: pb::HelloReply,
    resumed_from: Option<u64>,
    bind: Binding,
    schema: vfl_data::Schema,
    party: FollowerParty,
    state: RunState,
    /// The checkpoint's position, which the leader's first plan must match.
    expect_resume: Option<RunState>,
    epochs: u32,
    skipped: u64,
}

/// One plan of the leader's, as the follower trains it.
struct FollowPlan {
    epoch: u32,
    block_ids: Vec<String>,
    start: Position,
}

async fn follow(cfg: &RunConfig, data: &DataDir, link: &mut FollowerLink) -> Result<RunSummary, TrainError> {
    let mut s = Follow::start(cfg, data, link)?;
    let started = Instant::now();
    loop {
        match s.link.recv().await? {
            LMsg::Plan(plan) => s.epoch(plan).await?,
            LMsg::Finish(fin) => return s.finish(fin, started.elapsed().as_secs_f64()).await,
            other => return Err(unexpected_l("a plan or the end of training", other)),
        }
    }
}

/// A message other than the one expected: the peer's failure, or a
/// protocol error naming what came (kind and sizes only).
fn unexpected_l(expected: &'static str, got: LMsg) -> TrainError {
    match got {
        LMsg::Failure(f) => peer_failed(f),
        other => TrainError::Unexpected {
            expected,
            got: describe_l(&other),
        },
    }
}

impl<'s> Follow<'s> {
    /// The session's first phase: the leader's answer checked, the run
    /// record, and the checkpoint the leader asks to resume from.
    fn start(cfg: &'s RunConfig, data: &'s DataDir, link: &'s mut FollowerLink) -> Result<Self, TrainError> {
        let reply = link.reply().clone();
        let resumed_from = reply.resume.then_some(reply.resume_step);
        check_session(cfg, false, &reply)?;
        start_run(cfg, Role::Follower, &reply.run_id, resumed_from)?;
        let mut s = Follow {
            bind: binding(cfg, Role::Follower),
            schema: schema_for(&cfg.spec, Role::Follower),
            party: FollowerParty::new(&cfg.spec, cfg.threads)?,
            state: RunState::default(),
            expect_resume: None,
            epochs: 0,
            skipped: 0,
            cfg,
            data,
            link,
            reply,
            resumed_from,
        };
        if let Some(step) = resumed_from {
            let dir = cfg
                .checkpoint_path
                .as_ref()
                .ok_or(TrainError::NoCheckpointPath { asked: "to resume" })?;
            s.state = checkpoint::load(
                dir,
                step,
                &s.bind,
                &s.reply.run_id,
                s.party.model_mut().tensors_mut(),
                cfg.seal.as_deref(),
            )?;
            s.party.restore_counters(s.state.next_iteration, s.state.opt_step);
            tracing::info!(step, "resumed from checkpoint");
            s.expect_resume = Some(s.state.clone());
        }
        Ok(s)
    }

    /// Trains the epoch of one plan: activations out, gradients in, until
    /// this party's data ends.
    async fn epoch(&mut self, plan: pb::EpochPlan) -> Result<(), TrainError> {
        let plan = FollowPlan {
            epoch: plan.epoch,
            block_ids: plan.block_ids,
            start: Position {
                block: plan.start_block as usize,
                record: plan.start_record,
            },
        };
        if let Some(r) = self.expect_resume.take()
            && (r.plan != plan.block_ids
                || r.epoch != plan.epoch
                || (r.block, r.record) != (plan.start.block as u64, plan.start.record))
        {
            return Err(TrainError::ResumeMismatch {
                leader: (plan.epoch, plan.start.block as u64, plan.start.record),
                ours: (r.epoch, r.block, r.record),
            });
        }
        let cfg = self.cfg;
        let blocks = self.data.select(&plan.block_ids)?;
        let mut reader = cfg.block_reader(Role::Follower, blocks, self.schema.clone());
        reader.seek(plan.start)?;
        let mut reader = Prefetcher::spawn(reader, cfg.batch_size, 2)?;
        self.link.send(FMsg::PlanAck(pb::PlanAck { epoch: plan.epoch })).await?;
        cfg.progress.set_epoch(u64::from(plan.epoch));
        let mut iterations = 0u64;
        while let Some(batch) = reader.next_batch()? {
            self.step(&plan, &batch).await?;
            iterations += 1;
            reader.recycle(batch);
        }
        let end = pb::EndOfData {
            epoch: plan.epoch,
            iterations,
        };
        self.link.send(FMsg::EndOfData(end)).await?;
        self.skipped += skipped_records(plan.epoch, reader.finish().as_ref());
        self.epochs += 1;
        Ok(())
    }

    /// One training step: this tower's forward, the activations to the
    /// leader, its gradient back and applied; a checkpoint if it asks.
    async fn step(&mut self, plan: &FollowPlan, batch: &Batch) -> Result<(), TrainError> {
        let n = batch.rows;
        let party = &mut self.party;
        let act = tokio::task::block_in_place(|| party.forward(batch, true))?;
        self.link.send(FMsg::Activations(act)).await?;
        let g = match self.link.recv().await? {
            LMsg::Gradient(g) => g,
            other => return Err(unexpected_l("a gradient", other)),
        };
        let party = &mut self.party;
        tokio::task::block_in_place(|| party.apply_gradient(batch, &g))?;
        self.state.steps += 1;
        self.state.examples += n as u64;
        self.cfg.progress.step(n as u64, f32::NAN);
        if g.checkpoint_step > 0 {
            self.checkpoint(g.checkpoint_step, plan, batch).await?;
        }
        Ok(())
    }

    /// The leader saved step `step` and asks for ours: saved, committed
    /// (both hold it now: the new rollback floor), the leader's evidence
    /// verified again, CheckpointDone.
    async fn checkpoint(&mut self, step: u64, plan: &FollowPlan, batch: &Batch) -> Result<(), TrainError> {
        if step != self.state.steps {
            return Err(TrainError::CheckpointStep {
                leader: step,
                ours: self.state.steps,
            });
        }
        let cfg = self.cfg;
        let dir = cfg.checkpoint_path.as_ref().ok_or(TrainError::NoCheckpointPath {
            asked: "to save a checkpoint",
        })?;
        let counters = self.party.counters();
        let at = At {
            epoch: plan.epoch,
            plan: &plan.block_ids,
            pos: position_after(batch).unwrap_or(plan.start),
        };
        let run_id = &self.reply.run_id;
        let tensors = self.party.model_mut().tensors_mut();
        save_checkpoint(cfg, dir, Role::Follower, run_id, tensors, &self.state, at, counters)?;
        checkpoint::commit(dir, &self.bind, cfg.seal.as_deref(), run_id, step)?;
        reverify(cfg, self.link.peer(), PartyRole::Leader)?;
        self.link
            .send(FMsg::CheckpointDone(pb::CheckpointDone { step }))
            .await?;
        Ok(())
    }

    /// The last phase: the leader's Finish acknowledged at once (before a
    /// slow export), this party's export under the leader's id, the summary.
    async fn finish(mut self, fin: pb::Finish, seconds: f64) -> Result<RunSummary, TrainError> {
        self.link.ack_now().await;
        if !checkpoint::is_safe_component(&fin.export_id) {
            return Err(TrainError::UnsafeExportId {
                id: sanitize(&fin.export_id, 64),
            });
        }
        let export_dir = match &self.cfg.export_path {
            None => None,
            Some(p) => Some(self.export(p, &fin.export_id)?),
        };
        Ok(RunSummary {
            session_id: self.reply.session_id.clone(),
            epochs: self.epochs,
            steps: self.state.steps,
            examples: self.state.examples,
            seconds,
            mean_loss: 0.0,
            last_epoch: None,
            skipped_records: self.skipped,
            resumed_from: self.resumed_from,
            export_dir,
        })
    }

    /// Exports the trained tower under `<path>/<id>/follower/`.
    fn export(&mut self, path: &std::path::Path, id: &str) -> Result<PathBuf, TrainError> {
        let cfg = self.cfg;
        let manifest = manifest(
            cfg,
            (Role::Follower, &self.bind),
            &self.state,
            &self.reply.session_id,
            self.data,
            self.resumed_from,
        );
        let plan = checkpoint::ExportPlan {
            export_path: path,
            id,
            run: &self.reply.run_id,
            release: &self.reply.release_exports,
        };
        checkpoint::export(
            &plan,
            &self.bind,
            &cfg.spec,
            self.party.model_mut().tensors_mut(),
            manifest,
            cfg.seal.as_deref(),
        )
    }
}

async fn evaluate_follow(
    cfg: &RunConfig,
    load_model: Option<&std::path::Path>,
    data: &DataDir,
    link: &mut FollowerLink,
) -> Result<RunSummary, TrainError> {
    let reply = link.reply().clone();
    let session_id = reply.session_id.as_str();
    let schema = schema_for(&cfg.spec, Role::Follower);
    let mut party = FollowerParty::new(&cfg.spec, cfg.threads)?;
    let resume = reply.resume.then_some(reply.resume_step);
    check_session(cfg, true, &reply)?;
    let source = load_for_eval(
        cfg,
        Role::Follower,
        load_model,
        (&reply.run_id, resume),
        party.model_mut().tensors_mut(),
    )?;
    tracing::info!(%source, "evaluating");
    let mut batch = Batch::new(schema.slots.len(), schema.dense.len());
    let (mut steps, mut examples, mut skipped) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    loop {
        match link.recv().await? {
            LMsg::Plan(plan) => {
                let mut reader = cfg.block_reader(Role::Follower, data.select(&plan.block_ids)?, schema.clone());
                link.send(FMsg::PlanAck(pb::PlanAck { epoch: plan.epoch })).await?;
                loop {
                    let n = reader.fill(&mut batch, cfg.batch_size)?;
                    if n == 0 {
                        link.send(FMsg::EndOfData(pb::EndOfData {
                            epoch: plan.epoch,
                            iterations: steps,
                        }))
                        .await?;
                        break;
                    }
                    let act = tokio::task::block_in_place(|| party.forward(&batch, false))?;
                    link.send(FMsg::Activations(act)).await?;
                    steps += 1;
                    examples += n as u64;
                }
                skipped += skipped_records(plan.epoch, Some(&reader));
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
                    skipped_records: skipped,
                    resumed_from: None,
                    export_dir: None,
                });
            }
            other => return Err(unexpected_l("a plan or the end of evaluation", other)),
        }
    }
}

/// What the follower checks of the leader's answer itself (its enclave
/// enforces these, not only the leader's): both policies release the same
/// exports, and training never resumes below what this follower knows was
/// committed.
fn check_session(cfg: &RunConfig, eval: bool, reply: &pb::HelloReply) -> Result<(), TrainError> {
    let ours = cfg.security.release_exports();
    if reply.release_exports != ours {
        return Err(TrainError::ReleaseMismatch {
            leader: reply.release_exports.clone(),
            follower: ours,
        });
    }
    if eval {
        return Ok(());
    }
    if let Some(rec) = read_record(cfg, Role::Follower)?
        && rec.run_id == reply.run_id
    {
        let from = if reply.resume { reply.resume_step } else { 0 };
        if from < rec.committed_step {
            let err = TrainError::Rollback {
                role: "follower",
                committed: rec.committed_step,
                run: rec.run_id.clone(),
                from: if reply.resume {
                    format!("step {from}")
                } else {
                    "the start".into()
                },
            };
            if !cfg.allow_rollback {
                return Err(err);
            }
            tracing::warn!(error = %err, "ROLLBACK ALLOWED (--allow-rollback)");
        }
    }
    Ok(())
}
