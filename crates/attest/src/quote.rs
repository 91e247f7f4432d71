//! DCAP quotes of both TEEs enclave-vfl knows: SGX enclave quotes (version 3)
//! and TDX quotes (version 4 with a TD 1.0 body, version 5 with a TD 1.0 or
//! TD 1.5 body). What is read here before verification (report data, the
//! claimed identity) is trusted only once dcap-qvl has verified the quote.

use serde::Serialize;

use crate::sgx::{self, EnclaveIdentity, REPORT_BODY_LEN, array};
use crate::tdx::{self, TdIdentity};

/// Size of the quote header.
pub const HEADER_LEN: usize = 48;
/// Size of the version 5 body descriptor (type u16, size u32).
const BODY_DESCRIPTOR_LEN: usize = 6;

/// Which trusted execution environment a quote comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeType {
    /// An SGX enclave (Gramine).
    Sgx,
    /// A TDX trust domain (a confidential VM).
    Tdx,
}

impl TeeType {
    pub fn as_str(self) -> &'static str {
        match self {
            TeeType::Sgx => "sgx",
            TeeType::Tdx => "tdx",
        }
    }

    /// The policy list whose entries admit this TEE.
    pub fn policy_list(self) -> &'static str {
        match self {
            TeeType::Sgx => "sgx_mrs",
            TeeType::Tdx => "tdx_mrs",
        }
    }
}

impl std::fmt::Display for TeeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a quote carries: an enclave's or a TD's. (One per
/// handshake: the TD variant's size is not worth a box.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Identity {
    Sgx(EnclaveIdentity),
    Tdx(TdIdentity),
}

impl Identity {
    pub fn tee(&self) -> TeeType {
        match self {
            Identity::Sgx(_) => TeeType::Sgx,
            Identity::Tdx(_) => TeeType::Tdx,
        }
    }

    pub fn is_debug(&self) -> bool {
        match self {
            Identity::Sgx(i) => i.is_debug(),
            Identity::Tdx(i) => i.is_debug(),
        }
    }

    pub fn sgx(&self) -> Option<&EnclaveIdentity> {
        match self {
            Identity::Sgx(i) => Some(i),
            Identity::Tdx(_) => None,
        }
    }

    pub fn tdx(&self) -> Option<&TdIdentity> {
        match self {
            Identity::Tdx(i) => Some(i),
            Identity::Sgx(_) => None,
        }
    }
}

impl std::fmt::Display for Identity {
    /// The fields a log line needs to tell parties apart.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Sgx(id) => write!(
                f,
                "mr_enclave={} mr_signer={} isv_prod_id={} isv_svn={}",
                hex::encode(id.mr_enclave),
                hex::encode(id.mr_signer),
                id.isv_prod_id,
                id.isv_svn
            ),
            Identity::Tdx(id) => write!(
                f,
                "mr_td={} rtmr1={} rtmr2={}",
                hex::encode(id.mr_td),
                hex::encode(id.rtmr1),
                hex::encode(id.rtmr2)
            ),
        }
    }
}

/// The parts of a quote read before it is verified: enough to check the key
/// binding and to say what the quote claims. Nothing here is trusted until
/// the quote's signature chain has been verified.
#[derive(Clone, Debug)]
pub struct QuoteView {
    pub version: u16,
    pub tee: TeeType,
    /// Where the report body starts and how long it is.
    body_at: usize,
    body_len: usize,
    report_data: [u8; 64],
    identity: Identity,
}

impl QuoteView {
    /// Parse the header and the report body of an SGX or TDX quote.
    pub fn parse(quote: &[u8]) -> Result<Self, String> {
        if quote.len() < HEADER_LEN + BODY_DESCRIPTOR_LEN {
            return Err(format!("quote is {} bytes, shorter than its header", quote.len()));
        }
        let version = u16::from_le_bytes(array(quote, 0));
        let tee_type = u32::from_le_bytes(array(quote, 4));
        let tee = match tee_type {
            0 => TeeType::Sgx,
            tdx::TEE_TYPE_TDX => TeeType::Tdx,
            other => {
                return Err(format!(
                    "quote is for TEE type {other:#x}, neither SGX (0) nor TDX (0x81)"
                ));
            }
        };
        let (body_at, body_len) = match (tee, version) {
            (TeeType::Sgx, 3) => (HEADER_LEN, REPORT_BODY_LEN),
            (TeeType::Sgx, v) => return Err(format!("SGX quote version {v} is not supported (expected 3)")),
            (TeeType::Tdx, 4) => (HEADER_LEN, tdx::TD_REPORT10_LEN),
            (TeeType::Tdx, 5) => {
                let body_type = u16::from_le_bytes(array(quote, HEADER_LEN));
                let size = u32::from_le_bytes(array(quote, HEADER_LEN + 2)) as usize;
                let expected = match body_type {
                    2 => tdx::TD_REPORT10_LEN,
                    3 => tdx::TD_REPORT15_LEN,
                    4 => tdx::TD_REPORT15_EX_LEN,
                    t => return Err(format!("TDX quote v5 body type {t} is not a TD report (2, 3 or 4)")),
                };
                if size != expected {
                    return Err(format!(
                        "TDX quote v5 body type {body_type} is declared as {size} bytes, expected {expected}"
                    ));
                }
                (HEADER_LEN + BODY_DESCRIPTOR_LEN, size)
            }
            (TeeType::Tdx, v) => return Err(format!("TDX quote version {v} is not supported (expected 4 or 5)")),
        };
        if quote.len() < body_at + body_len {
            return Err(format!(
                "quote is {} bytes, shorter than header + report body ({} bytes)",
                quote.len(),
                body_at + body_len
            ));
        }
        let body = &quote[body_at..body_at + body_len];
        let (report_data, identity) = match tee {
            TeeType::Sgx => {
                let b: [u8; REPORT_BODY_LEN] = array(body, 0);
                (
                    array(&b, sgx::BODY_REPORT_DATA),
                    Identity::Sgx(EnclaveIdentity::from_report_body(&b)),
                )
            }
            TeeType::Tdx => {
                let b: [u8; tdx::TD_REPORT10_LEN] = array(body, 0);
                (
                    array(&b, tdx::TD_REPORT_DATA),
                    Identity::Tdx(TdIdentity::from_report_body(&b)),
                )
            }
        };
        Ok(Self {
            version,
            tee,
            body_at,
            body_len,
            report_data,
            identity,
        })
    }

