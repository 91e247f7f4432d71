//! [`Params`] on the party-internal wire (`vfl.party.v1.Params`): f32
//! values as little-endian bytes, rows as `(slot << 32) | row`. Decoding
//! checks only what the bytes can say (lengths); what the rows and tensors
//! must be is the shard's check ([`super::Shard::contribute`]) and the
//! replica's ([`super::replica::apply`]).

use vfl_bridge::party_pb;

use super::Params;

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

    proptest! {
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
