//! The join between the two sides, over any ordered byte stream (an
//! RA-TLS connection in `vfl join`, an in-memory pipe in tests):
//!
//! 1. Hello both ways: protocol version, roles, application id, rows per
//!    block, partition bits (the larger wins), the leader's join id.
//! 2. Each side reads its input, tags every id and spills the rows by tag
//!    partition ([`crate::spill`]); Ping keeps the link alive meanwhile;
//!    Ready (with its row count) when done.
//! 3. For each partition in order, the follower sends its distinct tags
//!    (ascending, in chunks), the leader answers each chunk with a bitmap of
//!    the tags it holds too. Both then write the rows of the partition's
//!    intersection, ascending by tag, to their outputs: partition order is
//!    tag order, so the joined order is ascending tag order on both sides.
//! 4. Summary both ways (intersection size, blocks, digest of the joined id
//!    order); any difference fails both sides. Then each commits its output
//!    and says Done.
//!
//! Frames are a u32 length (little endian) and a `pb::Frame`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use vfl_data::DataDir;

use crate::input::{self, OutputFormat};
use crate::output::{BlockWriter, OutputSealing, Staging, Written};
use crate::pb::{self, frame::Kind};
use crate::spill::{self, Partition, Spill};
use crate::tags::{TAG_LEN, Tag, TagKey, partition};
use crate::{JoinError, PROTOCOL_VERSION};

/// The largest frame either side accepts: a full Tags chunk and its
/// framing (nothing legitimate is larger).
pub const MAX_FRAME: usize = CHUNK_TAGS * TAG_LEN + 1024;

/// The spill file's name in the staging directory.
const SPILL: &str = ".spill";

/// Tags per chunk.
pub const CHUNK_TAGS: usize = 65536;

/// How often an idle side says it is alive.
pub const PING: Duration = Duration::from_secs(5);

/// Which side this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

/// What to do with an id that appears twice in one side's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dedupe {
    /// Fail, naming both places.
    Refuse,
    /// Keep the first in input order.
    First,
}

/// One side's settings.
pub struct JoinConfig {
    pub role: Role,
    pub data: DataDir,
    pub output: PathBuf,
    pub application_id: String,
    pub rows_per_block: u64,
    pub format: OutputFormat,
    pub dedupe: Dedupe,
    pub memory_limit: u64,
    pub peer_timeout: Duration,
    /// Seals the joined blocks (a model key is in force); the join id is
    /// added to the context.
    pub sealing: Option<OutputSealing>,
    /// The training schema every input row is checked against (None: only
    /// the id). With it, a row training would refuse fails the join, joined
    /// or not; without it, such a row fails only training, and only if it
    /// was joined, which tells this side's operator that it was.
    pub schema: Option<vfl_data::Schema>,
}

/// What a join did.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinSummary {
    pub join_id: String,
    pub rows: u64,
    pub duplicates: u64,
    pub peer_rows: u64,
    pub intersection: u64,
    pub blocks: u64,
    /// Hex SHA-256 of the joined id order (equal on both sides).
    pub digest: String,
    pub partitions: u32,
    pub seconds: f64,
}

fn kind_name(k: &Option<Kind>) -> &'static str {
    match k {
        None => "an empty frame",
        Some(Kind::Hello(_)) => "Hello",
        Some(Kind::Ready(_)) => "Ready",
        Some(Kind::Tags(_)) => "Tags",
        Some(Kind::Matches(_)) => "Matches",
        Some(Kind::Summary(_)) => "Summary",
        Some(Kind::Done(_)) => "Done",
        Some(Kind::Ping(_)) => "Ping",
        Some(Kind::Failure(_)) => "Failure",
    }
}

