//! The leader's driver: listens, admits the follower, decides the epochs'
//! block orders and the checkpoint steps, trains (or evaluates) and exports.

use super::*;

/// Runs the leader: listens, admits one follower, trains, finishes.
pub async fn run_leader(
    cfg: RunConfig,
    task: LeaderTask,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<RunSummary, TrainError> {
    let data = DataDir::scan(&cfg.data_path, cfg.data_path_wildcard.as_deref())?;
    read_record(&cfg, Role::Leader)?;
    let process_id = vfl_bridge::handshake::new_process_id();
    let mut listener = server::listen(
        &cfg.addr,
        settings(&cfg, task.mode(), Role::Leader, &process_id)?,
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
        let r = match &task {
            LeaderTask::Eval(ev) => evaluate_lead(&cfg, ev, &data, &mut link).await,
            LeaderTask::Train(train) => lead(&cfg, train, &data, &mut link).await,
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

/// The leader's training session, phase by phase: [`Lead::start`] (run
/// record, resume from a checkpoint), per epoch [`Lead::plan`] and
/// [`Lead::train_epoch`] (each step in [`Lead::step`], coordinated
/// checkpoints in [`Lead::checkpoint`]), then [`Lead::finish`] (Finish,
/// export, summary).
struct Lead<'s, 'a> {
    cfg: &'s RunConfig,
    train: &'s LeaderTrain,
    data: &'s DataDir,
    link: &'s mut LeaderLink<'a>,
    session_id: String,
    run_id: String,
    resume_step: Option<u64>,
    bind: Binding,
    schema: vfl_data::Schema,
    party: LeaderParty,
    state: RunState,
    /// Rows trained in this process, and their loss sum.
    trained: u64,
    loss_sum: f64,
    skipped: u64,
    last_epoch: Option<MetricValues>,
    last_save: Instant,
}

/// One epoch's block order and where in it training starts.
struct EpochPlan {
    epoch: u32,
    order: Vec<String>,
    start: Position,
}

async fn lead(
    cfg: &RunConfig,
    train: &LeaderTrain,
    data: &DataDir,
    link: &mut LeaderLink<'_>,
) -> Result<RunSummary, TrainError> {
    let mut s = Lead::start(cfg, train, data, link)?;
    let started = Instant::now();
    let mut resuming = s.resume_step.is_some();
    for epoch in s.state.epoch..train.epochs {
        let plan = s.plan(epoch, std::mem::take(&mut resuming));
        exchange_plan(s.link, &plan, epoch + 1 == train.epochs).await?;
        s.train_epoch(&plan).await?;
    }
    s.finish(started.elapsed().as_secs_f64()).await
}

/// Sends an epoch's plan and waits for the follower's acknowledgement.
async fn exchange_plan(link: &mut LeaderLink<'_>, plan: &EpochPlan, last: bool) -> Result<(), TrainError> {
    link.send(LMsg::Plan(pb::EpochPlan {
        epoch: plan.epoch,
        block_ids: plan.order.clone(),
        last,
        start_block: plan.start.block as u64,
        start_record: plan.start.record,
    }))
    .await?;
    match link.recv().await? {
        FMsg::PlanAck(a) if a.epoch == plan.epoch => Ok(()),
        other => Err(unexpected_f("the plan's acknowledgement", other)),
    }
}

/// A message other than the one expected: the peer's failure, or a
/// protocol error naming what came (kind and sizes only).
fn unexpected_f(expected: &'static str, got: FMsg) -> TrainError {
    match got {
        FMsg::Failure(f) => peer_failed(f),
        other => TrainError::Unexpected {
            expected,
            got: describe_f(&other),
        },
    }
}

impl<'s, 'a> Lead<'s, 'a> {
    /// The session's first phase: the run record, and the checkpoint both
    /// parties agreed to resume from.
    fn start(
        cfg: &'s RunConfig,
        train: &'s LeaderTrain,
        data: &'s DataDir,
        link: &'s mut LeaderLink<'a>,
    ) -> Result<Self, TrainError> {
        let resume_step = link.resume_step();
        let run_id = link.run_id().to_string();
        let mut s = Lead {
            session_id: link.session_id().to_string(),
            bind: binding(cfg, Role::Leader),
            schema: schema_for(&cfg.spec, Role::Leader),
            party: LeaderParty::new(&cfg.spec, cfg.threads)?,
            state: RunState::default(),
            trained: 0,
            loss_sum: 0.0,
            skipped: 0,
            last_epoch: None,
            last_save: Instant::now(),
            cfg,
            train,
            data,
            link,
            run_id,
            resume_step,
        };
        start_run(cfg, Role::Leader, &s.run_id, resume_step)?;
        if let (Some(step), Some(dir)) = (resume_step, &cfg.checkpoint_path) {
            s.state = checkpoint::load(
                dir,
                step,
                &s.bind,
                &s.run_id,
                s.party.model_mut().tensors_mut(),
                cfg.seal.as_deref(),
            )?;
            s.party.restore_counters(s.state.next_iteration, s.state.opt_step);
            let st = &s.state;
            tracing::info!(
                step,
                epoch = st.epoch,
                block = st.block,
                record = st.record,
                "resumed from checkpoint"
            );
        }
        Ok(s)
    }

    /// Epoch `epoch`'s block order (shuffled from the seed, or the
    /// checkpoint's when resuming) and start position.
    fn plan(&self, epoch: u32, resuming: bool) -> EpochPlan {
        self.cfg.progress.set_epoch(u64::from(epoch));
        if resuming {
            let st = &self.state;
            return EpochPlan {
                epoch,
                order: st.plan.clone(),
                start: Position {
                    block: st.block as usize,
                    record: st.record,
                },
            };
        }
        let mut order = self.data.ids();
        if let Some(seed) = self.train.shuffle_seed {
            Rng::new(seed.wrapping_add(u64::from(epoch))).shuffle(&mut order);
        }
        EpochPlan {
            epoch,
            order,
            start: Position::default(),
        }
    }

    /// Trains one epoch: a step per batch of activations, until the
    /// follower's data ends together with ours.
    async fn train_epoch(&mut self, plan: &EpochPlan) -> Result<(), TrainError> {
        let cfg = self.cfg;
        let mut reader = cfg.block_reader(Role::Leader, self.data.select(&plan.order)?, self.schema.clone());
        reader.seek(plan.start)?;
        // Decode the next batches on a reader thread while this one trains.
        let mut reader = Prefetcher::spawn(reader, cfg.batch_size, 2)?;
        self.party.take_metrics();
        let mut iterations = 0u64;
        loop {
            match self.link.recv().await? {
                FMsg::Activations(a) => {
                    let Some(batch) = reader.next_batch()? else {
                        return Err(TrainError::RowCounts {
                            epoch: plan.epoch,
                            longer: "follower",
                            iterations,
                        });
                    };
                    self.step(plan, &batch, a).await?;
                    iterations += 1;
                    reader.recycle(batch);
                }
                FMsg::EndOfData(e) => {
                    if reader.next_batch()?.is_some() || e.iterations != iterations {
                        return Err(TrainError::RowCounts {
                            epoch: plan.epoch,
                            longer: "leader",
                            iterations,
                        });
                    }
                    break;
                }
                other => return Err(unexpected_f("activations or the end of the follower's data", other)),
            }
        }
        if iterations == 0 && plan.start == Position::default() {
            return Err(TrainError::NoData { epoch: plan.epoch });
        }
        self.skipped += skipped_records(plan.epoch, reader.finish().as_ref());
        let m = self.party.take_metrics().values();
        tracing::info!(epoch = plan.epoch, iterations, auc = ?m.auc, "epoch done");
        cfg.progress.set_auc(m.auc);
        self.last_epoch = Some(m);
        Ok(())
    }

    /// One training step: the head's forward and backward on the follower's
    /// activations, a checkpoint if due, the gradient back.
    async fn step(&mut self, plan: &EpochPlan, batch: &Batch, a: pb::Activations) -> Result<(), TrainError> {
        let cfg = self.cfg;
        let party = &mut self.party;
        let (report, mut grad) = tokio::task::block_in_place(|| party.train_step(batch, &a))?;
        let rows = report.rows as u64;
        self.state.steps += 1;
        self.state.examples += rows;
        cfg.progress.step(rows, report.loss);
        if let Some(pos) = position_after(batch) {
            let within = pos.block as f64 / plan.order.len().max(1) as f64;
            cfg.progress
                .set_fraction((f64::from(plan.epoch) + within) / f64::from(self.train.epochs.max(1)));
        }
        self.trained += rows;
        self.loss_sum += f64::from(report.loss) * report.rows as f64;
        let due = self.checkpoint_due();
        // The leader saves before it sends the gradient that asks the
        // follower to save: when the follower has saved too, both hold the
        // step, and the follower may record it as committed at once (a
        // leader restored to older state is then refused).
        if due {
            self.save(plan, batch)?;
        }
        grad.checkpoint_step = if due { self.state.steps } else { 0 };
        self.link.send(LMsg::Gradient(grad)).await?;
        if due {
            self.checkpoint().await?;
        }
        if self.trained == rows {
            let ms_since_start = cfg.started.elapsed().as_millis() as u64;
            tracing::info!(ms_since_start, "first training step done");
        }
        if self.state.steps.is_multiple_of(100) {
            tracing::info!(
                epoch = plan.epoch,
                step = self.state.steps,
                loss = report.loss,
                "training"
            );
        }
        Ok(())
    }

    /// Whether this step is checkpointed (every N steps and/or seconds).
    fn checkpoint_due(&self) -> bool {
        let t = self.train;
        self.cfg.checkpoint_path.is_some()
            && (t
                .save_every_steps
                .is_some_and(|k| k > 0 && self.state.steps.is_multiple_of(k))
                || t.save_every_secs
                    .is_some_and(|s| self.last_save.elapsed() >= Duration::from_secs(s)))
    }

    /// Saves this party's checkpoint of the current step.
    fn save(&mut self, plan: &EpochPlan, batch: &Batch) -> Result<(), TrainError> {
        let Some(dir) = &self.cfg.checkpoint_path else {
            return Ok(());
        };
        let counters = self.party.counters();
        let at = At {
            epoch: plan.epoch,
            plan: &plan.order,
            pos: position_after(batch).unwrap_or(plan.start),
        };
        let tensors = self.party.model_mut().tensors_mut();
        save_checkpoint(
            self.cfg,
            dir,
            Role::Leader,
            &self.run_id,
            tensors,
            &self.state,
            at,
            counters,
        )
    }

    /// After the gradient that asked for it: the follower's save, then the
    /// step is committed (the new rollback floor) and the follower's
    /// evidence verified again.
    async fn checkpoint(&mut self) -> Result<(), TrainError> {
        let Some(dir) = &self.cfg.checkpoint_path else {
            return Ok(());
        };
        let step = self.state.steps;
        match self.link.recv().await? {
            FMsg::CheckpointDone(d) if d.step == step => {}
            other => return Err(unexpected_f("CheckpointDone", other)),
        }
        checkpoint::commit(dir, &self.bind, self.cfg.seal.as_deref(), &self.run_id, step)?;
        reverify(self.cfg, self.link.peer(), PartyRole::Follower)?;
        self.last_save = Instant::now();
        tracing::info!(step, "checkpoint saved by both parties");
        Ok(())
    }

    /// The last phase: Finish to the follower (with the export id both use),
    /// this party's export, the summary.
    async fn finish(mut self, seconds: f64) -> Result<RunSummary, TrainError> {
        let cfg = self.cfg;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let export_id = format!("{unix}-{}", self.session_id);
        self.link
            .send(LMsg::Finish(pb::Finish {
                summary: format!("{} steps, {} examples", self.state.steps, self.state.examples),
                export_id: export_id.clone(),
            }))
            .await?;
        let export_dir = match &cfg.export_path {
            None => None,
            Some(p) => Some(self.export(p, &export_id)?),
        };
        Ok(RunSummary {
            session_id: self.session_id,
            epochs: self.train.epochs,
            steps: self.state.steps,
            examples: self.state.examples,
            seconds,
            mean_loss: if self.trained == 0 {
                0.0
            } else {
                self.loss_sum / self.trained as f64
            },
            last_epoch: self.last_epoch,
            skipped_records: self.skipped,
            resumed_from: self.resume_step,
            export_dir,
        })
    }

    /// Exports the trained model under `<path>/<id>/leader/`.
    fn export(&mut self, path: &std::path::Path, id: &str) -> Result<PathBuf, TrainError> {
        let cfg = self.cfg;
        let mut manifest = manifest(
            cfg,
            (Role::Leader, &self.bind),
            &self.state,
            &self.session_id,
            self.data,
            self.resume_step,
        );
        manifest["epochs"] = self.train.epochs.into();
        manifest["last_epoch_metrics"] = serde_json::to_value(self.last_epoch).unwrap_or_default();
        let release = cfg.security.release_exports();
        let plan = checkpoint::ExportPlan {
            export_path: path,
            id,
            run: &self.run_id,
            release: &release,
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

async fn evaluate_lead(
    cfg: &RunConfig,
    ev: &LeaderEval,
    data: &DataDir,
    link: &mut LeaderLink<'_>,
) -> Result<RunSummary, TrainError> {
    let session_id = link.session_id().to_string();
    let resume_step = link.resume_step();
    let schema = schema_for(&cfg.spec, Role::Leader);
    let mut party = LeaderParty::new(&cfg.spec, cfg.threads)?;
    let run = (link.run_id().to_string(), resume_step);
    let source = load_for_eval(
        cfg,
        Role::Leader,
        ev.load_model.as_deref(),
        (&run.0, run.1),
        party.model_mut().tensors_mut(),
    )?;
    tracing::info!(%source, "evaluating");
    let plan = EpochPlan {
        epoch: 0,
        order: data.ids(),
        start: Position::default(),
    };
    exchange_plan(link, &plan, true).await?;
    let mut reader = cfg.block_reader(Role::Leader, data.select(&plan.order)?, schema.clone());
    let mut batch = Batch::new(schema.slots.len(), schema.dense.len());
    let mut predictions = String::from("example_id,score\n");
    let (mut steps, mut examples, mut loss_sum) = (0u64, 0u64, 0f64);
    let start = Instant::now();
    loop {
        match link.recv().await? {
            FMsg::Activations(a) => {
                if reader.fill(&mut batch, cfg.batch_size)? == 0 {
                    return Err(TrainError::RowCounts {
                        epoch: 0,
                        longer: "follower",
                        iterations: steps,
                    });
                }
                let report = tokio::task::block_in_place(|| party.eval_step(&batch, &a))?;
                if ev.predictions_path.is_some() {
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
                    return Err(TrainError::RowCounts {
                        epoch: 0,
                        longer: "leader",
                        iterations: steps,
                    });
                }
                break;
            }
            other => return Err(unexpected_f("activations or the end of the follower's data", other)),
        }
    }
    if examples == 0 {
        return Err(TrainError::NoData { epoch: 0 });
    }
    if let Some(p) = &ev.predictions_path {
        vfl_fs::write_atomic(p, |w| w.write_all(predictions.as_bytes())).map_err(crate::StoreError::io(p))?;
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
        skipped_records: skipped_records(0, Some(&reader)),
        resumed_from: None,
        export_dir: None,
    })
}
