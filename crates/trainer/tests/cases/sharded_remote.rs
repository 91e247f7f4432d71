//! Shards as network services: workers in this process, every party's
//! shards behind the party-internal transport over RA-TLS (simulated
//! evidence). The run equals the in-process one bitwise, and a shard admits
//! only its own party's processes.

use std::sync::Arc;
use std::time::Duration;

use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::tls::{self, RaTlsVerifier};
use vfl_attest::{Clock, PartyRole, Policy, SimAttester, SimIdentity, Verifier, cert};
use vfl_bridge::party::{dial_shard, listen_shard};
use vfl_bridge::{BridgeError, OnReject, RaTls, Security};
use vfl_data::synth::Synth;
use vfl_nn::{ModelSpec, Replica, Role};
use vfl_trainer::TrainError;
use vfl_trainer::sharded::remote::ShardAddrs;
use vfl_trainer::sharded::serve::{self, ShardConfig};
use vfl_trainer::sharded::{EpochOutcome, Placement, Shard, ShardedTrainer};

use super::sharded::{SynthBlocks, generator, small_wide_n_deep};

/// Both parties' RA-TLS settings: one simulated enclave each (MRENCLAVE 7
/// for the leader, 8 for the follower), one policy admitting both.
pub fn parties() -> (Security, Security) {
    parties_with(8)
}

/// [`parties`] with the follower's MRENCLAVE `follower` (7: the same
/// enclave as the leader's, which the policy then admits as both roles).
pub fn parties_with(follower: u8) -> (Security, Security) {
    let root = DevRoot::generate().unwrap();
    let fp = hex::encode(root.fingerprint());
    let entry = |mr: u8, role: &str| {
        format!(
            r#"{{"mr_enclave":"{}","mr_signer":"{fp}","isv_prod_id":"1","isv_svn":"1","mode":"simulated","role":"{role}"}}"#,
            hex::encode([mr; 32])
        )
    };
    let policy = format!(
        r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
            "sgx_mrs":[{},{}],"allow_simulated":true,"simulated_roots":["{fp}"]}}"#,
        entry(7, "leader"),
        entry(follower, "follower")
    );
    let party = |mr: u8| {
        let id = SimIdentity {
            mr_enclave: [mr; 32],
            mr_signer: None,
            isv_prod_id: 1,
            isv_svn: 1,
            debug: false,
        };
        let a = SimAttester::new(&root, &id, &SimPlatformOptions::fresh(Clock::System.now())).unwrap();
        let verifier = RaTlsVerifier::new(Arc::new(Verifier::new(
            Policy::parse(policy.as_bytes(), "p").unwrap(),
            None,
            Clock::System,
        )));
        let key = tls::identity(&cert::issue(&a).unwrap()).unwrap();
        Security::RaTls(Arc::new(RaTls {
            server: Arc::new(tls::server_config(key.clone(), verifier.clone()).unwrap()),
            client: Arc::new(tls::client_config(key, verifier.clone()).unwrap()),
            verifier,
            ours: String::new(),
            on_reject: OnReject::Exit,
        }))
    };
    (party(7), party(follower))
}

pub const MAX: usize = 64 << 20;

/// Starts `shards` shard services of `role` for `workers` workers.
pub fn start_shards(
    rt: &tokio::runtime::Runtime,
    spec: &ModelSpec,
    (role, security): (Role, &Security),
    shards: usize,
    workers: usize,
) -> (ShardAddrs, Vec<tokio::task::JoinHandle<Result<u64, TrainError>>>) {
    start_shards_waiting(rt, spec, (role, security), (shards, workers), Duration::from_secs(30))
}

