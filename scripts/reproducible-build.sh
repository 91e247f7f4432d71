#!/usr/bin/env bash
# Reproducible release build of `vfl`: builds the same source twice, in two
# different directories with separate target directories, and compares the
# binaries byte for byte. Both parties can then build the enclave's binary
# themselves and get the peer's MRENCLAVE from source.
#
# The build command (also used by deploy/Dockerfile):
#   CARGO_INCREMENTAL=0 SOURCE_DATE_EPOCH=1 \
#   RUSTFLAGS="--remap-path-prefix=$SRC=/enclave-vfl --remap-path-prefix=$CARGO_HOME=/cargo \
#              -C link-arg=-Wl,--build-id=none" \
#   cargo build --profile enclave --locked -p vfl-cli --no-default-features   (-> target/enclave/vfl)
# with the same Rust toolchain (the one checked below), dependencies pinned
# by Cargo.lock, and codegen fixed by [profile.enclave] in Cargo.toml (fat
# LTO in one codegen unit: cross-crate ThinLTO makes the output depend on the
# build directory).
#
# Usage: scripts/reproducible-build.sh [work-dir]   (takes two cold release builds)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
mkdir -p "$work"
toolchain=1.95.0
if ! rustc --version | grep -q "^rustc $toolchain "; then
  echo "warning: rustc is $(rustc --version), the documented release toolchain is $toolchain;" \
    "binaries built by different toolchains differ" >&2
fi

build() {
  local dir=$1
  rm -rf "$dir"
  mkdir -p "$dir"
  # Only tracked files: what a clean checkout has.
  git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$dir")
  (
    cd "$dir"
    CARGO_INCREMENTAL=0 SOURCE_DATE_EPOCH=1 \
      RUSTFLAGS="--remap-path-prefix=$dir=/enclave-vfl --remap-path-prefix=$cargo_home=/cargo -C link-arg=-Wl,--build-id=none" \
      CARGO_TARGET_DIR="$dir/target" \
      cargo build --profile enclave --locked -q -p vfl-cli --no-default-features
  )
  sha256sum "$dir/target/enclave/vfl" | cut -d' ' -f1
}

a=$(build "$work/build-a")
b=$(build "$work/other-place/build-b")
echo "build A ($work/build-a): $a"
echo "build B ($work/other-place/build-b): $b"
if [ "$a" = "$b" ]; then
  echo "reproducible: identical binaries"
else
  echo "NOT reproducible: the binaries differ" >&2
  cmp "$work/build-a/target/enclave/vfl" "$work/other-place/build-b/target/enclave/vfl" | head -n 5 >&2 || true
  exit 1
fi
