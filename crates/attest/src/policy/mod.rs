//! The enclave identity policy: the original's `dynamic_config.json`, read
//! unchanged where it is safe, plus explicit extensions in the same file.
//!
//! ```json
//! { "verify_mr_enclave": "on", "verify_mr_signer": "on",
//!   "verify_isv_prod_id": "on", "verify_isv_svn": "on",
//!   "sgx_mrs": [
//!     { "mr_enclave": "self", "mr_signer": "<leader's signer>", "role": "leader",
//!       "isv_prod_id": "1", "min_isv_svn": "1" },
//!     { "mr_enclave": "self", "mr_signer": "<follower's signer>", "role": "follower",
//!       "isv_prod_id": "1", "min_isv_svn": "1" } ],
//!   "allowed_tcb_statuses": ["UpToDate"], "allow_debug": false,
//!   "min_tcb_eval_data_number": 17,
//!   "release_exports": [] }
//! ```
//!
//! Any entry of `sgx_mrs` may match; within an entry every field switched on
//! by a `verify_*` flag must match. `"mr_enclave": "self"` (or `mr_signer`)
//! means this process's own value, read from its own quote at start: two
//! parties running the same enclave (same source, same manifest, same
//! policy) accept each other without either policy naming the other's
//! measurement, which would be circular, since the policy is measured.
//! Signers are not measured, so a policy can name both parties' signers.
//!
//! Trust domains (TDX) have their own list, `tdx_mrs`: entries pin `mr_td`,
//! `rtmr0`..`rtmr3` and `mr_config_id` (48-byte values, or `"self"`), with
//! the same `role` and `mode`; a TD quote is matched only against
//! `tdx_mrs`, an enclave quote only against `sgx_mrs`. A policy may hold
//! only `tdx_mrs`, without the enclave `verify_*` flags (docs/tdx.md).
//!
//! Entries may say which party they admit (`"role"`): the peer's role in
//! the handshake must be one its matching entries allow. `"mode":
//! "simulated"` marks an entry for simulated evidence; simulated evidence
//! matches only such entries and hardware evidence never does.
//!
//! Deliberate departures from the original's parser: a flag must be
//! `"on"`/`"off"` (or a JSON boolean) and must be present, hex must be
//! exactly 64 digits, unknown and duplicate keys are errors (a typo must not
//! switch a check off), and a policy that pins neither the enclave nor its
//! signer is refused instead of accepting enclaves anyone can build.

pub mod write;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::attester::Mode;
use crate::quote::{Identity, TeeType};
use crate::sgx::EnclaveIdentity;
use crate::strict_json::{self, StrictError};
use crate::tdx::TdIdentity;

/// TCB statuses a policy may allow (Revoked is never acceptable).
pub const TCB_STATUSES: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
];

/// The two parties of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartyRole {
    Leader,
    Follower,
}

impl PartyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PartyRole::Leader => "leader",
            PartyRole::Follower => "follower",
        }
    }

    /// The other party.
    pub fn peer(self) -> Self {
        match self {
            PartyRole::Leader => PartyRole::Follower,
            PartyRole::Follower => PartyRole::Leader,
        }
    }
}

impl std::fmt::Display for PartyRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PartyRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "leader" => Ok(PartyRole::Leader),
            "follower" => Ok(PartyRole::Follower),
            other => Err(format!("{other:?} is not a role (leader or follower)")),
        }
    }
}

