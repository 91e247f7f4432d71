//! Verification of a peer's RA-TLS certificate: evidence, key binding, quote
//! (dcap-qvl, Intel's pinned root or a pinned development root), TCB status,
//! enclave attributes and the identity policy.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::attester::Mode;
use crate::cert::{self, Evidence};
use crate::collateral::CollateralProvider;
use crate::policy::Policy;
use crate::sgx::{EnclaveIdentity, QuoteView, attr};

/// Why a peer was refused. Each variant is one reason, with what was expected
/// and what the peer presented.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Rejection {
    #[error("peer presented {0} certificates; RA-TLS needs exactly one self-signed certificate")]
    ChainLength(usize),
    #[error("peer certificate: {0}")]
    Certificate(String),
    #[error(
        "peer certificate carries no attestation evidence (neither TCG DICE 2.23.133.5.4.9 nor Gramine's quote extension)"
    )]
    NoEvidence,
    #[error("attestation evidence: {0}")]
    Evidence(String),
    #[error(
        "quote is not bound to the certificate key ({carrier} binding): expected report data {expected}, got {got}"
    )]
    KeyBinding {
        carrier: &'static str,
        expected: String,
        got: String,
    },
    #[error("simulated evidence (development root {root}) is not accepted: the policy does not set allow_simulated")]
    SimulatedNotAllowed { root: String },
    #[error("simulated evidence from development root {root}, which is not in the policy's simulated_roots")]
    UntrustedSimRoot { root: String },
    #[error("quote verification failed: {0}")]
    Quote(String),
    #[error("collateral is not valid at {at} (unix time): {detail}; fetch fresh collateral (PCCS) or check the clock")]
    CollateralExpired { at: u64, detail: String },
    #[error("cannot verify an SGX quote: {0}")]
    NoCollateral(String),
    #[error("TCB status {status} is not allowed (allowed_tcb_statuses: {allowed}); advisories: [{advisories}]")]
    TcbStatus {
        status: String,
        allowed: String,
        advisories: String,
    },
    #[error("peer is a DEBUG enclave (attributes {attributes}); the policy does not set allow_debug")]
    Debug { attributes: String },
    #[error("peer enclave attributes {attributes}: {why}")]
    Attributes { attributes: String, why: &'static str },
    #[error("peer enclave identity is not allowed: {0}")]
    Identity(String),
}

/// Where "now" comes from: the system clock, or a pinned time (tests,
/// `vfl attest verify --at`).
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    System,
    Fixed(u64),
}

impl Clock {
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            Clock::Fixed(t) => *t,
        }
    }
}

/// Which root a quote's chains must end in.
#[derive(Clone, Debug)]
pub enum Root {
    /// Intel's SGX root CA, pinned inside dcap-qvl.
    Intel,
    /// A development root (simulated evidence), DER.
    Dev(Vec<u8>),
}

/// A cryptographically verified quote: what it says and the platform's TCB status.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QuoteReport {
    pub tee_type: &'static str,
    #[serde(flatten)]
    pub identity: EnclaveIdentity,
    pub debug: bool,
    pub tcb_status: String,
    pub advisory_ids: Vec<String>,
}

/// Verify a quote's signatures and chains against `root` with `collateral` at `now`.
pub fn verify_quote(
    quote: &[u8],
    collateral: &dcap_qvl::QuoteCollateralV3,
    root: &Root,
    now: u64,
) -> Result<QuoteReport, Rejection> {
    crate::sgx::check_quote_structure(quote).map_err(|e| Rejection::Quote(format!("malformed quote: {e}")))?;
    let verifier = match root {
        Root::Intel => dcap_qvl::verify::QuoteVerifier::new_prod(),
        Root::Dev(der) => dcap_qvl::verify::QuoteVerifier::new(der.clone()),
    }
    // The DEBUG attribute is judged below against the policy, with a clear reason.
    .allow_debug(true);
    let report = verifier.verify(quote, collateral, now).map_err(|e| {
        let detail = format!("{e:#}");
        if detail.contains("xpired") || detail.contains("in the future") {
            Rejection::CollateralExpired { at: now, detail }
        } else {
            Rejection::Quote(detail)
        }
    })?;
    let Some(r) = report.report.as_sgx() else {
        return Err(Rejection::Quote("the quote is not an SGX enclave quote".into()));
    };
    let identity = EnclaveIdentity {
        mr_enclave: r.mr_enclave,
        mr_signer: r.mr_signer,
        isv_prod_id: r.isv_prod_id,
        isv_svn: r.isv_svn,
        attributes: r.attributes,
    };
    Ok(QuoteReport {
        tee_type: "sgx",
        debug: identity.is_debug(),
        identity,
        tcb_status: report.status,
        advisory_ids: report.advisory_ids,
    })
}

