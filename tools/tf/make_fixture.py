#!/usr/bin/env python3
"""Writes the TensorFlow-made TFRecord fixtures used by enclave-vfl's tests.

Run where TensorFlow is installed (tested with tensorflow-cpu 2.21):
    python3 tools/tf/make_fixture.py crates/data/tests/fixtures

Writes, with TensorFlow's own writers:
  tf_written.tfrecord         plain TFRecord, 5 tf.train.Example records
  tf_written_gzip.tfrecord    same records, compression_type="GZIP"
                              (no .gz suffix: readers must sniff it)
  tf_written.json             the values, for the test to compare with
Records mix int64 lists of several lengths (including empty), negative and
large ids, floats, bytes ids and labels given as int64 and as float.
"""
import json
import os
import sys

import tensorflow as tf


def feature(kind, values):
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def main(out):
    os.makedirs(out, exist_ok=True)
    rows = []
    for i in range(5):
        rows.append({
            "example_id": f"tf-{i}",
            "y": i % 2,
            "loss_mask": 1 if i == 3 else 0,
            "x_0": [i, 100 - i],
            "x_1": [] if i == 2 else [7 * i],
            "x_2": [-(i + 1), 2**40 + i] if i == 4 else [i],
            "d_0": 0.25 * i - 0.5,
        })
    examples = []
    for r in rows:
        f = {
            "example_id": feature("bytes", [r["example_id"]]),
            "y": feature("int64", [r["y"]]) if r["y"] == 0 else feature("float", [float(r["y"])]),
            "loss_mask": feature("int64", [r["loss_mask"]]),
            "x_0": feature("int64", r["x_0"]),
            "x_1": feature("int64", r["x_1"]),
            "x_2": feature("int64", r["x_2"]),
            "d_0": feature("float", [r["d_0"]]),
        }
        examples.append(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
    with tf.io.TFRecordWriter(os.path.join(out, "tf_written.tfrecord")) as w:
        for e in examples:
            w.write(e)
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(out, "tf_written_gzip.tfrecord"), options=opts) as w:
        for e in examples:
            w.write(e)
    with open(os.path.join(out, "tf_written.json"), "w") as f:
        json.dump({"tensorflow": tf.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "crates/data/tests/fixtures")
