//! TFRecord framing: each record is
//! `u64 length (LE) | u32 masked CRC32C of the length | data | u32 masked
//! CRC32C of the data`, optionally inside a GZIP stream (TensorFlow's
//! `compression_type="GZIP"`).

use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;

/// Records longer than this are refused as corrupt (TensorFlow itself has
/// no limit, but no tf.Example of a training set comes close).
pub const MAX_RECORD_LEN: u64 = 256 << 20;

/// TFRecord's CRC mask.
pub fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Masked CRC32C of `data`.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask_crc(crc32c::crc32c(data))
}

/// Compression of a TFRecord file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// GZIP if the name ends in `.gz` or the file starts with the GZIP magic.
    #[default]
    Auto,
    None,
    Gzip,
}

/// A framing error, with the 0-based record index.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("record {record}: truncated {part} (file ends after {got} of {want} bytes)")]
    Truncated {
        record: u64,
        part: &'static str,
        got: usize,
        want: usize,
    },
    #[error("record {record}: bad length checksum (stored {stored:#010x}, computed {computed:#010x})")]
    LengthCrc { record: u64, stored: u32, computed: u32 },
    #[error("record {record}: bad data checksum (stored {stored:#010x}, computed {computed:#010x})")]
    DataCrc { record: u64, stored: u32, computed: u32 },
    #[error("record {record}: length {len} exceeds the limit of {MAX_RECORD_LEN} bytes")]
    TooLong { record: u64, len: u64 },
    #[error("record {record}: {source}")]
    Io { record: u64, source: io::Error },
}

/// Reads records one at a time. Records are read from the source straight
/// into one large buffer and handed out as slices of it: one copy from the
/// kernel, none after.
pub struct RecordReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    record: u64,
}

const CHUNK: usize = 1 << 20;

impl RecordReader<Box<dyn Read + Send>> {
    /// Opens a file, detecting or applying the compression.
    pub fn open(path: &Path, compression: Compression) -> io::Result<Self> {
        let mut file = BufReader::with_capacity(64 << 10, std::fs::File::open(path)?);
        let gzip = match compression {
            Compression::None => false,
            Compression::Gzip => true,
            Compression::Auto => {
                path.extension().is_some_and(|e| e == "gz") || {
                    use std::io::BufRead;
                    file.fill_buf()?.starts_with(&[0x1f, 0x8b])
                }
            }
        };
        let inner: Box<dyn Read + Send> = if gzip {
            Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(file)))
        } else {
            Box::new(file)
        };
        Ok(RecordReader::new(inner))
    }
}

impl<R: Read> RecordReader<R> {
    pub fn new(inner: R) -> Self {
        RecordReader {
            inner,
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            record: 0,
        }
    }

    /// Index of the next record.
    pub fn position(&self) -> u64 {
        self.record
    }

    /// Makes at least `n` unconsumed bytes available if the source has
    /// them; returns how many are available (fewer only at end of file).
    fn fill(&mut self, n: usize) -> io::Result<usize> {
        if self.end - self.start >= n {
            return Ok(self.end - self.start);
        }
        if self.start + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if n > self.buf.len() {
                self.buf.resize(n.next_multiple_of(CHUNK), 0);
            }
        }
        while self.end - self.start < n {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => break,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.start)
    }

    /// The next record's data, or `None` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let record = self.record;
        let io = |source| FrameError::Io { record, source };
        let got = self.fill(12).map_err(io)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 12 {
            return Err(FrameError::Truncated {
                record,
                part: "header",
                got,
                want: 12,
            });
        }
        let head = &self.buf[self.start..self.start + 12];
        let len = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let stored = u32::from_le_bytes(head[8..].try_into().unwrap_or_default());
        let computed = masked_crc32c(&head[..8]);
        if stored != computed {
            return Err(FrameError::LengthCrc {
                record,
                stored,
                computed,
            });
        }
        if len > MAX_RECORD_LEN {
            return Err(FrameError::TooLong { record, len });
        }
        let want = len as usize + 4;
        let got = self.fill(12 + want).map_err(io)? - 12;
        if got < want {
            return Err(FrameError::Truncated {
                record,
                part: "data",
                got,
                want,
            });
        }
        let data = self.start + 12;
        let data_end = data + len as usize;
        let stored = u32::from_le_bytes(self.buf[data_end..data_end + 4].try_into().unwrap_or_default());
        let computed = masked_crc32c(&self.buf[data..data_end]);
        if stored != computed {
            return Err(FrameError::DataCrc {
                record,
                stored,
                computed,
            });
        }
        self.start = data_end + 4;
        self.record += 1;
        Ok(Some(&self.buf[data..data_end]))
    }

    /// Skips `n` records (checksums are still verified).
    pub fn skip(&mut self, n: u64) -> Result<u64, FrameError> {
        let mut skipped = 0;
        while skipped < n && self.next_record()?.is_some() {
            skipped += 1;
        }
        Ok(skipped)
    }
}