/// Reads frames into a channel until the stream ends or fails.
async fn read_frames<R: AsyncRead + Unpin>(mut r: R, tx: mpsc::Sender<Result<Kind, JoinError>>) {
    let mut body = Vec::new();
    loop {
        let mut len = [0u8; 4];
        let res = match r.read_exact(&mut len).await {
            Err(e) => Err(JoinError::PeerGone(e.to_string())),
            Ok(_) => {
                let n = u32::from_le_bytes(len) as usize;
                if n > MAX_FRAME {
                    Err(JoinError::FrameTooLong { len: n, max: MAX_FRAME })
                } else {
                    body.resize(n, 0);
                    match r.read_exact(&mut body).await {
                        Err(e) => Err(JoinError::PeerGone(e.to_string())),
                        Ok(_) => decode(&body),
                    }
                }
            }
        };
        let stop = res.is_err();
        if tx.send(res).await.is_err() || stop {
            return;
        }
    }
}

/// One frame's body, decoded and checked to hold a message.
pub fn decode(body: &[u8]) -> Result<Kind, JoinError> {
    pb::Frame::decode(body)?
        .kind
        .ok_or(JoinError::Protocol("an empty frame"))
}

struct Link<W> {
    w: W,
    rx: mpsc::Receiver<Result<Kind, JoinError>>,
    timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
}

impl<W: AsyncWrite + Unpin> Link<W> {
    async fn send(&mut self, kind: Kind) -> Result<(), JoinError> {
        let body = pb::Frame { kind: Some(kind) }.encode_to_vec();
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let written = match self.w.write_all(&out).await {
            Ok(()) => self.w.flush().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self.why_gone(e).await),
        }
    }

    /// Why a write failed: the peer's Failure when it sent one before it
    /// closed (its reason is more useful than a broken pipe).
    async fn why_gone(&mut self, e: std::io::Error) -> JoinError {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(f)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match f {
                Ok(Kind::Failure(f)) => return JoinError::PeerFailed(vfl_bridge::sanitize(&f.reason, 300)),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        JoinError::PeerGone(e.to_string())
    }

    /// The next frame other than Ping; the peer's Failure as an error.
    async fn recv(&mut self) -> Result<Kind, JoinError> {
        loop {
            match tokio::time::timeout(self.timeout, self.rx.recv()).await {
                Err(_) => return Err(JoinError::Timeout(self.timeout.as_secs())),
                Ok(None) => return Err(JoinError::PeerGone("the connection closed".into())),
                Ok(Some(Err(e))) => return Err(e),
                Ok(Some(Ok(Kind::Ping(_)))) => continue,
                Ok(Some(Ok(Kind::Failure(f)))) => {
                    return Err(JoinError::PeerFailed(vfl_bridge::sanitize(&f.reason, 300)));
                }
                Ok(Some(Ok(k))) => return Ok(k),
            }
        }
    }

    /// Waits for `work` to finish, sending Ping meanwhile and watching the
    /// peer (which may only ping, or say Ready, or fail).
    async fn wait_for<T>(
        &mut self,
        work: tokio::task::JoinHandle<Result<T, JoinError>>,
        abort: &AtomicBool,
        peer_ready: &mut Option<pb::Ready>,
    ) -> Result<T, JoinError> {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(PING.min(self.timeout / 4).max(Duration::from_millis(100)));
        let mut last_heard = Instant::now();
        let mut finished = false;
        let result = loop {
            tokio::select! {
                r = &mut work => {
                    finished = true;
                    break r.map_err(|_| JoinError::Config("the input reader stopped unexpectedly".into())).and_then(|r| r);
                }
                _ = tick.tick() => {
                    if last_heard.elapsed() > self.timeout {
                        break Err(JoinError::Timeout(self.timeout.as_secs()));
                    }
                    if let Err(e) = self.send(Kind::Ping(pb::Ping {})).await {
                        break Err(e);
                    }
                }
                f = self.rx.recv() => {
                    last_heard = Instant::now();
                    match f {
                        None => break Err(JoinError::PeerGone("the connection closed".into())),
                        Some(Err(e)) => break Err(e),
                        Some(Ok(Kind::Ping(_))) => {}
                        Some(Ok(Kind::Failure(f))) => break Err(JoinError::PeerFailed(vfl_bridge::sanitize(&f.reason, 300))),
                        Some(Ok(Kind::Ready(r))) if peer_ready.is_none() => *peer_ready = Some(r),
                        Some(Ok(k)) => break Err(JoinError::Unexpected { expected: "Ping or Ready", got: kind_name(&Some(k)) }),
                    }
                }
            }
        };
        if result.is_err() && !finished {
            // Stop the reading thread and wait for it (it holds the spill).
            abort.store(true, Ordering::Relaxed);
            let _ = (&mut work).await;
        }
        result
    }
}

