//! CSV input: a header row, an id column, an optional label column, numeric
//! dense columns and, optionally, sparse slot columns holding `|`-separated
//! integer ids (an empty cell is an empty slot). FATE's vertically split
//! files (`id,y,x0,...` and `id,x0,...`) read as they are.
//!
//! Fields are split by the `csv-core` tokenizer: they may be quoted
//! (`"..."`, with `""` for a quote); a quoted field cannot span lines (a
//! line is a record). Blank lines are skipped. Columns the schema does not
//! name are ignored.

use std::io::BufRead;

use crate::batch::{Batch, RowSource};
use crate::schema::Schema;

/// Where each schema feature sits in the CSV's columns.
#[derive(Clone, Debug)]
pub struct CsvLayout {
    columns: usize,
    id: usize,
    label: Option<usize>,
    mask: Option<usize>,
    slots: Vec<usize>,
    dense: Vec<usize>,
    vocab: Vec<Option<u64>>,
    names: Vec<String>,
}

/// A CSV problem, with the column (if any) it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvError {
    pub column: Option<String>,
    pub message: String,
}

impl CsvError {
    /// As the data layer's error for `line` of `file`, naming the column.
    pub fn at_line(self, file: &str, line: u64) -> crate::DataError {
        crate::DataError::Line {
            file: file.to_string(),
            line,
            message: match self.column {
                Some(c) => format!("column `{c}`: {}", self.message),
                None => self.message,
            },
        }
    }
}

fn err(column: Option<&str>, message: impl Into<String>) -> CsvError {
    CsvError {
        column: column.map(str::to_string),
        message: message.into(),
    }
}

/// Splits lines into fields with the `csv-core` tokenizer (RFC 4180
/// quoting: `"..."`, `""` for a quote inside), reusing its buffers from
/// line to line. A line is one record: the readers hand over lines, whose
/// numbers name records in errors and whose text the join passes on as it
/// is.
pub struct Splitter {
    reader: csv_core::Reader,
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter {
            reader: csv_core::Reader::new(),
            buf: vec![0; 256],
            ends: vec![0; 16],
        }
    }
}

impl std::fmt::Debug for Splitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splitter").finish_non_exhaustive()
    }
}

/// The fields of one line, unquoted.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    text: &'a str,
    /// Where each field ends, plus `sep`: the next field starts there.
    ends: &'a [usize],
    /// 1 when the fields are slices of the line (a comma between them), 0
    /// when they were unquoted into the splitter's buffer (adjacent).
    sep: usize,
}

impl<'a> Fields<'a> {
    /// The number of fields (at least one).
    #[inline]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i`, untrimmed.
    #[inline]
    pub fn get(&self, i: usize) -> &'a str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i] - self.sep]
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

const LINE_BREAK: &str = "a line break inside a line, outside quotes";

/// The quoting rules the tokenizer is lenient about, enforced before it
/// runs: a quoted field ends with a quote followed by a comma or the end of
/// the line (`"ab"c` and an unterminated `"ab` are refused, not read as
/// `abc` and `ab`: two spellings must not become one example id), and no
/// line break stands outside quotes. A quote inside an unquoted field is
/// data, as for the tokenizer.
fn check_quoting(b: &[u8]) -> Result<(), CsvError> {
    let (mut i, mut field_start) = (0, true);
    while i < b.len() {
        match b[i] {
            b'"' if field_start => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(err(None, "unterminated quoted field")),
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                match b.get(i) {
                    None => return Ok(()),
                    Some(b',') => i += 1,
                    Some(_) => return Err(err(None, "a character follows a closing quote")),
                }
            }
            b',' => {
                i += 1;
                field_start = true;
            }
            b'\r' | b'\n' => return Err(err(None, LINE_BREAK)),
            _ => {
                i += 1;
                field_start = false;
            }
        }
    }
    Ok(())
}

impl Splitter {
    /// Splits `line` (its line break, if any, removed first).
    pub fn split<'a>(&'a mut self, line: &'a str) -> Result<Fields<'a>, CsvError> {
        let line = line.trim_end_matches(['\n', '\r']);
        // A byte-order mark (spreadsheet exports) is not part of a field.
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        // Without quotes or line breaks the tokenizer would copy the line
        // unchanged and end a field at each comma: take the fields as
        // slices of the line instead (measured: the copy costs a fifth of
        // the CSV read rate; see BENCHMARKS.md).
        let bytes = line.as_bytes();
        if memchr::memchr3(b'"', b'\r', b'\n', bytes).is_some() {
            check_quoting(bytes)?;
            return self.tokenize(line);
        }
        self.ends.clear();
        // A plain loop: fields are a few bytes long, too short for memchr.
        for (i, &b) in bytes.iter().enumerate() {
            if b == b',' {
                self.ends.push(i + 1);
            }
        }
        self.ends.push(line.len() + 1);
        Ok(Fields {
            text: line,
            ends: &self.ends,
            sep: 1,
        })
    }

