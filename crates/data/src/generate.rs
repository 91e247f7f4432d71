//! `vfl data generate`: the original wide_n_deep example's data layout,
//! `DIR/leader/NN.tfrecord` and `DIR/follower/NN.tfrecord` (or `.csv`),
//! aligned (row k of file f has the same id on both sides) or, for
//! `vfl join`, unaligned (some rows on one side only, the follower's rows
//! shuffled).

use std::io::Write;
use std::path::{Path, PathBuf};

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
    let generator = Synth::new(cfg.synth.clone());
    let names = slot_names(cfg.synth.slots);
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
    let mut row = SynthRow::default();
    let mut buf = Vec::with_capacity(16 << 10);
    for f in 0..cfg.files {
        for leader in [true, false] {
            let role = if leader { "leader" } else { "follower" };
            let path = cfg.out.join(role).join(format!("{f:0width$}.{ext}"));
            let mut bytes = 0u64;
            let mut positives = 0u64;
            let mut indices: Vec<u64> = (0..cfg.rows_per_file)
                .map(|i| cfg.first_row + (f * cfg.rows_per_file + i) as u64)
                .filter(|&i| {
                    let (l, fo) = sides(cfg, i);
                    if leader { l } else { fo }
                })
                .collect();
            if !leader && cfg.shuffle_follower {
                let mut st = cfg.synth.seed ^ (f as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0005_4FF1;
                for i in (1..indices.len()).rev() {
                    let j = (vfl_mix::splitmix64(&mut st) % (i as u64 + 1)) as usize;
                    indices.swap(i, j);
                }
            }
            let count = indices.len() as u64;
            let write = |w: &mut dyn Write| -> std::io::Result<()> {
                let mut records = |sink: &mut dyn Write| -> std::io::Result<()> {
                    let mut rw = RecordWriter::new(sink);
                    if cfg.csv {
                        let mut header = String::from(if leader { "id,y,loss_mask" } else { "id" });
                        for n in &names {
                            header.push(',');
                            header.push_str(n);
                        }
                        header.push('\n');
                        rw.inner_mut().write_all(header.as_bytes())?;
                    }
                    for &index in &indices {
                        generator.row(index, &mut row);
                        let id = index.to_string();
                        let ids = if leader { &row.leader } else { &row.follower };
                        if leader {
                            positives += row.y as u64;
                        }
                        if cfg.csv {
                            use std::fmt::Write as _;
                            let mut line = String::with_capacity(8 + 8 * ids.len());
                            line.push_str(&id);
                            if leader {
                                let _ = write!(line, ",{},{}", row.y, row.loss_mask);
                            }
                            for v in ids {
                                let _ = write!(line, ",{v}");
                            }
                            line.push('\n');
                            bytes += line.len() as u64;
                            rw.inner_mut().write_all(line.as_bytes())?;
                            continue;
                        }
                        let y = [row.y];
                        let mask = [row.loss_mask];
                        let mut features: Vec<(&str, Value<'_>)> = Vec::with_capacity(names.len() + 3);
                        features.push(("example_id", Value::Bytes(id.as_bytes())));
                        if leader {
                            features.push(("y", Value::Int64(&y)));
                            features.push(("loss_mask", Value::Int64(&mask)));
                        }
                        for (s, name) in names.iter().enumerate() {
                            features.push((name, Value::Int64(std::slice::from_ref(&ids[s]))));
                        }
                        encode_example(&features, &mut buf);
                        bytes += buf.len() as u64 + 16;
                        rw.write_record(&buf)?;
                    }
                    Ok(())
                };
                if cfg.gzip && !cfg.csv {
                    let mut enc = GzEncoder::new(w, GzLevel::default());
                    records(&mut enc)?;
                    enc.finish()?;
                } else {
                    records(w)?;
                }
                Ok(())
            };
            write_atomic(&path, write).map_err(|source| DataError::Io {
                file: path.display().to_string(),
                source,
            })?;
            summary.bytes += bytes;
            if leader {
                summary.positives += positives;
                summary.rows += count;
                summary.leader_files.push(path);
            } else {
                summary.follower_rows += count;
                summary.follower_files.push(path);
            }
        }
    }
    Ok(summary)
}

/// The directory of one party's files.
pub fn party_dir(out: &Path, leader: bool) -> PathBuf {
    out.join(if leader { "leader" } else { "follower" })
}
