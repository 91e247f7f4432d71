//! The link's sequence and acknowledgement rules (sans-IO), driven by
//! arbitrary operations from a peer: sends of ours, and arrivals with any
//! sequence number, acknowledgement and kind. Checks the invariants the
//! resend relies on.

use vfl_bridge::link::seq::{Arrived, Unacked, classify};

/// One input.
pub fn run(data: &[u8]) {
    let mut ours: Unacked<u64> = Unacked::default();
    let mut last = 0u64;
    for op in data.chunks(9) {
        let (kind, rest) = op.split_first().unwrap_or((&0, &[]));
        let mut n = [0u8; 8];
        n[..rest.len()].copy_from_slice(rest);
        let v = u64::from_le_bytes(n);
        match kind % 3 {
            0 => {
                let s = ours.push(v);
                assert_eq!(s + 1, ours.next_seq());
            }
            1 => match ours.acknowledge(v % (ours.next_seq() + 2)) {
                Ok(()) => assert!(ours.iter().all(|(s, _)| *s > v % (ours.next_seq() + 2))),
                Err(sent) => assert_eq!(sent + 1, ours.next_seq()),
            },
            _ => match classify(v, kind & 0x80 != 0, last) {
                Arrived::New => {
                    assert_eq!(v, last + 1);
                    last = v;
                }
                Arrived::Duplicate => assert!(v <= last),
                Arrived::Gap { last: l } => assert!(l == last && v > last + 1),
                Arrived::Heartbeat => {}
            },
        }
        // Sequence numbers of waiting messages are strictly increasing.
        let mut prev = 0;
        for (s, _) in ours.iter() {
            assert!(*s > prev);
            prev = *s;
        }
    }
}