    /// Splits `line` with the tokenizer (quoted fields, carriage returns).
    fn tokenize(&mut self, line: &str) -> Result<Fields<'_>, CsvError> {
        let line = line.as_bytes();
        if self.ends.len() < 16 {
            self.ends.resize(16, 0);
        }
        self.reader.reset();
        let (mut input, mut out, mut nends) = (line, 0usize, 0usize);
        let mut at_end = false;
        loop {
            let (res, nin, nout, nend) = self
                .reader
                .read_record(input, &mut self.buf[out..], &mut self.ends[nends..]);
            input = &input[nin..];
            out += nout;
            nends += nend;
            match res {
                csv_core::ReadRecordResult::InputEmpty if !at_end => at_end = true,
                csv_core::ReadRecordResult::InputEmpty => {
                    return Err(err(None, "the tokenizer wants input past the end of the line"));
                }
                csv_core::ReadRecordResult::OutputFull => {
                    let n = self.buf.len().max(64) * 2;
                    self.buf.resize(n, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let n = self.ends.len().max(8) * 2;
                    self.ends.resize(n, 0);
                }
                csv_core::ReadRecordResult::Record => break,
                // An empty line: one empty field.
                csv_core::ReadRecordResult::End => {
                    self.ends[0] = 0;
                    nends = 1;
                    break;
                }
            }
            if at_end {
                input = &[];
            }
        }
        if !input.is_empty() {
            // Only a bare carriage return ends a record inside a line.
            return Err(err(None, LINE_BREAK));
        }
        // Removing quotes (ASCII) from UTF-8 text leaves UTF-8 text.
        let text = std::str::from_utf8(&self.buf[..out]).map_err(|_| err(None, "not UTF-8"))?;
        Ok(Fields {
            text,
            ends: &self.ends[..nends],
            sep: 0,
        })
    }
}

impl CsvLayout {
    /// Maps the header to the schema. The id column is the schema's id name
    /// or, failing that, `id` (FATE's name).
    pub fn from_header(header: &str, schema: &Schema) -> Result<Self, CsvError> {
        let names = header_names(header)?;
        let find = |n: &str| names.iter().position(|c| c == n);
        let need = |n: &str| find(n).ok_or_else(|| err(Some(n), "column missing from the header"));
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(err(Some(n), "column appears twice in the header"));
            }
        }
        let id = find(&schema.id).or_else(|| find("id")).ok_or_else(|| {
            err(
                Some(&schema.id),
                "id column missing from the header (looked for it and for `id`)",
            )
        })?;
        Ok(CsvLayout {
            columns: names.len(),
            id,
            label: schema.label.as_deref().map(need).transpose()?,
            mask: schema.loss_mask.as_deref().and_then(find),
            slots: schema.slots.iter().map(|s| need(s)).collect::<Result<_, _>>()?,
            dense: schema.dense.iter().map(|s| need(s)).collect::<Result<_, _>>()?,
            vocab: schema.vocab.clone(),
            names,
        })
    }

    /// Parses one data line and appends it to `batch`; on error the batch
    /// is left as it was.
    pub fn parse_into(
        &self,
        line: &str,
        splitter: &mut Splitter,
        batch: &mut Batch,
        source: RowSource,
    ) -> Result<(), CsvError> {
        let rows = batch.rows;
        let r = self.parse_row(line, splitter, batch, source);
        if r.is_err() {
            batch.truncate_rows(rows);
        }
        r
    }

    fn parse_row(
        &self,
        line: &str,
        splitter: &mut Splitter,
        batch: &mut Batch,
        source: RowSource,
    ) -> Result<(), CsvError> {
        let fields = splitter.split(line)?;
        if fields.len() != self.columns {
            return Err(err(
                None,
                format!("{} columns, the header has {}", fields.len(), self.columns),
            ));
        }
        let field = |i: usize| fields.get(i).trim();
        let number = |i: usize| -> Result<f32, CsvError> {
            let s = field(i);
            let v: f32 = s
                .parse()
                .map_err(|_| err(Some(&self.names[i]), format!("not a number ({} characters)", s.len())))?;
            if !v.is_finite() {
                return Err(err(Some(&self.names[i]), "not a finite number"));
            }
            Ok(v)
        };
        let id = field(self.id);
        if id.is_empty() {
            return Err(err(Some(&self.names[self.id]), "empty example id"));
        }
        let label = self.label.map(number).transpose()?;
        let mask = self.mask.map(number).transpose()?.unwrap_or(0.0);
        for (s, &c) in self.slots.iter().enumerate() {
            let vocab = self.vocab.get(s).copied().flatten();
            let cell = field(c);
            if !cell.is_empty() {
                for part in cell.split('|') {
                    let v: i64 = part.trim().parse().map_err(|_| {
                        err(
                            Some(&self.names[c]),
                            format!("not an integer id ({} characters; ids are `|`-separated)", part.len()),
                        )
                    })?;
                    if let Some(vocab) = vocab
                        && (v < 0 || v as u64 >= vocab)
                    {
                        return Err(err(
                            Some(&self.names[c]),
                            format!("an id is outside the table's range [0, {vocab})"),
                        ));
                    }
                    batch.ids.push(v);
                }
            }
            batch.close_slot();
        }
        for &c in &self.dense {
            let v = number(c)?;
            batch.dense.push(v);
        }
        if let Some(y) = label {
            batch.labels.push(y);
            batch.weights.push(1.0 - mask);
        }
        batch.push_example_id(id.as_bytes());
        batch.finish_row(source);
        Ok(())
    }
}

