//! CSV rows as `vfl join` converts them into tf.Examples (the header, the
//! id column, typed cells): no panic, and what it writes decodes.

use vfl_data::example::ExampleDecoder;
use vfl_data::{Batch, RowSource, Schema};

/// One input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let mut out = Vec::new();
    let mut decoder = ExampleDecoder::new(Schema::new(Vec::new(), Vec::new(), false));
    for line in lines.take(64) {
        if vfl_join::input::csv_to_example(header, line, &mut out).is_ok() {
            let mut batch = Batch::new(0, 0);
            decoder
                .decode_into(&out, &mut batch, RowSource { block: 0, record: 0 })
                .expect("a converted row decodes");
        }
    }
}
