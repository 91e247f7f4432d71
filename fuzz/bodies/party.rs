//! Scale-out messages (protobuf, after RA-TLS): a worker's contribution as
//! a shard takes it (decode, then the shard's checks and its combination),
//! a shard's values as a worker's replica takes them, a worker's report as
//! the coordinator's state machine takes it (during training, and its
//! end-of-job reports, heartbeats and goodbyes at the end), a saved coordinator
//! position and a process's record of the job's end as a restarted process
//! takes them, and the coordinator's and the pair link's messages as the
//! workers decode them (their tensors go through the `wire` target's
//! decoder).

use prost::Message;
use vfl_bridge::party_pb::{
    self, assignment::Msg as AMsg, shard_message::Msg as SMsg, worker_message::Msg as WMsg, worker_status::Msg as StMsg,
};
use vfl_nn::{ModelSpec, Role};
use vfl_trainer::sharded::coordinator::{CoordError, CoordState, Coordination};
use vfl_trainer::sharded::state::JobEnd;
use vfl_trainer::sharded::{Contribution, Placement, Shard, replica, wire};

/// A small model: 2 slots of [101, 16] per party, narrow layers.
fn spec() -> ModelSpec {
    let mut spec = ModelSpec::preset("wide_n_deep").expect("preset");
    for tower in [&mut spec.leader, &mut spec.follower] {
        tower.sparse[0].count = Some(2);
    }
    spec.leader.layers[0].units = 4;
    spec.leader.layers[1].units = 2;
    spec.follower.layers[0].units = 2;
    spec.head.input_dim = Some(4);
    spec
}

/// Two workers over one block of one batch, trained to the end.
fn ended() -> Result<Coordination, CoordError> {
    let mut c = Coordination::new(2, 1, None, vec!["a".into()])?;
    let ready = |step, has_batch, (index, lease): (u64, u64)| party_pb::Ready {
        step,
        has_batch,
        finished: index != u64::MAX,
        index,
        lease,
        ..Default::default()
    };
    let none = (u64::MAX, 0);
    c.ready(0, &ready(1, false, none))?;
    let grant = c
        .ready(1, &ready(1, false, none))?
        .into_iter()
        .find_map(|(_, m)| match m {
            AMsg::Grant(g) => Some((g.index, g.lease)),
            _ => None,
        })
        .ok_or(CoordError::Empty)?;
    c.ready(0, &ready(1, true, none))?;
    c.ready(0, &ready(2, false, grant))?;
    c.ready(1, &ready(2, false, none))?;
    Ok(c)
}

/// One input.
pub fn run(data: &[u8]) {
    let spec = spec();
    if let Ok(m) = party_pb::WorkerMessage::decode(data)
        && let Some(WMsg::Contribute(c)) = m.msg
        && let Ok(grads) = wire::decode_opt(c.grads.as_ref(), "gradients")
        && let Ok(placement) = Placement::new(2)
        && let Ok(mut shard) = Shard::new(&spec, Role::Follower, 0, placement, 2)
        && shard.begin(c.step, &c.participants).is_ok()
    {
        let worker = c.participants.first().copied().unwrap_or(0);
        let _ = shard.contribute(
            worker,
            Contribution {
                examples: c.examples,
                grads,
            },
        );
    }
    if let Ok(m) = party_pb::WorkerStatus::decode(data)
        && let Some(StMsg::Ready(r)) = m.msg
        && let Ok(mut c) = Coordination::new(2, 1, Some(1), vec!["a".into(), "b".into(), "c".into()])
    {
        // Worker 0 asked for a block; the input reports for worker 1, then
        // (granted or not) again for whichever worker its lease names.
        let _ = c.ready(
            0,
            &party_pb::Ready {
                step: 1,
                ..Default::default()
            },
        );
        let _ = c.ready(1, &r);
        let _ = c.ready((r.lease % 3) as usize, &r);
    }
    // End-of-job reports and goodbyes, for any worker and step, through a
    // coordinator whose training has ended.
    if let Ok(m) = party_pb::WorkerStatus::decode(data)
        && let Some(StMsg::Finished(f) | StMsg::Bye(f) | StMsg::Working(f)) = m.msg
        && let Ok(mut c) = ended()
    {
        let w = (f.steps % 3) as usize;
        let _ = c.working(w);
        let _ = c.end_of_pair(w, f.steps);
        let _ = c.bye(w);
        let _ = c.end_of_pair(1 - w.min(1), c.steps());
        let _ = (c.bye(0), c.bye(1), c.is_over(), c.owing());
    }
    let _ = serde_json::from_slice::<JobEnd>(data);
    // A coordinator's saved position (plaintext in development builds,
    // where the host can write it): restored only when it fits the run,
    // then planned and driven.
    if let Ok(st) = serde_json::from_slice::<CoordState>(data)
        && let Ok(c) = Coordination::new(2, 2, Some(1), vec!["a".into(), "b".into(), "c".into()])
        && let Ok(mut c) = c.restore(&st)
    {
        let _ = (c.plan(0), c.plan(1));
        let _ = c.ready(
            0,
            &party_pb::Ready {
                step: c.steps() + 1,
                ..Default::default()
            },
        );
    }
    let _ = party_pb::Assignment::decode(data);
    let _ = party_pb::LeaderWorkerMessage::decode(data);
    let _ = party_pb::FollowerWorkerMessage::decode(data);
    if let Ok(m) = party_pb::ShardMessage::decode(data) {
        let params = match m.msg {
            Some(SMsg::Changes(c)) => wire::decode_opt(c.params.as_ref(), "changes"),
            Some(SMsg::Joined(j)) => wire::decode_opt(j.values.as_ref(), "values"),
            _ => return,
        };
        if let Ok(p) = params {
            let mut model = vfl_nn::LeaderModel::new(&spec);
            let _ = replica::apply(&mut model, 0, &p);
        }
    }
}
