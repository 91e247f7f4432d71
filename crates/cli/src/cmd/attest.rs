//! Attestation flags of `vfl leader`/`vfl follower` (building the RA-TLS
//! transport) and the `vfl attest` tools.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use vfl_attest::collateral::FileCollateral;
use vfl_attest::freshness::Freshness;
use vfl_attest::policy::write::{self, TrustOptions};
use vfl_attest::seal::Sealer;
use vfl_attest::setup::{self, Collateral, Evidence, Setup};
use vfl_attest::verify::{Root, verify_quote};
use vfl_attest::{Attester, Clock, Identity, Mode, PartyRole, Policy, SgxAttester, TdxAttester, Verifier};
use vfl_bridge::{OnReject, RaTls, Security};

/// Where this process's evidence comes from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attestation {
    /// An SGX enclave under Gramine (/dev/attestation, DCAP quotes).
    Sgx,
    /// A TDX confidential VM (configfs-tsm, DCAP quotes).
    Tdx,
    /// A development PKI's SGX-format quotes (development builds only).
    #[cfg(feature = "dev")]
    Simulated,
    /// A development PKI's TDX-format quotes (development builds only).
    #[cfg(feature = "dev")]
    SimulatedTdx,
}

impl Attestation {
    /// Whether the evidence comes from TEE hardware.
    pub fn is_hardware(self) -> bool {
        matches!(self, Attestation::Sgx | Attestation::Tdx)
    }
}

/// How this process proves itself and judges its peer.
#[derive(clap::Args, Debug, Clone)]
pub struct Flags {
    /// Evidence source: `sgx` (Gramine's /dev/attestation, DCAP quotes),
    /// `tdx` (a TDX guest's configfs-tsm, DCAP quotes) or, in development
    /// builds only, `simulated` / `simulated-tdx` (SGX- or TDX-format quotes
    /// from a development PKI: no hardware protection, accepted only by
    /// policies with allow_simulated, this root listed and entries marked
    /// simulated).
    #[arg(long, value_enum, default_value = "sgx")]
    pub attestation: Attestation,
    /// Policy deciding which peer enclaves are accepted (the original's
    /// dynamic_config.json format). Default: ./dynamic_config.json.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Collateral for verifying hardware quotes (QuoteCollateralV3 JSON,
    /// e.g. fetched from your PCCS).
    #[arg(long, conflicts_with = "pccs_url")]
    pub collateral: Option<PathBuf>,
    /// PCCS (or Intel PCS) base URL to fetch collateral for hardware quotes
    /// from (API v4), e.g. https://pccs.example:8081. Fetched on first need,
    /// cached on disk, refreshed in the background.
    #[arg(long, env = "VFL_PCCS_URL")]
    pub pccs_url: Option<String>,
    /// CA certificate (PEM) of a PCCS with a private certificate; default:
    /// the public web roots.
    #[arg(long, requires = "pccs_url")]
    pub pccs_ca: Option<PathBuf>,
    /// Directory of the collateral cache.
    #[arg(long, default_value = "vfl-collateral-cache")]
    pub collateral_cache: PathBuf,
    /// Seconds between background refreshes of cached collateral.
    #[arg(long, default_value_t = 3600)]
    pub pccs_refresh_secs: u64,
    /// Where Gramine's attestation pseudo-files are.
    #[arg(long, default_value = SgxAttester::DEVICE_ROOT)]
    pub attestation_device: PathBuf,
    /// `--attestation tdx`: the configfs-tsm report directory.
    #[arg(long, default_value = TdxAttester::REPORT_ROOT)]
    pub tsm_report_root: PathBuf,
    /// Simulated mode: the development root key (PKCS#8 PEM; created,
    /// mode 0600, if missing). Its fingerprint goes into the peer's
    /// simulated_roots.
    #[cfg(feature = "dev")]
    #[arg(long, default_value = "vfl-dev-root.pem")]
    pub sim_root_key: PathBuf,
    /// Simulated mode: mr_enclave to claim (hex; default SHA-256 of this binary).
    #[cfg(feature = "dev")]
    #[arg(long)]
    pub sim_mr_enclave: Option<String>,
    /// Simulated mode: mr_signer to claim (hex; default SHA-256 of the
    /// development root's public key).
    #[cfg(feature = "dev")]
    #[arg(long)]
    pub sim_mr_signer: Option<String>,
    /// Simulated mode: isv_prod_id to claim.
    #[cfg(feature = "dev")]
    #[arg(long, default_value_t = 1)]
    pub sim_isv_prod_id: u16,
    /// Simulated mode: isv_svn to claim.
    #[cfg(feature = "dev")]
    #[arg(long, default_value_t = 1)]
    pub sim_isv_svn: u16,
    /// Simulated TDX: mr_td to claim (96 hex digits; default SHA-384 of this binary).
    #[cfg(feature = "dev")]
    #[arg(long)]
    pub sim_mr_td: Option<String>,
    /// What to do when the peer's evidence is refused (or ours is): `exit`
    /// with the reason, or `retry` until --peer-timeout.
    #[arg(long, value_parser = ["exit", "retry"], default_value = "exit")]
    pub on_reject: String,
    /// Talk to the peer over plaintext gRPC, without TLS or attestation.
    /// Anyone on the network path can read and alter the traffic.
    /// Development builds only.
    #[cfg(feature = "dev")]
    #[arg(long)]
    pub insecure_no_tls: bool,
}

