//! CSV data files: the header (first line) against a schema, then each
//! further line as a row (quoting, numbers, `|`-separated ids).

use vfl_data::Schema;
use vfl_data::batch::{Batch, RowSource};
use vfl_data::csv::{CsvLayout, Splitter};

/// One input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let mut schema = Schema::new(vec!["x_0".into(), "x_1".into()], vec!["d_0".into()], true);
    schema.vocab = vec![Some(101), None];
    // The fuzzer's own header, and a known good one for the rows.
    let _ = CsvLayout::from_header(header, &schema);
    let Ok(layout) = CsvLayout::from_header("id,y,x_0,x_1,d_0", &schema) else {
        return;
    };
    let mut splitter = Splitter::default();
    let mut batch = Batch::new(2, 1);
    for (i, line) in lines.take(256).enumerate() {
        let _ = layout.parse_into(
            line,
            &mut splitter,
            &mut batch,
            RowSource {
                block: 0,
                record: i as u64,
            },
        );
        assert!(batch.is_consistent());
    }
}
