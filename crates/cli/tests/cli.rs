//! Integration tests of the `vfl` binary, one module per area, all in one
//! test binary (one link of the dependency graph instead of one per file).

mod common;
#[path = "../../bridge/tests/common/proxy.rs"]
mod proxy;

#[path = "cases/attest_cli.rs"]
mod attest_cli;
#[path = "cases/availability.rs"]
mod availability;
#[path = "cases/cpu_fallback.rs"]
mod cpu_fallback;
#[path = "cases/demo.rs"]
mod demo;
#[path = "cases/deploy.rs"]
mod deploy;
#[path = "cases/fuzz_corpus.rs"]
mod fuzz_corpus;
#[path = "cases/join.rs"]
mod join;
#[path = "cases/resume.rs"]
mod resume;
#[path = "cases/tdx.rs"]
mod tdx;
#[path = "cases/two_party.rs"]
mod two_party;
