//! Joins between a leader and a follower over an in-memory pipe (the same
//! protocol code as over RA-TLS), checked against a reference join computed
//! here; faults and refusals with scripted peers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use vfl_data::DataDir;
use vfl_data::example::{Value, encode_example};
use vfl_data::tfrecord::{Compression, RecordReader, RecordWriter};
use vfl_join::input::OutputFormat;
use vfl_join::pb::{self, frame::Kind};
use vfl_join::protocol::{self, Dedupe};
use vfl_join::tags::TagKey;
use vfl_join::{JoinConfig, JoinError, Role};

const KEY: [u8; 32] = [5; 32];

/// A row of the test data: id and two features.
fn example(id: &str, leader: bool) -> Vec<u8> {
    let n: i64 = id.parse().unwrap();
    let mut out = Vec::new();
    let x = [n % 7, n % 11];
    if leader {
        encode_example(
            &[
                ("example_id", Value::Bytes(id.as_bytes())),
                ("y", Value::Int64(&[n % 2])),
                ("x_0", Value::Int64(&x)),
            ],
            &mut out,
        );
    } else {
        encode_example(
            &[("example_id", Value::Bytes(id.as_bytes())), ("x_0", Value::Int64(&x))],
            &mut out,
        );
    }
    out
}

fn csv_line(id: &str, leader: bool) -> String {
    let n: i64 = id.parse().unwrap();
    if leader {
        format!("{id},{},{}|{}\n", n % 2, n % 7, n % 11)
    } else {
        format!("{id},{}|{}\n", n % 7, n % 11)
    }
}

#[derive(Clone, Copy)]
enum Layout {
    TfRecord { files: usize, gzip: bool },
    Csv { files: usize },
}

/// Writes `ids` (in this order) under `dir` in `layout`.
fn write_input(dir: &Path, ids: &[String], leader: bool, layout: Layout) {
    std::fs::create_dir_all(dir).unwrap();
    let files = match layout {
        Layout::TfRecord { files, .. } | Layout::Csv { files } => files,
    };
    let per = ids.len().div_ceil(files);
    for (f, chunk) in ids.chunks(per.max(1)).enumerate() {
        match layout {
            Layout::TfRecord { gzip, .. } => {
                let mut buf = Vec::new();
                let mut w = RecordWriter::new(&mut buf);
                for id in chunk {
                    w.write_record(&example(id, leader)).unwrap();
                }
                let (name, bytes) = if gzip {
                    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    std::io::Write::write_all(&mut enc, &buf).unwrap();
                    (format!("in-{f:03}.tfrecord.gz"), enc.finish().unwrap())
                } else {
                    (format!("in-{f:03}.tfrecord"), buf)
                };
                std::fs::write(dir.join(name), bytes).unwrap();
            }
            Layout::Csv { .. } => {
                let mut s = String::from(if leader { "id,y,x_0\n" } else { "id,x_0\n" });
                for id in chunk {
                    s.push_str(&csv_line(id, leader));
                }
                std::fs::write(dir.join(format!("in-{f:03}.csv")), s).unwrap();
            }
        }
    }
}

fn config(role: Role, data: &Path, out: &Path, memory_limit: u64) -> JoinConfig {
    JoinConfig {
        role,
        data: DataDir::scan(data, None).unwrap(),
        output: out.to_path_buf(),
        application_id: "test".into(),
        rows_per_block: 100,
        format: OutputFormat::TfRecord,
        dedupe: Dedupe::Refuse,
        memory_limit,
        peer_timeout: Duration::from_secs(20),
        sealing: None,
        schema: None,
    }
}

async fn pair(
    l: JoinConfig,
    f: JoinConfig,
) -> (
    Result<vfl_join::JoinSummary, JoinError>,
    Result<vfl_join::JoinSummary, JoinError>,
) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let leader = tokio::spawn(protocol::run(l, a, TagKey::new(&KEY)));
    let follower = tokio::spawn(protocol::run(f, b, TagKey::new(&KEY)));
    (leader.await.unwrap(), follower.await.unwrap())
}