/// What is wrong with a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyErrorKind {
    /// A malformed or missing value.
    #[error("{0}")]
    Invalid(String),
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// An object repeats a key.
    #[error("the key appears twice (line {line}): a policy must say each thing once")]
    DuplicateKey { line: usize },
    /// Neither the enclave nor its signer is pinned.
    #[error(
        "neither verify_mr_enclave nor verify_mr_signer is on: the policy would admit any enclave with a matching \
         product id and version, whoever built it; pin the peer's enclave (mr_enclave) and its signer (mr_signer)"
    )]
    PinsNothing,
    /// A production party (`--attestation sgx` or `tdx`) refuses policies that admit simulated evidence.
    #[error(
        "admits simulated peers, but this party runs with hardware evidence (--attestation sgx or tdx): a \
         production party never accepts simulated evidence (remove allow_simulated and every entry with \
         \"mode\": \"simulated\")"
    )]
    SimulatedUnderSgx,
    /// A production party's policy must admit only the peer party's copy of
    /// this same enclave: every hardware entry pins `"mr_enclave": "self"`,
    /// a signer and a role.
    #[error(
        "{0}: a party with SGX evidence admits only the other party's copy of this same enclave (\"mr_enclave\": \"self\", its signer, its role); a peer running other code would not protect what it learns from us"
    )]
    NotThisEnclave(String),
    /// A production party admits a TD only by the measurements that say
    /// which code it runs, and only as one role.
    #[error(
        "{0}: a party with hardware evidence admits a trust domain only by its firmware (mr_td), the firmware's \
         configuration and the host-supplied ACPI tables (rtmr0), kernel (rtmr1) and initrd and command line \
         (rtmr2), as one role; a TD pinned by less could run code its operator chose"
    )]
    WeakTdEntry(String),
    /// A TD party admits an enclave by its signer, product and version, and role.
    #[error(
        "{0}: a party in a TD admits an enclave only by its signer, product id and version (mr_signer, \
         isv_prod_id, isv_svn or min_isv_svn, their verify_* flags on) and as one role; it has no enclave of its \
         own to say \"self\" for"
    )]
    WeakEnclaveEntry(String),
    /// A TDX party cannot say "self" for an SGX enclave, nor an SGX party for a TD.
    #[error("{0}: \"self\" names this party's own measurement, and this party is not that kind of TEE")]
    SelfOfOtherTee(String),
    /// This build has no simulated attestation at all.
    #[error(
        "admits simulated peers, but this build of vfl has no simulated attestation (built without the \
         `simulation` feature, as enclave builds are) and never accepts simulated evidence"
    )]
    SimulationNotBuilt,
}

/// A malformed or unusable policy: which file, which field, what is wrong.
#[derive(Clone, Debug, thiserror::Error)]
#[error("policy {source_name}: {field}: {kind}")]
pub struct PolicyError {
    pub source_name: String,
    pub field: String,
    pub kind: PolicyErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvnRule {
    Equal(u16),
    AtLeast(u16),
}

/// One allowed enclave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub mr_enclave: Option<[u8; 32]>,
    pub mr_signer: Option<[u8; 32]>,
    /// `"self"`: filled in by [`Policy::bind_self`].
    pub mr_enclave_self: bool,
    pub mr_signer_self: bool,
    pub isv_prod_id: Option<u16>,
    pub isv_svn: Option<SvnRule>,
    /// The party this entry admits (`None`: either).
    pub role: Option<PartyRole>,
    /// The evidence this entry is for.
    pub mode: Mode,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            mr_enclave: None,
            mr_signer: None,
            mr_enclave_self: false,
            mr_signer_self: false,
            isv_prod_id: None,
            isv_svn: None,
            role: None,
            mode: Mode::Sgx,
        }
    }
}

/// A pinned 48-byte TD measurement: a value, or `"self"` (this party's own,
/// filled in by [`Policy::bind_self`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    Value([u8; 48]),
    Own(Option<[u8; 48]>),
}

impl Pin {
    fn value(&self) -> Option<[u8; 48]> {
        match self {
            Pin::Value(v) | Pin::Own(Some(v)) => Some(*v),
            Pin::Own(None) => None,
        }
    }
}

/// One allowed trust domain (`tdx_mrs`): every field given must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdEntry {
    pub mr_td: Option<Pin>,
    /// RTMR0-3.
    pub rtmr: [Option<Pin>; 4],
    pub mr_config_id: Option<Pin>,
    /// The party this entry admits (`None`: either).
    pub role: Option<PartyRole>,
    /// The evidence this entry is for ([`Mode::Tdx`] or [`Mode::Simulated`]).
    pub mode: Mode,
}

/// The keys a `tdx_mrs` entry may have, in the order `vfl attest trust` writes them.
pub const TD_ENTRY_KEYS: &[&str] = &[
    "role",
    "mode",
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mr_config_id",
];

/// A parsed policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub verify_mr_enclave: bool,
    pub verify_mr_signer: bool,
    pub verify_isv_prod_id: bool,
    pub verify_isv_svn: bool,
    /// `sgx_mrs`.
    pub entries: Vec<Entry>,
    /// `tdx_mrs`.
    pub td_entries: Vec<TdEntry>,
    pub allowed_tcb_statuses: Vec<String>,
    pub allow_debug: bool,
    pub allow_simulated: bool,
    pub simulated_roots: Vec<[u8; 32]>,
    /// Collateral older than this TCB evaluation (Intel's
    /// `tcbEvaluationDataNumber`) is refused.
    pub min_tcb_eval_data_number: Option<u32>,
    /// Parties whose exported model may be written in plaintext (both
    /// parties' policies must list the same roles), sorted.
    pub release_exports: Vec<PartyRole>,
    /// SHA-256 of the policy file's bytes.
    pub digest: [u8; 32],
}

