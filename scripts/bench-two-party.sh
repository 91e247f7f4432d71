#!/usr/bin/env bash
# Two-party benchmark: leader and follower as two processes on loopback
# (plaintext gRPC), wide_n_deep, one thread each, one epoch over generated
# TFRecord data. Reports examples/s, time from start to the first training
# step (leader log) and peak RSS of each party, for each batch size, next to
# the in-process loop on the same files.
#
# Usage: scripts/bench-two-party.sh [batch sizes...]   (default: 32 256)
# Needs GNU time (/usr/bin/time, Debian package `time`) for peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
vfl=target/release/vfl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$vfl" data generate --out "$work/train" --files 10 --rows-per-file 2000 >/dev/null
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(32 256)
printf '%6s %14s %14s %12s %12s %12s\n' batch two-proc-ex/s in-proc-ex/s first-step-ms leader-KiB follower-KiB
for b in "${sizes[@]}"; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  /usr/bin/time -f '%M' -o "$work/f.rss" "$vfl" follower --insecure-no-tls --model wide_n_deep --threads 1 \
    --batch-size "$b" --data-path "$work/train/follower" --peer-addr "127.0.0.1:$port" >/dev/null 2>&1 &
  fpid=$!
  /usr/bin/time -f '%M' -o "$work/l.rss" "$vfl" leader --insecure-no-tls --model wide_n_deep --threads 1 \
    --batch-size "$b" --data-path "$work/train/leader" --local-addr "127.0.0.1:$port" >"$work/l.out" 2>"$work/l.err"
  wait "$fpid"
  two=$(sed -n 's/.*(\([0-9]*\) examples\/s).*/\1/p' "$work/l.out")
  first=$(sed -n 's/.*ms_since_start=\([0-9]*\).*/\1/p' "$work/l.err" | head -n 1)
  one=$("$vfl" demo --in-process --work-dir "$work/inproc" --model wide_n_deep --threads 1 --epoch-num 1 \
    --batch-size "$b" | sed -n 's/.*= \([0-9]*\) examples\/s.*/\1/p')
  printf '%6s %14s %14s %12s %12s %12s\n' "$b" "$two" "$one" "$first" "$(cat "$work/l.rss")" "$(cat "$work/f.rss")"
done
