//! The SGX structures enclave-vfl reads and writes: the ISV enclave report
//! body of a DCAP quote v3 and the enclave identity taken from it (the quote
//! layout itself is in [`crate::quote`]).

use serde::Serialize;

/// Size of the quote header.
pub const HEADER_LEN: usize = crate::quote::HEADER_LEN;
/// Size of an SGX report body (`sgx_report_body_t`).
pub const REPORT_BODY_LEN: usize = 384;

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
pub(crate) mod attr {
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