/// The column names of a header line, trimmed.
pub fn header_names(header: &str) -> Result<Vec<String>, CsvError> {
    let mut splitter = Splitter::default();
    let fields = splitter.split(header)?;
    Ok(fields.iter().map(|f| f.trim().to_string()).collect())
}

/// Reads the header line of `r` (skipping blank lines); `None` for an
/// empty file.
pub fn read_header<R: BufRead>(r: &mut R, line: &mut String, line_no: &mut u64) -> std::io::Result<Option<()>> {
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Ok(None);
        }
        *line_no += 1;
        if !line.trim().is_empty() {
            return Ok(Some(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader_schema() -> Schema {
        Schema::new(vec![], vec!["x0".into(), "x1".into()], true)
    }

    fn parse(layout: &CsvLayout, line: &str, b: &mut Batch) -> Result<(), CsvError> {
        layout.parse_into(line, &mut Splitter::default(), b, RowSource { block: 0, record: 0 })
    }

    #[test]
    fn reads_fate_leader_rows() {
        let l = CsvLayout::from_header("id,y,x0,x1,x2\n", &leader_schema()).unwrap();
        let mut b = Batch::new(0, 2);
        parse(&l, "133,1,0.25,-1.5,9\r\n", &mut b).unwrap();
        assert_eq!(b.example_id(0), b"133");
        assert_eq!(b.labels, vec![1.0]);
        assert_eq!(b.dense, vec![0.25, -1.5]);
        assert!(b.is_consistent());
    }

    #[test]
    fn wrong_column_count_is_an_error() {
        let l = CsvLayout::from_header("id,y,x0,x1", &leader_schema()).unwrap();
        let mut b = Batch::new(0, 2);
        let e = parse(&l, "1,0,0.5", &mut b).unwrap_err();
        assert!(e.message.contains("3 columns") && e.message.contains("4"), "{e:?}");
        assert_eq!(b.rows, 0);
    }

    #[test]
    fn non_numeric_value_names_the_column() {
        let l = CsvLayout::from_header("id,y,x0,x1", &leader_schema()).unwrap();
        let mut b = Batch::new(0, 2);
        let e = parse(&l, "1,0,0.5,abc", &mut b).unwrap_err();
        assert_eq!(e.column.as_deref(), Some("x1"));
        // Names the column, never echoes the value (feature values are secret).
        assert!(
            e.message.contains("not a number") && !e.message.contains("abc"),
            "{}",
            e.message
        );
        assert_eq!(b.rows, 0);
        assert!(b.is_consistent());
        let e = parse(&l, "1,0,NaN,1", &mut b).unwrap_err();
        assert_eq!(e.column.as_deref(), Some("x0"));
    }

    #[test]
    fn missing_column_is_named() {
        let e = CsvLayout::from_header("id,y,x0", &leader_schema()).unwrap_err();
        assert_eq!(e.column.as_deref(), Some("x1"));
        let e = CsvLayout::from_header("key,y,x0,x1", &leader_schema()).unwrap_err();
        assert!(e.message.contains("id column"), "{e:?}");
    }

    #[test]
    fn quoted_fields_and_sparse_cells() {
        let s = Schema::new(vec!["tags".into()], vec![], false);
        let l = CsvLayout::from_header("id,tags,note", &s).unwrap();
        let mut b = Batch::new(1, 0);
        parse(&l, "\"a,b\",3|4|5,\"say \"\"hi\"\"\"", &mut b).unwrap();
        parse(&l, "c,,x", &mut b).unwrap();
        assert_eq!(b.example_id(0), b"a,b");
        assert_eq!(b.ids, vec![3, 4, 5]);
        assert_eq!(b.offsets, vec![0, 3, 3]);
        let e = parse(&l, "d,3|x,y", &mut b).unwrap_err();
        assert_eq!(e.column.as_deref(), Some("tags"));
        assert!(parse(&l, "\"open,1,2", &mut b).is_err());
    }

    #[test]
    fn duplicate_header_column_is_an_error() {
        let e = CsvLayout::from_header("id,y,x0,x0,x1", &leader_schema()).unwrap_err();
        assert_eq!(e.column.as_deref(), Some("x0"));
    }

    #[test]
    fn a_bare_carriage_return_inside_a_line_is_an_error() {
        let mut sp = Splitter::default();
        let e = sp.split("a,b\rc,d\n").unwrap_err();
        assert_eq!(e.message, LINE_BREAK);
        let e = sp.split("\ra,b").unwrap_err();
        assert_eq!(e.message, LINE_BREAK);
        // Inside quotes it is data; at the end it is the line break.
        assert_eq!(sp.split("\"a\rb\",c\r\n").unwrap().get(0), "a\rb");
    }

    #[test]
    fn an_unterminated_quote_is_refused() {
        let e = Splitter::default().split("1,\"abc").unwrap_err();
        assert_eq!(e.message, "unterminated quoted field");
        let e = Splitter::default().split("1,\"ab\"\"").unwrap_err();
        assert_eq!(e.message, "unterminated quoted field");
    }

    #[test]
    fn a_character_after_a_closing_quote_is_refused() {
        let e = Splitter::default().split("\"ab\"c,1").unwrap_err();
        assert_eq!(e.message, "a character follows a closing quote");
        // Through the layout too, with the right number of columns.
        let l = CsvLayout::from_header("id,y,x0,x1", &leader_schema()).unwrap();
        let mut b = Batch::new(0, 2);
        let e = parse(&l, "\"12\"3,0,1,2", &mut b).unwrap_err();
        assert_eq!(e.message, "a character follows a closing quote");
        assert_eq!(b.rows, 0);
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_is_data() {
        let mut sp = Splitter::default();
        let f = sp.split("ab\"c,d").unwrap();
        assert_eq!((f.get(0), f.get(1)), ("ab\"c", "d"));
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_field() {
        let l = CsvLayout::from_header("\u{feff}id,y,x0,x1", &leader_schema()).unwrap();
        let mut b = Batch::new(0, 2);
        parse(&l, "\u{feff}\"7\",1,0.5,2", &mut b).unwrap();
        parse(&l, "\u{feff}8,1,0.5,2", &mut b).unwrap();
        assert_eq!((b.example_id(0), b.example_id(1)), (&b"7"[..], &b"8"[..]));
    }

    #[test]
    fn an_empty_line_is_one_empty_field() {
        let mut sp = Splitter::default();
        let f = sp.split("\n").unwrap();
        assert_eq!((f.len(), f.get(0)), (1, ""));
    }

    #[test]
    fn long_lines_with_many_fields_grow_the_buffers() {
        let cells: Vec<String> = (0..1000).map(|i| format!("\"v{i},{}\"", "x".repeat(i % 7))).collect();
        let mut sp = Splitter::default();
        let line = cells.join(",");
        let f = sp.split(&line).unwrap();
        assert_eq!(f.len(), 1000);
        assert_eq!(f.get(999), format!("v999,{}", "x".repeat(999 % 7)));
        // The buffers are reused for the next, short line.
        assert_eq!(sp.split("a,b").unwrap().len(), 2);
    }

    proptest::proptest! {
        /// Any fields (commas, quotes, non-ASCII; no line breaks), written
        /// with RFC 4180 quoting, split back into themselves.
        #[test]
        fn quoted_fields_round_trip(fields in proptest::collection::vec("[a-z,\" é|0-9]{0,12}", 1..20)) {
            let line: Vec<String> = fields
                .iter()
                .map(|f| {
                    if f.contains([',', '"']) || f.is_empty() {
                        format!("\"{}\"", f.replace('"', "\"\""))
                    } else {
                        f.clone()
                    }
                })
                .collect();
            let mut sp = Splitter::default();
            let text = line.join(",") + "\n";
            let got = sp.split(&text).unwrap();
            let got: Vec<&str> = got.iter().collect();
            proptest::prop_assert_eq!(got, fields.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
