//! Encryption at rest (sealing) of checkpoints, exported models and the
//! small state records a party keeps: AES-256-GCM over the whole file, with
//! what the file is (its [`Context`]: kind, job, role, step, model, policy,
//! run) as associated data, so a file renamed, swapped, or taken from
//! another job or run is refused, not loaded.
//!
//! In an enclave the key is Gramine's MRENCLAVE sealing key: only an
//! enclave with exactly this measurement (code, manifest, command line,
//! policy) on this CPU can derive it, so neither the party's operator nor
//! the holder of the enclave signing key can read or forge sealed files.
//!
//! Sealed file layout:
//! `b"VFLSEAL2"` | key id (16 B) | nonce (12 B) | context length (u16 LE) |
//! context (canonical JSON object) | ciphertext with 16-byte tag. Everything
//! before the ciphertext is the associated data. The key id is the first 16
//! bytes of SHA-256("enclave-vfl key id" || key); it names the key without
//! revealing it.

use std::collections::BTreeMap;
use std::path::Path;
#[cfg(feature = "dev")]
use std::path::PathBuf;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"VFLSEAL2";
const OLD_MAGIC: &[u8; 8] = b"VFLSEAL1";
const KEY_ID_LEN: usize = 16;
const FIXED: usize = 8 + KEY_ID_LEN + NONCE_LEN + 2;
const TAG_LEN: usize = 16;

/// Why sealing or unsealing failed. Each variant names the file (or key)
/// and the reason; none carries plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("encryption key {source_name}: {why}")]
    Key { source_name: String, why: String },
    #[error("{path}: not an enclave-vfl encrypted file")]
    NotSealed { path: String },
    #[error(
        "{path}: encrypted by an older enclave-vfl (format VFLSEAL1, not bound to a job, run and policy); refusing it: start a new run"
    )]
    OldFormat { path: String },
    #[error("{path}: malformed encrypted file: {why}")]
    Malformed { path: String, why: String },
    #[error("{path}: encrypted with another key (key id {theirs}; ours is {ours}, from {source_name})")]
    WrongKey {
        path: String,
        theirs: String,
        ours: String,
        source_name: String,
    },
    #[error("{path}: sealed with {field} {got:?}, expected {expected:?} (a file of another {what}?)")]
    Mismatch {
        path: String,
        field: String,
        expected: String,
        got: String,
        what: &'static str,
    },
    #[error("{path}: authentication failed: the encrypted file was altered or damaged")]
    Tampered { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the encryption key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Gramine's sealing key bound to this enclave's MRENCLAVE.
    SgxMrEnclave,
    /// A file holding 32 raw bytes or 64 hex digits (development builds:
    /// whoever reads the file reads the sealed state).
    #[cfg(feature = "dev")]
    File(PathBuf),
    /// An environment variable holding 64 hex digits (development builds).
    #[cfg(feature = "dev")]
    Env(String),
}

impl std::str::FromStr for KeySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgx-mrenclave" => Ok(Self::SgxMrEnclave),
            "sgx-mrsigner" => Err(
                "sgx-mrsigner is no longer accepted: whoever holds the enclave signing key could sign another \
                 enclave that derives it and read or forge the sealed state; use sgx-mrenclave"
                    .into(),
            ),
            #[cfg(feature = "dev")]
            _ if s.starts_with("file:") => Ok(Self::File(PathBuf::from(&s["file:".len()..]))),
            #[cfg(feature = "dev")]
            _ if s.starts_with("env:") => Ok(Self::Env(s["env:".len()..].to_string())),
            #[cfg(feature = "dev")]
            _ => Err(format!("{s:?}: expected sgx-mrenclave, file:PATH or env:VAR")),
            #[cfg(not(feature = "dev"))]
            _ => Err(format!(
                "{s:?}: this (enclave) build seals only with sgx-mrenclave: keys from files or the environment \
                 are for development builds"
            )),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SgxMrEnclave => f.write_str("sgx-mrenclave"),
            #[cfg(feature = "dev")]
            Self::File(p) => write!(f, "file:{}", p.display()),
            #[cfg(feature = "dev")]
            Self::Env(v) => write!(f, "env:{v}"),
        }
    }
}

/// What a sealed file is: a kind and named fields (job, role, step, ...),
/// authenticated with its contents. Serialised as a canonical JSON object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub kind: String,
    pub fields: BTreeMap<String, String>,
}

impl Context {
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_string(),
            fields: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a field.
    pub fn with(mut self, field: &str, value: impl std::fmt::Display) -> Self {
        self.fields.insert(field.to_string(), value.to_string());
        self
    }

