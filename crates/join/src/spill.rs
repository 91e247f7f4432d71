//! Rows partitioned by tag prefix, spilled to one temporary file in
//! AES-256-GCM chunks under a key that exists only in this process's memory
//! (random, never written): the host sees chunk sizes and nothing else, and
//! a chunk cannot be moved, swapped or altered without the open failing
//! (each chunk's sealing context names its partition and sequence number).
//!
//! An entry: tag (16 bytes), block (u32 LE), position (u64 LE), id length
//! (u16 LE), payload length (u32 LE), the id, the payload.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vfl_attest::seal::{Context, Sealer};

use crate::JoinError;
use crate::tags::{TAG_LEN, Tag, partition};

const HEAD: usize = TAG_LEN + 4 + 8 + 2 + 4;

/// The largest number of partitions (2^MAX_BITS).
pub const MAX_BITS: u32 = 14;

/// How many partition bits keep one partition of `input_bytes` within a
/// quarter of `memory_limit`, with a chunk buffer of at least 4 KiB per
/// partition in another quarter. (Chunks may be smaller, down to 512
/// bytes, when the peer asks for more partitions than we would.)
pub fn partition_bits(input_bytes: u64, memory_limit: u64) -> u32 {
    let budget = (memory_limit / 4).max(1);
    let mut bits = 0;
    // A loaded row costs about 110 bytes besides itself (spill header,
    // entry, tag and index lists); rows of 40 bytes and more stay within
    // four times the input size.
    let need = input_bytes.saturating_mul(4);
    while bits < MAX_BITS && need >> bits > budget && (budget >> (bits + 1)) >= 4096 {
        bits += 1;
    }
    bits
}

/// One row as read back from the spill.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub tag: Tag,
    pub block: u32,
    pub pos: u64,
    /// Offset of the id in the partition's bytes; the row follows it.
    at: u32,
    id_len: u16,
    payload_len: u32,
}

/// The rows of one partition, ascending by (tag, block, position).
pub struct Partition {
    data: Vec<u8>,
    pub entries: Vec<Entry>,
}

impl Partition {
    pub fn id(&self, e: &Entry) -> &[u8] {
        let at = e.at as usize;
        &self.data[at..at + e.id_len as usize]
    }
    pub fn payload(&self, e: &Entry) -> &[u8] {
        let at = e.at as usize + e.id_len as usize;
        &self.data[at..at + e.payload_len as usize]
    }
}

/// The spill file of one join.
pub struct Spill {
    path: PathBuf,
    out: Option<std::io::BufWriter<File>>,
    reader: Option<File>,
    sealer: Sealer,
    bits: u32,
    buffers: Vec<Vec<u8>>,
    chunk: usize,
    /// Per partition: (offset, length, sequence number) of its chunks.
    index: Vec<Vec<(u64, u32, u64)>>,
    offset: u64,
    seq: u64,
}

fn context(partition: u32, seq: u64) -> Context {
    Context::new("join spill")
        .with("partition", partition)
        .with("chunk", seq)
}

impl Spill {
    /// A new spill file at `path` with `2^bits` partitions, buffering at
    /// most about `buffer_budget` bytes before writing.
    pub fn create(path: &Path, bits: u32, buffer_budget: u64) -> Result<Self, JoinError> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| JoinError::SpillFormat("no randomness for the spill key"))?;
        let sealer = Sealer::from_key(key, "ephemeral join spill key").map_err(JoinError::Spill)?;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .open(path)
            .map_err(|e| JoinError::io("creating", path, e))?;
        let reader = file.try_clone().map_err(|e| JoinError::io("opening", path, e))?;
        let n = 1usize << bits.min(MAX_BITS);
        let chunk = ((buffer_budget / n as u64) as usize).clamp(512, 1 << 20);
        Ok(Spill {
            path: path.to_path_buf(),
            out: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            reader: Some(reader),
            sealer,
            bits: bits.min(MAX_BITS),
            buffers: vec![Vec::new(); n],
            chunk,
            index: vec![Vec::new(); n],
            offset: 0,
            seq: 0,
        })
    }

    #[cfg(test)]
    fn partitions(&self) -> u32 {
        1 << self.bits
    }

    /// Adds one row.
    pub fn push(&mut self, tag: &Tag, block: u32, pos: u64, id: &[u8], payload: &[u8]) -> Result<(), JoinError> {
        let id_len =
            u16::try_from(id.len()).map_err(|_| JoinError::SpillFormat("an example id longer than 65535 bytes"))?;
        let payload_len = u32::try_from(payload.len()).map_err(|_| JoinError::SpillFormat("a row over 4 GiB"))?;
        let p = partition(tag, self.bits) as usize;
        let buf = &mut self.buffers[p];
        buf.extend_from_slice(tag);
        buf.extend_from_slice(&block.to_le_bytes());
        buf.extend_from_slice(&pos.to_le_bytes());
        buf.extend_from_slice(&id_len.to_le_bytes());
        buf.extend_from_slice(&payload_len.to_le_bytes());
        buf.extend_from_slice(id);
        buf.extend_from_slice(payload);
        if buf.len() >= self.chunk {
            self.flush(p)?;
        }
        Ok(())
    }

    fn flush(&mut self, p: usize) -> Result<(), JoinError> {
        if self.buffers[p].is_empty() {
            return Ok(());
        }
        let sealed = self
            .sealer
            .seal(&context(p as u32, self.seq), &self.buffers[p])
            .map_err(JoinError::Spill)?;
        self.buffers[p].clear();
        let out = self
            .out
            .as_mut()
            .ok_or(JoinError::SpillFormat("written after it was finished"))?;
        out.write_all(&sealed)
            .map_err(|e| JoinError::io("writing", &self.path, e))?;
        let len = u32::try_from(sealed.len()).map_err(|_| JoinError::SpillFormat("chunk too large"))?;
        self.index[p].push((self.offset, len, self.seq));
        self.offset += sealed.len() as u64;
        self.seq += 1;
        Ok(())
    }

    /// Writes what is buffered; afterwards partitions can be loaded.
    pub fn finish(&mut self) -> Result<(), JoinError> {
        for p in 0..self.buffers.len() {
            self.flush(p)?;
        }
        self.buffers = Vec::new();
        if let Some(mut out) = self.out.take() {
            out.flush().map_err(|e| JoinError::io("writing", &self.path, e))?;
        }
        Ok(())
    }

    /// The rows of partition `p`, sorted by (tag, block, position).
    pub fn load(&self, p: u32) -> Result<Partition, JoinError> {
        let reader = self.reader.as_ref().ok_or(JoinError::SpillFormat("closed"))?;
        if self.out.is_some() {
            return Err(JoinError::SpillFormat("read before it was finished"));
        }
        let chunks = self
            .index
            .get(p as usize)
            .ok_or(JoinError::SpillFormat("no such partition"))?;
        let mut data = Vec::new();
        for &(offset, len, seq) in chunks {
            let mut sealed = vec![0u8; len as usize];
            reader
                .read_exact_at(&mut sealed, offset)
                .map_err(|e| JoinError::io("reading", &self.path, e))?;
            let (_, plain) = self
                .sealer
                .open_file(&sealed, &context(p, seq), &self.path)
                .map_err(JoinError::Spill)?;
            data.extend_from_slice(&plain);
        }
        let entries = parse(&data)?;
        let mut part = Partition { data, entries };
        part.entries.sort_unstable_by_key(|e| (e.tag, e.block, e.pos));
        Ok(part)
    }
}

