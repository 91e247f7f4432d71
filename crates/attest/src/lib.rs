//! Remote attestation for enclave-vfl.
//!
//! * [`attester`]: evidence providers, SGX (Gramine's `/dev/attestation`) and
//!   simulated (a development PKI, [`devpki`], producing real-format quotes);
//! * [`cert`]: RA-TLS certificates carrying the quote (Gramine legacy and TCG
//!   DICE extensions) bound to a fresh key, and their parser;
//! * [`verify`]: quote verification with `dcap-qvl`, TCB status, attributes
//!   and identity policy ([`policy`], the original's `dynamic_config.json`);
//! * [`tls`]: rustls client and server configurations whose verifiers run all
//!   of the above during the handshake (mutual authentication mandatory);
//! * [`mrsigner`]: MRSIGNER from an enclave signing key.

pub mod attester;
pub mod cert;
pub mod collateral;
pub mod devpki;
pub mod mrsigner;
pub mod pccs;
pub mod policy;
pub mod sgx;
pub mod tls;
pub mod verify;

use std::io::Write;
use std::path::Path;

pub use attester::{Attester, Mode, SgxAttester, SimAttester, SimIdentity};
pub use cert::RaTlsCert;
pub use policy::{Policy, PolicyError};
pub use verify::{Clock, PeerReport, Rejection, Verifier};

/// Errors of setting up attestation (our own side).
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("SGX attestation device {root}: {why}")]
    NotInEnclave { root: String, why: String },
    #[error("evidence: {0}")]
    Evidence(String),
    #[error("PKI: {0}")]
    Pki(String),
    #[error("collateral: {0}")]
    Collateral(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("key: {0}")]
    Key(String),
}

/// SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<[u8; 32], AttestError> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|source| AttestError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|source| AttestError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(h.finalize().into())
}

/// Write a secret file atomically with mode 0600 (temp file, fsync, rename).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AttestError> {
    let io = |source| AttestError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp-write");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}
