#!/usr/bin/env bash
# Builds the enclave variant of `vfl` (no `dev` feature: no simulated
# attestation, development PKI, plaintext transport or storage, demo or
# benchmarks) and checks that it refuses all of them, whatever it is given.
# Run by .ci/run after the test suite; usable by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

# One invocation builds the enclave variant of the binary (integration
# tests get it built) and the library-level checks of that build (typed
# refusals), with one feature resolution: two invocations resolved the
# dependencies' features differently and rebuilt half the graph.
echo "== enclave build: the vfl binary and the library checks of that build"
out=$(cargo test --release --locked -p vfl-cli --no-default-features --test enclave_build 2>&1) ||
  { echo "$out" >&2; exit 1; }
echo "$out"
grep -q '^test result: ok\. [1-9]' <<<"$out" || { echo "enclave-build-check: the enclave_build tests did not run" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp target/release/vfl "$work/vfl-enclave"
vfl="$work/vfl-enclave"
fail() { echo "enclave-build-check: $*" >&2; exit 1; }

# expect STATUS PATTERN CMD...: CMD exits with STATUS and says PATTERN.
expect() {
  local want=$1 pattern=$2 out status
  shift 2
  set +e
  out=$("$@" 2>&1)
  status=$?
  set -e
  [ "$status" = "$want" ] || fail "'$*' exited $status, expected $want: $out"
  grep -q -- "$pattern" <<<"$out" || fail "'$*' did not say '$pattern': $out"
}

# No demo or benchmark commands.
help=$("$vfl" --help)
for gone in demo bench; do
  if grep -qE "^  $gone " <<<"$help"; then fail "the enclave build offers '$gone'"; fi
done
expect 2 "unrecognized subcommand" "$vfl" demo
expect 2 "unrecognized subcommand" "$vfl" attest bench

# No simulated evidence, no plaintext transport, no development keys. A
# stand-in for Gramine's /dev/attestation (type and sealing key, no quote)
# gets a party past its first checks.
mkdir -p "$work/data" "$work/dev/keys"
printf dcap >"$work/dev/attestation_type"
printf '0123456789abcdef' >"$work/dev/keys/_sgx_mrenclave"
cat >"$work/policy.json" <<'EOF'
{"verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
 "sgx_mrs": []}
EOF
cat >"$work/sim-policy.json" <<'EOF'
{"verify_mr_enclave": "on", "verify_mr_signer": "off", "verify_isv_prod_id": "off", "verify_isv_svn": "off",
 "sgx_mrs": [], "allow_simulated": true,
 "simulated_roots": ["abababababababababababababababababababababababababababababababab"]}
EOF
party=("$vfl" leader --data-path "$work/data" --attestation-device "$work/dev" --local-addr 127.0.0.1:0)
expect 2 "invalid value 'simulated'" "${party[@]}" --policy "$work/policy.json" --attestation simulated
expect 2 "invalid value 'simulated-tdx'" "${party[@]}" --policy "$work/policy.json" --attestation simulated-tdx
expect 2 "unexpected argument '--insecure-no-tls'" "${party[@]}" --insecure-no-tls
expect 2 "unexpected argument '--sim-root-key'" "$vfl" attest self --sim-root-key "$work/k.pem"
expect 1 "seals only with sgx-mrenclave" "${party[@]}" --policy "$work/policy.json" --model-key "file:$work/k"
expect 1 "seals its state" "${party[@]}" --policy "$work/policy.json" --model-key none

# A policy that admits simulated peers is refused, whatever the flags.
expect 1 "no simulated attestation" "${party[@]}" --policy "$work/sim-policy.json"
fix=crates/attest/tests/fixtures/dcap-qvl
expect 1 "no simulated attestation" "$vfl" attest verify --quote "$fix/sgx_quote" \
  --collateral "$fix/sgx_quote_collateral.json" --at 2025-06-20T00:00:00Z --policy "$work/sim-policy.json"

# With a good policy the party seals with the enclave's key and then needs
# a real quote, which only the enclave has.
expect 1 "$work/dev/quote" "${party[@]}" --policy "$work/policy.json"

echo "enclave build: all refusals hold"
