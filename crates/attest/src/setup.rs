//! The RA-TLS composition root: from where this process's evidence comes
//! from, which policy judges peers and where collateral comes from, the
//! attester, the policy (with its `"self"` entries bound to our own
//! verified identity), the collateral source and its freshness marks, the
//! certificate and the rustls client and server configurations.
//!
//! Binaries describe what the user asked for ([`Setup`]) and call
//! [`build`]; nothing else in the tree wires these parts together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::collateral::{CollateralProvider, FileCollateral};
use crate::freshness::{Freshness, MarkStore};
use crate::seal::{Context, Sealer};
use crate::tls::RaTlsVerifier;
use crate::verify::verified_own_identity;
use crate::{
    AttestError, Attester, Clock, Identity, Mode, Policy, PolicyError, Rejection, SgxAttester, TdxAttester, Verifier,
};

/// Where this process's evidence comes from.
#[derive(Clone, Debug)]
pub enum Evidence {
    /// An SGX enclave under Gramine: its attestation pseudo-files.
    Sgx { device: PathBuf },
    /// A TDX guest: its configfs-tsm report directory.
    Tdx { report_root: PathBuf },
    /// SGX-format quotes from a development PKI (development builds only).
    #[cfg(feature = "dev")]
    Simulated { root_key: PathBuf, claims: SimClaims },
    /// TDX-format quotes from a development PKI (development builds only).
    #[cfg(feature = "dev")]
    SimulatedTdx {
        root_key: PathBuf,
        /// mr_td to claim; default SHA-384 of the running binary.
        mr_td: Option<[u8; 48]>,
    },
}

/// What a simulated enclave claims; `None`s take the defaults of
/// [`crate::SimIdentity::of_running_binary`].
#[cfg(feature = "dev")]
#[derive(Clone, Debug)]
pub struct SimClaims {
    pub mr_enclave: Option<[u8; 32]>,
    pub mr_signer: Option<[u8; 32]>,
    pub isv_prod_id: u16,
    pub isv_svn: u16,
}

/// Where collateral for verifying hardware quotes comes from.
#[derive(Clone, Debug)]
pub enum Collateral {
    /// None: hardware quotes cannot be verified (simulated peers only).
    None,
    /// A QuoteCollateralV3 JSON file.
    File(PathBuf),
    /// A PCCS (or Intel PCS), API v4: fetched on first need, cached under
    /// `cache`, refreshed in the background every `refresh` (at least a
    /// minute).
    Pccs {
        url: String,
        /// CA certificate (PEM) of a PCCS with a private certificate.
        ca_pem: Option<Vec<u8>>,
        cache: PathBuf,
        refresh: Duration,
    },
}

/// Everything [`build`] needs.
#[derive(Clone, Debug)]
pub struct Setup {
    pub evidence: Evidence,
    /// The policy file (the original's `dynamic_config.json` format).
    pub policy: PathBuf,
    pub collateral: Collateral,
    /// Where the collateral high-water marks are kept (sealed) when a
    /// sealer is given.
    pub collateral_cache: PathBuf,
}

/// Errors of setting up RA-TLS.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Attest(#[from] AttestError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("collateral high-water marks: {0}")]
    Freshness(String),
    #[error("verifying our own quote before binding the policy's \"self\" entries: {0}")]
    OwnQuote(#[source] Rejection),
}

/// The parts of an RA-TLS transport, ready for the bridge.
pub struct RaTlsParts {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    pub verifier: Arc<RaTlsVerifier>,
    /// Our own evidence's mode (a simulated one deserves a loud warning).
    pub mode: Mode,
    /// One line describing our own evidence.
    pub ours: String,
}

/// How long [`build`] waits for collateral to verify our own quote.
const OWN_QUOTE_WAIT: Duration = Duration::from_secs(30);

/// The attester `evidence` describes.
pub fn attester(evidence: &Evidence) -> Result<Box<dyn Attester>, AttestError> {
    match evidence {
        Evidence::Sgx { device } => Ok(Box::new(SgxAttester::open(device)?)),
        Evidence::Tdx { report_root } => Ok(Box::new(TdxAttester::open(report_root)?)),
        #[cfg(feature = "dev")]
        Evidence::Simulated { root_key, claims } => {
            use crate::devpki::SimPlatformOptions;
            let root = dev_root(root_key)?;
            let mut id = crate::SimIdentity::of_running_binary()?;
            if let Some(m) = claims.mr_enclave {
                id.mr_enclave = m;
            }
            if let Some(m) = claims.mr_signer {
                id.mr_signer = Some(m);
            }
            id.isv_prod_id = claims.isv_prod_id;
            id.isv_svn = claims.isv_svn;
            let opts = SimPlatformOptions::fresh(Clock::System.now());
            Ok(Box::new(crate::SimAttester::new(&root, &id, &opts)?))
        }
        #[cfg(feature = "dev")]
        Evidence::SimulatedTdx { root_key, mr_td } => {
            use crate::devpki::SimPlatformOptions;
            let root = dev_root(root_key)?;
            let mut id = crate::SimTdIdentity::of_running_binary()?;
            if let Some(m) = mr_td {
                id.mr_td = *m;
            }
            let opts = SimPlatformOptions::fresh_tdx(Clock::System.now());
            Ok(Box::new(crate::SimAttester::new_tdx(&root, &id, &opts)?))
        }
    }
}

