//! Row-major `f32` matrices: the only tensor type the numeric core needs.

use crate::NnError;
use crate::aligned::AlignedVec;

/// A dense row-major matrix of `f32` values.
///
/// Row `r` occupies `data[r * cols .. (r + 1) * cols]`. A matrix with zero
/// columns (an empty tower output) is valid and has an empty buffer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: AlignedVec,
}

impl Matrix {
    /// A `rows x cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: AlignedVec::zeros(rows * cols),
        }
    }

    /// Wraps a buffer, checking that its length is `rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, NnError> {
        let expected = rows.checked_mul(cols).ok_or(NnError::Shape {
            what: "matrix".into(),
            expected: format!("{rows}x{cols} (overflows usize)"),
            got: format!("{} values", data.len()),
        })?;
        if data.len() != expected {
            return Err(NnError::Shape {
                what: "matrix".into(),
                expected: format!("{rows}x{cols} = {expected} values"),
                got: format!("{} values", data.len()),
            });
        }
        Ok(Matrix {
            rows,
            cols,
            data: AlignedVec::from_vec(data),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn as_slice(&self) -> &[f32] {
        self.data.as_slice()
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        self.data.as_mut_slice()
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data.into_vec()
    }

    /// Row `r` as a slice.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data.as_slice()[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data.as_mut_slice()[r * self.cols..(r + 1) * self.cols]
    }

    pub fn get(&self, r: usize, c: usize) -> f32 {
        self.data.as_slice()[r * self.cols + c]
    }

    /// Reshapes in place to `rows x cols`, reusing the allocation. Contents
    /// are unspecified afterwards except that they are finite zeros when the
    /// buffer grows.
    pub fn resize(&mut self, rows: usize, cols: usize) {
        self.rows = rows;
        self.cols = cols;
        self.data.resize(rows * cols);
    }

    /// The first non-finite value, as `(row, col, value)`.
    pub fn first_non_finite(&self) -> Option<(usize, usize, f32)> {
        let cols = self.cols.max(1);
        let d = self.data.as_slice();
        d.iter()
            .position(|v| !v.is_finite())
            .map(|i| (i / cols, i % cols, d[i]))
    }

    /// Horizontal concatenation `[a | b]` written into `out`.
    pub fn concat_cols_into(a: &Matrix, b: &Matrix, out: &mut Matrix) -> Result<(), NnError> {
        if a.rows != b.rows {
            return Err(NnError::Shape {
                what: "concat".into(),
                expected: format!("{} rows on both sides", a.rows),
                got: format!("{} rows", b.rows),
            });
        }
        out.resize(a.rows, a.cols + b.cols);
        for r in 0..a.rows {
            let dst = out.row_mut(r);
            dst[..a.cols].copy_from_slice(a.row(r));
            dst[a.cols..].copy_from_slice(b.row(r));
        }
        Ok(())
    }

    /// Splits columns `[0, at)` into `left` and `[at, cols)` into `right`:
    /// the inverse of [`Matrix::concat_cols_into`].
    pub fn split_cols_into(&self, at: usize, left: &mut Matrix, right: &mut Matrix) -> Result<(), NnError> {
        if at > self.cols {
            return Err(NnError::Shape {
                what: "split".into(),
                expected: format!("split point <= {} columns", self.cols),
                got: format!("split at {at}"),
            });
        }
        left.resize(self.rows, at);
        right.resize(self.rows, self.cols - at);
        for r in 0..self.rows {
            let src = self.row(r);
            left.row_mut(r).copy_from_slice(&src[..at]);
            right.row_mut(r).copy_from_slice(&src[at..]);
        }
        Ok(())
    }

    /// Bitwise equality of shape and contents (distinguishes -0.0 from 0.0
    /// and compares NaN payloads), as used by determinism tests.
    pub fn bitwise_eq(&self, other: &Matrix) -> bool {
        self.shape() == other.shape()
            && self
                .as_slice()
                .iter()
                .zip(other.as_slice())
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_length() {
        assert!(Matrix::from_vec(2, 3, vec![0.0; 6]).is_ok());
        let err = Matrix::from_vec(2, 3, vec![0.0; 5]).unwrap_err();
        assert!(err.to_string().contains("2x3"), "{err}");
    }

    #[test]
    fn concat_then_split_round_trips() {
        let a = Matrix::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = Matrix::from_vec(2, 1, vec![5.0, 6.0]).unwrap();
        let mut c = Matrix::default();
        Matrix::concat_cols_into(&a, &b, &mut c).unwrap();
        assert_eq!(c.as_slice(), &[1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
        let (mut l, mut r) = (Matrix::default(), Matrix::default());
        c.split_cols_into(2, &mut l, &mut r).unwrap();
        assert_eq!(l, a);
        assert_eq!(r, b);
    }

    #[test]
    fn concat_rejects_row_mismatch() {
        let a = Matrix::zeros(2, 2);
        let b = Matrix::zeros(3, 1);
        assert!(Matrix::concat_cols_into(&a, &b, &mut Matrix::default()).is_err());
    }

    #[test]
    fn finds_non_finite() {
        let m = Matrix::from_vec(2, 2, vec![0.0, 1.0, f32::NAN, 2.0]).unwrap();
        let (r, c, v) = m.first_non_finite().unwrap();
        assert_eq!((r, c), (1, 0));
        assert!(v.is_nan());
        assert!(Matrix::zeros(3, 3).first_non_finite().is_none());
    }
}
