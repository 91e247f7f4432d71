//! [`Params`] on the party-internal wire (`vfl.party.v1.Params`): f32
//! values as little-endian bytes, rows as `(slot << 32) | row`. Decoding
//! checks only what the bytes can say (lengths); what the rows and tensors
//! must be is the shard's check ([`super::Shard::contribute`]) and the
//! replica's ([`super::replica::apply`]).

use prost::Message;
use vfl_bridge::party_pb;

use super::Params;

/// The size bucket a message of `len` bytes is padded to: `len` rounded up
/// to a number with at most [`BUCKET_BITS`] significant bits (8 buckets per
/// doubling, at most 1/8 more bytes), and never past `limit` (the
/// receiver's largest message), which is a bucket of its own.
pub fn bucket(len: usize, limit: usize) -> usize {
    let shift = (usize::BITS - len.leading_zeros()).saturating_sub(BUCKET_BITS);
    let up = len.div_ceil(1 << shift).saturating_mul(1 << shift);
    up.min(limit).max(len)
}

/// Significant bits of a size bucket.
pub const BUCKET_BITS: u32 = 4;

/// Pads `msg` with zero bytes (through `set`, which puts its argument in
/// the message's repeated `padding` field) so that its encoded size is its
/// [`bucket`]: the host sees a size class, not how many rows the
/// parameters hold. Where one element's length prefix would skip the
/// target size, empty elements (2 bytes each) make it up; a size that
/// still cannot be reached (1 byte short of a bucket) takes the next one.
pub fn pad<M: Message>(msg: &mut M, limit: usize, mut set: impl FnMut(&mut M, Vec<Vec<u8>>)) {
    let base = msg.encoded_len();
    let mut target = bucket(base, limit);
    while target > base {
        for empty in 0..3usize {
            // The field's tags and length prefixes come on top (a first
            // guess; an enclosing message's length prefix may grow too).
            let room = (target - base).saturating_sub(2 * empty);
            let mut k = room.saturating_sub(1 + prost::encoding::encoded_len_varint(room as u64));
            for _ in 0..4 {
                let mut fill = vec![vec![0; k]];
                fill.extend(std::iter::repeat_n(Vec::new(), empty));
                set(msg, fill);
                let got = msg.encoded_len();
                if got == target {
                    return;
                }
                k = if got > target {
                    k.saturating_sub(got - target)
                } else {
                    k + (target - got)
                };
            }
        }
        if target >= limit {
            break;
        }
        target = bucket(target + 1, limit);
    }
    set(msg, Vec::new());
}

/// Why received parameters do not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("{what}: {len} bytes is not a whole number of f32 values")]
    Ragged { what: String, len: usize },
    #[error("{what}: no parameters")]
    Missing { what: &'static str },
}

pub fn encode(p: &Params) -> party_pb::Params {
    party_pb::Params {
        dense: p
            .dense
            .iter()
            .map(|(i, v)| party_pb::Dense {
                index: *i,
                values: f32_bytes(v),
            })
            .collect(),
        rows: p
            .rows
            .iter()
            .map(|&(s, r)| (u64::from(s) << 32) | u64::from(r))
            .collect(),
        values: f32_bytes(&p.values),
    }
}

pub fn decode(p: &party_pb::Params) -> Result<Params, ParamsError> {
    let mut dense = Vec::with_capacity(p.dense.len());
    for d in &p.dense {
        dense.push((d.index, f32s(&d.values, || format!("dense tensor {}", d.index))?));
    }
    Ok(Params {
        dense,
        rows: p.rows.iter().map(|&k| ((k >> 32) as u32, k as u32)).collect(),
        values: f32s(&p.values, || "embedding rows".to_string())?,
    })
}

/// [`decode`] of an optional field.
pub fn decode_opt(p: Option<&party_pb::Params>, what: &'static str) -> Result<Params, ParamsError> {
    decode(p.ok_or(ParamsError::Missing { what })?)
}

fn f32_bytes(v: &[f32]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(4 * v.len());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.into()
}

