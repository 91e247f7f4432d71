//! Messages exchanged between the parties, in the form the network
//! transport carries them: tensors as shape + raw little-endian `f32` bytes.
//!
//! The in-process loop encodes and decodes every message too, so that the
//! code paths tested here are the ones the network uses.

use vfl_data::BatchDigest;
use vfl_nn::Matrix;

use crate::TrainError;

/// A tensor on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct WireTensor {
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl WireTensor {
    pub fn encode(m: &Matrix) -> Self {
        let mut data = Vec::with_capacity(m.as_slice().len() * 4);
        for v in m.as_slice() {
            data.extend_from_slice(&v.to_le_bytes());
        }
        WireTensor {
            shape: vec![m.rows() as u64, m.cols() as u64],
            data,
        }
    }

    /// Decodes into `out`, checking the shape against `expect` (rows, cols),
    /// the byte length, and that every value is finite. `what` names the
    /// tensor in errors.
    pub fn decode_into(&self, what: &str, expect: (usize, usize), out: &mut Matrix) -> Result<(), TrainError> {
        let bad = |reason: String| TrainError::BadTensor {
            what: what.to_string(),
            reason,
        };
        if self.shape.len() != 2 {
            return Err(bad(format!("expected a 2-D tensor, got shape {:?}", self.shape)));
        }
        let (r, c) = (self.shape[0], self.shape[1]);
        if (r, c) != (expect.0 as u64, expect.1 as u64) {
            return Err(bad(format!(
                "expected shape [{}, {}], got [{r}, {c}]",
                expect.0, expect.1
            )));
        }
        let n = expect.0 * expect.1;
        if self.data.len() != n * 4 {
            return Err(bad(format!(
                "shape [{r}, {c}] needs {} bytes, got {}",
                n * 4,
                self.data.len()
            )));
        }
        out.resize(expect.0, expect.1);
        for (dst, chunk) in out.as_mut_slice().iter_mut().zip(self.data.chunks_exact(4)) {
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
}

/// Follower -> leader: the follower tower's output for one iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct Activations {
    pub iteration: u64,
    pub digest: BatchDigest,
    pub train: bool,
    pub tensor: WireTensor,
}

/// Leader -> follower: the gradient w.r.t. those activations.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradient {
    pub iteration: u64,
    pub tensor: WireTensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact() {
        let m = Matrix::from_vec(2, 3, vec![1.5, -0.0, 3.25e-30, f32::MAX, -1.0, 7.0]).unwrap();
        let w = WireTensor::encode(&m);
        let mut out = Matrix::default();
        w.decode_into("t", (2, 3), &mut out).unwrap();
        assert!(out.bitwise_eq(&m));
    }

    #[test]
    fn rejects_wrong_shape() {
        let w = WireTensor::encode(&Matrix::zeros(2, 3));
        let e = w
            .decode_into("act", (2, 4), &mut Matrix::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("act") && e.contains("[2, 4]") && e.contains("[2, 3]"), "{e}");
    }

    #[test]
    fn rejects_wrong_byte_length() {
        let mut w = WireTensor::encode(&Matrix::zeros(2, 3));
        w.data.pop();
        let e = w
            .decode_into("act", (2, 3), &mut Matrix::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("24 bytes") && e.contains("23"), "{e}");
    }

    #[test]
    fn rejects_non_2d() {
        let mut w = WireTensor::encode(&Matrix::zeros(2, 3));
        w.shape = vec![6];
        assert!(w.decode_into("act", (2, 3), &mut Matrix::default()).is_err());
    }

    #[test]
    fn rejects_nan_and_inf() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let m = Matrix::from_vec(1, 2, vec![0.0, bad]).unwrap();
            let e = WireTensor::encode(&m)
                .decode_into("grad", (1, 2), &mut Matrix::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("non-finite value"), "{e}");
            // Neither where nor what: both say something about the peer's data.
            assert!(!e.contains("row") && !e.contains("inf") && !e.contains("NaN"), "{e}");
        }
    }
}
