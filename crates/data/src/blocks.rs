//! Data blocks: the files of a data directory, and a reader that streams
//! batches across blocks in an order the caller gives, from any (block,
//! record) position.
//!
//! A block is one file; its id is its path relative to the data directory
//! without the extension (`00.tfrecord` -> `00`, `day1/x.csv` -> `day1/x`).
//! Files are selected by a wildcard matched against that relative path
//! (fnmatch rules: `*`, `?`, `[abc]`, `[!abc]`; `*` also matches `/`), by
//! default all `*.tfrecord`, `*.tfrecord.gz` and `*.csv` files. Zero
//! matching files is an error: the original's default wildcard matched
//! none of its own example files and trained on nothing, silently.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::DataError;
use crate::batch::{Batch, RowSource};
use crate::csv::{CsvLayout, Splitter, read_header};
use crate::example::ExampleDecoder;
use crate::schema::Schema;
use crate::source::BatchSource;
use crate::tfrecord::{Compression, FrameError, RecordReader};

/// Extensions recognised by the default selection, longest first.
const EXTENSIONS: &[&str] = &[".tfrecord.gz", ".tfrecord", ".csv", ".tfrecord.sealed", ".csv.sealed"];

/// The plaintext of a sealed block: the block's length (u64 LE), the block,
/// zeros up to `8 + size` (a writer pads every block of n rows to the same
/// size, so that sizes say nothing about which rows a block holds).
pub fn pad_sealed(block: &[u8], size: usize) -> Vec<u8> {
    let total = 8 + size.max(block.len());
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(block.len() as u64).to_le_bytes());
    out.extend_from_slice(block);
    out.resize(total, 0);
    out
}

/// The block inside a sealed block's plaintext (see [`pad_sealed`]).
pub fn unpad_sealed(plain: &[u8]) -> Result<&[u8], &'static str> {
    let (len, rest) = plain
        .split_first_chunk::<8>()
        .ok_or("a sealed block shorter than its length field")?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| "a sealed block length beyond memory")?;
    rest.get(..len).ok_or("a sealed block length beyond its padding")
}

/// Opens sealed blocks (`*.tfrecord.sealed`, `*.csv.sealed`: joined blocks
/// written by `vfl join` under a model key): given the block and the file's
/// bytes, the plaintext block or why not.
pub trait Unseal: Send + Sync {
    fn unseal(&self, block: &BlockFile, sealed: &[u8]) -> Result<Vec<u8>, String>;
}

/// File format of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    TfRecord,
    Csv,
}

/// One block file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockFile {
    pub id: String,
    pub path: PathBuf,
    pub kind: FileKind,
    /// Sealed (`.sealed`): read through an [`Unseal`].
    pub sealed: bool,
}

/// A compiled `--data-path-wildcard` (fnmatch rules through `globset`:
/// `*`, `?`, `[abc]`, `[!abc]`, `{a,b}`; `*` also matches `/`).
pub fn wildcard(pattern: &str) -> Result<globset::GlobMatcher, DataError> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| DataError::BadWildcard {
            pattern: pattern.to_string(),
            reason: e.kind().to_string(),
        })
}

