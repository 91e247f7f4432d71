//! Tensors in the protocol's messages. The message types themselves are
//! the bridge's ([`vfl_bridge::pb`], generated from its `.proto`: one
//! definition); this module only turns a [`Matrix`] into a `pb::Tensor`
//! (shape + raw little-endian `f32` bytes) and decodes one straight from
//! the received bytes into a reused matrix, checking it on the way.
//!
//! The in-process loop exchanges the same messages, so that the code paths
//! tested without a network are the ones the network uses.

use vfl_bridge::pb;
use vfl_data::BatchDigest;
use vfl_nn::Matrix;

use crate::TrainError;

/// The wire form of `m`: shape [rows, cols] and its values as
/// little-endian `f32`.
pub fn encode(m: &Matrix) -> pb::Tensor {
    let mut data = Vec::with_capacity(m.as_slice().len() * 4);
    for v in m.as_slice() {
        data.extend_from_slice(&v.to_le_bytes());
    }
    pb::Tensor {
        shape: vec![m.rows() as u64, m.cols() as u64],
        data: data.into(),
    }
}

/// Decodes `t` into `out` (resized, its allocation reused), checking that
/// it is there, its shape against `expect` (rows, cols), the byte length,
/// and that every value is finite. `what` names the tensor in errors.
pub fn decode_into(
    t: Option<&pb::Tensor>,
    what: &'static str,
    expect: (usize, usize),
    out: &mut Matrix,
) -> Result<(), TrainError> {
    let t = t.ok_or(TrainError::NoTensor { what })?;
    let bad = |reason: String| TrainError::BadTensor {
        what: what.to_string(),
        reason,
    };
    if t.shape.len() != 2 {
        return Err(bad(format!("expected a 2-D tensor, got shape {:?}", t.shape)));
    }
    let (r, c) = (t.shape[0], t.shape[1]);
    if (r, c) != (expect.0 as u64, expect.1 as u64) {
        return Err(bad(format!(
            "expected shape [{}, {}], got [{r}, {c}]",
            expect.0, expect.1
        )));
    }
    let n = expect.0 * expect.1;
    if t.data.len() != n * 4 {
        return Err(bad(format!(
            "shape [{r}, {c}] needs {} bytes, got {}",
            n * 4,
            t.data.len()
        )));
    }
    out.resize(expect.0, expect.1);
    for (dst, chunk) in out.as_mut_slice().iter_mut().zip(t.data.chunks_exact(4)) {
        let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        // Neither position nor value in the error: a non-finite entry's
        // row and sign say something about the peer's data or labels.
        if !v.is_finite() {
            return Err(bad("holds a non-finite value".into()));
        }
        *dst = v;
    }
    Ok(())
}

/// The batch digest an activations message carries.
pub fn digest(a: &pb::Activations) -> Result<BatchDigest, TrainError> {
    let d: [u8; 16] = a
        .batch_digest
        .as_slice()
        .try_into()
        .map_err(|_| TrainError::DigestLength {
            len: a.batch_digest.len(),
        })?;
    Ok(BatchDigest(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(t: &pb::Tensor, what: &'static str, expect: (usize, usize)) -> Result<Matrix, TrainError> {
        let mut out = Matrix::default();
        decode_into(Some(t), what, expect, &mut out).map(|()| out)
    }

    #[test]
    fn round_trip_is_exact() {
        let m = Matrix::from_vec(2, 3, vec![1.5, -0.0, 3.25e-30, f32::MAX, -1.0, 7.0]).unwrap();
        assert!(decode(&encode(&m), "t", (2, 3)).unwrap().bitwise_eq(&m));
    }

    #[test]
    fn reuses_the_output_buffer() {
        let m = Matrix::from_vec(2, 3, vec![1.0; 6]).unwrap();
        let mut out = Matrix::zeros(4, 3);
        let before = out.as_slice().as_ptr();
        decode_into(Some(&encode(&m)), "t", (2, 3), &mut out).unwrap();
        assert!(out.bitwise_eq(&m));
        assert_eq!(out.as_slice().as_ptr(), before, "a smaller tensor must not reallocate");
    }

    #[test]
    fn rejects_a_missing_tensor() {
        let e = decode_into(None, "gradient", (2, 3), &mut Matrix::default()).unwrap_err();
        assert!(matches!(e, TrainError::NoTensor { what: "gradient" }), "{e:?}");
    }

    #[test]
    fn rejects_wrong_shape() {
        let e = decode(&encode(&Matrix::zeros(2, 3)), "act", (2, 4)).unwrap_err();
        assert!(
            matches!(&e, TrainError::BadTensor { what, .. } if what == "act"),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("[2, 4]") && e.contains("[2, 3]"), "{e}");
    }

    #[test]
    fn rejects_wrong_byte_length() {
        let mut t = encode(&Matrix::zeros(2, 3));
        t.data = t.data.slice(..23);
        let e = decode(&t, "act", (2, 3)).unwrap_err();
        assert!(matches!(e, TrainError::BadTensor { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("24 bytes") && e.contains("23"), "{e}");
    }

    #[test]
    fn rejects_non_2d() {
        let mut t = encode(&Matrix::zeros(2, 3));
        t.shape = vec![6];
        assert!(matches!(decode(&t, "act", (2, 3)), Err(TrainError::BadTensor { .. })));
    }

    #[test]
    fn rejects_nan_and_inf() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let m = Matrix::from_vec(1, 2, vec![0.0, bad]).unwrap();
            let e = decode(&encode(&m), "grad", (1, 2)).unwrap_err();
            assert!(matches!(e, TrainError::BadTensor { .. }), "{e:?}");
            let e = e.to_string();
            assert!(e.contains("non-finite value"), "{e}");
            // Neither where nor what: both say something about the peer's data.
            assert!(!e.contains("row") && !e.contains("inf") && !e.contains("NaN"), "{e}");
        }
    }

    #[test]
    fn rejects_a_short_digest() {
        let a = pb::Activations {
            batch_digest: vec![0; 15],
            ..Default::default()
        };
        assert!(matches!(digest(&a), Err(TrainError::DigestLength { len: 15 })));
    }
}
