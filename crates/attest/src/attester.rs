//! Evidence providers: the SGX DCAP quote from Gramine's `/dev/attestation`,
//! the TDX quote from the Linux configfs-tsm interface inside a TD, and the
//! simulated quotes (SGX or TDX) from the development PKI.

use std::path::{Path, PathBuf};

use crate::AttestError;
#[cfg(feature = "dev")]
use crate::devpki::{DevRoot, SimPlatform, SimPlatformOptions};
#[cfg(feature = "dev")]
use crate::quote::Identity;
use crate::quote::{QuoteView, TeeType};
#[cfg(feature = "dev")]
use crate::sgx::{EnclaveIdentity, PRODUCTION_ATTRIBUTES};
#[cfg(feature = "dev")]
use crate::tdx::TdIdentity;

/// Where the evidence of this process comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A hardware quote from the SGX quoting enclave, through Gramine.
    Sgx,
    /// A hardware quote from the TDX quoting enclave, through configfs-tsm.
    Tdx,
    /// A quote (SGX or TDX layout) signed by a development PKI: no hardware
    /// protection at all.
    Simulated,
}

impl Mode {
    /// The hardware mode of quotes from `tee`.
    pub fn hardware(tee: TeeType) -> Self {
        match tee {
            TeeType::Sgx => Mode::Sgx,
            TeeType::Tdx => Mode::Tdx,
        }
    }

