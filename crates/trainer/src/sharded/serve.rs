//! A parameter shard as a network service (`vfl shard`): the [`Shard`]
//! state machine behind the party-internal transport
//! ([`vfl_bridge::party`]). Workers join (their replica takes the shard's
//! values), contribute per step, and every joined worker receives every
//! step's new values.
//!
//! With a state directory the shard saves its state at every checkpoint
//! step before it sends that step's values, and loads its newest state
//! when it starts. A worker joins naming the step the job resumes at; a
//! shard elsewhere loads its saved state of that step (or refuses). A
//! worker that leaves without `Done` is lost: the shard drops the step in
//! progress, tells the other workers (their job restarts from its last
//! checkpoint) and waits, within the peer timeout, for the workers to
//! rejoin.
//!
//! Workers send `Done` only once the job's end is recorded (the
//! coordinator's commit point): from then on nothing is trained again, a
//! worker that leaves is no loss, and the shard ends once every worker's
//! `Done` is in (a worker whose joined stream broke, or that restarted,
//! sends it on a new stream without joining), or after the peer timeout
//! without one.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use vfl_bridge::Status;
use vfl_bridge::party::{ShardListener, WorkerStream};
use vfl_bridge::party_pb::{self, shard_message::Msg as SMsg, worker_message::Msg as WMsg};

use super::Event;
use super::state::StateDir;
use super::{Contribution, Shard, ShardError, wire};
use crate::TrainError;

/// What a shard serves.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub index: usize,
    pub shards: usize,
    pub workers: usize,
    pub model_fingerprint: String,
    /// How long to wait for the first worker, and for a missing one.
    pub peer_timeout: Duration,
    /// Where the shard saves its state, and every how many steps (0:
    /// never).
    pub state: Option<StateDir>,
    pub checkpoint_every: u64,
    /// The workers' largest message (`sharded::message_limit`): the step's
    /// values are padded to a size bucket below it.
    pub max_message: usize,
}

