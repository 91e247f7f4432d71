//! Verification of a peer's RA-TLS certificate: evidence, key binding, quote
//! (dcap-qvl, Intel's pinned root or a pinned development root), TCB status,
//! enclave attributes and the identity policy.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::attester::Mode;
use crate::cert::{self, Evidence};
use crate::collateral::CollateralProvider;
use crate::freshness::{Freshness, Marks};
use crate::policy::{PartyRole, Policy};
use crate::quote::{Identity, QuoteView, TeeType};
use crate::sgx::{EnclaveIdentity, attr};

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
    #[error("cannot verify a hardware quote: {0}")]
    NoCollateral(String),
    #[error("TCB status {status} is not allowed (allowed_tcb_statuses: {allowed}); advisories: [{advisories}]")]
    TcbStatus {
        status: String,
        allowed: String,
        advisories: String,
    },
    #[error("peer is a DEBUG enclave or TD (attributes {attributes}); the policy does not set allow_debug")]
    Debug { attributes: String },
    #[error("peer enclave attributes {attributes}: {why}")]
    Attributes { attributes: String, why: &'static str },
    #[error("peer enclave identity is not allowed: {0}")]
    Identity(String),
    #[error(
        "collateral is from TCB evaluation {got}, below the policy's min_tcb_eval_data_number {min}: fetch current collateral (PCCS)"
    )]
    TcbEvalBelowFloor { got: u32, min: u32 },
    #[error(
        "stale collateral for platform {family}: its {what} is {got}, but this party has already seen {seen}; refusing to appraise against older collateral (refresh the PCCS cache)"
    )]
    StaleCollateral {
        family: String,
        what: &'static str,
        got: u32,
        seen: u32,
    },
    #[error("quote appraisal (dcap-qvl policy): {0}")]
    Appraisal(String),
    #[error(
        "simulated evidence is not accepted: this build of vfl has no simulated attestation (enclave builds never accept it)"
    )]
    SimulationNotBuilt,
}

impl Rejection {
    /// Whether this is a verdict on genuine evidence: the quote verified
    /// (its signatures chain to the pinned root) and the policy said no
    /// (identity, TCB, attributes). Everything else (no or malformed
    /// evidence, a key not bound, a bad signature, missing or stale
    /// collateral) can come from anyone and says nothing about a peer.
    pub fn is_verdict(&self) -> bool {
        matches!(
            self,
            Rejection::TcbStatus { .. }
                | Rejection::TcbEvalBelowFloor { .. }
                | Rejection::Debug { .. }
                | Rejection::Attributes { .. }
                | Rejection::Identity(_)
                | Rejection::Appraisal(_)
        )
    }
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
    pub tee_type: TeeType,
    /// The quote format version (3 for SGX, 4 or 5 for TDX).
    pub quote_version: u16,
    #[serde(flatten)]
    pub identity: Identity,
    pub debug: bool,
    pub tcb_status: String,
    pub advisory_ids: Vec<String>,
    /// The collateral's TCB evaluation data number (the lower of TCB info
    /// and QE identity).
    pub tcb_eval_data_number: u32,
    /// The collateral's ever-increasing numbers, for the freshness check.
    pub collateral_marks: Marks,
    /// The platform family the collateral is for (FMSPC and PCK CA).
    pub platform: String,
    /// dcap-qvl's verified claims, for its policy appraisal.
    #[serde(skip)]
    pub claims: Box<dcap_qvl::QuoteClaims>,
}

