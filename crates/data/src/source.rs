//! Sources of batches: anything that can fill a [`Batch`] in order.

use crate::DataError;
use crate::batch::{Batch, RowSource};
use crate::synth::{Synth, SynthRow};

/// Something that fills batches in order.
pub trait BatchSource {
    /// Refills `batch` with up to `max_rows` rows; returns the number of
    /// rows, 0 at the end of the data.
    fn fill(&mut self, batch: &mut Batch, max_rows: usize) -> Result<usize, DataError>;
}

/// Batches of synthetic rows `[start, end)` for one party, in row order.
#[derive(Clone, Debug)]
pub struct SynthSource<'a> {
    generator: &'a Synth,
    leader: bool,
    next: u64,
    end: u64,
    row: SynthRow,
}

impl<'a> SynthSource<'a> {
    /// Leader rows carry `y` as label and `1 - loss_mask` as weight.
    pub fn new(generator: &'a Synth, leader: bool, start: u64, end: u64) -> Self {
        SynthSource {
            generator,
            leader,
            next: start,
            end,
            row: SynthRow::default(),
        }
    }
}

impl BatchSource for SynthSource<'_> {
    fn fill(&mut self, batch: &mut Batch, max_rows: usize) -> Result<usize, DataError> {
        batch.clear();
        let slots = self.generator.config().slots;
        if batch.slots != slots || batch.dense_cols != 0 {
            return Err(DataError::BatchShape {
                slots,
                dense: 0,
                batch_slots: batch.slots,
                batch_dense: batch.dense_cols,
            });
        }
        while batch.rows < max_rows && self.next < self.end {
            self.generator.row(self.next, &mut self.row);
            batch.push_example_id(self.next.to_string().as_bytes());
            let ids = if self.leader {
                &self.row.leader
            } else {
                &self.row.follower
            };
            for &id in ids {
                batch.ids.push(id);
                batch.close_slot();
            }
            if self.leader {
                batch.labels.push(self.row.y as f32);
                batch.weights.push(1.0 - self.row.loss_mask as f32);
            }
            batch.finish_row(RowSource {
                block: 0,
                record: self.next,
            });
            self.next += 1;
        }
        Ok(batch.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::SynthConfig;

    #[test]
    fn a_batch_of_another_shape_is_refused() {
        let generator = Synth::new(SynthConfig::default());
        let slots = generator.config().slots;
        let mut src = SynthSource::new(&generator, true, 0, 10);
        let mut batch = Batch::new(slots + 1, 0);
        let e = src.fill(&mut batch, 4).unwrap_err();
        assert!(
            matches!(e, DataError::BatchShape { slots: s, dense: 0, batch_slots, batch_dense: 0 } if s == slots && batch_slots == slots + 1),
            "{e:?}"
        );
        let mut batch = Batch::new(slots, 0);
        assert_eq!(src.fill(&mut batch, 4).unwrap(), 4);
    }
}
