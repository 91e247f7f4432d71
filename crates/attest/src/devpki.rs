//! The development PKI behind simulated attestation.
//!
//! Simulated evidence is a real DCAP quote (SGX v3 or TDX v4: same layout,
//! verified by the same `dcap-qvl` code as a hardware quote) whose certificate chain ends in a
//! development root CA instead of Intel's. The root key is the only persistent
//! secret: it is kept in a PKCS#8 PEM file and a verifier trusts it only when
//! its policy lists the SHA-256 of the root's public key in `simulated_roots`.
//! Every process start derives a fresh platform below the root: a PCK CA and
//! PCK certificate (with the Intel SGX extension), a TCB signing certificate,
//! CRLs, a signed TCB info and QE identity (the collateral), a quoting enclave
//! report and an attestation key.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::AttestError;
use crate::quote::{Identity, TeeType};
use crate::sgx::{self, EnclaveIdentity, ReportBody};
use crate::tdx;

/// Intel's QE vendor id: dcap-qvl accepts only quotes that name it.
const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9A, 0x72, 0x33, 0xF7, 0x9C, 0x4C, 0xA9, 0x94, 0x0A, 0x0D, 0xB3, 0x95, 0x7F, 0x06, 0x07,
];
/// The simulated platform's FMSPC, CPU SVN components and PCE SVN.
const FMSPC: [u8; 6] = [0x00, 0x90, 0x6E, 0xD5, 0x00, 0x00];
const CPU_SVN: [u8; 16] = [7, 7, 2, 2, 255, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const PCE_SVN: u16 = 13;
const QE_SVN: u16 = 8;
/// TEE TCB SVN of a simulated TD: TDX module SVN 3 (module version 0: no
/// separate module identity), late microcode update 2.
pub const SIM_TEE_TCB_SVN: [u8; 16] = [3, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// SGX extension OIDs of a PCK certificate (Intel PCK certificate profile).
const SGX_EXT: &[u64] = &[1, 2, 840, 113741, 1, 13, 1];

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> AttestError + '_ {
    move |e| AttestError::Pki(format!("{what}: {e}"))
}

/// The development root CA key.
pub struct DevRoot {
    key: KeyPair,
}

impl DevRoot {
    /// A fresh random root key.
    pub fn generate() -> Result<Self, AttestError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generate root key"))?;
        Ok(Self { key })
    }

    /// Parse a root key from PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, AttestError> {
        let key = KeyPair::from_pem(pem).map_err(|e| AttestError::Pki(format!("development root key: {e}")))?;
        if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
            return Err(AttestError::Pki(
                "development root key is not an ECDSA P-256 key".into(),
            ));
        }
        Ok(Self { key })
    }

    /// Load the root key from `path`, or create it there (mode 0600, written
    /// atomically) when the file does not exist. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), AttestError> {
        match std::fs::read_to_string(path) {
            Ok(pem) => Ok((
                Self::from_pem(&pem).map_err(|e| AttestError::Pki(format!("{}: {e}", path.display())))?,
                false,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let root = Self::generate()?;
                crate::write_private(path, root.key.serialize_pem().as_bytes())?;
                Ok((root, true))
            }
            Err(e) => Err(AttestError::Io {
                path: path.display().to_string(),
                source: e,
            }),
        }
    }

    /// SHA-256 of the root's DER SubjectPublicKeyInfo: what `simulated_roots` lists.
    pub fn fingerprint(&self) -> [u8; 32] {
        use rcgen::PublicKeyData;
        Sha256::digest(self.key.subject_public_key_info()).into()
    }

    fn params() -> CertificateParams {
        let mut p = ca_params("enclave-vfl development root CA (simulated SGX, not Intel)");
        p.serial_number = Some(SerialNumber::from_slice(&[1]));
        p
    }
}

/// What the simulated platform's collateral says and when it is valid.
#[derive(Clone, Debug)]
pub struct SimPlatformOptions {
    /// TCB status of the platform's only TCB level (e.g. "UpToDate", "OutOfDate").
    pub tcb_status: String,
    /// Unix time the collateral is issued at.
    pub issued_at: u64,
    /// Unix time after which the collateral has expired.
    pub next_update: u64,
    /// `tcbEvaluationDataNumber` of the TCB info and QE identity.
    pub tcb_eval_data_number: u32,
    /// Number of both CRLs.
    pub crl_number: u32,
    /// Whether the platform quotes SGX enclaves or TDX trust domains.
    pub tee: TeeType,
}

impl SimPlatformOptions {
    /// Up-to-date collateral valid from one hour ago for 30 days.
    pub fn fresh(now: u64) -> Self {
        Self {
            tcb_status: "UpToDate".into(),
            issued_at: now.saturating_sub(3600),
            next_update: now + 30 * 86_400,
            tcb_eval_data_number: 17,
            crl_number: 1,
            tee: TeeType::Sgx,
        }
    }