impl Flags {
    /// Whether the user asked for plaintext (development builds only).
    pub fn insecure(&self) -> bool {
        #[cfg(feature = "dev")]
        {
            self.insecure_no_tls
        }
        #[cfg(not(feature = "dev"))]
        {
            false
        }
    }
}

#[cfg(feature = "dev")]
fn hex_n<const N: usize>(s: &str, flag: &str) -> anyhow::Result<[u8; N]> {
    let b = hex::decode(s).with_context(|| format!("{flag}: not hex"))?;
    <[u8; N]>::try_from(b.as_slice()).map_err(|_| anyhow::anyhow!("{flag}: need {} hex digits, got {}", 2 * N, s.len()))
}

/// Where the flags say this process's evidence comes from.
fn evidence(f: &Flags) -> anyhow::Result<Evidence> {
    Ok(match f.attestation {
        Attestation::Sgx => Evidence::Sgx {
            device: f.attestation_device.clone(),
        },
        Attestation::Tdx => Evidence::Tdx {
            report_root: f.tsm_report_root.clone(),
        },
        #[cfg(feature = "dev")]
        Attestation::Simulated => Evidence::Simulated {
            root_key: f.sim_root_key.clone(),
            claims: vfl_attest::setup::SimClaims {
                mr_enclave: f
                    .sim_mr_enclave
                    .as_deref()
                    .map(|h| hex_n(h, "--sim-mr-enclave"))
                    .transpose()?,
                mr_signer: f
                    .sim_mr_signer
                    .as_deref()
                    .map(|h| hex_n(h, "--sim-mr-signer"))
                    .transpose()?,
                isv_prod_id: f.sim_isv_prod_id,
                isv_svn: f.sim_isv_svn,
            },
        },
        #[cfg(feature = "dev")]
        Attestation::SimulatedTdx => Evidence::SimulatedTdx {
            root_key: f.sim_root_key.clone(),
            mr_td: f.sim_mr_td.as_deref().map(|h| hex_n(h, "--sim-mr-td")).transpose()?,
        },
    })
}

/// The attester the flags describe.
pub fn attester(f: &Flags) -> anyhow::Result<Box<dyn Attester>> {
    let ev = evidence(f)?;
    let a = with_root_notice(f, || setup::attester(&ev));
    Ok(match f.attestation {
        Attestation::Sgx => a.context(
            "--attestation sgx (the default) needs a Gramine SGX enclave; for development without SGX use \
             --attestation simulated (development builds)",
        )?,
        Attestation::Tdx => a.context(
            "--attestation tdx needs a TDX guest (configfs-tsm); for development without TDX use \
             --attestation simulated-tdx (development builds)",
        )?,
        #[cfg(feature = "dev")]
        Attestation::Simulated | Attestation::SimulatedTdx => a?,
    })
}

