//! Every role of a sharded run as a service over RA-TLS (simulated
//! evidence), as `vfl coordinator`, `vfl worker` and `vfl shard` run them:
//! the run equals the in-process one bitwise, a worker that never comes
//! fails the job within the peer timeout, and each link admits only its
//! party.

use std::time::Duration;

use vfl_bridge::BridgeError;
use vfl_bridge::party::{dial_coordinator, dial_pair, listen_coordinator, listen_pair};
use vfl_data::synth::Synth;
use vfl_data::{BatchSource, SynthSource};
use vfl_nn::{ModelSpec, Role};
use vfl_trainer::TrainError;
use vfl_trainer::sharded::coordinator::{self, CoordinatorConfig};
use vfl_trainer::sharded::worker::{self, PartyBlocks, WorkerConfig, WorkerOutcome};
use vfl_trainer::sharded::{ShardedTrainer, replica};

use super::sharded::{generator, small_wide_n_deep};
use super::sharded_remote::{parties, start_shards_waiting, train};

/// One party's half of the synthetic blocks of [`train`] (ids are block
/// numbers).
struct SynthParty<'a> {
    generator: &'a Synth,
    leader: bool,
}

const PER_BLOCK: u64 = 300;
const BLOCKS: usize = 7;
const HELD_OUT: (u64, u64) = (1_000_000, 1_001_000);

impl PartyBlocks for SynthParty<'_> {
    fn open(&self, id: &str) -> Result<Box<dyn BatchSource + '_>, TrainError> {
        let i: u64 = id.parse().map_err(|_| TrainError::Unsupported("not a block id"))?;
        let (a, b) = (i * PER_BLOCK, (i + 1) * PER_BLOCK);
        Ok(Box::new(SynthSource::new(self.generator, self.leader, a, b)))
    }
}

struct Run {
    coordinator: Result<coordinator::CoordOutcome, TrainError>,
    leaders: Vec<Result<WorkerOutcome, TrainError>>,
    followers: Vec<Result<WorkerOutcome, TrainError>>,
    /// Both parties' shards' results (leader's first).
    shards: Vec<Result<u64, TrainError>>,
}

/// A run of `workers` pairs over 2 shards per party, 2 epochs, batch 32,
/// seed 3 (as [`train`]); follower worker `absent` never starts.
fn run_services(spec: &ModelSpec, workers: usize, absent: Option<usize>, wait: Duration) -> Run {
    run_services_saving(spec, workers, absent, wait, (None, Duration::ZERO))
}

/// A held-out source that takes `pause` for every batch.
struct Slow<'a> {
    inner: SynthSource<'a>,
    pause: Duration,
}

impl BatchSource for Slow<'_> {
    fn fill(&mut self, batch: &mut vfl_data::Batch, max_rows: usize) -> Result<usize, vfl_data::DataError> {
        std::thread::sleep(self.pause);
        self.inner.fill(batch, max_rows)
    }
}

/// The coordinator of [`run_services_saving`].
fn coordinator_config(
    spec: &ModelSpec,
    workers: usize,
    wait: Duration,
    state: Option<&std::path::Path>,
) -> CoordinatorConfig {
    CoordinatorConfig {
        workers,
        epochs: 2,
        seed: Some(3),
        block_ids: (0..BLOCKS).map(|b| b.to_string()).collect(),
        model_fingerprint: spec.fingerprint(),
        batch_size: 32,
        peer_timeout: wait,
        state: state.map(|dir| {
            vfl_trainer::sharded::state::StateDir::new(
                dir,
                ("app", Role::Leader, &spec.fingerprint(), "policy"),
                "coordinator",
                None,
            )
        }),
        checkpoint_every: 0,
        max_restarts: 0,
        on_milestone: None,
    }
}

