//! RA-TLS certificates: a fresh P-384 key per process, self-signed, carrying
//! the quote in Gramine's legacy extension and in the TCG DICE tagged-evidence
//! extension (both bind the key), plus, in simulated mode, the development
//! PKI material under an experimental-arc OID. Also the parser that takes
//! such a certificate apart again on the verifying side.

use ciborium::Value;
use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair, PKCS_ECDSA_P384_SHA384, PublicKeyData, SerialNumber};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::AttestError;
use crate::attester::{Attester, Mode, SimEvidence};
use crate::quote::{Identity, QuoteView, TeeType};
use crate::verify::Rejection;

/// Gramine's legacy quote extension, encoded as Gramine's mbedTLS code does
/// (the OID's own tag and length end up inside the OID, so standard parsers
/// read 0.6.9.42.840.113741.1337.6 instead of 1.2.840.113741.1337.6).
pub const LEGACY_OID_AS_WRITTEN: &[u64] = &[0, 6, 9, 42, 840, 113741, 1337, 6];
const LEGACY_OID_READ: &str = "0.6.9.42.840.113741.1337.6";
const LEGACY_OID_INTENDED: &str = "1.2.840.113741.1337.6";
/// TCG DICE tagged evidence (`tcg-dice-tagged-evidence`).
pub const TCG_OID: &[u64] = &[2, 23, 133, 5, 4, 9];
const TCG_OID_STR: &str = "2.23.133.5.4.9";
/// enclave-vfl's simulated-evidence extension (IANA experimental arc 1.3.6.1.3).
pub const SIM_OID: &[u64] = &[1, 3, 6, 1, 3, 7741, 1];
const SIM_OID_STR: &str = "1.3.6.1.3.7741.1";
/// CBOR tag of TCG tagged evidence for an Intel TEE quote (as Gramine writes
/// it for SGX; enclave-vfl uses it for TDX quotes too, whose header names
/// the TEE).
const TCG_CBOR_TAG: u64 = 60000;
/// Hash algorithm ids of the `pubkey-hash` claim (IANA named information).
const HASH_SHA256: i64 = 1;
const HASH_SHA384: i64 = 7;
const HASH_SHA512: i64 = 8;

/// This process's TLS identity.
pub struct RaTlsCert {
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key; never leaves the process.
    pub key_der: Vec<u8>,
    /// The identity our own quote claims.
    pub identity: Identity,
    pub mode: Mode,
}

/// Evidence to put into a certificate; tests use it to build bad certificates.
#[derive(Default, Clone)]
pub struct CertEvidence {
    pub legacy_quote: Option<Vec<u8>>,
    /// (quote, CBOR claims)
    pub tcg: Option<(Vec<u8>, Vec<u8>)>,
    pub sim: Option<SimEvidence>,
}

fn pad64(hash: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..hash.len()].copy_from_slice(hash);
    out
}

/// Report data binding a key the legacy way: SHA-256(SPKI), then zeros.
pub fn legacy_report_data(spki: &[u8]) -> [u8; 64] {
    pad64(&Sha256::digest(spki))
}

/// The TCG claims map `{"pubkey-hash": bstr(CBOR [1, bstr SHA-256(SPKI)])}`.
pub fn tcg_claims(spki: &[u8]) -> Vec<u8> {
    let inner = Value::Array(vec![
        Value::Integer(HASH_SHA256.into()),
        Value::Bytes(Sha256::digest(spki).to_vec()),
    ]);
    let map = Value::Map(vec![(Value::Text("pubkey-hash".into()), Value::Bytes(cbor(&inner)))]);
    cbor(&map)
}

/// Report data binding TCG claims: SHA-256(claims), then zeros.
pub fn tcg_report_data(claims: &[u8]) -> [u8; 64] {
    pad64(&Sha256::digest(claims))
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec");
    out
}

