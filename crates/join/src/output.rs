//! The joined output: data blocks written into a staging directory beside
//! the output path (a dot-name the data layer never reads), renamed into
//! place only when both sides agreed on the result. A crashed or refused
//! join leaves at most a staging directory, removed by the next join to
//! the same path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfl_attest::seal::{Context, Sealer};
use vfl_data::tfrecord::RecordWriter;

use crate::JoinError;
use crate::input::OutputFormat;

/// The report every joined output holds; its presence marks a directory
/// as a join's output (which a later join may replace).
pub const REPORT: &str = "join-report.json";

/// The file name extension of a sealed joined block.
pub const SEALED_SUFFIX: &str = "sealed";

/// Sealing of joined blocks (when a model key is in force).
#[derive(Clone)]
pub struct OutputSealing {
    pub sealer: Arc<Sealer>,
    /// The context every block is sealed under (the block id is added).
    pub context: Context,
}

/// A staging directory for `target`.
pub struct Staging {
    target: PathBuf,
    dir: PathBuf,
    committed: bool,
}

fn name_of(target: &Path) -> Result<String, JoinError> {
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| JoinError::Config(format!("--output-path {} has no usable file name", target.display())))
}

fn parent_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Staging {
    /// Checks that `target` may be written (absent, empty, or an earlier
    /// join's output), removes staging left by crashed joins, and creates
    /// a new staging directory.
    pub fn prepare(target: &Path) -> Result<Self, JoinError> {
        let name = name_of(target)?;
        let parent = parent_of(target);
        if target.exists() {
            let replaceable = target.is_dir()
                && (target.join(REPORT).is_file()
                    || std::fs::read_dir(target)
                        .map_err(|e| JoinError::io("reading", target, e))?
                        .next()
                        .is_none());
            if !replaceable {
                return Err(JoinError::OutputExists {
                    path: target.display().to_string(),
                });
            }
        }
        std::fs::create_dir_all(&parent).map_err(|e| JoinError::io("creating", &parent, e))?;
        let stale = [format!(".{name}.join-"), format!(".{name}.old-")];
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if stale.iter().any(|s| n.starts_with(s)) {
                    tracing::info!(path = %e.path().display(), "removing what a crashed join left");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = parent.join(format!(".{name}.join-{}", vfl_attest::random_hex(8)));
        std::fs::create_dir(&dir).map_err(|e| JoinError::io("creating", &dir, e))?;
        Ok(Staging {
            target: target.to_path_buf(),
            dir,
            committed: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the report and moves the staging directory into place,
    /// replacing an earlier join's output.
    pub fn commit(mut self, report: &serde_json::Value) -> Result<(), JoinError> {
        let path = self.dir.join(REPORT);
        let body = serde_json::to_vec_pretty(report).map_err(|e| JoinError::Config(e.to_string()))?;
        vfl_fs::write_atomic(&path, |w| w.write_all(&body)).map_err(|e| JoinError::io("writing", &path, e))?;
        let parent = parent_of(&self.target);
        let old = if self.target.exists() {
            let old = parent.join(format!(".{}.old-{}", name_of(&self.target)?, vfl_attest::random_hex(8)));
            std::fs::rename(&self.target, &old).map_err(|e| JoinError::io("moving aside", &self.target, e))?;
            Some(old)
        } else {
            None
        };
        std::fs::rename(&self.dir, &self.target).map_err(|e| JoinError::io("renaming into place", &self.target, e))?;
        self.committed = true;
        if let Ok(d) = std::fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes joined rows into blocks of `rows_per_block` and digests the
/// joined id order.
pub struct BlockWriter {
    dir: PathBuf,
    format: OutputFormat,
    rows_per_block: u64,
    header: Option<String>,
    sealing: Option<OutputSealing>,
    /// Sealed blocks: every row counts as this many bytes (the longest
    /// row with its framing), so a block's size depends on its row count
    /// only, not on which rows it holds.
    pad_row: u64,
    buf: Vec<u8>,
    in_block: u64,
    blocks: u64,
    rows: u64,
    digest: ring::hmac::Context,
}

/// What a [`BlockWriter`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub blocks: u64,
    pub digest: [u8; 32],
}

/// Bytes a row adds besides itself: TFRecord framing, or a CSV newline.
fn framing(format: OutputFormat) -> u64 {
    match format {
        OutputFormat::TfRecord => 16,
        OutputFormat::Csv => 1,
    }
}

/// The id of joined block `k` (its file name without extension): the same
/// on both sides.
pub fn block_id(k: u64) -> String {
    format!("part-{k:06}")
}

impl BlockWriter {
    pub fn new(
        dir: &Path,
        format: OutputFormat,
        rows_per_block: u64,
        header: Option<String>,
        sealing: Option<OutputSealing>,
        digest: ring::hmac::Context,
        max_row: u64,
    ) -> Self {
        BlockWriter {
            dir: dir.to_path_buf(),
            format,
            rows_per_block: rows_per_block.max(1),
            pad_row: max_row + framing(format),
            header,
            sealing,
            buf: Vec::new(),
            in_block: 0,
            blocks: 0,
            rows: 0,
            digest,
        }
    }

    /// Appends one row.
    pub fn push(&mut self, id: &[u8], payload: &[u8]) -> Result<(), JoinError> {
        self.digest.update(&(id.len() as u32).to_le_bytes());
        self.digest.update(id);
        match self.format {
            OutputFormat::TfRecord => {
                let mut w = RecordWriter::new(&mut self.buf);
                w.write_record(payload)
                    .map_err(|e| JoinError::io("writing", &self.dir, e))?;
            }
            OutputFormat::Csv => {
                if self.in_block == 0
                    && let Some(h) = &self.header
                {
                    self.buf.extend_from_slice(h.as_bytes());
                    self.buf.push(b'\n');
                }
                self.buf.extend_from_slice(payload);
                self.buf.push(b'\n');
            }
        }
        self.in_block += 1;
        self.rows += 1;
        if self.in_block == self.rows_per_block {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), JoinError> {
        if self.in_block == 0 {
            return Ok(());
        }
        let id = block_id(self.blocks);
        let ext = self.format.extension();
        let (path, bytes) = match &self.sealing {
            None => (self.dir.join(format!("{id}.{ext}")), std::mem::take(&mut self.buf)),
            Some(s) => {
                let header = self.header.as_ref().map_or(0, |h| h.len() as u64 + 1);
                let size = usize::try_from(self.in_block * self.pad_row + header)
                    .map_err(|_| JoinError::Config("a sealed block too large to pad".into()))?;
                let padded = vfl_data::blocks::pad_sealed(&self.buf, size);
                let sealed = s
                    .sealer
                    .seal(&s.context.clone().with("block", &id), &padded)
                    .map_err(JoinError::Seal)?;
                self.buf.clear();
                (self.dir.join(format!("{id}.{ext}.{SEALED_SUFFIX}")), sealed)
            }
        };
        vfl_fs::write_atomic(&path, |w| w.write_all(&bytes)).map_err(|e| JoinError::io("writing", &path, e))?;
        self.buf = bytes;
        self.buf.clear();
        self.in_block = 0;
        self.blocks += 1;
        Ok(())
    }

    /// Writes the last (partial) block.
    pub fn finish(mut self) -> Result<Written, JoinError> {
        self.flush()?;
        Ok(Written {
            rows: self.rows,
            blocks: self.blocks,
            digest: {
                let mut d = [0u8; 32];
                d.copy_from_slice(self.digest.sign().as_ref());
                d
            },
        })
    }
}