/// [`start_shards`] whose shards wait `wait` for workers and steps.
pub fn start_shards_waiting(
    rt: &tokio::runtime::Runtime,
    spec: &ModelSpec,
    (role, security): (Role, &Security),
    (shards, workers): (usize, usize),
    wait: Duration,
) -> (ShardAddrs, Vec<tokio::task::JoinHandle<Result<u64, TrainError>>>) {
    let own = match role {
        Role::Leader => PartyRole::Leader,
        Role::Follower => PartyRole::Follower,
    };
    let placement = Placement::new(shards).unwrap();
    let (mut addrs, mut tasks) = (Vec::new(), Vec::new());
    for s in 0..shards {
        let listener = rt
            .block_on(listen_shard("127.0.0.1:0", own, (MAX, workers), security.clone()))
            .unwrap();
        addrs.push(listener.local_addr.to_string());
        let cfg = ShardConfig {
            index: s,
            shards,
            workers,
            model_fingerprint: spec.fingerprint(),
            peer_timeout: wait,
            state: None,
            checkpoint_every: 0,
            max_message: MAX,
        };
        let shard = Shard::new(spec, role, s, placement, workers).unwrap();
        tasks.push(rt.spawn(serve::run(cfg, shard, listener)));
    }
    let at = ShardAddrs {
        own,
        addrs,
        security: security.clone(),
        max_message: MAX,
        wait: Duration::from_secs(10),
    };
    (at, tasks)
}

fn weights(t: &ShardedTrainer) -> Vec<u32> {
    let (l, f) = t.replica(0).unwrap();
    let mut v = Vec::new();
    for m in [l as &dyn Replica, f as &dyn Replica] {
        v.extend(m.embeddings().map(|e| e.tables().to_vec()).unwrap_or_default());
        for layer in m.dense_layers() {
            v.extend_from_slice(layer.weights());
            v.extend_from_slice(layer.bias());
        }
    }
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn train(t: &mut ShardedTrainer, g: &Synth) {
    let data = SynthBlocks {
        generator: g,
        per_block: 300,
        blocks: 7,
    };
    for e in 0..2 {
        match t.run_epoch(&data, (e, Some(3)), 32, None, None).unwrap() {
            EpochOutcome::Done(_) => {}
            EpochOutcome::Stopped(_) => panic!("stopped"),
        }
    }
}

#[test]
fn remote_shards_over_ratls_train_bitwise_like_in_process_shards() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spec = small_wide_n_deep();
    let (leader_tls, follower_tls) = parties();
    let (la, ltasks) = start_shards(&rt, &spec, (Role::Leader, &leader_tls), 2, 3);
    let (fa, ftasks) = start_shards(&rt, &spec, (Role::Follower, &follower_tls), 2, 3);
    let g = generator();
    let mut remote = ShardedTrainer::remote(&spec, (3, 1), rt.handle(), &la, &fa).unwrap();
    train(&mut remote, &g);
    let mut local = ShardedTrainer::new(&spec, 3, 2, 1).unwrap();
    train(&mut local, &g);
    assert_eq!(remote.steps(), local.steps());
    assert!(
        weights(&remote) == weights(&local),
        "remote and in-process shards differ"
    );
    let traffic = remote.traffic();
    assert_eq!(traffic, local.traffic());
    // The workers leave: every shard ends, having applied every step.
    let steps = remote.finish().unwrap();
    for t in ltasks.into_iter().chain(ftasks) {
        assert_eq!(rt.block_on(t).unwrap().unwrap(), steps);
    }
}

/// What a process with `dialer`'s evidence, claiming to be of party
/// `claims`, gets from a shard of `role` (run with `shard_tls`).
fn dial_refused(role: Role, shard_tls: &Security, claims: PartyRole, dialer: &Security) -> BridgeError {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (at, _tasks) = start_shards(&rt, &small_wide_n_deep(), (role, shard_tls), 1, 1);
    rt.block_on(dial_shard(&at.addrs[0], claims, MAX, dialer, Duration::from_secs(5)))
        .err()
        .expect("refused")
}