/// The ids of each joined block, in order.
fn read_output(dir: &Path) -> Vec<Vec<String>> {
    let d = DataDir::scan(dir, None).unwrap();
    let schema = vfl_data::Schema::new(vec![], vec![], false);
    d.blocks()
        .iter()
        .map(|b| {
            let mut r = RecordReader::open(&b.path, Compression::Auto).unwrap();
            let mut dec = vfl_data::example::ExampleDecoder::new(schema.clone());
            let mut ids = Vec::new();
            while let Some(rec) = r.next_record().unwrap() {
                let mut batch = vfl_data::Batch::new(0, 0);
                dec.decode_into(rec, &mut batch, vfl_data::RowSource { block: 0, record: 0 })
                    .unwrap();
                ids.push(String::from_utf8(batch.example_id(0).to_vec()).unwrap());
            }
            ids
        })
        .collect()
}

/// The reference: ids on both sides, ascending by tag.
fn reference(a: &[String], b: &[String]) -> Vec<String> {
    let key = TagKey::new(&KEY);
    let bset: std::collections::HashSet<&String> = b.iter().collect();
    let mut both: Vec<String> = a.iter().filter(|i| bset.contains(i)).cloned().collect();
    both.sort_by_key(|i| key.tag(i.as_bytes()));
    both.dedup();
    both
}

/// Leader ids 0..n minus every 5th; follower ids 0..n+extra minus every
/// 7th, shuffled.
fn unaligned(n: u64, extra: u64) -> (Vec<String>, Vec<String>) {
    let leader: Vec<String> = (0..n).filter(|i| i % 5 != 3).map(|i| i.to_string()).collect();
    let mut follower: Vec<String> = (0..n + extra).filter(|i| i % 7 != 2).map(|i| i.to_string()).collect();
    // A fixed shuffle.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..follower.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        follower.swap(i, (s % (i as u64 + 1)) as usize);
    }
    (leader, follower)
}

struct Case {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Case {
    fn new() -> Self {
        let d = tempfile::tempdir().unwrap();
        Case {
            root: d.path().to_path_buf(),
            _dir: d,
        }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.root.join(s)
    }
}

async fn join_layouts(l: Layout, f: Layout, memory_limit: u64) -> (Vec<Vec<String>>, Vec<Vec<String>>, Vec<String>) {
    let c = Case::new();
    let (li, fi) = unaligned(2000, 300);
    write_input(&c.p("l"), &li, true, l);
    write_input(&c.p("f"), &fi, false, f);
    let (a, b) = pair(
        config(Role::Leader, &c.p("l"), &c.p("lo"), memory_limit),
        config(Role::Follower, &c.p("f"), &c.p("fo"), memory_limit),
    )
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.digest, b.digest);
    assert_eq!((a.intersection, a.blocks), (b.intersection, b.blocks));
    assert_eq!(
        (a.rows, b.rows, a.peer_rows),
        (li.len() as u64, fi.len() as u64, fi.len() as u64)
    );
    (read_output(&c.p("lo")), read_output(&c.p("fo")), reference(&li, &fi))
}

#[tokio::test]
async fn unaligned_inputs_join_to_the_reference_on_both_sides() {
    let (l, f, want) = join_layouts(
        Layout::TfRecord { files: 3, gzip: false },
        Layout::TfRecord { files: 5, gzip: false },
        256 << 20,
    )
    .await;
    assert_eq!(l, f, "both sides hold the same ids in the same blocks");
    assert!(
        l.iter().rev().skip(1).all(|b| b.len() == 100),
        "full blocks but the last"
    );
    assert_eq!(l.concat(), want);
}

#[tokio::test]
async fn csv_gzip_many_files_and_spilling_give_the_same_join() {
    let base = join_layouts(
        Layout::TfRecord { files: 1, gzip: false },
        Layout::TfRecord { files: 1, gzip: false },
        256 << 20,
    )
    .await;
    for (l, f, mem) in [
        (Layout::Csv { files: 1 }, Layout::Csv { files: 4 }, 256 << 20),
        (
            Layout::TfRecord { files: 7, gzip: true },
            Layout::Csv { files: 2 },
            256 << 20,
        ),
        (
            Layout::TfRecord { files: 2, gzip: true },
            Layout::TfRecord { files: 9, gzip: false },
            64 << 10,
        ),
    ] {
        let got = join_layouts(l, f, mem).await;
        assert_eq!(got.0, base.0);
        assert_eq!(got.1, base.1);
    }
}