impl<W> Drop for Link<W> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Runs one side of a join over `stream` with tag key `key`; on success
/// the output is in place.
pub async fn run<S>(cfg: JoinConfig, stream: S, key: TagKey) -> Result<JoinSummary, JoinError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(4);
    let reader = tokio::spawn(read_frames(r, tx));
    let mut link = Link {
        w,
        rx,
        timeout: cfg.peer_timeout,
        reader,
    };
    let result = drive(cfg, &mut link, key).await;
    if let Err(e) = &result {
        match e {
            JoinError::PeerFailed(_) | JoinError::PeerGone(_) => {}
            e => {
                let _ = link.send(Kind::Failure(pb::Failure { reason: e.for_peer() })).await;
            }
        }
    }
    result
}

fn agree(field: &'static str, ours: impl ToString, theirs: impl ToString) -> Result<(), JoinError> {
    let (ours, theirs) = (ours.to_string(), vfl_bridge::sanitize(&theirs.to_string(), 100));
    if ours == theirs {
        Ok(())
    } else {
        Err(JoinError::Disagree { field, ours, theirs })
    }
}

/// What both sides agreed in the hellos.
struct Agreed {
    /// Partition bits (the larger of the two sides').
    bits: u32,
    join_id: String,
}

/// The next frame, which must be of the kind `pick` takes.
async fn expect<W: AsyncWrite + Unpin, T>(
    link: &mut Link<W>,
    expected: &'static str,
    pick: impl FnOnce(Kind) -> Result<T, Kind>,
) -> Result<T, JoinError> {
    let k = link.recv().await?;
    pick(k).map_err(|k| JoinError::Unexpected {
        expected,
        got: kind_name(&Some(k)),
    })
}

/// The join, phase by phase: [`hello`], [`read_input`], [`ready`],
/// [`match_partitions`], [`compare_and_commit`].
async fn drive<W: AsyncWrite + Unpin>(
    cfg: JoinConfig,
    link: &mut Link<W>,
    key: TagKey,
) -> Result<JoinSummary, JoinError> {
    let start = Instant::now();
    if cfg.peer_timeout < Duration::from_secs(1) {
        return Err(JoinError::Config("--peer-timeout must be at least 1 s".into()));
    }
    if cfg.rows_per_block == 0 {
        return Err(JoinError::Config("--rows-per-block must be at least 1".into()));
    }
    let staging = Staging::prepare(&cfg.output)?;
    let own_bits = spill::partition_bits(input::input_bytes(&cfg.data)?, cfg.memory_limit);
    let agreed = hello(&cfg, link, own_bits).await?;
    tracing::info!(role = cfg.role.name(), join = %agreed.join_id, partitions = 1u32 << agreed.bits, "join: reading the input");
    let key = Arc::new(key);
    let mut peer_ready = None;
    let (spill, scanned) = read_input(&cfg, link, &key, agreed.bits, &staging, &mut peer_ready).await?;
    let (peer_ready, rows_per_block) = ready(&cfg, link, &scanned, peer_ready).await?;
    tracing::info!(rows = scanned.rows, peer_rows = peer_ready.rows, "join: matching");
    let sealing = cfg.sealing.clone().map(|s| OutputSealing {
        sealer: s.sealer,
        context: s.context.with("join", &agreed.join_id),
    });
    let writer = BlockWriter::new(
        staging.dir(),
        cfg.format,
        rows_per_block,
        scanned.header.clone(),
        sealing,
        key.digest(),
        scanned.max_row,
    );
    let matched = match_partitions(&cfg, link, agreed.bits, Arc::new(spill), &scanned, writer).await?;
    // The spill is never part of the output.
    let _ = std::fs::remove_file(staging.dir().join(SPILL));
    let summary = JoinSummary {
        join_id: agreed.join_id,
        rows: scanned.rows,
        duplicates: matched.duplicates,
        peer_rows: peer_ready.rows,
        intersection: matched.intersection,
        blocks: matched.written.blocks,
        digest: hex::encode(matched.written.digest),
        partitions: 1u32 << agreed.bits,
        seconds: 0.0,
    };
    compare_and_commit(&cfg, link, staging, &matched, &summary, rows_per_block).await?;
    Ok(JoinSummary {
        seconds: start.elapsed().as_secs_f64(),
        ..summary
    })
}

