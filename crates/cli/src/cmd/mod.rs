//! One module per subcommand.

pub mod attest;
#[cfg(feature = "dev")]
pub mod bench;
pub mod data;
#[cfg(feature = "dev")]
pub mod demo;
pub mod join;
pub mod model;
pub mod party;
#[cfg(feature = "dev")]
pub mod scale;
pub mod selfcheck;
pub mod shard;
pub mod worker;

/// A metric with four decimals, or `n/a`.
pub(crate) fn four(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.4}"))
}

/// Logs go to stderr; `--loglevel` sets the default filter, `RUST_LOG`
/// overrides it.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only on a terminal: logs sent to files or pipes stay plain.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// The matrix kernel the `gemm` crate dispatches to on this CPU.
pub fn cpu_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
        "scalar"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "portable"
    }
}