#[test]
fn a_shard_refuses_a_process_of_the_other_party() {
    let (leader_tls, follower_tls) = parties();
    // A follower process whose host claims it is the leader's: the shard's
    // policy admits its enclave only as the follower.
    let e = dial_refused(Role::Leader, &leader_tls, PartyRole::Leader, &follower_tls);
    assert!(
        matches!(&e, BridgeError::Rejected(why) if why.contains("not a leader process")),
        "{e}"
    );
}

#[test]
fn a_worker_refuses_a_shard_of_the_other_party() {
    let (leader_tls, follower_tls) = parties();
    // A leader worker sent to the follower's shard: our verdict on its
    // evidence (admitted as the follower, not as our own party).
    let e = dial_refused(Role::Follower, &follower_tls, PartyRole::Leader, &leader_tls);
    assert!(
        matches!(&e, BridgeError::Rejected(why) if why.contains("allow it only as follower")),
        "{e}"
    );
}

#[test]
fn an_enclave_admitted_as_both_roles_is_not_trusted_inside_a_party() {
    // Both parties run the same enclave: the policy admits it as leader and
    // as follower, so the follower's processes could pass for the leader's.
    let (leader_tls, _) = parties_with(7);
    let e = dial_refused(Role::Leader, &leader_tls, PartyRole::Leader, &leader_tls);
    assert!(
        matches!(&e, BridgeError::Rejected(why) if why.contains("as both leader and follower")),
        "{e}"
    );
}

#[test]
fn a_shard_that_dies_fails_the_run_naming_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let (leader_tls, follower_tls) = parties();
    let (la, ltasks) = start_shards(&rt, &spec, (Role::Leader, &leader_tls), 2, 1);
    let (fa, _ftasks) = start_shards(&rt, &spec, (Role::Follower, &follower_tls), 2, 1);
    let mut t = ShardedTrainer::remote(&spec, (1, 1), rt.handle(), &la, &fa).unwrap();
    ltasks[1].abort();
    let g = generator();
    let data = SynthBlocks {
        generator: &g,
        per_block: 300,
        blocks: 2,
    };
    let e = t.run_epoch(&data, (0, None), 32, None, None).unwrap_err().to_string();
    assert!(e.contains("shard 1 of the leader"), "{e}");
}

#[test]
fn a_missing_participant_fails_the_step_within_the_wait() {
    use vfl_trainer::sharded::remote::RemoteShards;
    use vfl_trainer::sharded::{Contribution, Params};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let (leader_tls, _) = parties();
    let (mut la, _tasks) = start_shards(&rt, &spec, (Role::Leader, &leader_tls), 1, 2);
    la.wait = Duration::from_secs(1);
    let (mut r, _, _) =
        RemoteShards::connect(rt.handle().clone(), &la, (0..2, 2), (&spec.fingerprint(), 0, 0, "")).unwrap();
    // Worker 0 takes part in step 1 with worker 1, which never sends.
    let like = Shard::new(&spec, Role::Leader, 0, Placement::new(1).unwrap(), 2).unwrap();
    let c = Contribution {
        examples: 1,
        grads: Params {
            values: vec![0.0; like.dump().values.len()],
            ..like.dump()
        },
    };
    let e = r.send(0, 1, &[0, 1], vec![c]);
    assert!(e.is_ok(), "{e:?}");
    let e = r.receive(0, 1).unwrap_err().to_string();
    assert!(e.contains("no values within 1 s"), "{e}");
}