/// [`run_services`] whose coordinator saves its position under `state`
/// (and starts from what is there), and whose leader worker 0 takes
/// `slow_eval` for each held-out batch.
fn run_services_saving(
    spec: &ModelSpec,
    workers: usize,
    absent: Option<usize>,
    wait: Duration,
    (state, slow_eval): (Option<&std::path::Path>, Duration),
) -> Run {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ltls, ftls) = parties();
    let (la, ltasks) = start_shards_waiting(&rt, spec, (Role::Leader, &ltls), (2, workers), wait);
    let (fa, ftasks) = start_shards_waiting(&rt, spec, (Role::Follower, &ftls), (2, workers), wait);
    let listener = rt
        .block_on(listen_coordinator("127.0.0.1:0", workers, ltls.clone()))
        .unwrap();
    let coord_addr = listener.local_addr.to_string();
    let cfg = coordinator_config(spec, workers, wait, state);
    let coordinator = rt.spawn(coordinator::run(cfg, listener));
    let g = generator();
    let (leaders, followers) = std::thread::scope(|s| {
        let mut lh = Vec::new();
        let mut fh = Vec::new();
        for w in 0..workers {
            let mut pair = rt
                .block_on(listen_pair(
                    "127.0.0.1:0",
                    worker::pair_message_limit(spec, 32),
                    ltls.clone(),
                ))
                .unwrap();
            let pair_addr = pair.local_addr.to_string();
            let cfg = WorkerConfig {
                worker: w,
                workers,
                batch_size: 32,
                threads: 1,
                peer_timeout: wait,
                state: None,
            };
            let (g, la, ltls, coord_addr, handle) = (&g, &la, &ltls, coord_addr.clone(), rt.handle().clone());
            let lcfg = cfg.clone();
            lh.push(s.spawn(move || {
                let mut eval = Slow {
                    inner: SynthSource::new(g, true, HELD_OUT.0, HELD_OUT.1),
                    pause: slow_eval,
                };
                let eval = (w == 0).then_some(&mut eval as &mut dyn BatchSource);
                let data = SynthParty {
                    generator: g,
                    leader: true,
                };
                worker::run_leader(
                    spec,
                    &lcfg,
                    handle,
                    la,
                    (&coord_addr, ltls),
                    &mut pair,
                    (&data, None),
                    eval,
                )
            }));
            if absent == Some(w) {
                continue;
            }
            let (fa, ftls, handle) = (&fa, &ftls, rt.handle().clone());
            fh.push(s.spawn(move || {
                let mut eval = SynthSource::new(g, false, HELD_OUT.0, HELD_OUT.1);
                let eval = (w == 0).then_some(&mut eval as &mut dyn BatchSource);
                let data = SynthParty {
                    generator: g,
                    leader: false,
                };
                worker::run_follower(spec, &cfg, handle, fa, (&pair_addr, ftls), (&data, None), eval)
            }));
        }
        let join =
            |h: Vec<std::thread::ScopedJoinHandle<'_, _>>| h.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>();
        (join(lh), join(fh))
    });
    let coordinator = rt.block_on(coordinator).unwrap();
    let shards = ltasks
        .into_iter()
        .chain(ftasks)
        .map(|t| rt.block_on(t).unwrap())
        .collect();
    Run {
        coordinator,
        leaders,
        followers,
        shards,
    }
}

#[test]
fn workers_and_a_coordinator_over_ratls_train_bitwise_like_in_process() {
    let spec = small_wide_n_deep();
    let run = run_services(&spec, 2, None, Duration::from_secs(30));
    let coordinator::CoordOutcome {
        steps,
        epochs,
        restarts,
        ended_before,
    } = run.coordinator.unwrap();
    assert_eq!(restarts, 0);
    assert!(!ended_before);
    let leaders: Vec<WorkerOutcome> = run.leaders.into_iter().map(Result::unwrap).collect();
    let followers: Vec<WorkerOutcome> = run.followers.into_iter().map(Result::unwrap).collect();

    let mut local = ShardedTrainer::new(&spec, 2, 2, 1).unwrap();
    train(&mut local, &generator());
    assert_eq!(steps, local.steps());
    assert_eq!(epochs.len(), 2);
    assert!(
        epochs.iter().all(|e| e.examples == PER_BLOCK * BLOCKS as u64),
        "{epochs:?}"
    );
    let (l, f) = local.replica(0).unwrap();
    for (w, (lo, fo)) in leaders.iter().zip(&followers).enumerate() {
        assert_eq!((lo.steps, fo.steps), (steps, steps));
        assert_eq!(
            lo.digest,
            Some(replica::digest(l)),
            "leader worker {w} differs from the in-process run"
        );
        assert_eq!(
            fo.digest,
            Some(replica::digest(f)),
            "follower worker {w} differs from the in-process run"
        );
    }
    // Held-out evaluation by pair 0 equals the in-process one.
    let g = generator();
    let want = local
        .evaluate(
            &mut SynthSource::new(&g, true, HELD_OUT.0, HELD_OUT.1),
            &mut SynthSource::new(&g, false, HELD_OUT.0, HELD_OUT.1),
            worker::EVAL_BATCH,
        )
        .unwrap();
    let got = leaders[0].eval.as_ref().expect("worker 0 evaluates");
    assert_eq!(got.examples, HELD_OUT.1 - HELD_OUT.0);
    assert_eq!(got.metrics.auc.map(f64::to_bits), want.metrics.auc.map(f64::to_bits));
    assert!(leaders[1].eval.is_none());
}

