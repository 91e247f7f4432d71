//! CSV input: a header row, an id column, an optional label column, numeric
//! dense columns and, optionally, sparse slot columns holding `|`-separated
//! integer ids (an empty cell is an empty slot). FATE's vertically split
//! files (`id,y,x0,...` and `id,x0,...`) read as they are.
//!
//! Fields may be quoted (`"..."`, with `""` for a quote); a quoted field
//! cannot span lines. Blank lines are skipped. Columns the schema does not
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

/// Splits one line into fields (into `out`, reusing its strings' storage
/// is not attempted: fields are slices of `scratch`).
pub fn split_line<'a>(
    line: &'a str,
    scratch: &'a mut String,
    out: &mut Vec<(usize, usize)>,
) -> Result<&'a str, CsvError> {
    out.clear();
    let line = line.trim_end_matches(['\n', '\r']);
    if !line.contains('"') {
        let mut start = 0;
        for (i, c) in line.char_indices() {
            if c == ',' {
                out.push((start, i));
                start = i + 1;
            }
        }
        out.push((start, line.len()));
        return Ok(line);
    }
    // Quoted fields: unescape into scratch.
    scratch.clear();
    let mut chars = line.chars().peekable();
    let mut start = 0;
    loop {
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        scratch.push('"');
                    }
                    Some('"') => break,
                    Some(c) => scratch.push(c),
                    None => return Err(err(None, "unterminated quoted field")),
                }
            }
            match chars.next() {
                None => {
                    out.push((start, scratch.len()));
                    break;
                }
                Some(',') => {
                    out.push((start, scratch.len()));
                    start = scratch.len();
                }
                Some(_) => return Err(err(None, "a character follows a closing quote")),
            }
        } else {
            let mut ended = true;
            for c in chars.by_ref() {
                if c == ',' {
                    ended = false;
                    break;
                }
                scratch.push(c);
            }
            out.push((start, scratch.len()));
            start = scratch.len();
            if ended {
                break;
            }
        }
    }
    Ok(scratch)
}

impl CsvLayout {
    /// Maps the header to the schema. The id column is the schema's id name
    /// or, failing that, `id` (FATE's name).
    pub fn from_header(header: &str, schema: &Schema) -> Result<Self, CsvError> {
        let mut scratch = String::new();
        let mut spans = Vec::new();
        let text = split_line(header, &mut scratch, &mut spans)?;
        let names: Vec<String> = spans.iter().map(|&(a, b)| text[a..b].trim().to_string()).collect();
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
        scratch: &mut String,
        spans: &mut Vec<(usize, usize)>,
        batch: &mut Batch,
        source: RowSource,
    ) -> Result<(), CsvError> {
        let rows = batch.rows;
        let r = self.parse_row(line, scratch, spans, batch, source);
        if r.is_err() {
            batch.truncate_rows(rows);
        }
        r
    }

    fn parse_row(
        &self,
        line: &str,
        scratch: &mut String,
        spans: &mut Vec<(usize, usize)>,
        batch: &mut Batch,
        source: RowSource,
    ) -> Result<(), CsvError> {
        let text = split_line(line, scratch, spans)?;
        if spans.len() != self.columns {
            return Err(err(
                None,
                format!("{} columns, the header has {}", spans.len(), self.columns),
            ));
        }
        let field = |i: usize| text[spans[i].0..spans[i].1].trim();
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
        layout.parse_into(
            line,
            &mut String::new(),
            &mut Vec::new(),
            b,
            RowSource { block: 0, record: 0 },
        )
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
}
