//! tf.Example encoding and a streaming decoder that writes straight into
//! [`Batch`] buffers, with no per-example map or allocation.
//!
//! Wire format (tensorflow/core/example/{example,feature}.proto):
//! `Example { Features features = 1 }`,
//! `Features { map<string, Feature> feature = 1 }` (entries `{key = 1,
//! value = 2}`), `Feature { oneof { BytesList bytes_list = 1; FloatList
//! float_list = 2; Int64List int64_list = 3 } }`, each list `repeated value
//! = 1` (floats and int64s packed or not; both are accepted).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::batch::{Batch, RowSource};
use crate::schema::Schema;

/// Why a record could not be decoded; `feature` is empty for structural
/// errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub feature: String,
    pub message: String,
}

/// Low-level wire errors: a static message keeps results small on the
/// hot path.
type Wire = &'static str;

impl From<Wire> for DecodeError {
    fn from(message: Wire) -> Self {
        DecodeError {
            feature: String::new(),
            message: message.into(),
        }
    }
}

impl DecodeError {
    fn at(feature: &[u8], message: impl Into<String>) -> Self {
        DecodeError {
            feature: String::from_utf8_lossy(feature).into_owned(),
            message: message.into(),
        }
    }
}

/// The kind of list a feature holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bytes,
    Float,
    Int64,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bytes => "bytes_list",
            Kind::Float => "float_list",
            Kind::Int64 => "int64_list",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Id,
    Label,
    Mask,
    Slot(usize),
    Dense(usize),
}

/// FNV-1a: fast for short feature names, and the keys are not attacker
/// chosen in a way that matters (a slow lookup is the worst case).
type Fnv = vfl_mix::Fnv1a;

/// Decodes tf.Example records of one schema into batches.
pub struct ExampleDecoder {
    schema: Schema,
    index: HashMap<Vec<u8>, Target, BuildHasherDefault<Fnv>>,
    /// The keys met at each map position of the previous record: writers
    /// emit features in a fixed order, so a byte comparison usually
    /// replaces the hash lookup.
    predicted: Vec<(Box<[u8]>, Option<Target>)>,
    // Per-record scratch, reused.
    slot_ids: Vec<i64>,
    slot_range: Vec<(u32, u32)>,
    dense: Vec<f32>,
    dense_seen: Vec<bool>,
}

const MISSING: (u32, u32) = (u32::MAX, u32::MAX);

/// Byte equality for short keys without a call to `memcmp`.
#[inline(always)]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Reads a varint at `*pos`.
#[inline(always)]
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, Wire> {
    // Fast path: one-byte varints (tags, short lengths, small ids).
    if let Some(&b) = buf.get(*pos)
        && b < 0x80
    {
        *pos += 1;
        return Ok(u64::from(b));
    }
    varint_slow(buf, pos)
}

#[inline(never)]
fn varint_slow(buf: &[u8], pos: &mut usize) -> Result<u64, Wire> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*pos) else {
            return Err("truncated varint");
        };
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes")
}

/// A length-delimited field's bytes at `*pos`.
#[inline(always)]
fn delimited<'a>(buf: &'a [u8], pos: &mut usize) -> Result<&'a [u8], Wire> {
    let len = varint(buf, pos)? as usize;
    let end = pos.checked_add(len).filter(|&e| e <= buf.len());
    let Some(end) = end else {
        return Err("field length runs past the end of its message");
    };
    let s = &buf[*pos..end];
    *pos = end;
    Ok(s)
}

/// Skips a field of `wire` type.
fn skip(buf: &[u8], pos: &mut usize, wire: u64) -> Result<(), Wire> {
    match wire {
        0 => varint(buf, pos).map(|_| ()),
        1 => advance(buf, pos, 8),
        2 => delimited(buf, pos).map(|_| ()),
        5 => advance(buf, pos, 4),
        _ => Err("unsupported protobuf wire type"),
    }
}

fn advance(buf: &[u8], pos: &mut usize, n: usize) -> Result<(), Wire> {
    if *pos + n > buf.len() {
        return Err("truncated fixed-width field");
    }
    *pos += n;
    Ok(())
}

