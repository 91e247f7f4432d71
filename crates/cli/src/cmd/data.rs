//! `vfl data`: generate example data sets and measure decoding speed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use vfl_data::blocks::{DataDir, ReadOptions};
use vfl_data::generate::{GenerateConfig, generate};
use vfl_data::synth::{LabelMode, SynthConfig};
use vfl_data::tfrecord::{Compression, RecordReader};
use vfl_data::{Batch, BatchSource, BlockReader, Schema};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Write the original wide_n_deep example's layout:
    /// OUT/leader/NN.tfrecord and OUT/follower/NN.tfrecord.
    Generate(GenerateArgs),
    /// Measure single-thread decoding throughput of wide_n_deep rows.
    Bench(BenchArgs),
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Labels {
    /// Labels drawn from a hidden model using both parties' features.
    Planted,
    /// Random labels and loss masks, as the original make_data.py.
    Random,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Files (data blocks) per party.
    #[arg(long, default_value_t = 10)]
    files: usize,
    #[arg(long, default_value_t = 200)]
    rows_per_file: usize,
    #[arg(long, value_enum, default_value_t = Labels::Planted)]
    labels: Labels,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sparse slots per party (x_0 ..).
    #[arg(long, default_value_t = 512)]
    slots: usize,
    /// First row index (example ids are row indices).
    #[arg(long, default_value_t = 0)]
    first_row: u64,
    /// Write GZIP-compressed files (NN.tfrecord.gz).
    #[arg(long)]
    gzip: bool,
    /// Write CSV files (NN.csv: id,y,loss_mask,x_0,.. for the leader,
    /// id,x_0,.. for the follower) instead of TFRecord.
    #[arg(long, conflicts_with = "gzip")]
    csv: bool,
    /// Unaligned data for `vfl join`: this fraction of the rows is on both
    /// sides, the rest on one side only (half each).
    #[arg(long, value_parser = fraction)]
    shared: Option<f64>,
    /// Shuffle the follower's rows within each file.
    #[arg(long)]
    shuffle_follower: bool,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a fraction between 0 and 1")),
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Rows to generate and decode per round.
    #[arg(long, default_value_t = 20_000)]
    rows: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Directory for the generated files (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Generate and decode CSV files (slot cells of integer ids) instead of
    /// TFRecord.
    #[arg(long)]
    csv: bool,
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Generate(a) => run_generate(a),
        Command::Bench(a) => run_bench(a),
    }
}

fn run_generate(a: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.files > 0 && a.rows_per_file > 0,
        "--files and --rows-per-file must be > 0"
    );
    anyhow::ensure!(a.slots > 0, "--slots must be > 0");
    let labels = match a.labels {
        Labels::Planted => LabelMode::Planted,
        Labels::Random => LabelMode::Random,
    };
    let cfg = GenerateConfig {
        out: a.out.clone(),
        files: a.files,
        rows_per_file: a.rows_per_file,
        first_row: a.first_row,
        synth: SynthConfig {
            slots: a.slots,
            labels,
            seed: a.seed,
            ..Default::default()
        },
        gzip: a.gzip,
        csv: a.csv,
        shared: a.shared,
        shuffle_follower: a.shuffle_follower,
    };
    let s = generate(&cfg)?;
    println!(
        "wrote {} leader rows and {} follower rows in {} files each under {} ({:.1} MB of records, {} positive labels)",
        s.rows,
        s.follower_rows,
        s.leader_files.len(),
        a.out.display(),
        s.bytes as f64 / 1e6,
        s.positives
    );
    Ok(())
}

fn run_bench(a: BenchArgs) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("vfl-data-bench-{}", std::process::id()));
    let dir = a.dir.clone().unwrap_or_else(|| tmp.clone());
    let files = 10;
    let cfg = GenerateConfig {
        out: dir.clone(),
        files,
        rows_per_file: a.rows.div_ceil(files),
        first_row: 0,
        synth: SynthConfig::default(),
        gzip: false,
        csv: a.csv,
        ..Default::default()
    };
    let s = generate(&cfg).context("generating benchmark data")?;
    let leader = dir.join("leader");
    let blocks = DataDir::scan(&leader, None)?.blocks().to_vec();
    let slots: Vec<String> = (0..512).map(|i| format!("x_{i}")).collect();
    let mut schema = Schema::new(slots, vec![], true);
    schema.vocab = vec![Some(101); 512];
    let file_bytes: u64 = blocks
        .iter()
        .map(|b| std::fs::metadata(&b.path).map_or(0, |m| m.len()))
        .sum();
    let (mut frame, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        // Framing and checksums only (TFRecord).
        if !a.csv {
            let t = Instant::now();
            let mut n = 0u64;
            for b in &blocks {
                let mut r = RecordReader::open(&b.path, Compression::Auto)?;
                while r.next_record()?.is_some() {
                    n += 1;
                }
            }
            frame.push((n, t.elapsed().as_secs_f64()));
        }
        // Full decode into batches of 256.
        let t = Instant::now();
        let mut r = BlockReader::new(blocks.clone(), schema.clone(), ReadOptions::default());
        let mut batch = Batch::new(512, 0);
        let mut n = 0u64;
        loop {
            let k = r.fill(&mut batch, 256)?;
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        decode.push((n, t.elapsed().as_secs_f64()));
    }
    let report = |name: &str, v: &[(u64, f64)]| {
        let mut rates: Vec<f64> = v.iter().map(|(n, s)| *n as f64 / s).collect();
        rates.sort_by(f64::total_cmp);
        let med = rates[rates.len() / 2];
        let mbs = med * file_bytes as f64 / s.rows as f64 / 1e6;
        println!(
            "{name:<28} {med:>12.0} examples/s {mbs:>9.0} MB/s   (min {:.0}, max {:.0})",
            rates[0],
            rates[rates.len() - 1]
        );
    };
    println!(
        "{} rows of wide_n_deep leader data in {} ({:.0} bytes/example), {} rounds, single thread, page cache",
        s.rows,
        if a.csv { "CSV" } else { "TFRecord" },
        file_bytes as f64 / s.rows as f64,
        a.rounds
    );
    if a.csv {
        report("read + parse CSV", &decode);
    } else {
        report("read + CRC only", &frame);
        report("read + CRC + decode", &decode);
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}