/// The keys a policy may have, in the order `vfl attest trust` writes them.
pub const TOP_KEYS: &[&str] = &[
    "verify_mr_enclave",
    "verify_mr_signer",
    "verify_isv_prod_id",
    "verify_isv_svn",
    "verify_in_enclave",
    "sgx_mrs",
    "tdx_mrs",
    "allowed_tcb_statuses",
    "allow_debug",
    "allow_simulated",
    "simulated_roots",
    "min_tcb_eval_data_number",
    "release_exports",
    "other",
];
/// The keys an entry may have, in the order `vfl attest trust` writes them.
pub const ENTRY_KEYS: &[&str] = &[
    "role",
    "mode",
    "mr_enclave",
    "mr_signer",
    "isv_prod_id",
    "isv_svn",
    "min_isv_svn",
];

type ErrFn<'a> = dyn Fn(&str, String) -> PolicyError + 'a;

/// Why no entry admits an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoMatch(pub String);

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Policy {
    /// Read and parse a policy file.
    pub fn load(path: &std::path::Path) -> Result<Self, PolicyError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| PolicyError {
            source_name: name.clone(),
            field: "(file)".into(),
            kind: PolicyErrorKind::Invalid(e.to_string()),
        })?;
        Self::parse(&bytes, &name)
    }

    /// Parse policy JSON; `source_name` names it in errors.
    pub fn parse(bytes: &[u8], source_name: &str) -> Result<Self, PolicyError> {
        let fail = |field: &str, kind: PolicyErrorKind| PolicyError {
            source_name: source_name.to_string(),
            field: field.to_string(),
            kind,
        };
        let err = |field: &str, reason: String| fail(field, PolicyErrorKind::Invalid(reason));
        let v = strict_json::parse(bytes).map_err(|e| match e {
            StrictError::DuplicateKey { key, line } => fail(&key, PolicyErrorKind::DuplicateKey { line }),
            StrictError::Syntax(m) => fail("(json)", PolicyErrorKind::Json(m)),
        })?;
        let Value::Object(top) = v else {
            return Err(err("(top level)", "must be a JSON object".into()));
        };
        if let Some(k) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
            return Err(err(k, format!("unknown key (known: {})", TOP_KEYS.join(", "))));
        }
        let has_sgx = top.contains_key("sgx_mrs");
        if !has_sgx && !top.contains_key("tdx_mrs") {
            return Err(err(
                "sgx_mrs",
                "missing: a policy lists the enclaves (sgx_mrs) or trust domains (tdx_mrs) it admits".into(),
            ));
        }
        // The verify_* flags are about enclaves: a TDX-only policy may leave them out.
        let flag = |k: &str| on_off(&top, k, has_sgx, &err);
        let mut p = Policy {
            verify_mr_enclave: flag("verify_mr_enclave")?,
            verify_mr_signer: flag("verify_mr_signer")?,
            verify_isv_prod_id: flag("verify_isv_prod_id")?,
            verify_isv_svn: flag("verify_isv_svn")?,
            entries: Vec::new(),
            td_entries: Vec::new(),
            allowed_tcb_statuses: tcb_statuses(&top, &err)?,
            allow_debug: opt_bool(&top, "allow_debug", &err)?,
            allow_simulated: opt_bool(&top, "allow_simulated", &err)?,
            simulated_roots: simulated_roots(&top, &err)?,
            min_tcb_eval_data_number: min_tcb_eval_data_number(&top, &err)?,
            release_exports: release_exports(&top, &err)?,
            digest: Sha256::digest(bytes).into(),
        };
        if has_sgx && !(p.verify_mr_enclave || p.verify_mr_signer || p.verify_isv_prod_id || p.verify_isv_svn) {
            return Err(err(
                "verify_*",
                "every verify flag is off, which would accept any enclave; switch on at least one".into(),
            ));
        }
        if has_sgx && !(p.verify_mr_enclave || p.verify_mr_signer) {
            return Err(fail("verify_mr_enclave/verify_mr_signer", PolicyErrorKind::PinsNothing));
        }
        for (i, e) in objects(&top, "sgx_mrs", &err)?.into_iter().enumerate() {
            p.entries.push(p.parse_entry(e, &format!("sgx_mrs[{i}]"), &err)?);
        }
        for (i, e) in objects(&top, "tdx_mrs", &err)?.into_iter().enumerate() {
            p.td_entries.push(parse_td_entry(e, &format!("tdx_mrs[{i}]"), &err)?);
        }
        p.check_simulation(&fail, &err)?;
        Ok(p)
    }

    /// Simulated entries need `allow_simulated` and a development root, and
    /// only development builds accept any of it.
    fn check_simulation(
        &self,
        fail: &dyn Fn(&str, PolicyErrorKind) -> PolicyError,
        err: &ErrFn<'_>,
    ) -> Result<(), PolicyError> {
        let sim_entries = self.entries.iter().any(|e| e.mode == Mode::Simulated)
            || self.td_entries.iter().any(|e| e.mode == Mode::Simulated);
        if sim_entries && !self.allow_simulated {
            return Err(err(
                "allow_simulated",
                "entries with \"mode\": \"simulated\" need allow_simulated: true".into(),
            ));
        }
        if self.allow_simulated && self.simulated_roots.is_empty() {
            return Err(err(
                "simulated_roots",
                "allow_simulated is true but no development root is listed (see `vfl attest self`)".into(),
            ));
        }
        if self.allows_simulated() && !cfg!(feature = "dev") {
            return Err(fail("allow_simulated", PolicyErrorKind::SimulationNotBuilt));
        }
        Ok(())
    }

    fn parse_entry(&self, e: &Map<String, Value>, at: &str, err: &ErrFn<'_>) -> Result<Entry, PolicyError> {
        known_keys(e, ENTRY_KEYS, at, err)?;
        let field = |k: &str| format!("{at}.{k}");
        let need = |k: &str, on: bool| -> Result<Option<&Value>, PolicyError> {
            match e.get(k) {
                Some(v) => Ok(Some(v)),
                None if on => Err(err(&field(k), format!("missing, but verify_{k} is on"))),
                None => Ok(None),
            }
        };
        let mut entry = Entry::default();
        if let Some(v) = need("mr_enclave", self.verify_mr_enclave)? {
            if v.as_str() == Some("self") {
                entry.mr_enclave_self = true;
            } else {
                entry.mr_enclave = Some(hex_n::<32>(v, &field("mr_enclave"), err)?);
            }
        }
        if let Some(v) = need("mr_signer", self.verify_mr_signer)? {
            if v.as_str() == Some("self") {
                entry.mr_signer_self = true;
            } else {
                entry.mr_signer = Some(hex_n::<32>(v, &field("mr_signer"), err)?);
            }
        }
        if let Some(v) = need("isv_prod_id", self.verify_isv_prod_id)? {
            entry.isv_prod_id = Some(dec16(v, &field("isv_prod_id"), err)?);
        }
        entry.isv_svn = match (e.get("isv_svn"), e.get("min_isv_svn")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    &field("min_isv_svn"),
                    "give isv_svn or min_isv_svn, not both".into(),
                ));
            }
            (Some(v), None) => Some(SvnRule::Equal(dec16(v, &field("isv_svn"), err)?)),
            (None, Some(v)) => Some(SvnRule::AtLeast(dec16(v, &field("min_isv_svn"), err)?)),
            (None, None) if self.verify_isv_svn => {
                return Err(err(&field("isv_svn"), "missing, but verify_isv_svn is on".into()));
            }
            (None, None) => None,
        };
        entry.role = entry_role(e, at, err)?;
        if let Some(v) = e.get("mode") {
            entry.mode = match v.as_str() {
                Some("sgx") => Mode::Sgx,
                Some("simulated") => Mode::Simulated,
                _ => {
                    return Err(err(
                        &field("mode"),
                        format!("must be \"sgx\" or \"simulated\", got {v}"),
                    ));
                }
            };
        }
        Ok(entry)
    }

    /// Whether the policy admits simulated evidence at all.
    pub fn allows_simulated(&self) -> bool {
        self.allow_simulated
            || self.entries.iter().any(|e| e.mode == Mode::Simulated)
            || self.td_entries.iter().any(|e| e.mode == Mode::Simulated)
    }

    /// Checks that a party whose own evidence is `own` may use this policy:
    /// a party with hardware evidence refuses policies that admit
    /// simulated peers. `source_name` names the policy in the error.
    ///
    /// An SGX party also needs a policy that admits only the other party's
    /// copy of this same enclave: `verify_mr_enclave` and `verify_mr_signer`
    /// on, and every `sgx_mrs` entry `"mr_enclave": "self"` with a role. An
    /// entry naming another MRENCLAVE (e.g. copied from a peer's identity
    /// file) would admit whatever code that peer wrote. A TDX party admits
    /// enclaves by their signer, product id, version and role.
    ///
    /// Every hardware party admits a TD only by mr_td, rtmr0, rtmr1 and
    /// rtmr2 (the firmware, its configuration and the host's ACPI tables,
    /// the kernel, the initrd and command line that carry the binary and its
    /// policy), with a role. `"self"` is for this party's own
    /// kind of TEE only.
    pub fn check_usable_by(&self, own: Mode, source_name: &str) -> Result<(), PolicyError> {
        if !own.is_hardware() {
            return Ok(());
        }
        let fail = |field: String, kind: PolicyErrorKind| PolicyError {
            source_name: source_name.to_string(),
            field,
            kind,
        };
        if self.allows_simulated() {
            return Err(fail("allow_simulated".into(), PolicyErrorKind::SimulatedUnderSgx));
        }
        if own == Mode::Sgx && !self.entries.is_empty() && (!self.verify_mr_enclave || !self.verify_mr_signer) {
            return Err(fail(
                "verify_mr_enclave/verify_mr_signer".into(),
                PolicyErrorKind::NotThisEnclave("both must be on".into()),
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            let at = format!("sgx_mrs[{i}]");
            if own == Mode::Tdx {
                if e.mr_enclave_self || e.mr_signer_self {
                    return Err(fail(at, PolicyErrorKind::SelfOfOtherTee("this party is a TD".into())));
                }
                let why = if e.role.is_none() {
                    Some("no role")
                } else if !self.verify_mr_signer || e.mr_signer.is_none() {
                    Some("no mr_signer")
                } else if !self.verify_isv_prod_id || e.isv_prod_id.is_none() {
                    Some("no isv_prod_id (verify_isv_prod_id must be on)")
                } else if !self.verify_isv_svn || e.isv_svn.is_none() {
                    Some("no isv_svn or min_isv_svn (verify_isv_svn must be on)")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(fail(at, PolicyErrorKind::WeakEnclaveEntry(why.into())));
                }
                continue;
            }
            let why = if !e.mr_enclave_self {
                Some("mr_enclave is not \"self\"")
            } else if e.mr_signer.is_none() && !e.mr_signer_self {
                Some("no mr_signer")
            } else if e.role.is_none() {
                Some("no role")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(fail(at, PolicyErrorKind::NotThisEnclave(why.into())));
            }
        }
        for (i, e) in self.td_entries.iter().enumerate() {
            let at = format!("tdx_mrs[{i}]");
            let pins = [e.mr_td, e.rtmr[1], e.rtmr[2], e.mr_config_id, e.rtmr[0], e.rtmr[3]];
            if own == Mode::Sgx && pins.iter().flatten().any(|p| matches!(p, Pin::Own(_))) {
                return Err(fail(
                    at,
                    PolicyErrorKind::SelfOfOtherTee("this party is an SGX enclave".into()),
                ));
            }
            let why = match (e.mr_td, e.rtmr[0], e.rtmr[1], e.rtmr[2], e.role) {
                (None, ..) => Some("no mr_td"),
                (_, None, ..) => Some("no rtmr0"),
                (_, _, None, ..) => Some("no rtmr1"),
                (_, _, _, None, _) => Some("no rtmr2"),
                (.., None) => Some("no role"),
                _ => None,
            };
            if let Some(why) = why {
                return Err(fail(at, PolicyErrorKind::WeakTdEntry(why.into())));
            }
        }
        Ok(())
    }

    /// Whether some entry says `"self"`.
    pub fn uses_self(&self) -> bool {
        self.entries.iter().any(|e| e.mr_enclave_self || e.mr_signer_self)
            || self.td_entries.iter().any(|e| {
                [e.mr_td, e.mr_config_id]
                    .iter()
                    .chain(e.rtmr.iter())
                    .flatten()
                    .any(|p| matches!(p, Pin::Own(_)))
            })
    }

    /// Fill in `"self"` entries of this party's own kind of TEE with its
    /// own identity (the other kind's stay unbound and match nothing).
    pub fn bind_self(&mut self, own: &Identity) {
        match own {
            Identity::Sgx(own) => {
                for e in &mut self.entries {
                    if e.mr_enclave_self {
                        e.mr_enclave = Some(own.mr_enclave);
                    }
                    if e.mr_signer_self {
                        e.mr_signer = Some(own.mr_signer);
                    }
                }
            }
            Identity::Tdx(own) => {
                let bind = |p: &mut Option<Pin>, v: &[u8; 48]| {
                    if let Some(Pin::Own(b)) = p {
                        *b = Some(*v);
                    }
                };
                for e in &mut self.td_entries {
                    bind(&mut e.mr_td, &own.mr_td);
                    bind(&mut e.mr_config_id, &own.mr_config_id);
                    for i in 0..4 {
                        bind(&mut e.rtmr[i], own.rtmr(i));
                    }
                }
            }
        }
    }

    /// The policy's digest in hex (logged at start, bound into sealed files).
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// The entries of the list for `id`'s TEE (`sgx_mrs` or `tdx_mrs`) that
    /// accept `id` presented with `mode` evidence (ascending); otherwise
    /// why none does, per entry.
    pub fn check_identity(&self, id: &Identity, mode: Mode) -> Result<Vec<usize>, NoMatch> {
        let list = id.tee().policy_list();
        let modes: Vec<Mode> = match id {
            Identity::Sgx(_) => self.entries.iter().map(|e| e.mode).collect(),
            Identity::Tdx(_) => self.td_entries.iter().map(|e| e.mode).collect(),
        };
        if modes.is_empty() {
            return Err(NoMatch(format!(
                "{list} is empty or missing: the policy accepts no {}",
                match id.tee() {
                    TeeType::Sgx => "enclave",
                    TeeType::Tdx => "trust domain",
                }
            )));
        }
        let mut why = Vec::new();
        let mut matched = Vec::new();
        for (i, entry_mode) in modes.into_iter().enumerate() {
            let m = if entry_mode != mode {
                Some(format!(
                    "for {entry_mode} evidence only, the peer presented {mode} evidence"
                ))
            } else {
                match id {
                    Identity::Sgx(id) => self.mismatch(&self.entries[i], id),
                    Identity::Tdx(id) => td_mismatch(&self.td_entries[i], id),
                }
            };
            match m {
                None => matched.push(i),
                Some(m) => why.push(format!("{list}[{i}]: {m}")),
            }
        }
        if matched.is_empty() {
            Err(NoMatch(why.join("; ")))
        } else {
            Ok(matched)
        }
    }

    /// The roles the given matched entries of `tee`'s list admit.
    pub fn roles_of(&self, tee: TeeType, matched: &[usize]) -> Vec<PartyRole> {
        let mut roles: Vec<PartyRole> = Vec::new();
        for &i in matched {
            let role = match tee {
                TeeType::Sgx => self.entries.get(i).and_then(|e| e.role),
                TeeType::Tdx => self.td_entries.get(i).and_then(|e| e.role),
            };
            let admits: &[PartyRole] = match role {
                None => &[PartyRole::Leader, PartyRole::Follower],
                Some(PartyRole::Leader) => &[PartyRole::Leader],
                Some(PartyRole::Follower) => &[PartyRole::Follower],
            };
            for r in admits {
                if !roles.contains(r) {
                    roles.push(*r);
                }
            }
        }
        roles.sort();
        roles
    }

    fn mismatch(&self, e: &Entry, id: &EnclaveIdentity) -> Option<String> {
        if self.verify_mr_enclave && e.mr_enclave != Some(id.mr_enclave) {
            return Some(format!(
                "mr_enclave expected {} got {}",
                e.mr_enclave
                    .map(hex::encode)
                    .unwrap_or_else(|| "(self, unbound)".into()),
                hex::encode(id.mr_enclave)
            ));
        }
        if self.verify_mr_signer && e.mr_signer != Some(id.mr_signer) {
            return Some(format!(
                "mr_signer expected {} got {}",
                e.mr_signer.map(hex::encode).unwrap_or_else(|| "(self, unbound)".into()),
                hex::encode(id.mr_signer)
            ));
        }
        if self.verify_isv_prod_id && e.isv_prod_id != Some(id.isv_prod_id) {
            return Some(format!(
                "isv_prod_id expected {:?} got {}",
                e.isv_prod_id.unwrap_or(0),
                id.isv_prod_id
            ));
        }
        if self.verify_isv_svn {
            match e.isv_svn {
                Some(SvnRule::Equal(s)) if s != id.isv_svn => {
                    return Some(format!("isv_svn expected {s} got {}", id.isv_svn));
                }
                Some(SvnRule::AtLeast(s)) if id.isv_svn < s => {
                    return Some(format!("isv_svn {} is below the minimum {s}", id.isv_svn));
                }
                None => return Some("isv_svn not listed".into()),
                _ => {}
            }
        }
        None
    }
}

/// Exactly `N` bytes as `2N` hex digits.
/// A verify flag: `"on"`/`"off"` (or a boolean); optional only in a
/// policy without `sgx_mrs`.
fn on_off(top: &Map<String, Value>, k: &str, has_sgx: bool, err: &ErrFn<'_>) -> Result<bool, PolicyError> {
    match top.get(k) {
        None if !has_sgx => Ok(false),
        Some(Value::String(s)) if s == "on" => Ok(true),
        Some(Value::String(s)) if s == "off" => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(err(k, format!("must be \"on\" or \"off\", got {other}"))),
        None => Err(err(k, "missing: say \"on\" or \"off\"".into())),
    }
}

/// An optional boolean (false when absent).
fn opt_bool(top: &Map<String, Value>, k: &str, err: &ErrFn<'_>) -> Result<bool, PolicyError> {
    match top.get(k) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(err(k, format!("must be true or false, got {other}"))),
    }
}

