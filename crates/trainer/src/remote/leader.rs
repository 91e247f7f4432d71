//! The leader's driver: listens, admits the follower, decides the epochs'
//! block orders and the checkpoint steps, trains (or evaluates) and exports.

use super::*;

/// Runs the leader: listens, admits one follower, trains, finishes.
pub async fn run_leader(
    cfg: RunConfig,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<RunSummary, TrainError> {
    let data = DataDir::scan(&cfg.data_path, cfg.data_path_wildcard.as_deref())?;
    read_record(&cfg, Role::Leader)?;
    start_metrics(&cfg).await?;
    let process_id = vfl_bridge::handshake::new_process_id();
    let mut listener = server::listen(
        &cfg.addr,
        settings(&cfg, Role::Leader, &process_id)?,
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
            Err(TrainError::Bridge(e @ BridgeError::PeerRestarted { .. })) => match link.restart() {
                Ok(true) => {
                    tracing::warn!(error = %e, resume_step = ?link.resume_step(), "starting the session over");
                }
                Ok(false) => break Err(e.into()),
                Err(gave_up) => break Err(gave_up.into()),
            },
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
            let _ = link.send(LMsg::Failure(pb::Failure { reason: reason(e) })).await;
            link.flush(Duration::from_secs(1)).await;
        }
        Ok(_) => {
            if !link.flush(wait).await {
                tracing::warn!("the follower did not acknowledge the end of the run (it may still have it)");
            }
        }
    }
}

async fn lead(cfg: &RunConfig, data: &DataDir, link: &mut LeaderLink<'_>) -> Result<RunSummary, TrainError> {
    let session_id = link.session_id().to_string();
    let resume_step = link.resume_step();
    let run_id = link.run_id().to_string();
    let bind = binding(cfg, Role::Leader);
    let fingerprint = bind.model.clone();
    let schema = schema_for(&cfg.spec, Role::Leader);
    let mut party = LeaderParty::new(&cfg.spec, cfg.threads)?;
    let mut state = RunState::default();
    start_run(cfg, Role::Leader, &run_id, resume_step)?;
    if let (Some(step), Some(dir)) = (resume_step, &cfg.checkpoint_path) {
        state = checkpoint::load(
            dir,
            step,
            &bind,
            &run_id,
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
        .await?;
        match link.recv().await? {
            FMsg::PlanAck(a) if a.epoch == epoch => {}
            FMsg::Failure(f) => return Err(peer_failed(f)),
            other => {
                return Err(TrainError::Protocol(format!(
                    "expected the plan's acknowledgement, got {}",
                    describe_f(&other)
                )));
            }
        }
        let mut reader = cfg.block_reader(Role::Leader, data.select(&order)?, schema.clone());
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
                    // The leader saves before it sends the gradient that asks the
                    // follower to save: when the follower has saved too, both hold
                    // the step, and the follower may record it as committed at once
                    // (a leader restored to older state is then refused).
                    if let (true, Some(dir)) = (due, &cfg.checkpoint_path) {
                        let counters = party.counters();
                        let at = At {
                            epoch,
                            plan: &order,
                            pos: position_after(&batch).unwrap_or(start_pos),
                        };
                        let tensors = party.model_mut().tensors_mut();
                        save_checkpoint(cfg, dir, Role::Leader, &run_id, tensors, &state, at, counters)?;
                    }
                    link.send(LMsg::Gradient(pb::Gradient {
                        iteration: grad.iteration,
                        tensor: Some(tensor_pb(grad.tensor)),
                        checkpoint_step,
                    }))
                    .await?;
                    if let (true, Some(dir)) = (due, &cfg.checkpoint_path) {
                        match link.recv().await? {
                            FMsg::CheckpointDone(d) if d.step == state.steps => {}
                            FMsg::Failure(f) => return Err(peer_failed(f)),
                            other => {
                                return Err(TrainError::Protocol(format!(
                                    "expected CheckpointDone, got {}",
                                    describe_f(&other)
                                )));
                            }
                        }
                        // Both parties hold this step: it is the new rollback floor.
                        checkpoint::commit(dir, &bind, cfg.seal.as_deref(), &run_id, state.steps)?;
                        reverify(cfg, link.peer(), PartyRole::Follower)?;
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
                FMsg::Failure(f) => return Err(peer_failed(f)),
                other => {
                    return Err(TrainError::Protocol(format!(
                        "unexpected message from the follower: {}",
                        describe_f(&other)
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
    .await?;
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
            let release = cfg.security.release_exports();
            let plan = checkpoint::ExportPlan {
                export_path: p,
                id: &export_id,
                run: &run_id,
                release: &release,
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

async fn evaluate_lead(cfg: &RunConfig, data: &DataDir, link: &mut LeaderLink<'_>) -> Result<RunSummary, TrainError> {
    let session_id = link.session_id().to_string();
    let resume_step = link.resume_step();
    let schema = schema_for(&cfg.spec, Role::Leader);
    let mut party = LeaderParty::new(&cfg.spec, cfg.threads)?;
    let run = (link.run_id().to_string(), resume_step);
    let source = load_for_eval(cfg, Role::Leader, (&run.0, run.1), party.model_mut().tensors_mut())?;
    tracing::info!(%source, "evaluating");
    let order = data.ids();
    link.send(LMsg::Plan(pb::EpochPlan {
        epoch: 0,
        block_ids: order.clone(),
        last: true,
        start_block: 0,
        start_record: 0,
    }))
    .await?;
    match link.recv().await? {
        FMsg::PlanAck(_) => {}
        FMsg::Failure(f) => return Err(peer_failed(f)),
        other => {
            return Err(TrainError::Protocol(format!(
                "expected the plan's acknowledgement, got {}",
                describe_f(&other)
            )));
        }
    }
    let mut reader = cfg.block_reader(Role::Leader, data.select(&order)?, schema.clone());
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
            FMsg::Failure(f) => return Err(peer_failed(f)),
            other => {
                return Err(TrainError::Protocol(format!(
                    "unexpected message from the follower: {}",
                    describe_f(&other)
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
    .await?;
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
