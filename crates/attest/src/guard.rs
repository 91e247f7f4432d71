//! A boundary around the parsers and verifiers of other crates that read
//! peer-supplied bytes (dcap-qvl, its webpki fork, x509-parser): a panic in
//! one of them (an `assert!` on malformed input, found by fuzzing) becomes
//! a refusal of that input instead of the death of the task verifying it.
//! The workspace builds with `panic = "unwind"`, so the boundary holds in
//! release and enclave builds too.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`; a panic inside it becomes `Err(on_panic)`. `f` only reads
/// its inputs (no shared state is left half-updated), so unwinding out of
/// it is sound.
pub fn no_panic<T, E>(on_panic: impl FnOnce() -> E, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(on_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::no_panic;

    #[test]
    fn a_panic_becomes_the_given_error() {
        let r: Result<(), &str> = no_panic(|| "refused", || panic!("dependency assert"));
        assert_eq!(r, Err("refused"));
    }

    #[test]
    fn results_pass_through() {
        assert_eq!(no_panic(|| 0, || Ok::<_, i32>(7)), Ok(7));
        assert_eq!(no_panic(|| 0, || Err::<i32, _>(3)), Err(3));
    }
}
