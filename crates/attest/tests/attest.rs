//! Integration tests of the attestation crate, one module per area, all in
//! one test binary. (The checks of the enclave build, without the `dev`
//! feature, are `crates/cli/tests/enclave_build.rs`.)

#[path = "cases/fuzz_findings.rs"]
mod fuzz_findings;
#[path = "cases/offline.rs"]
mod offline;
#[path = "cases/pccs.rs"]
mod pccs;
#[path = "cases/ratls.rs"]
mod ratls;
#[path = "cases/tdx.rs"]
mod tdx;
#[path = "cases/trust_model.rs"]
mod trust_model;