    /// Whether the evidence comes from a hardware TEE.
    pub fn is_hardware(self) -> bool {
        self != Mode::Simulated
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Sgx => "sgx",
            Mode::Tdx => "tdx",
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
        if view.tee != TeeType::Sgx {
            return Err(AttestError::Evidence(format!("{}: not an SGX quote", qp.display())));
        }
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

/// The Linux configfs-tsm report interface inside a TDX guest (Linux 6.7+):
/// `mkdir` an entry under the report root, write the report data to its
/// `inblob`, read the quote from its `outblob`. The entry's `generation`
/// counts writes, so a quote read while another process wrote the same entry
/// is detected and taken again.
pub struct TdxAttester {
    entry: PathBuf,
    /// Whether this process made the entry (and removes it when done).
    created: bool,
    /// One quote at a time through this process's entry.
    lock: std::sync::Mutex<()>,
}

/// How often a quote is retried when another writer changed the entry.
const TSM_ATTEMPTS: usize = 3;

impl TdxAttester {
    /// The default report root.
    pub const REPORT_ROOT: &'static str = "/sys/kernel/config/tsm/report";

    /// Open the report interface at `root`, creating this process's entry
    /// (`vfl-<pid>`); fails clearly outside a TDX guest.
    pub fn open(root: &Path) -> Result<Self, AttestError> {
        let not_td = |why: String| AttestError::NotInTd {
            root: root.display().to_string(),
            why,
        };
        if !root.is_dir() {
            return Err(not_td(
                "it does not exist: no configfs-tsm report interface (not a TDX guest, a kernel before 6.7, or \
                 configfs not mounted at /sys/kernel/config)"
                    .into(),
            ));
        }
        let entry = root.join(format!("vfl-{}", std::process::id()));
        let created = match std::fs::create_dir(&entry) {
            Ok(()) => true,
            // A leftover of an earlier process with our pid: reused (the
            // generation check catches a concurrent writer), if it is a
            // directory and not a link to somewhere else.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let m = std::fs::symlink_metadata(&entry).map_err(|e| tsm_io(&entry, e))?;
                if !m.is_dir() {
                    return Err(not_td(format!("{} exists and is not a directory", entry.display())));
                }
                false
            }
            Err(e) => return Err(tsm_io(&entry, e)),
        };
        let provider_path = entry.join("provider");
        let provider = std::fs::read_to_string(&provider_path)
            .map_err(|e| not_td(format!("{}: {e}: the entry has no provider", provider_path.display())))?;
        let provider = provider.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        if provider != "tdx_guest" {
            return Err(not_td(format!(
                "the report provider is {provider:?}, not \"tdx_guest\": this is not a TDX guest"
            )));
        }
        Ok(Self {
            entry,
            created,
            lock: std::sync::Mutex::new(()),
        })
    }

    /// This process's report entry.
    pub fn entry(&self) -> &Path {
        &self.entry
    }

    fn generation(&self) -> Result<String, AttestError> {
        let p = self.entry.join("generation");
        std::fs::read_to_string(&p)
            .map(|g| g.trim().to_string())
            .map_err(|e| tsm_io(&p, e))
    }

    fn quote_once(&self, report_data: &[u8; 64]) -> Result<Option<Vec<u8>>, AttestError> {
        let inblob = self.entry.join("inblob");
        std::fs::write(&inblob, report_data).map_err(|e| tsm_io(&inblob, e))?;
        let before = self.generation()?;
        let outblob = self.entry.join("outblob");
        let quote = std::fs::read(&outblob).map_err(|e| tsm_io(&outblob, e))?;
        if self.generation()? != before {
            return Ok(None);
        }
        let view =
            QuoteView::parse(&quote).map_err(|e| AttestError::Evidence(format!("{}: {e}", outblob.display())))?;
        if view.tee != TeeType::Tdx {
            return Err(AttestError::Evidence(format!("{}: not a TDX quote", outblob.display())));
        }
        if view.report_data() != *report_data {
            return Err(AttestError::Evidence(format!(
                "{}: the quote does not carry the report data written to inblob",
                outblob.display()
            )));
        }
        Ok(Some(quote))
    }
}

/// An I/O error on the report interface; EBUSY means another writer.
fn tsm_io(path: &Path, source: std::io::Error) -> AttestError {
    const EBUSY: i32 = 16;
    if source.raw_os_error() == Some(EBUSY) {
        AttestError::TsmBusy {
            path: path.display().to_string(),
            why: "the kernel reports the report interface busy (EBUSY)".into(),
        }
    } else {
        AttestError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl Attester for TdxAttester {
    fn mode(&self) -> Mode {
        Mode::Tdx
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..TSM_ATTEMPTS {
            if let Some(q) = self.quote_once(report_data)? {
                return Ok(q);
            }
        }
        Err(AttestError::TsmBusy {
            path: self.entry.display().to_string(),
            why: format!(
                "its generation changed while the quote was read, {TSM_ATTEMPTS} times: another process writes the same entry"
            ),
        })
    }

    fn sim_evidence(&self) -> Option<SimEvidence> {
        None
    }
}

impl Drop for TdxAttester {
    fn drop(&mut self) {
        // configfs removes the entry with its attributes; elsewhere this
        // fails harmlessly on a non-empty directory.
        if self.created {
            let _ = std::fs::remove_dir(&self.entry);
        }
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

/// Identity fields a simulated TD claims.
#[cfg(feature = "dev")]
#[derive(Clone, Debug)]
pub struct SimTdIdentity {
    pub mr_td: [u8; 48],
    /// RTMR0-3.
    pub rtmr: [[u8; 48]; 4],
    pub mr_config_id: [u8; 48],
    pub debug: bool,
}

#[cfg(feature = "dev")]
impl SimTdIdentity {
    /// mr_td = SHA-384 of the running executable, RTMRs and mr_config_id zero.
    pub fn of_running_binary() -> Result<Self, AttestError> {
        let exe = std::env::current_exe().map_err(|source| AttestError::Io {
            path: "current executable".into(),
            source,
        })?;
        let bytes = std::fs::read(&exe).map_err(|source| AttestError::Io {
            path: exe.display().to_string(),
            source,
        })?;
        let mr_td = <sha2::Sha384 as sha2::Digest>::digest(&bytes).into();
        Ok(Self {
            mr_td,
            rtmr: [[0; 48]; 4],
            mr_config_id: [0; 48],
            debug: false,
        })
    }
}

/// Quotes from a development PKI (see `crate::devpki`).
#[cfg(feature = "dev")]
pub struct SimAttester {
    platform: SimPlatform,
    identity: Identity,
}

#[cfg(feature = "dev")]
impl SimAttester {
    /// A simulated SGX enclave (`opts.tee` must be SGX).
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
        let opts = SimPlatformOptions {
            tee: TeeType::Sgx,
            ..opts.clone()
        };
        Ok(Self {
            platform: SimPlatform::new(root, &opts)?,
            identity: Identity::Sgx(identity),
        })
    }

    /// A simulated TDX trust domain.
    pub fn new_tdx(root: &DevRoot, id: &SimTdIdentity, opts: &SimPlatformOptions) -> Result<Self, AttestError> {
        let mut attributes = crate::tdx::attr::SEPT_VE_DISABLE;
        if id.debug {
            attributes |= crate::tdx::attr::DEBUG;
        }
        let [rtmr0, rtmr1, rtmr2, rtmr3] = id.rtmr;
        let identity = TdIdentity {
            mr_td: id.mr_td,
            rtmr0,
            rtmr1,
            rtmr2,
            rtmr3,
            mr_config_id: id.mr_config_id,
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            td_attributes: attributes.to_le_bytes(),
            xfam: crate::tdx::TYPICAL_XFAM,
            tee_tcb_svn: crate::devpki::SIM_TEE_TCB_SVN,
        };
        let opts = SimPlatformOptions {
            tee: TeeType::Tdx,
            ..opts.clone()
        };
        Ok(Self {
            platform: SimPlatform::new(root, &opts)?,
            identity: Identity::Tdx(identity),
        })
    }

    pub fn identity(&self) -> &Identity {
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
