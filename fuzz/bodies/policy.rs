//! The policy file (dynamic_config.json): strict JSON (no duplicate keys)
//! and every field rule.

/// One input.
pub fn run(data: &[u8]) {
    if let Ok(p) = vfl_attest::Policy::parse(data, "fuzz") {
        for own in [vfl_attest::Mode::Sgx, vfl_attest::Mode::Tdx] {
            let _ = p.check_usable_by(own, "fuzz");
        }
        let _ = p.roles_of(vfl_attest::TeeType::Sgx, &(0..p.entries.len()).collect::<Vec<_>>());
        let _ = p.roles_of(vfl_attest::TeeType::Tdx, &(0..p.td_entries.len()).collect::<Vec<_>>());
    }
    let _ = vfl_attest::strict_json::parse(data);
}