#[test]
fn a_worker_that_never_comes_fails_the_job_within_the_peer_timeout() {
    let spec = small_wide_n_deep();
    let start = std::time::Instant::now();
    let run = run_services(&spec, 2, Some(1), Duration::from_secs(3));
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    let e = run.leaders[1].as_ref().expect_err("leader worker 1 fails");
    assert!(
        e.to_string().contains("follower worker 1 did not connect within 3 s"),
        "{e}"
    );
    // The coordinator gives up: on its own deadline, or when registered
    // worker 0 leaves (it waited as long), with no restart allowed here.
    let e = run.coordinator.expect_err("the coordinator fails").to_string();
    assert!(
        e.contains("1 of 2 workers registered within 3 s") || e.contains("worker 0 was lost"),
        "{e}"
    );
    // Pair 0 is told and fails too, naming the cause.
    let e = run.leaders[0].as_ref().expect_err("leader worker 0 fails");
    // (the coordinator's failure, or its silence, whichever comes first)
    let e = e.to_string();
    assert!(
        e.contains("registered") || e.contains("the coordinator: nothing within 3 s"),
        "{e}"
    );
    assert!(run.followers[0].is_err());
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn a_leader_worker_admits_only_the_follower() {
    let (ltls, _) = parties();
    let rt = rt();
    let pair = rt.block_on(listen_pair("127.0.0.1:0", 1 << 20, ltls.clone())).unwrap();
    let addr = pair.local_addr.to_string();
    // A process of the leader's own party is not the follower.
    let e = rt
        .block_on(dial_pair(&addr, 1 << 20, &ltls, Duration::from_secs(5)))
        .err()
        .expect("refused");
    assert!(matches!(&e, BridgeError::Rejected(_)), "{e}");
}

#[test]
fn a_coordinator_admits_only_the_leaders_processes() {
    let (ltls, ftls) = parties();
    let rt = rt();
    let l = rt.block_on(listen_coordinator("127.0.0.1:0", 1, ltls)).unwrap();
    let e = rt
        .block_on(dial_coordinator(
            &l.local_addr.to_string(),
            &ftls,
            Duration::from_secs(5),
        ))
        .err()
        .expect("refused");
    assert!(matches!(&e, BridgeError::Rejected(_)), "{e}");
}

#[test]
fn a_follower_worker_admits_only_the_leader() {
    let (_, ftls) = parties();
    let rt = rt();
    // A "leader worker" run by a follower process.
    let pair = rt.block_on(listen_pair("127.0.0.1:0", 1 << 20, ftls.clone())).unwrap();
    let e = rt
        .block_on(dial_pair(
            &pair.local_addr.to_string(),
            1 << 20,
            &ftls,
            Duration::from_secs(5),
        ))
        .err()
        .expect("refused");
    assert!(matches!(&e, BridgeError::Rejected(_)), "{e}");
}

/// The job's end is recorded: a coordinator started again from it trains
/// nothing and answers every worker with the end; workers and fresh shards
/// (restarted after the end, never joined) all end without training.
#[test]
fn after_the_recorded_end_every_restarted_process_ends_without_training() {
    let spec = small_wide_n_deep();
    let tmp = tempfile::tempdir().unwrap();
    let first = run_services_saving(
        &spec,
        2,
        None,
        Duration::from_secs(30),
        (Some(tmp.path()), Duration::ZERO),
    );
    let first_out = first.coordinator.unwrap();
    assert!(!first_out.ended_before);
    for r in first.leaders.iter().chain(&first.followers) {
        assert!(r.as_ref().unwrap().digest.is_some());
    }
    for r in &first.shards {
        assert_eq!(r.as_ref().unwrap(), &first_out.steps);
    }
    // The coordinator recorded its own part done too: started again, it
    // ends at once, waiting for nobody.
    let (ltls, _) = parties();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let alone = rt.block_on(async {
        let listener = listen_coordinator("127.0.0.1:0", 2, ltls).await.unwrap();
        let cfg = coordinator_config(&spec, 2, Duration::from_secs(30), Some(tmp.path()));
        tokio::time::timeout(Duration::from_secs(10), coordinator::run(cfg, listener)).await
    });
    let alone = alone.expect("ended at once").unwrap();
    assert!(alone.ended_before && alone.steps == first_out.steps && alone.epochs.is_empty());
    // Without that record it answers the workers that come.
    std::fs::remove_file(tmp.path().join("coordinator").join("end.json")).unwrap();
    // Every process again, the coordinator from its saved end.
    let again = run_services_saving(
        &spec,
        2,
        None,
        Duration::from_secs(30),
        (Some(tmp.path()), Duration::ZERO),
    );
    let out = again.coordinator.unwrap();
    assert!(out.ended_before, "{out:?}");
    assert_eq!((out.steps, out.restarts), (first_out.steps, 0));
    assert!(out.epochs.is_empty(), "trained again: {:?}", out.epochs);
    for r in again.leaders.iter().chain(&again.followers) {
        let o = r.as_ref().unwrap();
        assert_eq!((o.steps, o.examples, o.digest.as_deref()), (first_out.steps, 0, None));
    }
    // The shards took the end from workers that never joined them.
    for r in &again.shards {
        assert_eq!(r.as_ref().unwrap(), &first_out.steps);
    }
}

/// Worker pair 0's held-out pass takes longer than the peer timeout: its
/// heartbeats keep the coordinator and the workers waiting for the end
/// from taking it for lost, and the run ends as usual.
#[test]
fn a_held_out_pass_longer_than_the_peer_timeout_does_not_fail_the_job() {
    let spec = small_wide_n_deep();
    let wait = Duration::from_secs(2);
    // 4 held-out batches of 256 rows, 0.9 s each: 3.6 s in all.
    let run = run_services_saving(&spec, 2, None, wait, (None, Duration::from_millis(900)));
    let out = run.coordinator.unwrap();
    assert!(!out.ended_before && out.restarts == 0);
    let leader0 = run.leaders.into_iter().next().unwrap().unwrap();
    assert_eq!(
        leader0.eval.expect("the held-out pass").examples,
        HELD_OUT.1 - HELD_OUT.0
    );
    for r in run.followers {
        assert!(r.unwrap().digest.is_some());
    }
}

/// A leader worker (index 0 of 2, batch 32) whose follower says `hello`:
/// what the leader worker returns and what the follower receives.
fn leader_worker_greeted(hello: vfl_bridge::party_pb::PairHello) -> (TrainError, Option<String>) {
    use vfl_bridge::party_pb::{self, follower_worker_message::Msg as FMsg, leader_worker_message::Msg as LMsg};
    let spec = small_wide_n_deep();
    let (ltls, ftls) = parties();
    let rt = rt();
    let mut pair = rt.block_on(listen_pair("127.0.0.1:0", 1 << 20, ltls.clone())).unwrap();
    let addr = pair.local_addr.to_string();
    // Nothing past the Hello is reached: no shards, no coordinator.
    let (cfg, shards) = lone_worker(2, (vfl_attest::PartyRole::Leader, &ltls));
    let g = generator();
    let data = SynthParty {
        generator: &g,
        leader: true,
    };
    let handle = rt.handle().clone();
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            worker::run_leader(
                &spec,
                &cfg,
                handle,
                &shards,
                ("127.0.0.1:1", &ltls),
                &mut pair,
                (&data, None),
                None,
            )
        });
        let mut stream = rt
            .block_on(dial_pair(&addr, 1 << 20, &ftls, Duration::from_secs(5)))
            .unwrap();
        rt.block_on(stream.outbound.send(party_pb::FollowerWorkerMessage {
            msg: Some(FMsg::Hello(hello)),
        }))
        .unwrap();
        let told = match rt.block_on(stream.inbound.message()) {
            Ok(Some(party_pb::LeaderWorkerMessage {
                msg: Some(LMsg::Fatal(why)),
            })) => Some(why),
            _ => None,
        };
        (leader.join().unwrap().expect_err("refused"), told)
    })
}

