//! The enclave identity policy: the original's `dynamic_config.json`, read
//! unchanged, plus explicit extensions in the same file.
//!
//! ```json
//! { "verify_mr_enclave": "on", "verify_mr_signer": "on",
//!   "verify_isv_prod_id": "on", "verify_isv_svn": "on",
//!   "sgx_mrs": [ { "mr_enclave": "<64 hex>", "mr_signer": "<64 hex>",
//!                  "isv_prod_id": "1", "isv_svn": "1" } ],
//!   "allowed_tcb_statuses": ["UpToDate"], "allow_debug": false,
//!   "allow_simulated": false, "simulated_roots": ["<64 hex>"] }
//! ```
//!
//! Any entry of `sgx_mrs` may match; within an entry every field switched on
//! by a `verify_*` flag must match. `"mr_enclave": "self"` (or `mr_signer`)
//! means this process's own value, read from its own quote at start: two
//! parties running the same enclave (same source, same manifest, same
//! policy) accept each other without either policy naming the other's
//! measurement, which would be circular, since the policy is measured. An entry may say `"min_isv_svn"` instead
//! of `"isv_svn"` to accept that version or newer. Deliberate departures from
//! the original's parser: a flag must be `"on"`/`"off"` (or a JSON boolean) and
//! must be present, hex must be exactly 64 digits, unknown keys are errors (a
//! typo must not switch a check off), and a policy with every flag off is
//! refused instead of accepting any enclave.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::sgx::EnclaveIdentity;

/// TCB statuses a policy may allow (Revoked is never acceptable).
pub const TCB_STATUSES: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
];

/// A malformed policy.
#[derive(Debug, thiserror::Error)]
#[error("policy {source_name}: {field}: {reason}")]
pub struct PolicyError {
    pub source_name: String,
    pub field: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvnRule {
    Equal(u16),
    AtLeast(u16),
}

/// One allowed enclave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub mr_enclave: Option<[u8; 32]>,
    pub mr_signer: Option<[u8; 32]>,
    /// `"self"`: filled in by [`Policy::bind_self`].
    pub mr_enclave_self: bool,
    pub mr_signer_self: bool,
    pub isv_prod_id: Option<u16>,
    pub isv_svn: Option<SvnRule>,
}

/// A parsed policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub verify_mr_enclave: bool,
    pub verify_mr_signer: bool,
    pub verify_isv_prod_id: bool,
    pub verify_isv_svn: bool,
    pub entries: Vec<Entry>,
    pub allowed_tcb_statuses: Vec<String>,
    pub allow_debug: bool,
    pub allow_simulated: bool,
    pub simulated_roots: Vec<[u8; 32]>,
    /// SHA-256 of the policy file's bytes.
    pub digest: [u8; 32],
}

