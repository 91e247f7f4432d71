//! The SGX structures enclave-vfl reads and writes: the DCAP quote v3 layout
//! (header, ISV enclave report body) and the enclave identity taken from it.

use serde::Serialize;

/// Size of the quote header.
pub const HEADER_LEN: usize = 48;
/// Size of an SGX report body (`sgx_report_body_t`).
pub const REPORT_BODY_LEN: usize = 384;
/// Bytes of a quote covered by the attestation key's signature (header + body).
pub const SIGNED_LEN: usize = HEADER_LEN + REPORT_BODY_LEN;

// Offsets inside the report body.
pub(crate) const BODY_CPU_SVN: usize = 0;
pub(crate) const BODY_MISC_SELECT: usize = 16;
pub(crate) const BODY_ATTRIBUTES: usize = 48;
pub(crate) const BODY_MR_ENCLAVE: usize = 64;
pub(crate) const BODY_MR_SIGNER: usize = 128;
pub(crate) const BODY_ISV_PROD_ID: usize = 256;
pub(crate) const BODY_ISV_SVN: usize = 258;
pub(crate) const BODY_REPORT_DATA: usize = 320;

/// Attribute flag bits (first byte of `attributes`).
pub mod attr {
    /// The enclave has been initialised by EINIT.
    pub const INIT: u8 = 0x01;
    /// A debugger can read and write the enclave's memory.
    pub const DEBUG: u8 = 0x02;
    /// 64-bit enclave.
    pub const MODE64BIT: u8 = 0x04;
    /// The enclave may request the provisioning key (only Intel's provisioning enclaves).
    pub const PROVISION_KEY: u8 = 0x10;
    /// The enclave may request the EINIT token key (only Intel's launch enclave).
    pub const EINITTOKEN_KEY: u8 = 0x20;
}

/// The enclave identity carried by an SGX report: what a policy decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnclaveIdentity {
    #[serde(serialize_with = "ser_hex")]
    pub mr_enclave: [u8; 32],
    #[serde(serialize_with = "ser_hex")]
    pub mr_signer: [u8; 32],
    pub isv_prod_id: u16,
    pub isv_svn: u16,
    #[serde(serialize_with = "ser_hex")]
    pub attributes: [u8; 16],
}

fn ser_hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

impl EnclaveIdentity {
    /// Whether the DEBUG attribute is set.
    pub fn is_debug(&self) -> bool {
        self.attributes[0] & attr::DEBUG != 0
    }

    /// Read the identity out of a 384-byte report body.
    pub fn from_report_body(body: &[u8; REPORT_BODY_LEN]) -> Self {
        Self {
            mr_enclave: array(body, BODY_MR_ENCLAVE),
            mr_signer: array(body, BODY_MR_SIGNER),
            isv_prod_id: u16::from_le_bytes(array(body, BODY_ISV_PROD_ID)),
            isv_svn: u16::from_le_bytes(array(body, BODY_ISV_SVN)),
            attributes: array(body, BODY_ATTRIBUTES),
        }
    }
}

/// Copy `N` bytes at `at` out of a fixed-size buffer; the callers' offsets are
/// constants inside the buffer, so the range is always in bounds.
pub(crate) fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

/// The parts of a quote read before it is verified: enough to check the key
/// binding and to say what the quote claims. Nothing here is trusted until the
/// quote's signature chain has been verified.
#[derive(Clone, Debug)]
pub struct QuoteView {
    pub version: u16,
    pub tee_type: u32,
    pub body: [u8; REPORT_BODY_LEN],
}

impl QuoteView {
    /// Parse the header and the report body of an SGX quote.
    pub fn parse(quote: &[u8]) -> Result<Self, String> {
        if quote.len() < SIGNED_LEN {
            return Err(format!(
                "quote is {} bytes, shorter than header + report body ({SIGNED_LEN} bytes)",
                quote.len()
            ));
        }
        let version = u16::from_le_bytes(array(quote, 0));
        let tee_type = u32::from_le_bytes(array(quote, 4));
        if tee_type != 0 {
            return Err(format!("quote is for TEE type {tee_type:#x}, not SGX (0)"));
        }
        if version != 3 {
            return Err(format!("SGX quote version {version} is not supported (expected 3)"));
        }
        Ok(Self {
            version,
            tee_type,
            body: array(quote, HEADER_LEN),
        })
    }

