//! A worker process of a sharded run (`vfl worker`): one party's half of
//! worker pair *i*.
//!
//! The **leader worker** serves its follower worker over RA-TLS (the pair
//! link, admitting only the follower), reports to the leader's coordinator
//! before every step ([`super::coordinator`]), and reads the blocks it is
//! granted. It names each block to its follower worker, which reads the
//! same block of its own data; per step it tells the follower the step's
//! participants and its rows, takes the activations, and returns the
//! gradient as a single pair does (same messages, same alignment checks).
//! Both workers then send their gradients to their own party's shards and
//! write the step's new values into their replicas; the follower confirms
//! before the leader reports for the next step. Non-participants take the
//! new values too.
//!
//! After the last epoch (`Finished`), worker pair 0 evaluates the model on
//! held-out data if both were given some and exports it; every pair then
//! reports its end-of-job work to the coordinator, which records the job's
//! end (the commit point) and answers `Committed`. Only then does a worker
//! tell its shards (`Done`) and leave; the leader worker waits for its
//! follower's `Finished` and says goodbye to the coordinator last. A lost
//! peer before the commit fails the worker's attempt, named; the caller
//! starts it over and the job resumes from its last checkpoint
//! ([`restartable`], docs/scale-out.md). After it nothing fails: a worker
//! that restarted after the end learns it from the coordinator (or its
//! leader worker) and only finishes its part of the ending.

use std::time::Duration;

use tokio::runtime::Handle;
use vfl_bridge::party::{LeaderPairStream, PairListener, dial_coordinator, dial_pair};
use vfl_bridge::party_pb::{
    self, assignment::Msg as AMsg, follower_worker_message::Msg as FMsg, leader_worker_message::Msg as LMsg,
    worker_status::Msg as SMsg,
};
use vfl_bridge::{BridgeError, Security, Streaming};
use vfl_data::{Batch, BatchSource};
use vfl_nn::ModelSpec;

use super::remote::{RemoteShards, ShardAddrs};
use super::{Placement, replica};
use crate::TrainError;
use crate::local::PassReport;
use crate::party::{FollowerParty, LeaderParty, UpdateMode};

/// One party's data blocks, opened by id (the ids the coordinator hands
/// out are the leader's; the follower's blocks have the same ids).
pub trait PartyBlocks {
    fn open(&self, id: &str) -> Result<Box<dyn BatchSource + '_>, TrainError>;
}

/// A party's data directory, its blocks opened by id (sealed joined
/// blocks with `unseal`).
pub struct DirBlocks {
    pub dir: vfl_data::DataDir,
    pub schema: vfl_data::Schema,
    pub options: vfl_data::blocks::ReadOptions,
    pub unseal: Option<std::sync::Arc<dyn vfl_data::Unseal>>,
}

impl PartyBlocks for DirBlocks {
    fn open(&self, id: &str) -> Result<Box<dyn BatchSource + '_>, TrainError> {
        let blocks = self.dir.select(&[id.to_string()])?;
        let mut r = vfl_data::BlockReader::new(blocks, self.schema.clone(), self.options);
        if let Some(u) = &self.unseal {
            r.set_unseal(u.clone());
        }
        Ok(Box::new(r))
    }
}

/// What a worker is.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This worker's index, 0..workers.
    pub worker: usize,
    pub workers: usize,
    pub batch_size: usize,
    pub threads: usize,
    /// How long to wait for a peer (connect, register, each message).
    pub peer_timeout: Duration,
    /// Where the worker records the job's end (a worker started again
    /// after it trains nothing; None: it asks the coordinator or its
    /// leader worker).
    pub state: Option<super::state::StateDir>,
}

impl WorkerConfig {
    /// How often long end-of-job work sends a heartbeat: a quarter of the
    /// peer timeout.
    fn heartbeat(&self) -> Duration {
        (self.peer_timeout / 4).max(Duration::from_millis(100))
    }
}

/// Where and how worker pair 0 exports its party's trained model (the
/// single pair's export format, `checkpoint::export`).
pub struct ExportTo {
    pub path: std::path::PathBuf,
    pub bind: crate::checkpoint::Binding,
    pub sealer: Option<std::sync::Arc<vfl_attest::seal::Sealer>>,
}

/// How a worker's run ended.
#[derive(Debug)]
pub struct WorkerOutcome {
    /// Steps of the run.
    pub steps: u64,
    /// This worker's rows and loss sum over the run.
    pub examples: u64,
    pub loss_sum: f64,
    /// Held-out evaluation (worker pair 0, when given eval data).
    pub eval: Option<PassReport>,
    /// [`replica::digest`] of this worker's replica at the end: equal on
    /// every worker of the party, and across runs that are bitwise equal.
    /// None: the job's end was recorded before this attempt (a worker that
    /// restarted after it trains nothing and holds no replica).
    pub digest: Option<String>,
    /// Where the model was exported (with an [`ExportTo`]).
    pub export: Option<std::path::PathBuf>,
}

/// Largest message on the pair link: activations or a gradient of
/// `batch_size` rows (evaluation uses at most [`EVAL_BATCH`]).
pub fn pair_message_limit(spec: &ModelSpec, batch_size: usize) -> usize {
    vfl_bridge::message_limit(batch_size.max(EVAL_BATCH), spec.follower.output_dim())
}

/// Rows per evaluation batch.
pub const EVAL_BATCH: usize = 256;

/// A blocking view of one stream: `recv` waits at most the peer timeout
/// and names the peer.
struct Chan<In, T> {
    rt: Handle,
    inbound: Streaming<In>,
    outbound: tokio::sync::mpsc::Sender<T>,
    wait: Duration,
    name: String,
}

