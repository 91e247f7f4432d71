//! The workers' side of shards served over the network
//! ([`super::serve`]): per worker, one RA-TLS stream to every shard of its
//! party, admitted as the party's own role at both ends.

use std::sync::Arc;
use std::time::Duration;

use vfl_attest::PartyRole;
use vfl_bridge::party::{ShardStream, dial_shard};
use vfl_bridge::party_pb::{self, shard_message::Msg as SMsg, worker_message::Msg as WMsg};
use vfl_bridge::{BridgeError, Security};

use super::{Contribution, Params, wire};
use crate::TrainError;

/// Where a party's shards are and how to reach them.
#[derive(Clone, Debug)]
pub struct ShardAddrs {
    pub own: PartyRole,
    /// Shard `s` at `addrs[s]`.
    pub addrs: Vec<String>,
    pub security: Security,
    pub max_message: usize,
    pub wait: Duration,
}

/// Every worker's streams to every shard of one party.
pub struct RemoteShards {
    rt: tokio::runtime::Handle,
    /// `[worker - first][shard]`.
    streams: Vec<Vec<ShardStream>>,
    /// The first worker index of this process.
    first: usize,
    /// Where the shards are and how to reach them (for errors, and for a
    /// new stream when a joined one broke), and how long a step's values
    /// may take before the run fails.
    at: ShardAddrs,
}

impl std::fmt::Debug for RemoteShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteShards({} workers)", self.streams.len())
    }
}

impl RemoteShards {
    /// Connects workers `ours` (of `workers` in the run) to every shard and
    /// joins them; returns per worker the shards' values (in shard order)
    /// and the steps the shards have applied. Blocks on `rt` (call it from
    /// outside the runtime).
    pub fn connect(
        rt: tokio::runtime::Handle,
        at: &ShardAddrs,
        (ours, workers): (std::ops::Range<usize>, usize),
        (model_fingerprint, resume_step, checkpoint_steps, run_id): (&str, u64, u64, &str),
    ) -> Result<(Self, Vec<Vec<Params>>, u64), TrainError> {
        let first = ours.start;
        let mut streams = Vec::with_capacity(ours.len());
        let mut dumps = Vec::with_capacity(ours.len());
        let mut steps = None;
        for w in ours {
            let (mut row, mut values) = (Vec::new(), Vec::new());
            for (s, addr) in at.addrs.iter().enumerate() {
                let mut stream = rt.block_on(dial_shard(addr, at.own, at.max_message, &at.security, at.wait))?;
                let join = WMsg::Join(party_pb::Join {
                    worker: w as u32,
                    model_fingerprint: model_fingerprint.to_string(),
                    workers: workers as u32,
                    shards: at.addrs.len() as u32,
                    shard: s as u32,
                    resume_step,
                    checkpoint_steps,
                    run_id: run_id.to_string(),
                });
                rt.block_on(send(&mut stream, join))?;
                let joined = match rt.block_on(async { tokio::time::timeout(at.wait, recv(&mut stream)).await }) {
                    Ok(r) => match r? {
                        SMsg::Joined(j) => j,
                        other => return Err(unexpected("Joined", &other)),
                    },
                    Err(_) => {
                        return Err(BridgeError::Lost(format!(
                            "shard {s} of the {} at {addr}: no answer to Join within {} s",
                            at.own,
                            at.wait.as_secs()
                        ))
                        .into());
                    }
                };
                if *steps.get_or_insert(joined.steps) != joined.steps {
                    return Err(TrainError::Unexpected {
                        expected: "shards at the same step",
                        got: format!("shard {s} at step {}", joined.steps),
                    });
                }
                values.push(wire::decode_opt(joined.values.as_ref(), "the shard's values").map_err(bad)?);
                row.push(stream);
            }
            streams.push(row);
            dumps.push(values);
        }
        let remote = RemoteShards {
            rt,
            streams,
            first,
            at: at.clone(),
        };
        Ok((remote, dumps, steps.unwrap_or(0)))
    }

    /// The party's shards.
    pub fn shards(&self) -> usize {
        self.at.addrs.len()
    }