    /// What a joined data block (`vfl join`) of `role` in job `app`, under
    /// the policy with digest `policy`, is. The writer adds the join id and
    /// the block id; a reader expects the block id it asked for.
    pub fn joined_block(app: &str, role: &str, policy: &str) -> Self {
        Context::new("joined block")
            .with("app", app)
            .with("role", role)
            .with("policy", policy)
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        m.insert("kind".into(), self.kind.clone().into());
        for (k, v) in &self.fields {
            m.insert(k.clone(), v.clone().into());
        }
        // A map of strings always serialises.
        serde_json::to_vec(&m).unwrap_or_default()
    }

    fn from_bytes(b: &[u8]) -> Result<Self, String> {
        let m: BTreeMap<String, String> =
            serde_json::from_slice(b).map_err(|e| format!("context is not a JSON object of strings ({e})"))?;
        let mut fields = m;
        let kind = fields.remove("kind").ok_or("context has no kind")?;
        Ok(Self { kind, fields })
    }

    /// Checks that `self` (read from a file) is what `expected` says: the
    /// same kind and the same value for every field `expected` names.
    fn check(&self, expected: &Context, path: &Path) -> Result<(), SealError> {
        let mismatch = |field: &str, expected: &str, got: &str| SealError::Mismatch {
            path: path.display().to_string(),
            field: field.to_string(),
            expected: expected.to_string(),
            got: got.to_string(),
            what: field_meaning(field),
        };
        if self.kind != expected.kind {
            return Err(mismatch("kind", &expected.kind, &self.kind));
        }
        for (k, want) in &expected.fields {
            let got = self.get(k).unwrap_or("");
            if got != want {
                return Err(mismatch(k, want, got));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        for (k, v) in &self.fields {
            write!(f, "; {k}={v}")?;
        }
        Ok(())
    }
}

fn field_meaning(field: &str) -> &'static str {
    match field {
        "app" => "job (application id)",
        "role" => "party",
        "step" => "step (renamed file?)",
        "model" => "model spec",
        "policy" => "policy",
        "run" => "run",
        "join" => "join",
        "block" => "block (renamed file)",
        _ => "kind of file",
    }
}

/// An encryption key for files at rest.
pub struct Sealer {
    key: LessSafeKey,
    key_id: [u8; KEY_ID_LEN],
    source: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(key id {}, {})", hex::encode(self.key_id), self.source)
    }
}

#[cfg(feature = "dev")]
fn parse_hex32(s: &str, source_name: &str) -> Result<[u8; 32], SealError> {
    let bytes = hex::decode(s.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| SealError::Key {
            source_name: source_name.to_string(),
            why: "must hold 64 hex digits (32 bytes)".into(),
        })?;
    let mut k = [0u8; 32];
    k.copy_from_slice(&bytes);
    Ok(k)
}

