//! `vfl leader` and `vfl follower`: the two parties, each in its own
//! process, talking gRPC.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use vfl_attest::seal::{KeySource, Sealer};
use vfl_nn::ModelSpec;
use vfl_trainer::remote::{
    FollowerTask, LeaderEval, LeaderTask, LeaderTrain, RunConfig, RunSummary, run_follower, run_leader,
};

/// Flags shared by both parties (names follow the original Fedlearner
/// trainer where they apply).
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Directory of this party's data blocks.
    #[arg(long)]
    data_path: PathBuf,
    /// Wildcard selecting data files, matched against paths relative to
    /// --data-path (default: *.tfrecord, *.tfrecord.gz and *.csv).
    #[arg(long)]
    data_path_wildcard: Option<String>,
    /// Model preset name or spec file; both parties must use the same.
    #[arg(long, default_value = "wide_n_deep")]
    model: String,
    /// Batch size; both parties must use the same.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Job id; both parties must use the same.
    #[arg(long, default_value = "vfl")]
    application_id: String,
    /// Compute threads (default: the machine's cores, at most 2).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds to wait for the peer to appear, for any message or heartbeat
    /// from it (heartbeats go every quarter of this, at most every 5 s), and
    /// for a lost peer to come back.
    #[arg(long, default_value_t = 120)]
    peer_timeout: u64,
    /// Count and skip records that fail to decode instead of stopping.
    #[arg(long)]
    skip_bad_records: bool,
    /// Directory for checkpoints. On start, the parties resume from the
    /// newest checkpoint step both hold there.
    #[arg(long)]
    checkpoint_path: Option<PathBuf>,
    /// Number of checkpoints kept (the newest).
    #[arg(long, default_value_t = 5)]
    keep_checkpoints: usize,
    /// Where the final model is exported: <path>/<id>/<role>/ with
    /// model.safetensors, model.toml and manifest.json; both parties use
    /// the same <id>.
    #[arg(long)]
    export_path: Option<PathBuf>,
    /// train, or eval (forward only; needs --load-model or a checkpoint);
    /// `vfl party` also takes join (aligns the data into --join-path, as
    /// `vfl join`).
    #[arg(long, env = "VFL_MODE", value_enum, default_value_t = PartyMode::Train)]
    mode: PartyMode,
    /// Eval: an exported model directory (<export>/<id>, or its <role>
    /// subdirectory); sealed exports are opened only by the enclave build
    /// that wrote them.
    #[arg(long, env = "VFL_LOAD_MODEL")]
    load_model: Option<PathBuf>,
    /// Serve Prometheus metrics (steps, examples/s, loss, AUC, bytes,
    /// reconnects) at http://ADDR/metrics.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Encrypt checkpoints, exported weights and this party's state records
    /// at rest with this key: sgx-mrenclave (default under --attestation
    /// sgx, and the only choice of enclave builds: Gramine's sealing key of
    /// this exact enclave), or in development builds file:PATH (32 bytes or
    /// 64 hex digits), env:VAR (64 hex digits) or `none` (plaintext, the
    /// default of development builds outside SGX).
    #[arg(long)]
    model_key: Option<String>,
    /// Resume even from a checkpoint older than the newest step both
    /// parties committed (the checkpoints after it were lost or removed).
    /// Without it such a rollback is refused.
    #[arg(long)]
    allow_rollback: bool,
    /// How often a peer that restarted (a new process) is taken back and
    /// the session started over from the newest common checkpoint, before
    /// the run fails.
    #[arg(long, default_value_t = vfl_bridge::link::MAX_RESTARTS)]
    max_restarts: u32,
    #[command(flatten)]
    attest: super::attest::Flags,
}

/// What a party run does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartyMode {
    Train,
    Eval,
    /// `vfl party` only: align the data into --join-path.
    Join,
}

/// Flags only the leader uses (it decides epochs, order and checkpoints).
#[derive(clap::Args, Debug)]
pub struct LeaderOnly {
    /// Epochs over the data (the leader decides).
    #[arg(long, default_value_t = 1)]
    epoch_num: u32,
    /// Shuffle the block order at every epoch, from --seed.
    #[arg(long)]
    shuffle: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint (both parties, same step) every N steps.
    #[arg(long)]
    save_checkpoint_steps: Option<u64>,
    /// Save a checkpoint every N seconds (at the next step).
    #[arg(long)]
    save_checkpoint_secs: Option<u64>,
    /// Eval: write `example_id,score` for every example to this CSV file.
    #[arg(long)]
    predictions_path: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct LeaderArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on for the follower (host:port; port 0 picks one).
    #[arg(long, env = "VFL_LOCAL_ADDR", default_value = "0.0.0.0:50051")]
    local_addr: String,
    /// Accepted for the original's scripts, which pass both addresses to
    /// both roles, and ignored (logged): the leader listens, the follower
    /// dials.
    #[arg(long)]
    peer_addr: Option<String>,
    #[command(flatten)]
    lead: LeaderOnly,
}

