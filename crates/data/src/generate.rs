//! `vfl data generate`: the original wide_n_deep example's data layout,
//! `DIR/leader/NN.tfrecord` and `DIR/follower/NN.tfrecord`.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;

use crate::DataError;
use crate::atomic::write_atomic;
use crate::example::{Value, encode_example};
use crate::synth::{Synth, SynthConfig, SynthRow};
use crate::tfrecord::RecordWriter;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub out: PathBuf,
    pub files: usize,
    pub rows_per_file: usize,
    /// First row index (example ids are row indices as decimal strings).
    pub first_row: u64,
    pub synth: SynthConfig,
    pub gzip: bool,
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateSummary {
    pub leader_files: Vec<PathBuf>,
    pub follower_files: Vec<PathBuf>,
    pub rows: u64,
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
    let ext = if cfg.gzip { "tfrecord.gz" } else { "tfrecord" };
    let mut summary = GenerateSummary {
        leader_files: vec![],
        follower_files: vec![],
        rows: 0,
        positives: 0,
        bytes: 0,
    };
    for role in ["leader", "follower"] {
        let dir = cfg.out.join(role);
        std::fs::create_dir_all(&dir).map_err(|e| DataError::Io {
            file: dir.display().to_string(),
            message: e.to_string(),
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
            let write = |w: &mut dyn Write| -> std::io::Result<()> {
                let mut records = |sink: &mut dyn Write| -> std::io::Result<()> {
                    let mut rw = RecordWriter::new(sink);
                    for i in 0..cfg.rows_per_file {
                        let index = cfg.first_row + (f * cfg.rows_per_file + i) as u64;
                        generator.row(index, &mut row);
                        let id = index.to_string();
                        let ids = if leader { &row.leader } else { &row.follower };
                        let y = [row.y];
                        let mask = [row.loss_mask];
                        let mut features: Vec<(&str, Value<'_>)> = Vec::with_capacity(names.len() + 3);
                        features.push(("example_id", Value::Bytes(id.as_bytes())));
                        if leader {
                            features.push(("y", Value::Int64(&y)));
                            features.push(("loss_mask", Value::Int64(&mask)));
                            positives += row.y as u64;
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
                if cfg.gzip {
                    let mut enc = GzEncoder::new(w, GzLevel::default());
                    records(&mut enc)?;
                    enc.finish()?;
                } else {
                    records(w)?;
                }
                Ok(())
            };
            write_atomic(&path, write).map_err(|e| DataError::Io {
                file: path.display().to_string(),
                message: e.to_string(),
            })?;
            summary.bytes += bytes;
            if leader {
                summary.positives += positives;
                summary.leader_files.push(path);
            } else {
                summary.follower_files.push(path);
            }
        }
        summary.rows += cfg.rows_per_file as u64;
    }
    Ok(summary)
}

/// The directory of one party's files.
pub fn party_dir(out: &Path, leader: bool) -> PathBuf {
    out.join(if leader { "leader" } else { "follower" })
}
