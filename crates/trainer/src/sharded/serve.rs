//! A parameter shard as a network service (`vfl shard`): the [`Shard`]
//! state machine behind the party-internal transport
//! ([`vfl_bridge::party`]). Workers join (their replica takes the shard's
//! values), contribute per step, and every joined worker receives every
//! step's new values.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use vfl_bridge::Status;
use vfl_bridge::party::{ShardListener, WorkerStream};
use vfl_bridge::party_pb::{self, shard_message::Msg as SMsg, worker_message::Msg as WMsg};

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
}

/// What one worker's connection said.
enum Event {
    Message(u64, WMsg),
    Closed(u64, String),
}

/// Serves `shard` on `listener` until every worker that joined has left
/// (the job is over), or no worker came within the peer timeout.
pub async fn run(cfg: ShardConfig, mut shard: Shard, mut listener: ShardListener) -> Result<u64, TrainError> {
    let (ev_tx, mut events) = mpsc::channel::<Event>(64);
    let mut conns: Conns = BTreeMap::new();
    let mut next_conn = 0u64;
    let mut ever_joined = false;
    let mut participants: Option<(u64, Vec<u32>)> = None;
    let deadline = tokio::time::sleep(cfg.peer_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            s = listener.streams.recv() => {
                let Some(WorkerStream { mut inbound, outbound, .. }) = s else { break };
                next_conn += 1;
                let conn = next_conn;
                conns.insert(conn, (None, outbound));
                let tx = ev_tx.clone();
                tokio::spawn(async move {
                    loop {
                        match inbound.message().await {
                            Ok(Some(m)) => match m.msg {
                                Some(msg) => if tx.send(Event::Message(conn, msg)).await.is_err() { return },
                                None => { let _ = tx.send(Event::Closed(conn, "an empty message".into())).await; return }
                            },
                            Ok(None) => { let _ = tx.send(Event::Closed(conn, "closed".into())).await; return }
                            Err(s) => { let _ = tx.send(Event::Closed(conn, s.message().to_string())).await; return }
                        }
                    }
                });
            }
            Some(reason) = listener.rejections.recv() => {
                tracing::warn!(%reason, "refused a connection's evidence");
            }
            Some(ev) = events.recv() => match ev {
                Event::Closed(conn, why) => {
                    if let Some((Some(w), _)) = conns.remove(&conn) {
                        tracing::info!(worker = w, %why, "worker left");
                    }
                    if ever_joined && conns.values().all(|(w, _)| w.is_none()) {
                        break;
                    }
                }
                Event::Message(conn, msg) => {
                    if let Err(e) = handle(&cfg, &mut shard, &mut conns, &mut participants, conn, msg).await {
                        tracing::error!(error = %e, "refusing a worker");
                        if let Some((_, tx)) = conns.remove(&conn) {
                            let _ = tx.send(Ok(failure(&e.to_string()))).await;
                        }
                    } else {
                        ever_joined |= conns.values().any(|(w, _)| w.is_some());
                    }
                }
            },
            () = &mut deadline, if !ever_joined => {
                listener.shutdown().await;
                return Err(TrainError::Unsupported("no worker joined this shard within --peer-timeout"));
            }
        }
    }
    listener.shutdown().await;
    Ok(shard.steps())
}

fn failure(reason: &str) -> party_pb::ShardMessage {
    party_pb::ShardMessage {
        msg: Some(SMsg::Failure(vfl_bridge::sanitize(reason, 1000))),
    }
}

type Conns = BTreeMap<u64, (Option<u32>, mpsc::Sender<Result<party_pb::ShardMessage, Status>>)>;

/// One message of connection `conn`.
async fn handle(
    cfg: &ShardConfig,
    shard: &mut Shard,
    conns: &mut Conns,
    participants: &mut Option<(u64, Vec<u32>)>,
    conn: u64,
    msg: WMsg,
) -> Result<(), TrainError> {
    let joined = conns.get(&conn).and_then(|(w, _)| *w);
    match (msg, joined) {
        (WMsg::Join(j), None) => {
            let want = (
                cfg.model_fingerprint.as_str(),
                cfg.workers as u32,
                cfg.shards as u32,
                cfg.index as u32,
            );
            let got = (j.model_fingerprint.as_str(), j.workers, j.shards, j.shard);
            if got != want {
                return Err(TrainError::Unexpected {
                    expected: "a worker of this run (model, workers, shards, shard index)",
                    got: format!("model {}, {} workers, {} shards, shard {}", got.0, got.1, got.2, got.3),
                });
            }
            if j.worker as usize >= cfg.workers || conns.values().any(|(w, _)| *w == Some(j.worker)) {
                return Err(TrainError::Unexpected {
                    expected: "a worker index not taken",
                    got: format!("worker {}", j.worker),
                });
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
            entry.0 = Some(j.worker);
            let _ = entry.1.send(Ok(reply)).await;
            tracing::info!(worker = j.worker, steps = shard.steps(), "worker joined");
            Ok(())
        }
        (WMsg::Contribute(c), Some(worker)) => {
            // Every contribution of a step names the same participants.
            match participants {
                Some((step, ids)) if *step == c.step => {
                    let mut named = c.participants.clone();
                    named.sort_unstable();
                    named.dedup();
                    if &named != ids {
                        return Err(TrainError::Unexpected {
                            expected: "the step's participants",
                            got: format!("{named:?} from worker {worker}, {ids:?} before"),
                        });
                    }
                }
                _ => {
                    shard.begin(c.step, &c.participants)?;
                    let mut ids = c.participants.clone();
                    ids.sort_unstable();
                    ids.dedup();
                    *participants = Some((c.step, ids));
                }
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
                let msg = party_pb::ShardMessage {
                    msg: Some(SMsg::Changes(party_pb::Changes {
                        step: c.step,
                        params: Some(wire::encode(&changes)),
                    })),
                };
                for (w, tx) in conns.values() {
                    if w.is_some() {
                        let _ = tx.send(Ok(msg.clone())).await;
                    }
                }
            }
            Ok(())
        }
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
