//! The data layer end to end: files written and read back, files written by
//! TensorFlow, resume positions, and every kind of bad input (one test
//! each) producing an error that names the file, the record or line and the
//! feature or column.

use std::fs;
use std::path::{Path, PathBuf};

use vfl_data::blocks::{DataDir, Position, ReadOptions};
use vfl_data::example::{Value, encode_example};
use vfl_data::generate::{GenerateConfig, generate};
use vfl_data::synth::{LabelMode, Synth, SynthConfig, SynthRow};
use vfl_data::tfrecord::{Compression, RecordWriter};
use vfl_data::{Batch, BatchSource, BlockReader, Schema};

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vfl-data-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn slots(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("x_{i}")).collect()
}

fn small_cfg(out: &Path, gzip: bool) -> GenerateConfig {
    GenerateConfig {
        out: out.to_path_buf(),
        files: 3,
        rows_per_file: 7,
        first_row: 0,
        synth: SynthConfig {
            slots: 8,
            seed: 5,
            ..Default::default()
        },
        gzip,
        ..Default::default()
    }
}

fn read_all(dir: &Path, schema: Schema, opts: ReadOptions) -> Result<Batch, vfl_data::DataError> {
    let d = DataDir::scan(dir, None)?;
    let n = (schema.slots.len(), schema.dense.len());
    let mut r = BlockReader::new(d.blocks().to_vec(), schema, opts);
    let mut all = Batch::new(n.0, n.1);
    r.fill(&mut all, usize::MAX)?;
    Ok(all)
}

#[test]
fn generated_files_read_back_exactly() {
    for gzip in [false, true] {
        let t = TempDir::new(&format!("roundtrip-{gzip}"));
        let s = generate(&small_cfg(&t.0, gzip)).unwrap();
        assert_eq!(s.rows, 21);
        assert_eq!(s.leader_files.len(), 3);
        let leader = read_all(
            &t.0.join("leader"),
            Schema::new(slots(8), vec![], true),
            ReadOptions::default(),
        )
        .unwrap();
        let follower = read_all(
            &t.0.join("follower"),
            Schema::new(slots(8), vec![], false),
            ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(leader.rows, 21);
        assert_eq!(leader.digest(), follower.digest(), "parties must be row-aligned");
        let g = Synth::new(SynthConfig {
            slots: 8,
            seed: 5,
            ..Default::default()
        });
        let mut row = SynthRow::default();
        for i in 0..21 {
            g.row(i as u64, &mut row);
            assert_eq!(leader.example_id(i), i.to_string().as_bytes());
            assert_eq!(&leader.ids[i * 8..(i + 1) * 8], &row.leader[..]);
            assert_eq!(&follower.ids[i * 8..(i + 1) * 8], &row.follower[..]);
            assert_eq!(leader.labels[i], row.y as f32);
            assert_eq!(leader.weights[i], 1.0 - row.loss_mask as f32);
        }
        assert!(follower.labels.is_empty());
    }
}

#[test]
fn generate_defaults_match_the_original_layout() {
    let t = TempDir::new("layout");
    let cfg = GenerateConfig {
        out: t.0.clone(),
        files: 10,
        rows_per_file: 2,
        first_row: 0,
        synth: SynthConfig {
            labels: LabelMode::Random,
            ..Default::default()
        },
        gzip: false,
        ..Default::default()
    };
    generate(&cfg).unwrap();
    let d = DataDir::scan(&t.0.join("leader"), None).unwrap();
    assert_eq!(d.ids(), (0..10).map(|i| format!("{i:02}")).collect::<Vec<_>>());
    let b = read_all(
        &t.0.join("leader"),
        Schema::new(slots(512), vec![], true),
        ReadOptions::default(),
    )
    .unwrap();
    assert_eq!(b.rows, 20);
    assert!(b.ids.iter().all(|&v| (0..=100).contains(&v)));
    assert_eq!(b.offsets.len(), 20 * 512 + 1);
}

#[test]
fn reads_files_written_by_tensorflow() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixtures.join("tf_written.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    let schema = Schema::new(slots(3), vec!["d_0".into()], true);
    for name in ["tf_written", "tf_written_gzip"] {
        let d = DataDir::scan(&fixtures, Some(&format!("{name}.tfrecord"))).unwrap();
        let mut r = BlockReader::new(d.blocks().to_vec(), schema.clone(), ReadOptions::default());
        let mut b = Batch::new(3, 1);
        assert_eq!(r.fill(&mut b, 100).unwrap(), rows.len(), "{name}");
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(b.example_id(i), row["example_id"].as_str().unwrap().as_bytes());
            assert_eq!(b.labels[i], row["y"].as_f64().unwrap() as f32);
            assert_eq!(b.weights[i], 1.0 - row["loss_mask"].as_f64().unwrap() as f32);
            assert_eq!(b.dense[i], row["d_0"].as_f64().unwrap() as f32);
            for s in 0..3 {
                let want: Vec<i64> = row[format!("x_{s}")]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                let (lo, hi) = (b.offsets[i * 3 + s] as usize, b.offsets[i * 3 + s + 1] as usize);
                assert_eq!(&b.ids[lo..hi], &want[..], "{name} row {i} slot {s}");
            }
        }
    }
}

