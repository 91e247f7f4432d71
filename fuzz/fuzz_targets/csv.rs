//! CSV data files: the header (first line) against a schema, then each
//! further line as a row (quoting, numbers, `|`-separated ids).
#![no_main]

#[path = "../bodies/csv.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
