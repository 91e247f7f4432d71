//! A peer's RA-TLS certificate, as the handshake sees it before anything is
//! authenticated: evidence extraction (both OIDs, the simulated extension),
//! quote view and binding, then the whole verifier (dcap-qvl included):
//! simulated evidence under the fuzz development root, hardware quotes with
//! Intel's sample collateral (policy and root in
//! crates/attest/tests/fixtures/fuzz/), at a fixed time inside both
//! collaterals' validity.
#![no_main]

#[path = "../bodies/ratls_cert.rs"]
mod body;

libfuzzer_sys::fuzz_target!(init: body::init(), |data: &[u8]| body::run(data));