impl<In, T> Chan<In, T> {
    /// Sends, waiting at most the peer timeout for room (a peer that stops
    /// reading must not hang this worker).
    fn send(&self, msg: T) -> Result<(), TrainError> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(self.wait, self.outbound.send(msg)).await })
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(lost(format!("{}: the stream closed", self.name))),
            Err(_) => Err(lost(format!(
                "{}: does not read (nothing taken within {} s)",
                self.name,
                self.wait.as_secs()
            ))),
        }
    }

    fn recv(&mut self) -> Result<In, TrainError> {
        let got = self
            .rt
            .block_on(async { tokio::time::timeout(self.wait, self.inbound.message()).await });
        match got {
            Err(_) => Err(lost(format!(
                "{}: nothing within {} s (--peer-timeout)",
                self.name,
                self.wait.as_secs()
            ))),
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) => Err(lost(format!("{}: closed the stream", self.name))),
            Ok(Err(s)) => Err(lost(format!(
                "{}: {}",
                self.name,
                vfl_bridge::sanitize(s.message(), 300)
            ))),
        }
    }

    /// Waits (bounded) until the peer closes its stream.
    fn await_close(&mut self) {
        let wait = self.wait;
        let _ = self.rt.block_on(async {
            tokio::time::timeout(wait, async { while let Ok(Some(_)) = self.inbound.message().await {} }).await
        });
    }
}

/// Whether a worker's attempt failed because another process of the job
/// was lost (the job restarts from its last checkpoint and the worker
/// starts over), rather than for a reason a restart does not change (a
/// refused peer, bad data, a protocol violation).
pub fn restartable(e: &TrainError) -> bool {
    matches!(
        e,
        TrainError::Bridge(
            BridgeError::Lost(_)
                | BridgeError::PeerFailed(_)
                | BridgeError::Unreachable { .. }
                | BridgeError::Gone { .. }
        )
    )
}

fn lost(why: String) -> TrainError {
    BridgeError::Lost(why).into()
}

fn unexpected(expected: &'static str, got: String) -> TrainError {
    TrainError::Unexpected { expected, got }
}

/// The block a worker reads, and its grant.
struct Held<'d> {
    index: u64,
    lease: u64,
    source: Box<dyn BatchSource + 'd>,
}

/// Runs leader worker `cfg.worker` once: takes its follower worker's
/// stream from `pair`, registers at the coordinator at `coordinator`,
/// joins its party's shards at the step the job resumes from, and trains
/// until the coordinator says the run is finished. With `eval` (worker 0),
/// evaluates on it with the follower. Blocks on `rt` (call it from outside
/// the runtime). A lost peer fails the attempt; the caller starts it over
/// (the job restarts from its checkpoint), keeping `pair`.
#[allow(clippy::too_many_arguments)]
pub fn run_leader(
    spec: &ModelSpec,
    cfg: &WorkerConfig,
    rt: Handle,
    shards: &ShardAddrs,
    (coordinator, security): (&str, &Security),
    pair: &mut PairListener,
    (data, export): (&dyn PartyBlocks, Option<&ExportTo>),
    eval: Option<&mut dyn BatchSource>,
) -> Result<WorkerOutcome, TrainError> {
    let w = cfg.worker;
    // The job's end as this worker recorded it before a restart.
    let known = recorded_end(cfg)?;
    if let Some(end) = known.as_ref().filter(|e| e.complete) {
        tracing::info!(step = end.steps, "the job had ended, this worker's part too");
        return Ok(ended_before(&committed_of(end)));
    }
    // The follower worker of the same index.
    let incoming = match rt.block_on(async { tokio::time::timeout(cfg.peer_timeout, pair.streams.recv()).await }) {
        Ok(s) => s.ok_or_else(|| lost("the pair listener stopped".into()))?,
        Err(_) => {
            // This worker may have restarted after the job's end, its
            // follower worker ended: its record or the coordinator knows.
            let why = lost(format!(
                "follower worker {w} did not connect within {} s",
                cfg.peer_timeout.as_secs()
            ));
            let (coord, end) = match &known {
                Some(end) => (None, committed_of(end)),
                None => match ask_end(spec, cfg, &rt, (coordinator, security)) {
                    Some((coord, end)) => (Some(coord), end),
                    None => return Err(why),
                },
            };
            tracing::info!(step = end.steps, "the job's end was recorded before this attempt");
            let outcome = ended_before(&end);
            let ending = Ending {
                coord,
                own: None,
                tell: None,
                end,
            };
            finish_leader((spec, cfg), &rt, (None, pair), ending, shards, (coordinator, security));
            return Ok(outcome);
        }
    };
    // Streams left by the follower's earlier attempts are stale: the newest
    // is its current one.
    let mut incoming = incoming;
    while let Ok(newer) = pair.streams.try_recv() {
        incoming = newer;
    }
    let mut peer = Chan {
        rt: rt.clone(),
        inbound: incoming.inbound,
        outbound: incoming.outbound,
        wait: cfg.peer_timeout,
        name: format!("follower worker {w}"),
    };
    let result = match &known {
        // The end is recorded here: the follower worker that came is
        // welcomed with it.
        Some(end) => match from_follower(&mut peer) {
            Ok(FMsg::Hello(h)) if h.worker as usize == w => {
                let end = committed_of(end);
                let tell = Some(end_welcome(&end, security));
                Ok((
                    ended_before(&end),
                    Ending {
                        coord: None,
                        own: None,
                        tell,
                        end,
                    },
                ))
            }
            // Perhaps a stale stream: the follower worker comes again.
            Ok(other) => Err(lost(format!(
                "a follower stream began with {}, not its Hello",
                name_f(&other)
            ))),
            Err(e) => Err(e),
        },
        None => lead(
            spec,
            cfg,
            shards,
            &mut peer,
            (coordinator, security),
            (data, export),
            eval,
        ),
    };
    match result {
        Ok((outcome, ending)) => {
            finish_leader(
                (spec, cfg),
                &rt,
                (Some(&mut peer), pair),
                ending,
                shards,
                (coordinator, security),
            );
            Ok(outcome)
        }
        Err(e) => {
            let why = vfl_bridge::sanitize(&e.to_string(), 1000);
            let msg = if restartable(&e) {
                LMsg::Failure(why)
            } else {
                LMsg::Fatal(why)
            };
            let _ = peer
                .outbound
                .try_send(Ok(party_pb::LeaderWorkerMessage { msg: Some(msg) }));
            Err(e)
        }
    }
}

type CoordChan = Chan<party_pb::Assignment, party_pb::WorkerStatus>;

/// A leader worker's attempt after the job's end is recorded: what is
/// left to do.
struct Ending {
    /// The stream to the coordinator, if open (the goodbye goes there).
    coord: Option<CoordChan>,
    /// Its joined shards (None: this attempt did not join; its `Done` goes
    /// on new streams).
    own: Option<RemoteShards>,
    /// What tells the follower worker the end: `Committed` after training,
    /// a `Welcome` with the end to one that has just said Hello, or
    /// nothing (it is not there).
    tell: Option<LMsg>,
    end: party_pb::Committed,
}