#[derive(clap::Args, Debug)]
pub struct FollowerArgs {
    #[command(flatten)]
    common: Common,
    /// The leader's address (host:port).
    #[arg(long, env = "VFL_PEER_ADDR")]
    peer_addr: String,
    /// Accepted for the original's scripts, which pass both addresses to
    /// both roles, and ignored (logged): the follower dials the leader.
    #[arg(long)]
    local_addr: Option<String>,
}

/// One command line for both roles, the role from --role or VFL_ROLE: an
/// SGX deployment fixes everything else in the (measured) manifest, so the
/// leader's and the follower's enclaves are the same enclave.
#[derive(clap::Args, Debug)]
pub struct PartyArgs {
    /// leader or follower.
    #[arg(long, env = "VFL_ROLE", value_parser = ["leader", "follower"])]
    role: String,
    #[command(flatten)]
    common: Common,
    /// Leader: address to listen on.
    #[arg(long, env = "VFL_LOCAL_ADDR", default_value = "0.0.0.0:50051")]
    local_addr: String,
    /// Follower: the leader's address.
    #[arg(long, env = "VFL_PEER_ADDR")]
    peer_addr: Option<String>,
    /// Where VFL_MODE=join writes the joined blocks (as `vfl join
    /// --output-path`, with its defaults), and where training and eval then
    /// read them (when a join's output is there) instead of --data-path.
    #[arg(long)]
    join_path: Option<PathBuf>,
    /// Used by the leader; the follower ignores them (the leader decides).
    #[command(flatten)]
    lead: LeaderOnly,
    /// Run this process as a scale-out role instead of a single party
    /// (docs/scale-out.md). The enclave's measured command line is `vfl
    /// party`, so an SGX deployment picks the role with VFL_PROCESS; the
    /// role's own settings come from its VFL_* variables, everything that
    /// matters for trust (attestation, policy, model key) from this command
    /// line.
    #[arg(long, env = "VFL_PROCESS", value_enum, default_value_t = Process::Party)]
    process: Process,
}

/// What `vfl party` runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// One party of a single pair.
    Party,
    /// `vfl shard`.
    Shard,
    /// `vfl worker`.
    Worker,
    /// `vfl coordinator` (leader only).
    Coordinator,
}

/// A scale-out role's arguments from its environment alone.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct FromEnv<T: clap::Args> {
    #[command(flatten)]
    args: T,
}