#[tokio::test]
async fn a_small_memory_limit_spills_into_many_partitions() {
    let c = Case::new();
    let (li, fi) = unaligned(3000, 0);
    write_input(&c.p("l"), &li, true, Layout::TfRecord { files: 2, gzip: false });
    write_input(&c.p("f"), &fi, false, Layout::Csv { files: 2 });
    let (a, b) = pair(
        config(Role::Leader, &c.p("l"), &c.p("lo"), 64 << 10),
        config(Role::Follower, &c.p("f"), &c.p("fo"), 64 << 10),
    )
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.partitions >= 4, "{} partitions", a.partitions);
    assert_eq!(a.partitions, b.partitions);
    assert_eq!(read_output(&c.p("lo")).concat(), reference(&li, &fi));
}

#[tokio::test]
async fn joined_csv_converts_to_examples_training_reads() {
    let c = Case::new();
    let ids: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    write_input(&c.p("l"), &ids, true, Layout::Csv { files: 1 });
    write_input(&c.p("f"), &ids, false, Layout::Csv { files: 1 });
    let (a, _) = pair(
        config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20),
        config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20),
    )
    .await;
    a.unwrap();
    let d = DataDir::scan(&c.p("lo"), None).unwrap();
    let schema = vfl_data::Schema::new(vec!["x_0".into()], vec![], true);
    let mut r = vfl_data::BlockReader::new(d.blocks().to_vec(), schema, Default::default());
    let mut batch = vfl_data::Batch::new(1, 0);
    let n = vfl_data::BatchSource::fill(&mut r, &mut batch, 100).unwrap();
    assert_eq!(n, 50);
    for row in 0..n {
        let id: i64 = std::str::from_utf8(batch.example_id(row)).unwrap().parse().unwrap();
        assert_eq!(batch.labels[row], (id % 2) as f32);
        let (a, b) = (batch.offsets[row] as usize, batch.offsets[row + 1] as usize);
        assert_eq!(&batch.ids[a..b], &[id % 7, id % 11]);
    }
}

#[tokio::test]
async fn csv_output_keeps_the_header_and_lines() {
    let c = Case::new();
    let ids: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    write_input(&c.p("l"), &ids, true, Layout::Csv { files: 2 });
    write_input(&c.p("f"), &ids[5..], false, Layout::Csv { files: 1 });
    let mut l = config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20);
    l.format = OutputFormat::Csv;
    let (a, b) = pair(l, config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20)).await;
    assert_eq!(a.unwrap().intersection, 25);
    b.unwrap();
    let text = std::fs::read_to_string(c.p("lo").join("part-000000.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,y,x_0"));
    let got: Vec<&str> = lines.collect();
    let want: Vec<String> = reference(&ids, &ids[5..])
        .iter()
        .map(|i| csv_line(i, true).trim_end().to_string())
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_duplicate_id_is_refused_naming_both_places() {
    let c = Case::new();
    let ids: Vec<String> = ["1", "2", "3", "2"].iter().map(|s| s.to_string()).collect();
    write_input(&c.p("l"), &ids, true, Layout::TfRecord { files: 1, gzip: false });
    write_input(&c.p("f"), &ids[..3], false, Layout::TfRecord { files: 1, gzip: false });
    let (a, b) = pair(
        config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20),
        config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20),
    )
    .await;
    match a {
        Err(JoinError::Duplicate { file, at, first_at, .. }) => {
            assert!(file.ends_with("in-000.tfrecord"), "{file}");
            assert_eq!((at.as_str(), first_at.as_str()), ("record 3", "record 1"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(b, Err(JoinError::PeerFailed(_))), "{b:?}");
    assert!(!c.p("lo").exists() && !c.p("fo").exists());
}

#[tokio::test]
async fn dedupe_first_keeps_the_first_row_of_an_id() {
    let c = Case::new();
    write_input(
        &c.p("l"),
        &["1".into(), "2".into(), "3".into()],
        true,
        Layout::Csv { files: 1 },
    );
    // The follower's id 2 twice, with different features: the first stays.
    std::fs::create_dir_all(c.p("f")).unwrap();
    std::fs::write(c.p("f").join("a.csv"), "id,x_0\n2,5\n3,6\n2,7\n").unwrap();
    let mut f = config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20);
    f.dedupe = Dedupe::First;
    let (a, b) = pair(config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20), f).await;
    let b = b.unwrap();
    assert_eq!((a.unwrap().intersection, b.duplicates), (2, 1));
    let d = DataDir::scan(&c.p("fo"), None).unwrap();
    let mut r = vfl_data::BlockReader::new(
        d.blocks().to_vec(),
        vfl_data::Schema::new(vec!["x_0".into()], vec![], false),
        Default::default(),
    );
    let mut batch = vfl_data::Batch::new(1, 0);
    vfl_data::BatchSource::fill(&mut r, &mut batch, 10).unwrap();
    let row = (0..2).find(|&r| batch.example_id(r) == b"2").unwrap();
    assert_eq!(batch.ids[batch.offsets[row] as usize], 5);
}

