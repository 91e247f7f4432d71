//! Collateral freshness: high-water marks of the collateral this party has
//! seen, so that a host cannot make the enclave appraise a peer against
//! older, still-signed collateral (a TCB info from before a TCB recovery, a
//! PCK CRL from before a revocation) by planting it in the cache or blocking
//! the PCCS.
//!
//! Per platform family (FMSPC and PCK CA), the marks are the TCB evaluation
//! data numbers of the TCB info and of the QE identity and the numbers of
//! the PCK CRL and of the root CA CRL, all of which Intel only ever
//! increases. A verified quote whose collateral is below a mark is refused;
//! a verified quote raises the marks. The marks are kept sealed on disk
//! (through a [`MarkStore`]), so they survive restarts; a host that
//! restores an older copy of that file only gets back to marks it had
//! already allowed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Collateral numbers that only grow over time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    /// TCB info `tcbEvaluationDataNumber`.
    pub tcb_eval: u32,
    /// QE identity `tcbEvaluationDataNumber`.
    pub qe_eval: u32,
    /// PCK CRL number.
    pub pck_crl: u32,
    /// Root CA CRL number.
    pub root_crl: u32,
}

impl Marks {
    /// The first number of `self` below `seen`: (what, ours, seen).
    pub fn first_older_than(&self, seen: &Marks) -> Option<(&'static str, u32, u32)> {
        [
            ("TCB info tcbEvaluationDataNumber", self.tcb_eval, seen.tcb_eval),
            ("QE identity tcbEvaluationDataNumber", self.qe_eval, seen.qe_eval),
            ("PCK CRL number", self.pck_crl, seen.pck_crl),
            ("root CA CRL number", self.root_crl, seen.root_crl),
        ]
        .into_iter()
        .find(|(_, got, seen)| got < seen)
    }

    /// Each number the larger of the two.
    pub fn max(&self, other: &Marks) -> Marks {
        Marks {
            tcb_eval: self.tcb_eval.max(other.tcb_eval),
            qe_eval: self.qe_eval.max(other.qe_eval),
            pck_crl: self.pck_crl.max(other.pck_crl),
            root_crl: self.root_crl.max(other.root_crl),
        }
    }
}

/// Reads the numbers out of collateral without verifying it (the cache uses
/// this to keep the newer of two copies; verification decides on trust).
pub fn marks_of_collateral(c: &dcap_qvl::QuoteCollateralV3) -> Result<Marks, String> {
    #[derive(Deserialize)]
    struct Eval {
        #[serde(rename = "tcbEvaluationDataNumber")]
        n: u32,
    }
    let eval = |json: &str, what: &str| {
        serde_json::from_str::<Eval>(json)
            .map(|e| e.n)
            .map_err(|e| format!("{what}: no tcbEvaluationDataNumber ({e})"))
    };
    Ok(Marks {
        tcb_eval: eval(&c.tcb_info, "TCB info")?,
        qe_eval: eval(&c.qe_identity, "QE identity")?,
        pck_crl: crl_number(&c.pck_crl).map_err(|e| format!("PCK CRL: {e}"))?,
        root_crl: crl_number(&c.root_ca_crl).map_err(|e| format!("root CA CRL: {e}"))?,
    })
}

/// The CRL number extension of a DER CRL (0 when absent).
fn crl_number(der: &[u8]) -> Result<u32, String> {
    use x509_parser::prelude::FromDer;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
        .map_err(|e| format!("not a DER CRL ({e})"))?;
    match crl.crl_number() {
        None => Ok(0),
        Some(n) => u32::try_from(n).map_err(|_| format!("CRL number {n} does not fit in 32 bits")),
    }
}

/// Where the marks are kept between runs (sealed by the caller).
pub trait MarkStore: Send + Sync {
    /// The stored bytes, if any.
    fn load(&self) -> Result<Option<Vec<u8>>, String>;
    /// Replace the stored bytes atomically.
    fn save(&self, bytes: &[u8]) -> Result<(), String>;
    /// For logs.
    fn describe(&self) -> String;
}

/// The high-water marks of one party, per platform family.
pub struct Freshness {
    marks: Mutex<BTreeMap<String, Marks>>,
    store: Option<Box<dyn MarkStore>>,
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freshness").field("marks", &*self.lock()).finish()
    }
}

impl Freshness {
    /// Marks kept in memory only (tests, `vfl attest verify`).
    pub fn in_memory() -> Self {
        Self {
            marks: Mutex::new(BTreeMap::new()),
            store: None,
        }
    }

    /// Marks loaded from and saved to `store`.
    pub fn with_store(store: Box<dyn MarkStore>) -> Result<Self, String> {
        let marks = match store.load()? {
            None => BTreeMap::new(),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a collateral high-water record ({e})", store.describe()))?,
        };
        Ok(Self {
            marks: Mutex::new(marks),
            store: Some(store),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Marks>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The marks of one platform family.
    pub fn marks(&self, family: &str) -> Option<Marks> {
        self.lock().get(family).copied()
    }

    /// Whether collateral with `got` is at least as new as everything seen
    /// for `family`: `Err((what, got, seen))` otherwise.
    pub fn check(&self, family: &str, got: &Marks) -> Result<(), (&'static str, u32, u32)> {
        match self.lock().get(family) {
            Some(seen) => got.first_older_than(seen).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// Raise the marks of `family` to `got` and persist them if they grew.
    pub fn record(&self, family: &str, got: &Marks) {
        let snapshot = {
            let mut m = self.lock();
            let old = m.get(family).copied().unwrap_or_default();
            let new = old.max(got);
            if new == old && m.contains_key(family) {
                return;
            }
            m.insert(family.to_string(), new);
            serde_json::to_vec(&*m).ok()
        };
        if let (Some(store), Some(bytes)) = (&self.store, snapshot)
            && let Err(e) = store.save(&bytes)
        {
            tracing::warn!(store = %store.describe(), error = %e, "cannot persist the collateral high-water marks");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u32) -> Marks {
        Marks {
            tcb_eval: n,
            qe_eval: n,
            pck_crl: n,
            root_crl: n,
        }
    }

    #[test]
    fn older_collateral_is_named_after_newer_was_seen() {
        let f = Freshness::in_memory();
        assert!(f.check("a", &m(3)).is_ok());
        f.record("a", &m(5));
        assert!(f.check("a", &m(5)).is_ok());
        assert!(f.check("a", &m(6)).is_ok());
        let older = Marks { pck_crl: 4, ..m(5) };
        assert_eq!(f.check("a", &older), Err(("PCK CRL number", 4, 5)));
        // Another platform family has its own marks.
        assert!(f.check("b", &m(1)).is_ok());
    }

    #[test]
    fn recording_older_marks_never_lowers_them() {
        let f = Freshness::in_memory();
        f.record("a", &m(5));
        f.record("a", &m(2));
        assert_eq!(f.marks("a"), Some(m(5)));
    }
}