fn f32s(b: &[u8], what: impl FnOnce() -> String) -> Result<Vec<f32>, ParamsError> {
    if !b.len().is_multiple_of(4) {
        return Err(ParamsError::Ragged {
            what: what(),
            len: b.len(),
        });
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ragged_values_are_refused() {
        let mut p = encode(&Params {
            dense: vec![(3, vec![1.0, 2.0])],
            rows: vec![(1, 2)],
            values: vec![0.5; 4],
        });
        p.values.truncate(15);
        assert!(matches!(decode(&p), Err(ParamsError::Ragged { len: 15, .. })));
    }

    #[test]
    fn ragged_dense_is_refused() {
        let mut p = encode(&Params {
            dense: vec![(3, vec![1.0, 2.0])],
            ..Default::default()
        });
        p.dense[0].values = bytes::Bytes::from_static(&[0, 0, 0]);
        match decode(&p) {
            Err(ParamsError::Ragged { what, len: 3 }) => assert_eq!(what, "dense tensor 3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_params_are_refused() {
        assert!(matches!(
            decode_opt(None, "changes"),
            Err(ParamsError::Missing { what: "changes" })
        ));
    }

    /// A worker's contribution of `rows` rows of 16 values, padded below
    /// `limit`.
    fn contribution(rows: u32, limit: usize) -> party_pb::WorkerMessage {
        use party_pb::worker_message::Msg;
        let p = Params {
            dense: vec![(0, vec![0.25; 300])],
            rows: (0..rows).map(|r| (r % 7, r * 3)).collect(),
            values: vec![0.5; rows as usize * 16],
        };
        let mut m = party_pb::WorkerMessage {
            msg: Some(Msg::Contribute(party_pb::Contribute {
                step: 7,
                participants: vec![0, 1],
                examples: 64,
                grads: Some(encode(&p)),
                padding: Vec::new(),
            })),
        };
        pad(&mut m, limit, |m, fill| {
            if let Some(Msg::Contribute(c)) = &mut m.msg {
                c.padding = fill;
            }
        });
        m
    }

    #[test]
    fn buckets_round_up_by_at_most_an_eighth_and_stop_at_the_limit() {
        assert_eq!(bucket(1000, 1 << 20), 1024);
        assert_eq!(bucket(1024, 1 << 20), 1024);
        assert_eq!(bucket(1025, 1 << 20), 1152);
        assert_eq!(bucket(7, 1 << 20), 7);
        assert_eq!(bucket(1000, 1010), 1010);
        assert_eq!(bucket(2000, 1010), 2000);
    }

    #[test]
    fn contributions_of_different_row_counts_take_few_sizes() {
        let sizes: std::collections::BTreeSet<usize> = (200..300)
            .map(|rows| contribution(rows, 1 << 20).encoded_len())
            .collect();
        // 100 row counts (about 15 to 22 KB): the host sees 5 sizes, all
        // buckets.
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            vec![15360, 16384, 18432, 20480, 22528]
        );
    }

    /// Every size from 700 bytes to 30 KB (length prefixes of one, two
    /// and three bytes): padded exactly to its bucket or, 1 byte short of
    /// one, the next.
    #[test]
    fn every_size_in_a_sweep_reaches_its_bucket() {
        use party_pb::worker_message::Msg;
        for rows in 0..450 {
            let mut m = contribution(rows, 1 << 20);
            let got = m.encoded_len();
            if let Some(Msg::Contribute(c)) = &mut m.msg {
                c.padding.clear();
            }
            let base = m.encoded_len();
            let want = bucket(base, 1 << 20);
            assert!(
                got == want || (want - base == 1 && got == bucket(want + 1, 1 << 20)),
                "{base}: {got}, not {want}"
            );
        }
    }

    #[test]
    fn padding_is_ignored_by_the_receiver() {
        use party_pb::worker_message::Msg;
        let m = contribution(33, 1 << 20);
        let back = party_pb::WorkerMessage::decode(m.encode_to_vec().as_slice()).unwrap();
        let Some(Msg::Contribute(c)) = back.msg else {
            panic!("not a contribution")
        };
        assert!(!c.padding.is_empty() && c.padding.iter().flatten().all(|&b| b == 0));
        let p = decode_opt(c.grads.as_ref(), "gradients").unwrap();
        assert_eq!((p.rows.len(), p.values.len()), (33, 33 * 16));
    }

    proptest! {
        #[test]
        fn a_padded_size_is_a_bucket_within_an_eighth_or_the_limit(rows in 0u32..3000, limit in 20_000usize..200_000) {
            let unpadded = {
                let mut m = contribution(rows, limit);
                if let Some(party_pb::worker_message::Msg::Contribute(c)) = &mut m.msg {
                    c.padding.clear();
                }
                m.encoded_len()
            };
            let got = contribution(rows, limit).encoded_len();
            prop_assert!(got >= unpadded);
            if unpadded <= limit {
                prop_assert!(got <= limit, "{} past the limit {}", got, limit);
                // A bucket (or the limit): 3 significant bits at most.
                let shift = (usize::BITS - got.leading_zeros()).saturating_sub(BUCKET_BITS);
                prop_assert!(got == limit || got.is_multiple_of(1 << shift), "{} is no bucket", got);
                prop_assert!(got as f64 <= unpadded as f64 * 1.125 + 16.0, "{} for {}", got, unpadded);
            }
        }

        #[test]
        fn params_round_trip(
            dense in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<f32>(), 0..20)), 0..4),
            rows in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..20),
            values in proptest::collection::vec(any::<f32>(), 0..40),
        ) {
            let p = Params { dense, rows, values };
            let back = decode(&encode(&p)).unwrap();
            // Bitwise (NaN payloads included).
            let bits = |p: &Params| (
                p.dense.iter().map(|(i, v)| (*i, v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())).collect::<Vec<_>>(),
                p.rows.clone(),
                p.values.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            );
            prop_assert_eq!(bits(&back), bits(&p));
        }
    }
}