/// Serves `shard` on `listener` until the job is over (every worker's
/// `Done` is in; before the end, every worker that joined has left);
/// returns the job's steps. Fails when no worker joins within the peer timeout,
/// when a step begun is not complete within it (a participant is gone or
/// was refused: every worker is told), and drops a worker that does not
/// read what it is sent (it must not stall the others).
pub async fn run(cfg: ShardConfig, mut shard: Shard, mut listener: ShardListener) -> Result<u64, TrainError> {
    // What this shard recorded of the job's end before a restart.
    let known = match &cfg.state {
        Some(sd) => sd.load_end()?,
        None => None,
    };
    // The job's end, once a worker said it is recorded (or this shard did
    // before a restart: it then takes only the remaining Done).
    let mut end: Option<Tally> = known.as_ref().map(|k| Tally {
        steps: k.steps,
        workers: k.done.iter().copied().filter(|&w| (w as usize) < cfg.workers).collect(),
    });
    if let Some(k) = known.as_ref()
        && (k.complete || end.as_ref().is_some_and(|e| e.workers.len() == cfg.workers))
    {
        // Every worker's Done was in: nothing is left to do.
        tracing::info!(step = k.steps, "the job had ended, every worker's Done was in");
        let _ = tokio::time::timeout(cfg.peer_timeout, listener.shutdown()).await;
        return Ok(k.steps);
    }
    // The run the joined workers are of (its id binds the saved state;
    // the first Join names it, and the step to load; or the recorded end).
    let mut run: Option<String> = known.map(|k| k.run);
    let (ev_tx, mut events) = mpsc::channel::<Event<WMsg>>(64);
    let mut conns: Conns = BTreeMap::new();
    let mut next_conn = 0u64;
    let mut ever_joined = false;
    // Until the first worker joins, then while a step is in progress.
    let deadline = tokio::time::sleep(cfg.peer_timeout);
    tokio::pin!(deadline);
    let mut step_open = false;
    // A worker was lost: the others were told, and the shard waits for the
    // job to rejoin (restarted from its checkpoint).
    let mut restarting = false;
    let result = loop {
        tokio::select! {
            s = listener.streams.recv() => {
                let Some(WorkerStream { inbound, outbound, .. }) = s else { break Ok(()) };
                next_conn += 1;
                let conn = next_conn;
                let reader = super::spawn_reader(conn, inbound, ev_tx.clone(), |m: party_pb::WorkerMessage| m.msg);
                conns.insert(conn, Conn { gone: false, worker: None, tx: outbound, reader });
            }
            Some(reason) = listener.rejections.recv() => {
                tracing::warn!(%reason, "refused a connection's evidence");
            }
            Some(ev) = events.recv() => match ev {
                Event::Closed(conn, why) => {
                    if let Some(c) = conns.remove(&conn)
                        && let Some(w) = c.worker
                    {
                        if end.is_some() {
                            // After the end nothing is trained again.
                            tracing::info!(worker = w, %why, "a worker left after the job's end");
                            continue;
                        }
                        lost(&mut shard, &mut conns, w, &why);
                        (step_open, restarting) = (false, true);
                        deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                    }
                    if !restarting && let Some(end) = all_left(ever_joined, step_open, &conns, &cfg, &shard) {
                        break end;
                    }
                }
                // Left over from a connection already dropped.
                Event::Message(conn, _) if !conns.contains_key(&conn) => {}
                Event::Message(conn, WMsg::Done(d)) => {
                    let joined = conns.get(&conn).and_then(|c| c.worker);
                    let Some(c) = conns.remove(&conn) else { continue };
                    c.reader.abort();
                    match job_end(&cfg, (&mut run, &mut end), joined, &d) {
                        // Ending its stream (dropping `c`) acknowledges it.
                        Ok(ended) => {
                            tracing::info!(worker = d.worker, steps = d.steps, "worker done: the job's end is recorded");
                            if let Some(e) = &end {
                                record_end(&cfg, run.as_deref(), e, ended == cfg.workers);
                            }
                            // No step is open after the end: one open here
                            // belonged to an attempt that restarted.
                            shard.abort();
                            step_open = false;
                            if ended == cfg.workers {
                                break Ok(());
                            }
                            deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "refusing a worker's Done");
                            let _ = c.tx.try_send(Ok(refusal(&e)));
                        }
                    }
                }
                // After the end only `Done` is taken.
                Event::Message(conn, _) if end.is_some() => {
                    if let Some(c) = conns.remove(&conn) {
                        let _ = c.tx.try_send(Ok(failure("the job has ended")));
                        c.reader.abort();
                    }
                }
                Event::Message(conn, msg) => {
                    match handle(&cfg, (&mut shard, &mut run), &mut conns, conn, msg) {
                        Ok(()) => {}
                        // The shard's own state could not be saved.
                        Err(e @ (TrainError::Store(_) | TrainError::Seal(_))) => break Err(e),
                        Err(e) => {
                            tracing::error!(error = %e, "refusing a worker");
                            let joined = conns.get(&conn).and_then(|c| c.worker);
                            if let Some(c) = conns.remove(&conn) {
                                let _ = c.tx.try_send(Ok(refusal(&e)));
                                c.reader.abort();
                            }
                            // A joined worker refused while a step waits for
                            // it: the step cannot complete.
                            if joined.is_some() && shard.pending().is_some() {
                                break Err(e);
                            }
                            if let Some(w) = joined {
                                lost(&mut shard, &mut conns, w, "refused");
                                restarting = true;
                                deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                            }
                        }
                    }
                    // A worker that could not take what it was sent is gone
                    // (its process died, or it does not read): lost.
                    if let Some(w) = sweep_gone(&mut conns) {
                        lost(&mut shard, &mut conns, w, "does not take its messages");
                        restarting = true;
                        deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                    }
                    if conns.values().any(|c| c.worker.is_some()) {
                        restarting = false;
                    }
                    let open = shard.pending().is_some();
                    if open && !step_open {
                        deadline.as_mut().reset(tokio::time::Instant::now() + cfg.peer_timeout);
                    }
                    step_open = open;
                    // A refusal or a dropped reader may have removed the last
                    // worker (no Closed event comes for it).
                    if !restarting && let Some(end) = all_left(ever_joined, step_open, &conns, &cfg, &shard) {
                        break end;
                    }
                    ever_joined |= conns.values().any(|c| c.worker.is_some());
                }
            },
            () = &mut deadline, if end.is_some() || !ever_joined || step_open || !conns.values().any(|c| c.worker.is_some()) => {
                if let Some(e) = &end {
                    tracing::warn!(
                        done = e.workers.len(),
                        workers = cfg.workers,
                        "not every worker's Done came within the peer timeout; the job's end is recorded, stopping"
                    );
                    break Ok(());
                }
                break Err(if step_open {
                    TrainError::Bridge(vfl_bridge::BridgeError::Lost(format!(
                        "shard {}: step {} incomplete after {} s (a participant is gone)",
                        cfg.index,
                        shard.steps() + 1,
                        cfg.peer_timeout.as_secs()
                    )))
                } else if ever_joined {
                    TrainError::Bridge(vfl_bridge::BridgeError::Lost(format!(
                        "shard {}: its workers were lost and did not rejoin within {} s",
                        cfg.index,
                        cfg.peer_timeout.as_secs()
                    )))
                } else {
                    TrainError::Unsupported("no worker joined this shard within --peer-timeout")
                });
            }
        }
    };
    if let Err(e) = &result {
        // The shard stops: retrying it cannot help.
        let msg = party_pb::ShardMessage {
            msg: Some(SMsg::Fatal(vfl_bridge::sanitize(&e.to_string(), 1000))),
        };
        for c in conns.values() {
            let _ = c.tx.try_send(Ok(msg.clone()));
        }
    }
    for c in conns.values() {
        c.reader.abort();
    }
    // The response streams end with their senders, so that the server's
    // graceful shutdown does not wait for workers that are still connected.
    drop(conns);
    if tokio::time::timeout(cfg.peer_timeout, listener.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("a worker did not take the last messages; stopped without it");
    }
    if result.is_ok()
        && let Some(e) = &end
    {
        record_end(&cfg, run.as_deref(), e, true);
    }
    result.map(|()| end.map_or(shard.steps(), |e| e.steps))
}

