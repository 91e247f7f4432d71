#!/usr/bin/env bash
# `vfl join` against a plaintext local join of the same files by coreutils
# (`LC_ALL=C sort` + `join`), in alternating rounds so that the machine's
# noise hits both alike. Data: CSV from `vfl data generate --csv --shared
# 0.3333 --shuffle-follower` (half of each party's rows shared, the
# follower's shuffled). Both vfl processes run on this machine over
# simulated RA-TLS on loopback and write their outputs (TFRecord, the
# default, and CSV with --output-format csv). Prints wall seconds, rows/s
# and peak RSS per party.
#
#   scripts/bench-join.sh [ROWS_PER_PARTY] [ROUNDS] [MEMORY_LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-4000000}
rounds=${2:-3}
mem=${3:-256M}
cargo build --release -q -p vfl-cli
vfl=$PWD/target/release/vfl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
files=12
# A party holds 2/3 of the generated ids (1/3 shared, 1/3 its own).
per_file=$(( (rows * 3 / 2 + files - 1) / files ))
"$vfl" data generate --out "$work/raw" --csv --shared 0.3333 --shuffle-follower \
  --files "$files" --rows-per-file "$per_file" --slots 10 | sed 's/^/data: /'
# shellcheck source=scripts/sim-policy.sh
. scripts/sim-policy.sh
sim_policy "$vfl" "$work"
sec=(--attestation simulated --sim-root-key "$work/root.pem" --policy "$work/policy.json" --memory-limit "$mem")

coreutils() {
  local t0 t1
  t0=$(date +%s.%N)
  for role in leader follower; do
    for f in "$work/raw/$role"/*.csv; do tail -n +2 "$f"; done | LC_ALL=C sort -t, -k1,1 -o "$work/$role.sorted"
  done
  LC_ALL=C join -t, "$work/leader.sorted" "$work/follower.sorted" >"$work/joined.csv"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}

# Both sides; prints "wall_s leader_rss_kib follower_rss_kib intersection".
vfljoin() {
  local format=$1 port=$2 t0 t1
  rm -rf "$work/out"
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/l.rss" "$vfl" --loglevel warn join leader --data-path "$work/raw/leader" \
    --output-path "$work/out/leader" --local-addr "127.0.0.1:$port" --output-format "$format" "${sec[@]}" >"$work/l.out" 2>"$work/l.err" &
  local lpid=$!
  /usr/bin/time -f "%M" -o "$work/f.rss" "$vfl" --loglevel warn join follower --data-path "$work/raw/follower" \
    --output-path "$work/out/follower" --peer-addr "127.0.0.1:$port" --output-format "$format" "${sec[@]}" >"$work/f.out" 2>"$work/f.err"
  wait "$lpid"
  t1=$(date +%s.%N)
  local n
  n=$(sed -n 's/.*intersection \([0-9]*\) rows.*/\1/p' "$work/l.out")
  if [ -z "$n" ]; then
    cat "$work/l.err" "$work/f.err" >&2
    return 1
  fi
  echo "$(echo "$t1 - $t0" | bc) $(tail -n 1 "$work/l.rss") $(tail -n 1 "$work/f.rss") $n"
}

lrows=$(cat "$work"/raw/leader/*.csv | wc -l)
echo "leader rows (with headers): $lrows"
for r in $(seq 1 "$rounds"); do
  c=$(coreutils)
  cn=$(wc -l <"$work/joined.csv")
  read -r tt lr fr n <<<"$(vfljoin tfrecord $((22000 + 2 * r)))"
  read -r tc lrc frc nc <<<"$(vfljoin csv $((22001 + 2 * r)))"
  if [ "$n" != "$cn" ] || [ "$nc" != "$cn" ]; then
    echo "intersections differ: coreutils $cn, vfl $n / $nc" >&2
    exit 1
  fi
  echo "round $r: coreutils sort+join ${c}s; vfl join (tfrecord out) ${tt}s, ratio $(echo "scale=2; $tt / $c" | bc), RSS leader ${lr} KiB follower ${fr} KiB; (csv out) ${tc}s, ratio $(echo "scale=2; $tc / $c" | bc), RSS ${lrc}/${frc} KiB; intersection $n"
done