/// Phase 1: Hello both ways (the follower speaks first) and the checks:
/// protocol version, roles, application id, rows per block; partition bits
/// and the leader's join id are taken.
async fn hello<W: AsyncWrite + Unpin>(
    cfg: &JoinConfig,
    link: &mut Link<W>,
    own_bits: u32,
) -> Result<Agreed, JoinError> {
    let hello = pb::Hello {
        protocol_version: PROTOCOL_VERSION,
        role: cfg.role.name().into(),
        application_id: cfg.application_id.clone(),
        rows_per_block: cfg.rows_per_block,
        partition_bits: own_bits,
        join_id: match cfg.role {
            Role::Leader => vfl_attest::random_hex(16),
            Role::Follower => String::new(),
        },
    };
    if cfg.role == Role::Follower {
        link.send(Kind::Hello(hello.clone())).await?;
    }
    let theirs = expect(link, "Hello", |k| match k {
        Kind::Hello(h) => Ok(h),
        k => Err(k),
    })
    .await?;
    if cfg.role == Role::Leader {
        link.send(Kind::Hello(hello.clone())).await?;
    }
    agree("protocol version", PROTOCOL_VERSION, theirs.protocol_version)?;
    let peer_role = match cfg.role {
        Role::Leader => Role::Follower,
        Role::Follower => Role::Leader,
    };
    agree("role", peer_role.name(), &theirs.role)?;
    agree("application id", &cfg.application_id, &theirs.application_id)?;
    agree("rows per block", cfg.rows_per_block, theirs.rows_per_block)?;
    if theirs.partition_bits > spill::MAX_BITS {
        return Err(JoinError::Protocol("partition bits above the limit"));
    }
    let join_id = match cfg.role {
        Role::Leader => hello.join_id,
        Role::Follower => theirs.join_id,
    };
    if join_id.len() != 32 || !join_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JoinError::Protocol("the join id is not 16 bytes of hex"));
    }
    Ok(Agreed {
        bits: own_bits.max(theirs.partition_bits),
        join_id,
    })
}