/// The blocks of a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
    blocks: Vec<BlockFile>,
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        file: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            walk(&path, root, out)?;
        } else {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

impl DataDir {
    /// Lists the blocks under `root` selected by `wildcard` (or the
    /// default extensions). Block ids must be unique.
    pub fn scan(root: &Path, wildcard: Option<&str>) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::NotADirectory {
                file: root.display().to_string(),
            });
        }
        let matcher = wildcard.map(self::wildcard).transpose()?;
        let mut files = Vec::new();
        walk(root, root, &mut files)?;
        let mut blocks: Vec<BlockFile> = Vec::new();
        let mut ids: HashMap<String, PathBuf> = HashMap::new();
        for rel in files {
            let rel_s = rel.to_string_lossy().replace('\\', "/");
            let ext = EXTENSIONS.iter().find(|e| rel_s.ends_with(*e));
            let selected = match &matcher {
                Some(m) => m.is_match(&rel_s),
                None => ext.is_some(),
            };
            if !selected {
                continue;
            }
            let id = ext.map_or(rel_s.clone(), |e| rel_s[..rel_s.len() - e.len()].to_string());
            let sealed = rel_s.ends_with(".sealed");
            let kind = if rel_s.ends_with(".csv") || rel_s.ends_with(".csv.sealed") {
                FileKind::Csv
            } else {
                FileKind::TfRecord
            };
            let path = root.join(&rel);
            if let Some(prev) = ids.insert(id.clone(), path.clone()) {
                return Err(DataError::DuplicateBlockId {
                    root: root.display().to_string(),
                    id,
                    first: prev.display().to_string(),
                    second: path.display().to_string(),
                });
            }
            blocks.push(BlockFile { id, path, kind, sealed });
        }
        if blocks.is_empty() {
            return Err(DataError::NoDataFiles {
                root: root.display().to_string(),
                wildcard: wildcard.map_or(
                    "the default `*.tfrecord`, `*.tfrecord.gz`, `*.csv` (or sealed `*.sealed` joined blocks)"
                        .to_string(),
                    |w| format!("`{w}`"),
                ),
            });
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            blocks,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Blocks sorted by id.
    pub fn blocks(&self) -> &[BlockFile] {
        &self.blocks
    }

    pub fn ids(&self) -> Vec<String> {
        self.blocks.iter().map(|b| b.id.clone()).collect()
    }

    /// The blocks with these ids, in this order; a missing id is an error.
    /// Linear in the number of blocks plus the plan's length (the plan comes
    /// from the peer and may be long).
    pub fn select(&self, order: &[String]) -> Result<Vec<BlockFile>, DataError> {
        let by_id: std::collections::HashMap<&str, &BlockFile> =
            self.blocks.iter().map(|b| (b.id.as_str(), b)).collect();
        order
            .iter()
            .map(|id| {
                by_id.get(id.as_str()).map(|b| (*b).clone()).ok_or_else(|| {
                    // The id comes from the peer: at most 64 characters, no
                    // control characters, in the error.
                    let shown: String = id
                        .chars()
                        .take(64)
                        .map(|c| if c.is_control() { '?' } else { c })
                        .collect();
                    DataError::NoSuchBlock {
                        root: self.root.display().to_string(),
                        id: shown,
                    }
                })
            })
            .collect()
    }
}

/// Reader settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub compression: Compression,
    /// Count and skip records that fail to decode (bad data checksum,
    /// wrong or missing feature, bad CSV row, duplicate id) instead of
    /// stopping. Records whose framing is lost (bad length checksum,
    /// truncation) still stop the read.
    pub skip_bad_records: bool,
}

/// A position in the ordered block list: the next record to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub block: usize,
    pub record: u64,
}

enum Open {
    Tf(RecordReader<Box<dyn Read + Send>>),
    Csv {
        reader: Box<dyn BufRead + Send>,
        layout: CsvLayout,
        line_no: u64,
    },
}

/// Streams batches over blocks in a given order.
pub struct BlockReader {
    blocks: Vec<BlockFile>,
    opts: ReadOptions,
    decoder: ExampleDecoder,
    open: Option<Open>,
    unseal: Option<std::sync::Arc<dyn Unseal>>,
    pos: Position,
    skipped: u64,
    skip_log: Vec<String>,
    /// Example-id hash -> record, for the current block.
    seen: HashMap<u64, u64>,
    line: String,
    splitter: Splitter,
}

impl BlockReader {
    pub fn new(blocks: Vec<BlockFile>, schema: Schema, opts: ReadOptions) -> Self {
        BlockReader {
            blocks,
            opts,
            decoder: ExampleDecoder::new(schema),
            open: None,
            unseal: None,
            pos: Position::default(),
            skipped: 0,
            skip_log: Vec::new(),
            seen: HashMap::new(),
            line: String::new(),
            splitter: Splitter::default(),
        }
    }

    pub fn schema(&self) -> &Schema {
        self.decoder.schema()
    }

    /// Next record to be read.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Records skipped so far (with `skip_bad_records`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Why the first (up to 10) records were skipped.
    pub fn skip_reasons(&self) -> &[String] {
        &self.skip_log
    }

    /// How sealed blocks are opened (without it they are an error).
    pub fn set_unseal(&mut self, unseal: std::sync::Arc<dyn Unseal>) {
        self.unseal = Some(unseal);
    }

    pub fn blocks(&self) -> &[BlockFile] {
        &self.blocks
    }