/// Worker 0 of `workers` (batch 32) of party `own`, and shards it never
/// reaches (the tests refuse before that).
fn lone_worker(
    workers: usize,
    (own, security): (vfl_attest::PartyRole, &vfl_bridge::Security),
) -> (WorkerConfig, vfl_trainer::sharded::remote::ShardAddrs) {
    let cfg = WorkerConfig {
        worker: 0,
        workers,
        batch_size: 32,
        threads: 1,
        peer_timeout: Duration::from_secs(10),
        state: None,
    };
    let shards = vfl_trainer::sharded::remote::ShardAddrs {
        own,
        addrs: Vec::new(),
        security: security.clone(),
        max_message: 1 << 20,
        wait: Duration::from_secs(1),
    };
    (cfg, shards)
}

fn hello() -> vfl_bridge::party_pb::PairHello {
    vfl_bridge::party_pb::PairHello {
        worker: 0,
        workers: 2,
        model_fingerprint: small_wide_n_deep().fingerprint(),
        batch_size: 32,
    }
}

/// Refused for good, named to both sides.
fn assert_hello_refused(hello: vfl_bridge::party_pb::PairHello) {
    let (e, told) = leader_worker_greeted(hello);
    assert!(
        matches!(&e, TrainError::Unexpected { expected, .. } if expected.starts_with("the follower worker of this index")),
        "{e}"
    );
    assert!(!worker::restartable(&e));
    assert!(told.is_some_and(|t| t.contains("follower worker of this index")));
}

