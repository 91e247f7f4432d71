//! The `vfl` binary runs, and computes the same numbers, on CPUs without
//! AVX-512 (and without AVX2), where the `gemm` crate falls back to other
//! kernels. The CPUs are emulated with qemu-user (`qemu-x86_64 -cpu ...`).
//!
//! qemu-user is a system package (Debian: qemu-user), so the test is
//! ignored by the plain `cargo test` (listed as ignored, with the reason).
//! CI installs qemu and runs it with `--ignored`, where a missing qemu is a
//! failure:
//!
//! ```text
//! cargo test --release --locked -p vfl-cli --test cpu_fallback -- --ignored
//! ```

use std::process::Command;

fn selfcheck(prefix: &[&str]) -> serde_json::Value {
    let bin = env!("CARGO_BIN_EXE_vfl");
    let (cmd, args): (&str, Vec<&str>) = match prefix {
        [] => (bin, vec!["selfcheck"]),
        [q, rest @ ..] => (q, rest.iter().copied().chain([bin, "selfcheck"]).collect()),
    };
    let out = Command::new(cmd).args(&args).output().expect("run vfl selfcheck");
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("selfcheck prints JSON")
}

fn qemu_available() -> bool {
    Command::new("qemu-x86_64")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
#[cfg(target_arch = "x86_64")]
#[ignore = "needs qemu-user (apt-get install qemu-user); CI runs it with --ignored"]
fn runs_and_agrees_without_avx512_and_without_avx2() {
    assert!(
        qemu_available(),
        "qemu-x86_64 is not installed (apt-get install qemu-user): the CPU fallback paths cannot be checked"
    );
    let native = selfcheck(&[]);
    let native_loss = native["train_loss"].as_f64().unwrap();
    let native_auc = native["eval_auc"].as_f64().unwrap();
    assert!(native_loss.is_finite() && native_loss > 0.0);
    // Haswell: AVX2 + FMA, no AVX-512. Nehalem: SSE4.2 only.
    for (cpu, kernel) in [("Haswell", "avx2+fma"), ("Nehalem", "scalar")] {
        let v = selfcheck(&["qemu-x86_64", "-cpu", cpu]);
        assert_eq!(v["kernel"], kernel, "{cpu}: {v}");
        let loss = v["train_loss"].as_f64().unwrap();
        let auc = v["eval_auc"].as_f64().unwrap();
        // Different kernels sum in a different order: equal up to rounding.
        assert!(
            (loss - native_loss).abs() <= 1e-3 * native_loss,
            "{cpu}: loss {loss} vs native {native_loss}"
        );
        assert!(
            (auc - native_auc).abs() <= 1e-2,
            "{cpu}: AUC {auc} vs native {native_auc}"
        );
    }
}