impl Sealer {
    /// A sealer from 32 key bytes.
    pub fn from_key(key: [u8; 32], source: &str) -> Result<Self, SealError> {
        let mut h = Sha256::new();
        h.update(b"enclave-vfl key id");
        h.update(key);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&h.finalize()[..KEY_ID_LEN]);
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SealError::Key {
            source_name: source.to_string(),
            why: "AES-256-GCM rejected the key".into(),
        })?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            key_id,
            source: source.to_string(),
        })
    }

    /// Load the key `source` names; `device` is Gramine's `/dev/attestation`.
    pub fn open(source: &KeySource, device: &Path) -> Result<Self, SealError> {
        let name = source.to_string();
        let key_err = |why: String| SealError::Key {
            source_name: name.clone(),
            why,
        };
        match source {
            KeySource::SgxMrEnclave => {
                let p = device.join("keys").join("_sgx_mrenclave");
                let raw = std::fs::read(&p).map_err(|e| {
                    key_err(format!(
                        "{}: {e} (sealing keys exist only inside a Gramine SGX enclave)",
                        p.display()
                    ))
                })?;
                if raw.len() != 16 {
                    return Err(key_err(format!(
                        "{}: {} bytes, expected a 16-byte sealing key",
                        p.display(),
                        raw.len()
                    )));
                }
                // Widen the 128-bit sealing key to an AES-256 key, bound to its purpose.
                let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"enclave-vfl");
                let prk = salt.extract(&raw);
                let okm = prk
                    .expand(&[b"model encryption at rest v1"], ring::hkdf::HKDF_SHA256)
                    .map_err(|_| key_err("HKDF failed".into()))?;
                let mut key = [0u8; 32];
                okm.fill(&mut key).map_err(|_| key_err("HKDF failed".into()))?;
                Self::from_key(key, &name)
            }
            #[cfg(feature = "dev")]
            KeySource::File(p) => {
                let raw = std::fs::read(p).map_err(|e| key_err(format!("{}: {e}", p.display())))?;
                let key = match <[u8; 32]>::try_from(raw.as_slice()) {
                    Ok(k) => k,
                    Err(_) => parse_hex32(
                        std::str::from_utf8(&raw)
                            .map_err(|_| key_err(format!("{}: neither 32 bytes nor hex", p.display())))?,
                        &name,
                    )?,
                };
                Self::from_key(key, &name)
            }
            #[cfg(feature = "dev")]
            KeySource::Env(var) => {
                let v = std::env::var(var).map_err(|_| key_err(format!("environment variable {var} is not set")))?;
                Self::from_key(parse_hex32(&v, &name)?, &name)
            }
        }
    }

    /// The key's public id (hex).
    pub fn key_id(&self) -> String {
        hex::encode(self.key_id)
    }

    /// Where the key came from (for logs).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Encrypt `plain` as the file whose identity is `context`.
    pub fn seal(&self, context: &Context, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let key_err = |why: &str| SealError::Key {
            source_name: self.source.clone(),
            why: why.to_string(),
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| key_err("no randomness for the nonce"))?;
        let ctx = context.to_bytes();
        let ctx_len = u16::try_from(ctx.len()).map_err(|_| key_err("context too long"))?;
        let mut out = Vec::with_capacity(FIXED + ctx.len() + plain.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ctx_len.to_le_bytes());
        out.extend_from_slice(&ctx);
        let header_len = out.len();
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(header_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&*head), body)
            .map_err(|_| key_err("encryption failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypt a sealed file that must be what `expected` says (its kind
    /// and every field `expected` names). All or nothing: any change,
    /// another key or another context is refused. Returns the file's whole
    /// context and the plaintext.
    pub fn open_file(&self, bytes: &[u8], expected: &Context, path: &Path) -> Result<(Context, Vec<u8>), SealError> {
        let h = parse_header(bytes, path)?;
        if h.key_id != self.key_id {
            return Err(SealError::WrongKey {
                path: path.display().to_string(),
                theirs: hex::encode(h.key_id),
                ours: self.key_id(),
                source_name: self.source.clone(),
            });
        }
        h.context.check(expected, path)?;
        let mut body = bytes[h.header_len..].to_vec();
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(h.nonce),
                Aad::from(&bytes[..h.header_len]),
                &mut body,
            )
            .map_err(|_| SealError::Tampered {
                path: path.display().to_string(),
            })?
            .len();
        body.truncate(plain_len);
        Ok((h.context, body))
    }

    /// Seals `plain` into `path` atomically (a fresh temporary file in the
    /// same directory, fsync, rename).
    pub fn seal_to_file(&self, path: &Path, context: &Context, plain: &[u8]) -> Result<(), SealError> {
        let sealed = self.seal(context, plain)?;
        vfl_fs::write_bytes(path, &sealed, vfl_fs::Access::Private).map_err(|source| SealError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads and opens a sealed file; `Ok(None)` when it does not exist.
    pub fn open_from_file(&self, path: &Path, expected: &Context) -> Result<Option<(Context, Vec<u8>)>, SealError> {
        match std::fs::read(path) {
            Ok(b) => self.open_file(&b, expected, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SealError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

struct Header {
    key_id: [u8; KEY_ID_LEN],
    nonce: [u8; NONCE_LEN],
    context: Context,
    header_len: usize,
}

/// Whether `bytes` is a sealed file (of this format or the old one).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC) || bytes.starts_with(OLD_MAGIC)
}

fn parse_header(b: &[u8], path: &Path) -> Result<Header, SealError> {
    let at = || path.display().to_string();
    if b.starts_with(OLD_MAGIC) {
        return Err(SealError::OldFormat { path: at() });
    }
    if !b.starts_with(MAGIC) {
        return Err(SealError::NotSealed { path: at() });
    }
    let malformed = |why: &str| SealError::Malformed {
        path: at(),
        why: why.to_string(),
    };
    if b.len() < FIXED {
        return Err(malformed("truncated header"));
    }
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&b[8..8 + KEY_ID_LEN]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[8 + KEY_ID_LEN..8 + KEY_ID_LEN + NONCE_LEN]);
    let n = u16::from_le_bytes([b[FIXED - 2], b[FIXED - 1]]) as usize;
    let header_len = FIXED + n;
    if b.len() < header_len + TAG_LEN {
        return Err(malformed("truncated"));
    }
    let context = Context::from_bytes(&b[FIXED..header_len]).map_err(|e| malformed(&e))?;
    Ok(Header {
        key_id,
        nonce,
        context,
        header_len,
    })
}

/// The context and key id of a sealed file, without decrypting it (nothing
/// here is authenticated until the file is opened).
pub fn describe(bytes: &[u8], path: &Path) -> Result<(Context, String), SealError> {
    let h = parse_header(bytes, path)?;
    Ok((h.context, hex::encode(h.key_id)))
}
