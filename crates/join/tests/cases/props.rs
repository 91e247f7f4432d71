//! Property tests: the leader's matcher against a set intersection for any
//! chunking, the follower's reading of its answers, frame round trips, and
//! CSV rows converted to tf.Examples that decode to the same values.

use proptest::prelude::*;
use prost::Message;
use vfl_data::example::ExampleDecoder;
use vfl_data::{Batch, RowSource, Schema};
use vfl_join::pb::{self, frame::Kind};
use vfl_join::protocol::{CHUNK_TAGS, Matcher, decode, read_matches};
use vfl_join::tags::Tag;

fn tags(max: usize) -> impl Strategy<Value = Vec<Tag>> {
    proptest::collection::btree_set(any::<[u8; 16]>(), 0..max).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #[test]
    fn the_matcher_finds_exactly_the_intersection(own in tags(200), theirs in tags(200), chunk in 1usize..50) {
        let mut m = Matcher::new(0, 0, &own);
        let mut hits = Vec::new();
        let chunks: Vec<&[Tag]> = if theirs.is_empty() { vec![&[][..]] } else { theirs.chunks(chunk).collect() };
        for (i, c) in chunks.iter().enumerate() {
            let t = pb::Tags { partition: 0, tags: c.concat().into(), last: i + 1 == chunks.len() };
            let bits = m.answer(&t).unwrap();
            let got = read_matches(0, c.len(), &pb::Matches { partition: 0, bits: bits.into() }).unwrap();
            hits.extend(c.iter().zip(got).filter(|(_, h)| *h).map(|(t, _)| *t));
        }
        let want: Vec<Tag> = theirs.iter().filter(|t| own.contains(t)).copied().collect();
        prop_assert_eq!(&hits, &want);
        let leader: Vec<Tag> = m.matched().iter().map(|&i| own[i]).collect();
        prop_assert_eq!(leader, want);
    }

    #[test]
    fn frames_round_trip(p in any::<u32>(), raw in proptest::collection::vec(any::<u8>(), 0..512), last in any::<bool>()) {
        for kind in [
            Kind::Tags(pb::Tags { partition: p, tags: raw.clone().into(), last }),
            Kind::Matches(pb::Matches { partition: p, bits: raw.clone().into() }),
            Kind::Summary(pb::Summary { intersection: p as u64, blocks: 3, digest: raw.clone() }),
            Kind::Failure(pb::Failure { reason: String::from_utf8_lossy(&raw).into_owned() }),
        ] {
            let body = pb::Frame { kind: Some(kind.clone()) }.encode_to_vec();
            prop_assert_eq!(decode(&body).unwrap(), kind);
        }
    }

    #[test]
    fn csv_rows_become_examples_with_the_same_values(
        id in "[A-Za-z0-9_-]{1,20}",
        y in 0i64..2,
        xs in proptest::collection::vec(proptest::collection::vec(-1000i64..1000, 0..4), 3),
        d in -1.0e6f32..1.0e6,
    ) {
        let cell = |v: &Vec<i64>| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("|");
        let header = "id,y,x_0,x_1,x_2,d";
        let line = format!("{id},{y},{},{},{},{d:?}", cell(&xs[0]), cell(&xs[1]), cell(&xs[2]));
        let mut out = Vec::new();
        vfl_join::input::csv_to_example(header, &line, &mut out).unwrap();
        let mut schema = Schema::new(vec!["x_0".into(), "x_1".into(), "x_2".into()], vec!["d".into()], true);
        schema.vocab = vec![];
        let mut batch = Batch::new(3, 1);
        ExampleDecoder::new(schema).decode_into(&out, &mut batch, RowSource { block: 0, record: 0 }).unwrap();
        prop_assert_eq!(batch.example_id(0), id.as_bytes());
        prop_assert_eq!(batch.labels[0], y as f32);
        for (s, want) in xs.iter().enumerate() {
            let (a, b) = (batch.offsets[s] as usize, batch.offsets[s + 1] as usize);
            prop_assert_eq!(&batch.ids[a..b], &want[..]);
        }
        prop_assert_eq!(batch.dense[0], d);
    }
}

#[test]
fn a_chunk_over_the_limit_is_refused() {
    let own: Vec<Tag> = Vec::new();
    let mut m = Matcher::new(0, 0, &own);
    let t = pb::Tags {
        partition: 0,
        tags: vec![0u8; 16 * (CHUNK_TAGS + 1)].into(),
        last: true,
    };
    assert!(m.answer(&t).is_err());
}

#[test]
fn tags_after_the_last_chunk_are_refused() {
    let own: Vec<Tag> = Vec::new();
    let mut m = Matcher::new(0, 0, &own);
    let t = pb::Tags {
        partition: 0,
        tags: Vec::new().into(),
        last: true,
    };
    m.answer(&t).unwrap();
    assert!(matches!(m.answer(&t), Err(vfl_join::JoinError::Protocol(_))));
}

#[test]
fn matches_with_stray_bits_are_refused() {
    let m = pb::Matches {
        partition: 0,
        bits: vec![0b1000_0001].into(),
    };
    assert!(read_matches(0, 3, &m).is_err());
    assert_eq!(
        read_matches(
            0,
            1,
            &pb::Matches {
                partition: 0,
                bits: vec![1].into()
            }
        )
        .unwrap(),
        vec![true]
    );
}