    /// The same for a platform quoting TDX trust domains.
    pub fn fresh_tdx(now: u64) -> Self {
        Self {
            tee: TeeType::Tdx,
            ..Self::fresh(now)
        }
    }
}

/// A simulated SGX (or TDX) platform: PCK chain, quoting enclave and
/// collateral below a dev root.
pub struct SimPlatform {
    tee: TeeType,
    root_der: Vec<u8>,
    pck_chain_pem: String,
    attestation_key: EcdsaKeyPair,
    qe_report: [u8; sgx::REPORT_BODY_LEN],
    qe_report_signature: Vec<u8>,
    qe_auth_data: [u8; 32],
    collateral: dcap_qvl::QuoteCollateralV3,
    rng: SystemRandom,
}

/// The simulated quoting enclave's report: its identity, and report data
/// binding the attestation key and the authentication data.
fn qe_report(attestation_key: &EcdsaKeyPair, qe_auth_data: &[u8; 32]) -> [u8; sgx::REPORT_BODY_LEN] {
    let attestation_pub: [u8; 64] = sgx::array(attestation_key.public_key().as_ref(), 1);
    let mut qe_report_data = [0u8; 64];
    let mut h = Sha256::new();
    h.update(attestation_pub);
    h.update(qe_auth_data);
    qe_report_data[..32].copy_from_slice(&h.finalize());
    let qe_identity = EnclaveIdentity {
        mr_enclave: Sha256::digest(b"enclave-vfl simulated quoting enclave").into(),
        mr_signer: qe_mr_signer(),
        isv_prod_id: 1,
        isv_svn: QE_SVN,
        attributes: [0x11, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0, 0, 0, 0, 0, 0, 0],
    };
    ReportBody::new(&qe_identity, CPU_SVN, &qe_report_data).0
}