/// Runs `make` (which may create the development root key of simulated
/// evidence) and says on stderr if the key was created.
fn with_root_notice<T>(f: &Flags, make: impl FnOnce() -> T) -> T {
    #[cfg(feature = "dev")]
    {
        let simulated = !f.attestation.is_hardware();
        let existed = f.sim_root_key.exists();
        let out = make();
        if simulated && !existed && f.sim_root_key.exists() {
            eprintln!(
                "created development root key {} (keep it private)",
                f.sim_root_key.display()
            );
        }
        out
    }
    #[cfg(not(feature = "dev"))]
    {
        let _ = f;
        make()
    }
}

fn policy_path(f: &Flags) -> anyhow::Result<PathBuf> {
    match &f.policy {
        Some(p) => Ok(p.clone()),
        None if Path::new("dynamic_config.json").exists() => Ok(PathBuf::from("dynamic_config.json")),
        None => bail!(
            "no policy: give --policy FILE (no dynamic_config.json in the working directory); \
             `vfl attest self` prints the entry a peer needs"
        ),
    }
}

fn warn_simulated() {
    eprintln!(
        "WARNING: SIMULATED ATTESTATION. This process runs outside any enclave; its quotes are signed by a \
         development key, not by Intel. Nothing protects its data from the host. Only policies that set \
         allow_simulated and list this development root accept it."
    );
}

/// A TD has no sealing key: its state needs an explicit key from a file or
/// the environment (never `none`, which would leave it in plaintext on the
/// host's disk, nor `sgx-mrenclave`, which would read an ordinary file in a
/// TD).
pub fn check_tdx_model_key(f: &Flags, model_key: Option<&str>) -> anyhow::Result<()> {
    let explicit = model_key.is_some_and(|k| k.starts_with("file:") || k.starts_with("env:"));
    if f.attestation == Attestation::Tdx && !explicit {
        bail!(
            "--attestation tdx: a TD has no sealing key (SGX derives one from the CPU for one enclave), and its \
             state must not reach the disk in plaintext; give --model-key file:PATH or env:VAR with a key only \
             this TD can read (e.g. on its encrypted disk, unlocked by the TD's measured boot; see docs/tdx.md)"
        );
    }
    Ok(())
}

/// The checks that need nothing but the flags, before any key is opened:
/// a policy file is named, a TD has a model key, and hardware evidence has
/// its device (so that the first error outside an enclave or TD says what
/// to do).
pub fn preflight(f: &Flags, model_key: Option<&str>) -> anyhow::Result<()> {
    if f.insecure() {
        return Ok(());
    }
    policy_path(f)?;
    check_tdx_model_key(f, model_key)?;
    if f.attestation.is_hardware() {
        attester(f)?;
    }
    Ok(())
}

/// Where the flags say collateral for hardware quotes comes from.
fn collateral_source(f: &Flags) -> anyhow::Result<Collateral> {
    Ok(match (&f.collateral, &f.pccs_url) {
        (Some(p), _) => Collateral::File(p.clone()),
        (None, Some(url)) => Collateral::Pccs {
            url: url.clone(),
            ca_pem: match &f.pccs_ca {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
                None => None,
            },
            cache: f.collateral_cache.clone(),
            refresh: std::time::Duration::from_secs(f.pccs_refresh_secs),
        },
        (None, None) => Collateral::None,
    })
}

