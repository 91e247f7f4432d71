//! Batch buffers filled by the readers and consumed by the trainer, and the
//! batch digest that proves two parties hold the same rows in the same order.

use sha2::{Digest, Sha256};

/// Where a row came from: block index (in the caller's order) and record
/// (or line) number within the block, both 0-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSource {
    pub block: u32,
    pub record: u64,
}

/// One batch of examples in flat, reusable buffers.
///
/// Sparse ids are example-major: the ids of row `r`, slot `s` are
/// `ids[offsets[r * slots + s] .. offsets[r * slots + s + 1]]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub rows: usize,
    id_bytes: Vec<u8>,
    id_ends: Vec<u32>,
    pub slots: usize,
    pub ids: Vec<i64>,
    pub offsets: Vec<u32>,
    pub dense_cols: usize,
    /// `rows x dense_cols`, row-major.
    pub dense: Vec<f32>,
    /// One label per row (empty when the schema has no label).
    pub labels: Vec<f32>,
    /// One loss weight per row (`1 - loss_mask`); empty when no loss mask.
    pub weights: Vec<f32>,
    pub sources: Vec<RowSource>,
}

/// A 128-bit digest of the ordered example ids of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchDigest(pub [u8; 16]);

impl std::fmt::Display for BatchDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Batch {
    /// An empty batch shaped for `slots` sparse slots and `dense_cols` dense
    /// columns.
    pub fn new(slots: usize, dense_cols: usize) -> Self {
        Batch {
            slots,
            dense_cols,
            offsets: vec![0],
            ..Default::default()
        }
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.rows = 0;
        self.id_bytes.clear();
        self.id_ends.clear();
        self.ids.clear();
        self.offsets.clear();
        self.offsets.push(0);
        self.dense.clear();
        self.labels.clear();
        self.weights.clear();
        self.sources.clear();
    }

    /// The example id of row `r`.
    pub fn example_id(&self, r: usize) -> &[u8] {
        let start = if r == 0 { 0 } else { self.id_ends[r - 1] as usize };
        &self.id_bytes[start..self.id_ends[r] as usize]
    }

    /// Appends an example id (rows are completed by the reader that fills
    /// the other buffers; `rows` is incremented by [`Batch::finish_row`]).
    pub fn push_example_id(&mut self, id: &[u8]) {
        self.id_bytes.extend_from_slice(id);
        self.id_ends.push(self.id_bytes.len() as u32);
    }

    /// Closes slot `s`'s id list of the current row.
    pub fn close_slot(&mut self) {
        self.offsets.push(self.ids.len() as u32);
    }

    /// Marks the current row complete.
    pub fn finish_row(&mut self, source: RowSource) {
        self.rows += 1;
        self.sources.push(source);
    }

    /// Removes a partially written last row (after a decode error, so that
    /// a skipped record leaves nothing behind).
    pub fn truncate_rows(&mut self, rows: usize) {
        self.rows = self.rows.min(rows);
        self.id_ends.truncate(self.rows);
        self.id_bytes
            .truncate(self.id_ends.last().copied().unwrap_or(0) as usize);
        self.offsets.truncate(self.rows * self.slots + 1);
        self.ids.truncate(self.offsets.last().copied().unwrap_or(0) as usize);
        self.dense.truncate(self.rows * self.dense_cols);
        self.labels.truncate(self.labels.len().min(self.rows));
        self.weights.truncate(self.weights.len().min(self.rows));
        self.sources.truncate(self.rows);
    }

    /// 128-bit digest of the ordered example ids: the first 16 bytes of
    /// SHA-256 over each id as (u32 little-endian length, bytes).
    pub fn digest(&self) -> BatchDigest {
        let mut h = Sha256::new();
        for r in 0..self.rows {
            let id = self.example_id(r);
            h.update((id.len() as u32).to_le_bytes());
            h.update(id);
        }
        let full = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        BatchDigest(out)
    }

    /// Index of the first row whose example id differs from `other`'s, to
    /// report where two parties' batches diverge.
    pub fn first_mismatch(&self, other: &Batch) -> Option<usize> {
        (0..self.rows.max(other.rows))
            .find(|&r| r >= self.rows || r >= other.rows || self.example_id(r) != other.example_id(r))
    }

    /// Checks the buffers are mutually consistent (for tests and debug).
    pub fn is_consistent(&self) -> bool {
        self.id_ends.len() == self.rows
            && self.offsets.len() == self.rows * self.slots + 1
            && self.offsets.last().copied() == Some(self.ids.len() as u32)
            && self.dense.len() == self.rows * self.dense_cols
            && (self.labels.is_empty() || self.labels.len() == self.rows)
            && (self.weights.is_empty() || self.weights.len() == self.rows)
            && self.sources.len() == self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(ids: &[&str]) -> Batch {
        let mut b = Batch::new(0, 0);
        for (i, id) in ids.iter().enumerate() {
            b.push_example_id(id.as_bytes());
            b.finish_row(RowSource {
                block: 0,
                record: i as u64,
            });
        }
        b
    }

    #[test]
    fn digest_depends_on_order_and_boundaries() {
        let a = batch_of(&["1", "2", "3"]);
        assert_eq!(a.digest(), batch_of(&["1", "2", "3"]).digest());
        assert_ne!(a.digest(), batch_of(&["2", "1", "3"]).digest());
        // Length-prefixing keeps "12","3" distinct from "1","23".
        assert_ne!(batch_of(&["12", "3"]).digest(), batch_of(&["1", "23"]).digest());
        assert_eq!(a.digest().to_string().len(), 32);
    }

    #[test]
    fn first_mismatch_finds_swapped_rows() {
        let a = batch_of(&["1", "2", "3", "4"]);
        let b = batch_of(&["1", "3", "2", "4"]);
        assert_eq!(a.first_mismatch(&b), Some(1));
        assert_eq!(a.first_mismatch(&a.clone()), None);
    }

    #[test]
    fn clear_keeps_shape() {
        let mut a = batch_of(&["x"]);
        a.clear();
        assert_eq!(a.rows, 0);
        assert!(a.is_consistent());
    }
}