/// Runs the scale-out role `process` with this `vfl party` command line's
/// model, data, timeouts, key and attestation.
fn scale_process(process: Process, a: &PartyArgs) -> anyhow::Result<()> {
    use clap::Parser;
    let c = &a.common;
    anyhow::ensure!(
        c.mode == PartyMode::Train,
        "VFL_PROCESS={process:?} trains; VFL_MODE must be train"
    );
    let none = std::iter::empty::<String>();
    // The role as `vfl party` took it (flag or VFL_ROLE).
    let role = ["--role".to_string(), a.role.clone()];
    let env_err = |e: clap::Error| anyhow::anyhow!("VFL_PROCESS={process:?}: {e}");
    match process {
        Process::Party => unreachable!("not a scale-out role"),
        Process::Shard => {
            let mut s = FromEnv::<super::shard::Args>::try_parse_from(role)
                .map_err(env_err)?
                .args;
            s.model.clone_from(&c.model);
            s.peer_timeout = c.peer_timeout;
            s.attest = c.attest.clone();
            s.model_key.clone_from(&c.model_key);
            s.application_id.clone_from(&c.application_id);
            s.state_path.clone_from(&c.checkpoint_path);
            s.checkpoint_steps = a.lead.save_checkpoint_steps.unwrap_or(0);
            s.metrics_addr = s.metrics_addr.or(c.metrics_addr.clone());
            super::shard::run(s)
        }
        Process::Worker => {
            let mut w = FromEnv::<super::worker::WorkerArgs>::try_parse_from(role)
                .map_err(env_err)?
                .args;
            w.data_path.clone_from(&c.data_path);
            w.data_path_wildcard.clone_from(&c.data_path_wildcard);
            w.model.clone_from(&c.model);
            w.batch_size = c.batch_size;
            w.threads = c.threads.unwrap_or(1);
            w.peer_timeout = c.peer_timeout;
            w.model_key.clone_from(&c.model_key);
            w.application_id.clone_from(&c.application_id);
            w.attest = c.attest.clone();
            w.max_restarts = c.max_restarts;
            w.export_path.clone_from(&c.export_path);
            w.state_path.clone_from(&c.checkpoint_path);
            w.metrics_addr = w.metrics_addr.or(c.metrics_addr.clone());
            super::worker::worker(w)
        }
        Process::Coordinator => {
            anyhow::ensure!(a.role == "leader", "only the leader runs a coordinator");
            let mut k = FromEnv::<super::worker::CoordinatorArgs>::try_parse_from(none)
                .map_err(env_err)?
                .args;
            k.data_path.clone_from(&c.data_path);
            k.data_path_wildcard.clone_from(&c.data_path_wildcard);
            k.model.clone_from(&c.model);
            k.batch_size = c.batch_size;
            k.epoch_num = a.lead.epoch_num;
            k.shuffle = a.lead.shuffle;
            k.seed = a.lead.seed;
            k.peer_timeout = c.peer_timeout;
            k.attest = c.attest.clone();
            k.model_key.clone_from(&c.model_key);
            k.application_id.clone_from(&c.application_id);
            k.state_path.clone_from(&c.checkpoint_path);
            k.checkpoint_steps = a.lead.save_checkpoint_steps.unwrap_or(0);
            k.max_restarts = c.max_restarts;
            k.metrics_addr = k.metrics_addr.or(c.metrics_addr.clone());
            super::worker::coordinator(k)
        }
    }
}

fn config(c: &Common, addr: String, role: &'static str) -> anyhow::Result<RunConfig> {
    anyhow::ensure!(
        c.mode != PartyMode::Join,
        "--mode join is for `vfl party` (with --join-path); use `vfl join {role}`"
    );
    anyhow::ensure!(c.batch_size > 0, "--batch-size must be > 0");
    super::attest::preflight(&c.attest, c.model_key.as_deref())?;
    let seal = sealer(c)?;
    let join_id = joined_blocks(&c.data_path, c.data_path_wildcard.as_deref(), seal.is_some())?;
    if c.allow_rollback {
        eprintln!(
            "WARNING: --allow-rollback: this party may resume from a checkpoint older than the step both parties \
             committed, re-running training steps it has already run"
        );
    }
    Ok(RunConfig {
        spec: ModelSpec::resolve(&c.model)?,
        application_id: c.application_id.clone(),
        data_path: c.data_path.clone(),
        data_path_wildcard: c.data_path_wildcard.clone(),
        batch_size: c.batch_size,
        threads: c
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(2))),
        addr,
        peer_timeout: Duration::from_secs(c.peer_timeout),
        skip_bad_records: c.skip_bad_records,
        checkpoint_path: c.checkpoint_path.clone(),
        keep_checkpoints: c.keep_checkpoints,
        export_path: c.export_path.clone(),
        join_id,
        started: std::time::Instant::now(),
        security: super::attest::security(&c.attest, seal.as_ref())?,
        seal,
        allow_rollback: c.allow_rollback,
        max_restarts: c.max_restarts,
        progress: vfl_trainer::progress::Progress::new(role),
    })
}

/// When `path` holds a join's sealed output (its join-report.json says so):
/// the join id every block must carry, after checking that there is a key
/// and that no block is plaintext.
pub(crate) fn joined_blocks(
    path: &std::path::Path,
    wildcard: Option<&str>,
    have_key: bool,
) -> anyhow::Result<Option<String>> {
    let report = path.join(vfl_join::output::REPORT);
    let Ok(bytes) = std::fs::read(&report) else {
        return Ok(None);
    };
    anyhow::ensure!(
        bytes.len() <= 64 << 10,
        "{}: larger than a join report",
        report.display()
    );
    #[derive(serde::Deserialize)]
    struct Report {
        join_id: String,
        sealed: bool,
    }
    let r: Report =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not a join report", report.display()))?;
    if !r.sealed {
        return Ok(None);
    }
    anyhow::ensure!(
        r.join_id.len() == 32 && r.join_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}: the join id is not 16 bytes of hex",
        report.display()
    );
    anyhow::ensure!(
        have_key,
        "{}: the joined blocks are sealed; training needs the model key the join used (--model-key)",
        path.display()
    );
    let dir = vfl_data::DataDir::scan(path, wildcard)?;
    if let Some(b) = dir.blocks().iter().find(|b| !b.sealed) {
        anyhow::bail!("{}: a plaintext block among a join's sealed blocks", b.path.display());
    }
    Ok(Some(r.join_id))
}