/// An optional list (empty when absent).
fn list<'v>(top: &'v Map<String, Value>, k: &str, err: &ErrFn<'_>) -> Result<&'v [Value], PolicyError> {
    match top.get(k) {
        None => Ok(&[][..]),
        Some(Value::Array(l)) => Ok(l.as_slice()),
        Some(_) => Err(err(k, "must be a list".into())),
    }
}

/// An optional list of objects (the entries of `sgx_mrs`, `tdx_mrs`).
fn objects<'v>(
    top: &'v Map<String, Value>,
    k: &str,
    err: &ErrFn<'_>,
) -> Result<Vec<&'v Map<String, Value>>, PolicyError> {
    list(top, k, err)?
        .iter()
        .enumerate()
        .map(|(i, e)| match e {
            Value::Object(e) => Ok(e),
            _ => Err(err(&format!("{k}[{i}]"), "must be an object".into())),
        })
        .collect()
}

/// `allowed_tcb_statuses` (default: UpToDate only).
fn tcb_statuses(top: &Map<String, Value>, err: &ErrFn<'_>) -> Result<Vec<String>, PolicyError> {
    let k = "allowed_tcb_statuses";
    if !top.contains_key(k) {
        return Ok(vec!["UpToDate".into()]);
    }
    list(top, k, err)?
        .iter()
        .map(|s| match s.as_str() {
            Some(s) if TCB_STATUSES.contains(&s) => Ok(s.to_string()),
            _ => Err(err(k, format!("{s} is not one of {}", TCB_STATUSES.join(", ")))),
        })
        .collect()
}