/// Phase 2: reads the input on a blocking thread, tags every id and spills
/// the rows by tag partition, while the link answers pings (a peer's Ready
/// that comes meanwhile is kept in `peer_ready`).
async fn read_input<W: AsyncWrite + Unpin>(
    cfg: &JoinConfig,
    link: &mut Link<W>,
    key: &Arc<TagKey>,
    bits: u32,
    staging: &Staging,
    peer_ready: &mut Option<pb::Ready>,
) -> Result<(Spill, input::Scanned), JoinError> {
    let abort = Arc::new(AtomicBool::new(false));
    let spill_path = staging.dir().join(SPILL);
    let buffer_budget = cfg.memory_limit / 4;
    let data = cfg.data.clone();
    let format = cfg.format;
    let stop = abort.clone();
    let k = key.clone();
    let blocks_total = data.blocks().len();
    let sealed = cfg.sealing.is_some();
    let schema = cfg
        .schema
        .clone()
        .unwrap_or_else(|| vfl_data::Schema::new(Vec::new(), Vec::new(), false));
    let work = tokio::task::spawn_blocking(move || -> Result<(Spill, input::Scanned), JoinError> {
        let mut spill = Spill::create(&spill_path, bits, buffer_budget)?;
        let mut report = Every::new(Duration::from_secs(5));
        let rows = std::cell::Cell::new(0u64);
        let scanned = input::scan(
            &data,
            format,
            &schema,
            sealed,
            |row| {
                if stop.load(Ordering::Relaxed) {
                    return Err(JoinError::PeerGone("stopped".into()));
                }
                rows.set(rows.get() + 1);
                spill.push(&k.tag(row.id), row.block, row.pos, row.id, row.payload)
            },
            |b| {
                if let Some((s, eta_s)) = report.due((b + 1) as f64 / blocks_total.max(1) as f64) {
                    let rows = rows.get();
                    let rows_per_s = (rows as f64 / s) as u64;
                    tracing::info!(rows, rows_per_s, eta_s, "join: reading");
                }
            },
        )?;
        spill.finish()?;
        Ok((spill, scanned))
    });
    link.wait_for(work, &abort, peer_ready).await
}

/// Phase 2's end: Ready both ways (row counts, and the most rows per block
/// a side can seal); the rows per block both write.
async fn ready<W: AsyncWrite + Unpin>(
    cfg: &JoinConfig,
    link: &mut Link<W>,
    scanned: &input::Scanned,
    peer_ready: Option<pb::Ready>,
) -> Result<(pb::Ready, u64), JoinError> {
    // Sealed blocks are padded to rows x the longest row; cap the rows per
    // block so one fits a quarter of the memory limit.
    let own_cap = match cfg.sealing {
        Some(_) => (cfg.memory_limit / 4 / (scanned.max_row + 64)).max(1),
        None => 0,
    };
    link.send(Kind::Ready(pb::Ready {
        rows: scanned.rows,
        max_rows_per_block: own_cap,
    }))
    .await?;
    let peer_ready = match peer_ready {
        Some(r) => r,
        None => {
            expect(link, "Ready", |k| match k {
                Kind::Ready(r) => Ok(r),
                k => Err(k),
            })
            .await?
        }
    };
    let rows_per_block = [cfg.rows_per_block, own_cap, peer_ready.max_rows_per_block]
        .into_iter()
        .filter(|&c| c > 0)
        .min()
        .unwrap_or(cfg.rows_per_block);
    if rows_per_block < cfg.rows_per_block {
        tracing::info!(
            rows_per_block,
            "join: fewer rows per block, so that a padded sealed block fits the memory limit"
        );
    }
    Ok((peer_ready, rows_per_block))
}

/// What phase 3 produced.
struct Matched {
    written: Written,
    intersection: u64,
    duplicates: u64,
}

