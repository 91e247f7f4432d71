//! The follower's driver: connects, follows the leader's plans, sends
//! activations, applies gradients, checkpoints when told and exports.

use super::*;

/// Runs the follower: connects (retrying until the peer timeout), follows
/// the leader's plans, trains, and returns when the leader finishes.
pub async fn run_follower(cfg: RunConfig) -> Result<RunSummary, TrainError> {
    let data = DataDir::scan(&cfg.data_path, cfg.data_path_wildcard.as_deref())?;
    read_record(&cfg, Role::Follower)?;
    start_metrics(&cfg).await?;
    let process_id = vfl_bridge::handshake::new_process_id();
    let mut link = FollowerLink::connect(
        &cfg.addr,
        settings(&cfg, Role::Follower, &process_id)?,
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

async fn follow(cfg: &RunConfig, data: &DataDir, link: &mut FollowerLink) -> Result<RunSummary, TrainError> {
    let reply = link.reply().clone();
    let session_id = reply.session_id.as_str();
    let run_id = reply.run_id.clone();
    let bind = binding(cfg, Role::Follower);
    let fingerprint = bind.model.clone();
    let schema = schema_for(&cfg.spec, Role::Follower);
    let mut party = FollowerParty::new(&cfg.spec, cfg.threads)?;
    let mut state = RunState::default();
    let resumed_from = reply.resume.then_some(reply.resume_step);
    check_session(cfg, &reply)?;
    start_run(cfg, Role::Follower, &run_id, resumed_from)?;
    let mut expect_resume = None;
    if let Some(step) = resumed_from {
        let dir = cfg.checkpoint_path.as_ref().ok_or_else(|| {
            TrainError::Protocol("the leader asks to resume but this follower has no --checkpoint-path".into())
        })?;
        state = checkpoint::load(
            dir,
            step,
            &bind,
            &run_id,
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
                let mut reader = cfg.block_reader(Role::Follower, blocks, schema.clone());
                reader.seek(start_pos)?;
                let mut reader = Prefetcher::spawn(reader, cfg.batch_size, 2)?;
                link.send(FMsg::PlanAck(pb::PlanAck { epoch: plan.epoch })).await?;
                cfg.progress.set_epoch(u64::from(plan.epoch));
                let mut iterations = 0u64;
                loop {
                    let Some(batch) = reader.next_batch()? else {
                        link.send(FMsg::EndOfData(pb::EndOfData {
                            epoch: plan.epoch,
                            iterations,
                        }))
                        .await?;
                        break;
                    };
                    let n = batch.rows;
                    let act = tokio::task::block_in_place(|| party.forward(&batch, true))?;
                    link.send(activations_pb(act)).await?;
                    let g = match link.recv().await? {
                        LMsg::Gradient(g) => g,
                        LMsg::Failure(f) => return Err(peer_failed(f)),
                        other => {
                            return Err(TrainError::Protocol(format!(
                                "expected a gradient, got {}",
                                describe_l(&other)
                            )));
                        }
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
                        let counters = party.counters();
                        let at = At {
                            epoch: plan.epoch,
                            plan: &plan.block_ids,
                            pos: position_after(&batch).unwrap_or(start_pos),
                        };
                        let tensors = party.model_mut().tensors_mut();
                        save_checkpoint(cfg, dir, Role::Follower, &run_id, tensors, &state, at, counters)?;
                        // The leader saved this step before asking for it: both
                        // hold it now, so it is the new rollback floor.
                        checkpoint::commit(dir, &bind, cfg.seal.as_deref(), &run_id, state.steps)?;
                        reverify(cfg, link.peer(), PartyRole::Leader)?;
                        link.send(FMsg::CheckpointDone(pb::CheckpointDone { step: state.steps }))
                            .await?;
                    }
                    reader.recycle(batch);
                }
                skipped += reader.finish().map_or(0, |r| r.skipped());
                epochs += 1;
            }
            LMsg::Finish(fin) => {
                link.ack_now().await;
                if !checkpoint::is_safe_component(&fin.export_id) {
                    return Err(TrainError::UnsafeExportId {
                        id: sanitize(&fin.export_id, 64),
                    });
                }
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
                        let plan = checkpoint::ExportPlan {
                            export_path: p,
                            id: &fin.export_id,
                            run: &run_id,
                            release: &reply.release_exports,
                        };
                        Some(checkpoint::export(
                            &plan,
                            &bind,
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
            LMsg::Failure(f) => return Err(peer_failed(f)),
            other => {
                return Err(TrainError::Protocol(format!(
                    "unexpected message from the leader: {}",
                    describe_l(&other)
                )));
            }
        }
    }
}

async fn evaluate_follow(cfg: &RunConfig, data: &DataDir, link: &mut FollowerLink) -> Result<RunSummary, TrainError> {
    let reply = link.reply().clone();
    let session_id = reply.session_id.as_str();
    let schema = schema_for(&cfg.spec, Role::Follower);
    let mut party = FollowerParty::new(&cfg.spec, cfg.threads)?;
    let resume = reply.resume.then_some(reply.resume_step);
    check_session(cfg, &reply)?;
    let source = load_for_eval(
        cfg,
        Role::Follower,
        (&reply.run_id, resume),
        party.model_mut().tensors_mut(),
    )?;
    tracing::info!(%source, "evaluating");
    let mut batch = Batch::new(schema.slots.len(), schema.dense.len());
    let (mut steps, mut examples) = (0u64, 0u64);
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
                    link.send(activations_pb(act)).await?;
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
            LMsg::Failure(f) => return Err(peer_failed(f)),
            other => {
                return Err(TrainError::Protocol(format!(
                    "unexpected message from the leader: {}",
                    describe_l(&other)
                )));
            }
        }
    }
}

/// What the follower checks of the leader's answer itself (its enclave
/// enforces these, not only the leader's): both policies release the same
/// exports, and training never resumes below what this follower knows was
/// committed.
fn check_session(cfg: &RunConfig, reply: &pb::HelloReply) -> Result<(), TrainError> {
    let ours = cfg.security.release_exports();
    if reply.release_exports != ours {
        return Err(TrainError::ReleaseMismatch {
            leader: reply.release_exports.clone(),
            follower: ours,
        });
    }
    if cfg.eval {
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