/// Intel's TCB info format (v3) for the simulated platform: one TCB level
/// with the options' status (and an advisory unless UpToDate); for TDX the
/// TDX components and module.
fn tcb_info_json(opts: &SimPlatformOptions, issue: &str, next: &str) -> String {
    let advisories: Vec<String> = if opts.tcb_status == "UpToDate" {
        Vec::new()
    } else {
        vec!["VFL-SIM-0001".into()]
    };
    let mut level = serde_json::json!({
        "tcb": {
            "sgxtcbcomponents": CPU_SVN.iter().map(|svn| serde_json::json!({"svn": svn})).collect::<Vec<_>>(),
            "pcesvn": PCE_SVN,
        },
        "tcbDate": issue, "tcbStatus": opts.tcb_status, "advisoryIDs": advisories,
    });
    let mut tcb_info = serde_json::json!({
        "id": "SGX", "version": 3, "issueDate": issue, "nextUpdate": next,
        "fmspc": hex::encode_upper(FMSPC), "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": opts.tcb_eval_data_number,
    });
    if opts.tee == TeeType::Tdx {
        level["tcb"]["tdxtcbcomponents"] = SIM_TEE_TCB_SVN
            .iter()
            .map(|svn| serde_json::json!({"svn": svn}))
            .collect::<Vec<_>>()
            .into();
        tcb_info["id"] = "TDX".into();
        tcb_info["tdxModule"] = serde_json::json!({
            "mrsigner": hex::encode_upper([0u8; 48]), "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        });
        tcb_info["tdxModuleIdentities"] = serde_json::json!([]);
    }
    tcb_info["tcbLevels"] = serde_json::json!([level]);
    tcb_info.to_string()
}

/// Intel's QE identity format (v2) for the simulated quoting enclave
/// (`TD_QE` for TDX).
fn qe_identity_json(opts: &SimPlatformOptions, issue: &str, next: &str) -> String {
    serde_json::json!({
        "id": if opts.tee == TeeType::Tdx { "TD_QE" } else { "QE" }, "version": 2, "issueDate": issue, "nextUpdate": next, "tcbEvaluationDataNumber": opts.tcb_eval_data_number,
        "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000", "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": hex::encode_upper(qe_mr_signer()), "isvprodid": 1,
        "tcbLevels": [{"tcb": {"isvsvn": QE_SVN}, "tcbDate": issue, "tcbStatus": "UpToDate"}],
    })
    .to_string()
}

impl SimPlatform {
    pub fn new(root: &DevRoot, opts: &SimPlatformOptions) -> Result<Self, AttestError> {
        let rng = SystemRandom::new();
        let root_params = DevRoot::params();
        let root_cert = root_params
            .self_signed(&root.key)
            .map_err(rcgen_err("root certificate"))?;
        let root_issuer = Issuer::from_params(&root_params, &root.key);

        // PCK CA, PCK certificate, TCB signing certificate.
        let pck_ca_key = p256_key()?;
        let pck_ca_params = ca_params("enclave-vfl development PCK Processor CA");
        let pck_ca = pck_ca_params
            .signed_by(&pck_ca_key, &root_issuer)
            .map_err(rcgen_err("PCK CA certificate"))?;
        let pck_ca_issuer = Issuer::from_params(&pck_ca_params, &pck_ca_key);

        let pck_key = p256_key()?;
        let mut pck_params = leaf_params("enclave-vfl development PCK Certificate");
        pck_params
            .custom_extensions
            .push(CustomExtension::from_oid_content(SGX_EXT, sgx_extension()));
        let pck = pck_params
            .signed_by(&pck_key, &pck_ca_issuer)
            .map_err(rcgen_err("PCK certificate"))?;

        let tcb_key = p256_key()?;
        let tcb_params = leaf_params("enclave-vfl development TCB Signing");
        let tcb_cert = tcb_params
            .signed_by(&tcb_key, &root_issuer)
            .map_err(rcgen_err("TCB signing certificate"))?;

        // CRLs (empty) for both CAs, valid over the collateral window.
        let (this_update, next_update) = (datetime(opts.issued_at)?, datetime(opts.next_update)?);
        // Minimal big-endian bytes of the CRL number (DER integers have no
        // leading zero bytes).
        let crl_number = opts.crl_number.to_be_bytes();
        let crl_number = &crl_number[crl_number.iter().position(|&b| b != 0).unwrap_or(3)..];
        let crl = |issuer: &Issuer<'_, &KeyPair>| {
            CertificateRevocationListParams {
                this_update,
                next_update,
                crl_number: SerialNumber::from_slice(crl_number),
                issuing_distribution_point: None,
                revoked_certs: Vec::new(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(issuer)
            .map(|c| c.der().to_vec())
            .map_err(rcgen_err("CRL"))
        };
        let root_ca_crl = crl(&root_issuer)?;
        let pck_crl = crl(&pck_ca_issuer)?;

        // Quoting enclave: attestation key and its report signed by the PCK key.
        let attestation_key = ring_p256(&p256_key()?)?;
        let qe_auth_data = [0u8; 32];
        let qe_report = qe_report(&attestation_key, &qe_auth_data);
        let pck_signer = ring_p256(&pck_key)?;
        let qe_report_signature = sign(&pck_signer, &rng, &qe_report)?;

        // Collateral: TCB info and QE identity signed by the TCB signing key.
        let tcb_signer = ring_p256(&tcb_key)?;
        let (issue, next) = (rfc3339(opts.issued_at)?, rfc3339(opts.next_update)?);
        let tcb_info = tcb_info_json(opts, &issue, &next);
        let qe_identity_json = qe_identity_json(opts, &issue, &next);
        let tcb_chain = format!("{}{}", tcb_cert.pem(), root_cert.pem());
        let collateral = dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: format!("{}{}", pck_ca.pem(), root_cert.pem()),
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain: tcb_chain.clone(),
            tcb_info_signature: sign(&tcb_signer, &rng, tcb_info.as_bytes())?,
            tcb_info,
            qe_identity_issuer_chain: tcb_chain,
            qe_identity_signature: sign(&tcb_signer, &rng, qe_identity_json.as_bytes())?,
            qe_identity: qe_identity_json,
            pck_certificate_chain: None,
        };
        Ok(Self {
            tee: opts.tee,
            root_der: root_cert.der().to_vec(),
            pck_chain_pem: format!("{}{}{}", pck.pem(), pck_ca.pem(), root_cert.pem()),
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            collateral,
            rng,
        })
    }

    /// The root certificate (DER) the platform's chains end in.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The collateral a verifier needs for this platform's quotes.
    pub fn collateral(&self) -> &dcap_qvl::QuoteCollateralV3 {
        &self.collateral
    }

    /// Whether the platform quotes SGX enclaves or TDX trust domains.
    pub fn tee(&self) -> TeeType {
        self.tee
    }

    /// A quote over `report_data` claiming `identity`: for SGX a quote v3
    /// (certification data type 5: the PCK chain), for TDX a quote v4 with a
    /// TD 1.0 body (certification data type 6 around type 5), as Intel's
    /// quoting libraries write them.
    pub fn quote(&self, identity: &Identity, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        let (version, tee_type, body) = match (identity, self.tee) {
            (Identity::Sgx(id), TeeType::Sgx) => (3u16, 0u32, ReportBody::new(id, CPU_SVN, report_data).0.to_vec()),
            (Identity::Tdx(id), TeeType::Tdx) => (4, tdx::TEE_TYPE_TDX, tdx::report_body(id, report_data).to_vec()),
            (id, tee) => {
                return Err(AttestError::Pki(format!(
                    "a simulated {tee} platform cannot quote a {} identity",
                    id.tee()
                )));
            }
        };
        let mut q = Vec::with_capacity(sgx::HEADER_LEN + body.len() + 4 + 700 + self.pck_chain_pem.len());
        q.extend_from_slice(&version.to_le_bytes());
        q.extend_from_slice(&2u16.to_le_bytes()); // attestation key type: ECDSA-256 with P-256
        q.extend_from_slice(&tee_type.to_le_bytes());
        q.extend_from_slice(&QE_SVN.to_le_bytes());
        q.extend_from_slice(&PCE_SVN.to_le_bytes());
        q.extend_from_slice(&INTEL_QE_VENDOR_ID);
        q.extend_from_slice(&[0u8; 20]); // user data
        q.extend_from_slice(&body);
        let isv_signature = sign(&self.attestation_key, &self.rng, &q)?;
        let cert_data = self.pck_chain_pem.as_bytes();
        // QE report, its signature, QE authentication data, PCK chain.
        let mut qe = Vec::with_capacity(600 + cert_data.len());
        qe.extend_from_slice(&self.qe_report);
        qe.extend_from_slice(&self.qe_report_signature);
        qe.extend_from_slice(&(self.qe_auth_data.len() as u16).to_le_bytes());
        qe.extend_from_slice(&self.qe_auth_data);
        qe.extend_from_slice(&5u16.to_le_bytes()); // certification data: PCK certificate chain
        qe.extend_from_slice(&(cert_data.len() as u32).to_le_bytes());
        qe.extend_from_slice(cert_data);
        let mut auth = Vec::with_capacity(140 + qe.len());
        auth.extend_from_slice(&isv_signature);
        auth.extend_from_slice(&self.attestation_key.public_key().as_ref()[1..]);
        if self.tee == TeeType::Tdx {
            auth.extend_from_slice(&6u16.to_le_bytes()); // QE report certification data
            auth.extend_from_slice(&(qe.len() as u32).to_le_bytes());
        }
        auth.extend_from_slice(&qe);
        q.extend_from_slice(&(auth.len() as u32).to_le_bytes());
        q.extend_from_slice(&auth);
        Ok(q)
    }
}

fn qe_mr_signer() -> [u8; 32] {
    Sha256::digest(b"enclave-vfl simulated quoting enclave signer").into()
}

fn p256_key() -> Result<KeyPair, AttestError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generate P-256 key"))
}

fn ring_p256(key: &KeyPair) -> Result<EcdsaKeyPair, AttestError> {
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        key.serialized_der(),
        &SystemRandom::new(),
    )
    .map_err(|e| AttestError::Pki(format!("load P-256 key: {e}")))
}