fn parse(data: &[u8]) -> Result<Vec<Entry>, JoinError> {
    let bad = JoinError::SpillFormat("truncated entry");
    if u32::try_from(data.len()).is_err() {
        return Err(JoinError::SpillFormat(
            "a partition over 4 GiB (use a --memory-limit under 16G)",
        ));
    }
    let mut entries = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let head = data
            .get(at..at + HEAD)
            .ok_or(JoinError::SpillFormat("truncated entry"))?;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&head[..TAG_LEN]);
        let le4 = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let block = le4(&head[16..20]);
        let mut pos = [0u8; 8];
        pos.copy_from_slice(&head[20..28]);
        let id_len = u16::from_le_bytes([head[28], head[29]]) as usize;
        let payload_len = le4(&head[30..34]) as usize;
        let id = at + HEAD;
        let payload = id + id_len;
        let end = payload + payload_len;
        if end > data.len() {
            return Err(bad);
        }
        entries.push(Entry {
            tag,
            block,
            pos: u64::from_le_bytes(pos),
            at: id as u32,
            id_len: id_len as u16,
            payload_len: payload_len as u32,
        });
        at = end;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_in_their_partition_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::tags::TagKey::new(&[9; 32]);
        let mut s = Spill::create(&dir.path().join("s"), 3, 64 << 10).unwrap();
        for i in 0..5000u32 {
            let id = i.to_string();
            s.push(&key.tag(id.as_bytes()), i % 3, i as u64, id.as_bytes(), &[i as u8; 40])
                .unwrap();
        }
        s.finish().unwrap();
        let mut n = 0;
        for p in 0..s.partitions() {
            let part = s.load(p).unwrap();
            assert!(part.entries.windows(2).all(|w| w[0].tag < w[1].tag));
            for e in &part.entries {
                assert_eq!(partition(&e.tag, 3), p);
                let id = part.id(e);
                assert_eq!(key.tag(id), e.tag);
                let i: u32 = std::str::from_utf8(id).unwrap().parse().unwrap();
                assert_eq!((e.block, e.pos), (i % 3, i as u64));
                assert_eq!(part.payload(e), &[i as u8; 40]);
            }
            n += part.entries.len();
        }
        assert_eq!(n, 5000);
    }

    #[test]
    fn an_altered_chunk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut s = Spill::create(&path, 0, 1 << 20).unwrap();
        s.push(&[1; 16], 0, 0, b"a", b"row").unwrap();
        s.finish().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(s.load(0), Err(JoinError::Spill(_))));
    }

    #[test]
    fn partition_bits_grow_with_input_and_stay_bounded() {
        assert_eq!(partition_bits(1000, 256 << 20), 0);
        let b = partition_bits(10 << 30, 256 << 20);
        assert!((1 << b) as u64 * (64 << 20) >= (10u64 << 30), "{b}");
        assert!(partition_bits(u64::MAX, 1 << 20) <= MAX_BITS);
        assert!((1u64 << partition_bits(u64::MAX, 1 << 20)) * 4096 <= (1 << 20) / 4 * 2);
    }
}
