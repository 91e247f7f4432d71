#!/usr/bin/env bash
# Training throughput of a leader/follower pair (two processes, simulated
# RA-TLS on loopback) with and without a flood of unauthenticated probes on
# the leader's port (crates/cli/examples/probe_flood.rs), in alternating
# rounds so that the machine's noise hits both alike. Prints examples/s per
# round and the median ratio; fails if a probe made the leader restart its
# session. Usage: scripts/bench-flood.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
cargo build --release -q -p vfl-cli --example probe_flood
vfl=target/release/vfl
flood=target/release/examples/probe_flood
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$vfl" data generate --out "$work/data" --files 4 --rows-per-file 12000 --slots 512 >/dev/null
# shellcheck source=scripts/sim-policy.sh
. scripts/sim-policy.sh
sim_policy "$vfl" "$work"
sec=(--attestation simulated --sim-root-key "$work/root.pem" --policy "$work/policy.json" --model wide_n_deep_adam --batch-size 256 --threads 1)
run() {
  local port=$1 with=$2 fpid=
  "$vfl" leader --data-path "$work/data/leader" --local-addr "127.0.0.1:$port" "${sec[@]}" >"$work/l.out" 2>"$work/l.err" &
  local lpid=$!
  if [ "$with" = flood ]; then
    sleep 0.3
    "$flood" "127.0.0.1:$port" 2>/dev/null &
    fpid=$!
  fi
  "$vfl" follower --data-path "$work/data/follower" --peer-addr "127.0.0.1:$port" "${sec[@]}" >/dev/null 2>"$work/f.err"
  wait "$lpid"
  if [ -n "$fpid" ]; then kill "$fpid" 2>/dev/null || true; wait "$fpid" 2>/dev/null || true; fi
  local rate
  rate=$(sed -n 's/.*(\([0-9]*\) examples\/s).*/\1/p' "$work/l.out")
  if [ -z "$rate" ] || grep -q "starting the session over" "$work/l.err"; then
    mkdir -p target/bench-flood-failed
    cp "$work"/l.out "$work"/l.err "$work"/f.err target/bench-flood-failed/
    echo "bench-flood: the $with run on port $port did not finish cleanly (no rate, or a session restart); logs in target/bench-flood-failed/" >&2
    tail -n 5 "$work/l.err" "$work/f.err" >&2
    return 1
  fi
  echo "$rate"
}
# Ports below the kernel's ephemeral range (32768-60999 by default), so no
# client socket of an earlier round can hold them.
ratios=()
for r in $(seq 1 "$rounds"); do
  a=$(run $((21000 + 2 * r)) quiet)
  b=$(run $((21001 + 2 * r)) flood)
  echo "round $r: quiet $a examples/s, under probes $b examples/s"
  ratios+=("$(python3 -c "print($b / $a)")")
done
python3 -c "import statistics,sys; v=sorted(map(float, sys.argv[1:])); print(f'median ratio (probes/quiet): {statistics.median(v):.3f} over {len(v)} rounds')" "${ratios[@]}"
