//! Writing policies: the entries a peer's policy needs for an identity
//! (`vfl attest self`, `vfl attest party`), adding an identity file to a
//! policy (`vfl attest trust`) in a canonical form, and the development
//! policy that accepts this very binary in simulated mode. The parser
//! ([`super::Policy::parse`]) and this writer are the only code that knows
//! the policy's JSON schema; every written policy is parsed before it is
//! written.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::{ENTRY_KEYS, PartyRole, Policy, PolicyError, TD_ENTRY_KEYS, TOP_KEYS};
use crate::sgx::EnclaveIdentity;
use crate::strict_json::{self, StrictError};
use crate::tdx::TdIdentity;

/// Errors of writing a policy or an identity file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: not JSON: {detail}")]
    NotJson { name: String, detail: String },
    #[error("{name}: the key `{key}` appears twice (line {line}): refusing to guess which one is meant")]
    DuplicateKey { name: String, key: String, line: usize },
    #[error("{name}: not a JSON object")]
    NotObject { name: String },
    #[error("{name}: {list} is not a list")]
    NotList { name: String, list: &'static str },
    #[error("{name}: no role: give the role this identity is trusted as (leader or follower)")]
    NoRole { name: String },
    #[error("{name}: role {role:?}: expected leader or follower")]
    BadRole { name: String, role: String },
    #[error("{name}: no {field}")]
    Missing { name: String, field: &'static str },
    #[error("the updated policy would not load: {0}")]
    Invalid(#[from] PolicyError),
    #[cfg(feature = "dev")]
    #[error(transparent)]
    Attest(#[from] crate::AttestError),
}

/// JSON with no repeated keys (`serde_json` would keep the last one, and
/// the rewritten policy would then load where the original was refused).
fn strict(bytes: &[u8], name: &str) -> Result<Value, WriteError> {
    strict_json::parse(bytes).map_err(|e| match e {
        StrictError::DuplicateKey { key, line } => WriteError::DuplicateKey {
            name: name.to_string(),
            key,
            line,
        },
        StrictError::Syntax(detail) => WriteError::NotJson {
            name: name.to_string(),
            detail,
        },
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The `sgx_mrs` entry pinning exactly `id` (enclave, signer, product id
/// and version) as `role`.
pub fn sgx_entry(id: &EnclaveIdentity, role: Option<PartyRole>, simulated: bool) -> Value {
    let mut entry = json!({
        "mr_enclave": hex::encode(id.mr_enclave),
        "mr_signer": hex::encode(id.mr_signer),
        "isv_prod_id": id.isv_prod_id.to_string(),
        "isv_svn": id.isv_svn.to_string(),
    });
    tag(&mut entry, role, simulated);
    entry
}

/// The `tdx_mrs` entry pinning what a peer pins of a TD: firmware, its
/// configuration and ACPI tables, kernel, initrd and command line.
pub fn td_entry(id: &TdIdentity, role: Option<PartyRole>, simulated: bool) -> Value {
    let mut entry = json!({
        "mr_td": hex::encode(id.mr_td),
        "rtmr0": hex::encode(id.rtmr0),
        "rtmr1": hex::encode(id.rtmr1),
        "rtmr2": hex::encode(id.rtmr2),
    });
    tag(&mut entry, role, simulated);
    entry
}

fn tag(entry: &mut Value, role: Option<PartyRole>, simulated: bool) {
    if let Some(r) = role {
        entry["role"] = r.as_str().into();
    }
    if simulated {
        entry["mode"] = "simulated".into();
    }
}

/// A party's identity file (`vfl attest party`): its role and the signer,
/// product id and version of its enclave, as JSON text.
pub fn party_identity(role: PartyRole, mr_signer: &[u8; 32], isv_prod_id: u16, isv_svn: u16) -> String {
    let v = json!({
        "role": role.as_str(),
        "mr_signer": hex::encode(mr_signer),
        "isv_prod_id": isv_prod_id.to_string(),
        "isv_svn": isv_svn.to_string(),
    });
    format!("{v:#}\n")
}

/// A policy as canonical JSON: keys in a fixed order, entries one per line
/// and sorted, a final newline; two parties who trust the same identities
/// write byte-identical files. Unknown keys are kept after the known ones
/// (the parser then refuses them, naming them).
pub fn canonical(v: &Value) -> String {
    let key = |k: &str| Value::String(k.to_string()).to_string();
    let Some(top) = v.as_object() else {
        return format!("{v}\n");
    };
    let mut lines = Vec::new();
    for (k, val) in ordered(top, TOP_KEYS) {
        let rendered = match (k.as_str(), val.as_array()) {
            (list_name @ ("sgx_mrs" | "tdx_mrs"), Some(list)) if !list.is_empty() => {
                let keys = if list_name == "sgx_mrs" {
                    ENTRY_KEYS
                } else {
                    TD_ENTRY_KEYS
                };
                let mut entries: Vec<String> = list
                    .iter()
                    .map(|e| match e.as_object() {
                        Some(m) => {
                            let fields: Vec<String> = ordered(m, keys)
                                .iter()
                                .map(|(k, v)| format!("{}: {v}", key(k)))
                                .collect();
                            format!("{{ {} }}", fields.join(", "))
                        }
                        None => e.to_string(),
                    })
                    .collect();
                entries.sort();
                entries.dedup();
                format!("[\n    {}\n  ]", entries.join(",\n    "))
            }
            _ => val.to_string(),
        };
        lines.push(format!("  {}: {rendered}", key(k)));
    }
    format!("{{\n{}\n}}\n", lines.join(",\n"))
}

/// The keys of `m` in `order`, then the unknown ones sorted.
fn ordered<'a>(m: &'a Map<String, Value>, order: &[&str]) -> Vec<(&'a String, &'a Value)> {
    let mut known: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| order.contains(&k.as_str())).collect();
    known.sort_by_key(|(k, _)| order.iter().position(|o| o == k));
    let mut rest: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| !order.contains(&k.as_str())).collect();
    rest.sort_by(|a, b| a.0.cmp(b.0));
    known.extend(rest);
    known
}

/// How [`trust`] turns an identity file into an entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrustOptions {
    /// The role the identity is trusted as (default: the file's `role`).
    pub role: Option<PartyRole>,
    /// Accept the identity's isv_svn or newer (`min_isv_svn`).
    pub min_svn: bool,
    /// Pin the MRENCLAVE the file names instead of `"self"`.
    pub pin_enclave: bool,
}

/// What [`trust`] did.
#[derive(Clone, Debug)]
pub struct Trusted {
    pub role: PartyRole,
    /// The identity, in words ("running enclave self signed by ...").
    pub what: String,
    /// False if the policy already held the entry (it was rewritten
    /// canonically all the same).
    pub added: bool,
    /// The written policy's digest.
    pub digest: String,
    /// The MRENCLAVE the file named and that was replaced by `"self"`.
    pub replaced_enclave: Option<String>,
}

/// Adds the identity file `identity` (from `vfl attest party`,
/// `vfl-sgx.sh keygen`/`make` or `vfl attest self`; `name` names it in
/// errors) to the policy at `policy_path` as a role-specific entry
/// (`sgx_mrs`, or `tdx_mrs` for a TD's), creating the policy if missing,
/// and rewrites it atomically in the canonical form after checking that
/// it parses.
pub fn trust(policy_path: &Path, name: &str, identity: &[u8], opts: TrustOptions) -> Result<Trusted, WriteError> {
    let id = identity_entry(name, identity, opts)?;
    let pname = policy_path.display().to_string();
    let existing = match std::fs::read(policy_path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(policy_path)(e)),
    };
    let merged = merge(existing.as_deref(), &pname, &id)?;
    vfl_fs::write_atomic(policy_path, |w| w.write_all(merged.text.as_bytes())).map_err(io(policy_path))?;
    Ok(Trusted {
        role: id.role,
        what: id.what,
        added: merged.added,
        digest: merged.policy.digest_hex(),
        replaced_enclave: id.replaced_enclave,
    })
}

/// The policy entry an identity file asks for (no files touched).
#[derive(Clone, Debug)]
pub struct IdentityEntry {
    pub role: PartyRole,
    /// `sgx_mrs` or `tdx_mrs`.
    pub list: &'static str,
    pub entry: Value,
    /// The identity, in words.
    pub what: String,
    /// The MRENCLAVE the file named and that was replaced by `"self"`.
    pub replaced_enclave: Option<String>,
}

/// Reads an identity file (`name` names it in errors) into the entry
/// [`trust`] adds: a bytes-in, value-out parser of a file the peer sent.
pub fn identity_entry(name: &str, identity: &[u8], opts: TrustOptions) -> Result<IdentityEntry, WriteError> {
    let file = strict(identity, name)?;
    let is_td = file.get("tdx_mrs_entry").is_some() || file.get("mr_td").is_some();
    let id = file.get("sgx_mrs_entry").unwrap_or(&file);
    let field = |k: &str| -> Option<String> {
        match id.get(k).or_else(|| file.get(k)) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    };
    let role = match (opts.role, field("role")) {
        (Some(r), _) => r,
        (None, Some(r)) => r.parse().map_err(|_| WriteError::BadRole {
            name: name.to_string(),
            role: r,
        })?,
        (None, None) => return Err(WriteError::NoRole { name: name.to_string() }),
    };
    if is_td {
        let entry = td_entry_of(&file, role, name)?;
        let what = format!("TD mr_td {}", entry["mr_td"].as_str().unwrap_or("?"));
        return Ok(IdentityEntry {
            role,
            list: "tdx_mrs",
            entry,
            what,
            replaced_enclave: None,
        });
    }
    let (entry, what, replaced_enclave) = sgx_entry_of(opts, role, name, field)?;
    Ok(IdentityEntry {
        role,
        list: "sgx_mrs",
        entry,
        what,
        replaced_enclave,
    })
}

/// A policy with an entry added, in canonical form, parsed.
#[derive(Debug)]
pub struct Merged {
    pub text: String,
    pub policy: Policy,
    /// False if the policy already held the entry.
    pub added: bool,
}

/// Adds `id` to the policy `existing` (its bytes, or `None` for a new
/// policy; `name` names it in errors): strict JSON in, the canonical text
/// out, refused unless it parses as a policy. No files touched.
pub fn merge(existing: Option<&[u8]>, name: &str, id: &IdentityEntry) -> Result<Merged, WriteError> {
    let mut policy = match existing {
        Some(b) => strict(b, name)?,
        None => json!({}),
    };
    let Some(top) = policy.as_object_mut() else {
        return Err(WriteError::NotObject { name: name.to_string() });
    };
    if id.list == "sgx_mrs" && !top.contains_key("sgx_mrs") {
        // A new enclave list pins enclave, signer, product id and version.
        for flag in [
            "verify_mr_enclave",
            "verify_mr_signer",
            "verify_isv_prod_id",
            "verify_isv_svn",
        ] {
            top.entry(flag).or_insert_with(|| "on".into());
        }
    }
    let Some(list) = top.entry(id.list).or_insert_with(|| json!([])).as_array_mut() else {
        return Err(WriteError::NotList {
            name: name.to_string(),
            list: id.list,
        });
    };
    let added = !list.contains(&id.entry);
    if added {
        list.push(id.entry.clone());
    }
    let text = canonical(&policy);
    // Refuse to write a policy that would not load.
    let parsed = Policy::parse(text.as_bytes(), name)?;
    Ok(Merged {
        text,
        policy: parsed,
        added,
    })
}

/// The `tdx_mrs` entry for a TD identity file (from `vfl attest self
/// --attestation tdx|simulated-tdx`): the measurements it pins (mr_td and
/// rtmr0-2 at least), its role and mode.
fn td_entry_of(file: &Value, role: PartyRole, name: &str) -> Result<Value, WriteError> {
    let id = file.get("tdx_mrs_entry").unwrap_or(file);
    let mut entry = Map::new();
    entry.insert("role".into(), role.as_str().into());
    if id.get("mode").and_then(|m| m.as_str()) == Some("simulated") {
        entry.insert("mode".into(), "simulated".into());
    }
    for k in TD_ENTRY_KEYS.iter().filter(|k| !["role", "mode"].contains(k)) {
        match id.get(*k) {
            Some(Value::String(v)) => {
                entry.insert((*k).into(), v.clone().into());
            }
            None if ["mr_td", "rtmr0", "rtmr1", "rtmr2"].contains(k) => {
                return Err(WriteError::Missing {
                    name: name.to_string(),
                    field: k,
                });
            }
            _ => {}
        }
    }
    Ok(Value::Object(entry))
}

/// The `sgx_mrs` entry for an enclave identity file, how to name it, and
/// the MRENCLAVE it named if that was replaced by `"self"`.
fn sgx_entry_of(
    opts: TrustOptions,
    role: PartyRole,
    name: &str,
    field: impl Fn(&str) -> Option<String>,
) -> Result<(Value, String, Option<String>), WriteError> {
    let mut entry = Map::new();
    entry.insert("role".into(), role.as_str().into());
    if field("mode").as_deref() == Some("simulated") {
        entry.insert("mode".into(), "simulated".into());
    }
    // The peer runs this same enclave: its MRENCLAVE is ours ("self"). A
    // file naming another one is not followed unless asked to, since it
    // would admit whatever code the peer wrote.
    let (mr_enclave, replaced) = match field("mr_enclave") {
        Some(m) if opts.pin_enclave => (m, None),
        Some(m) if m != "self" => ("self".to_string(), Some(m)),
        _ => ("self".to_string(), None),
    };
    let signer = field("mr_signer").ok_or_else(|| WriteError::Missing {
        name: name.to_string(),
        field: "mr_signer",
    })?;
    entry.insert("mr_enclave".into(), mr_enclave.clone().into());
    entry.insert("mr_signer".into(), signer.clone().into());
    entry.insert(
        "isv_prod_id".into(),
        field("isv_prod_id").unwrap_or_else(|| "1".into()).into(),
    );
    entry.insert(
        if opts.min_svn { "min_isv_svn" } else { "isv_svn" }.into(),
        field("isv_svn").unwrap_or_else(|| "1".into()).into(),
    );
    Ok((
        Value::Object(entry),
        format!("running enclave {mr_enclave} signed by {signer}"),
        replaced,
    ))
}

/// A development root (`<dir>/dev-root.pem`) and a policy
/// (`<dir>/dynamic_config.json`) accepting this binary in simulated mode,
/// for runs where both parties are this binary on one machine (demo,
/// bench). Returns (root key path, policy path).
#[cfg(feature = "dev")]
pub fn self_accepting_sim(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), WriteError> {
    let key = dir.join("dev-root.pem");
    let (root, _) = crate::devpki::DevRoot::load_or_create(&key)?;
    let me = crate::SimIdentity::of_running_binary()?;
    let fp = hex::encode(root.fingerprint());
    let policy = json!({
        "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
        "sgx_mrs": [{"mr_enclave": hex::encode(me.mr_enclave), "mr_signer": fp, "isv_prod_id": "1", "isv_svn": "1",
                     "mode": "simulated"}],
        "allow_simulated": true, "simulated_roots": [fp],
    });
    let path = dir.join("dynamic_config.json");
    let text = canonical(&policy);
    Policy::parse(text.as_bytes(), &path.display().to_string())?;
    vfl_fs::write_atomic(&path, |w| w.write_all(text.as_bytes())).map_err(io(&path))?;
    Ok((key, path))
}

/// A simulated set-up for both parties on one machine, as a scale-out run
/// needs it (`vfl demo --workers`): a development root under `dir` and a
/// policy with one entry per role, this binary's mr_enclave under two
/// distinct signers, so that each party's processes can tell their own
/// from the other party's. Returns the root key, the policy and the
/// signers (hex) the leader's and the follower's processes claim
/// (`--sim-mr-signer`).
#[cfg(feature = "dev")]
pub fn two_party_sim(dir: &Path) -> Result<TwoPartySim, WriteError> {
    use sha2::{Digest, Sha256};
    let key = dir.join("dev-root.pem");
    let (root, _) = crate::devpki::DevRoot::load_or_create(&key)?;
    let me = crate::SimIdentity::of_running_binary()?;
    let fp = hex::encode(root.fingerprint());
    let signer = |role: &str| hex::encode(Sha256::digest(format!("enclave-vfl simulated signer of the {role}")));
    let (leader_signer, follower_signer) = (signer("leader"), signer("follower"));
    let entry = |signer: &str, role: &str| {
        json!({"mr_enclave": hex::encode(me.mr_enclave), "mr_signer": signer, "isv_prod_id": "1", "isv_svn": "1",
               "mode": "simulated", "role": role})
    };
    let policy = json!({
        "verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
        "sgx_mrs": [entry(&leader_signer, "leader"), entry(&follower_signer, "follower")],
        "allow_simulated": true, "simulated_roots": [fp],
    });
    let path = dir.join("dynamic_config.json");
    let text = canonical(&policy);
    Policy::parse(text.as_bytes(), &path.display().to_string())?;
    vfl_fs::write_atomic(&path, |w| w.write_all(text.as_bytes())).map_err(io(&path))?;
    Ok(TwoPartySim {
        root_key: key,
        policy: path,
        leader_signer,
        follower_signer,
    })
}

/// What [`two_party_sim`] set up.
#[cfg(feature = "dev")]
#[derive(Clone, Debug)]
pub struct TwoPartySim {
    pub root_key: std::path::PathBuf,
    pub policy: std::path::PathBuf,
    pub leader_signer: String,
    pub follower_signer: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vfl-policy-write-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const SIGNER: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn ident(role: &str) -> Vec<u8> {
        json!({"role": role, "mr_signer": SIGNER, "isv_prod_id": "1", "isv_svn": "2"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn trust_creates_a_pinning_policy_and_is_idempotent() {
        let d = tmp("idem");
        let p = d.join("dynamic_config.json");
        let t = trust(&p, "f.json", &ident("follower"), TrustOptions::default()).unwrap();
        assert!(t.added && t.role == PartyRole::Follower && t.replaced_enclave.is_none());
        let first = std::fs::read(&p).unwrap();
        let pol = Policy::load(&p).unwrap();
        assert!(pol.verify_mr_enclave && pol.verify_mr_signer && pol.verify_isv_prod_id && pol.verify_isv_svn);
        assert_eq!(pol.entries.len(), 1);
        assert_eq!(pol.entries[0].role, Some(PartyRole::Follower));
        let again = trust(&p, "f.json", &ident("follower"), TrustOptions::default()).unwrap();
        assert!(!again.added);
        assert_eq!(std::fs::read(&p).unwrap(), first);
        assert_eq!(again.digest, t.digest);
    }

    #[test]
    fn an_enclave_named_by_the_file_becomes_self_unless_pinned() {
        let d = tmp("self");
        let p = d.join("policy.json");
        let other = "22".repeat(32);
        let file = json!({"role": "leader", "mr_signer": SIGNER, "mr_enclave": other}).to_string();
        let t = trust(&p, "l.json", file.as_bytes(), TrustOptions::default()).unwrap();
        assert_eq!(t.replaced_enclave.as_deref(), Some(other.as_str()));
        assert!(Policy::load(&p).unwrap().entries[0].mr_enclave_self);
        let pinned = TrustOptions {
            pin_enclave: true,
            ..Default::default()
        };
        let p2 = d.join("pinned.json");
        let t = trust(&p2, "l.json", file.as_bytes(), pinned).unwrap();
        assert!(t.replaced_enclave.is_none());
        let e = &Policy::load(&p2).unwrap().entries[0];
        assert!(!e.mr_enclave_self && e.mr_enclave == Some([0x22; 32]));
    }

    #[test]
    fn refuses_an_identity_without_a_role() {
        let d = tmp("norole");
        let file = json!({"mr_signer": SIGNER}).to_string();
        let e = trust(&d.join("p.json"), "x.json", file.as_bytes(), TrustOptions::default()).unwrap_err();
        assert!(matches!(e, WriteError::NoRole { .. }), "{e:?}");
        assert!(!d.join("p.json").exists());
    }

    #[test]
    fn refuses_an_unknown_role() {
        let d = tmp("badrole");
        let e = trust(&d.join("p.json"), "x.json", &ident("observer"), TrustOptions::default()).unwrap_err();
        assert!(
            matches!(e, WriteError::BadRole { ref role, .. } if role == "observer"),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_an_identity_without_a_signer() {
        let d = tmp("nosigner");
        let file = json!({"role": "leader"}).to_string();
        let e = trust(&d.join("p.json"), "x.json", file.as_bytes(), TrustOptions::default()).unwrap_err();
        assert!(matches!(e, WriteError::Missing { field: "mr_signer", .. }), "{e:?}");
    }

    #[test]
    fn refuses_a_td_identity_without_its_rtmrs() {
        let d = tmp("td");
        let file = json!({"role": "leader", "mr_td": "33".repeat(48)}).to_string();
        let e = trust(&d.join("p.json"), "td.json", file.as_bytes(), TrustOptions::default()).unwrap_err();
        assert!(matches!(e, WriteError::Missing { field: "rtmr0", .. }), "{e:?}");
    }

    #[test]
    fn refuses_identity_bytes_that_are_not_json() {
        let d = tmp("notjson");
        let e = trust(&d.join("p.json"), "x.json", b"\xff{", TrustOptions::default()).unwrap_err();
        assert!(matches!(e, WriteError::NotJson { .. }), "{e:?}");
    }

    #[test]
    fn refuses_a_policy_with_a_repeated_key() {
        let d = tmp("dup");
        let p = d.join("p.json");
        let before = br#"{"allow_debug": false, "allow_debug": true}"#;
        std::fs::write(&p, before).unwrap();
        let e = trust(&p, "x.json", &ident("leader"), TrustOptions::default()).unwrap_err();
        assert!(
            matches!(e, WriteError::DuplicateKey { ref key, .. } if key == "allow_debug"),
            "{e:?}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn refuses_a_policy_that_is_not_an_object() {
        let d = tmp("notobj");
        let p = d.join("p.json");
        std::fs::write(&p, b"[1]").unwrap();
        let e = trust(&p, "x.json", &ident("leader"), TrustOptions::default()).unwrap_err();
        assert!(matches!(e, WriteError::NotObject { .. }), "{e:?}");
        assert_eq!(std::fs::read(&p).unwrap(), b"[1]");
    }

    #[test]
    fn refuses_a_policy_whose_list_is_not_a_list() {
        let d = tmp("notlist");
        let p = d.join("p.json");
        std::fs::write(&p, br#"{"sgx_mrs": 3}"#).unwrap();
        let e = trust(&p, "x.json", &ident("leader"), TrustOptions::default()).unwrap_err();
        assert!(matches!(e, WriteError::NotList { list: "sgx_mrs", .. }), "{e:?}");
    }

    #[test]
    fn refuses_to_write_a_policy_that_would_not_load() {
        let d = tmp("invalid");
        let p = d.join("p.json");
        let before = br#"{"bogus_key": true}"#;
        std::fs::write(&p, before).unwrap();
        let e = trust(&p, "x.json", &ident("leader"), TrustOptions::default()).unwrap_err();
        assert!(matches!(e, WriteError::Invalid(_)), "{e:?}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn merge_is_pure_and_refuses_what_trust_refuses() {
        let id = identity_entry("f.json", &ident("follower"), TrustOptions::default()).unwrap();
        assert_eq!((id.role, id.list), (PartyRole::Follower, "sgx_mrs"));
        let first = merge(None, "p", &id).unwrap();
        assert!(first.added);
        let again = merge(Some(first.text.as_bytes()), "p", &id).unwrap();
        assert!(!again.added);
        assert_eq!(again.text, first.text);
        let e = merge(Some(b"[]"), "p", &id).unwrap_err();
        assert!(matches!(e, WriteError::NotObject { .. }), "{e:?}");
    }

    #[test]
    fn canonical_form_does_not_depend_on_order() {
        let a = json!({"sgx_mrs": [{"mr_signer": "a", "role": "leader"}, {"role": "follower", "mr_signer": "b"}],
                       "allow_debug": false, "verify_mr_signer": "on"});
        let b = json!({"verify_mr_signer": "on", "allow_debug": false,
                       "sgx_mrs": [{"mr_signer": "b", "role": "follower"}, {"role": "leader", "mr_signer": "a"}]});
        assert_eq!(canonical(&a), canonical(&b));
        assert!(canonical(&a).ends_with("}\n"));
    }

    #[test]
    fn entries_of_identities_parse_as_policy_entries() {
        let sgx = EnclaveIdentity {
            mr_enclave: [1; 32],
            mr_signer: [2; 32],
            isv_prod_id: 3,
            isv_svn: 4,
            attributes: [0; 16],
        };
        let policy = json!({"verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on",
                            "verify_isv_svn": "on", "sgx_mrs": [sgx_entry(&sgx, Some(PartyRole::Leader), false)]});
        let p = Policy::parse(canonical(&policy).as_bytes(), "t").unwrap();
        assert_eq!(p.entries[0].mr_enclave, Some([1; 32]));
        assert_eq!(p.entries[0].role, Some(PartyRole::Leader));
        let text = party_identity(PartyRole::Follower, &[2; 32], 3, 4);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["mr_signer"], hex::encode([2u8; 32]));
        assert_eq!(v["role"], "follower");
    }
}