#[test]
fn a_shard_fails_a_step_that_stays_incomplete_and_tells_the_workers() {
    use vfl_trainer::sharded::Contribution;
    use vfl_trainer::sharded::remote::RemoteShards;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let (leader_tls, _) = parties();
    let (mut la, mut tasks) =
        start_shards_waiting(&rt, &spec, (Role::Leader, &leader_tls), (1, 2), Duration::from_secs(1));
    la.wait = Duration::from_secs(10);
    let (mut r, _, _) =
        RemoteShards::connect(rt.handle().clone(), &la, (0..2, 2), (&spec.fingerprint(), 0, 0, "")).unwrap();
    let like = Shard::new(&spec, Role::Leader, 0, Placement::new(1).unwrap(), 2).unwrap();
    let c = Contribution {
        examples: 1,
        grads: like.dump(),
    };
    r.send(0, 1, &[0, 1], vec![c]).unwrap();
    // The shard gives up after its 1 s and tells worker 0 why.
    let e = r.receive(0, 1).unwrap_err().to_string();
    assert!(e.contains("step 1 incomplete after 1 s"), "{e}");
    let ended = rt.block_on(tasks.remove(0)).unwrap().unwrap_err().to_string();
    assert!(ended.contains("step 1 incomplete"), "{ended}");
}

#[test]
fn a_shard_whose_workers_are_lost_mid_step_waits_for_them_then_fails() {
    use vfl_trainer::sharded::Contribution;
    use vfl_trainer::sharded::remote::RemoteShards;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let (leader_tls, _) = parties();
    let (mut la, mut tasks) =
        start_shards_waiting(&rt, &spec, (Role::Leader, &leader_tls), (1, 2), Duration::from_secs(1));
    la.wait = Duration::from_secs(10);
    let (mut r, _, _) =
        RemoteShards::connect(rt.handle().clone(), &la, (0..2, 2), (&spec.fingerprint(), 0, 0, "")).unwrap();
    let like = Shard::new(&spec, Role::Leader, 0, Placement::new(1).unwrap(), 2).unwrap();
    let c = Contribution {
        examples: 1,
        grads: like.dump(),
    };
    r.send(0, 1, &[0, 1], vec![c]).unwrap();
    // The workers' process ends before worker 1 sent, without Done: lost
    // workers, not a finished job. The shard drops the step and waits for
    // the job to rejoin, for its peer timeout (1 s).
    // (Give worker 0's message time to reach the shard before the streams
    // close.)
    std::thread::sleep(Duration::from_millis(500));
    drop(r);
    let ended = rt.block_on(tasks.remove(0)).unwrap().unwrap_err().to_string();
    assert!(ended.contains("were lost and did not rejoin within 1 s"), "{ended}");
}

/// A shard with a state directory saves every checkpoint step; a job that
/// rejoins after a lost worker names the step it resumes at, and the
/// shard rolls back to its saved state of that step (or refuses a step it
/// has none of).
#[test]
fn a_shard_rolls_back_to_the_step_a_rejoining_job_names() {
    use vfl_trainer::sharded::remote::RemoteShards;
    use vfl_trainer::sharded::state::StateDir;
    use vfl_trainer::sharded::{Contribution, Params};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let fp = spec.fingerprint();
    let tmp = tempfile::tempdir().unwrap();
    // The shard's own state directory, as shard_saving makes it.
    let state = StateDir::new(tmp.path(), ("app", Role::Leader, &fp, "policy"), "shard-0", None);
    let (at, task) = shard_saving(&rt, &spec, tmp.path(), 1);
    let (mut r, _, _) = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&fp, 0, 1, "r1")).unwrap();
    let all = Shard::new(&spec, Role::Leader, 0, Placement::new(1).unwrap(), 1)
        .unwrap()
        .dump();
    let grads = Params {
        dense: all.dense.iter().map(|(i, v)| (*i, vec![0.5; v.len()])).collect(),
        rows: all.rows.clone(),
        values: vec![0.5; all.values.len()],
    };
    let mut after = Vec::new();
    for step in 1..=2 {
        let c = Contribution {
            examples: 1,
            grads: grads.clone(),
        };
        r.send(0, step, &[0], vec![c]).unwrap();
        after.push(r.receive(0, step).unwrap().remove(0));
    }
    assert_eq!(state.shard_steps("r1"), vec![1, 2]);
    // The worker is lost (no Done).
    drop(r);
    // A step the shard has no state of is refused.
    let e = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&fp, 5, 1, "r1"))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("no saved state of that step"), "{e}");
    // Nor does it load another run's state of a step it has (the host
    // cannot resume this shard into an earlier job's files or vice versa).
    let e = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&fp, 1, 1, "r2"))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("no saved state of that step"), "{e}");
    // The job resumes at step 1: the shard is back at step 1's values.
    let (mut r, values, steps) = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&fp, 1, 1, "r1")).unwrap();
    assert_eq!(steps, 1);
    assert!(
        values[0][0] == *after[0],
        "the values after the rollback are not step 1's"
    );
    assert!(values[0][0] != *after[1]);
    r.done(1, "r1").unwrap();
    assert_eq!(rt.block_on(task).unwrap().unwrap(), 1);
}

