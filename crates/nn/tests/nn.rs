//! Integration tests of the numeric core, one module per area, all in one
//! test binary.

#[path = "cases/gradcheck.rs"]
mod gradcheck;
#[path = "cases/panels.rs"]
mod panels;
#[path = "cases/spec.rs"]
mod spec;