/// A peer that passed every check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerReport {
    pub mode: Mode,
    pub carrier: &'static str,
    #[serde(flatten)]
    pub quote: QuoteReport,
    /// Index of the `sgx_mrs` entry that matched.
    pub matched_entry: usize,
}

impl std::fmt::Display for PeerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = &self.quote.identity;
        write!(
            f,
            "{} peer mr_enclave={} mr_signer={} isv_prod_id={} isv_svn={} tcb={} (sgx_mrs[{}], {} evidence)",
            self.mode,
            hex::encode(id.mr_enclave),
            hex::encode(id.mr_signer),
            id.isv_prod_id,
            id.isv_svn,
            self.quote.tcb_status,
            self.matched_entry,
            self.carrier
        )
    }
}

/// Verifies peers against one policy.
pub struct Verifier {
    policy: Policy,
    collateral: Option<Arc<dyn CollateralProvider>>,
    clock: Clock,
}

impl Verifier {
    pub fn new(policy: Policy, collateral: Option<Arc<dyn CollateralProvider>>, clock: Clock) -> Self {
        Self {
            policy,
            collateral,
            clock,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Verify a peer's certificate chain (exactly one certificate).
    pub fn verify_chain(&self, chain: &[&[u8]]) -> Result<PeerReport, Rejection> {
        match chain {
            [one] => self.verify_cert(one),
            other => Err(Rejection::ChainLength(other.len())),
        }
    }

    /// Verify one RA-TLS certificate.
    pub fn verify_cert(&self, cert_der: &[u8]) -> Result<PeerReport, Rejection> {
        let evidence = cert::extract(cert_der)?;
        let view = QuoteView::parse(&evidence.quote).map_err(Rejection::Evidence)?;
        evidence.check_binding(&view.report_data())?;
        let (mode, quote) = self.verify_evidence(&evidence)?;
        let matched_entry = self.appraise(&quote)?;
        Ok(PeerReport {
            mode,
            carrier: evidence.carrier(),
            quote,
            matched_entry,
        })
    }

    fn verify_evidence(&self, ev: &Evidence) -> Result<(Mode, QuoteReport), Rejection> {
        let now = self.clock.now();
        if let Some(sim) = &ev.sim {
            let root = hex::encode(dev_root_fingerprint(&sim.root_der)?);
            if !self.policy.allow_simulated {
                return Err(Rejection::SimulatedNotAllowed { root });
            }
            if !self.policy.simulated_roots.iter().any(|r| hex::encode(r) == root) {
                return Err(Rejection::UntrustedSimRoot { root });
            }
            let report = verify_quote(&ev.quote, &sim.collateral, &Root::Dev(sim.root_der.clone()), now)?;
            return Ok((Mode::Simulated, report));
        }
        let Some(provider) = &self.collateral else {
            return Err(Rejection::NoCollateral(
                "no collateral source is configured (give --pccs-url URL or --collateral FILE)".into(),
            ));
        };
        let collateral = provider.collateral_for(&ev.quote).map_err(Rejection::NoCollateral)?;
        Ok((Mode::Sgx, verify_quote(&ev.quote, &collateral, &Root::Intel, now)?))
    }

    /// Apply the policy to a verified quote: TCB status, attributes, identity.
    /// Returns the index of the matching `sgx_mrs` entry.
    pub fn appraise(&self, q: &QuoteReport) -> Result<usize, Rejection> {
        let p = &self.policy;
        if !p.allowed_tcb_statuses.contains(&q.tcb_status) {
            return Err(Rejection::TcbStatus {
                status: q.tcb_status.clone(),
                allowed: p.allowed_tcb_statuses.join(", "),
                advisories: q.advisory_ids.join(", "),
            });
        }
        let a = q.identity.attributes;
        let attributes = hex::encode(a);
        if a[0] & attr::DEBUG != 0 && !p.allow_debug {
            return Err(Rejection::Debug { attributes });
        }
        let why = if a[0] & attr::INIT == 0 {
            Some("INIT is not set")
        } else if a[0] & attr::MODE64BIT == 0 {
            Some("MODE64BIT is not set")
        } else if a[0] & attr::PROVISION_KEY != 0 {
            Some("PROVISION_KEY is set (only Intel's provisioning enclaves may have it)")
        } else if a[0] & attr::EINITTOKEN_KEY != 0 {
            Some("EINITTOKEN_KEY is set (only Intel's launch enclave may have it)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Rejection::Attributes { attributes, why });
        }
        p.check_identity(&q.identity).map_err(Rejection::Identity)
    }
}

/// SHA-256 of a development root certificate's public key (SPKI DER).
pub fn dev_root_fingerprint(root_der: &[u8]) -> Result<[u8; 32], Rejection> {
    let (_, root) = x509_parser::parse_x509_certificate(root_der)
        .map_err(|e| Rejection::Evidence(format!("development root certificate: {e}")))?;
    Ok(Sha256::digest(root.tbs_certificate.subject_pki.raw).into())
}