/// `simulated_roots`: fingerprints of development roots.
fn simulated_roots(top: &Map<String, Value>, err: &ErrFn<'_>) -> Result<Vec<[u8; 32]>, PolicyError> {
    list(top, "simulated_roots", err)?
        .iter()
        .enumerate()
        .map(|(i, s)| hex_n::<32>(s, &format!("simulated_roots[{i}]"), err))
        .collect()
}

fn min_tcb_eval_data_number(top: &Map<String, Value>, err: &ErrFn<'_>) -> Result<Option<u32>, PolicyError> {
    let k = "min_tcb_eval_data_number";
    let Some(v) = top.get(k) else { return Ok(None) };
    let n = decimal(v, k, err)?;
    let n = u32::try_from(n).map_err(|_| err(k, format!("{n} does not fit in 32 bits")))?;
    Ok(Some(n))
}

/// `release_exports`: distinct roles, sorted.
fn release_exports(top: &Map<String, Value>, err: &ErrFn<'_>) -> Result<Vec<PartyRole>, PolicyError> {
    let k = "release_exports";
    if matches!(top.get(k), Some(v) if !v.is_array()) {
        return Err(err(k, "must be a list of roles (\"leader\", \"follower\")".into()));
    }
    let mut roles = Vec::new();
    for (i, r) in list(top, k, err)?.iter().enumerate() {
        let at = format!("{k}[{i}]");
        let role = r
            .as_str()
            .ok_or_else(|| err(&at, format!("must be \"leader\" or \"follower\", got {r}")))?
            .parse::<PartyRole>()
            .map_err(|e| err(&at, e))?;
        if roles.contains(&role) {
            return Err(err(&at, format!("{role} is listed twice")));
        }
        roles.push(role);
    }
    roles.sort();
    Ok(roles)
}

