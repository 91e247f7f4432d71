//! Remote attestation for enclave-vfl.
//!
//! * [`attester`]: evidence providers, SGX (Gramine's `/dev/attestation`),
//!   TDX (configfs-tsm in a TD guest) and simulated (a development PKI,
//!   [`devpki`], producing real-format SGX or TDX quotes);
//! * [`quote`], [`sgx`], [`tdx`]: the quote layouts and the identities
//!   they carry (an enclave's or a trust domain's);
//! * [`cert`]: RA-TLS certificates carrying the quote (Gramine legacy and TCG
//!   DICE extensions) bound to a fresh key, and their parser;
//! * [`verify`]: quote verification with `dcap-qvl`, TCB status, attributes
//!   and identity policy ([`policy`], the original's `dynamic_config.json`);
//! * [`tls`]: rustls client and server configurations whose verifiers run all
//!   of the above during the handshake (mutual authentication mandatory);
//! * [`freshness`]: collateral high-water marks (no appraisal against
//!   older collateral than already seen);
//! * [`seal`]: encryption at rest with the enclave's sealing key, each file
//!   bound to its job, role, step, model, policy and run;
//! * [`mrsigner`]: MRSIGNER from an enclave signing key;
//! * [`setup`]: the composition root wiring all of the above into the
//!   RA-TLS configurations a binary hands to its transport; the policy's
//!   writer ([`policy::write`]) next to its parser.
//!
//! The `dev` feature (on by default) adds what only development builds may
//! have: simulated evidence and its development PKI ([`devpki`]), and
//! sealing keys from files or the environment. Enclave builds
//! (`--no-default-features`) can neither produce nor accept simulated
//! evidence, whatever they are given.

pub mod attester;
pub mod cert;
pub mod collateral;
#[cfg(feature = "dev")]
pub mod devpki;
pub mod freshness;
mod guard;
pub mod mrsigner;
pub mod pccs;
pub mod policy;
pub mod quote;
pub mod seal;
pub mod setup;
pub mod sgx;
pub mod strict_json;
pub mod tdx;
pub mod tls;
pub mod verify;

use std::path::Path;

pub use attester::{Attester, Mode, SgxAttester, TdxAttester};
#[cfg(feature = "dev")]
pub use attester::{SimAttester, SimIdentity, SimTdIdentity};
pub use cert::RaTlsCert;
pub use policy::{PartyRole, Policy, PolicyError};
pub use quote::{Identity, TeeType};
pub use verify::{Clock, PeerReport, Rejection, Verifier};

/// Errors of setting up attestation (our own side).
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("SGX attestation device {root}: {why}")]
    NotInEnclave { root: String, why: String },
    #[error("TDX report interface {root}: {why}")]
    NotInTd { root: String, why: String },
    #[error("TDX report interface {path} is busy: {why}")]
    TsmBusy { path: String, why: String },
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

/// Write a secret file atomically with mode 0600 (a fresh temporary file
/// created exclusively, fsync, rename: a planted symlink is never followed).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AttestError> {
    vfl_fs::write_bytes(path, bytes, vfl_fs::Access::Private).map_err(|source| AttestError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// `n` random bytes from the operating system's generator, in hex (run and
/// process ids). Inside an SGX enclave Gramine serves these from the CPU,
/// not from the host.
pub fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // The system generator never fails on Linux; a clock-derived value
        // keeps ids unique if it ever did.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let h = <sha2::Sha256 as sha2::Digest>::digest(format!("{t}-{}", std::process::id()));
        b.iter_mut().zip(h.iter().cycle()).for_each(|(o, x)| *o = *x);
    }
    hex::encode(b)
}