/// Splits a Feature message into its list kind and the list's bytes.
#[inline(always)]
fn feature_list(buf: &[u8]) -> Result<Option<(Kind, &[u8])>, Wire> {
    let (mut pos, mut found) = (0, None);
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let (field, wire) = (tag >> 3, tag & 7);
        let kind = match (field, wire) {
            (1, 2) => Kind::Bytes,
            (2, 2) => Kind::Float,
            (3, 2) => Kind::Int64,
            _ => {
                skip(buf, &mut pos, wire)?;
                continue;
            }
        };
        found = Some((kind, delimited(buf, &mut pos)?));
    }
    Ok(found)
}

/// Calls `f` for every value of an Int64List.
#[inline(always)]
fn each_int64(list: &[u8], mut f: impl FnMut(i64)) -> Result<(), Wire> {
    let mut pos = 0;
    while pos < list.len() {
        let tag = varint(list, &mut pos)?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let packed = delimited(list, &mut pos)?;
                let mut p = 0;
                while p < packed.len() {
                    f(varint(packed, &mut p)? as i64);
                }
            }
            (1, 0) => f(varint(list, &mut pos)? as i64),
            (_, w) => skip(list, &mut pos, w)?,
        }
    }
    Ok(())
}

/// Calls `f` for every value of a FloatList.
fn each_float(list: &[u8], mut f: impl FnMut(f32)) -> Result<(), Wire> {
    let mut pos = 0;
    while pos < list.len() {
        let tag = varint(list, &mut pos)?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let packed = delimited(list, &mut pos)?;
                if packed.len() % 4 != 0 {
                    return Err("packed float list length is not a multiple of 4");
                }
                for c in packed.chunks_exact(4) {
                    f(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
            (1, 5) => {
                let start = pos;
                advance(list, &mut pos, 4)?;
                let c = &list[start..pos];
                f(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
            (_, w) => skip(list, &mut pos, w)?,
        }
    }
    Ok(())
}

/// The single value of a numeric list (int64 or float), as f32.
fn single_number(name: &[u8], kind: Kind, list: &[u8]) -> Result<f32, DecodeError> {
    let (mut n, mut v) = (0usize, 0f32);
    match kind {
        Kind::Int64 => each_int64(list, |x| {
            n += 1;
            v = x as f32;
        })?,
        Kind::Float => each_float(list, |x| {
            n += 1;
            v = x;
        })?,
        Kind::Bytes => {
            return Err(DecodeError::at(
                name,
                "expected an int64_list or float_list, got a bytes_list",
            ));
        }
    }
    if n != 1 {
        return Err(DecodeError::at(name, format!("expected exactly one value, got {n}")));
    }
    if !v.is_finite() {
        return Err(DecodeError::at(name, "a value is not finite"));
    }
    Ok(v)
}

impl ExampleDecoder {
    pub fn new(schema: Schema) -> Self {
        let mut index: HashMap<Vec<u8>, Target, BuildHasherDefault<Fnv>> = HashMap::default();
        index.insert(schema.id.as_bytes().to_vec(), Target::Id);
        if let Some(l) = &schema.label {
            index.insert(l.as_bytes().to_vec(), Target::Label);
        }
        if let Some(m) = &schema.loss_mask {
            index.insert(m.as_bytes().to_vec(), Target::Mask);
        }
        for (i, s) in schema.slots.iter().enumerate() {
            index.insert(s.as_bytes().to_vec(), Target::Slot(i));
        }
        for (i, d) in schema.dense.iter().enumerate() {
            index.insert(d.as_bytes().to_vec(), Target::Dense(i));
        }
        ExampleDecoder {
            slot_range: vec![MISSING; schema.slots.len()],
            dense: vec![0.0; schema.dense.len()],
            dense_seen: vec![false; schema.dense.len()],
            slot_ids: Vec::new(),
            predicted: Vec::new(),
            index,
            schema,
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Decodes one serialized tf.Example and appends it as a row of
    /// `batch`. On error the batch is left as it was.
    pub fn decode_into(&mut self, record: &[u8], batch: &mut Batch, source: RowSource) -> Result<(), DecodeError> {
        let rows = batch.rows;
        let r = self.decode_row(record, batch, source);
        if r.is_err() {
            batch.truncate_rows(rows);
        }
        r
    }

    fn decode_row(&mut self, record: &[u8], batch: &mut Batch, source: RowSource) -> Result<(), DecodeError> {
        self.slot_ids.clear();
        self.slot_range.fill(MISSING);
        self.dense_seen.fill(false);
        let mut row = RowValues::default();
        let mut pos = 0;
        while pos < record.len() {
            let tag = varint(record, &mut pos)?;
            if tag != (1 << 3 | 2) {
                skip(record, &mut pos, tag & 7)?;
                continue;
            }
            let features = delimited(record, &mut pos)?;
            let mut fp = 0;
            let mut k = 0;
            while fp < features.len() {
                let tag = varint(features, &mut fp)?;
                if tag != (1 << 3 | 2) {
                    skip(features, &mut fp, tag & 7)?;
                    continue;
                }
                let (key, value) = map_entry(delimited(features, &mut fp)?)?;
                let target = self.target(k, key);
                k += 1;
                let Some(target) = target else { continue };
                let Some((kind, list)) = feature_list(value)? else {
                    return Err(DecodeError::at(key, "feature has no value list"));
                };
                self.take(target, key, kind, list, &mut row)?;
            }
        }
        self.finish_row(row, batch, source)
    }

    /// Where feature `key`, the `k`-th of the record, goes. Records of one
    /// writer list their features in the same order, so the key at the
    /// same position is compared first and the map consulted on a miss.
    #[inline]
    fn target(&mut self, k: usize, key: &[u8]) -> Option<Target> {
        match self.predicted.get(k) {
            Some((pk, t)) if same_key(pk, key) => *t,
            _ => {
                let t = self.index.get(key).copied();
                if k < self.predicted.len() {
                    self.predicted[k] = (key.into(), t);
                } else {
                    self.predicted.push((key.into(), t));
                }
                t
            }
        }
    }

    /// Takes one wanted feature's values.
    #[inline]
    fn take<'r>(
        &mut self,
        target: Target,
        key: &[u8],
        kind: Kind,
        list: &'r [u8],
        row: &mut RowValues<'r>,
    ) -> Result<(), DecodeError> {
        match target {
            Target::Id => row.id = Some(single_bytes(key, kind, list)?),
            Target::Label => row.label = Some(single_number(key, kind, list)?),
            Target::Mask => row.mask = single_number(key, kind, list)?,
            Target::Dense(j) => {
                self.dense[j] = single_number(key, kind, list)?;
                self.dense_seen[j] = true;
            }
            Target::Slot(s) => {
                if kind != Kind::Int64 {
                    return Err(DecodeError::at(
                        key,
                        format!("expected an int64_list, got a {}", kind.name()),
                    ));
                }
                let start = self.slot_ids.len() as u32;
                let ids = &mut self.slot_ids;
                each_int64(list, |v| ids.push(v))?;
                if let Some(Some(vocab)) = self.schema.vocab.get(s)
                    && self.slot_ids[start as usize..]
                        .iter()
                        .any(|&v| v < 0 || v as u64 >= *vocab)
                {
                    return Err(DecodeError::at(
                        key,
                        format!("an id is outside the table's range [0, {vocab})"),
                    ));
                }
                self.slot_range[s] = (start, self.slot_ids.len() as u32);
            }
        }
        Ok(())
    }

    /// Checks that every required feature came and appends the row.
    fn finish_row(&self, row: RowValues<'_>, batch: &mut Batch, source: RowSource) -> Result<(), DecodeError> {
        let missing = |feature: &String| DecodeError {
            feature: feature.clone(),
            message: "missing required feature".into(),
        };
        let Some(id) = row.id else {
            return Err(missing(&self.schema.id));
        };
        if let Some(s) = self.slot_range.iter().position(|&r| r == MISSING) {
            return Err(missing(&self.schema.slots[s]));
        }
        if let Some(j) = self.dense_seen.iter().position(|&seen| !seen) {
            return Err(missing(&self.schema.dense[j]));
        }
        if let Some(name) = &self.schema.label {
            let Some(y) = row.label else {
                return Err(missing(name));
            };
            batch.labels.push(y);
            batch.weights.push(1.0 - row.mask);
        }
        batch.push_example_id(id);
        for &(a, b) in &self.slot_range {
            batch.ids.extend_from_slice(&self.slot_ids[a as usize..b as usize]);
            batch.close_slot();
        }
        batch.dense.extend_from_slice(&self.dense);
        batch.finish_row(source);
        Ok(())
    }
}

/// The id, label and loss mask of the row being decoded.
#[derive(Default)]
struct RowValues<'r> {
    id: Option<&'r [u8]>,
    label: Option<f32>,
    mask: f32,
}

/// A `Features.feature` map entry: its key and value bytes.
#[inline]
fn map_entry(entry: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut ep = 0;
    while ep < entry.len() {
        let tag = varint(entry, &mut ep)?;
        match tag {
            0x0a => key = delimited(entry, &mut ep)?,
            0x12 => value = delimited(entry, &mut ep)?,
            t => skip(entry, &mut ep, t & 7)?,
        }
    }
    Ok((key, value))
}

/// The one value of a bytes_list feature.
#[inline]
fn single_bytes<'r>(key: &[u8], kind: Kind, list: &'r [u8]) -> Result<&'r [u8], DecodeError> {
    if kind != Kind::Bytes {
        return Err(DecodeError::at(
            key,
            format!("expected a bytes_list, got a {}", kind.name()),
        ));
    }
    let (mut p, mut n, mut id) = (0, 0, None);
    while p < list.len() {
        let tag = varint(list, &mut p)?;
        if tag == 0x0a {
            id = Some(delimited(list, &mut p)?);
            n += 1;
        } else {
            skip(list, &mut p, tag & 7)?;
        }
    }
    match (n, id) {
        (1, Some(id)) => Ok(id),
        _ => Err(DecodeError::at(key, format!("expected exactly one value, got {n}"))),
    }
}

/// A feature value for [`encode_example`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Bytes(&'a [u8]),
    Int64(&'a [i64]),
    Float(&'a [f32]),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Serialises a tf.Example with the given features (in the given order;
/// lists packed, as TensorFlow writes them) into `out`.
pub fn encode_example(features: &[(&str, Value<'_>)], out: &mut Vec<u8>) {
    out.clear();
    // Sizes are computed bottom-up so that everything is written once.
    let list_body = |v: &Value<'_>| -> usize {
        match v {
            Value::Bytes(b) => 1 + varint_len(b.len() as u64) + b.len(),
            Value::Int64(xs) => {
                let n: usize = xs.iter().map(|&x| varint_len(x as u64)).sum();
                if xs.is_empty() { 0 } else { 1 + varint_len(n as u64) + n }
            }
            Value::Float(xs) => {
                let n = xs.len() * 4;
                if xs.is_empty() { 0 } else { 1 + varint_len(n as u64) + n }
            }
        }
    };
    let feature_body = |v: &Value<'_>| {
        let l = list_body(v);
        1 + varint_len(l as u64) + l
    };
    let entry_body = |k: &str, v: &Value<'_>| {
        let f = feature_body(v);
        1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(f as u64) + f
    };
    let features_len: usize = features
        .iter()
        .map(|(k, v)| {
            let e = entry_body(k, v);
            1 + varint_len(e as u64) + e
        })
        .sum();
    out.push(0x0a);
    put_varint(out, features_len as u64);
    for (k, v) in features {
        out.push(0x0a);
        put_varint(out, entry_body(k, v) as u64);
        out.push(0x0a);
        put_varint(out, k.len() as u64);
        out.extend_from_slice(k.as_bytes());
        out.push(0x12);
        put_varint(out, feature_body(v) as u64);
        let tag = match v {
            Value::Bytes(_) => 0x0a,
            Value::Float(_) => 0x12,
            Value::Int64(_) => 0x1a,
        };
        out.push(tag);
        put_varint(out, list_body(v) as u64);
        match v {
            Value::Bytes(b) => {
                out.push(0x0a);
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Int64(xs) if !xs.is_empty() => {
                out.push(0x0a);
                put_varint(out, xs.iter().map(|&x| varint_len(x as u64)).sum::<usize>() as u64);
                for &x in *xs {
                    put_varint(out, x as u64);
                }
            }
            Value::Float(xs) if !xs.is_empty() => {
                out.push(0x0a);
                put_varint(out, (xs.len() * 4) as u64);
                for x in *xs {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new(vec!["x_0".into(), "x_1".into()], vec!["d".into()], true)
    }

    fn encode(features: &[(&str, Value<'_>)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_example(features, &mut out);
        out
    }

    fn good() -> Vec<u8> {
        encode(&[
            ("example_id", Value::Bytes(b"42")),
            ("x_1", Value::Int64(&[7, 8, -1])),
            ("y", Value::Int64(&[1])),
            ("x_0", Value::Int64(&[])),
            ("d", Value::Float(&[0.5])),
            ("ignored", Value::Float(&[1.0, 2.0])),
            ("loss_mask", Value::Int64(&[1])),
        ])
    }

    #[test]
    fn decodes_in_schema_order_whatever_the_record_order() {
        let mut d = ExampleDecoder::new(schema());
        let mut b = Batch::new(2, 1);
        d.decode_into(&good(), &mut b, RowSource { block: 0, record: 0 })
            .unwrap();
        assert!(b.is_consistent());
        assert_eq!(b.example_id(0), b"42");
        assert_eq!(b.offsets, vec![0, 0, 3]);
        assert_eq!(b.ids, vec![7, 8, -1]);
        assert_eq!(b.dense, vec![0.5]);
        assert_eq!(b.labels, vec![1.0]);
        assert_eq!(b.weights, vec![0.0]);
    }

    #[test]
    fn accepts_unpacked_lists() {
        // x_0 = int64_list with two unpacked values (tag 0x08 each).
        let mut rec = encode(&[
            ("example_id", Value::Bytes(b"a")),
            ("y", Value::Float(&[0.0])),
            ("d", Value::Float(&[2.0])),
        ]);
        // Append an entry by hand: key "x_0", Feature{int64_list{value:3, value:4}}.
        let list = [0x08, 3, 0x08, 4];
        let feature = [&[0x1a, list.len() as u8][..], &list].concat();
        let entry = [&[0x0a, 3][..], b"x_0", &[0x12, feature.len() as u8], &feature].concat();
        let mut features = rec[2..].to_vec();
        features.extend([&[0x0a, entry.len() as u8][..], &entry].concat());
        let ent2 = {
            let l: [u8; 2] = [0x08, 9];
            let f = [&[0x1a, 2][..], &l].concat();
            [&[0x0a, 3][..], b"x_1", &[0x12, f.len() as u8], &f].concat()
        };
        features.extend([&[0x0a, ent2.len() as u8][..], &ent2].concat());
        rec = [vec![0x0a, features.len() as u8], features].concat();
        let mut d = ExampleDecoder::new(schema());
        let mut b = Batch::new(2, 1);
        d.decode_into(&rec, &mut b, RowSource { block: 0, record: 0 }).unwrap();
        assert_eq!(b.ids, vec![3, 4, 9]);
    }

    #[test]
    fn wrong_type_names_the_feature() {
        let rec = encode(&[
            ("example_id", Value::Bytes(b"1")),
            ("x_0", Value::Float(&[1.0])),
            ("x_1", Value::Int64(&[1])),
            ("y", Value::Int64(&[0])),
            ("d", Value::Float(&[0.0])),
        ]);
        let mut b = Batch::new(2, 1);
        let e = ExampleDecoder::new(schema())
            .decode_into(&rec, &mut b, RowSource { block: 0, record: 0 })
            .unwrap_err();
        assert_eq!(e.feature, "x_0");
        assert!(
            e.message.contains("int64_list") && e.message.contains("float_list"),
            "{e:?}"
        );
        assert_eq!(b.rows, 0);
        assert!(b.is_consistent());
    }

    #[test]
    fn missing_feature_is_named_and_leaves_no_partial_row() {
        let mut d = ExampleDecoder::new(schema());
        let mut b = Batch::new(2, 1);
        d.decode_into(&good(), &mut b, RowSource { block: 0, record: 0 })
            .unwrap();
        let rec = encode(&[
            ("example_id", Value::Bytes(b"2")),
            ("x_0", Value::Int64(&[1])),
            ("d", Value::Float(&[0.0])),
        ]);
        let e = d
            .decode_into(&rec, &mut b, RowSource { block: 0, record: 1 })
            .unwrap_err();
        assert_eq!(e.feature, "x_1");
        assert!(e.message.contains("missing"));
        assert_eq!(b.rows, 1);
        assert!(b.is_consistent());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = ExampleDecoder::new(schema());
        let mut b = Batch::new(2, 1);
        let good = good();
        for cut in 1..good.len() {
            assert!(
                d.decode_into(&good[..cut], &mut b, RowSource { block: 0, record: 0 })
                    .is_err()
            );
        }
        for bytes in [&[0xff; 12][..], &[0x0a, 0x80], &[0x0b]] {
            let _ = d.decode_into(bytes, &mut b, RowSource { block: 0, record: 0 });
        }
        assert_eq!(b.rows, 0);
        assert!(b.is_consistent());
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut p = 0;
            assert_eq!(varint(&out, &mut p).unwrap(), v);
        }
    }
}