/// Writes records.
pub struct RecordWriter<W: Write> {
    inner: W,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(inner: W) -> Self {
        RecordWriter { inner }
    }

    pub fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.inner.write_all(&len)?;
        self.inner.write_all(&masked_crc32c(&len).to_le_bytes())?;
        self.inner.write_all(data)?;
        self.inner.write_all(&masked_crc32c(data).to_le_bytes())
    }

    /// The underlying writer (for writing around the records).
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(records: &[&[u8]]) -> Vec<u8> {
        let mut w = RecordWriter::new(Vec::new());
        for r in records {
            w.write_record(r).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn known_masked_crc() {
        // CRC32C("123456789") = 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            mask_crc(0xE306_9283),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn round_trip() {
        let bytes = write(&[b"hello", b"", b"world!"]);
        let mut r = RecordReader::new(&bytes[..]);
        assert_eq!(r.next_record().unwrap(), Some(&b"hello"[..]));
        assert_eq!(r.next_record().unwrap(), Some(&b""[..]));
        assert_eq!(r.next_record().unwrap(), Some(&b"world!"[..]));
        assert_eq!(r.next_record().unwrap(), None);
        assert_eq!(r.position(), 3);
    }

    #[test]
    fn truncated_record_is_an_error_naming_the_record() {
        let bytes = write(&[b"hello", b"world"]);
        let mut r = RecordReader::new(&bytes[..bytes.len() - 3]);
        r.next_record().unwrap();
        let e = r.next_record().unwrap_err().to_string();
        assert!(e.contains("record 1") && e.contains("truncated data"), "{e}");
        let mut r = RecordReader::new(&bytes[..5]);
        let e = r.next_record().unwrap_err().to_string();
        assert!(e.contains("record 0") && e.contains("truncated header"), "{e}");
    }

    #[test]
    fn bad_length_crc_is_detected() {
        let mut bytes = write(&[b"hello"]);
        bytes[9] ^= 1;
        let e = RecordReader::new(&bytes[..]).next_record().unwrap_err();
        assert!(matches!(e, FrameError::LengthCrc { record: 0, .. }), "{e}");
    }

    #[test]
    fn bad_data_crc_is_detected() {
        let mut bytes = write(&[b"hello"]);
        bytes[13] ^= 0x20;
        let e = RecordReader::new(&bytes[..]).next_record().unwrap_err();
        assert!(matches!(e, FrameError::DataCrc { record: 0, .. }), "{e}");
    }

    #[test]
    fn absurd_length_is_refused_before_allocating() {
        let len = (MAX_RECORD_LEN + 1).to_le_bytes();
        let mut bytes = len.to_vec();
        bytes.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        let e = RecordReader::new(&bytes[..]).next_record().unwrap_err();
        assert!(matches!(e, FrameError::TooLong { .. }), "{e}");
    }

    #[test]
    fn skip_counts_records() {
        let bytes = write(&[b"a", b"b", b"c"]);
        let mut r = RecordReader::new(&bytes[..]);
        assert_eq!(r.skip(2).unwrap(), 2);
        assert_eq!(r.next_record().unwrap(), Some(&b"c"[..]));
        assert_eq!(r.skip(5).unwrap(), 0);
    }
}
