//! Encryption at rest of checkpoints and exported models: AES-256-GCM over
//! the whole file, with what the file is (kind, role, step) as associated
//! data, so a file renamed or swapped for another is refused, not loaded.
//!
//! Sealed file layout:
//! `b"VFLSEAL1"` | key id (16 B) | nonce (12 B) | context length (u16 LE) |
//! context (UTF-8) | ciphertext with 16-byte tag. Everything before the
//! ciphertext is the associated data. The key id is the first 16 bytes of
//! SHA-256("enclave-vfl key id" || key); it names the key without revealing it.

use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::TrainError;

const MAGIC: &[u8; 8] = b"VFLSEAL1";
const KEY_ID_LEN: usize = 16;

/// Where the encryption key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Gramine's sealing key bound to this enclave's MRENCLAVE.
    SgxMrEnclave,
    /// Gramine's sealing key bound to the signer (survives rebuilds by the same signer).
    SgxMrSigner,
    /// A file holding 32 raw bytes or 64 hex digits.
    File(PathBuf),
    /// An environment variable holding 64 hex digits.
    Env(String),
}

impl std::str::FromStr for KeySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgx-mrenclave" => Ok(Self::SgxMrEnclave),
            "sgx-mrsigner" => Ok(Self::SgxMrSigner),
            _ => {
                if let Some(p) = s.strip_prefix("file:") {
                    Ok(Self::File(PathBuf::from(p)))
                } else if let Some(v) = s.strip_prefix("env:") {
                    Ok(Self::Env(v.to_string()))
                } else {
                    Err(format!(
                        "{s:?}: expected sgx-mrenclave, sgx-mrsigner, file:PATH or env:VAR"
                    ))
                }
            }
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SgxMrEnclave => f.write_str("sgx-mrenclave"),
            Self::SgxMrSigner => f.write_str("sgx-mrsigner"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Env(v) => write!(f, "env:{v}"),
        }
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
        write!(f, "Sealer(key id {}, {})", hex16(&self.key_id), self.source)
    }
}

fn hex16(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn key_err(why: String) -> TrainError {
    TrainError::Store(format!("encryption key: {why}"))
}

fn parse_hex32(s: &str, what: &str) -> Result<[u8; 32], TrainError> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(key_err(format!("{what} must hold 64 hex digits (32 bytes)")));
    }
    let mut k = [0u8; 32];
    for (i, k) in k.iter_mut().enumerate() {
        *k = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| key_err(format!("{what}: not hex")))?;
    }
    Ok(k)
}

impl Sealer {
    /// A sealer from 32 key bytes.
    pub fn from_key(key: [u8; 32], source: &str) -> Result<Self, TrainError> {
        let mut h = Sha256::new();
        h.update(b"enclave-vfl key id");
        h.update(key);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&h.finalize()[..KEY_ID_LEN]);
        let unbound =
            UnboundKey::new(&AES_256_GCM, &key).map_err(|_| key_err("AES-256-GCM rejected the key".into()))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            key_id,
            source: source.to_string(),
        })
    }

    /// Load the key `source` names; `device` is Gramine's `/dev/attestation`.
    pub fn open(source: &KeySource, device: &Path) -> Result<Self, TrainError> {
        let name = source.to_string();
        match source {
            KeySource::SgxMrEnclave | KeySource::SgxMrSigner => {
                let file = if *source == KeySource::SgxMrEnclave {
                    "_sgx_mrenclave"
                } else {
                    "_sgx_mrsigner"
                };
                let p = device.join("keys").join(file);
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
            KeySource::File(p) => {
                let raw = std::fs::read(p).map_err(|e| key_err(format!("{}: {e}", p.display())))?;
                let key = match <[u8; 32]>::try_from(raw.as_slice()) {
                    Ok(k) => k,
                    Err(_) => parse_hex32(
                        std::str::from_utf8(&raw)
                            .map_err(|_| key_err(format!("{}: neither 32 bytes nor hex", p.display())))?,
                        &p.display().to_string(),
                    )?,
                };
                Self::from_key(key, &name)
            }
            KeySource::Env(var) => {
                let v = std::env::var(var).map_err(|_| key_err(format!("environment variable {var} is not set")))?;
                Self::from_key(parse_hex32(&v, var)?, &name)
            }
        }
    }

    /// The key's public id (hex).
    pub fn key_id(&self) -> String {
        hex16(&self.key_id)
    }

    /// Encrypt `plain` as the file whose identity is `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, TrainError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| key_err("no randomness for the nonce".into()))?;
        let ctx = context.as_bytes();
        let ctx_len = u16::try_from(ctx.len()).map_err(|_| key_err("context too long".into()))?;
        let mut out = Vec::with_capacity(8 + KEY_ID_LEN + NONCE_LEN + 2 + ctx.len() + plain.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ctx_len.to_le_bytes());
        out.extend_from_slice(ctx);
        let header_len = out.len();
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(header_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&*head), body)
            .map_err(|_| key_err("encryption failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypt a sealed file that must be `expected` (its context). All or
    /// nothing: any change, another key or another context is refused.
    pub fn open_file(
        &self,
        bytes: &[u8],
        expected: Option<&str>,
        path: &Path,
    ) -> Result<(String, Vec<u8>), TrainError> {
        let bad = |why: String| TrainError::Store(format!("{}: {why}", path.display()));
        let h = parse_header(bytes).map_err(&bad)?;
        if h.key_id != self.key_id {
            return Err(bad(format!(
                "encrypted with another key (key id {}; ours is {}, from {})",
                hex16(&h.key_id),
                self.key_id(),
                self.source
            )));
        }
        if let Some(want) = expected
            && h.context != want
        {
            return Err(bad(format!(
                "it says it is \"{}\", expected \"{want}\" (renamed or swapped file?)",
                h.context
            )));
        }
        let mut body = bytes[h.header_len..].to_vec();
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(h.nonce),
                Aad::from(&bytes[..h.header_len]),
                &mut body,
            )
            .map_err(|_| bad("authentication failed: the encrypted file was altered or damaged".into()))?
            .len();
        body.truncate(plain_len);
        Ok((h.context, body))
    }
}

struct Header {
    key_id: [u8; KEY_ID_LEN],
    nonce: [u8; NONCE_LEN],
    context: String,
    header_len: usize,
}

/// Whether `bytes` is a sealed file.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

fn parse_header(b: &[u8]) -> Result<Header, String> {
    let fixed = 8 + KEY_ID_LEN + NONCE_LEN + 2;
    if !is_sealed(b) || b.len() < fixed {
        return Err("not an enclave-vfl encrypted file".into());
    }
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&b[8..8 + KEY_ID_LEN]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[8 + KEY_ID_LEN..8 + KEY_ID_LEN + NONCE_LEN]);
    let n = u16::from_le_bytes([b[fixed - 2], b[fixed - 1]]) as usize;
    let header_len = fixed + n;
    if b.len() < header_len + 16 {
        return Err("encrypted file is truncated".into());
    }
    let context = String::from_utf8(b[fixed..header_len].to_vec()).map_err(|_| "context is not UTF-8".to_string())?;
    Ok(Header {
        key_id,
        nonce,
        context,
        header_len,
    })
}

/// The context and key id of a sealed file, without decrypting it.
pub fn describe(bytes: &[u8]) -> Result<(String, String), String> {
    let h = parse_header(bytes)?;
    Ok((h.context, hex16(&h.key_id)))
}
