//! `vfl worker` and `vfl coordinator`: the scale-out roles besides the
//! shards (docs/scale-out.md). Leader worker i serves follower worker i
//! over RA-TLS and reports to the leader's coordinator; each worker joins
//! its own party's shards. Addresses default to the Kubernetes names of
//! deploy/k8s (`shard-{index}.shard:50051`, `coordinator-0.coordinator:50051`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use vfl_attest::PartyRole;
use vfl_nn::{ModelSpec, Role};
use vfl_trainer::sharded::coordinator::{self, CoordinatorConfig, Milestone};
use vfl_trainer::sharded::remote::ShardAddrs;
use vfl_trainer::sharded::worker::{self, DirBlocks, WorkerConfig};

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The party: leader or follower.
    #[arg(long, env = "VFL_ROLE", value_parser = ["leader", "follower"])]
    pub(crate) role: String,
    /// This worker's index, 0..--workers (pairs with the other party's
    /// worker of the same index).
    #[arg(long, env = "VFL_INDEX")]
    pub(crate) index: usize,
    /// Worker pairs of the run.
    #[arg(long, env = "VFL_WORKERS")]
    pub(crate) workers: usize,
    /// Parameter shards of this party.
    #[arg(long, env = "VFL_SHARDS")]
    pub(crate) shards: usize,
    /// This party's data blocks (the same block ids on both sides, as `vfl
    /// join` writes them).
    #[arg(long, env = "VFL_DATA_PATH", default_value = "/srv/vfl/data")]
    pub(crate) data_path: PathBuf,
    #[arg(long)]
    pub(crate) data_path_wildcard: Option<String>,
    /// Held-out data: worker pair 0 evaluates the trained model on it
    /// (both workers of pair 0 need it).
    #[arg(long)]
    pub(crate) eval_data_path: Option<PathBuf>,
    /// Model preset name or spec file (every process's must be the same).
    #[arg(long, default_value = "wide_n_deep")]
    pub(crate) model: String,
    #[arg(long, default_value_t = 32)]
    pub(crate) batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// The party's shards: a comma-separated list, or one address with
    /// `{index}` for the shard's index.
    #[arg(long, env = "VFL_SHARD_ADDR", default_value = "shard-{index}.shard:50051")]
    pub(crate) shard_addr: String,
    /// Leader: the coordinator's address.
    #[arg(
        long,
        env = "VFL_COORDINATOR_ADDR",
        default_value = "coordinator-0.coordinator:50051"
    )]
    pub(crate) coordinator_addr: String,
    /// Leader: where to serve the follower worker (host:port; port 0 picks one).
    #[arg(long, env = "VFL_LOCAL_ADDR", default_value = "0.0.0.0:50051")]
    pub(crate) local_addr: String,
    /// Follower: the leader worker of this index (`{index}` is replaced).
    #[arg(long, env = "VFL_PEER_ADDR")]
    pub(crate) peer_addr: Option<String>,
    /// Seconds to wait for a peer (connect, and each message).
    #[arg(long, default_value_t = 120)]
    pub(crate) peer_timeout: u64,
    /// Serve liveness at http://ADDR/healthz (Kubernetes probes).
    #[arg(long, env = "VFL_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<String>,
    /// Key that opens sealed joined blocks (as for `vfl party`).
    #[arg(long)]
    pub(crate) model_key: Option<String>,
    #[arg(long, default_value = "vfl")]
    pub(crate) application_id: String,
    /// Worker 0: export the trained model here, as `vfl party` does
    /// (`<path>/<run>/<role>/`; sealed unless both policies release it).
    #[arg(long)]
    pub(crate) export_path: Option<PathBuf>,
    /// How often this worker starts over after a lost peer (the job
    /// restarts from its last checkpoint) before it fails.
    #[arg(long, default_value_t = 10)]
    pub(crate) max_restarts: u32,
    /// Where the worker records the job's end (under `<path>/worker-<index>`;
    /// started again after it, the worker trains nothing). One job per
    /// directory.
    #[arg(long)]
    pub(crate) state_path: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) attest: super::attest::Flags,
}

