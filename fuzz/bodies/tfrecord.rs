//! TFRecord framing (length, masked CRC32C of length and data) of a data
//! file, plain and GZIP-compressed.

use vfl_data::tfrecord::RecordReader;

/// One input.
pub fn run(data: &[u8]) {
    let mut r = RecordReader::new(data);
    for _ in 0..1024 {
        match r.next_record() {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let mut r = RecordReader::new(data);
    let _ = r.skip(3);
    let gz = flate2::read::MultiGzDecoder::new(data);
    let mut r = RecordReader::new(std::io::Read::take(gz, 1 << 20));
    for _ in 0..1024 {
        match r.next_record() {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
}