/// Verify a quote's signatures and chains against `root` with `collateral` at `now`.
pub fn verify_quote(
    quote: &[u8],
    collateral: &dcap_qvl::QuoteCollateralV3,
    root: &Root,
    now: u64,
) -> Result<QuoteReport, Rejection> {
    crate::quote::check_quote_structure(quote).map_err(|e| Rejection::Quote(format!("malformed quote: {e}")))?;
    let verifier = match root {
        Root::Intel => dcap_qvl::verify::QuoteVerifier::new_prod(),
        Root::Dev(der) => dcap_qvl::verify::QuoteVerifier::new(der.clone()),
    }
    // The DEBUG attribute is judged below against the policy, with a clear reason.
    .allow_debug(true);
    // Cryptographic verification and the claims; the policy is applied by
    // [`Verifier::appraise`].
    let claims = crate::guard::no_panic(
        || "the quote verifier failed on malformed collateral or certificate chains".to_string(),
        || {
            verifier
                .verify_with_policy(quote, collateral.clone(), now, &dcap_qvl::QuotePolicy::claims_only(now))
                .map_err(|e| format!("{e:#}"))
        },
    )
    .map_err(|detail| {
        if detail.contains("xpired") || detail.contains("in the future") {
            Rejection::CollateralExpired { at: now, detail }
        } else {
            Rejection::Quote(detail)
        }
    })?;
    let identity = if let Some(r) = claims.report.as_sgx() {
        Identity::Sgx(EnclaveIdentity {
            mr_enclave: r.mr_enclave,
            mr_signer: r.mr_signer,
            isv_prod_id: r.isv_prod_id,
            isv_svn: r.isv_svn,
            attributes: r.attributes,
        })
    } else if let Some(r) = claims.report.as_td10() {
        Identity::Tdx(crate::tdx::TdIdentity::from_verified(r))
    } else {
        return Err(Rejection::Quote(
            "the quote is neither an SGX enclave nor a TD quote".into(),
        ));
    };
    let platform = crate::pccs::CollateralKey::of_quote(quote)
        .map(|k| k.family())
        .map_err(Rejection::Quote)?;
    Ok(QuoteReport {
        tee_type: identity.tee(),
        quote_version: claims.header.version,
        debug: identity.is_debug(),
        identity,
        tcb_status: claims.tcb.status.to_string(),
        advisory_ids: claims.tcb.advisory_ids.clone(),
        tcb_eval_data_number: claims.tcb.eval_data_number,
        // The collateral is verified by now, so its numbers are Intel's.
        collateral_marks: crate::freshness::marks_of_collateral(collateral).map_err(Rejection::Quote)?,
        platform,
        claims: Box::new(claims),
    })
}

/// A peer that passed every check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerReport {
    pub mode: Mode,
    pub carrier: &'static str,
    #[serde(flatten)]
    pub quote: QuoteReport,
    /// Indices of the entries that matched (ascending), in `sgx_mrs` or
    /// `tdx_mrs` as the quote's TEE says.
    pub matched_entries: Vec<usize>,
    /// The roles those entries admit the peer as.
    pub admitted_as: Vec<PartyRole>,
}

impl PeerReport {
    /// Whether the policy admits this peer as `role`.
    pub fn admits(&self, role: PartyRole) -> bool {
        self.admitted_as.contains(&role)
    }

    /// Why the peer may not play `role`, if it may not.
    pub fn check_role(&self, role: PartyRole) -> Result<(), String> {
        if self.admits(role) {
            return Ok(());
        }
        let entries = self.entry_names();
        let admitted: Vec<&str> = self.admitted_as.iter().map(|r| r.as_str()).collect();
        Err(format!(
            "the peer plays the {role}, but the policy entries that admit its enclave ({}) allow it only as {}",
            entries.join(", "),
            admitted.join(" or ")
        ))
    }
}

impl PeerReport {
    fn entry_names(&self) -> Vec<String> {
        let list = self.quote.tee_type.policy_list();
        self.matched_entries.iter().map(|i| format!("{list}[{i}]")).collect()
    }
}

impl std::fmt::Display for PeerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entry_names();
        let roles: Vec<&str> = self.admitted_as.iter().map(|r| r.as_str()).collect();
        write!(
            f,
            "{} peer ({}) {} tcb={} ({}, as {}; {} evidence)",
            self.mode,
            self.quote.tee_type,
            self.quote.identity,
            self.quote.tcb_status,
            entries.join(", "),
            roles.join("/"),
            self.carrier
        )
    }
}

/// Verifies peers against one policy.
pub struct Verifier {
    policy: Policy,
    collateral: Option<Arc<dyn CollateralProvider>>,
    clock: Clock,
    freshness: Arc<Freshness>,
}

impl Verifier {
    /// A verifier whose collateral high-water marks live in memory only.
    pub fn new(policy: Policy, collateral: Option<Arc<dyn CollateralProvider>>, clock: Clock) -> Self {
        Self::with_freshness(policy, collateral, clock, Arc::new(Freshness::in_memory()))
    }