    /// Moves to `pos`. The records of the block before `pos.record` are
    /// read and checked again (ids included), then dropped.
    pub fn seek(&mut self, pos: Position) -> Result<(), DataError> {
        self.open = None;
        self.seen.clear();
        self.pos = Position {
            block: pos.block,
            record: 0,
        };
        let mut scratch = Batch::new(self.decoder.schema().slots.len(), self.decoder.schema().dense.len());
        while self.pos.block == pos.block && self.pos.record < pos.record {
            scratch.clear();
            let want = (pos.record - self.pos.record).min(1024) as usize;
            if self.fill(&mut scratch, want)? == 0 {
                return Err(DataError::ResumePastEnd {
                    block: pos.block,
                    record: pos.record,
                });
            }
        }
        Ok(())
    }

    fn file(&self) -> String {
        self.blocks
            .get(self.pos.block)
            .map_or_else(String::new, |b| b.path.display().to_string())
    }

    fn open_block(&mut self) -> Result<(), DataError> {
        let b = &self.blocks[self.pos.block];
        let file = b.path.display().to_string();
        let io = |source| DataError::Io {
            file: file.clone(),
            source,
        };
        self.seen.clear();
        let plain = match (b.sealed, &self.unseal) {
            (false, _) => None,
            (true, None) => {
                return Err(DataError::SealedWithoutKey { file });
            }
            (true, Some(u)) => {
                let sealed = std::fs::read(&b.path).map_err(io)?;
                let plain = u.unseal(b, &sealed).map_err(|reason| DataError::Unseal {
                    file: file.clone(),
                    reason,
                })?;
                let block = unpad_sealed(&plain).map_err(|m| DataError::Unseal {
                    file: file.clone(),
                    reason: m.into(),
                })?;
                Some(block.to_vec())
            }
        };
        self.open = Some(match b.kind {
            FileKind::TfRecord => Open::Tf(match plain {
                None => RecordReader::open(&b.path, self.opts.compression).map_err(io)?,
                Some(p) => RecordReader::new(Box::new(std::io::Cursor::new(p)) as Box<dyn Read + Send>),
            }),
            FileKind::Csv => {
                let mut reader: Box<dyn BufRead + Send> = match plain {
                    None => Box::new(BufReader::with_capacity(1 << 20, File::open(&b.path).map_err(io)?)),
                    Some(p) => Box::new(std::io::Cursor::new(p)),
                };
                let mut line_no = 0;
                if read_header(&mut reader, &mut self.line, &mut line_no)
                    .map_err(io)?
                    .is_none()
                {
                    return Err(DataError::EmptyCsv { file });
                }
                let layout =
                    CsvLayout::from_header(&self.line, self.decoder.schema()).map_err(|e| e.at_line(&file, line_no))?;
                Open::Csv {
                    reader,
                    layout,
                    line_no,
                }
            }
        });
        Ok(())
    }

