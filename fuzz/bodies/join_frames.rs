//! The join protocol's frames from the peer: length-prefixed protobuf
//! frames, and Tags chunks fed to the leader's matcher (partition
//! checks, ordering, chunk bounds) and Matches to the follower's reader.

use vfl_join::pb::frame::Kind;
use vfl_join::protocol::{MAX_FRAME, Matcher, decode, read_matches};

/// One input.
pub fn run(data: &[u8]) {
    let own: Vec<[u8; 16]> = (0u8..64).map(|i| [i.wrapping_mul(4); 16]).collect();
    let bits = u32::from(data.first().copied().unwrap_or(0) % 4);
    let mut matcher = Matcher::new(0, bits, &own);
    let mut rest = data.get(1..).unwrap_or(&[]);
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if len > MAX_FRAME || len > rest.len() {
            return;
        }
        let (body, tail) = rest.split_at(len);
        rest = tail;
        match decode(body) {
            Ok(Kind::Tags(t)) => {
                let _ = matcher.answer(&t);
            }
            Ok(Kind::Matches(m)) => {
                let n = (m.bits.len() * 8).saturating_sub(usize::from(len as u8 % 8));
                let _ = read_matches(m.partition, n, &m);
            }
            _ => {}
        }
    }
}