    /// Tells every shard that the job's end after `steps` steps of run
    /// `run` is recorded (the workers then leave for good; before it a
    /// shard takes a worker's departure for a loss). A joined stream that
    /// broke is replaced by a new one ([`tell_done`]). Every shard is
    /// tried; returns the first failure.
    pub fn done(&mut self, steps: u64, run: &str) -> Result<(), TrainError> {
        let mut first_err = None;
        for (i, row) in self.streams.iter_mut().enumerate() {
            let worker = self.first + i;
            for (s, stream) in row.iter_mut().enumerate() {
                let msg = done_msg(worker, steps, run);
                let taken = self.rt.block_on(async {
                    match send(stream, msg).await {
                        Ok(()) => acknowledged(stream, self.at.wait).await,
                        Err(e) => Err(e),
                    }
                });
                if taken.is_ok() {
                    continue;
                }
                // The joined stream broke (the shard restarted, or dropped
                // this worker when another was lost before the end): a new
                // stream, where a refusal is final.
                let again = self.rt.block_on(done_at(&self.at, s, worker, (steps, run)));
                if let Err(e) = again {
                    tracing::warn!(shard = s, worker, error = %e, "a shard did not take the job's end");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Worker `worker`'s contributions (one per shard) to `step`.
    pub fn send(
        &mut self,
        worker: usize,
        step: u64,
        participants: &[u32],
        contributions: Vec<Contribution>,
    ) -> Result<(), TrainError> {
        let row = worker
            .checked_sub(self.first)
            .and_then(|i| self.streams.get_mut(i))
            .ok_or(TrainError::Unsupported("no such worker"))?;
        for (stream, c) in row.iter_mut().zip(contributions) {
            let mut msg = party_pb::WorkerMessage {
                msg: Some(WMsg::Contribute(party_pb::Contribute {
                    step,
                    participants: participants.to_vec(),
                    examples: c.examples,
                    grads: Some(wire::encode(&c.grads)),
                    padding: Vec::new(),
                })),
            };
            // Its size says nothing of how many rows the batch touched.
            wire::pad(&mut msg, self.at.max_message, |m, fill| {
                if let Some(WMsg::Contribute(c)) = &mut m.msg {
                    c.padding = fill;
                }
            });
            self.rt.block_on(send_whole(stream, msg))?;
        }
        Ok(())
    }

    /// Step `step`'s new values as worker `worker` receives them. A shard
    /// that sends nothing within the wait fails the run, named (no silent
    /// hang when a shard or another participant is gone).
    pub fn receive(&mut self, worker: usize, step: u64) -> Result<Vec<Arc<Params>>, TrainError> {
        let row = worker
            .checked_sub(self.first)
            .and_then(|i| self.streams.get_mut(i))
            .ok_or(TrainError::Unsupported("no such worker"))?;
        let mut out = Vec::with_capacity(row.len());
        for (s, stream) in row.iter_mut().enumerate() {
            let got = self
                .rt
                .block_on(async { tokio::time::timeout(self.at.wait, recv(stream)).await });
            let named = |why: String| {
                BridgeError::Lost(format!(
                    "shard {s} of the {} at {} (worker {worker}, step {step}): {why}",
                    self.at.own,
                    self.at.addrs.get(s).map_or("?", String::as_str)
                ))
            };
            match got {
                Err(_) => {
                    return Err(named(format!(
                        "no values within {} s (a shard or a participant is gone)",
                        self.at.wait.as_secs()
                    ))
                    .into());
                }
                Ok(Err(TrainError::Bridge(BridgeError::Lost(why)))) => return Err(named(why).into()),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(SMsg::Changes(c))) if c.step == step => {
                    out.push(Arc::new(
                        wire::decode_opt(c.params.as_ref(), "the step's values").map_err(bad)?,
                    ));
                }
                Ok(Ok(other)) => return Err(unexpected("the step's Changes", &other)),
            }
        }
        Ok(out)
    }
}

fn done_msg(worker: usize, steps: u64, run: &str) -> WMsg {
    WMsg::Done(party_pb::Done {
        steps,
        worker: worker as u32,
        run_id: run.to_string(),
    })
}

/// Whether the shard took the Done: it ends the stream cleanly once it
/// has (a process that exits first could lose it); a message is its
/// refusal.
async fn acknowledged(stream: &mut ShardStream, wait: Duration) -> Result<(), TrainError> {
    match tokio::time::timeout(wait, stream.inbound.message()).await {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(party_pb::ShardMessage { msg: Some(m) }))) => Err(unexpected("the end of the stream", &m)),
        Ok(Ok(Some(_))) => Err(TrainError::Unexpected {
            expected: "the end of the stream",
            got: "an empty message".into(),
        }),
        Ok(Err(s)) => Err(BridgeError::Lost(vfl_bridge::sanitize(s.message(), 1000)).into()),
        Err(_) => Err(BridgeError::Lost(format!(
            "the job's end was not acknowledged within {} s",
            wait.as_secs()
        ))
        .into()),
    }
}

/// Tells shard `s` on a new stream (without joining) that the job's end
/// after `steps` steps of run `run` is recorded, as worker `worker`.
async fn done_at(at: &ShardAddrs, s: usize, worker: usize, (steps, run): (u64, &str)) -> Result<(), TrainError> {
    let addr = at.addrs.get(s).ok_or(TrainError::Unsupported("no such shard"))?;
    let mut stream = dial_shard(addr, at.own, at.max_message, &at.security, at.wait).await?;
    send(&mut stream, done_msg(worker, steps, run)).await?;
    acknowledged(&mut stream, at.wait).await
}

/// Tells every shard of a party, each on a new stream, that the job's end
/// after `steps` steps of run `run` is recorded, as worker `worker` (one
/// that restarted after the end and did not join). Every shard is tried,
/// at once; returns the first failure.
pub fn tell_done(
    rt: &tokio::runtime::Handle,
    at: &ShardAddrs,
    worker: usize,
    (steps, run): (u64, &str),
) -> Result<(), TrainError> {
    rt.block_on(async {
        let mut all = tokio::task::JoinSet::new();
        for s in 0..at.addrs.len() {
            let (at, run) = (at.clone(), run.to_string());
            all.spawn(async move { (s, done_at(&at, s, worker, (steps, &run)).await) });
        }
        let mut first_err = None;
        while let Some(r) = all.join_next().await {
            let (s, r) = r.map_err(|_| TrainError::Unsupported("a task telling a shard the end panicked"))?;
            if let Err(e) = r {
                tracing::warn!(shard = s, worker, error = %e, "a shard did not take the job's end");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

fn bad(e: wire::ParamsError) -> TrainError {
    TrainError::Unexpected {
        expected: "parameters",
        got: e.to_string(),
    }
}

fn unexpected(expected: &'static str, got: &SMsg) -> TrainError {
    match got {
        SMsg::Failure(f) => BridgeError::PeerFailed(vfl_bridge::sanitize(f, 1000)).into(),
        SMsg::Fatal(f) => BridgeError::Stopped(vfl_bridge::sanitize(f, 1000)).into(),
        SMsg::Joined(j) => TrainError::Unexpected {
            expected,
            got: format!("Joined (step {})", j.steps),
        },
        SMsg::Changes(c) => TrainError::Unexpected {
            expected,
            got: format!("Changes (step {})", c.step),
        },
    }
}

async fn send(stream: &mut ShardStream, msg: WMsg) -> Result<(), TrainError> {
    send_whole(stream, party_pb::WorkerMessage { msg: Some(msg) }).await
}

async fn send_whole(stream: &mut ShardStream, msg: party_pb::WorkerMessage) -> Result<(), TrainError> {
    stream
        .outbound
        .send(msg)
        .await
        .map_err(|_| BridgeError::Lost("the shard's stream closed".into()).into())
}

async fn recv(stream: &mut ShardStream) -> Result<SMsg, TrainError> {
    match stream.inbound.message().await {
        Ok(Some(party_pb::ShardMessage { msg: Some(m) })) => Ok(m),
        Ok(Some(_)) => Err(TrainError::Unexpected {
            expected: "a shard message",
            got: "an empty message".into(),
        }),
        Ok(None) => Err(BridgeError::Lost("the shard closed the stream".into()).into()),
        Err(s) => Err(BridgeError::Lost(vfl_bridge::sanitize(s.message(), 1000)).into()),
    }
}