fn sealer(c: &Common) -> anyhow::Result<Option<std::sync::Arc<Sealer>>> {
    let s = sealer_for(&c.attest, c.model_key.as_deref())?;
    match &s {
        Some(s) => {
            tracing::info!(key = %s.source(), key_id = %s.key_id(), "checkpoints and exported weights are encrypted at rest")
        }
        None if c.checkpoint_path.is_some() || c.export_path.is_some() => {
            tracing::warn!("checkpoints and exported weights are stored in plaintext (no --model-key)")
        }
        None => {}
    }
    Ok(s)
}

/// The sealing key in force for `--model-key` (None: plaintext, only in
/// development builds outside SGX).
pub(crate) fn sealer_for(
    attest: &super::attest::Flags,
    model_key: Option<&str>,
) -> anyhow::Result<Option<std::sync::Arc<Sealer>>> {
    use super::attest::Attestation;
    super::attest::check_tdx_model_key(attest, model_key)?;
    let in_sgx = attest.attestation == Attestation::Sgx && !attest.insecure();
    let source = match model_key {
        Some("none") if in_sgx || !cfg!(feature = "dev") => anyhow::bail!(
            "--model-key none: a party running with SGX attestation (and every enclave build) seals its state; \
             plaintext storage would let the operator read what the enclave learned from the peer"
        ),
        Some("none") => None,
        Some(s) => Some(s.parse::<KeySource>().map_err(|e| anyhow::anyhow!("--model-key {e}"))?),
        None if in_sgx || !cfg!(feature = "dev") => Some(KeySource::SgxMrEnclave),
        None => None,
    };
    match source {
        Some(src) => Ok(Some(std::sync::Arc::new(Sealer::open(
            &src,
            &attest.attestation_device,
        )?))),
        None => Ok(None),
    }
}

/// The progress display: on a terminal, a status line on stderr redrawn
/// every second; otherwise a plain log line every 30 seconds.
struct Ticker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    terminal: bool,
}

impl Ticker {
    fn start(p: std::sync::Arc<vfl_trainer::progress::Progress>) -> Self {
        use std::io::IsTerminal;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let terminal = std::io::stderr().is_terminal();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let period = if terminal { 10 } else { 300 }; // in 100 ms ticks
                let mut ticks = 0u32;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    ticks += 1;
                    if !ticks.is_multiple_of(period) || p.steps() == 0 {
                        continue;
                    }
                    if terminal {
                        eprint!("\r{}\x1b[K", p.line());
                    } else {
                        tracing::info!("{}", p.line());
                    }
                }
            })
            .ok();
        Self { stop, thread, terminal }
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}

