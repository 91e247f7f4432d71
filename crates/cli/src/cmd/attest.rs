//! Attestation flags of `vfl leader`/`vfl follower` (building the RA-TLS
//! transport) and the `vfl attest` tools.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use vfl_attest::collateral::{CollateralProvider, FileCollateral};
use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::tls::RaTlsVerifier;
use vfl_attest::verify::{Root, verify_quote};
use vfl_attest::{Attester, Clock, Policy, SgxAttester, SimAttester, SimIdentity, Verifier};
use vfl_bridge::{OnReject, RaTls, Security};

/// How this process proves itself and judges its peer.
#[derive(clap::Args, Debug, Clone)]
pub struct Flags {
    /// Evidence source: `sgx` (Gramine's /dev/attestation, DCAP quotes) or
    /// `simulated` (quotes from a development PKI: no hardware protection,
    /// accepted only by policies with allow_simulated and this root listed).
    #[arg(long, value_parser = ["sgx", "simulated"], default_value = "sgx")]
    pub attestation: String,
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
    /// Simulated mode: the development root key (PKCS#8 PEM; created,
    /// mode 0600, if missing). Its fingerprint goes into the peer's
    /// simulated_roots.
    #[arg(long, default_value = "vfl-dev-root.pem")]
    pub sim_root_key: PathBuf,
    /// Simulated mode: mr_enclave to claim (hex; default SHA-256 of this binary).
    #[arg(long)]
    pub sim_mr_enclave: Option<String>,
    /// Simulated mode: mr_signer to claim (hex; default SHA-256 of the
    /// development root's public key).
    #[arg(long)]
    pub sim_mr_signer: Option<String>,
    /// Simulated mode: isv_prod_id to claim.
    #[arg(long, default_value_t = 1)]
    pub sim_isv_prod_id: u16,
    /// Simulated mode: isv_svn to claim.
    #[arg(long, default_value_t = 1)]
    pub sim_isv_svn: u16,
    /// What to do when the peer's evidence is refused (or ours is): `exit`
    /// with the reason, or `retry` until --peer-timeout.
    #[arg(long, value_parser = ["exit", "retry"], default_value = "exit")]
    pub on_reject: String,
    /// Talk to the peer over plaintext gRPC, without TLS or attestation.
    /// Anyone on the network path can read and alter the traffic.
    #[arg(long)]
    pub insecure_no_tls: bool,
}

fn hex32(s: &str, flag: &str) -> anyhow::Result<[u8; 32]> {
    let b = hex::decode(s).with_context(|| format!("{flag}: not hex"))?;
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| anyhow::anyhow!("{flag}: need 64 hex digits, got {}", s.len()))
}