/// One leader shard (of one) saving its state every `every` steps under
/// `dir`, for one worker.
fn shard_saving(
    rt: &tokio::runtime::Runtime,
    spec: &ModelSpec,
    dir: &std::path::Path,
    every: u64,
) -> (ShardAddrs, tokio::task::JoinHandle<Result<u64, TrainError>>) {
    shard_saving_for(rt, spec, dir, every, 1)
}

/// [`shard_saving`] for `workers` workers.
fn shard_saving_for(
    rt: &tokio::runtime::Runtime,
    spec: &ModelSpec,
    dir: &std::path::Path,
    every: u64,
    workers: usize,
) -> (ShardAddrs, tokio::task::JoinHandle<Result<u64, TrainError>>) {
    use vfl_trainer::sharded::state::StateDir;
    let (leader_tls, _) = parties();
    let fp = spec.fingerprint();
    let state = StateDir::new(dir, ("app", Role::Leader, &fp, "policy"), "shard-0", None);
    let listener = rt
        .block_on(listen_shard(
            "127.0.0.1:0",
            PartyRole::Leader,
            (MAX, workers),
            leader_tls.clone(),
        ))
        .unwrap();
    let at = ShardAddrs {
        own: PartyRole::Leader,
        addrs: vec![listener.local_addr.to_string()],
        security: leader_tls,
        max_message: MAX,
        wait: Duration::from_secs(10),
    };
    let cfg = ShardConfig {
        index: 0,
        shards: 1,
        workers,
        model_fingerprint: fp,
        peer_timeout: Duration::from_secs(10),
        state: Some(state),
        checkpoint_every: every,
        max_message: MAX,
    };
    let shard = Shard::new(spec, Role::Leader, 0, Placement::new(1).unwrap(), workers).unwrap();
    (at, rt.spawn(serve::run(cfg, shard, listener)))
}

#[test]
fn a_job_lost_before_its_first_checkpoint_restarts_from_the_start() {
    use vfl_trainer::sharded::remote::RemoteShards;
    use vfl_trainer::sharded::{Contribution, Params};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let fp = spec.fingerprint();
    let tmp = tempfile::tempdir().unwrap();
    let (at, task) = shard_saving(&rt, &spec, tmp.path(), 5);
    let (mut r, start, _) = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&fp, 0, 5, "r1")).unwrap();
    let all = start[0][0].clone();
    let grads = Params {
        dense: all.dense.iter().map(|(i, v)| (*i, vec![0.5; v.len()])).collect(),
        rows: all.rows.clone(),
        values: vec![0.5; all.values.len()],
    };
    r.send(0, 1, &[0], vec![Contribution { examples: 1, grads }]).unwrap();
    let after = r.receive(0, 1).unwrap().remove(0);
    assert!(*after != all);
    drop(r);
    // Step 1 is no checkpoint: the job resumes at step 0, the start.
    let (mut r, values, steps) = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&fp, 0, 5, "r1")).unwrap();
    assert_eq!(steps, 0);
    assert!(values[0][0] == all, "the shard is not back at its start");
    r.done(0, "r1").unwrap();
    assert_eq!(rt.block_on(task).unwrap().unwrap(), 0);
}

