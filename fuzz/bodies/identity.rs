//! Identity files a peer hands over for `vfl attest trust` (JSON naming a
//! role and an enclave's or a TD's measurements), and existing policy
//! files the entry is merged into: strict JSON, the entry, the canonical
//! rewrite and its parse.

use vfl_attest::policy::write::{self, IdentityEntry, TrustOptions};

/// One input.
pub fn run(data: &[u8]) {
    if let Ok(id) = write::identity_entry("fuzz", data, TrustOptions::default()) {
        let _ = write::merge(None, "new policy", &id);
    }
    // The same bytes as the policy a fixed identity is merged into.
    let fixed = IdentityEntry {
        role: vfl_attest::PartyRole::Follower,
        list: "sgx_mrs",
        entry: serde_json::json!({"role": "follower", "mr_enclave": "self",
            "mr_signer": "1111111111111111111111111111111111111111111111111111111111111111",
            "isv_prod_id": "1", "isv_svn": "1"}),
        what: String::new(),
        replaced_enclave: None,
    };
    let _ = write::merge(Some(data), "fuzz policy", &fixed);
}