fn hex_n<const N: usize>(v: &Value, field: &str, err: &ErrFn<'_>) -> Result<[u8; N], PolicyError> {
    let s = v
        .as_str()
        .ok_or_else(|| err(field, format!("must be a string of {} hex digits, got {v}", 2 * N)))?;
    let bytes = hex::decode(s).map_err(|e| err(field, format!("not hex ({e})")))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
        err(
            field,
            format!("must be {} hex digits ({N} bytes), got {} digits", 2 * N, s.len()),
        )
    })
}

fn decimal(v: &Value, field: &str, err: &ErrFn<'_>) -> Result<u64, PolicyError> {
    match v {
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| err(field, format!("{s:?} is not a decimal number"))),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| err(field, format!("{n} is not a whole number"))),
        other => Err(err(field, format!("must be a decimal string or number, got {other}"))),
    }
}

fn dec16(v: &Value, field: &str, err: &ErrFn<'_>) -> Result<u16, PolicyError> {
    let n = decimal(v, field, err)?;
    u16::try_from(n).map_err(|_| err(field, format!("{n} does not fit in 16 bits")))
}

/// The first field of a TD entry that does not match `id`.
fn td_mismatch(e: &TdEntry, id: &TdIdentity) -> Option<String> {
    let fields: [(&str, Option<Pin>, &[u8; 48]); 6] = [
        ("mr_td", e.mr_td, &id.mr_td),
        ("rtmr0", e.rtmr[0], &id.rtmr0),
        ("rtmr1", e.rtmr[1], &id.rtmr1),
        ("rtmr2", e.rtmr[2], &id.rtmr2),
        ("rtmr3", e.rtmr[3], &id.rtmr3),
        ("mr_config_id", e.mr_config_id, &id.mr_config_id),
    ];
    fields.iter().find_map(|(name, pin, got)| {
        let pin = (*pin)?;
        if pin.value() == Some(**got) {
            return None;
        }
        Some(format!(
            "{name} expected {} got {}",
            pin.value().map(hex::encode).unwrap_or_else(|| "(self, unbound)".into()),
            hex::encode(got)
        ))
    })
}