/// Phase 3: partition by partition, the distinct tags (duplicates dropped),
/// the intersection with the peer's, and its rows written in tag order.
async fn match_partitions<W: AsyncWrite + Unpin>(
    cfg: &JoinConfig,
    link: &mut Link<W>,
    bits: u32,
    spill: Arc<Spill>,
    scanned: &input::Scanned,
    writer: BlockWriter,
) -> Result<Matched, JoinError> {
    let csv_columns = Arc::new(scanned.csv_columns.clone());
    let mut writer = Some(writer);
    let (mut duplicates, mut intersection) = (0u64, 0u64);
    let mut report = Every::new(Duration::from_secs(5));
    let parts = 1u32 << bits;
    for p in 0..parts {
        let s = spill.clone();
        let dedupe = cfg.dedupe;
        let blocks = cfg.data.blocks().to_vec();
        let (part, keep, dups) = tokio::task::spawn_blocking(move || -> Result<_, JoinError> {
            let part = s.load(p)?;
            let (keep, dups) = distinct(&part, dedupe, &blocks)?;
            Ok((part, keep, dups))
        })
        .await
        .map_err(|_| JoinError::Config("loading a partition stopped unexpectedly".into()))??;
        duplicates += dups;
        let matched = match cfg.role {
            Role::Follower => follower_partition(link, p, &part, &keep).await?,
            Role::Leader => leader_partition(link, p, bits, &part, &keep).await?,
        };
        intersection += matched.len() as u64;
        let w = writer.take().ok_or(JoinError::Protocol("writer lost"))?;
        let (columns, blocks, format) = (csv_columns.clone(), cfg.data.blocks().to_vec(), cfg.format);
        let w = tokio::task::spawn_blocking(move || write_partition(w, &part, &matched, format, &columns, &blocks))
            .await
            .map_err(|_| JoinError::Config("writing a partition stopped unexpectedly".into()))??;
        writer = Some(w);
        if let Some((_, eta_s)) = report.due(f64::from(p + 1) / f64::from(parts)) {
            tracing::info!(partition = p + 1, of = parts, intersection, eta_s, "join: matching");
        }
    }
    let written = writer.take().ok_or(JoinError::Protocol("writer lost"))?.finish()?;
    Ok(Matched {
        written,
        intersection,
        duplicates,
    })
}

/// Writes the matched rows of one partition (CSV rows converted to
/// tf.Examples for a TFRecord output).
fn write_partition(
    mut w: BlockWriter,
    part: &Partition,
    matched: &[usize],
    format: OutputFormat,
    columns: &[Option<Vec<String>>],
    blocks: &[vfl_data::BlockFile],
) -> Result<BlockWriter, JoinError> {
    let mut conv = input::Converter::default();
    let mut example = Vec::new();
    for &i in matched {
        let e = &part.entries[i];
        let payload = match (format, columns.get(e.block as usize)) {
            (OutputFormat::TfRecord, Some(Some(cols))) => {
                let line = std::str::from_utf8(part.payload(e))
                    .map_err(|_| JoinError::SpillFormat("a CSV row that is not UTF-8"))?;
                conv.convert(cols, line, &mut example).map_err(|err| {
                    let file = blocks.get(e.block as usize).map(|b| b.path.display().to_string());
                    err.at_line(&file.unwrap_or_default(), e.pos)
                })?;
                &example[..]
            }
            _ => part.payload(e),
        };
        w.push(part.id(e), payload)?;
    }
    Ok(w)
}

/// Phase 4: Summary both ways (intersection size, blocks, digest of the
/// joined id order; any difference fails both sides), then this side's
/// output is committed and Done said.
async fn compare_and_commit<W: AsyncWrite + Unpin>(
    cfg: &JoinConfig,
    link: &mut Link<W>,
    staging: Staging,
    m: &Matched,
    summary: &JoinSummary,
    rows_per_block: u64,
) -> Result<(), JoinError> {
    let digest = m.written.digest.to_vec();
    link.send(Kind::Summary(pb::Summary {
        intersection: m.intersection,
        blocks: m.written.blocks,
        digest: digest.clone(),
    }))
    .await?;
    let peer = expect(link, "Summary", |k| match k {
        Kind::Summary(s) => Ok(s),
        k => Err(k),
    })
    .await?;
    if peer.intersection != m.intersection {
        return Err(JoinError::Mismatch("intersection size"));
    }
    if peer.blocks != m.written.blocks {
        return Err(JoinError::Mismatch("block count"));
    }
    if peer.digest != digest {
        return Err(JoinError::Mismatch("digest of the joined id order"));
    }
    if m.intersection == 0 {
        return Err(JoinError::EmptyIntersection);
    }
    staging.commit(&serde_json::json!({
        "join_id": summary.join_id,
        "role": cfg.role.name(),
        "application_id": cfg.application_id,
        "rows_read": summary.rows,
        "duplicates_dropped": summary.duplicates,
        "peer_rows_read": summary.peer_rows,
        "intersection": summary.intersection,
        "blocks": summary.blocks,
        "rows_per_block": rows_per_block,
        "format": cfg.format.name(),
        "sealed": cfg.sealing.is_some(),
        "order": "ascending HMAC-SHA-256 tag under this join's key",
        "digest": summary.digest,
    }))?;
    link.send(Kind::Done(pb::Done {})).await?;
    match link.recv().await {
        Ok(Kind::Done(_)) => {}
        Ok(k) => tracing::warn!(got = kind_name(&Some(k)), "join: the peer did not confirm its commit"),
        Err(e) => tracing::warn!(error = %e, "join: the peer did not confirm its commit"),
    }
    Ok(())
}

