//! Property tests: what the encoders write, the decoders read back exactly
//! (tf.Example, TFRecord framing plain and GZIP), and damaged framing is an
//! error, never a panic or a wrong record.

use proptest::prelude::*;
use vfl_data::example::{ExampleDecoder, Value, encode_example};
use vfl_data::tfrecord::{RecordReader, RecordWriter};
use vfl_data::{Batch, RowSource, Schema};

/// One leader example: id, label, mask, ids per slot, dense values.
#[derive(Clone, Debug)]
struct Example {
    id: Vec<u8>,
    label: i64,
    mask: i64,
    slots: Vec<Vec<i64>>,
    dense: Vec<f32>,
}

fn example(slots: usize, dense: usize) -> impl Strategy<Value = Example> {
    (
        proptest::collection::vec(any::<u8>(), 1..24),
        0i64..2,
        0i64..2,
        proptest::collection::vec(proptest::collection::vec(any::<i64>(), 0..6), slots),
        proptest::collection::vec(-1e30f32..1e30, dense),
    )
        .prop_map(|(id, label, mask, slots, dense)| Example {
            id,
            label,
            mask,
            slots,
            dense,
        })
}

fn encode(e: &Example, out: &mut Vec<u8>) {
    let names: Vec<String> = (0..e.slots.len()).map(|i| format!("x_{i}")).collect();
    let dnames: Vec<String> = (0..e.dense.len()).map(|i| format!("d_{i}")).collect();
    let label = [e.label];
    let mask = [e.mask];
    let mut f: Vec<(&str, Value<'_>)> = vec![
        ("example_id", Value::Bytes(&e.id)),
        ("y", Value::Int64(&label)),
        ("loss_mask", Value::Int64(&mask)),
    ];
    for (n, ids) in names.iter().zip(&e.slots) {
        f.push((n, Value::Int64(ids)));
    }
    let singles: Vec<[f32; 1]> = e.dense.iter().map(|v| [*v]).collect();
    for (n, v) in dnames.iter().zip(&singles) {
        f.push((n, Value::Float(v)));
    }
    encode_example(&f, out);
}

proptest! {
    #[test]
    fn tf_example_round_trips(examples in proptest::collection::vec(example(3, 2), 1..8)) {
        let schema = Schema::new(vec!["x_0".into(), "x_1".into(), "x_2".into()], vec!["d_0".into(), "d_1".into()], true);
        let mut dec = ExampleDecoder::new(schema);
        let mut batch = Batch::new(3, 2);
        let mut buf = Vec::new();
        for (r, e) in examples.iter().enumerate() {
            encode(e, &mut buf);
            dec.decode_into(&buf, &mut batch, RowSource { block: 0, record: r as u64 }).unwrap();
        }
        prop_assert!(batch.is_consistent());
        prop_assert_eq!(batch.rows, examples.len());
        for (r, e) in examples.iter().enumerate() {
            prop_assert_eq!(batch.example_id(r), &e.id[..]);
            prop_assert_eq!(batch.labels[r], e.label as f32);
            prop_assert_eq!(batch.weights[r], 1.0 - e.mask as f32);
            for (s, ids) in e.slots.iter().enumerate() {
                let i = r * 3 + s;
                let (a, b) = (batch.offsets[i] as usize, batch.offsets[i + 1] as usize);
                prop_assert_eq!(&batch.ids[a..b], &ids[..]);
            }
            prop_assert_eq!(&batch.dense[r * 2..r * 2 + 2], &e.dense[..]);
        }
    }

    #[test]
    fn tfrecord_round_trips_plain_and_gzip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..12)) {
        let mut w = RecordWriter::new(Vec::new());
        for r in &records {
            w.write_record(r).unwrap();
        }
        let plain = w.into_inner();
        let read = |bytes: &[u8]| {
            let mut out = Vec::new();
            let mut r = RecordReader::new(bytes);
            while let Some(rec) = r.next_record().unwrap() {
                out.push(rec.to_vec());
            }
            out
        };
        prop_assert_eq!(&read(&plain), &records);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let mut r = RecordReader::new(flate2::read::MultiGzDecoder::new(&gz[..]));
        let mut back = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            back.push(rec.to_vec());
        }
        prop_assert_eq!(back, records);
    }

    /// Cut anywhere or with a byte flipped, a TFRecord stream yields a
    /// prefix of the records it held, then an error or the end: never a
    /// changed record.
    #[test]
    fn damaged_tfrecord_never_yields_a_wrong_record(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..100), 1..6),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut w = RecordWriter::new(Vec::new());
        for r in &records {
            w.write_record(r).unwrap();
        }
        let plain = w.into_inner();
        let mut damaged = plain[..cut.index(plain.len() + 1)].to_vec();
        if !damaged.is_empty() {
            let i = flip.index(damaged.len());
            damaged[i] ^= 1 << bit;
        }
        let mut r = RecordReader::new(&damaged[..]);
        let mut n = 0;
        while let Ok(Some(rec)) = r.next_record() {
            prop_assert_eq!(rec, &records[n][..]);
            n += 1;
        }
    }
}
