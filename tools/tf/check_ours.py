#!/usr/bin/env python3
"""Checks that TensorFlow reads files written by enclave-vfl.

Run where TensorFlow is installed (tested with tensorflow-cpu 2.21):
    vfl data generate --out /tmp/d --files 2 --rows-per-file 50 --slots 16
    vfl data generate --out /tmp/dz --files 2 --rows-per-file 50 --slots 16 --gzip
    python3 tools/tf/check_ours.py /tmp/d /tmp/dz

For each directory, every leader and follower file is parsed with
tf.data.TFRecordDataset (compression detected from the .gz suffix) and
tf.io.parse_single_example, with the original wide_n_deep feature spec
(example_id bytes, y and loss_mask int64 on the leader, x_i VarLen int64).
It checks ids are consecutive decimal row indices, that both parties hold
the same ids in the same order, that every slot holds one id in [0, 100],
and prints the number of records read. Exits non-zero on any mismatch.
"""
import glob
import os
import sys

import tensorflow as tf


def read_party(directory, leader, slots):
    spec = {"example_id": tf.io.FixedLenFeature([], tf.string)}
    if leader:
        spec["y"] = tf.io.FixedLenFeature([], tf.int64)
        spec["loss_mask"] = tf.io.FixedLenFeature([], tf.int64)
    for i in range(slots):
        spec[f"x_{i}"] = tf.io.VarLenFeature(tf.int64)
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "*.tfrecord*"))):
        comp = "GZIP" if path.endswith(".gz") else ""
        for raw in tf.data.TFRecordDataset(path, compression_type=comp):
            ex = tf.io.parse_single_example(raw, spec)
            ids = [ex[f"x_{i}"].values.numpy().tolist() for i in range(slots)]
            assert all(len(v) == 1 and 0 <= v[0] <= 100 for v in ids), (path, ids)
            if leader:
                assert int(ex["y"]) in (0, 1) and int(ex["loss_mask"]) in (0, 1)
            rows.append(ex["example_id"].numpy().decode())
    return rows


def count_slots(directory):
    path = sorted(glob.glob(os.path.join(directory, "leader", "*.tfrecord*")))[0]
    comp = "GZIP" if path.endswith(".gz") else ""
    raw = next(iter(tf.data.TFRecordDataset(path, compression_type=comp)))
    ex = tf.train.Example.FromString(raw.numpy())
    return sum(1 for k in ex.features.feature if k.startswith("x_"))


def main(dirs):
    for d in dirs:
        slots = count_slots(d)
        leader = read_party(os.path.join(d, "leader"), True, slots)
        follower = read_party(os.path.join(d, "follower"), False, slots)
        assert leader == follower, "parties disagree on ids"
        assert leader == [str(i) for i in range(len(leader))], "ids are not consecutive row indices"
        print(f"{d}: TensorFlow {tf.__version__} read {len(leader)} rows per party, {slots} slots: OK")


if __name__ == "__main__":
    main(sys.argv[1:])