/// Progress reports at most once per interval: the seconds so far and the
/// estimated seconds left, given the fraction done.
struct Every {
    start: Instant,
    last: Instant,
    interval: Duration,
}

impl Every {
    fn new(interval: Duration) -> Self {
        Every {
            start: Instant::now(),
            last: Instant::now(),
            interval,
        }
    }

    fn due(&mut self, done: f64) -> Option<(f64, u64)> {
        if self.last.elapsed() <= self.interval {
            return None;
        }
        self.last = Instant::now();
        let s = self.start.elapsed().as_secs_f64();
        Some((s, (s / done.max(1e-9) - s) as u64))
    }
}

/// The entries of `part` that are kept (index list, ascending by tag, one
/// per tag), and how many duplicates were dropped.
fn distinct(part: &Partition, dedupe: Dedupe, blocks: &[vfl_data::BlockFile]) -> Result<(Vec<usize>, u64), JoinError> {
    let mut keep: Vec<usize> = Vec::with_capacity(part.entries.len());
    let mut dups = 0;
    for (i, e) in part.entries.iter().enumerate() {
        if let Some(&j) = keep.last() {
            let first = &part.entries[j];
            if first.tag == e.tag {
                if dedupe == Dedupe::Refuse {
                    let place = |b: u32, pos: u64| match blocks.get(b as usize) {
                        Some(f) => (f.path.display().to_string(), input::describe(f, pos)),
                        None => ("?".into(), format!("row {pos}")),
                    };
                    let (file, at) = place(e.block, e.pos);
                    let (first_file, first_at) = place(first.block, first.pos);
                    return Err(JoinError::Duplicate {
                        file,
                        at,
                        first_file,
                        first_at,
                    });
                }
                dups += 1;
                continue;
            }
        }
        keep.push(i);
    }
    Ok((keep, dups))
}

async fn follower_partition<W: AsyncWrite + Unpin>(
    link: &mut Link<W>,
    p: u32,
    part: &Partition,
    keep: &[usize],
) -> Result<Vec<usize>, JoinError> {
    let mut matched = Vec::new();
    let mut chunks = keep.chunks(CHUNK_TAGS).peekable();
    let empty: &[usize] = &[];
    let mut first = true;
    loop {
        let chunk = match chunks.next() {
            Some(c) => c,
            None if first => empty,
            None => break,
        };
        first = false;
        let last = chunks.peek().is_none();
        let mut tags = Vec::with_capacity(chunk.len() * TAG_LEN);
        for &i in chunk {
            tags.extend_from_slice(&part.entries[i].tag);
        }
        link.send(Kind::Tags(pb::Tags {
            partition: p,
            tags: tags.into(),
            last,
        }))
        .await?;
        let m = match link.recv().await? {
            Kind::Matches(m) => m,
            k => {
                return Err(JoinError::Unexpected {
                    expected: "Matches",
                    got: kind_name(&Some(k)),
                });
            }
        };
        for (hit, &i) in read_matches(p, chunk.len(), &m)?.into_iter().zip(chunk) {
            if hit {
                matched.push(i);
            }
        }
        if last {
            break;
        }
    }
    Ok(matched)
}