#[test]
fn a_shard_refuses_a_job_of_another_checkpoint_cadence_for_good() {
    use vfl_trainer::sharded::remote::RemoteShards;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let tmp = tempfile::tempdir().unwrap();
    let (at, _task) = shard_saving(&rt, &spec, tmp.path(), 5);
    let e = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&spec.fingerprint(), 0, 10, "r1"))
        .expect_err("refused");
    assert!(
        matches!(&e, TrainError::Bridge(BridgeError::Stopped(why)) if why.contains("checkpoint steps")),
        "{e}"
    );
    assert!(!vfl_trainer::sharded::worker::restartable(&e));
}

/// One leader shard (of one) for `workers` workers, without saved state.
fn one_shard(
    rt: &tokio::runtime::Runtime,
    spec: &ModelSpec,
    workers: usize,
) -> (ShardAddrs, tokio::task::JoinHandle<Result<u64, TrainError>>) {
    let (leader_tls, _) = parties();
    let (at, mut tasks) = start_shards_waiting(
        rt,
        spec,
        (Role::Leader, &leader_tls),
        (1, workers),
        Duration::from_secs(10),
    );
    (at, tasks.remove(0))
}

#[test]
fn after_the_end_a_shard_waits_for_every_workers_done_even_on_a_new_stream() {
    use vfl_trainer::sharded::remote::{RemoteShards, tell_done};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let (at, task) = one_shard(&rt, &spec, 2);
    let (mut r, _, _) =
        RemoteShards::connect(rt.handle().clone(), &at, (0..1, 2), (&spec.fingerprint(), 0, 0, "r1")).unwrap();
    r.done(0, "r1").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!task.is_finished(), "the shard ended before worker 1's Done");
    // Worker 1 never joined (it restarted after the end): a new stream.
    tell_done(rt.handle(), &at, 1, (0, "r1")).unwrap();
    assert_eq!(rt.block_on(task).unwrap().unwrap(), 0);
}

#[test]
fn after_the_end_a_worker_leaving_without_done_is_no_loss() {
    use vfl_trainer::sharded::remote::{RemoteShards, tell_done};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let fp = spec.fingerprint();
    let (at, task) = one_shard(&rt, &spec, 2);
    let (mut r0, _, _) = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 2), (&fp, 0, 0, "r1")).unwrap();
    let (r1, _, _) = RemoteShards::connect(rt.handle().clone(), &at, (1..2, 2), (&fp, 0, 0, "r1")).unwrap();
    r0.done(0, "r1").unwrap();
    // Worker 1 dies after the end, before its Done: the shard does not
    // restart the job; the restarted worker's Done ends it.
    drop(r1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!task.is_finished());
    tell_done(rt.handle(), &at, 1, (0, "r1")).unwrap();
    assert_eq!(rt.block_on(task).unwrap().unwrap(), 0);
}

#[test]
fn a_shard_refuses_the_done_of_another_run() {
    use vfl_trainer::sharded::remote::{RemoteShards, tell_done};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let (at, task) = one_shard(&rt, &spec, 1);
    let (mut r, _, _) =
        RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&spec.fingerprint(), 0, 0, "r1")).unwrap();
    let e = tell_done(rt.handle(), &at, 0, (0, "r2")).expect_err("refused");
    assert!(
        matches!(&e, TrainError::Bridge(BridgeError::PeerFailed(why)) if why.contains("another run")),
        "{e}"
    );
    assert!(!task.is_finished());
    r.done(0, "r1").unwrap();
    assert_eq!(rt.block_on(task).unwrap().unwrap(), 0);
}