/// ECDSA P-256 / SHA-256 signature as raw `r || s` (the DCAP encoding).
fn sign(key: &EcdsaKeyPair, rng: &SystemRandom, msg: &[u8]) -> Result<Vec<u8>, AttestError> {
    key.sign(rng, msg)
        .map(|s| s.as_ref().to_vec())
        .map_err(|_| AttestError::Pki("ECDSA signing failed".into()))
}

fn dn(cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "enclave-vfl development PKI");
    dn
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 12, 31);
    p.use_authority_key_identifier_extension = true;
    p
}

fn leaf_params(cn: &str) -> CertificateParams {
    let mut p = ca_params(cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::ContentCommitment];
    p
}

fn datetime(unix: u64) -> Result<OffsetDateTime, AttestError> {
    OffsetDateTime::from_unix_timestamp(unix as i64).map_err(|e| AttestError::Pki(format!("time {unix}: {e}")))
}

fn rfc3339(unix: u64) -> Result<String, AttestError> {
    let t = datetime(unix)?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// The Intel SGX extension of a PCK certificate: PPID, TCB (16 components,
/// PCE SVN, CPU SVN), PCE ID, FMSPC and SGX type.
fn sgx_extension() -> Vec<u8> {
    let oid = |tail: &[u64]| {
        let mut arcs = SGX_EXT.to_vec();
        arcs.extend_from_slice(tail);
        yasna::models::ObjectIdentifier::from_slice(&arcs)
    };
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[1]));
                w.next().write_bytes(&[0x5a; 16]);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[2]));
                w.next().write_sequence(|w| {
                    for (i, svn) in CPU_SVN.iter().enumerate() {
                        w.next().write_sequence(|w| {
                            w.next().write_oid(&oid(&[2, i as u64 + 1]));
                            w.next().write_u8(*svn);
                        });
                    }
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[2, 17]));
                        w.next().write_u16(PCE_SVN);
                    });
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[2, 18]));
                        w.next().write_bytes(&CPU_SVN);
                    });
                });
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[3]));
                w.next().write_bytes(&[0, 0]);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[4]));
                w.next().write_bytes(&FMSPC);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[5]));
                w.next().write_enum(0);
            });
        })
    })
}
