//! The Intel TDX structures enclave-vfl reads and writes: the TD report body
//! of a quote (TD 1.0 layout, 584 bytes; TD 1.5 bodies start with it) and the
//! TD identity taken from it.

use serde::Serialize;

/// Size of a TD 1.0 report body (`sgx_report2_body_t`).
pub const TD_REPORT10_LEN: usize = 584;
/// Size of a TD 1.5 report body (`sgx_report2_body_v1_5_t`).
pub const TD_REPORT15_LEN: usize = 648;
/// Size of a TD 1.5 report body with the extension (`..._v1_5_ex_t`).
pub const TD_REPORT15_EX_LEN: usize = 885;
/// The header's TEE type of a TDX quote.
pub const TEE_TYPE_TDX: u32 = 0x81;

// Offsets inside the TD report body.
pub(crate) const TD_TEE_TCB_SVN: usize = 0;
pub(crate) const TD_MR_SEAM: usize = 16;
pub(crate) const TD_SEAM_ATTRIBUTES: usize = 112;
pub(crate) const TD_ATTRIBUTES: usize = 120;
pub(crate) const TD_XFAM: usize = 128;
pub(crate) const TD_MR_TD: usize = 136;
pub(crate) const TD_MR_CONFIG_ID: usize = 184;
pub(crate) const TD_MR_OWNER: usize = 232;
pub(crate) const TD_MR_OWNER_CONFIG: usize = 280;
pub(crate) const TD_RTMR0: usize = 328;
pub(crate) const TD_REPORT_DATA: usize = 520;

/// TD attribute bits (`td_attributes`, little-endian 64 bits).
pub(crate) mod attr {
    /// TUD.DEBUG (bit 0): the host can read and write the TD's memory and state.
    pub const DEBUG: u64 = 1;
    /// TUD bits 4-6: performance profiling of the TD by the host.
    pub const PROFILING: u64 = 0x70;
    /// SEC.SEPT_VE_DISABLE (bit 28): EPT violations are not converted to #VE.
    #[cfg_attr(not(feature = "dev"), allow(dead_code))]
    pub const SEPT_VE_DISABLE: u64 = 1 << 28;
}

/// A 48-byte measurement in hex.
fn ser_hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// The TD identity carried by a TD report: what a policy decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdIdentity {
    /// Measurement of the TD's initial memory (the virtual firmware, TDVF).
    #[serde(serialize_with = "ser_hex")]
    pub mr_td: [u8; 48],
    /// Runtime measurement registers 0-3 (firmware configuration; boot
    /// loader and kernel; kernel command line and initrd; the OS's own use).
    #[serde(serialize_with = "ser_hex")]
    pub rtmr0: [u8; 48],
    #[serde(serialize_with = "ser_hex")]
    pub rtmr1: [u8; 48],
    #[serde(serialize_with = "ser_hex")]
    pub rtmr2: [u8; 48],
    #[serde(serialize_with = "ser_hex")]
    pub rtmr3: [u8; 48],
    /// Set by the host at TD creation (opaque configuration identifier).
    #[serde(serialize_with = "ser_hex")]
    pub mr_config_id: [u8; 48],
    #[serde(serialize_with = "ser_hex")]
    pub mr_owner: [u8; 48],
    #[serde(serialize_with = "ser_hex")]
    pub mr_owner_config: [u8; 48],
    /// TD attributes (DEBUG is bit 0).
    #[serde(serialize_with = "ser_hex")]
    pub td_attributes: [u8; 8],
    #[serde(serialize_with = "ser_hex")]
    pub xfam: [u8; 8],
    /// TEE TCB SVN (TDX module SVNs).
    #[serde(serialize_with = "ser_hex")]
    pub tee_tcb_svn: [u8; 16],
}

impl TdIdentity {
    /// Whether the DEBUG attribute is set.
    pub fn is_debug(&self) -> bool {
        self.attributes() & attr::DEBUG != 0
    }

    /// The TD attributes as a number.
    pub fn attributes(&self) -> u64 {
        u64::from_le_bytes(self.td_attributes)
    }

    /// RTMR `i` (0-3).
    pub fn rtmr(&self, i: usize) -> &[u8; 48] {
        match i {
            0 => &self.rtmr0,
            1 => &self.rtmr1,
            2 => &self.rtmr2,
            _ => &self.rtmr3,
        }
    }

    /// Read the identity out of a TD report body (at least 584 bytes; the
    /// caller checked the length).
    pub fn from_report_body(body: &[u8; TD_REPORT10_LEN]) -> Self {
        use crate::sgx::array;
        Self {
            mr_td: array(body, TD_MR_TD),
            rtmr0: array(body, TD_RTMR0),
            rtmr1: array(body, TD_RTMR0 + 48),
            rtmr2: array(body, TD_RTMR0 + 96),
            rtmr3: array(body, TD_RTMR0 + 144),
            mr_config_id: array(body, TD_MR_CONFIG_ID),
            mr_owner: array(body, TD_MR_OWNER),
            mr_owner_config: array(body, TD_MR_OWNER_CONFIG),
            td_attributes: array(body, TD_ATTRIBUTES),
            xfam: array(body, TD_XFAM),
            tee_tcb_svn: array(body, TD_TEE_TCB_SVN),
        }
    }

    /// From dcap-qvl's verified TD report.
    pub fn from_verified(r: &dcap_qvl::quote::TDReport10) -> Self {
        Self {
            mr_td: r.mr_td,
            rtmr0: r.rt_mr0,
            rtmr1: r.rt_mr1,
            rtmr2: r.rt_mr2,
            rtmr3: r.rt_mr3,
            mr_config_id: r.mr_config_id,
            mr_owner: r.mr_owner,
            mr_owner_config: r.mr_owner_config,
            td_attributes: r.td_attributes,
            xfam: r.xfam,
            tee_tcb_svn: r.tee_tcb_svn,
        }
    }
}

/// XFAM of a TD with x87, SSE, AVX, AVX-512 and PKRU state (what the sample quotes carry).
pub const TYPICAL_XFAM: [u8; 8] = [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0];

/// A TD 1.0 report body over `identity` and `report_data`, with an all-zero
/// SEAM module identity (used by the simulated attester).
pub fn report_body(identity: &TdIdentity, report_data: &[u8; 64]) -> [u8; TD_REPORT10_LEN] {
    let mut b = [0u8; TD_REPORT10_LEN];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(TD_TEE_TCB_SVN, &identity.tee_tcb_svn);
    put(TD_MR_SEAM, &[0u8; 48]);
    put(TD_SEAM_ATTRIBUTES, &[0u8; 8]);
    put(TD_ATTRIBUTES, &identity.td_attributes);
    put(TD_XFAM, &identity.xfam);
    put(TD_MR_TD, &identity.mr_td);
    put(TD_MR_CONFIG_ID, &identity.mr_config_id);
    put(TD_MR_OWNER, &identity.mr_owner);
    put(TD_MR_OWNER_CONFIG, &identity.mr_owner_config);
    for i in 0..4 {
        put(TD_RTMR0 + 48 * i, identity.rtmr(i));
    }
    put(TD_REPORT_DATA, report_data);
    b
}