#[tokio::test]
async fn different_application_ids_are_refused() {
    let c = Case::new();
    let ids: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    write_input(&c.p("l"), &ids, true, Layout::Csv { files: 1 });
    write_input(&c.p("f"), &ids, false, Layout::Csv { files: 1 });
    let mut f = config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20);
    f.application_id = "other".into();
    let (a, _) = pair(config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20), f).await;
    assert!(
        matches!(
            a,
            Err(JoinError::Disagree {
                field: "application id",
                ..
            })
        ),
        "{a:?}"
    );
    assert!(!c.p("lo").exists());
}

#[tokio::test]
async fn an_empty_intersection_writes_nothing() {
    let c = Case::new();
    write_input(&c.p("l"), &["1".into(), "2".into()], true, Layout::Csv { files: 1 });
    write_input(&c.p("f"), &["3".into()], false, Layout::Csv { files: 1 });
    let (a, b) = pair(
        config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20),
        config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20),
    )
    .await;
    assert!(matches!(a, Err(JoinError::EmptyIntersection)), "{a:?}");
    assert!(matches!(b, Err(JoinError::EmptyIntersection)), "{b:?}");
    assert!(!c.p("lo").exists() && !c.p("fo").exists());
}

#[tokio::test]
async fn an_output_path_that_is_not_a_join_is_never_replaced() {
    let c = Case::new();
    write_input(&c.p("l"), &["1".into()], true, Layout::Csv { files: 1 });
    std::fs::create_dir_all(c.p("lo")).unwrap();
    std::fs::write(c.p("lo").join("precious.txt"), "x").unwrap();
    let (_, b) = tokio::io::duplex(64);
    drop(b);
    let (a, _) = tokio::io::duplex(64);
    let r = protocol::run(
        config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20),
        a,
        TagKey::new(&KEY),
    )
    .await;
    assert!(matches!(r, Err(JoinError::OutputExists { .. })), "{r:?}");
    assert!(c.p("lo").join("precious.txt").exists());
}

#[tokio::test]
async fn a_rerun_replaces_an_earlier_join() {
    let c = Case::new();
    let (li, fi) = unaligned(500, 0);
    write_input(&c.p("l"), &li, true, Layout::Csv { files: 1 });
    write_input(&c.p("f"), &fi, false, Layout::Csv { files: 1 });
    for _ in 0..2 {
        let (a, b) = pair(
            config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20),
            config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20),
        )
        .await;
        a.unwrap();
        b.unwrap();
    }
    assert_eq!(read_output(&c.p("lo")).concat(), reference(&li, &fi));
}

// Scripted peers.

async fn send(s: &mut DuplexStream, kind: Kind) {
    let body = pb::Frame { kind: Some(kind) }.encode_to_vec();
    s.write_all(&(body.len() as u32).to_le_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
}

async fn recv(s: &mut DuplexStream) -> Kind {
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        match pb::Frame::decode(&body[..]).unwrap().kind.unwrap() {
            Kind::Ping(_) => continue,
            k => return k,
        }
    }
}

fn hello() -> pb::Hello {
    pb::Hello {
        protocol_version: vfl_join::PROTOCOL_VERSION,
        role: "follower".into(),
        application_id: "test".into(),
        rows_per_block: 100,
        partition_bits: 0,
        join_id: String::new(),
    }
}

/// A leader against a scripted follower that says Hello and Ready, then
/// runs `script`.
async fn leader_against<F, Fut>(script: F) -> (Result<vfl_join::JoinSummary, JoinError>, Case)
where
    F: FnOnce(DuplexStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let c = Case::new();
    let ids: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    write_input(&c.p("l"), &ids, true, Layout::Csv { files: 1 });
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let peer = tokio::spawn(async move {
        send(&mut b, Kind::Hello(hello())).await;
        let Kind::Hello(_) = recv(&mut b).await else { panic!() };
        send(
            &mut b,
            Kind::Ready(pb::Ready {
                rows: 20,
                max_rows_per_block: 0,
            }),
        )
        .await;
        script(b).await;
    });
    let mut cfg = config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20);
    cfg.peer_timeout = Duration::from_secs(3);
    let r = protocol::run(cfg, a, TagKey::new(&KEY)).await;
    peer.abort();
    (r, c)
}