    /// A verifier sharing `freshness` (kept sealed on disk by the caller).
    pub fn with_freshness(
        policy: Policy,
        collateral: Option<Arc<dyn CollateralProvider>>,
        clock: Clock,
        freshness: Arc<Freshness>,
    ) -> Self {
        Self {
            policy,
            collateral,
            clock,
            freshness,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn freshness(&self) -> &Arc<Freshness> {
        &self.freshness
    }

    /// Verify one RA-TLS certificate.
    pub fn verify_cert(&self, cert_der: &[u8]) -> Result<PeerReport, Rejection> {
        let evidence = cert::extract(cert_der)?;
        let view = QuoteView::parse(&evidence.quote).map_err(Rejection::Evidence)?;
        if view.tee != TeeType::Sgx && evidence.binding == cert::Binding::Legacy {
            return Err(Rejection::Evidence(
                "a TDX quote in Gramine's legacy extension, which carries SGX quotes only".into(),
            ));
        }
        evidence.check_binding(&view.report_data())?;
        let (mode, quote) = self.verify_evidence(&evidence)?;
        let matched_entries = self.appraise(&quote, mode)?;
        Ok(PeerReport {
            mode,
            carrier: evidence.carrier(),
            admitted_as: self.policy.roles_of(quote.tee_type, &matched_entries),
            quote,
            matched_entries,
        })
    }

    fn verify_evidence(&self, ev: &Evidence) -> Result<(Mode, QuoteReport), Rejection> {
        let now = self.clock.now();
        if let Some(sim) = &ev.sim {
            return self.verify_simulated(ev, sim, now);
        }
        let Some(provider) = &self.collateral else {
            return Err(Rejection::NoCollateral(
                "no collateral source is configured (give --pccs-url URL or --collateral FILE)".into(),
            ));
        };
        let collateral = provider.collateral_for(&ev.quote).map_err(Rejection::NoCollateral)?;
        let report = verify_quote(&ev.quote, &collateral, &Root::Intel, now)?;
        Ok((Mode::hardware(report.tee_type), report))
    }

    #[cfg(feature = "dev")]
    fn verify_simulated(
        &self,
        ev: &Evidence,
        sim: &crate::attester::SimEvidence,
        now: u64,
    ) -> Result<(Mode, QuoteReport), Rejection> {
        let root = hex::encode(dev_root_fingerprint(&sim.root_der)?);
        if !self.policy.allow_simulated {
            return Err(Rejection::SimulatedNotAllowed { root });
        }
        if !self.policy.simulated_roots.iter().any(|r| hex::encode(r) == root) {
            return Err(Rejection::UntrustedSimRoot { root });
        }
        let report = verify_quote(&ev.quote, &sim.collateral, &Root::Dev(sim.root_der.clone()), now)?;
        Ok((Mode::Simulated, report))
    }

    #[cfg(not(feature = "dev"))]
    fn verify_simulated(
        &self,
        _ev: &Evidence,
        _sim: &crate::attester::SimEvidence,
        _now: u64,
    ) -> Result<(Mode, QuoteReport), Rejection> {
        Err(Rejection::SimulationNotBuilt)
    }

    /// Apply the policy to a verified quote presented with `mode` evidence:
    /// TCB status, the TCB evaluation floor and collateral freshness,
    /// dcap-qvl's policy checks, attributes, identity. Returns the indices
    /// of the matching `sgx_mrs` entries, and raises the collateral
    /// high-water marks.
    pub fn appraise(&self, q: &QuoteReport, mode: Mode) -> Result<Vec<usize>, Rejection> {
        let p = &self.policy;
        if !p.allowed_tcb_statuses.contains(&q.tcb_status) {
            return Err(Rejection::TcbStatus {
                status: q.tcb_status.clone(),
                allowed: p.allowed_tcb_statuses.join(", "),
                advisories: q.advisory_ids.join(", "),
            });
        }
        if let Some(min) = p.min_tcb_eval_data_number
            && q.tcb_eval_data_number < min
        {
            return Err(Rejection::TcbEvalBelowFloor {
                got: q.tcb_eval_data_number,
                min,
            });
        }
        if let Err((what, got, seen)) = self.freshness.check(&q.platform, &q.collateral_marks) {
            return Err(Rejection::StaleCollateral {
                family: q.platform.clone(),
                what,
                got,
                seen,
            });
        }
        // The same rules once more through dcap-qvl's own policy engine
        // (status list, evaluation floor, expiry at our clock).
        use dcap_qvl::Policy as _;
        crate::guard::no_panic(
            || "the policy engine failed on the claims".to_string(),
            || self.dcap_policy().validate(&q.claims).map_err(|e| format!("{e:#}")),
        )
        .map_err(Rejection::Appraisal)?;
        if let Some((attributes, why)) = bad_attributes(&q.identity, p.allow_debug) {
            return Err(match why {
                None => Rejection::Debug { attributes },
                Some(why) => Rejection::Attributes { attributes, why },
            });
        }
        let matched = p
            .check_identity(&q.identity, mode)
            .map_err(|e| Rejection::Identity(e.0))?;
        self.freshness.record(&q.platform, &q.collateral_marks);
        Ok(matched)
    }

    /// dcap-qvl's policy for this policy: the allowed statuses (an allowed
    /// out-of-date status is allowed without a grace period limit, as the
    /// status list says), the evaluation floor; platform flags (SMT,
    /// dynamic platform, cached keys) are not restricted.
    fn dcap_policy(&self) -> dcap_qvl::QuotePolicy {
        let p = &self.policy;
        let mut d = dcap_qvl::QuotePolicy::strict(self.clock.now())
            .allow_smt(true)
            .allow_dynamic_platform(true)
            .allow_cached_keys(true)
            .platform_grace_period(std::time::Duration::from_secs(u64::MAX / 4))
            .qe_grace_period(std::time::Duration::from_secs(u64::MAX / 4));
        for s in &p.allowed_tcb_statuses {
            if let Ok(status) = serde_json::from_value::<dcap_qvl::TcbStatus>(serde_json::Value::String(s.clone())) {
                d = d.allow_status(status);
            }
        }
        if let Some(min) = p.min_tcb_eval_data_number {
            d = d.min_tcb_eval_data_number(min);
        }
        d
    }
}

/// Verify this party's own hardware quote (from its own certificate) the
/// way a peer will, and return the identity dcap-qvl verified: what
/// `"self"` policy entries may be bound to. The quote comes back from the
/// quoting service through the untrusted host, which could alter the body
/// it carries; only a verified body says who we are. Simulated evidence is
/// returned as parsed (nothing protects a simulated party from its host).
pub fn verified_own_identity(
    cert: &crate::RaTlsCert,
    collateral: Option<&dyn CollateralProvider>,
    clock: Clock,
    wait: std::time::Duration,
) -> Result<Identity, Rejection> {
    let ev = cert::extract(&cert.cert_der)?;
    let view = QuoteView::parse(&ev.quote).map_err(Rejection::Evidence)?;
    ev.check_binding(&view.report_data())?;
    if !cert.mode.is_hardware() {
        return Ok(view.identity().clone());
    }
    let Some(provider) = collateral else {
        return Err(Rejection::NoCollateral(
            "our own quote must be verified before policy entries saying \"self\" are bound to it, and no \
             collateral source is configured (give --pccs-url URL or --collateral FILE)"
                .into(),
        ));
    };
    let coll = provider
        .collateral_waiting(&ev.quote, wait)
        .map_err(Rejection::NoCollateral)?;
    let report = verify_quote(&ev.quote, &coll, &Root::Intel, clock.now())?;
    if &report.identity != view.identity() {
        return Err(Rejection::Quote(
            "our own quote's verified identity differs from the one it claims".into(),
        ));
    }
    Ok(report.identity)
}

/// Attributes a policy refuses: `(attributes in hex, None)` for a DEBUG
/// enclave or TD the policy does not allow, `(attributes, Some(why))` for
/// anything else. dcap-qvl has already refused TDs with migration,
/// reserved bits, service TDs or without SEPT_VE_DISABLE.
fn bad_attributes(id: &Identity, allow_debug: bool) -> Option<(String, Option<&'static str>)> {
    match id {
        Identity::Sgx(id) => {
            let a = id.attributes;
            let attributes = hex::encode(a);
            if a[0] & attr::DEBUG != 0 && !allow_debug {
                return Some((attributes, None));
            }
            let why = if a[0] & attr::INIT == 0 {
                "INIT is not set"
            } else if a[0] & attr::MODE64BIT == 0 {
                "MODE64BIT is not set"
            } else if a[0] & attr::PROVISION_KEY != 0 {
                "PROVISION_KEY is set (only Intel's provisioning enclaves may have it)"
            } else if a[0] & attr::EINITTOKEN_KEY != 0 {
                "EINITTOKEN_KEY is set (only Intel's launch enclave may have it)"
            } else {
                return None;
            };
            Some((attributes, Some(why)))
        }
        Identity::Tdx(id) => {
            let a = id.attributes();
            let attributes = hex::encode(id.td_attributes);
            if a & crate::tdx::attr::DEBUG != 0 && !allow_debug {
                return Some((attributes, None));
            }
            if a & crate::tdx::attr::PROFILING != 0 && !allow_debug {
                return Some((
                    attributes,
                    Some("TD profiling is enabled (the host can observe the TD)"),
                ));
            }
            None
        }
    }
}

/// SHA-256 of a development root certificate's public key (SPKI DER).
pub fn dev_root_fingerprint(root_der: &[u8]) -> Result<[u8; 32], Rejection> {
    let (_, root) = x509_parser::parse_x509_certificate(root_der)
        .map_err(|e| Rejection::Evidence(format!("development root certificate: {e}")))?;
    Ok(Sha256::digest(root.tbs_certificate.subject_pki.raw).into())
}