/// The transport security the flags ask for; `sealer` keeps the collateral
/// high-water marks sealed on disk.
pub fn security(f: &Flags, sealer: Option<&Arc<Sealer>>) -> anyhow::Result<Security> {
    if f.insecure() {
        eprintln!(
            "WARNING: --insecure-no-tls: the peer connection is neither encrypted nor attested; anyone on the \
             network path can read and alter the training traffic"
        );
        return Ok(Security::Insecure);
    }
    let setup = Setup {
        evidence: evidence(f)?,
        policy: policy_path(f)?,
        collateral: collateral_source(f)?,
        collateral_cache: f.collateral_cache.clone(),
    };
    if !f.attestation.is_hardware() {
        // Before anything is issued or verified, as loud as it can be.
        warn_simulated();
    }
    let parts = with_root_notice(f, || setup::build(&setup, sealer))?;
    Ok(Security::RaTls(Arc::new(RaTls {
        server: parts.server,
        client: parts.client,
        verifier: parts.verifier,
        ours: parts.ours,
        on_reject: if f.on_reject == "retry" {
            OnReject::Retry
        } else {
            OnReject::Exit
        },
    })))
}

// ---------------------------------------------------------------- vfl attest

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Verify a quote with its collateral and print the report as JSON;
    /// with --policy also apply the policy. Exits non-zero on failure.
    Verify(VerifyArgs),
    /// Print this process's own evidence identity and mode as JSON, plus
    /// the sgx_mrs entry (tdx_mrs entry for a TD) and development root a
    /// peer's policy needs.
    #[command(name = "self")]
    Self_(Box<SelfArgs>),
    /// Compute mr_signer from an enclave signing key (RSA-3072 PEM, private
    /// or public): SHA-256 of the modulus, little-endian.
    Mrsigner(MrsignerArgs),
    /// Write a party's identity file (role and the mr_signer of its enclave
    /// signing key) for the peer to `trust`.
    Party(PartyIdentityArgs),
    /// Measure mutual RA-TLS handshakes (simulated evidence, full dcap-qvl
    /// verification on both sides) over loopback.
    #[cfg(feature = "dev")]
    Bench(BenchArgs),
    /// Add a party's identity file (from `vfl attest party`, `vfl-sgx.sh
    /// keygen`/`make` or `vfl attest self`) to a policy file as a
    /// role-specific sgx_mrs entry (a TD's identity file: a tdx_mrs entry):
    /// no hex copied by hand. The policy is
    /// rewritten atomically in a canonical form (two parties who trust the
    /// same identities get byte-identical files, hence the same
    /// MRENCLAVE) and must still parse.
    Trust(TrustArgs),
}

#[derive(clap::Args, Debug)]
pub struct TrustArgs {
    /// The party's identity file (JSON with role and mr_signer; optional
    /// mr_enclave (default "self": the same enclave as ours), isv_prod_id,
    /// isv_svn, mode).
    #[arg(long)]
    identity: PathBuf,
    /// The role the identity is trusted as (default: the file's "role").
    #[arg(long, value_parser = ["leader", "follower"])]
    role: Option<String>,
    /// The policy to update (created, pinning enclave, signer, product id
    /// and version, if missing).
    #[arg(long, default_value = "dynamic_config.json")]
    policy: PathBuf,
    /// Accept the identity's isv_svn or newer (min_isv_svn) instead of exactly it.
    #[arg(long)]
    min_svn: bool,
    /// Pin the MRENCLAVE the identity file names instead of "self" (our own
    /// enclave). Only for arrangements where the peer runs other code than
    /// ours, which SGX parties refuse; never for a file you did not check.
    #[arg(long)]
    pin_enclave: bool,
}

