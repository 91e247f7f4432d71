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
    /// Where each shard is (for errors), whose it is, and how long a step's
    /// values may take before the run fails.
    addrs: Vec<String>,
    own: PartyRole,
    wait: Duration,
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
            addrs: at.addrs.clone(),
            own: at.own,
            wait: at.wait,
        };
        Ok((remote, dumps, steps.unwrap_or(0)))
    }

    /// The party's shards.
    pub fn shards(&self) -> usize {
        self.addrs.len()
    }

    /// Tells every shard the job is finished after `steps` steps (the
    /// workers then leave for good; without it a shard takes a worker's
    /// departure for a loss).
    pub fn done(&mut self, steps: u64) -> Result<(), TrainError> {
        for row in &mut self.streams {
            for stream in row.iter_mut() {
                self.rt.block_on(send(stream, WMsg::Done(party_pb::Done { steps })))?;
            }
        }
        // Each shard ends the stream once it has taken the Done (a process
        // that exits first would lose it, and the shard a worker).
        let wait = self.wait;
        for row in &mut self.streams {
            for stream in row.iter_mut() {
                let _ = self.rt.block_on(async {
                    tokio::time::timeout(wait, async {
                        while let Ok(Some(_)) = stream.inbound.message().await {}
                    })
                    .await
                });
            }
        }
        Ok(())
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
            let msg = WMsg::Contribute(party_pb::Contribute {
                step,
                participants: participants.to_vec(),
                examples: c.examples,
                grads: Some(wire::encode(&c.grads)),
            });
            self.rt.block_on(send(stream, msg))?;
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
                .block_on(async { tokio::time::timeout(self.wait, recv(stream)).await });
            let named = |why: String| {
                BridgeError::Lost(format!(
                    "shard {s} of the {} at {} (worker {worker}, step {step}): {why}",
                    self.own,
                    self.addrs.get(s).map_or("?", String::as_str)
                ))
            };
            match got {
                Err(_) => {
                    return Err(named(format!(
                        "no values within {} s (a shard or a participant is gone)",
                        self.wait.as_secs()
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
    stream
        .outbound
        .send(party_pb::WorkerMessage { msg: Some(msg) })
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