/// A new key plus certificate with evidence from `attester`: the TCG DICE
/// extension always; for SGX also Gramine's legacy extension (a second
/// quote), which Gramine before 1.8 reads. A TDX quote travels only in the
/// TCG extension (no TDX verifier reads the legacy one).
pub fn issue(attester: &dyn Attester) -> Result<RaTlsCert, AttestError> {
    let key = new_key()?;
    let spki = key.subject_public_key_info();
    let claims = tcg_claims(&spki);
    let tcg_quote = attester.quote(&tcg_report_data(&claims))?;
    let view = QuoteView::parse(&tcg_quote).map_err(AttestError::Evidence)?;
    let legacy_quote = match view.tee {
        TeeType::Sgx => Some(attester.quote(&legacy_report_data(&spki))?),
        TeeType::Tdx => None,
    };
    let evidence = CertEvidence {
        legacy_quote,
        tcg: Some((tcg_quote, claims)),
        sim: attester.sim_evidence(),
    };
    let cert_der = build_cert(&key, &evidence)?;
    Ok(RaTlsCert {
        cert_der,
        key_der: key.serialize_der(),
        identity: view.identity().clone(),
        mode: attester.mode(),
    })
}

/// A fresh ECDSA P-384 key (what Gramine >= 1.4 uses).
pub fn new_key() -> Result<KeyPair, AttestError> {
    KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(|e| AttestError::Pki(format!("generate TLS key: {e}")))
}

/// Self-signed certificate for `key` carrying `evidence`.
pub fn build_cert(key: &KeyPair, evidence: &CertEvidence) -> Result<Vec<u8>, AttestError> {
    let mut p = CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, "RATLS");
    dn.push(DnType::OrganizationName, "enclave-vfl");
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from_slice(&[1]));
    p.not_before = rcgen::date_time_ymd(2001, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 12, 31);
    if let Some(q) = &evidence.legacy_quote {
        p.custom_extensions
            .push(CustomExtension::from_oid_content(LEGACY_OID_AS_WRITTEN, q.clone()));
    }
    if let Some((q, claims)) = &evidence.tcg {
        let tagged = Value::Tag(
            TCG_CBOR_TAG,
            Box::new(Value::Array(vec![
                Value::Bytes(q.clone()),
                Value::Bytes(claims.clone()),
            ])),
        );
        p.custom_extensions
            .push(CustomExtension::from_oid_content(TCG_OID, cbor(&tagged)));
    }
    if let Some(sim) = &evidence.sim {
        let json = serde_json::to_vec(sim).map_err(|e| AttestError::Pki(format!("simulated evidence: {e}")))?;
        p.custom_extensions
            .push(CustomExtension::from_oid_content(SIM_OID, json));
    }
    let cert = p
        .self_signed(key)
        .map_err(|e| AttestError::Pki(format!("RA-TLS certificate: {e}")))?;
    Ok(cert.der().to_vec())
}

/// How the quote binds the certificate key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// report_data = SHA-256(SPKI) || zeros (Gramine legacy extension).
    Legacy,
    /// report_data = SHA-256(claims) || zeros, claims carry hash(SPKI) (TCG DICE).
    Tcg { claims: Vec<u8> },
}

/// Evidence taken out of a peer certificate (nothing verified yet).
#[derive(Clone, Debug)]
pub struct Evidence {
    pub spki: Vec<u8>,
    pub quote: Vec<u8>,
    pub binding: Binding,
    pub sim: Option<SimEvidence>,
}

impl Evidence {
    /// Which extension the quote came from.
    pub fn carrier(&self) -> &'static str {
        match self.binding {
            Binding::Legacy => "gramine-legacy",
            Binding::Tcg { .. } => "tcg-dice",
        }
    }

    /// Check that the quote's report data binds the certificate's public key.
    pub fn check_binding(&self, report_data: &[u8; 64]) -> Result<(), Rejection> {
        let expected = match &self.binding {
            Binding::Legacy => legacy_report_data(&self.spki),
            Binding::Tcg { claims } => {
                check_claims(claims, &self.spki)?;
                tcg_report_data(claims)
            }
        };
        if report_data[..32] != expected[..32] {
            return Err(Rejection::KeyBinding {
                carrier: self.carrier(),
                expected: hex::encode(&expected[..32]),
                got: hex::encode(&report_data[..32]),
            });
        }
        Ok(())
    }
}

