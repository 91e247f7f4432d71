//! `vfl shard`: one parameter shard of one party (docs/scale-out.md). It
//! serves the party's workers over RA-TLS, admitting only processes the
//! policy admits as this party, until every worker that joined has left.

use std::time::Duration;

use anyhow::Context;
use vfl_attest::PartyRole;
use vfl_nn::{ModelSpec, Role};
use vfl_trainer::sharded::serve::{self, ShardConfig};
use vfl_trainer::sharded::{Placement, Shard};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The party this shard belongs to: leader or follower.
    #[arg(long, env = "VFL_ROLE", value_parser = ["leader", "follower"])]
    pub(crate) role: String,
    /// This shard's index, 0..--shards.
    #[arg(long, env = "VFL_INDEX")]
    pub(crate) index: usize,
    /// Parameter shards of the party.
    #[arg(long, env = "VFL_SHARDS")]
    pub(crate) shards: usize,
    /// Worker pairs of the run.
    #[arg(long, env = "VFL_WORKERS")]
    pub(crate) workers: usize,
    /// Model preset name or spec file (the workers' must be the same).
    #[arg(long, default_value = "wide_n_deep")]
    pub(crate) model: String,
    /// Address to serve the party's workers on (host:port; port 0 picks one).
    #[arg(long, env = "VFL_LOCAL_ADDR", default_value = "0.0.0.0:50051")]
    pub(crate) local_addr: String,
    /// Seconds to wait for the first worker.
    #[arg(long, default_value_t = 120)]
    pub(crate) peer_timeout: u64,
    /// Serve liveness at http://ADDR/healthz (Kubernetes probes).
    #[arg(long, env = "VFL_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<String>,
    /// Where this shard saves its state at the checkpoint steps (under
    /// `<path>/shard-<index>`); it loads the newest on start.
    #[arg(long)]
    pub(crate) state_path: Option<std::path::PathBuf>,
    /// Save the state every N steps (the coordinator's --checkpoint-steps;
    /// every process of the job must use the same N).
    #[arg(long, default_value_t = 0)]
    pub(crate) checkpoint_steps: u64,
    /// Key that seals the saved state (as for `vfl party`).
    #[arg(long)]
    pub(crate) model_key: Option<String>,
    #[arg(long, default_value = "vfl")]
    pub(crate) application_id: String,
    #[command(flatten)]
    pub(crate) attest: super::attest::Flags,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (role, own) = match a.role.as_str() {
        "leader" => (Role::Leader, PartyRole::Leader),
        _ => (Role::Follower, PartyRole::Follower),
    };
    anyhow::ensure!(
        a.index < a.shards,
        "--index {} is not below --shards {}",
        a.index,
        a.shards
    );
    super::attest::preflight(&a.attest, a.model_key.as_deref())?;
    let spec = ModelSpec::resolve(&a.model)?;
    let sealer = super::party::sealer_for(&a.attest, a.model_key.as_deref())?;
    // The sealer also keeps the collateral's high-water marks across
    // restarts (no older collateral after a restart).
    let security = super::attest::security(&a.attest, sealer.as_ref())?;
    let state = a.state_path.as_ref().map(|root| {
        vfl_trainer::sharded::state::StateDir::new(
            root,
            (&a.application_id, role, &spec.fingerprint(), &security.policy_digest()),
            &format!("shard-{}", a.index),
            sealer.clone(),
        )
    });
    let placement = Placement::new(a.shards)?;
    let shard = Shard::new(&spec, role, a.index, placement, a.workers)?;
    let cfg = ShardConfig {
        index: a.index,
        shards: a.shards,
        workers: a.workers,
        model_fingerprint: spec.fingerprint(),
        peer_timeout: Duration::from_secs(a.peer_timeout),
        state,
        checkpoint_every: a.checkpoint_steps,
        max_message: vfl_trainer::sharded::message_limit(&spec, role),
    };
    let rows = shard.rows();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let steps = rt.block_on(async move {
        if let Some(addr) = &a.metrics_addr {
            let progress = vfl_trainer::progress::Progress::new("shard");
            let bound = crate::metrics::serve(addr, progress.registry()).await?;
            tracing::info!(addr = %bound, "liveness at /healthz");
        }
        let max = vfl_trainer::sharded::message_limit(&spec, role);
        let listener = vfl_bridge::party::listen_shard(&a.local_addr, own, (max, a.workers), security).await?;
        println!(
            "shard {}/{} of the {}: {} embedding rows, listening on {}",
            a.index, a.shards, a.role, rows, listener.local_addr
        );
        Ok::<_, anyhow::Error>(serve::run(cfg, shard, listener).await?)
    })?;
    println!("shard {}: done after {steps} steps", a.index);
    Ok(())
}
