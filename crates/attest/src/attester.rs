//! Evidence providers: the SGX DCAP quote from Gramine's `/dev/attestation`,
//! and the simulated quote from the development PKI.

use std::path::{Path, PathBuf};

use crate::AttestError;
#[cfg(feature = "dev")]
use crate::devpki::{DevRoot, SimPlatform, SimPlatformOptions};
use crate::sgx::QuoteView;
#[cfg(feature = "dev")]
use crate::sgx::{EnclaveIdentity, PRODUCTION_ATTRIBUTES};

/// Where the evidence of this process comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A hardware quote from the SGX quoting enclave, through Gramine.
    Sgx,
    /// A quote signed by a development PKI: no hardware protection at all.
    Simulated,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Sgx => "sgx",
            Mode::Simulated => "simulated",
        })
    }
}

/// The development PKI material a simulated peer ships inside its certificate,
/// so that the verifier can check it against its pinned development roots.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SimEvidence {
    /// The development root certificate (DER, hex).
    #[serde(with = "hex_bytes")]
    pub root_der: Vec<u8>,
    /// The collateral of the simulated platform.
    pub collateral: dcap_qvl::QuoteCollateralV3,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Produces quotes whose report data the caller chooses.
pub trait Attester: Send + Sync {
    fn mode(&self) -> Mode;
    /// A quote over `report_data`.
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError>;
    /// The development PKI material to embed (simulated mode only).
    fn sim_evidence(&self) -> Option<SimEvidence>;
}

/// Gramine's `/dev/attestation` interface (`sgx.remote_attestation = "dcap"`).
pub struct SgxAttester {
    root: PathBuf,
}

impl SgxAttester {
    /// The default device root inside a Gramine enclave.
    pub const DEVICE_ROOT: &'static str = "/dev/attestation";

    /// Open the attestation device at `root`; fails clearly outside an SGX enclave.
    pub fn open(root: &Path) -> Result<Self, AttestError> {
        let not_sgx = |why: String| AttestError::NotInEnclave {
            root: root.display().to_string(),
            why,
        };
        if !root.is_dir() {
            return Err(not_sgx(
                "it does not exist: this process is not running inside a Gramine SGX enclave".into(),
            ));
        }
        let ty_path = root.join("attestation_type");
        let ty = match std::fs::read_to_string(&ty_path) {
            Ok(t) => t,
            Err(_) => {
                return Err(not_sgx(
                    "attestation_type is missing: Gramine runs without SGX (gramine-direct)".into(),
                ));
            }
        };
        let ty = ty.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        if ty != "dcap" {
            return Err(not_sgx(format!(
                "attestation_type is {ty:?}, not \"dcap\": set sgx.remote_attestation = \"dcap\" in the manifest"
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }
}

impl Attester for SgxAttester {
    fn mode(&self) -> Mode {
        Mode::Sgx
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        let io = |path: PathBuf| {
            move |source| AttestError::Io {
                path: path.display().to_string(),
                source,
            }
        };
        let urd = self.root.join("user_report_data");
        std::fs::write(&urd, report_data).map_err(io(urd))?;
        let qp = self.root.join("quote");
        let quote = std::fs::read(&qp).map_err(io(qp.clone()))?;
        let view = QuoteView::parse(&quote).map_err(|e| AttestError::Evidence(format!("{}: {e}", qp.display())))?;
        if view.report_data() != *report_data {
            return Err(AttestError::Evidence(format!(
                "{}: the quote does not carry the report data written to user_report_data",
                qp.display()
            )));
        }
        Ok(quote)
    }

    fn sim_evidence(&self) -> Option<SimEvidence> {
        None
    }
}

/// Identity fields a simulated enclave claims.
#[cfg(feature = "dev")]
#[derive(Clone, Debug)]
pub struct SimIdentity {
    pub mr_enclave: [u8; 32],
    /// `None`: SHA-256 of the development root's public key.
    pub mr_signer: Option<[u8; 32]>,
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    pub debug: bool,
}

#[cfg(feature = "dev")]
impl SimIdentity {
    /// mr_enclave = SHA-256 of the running executable; isv_prod_id = isv_svn = 1.
    pub fn of_running_binary() -> Result<Self, AttestError> {
        let exe = std::env::current_exe().map_err(|source| AttestError::Io {
            path: "current executable".into(),
            source,
        })?;
        let mr_enclave = crate::sha256_file(&exe)?;
        Ok(Self {
            mr_enclave,
            mr_signer: None,
            isv_prod_id: 1,
            isv_svn: 1,
            debug: false,
        })
    }
}

/// Quotes from a development PKI (see `crate::devpki`).
#[cfg(feature = "dev")]
pub struct SimAttester {
    platform: SimPlatform,
    identity: EnclaveIdentity,
}

#[cfg(feature = "dev")]
impl SimAttester {
    pub fn new(root: &DevRoot, id: &SimIdentity, opts: &SimPlatformOptions) -> Result<Self, AttestError> {
        let mut attributes = PRODUCTION_ATTRIBUTES;
        if id.debug {
            attributes[0] |= crate::sgx::attr::DEBUG;
        }
        let identity = EnclaveIdentity {
            mr_enclave: id.mr_enclave,
            mr_signer: id.mr_signer.unwrap_or_else(|| root.fingerprint()),
            isv_prod_id: id.isv_prod_id,
            isv_svn: id.isv_svn,
            attributes,
        };
        Ok(Self {
            platform: SimPlatform::new(root, opts)?,
            identity,
        })
    }

    pub fn identity(&self) -> &EnclaveIdentity {
        &self.identity
    }

    pub fn platform(&self) -> &SimPlatform {
        &self.platform
    }
}

#[cfg(feature = "dev")]
impl Attester for SimAttester {
    fn mode(&self) -> Mode {
        Mode::Simulated
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        self.platform.quote(&self.identity, report_data)
    }

    fn sim_evidence(&self) -> Option<SimEvidence> {
        Some(SimEvidence {
            root_der: self.platform.root_der().to_vec(),
            collateral: self.platform.collateral().clone(),
        })
    }
}
