#!/usr/bin/env bash
# enclave-vfl on SGX with Gramine: the original's workflow (data, make,
# leader, follower) without its pain. Run inside the enclave-vfl SGX image
# (deploy/Dockerfile) or on a host with Gramine >= 1.8 and the DCAP quote
# provider installed. See docs/sgx.md.
#
#   vfl-sgx.sh data ROLE [flags]          generate this party's demo data into /srv/vfl/data
#   vfl-sgx.sh make                       render + sign the manifest, print the identity,
#                                         write vfl-identity.json (send it to the peer)
#   vfl-sgx.sh check-peer FILE            compare the peer's identity file with ours
#   vfl-sgx.sh trust FILE                 add the peer's identity file to dynamic_config.json
#                                         (only for policies that name peers explicitly;
#                                         the shipped "self" policy needs nothing)
#   vfl-sgx.sh leader                     run the leader enclave (VFL_LOCAL_ADDR, default 0.0.0.0:50051)
#   vfl-sgx.sh follower ADDR              run the follower enclave against the leader at ADDR
#
# Settings (environment; both parties must use the same values, since they
# are measured into the enclave): VFL_MODEL (wide_n_deep), VFL_BATCH_SIZE (32),
# VFL_APPLICATION_ID (vfl), VFL_THREADS (2), VFL_EPOCH_NUM (1),
# VFL_SAVE_CHECKPOINT_STEPS (1000), VFL_ISV_PROD_ID (1), VFL_ISV_SVN (1),
# VFL_ENCLAVE_SIZE (512M), VFL_MAX_THREADS (16), VFL_LOG_LEVEL (error).
# VFL_SIGNING_KEY: the enclave signing key (created with
# gramine-sgx-gen-private-key when missing; keep it private).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
app=${VFL_APP_DIR:-/app}
build=${VFL_BUILD_DIR:-/srv/vfl/build}
key=${VFL_SIGNING_KEY:-$build/enclave-key.pem}

die() { echo "vfl-sgx: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }

arch_libdir() {
  if [ -n "${VFL_ARCH_LIBDIR:-}" ]; then echo "$VFL_ARCH_LIBDIR"; return; fi
  # Same value gramine-manifest's default templates use on Debian/Ubuntu.
  echo "/lib/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)"
}

cmd_data() {
  [ $# -ge 1 ] || die "usage: vfl-sgx.sh data leader|follower [vfl data generate flags]"
  local role=$1 tmp
  shift
  case "$role" in leader | follower) ;; *) die "role must be leader or follower" ;; esac
  tmp=$(mktemp -d)
  "$app/vfl" data generate --out "$tmp" "$@"
  mkdir -p /srv/vfl/data
  cp -r "$tmp/$role/." /srv/vfl/data/
  rm -rf "$tmp"
  echo "the $role's demo data is in /srv/vfl/data"
}

