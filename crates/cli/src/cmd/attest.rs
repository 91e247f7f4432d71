//! Attestation flags of `vfl leader`/`vfl follower` (building the RA-TLS
//! transport) and the `vfl attest` tools.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use vfl_attest::collateral::{CollateralProvider, FileCollateral};
#[cfg(feature = "dev")]
use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::freshness::{Freshness, MarkStore};
use vfl_attest::seal::Sealer;
use vfl_attest::tls::RaTlsVerifier;
use vfl_attest::verify::{Root, verify_quote};
use vfl_attest::{Attester, Clock, Identity, Mode, Policy, SgxAttester, TdxAttester, Verifier};
#[cfg(feature = "dev")]
use vfl_attest::{SimAttester, SimIdentity, SimTdIdentity};
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

/// The attester the flags describe.
pub fn attester(f: &Flags) -> anyhow::Result<Box<dyn Attester>> {
    match f.attestation {
        Attestation::Sgx => Ok(Box::new(SgxAttester::open(&f.attestation_device).context(
            "--attestation sgx (the default) needs a Gramine SGX enclave; for development without SGX use \
             --attestation simulated (development builds)",
        )?)),
        Attestation::Tdx => Ok(Box::new(TdxAttester::open(&f.tsm_report_root).context(
            "--attestation tdx needs a TDX guest (configfs-tsm); for development without TDX use \
             --attestation simulated-tdx (development builds)",
        )?)),
        #[cfg(feature = "dev")]
        sim @ (Attestation::Simulated | Attestation::SimulatedTdx) => {
            let (root, created) = DevRoot::load_or_create(&f.sim_root_key)?;
            if created {
                eprintln!(
                    "created development root key {} (keep it private)",
                    f.sim_root_key.display()
                );
            }
            if sim == Attestation::SimulatedTdx {
                let mut id = SimTdIdentity::of_running_binary()?;
                if let Some(h) = &f.sim_mr_td {
                    id.mr_td = hex_n(h, "--sim-mr-td")?;
                }
                return Ok(Box::new(SimAttester::new_tdx(
                    &root,
                    &id,
                    &SimPlatformOptions::fresh_tdx(Clock::System.now()),
                )?));
            }
            let mut id = SimIdentity::of_running_binary()?;
            if let Some(h) = &f.sim_mr_enclave {
                id.mr_enclave = hex_n(h, "--sim-mr-enclave")?;
            }
            if let Some(h) = &f.sim_mr_signer {
                id.mr_signer = Some(hex_n(h, "--sim-mr-signer")?);
            }
            id.isv_prod_id = f.sim_isv_prod_id;
            id.isv_svn = f.sim_isv_svn;
            Ok(Box::new(SimAttester::new(
                &root,
                &id,
                &SimPlatformOptions::fresh(Clock::System.now()),
            )?))
        }
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

/// The collateral high-water marks, sealed in the collateral cache.
struct SealedMarks {
    path: PathBuf,
    sealer: Arc<Sealer>,
    context: vfl_attest::seal::Context,
}

impl MarkStore for SealedMarks {
    fn load(&self) -> Result<Option<Vec<u8>>, String> {
        self.sealer
            .open_from_file(&self.path, &self.context)
            .map(|o| o.map(|(_, b)| b))
            .map_err(|e| e.to_string())
    }
    fn save(&self, bytes: &[u8]) -> Result<(), String> {
        self.sealer
            .seal_to_file(&self.path, &self.context, bytes)
            .map_err(|e| e.to_string())
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Where this party remembers the newest collateral it has seen: sealed
/// next to the collateral cache when files are sealed, else in memory.
fn freshness(f: &Flags, sealer: Option<&Arc<Sealer>>) -> anyhow::Result<Arc<Freshness>> {
    let Some(sealer) = sealer else {
        return Ok(Arc::new(Freshness::in_memory()));
    };
    let store = SealedMarks {
        path: f.collateral_cache.join("high-water.sealed"),
        sealer: sealer.clone(),
        context: vfl_attest::seal::Context::new("collateral high-water marks"),
    };
    Ok(Arc::new(
        Freshness::with_store(Box::new(store)).map_err(anyhow::Error::msg)?,
    ))
}

/// Where collateral for hardware quotes comes from: a file, a PCCS (fetched
/// on first need, cached, refreshed in the background), or nowhere.
fn collateral_source(f: &Flags, fresh: &Arc<Freshness>) -> anyhow::Result<Option<Arc<dyn CollateralProvider>>> {
    Ok(match (&f.collateral, &f.pccs_url) {
        (Some(p), _) => Some(Arc::new(FileCollateral::load(p)?)),
        (None, Some(url)) => {
            let ca = match &f.pccs_ca {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
                None => None,
            };
            let get = vfl_attest::pccs::http_client(ca.as_deref())?;
            let refresh = std::time::Duration::from_secs(f.pccs_refresh_secs.max(60));
            let p = vfl_attest::pccs::PccsCollateral::new(url, &f.collateral_cache, get, refresh)?;
            p.set_freshness(fresh.clone());
            p.spawn_refresher();
            Some(p)
        }
        (None, None) => None,
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
    let path = policy_path(f)?;
    let mut policy = Policy::load(&path)?;
    tracing::info!(policy = %path.display(), digest = %policy.digest_hex(), entries = policy.entries.len(), "attestation policy loaded");
    if policy.entries.is_empty() && policy.td_entries.is_empty() {
        tracing::warn!("the policy's sgx_mrs and tdx_mrs are empty: every peer will be refused");
    }
    let attester = attester(f)?;
    policy.check_usable_by(attester.mode(), &path.display().to_string())?;
    if policy.allows_simulated() {
        tracing::warn!("the policy accepts SIMULATED peers (allow_simulated): no hardware protection on their side");
    }
    if attester.mode() == Mode::Simulated {
        warn_simulated();
    }
    if !policy.release_exports.is_empty() {
        let roles: Vec<&str> = policy.release_exports.iter().map(|r| r.as_str()).collect();
        tracing::warn!(roles = %roles.join(","), "the policy releases exports of these parties in plaintext (if the peer's policy agrees)");
    }
    let fresh = freshness(f, sealer)?;
    let collateral = collateral_source(f, &fresh)?;
    if let Some(c) = &collateral {
        tracing::info!(source = %c.describe(), "collateral for hardware quotes");
    }
    let cert = vfl_attest::cert::issue(attester.as_ref())?;
    let ours = format!(
        "our {} evidence ({}): {}",
        cert.mode,
        cert.identity.tee(),
        cert.identity
    );
    tracing::info!("{ours}");
    if policy.uses_self() {
        // Bound only to what dcap-qvl verified of our own quote: the host
        // relays quotes and could alter the identity one claims.
        let own = vfl_attest::verify::verified_own_identity(
            &cert,
            collateral.as_deref(),
            Clock::System,
            std::time::Duration::from_secs(30),
        )
        .context("verifying our own quote before binding the policy's \"self\" entries")?;
        policy.bind_self(&own);
        tracing::info!("policy entries saying \"self\" accept peers with our own (verified) identity");
    }
    let verifier = RaTlsVerifier::new(Arc::new(Verifier::with_freshness(
        policy,
        collateral,
        Clock::System,
        fresh,
    )));
    let key = vfl_attest::tls::identity(&cert)?;
    Ok(Security::RaTls(Arc::new(RaTls {
        server: Arc::new(vfl_attest::tls::server_config(key.clone(), verifier.clone())?),
        client: Arc::new(vfl_attest::tls::client_config(key, verifier.clone())?),
        verifier,
        ours,
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

fn self_(a: SelfArgs) -> anyhow::Result<()> {
    let attester = attester(&a.flags)?;
    if attester.mode() == Mode::Simulated {
        warn_simulated();
    }
    let cert = vfl_attest::cert::issue(attester.as_ref())?;
    let simulated = attester.mode() == Mode::Simulated;
    // A hardware quote came back through the host: print only what dcap-qvl
    // verified when collateral is at hand, and say so when it is not.
    let collateral = match simulated {
        true => None,
        false => collateral_source(&a.flags, &Arc::new(Freshness::in_memory()))?,
    };
    let verified = match (&collateral, simulated) {
        (Some(c), false) => {
            let id = vfl_attest::verify::verified_own_identity(
                &cert,
                Some(c.as_ref()),
                Clock::System,
                std::time::Duration::from_secs(30),
            )
            .context("verifying our own quote")?;
            Some(id)
        }
        _ => None,
    };
    if !simulated && verified.is_none() {
        eprintln!(
            "WARNING: our own quote was not verified (no --collateral or --pccs-url): the host relays quotes and \
             could have altered the identity printed here; verify it before a peer pins it"
        );
    }
    let identity = verified.as_ref().unwrap_or(&cert.identity);
    let mut out = match identity {
        Identity::Sgx(id) => {
            let mut entry = serde_json::json!({
                "mr_enclave": hex::encode(id.mr_enclave),
                "mr_signer": hex::encode(id.mr_signer),
                "isv_prod_id": id.isv_prod_id.to_string(),
                "isv_svn": id.isv_svn.to_string(),
            });
            if let Some(r) = &a.role {
                entry["role"] = r.clone().into();
            }
            if simulated {
                entry["mode"] = "simulated".into();
            }
            serde_json::json!({
                "mode": cert.mode,
                "tee_type": "sgx",
                "mr_enclave": hex::encode(id.mr_enclave),
                "mr_signer": hex::encode(id.mr_signer),
                "isv_prod_id": id.isv_prod_id,
                "isv_svn": id.isv_svn,
                "debug": id.is_debug(),
                "sgx_mrs_entry": entry,
                "verified": verified.is_some(),
            })
        }
        Identity::Tdx(id) => {
            // What a peer pins: firmware, its configuration and ACPI tables,
            // kernel, initrd and command line.
            let mut entry = serde_json::json!({
                "mr_td": hex::encode(id.mr_td),
                "rtmr0": hex::encode(id.rtmr0),
                "rtmr1": hex::encode(id.rtmr1),
                "rtmr2": hex::encode(id.rtmr2),
            });
            if let Some(r) = &a.role {
                entry["role"] = r.clone().into();
            }
            if simulated {
                entry["mode"] = "simulated".into();
            }
            let mut out = serde_json::to_value(id)?;
            out["mode"] = serde_json::to_value(cert.mode)?;
            out["tee_type"] = "tdx".into();
            out["debug"] = id.is_debug().into();
            out["tdx_mrs_entry"] = entry;
            out["verified"] = verified.is_some().into();
            out
        }
    };
    if let Some(r) = &a.role {
        out["role"] = r.clone().into();
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
    let out = serde_json::json!({
        "role": a.role,
        "mr_signer": hex::encode(signer),
        "isv_prod_id": a.isv_prod_id.to_string(),
        "isv_svn": a.isv_svn.to_string(),
    });
    let text = serde_json::to_string_pretty(&out)? + "\n";
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
    let flags = Flags {
        attestation: Attestation::Simulated,
        policy: Some(policy_path),
        collateral: None,
        pccs_url: None,
        pccs_ca: None,
        collateral_cache: dir.join("cache"),
        pccs_refresh_secs: 3600,
        attestation_device: PathBuf::from(SgxAttester::DEVICE_ROOT),
        tsm_report_root: PathBuf::from(TdxAttester::REPORT_ROOT),
        sim_root_key: key,
        sim_mr_enclave: None,
        sim_mr_signer: None,
        sim_isv_prod_id: 1,
        sim_isv_svn: 1,
        sim_mr_td: None,
        on_reject: "exit".into(),
        insecure_no_tls: false,
    };
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

/// A development root (`<dir>/dev-root.pem`) and a policy
/// (`<dir>/dynamic_config.json`) accepting this binary in simulated mode, for
/// runs where both parties are this binary on one machine (demo, bench).
/// Returns (root key path, policy path).
#[cfg(feature = "dev")]
pub fn self_accepting_sim_policy(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let key = dir.join("dev-root.pem");
    let (root, _) = DevRoot::load_or_create(&key)?;
    let me = SimIdentity::of_running_binary()?;
    let fp = hex::encode(root.fingerprint());
    let policy = serde_json::json!({
        "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
        "sgx_mrs": [{"mr_enclave": hex::encode(me.mr_enclave), "mr_signer": fp, "isv_prod_id": "1", "isv_svn": "1",
                     "mode": "simulated"}],
        "allow_simulated": true, "simulated_roots": [fp],
    });
    let policy_path = dir.join("dynamic_config.json");
    let text = serde_json::to_string_pretty(&policy)?;
    vfl_fs::write_atomic(&policy_path, |w| w.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", policy_path.display()))?;
    Ok((key, policy_path))
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

/// A policy as canonical JSON: keys in a fixed order, entries one per line
/// and sorted, a final newline; two parties who trust the same identities
/// write byte-identical files. Unknown keys are kept after the known ones
/// (the parser then refuses them, naming them).
fn canonical_policy(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn ordered<'a>(m: &'a serde_json::Map<String, Value>, order: &[&str]) -> Vec<(&'a String, &'a Value)> {
        let mut known: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| order.contains(&k.as_str())).collect();
        known.sort_by_key(|(k, _)| order.iter().position(|o| o == k));
        let mut rest: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| !order.contains(&k.as_str())).collect();
        rest.sort_by(|a, b| a.0.cmp(b.0));
        known.extend(rest);
        known
    }
    let key = |k: &str| Value::String(k.to_string()).to_string();
    let Some(top) = v.as_object() else {
        return format!("{v}\n");
    };
    let mut lines = Vec::new();
    for (k, val) in ordered(top, vfl_attest::policy::TOP_KEYS) {
        let rendered = match (k.as_str(), val.as_array()) {
            (list_name @ ("sgx_mrs" | "tdx_mrs"), Some(list)) if !list.is_empty() => {
                let keys = if list_name == "sgx_mrs" {
                    vfl_attest::policy::ENTRY_KEYS
                } else {
                    vfl_attest::policy::TD_ENTRY_KEYS
                };
                let mut entries: Vec<String> = list
                    .iter()
                    .map(|e| match e.as_object() {
                        Some(m) => {
                            let fields: Vec<String> = ordered(m, keys)
                                .iter()
                                .map(|(k, v)| format!("{}: {v}", key(k)))
                                .collect();
                            format!("{{ {} }}", fields.join(", "))
                        }
                        None => e.to_string(),
                    })
                    .collect();
                entries.sort();
                entries.dedup();
                format!("[\n    {}\n  ]", entries.join(",\n    "))
            }
            _ => val.to_string(),
        };
        lines.push(format!("  {}: {rendered}", key(k)));
    }
    format!("{{\n{}\n}}\n", lines.join(",\n"))
}

/// The `tdx_mrs` entry for a TD identity file (from `vfl attest self
/// --attestation tdx|simulated-tdx`): the measurements it pins (mr_td and
/// rtmr0-2 at least), its role and mode.
fn td_entry_of(file: &serde_json::Value, role: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    let id = file.get("tdx_mrs_entry").unwrap_or(file);
    let mut entry = serde_json::Map::new();
    entry.insert("role".into(), role.into());
    if id.get("mode").and_then(|m| m.as_str()) == Some("simulated") {
        entry.insert("mode".into(), "simulated".into());
    }
    for k in vfl_attest::policy::TD_ENTRY_KEYS
        .iter()
        .filter(|k| !["role", "mode"].contains(k))
    {
        match id.get(*k) {
            Some(serde_json::Value::String(v)) => {
                entry.insert((*k).into(), v.clone().into());
            }
            None if ["mr_td", "rtmr0", "rtmr1", "rtmr2"].contains(k) => bail!("{name}: no {k}"),
            _ => {}
        }
    }
    Ok(serde_json::Value::Object(entry))
}

fn trust(a: TrustArgs) -> anyhow::Result<()> {
    let name = a.identity.display().to_string();
    let text = std::fs::read(&a.identity).with_context(|| format!("reading {name}"))?;
    let file: serde_json::Value = serde_json::from_slice(&text).with_context(|| format!("{name}: not JSON"))?;
    let is_td = file.get("tdx_mrs_entry").is_some() || file.get("mr_td").is_some();
    let id = file.get("sgx_mrs_entry").unwrap_or(&file).clone();
    let field = |k: &str| -> Option<String> {
        match id.get(k).or_else(|| file.get(k)) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    let role = match (&a.role, field("role")) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) => r,
        (None, None) => bail!("{name}: no role: give --role leader|follower (the role this identity is trusted as)"),
    };
    role.parse::<vfl_attest::PartyRole>().map_err(anyhow::Error::msg)?;
    let (list_name, entry, what) = if is_td {
        let entry = td_entry_of(&file, &role, &name)?;
        let what = format!("TD mr_td {}", entry["mr_td"].as_str().unwrap_or("?"));
        ("tdx_mrs", entry, what)
    } else {
        let (entry, what) = sgx_entry_of(&a, &role, &name, field)?;
        ("sgx_mrs", entry, what)
    };
    let mut policy: serde_json::Value = match std::fs::read(&a.policy) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}: not JSON", a.policy.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e).with_context(|| format!("reading {}", a.policy.display())),
    };
    let Some(top) = policy.as_object_mut() else {
        bail!("{}: not a JSON object", a.policy.display());
    };
    if list_name == "sgx_mrs" && !top.contains_key("sgx_mrs") {
        // A new enclave list pins enclave, signer, product id and version.
        for flag in [
            "verify_mr_enclave",
            "verify_mr_signer",
            "verify_isv_prod_id",
            "verify_isv_svn",
        ] {
            top.entry(flag).or_insert_with(|| "on".into());
        }
    }
    let Some(list) = top
        .entry(list_name)
        .or_insert_with(|| serde_json::json!([]))
        .as_array_mut()
    else {
        bail!("{}: {list_name} is not a list", a.policy.display());
    };
    let known = list.contains(&entry);
    if !known {
        list.push(entry);
    }
    let out = canonical_policy(&policy);
    // Refuse to write a policy that would not load.
    let parsed = Policy::parse(out.as_bytes(), &a.policy.display().to_string())?;
    vfl_fs::write_atomic(&a.policy, |w| w.write_all(out.as_bytes()))
        .with_context(|| format!("writing {}", a.policy.display()))?;
    if known {
        println!("{} already trusts the {role} {what}", a.policy.display());
    } else {
        println!(
            "{}: now trusts the {role} {what} (policy digest {}; the policy is measured: both parties must hold \
             this same file, then run `make`)",
            a.policy.display(),
            parsed.digest_hex()
        );
    }
    Ok(())
}

/// The `sgx_mrs` entry for an enclave identity file, and how to name it.
fn sgx_entry_of(
    a: &TrustArgs,
    role: &str,
    name: &str,
    field: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<(serde_json::Value, String)> {
    let mut entry = serde_json::Map::new();
    entry.insert("role".into(), role.into());
    if field("mode").as_deref() == Some("simulated") {
        entry.insert("mode".into(), "simulated".into());
    }
    // The peer runs this same enclave: its MRENCLAVE is ours ("self"). A
    // file naming another one is not followed unless asked to, since it
    // would admit whatever code the peer wrote.
    let mr_enclave = match field("mr_enclave") {
        Some(m) if a.pin_enclave => m,
        Some(m) if m != "self" => {
            eprintln!(
                "{name}: names mr_enclave {m}; trusting the peer's copy of our own enclave (\"self\") instead \
                 (--pin-enclave pins the file's value)"
            );
            "self".into()
        }
        _ => "self".into(),
    };
    let signer = field("mr_signer").ok_or_else(|| anyhow::anyhow!("{name}: no mr_signer"))?;
    entry.insert("mr_enclave".into(), mr_enclave.clone().into());
    entry.insert("mr_signer".into(), signer.clone().into());
    entry.insert(
        "isv_prod_id".into(),
        field("isv_prod_id").unwrap_or_else(|| "1".into()).into(),
    );
    entry.insert(
        if a.min_svn { "min_isv_svn" } else { "isv_svn" }.into(),
        field("isv_svn").unwrap_or_else(|| "1".into()).into(),
    );
    Ok((
        serde_json::Value::Object(entry),
        format!("running enclave {mr_enclave} signed by {signer}"),
    ))
}
