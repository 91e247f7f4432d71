//! `vfl data generate`: the original wide_n_deep example's data layout,
//! `DIR/leader/NN.tfrecord` and `DIR/follower/NN.tfrecord` (or `.csv`),
//! aligned (row k of file f has the same id on both sides) or, for
//! `vfl join`, unaligned (some rows on one side only, the follower's rows
//! shuffled).

use std::io::Write;
use std::path::PathBuf;

use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;

use crate::DataError;
use crate::example::{Value, encode_example};
use crate::synth::{Synth, SynthConfig, SynthRow};
use crate::tfrecord::RecordWriter;
use vfl_fs::write_atomic;

/// What to generate.
#[derive(Clone, Debug, Default)]
pub struct GenerateConfig {
    pub out: PathBuf,
    pub files: usize,
    pub rows_per_file: usize,
    /// First row index (example ids are row indices as decimal strings).
    pub first_row: u64,
    pub synth: SynthConfig,
    pub gzip: bool,
    /// Unaligned data: this fraction of the rows is on both sides, the rest
    /// on one side only (half each). None: every row on both sides.
    pub shared: Option<f64>,
    /// Shuffle the follower's rows within each file.
    pub shuffle_follower: bool,
    /// CSV (`id,y,loss_mask,x_0,..` / `id,x_0,..`) instead of TFRecord.
    pub csv: bool,
}

/// Which sides hold row `index` (leader, follower).
fn sides(cfg: &GenerateConfig, index: u64) -> (bool, bool) {
    let Some(shared) = cfg.shared else {
        return (true, true);
    };
    let mut st = cfg.synth.seed ^ 0x00A1_1CE5 ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let u = crate::synth::unit(&mut st);
    if u < shared {
        (true, true)
    } else {
        let leader = u < shared + (1.0 - shared) / 2.0;
        (leader, !leader)
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateSummary {
    pub leader_files: Vec<PathBuf>,
    pub follower_files: Vec<PathBuf>,
    /// Rows written for the leader.
    pub rows: u64,
    /// Rows written for the follower (the same as `rows` when aligned).
    pub follower_rows: u64,
    pub positives: u64,
    pub bytes: u64,
}

fn slot_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("x_{i}")).collect()
}

/// Writes both parties' files; each file is written atomically.
pub fn generate(cfg: &GenerateConfig) -> Result<GenerateSummary, DataError> {
    let width = cfg.files.saturating_sub(1).to_string().len().max(2);
    let ext = match (cfg.csv, cfg.gzip) {
        (true, _) => "csv",
        (false, true) => "tfrecord.gz",
        (false, false) => "tfrecord",
    };
    let mut summary = GenerateSummary {
        leader_files: vec![],
        follower_files: vec![],
        rows: 0,
        follower_rows: 0,
        positives: 0,
        bytes: 0,
    };
    for role in ["leader", "follower"] {
        let dir = cfg.out.join(role);
        std::fs::create_dir_all(&dir).map_err(|source| DataError::Io {
            file: dir.display().to_string(),
            source,
        })?;
    }
    let mut rows = Rows {
        cfg,
        generator: Synth::new(cfg.synth.clone()),
        names: slot_names(cfg.synth.slots),
        row: SynthRow::default(),
        buf: Vec::with_capacity(16 << 10),
    };
    for f in 0..cfg.files {
        for leader in [true, false] {
            let role = if leader { "leader" } else { "follower" };
            let path = cfg.out.join(role).join(format!("{f:0width$}.{ext}"));
            let indices = file_rows(cfg, f, leader);
            let mut counts = (0u64, 0u64);
            let write = |w: &mut dyn Write| -> std::io::Result<()> {
                counts = if cfg.gzip && !cfg.csv {
                    let mut enc = GzEncoder::new(w, GzLevel::default());
                    let c = rows.write(&mut enc, leader, &indices)?;
                    enc.finish()?;
                    c
                } else {
                    rows.write(w, leader, &indices)?
                };
                Ok(())
            };
            write_atomic(&path, write).map_err(|source| DataError::Io {
                file: path.display().to_string(),
                source,
            })?;
            let (bytes, positives) = counts;
            summary.bytes += bytes;
            if leader {
                summary.positives += positives;
                summary.rows += indices.len() as u64;
                summary.leader_files.push(path);
            } else {
                summary.follower_rows += indices.len() as u64;
                summary.follower_files.push(path);
            }
        }
    }
    Ok(summary)
}