async fn leader_partition<W: AsyncWrite + Unpin>(
    link: &mut Link<W>,
    p: u32,
    bits: u32,
    part: &Partition,
    keep: &[usize],
) -> Result<Vec<usize>, JoinError> {
    let own: Vec<Tag> = keep.iter().map(|&i| part.entries[i].tag).collect();
    let mut m = Matcher::new(p, bits, &own);
    loop {
        let t = match link.recv().await? {
            Kind::Tags(t) => t,
            k => {
                return Err(JoinError::Unexpected {
                    expected: "Tags",
                    got: kind_name(&Some(k)),
                });
            }
        };
        let bits = m.answer(&t)?;
        link.send(Kind::Matches(pb::Matches {
            partition: p,
            bits: bits.into(),
        }))
        .await?;
        if t.last {
            return Ok(m.matched().iter().map(|&j| keep[j]).collect());
        }
    }
}

/// The leader's side of one partition, without I/O: answers the follower's
/// Tags chunks against the leader's own distinct tags (ascending).
pub struct Matcher<'a> {
    partition: u32,
    bits: u32,
    own: &'a [Tag],
    cursor: usize,
    prev: Option<Tag>,
    matched: Vec<usize>,
    done: bool,
}

impl<'a> Matcher<'a> {
    pub fn new(partition: u32, bits: u32, own: &'a [Tag]) -> Self {
        Matcher {
            partition,
            bits,
            own,
            cursor: 0,
            prev: None,
            matched: Vec::new(),
            done: false,
        }
    }

    /// The bitmap answering one chunk (bit i, LSB first: the chunk's i-th
    /// tag is also ours), or why the chunk is refused.
    pub fn answer(&mut self, t: &pb::Tags) -> Result<Vec<u8>, JoinError> {
        if self.done {
            return Err(JoinError::Protocol("Tags after the partition's last chunk"));
        }
        if t.partition != self.partition {
            return Err(JoinError::Protocol("Tags for another partition than the current one"));
        }
        if !t.tags.len().is_multiple_of(TAG_LEN) || t.tags.len() / TAG_LEN > CHUNK_TAGS {
            return Err(JoinError::Protocol(
                "a Tags frame that is not a whole number of tags within the chunk size",
            ));
        }
        let n = t.tags.len() / TAG_LEN;
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for (k, raw) in t.tags.chunks_exact(TAG_LEN).enumerate() {
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(raw);
            if partition(&tag, self.bits) != self.partition {
                return Err(JoinError::Protocol("a tag outside its partition"));
            }
            if self.prev.is_some_and(|q| q >= tag) {
                return Err(JoinError::Protocol("tags not strictly ascending"));
            }
            self.prev = Some(tag);
            while self.cursor < self.own.len() && self.own[self.cursor] < tag {
                self.cursor += 1;
            }
            if self.cursor < self.own.len() && self.own[self.cursor] == tag {
                self.matched.push(self.cursor);
                bitmap[k / 8] |= 1 << (k % 8);
                self.cursor += 1;
            }
        }
        self.done = t.last;
        Ok(bitmap)
    }

    /// Indices into the leader's tags that matched so far (ascending).
    pub fn matched(&self) -> &[usize] {
        &self.matched
    }
}

/// The follower's reading of a Matches frame for a chunk of `chunk_len`
/// tags of partition `p`: which of them the leader holds.
pub fn read_matches(p: u32, chunk_len: usize, m: &pb::Matches) -> Result<Vec<bool>, JoinError> {
    if m.partition != p || m.bits.len() != chunk_len.div_ceil(8) {
        return Err(JoinError::Protocol(
            "a Matches frame that does not answer the chunk sent",
        ));
    }
    if !chunk_len.is_multiple_of(8) && m.bits[m.bits.len() - 1] >> (chunk_len % 8) != 0 {
        return Err(JoinError::Protocol("a Matches frame with bits beyond its chunk"));
    }
    Ok((0..chunk_len).map(|k| m.bits[k / 8] >> (k % 8) & 1 == 1).collect())
}