cmd_make() {
  need gramine-manifest "install Gramine >= 1.8 (or use the enclave-vfl SGX image)"
  need gramine-sgx-sign "install Gramine >= 1.8"
  need gramine-sgx-sigstruct-view "install Gramine >= 1.8"
  mkdir -p "$build"
  if [ ! -f "$key" ]; then
    need gramine-sgx-gen-private-key "install Gramine >= 1.8"
    gramine-sgx-gen-private-key "$key"
    chmod 600 "$key"
    echo "created enclave signing key $key (keep it private; its MRSIGNER: $("$app/vfl" attest mrsigner --key "$key"))"
  fi
  gramine-manifest \
    -Dlog_level="${VFL_LOG_LEVEL:-error}" \
    -Darch_libdir="$(arch_libdir)" \
    -Disv_prod_id="${VFL_ISV_PROD_ID:-1}" \
    -Disv_svn="${VFL_ISV_SVN:-1}" \
    -Denclave_size="${VFL_ENCLAVE_SIZE:-512M}" \
    -Dmax_threads="${VFL_MAX_THREADS:-16}" \
    -Dmodel="${VFL_MODEL:-wide_n_deep}" \
    -Dbatch_size="${VFL_BATCH_SIZE:-32}" \
    -Dapplication_id="${VFL_APPLICATION_ID:-vfl}" \
    -Dthreads="${VFL_THREADS:-2}" \
    -Depoch_num="${VFL_EPOCH_NUM:-1}" \
    -Dsave_checkpoint_steps="${VFL_SAVE_CHECKPOINT_STEPS:-1000}" \
    "$here/vfl.manifest.template" "$build/vfl.manifest"
  # --date fixes the SIGSTRUCT date so that two signings are byte-identical
  # (the date is not part of MRENCLAVE either way).
  gramine-sgx-sign --manifest "$build/vfl.manifest" --output "$build/vfl.manifest.sgx" \
    --key "$key" --date 0000-00-00
  gramine-sgx-sigstruct-view --output-format json "$build/vfl.sig" >"$build/sigstruct.json"
  python3 - "$build/sigstruct.json" "$build/vfl-identity.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ident = {k: s[k] for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")}
ident["debug"] = bool(s.get("debug_enclave", False))
json.dump(ident, open(sys.argv[2], "w"), indent=2)
for k, v in ident.items():
    print(f"{k}: {v}")
PY
  echo "identity written to $build/vfl-identity.json: send it to the peer; its mr_enclave must equal yours"
}

cmd_check_peer() {
  [ $# -eq 1 ] || die "usage: vfl-sgx.sh check-peer PEER-IDENTITY.json"
  [ -f "$build/vfl-identity.json" ] || die "run 'vfl-sgx.sh make' first"
  python3 - "$build/vfl-identity.json" "$1" <<'PY'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
bad = [k for k in ("mr_enclave", "isv_prod_id") if ours[k] != theirs[k]]
if theirs.get("debug"):
    bad.append("debug")
if bad:
    for k in bad:
        print(f"differs: {k}: ours {ours.get(k)}, peer {theirs.get(k)}")
    print("the peer built a different enclave: compare source revision, image and VFL_* settings")
    sys.exit(1)
print(f"same enclave {ours['mr_enclave']}; peer signer {theirs['mr_signer']}")
PY
}

cmd_trust() {
  [ $# -eq 1 ] || die "usage: vfl-sgx.sh trust PEER-IDENTITY.json"
  # The manifest measures /app/dynamic_config.json: edit that copy, then re-sign.
  "$app/vfl" attest trust --identity "$1" --policy "$app/dynamic_config.json" --min-svn
  echo "the policy is measured: run 'vfl-sgx.sh make' again (MRENCLAVE changes)"
}

run_enclave() {
  need gramine-sgx "install Gramine >= 1.8"
  [ -f "$build/vfl.manifest.sgx" ] || die "run 'vfl-sgx.sh make' first"
  [ -e /dev/sgx_enclave ] || die "/dev/sgx_enclave missing: run on an SGX host (docker run --device /dev/sgx_enclave --device /dev/sgx_provision)"
  mkdir -p /srv/vfl/state
  cd "$build"
  exec gramine-sgx vfl
}

cmd_leader() {
  export VFL_ROLE=leader
  export VFL_LOCAL_ADDR=${VFL_LOCAL_ADDR:-0.0.0.0:50051}
  run_enclave
}

cmd_follower() {
  [ $# -eq 1 ] || die "usage: vfl-sgx.sh follower LEADER-HOST:PORT"
  export VFL_ROLE=follower
  export VFL_PEER_ADDR=$1
  run_enclave
}

case "${1:-}" in
  data) shift; cmd_data "$@" ;;
  make) shift; cmd_make "$@" ;;
  check-peer) shift; cmd_check_peer "$@" ;;
  trust) shift; cmd_trust "$@" ;;
  leader) shift; cmd_leader "$@" ;;
  follower) shift; cmd_follower "$@" ;;
  *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