/// The outcome of an attempt that found the job's end recorded.
fn ended_before(end: &party_pb::Committed) -> WorkerOutcome {
    WorkerOutcome {
        steps: end.steps,
        examples: 0,
        loss_sum: 0.0,
        eval: None,
        digest: None,
        export: None,
    }
}

/// The welcome of a follower worker that comes after the job's end.
fn end_welcome(end: &party_pb::Committed, security: &Security) -> LMsg {
    LMsg::Welcome(party_pb::PairWelcome {
        steps: end.steps,
        checkpoint_steps: 0,
        run_id: end.run_id.clone(),
        release_exports: security.release_exports(),
        committed: true,
    })
}

/// Asks the coordinator whether the job's end is recorded (a registration
/// it answers only then, without counting the worker in otherwise).
fn ask_end(
    spec: &ModelSpec,
    cfg: &WorkerConfig,
    rt: &Handle,
    (coordinator, security): (&str, &Security),
) -> Option<(CoordChan, party_pb::Committed)> {
    let stream = rt
        .block_on(dial_coordinator(coordinator, security, cfg.peer_timeout))
        .ok()?;
    let mut coord = Chan {
        rt: rt.clone(),
        inbound: stream.inbound,
        outbound: stream.outbound,
        wait: cfg.peer_timeout,
        name: "the coordinator".to_string(),
    };
    coord.send(register(spec, cfg, true)).ok()?;
    match coord.recv().ok()?.msg {
        Some(AMsg::Committed(end)) => Some((coord, end)),
        _ => None,
    }
}

fn register(spec: &ModelSpec, cfg: &WorkerConfig, if_ended: bool) -> party_pb::WorkerStatus {
    party_pb::WorkerStatus {
        msg: Some(SMsg::Register(party_pb::Register {
            worker: cfg.worker as u32,
            workers: cfg.workers as u32,
            model_fingerprint: spec.fingerprint(),
            batch_size: cfg.batch_size as u32,
            steps: 0,
            if_ended,
        })),
    }
}

/// After the job's end: the follower worker is told and its `Finished`
/// awaited (one that restarted reconnects and is welcomed with the end),
/// the shards are told, and the coordinator hears the goodbye. Nothing
/// here fails the worker: each wait is bounded by the peer timeout, and
/// what does not answer is taken to have ended.
fn finish_leader(
    (spec, cfg): (&ModelSpec, &WorkerConfig),
    rt: &Handle,
    (peer, pair): (Option<&mut LeaderPeer>, &mut PairListener),
    mut ending: Ending,
    shards: &ShardAddrs,
    (coordinator, security): (&str, &Security),
) {
    let (steps, run) = (ending.end.steps, ending.end.run_id.clone());
    record_end(cfg, &ending.end, false);
    if let Some(peer) = peer {
        end_follower(
            cfg,
            peer,
            pair,
            ending.tell.take(),
            end_welcome(&ending.end, security),
            steps,
        );
    }
    let told = match ending.own.as_mut() {
        Some(own) => own.done(steps, &run),
        None => super::remote::tell_done(rt, shards, cfg.worker, (steps, &run)),
    };
    if let Err(e) = told {
        tracing::warn!(error = %e, "not every shard took the job's end");
    }
    say_bye(spec, cfg, rt, ending.coord, (coordinator, security), steps);
    record_end(cfg, &ending.end, true);
}

/// The goodbye to the coordinator (on `coord`, or on a new stream when
/// that broke: a coordinator restarted after the end answers again).
fn say_bye(
    spec: &ModelSpec,
    cfg: &WorkerConfig,
    rt: &Handle,
    coord: Option<CoordChan>,
    (coordinator, security): (&str, &Security),
    steps: u64,
) {
    let bye = party_pb::WorkerStatus {
        msg: Some(SMsg::Bye(party_pb::Finished { steps })),
    };
    // A stream that cannot take it is closed before a new one registers.
    let open = coord.filter(|c| c.send(bye.clone()).is_ok());
    let mut coord = match open {
        Some(c) => c,
        None => {
            let Some((again, _)) = ask_end(spec, cfg, rt, (coordinator, security)) else {
                tracing::warn!("the coordinator is gone; the job's end is recorded, ending without a goodbye");
                return;
            };
            if again.send(bye).is_err() {
                tracing::warn!("the coordinator did not take the goodbye; the job's end is recorded");
                return;
            }
            again
        }
    };
    // It ends the stream once it has taken the goodbye.
    coord.await_close();
}

/// The job's end this worker recorded, if it did.
fn recorded_end(cfg: &WorkerConfig) -> Result<Option<super::state::JobEnd>, TrainError> {
    match &cfg.state {
        Some(sd) => sd.load_end(),
        None => Ok(None),
    }
}

/// Records the job's end (`complete`: this worker's part of it done too).
/// A record that cannot be written only costs a later restart its
/// shortcut: warned, not failed.
fn record_end(cfg: &WorkerConfig, end: &party_pb::Committed, complete: bool) {
    let Some(sd) = &cfg.state else { return };
    let rec = super::state::JobEnd {
        run: end.run_id.clone(),
        steps: end.steps,
        complete,
        done: Vec::new(),
    };
    if let Err(e) = sd.save_end(&rec) {
        tracing::warn!(error = %e, "could not record the job's end");
    }
}

fn committed_of(end: &super::state::JobEnd) -> party_pb::Committed {
    party_pb::Committed {
        steps: end.steps,
        run_id: end.run.clone(),
    }
}