/// Records the job's end and the workers whose `Done` is in (`complete`:
/// every worker's, or no more is awaited). A record that cannot be
/// written only costs a later restart its shortcut: warned, not failed.
fn record_end(cfg: &ShardConfig, run: Option<&str>, e: &Tally, complete: bool) {
    let Some(sd) = &cfg.state else { return };
    let end = super::state::JobEnd {
        run: run.unwrap_or_default().to_string(),
        steps: e.steps,
        complete,
        done: e.workers.iter().copied().collect(),
    };
    if let Err(e) = sd.save_end(&end) {
        tracing::warn!(error = %e, "could not record the job's end");
    }
}

/// The job's end as the workers' `Done` tell it.
struct Tally {
    steps: u64,
    workers: std::collections::BTreeSet<u32>,
}

/// Takes worker `d.worker`'s `Done` (on its joined stream, `joined`, or on
/// a new one); returns how many workers' are in.
fn job_end(
    cfg: &ShardConfig,
    (run, end): (&mut Option<String>, &mut Option<Tally>),
    joined: Option<u32>,
    d: &party_pb::Done,
) -> Result<usize, TrainError> {
    if d.worker as usize >= cfg.workers || joined.is_some_and(|w| w != d.worker) {
        return Err(TrainError::Unexpected {
            expected: "the Done of this worker, of a worker of the run",
            got: format!("the Done of worker {} (joined as {joined:?})", d.worker),
        });
    }
    match run.as_deref() {
        Some(r) if r != d.run_id => {
            return Err(TrainError::Unexpected {
                expected: "the Done of the run the joined workers are of",
                got: format!("the Done of another run (worker {})", d.worker),
            });
        }
        Some(_) => {}
        // A shard restarted after the last step: the run's workers tell it
        // the end.
        None if d.run_id.len() > 64 => {
            return Err(TrainError::Unexpected {
                expected: "a run id of at most 64 bytes",
                got: format!("{} bytes", d.run_id.len()),
            });
        }
        // With saved state, only a run it took part in.
        None if cfg.state.as_ref().is_some_and(|sd| {
            !crate::checkpoint::is_safe_component(&d.run_id) || sd.shard_steps(&d.run_id).is_empty()
        }) =>
        {
            return Err(TrainError::Unexpected {
                expected: "the Done of a run this shard has state of",
                got: format!("the Done of another run (worker {})", d.worker),
            });
        }
        None => *run = Some(d.run_id.clone()),
    }
    let e = end.get_or_insert_with(|| Tally {
        steps: d.steps,
        workers: Default::default(),
    });
    if e.steps != d.steps {
        return Err(TrainError::Unexpected {
            expected: "the job's end at the step the other workers named",
            got: format!("worker {} ends at step {}, others at {}", d.worker, d.steps, e.steps),
        });
    }
    e.workers.insert(d.worker);
    Ok(e.workers.len())
}