fn tags_of(ids: &[&str]) -> Vec<u8> {
    let key = TagKey::new(&KEY);
    let mut t: Vec<[u8; 16]> = ids.iter().map(|i| key.tag(i.as_bytes())).collect();
    t.sort();
    t.concat()
}

#[tokio::test]
async fn mismatched_digests_fail_the_join_and_write_nothing() {
    let (r, c) = leader_against(|mut b| async move {
        let Kind::Ready(_) = recv(&mut b).await else { panic!() };
        send(
            &mut b,
            Kind::Tags(pb::Tags {
                partition: 0,
                tags: tags_of(&["1", "2"]).into(),
                last: true,
            }),
        )
        .await;
        let Kind::Matches(_) = recv(&mut b).await else { panic!() };
        send(
            &mut b,
            Kind::Summary(pb::Summary {
                intersection: 2,
                blocks: 1,
                digest: vec![0; 32],
            }),
        )
        .await;
        let _ = recv(&mut b).await;
    })
    .await;
    assert!(
        matches!(r, Err(JoinError::Mismatch("digest of the joined id order"))),
        "{r:?}"
    );
    assert!(!c.p("lo").exists());
    assert_eq!(
        std::fs::read_dir(&c.root).unwrap().count(),
        1,
        "no staging left beside the output"
    );
}

#[tokio::test]
async fn a_peer_that_dies_mid_join_leaves_no_output() {
    let (r, c) = leader_against(|mut b| async move {
        let Kind::Ready(_) = recv(&mut b).await else { panic!() };
        send(
            &mut b,
            Kind::Tags(pb::Tags {
                partition: 0,
                tags: tags_of(&["1"]).into(),
                last: false,
            }),
        )
        .await;
        drop(b);
    })
    .await;
    assert!(matches!(r, Err(JoinError::PeerGone(_))), "{r:?}");
    assert!(!c.p("lo").exists());
    assert_eq!(std::fs::read_dir(&c.root).unwrap().count(), 1);
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let (r, _c) = leader_against(|b| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(b);
    })
    .await;
    assert!(matches!(r, Err(JoinError::Timeout(3))), "{r:?}");
}