/// Tells follower worker `cfg.worker` the job's end with `tell` on `peer`
/// and waits for its `Finished`. A follower whose stream breaks may come
/// back (it restarted): it is welcomed with the end. Bounded by the peer
/// timeout; a follower that does not come back is taken to have ended.
fn end_follower(
    cfg: &WorkerConfig,
    peer: &mut LeaderPeer,
    pair: &mut PairListener,
    mut tell: Option<LMsg>,
    welcome: LMsg,
    steps: u64,
) {
    let w = cfg.worker;
    let until = tokio::time::Instant::now() + cfg.peer_timeout;
    loop {
        if let Some(msg) = tell.take()
            && to_follower(peer, msg).is_ok()
        {
            match from_follower(peer) {
                Ok(FMsg::Finished(f)) if f.steps == steps => return,
                Ok(other) => tracing::warn!(got = name_f(&other), "follower worker's answer to the job's end"),
                Err(e) => tracing::info!(error = %e, "follower worker left before its Finished"),
            }
        }
        let next = peer
            .rt
            .block_on(async { tokio::time::timeout_at(until, pair.streams.recv()).await });
        let Ok(Some(incoming)) = next else {
            tracing::warn!(
                worker = w,
                "follower worker did not come back after the job's end; taking it as ended"
            );
            return;
        };
        peer.inbound = incoming.inbound;
        peer.outbound = incoming.outbound;
        match from_follower(peer) {
            Ok(FMsg::Hello(h)) if h.worker as usize == w => tell = Some(welcome.clone()),
            _ => tracing::warn!(worker = w, "a follower stream after the end without its Hello"),
        }
    }
}

type LeaderPeer = Chan<party_pb::FollowerWorkerMessage, Result<party_pb::LeaderWorkerMessage, vfl_bridge::Status>>;

fn to_follower(peer: &LeaderPeer, msg: LMsg) -> Result<(), TrainError> {
    peer.send(Ok(party_pb::LeaderWorkerMessage { msg: Some(msg) }))
}

fn from_follower(peer: &mut LeaderPeer) -> Result<FMsg, TrainError> {
    match peer.recv()?.msg {
        Some(FMsg::Failure(f)) => Err(BridgeError::PeerFailed(vfl_bridge::sanitize(&f, 1000)).into()),
        Some(m) => Ok(m),
        None => Err(unexpected("a follower worker message", "an empty message".into())),
    }
}