/// When every worker that joined has left: the end of the job, or, with
/// a step still open, a failure (the step can never complete).
fn all_left(
    ever_joined: bool,
    step_open: bool,
    conns: &Conns,
    cfg: &ShardConfig,
    shard: &Shard,
) -> Option<Result<(), TrainError>> {
    if !ever_joined || conns.values().any(|c| c.worker.is_some()) {
        return None;
    }
    Some(if step_open {
        Err(TrainError::Bridge(vfl_bridge::BridgeError::Lost(format!(
            "shard {}: every worker left during step {}",
            cfg.index,
            shard.steps() + 1
        ))))
    } else {
        Ok(())
    })
}

/// A joined worker was lost (it left without `Done`, or was refused): the
/// step in progress is dropped and every other joined worker is told and
/// dropped; the job restarts from its last checkpoint and rejoins.
fn lost(shard: &mut Shard, conns: &mut Conns, worker: u32, why: &str) {
    tracing::warn!(
        worker,
        %why,
        step = shard.steps(),
        "worker lost: waiting for the job to restart from its last checkpoint"
    );
    shard.abort();
    let msg = failure(&format!(
        "worker {worker} was lost ({why}); the job restarts from its last checkpoint"
    ));
    for c in super::drain(conns, |c| c.worker.is_some()) {
        let _ = c.tx.try_send(Ok(msg.clone()));
        c.reader.abort();
    }
}

/// One worker's connection: who it is once joined, where its messages go,
/// the task reading it.
struct Conn {
    /// A message could not be queued for it.
    gone: bool,
    worker: Option<u32>,
    tx: mpsc::Sender<Result<party_pb::ShardMessage, Status>>,
    reader: tokio::task::JoinHandle<()>,
}

/// Sends without waiting: a worker whose queue is full does not read and
/// is dropped (a stalled worker must not stall the shard).
fn deliver(conns: &mut Conns, conn: u64, msg: party_pb::ShardMessage) {
    let Some(c) = conns.get_mut(&conn) else { return };
    if let Err(e) = c.tx.try_send(Ok(msg)) {
        tracing::warn!(worker = ?c.worker, error = %e, "dropping a worker that does not take its messages");
        c.gone = true;
    }
}

/// Removes the connections [`deliver`] could not reach; returns a joined
/// worker among them (its loss restarts the job).
fn sweep_gone(conns: &mut Conns) -> Option<u32> {
    let mut joined = None;
    for c in super::drain(conns, |c| c.gone) {
        c.reader.abort();
        joined = joined.or(c.worker);
    }
    joined
}

