//! `f32` storage whose first element sits on a 64-byte (cache line)
//! boundary.
//!
//! Large allocations from the system allocator typically start 16 bytes
//! past a page boundary, so a 16-float embedding row or matrix block would
//! straddle two cache lines and cost two misses instead of one. The buffer
//! is over-allocated by one cache line and used from the first aligned
//! element; no unsafe code is involved.

/// A fixed-length, cache-line-aligned `f32` buffer.
#[derive(Debug, Default)]
pub struct AlignedVec {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

const PAD: usize = 64 / std::mem::size_of::<f32>() - 1;

fn start_of(buf: &[f32]) -> usize {
    // align_offset may return usize::MAX when alignment is impossible; an
    // f32 pointer can always reach a 64-byte boundary within PAD elements.
    buf.as_ptr().align_offset(64).min(PAD)
}

impl AlignedVec {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let buf = vec![0.0; len + PAD];
        let start = start_of(&buf);
        AlignedVec { buf, start, len }
    }

    /// `len` copies of `value`.
    #[cfg(test)]
    fn filled(len: usize, value: f32) -> Self {
        let mut v = Self::zeros(len);
        v.as_mut_slice().fill(value);
        v
    }

    pub fn from_slice(values: &[f32]) -> Self {
        let mut v = Self::zeros(values.len());
        v.as_mut_slice().copy_from_slice(values);
        v
    }

    /// Wraps an existing vector as it is (not necessarily aligned).
    pub fn from_vec(buf: Vec<f32>) -> Self {
        let len = buf.len();
        AlignedVec { buf, start: 0, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Changes the length, keeping the common prefix; new elements are 0.
    pub fn resize(&mut self, len: usize) {
        if self.start + len <= self.buf.len() {
            if len > self.len {
                self.buf[self.start + self.len..self.start + len].fill(0.0);
            }
            self.len = len;
            return;
        }
        let mut grown = Self::zeros(len);
        grown.as_mut_slice()[..self.len].copy_from_slice(self.as_slice());
        *self = grown;
    }

    pub fn into_vec(self) -> Vec<f32> {
        if self.start == 0 && self.buf.len() == self.len {
            self.buf
        } else {
            self.as_slice().to_vec()
        }
    }
}

impl Clone for AlignedVec {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

impl PartialEq for AlignedVec {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_aligned_and_resizes_keep_prefix() {
        for len in [0, 1, 17, 100_000] {
            let mut v = AlignedVec::filled(len, 2.0);
            assert_eq!(v.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!(v.len(), len);
            v.resize(len + 40_000);
            assert_eq!(v.as_slice().as_ptr() as usize % 64, 0);
            assert!(v.as_slice()[..len].iter().all(|&x| x == 2.0));
            assert!(v.as_slice()[len..].iter().all(|&x| x == 0.0));
            v.resize(1);
            assert_eq!(v.len(), 1);
            v.resize(3);
            assert_eq!(v.as_slice()[1..], [0.0, 0.0]);
            let c = v.clone();
            assert_eq!(c, v);
            assert_eq!(c.as_slice().as_ptr() as usize % 64, 0);
        }
    }
}