#[test]
fn resumes_mid_block_without_losing_or_repeating_rows() {
    let t = TempDir::new("resume");
    generate(&small_cfg(&t.0, false)).unwrap();
    let dir = t.0.join("leader");
    let schema = Schema::new(slots(8), vec![], true);
    let full = read_all(&dir, schema.clone(), ReadOptions::default()).unwrap();
    let d = DataDir::scan(&dir, None).unwrap();
    // Read 10 rows in batches of 4, note the position, resume elsewhere.
    let mut r = BlockReader::new(d.blocks().to_vec(), schema.clone(), ReadOptions::default());
    let mut b = Batch::new(8, 0);
    r.fill(&mut b, 4).unwrap();
    r.fill(&mut b, 4).unwrap();
    r.fill(&mut b, 2).unwrap();
    let pos = r.position();
    assert_eq!(pos, Position { block: 1, record: 3 });
    let mut r2 = BlockReader::new(d.blocks().to_vec(), schema, ReadOptions::default());
    r2.seek(pos).unwrap();
    let mut rest = Batch::new(8, 0);
    assert_eq!(r2.fill(&mut rest, 100).unwrap(), 11);
    for i in 0..11 {
        assert_eq!(rest.example_id(i), full.example_id(10 + i));
    }
    assert_eq!(rest.sources[0].block, 1);
    assert_eq!(rest.sources[0].record, 3);
}

#[test]
fn blocks_follow_the_callers_order() {
    let t = TempDir::new("order");
    generate(&small_cfg(&t.0, false)).unwrap();
    let d = DataDir::scan(&t.0.join("leader"), None).unwrap();
    let order = vec!["02".to_string(), "00".to_string()];
    let mut r = BlockReader::new(
        d.select(&order).unwrap(),
        Schema::new(slots(8), vec![], true),
        ReadOptions::default(),
    );
    let mut b = Batch::new(8, 0);
    assert_eq!(r.fill(&mut b, 100).unwrap(), 14);
    assert_eq!(b.example_id(0), b"14");
    assert_eq!(b.example_id(7), b"0");
    let e = d.select(&["07".to_string()]).unwrap_err().to_string();
    assert!(e.contains("no block `07`"), "{e}");
}

// ---- bad input: one test per case ----

/// Writes one leader block of hand-made records.
fn write_block(dir: &Path, name: &str, records: &[Vec<u8>]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    let mut w = RecordWriter::new(Vec::new());
    for r in records {
        w.write_record(r).unwrap();
    }
    fs::write(&p, w.into_inner()).unwrap();
    p
}

fn record(id: &str, slot1: Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_example(
        &[
            ("example_id", Value::Bytes(id.as_bytes())),
            ("y", Value::Int64(&[1])),
            ("x_0", Value::Int64(&[3])),
            ("x_1", slot1),
        ],
        &mut out,
    );
    out
}

fn good_records(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| record(&i.to_string(), Value::Int64(&[1, 2]))).collect()
}

fn leader_schema() -> Schema {
    let mut s = Schema::new(slots(2), vec![], true);
    s.vocab = vec![Some(101), Some(101)];
    s
}