/// The development root at `path`, created (mode 0600) if missing.
#[cfg(feature = "dev")]
fn dev_root(path: &Path) -> Result<crate::devpki::DevRoot, AttestError> {
    let (root, created) = crate::devpki::DevRoot::load_or_create(path)?;
    if created {
        tracing::warn!(key = %path.display(), "created a development root key (keep it private)");
    }
    Ok(root)
}

/// The collateral high-water marks, sealed in the collateral cache.
struct SealedMarks {
    path: PathBuf,
    sealer: Arc<Sealer>,
    context: Context,
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
/// in `cache` when files are sealed, else in memory.
pub fn freshness(cache: &Path, sealer: Option<&Arc<Sealer>>) -> Result<Arc<Freshness>, SetupError> {
    let Some(sealer) = sealer else {
        return Ok(Arc::new(Freshness::in_memory()));
    };
    let store = SealedMarks {
        path: cache.join("high-water.sealed"),
        sealer: sealer.clone(),
        context: Context::new("collateral high-water marks"),
    };
    Ok(Arc::new(
        Freshness::with_store(Box::new(store)).map_err(SetupError::Freshness)?,
    ))
}

/// The collateral provider `source` describes (a PCCS one starts its
/// background refresher), or none.
pub fn collateral(
    source: &Collateral,
    fresh: &Arc<Freshness>,
) -> Result<Option<Arc<dyn CollateralProvider>>, AttestError> {
    Ok(match source {
        Collateral::None => None,
        Collateral::File(p) => Some(Arc::new(FileCollateral::load(p)?)),
        Collateral::Pccs {
            url,
            ca_pem,
            cache,
            refresh,
        } => {
            let get = crate::pccs::http_client(ca_pem.as_deref())?;
            let refresh = (*refresh).max(Duration::from_secs(60));
            let p = crate::pccs::PccsCollateral::new(url, cache, get, refresh)?;
            p.set_freshness(fresh.clone());
            p.spawn_refresher();
            Some(p)
        }
    })
}

/// Our own identity as dcap-qvl verified it, when collateral is at hand:
/// the host relays quotes and could alter the identity one claims.
pub fn verified_own(
    cert: &crate::RaTlsCert,
    collateral: Option<&dyn CollateralProvider>,
) -> Result<Identity, Rejection> {
    verified_own_identity(cert, collateral, Clock::System, OWN_QUOTE_WAIT)
}

/// Loads the policy, opens the attester, issues our certificate and
/// builds the rustls configurations whose verifiers appraise the peer's
/// evidence against the policy during every handshake. `sealer` keeps
/// the collateral high-water marks sealed on disk.
pub fn build(setup: &Setup, sealer: Option<&Arc<Sealer>>) -> Result<RaTlsParts, SetupError> {
    let mut policy = Policy::load(&setup.policy)?;
    let source_name = setup.policy.display().to_string();
    tracing::info!(policy = %source_name, digest = %policy.digest_hex(), entries = policy.entries.len(), "attestation policy loaded");
    if policy.entries.is_empty() && policy.td_entries.is_empty() {
        tracing::warn!("the policy's sgx_mrs and tdx_mrs are empty: every peer will be refused");
    }
    let attester = attester(&setup.evidence)?;
    policy.check_usable_by(attester.mode(), &source_name)?;
    if attester.mode() == Mode::Simulated {
        tracing::warn!(
            "SIMULATED attestation: this process runs outside any enclave and its quotes are signed by a development key"
        );
    }
    if policy.allows_simulated() {
        tracing::warn!("the policy accepts SIMULATED peers (allow_simulated): no hardware protection on their side");
    }
    if !policy.release_exports.is_empty() {
        let roles: Vec<&str> = policy.release_exports.iter().map(|r| r.as_str()).collect();
        tracing::warn!(roles = %roles.join(","), "the policy releases exports of these parties in plaintext (if the peer's policy agrees)");
    }
    let fresh = freshness(&setup.collateral_cache, sealer)?;
    let collateral = collateral(&setup.collateral, &fresh)?;
    if let Some(c) = &collateral {
        tracing::info!(source = %c.describe(), "collateral for hardware quotes");
    }
    let cert = crate::cert::issue(attester.as_ref())?;
    let ours = format!(
        "our {} evidence ({}): {}",
        cert.mode,
        cert.identity.tee(),
        cert.identity
    );
    tracing::info!("{ours}");
    if policy.uses_self() {
        // Bound only to what dcap-qvl verified of our own quote.
        let own = verified_own(&cert, collateral.as_deref()).map_err(SetupError::OwnQuote)?;
        policy.bind_self(&own);
        tracing::info!("policy entries saying \"self\" accept peers with our own (verified) identity");
    }
    let verifier = RaTlsVerifier::new(Arc::new(Verifier::with_freshness(
        policy,
        collateral,
        Clock::System,
        fresh,
    )));
    let key = crate::tls::identity(&cert)?;
    Ok(RaTlsParts {
        server: Arc::new(crate::tls::server_config(key.clone(), verifier.clone())?),
        client: Arc::new(crate::tls::client_config(key, verifier.clone())?),
        verifier,
        mode: attester.mode(),
        ours,
    })
}