#[tokio::test]
async fn unordered_tags_are_refused() {
    let (r, _c) = leader_against(|mut b| async move {
        let Kind::Ready(_) = recv(&mut b).await else { panic!() };
        let mut t = tags_of(&["1", "2"]);
        t.rotate_left(16);
        send(
            &mut b,
            Kind::Tags(pb::Tags {
                partition: 0,
                tags: t.into(),
                last: true,
            }),
        )
        .await;
        let _ = recv(&mut b).await;
    })
    .await;
    assert!(
        matches!(r, Err(JoinError::Protocol("tags not strictly ascending"))),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_partial_tag_is_refused() {
    let (r, _c) = leader_against(|mut b| async move {
        let Kind::Ready(_) = recv(&mut b).await else { panic!() };
        send(
            &mut b,
            Kind::Tags(pb::Tags {
                partition: 0,
                tags: vec![1u8; 17].into(),
                last: true,
            }),
        )
        .await;
        let _ = recv(&mut b).await;
    })
    .await;
    assert!(matches!(r, Err(JoinError::Protocol(_))), "{r:?}");
}

#[tokio::test]
async fn an_oversized_frame_is_refused() {
    let (r, _c) = leader_against(|mut b| async move {
        b.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    assert!(matches!(r, Err(JoinError::FrameTooLong { .. })), "{r:?}");
}

#[tokio::test]
async fn a_csv_file_without_an_id_column_is_named() {
    let c = Case::new();
    std::fs::create_dir_all(c.p("l")).unwrap();
    std::fs::write(c.p("l").join("a.csv"), "key,y\n1,0\n").unwrap();
    write_input(&c.p("f"), &["1".into()], false, Layout::Csv { files: 1 });
    let (a, _) = pair(
        config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20),
        config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20),
    )
    .await;
    match a {
        Err(JoinError::Data(vfl_data::DataError::Line { file, line, message })) => {
            assert!(
                file.ends_with("a.csv") && line == 1 && message.contains("id column missing"),
                "{file} {line} {message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_record_is_named_by_file_and_record() {
    let c = Case::new();
    let ids: Vec<String> = (0..5).map(|i| i.to_string()).collect();
    write_input(&c.p("l"), &ids, true, Layout::TfRecord { files: 1, gzip: false });
    let path = c.p("l").join("in-000.tfrecord");
    let mut bytes = std::fs::read(&path).unwrap();
    // The third record's data: past two whole records and its 12-byte header.
    let first = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 16;
    let second = u64::from_le_bytes(bytes[first..first + 8].try_into().unwrap()) as usize + 16;
    bytes[first + second + 12] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    write_input(&c.p("f"), &ids, false, Layout::Csv { files: 1 });
    let (a, _) = pair(
        config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20),
        config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20),
    )
    .await;
    match a {
        Err(JoinError::Data(vfl_data::DataError::Record { file, record, .. })) => {
            assert!(file.ends_with("in-000.tfrecord") && record == 2, "{file} {record}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!c.p("lo").exists());
}

#[tokio::test]
async fn a_peer_failure_reason_is_capped_and_stripped() {
    let (r, _c) = leader_against(|mut b| async move {
        let reason = format!("\u{1b}[31mevil\n{}", "x".repeat(5000));
        send(&mut b, Kind::Failure(pb::Failure { reason })).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    match r {
        Err(JoinError::PeerFailed(reason)) => {
            assert!(!reason.chars().any(|c| c.is_control()), "{reason:?}");
            assert!(reason.len() <= 303, "{}", reason.len());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn with_the_training_schema_a_malformed_row_fails_the_join_joined_or_not() {
    // Leader row "9" lacks the label; the follower does not hold id 9, so
    // the row would never be joined: the join fails all the same.
    let c = Case::new();
    std::fs::create_dir_all(c.p("l")).unwrap();
    std::fs::write(c.p("l").join("a.csv"), "id,y,x_0\n1,0,3\n9,,4\n").unwrap();
    write_input(&c.p("f"), &["1".into()], false, Layout::Csv { files: 1 });
    let mut l = config(Role::Leader, &c.p("l"), &c.p("lo"), 256 << 20);
    l.schema = Some(vfl_data::Schema::new(vec!["x_0".into()], vec![], true));
    let (a, _) = pair(l, config(Role::Follower, &c.p("f"), &c.p("fo"), 256 << 20)).await;
    match a {
        Err(JoinError::Data(vfl_data::DataError::Line { line, message, .. })) => {
            assert_eq!(line, 3, "{message}");
            assert!(message.contains("`y`"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sealed_block_sizes_depend_on_row_counts_only() {
    use vfl_join::output::{BlockWriter, OutputSealing};
    let c = Case::new();
    let sealer = std::sync::Arc::new(vfl_attest::seal::Sealer::from_key([3; 32], "test").unwrap());
    let sizes = |name: &str, rows: &[usize]| {
        let dir = c.p(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = BlockWriter::new(
            &dir,
            OutputFormat::TfRecord,
            3,
            None,
            Some(OutputSealing {
                sealer: sealer.clone(),
                context: vfl_attest::seal::Context::joined_block("app", "leader", "p"),
            }),
            TagKey::new(&KEY).digest(),
            1000,
        );
        for (i, &n) in rows.iter().enumerate() {
            w.push(i.to_string().as_bytes(), &vec![7u8; n]).unwrap();
        }
        w.finish().unwrap();
        let mut v: Vec<(String, u64)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    };
    // A planted 1000-byte row among small ones, or none: the same sizes.
    let a = sizes("a", &[10, 1000, 12, 11, 10]);
    let b = sizes("b", &[10, 11, 12, 11, 10]);
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    // Training's reader strips the padding.
    let plain = sealer
        .open_file(
            &std::fs::read(c.p("a").join("part-000000.tfrecord.sealed")).unwrap(),
            &vfl_attest::seal::Context::joined_block("app", "leader", "p").with("block", "part-000000"),
            &c.p("a"),
        )
        .unwrap()
        .1;
    let block = vfl_data::blocks::unpad_sealed(&plain).unwrap();
    assert_eq!(block.len(), 10 + 1000 + 12 + 3 * 16);
}

#[test]
fn a_padded_block_with_a_wrong_length_is_refused() {
    assert!(vfl_data::blocks::unpad_sealed(&[1, 2, 3]).is_err());
    let mut p = vfl_data::blocks::pad_sealed(b"abc", 10);
    assert_eq!(vfl_data::blocks::unpad_sealed(&p).unwrap(), b"abc");
    p[0] = 200;
    assert!(vfl_data::blocks::unpad_sealed(&p).is_err());
}

#[path = "cases/props.rs"]
mod props;