/// The generator row indices of file `f` of one party, in file order (the
/// follower's shuffled if asked).
fn file_rows(cfg: &GenerateConfig, f: usize, leader: bool) -> Vec<u64> {
    let mut indices: Vec<u64> = (0..cfg.rows_per_file)
        .map(|i| cfg.first_row + (f * cfg.rows_per_file + i) as u64)
        .filter(|&i| {
            let (l, fo) = sides(cfg, i);
            if leader { l } else { fo }
        })
        .collect();
    if !leader && cfg.shuffle_follower {
        let mut st = cfg.synth.seed ^ (f as u64).wrapping_mul(vfl_mix::GOLDEN_GAMMA) ^ 0x0005_4FF1;
        for i in (1..indices.len()).rev() {
            let j = (vfl_mix::splitmix64(&mut st) % (i as u64 + 1)) as usize;
            indices.swap(i, j);
        }
    }
    indices
}

/// Turns generator rows into file contents (CSV lines or TFRecord
/// tf.Examples), reusing its buffers.
struct Rows<'a> {
    cfg: &'a GenerateConfig,
    generator: Synth,
    names: Vec<String>,
    row: SynthRow,
    buf: Vec<u8>,
}

impl Rows<'_> {
    /// Writes the rows `indices` of one party; (bytes, positive labels).
    fn write(&mut self, sink: &mut dyn Write, leader: bool, indices: &[u64]) -> std::io::Result<(u64, u64)> {
        let mut rw = RecordWriter::new(sink);
        if self.cfg.csv {
            let mut header = String::from(if leader { "id,y,loss_mask" } else { "id" });
            for n in &self.names {
                header.push(',');
                header.push_str(n);
            }
            header.push('\n');
            rw.inner_mut().write_all(header.as_bytes())?;
        }
        let (mut bytes, mut positives) = (0u64, 0u64);
        for &index in indices {
            self.generator.row(index, &mut self.row);
            if leader {
                positives += self.row.y as u64;
            }
            if self.cfg.csv {
                let line = self.csv_line(index, leader);
                bytes += line.len() as u64;
                rw.inner_mut().write_all(line.as_bytes())?;
            } else {
                self.example(index, leader);
                bytes += self.buf.len() as u64 + 16;
                rw.write_record(&self.buf)?;
            }
        }
        Ok((bytes, positives))
    }

    fn csv_line(&self, index: u64, leader: bool) -> String {
        use std::fmt::Write as _;
        let ids = if leader { &self.row.leader } else { &self.row.follower };
        let mut line = String::with_capacity(8 + 8 * ids.len());
        let _ = write!(line, "{index}");
        if leader {
            let _ = write!(line, ",{},{}", self.row.y, self.row.loss_mask);
        }
        for v in ids {
            let _ = write!(line, ",{v}");
        }
        line.push('\n');
        line
    }

    /// Encodes the current row as a tf.Example into `buf`.
    fn example(&mut self, index: u64, leader: bool) {
        let id = index.to_string();
        let row = &self.row;
        let ids = if leader { &row.leader } else { &row.follower };
        let (y, mask) = ([row.y], [row.loss_mask]);
        let mut features: Vec<(&str, Value<'_>)> = Vec::with_capacity(self.names.len() + 3);
        features.push(("example_id", Value::Bytes(id.as_bytes())));
        if leader {
            features.push(("y", Value::Int64(&y)));
            features.push(("loss_mask", Value::Int64(&mask)));
        }
        for (s, name) in self.names.iter().enumerate() {
            features.push((name, Value::Int64(std::slice::from_ref(&ids[s]))));
        }
        encode_example(&features, &mut self.buf);
    }
}
