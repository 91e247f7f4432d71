#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets in fuzz/ on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the sanitizer-coverage flags).
#
#   scripts/fuzz.sh smoke [SECONDS]      every target for SECONDS (default 15), an
#                                        unoptimised build (a minute faster cold)
#   scripts/fuzz.sh campaign [SECONDS]   every target for SECONDS (default 600)
#   scripts/fuzz.sh run TARGET SECONDS   one target
#
# New inputs go to a scratch corpus (target/fuzz-corpus/TARGET), seeded from
# the committed seeds (fuzz/corpus/TARGET); a crash leaves its input in
# fuzz/artifacts/TARGET/ and fails the script. Targets: one per parser of
# untrusted or host-controlled bytes (see fuzz/Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null
fi

targets() { sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^vfl-fuzz$'; }

# The smoke builds without optimisation; the campaign and single runs with.
profile=()
[ "${1:-smoke}" = smoke ] && profile=(--dev)

run_one() {
  local t=$1 secs=$2 scratch="target/fuzz-corpus/$1" log status
  mkdir -p "$scratch" "fuzz/corpus/$t"
  rm -rf "fuzz/artifacts/$t"
  log=$(mktemp)
  echo "== fuzz $t for ${secs}s"
  set +e
  (cd fuzz && cargo fuzz run ${profile[@]+"${profile[@]}"} --sanitizer none "$t" "../$scratch" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1) >"$log" 2>&1
  status=$?
  set -e
  grep -E '^(stat::number_of_executed_units|stat::peak_rss|INFO: seed corpus|SUMMARY|thread .* panicked|Test unit written)' "$log" || true
  if [ "$status" -ne 0 ] || compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t failed (exit $status): $(ls "fuzz/artifacts/$t" 2>/dev/null)" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

(cd fuzz && cargo fuzz build ${profile[@]+"${profile[@]}"} --sanitizer none >/dev/null)
case "${1:-smoke}" in
  smoke) for t in $(targets); do run_one "$t" "${2:-15}"; done ;;
  campaign) for t in $(targets); do run_one "$t" "${2:-600}"; done ;;
  run) run_one "$2" "$3" ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
