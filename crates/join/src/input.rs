//! Reads a party's raw data blocks row by row: the example id, and the row
//! as it will be written (a serialized tf.Example, or a CSV line), in the
//! party's own order (blocks in `DataDir` order, rows in file order).

use std::fs::File;
use std::io::{BufRead, BufReader};

use vfl_data::blocks::{BlockFile, DataDir, FileKind};
use vfl_data::csv::{CsvLayout, Splitter, header_names, read_header};
use vfl_data::example::{ExampleDecoder, Value, encode_example};
use vfl_data::tfrecord::{Compression, RecordReader};
use vfl_data::{Batch, DataError, RowSource, Schema};

use crate::JoinError;

/// The format of the joined blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// TFRecord of tf.Example (CSV rows are converted: the id column becomes
    /// the bytes feature `example_id`, integer cells (`|`-separated lists
    /// too) int64 lists, other numbers float lists, the rest bytes).
    TfRecord,
    /// CSV with the input's header (CSV input only; every input file must
    /// have the same header).
    Csv,
}

impl OutputFormat {
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::TfRecord => "tfrecord",
            OutputFormat::Csv => "csv",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tfrecord" => Some(OutputFormat::TfRecord),
            "csv" => Some(OutputFormat::Csv),
            _ => None,
        }
    }

    /// The file extension of a joined block.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::TfRecord => "tfrecord",
            OutputFormat::Csv => "csv",
        }
    }
}

/// One input row.
pub struct Row<'a> {
    pub id: &'a [u8],
    pub payload: &'a [u8],
    /// Index of its block in the party's `DataDir`.
    pub block: u32,
    /// Record index (TFRecord) or line number (CSV) in that block.
    pub pos: u64,
}

/// Where a row was, for messages: "record 4" or "line 7".
pub fn describe(block: &BlockFile, pos: u64) -> String {
    match block.kind {
        FileKind::TfRecord => format!("record {pos}"),
        FileKind::Csv => format!("line {pos}"),
    }
}

/// What [`scan`] saw.
#[derive(Debug, Default)]
pub struct Scanned {
    pub rows: u64,
    /// The CSV header (CSV output only).
    pub header: Option<String>,
    /// Per block: the CSV columns (CSV blocks), whose lines a TFRecord
    /// output converts with [`Converter`].
    pub csv_columns: Vec<Option<Vec<String>>>,
    /// The longest row as it will be written (with `measure`), for padding
    /// sealed blocks.
    pub max_row: u64,
}

/// Turns the spilled rows of CSV blocks into tf.Examples when they are
/// written (only joined rows are converted).
#[derive(Default)]
pub struct Converter {
    cells: Cells,
}

impl Converter {
    /// `line` of a block with `columns` as a tf.Example in `out`.
    pub fn convert(
        &mut self,
        columns: &[String],
        line: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), vfl_data::csv::CsvError> {
        self.cells.example_of(columns, layout_id(columns), line, out)
    }
}

/// Total input bytes, and whether any file is compressed (for sizing).
pub fn input_bytes(dir: &DataDir) -> Result<u64, JoinError> {
    let mut total = 0u64;
    for b in dir.blocks() {
        let meta = std::fs::metadata(&b.path).map_err(|e| JoinError::io("reading", &b.path, e))?;
        let gz = b.path.extension().is_some_and(|e| e == "gz");
        total = total.saturating_add(meta.len().saturating_mul(if gz { 5 } else { 1 }));
    }
    Ok(total)
}

/// Calls `each` for every row of `dir`, in order. `done(block)` after each
/// block, for progress. Every row is decoded with `schema` (the training
/// schema, or just the id), so that a row training would refuse fails the
/// join whether or not it is joined.
pub fn scan(
    dir: &DataDir,
    format: OutputFormat,
    schema: &Schema,
    measure: bool,
    mut each: impl FnMut(Row<'_>) -> Result<(), JoinError>,
    mut done: impl FnMut(usize),
) -> Result<Scanned, JoinError> {
    let mut s = Scanner {
        format,
        schema,
        measure,
        conv: Converter::default(),
        example: Vec::new(),
        decoder: ExampleDecoder::new(schema.clone()),
        batch: Batch::new(schema.slots.len(), schema.dense.len()),
        out: Scanned::default(),
    };
    for (bi, block) in dir.blocks().iter().enumerate() {
        let file = block.path.display().to_string();
        if block.sealed {
            return Err(JoinError::Config(format!(
                "{file}: a sealed block (an earlier join's output?); a join reads raw data"
            )));
        }
        match block.kind {
            FileKind::TfRecord => s.tfrecord_block(block, bi, &mut each)?,
            FileKind::Csv => s.csv_block(block, bi, &mut each)?,
        }
        done(bi);
    }
    s.out.csv_columns.resize(dir.blocks().len(), None);
    Ok(s.out)
}

/// A read error of `file`.
fn io_at(file: &str) -> impl Fn(std::io::Error) -> DataError + Copy + '_ {
    move |source| DataError::Io {
        file: file.to_string(),
        source,
    }
}