/// The message refusing a worker for `e`: fatal when retrying cannot help
/// (a worker of another run's shape or cadence, no saved state of the step
/// it resumes at), a failure otherwise (e.g. its index is still held by its
/// previous connection).
fn refusal(e: &TrainError) -> party_pb::ShardMessage {
    let fatal = matches!(e, TrainError::Shard(ShardError::BadState { .. }))
        || matches!(e, TrainError::Unexpected { expected, .. } if expected.starts_with("a worker of this run"));
    let why = vfl_bridge::sanitize(&e.to_string(), 1000);
    party_pb::ShardMessage {
        msg: Some(if fatal { SMsg::Fatal(why) } else { SMsg::Failure(why) }),
    }
}

fn failure(reason: &str) -> party_pb::ShardMessage {
    party_pb::ShardMessage {
        msg: Some(SMsg::Failure(vfl_bridge::sanitize(reason, 1000))),
    }
}

type Conns = BTreeMap<u64, Conn>;

/// One message of connection `conn`.
fn handle(
    cfg: &ShardConfig,
    (shard, run): (&mut Shard, &mut Option<String>),
    conns: &mut Conns,
    conn: u64,
    msg: WMsg,
) -> Result<(), TrainError> {
    let joined = conns.get(&conn).and_then(|c| c.worker);
    match (msg, joined) {
        (WMsg::Join(j), None) => {
            let want = (
                cfg.model_fingerprint.as_str(),
                cfg.workers as u32,
                cfg.shards as u32,
                cfg.index as u32,
                cfg.checkpoint_every,
            );
            let got = (
                j.model_fingerprint.as_str(),
                j.workers,
                j.shards,
                j.shard,
                j.checkpoint_steps,
            );
            if got != want {
                return Err(TrainError::Unexpected {
                    expected: "a worker of this run (model, workers, shards, shard index, checkpoint steps)",
                    got: format!(
                        "model {}, {} workers, {} shards, shard {}, checkpoints every {} steps",
                        vfl_bridge::sanitize(got.0, 64),
                        got.1,
                        got.2,
                        got.3,
                        got.4
                    ),
                });
            }
            if j.worker as usize >= cfg.workers || conns.values().any(|c| c.worker == Some(j.worker)) {
                return Err(TrainError::Unexpected {
                    expected: "a worker index not taken",
                    got: format!("worker {}", j.worker),
                });
            }
            // The run: the coordinator's id, which binds the saved state
            // (and names its files).
            if j.run_id.len() > 64 || (cfg.state.is_some() && !crate::checkpoint::is_safe_component(&j.run_id)) {
                return Err(ShardError::BadState {
                    shard: cfg.index,
                    why: "the run id is not one short safe name".into(),
                }
                .into());
            }
            let others = conns.values().any(|c| c.worker.is_some()) || shard.pending().is_some();
            if run.as_deref() != Some(j.run_id.as_str()) {
                if others {
                    return Err(TrainError::Unexpected {
                        expected: "a worker of the run the joined workers are of",
                        got: format!("worker {} of another run", j.worker),
                    });
                }
                *run = Some(j.run_id.clone());
                if let Some(sd) = &cfg.state
                    && j.resume_step == 0
                {
                    sd.forget_other_runs(&j.run_id);
                }
            }
            if j.resume_step != shard.steps() {
                // The first worker of a restarted job rolls the shard to the
                // job's checkpoint; the others must name the same step.
                if others {
                    return Err(TrainError::Unexpected {
                        expected: "the step the joined workers resumed at",
                        got: format!(
                            "worker {} resumes at step {}, the shard is at {}",
                            j.worker,
                            j.resume_step,
                            shard.steps()
                        ),
                    });
                }
                let st = match &cfg.state {
                    Some(sd) => sd.load_shard(&j.run_id, j.resume_step)?,
                    None => None,
                };
                let st = st.ok_or_else(|| ShardError::BadState {
                    shard: cfg.index,
                    why: format!(
                        "the job resumes at step {} but this shard is at {} and has no saved state of that step",
                        j.resume_step,
                        shard.steps()
                    ),
                })?;
                shard.restore(&st)?;
                tracing::info!(step = j.resume_step, "rolled back to the job's checkpoint");
            }
            // The start is a checkpoint too: a job lost before its first
            // checkpoint restarts from it.
            if let Some(sd) = &cfg.state
                && shard.steps() == 0
                && sd.shard_steps(&j.run_id).is_empty()
            {
                sd.save_shard(&j.run_id, &shard.state())?;
            }
            let reply = party_pb::ShardMessage {
                msg: Some(SMsg::Joined(party_pb::Joined {
                    steps: shard.steps(),
                    values: Some(wire::encode(&shard.dump())),
                })),
            };
            let entry = conns
                .get_mut(&conn)
                .ok_or(TrainError::Unsupported("a connection that is gone"))?;
            entry.worker = Some(j.worker);
            deliver(conns, conn, reply);
            tracing::info!(worker = j.worker, steps = shard.steps(), "worker joined");
            Ok(())
        }
        (WMsg::Contribute(c), Some(worker)) => {
            if c.participants.len() > cfg.workers {
                return Err(ShardError::UnknownWorker {
                    shard: cfg.index,
                    worker: u32::MAX,
                    workers: cfg.workers,
                }
                .into());
            }
            // Every contribution of a step names the same participants.
            match shard.pending() {
                Some((step, ids)) if step == c.step => {
                    let mut named = c.participants.clone();
                    named.sort_unstable();
                    named.dedup();
                    if named != ids {
                        return Err(TrainError::Unexpected {
                            expected: "the step's participants",
                            got: format!("{named:?} from worker {worker}, {ids:?} before"),
                        });
                    }
                }
                _ => shard.begin(c.step, &c.participants)?,
            }
            let grads = wire::decode_opt(c.grads.as_ref(), "gradients").map_err(|e| TrainError::Unexpected {
                expected: "gradients",
                got: e.to_string(),
            })?;
            let applied = shard.contribute(
                worker,
                Contribution {
                    examples: c.examples,
                    grads,
                },
            )?;
            if let Some(changes) = applied {
                // Saved before anyone sees the step's values: a worker that
                // has them knows every shard holds this checkpoint.
                if let Some(sd) = &cfg.state
                    && cfg.checkpoint_every > 0
                    && shard.steps().is_multiple_of(cfg.checkpoint_every)
                {
                    sd.save_shard(run.as_deref().unwrap_or_default(), &shard.state())?;
                }
                let mut msg = party_pb::ShardMessage {
                    msg: Some(SMsg::Changes(party_pb::Changes {
                        step: c.step,
                        params: Some(wire::encode(&changes)),
                        padding: Vec::new(),
                    })),
                };
                // Its size says nothing of how many rows the step touched.
                wire::pad(&mut msg, cfg.max_message, |m, fill| {
                    if let Some(SMsg::Changes(c)) = &mut m.msg {
                        c.padding = fill;
                    }
                });
                let joined: Vec<u64> = conns
                    .iter()
                    .filter(|(_, c)| c.worker.is_some())
                    .map(|(k, _)| *k)
                    .collect();
                for k in joined {
                    deliver(conns, k, msg.clone());
                }
            }
            Ok(())
        }
        // Taken by the serving loop.
        (WMsg::Done(_), _) => Err(TrainError::Unsupported("a Done outside the serving loop")),
        (WMsg::Join(_), Some(w)) => Err(ShardError::Duplicate {
            shard: cfg.index,
            worker: w,
            step: shard.steps(),
        }
        .into()),
        (WMsg::Contribute(_), None) => Err(TrainError::Unexpected {
            expected: "Join first",
            got: "Contribute".into(),
        }),
    }
}
