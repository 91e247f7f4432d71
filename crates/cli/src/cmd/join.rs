//! `vfl join leader|follower`: sample alignment between the two enclaves.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use vfl_attest::seal::Context;
use vfl_bridge::Security;
use vfl_join::input::OutputFormat;
use vfl_join::output::OutputSealing;
use vfl_join::protocol::Dedupe;
use vfl_join::{JoinConfig, JoinSummary, Role};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// The leader's side: listens for the follower.
    Leader(LeaderArgs),
    /// The follower's side: connects to the leader.
    Follower(FollowerArgs),
}

#[derive(clap::Args, Debug)]
pub struct LeaderArgs {
    /// Address to listen on for the follower.
    #[arg(long, env = "VFL_LOCAL_ADDR", default_value = "0.0.0.0:50051")]
    local_addr: String,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug)]
pub struct FollowerArgs {
    /// The leader's address.
    #[arg(long, env = "VFL_PEER_ADDR")]
    peer_addr: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FormatArg {
    Tfrecord,
    Csv,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DedupeArg {
    /// A duplicate id fails the join, naming both places.
    Error,
    /// Keep the first row of each id (in input order).
    First,
}

#[derive(clap::Args, Debug)]
pub struct Common {
    /// Directory of this party's raw data blocks (TFRecord, GZIP TFRecord
    /// or CSV with an `example_id` or `id` column), rows in any order.
    #[arg(long)]
    data_path: PathBuf,
    /// Wildcard selecting data files under --data-path (as training).
    #[arg(long)]
    data_path_wildcard: Option<String>,
    /// Directory for the joined blocks; written only when both sides agree
    /// (replaces an earlier join's output, never anything else).
    #[arg(long)]
    output_path: PathBuf,
    /// Job id; both sides must use the same.
    #[arg(long, default_value = "vfl")]
    application_id: String,
    /// The model the joined data is for (preset or spec file): every input
    /// row is checked against this party's features in it, so that a row
    /// training would refuse fails the join, joined or not. Without it only
    /// ids are checked, and a malformed row that gets joined fails
    /// training, which tells this party's operator that it was joined.
    #[arg(long)]
    model: Option<String>,
    /// Rows per joined block; both sides must use the same.
    #[arg(long, default_value_t = 16384)]
    rows_per_block: u64,
    /// Format of the joined blocks: tfrecord (CSV rows are converted), or
    /// csv (CSV input only).
    #[arg(long, value_enum, default_value = "tfrecord")]
    output_format: FormatArg,
    /// What to do with an id that appears twice in this party's input.
    #[arg(long, value_enum, default_value = "error")]
    dedupe: DedupeArg,
    /// Memory for partitions and buffers (K, M, G suffixes); input beyond
    /// it is spilled in encrypted partitions.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    memory_limit: u64,
    /// Seconds to wait for the peer to appear and for any message from it.
    #[arg(long, default_value_t = 120)]
    peer_timeout: u64,
    /// Sealing key of the joined blocks, as for training (`sgx-mrenclave`
    /// in SGX, the default there; development builds also take
    /// `file:PATH`, `env:VAR` and `none`).
    #[arg(long, env = "VFL_MODEL_KEY")]
    model_key: Option<String>,
    #[command(flatten)]
    attest: super::attest::Flags,
}

impl Common {
    /// A join with the defaults, for `vfl party` with VFL_MODE=join (whose
    /// command line is fixed in the enclave's manifest).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn defaults(
        data_path: PathBuf,
        data_path_wildcard: Option<String>,
        output_path: PathBuf,
        application_id: String,
        model: Option<String>,
        peer_timeout: u64,
        model_key: Option<String>,
        attest: super::attest::Flags,
    ) -> Self {
        Common {
            data_path,
            data_path_wildcard,
            output_path,
            application_id,
            model,
            rows_per_block: 16384,
            output_format: FormatArg::Tfrecord,
            dedupe: DedupeArg::Error,
            memory_limit: 256 << 20,
            peer_timeout,
            model_key,
            attest,
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 256M)"))?;
    n.checked_mul(mult)
        .filter(|&v| v >= 1 << 16)
        .ok_or_else(|| format!("`{s}`: a memory limit from 64K up"))
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Leader(a) => side(Role::Leader, &a.common, &a.local_addr),
        Command::Follower(a) => side(Role::Follower, &a.common, &a.peer_addr),
    }
}

pub(crate) fn side(role: Role, c: &Common, addr: &str) -> anyhow::Result<()> {
    super::attest::preflight(&c.attest, c.model_key.as_deref())?;
    let seal = super::party::sealer_for(&c.attest, c.model_key.as_deref())?;
    let security = super::attest::security(&c.attest, seal.as_ref())?;
    let tls = match &security {
        Security::RaTls(tls) => tls.clone(),
        Security::Insecure => return Err(vfl_join::JoinError::NoTls.into()),
    };
    let data = vfl_data::DataDir::scan(&c.data_path, c.data_path_wildcard.as_deref())
        .with_context(|| format!("reading --data-path {}", c.data_path.display()))?;
    let sealing = seal.map(|sealer| OutputSealing {
        sealer,
        context: Context::joined_block(&c.application_id, role.name(), &security.policy_digest()),
    });
    match &sealing {
        Some(s) => tracing::info!(key_id = %s.sealer.key_id(), "joined blocks are sealed"),
        None => tracing::warn!("joined blocks are written in plaintext (no --model-key)"),
    }
    let schema = match &c.model {
        Some(m) => {
            let spec = vfl_nn::ModelSpec::resolve(m).with_context(|| format!("--model {m}"))?;
            let r = match role {
                Role::Leader => vfl_nn::Role::Leader,
                Role::Follower => vfl_nn::Role::Follower,
            };
            Some(vfl_trainer::schema_for(&spec, r))
        }
        None => {
            tracing::warn!(
                "no --model: rows are checked for their ids only; a malformed row that is joined fails \
                 training later, which tells this party's operator that the row was joined"
            );
            None
        }
    };
    let cfg = JoinConfig {
        role,
        data,
        output: c.output_path.clone(),
        application_id: c.application_id.clone(),
        rows_per_block: c.rows_per_block,
        format: match c.output_format {
            FormatArg::Tfrecord => OutputFormat::TfRecord,
            FormatArg::Csv => OutputFormat::Csv,
        },
        dedupe: match c.dedupe {
            DedupeArg::Error => Dedupe::Refuse,
            DedupeArg::First => Dedupe::First,
        },
        memory_limit: c.memory_limit,
        peer_timeout: Duration::from_secs(c.peer_timeout),
        sealing,
        schema,
    };
    let wait = cfg.peer_timeout;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = rt.block_on(async move {
        match role {
            Role::Leader => {
                let (io, key) =
                    vfl_join::net::accept(addr, tls, wait, |a| println!("join leader: listening on {a}")).await?;
                vfl_join::protocol::run(cfg, io, key).await
            }
            Role::Follower => {
                let (io, key) = vfl_join::net::connect(addr, tls, wait).await?;
                vfl_join::protocol::run(cfg, io, key).await
            }
        }
    })?;
    report(role, &summary, &c.output_path);
    Ok(())
}

fn report(role: Role, s: &JoinSummary, out: &std::path::Path) {
    let r = role.name();
    println!(
        "join {r}: {} rows read ({} duplicates dropped), the peer read {}; intersection {} rows in {} blocks at {} ({:.1} s, {:.0} rows/s)",
        s.rows,
        s.duplicates,
        s.peer_rows,
        s.intersection,
        s.blocks,
        out.display(),
        s.seconds,
        s.rows as f64 / s.seconds.max(1e-9)
    );
    println!(
        "join {r}: joined id order digest {} (the same on both sides); {} tag partition(s)",
        s.digest, s.partitions
    );
}