/// The state of one [`scan`]: decoders and buffers reused across rows.
struct Scanner<'a> {
    format: OutputFormat,
    schema: &'a Schema,
    measure: bool,
    conv: Converter,
    example: Vec<u8>,
    decoder: ExampleDecoder,
    batch: Batch,
    out: Scanned,
}

impl Scanner<'_> {
    /// Every record of a TFRecord block, decoded (so that a record training
    /// would refuse fails the join) and passed on as it is.
    fn tfrecord_block(
        &mut self,
        block: &vfl_data::BlockFile,
        bi: usize,
        each: &mut impl FnMut(Row<'_>) -> Result<(), JoinError>,
    ) -> Result<(), JoinError> {
        let file = block.path.display().to_string();
        if self.format == OutputFormat::Csv {
            return Err(JoinError::Config(format!(
                "--output-format csv needs CSV input; {file} is TFRecord"
            )));
        }
        let b = bi as u32;
        let mut r = RecordReader::open(&block.path, Compression::Auto).map_err(io_at(&file))?;
        loop {
            let record = r.position();
            let data = match r.next_record() {
                Ok(None) => return Ok(()),
                Ok(Some(d)) => d,
                Err(e) => {
                    return Err(DataError::Record {
                        file,
                        record,
                        message: e.to_string(),
                    }
                    .into());
                }
            };
            self.batch.clear();
            self.decoder
                .decode_into(data, &mut self.batch, RowSource { block: b, record })
                .map_err(|e| DataError::Feature {
                    file: file.clone(),
                    record,
                    feature: e.feature,
                    message: e.message,
                })?;
            self.out.max_row = self.out.max_row.max(data.len() as u64);
            each(Row {
                id: self.batch.example_id(0),
                payload: data,
                block: b,
                pos: record,
            })?;
            self.out.rows += 1;
        }
    }

    /// Every line of a CSV block, parsed with the schema and passed on as it
    /// is (converted only if joined; measured here if asked).
    fn csv_block(
        &mut self,
        block: &vfl_data::BlockFile,
        bi: usize,
        each: &mut impl FnMut(Row<'_>) -> Result<(), JoinError>,
    ) -> Result<(), JoinError> {
        let file = block.path.display().to_string();
        let io = io_at(&file);
        let b = bi as u32;
        let mut reader = BufReader::with_capacity(1 << 20, File::open(&block.path).map_err(io)?);
        let (mut line, mut line_no) = (String::new(), 0u64);
        if read_header(&mut reader, &mut line, &mut line_no).map_err(io)?.is_none() {
            return Err(DataError::EmptyCsv { file }.into());
        }
        let header = line.trim_end_matches(['\n', '\r']).to_string();
        let line_err = |line: u64, e: vfl_data::csv::CsvError| e.at_line(&file, line);
        let layout = CsvLayout::from_header(&header, self.schema).map_err(|e| line_err(line_no, e))?;
        let names = header_names(&header).map_err(|e| line_err(line_no, e))?;
        self.note_header(&file, bi, &header, &names)?;
        let mut splitter = Splitter::default();
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(io)? == 0 {
                return Ok(());
            }
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            self.batch.clear();
            let source = RowSource {
                block: b,
                record: line_no,
            };
            layout
                .parse_into(&line, &mut splitter, &mut self.batch, source)
                .map_err(|e| line_err(line_no, e))?;
            // The line as it is: converted only if it is joined.
            let text = line.trim_end_matches(['\n', '\r']);
            let written = match self.format {
                OutputFormat::TfRecord if self.measure => {
                    self.conv
                        .convert(&names, text, &mut self.example)
                        .map_err(|e| line_err(line_no, e))?;
                    self.example.len()
                }
                _ => text.len(),
            };
            self.out.max_row = self.out.max_row.max(written as u64);
            each(Row {
                id: self.batch.example_id(0),
                payload: text.as_bytes(),
                block: b,
                pos: line_no,
            })?;
            self.out.rows += 1;
        }
    }

    /// Records block `bi`'s CSV columns; a CSV output needs one header for
    /// all blocks.
    fn note_header(&mut self, file: &str, bi: usize, header: &str, names: &[String]) -> Result<(), JoinError> {
        self.out.csv_columns.resize(bi, None);
        self.out.csv_columns.push(Some(names.to_vec()));
        if self.format == OutputFormat::Csv {
            match &self.out.header {
                None => self.out.header = Some(header.to_string()),
                Some(h) if h == header => {}
                Some(_) => {
                    return Err(JoinError::Config(format!(
                        "{file}: its CSV header differs from the first file's; --output-format csv needs one header"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// One CSV data line (under `header`) as the tf.Example a join writes for
/// it (see [`OutputFormat::TfRecord`]).
pub fn csv_to_example(header: &str, line: &str, out: &mut Vec<u8>) -> Result<(), vfl_data::csv::CsvError> {
    let names = header_names(header)?;
    let id_only = Schema::new(Vec::new(), Vec::new(), false);
    let layout = CsvLayout::from_header(header, &id_only)?;
    let mut batch = Batch::new(0, 0);
    layout.parse_into(
        line,
        &mut Splitter::default(),
        &mut batch,
        RowSource { block: 0, record: 0 },
    )?;
    Cells::default().example_of(&names, layout_id(&names), line.trim_end_matches(['\n', '\r']), out)
}

/// The id column: `example_id`, else `id` (as the CSV reader looks).
fn layout_id(names: &[String]) -> usize {
    names
        .iter()
        .position(|n| n == "example_id")
        .or_else(|| names.iter().position(|n| n == "id"))
        .unwrap_or(0)
}

/// Scratch space for converting a CSV row into a tf.Example.
#[derive(Default)]
struct Cells {
    splitter: Splitter,
    ints: Vec<Vec<i64>>,
    floats: Vec<f32>,
}

enum Cell {
    Ints(usize),
    Float(usize),
    Bytes(usize),
}

impl Cells {
    /// `text` (a data line) as a tf.Example with the id under `example_id`.
    fn example_of(
        &mut self,
        names: &[String],
        id_col: usize,
        text: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), vfl_data::csv::CsvError> {
        let fields = self.splitter.split(text)?;
        if fields.len() != names.len() {
            return Err(vfl_data::csv::CsvError {
                column: None,
                message: format!("{} columns, the header has {}", fields.len(), names.len()),
            });
        }
        self.ints.resize_with(names.len(), Vec::new);
        self.floats.clear();
        self.floats.resize(names.len(), 0.0);
        let mut kinds = Vec::with_capacity(names.len());
        for (i, cell) in fields.iter().enumerate() {
            let cell = cell.trim();
            let ints = &mut self.ints[i];
            ints.clear();
            let kind = if i == id_col {
                Cell::Bytes(i)
            } else if cell.is_empty()
                || cell
                    .split('|')
                    .all(|p| p.trim().parse::<i64>().map(|v| ints.push(v)).is_ok())
            {
                Cell::Ints(i)
            } else if let Ok(v) = cell.parse::<f32>() {
                self.floats[i] = v;
                Cell::Float(i)
            } else {
                Cell::Bytes(i)
            };
            kinds.push(kind);
        }
        let features: Vec<(&str, Value<'_>)> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let name = if i == id_col { "example_id" } else { names[i].as_str() };
                let v = match *k {
                    Cell::Ints(j) => Value::Int64(&self.ints[j]),
                    Cell::Float(j) => Value::Float(std::slice::from_ref(&self.floats[j])),
                    Cell::Bytes(j) => Value::Bytes(fields.get(j).trim().as_bytes()),
                };
                (name, v)
            })
            .collect();
        encode_example(&features, out);
        Ok(())
    }
}