    /// The 64 bytes of report data the enclave or TD put into its report.
    pub fn report_data(&self) -> [u8; 64] {
        self.report_data
    }

    /// The identity the quote claims (unverified until the quote is).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Bytes covered by the attestation key's signature (header and body).
    pub fn signed_len(&self) -> usize {
        self.body_at + self.body_len
    }
}

/// Check that a quote is exactly what the quoting library writes: the
/// declared lengths add up, the certification data is a PCK chain (type 5,
/// inside the QE report certification data, type 6, for TDX) in canonical
/// PEM (BEGIN/END lines, base64 lines of 64 characters, `\n` line ends, an
/// optional trailing NUL). A TDX quote may be followed by zero bytes (the
/// quote generation service hands out fixed-size buffers); nothing else may
/// follow. dcap-qvl ignores such slack; refusing it means any changed byte
/// of a quote is refused.
pub fn check_quote_structure(quote: &[u8]) -> Result<(), String> {
    let view = QuoteView::parse(quote)?;
    let u16_at = |at: usize| quote.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| {
        quote
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let short = || format!("quote ends early ({} bytes)", quote.len());
    let signed = view.signed_len();
    let sig_len = u32_at(signed).ok_or_else(short)?;
    let auth_start = signed + 4;
    let end = auth_start.checked_add(sig_len).ok_or_else(short)?;
    let trailing_ok = match view.tee {
        TeeType::Sgx => end == quote.len(),
        TeeType::Tdx => end <= quote.len() && quote[end..].iter().all(|&b| b == 0),
    };
    if !trailing_ok {
        return Err(format!(
            "signature data is declared as {sig_len} bytes but {} follow the report",
            quote.len().saturating_sub(auth_start)
        ));
    }
    // ISV signature, attestation key.
    let mut at = auth_start + 64 + 64;
    if view.tee == TeeType::Tdx {
        // Certification data type 6: the QE report certification data.
        let outer_type = u16_at(at).ok_or_else(short)?;
        let outer_len = u32_at(at + 2).ok_or_else(short)?;
        at += 6;
        if outer_type != 6 {
            return Err(format!(
                "certification data type {outer_type} is not supported (expected 6: QE report certification data)"
            ));
        }
        if at.checked_add(outer_len) != Some(end) {
            return Err(format!(
                "QE report certification data is declared as {outer_len} bytes but {} remain",
                end.saturating_sub(at)
            ));
        }
    }
    // QE report, QE report signature, QE authentication data.
    at += REPORT_BODY_LEN + 64;
    let qe_auth_len = u16_at(at).ok_or_else(short)?;
    at = at.checked_add(2 + qe_auth_len).ok_or_else(short)?;
    let cert_type = u16_at(at).ok_or_else(short)?;
    let cert_len = u32_at(at + 2).ok_or_else(short)?;
    at += 6;
    if at.checked_add(cert_len) != Some(end) {
        return Err(format!(
            "certification data is declared as {cert_len} bytes but {} remain",
            end.saturating_sub(at)
        ));
    }
    if cert_type != 5 {
        return Err(format!(
            "certification data type {cert_type} is not supported (expected 5: PCK chain)"
        ));
    }
    check_pem_chain(&quote[at..end])
}

fn check_pem_chain(data: &[u8]) -> Result<(), String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let data = data.strip_suffix(b"\0").unwrap_or(data);
    let text = std::str::from_utf8(data).map_err(|_| "PCK chain is not text".to_string())?;
    let Some(body) = text.strip_suffix('\n') else {
        return Err("PCK chain does not end with a newline".into());
    };
    let (mut blocks, mut in_block, mut last_len) = (0, false, 64);
    for (i, line) in body.split('\n').enumerate() {
        let bad = |why: &str| Err(format!("PCK chain line {}: {why}", i + 1));
        if !in_block {
            if line != BEGIN {
                return bad("expected the BEGIN CERTIFICATE line");
            }
            in_block = true;
            last_len = 64;
        } else if line == END {
            in_block = false;
            blocks += 1;
        } else {
            if last_len != 64 {
                return bad("a base64 line shorter than 64 characters is not the last of its block");
            }
            if line.is_empty()
                || line.len() > 64
                || !line.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            {
                return bad("not a line of base64");
            }
            last_len = line.len();
        }
    }
    if in_block || blocks == 0 {
        return Err("PCK chain has an unterminated or no certificate".into());
    }
    Ok(())
}
