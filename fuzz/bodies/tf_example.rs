//! One tf.Example record from a data file, decoded by the streaming decoder
//! into a batch (leader schema with label and mask, sparse slots with a
//! vocabulary check, dense columns).

use vfl_data::Schema;
use vfl_data::batch::{Batch, RowSource};
use vfl_data::example::ExampleDecoder;

/// One input.
pub fn run(data: &[u8]) {
    let mut schema = Schema::new(vec!["x_0".into(), "x_1".into()], vec!["d_0".into()], true);
    schema.vocab = vec![Some(101), None];
    let mut dec = ExampleDecoder::new(schema);
    let mut batch = Batch::new(2, 1);
    let source = RowSource { block: 0, record: 0 };
    let _ = dec.decode_into(data, &mut batch, source);
    assert!(batch.is_consistent());
}