#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    /// Worker pairs of the run.
    #[arg(long, env = "VFL_WORKERS")]
    pub(crate) workers: usize,
    /// The leader's data blocks (the coordinator reads only their ids).
    #[arg(long, env = "VFL_DATA_PATH", default_value = "/srv/vfl/data")]
    pub(crate) data_path: PathBuf,
    #[arg(long)]
    pub(crate) data_path_wildcard: Option<String>,
    #[arg(long, default_value = "wide_n_deep")]
    pub(crate) model: String,
    #[arg(long, default_value_t = 32)]
    pub(crate) batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub(crate) epoch_num: u32,
    /// Shuffle the block order at every epoch, from --seed.
    #[arg(long)]
    pub(crate) shuffle: bool,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Where to serve the leader's workers (host:port; port 0 picks one).
    #[arg(long, env = "VFL_LOCAL_ADDR", default_value = "0.0.0.0:50051")]
    pub(crate) local_addr: String,
    /// Seconds to wait for the workers to register, and for each report.
    #[arg(long, default_value_t = 120)]
    pub(crate) peer_timeout: u64,
    #[arg(long, env = "VFL_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<String>,
    /// Where the coordinator saves its position at the checkpoint steps
    /// (under `<path>/coordinator`); it resumes from the newest on start.
    #[arg(long)]
    pub(crate) state_path: Option<PathBuf>,
    /// A coordinated checkpoint every N steps (every shard's
    /// --checkpoint-steps must be the same; 0: none, a lost process then
    /// fails the job).
    #[arg(long, default_value_t = 0)]
    pub(crate) checkpoint_steps: u64,
    /// How often a lost worker may restart the job before it fails.
    #[arg(long, default_value_t = 10)]
    pub(crate) max_restarts: u32,
    /// Key that seals the saved position (as for `vfl party`).
    #[arg(long)]
    pub(crate) model_key: Option<String>,
    #[arg(long, default_value = "vfl")]
    pub(crate) application_id: String,
    #[command(flatten)]
    pub(crate) attest: super::attest::Flags,
}

/// The addresses `spec` names for `n` shards.
fn shard_addrs(spec: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let addrs: Vec<String> = if spec.contains("{index}") {
        (0..n).map(|i| spec.replace("{index}", &i.to_string())).collect()
    } else {
        spec.split(',').map(|s| s.trim().to_string()).collect()
    };
    anyhow::ensure!(
        addrs.len() == n && addrs.iter().all(|a| !a.is_empty()),
        "--shard-addr names {} shards, but --shards is {n}",
        addrs.len()
    );
    Ok(addrs)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn liveness(addr: Option<&str>, role: &'static str) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let progress = vfl_trainer::progress::Progress::new(role);
        let bound = crate::metrics::serve(addr, progress.registry()).await?;
        tracing::info!(addr = %bound, "liveness at /healthz");
    }
    Ok(())
}

