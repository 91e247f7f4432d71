//! MRSIGNER from an enclave signing key, without SGX tooling:
//! SHA-256 of the RSA-3072 modulus as 384 little-endian bytes (what
//! `gramine-sgx-sigstruct-view` prints as mr_signer).

use der_parser::ber::BerObjectContent;
use der_parser::der::parse_der;
use sha2::{Digest, Sha256};
use x509_parser::der_parser;

use crate::AttestError;

/// Bytes of an SGX signing key's modulus (RSA-3072).
const MODULUS_LEN: usize = 384;

/// MRSIGNER of the RSA key in `pem` (private PKCS#1 or PKCS#8, or public
/// PKCS#1 or SubjectPublicKeyInfo).
pub fn from_pem(pem: &[u8]) -> Result<[u8; 32], AttestError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| AttestError::Key(format!("not PEM: {e}")))?;
    let (modulus, exponent) = match pem.label.as_str() {
        "RSA PRIVATE KEY" => pkcs1_private(&pem.contents)?,
        "PRIVATE KEY" => pkcs8(&pem.contents)?,
        "RSA PUBLIC KEY" => pkcs1_public(&pem.contents)?,
        "PUBLIC KEY" => spki(&pem.contents)?,
        other => return Err(AttestError::Key(format!("PEM block {other:?} is not an RSA key"))),
    };
    from_modulus(&modulus, &exponent)
}

/// MRSIGNER of a big-endian modulus; checks the SGX key shape (3072 bits, e = 3).
pub fn from_modulus(modulus_be: &[u8], exponent_be: &[u8]) -> Result<[u8; 32], AttestError> {
    let m: Vec<u8> = modulus_be.iter().copied().skip_while(|b| *b == 0).collect();
    if m.len() != MODULUS_LEN {
        return Err(AttestError::Key(format!(
            "an SGX enclave signing key is RSA-3072; this key's modulus has {} bits",
            m.len() * 8 - m.first().map_or(0, |b| b.leading_zeros() as usize)
        )));
    }
    let e: Vec<u8> = exponent_be.iter().copied().skip_while(|b| *b == 0).collect();
    if e != [3] {
        return Err(AttestError::Key(format!(
            "an SGX enclave signing key has public exponent 3; this key has 0x{}",
            hex::encode(&e)
        )));
    }
    let le: Vec<u8> = m.iter().rev().copied().collect();
    Ok(Sha256::digest(le).into())
}

fn bad(what: &str) -> AttestError {
    AttestError::Key(format!("malformed {what}"))
}

fn seq<'a>(der: &'a [u8], what: &str) -> Result<Vec<der_parser::ber::BerObject<'a>>, AttestError> {
    let (_, obj) = parse_der(der).map_err(|_| bad(what))?;
    match obj.content {
        BerObjectContent::Sequence(items) => Ok(items),
        _ => Err(bad(what)),
    }
}

fn int(o: &der_parser::ber::BerObject<'_>, what: &str) -> Result<Vec<u8>, AttestError> {
    match &o.content {
        BerObjectContent::Integer(b) => Ok(b.to_vec()),
        _ => Err(bad(what)),
    }
}

type Pair = (Vec<u8>, Vec<u8>);

fn pkcs1_private(der: &[u8]) -> Result<Pair, AttestError> {
    let s = seq(der, "PKCS#1 private key")?;
    match s.as_slice() {
        [_version, n, e, ..] => Ok((int(n, "PKCS#1 modulus")?, int(e, "PKCS#1 exponent")?)),
        _ => Err(bad("PKCS#1 private key")),
    }
}

fn pkcs1_public(der: &[u8]) -> Result<Pair, AttestError> {
    let s = seq(der, "PKCS#1 public key")?;
    match s.as_slice() {
        [n, e] => Ok((int(n, "PKCS#1 modulus")?, int(e, "PKCS#1 exponent")?)),
        _ => Err(bad("PKCS#1 public key")),
    }
}

fn pkcs8(der: &[u8]) -> Result<Pair, AttestError> {
    let s = seq(der, "PKCS#8 key")?;
    match s.as_slice() {
        [_version, _alg, key, ..] => match &key.content {
            BerObjectContent::OctetString(inner) => pkcs1_private(inner),
            _ => Err(bad("PKCS#8 key")),
        },
        _ => Err(bad("PKCS#8 key")),
    }
}

fn spki(der: &[u8]) -> Result<Pair, AttestError> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).map_err(|_| bad("public key"))?;
    match info.parsed() {
        Ok(PublicKey::RSA(k)) => Ok((k.modulus.to_vec(), k.exponent.to_vec())),
        _ => Err(AttestError::Key("the public key is not an RSA key".into())),
    }
}