#[test]
fn a_shard_refuses_the_done_of_a_worker_outside_the_run() {
    use vfl_trainer::sharded::remote::tell_done;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let (at, task) = one_shard(&rt, &spec, 1);
    let e = tell_done(rt.handle(), &at, 1, (0, "r1")).expect_err("refused");
    assert!(
        matches!(&e, TrainError::Bridge(BridgeError::PeerFailed(why)) if why.contains("worker 1")),
        "{e}"
    );
    tell_done(rt.handle(), &at, 0, (0, "r1")).unwrap();
    assert_eq!(rt.block_on(task).unwrap().unwrap(), 0);
}

/// The record a shard of [`shard_saving`] keeps of the job's end.
fn shard_end_record(spec: &ModelSpec, dir: &std::path::Path, complete: bool, done: Vec<u32>) {
    use vfl_trainer::sharded::state::{JobEnd, StateDir};
    let state = StateDir::new(
        dir,
        ("app", Role::Leader, &spec.fingerprint(), "policy"),
        "shard-0",
        None,
    );
    state
        .save_end(&JobEnd {
            run: "r1".into(),
            steps: 0,
            complete,
            done,
        })
        .unwrap();
}

#[test]
fn a_shard_that_recorded_the_whole_end_ends_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let tmp = tempfile::tempdir().unwrap();
    shard_end_record(&spec, tmp.path(), true, vec![0]);
    let (_, task) = shard_saving(&rt, &spec, tmp.path(), 5);
    let ended = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    assert_eq!(ended.expect("ended at once").unwrap().unwrap(), 0);
}

#[test]
fn a_shard_that_recorded_the_end_refuses_a_join_and_takes_the_rest_of_the_done() {
    use vfl_trainer::sharded::remote::{RemoteShards, tell_done};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let tmp = tempfile::tempdir().unwrap();
    shard_end_record(&spec, tmp.path(), false, Vec::new());
    let (at, task) = shard_saving(&rt, &spec, tmp.path(), 5);
    let e = RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&spec.fingerprint(), 0, 5, "r1"))
        .expect_err("nothing trains after the end")
        .to_string();
    assert!(e.contains("the job has ended"), "{e}");
    tell_done(rt.handle(), &at, 0, (0, "r1")).unwrap();
    assert_eq!(rt.block_on(task).unwrap().unwrap(), 0);
}

#[test]
fn a_restarted_shard_refuses_the_done_of_a_run_it_has_no_state_of() {
    use vfl_trainer::sharded::remote::{RemoteShards, tell_done};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let tmp = tempfile::tempdir().unwrap();
    let (at, task) = shard_saving(&rt, &spec, tmp.path(), 5);
    // Run r1 joins (the shard saves its start), and the shard dies.
    let (r, _, _) =
        RemoteShards::connect(rt.handle().clone(), &at, (0..1, 1), (&spec.fingerprint(), 0, 5, "r1")).unwrap();
    task.abort();
    drop(r);
    let (at, task) = shard_saving(&rt, &spec, tmp.path(), 5);
    let e = tell_done(rt.handle(), &at, 0, (0, "r9")).expect_err("refused");
    assert!(
        matches!(&e, TrainError::Bridge(BridgeError::PeerFailed(why)) if why.contains("has state of")),
        "{e}"
    );
    tell_done(rt.handle(), &at, 0, (0, "r1")).unwrap();
    assert_eq!(rt.block_on(task).unwrap().unwrap(), 0);
}

#[test]
fn a_restarted_shard_waits_only_for_the_done_it_has_not_taken() {
    use vfl_trainer::sharded::remote::tell_done;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = small_wide_n_deep();
    let tmp = tempfile::tempdir().unwrap();
    // Worker 0's Done came before the restart; worker 1's is the last one.
    shard_end_record(&spec, tmp.path(), false, vec![0]);
    let (at, task) = shard_saving_for(&rt, &spec, tmp.path(), 5, 2);
    tell_done(rt.handle(), &at, 1, (0, "r1")).unwrap();
    // It ends at once (its peer timeout is 10 s).
    let ended = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    assert_eq!(ended.expect("ended at once").unwrap().unwrap(), 0);
}