fn read_err(dir: &Path) -> String {
    read_all(dir, leader_schema(), ReadOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn truncated_record_names_file_and_record() {
    let t = TempDir::new("trunc");
    let p = write_block(&t.0, "00.tfrecord", &good_records(3));
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    let e = read_err(&t.0);
    assert!(
        e.contains("00.tfrecord") && e.contains("record 2") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn bad_length_crc_names_file_and_record() {
    let t = TempDir::new("lencrc");
    let p = write_block(&t.0, "00.tfrecord", &good_records(2));
    let mut bytes = fs::read(&p).unwrap();
    let second = bytes.len() / 2;
    bytes[second] ^= 0x01; // first byte of record 1's length
    fs::write(&p, &bytes).unwrap();
    let e = read_err(&t.0);
    assert!(
        e.contains("00.tfrecord") && e.contains("record 1") && e.contains("length checksum"),
        "{e}"
    );
}

#[test]
fn bad_data_crc_names_file_and_record() {
    let t = TempDir::new("datacrc");
    let p = write_block(&t.0, "00.tfrecord", &good_records(2));
    let mut bytes = fs::read(&p).unwrap();
    bytes[20] ^= 0x40; // inside record 0's data
    fs::write(&p, &bytes).unwrap();
    let e = read_err(&t.0);
    assert!(
        e.contains("00.tfrecord") && e.contains("record 0") && e.contains("data checksum"),
        "{e}"
    );
}

#[test]
fn wrong_feature_type_names_the_feature() {
    let t = TempDir::new("type");
    let mut recs = good_records(2);
    recs.push(record("2", Value::Float(&[1.0])));
    write_block(&t.0, "00.tfrecord", &recs);
    let e = read_err(&t.0);
    assert!(
        e.contains("record 2") && e.contains("feature `x_1`") && e.contains("float_list"),
        "{e}"
    );
}

#[test]
fn missing_required_feature_is_named() {
    let t = TempDir::new("missing");
    let mut out = Vec::new();
    encode_example(
        &[
            ("example_id", Value::Bytes(b"9")),
            ("y", Value::Int64(&[0])),
            ("x_0", Value::Int64(&[1])),
        ],
        &mut out,
    );
    write_block(&t.0, "00.tfrecord", &[good_records(1).remove(0), out]);
    let e = read_err(&t.0);
    assert!(
        e.contains("record 1") && e.contains("feature `x_1`") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn slot_id_out_of_range_names_feature_but_not_the_id() {
    let t = TempDir::new("range");
    write_block(&t.0, "00.tfrecord", &[record("0", Value::Int64(&[5, 101]))]);
    let e = read_err(&t.0);
    assert!(
        e.contains("record 0") && e.contains("feature `x_1`") && e.contains("outside the table's range [0, 101)"),
        "{e}"
    );
    // The id itself is a feature value: never in an error.
    assert!(!e.contains("id 101"), "{e}");
}

#[test]
fn duplicate_example_id_in_a_block() {
    let t = TempDir::new("dup");
    let mut recs = good_records(3);
    recs.push(record("1", Value::Int64(&[1])));
    write_block(&t.0, "00.tfrecord", &recs);
    let e = read_err(&t.0);
    assert!(
        e.contains("record 3") && e.contains("duplicate example_id") && e.contains("record 1"),
        "{e}"
    );
    // The id is a feature value (and in a joined block it says the row is
    // in the intersection): never in an error.
    assert!(!e.contains("`1`"), "{e}");
}

#[test]
fn same_id_in_different_blocks_is_fine() {
    let t = TempDir::new("dup-ok");
    write_block(&t.0, "00.tfrecord", &good_records(2));
    write_block(&t.0, "01.tfrecord", &good_records(2));
    assert_eq!(read_all(&t.0, leader_schema(), ReadOptions::default()).unwrap().rows, 4);
}

#[test]
fn csv_row_with_wrong_column_count() {
    let t = TempDir::new("csvcols");
    fs::write(t.0.join("a.csv"), "id,y,x0\n1,0,0.5\n2,1\n").unwrap();
    let e = read_all(
        &t.0,
        Schema::new(vec![], vec!["x0".into()], true),
        ReadOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("a.csv") && e.contains("line 3") && e.contains("2 columns"),
        "{e}"
    );
}

/// A CSV line that is not UTF-8 is a bad record naming its line: an error,
/// or skipped with --skip-bad-records (the reader goes on after it).
#[test]
fn csv_line_not_utf8_is_a_bad_record() {
    let t = TempDir::new("csvutf8");
    let mut bytes = b"id,y,x0\n1,0,0.5\n".to_vec();
    bytes.extend_from_slice(b"2,1,\xff\xfe\n3,1,1.5\n");
    fs::write(t.0.join("a.csv"), &bytes).unwrap();
    let schema = || Schema::new(vec![], vec!["x0".into()], true);
    match read_all(&t.0, schema(), ReadOptions::default()) {
        Err(vfl_data::DataError::Line { line: 3, message, .. }) => assert_eq!(message, "not UTF-8"),
        other => panic!("{other:?}"),
    }
    let opts = ReadOptions {
        skip_bad_records: true,
        compression: Compression::Auto,
    };
    let d = DataDir::scan(&t.0, None).unwrap();
    let mut r = BlockReader::new(d.blocks().to_vec(), schema(), opts);
    let mut b = Batch::new(0, 1);
    assert_eq!(r.fill(&mut b, 100).unwrap(), 2);
    assert_eq!(r.skipped(), 1);
}

#[test]
fn csv_non_numeric_value() {
    let t = TempDir::new("csvnum");
    fs::write(t.0.join("a.csv"), "id,y,x0\n1,0,0.5\n2,1,oops\n").unwrap();
    let e = read_all(
        &t.0,
        Schema::new(vec![], vec!["x0".into()], true),
        ReadOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("a.csv") && e.contains("line 3") && e.contains("column `x0`") && e.contains("not a number"),
        "{e}"
    );
    assert!(!e.contains("oops"), "a feature value in an error: {e}");
}

#[test]
fn empty_data_directory_is_an_error() {
    let t = TempDir::new("empty");
    let e = DataDir::scan(&t.0, None).unwrap_err().to_string();
    assert!(e.contains("no data files") && e.contains("zero examples"), "{e}");
}

#[test]
fn wildcard_matching_nothing_is_an_error() {
    let t = TempDir::new("nomatch");
    write_block(&t.0, "00.tfrecord", &good_records(1));
    let e = DataDir::scan(&t.0, Some("part-*")).unwrap_err().to_string();
    assert!(e.contains("`part-*`"), "{e}");
}

#[test]
fn skip_bad_records_counts_and_continues() {
    let t = TempDir::new("skip");
    let mut recs = good_records(3);
    recs.insert(1, record("x", Value::Float(&[1.0])));
    recs.push(record("0", Value::Int64(&[1])));
    write_block(&t.0, "00.tfrecord", &recs);
    let d = DataDir::scan(&t.0, None).unwrap();
    let opts = ReadOptions {
        skip_bad_records: true,
        compression: Compression::Auto,
    };
    let mut r = BlockReader::new(d.blocks().to_vec(), leader_schema(), opts);
    let mut b = Batch::new(2, 0);
    assert_eq!(r.fill(&mut b, 100).unwrap(), 3);
    assert_eq!(r.skipped(), 2);
    assert!(r.skip_reasons()[0].contains("x_1"));
    assert!(r.skip_reasons()[1].contains("duplicate"));
    assert!(b.is_consistent());
}

#[test]
fn reads_fate_style_csv_pairs() {
    let t = TempDir::new("fate");
    fs::create_dir_all(t.0.join("g")).unwrap();
    fs::create_dir_all(t.0.join("h")).unwrap();
    fs::write(t.0.join("g/breast.csv"), "id,y,x0,x1\n133,1,0.25,-1.0\n273,0,1.5,2\n").unwrap();
    fs::write(t.0.join("h/breast.csv"), "id,x0,x1,x2\n133,1,2,3\n273,4,5,6\n").unwrap();
    let g = read_all(
        &t.0.join("g"),
        Schema::new(vec![], vec!["x0".into(), "x1".into()], true),
        ReadOptions::default(),
    )
    .unwrap();
    let h = read_all(
        &t.0.join("h"),
        Schema::new(vec![], vec!["x2".into(), "x0".into()], false),
        ReadOptions::default(),
    )
    .unwrap();
    assert_eq!(g.digest(), h.digest());
    assert_eq!(g.dense, vec![0.25, -1.0, 1.5, 2.0]);
    assert_eq!(h.dense, vec![3.0, 1.0, 6.0, 4.0]);
    assert_eq!(g.labels, vec![1.0, 0.0]);
}

/// Property tests of the encoders and decoders (one test binary).
#[path = "cases/roundtrip.rs"]
mod roundtrip;