    /// Reads one record into `batch`. `Ok(false)` at the end of the block.
    fn read_one(&mut self, batch: &mut Batch) -> Result<bool, DataError> {
        let file = self.file();
        let record = self.pos.record;
        let before = batch.rows;
        let outcome = self
            .next_row(batch, &file, record)
            .and_then(|more| self.check_unique(more, batch, before, &file, record));
        match outcome {
            Ok(more) => {
                if more {
                    self.pos.record += 1;
                }
                Ok(more)
            }
            // Read errors and broken framing end the block however bad
            // records are treated: the reader cannot find the next record.
            Err(e) if self.opts.skip_bad_records && !matches!(e, DataError::Io { .. } | DataError::Framing { .. }) => {
                self.skipped += 1;
                self.pos.record += 1;
                if self.skip_log.len() < 10 {
                    self.skip_log.push(e.to_string());
                }
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Decodes the next row of the open block into `batch`; false at its
    /// end. A TFRecord framing error other than a data CRC mismatch is
    /// fatal even when bad records are skipped (the stream cannot resync).
    fn next_row(&mut self, batch: &mut Batch, file: &str, record: u64) -> Result<bool, DataError> {
        let source = RowSource {
            block: self.pos.block as u32,
            record,
        };
        match self.open.as_mut() {
            None => Ok(false),
            Some(Open::Tf(r)) => match r.next_record() {
                Ok(None) => Ok(false),
                Ok(Some(data)) => self
                    .decoder
                    .decode_into(data, batch, source)
                    .map(|()| true)
                    .map_err(|e| match e.feature.is_empty() {
                        true => DataError::Record {
                            file: file.to_string(),
                            record,
                            message: e.message,
                        },
                        false => DataError::Feature {
                            file: file.to_string(),
                            record,
                            feature: e.feature,
                            message: e.message,
                        },
                    }),
                Err(e @ FrameError::DataCrc { .. }) => Err(DataError::Record {
                    file: file.to_string(),
                    record,
                    message: strip(&e),
                }),
                Err(e) => Err(DataError::Framing {
                    file: file.to_string(),
                    record,
                    message: strip(&e),
                }),
            },
            Some(Open::Csv {
                reader,
                layout,
                line_no,
            }) => loop {
                self.line.clear();
                match reader.read_line(&mut self.line) {
                    // The line was read (and dropped): a bad record, which
                    // --skip-bad-records may skip.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        *line_no += 1;
                        return Err(DataError::Line {
                            file: file.to_string(),
                            line: *line_no,
                            message: "not UTF-8".into(),
                        });
                    }
                    Err(source) => {
                        return Err(DataError::Io {
                            file: file.to_string(),
                            source,
                        });
                    }
                    Ok(0) => break Ok(false),
                    Ok(_) => {}
                }
                *line_no += 1;
                if self.line.trim().is_empty() {
                    continue;
                }
                let line = *line_no;
                break layout
                    .parse_into(&self.line, &mut self.splitter, batch, source)
                    .map(|()| true)
                    .map_err(|e| e.at_line(file, line));
            },
        }
    }

    /// A row whose example id already came in this block is an error (and
    /// taken out of the batch).
    fn check_unique(
        &mut self,
        more: bool,
        batch: &mut Batch,
        before: usize,
        file: &str,
        record: u64,
    ) -> Result<bool, DataError> {
        if !more {
            return Ok(false);
        }
        let h = vfl_mix::fnv1a(batch.example_id(before));
        if let Some(first) = self.seen.insert(h, record) {
            batch.truncate_rows(before);
            // The id itself is a feature value: not in the message.
            return Err(DataError::Record {
                file: file.to_string(),
                record,
                message: format!("duplicate example_id (as at record {first} of this block)"),
            });
        }
        Ok(true)
    }
}

/// A frame error's text without its own "record N:" prefix.
fn strip(e: &FrameError) -> String {
    let s = e.to_string();
    s.split_once(": ").map_or(s.clone(), |(_, rest)| rest.to_string())
}

impl BatchSource for BlockReader {
    fn fill(&mut self, batch: &mut Batch, max_rows: usize) -> Result<usize, DataError> {
        batch.clear();
        while batch.rows < max_rows && self.pos.block < self.blocks.len() {
            if self.open.is_none() {
                self.open_block()?;
            }
            if !self.read_one(batch)? {
                self.open = None;
                self.pos = Position {
                    block: self.pos.block + 1,
                    record: 0,
                };
            }
        }
        Ok(batch.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wildcard_match(pattern: &str, name: &str) -> bool {
        wildcard(pattern).unwrap().is_match(name)
    }

    #[test]
    fn wildcard_semantics() {
        assert!(wildcard_match("*.tfrecord", "00.tfrecord"));
        assert!(wildcard_match("*", "a/b/c"));
        assert!(wildcard_match("part-*", "part-00001"));
        assert!(!wildcard_match("part-*", "data/leader/00.tfrecord"));
        assert!(wildcard_match("0?.csv", "01.csv"));
        assert!(wildcard_match("[0-1][!a]*", "05x"));
        assert!(!wildcard_match("[!0]*", "05x"));
        assert!(!wildcard_match("a", "ab"));
        assert!(wildcard_match("*.{csv,tfrecord}", "d/x.csv"));
    }

    /// Patterns with many stars match in linear time (the hand-written
    /// matcher this replaced backtracked exponentially).
    #[test]
    fn many_stars_do_not_backtrack() {
        let pattern = "*a".repeat(30) + "b";
        assert!(!wildcard_match(&pattern, &"a".repeat(60)));
    }

    #[test]
    fn an_unclosed_class_is_a_typed_error() {
        assert!(matches!(wildcard("[abc"), Err(DataError::BadWildcard { .. })));
    }
}
