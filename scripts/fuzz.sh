#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets in fuzz/ on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the sanitizer-coverage flags).
#
#   scripts/fuzz.sh smoke [SECONDS]      every target for SECONDS (default 15): CI
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

run_one() {
  local t=$1 secs=$2 scratch="target/fuzz-corpus/$1"
  mkdir -p "$scratch" "fuzz/corpus/$t"
  echo "== fuzz $t for ${secs}s"
  (cd fuzz && cargo fuzz run --sanitizer none "$t" "../$scratch" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|INFO: seed corpus|==[0-9]+==|SUMMARY|thread .* panicked|Test unit written)' || true)
  if compgen -G "fuzz/artifacts/$t/crash-*" >/dev/null || compgen -G "fuzz/artifacts/$t/oom-*" >/dev/null; then
    echo "fuzz: $t found a failure: $(ls fuzz/artifacts/"$t")" >&2
    return 1
  fi
}

(cd fuzz && cargo fuzz build --sanitizer none >/dev/null)
case "${1:-smoke}" in
  smoke) for t in $(targets); do run_one "$t" "${2:-15}"; done ;;
  campaign) for t in $(targets); do run_one "$t" "${2:-600}"; done ;;
  run) run_one "$2" "$3" ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