/// The attester the flags describe.
pub fn attester(f: &Flags) -> anyhow::Result<Box<dyn Attester>> {
    match f.attestation.as_str() {
        "sgx" => Ok(Box::new(SgxAttester::open(&f.attestation_device).context(
            "--attestation sgx (the default) needs a Gramine SGX enclave; for development without SGX use \
             --attestation simulated",
        )?)),
        _ => {
            let (root, created) = DevRoot::load_or_create(&f.sim_root_key)?;
            if created {
                eprintln!(
                    "created development root key {} (keep it private)",
                    f.sim_root_key.display()
                );
            }
            let mut id = SimIdentity::of_running_binary()?;
            if let Some(h) = &f.sim_mr_enclave {
                id.mr_enclave = hex32(h, "--sim-mr-enclave")?;
            }
            if let Some(h) = &f.sim_mr_signer {
                id.mr_signer = Some(hex32(h, "--sim-mr-signer")?);
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

/// The transport security the flags ask for.
pub fn security(f: &Flags) -> anyhow::Result<Security> {
    if f.insecure_no_tls {
        eprintln!(
            "WARNING: --insecure-no-tls: the peer connection is neither encrypted nor attested; anyone on the \
             network path can read and alter the training traffic"
        );
        return Ok(Security::Insecure);
    }
    let path = policy_path(f)?;
    let mut policy = Policy::load(&path)?;
    tracing::info!(policy = %path.display(), digest = %policy.digest_hex(), entries = policy.entries.len(), "attestation policy loaded");
    if policy.entries.is_empty() {
        tracing::warn!("the policy's sgx_mrs is empty: every peer will be refused");
    }
    if policy.allow_simulated {
        tracing::warn!("the policy accepts SIMULATED peers (allow_simulated): no hardware protection on their side");
    }
    let attester = attester(f)?;
    if attester.mode() == vfl_attest::Mode::Simulated {
        warn_simulated();
    }
    let collateral: Option<Arc<dyn CollateralProvider>> = match (&f.collateral, &f.pccs_url) {
        (Some(p), _) => Some(Arc::new(FileCollateral::load(p)?)),
        (None, Some(url)) => {
            let ca = match &f.pccs_ca {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
                None => None,
            };
            let get = vfl_attest::pccs::http_client(ca.as_deref())?;
            let refresh = std::time::Duration::from_secs(f.pccs_refresh_secs.max(60));
            let p = vfl_attest::pccs::PccsCollateral::new(url, &f.collateral_cache, get, refresh)?;
            p.spawn_refresher();
            Some(p)
        }
        (None, None) => None,
    };
    if let Some(c) = &collateral {
        tracing::info!(source = %c.describe(), "collateral for hardware quotes");
    }
    let cert = vfl_attest::cert::issue(attester.as_ref())?;
    let id = &cert.identity;
    let ours = format!(
        "our {} evidence: mr_enclave={} mr_signer={} isv_prod_id={} isv_svn={}",
        cert.mode,
        hex::encode(id.mr_enclave),
        hex::encode(id.mr_signer),
        id.isv_prod_id,
        id.isv_svn
    );
    tracing::info!("{ours}");
    if policy.uses_self() {
        policy.bind_self(&cert.identity);
        tracing::info!("policy entries saying \"self\" accept peers with our own identity");
    }
    let verifier = RaTlsVerifier::new(Arc::new(Verifier::new(policy, collateral, Clock::System)));
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
    /// the sgx_mrs entry (and development root) a peer's policy needs.
    #[command(name = "self")]
    Self_(SelfArgs),
    /// Compute mr_signer from an enclave signing key (RSA-3072 PEM, private
    /// or public): SHA-256 of the modulus, little-endian.
    Mrsigner(MrsignerArgs),
    /// Measure mutual RA-TLS handshakes (simulated evidence, full dcap-qvl
    /// verification on both sides) over loopback.
    Bench(BenchArgs),
    /// Add a peer's identity file (from `vfl-sgx.sh make` or `vfl attest
    /// self`) to a policy file as an sgx_mrs entry: no hex copied by hand.
    /// The policy is rewritten atomically and must still parse.
    Trust(TrustArgs),
}

#[derive(clap::Args, Debug)]
pub struct TrustArgs {
    /// The peer's identity file (JSON with mr_enclave, mr_signer,
    /// isv_prod_id, isv_svn).
    #[arg(long)]
    identity: PathBuf,
    /// The policy to update (created with all four checks on if missing).
    #[arg(long, default_value = "dynamic_config.json")]
    policy: PathBuf,
    /// Accept the peer's isv_svn or newer (min_isv_svn) instead of exactly it.
    #[arg(long)]
    min_svn: bool,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Handshakes to time (after 3 warm-up ones).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
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
    /// Also apply this policy (TCB status, attributes, identity).
    #[arg(long)]
    policy: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SelfArgs {
    #[command(flatten)]
    flags: Flags,
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
        Command::Self_(a) => self_(a),
        Command::Bench(a) => bench(a),
        Command::Trust(a) => trust(a),
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
        let entry = v
            .appraise(&report)
            .map_err(|e| anyhow::anyhow!("{}: refused by {}: {e}", a.quote.display(), p.display()))?;
        out["policy"] = serde_json::json!({"file": p.display().to_string(), "matched_entry": entry});
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn self_(a: SelfArgs) -> anyhow::Result<()> {
    let attester = attester(&a.flags)?;
    if attester.mode() == vfl_attest::Mode::Simulated {
        warn_simulated();
    }
    let cert = vfl_attest::cert::issue(attester.as_ref())?;
    let id = &cert.identity;
    let mut out = serde_json::json!({
        "mode": cert.mode,
        "mr_enclave": hex::encode(id.mr_enclave),
        "mr_signer": hex::encode(id.mr_signer),
        "isv_prod_id": id.isv_prod_id,
        "isv_svn": id.isv_svn,
        "debug": id.is_debug(),
        "sgx_mrs_entry": {
            "mr_enclave": hex::encode(id.mr_enclave),
            "mr_signer": hex::encode(id.mr_signer),
            "isv_prod_id": id.isv_prod_id.to_string(),
            "isv_svn": id.isv_svn.to_string(),
        },
    });
    if let Some(sim) = attester.sim_evidence() {
        out["simulated_root"] = hex::encode(vfl_attest::verify::dev_root_fingerprint(&sim.root_der)?).into();
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("vfl-attest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench_in(&dir, a.iterations);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A development root (`<dir>/dev-root.pem`) and a policy
/// (`<dir>/dynamic_config.json`) accepting this binary in simulated mode, for
/// runs where both parties are this binary on one machine (demo, bench).
/// Returns (root key path, policy path).
pub fn self_accepting_sim_policy(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let key = dir.join("dev-root.pem");
    let (root, _) = DevRoot::load_or_create(&key)?;
    let me = SimIdentity::of_running_binary()?;
    let fp = hex::encode(root.fingerprint());
    let policy = serde_json::json!({
        "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
        "sgx_mrs": [{"mr_enclave": hex::encode(me.mr_enclave), "mr_signer": fp, "isv_prod_id": "1", "isv_svn": "1"}],
        "allow_simulated": true, "simulated_roots": [fp],
    });
    let policy_path = dir.join("dynamic_config.json");
    let text = serde_json::to_string_pretty(&policy)?;
    vfl_data::atomic::write_atomic(&policy_path, |w| w.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", policy_path.display()))?;
    Ok((key, policy_path))
}

fn bench_in(dir: &Path, iterations: usize) -> anyhow::Result<()> {
    let (key, policy_path) = self_accepting_sim_policy(dir)?;
    let flags = Flags {
        attestation: "simulated".into(),
        policy: Some(policy_path),
        collateral: None,
        pccs_url: None,
        pccs_ca: None,
        collateral_cache: dir.join("cache"),
        pccs_refresh_secs: 3600,
        attestation_device: PathBuf::from(SgxAttester::DEVICE_ROOT),
        sim_root_key: key,
        sim_mr_enclave: None,
        sim_mr_signer: None,
        sim_isv_prod_id: 1,
        sim_isv_svn: 1,
        on_reject: "exit".into(),
        insecure_no_tls: false,
    };
    let t = std::time::Instant::now();
    let Security::RaTls(tls) = security(&flags)? else {
        bail!("expected RA-TLS")
    };
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
    let text = std::fs::read(&a.identity).with_context(|| format!("reading {}", a.identity.display()))?;
    let id: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{}: not JSON", a.identity.display()))?;
    let id = id.get("sgx_mrs_entry").unwrap_or(&id).clone();
    let field = |k: &str| -> anyhow::Result<String> {
        match id.get(k) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            _ => bail!("{}: no {k}", a.identity.display()),
        }
    };
    let mut entry = serde_json::Map::new();
    entry.insert("mr_enclave".into(), field("mr_enclave")?.into());
    entry.insert("mr_signer".into(), field("mr_signer")?.into());
    entry.insert("isv_prod_id".into(), field("isv_prod_id")?.into());
    entry.insert(
        if a.min_svn { "min_isv_svn" } else { "isv_svn" }.into(),
        field("isv_svn")?.into(),
    );
    let mut policy: serde_json::Value = match std::fs::read(&a.policy) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}: not JSON", a.policy.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({
            "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
            "sgx_mrs": [],
        }),
        Err(e) => return Err(e).with_context(|| format!("reading {}", a.policy.display())),
    };
    let Some(list) = policy.get_mut("sgx_mrs").and_then(|v| v.as_array_mut()) else {
        bail!("{}: sgx_mrs missing or not a list", a.policy.display());
    };
    let entry = serde_json::Value::Object(entry);
    if list.contains(&entry) {
        println!("{} already accepts this identity", a.policy.display());
        return Ok(());
    }
    list.push(entry);
    let out = serde_json::to_string_pretty(&policy)?;
    // Refuse to write a policy that would not load.
    Policy::parse(out.as_bytes(), &a.policy.display().to_string())?;
    vfl_data::atomic::write_atomic(&a.policy, |w| w.write_all(out.as_bytes()))
        .with_context(|| format!("writing {}", a.policy.display()))?;
    println!(
        "{}: added sgx_mrs entry for mr_enclave {} (the policy is measured: re-run `make`)",
        a.policy.display(),
        field("mr_enclave")?
    );
    Ok(())
}