pub fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    let (role, own) = match a.role.as_str() {
        "leader" => (Role::Leader, PartyRole::Leader),
        _ => (Role::Follower, PartyRole::Follower),
    };
    anyhow::ensure!(
        a.index < a.workers && a.shards > 0 && a.batch_size > 0,
        "--index {} must be below --workers {}, and --shards and --batch-size above 0",
        a.index,
        a.workers
    );
    super::attest::preflight(&a.attest, a.model_key.as_deref())?;
    let spec = ModelSpec::resolve(&a.model)?;
    let sealer = super::party::sealer_for(&a.attest, a.model_key.as_deref())?;
    let security = super::attest::security(&a.attest, sealer.as_ref())?;
    let schema = vfl_trainer::schema_for(&spec, role);
    let join_id = super::party::joined_blocks(&a.data_path, a.data_path_wildcard.as_deref(), sealer.is_some())?;
    let unseal = sealer.clone().map(|s| {
        vfl_trainer::remote::joined_blocks(
            s,
            (&a.application_id, role, &security.policy_digest()),
            join_id.as_deref(),
        )
    });
    let data = DirBlocks {
        dir: vfl_data::DataDir::scan(&a.data_path, a.data_path_wildcard.as_deref())?,
        schema: schema.clone(),
        options: Default::default(),
        unseal: unseal.clone(),
    };
    let eval_blocks = match &a.eval_data_path {
        Some(p) if a.index == 0 => Some(vfl_data::DataDir::scan(p, None)?.blocks().to_vec()),
        _ => None,
    };
    // A fresh reader of the held-out data for every attempt.
    let eval_reader = || {
        eval_blocks.as_ref().map(|b| {
            let mut r = vfl_data::BlockReader::new(b.clone(), schema.clone(), Default::default());
            if let Some(u) = &unseal {
                r.set_unseal(u.clone());
            }
            r
        })
    };
    let shards = ShardAddrs {
        own,
        addrs: shard_addrs(&a.shard_addr, a.shards)?,
        security: security.clone(),
        max_message: vfl_trainer::sharded::message_limit(&spec, role),
        wait: Duration::from_secs(a.peer_timeout),
    };
    let cfg = WorkerConfig {
        worker: a.index,
        workers: a.workers,
        batch_size: a.batch_size,
        threads: a.threads.max(1),
        peer_timeout: Duration::from_secs(a.peer_timeout),
        state: a.state_path.as_ref().map(|root| {
            vfl_trainer::sharded::state::StateDir::new(
                root,
                (&a.application_id, role, &spec.fingerprint(), &security.policy_digest()),
                &format!("worker-{}", a.index),
                sealer.clone(),
            )
        }),
    };
    let export = match &a.export_path {
        Some(path) if a.index == 0 => Some(worker::ExportTo {
            path: path.clone(),
            bind: vfl_trainer::checkpoint::Binding {
                app: a.application_id.clone(),
                role,
                model: spec.fingerprint(),
                policy: security.policy_digest(),
            },
            sealer: sealer.clone(),
        }),
        _ => None,
    };
    let rt = runtime()?;
    rt.block_on(liveness(a.metrics_addr.as_deref(), "worker"))?;
    let mut pair = match role {
        Role::Leader => {
            let max = worker::pair_message_limit(&spec, a.batch_size);
            let pair = rt.block_on(vfl_bridge::party::listen_pair(&a.local_addr, max, security.clone()))?;
            println!(
                "worker {}/{} of the leader: listening for follower worker {} on {}",
                a.index, a.workers, a.index, pair.local_addr
            );
            Some(pair)
        }
        Role::Follower => None,
    };
    let peer = match role {
        Role::Leader => String::new(),
        Role::Follower => {
            let peer = a
                .peer_addr
                .as_deref()
                .context("a follower worker needs --peer-addr (its leader worker)")?
                .replace("{index}", &a.index.to_string());
            println!("worker {}/{} of the follower: dialing {peer}", a.index, a.workers);
            peer
        }
    };
    // A lost peer (another process of the job died) fails the attempt; the
    // job then restarts from its last checkpoint, this worker with it.
    let mut restarts = 0;
    let outcome = loop {
        let mut eval = eval_reader();
        let eval = eval.as_mut().map(|r| r as &mut dyn vfl_data::BatchSource);
        let attempt = match pair.as_mut() {
            Some(pair) => worker::run_leader(
                &spec,
                &cfg,
                rt.handle().clone(),
                &shards,
                (&a.coordinator_addr, &security),
                pair,
                (&data, export.as_ref()),
                eval,
            ),
            None => worker::run_follower(
                &spec,
                &cfg,
                rt.handle().clone(),
                &shards,
                (&peer, &security),
                (&data, export.as_ref()),
                eval,
            ),
        };
        match attempt {
            Ok(o) => break o,
            Err(e) if worker::restartable(&e) && restarts < a.max_restarts => {
                restarts += 1;
                tracing::warn!(error = %e, restarts, "the job's attempt failed; starting over from its last checkpoint");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(pair) = pair {
        let _ = rt.block_on(async { tokio::time::timeout(cfg.peer_timeout, pair.shutdown()).await });
    }
    if let Some(e) = &outcome.eval {
        let m = &e.metrics;
        println!(
            "held-out evaluation ({} rows): AUC {}, log loss {:.4}, KS {}",
            m.count,
            super::four(m.auc),
            m.log_loss,
            super::four(m.ks)
        );
    }
    if let Some(dir) = &outcome.export {
        println!("exported the {} model to {}", a.role, dir.display());
    }
    match &outcome.digest {
        Some(digest) => println!(
            "worker {}: done after {} steps ({} examples here), model {digest}",
            a.index, outcome.steps, outcome.examples
        ),
        None => println!(
            "worker {}: the job had ended after {} steps before this attempt (its end is recorded); nothing to train",
            a.index, outcome.steps
        ),
    }
    Ok(())
}

pub fn coordinator(a: CoordinatorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.workers > 0 && a.batch_size > 0,
        "--workers and --batch-size must be > 0"
    );
    super::attest::preflight(&a.attest, a.model_key.as_deref())?;
    let spec = ModelSpec::resolve(&a.model)?;
    let sealer = super::party::sealer_for(&a.attest, a.model_key.as_deref())?;
    let security = super::attest::security(&a.attest, sealer.as_ref())?;
    let dir = vfl_data::DataDir::scan(&a.data_path, a.data_path_wildcard.as_deref())?;
    let state = a.state_path.as_ref().map(|root| {
        vfl_trainer::sharded::state::StateDir::new(
            root,
            (
                &a.application_id,
                Role::Leader,
                &spec.fingerprint(),
                &security.policy_digest(),
            ),
            "coordinator",
            sealer.clone(),
        )
    });
    let cfg = CoordinatorConfig {
        workers: a.workers,
        epochs: a.epoch_num,
        seed: a.shuffle.then_some(a.seed),
        block_ids: dir.ids(),
        model_fingerprint: spec.fingerprint(),
        batch_size: a.batch_size,
        peer_timeout: Duration::from_secs(a.peer_timeout),
        state,
        checkpoint_every: a.checkpoint_steps,
        max_restarts: a.max_restarts,
        on_milestone: Some(std::sync::Arc::new(|m| match m {
            Milestone::Checkpoint(step) => println!("checkpoint: step {step} saved"),
            Milestone::Finished(step) => {
                println!("finished: training ended after step {step}; the pairs' end-of-job work follows")
            }
            Milestone::Committed(step) => println!("committed: the job's end after step {step} is recorded"),
        })),
    };
    let blocks = cfg.block_ids.len();
    let rt = runtime()?;
    let out = rt.block_on(async {
        liveness(a.metrics_addr.as_deref(), "coordinator").await?;
        let listener = vfl_bridge::party::listen_coordinator(&a.local_addr, a.workers, security).await?;
        println!(
            "coordinator of the leader: {} worker pairs, {blocks} blocks, listening on {}",
            a.workers, listener.local_addr
        );
        Ok::<_, anyhow::Error>(coordinator::run(cfg, listener).await?)
    })?;
    for e in &out.epochs {
        println!(
            "epoch {}: {} synchronous steps, {} examples, mean loss {:.4}",
            e.epoch + 1,
            e.steps,
            e.examples,
            e.loss_sum / e.examples.max(1) as f64
        );
    }
    if out.ended_before {
        println!(
            "coordinator: the job had ended after {} steps before this start (its end is recorded)",
            out.steps
        );
    } else {
        println!(
            "coordinator: done after {} steps, {} restart(s) from a checkpoint",
            out.steps, out.restarts
        );
    }
    Ok(())
}