fn check_claims(claims: &[u8], spki: &[u8]) -> Result<(), Rejection> {
    let bad = |why: &str| Rejection::Evidence(format!("TCG claims: {why}"));
    let map = match ciborium::from_reader::<Value, _>(claims).map_err(|e| bad(&e.to_string()))? {
        Value::Map(m) => m,
        _ => return Err(bad("not a CBOR map")),
    };
    let inner = map
        .iter()
        .find_map(|(k, v)| match (k, v) {
            (Value::Text(k), Value::Bytes(b)) if k == "pubkey-hash" => Some(b),
            _ => None,
        })
        .ok_or_else(|| bad("no \"pubkey-hash\" byte string"))?;
    let arr = match ciborium::from_reader::<Value, _>(inner.as_slice()).map_err(|e| bad(&e.to_string()))? {
        Value::Array(a) if a.len() == 2 => a,
        _ => return Err(bad("pubkey-hash is not a [alg, hash] array")),
    };
    let alg = match &arr[0] {
        Value::Integer(i) => i64::try_from(*i).map_err(|_| bad("hash algorithm id out of range"))?,
        _ => return Err(bad("hash algorithm id is not an integer")),
    };
    let Value::Bytes(hash) = &arr[1] else {
        return Err(bad("hash is not a byte string"));
    };
    let want: Vec<u8> = match alg {
        HASH_SHA256 => Sha256::digest(spki).to_vec(),
        HASH_SHA384 => Sha384::digest(spki).to_vec(),
        HASH_SHA512 => Sha512::digest(spki).to_vec(),
        other => return Err(bad(&format!("unsupported hash algorithm id {other}"))),
    };
    if *hash != want {
        return Err(Rejection::KeyBinding {
            carrier: "tcg-dice",
            expected: hex::encode(&want),
            got: hex::encode(hash),
        });
    }
    Ok(())
}

/// Take the evidence out of a DER certificate. The TCG extension wins when
/// present (and must then be valid); otherwise the legacy one is used.
pub fn extract(cert_der: &[u8]) -> Result<Evidence, Rejection> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Rejection::Certificate(format!("not a valid X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(Rejection::Certificate(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let spki = cert.tbs_certificate.subject_pki.raw.to_vec();
    let (mut legacy, mut tcg, mut sim) = (None, None, None);
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        let slot = match oid.as_str() {
            LEGACY_OID_READ | LEGACY_OID_INTENDED => &mut legacy,
            TCG_OID_STR => &mut tcg,
            SIM_OID_STR => &mut sim,
            _ => continue,
        };
        if slot.is_some() {
            return Err(Rejection::Evidence(format!("extension {oid} appears twice")));
        }
        *slot = Some(ext.value.to_vec());
    }
    let sim = match sim {
        Some(json) => Some(
            serde_json::from_slice::<SimEvidence>(&json)
                .map_err(|e| Rejection::Evidence(format!("simulated evidence extension: {e}")))?,
        ),
        None => None,
    };
    if let Some(tagged) = tcg {
        let (quote, claims) = parse_tcg(&tagged)?;
        return Ok(Evidence {
            spki,
            quote,
            binding: Binding::Tcg { claims },
            sim,
        });
    }
    if let Some(quote) = legacy {
        return Ok(Evidence {
            spki,
            quote,
            binding: Binding::Legacy,
            sim,
        });
    }
    Err(Rejection::NoEvidence)
}

fn parse_tcg(tagged: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Rejection> {
    let bad = |why: String| Rejection::Evidence(format!("TCG tagged evidence: {why}"));
    match ciborium::from_reader::<Value, _>(tagged).map_err(|e| bad(e.to_string()))? {
        Value::Tag(TCG_CBOR_TAG, inner) => match *inner {
            Value::Array(a) => match <[Value; 2]>::try_from(a) {
                Ok([Value::Bytes(q), Value::Bytes(c)]) => Ok((q, c)),
                _ => Err(bad("expected [bstr quote, bstr claims]".into())),
            },
            _ => Err(bad("tag content is not an array".into())),
        },
        Value::Tag(t, _) => Err(bad(format!("CBOR tag {t} is not the TEE quote tag {TCG_CBOR_TAG}"))),
        _ => Err(bad("not a CBOR tag".into())),
    }
}