#[test]
fn a_leader_worker_refuses_the_follower_worker_of_another_index() {
    assert_hello_refused(vfl_bridge::party_pb::PairHello { worker: 1, ..hello() });
}

#[test]
fn a_leader_worker_refuses_a_follower_worker_of_another_model() {
    assert_hello_refused(vfl_bridge::party_pb::PairHello {
        model_fingerprint: "another".into(),
        ..hello()
    });
}

#[test]
fn a_leader_worker_refuses_a_follower_worker_of_another_batch_size() {
    assert_hello_refused(vfl_bridge::party_pb::PairHello {
        batch_size: 64,
        ..hello()
    });
}

#[test]
fn a_leader_worker_refuses_a_follower_worker_of_another_pair_count() {
    assert_hello_refused(vfl_bridge::party_pb::PairHello { workers: 3, ..hello() });
}

/// The follower's policy must release the same exports as the leader's:
/// a welcome naming others is refused before anything is joined.
#[test]
fn a_follower_worker_refuses_another_release_list() {
    use vfl_bridge::party_pb::{self, follower_worker_message::Msg as FMsg, leader_worker_message::Msg as LMsg};
    let spec = small_wide_n_deep();
    let (ltls, ftls) = parties();
    let rt = rt();
    let mut pair = rt.block_on(listen_pair("127.0.0.1:0", 1 << 20, ltls.clone())).unwrap();
    let addr = pair.local_addr.to_string();
    let (cfg, shards) = lone_worker(1, (vfl_attest::PartyRole::Follower, &ftls));
    let g = generator();
    let data = SynthParty {
        generator: &g,
        leader: false,
    };
    let handle = rt.handle().clone();
    let e = std::thread::scope(|s| {
        let follower =
            s.spawn(|| worker::run_follower(&spec, &cfg, handle, &shards, (&addr, &ftls), (&data, None), None));
        let mut incoming = rt.block_on(pair.streams.recv()).unwrap();
        let first = rt.block_on(incoming.inbound.message()).unwrap().unwrap();
        assert!(matches!(first.msg, Some(FMsg::Hello(_))));
        let welcome = party_pb::PairWelcome {
            steps: 0,
            checkpoint_steps: 0,
            run_id: "r1".into(),
            release_exports: vec!["leader".into()],
            committed: false,
        };
        rt.block_on(incoming.outbound.send(Ok(party_pb::LeaderWorkerMessage {
            msg: Some(LMsg::Welcome(welcome)),
        })))
        .unwrap();
        follower.join().unwrap().expect_err("refused")
    });
    assert!(matches!(&e, TrainError::ReleaseMismatch { .. }), "{e}");
}
