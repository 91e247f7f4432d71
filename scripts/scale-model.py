#!/usr/bin/env python3
"""Throughput model of synchronous scale-out (docs/scale-out.md) for N
worker pairs and S shards per party, each process on its own machine with
a W-bit/s network link, from quantities measured on one machine
(BENCHMARKS.md, "Scale-out": `vfl bench --sharded`).

Per step, serially (no overlap: conservative, see the tc check there):

  T(N) = C                        the pair's compute at batch B (single pair)
       + P_w                      worker-side parameter work (split, write back)
       + max(U B / W, N U B / (S W))   gradients up (worker link, shard ingress)
       + P_s N / S                shard-side combination and optimizer
       + max(D B / W, N D B / (S W))   new values down
       + 2 RTT

Efficiency = C / T(N): throughput relative to N single pairs.

Usage: scale-model.py [--gbit 10] [--rtt-ms 0.2]
"""
import argparse

# Measured on the 2-core machine (wide_n_deep, kernel avx2+fma; BENCHMARKS.md):
# single-pair examples/s by (batch, threads); bytes per example up and down
# (payload); parameter CPU time per step and worker, split worker/shard side.
MEASURED = {
    (256, 1): dict(single=2069, up=67_934, down=69_986),
    (256, 2): dict(single=3791, up=67_934, down=69_986),
    (1024, 1): dict(single=2412, up=17_579, down=17_579),
    (1024, 2): dict(single=4380, up=17_579, down=17_579),
}
P_WORKER = 0.018  # s per step: contributions (copy out) + replica write-back
P_SHARD = 0.020   # s per contribution: check, combine, optimizer (one shard = all)


def step_time(batch, single, up, down, n, s, w, rtt):
    c = batch / single
    up_t = max(up * batch / w, n * up * batch / (s * w))
    down_t = max(down * batch / w, n * down * batch / (s * w))
    return c, c + P_WORKER + up_t + P_SHARD * n / s + down_t + 2 * rtt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gbit", type=float, default=10.0)
    ap.add_argument("--rtt-ms", type=float, default=0.2)
    a = ap.parse_args()
    w = a.gbit * 1e9 / 8
    rtt = a.rtt_ms / 1e3
    ns = [2, 4, 8, 16]
    print(f"W = {a.gbit:g} Gbit/s, RTT {a.rtt_ms:g} ms; efficiency C/T(N) (throughput / N single pairs)\n")
    print("| batch | threads | S | " + " | ".join(f"N={n}" for n in ns) + " | examples/s at N=8 |")
    print("|---|---|---|" + "---|" * (len(ns) + 1))
    for (batch, threads), m in MEASURED.items():
        for s_label in ("N", "2"):
            effs = []
            for n in ns:
                s = n if s_label == "N" else 2
                c, t = step_time(batch, m["single"], m["up"], m["down"], n, s, w, rtt)
                effs.append(c / t)
                if n == 8:
                    eps8 = 8 * batch / t
            print(f"| {batch} | {threads} | {s_label} | " + " | ".join(f"{e:.2f}" for e in effs) + f" | {eps8:,.0f} |")


if __name__ == "__main__":
    main()