/// Runs one party's session on a fresh runtime: the `--metrics-addr`
/// endpoint first (if asked for), the progress line throughout, the
/// summary at the end.
fn run_session<F>(
    common: &Common,
    role: &str,
    progress: std::sync::Arc<vfl_trainer::progress::Progress>,
    session: F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<RunSummary, vfl_trainer::TrainError>>,
{
    let (addr, registry) = (common.metrics_addr.clone(), progress.registry());
    let ticker = Ticker::start(progress);
    let result = runtime()?.block_on(async move {
        if let Some(addr) = addr {
            let bound = crate::metrics::serve(&addr, registry).await?;
            tracing::info!(addr = %bound, "serving Prometheus metrics at /metrics, liveness at /healthz");
        }
        Ok::<_, anyhow::Error>(session.await?)
    });
    ticker.stop();
    report(role, &result?);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn report(role: &str, s: &RunSummary) {
    println!(
        "{role}: session {} done: {} epochs, {} steps, {} examples in {:.1} s ({:.0} examples/s)",
        s.session_id,
        s.epochs,
        s.steps,
        s.examples,
        s.seconds,
        s.examples as f64 / s.seconds.max(1e-9)
    );
    if let Some(m) = &s.last_epoch {
        println!(
            "{role}: mean loss {:.4}; last epoch: AUC {}, log loss {:.4}, KS {}",
            s.mean_loss,
            super::four(m.auc),
            m.log_loss,
            super::four(m.ks)
        );
    }
    if let Some(step) = s.resumed_from {
        println!("{role}: resumed from the checkpoint of step {step}");
    }
    if let Some(d) = &s.export_dir {
        println!("{role}: model exported to {}", d.display());
    }
    if s.skipped_records > 0 {
        println!("{role}: skipped {} bad records", s.skipped_records);
    }
}

pub fn leader(a: LeaderArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.peer_addr {
        tracing::info!(peer_addr = %p, "--peer-addr is ignored by the leader: it listens on --local-addr and the follower dials it");
    }
    run_as_leader(&a.common, a.local_addr, &a.lead)
}

fn run_as_leader(common: &Common, local_addr: String, lead: &LeaderOnly) -> anyhow::Result<()> {
    let cfg = config(common, local_addr, "leader")?;
    anyhow::ensure!(
        cfg.checkpoint_path.is_some() || (lead.save_checkpoint_steps.is_none() && lead.save_checkpoint_secs.is_none()),
        "--save-checkpoint-steps/--save-checkpoint-secs need --checkpoint-path"
    );
    let task = match common.mode {
        PartyMode::Eval => LeaderTask::Eval(LeaderEval {
            load_model: common.load_model.clone(),
            predictions_path: lead.predictions_path.clone(),
        }),
        _ => LeaderTask::Train(LeaderTrain {
            epochs: lead.epoch_num.max(1),
            shuffle_seed: lead.shuffle.then_some(lead.seed),
            save_every_steps: lead.save_checkpoint_steps,
            save_every_secs: lead.save_checkpoint_secs,
        }),
    };
    let progress = cfg.progress.clone();
    let session = run_leader(cfg, task, |addr| println!("leader: listening on {addr}"));
    run_session(common, "leader", progress, session)
}

pub fn follower(a: FollowerArgs) -> anyhow::Result<()> {
    if let Some(l) = &a.local_addr {
        tracing::info!(local_addr = %l, "--local-addr is ignored by the follower: it dials the leader at --peer-addr");
    }
    run_as_follower(&a.common, a.peer_addr)
}

fn run_as_follower(common: &Common, peer_addr: String) -> anyhow::Result<()> {
    let cfg = config(common, peer_addr, "follower")?;
    let task = match common.mode {
        PartyMode::Eval => FollowerTask::Eval {
            load_model: common.load_model.clone(),
        },
        _ => FollowerTask::Train,
    };
    let progress = cfg.progress.clone();
    run_session(common, "follower", progress, run_follower(cfg, task))
}

pub fn party(mut a: PartyArgs) -> anyhow::Result<()> {
    if a.process != Process::Party {
        if let Some(j) = &a.join_path
            && j.join(vfl_join::output::REPORT).is_file()
        {
            a.common.data_path = j.clone();
            a.common.data_path_wildcard = None;
        }
        return scale_process(a.process, &a);
    }
    let leader = a.role == "leader";
    let addr = match (leader, &a.peer_addr) {
        (true, _) => a.local_addr.clone(),
        (false, Some(p)) => p.clone(),
        (false, None) => anyhow::bail!("the follower needs the leader's address: --peer-addr or VFL_PEER_ADDR"),
    };
    if a.common.mode == PartyMode::Join {
        let Some(out) = a.join_path.clone() else {
            anyhow::bail!("VFL_MODE=join needs --join-path (where the joined blocks go)");
        };
        let c = &a.common;
        let role = if leader {
            vfl_join::Role::Leader
        } else {
            vfl_join::Role::Follower
        };
        return super::join::side(
            role,
            &super::join::Common::defaults(
                c.data_path.clone(),
                c.data_path_wildcard.clone(),
                out,
                c.application_id.clone(),
                Some(c.model.clone()),
                c.peer_timeout,
                c.model_key.clone(),
                c.attest.clone(),
            ),
            &addr,
        );
    }
    if let Some(j) = &a.join_path
        && j.join(vfl_join::output::REPORT).is_file()
    {
        tracing::info!(path = %j.display(), "reading the joined blocks of the last join (--join-path)");
        a.common.data_path = j.clone();
        a.common.data_path_wildcard = None;
    }
    if leader {
        run_as_leader(&a.common, addr, &a.lead)
    } else {
        run_as_follower(&a.common, addr)
    }
}
