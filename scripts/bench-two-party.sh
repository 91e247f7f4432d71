#!/usr/bin/env bash
# Two-party benchmark: leader and follower as two processes on loopback,
# wide_n_deep, one thread each, one epoch over generated TFRecord data.
# For each batch size it runs plaintext gRPC (--insecure-no-tls) and mutual
# RA-TLS (simulated attestation: the same TLS and verification code as with
# SGX, only the quotes come from a development PKI), interleaved over
# several rounds so that both see the same machine load, and reports the
# median examples/s of each, their ratio, time from start to the first
# training step (leader log) and peak RSS, next to the in-process loop.
#
# Usage: scripts/bench-two-party.sh [rounds] [batch sizes...]   (default: 3 rounds, 32 256)
# Needs GNU time (/usr/bin/time, Debian package `time`) for peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
vfl=$PWD/target/release/vfl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rounds=${1:-3}
shift || true
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(32 256)
"$vfl" data generate --out "$work/train" --files 10 --rows-per-file 2000 >/dev/null
# One development root and a policy accepting this binary (both parties).
# shellcheck source=scripts/sim-policy.sh
. scripts/sim-policy.sh
sim_policy "$vfl" "$work"
# shellcheck disable=SC2034  # both arrays are used through the nameref in run()
ratls=(--attestation simulated --sim-root-key "$work/root.pem" --policy "$work/policy.json")
# shellcheck disable=SC2034
plain=(--insecure-no-tls)

# run MODE BATCH -> "ex/s first-step-ms leader-KiB follower-KiB"
run() {
  local -n sec=$1
  local b=$2 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  /usr/bin/time -f '%M' -o "$work/f.rss" "$vfl" follower "${sec[@]}" --model wide_n_deep --threads 1 \
    --batch-size "$b" --data-path "$work/train/follower" --peer-addr "127.0.0.1:$port" >/dev/null 2>&1 &
  local fpid=$!
  /usr/bin/time -f '%M' -o "$work/l.rss" "$vfl" leader "${sec[@]}" --model wide_n_deep --threads 1 \
    --batch-size "$b" --data-path "$work/train/leader" --local-addr "127.0.0.1:$port" >"$work/l.out" 2>"$work/l.err"
  wait "$fpid"
  echo "$(sed -n 's/.*(\([0-9]*\) examples\/s).*/\1/p' "$work/l.out") \
$(sed -n 's/.*ms_since_start=\([0-9]*\).*/\1/p' "$work/l.err" | head -n 1) $(cat "$work/l.rss") $(cat "$work/f.rss")"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%6s %6s %12s %12s %7s %14s %12s %12s %12s\n' batch round plain-ex/s ratls-ex/s ratio first-step-ms leader-KiB follower-KiB in-proc-ex/s
for b in "${sizes[@]}"; do
  : >"$work/plain.$b"; : >"$work/ratls.$b"
  for r in $(seq "$rounds"); do
    read -r p pf pl pfo <<<"$(run plain "$b")"
    read -r t tf tl tfo <<<"$(run ratls "$b")"
    echo "$p" >>"$work/plain.$b"; echo "$t" >>"$work/ratls.$b"
    printf '%6s %6s %12s %12s %7s %14s %12s %12s\n' "$b" "$r" "$p" "$t" \
      "$(python3 -c "print(f'{$t/$p:.3f}')")" "$pf/$tf" "$pl/$tl" "$pfo/$tfo"
  done
  one=$("$vfl" demo --in-process --work-dir "$work/inproc" --model wide_n_deep --threads 1 --epoch-num 1 \
    --batch-size "$b" | sed -n 's/.*= \([0-9]*\) examples\/s.*/\1/p')
  mp=$(median <"$work/plain.$b"); mt=$(median <"$work/ratls.$b")
  printf '%6s %6s %12s %12s %7s %14s %12s %12s %12s\n' "$b" median "$mp" "$mt" \
    "$(python3 -c "print(f'{$mt/$mp:.3f}')")" "" "" "" "$one"
done