fn lead(
    spec: &ModelSpec,
    cfg: &WorkerConfig,
    shards: &ShardAddrs,
    peer: &mut LeaderPeer,
    (coordinator, security): (&str, &Security),
    (data, export): (&dyn PartyBlocks, Option<&ExportTo>),
    eval: Option<&mut dyn BatchSource>,
) -> Result<(WorkerOutcome, Ending), TrainError> {
    let w = cfg.worker;
    match from_follower(peer)? {
        FMsg::Hello(h) => {
            let want = (w as u32, cfg.workers as u32, spec.fingerprint(), cfg.batch_size as u32);
            let got = (
                h.worker,
                h.workers,
                vfl_bridge::sanitize(&h.model_fingerprint, 64),
                h.batch_size,
            );
            if got != want {
                return Err(unexpected(
                    "the follower worker of this index and run (worker, workers, model, batch size)",
                    format!("{got:?}, expected {want:?}"),
                ));
            }
        }
        other => return Err(unexpected("Hello", name_f(&other))),
    }
    let stream = peer
        .rt
        .block_on(dial_coordinator(coordinator, security, cfg.peer_timeout))?;
    let mut coord = Chan {
        rt: peer.rt.clone(),
        inbound: stream.inbound,
        outbound: stream.outbound,
        wait: cfg.peer_timeout,
        name: "the coordinator".to_string(),
    };
    let status = |m: SMsg| party_pb::WorkerStatus { msg: Some(m) };
    coord.send(register(spec, cfg, false))?;
    let from_coord = |coord: &mut CoordChan| -> Result<AMsg, TrainError> {
        match coord.recv()?.msg {
            Some(AMsg::Failure(f)) => Err(BridgeError::PeerFailed(vfl_bridge::sanitize(&f, 1000)).into()),
            Some(AMsg::Fatal(f)) => Err(BridgeError::Stopped(vfl_bridge::sanitize(&f, 1000)).into()),
            Some(m) => Ok(m),
            None => Err(unexpected("a coordinator message", "an empty message".into())),
        }
    };
    let plan = match from_coord(&mut coord)? {
        AMsg::Plan(p) => p,
        // The job's end was recorded before this attempt (it restarted
        // after it): nothing to train.
        AMsg::Committed(end) => {
            tracing::info!(step = end.steps, "the job's end was recorded before this attempt");
            let outcome = ended_before(&end);
            let tell = Some(end_welcome(&end, security));
            let ending = Ending {
                coord: Some(coord),
                own: None,
                tell,
                end,
            };
            return Ok((outcome, ending));
        }
        other => return Err(unexpected("the run's plan", name_a(&other))),
    };
    // The shards at the step the job resumes from, the replica from them.
    let (steps, cadence) = (plan.resume_step, plan.checkpoint_steps);
    let mut party = LeaderParty::new(spec, cfg.threads)?;
    party.set_update_mode(UpdateMode::Collect);
    let party = &mut party;
    let mut own = join_shards(
        &peer.rt,
        (spec, cfg),
        shards,
        (steps, cadence, &plan.run_id),
        party.model_mut(),
    )?;
    to_follower(
        peer,
        LMsg::Welcome(party_pb::PairWelcome {
            steps,
            checkpoint_steps: cadence,
            run_id: plan.run_id.clone(),
            release_exports: security.release_exports(),
            committed: false,
        }),
    )?;
    let placement = Placement::new(own.shards())?;
    let mut batch = Batch::new(spec.leader.slots().len(), spec.leader.dense_columns().len());
    let mut held: Option<Held<'_>> = None;
    // The block held at the checkpoint, its trained rows skipped (on the
    // follower too).
    if let Some(g) = &plan.block {
        to_follower(
            peer,
            LMsg::Open(party_pb::OpenBlock {
                epoch: g.epoch,
                block_id: g.block_id.clone(),
                skip_rows: plan.skip_rows,
            }),
        )?;
        let mut source = data.open(&g.block_id)?;
        super::skip_rows(&mut *source, &mut batch, plan.skip_rows, cfg.batch_size)?;
        held = Some(Held {
            index: g.index,
            lease: g.lease,
            source,
        });
    }
    let mut step = steps;
    let (mut rows, mut loss_sum) = (0u64, 0f64);
    let (mut examples, mut run_loss) = (0u64, 0f64);
    let mut has_batch;
    'steps: loop {
        // Where this worker stands for the next step.
        let mut report = fill(&mut held, &mut batch, cfg.batch_size, step + 1, peer)?;
        has_batch = report.has_batch;
        report.rows = rows;
        report.loss_sum = loss_sum;
        (rows, loss_sum) = (0, 0.0);
        coord.send(status(SMsg::Ready(report)))?;
        loop {
            match from_coord(&mut coord)? {
                AMsg::Grant(g) => {
                    if held.is_some() {
                        return Err(unexpected(
                            "no grant while holding a block",
                            format!("block {}", g.index),
                        ));
                    }
                    to_follower(
                        peer,
                        LMsg::Open(party_pb::OpenBlock {
                            epoch: g.epoch,
                            block_id: g.block_id.clone(),
                            skip_rows: 0,
                        }),
                    )?;
                    held = Some(Held {
                        index: g.index,
                        lease: g.lease,
                        source: data.open(&g.block_id)?,
                    });
                    let report = fill(&mut held, &mut batch, cfg.batch_size, step + 1, peer)?;
                    has_batch = report.has_batch;
                    coord.send(status(SMsg::Ready(report)))?;
                }
                AMsg::None(_) => {}
                AMsg::Go(go) => {
                    let participates = go.participants.contains(&(w as u32));
                    if participates != has_batch || go.step != step + 1 {
                        return Err(unexpected(
                            "a step naming this worker exactly when it has a batch",
                            format!("step {} with participants {:?}", go.step, go.participants),
                        ));
                    }
                    step = go.step;
                    let n = if participates { batch.rows } else { 0 };
                    to_follower(
                        peer,
                        LMsg::Step(party_pb::PairStep {
                            step,
                            participants: go.participants.clone(),
                            rows: n as u32,
                        }),
                    )?;
                    if participates {
                        let act = match from_follower(peer)? {
                            FMsg::Activations(a) => a,
                            other => return Err(unexpected("activations", name_f(&other))),
                        };
                        let (r, grad) = party.train_step(&batch, &act)?;
                        to_follower(peer, LMsg::Gradient(grad))?;
                        rows = r.rows as u64;
                        loss_sum = f64::from(r.loss) * r.rows as f64;
                        examples += rows;
                        run_loss += loss_sum;
                        let cs = replica::contributions(party.model(), &placement, r.rows as u32);
                        own.send(w, step, &go.participants, cs)?;
                    }
                    for v in own.receive(w, step)? {
                        replica::apply(party.model_mut(), w, &v)?;
                    }
                    match from_follower(peer)? {
                        FMsg::Done(d) if d.step == step => {}
                        other => return Err(unexpected("the follower's StepDone", name_f(&other))),
                    }
                    continue 'steps;
                }
                AMsg::EpochEnd(e) => {
                    tracing::info!(epoch = e.epoch, steps = e.steps, "epoch done");
                    // After the last epoch `Finished` follows: no report.
                    if e.epoch.saturating_add(1) < plan.epochs {
                        continue 'steps;
                    }
                }
                AMsg::Finished(f) => {
                    if f.steps != step {
                        return Err(unexpected(
                            "the run's end at this worker's step",
                            format!("step {}", f.steps),
                        ));
                    }
                    break 'steps;
                }
                other @ (AMsg::Plan(_) | AMsg::Committed(_) | AMsg::Working(_)) => {
                    return Err(unexpected("an assignment", name_a(&other)));
                }
                AMsg::Failure(_) | AMsg::Fatal(_) => unreachable!("mapped to an error by from_coord"),
            }
        }
    }
    // The end-of-job work keeps the coordinator (and through it the
    // workers waiting for the end) and this pair's follower worker from
    // taking this worker for lost: a heartbeat every quarter of the peer
    // timeout.
    let every = cfg.heartbeat();
    let mut last = std::time::Instant::now();
    let mut beat = |peer: &LeaderPeer| -> Result<(), TrainError> {
        if last.elapsed() >= every {
            last = std::time::Instant::now();
            let working = party_pb::Finished { steps: step };
            coord.send(status(SMsg::Working(working)))?;
            to_follower(peer, LMsg::Working(working))?;
        }
        Ok(())
    };
    let eval = match eval {
        Some(src) => Some(evaluate(spec, party, peer, src, &mut beat)?),
        None => None,
    };
    beat(peer)?;
    let release = security.release_exports();
    let tensors = party.model_mut().tensors_mut();
    let exported = beating(
        every,
        || write_export(export, (&plan.run_id, step, &release), (spec, cfg), tensors),
        || beat(peer),
    )??;
    beat(peer)?;
    // The follower worker's end-of-job work (its export, with heartbeats
    // passed on), then this pair's report; the coordinator records the
    // job's end once every pair's is in.
    to_follower(peer, LMsg::Finished(party_pb::Finished { steps: step }))?;
    loop {
        match from_follower(peer)? {
            FMsg::Working(_) => beat(peer)?,
            FMsg::Exported(f) if f.steps == step => break,
            other => return Err(unexpected("the follower's end-of-job work", name_f(&other))),
        }
    }
    coord.send(status(SMsg::Finished(party_pb::Finished { steps: step })))?;
    let is_this_end = |c: &party_pb::Committed| c.steps == step && c.run_id == plan.run_id;
    let end = loop {
        match from_coord(&mut coord) {
            // Worker pair 0 is still at its end-of-job work: so is this
            // pair's follower worker, waiting. (Its part is done: if it is
            // gone, the end does not need it; `finish_leader` welcomes it
            // back.)
            Ok(AMsg::Working(f)) => {
                if let Err(e) = to_follower(peer, LMsg::Working(f)) {
                    tracing::info!(error = %e, "follower worker gone after its end-of-job work");
                }
            }
            Ok(AMsg::Committed(c)) if is_this_end(&c) => break c,
            Ok(other) => return Err(unexpected("the job's end (Committed)", name_a(&other))),
            // The coordinator may have died after recording the end:
            // started again, it answers with it (and this replica is kept).
            // This stream goes first (its index would be taken).
            Err(e) if restartable(&e) => {
                coord.outbound = tokio::sync::mpsc::channel(1).0;
                match ask_end(spec, cfg, &peer.rt, (coordinator, security)) {
                    Some((again, c)) if is_this_end(&c) => {
                        coord = again;
                        break c;
                    }
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    };
    let outcome = WorkerOutcome {
        steps: step,
        examples,
        loss_sum: run_loss,
        eval,
        digest: Some(replica::digest(party.model())),
        export: exported,
    };
    let tell = Some(LMsg::Committed(end.clone()));
    let ending = Ending {
        coord: Some(coord),
        own: Some(own),
        tell,
        end,
    };
    Ok((outcome, ending))
}

/// Runs `work` (an export) on its own thread and calls `beat` every
/// `every` until it ends: end-of-job work longer than the peer timeout
/// must not look like a lost peer.
fn beating<T: Send>(
    every: Duration,
    work: impl FnOnce() -> T + Send,
    mut beat: impl FnMut() -> Result<(), TrainError>,
) -> Result<T, TrainError> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let _ = tx.send(work());
        });
        loop {
            match rx.recv_timeout(every) {
                Ok(v) => return Ok(v),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => beat()?,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(TrainError::Unsupported("the export's thread ended without a result"));
                }
            }
        }
    })
}