    /// The 64 bytes of report data the enclave put into its report.
    pub fn report_data(&self) -> [u8; 64] {
        array(&self.body, BODY_REPORT_DATA)
    }

    /// The identity the quote claims (unverified until the quote is).
    pub fn identity(&self) -> EnclaveIdentity {
        EnclaveIdentity::from_report_body(&self.body)
    }
}

/// Builder of a 384-byte report body (used by the simulated attester).
#[derive(Clone, Debug)]
pub struct ReportBody(pub [u8; REPORT_BODY_LEN]);

impl ReportBody {
    pub fn new(identity: &EnclaveIdentity, cpu_svn: [u8; 16], report_data: &[u8; 64]) -> Self {
        let mut b = [0u8; REPORT_BODY_LEN];
        b[BODY_CPU_SVN..BODY_CPU_SVN + 16].copy_from_slice(&cpu_svn);
        b[BODY_MISC_SELECT..BODY_MISC_SELECT + 4].copy_from_slice(&0u32.to_le_bytes());
        b[BODY_ATTRIBUTES..BODY_ATTRIBUTES + 16].copy_from_slice(&identity.attributes);
        b[BODY_MR_ENCLAVE..BODY_MR_ENCLAVE + 32].copy_from_slice(&identity.mr_enclave);
        b[BODY_MR_SIGNER..BODY_MR_SIGNER + 32].copy_from_slice(&identity.mr_signer);
        b[BODY_ISV_PROD_ID..BODY_ISV_PROD_ID + 2].copy_from_slice(&identity.isv_prod_id.to_le_bytes());
        b[BODY_ISV_SVN..BODY_ISV_SVN + 2].copy_from_slice(&identity.isv_svn.to_le_bytes());
        b[BODY_REPORT_DATA..BODY_REPORT_DATA + 64].copy_from_slice(report_data);
        Self(b)
    }
}

/// Attributes of a production enclave: INIT | MODE64BIT, XFRM x87|SSE|AVX.
pub const PRODUCTION_ATTRIBUTES: [u8; 16] = [0x05, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0, 0, 0, 0, 0];

/// Check that a quote v3 with certification data type 5 is exactly what the
/// quoting library writes: the declared lengths add up to the quote's size,
/// and the PCK chain is canonical PEM (BEGIN/END lines, base64 lines of 64
/// characters, `\n` line ends, an optional trailing NUL). dcap-qvl ignores
/// slack such as trailing bytes or damaged armour around an unused
/// certificate; refusing it means any changed byte of a quote is refused.
pub fn check_quote_structure(quote: &[u8]) -> Result<(), String> {
    let u16_at = |at: usize| quote.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| {
        quote
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let short = || format!("quote ends early ({} bytes)", quote.len());
    let sig_len = u32_at(SIGNED_LEN).ok_or_else(short)?;
    let auth_start = SIGNED_LEN + 4;
    if auth_start + sig_len != quote.len() {
        return Err(format!(
            "signature data is declared as {sig_len} bytes but {} follow the report",
            quote.len().saturating_sub(auth_start)
        ));
    }
    // ISV signature, attestation key, QE report, QE report signature.
    let mut at = auth_start + 64 + 64 + REPORT_BODY_LEN + 64;
    let qe_auth_len = u16_at(at).ok_or_else(short)?;
    at += 2 + qe_auth_len;
    let cert_type = u16_at(at).ok_or_else(short)?;
    let cert_len = u32_at(at + 2).ok_or_else(short)?;
    at += 6;
    if at + cert_len != quote.len() {
        return Err(format!(
            "certification data is declared as {cert_len} bytes but {} remain",
            quote.len().saturating_sub(at)
        ));
    }
    if cert_type != 5 {
        return Err(format!(
            "certification data type {cert_type} is not supported (expected 5: PCK chain)"
        ));
    }
    check_pem_chain(&quote[at..])
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
