//! Sources of the collateral (TCB info, QE identity, CRLs and their issuer
//! chains) needed to verify a hardware quote offline.

use std::path::{Path, PathBuf};

use crate::AttestError;

/// Supplies collateral for a quote. Called from inside a TLS handshake, so it
/// must answer from memory (or disk), never wait on the network.
pub trait CollateralProvider: Send + Sync {
    fn collateral_for(&self, quote: &[u8]) -> Result<dcap_qvl::QuoteCollateralV3, String>;
    /// The same, allowed to wait up to `wait` for a fetch (start-up and the
    /// command-line tools, never a handshake).
    fn collateral_waiting(
        &self,
        quote: &[u8],
        _wait: std::time::Duration,
    ) -> Result<dcap_qvl::QuoteCollateralV3, String> {
        self.collateral_for(quote)
    }
    /// Where the collateral comes from, for logs.
    fn describe(&self) -> String;
}

/// Collateral from a JSON file in dcap-qvl's `QuoteCollateralV3` format (the
/// format of `dcap-qvl`'s samples and of `vfl attest collateral` output).
pub struct FileCollateral {
    path: PathBuf,
    collateral: dcap_qvl::QuoteCollateralV3,
}

impl FileCollateral {
    pub fn load(path: &Path) -> Result<Self, AttestError> {
        let bytes = std::fs::read(path).map_err(|source| AttestError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let collateral = parse(&bytes).map_err(|e| AttestError::Collateral(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            collateral,
        })
    }

    pub fn collateral(&self) -> &dcap_qvl::QuoteCollateralV3 {
        &self.collateral
    }
}

/// Parse collateral JSON.
pub fn parse(bytes: &[u8]) -> Result<dcap_qvl::QuoteCollateralV3, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not QuoteCollateralV3 JSON: {e}"))
}

impl CollateralProvider for FileCollateral {
    fn collateral_for(&self, _quote: &[u8]) -> Result<dcap_qvl::QuoteCollateralV3, String> {
        Ok(self.collateral.clone())
    }

    fn describe(&self) -> String {
        format!("collateral file {}", self.path.display())
    }
}