/// With `export` (worker pair 0), writes this worker's replica (equal to
/// its party's shards) as run `run`'s export `<path>/<run>/<role>/` after
/// `steps` steps, sealed unless both policies release it.
fn write_export(
    export: Option<&ExportTo>,
    (run, steps, release): (&str, u64, &[String]),
    (spec, cfg): (&ModelSpec, &WorkerConfig),
    tensors: Vec<vfl_nn::split::TensorMut<'_>>,
) -> Result<Option<std::path::PathBuf>, TrainError> {
    let Some(x) = export else { return Ok(None) };
    let manifest = serde_json::json!({
        "run": run,
        "step": steps,
        "model": spec.name,
        "model_fingerprint": spec.fingerprint(),
        "scale_out": { "workers": cfg.workers },
    });
    let plan = crate::checkpoint::ExportPlan {
        export_path: &x.path,
        id: run,
        run,
        release,
    };
    crate::checkpoint::export(&plan, &x.bind, spec, tensors, manifest, x.sealer.as_deref()).map(Some)
}

/// Joins worker `cfg.worker` to its party's shards at step `steps` of run
/// `run` and writes their values into `model` (its replica).
fn join_shards(
    rt: &Handle,
    (spec, cfg): (&ModelSpec, &WorkerConfig),
    shards: &ShardAddrs,
    (steps, cadence, run): (u64, u64, &str),
    model: &mut dyn vfl_nn::Replica,
) -> Result<RemoteShards, TrainError> {
    let w = cfg.worker;
    let (own, dumps, _) = RemoteShards::connect(
        rt.clone(),
        shards,
        (w..w + 1, cfg.workers),
        (&spec.fingerprint(), steps, cadence, run),
    )?;
    for v in &dumps[0] {
        replica::apply(model, w, v)?;
    }
    Ok(own)
}

/// Fills the next batch from the block held; a block that ran out is
/// closed (on the follower too) and reported.
fn fill(
    held: &mut Option<Held<'_>>,
    batch: &mut Batch,
    batch_size: usize,
    step: u64,
    peer: &LeaderPeer,
) -> Result<party_pb::Ready, TrainError> {
    let mut r = party_pb::Ready {
        step,
        ..Default::default()
    };
    let Some(h) = held.as_mut() else { return Ok(r) };
    if h.source.fill(batch, batch_size)? > 0 {
        r.has_batch = true;
        return Ok(r);
    }
    to_follower(peer, LMsg::Close(party_pb::CloseBlock {}))?;
    (r.finished, r.index, r.lease) = (true, h.index, h.lease);
    *held = None;
    Ok(r)
}

/// Worker pair 0's held-out pass: the follower streams its activations,
/// the leader scores them against its labels.
fn evaluate(
    spec: &ModelSpec,
    party: &mut LeaderParty,
    peer: &mut LeaderPeer,
    src: &mut dyn BatchSource,
    beat: &mut dyn FnMut(&LeaderPeer) -> Result<(), TrainError>,
) -> Result<PassReport, TrainError> {
    to_follower(
        peer,
        LMsg::Evaluate(party_pb::Evaluate {
            batch_size: EVAL_BATCH as u32,
        }),
    )?;
    party.take_metrics();
    let mut batch = Batch::new(spec.leader.slots().len(), spec.leader.dense_columns().len());
    let (mut steps, mut examples, mut loss_sum) = (0u64, 0u64, 0f64);
    loop {
        match from_follower(peer)? {
            FMsg::Activations(act) => {
                let n = src.fill(&mut batch, EVAL_BATCH)?;
                if n == 0 {
                    return Err(TrainError::LocalRowCounts {
                        leader: 0,
                        follower: EVAL_BATCH,
                        step: steps,
                    });
                }
                let r = party.eval_step(&batch, &act)?;
                beat(peer)?;
                steps += 1;
                examples += r.rows as u64;
                loss_sum += f64::from(r.loss) * r.rows as f64;
            }
            FMsg::EvalEnd(e) => {
                let n = src.fill(&mut batch, EVAL_BATCH)?;
                if n != 0 || e.rows != examples {
                    return Err(TrainError::LocalRowCounts {
                        leader: examples as usize + n,
                        follower: e.rows as usize,
                        step: steps,
                    });
                }
                break;
            }
            other => return Err(unexpected("evaluation activations", name_f(&other))),
        }
    }
    Ok(PassReport {
        steps,
        examples,
        mean_loss: if examples == 0 { 0.0 } else { loss_sum / examples as f64 },
        metrics: party.take_metrics().values(),
    })
}

type FollowerPeer = Chan<party_pb::LeaderWorkerMessage, party_pb::FollowerWorkerMessage>;

fn to_leader(peer: &FollowerPeer, msg: FMsg) -> Result<(), TrainError> {
    peer.send(party_pb::FollowerWorkerMessage { msg: Some(msg) })
}