#[derive(clap::Args, Debug)]
pub struct PartyIdentityArgs {
    /// This party's role.
    #[arg(long, value_parser = ["leader", "follower"])]
    role: String,
    /// This party's enclave signing key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The enclave's product id and security version.
    #[arg(long, default_value_t = 1)]
    isv_prod_id: u16,
    #[arg(long, default_value_t = 1)]
    isv_svn: u16,
    /// Where to write the identity file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[cfg(feature = "dev")]
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Handshakes to time (after 3 warm-up ones).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Instead: time handshakes through the real server path (accept loop,
    /// limits) with and without this many junk connections held open from
    /// as many loopback addresses (127.0.1.x), in alternating rounds.
    #[arg(long)]
    junk: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The quote (raw bytes).
    #[arg(long)]
    quote: PathBuf,
    /// Its collateral (QuoteCollateralV3 JSON).
    #[arg(long)]
    collateral: PathBuf,
    /// Verify as of this time (RFC 3339, e.g. 2025-06-20T00:00:00Z) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Also apply this policy (TCB status and evaluation floor, attributes, identity).
    #[arg(long)]
    policy: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SelfArgs {
    #[command(flatten)]
    flags: Flags,
    /// The role this identity plays (recorded in the printed entry).
    #[arg(long, value_parser = ["leader", "follower"])]
    role: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct MrsignerArgs {
    /// The signing key (PEM).
    #[arg(long)]
    key: PathBuf,
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Verify(a) => verify(a),
        Command::Self_(a) => self_(*a),
        #[cfg(feature = "dev")]
        Command::Bench(a) => bench(a),
        Command::Trust(a) => trust(a),
        Command::Party(a) => party_identity(a),
        Command::Mrsigner(a) => {
            let pem = std::fs::read(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
            let m = vfl_attest::mrsigner::from_pem(&pem).with_context(|| a.key.display().to_string())?;
            println!("{}", hex::encode(m));
            Ok(())
        }
    }
}

fn parse_time(s: &str) -> anyhow::Result<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--at {s:?}: not an RFC 3339 time"))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| anyhow::anyhow!("--at {s:?}: before 1970"))
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let quote = std::fs::read(&a.quote).with_context(|| format!("reading {}", a.quote.display()))?;
    let coll = FileCollateral::load(&a.collateral)?;
    let now = match &a.at {
        Some(s) => parse_time(s)?,
        None => Clock::System.now(),
    };
    let report = verify_quote(&quote, coll.collateral(), &Root::Intel, now)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.quote.display()))?;
    let mut out = serde_json::to_value(&report)?;
    if let Some(p) = &a.policy {
        let v = Verifier::new(Policy::load(p)?, None, Clock::Fixed(now));
        let entries = v
            .appraise(&report, Mode::hardware(report.tee_type))
            .map_err(|e| anyhow::anyhow!("{}: refused by {}: {e}", a.quote.display(), p.display()))?;
        out["policy"] = serde_json::json!({
            "file": p.display().to_string(),
            "list": report.tee_type.policy_list(),
            "matched_entries": entries,
            "admitted_as": v.policy().roles_of(report.tee_type, &entries),
        });
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn role_arg(r: Option<&str>) -> anyhow::Result<Option<PartyRole>> {
    r.map(|r| r.parse::<PartyRole>().map_err(anyhow::Error::msg))
        .transpose()
}

fn self_(a: SelfArgs) -> anyhow::Result<()> {
    let attester = attester(&a.flags)?;
    let simulated = attester.mode() == Mode::Simulated;
    if simulated {
        warn_simulated();
    }
    let cert = vfl_attest::cert::issue(attester.as_ref())?;
    // A hardware quote came back through the host: print only what dcap-qvl
    // verified when collateral is at hand, and say so when it is not.
    let collateral = match simulated {
        true => None,
        false => setup::collateral(&collateral_source(&a.flags)?, &Arc::new(Freshness::in_memory()))?,
    };
    let verified = match &collateral {
        Some(c) => Some(setup::verified_own(&cert, Some(c.as_ref())).context("verifying our own quote")?),
        None => None,
    };
    if !simulated && verified.is_none() {
        eprintln!(
            "WARNING: our own quote was not verified (no --collateral or --pccs-url): the host relays quotes and \
             could have altered the identity printed here; verify it before a peer pins it"
        );
    }
    let identity = verified.as_ref().unwrap_or(&cert.identity);
    let role = role_arg(a.role.as_deref())?;
    let mut out = match identity {
        Identity::Sgx(id) => serde_json::json!({
            "mode": cert.mode,
            "tee_type": "sgx",
            "mr_enclave": hex::encode(id.mr_enclave),
            "mr_signer": hex::encode(id.mr_signer),
            "isv_prod_id": id.isv_prod_id,
            "isv_svn": id.isv_svn,
            "debug": id.is_debug(),
            "sgx_mrs_entry": write::sgx_entry(id, role, simulated),
            "verified": verified.is_some(),
        }),
        Identity::Tdx(id) => {
            let mut out = serde_json::to_value(id)?;
            out["mode"] = serde_json::to_value(cert.mode)?;
            out["tee_type"] = "tdx".into();
            out["debug"] = id.is_debug().into();
            out["tdx_mrs_entry"] = write::td_entry(id, role, simulated);
            out["verified"] = verified.is_some().into();
            out
        }
    };
    if let Some(r) = role {
        out["role"] = r.as_str().into();
    }
    if let Some(sim) = attester.sim_evidence() {
        out["simulated_root"] = hex::encode(vfl_attest::verify::dev_root_fingerprint(&sim.root_der)?).into();
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn party_identity(a: PartyIdentityArgs) -> anyhow::Result<()> {
    let pem = std::fs::read(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
    let signer = vfl_attest::mrsigner::from_pem(&pem).with_context(|| a.key.display().to_string())?;
    let role: PartyRole = a.role.parse().map_err(anyhow::Error::msg)?;
    let text = write::party_identity(role, &signer, a.isv_prod_id, a.isv_svn);
    match &a.out {
        Some(p) => {
            vfl_fs::write_atomic(p, |w| w.write_all(text.as_bytes()))
                .with_context(|| format!("writing {}", p.display()))?;
            eprintln!(
                "{}: the {} identity (mr_signer {}): send it to the peer",
                p.display(),
                a.role,
                hex::encode(signer)
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(feature = "dev")]
fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("vfl-attest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = match a.junk {
        Some(junk) => flood_bench_in(&dir, junk, a.iterations),
        None => bench_in(&dir, a.iterations),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Simulated RA-TLS of this binary accepting itself (bench only).
#[cfg(feature = "dev")]
fn bench_security(dir: &Path) -> anyhow::Result<Arc<RaTls>> {
    let (key, policy_path) = self_accepting_sim_policy(dir)?;
    let flags = sim_flags(&key, &policy_path, None);
    match security(&flags, None)? {
        Security::RaTls(tls) => Ok(tls),
        Security::Insecure => bail!("expected RA-TLS"),
    }
}

/// Handshake latency through the real server path, in alternating rounds
/// without and with `junk` connections held open (half-open: connected,
/// silent, from `junk` loopback addresses, reopened when the server closes
/// them at its deadline).
#[cfg(feature = "dev")]
fn flood_bench_in(dir: &Path, junk: usize, iterations: usize) -> anyhow::Result<()> {
    let tls = bench_security(dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (quiet, flooded) = rt.block_on(async {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        vfl_bridge::secure::serve_echo(tcp, tls.clone());
        for _ in 0..3 {
            vfl_bridge::secure::echo_handshake(&tls, addr)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
        let rounds = 5;
        let per_round = iterations.div_ceil(rounds).max(1);
        for _ in 0..rounds {
            for _ in 0..per_round {
                quiet.push(
                    vfl_bridge::secure::echo_handshake(&tls, addr)
                        .await
                        .map_err(anyhow::Error::msg)?,
                );
            }
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let holders: Vec<_> = (0..junk)
                .map(|i| {
                    let stop = stop.clone();
                    let src: std::net::SocketAddr = format!("127.0.1.{}:0", i % 250 + 1).parse().unwrap_or(addr);
                    tokio::spawn(async move {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
                                return;
                            };
                            let _ = sock.set_reuseaddr(true);
                            if sock.bind(src).is_err() {
                                return;
                            }
                            let Ok(mut s) = sock.connect(addr).await else {
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                continue;
                            };
                            // Held, silent, until the server's deadline closes it.
                            let mut b = [0u8; 1];
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_secs(30),
                                tokio::io::AsyncReadExt::read(&mut s, &mut b),
                            )
                            .await;
                        }
                    })
                })
                .collect();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            for _ in 0..per_round {
                flooded.push(
                    vfl_bridge::secure::echo_handshake(&tls, addr)
                        .await
                        .map_err(anyhow::Error::msg)?,
                );
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for h in holders {
                h.abort();
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        Ok::<_, anyhow::Error>((quiet, flooded))
    })?;
    let median = |mut v: Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let (q, f) = (median(quiet), median(flooded));
    println!(
        "handshake through the server path: median {q:.2} ms quiet, {f:.2} ms with {junk} junk connections held open (ratio {:.2})",
        f / q
    );
    Ok(())
}

/// A development root and a policy accepting this binary in simulated
/// mode, in `dir` (see [`write::self_accepting_sim`]).
#[cfg(feature = "dev")]
pub fn self_accepting_sim_policy(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    Ok(write::self_accepting_sim(dir)?)
}

/// RA-TLS of a process claiming simulated evidence from `key` under
/// `signer` (hex), admitted by `policy`: the in-process side of a demo whose
/// other processes run with the same flags (`--sim-mr-signer`).
#[cfg(feature = "dev")]
pub fn sim_security(key: &Path, policy: &Path, signer: &str) -> anyhow::Result<Security> {
    security(&sim_flags(key, policy, Some(signer)), None)
}

/// The flags of simulated evidence from `key`, admitted by `policy`,
/// claiming `signer` (default: the root's).
#[cfg(feature = "dev")]
fn sim_flags(key: &Path, policy: &Path, signer: Option<&str>) -> Flags {
    Flags {
        attestation: Attestation::Simulated,
        policy: Some(policy.to_path_buf()),
        collateral: None,
        pccs_url: None,
        pccs_ca: None,
        collateral_cache: policy.with_file_name("cache"),
        pccs_refresh_secs: 3600,
        attestation_device: PathBuf::from(SgxAttester::DEVICE_ROOT),
        tsm_report_root: PathBuf::from(TdxAttester::REPORT_ROOT),
        sim_root_key: key.to_path_buf(),
        sim_mr_enclave: None,
        sim_mr_signer: signer.map(str::to_string),
        sim_isv_prod_id: 1,
        sim_isv_svn: 1,
        sim_mr_td: None,
        on_reject: "exit".into(),
        insecure_no_tls: false,
    }
}

#[cfg(feature = "dev")]
fn bench_in(dir: &Path, iterations: usize) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let tls = bench_security(dir)?;
    let setup = t.elapsed();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut times = rt.block_on(async {
        for _ in 0..3 {
            vfl_bridge::secure::loopback_handshake(&tls)
                .await
                .map_err(anyhow::Error::msg)?;
        }
        let mut v = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            v.push(
                vfl_bridge::secure::loopback_handshake(&tls)
                    .await
                    .map_err(anyhow::Error::msg)?,
            );
        }
        Ok::<_, anyhow::Error>(v)
    })?;
    times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "setup (policy, attester, key + certificate with two quotes): {:.1} ms",
        ms(setup)
    );
    println!(
        "mutual RA-TLS handshake incl. verification of both peers, {} runs: median {:.2} ms, p90 {:.2} ms, min {:.2} ms",
        times.len(),
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(times[0])
    );
    Ok(())
}

fn trust(a: TrustArgs) -> anyhow::Result<()> {
    let name = a.identity.display().to_string();
    let text = std::fs::read(&a.identity).with_context(|| format!("reading {name}"))?;
    let opts = TrustOptions {
        role: role_arg(a.role.as_deref())?,
        min_svn: a.min_svn,
        pin_enclave: a.pin_enclave,
    };
    let t = write::trust(&a.policy, &name, &text, opts)?;
    if let Some(m) = &t.replaced_enclave {
        eprintln!(
            "{name}: names mr_enclave {m}; trusting the peer's copy of our own enclave (\"self\") instead \
             (--pin-enclave pins the file's value)"
        );
    }
    let (policy, role, what) = (a.policy.display(), t.role, t.what);
    if t.added {
        println!(
            "{policy}: now trusts the {role} {what} (policy digest {}; the policy is measured: both parties must \
             hold this same file, then run `make`)",
            t.digest
        );
    } else {
        println!("{policy} already trusts the {role} {what}");
    }
    Ok(())
}