/// Every key of entry `at` is one of `keys`.
fn known_keys(e: &Map<String, Value>, keys: &[&str], at: &str, err: &ErrFn<'_>) -> Result<(), PolicyError> {
    match e.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(err(
            &format!("{at}.{k}"),
            format!("unknown key (known: {})", keys.join(", ")),
        )),
        None => Ok(()),
    }
}

/// An entry's optional `"role"`.
fn entry_role(e: &Map<String, Value>, at: &str, err: &ErrFn<'_>) -> Result<Option<PartyRole>, PolicyError> {
    let Some(v) = e.get("role") else {
        return Ok(None);
    };
    let field = format!("{at}.role");
    let s = v
        .as_str()
        .ok_or_else(|| err(&field, format!("must be \"leader\" or \"follower\", got {v}")))?;
    s.parse().map(Some).map_err(|e| err(&field, e))
}

fn parse_td_entry(e: &Map<String, Value>, at: &str, err: &ErrFn<'_>) -> Result<TdEntry, PolicyError> {
    known_keys(e, TD_ENTRY_KEYS, at, err)?;
    let field = |k: &str| format!("{at}.{k}");
    let pin = |k: &str| -> Result<Option<Pin>, PolicyError> {
        match e.get(k) {
            None => Ok(None),
            Some(v) if v.as_str() == Some("self") => Ok(Some(Pin::Own(None))),
            Some(v) => Ok(Some(Pin::Value(hex_n::<48>(v, &field(k), err)?))),
        }
    };
    let entry = TdEntry {
        mr_td: pin("mr_td")?,
        rtmr: [pin("rtmr0")?, pin("rtmr1")?, pin("rtmr2")?, pin("rtmr3")?],
        mr_config_id: pin("mr_config_id")?,
        role: entry_role(e, at, err)?,
        mode: match e.get("mode").map(|v| (v, v.as_str())) {
            None | Some((_, Some("tdx"))) => Mode::Tdx,
            Some((_, Some("simulated"))) => Mode::Simulated,
            Some((v, _)) => {
                return Err(err(
                    &field("mode"),
                    format!("must be \"tdx\" or \"simulated\", got {v}"),
                ));
            }
        },
    };
    let pinned = entry.rtmr.iter().any(Option::is_some) || entry.mr_config_id.is_some();
    if entry.mr_td.is_none() && !pinned {
        return Err(err(
            &field("mr_td"),
            "missing: a TD entry pins mr_td (or at least one of rtmr0-3 and mr_config_id)".into(),
        ));
    }
    Ok(entry)
}