/// Runs follower worker `cfg.worker`: joins its party's shards, dials
/// leader worker `cfg.worker` at `leader` (admitted only as the leader),
/// and follows it until the run is finished. With `eval`, takes part in
/// the held-out pass the leader asks for. Blocks on `rt`.
pub fn run_follower(
    spec: &ModelSpec,
    cfg: &WorkerConfig,
    rt: Handle,
    shards: &ShardAddrs,
    (leader, security): (&str, &Security),
    (data, export): (&dyn PartyBlocks, Option<&ExportTo>),
    mut eval: Option<&mut dyn BatchSource>,
) -> Result<WorkerOutcome, TrainError> {
    let w = cfg.worker;
    let fp = spec.fingerprint();
    let max = pair_message_limit(spec, cfg.batch_size);
    // The job's end as this worker recorded it before a restart.
    let known = recorded_end(cfg)?;
    if let Some(end) = known.as_ref().filter(|e| e.complete) {
        tracing::info!(step = end.steps, "the job had ended, this worker's part too");
        return Ok(ended_before(&committed_of(end)));
    }
    let LeaderPairStream { inbound, outbound, .. } =
        match rt.block_on(dial_pair(leader, max, security, cfg.peer_timeout)) {
            Ok(s) => s,
            // Its leader worker ended after the end this worker recorded: only
            // the shards are left to tell.
            Err(e) => {
                let Some(end) = &known else { return Err(e.into()) };
                let told = super::remote::tell_done(&rt, shards, w, (end.steps, &end.run));
                if let Err(e) = told {
                    tracing::warn!(error = %e, "not every shard took the job's end");
                }
                let end = committed_of(end);
                record_end(cfg, &end, true);
                return Ok(ended_before(&end));
            }
        };
    let mut peer = Chan {
        rt: rt.clone(),
        inbound,
        outbound,
        wait: cfg.peer_timeout,
        name: format!("leader worker {w}"),
    };
    to_leader(
        &peer,
        FMsg::Hello(party_pb::PairHello {
            worker: w as u32,
            workers: cfg.workers as u32,
            model_fingerprint: fp,
            batch_size: cfg.batch_size as u32,
        }),
    )?;
    let result = follow(
        spec,
        cfg,
        shards,
        &mut peer,
        (data, export, security),
        (&mut eval, known.as_ref()),
    );
    if let Err(e) = &result {
        let _ = peer.outbound.try_send(party_pb::FollowerWorkerMessage {
            msg: Some(FMsg::Failure(vfl_bridge::sanitize(&e.to_string(), 1000))),
        });
    }
    result
}

fn from_leader(peer: &mut FollowerPeer) -> Result<LMsg, TrainError> {
    match peer.recv()?.msg {
        Some(LMsg::Failure(f)) => Err(BridgeError::PeerFailed(vfl_bridge::sanitize(&f, 1000)).into()),
        Some(LMsg::Fatal(f)) => Err(BridgeError::Stopped(vfl_bridge::sanitize(&f, 1000)).into()),
        Some(m) => Ok(m),
        None => Err(unexpected("a leader worker message", "an empty message".into())),
    }
}

fn follow(
    spec: &ModelSpec,
    cfg: &WorkerConfig,
    shards: &ShardAddrs,
    peer: &mut FollowerPeer,
    (data, export, security): (&dyn PartyBlocks, Option<&ExportTo>, &Security),
    (eval, known): (&mut Option<&mut dyn BatchSource>, Option<&super::state::JobEnd>),
) -> Result<WorkerOutcome, TrainError> {
    let w = cfg.worker;
    // The step the job resumes from, as the leader's coordinator decided.
    let welcome = match from_leader(peer)? {
        LMsg::Welcome(p) => p,
        other => return Err(unexpected("Welcome", name_l(&other))),
    };
    let (steps, cadence) = (welcome.steps, welcome.checkpoint_steps);
    // Both policies must release the same exports (as for a single pair).
    let release = security.release_exports();
    if welcome.release_exports != release {
        return Err(TrainError::ReleaseMismatch {
            leader: welcome
                .release_exports
                .iter()
                .map(|r| vfl_bridge::sanitize(r, 32))
                .collect(),
            follower: release,
        });
    }
    // A state directory holds one job: a recorded end admits only the
    // same end.
    if let Some(own) = known
        && !(welcome.committed && own.run == welcome.run_id && own.steps == steps)
    {
        let offered = if welcome.committed {
            format!(
                "the end of run {} after step {steps}",
                vfl_bridge::sanitize(&welcome.run_id, 64)
            )
        } else {
            format!("a job resuming at step {steps}")
        };
        return Err(TrainError::Unexpected {
            expected: "the end of the job this worker's state records",
            got: format!(
                "{offered} (this worker recorded the end of run {} after step {}; a new job needs a new state directory)",
                vfl_bridge::sanitize(&own.run, 64),
                own.steps
            ),
        });
    }
    if welcome.committed {
        // The job's end was recorded before this attempt (it restarted
        // after it): nothing to train; the shards are told on new streams.
        tracing::info!(step = steps, "the job's end was recorded before this attempt");
        let end = party_pb::Committed {
            steps,
            run_id: welcome.run_id.clone(),
        };
        let rt = peer.rt.clone();
        end_follower_part(cfg, peer, &end, || {
            super::remote::tell_done(&rt, shards, w, (steps, &welcome.run_id))
        });
        return Ok(ended_before(&end));
    }
    let mut party = FollowerParty::new(spec, cfg.threads)?;
    party.set_update_mode(UpdateMode::Collect);
    let party = &mut party;
    let mut own = join_shards(
        &peer.rt,
        (spec, cfg),
        shards,
        (steps, cadence, &welcome.run_id),
        party.model_mut(),
    )?;
    let placement = Placement::new(own.shards())?;
    let mut batch = Batch::new(spec.follower.slots().len(), spec.follower.dense_columns().len());
    let mut held: Option<Box<dyn BatchSource + '_>> = None;
    let mut step = steps;
    let mut examples = 0u64;
    loop {
        match from_leader(peer)? {
            LMsg::Open(o) => {
                if held.is_some() {
                    return Err(unexpected(
                        "a block opened after the last one closed",
                        vfl_bridge::sanitize(&o.block_id, 64),
                    ));
                }
                let mut source = data.open(&o.block_id)?;
                super::skip_rows(&mut *source, &mut batch, o.skip_rows, cfg.batch_size)?;
                held = Some(source);
            }
            LMsg::Close(_) => {
                let mut h = held
                    .take()
                    .ok_or_else(|| unexpected("a block to close", "none open".into()))?;
                let n = h.fill(&mut batch, cfg.batch_size)?;
                if n != 0 {
                    return Err(TrainError::LocalRowCounts {
                        leader: 0,
                        follower: n,
                        step: step + 1,
                    });
                }
            }
            LMsg::Step(s) => {
                if s.step != step + 1 {
                    return Err(TrainError::WrongIteration {
                        got: s.step,
                        expected: step + 1,
                    });
                }
                step = s.step;
                if s.rows > 0 {
                    let h = held
                        .as_mut()
                        .ok_or_else(|| unexpected("an open block for a step's rows", "none open".into()))?;
                    let n = h.fill(&mut batch, cfg.batch_size)?;
                    if n != s.rows as usize {
                        return Err(TrainError::LocalRowCounts {
                            leader: s.rows as usize,
                            follower: n,
                            step,
                        });
                    }
                    let act = party.forward(&batch, true)?;
                    to_leader(peer, FMsg::Activations(act))?;
                    let grad = match from_leader(peer)? {
                        LMsg::Gradient(g) => g,
                        other => return Err(unexpected("the gradient", name_l(&other))),
                    };
                    party.apply_gradient(&batch, &grad)?;
                    examples += n as u64;
                    let cs = replica::contributions(party.model(), &placement, n as u32);
                    own.send(w, step, &s.participants, cs)?;
                }
                for v in own.receive(w, step)? {
                    replica::apply(party.model_mut(), w, &v)?;
                }
                to_leader(peer, FMsg::Done(party_pb::StepDone { step }))?;
            }
            LMsg::Evaluate(e) => {
                let src = eval.as_mut().ok_or(TrainError::Unsupported(
                    "the leader asks to evaluate but this worker has no eval data",
                ))?;
                let rows = e.batch_size.clamp(1, EVAL_BATCH as u32) as usize;
                let mut eb = Batch::new(spec.follower.slots().len(), spec.follower.dense_columns().len());
                let mut total = 0u64;
                loop {
                    let n = src.fill(&mut eb, rows)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    let act = party.forward(&eb, false)?;
                    to_leader(peer, FMsg::Activations(act))?;
                }
                to_leader(peer, FMsg::EvalEnd(party_pb::EvalEnd { rows: total }))?;
            }
            // The leader worker's end-of-job work goes on (a heartbeat).
            LMsg::Working(_) => {}
            LMsg::Finished(f) => {
                if f.steps != step {
                    return Err(unexpected(
                        "the run's end at this worker's step",
                        format!("step {}", f.steps),
                    ));
                }
                let tensors = party.model_mut().tensors_mut();
                let working = party_pb::Finished { steps: step };
                let exported = beating(
                    cfg.heartbeat(),
                    || write_export(export, (&welcome.run_id, step, &release), (spec, cfg), tensors),
                    || to_leader(peer, FMsg::Working(working)),
                )??;
                // This worker's end-of-job work is done; the job's end is
                // recorded once every pair's is in.
                to_leader(peer, FMsg::Exported(party_pb::Finished { steps: step }))?;
                let end = loop {
                    match from_leader(peer)? {
                        // Worker pair 0 is still at its end-of-job work.
                        LMsg::Working(_) => {}
                        LMsg::Committed(c) if c.steps == step && c.run_id == welcome.run_id => break c,
                        other => return Err(unexpected("the job's end (Committed)", name_l(&other))),
                    }
                };
                end_follower_part(cfg, peer, &end, || own.done(step, &welcome.run_id));
                return Ok(WorkerOutcome {
                    steps: step,
                    examples,
                    loss_sum: 0.0,
                    eval: None,
                    digest: Some(replica::digest(party.model())),
                    export: exported,
                });
            }
            other => return Err(unexpected("the leader worker's next message", name_l(&other))),
        }
    }
}