const TOP_KEYS: &[&str] = &[
    "verify_mr_enclave",
    "verify_mr_signer",
    "verify_isv_prod_id",
    "verify_isv_svn",
    "verify_in_enclave",
    "sgx_mrs",
    "other",
    "allowed_tcb_statuses",
    "allow_debug",
    "allow_simulated",
    "simulated_roots",
];
const ENTRY_KEYS: &[&str] = &["mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "min_isv_svn"];

impl Policy {
    /// Read and parse a policy file.
    pub fn load(path: &std::path::Path) -> Result<Self, PolicyError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| PolicyError {
            source_name: name.clone(),
            field: "(file)".into(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes, &name)
    }

    /// Parse policy JSON; `source_name` names it in errors.
    pub fn parse(bytes: &[u8], source_name: &str) -> Result<Self, PolicyError> {
        let err = |field: &str, reason: String| PolicyError {
            source_name: source_name.to_string(),
            field: field.to_string(),
            reason,
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| err("(json)", e.to_string()))?;
        let Value::Object(top) = v else {
            return Err(err("(top level)", "must be a JSON object".into()));
        };
        for k in top.keys() {
            if !TOP_KEYS.contains(&k.as_str()) {
                return Err(err(k, format!("unknown key (known: {})", TOP_KEYS.join(", "))));
            }
        }
        let flag = |k: &str| -> Result<bool, PolicyError> {
            match top.get(k) {
                Some(Value::String(s)) if s == "on" => Ok(true),
                Some(Value::String(s)) if s == "off" => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(err(k, format!("must be \"on\" or \"off\", got {other}"))),
                None => Err(err(k, "missing: say \"on\" or \"off\"".into())),
            }
        };
        let opt_bool = |k: &str| -> Result<bool, PolicyError> {
            match top.get(k) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(err(k, format!("must be true or false, got {other}"))),
            }
        };
        let mut p = Policy {
            verify_mr_enclave: flag("verify_mr_enclave")?,
            verify_mr_signer: flag("verify_mr_signer")?,
            verify_isv_prod_id: flag("verify_isv_prod_id")?,
            verify_isv_svn: flag("verify_isv_svn")?,
            entries: Vec::new(),
            allowed_tcb_statuses: vec!["UpToDate".into()],
            allow_debug: opt_bool("allow_debug")?,
            allow_simulated: opt_bool("allow_simulated")?,
            simulated_roots: Vec::new(),
            digest: Sha256::digest(bytes).into(),
        };
        if !(p.verify_mr_enclave || p.verify_mr_signer || p.verify_isv_prod_id || p.verify_isv_svn) {
            return Err(err(
                "verify_*",
                "every verify flag is off, which would accept any enclave; switch on at least one".into(),
            ));
        }
        let Some(Value::Array(mrs)) = top.get("sgx_mrs") else {
            return Err(err("sgx_mrs", "missing or not a list".into()));
        };
        for (i, e) in mrs.iter().enumerate() {
            let Value::Object(e) = e else {
                return Err(err(&format!("sgx_mrs[{i}]"), "must be an object".into()));
            };
            p.entries.push(p.parse_entry(e, &format!("sgx_mrs[{i}]"), &err)?);
        }
        if let Some(v) = top.get("allowed_tcb_statuses") {
            let Value::Array(list) = v else {
                return Err(err("allowed_tcb_statuses", "must be a list".into()));
            };
            p.allowed_tcb_statuses.clear();
            for s in list {
                match s.as_str() {
                    Some(s) if TCB_STATUSES.contains(&s) => p.allowed_tcb_statuses.push(s.to_string()),
                    _ => {
                        return Err(err(
                            "allowed_tcb_statuses",
                            format!("{s} is not one of {}", TCB_STATUSES.join(", ")),
                        ));
                    }
                }
            }
        }
        if let Some(v) = top.get("simulated_roots") {
            let Value::Array(list) = v else {
                return Err(err("simulated_roots", "must be a list".into()));
            };
            for (i, s) in list.iter().enumerate() {
                p.simulated_roots
                    .push(hex32(s, &format!("simulated_roots[{i}]"), &err)?);
            }
        }
        if p.allow_simulated && p.simulated_roots.is_empty() {
            return Err(err(
                "simulated_roots",
                "allow_simulated is true but no development root is listed (see `vfl attest self`)".into(),
            ));
        }
        Ok(p)
    }

    fn parse_entry(
        &self,
        e: &Map<String, Value>,
        at: &str,
        err: &dyn Fn(&str, String) -> PolicyError,
    ) -> Result<Entry, PolicyError> {
        for k in e.keys() {
            if !ENTRY_KEYS.contains(&k.as_str()) {
                return Err(err(
                    &format!("{at}.{k}"),
                    format!("unknown key (known: {})", ENTRY_KEYS.join(", ")),
                ));
            }
        }
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
                entry.mr_enclave = Some(hex32(v, &field("mr_enclave"), err)?);
            }
        }
        if let Some(v) = need("mr_signer", self.verify_mr_signer)? {
            if v.as_str() == Some("self") {
                entry.mr_signer_self = true;
            } else {
                entry.mr_signer = Some(hex32(v, &field("mr_signer"), err)?);
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
        Ok(entry)
    }

    /// Whether some entry says `"self"`.
    pub fn uses_self(&self) -> bool {
        self.entries.iter().any(|e| e.mr_enclave_self || e.mr_signer_self)
    }

    /// Fill in `"self"` entries with this process's own identity.
    pub fn bind_self(&mut self, own: &EnclaveIdentity) {
        for e in &mut self.entries {
            if e.mr_enclave_self {
                e.mr_enclave = Some(own.mr_enclave);
            }
            if e.mr_signer_self {
                e.mr_signer = Some(own.mr_signer);
            }
        }
    }

    /// The policy's digest in hex (logged at start).
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// Whether some entry accepts `id`; otherwise why not, per entry.
    pub fn check_identity(&self, id: &EnclaveIdentity) -> Result<usize, String> {
        if self.entries.is_empty() {
            return Err("sgx_mrs is empty: the policy accepts no enclave".into());
        }
        let mut why = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            match self.mismatch(e, id) {
                None => return Ok(i),
                Some(m) => why.push(format!("sgx_mrs[{i}]: {m}")),
            }
        }
        Err(why.join("; "))
    }

    fn mismatch(&self, e: &Entry, id: &EnclaveIdentity) -> Option<String> {
        if self.verify_mr_enclave && e.mr_enclave != Some(id.mr_enclave) {
            return Some(format!(
                "mr_enclave expected {} got {}",
                e.mr_enclave.map(hex::encode).unwrap_or_default(),
                hex::encode(id.mr_enclave)
            ));
        }
        if self.verify_mr_signer && e.mr_signer != Some(id.mr_signer) {
            return Some(format!(
                "mr_signer expected {} got {}",
                e.mr_signer.map(hex::encode).unwrap_or_default(),
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

fn hex32(v: &Value, field: &str, err: &dyn Fn(&str, String) -> PolicyError) -> Result<[u8; 32], PolicyError> {
    let s = v
        .as_str()
        .ok_or_else(|| err(field, format!("must be a string of 64 hex digits, got {v}")))?;
    let bytes = hex::decode(s).map_err(|e| err(field, format!("not hex ({e})")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        err(
            field,
            format!("must be 64 hex digits (32 bytes), got {} digits", s.len()),
        )
    })
}

fn dec16(v: &Value, field: &str, err: &dyn Fn(&str, String) -> PolicyError) -> Result<u16, PolicyError> {
    let n = match v {
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| err(field, format!("{s:?} is not a decimal number")))?,
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| err(field, format!("{n} is not a whole number")))?,
        other => return Err(err(field, format!("must be a decimal string or number, got {other}"))),
    };
    u16::try_from(n).map_err(|_| err(field, format!("{n} does not fit in 16 bits")))
}