/// A follower worker's part after the job's `end`: recorded, its shards
/// told (`tell`), its leader worker hears `Finished` and ends the stream,
/// then recorded complete. Nothing here fails the worker (the end is
/// recorded).
fn end_follower_part(
    cfg: &WorkerConfig,
    peer: &mut FollowerPeer,
    end: &party_pb::Committed,
    tell: impl FnOnce() -> Result<(), TrainError>,
) {
    record_end(cfg, end, false);
    if let Err(e) = tell() {
        tracing::warn!(error = %e, "not every shard took the job's end");
    }
    if to_leader(peer, FMsg::Finished(party_pb::Finished { steps: end.steps })).is_ok() {
        peer.await_close();
    }
    record_end(cfg, end, true);
}

fn name_f(m: &FMsg) -> String {
    match m {
        FMsg::Hello(_) => "Hello",
        FMsg::Activations(_) => "Activations",
        FMsg::Done(_) => "StepDone",
        FMsg::EvalEnd(_) => "EvalEnd",
        FMsg::Failure(_) => "Failure",
        FMsg::Finished(_) => "Finished",
        FMsg::Exported(_) => "Exported",
        FMsg::Working(_) => "Working",
    }
    .to_string()
}

fn name_l(m: &LMsg) -> String {
    match m {
        LMsg::Welcome(_) => "Welcome",
        LMsg::Open(_) => "OpenBlock",
        LMsg::Close(_) => "CloseBlock",
        LMsg::Step(_) => "PairStep",
        LMsg::Gradient(_) => "Gradient",
        LMsg::Evaluate(_) => "Evaluate",
        LMsg::Finished(_) => "Finished",
        LMsg::Failure(_) => "Failure",
        LMsg::Fatal(_) => "Fatal",
        LMsg::Committed(_) => "Committed",
        LMsg::Working(_) => "Working",
    }
    .to_string()
}

fn name_a(m: &AMsg) -> String {
    match m {
        AMsg::Plan(_) => "RunPlan",
        AMsg::Grant(_) => "BlockGrant",
        AMsg::None(_) => "NoBlock",
        AMsg::Go(_) => "Go",
        AMsg::EpochEnd(_) => "EpochEnd",
        AMsg::Finished(_) => "Finished",
        AMsg::Failure(_) => "Failure",
        AMsg::Fatal(_) => "Fatal",
        AMsg::Committed(_) => "Committed",
        AMsg::Working(_) => "Working",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_work_beats_until_it_ends() {
        let mut beats = 0;
        let got = beating(
            Duration::from_millis(20),
            || {
                std::thread::sleep(Duration::from_millis(200));
                7
            },
            || {
                beats += 1;
                Ok(())
            },
        );
        assert_eq!(got.unwrap(), 7);
        assert!(beats >= 3, "{beats} beats");
    }

    #[test]
    fn a_beat_that_fails_ends_the_wait() {
        let got = beating(
            Duration::from_millis(10),
            || std::thread::sleep(Duration::from_millis(100)),
            || Err(lost("gone".into())),
        );
        assert!(matches!(got, Err(TrainError::Bridge(BridgeError::Lost(_)))));
    }
}
