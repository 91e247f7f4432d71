#!/usr/bin/env bash
# enclave-vfl on SGX with Gramine: the original's workflow (data, make,
# leader, follower) without its pain. Run inside the enclave-vfl SGX image
# (deploy/Dockerfile) or on a host with Gramine >= 1.8 and the DCAP quote
# provider installed. See docs/sgx.md.
#
#   vfl-sgx.sh data ROLE [flags]          generate this party's demo data into /srv/vfl/data
#   vfl-sgx.sh keygen ROLE                create this party's enclave signing key (once) and
#                                         write party-identity.json (send it to the peer)
#   vfl-sgx.sh trust PEER.json            add our own and the peer's identity to the policy
#                                         (both parties end up with the same file)
#   vfl-sgx.sh make                       render + sign the manifest, print the identity,
#                                         write vfl-identity.json (send it to the peer)
#   vfl-sgx.sh check-peer FILE            compare the peer's vfl-identity.json with ours
#   vfl-sgx.sh join-leader                align the rows first (vfl join, leader side) into
#                                         /srv/vfl/state/joined (sealed); training then reads them
#   vfl-sgx.sh join-follower ADDR         the same, follower side
#   vfl-sgx.sh leader                     run the leader enclave (VFL_LOCAL_ADDR, default 0.0.0.0:50051)
#   vfl-sgx.sh follower ADDR              run the follower enclave against the leader at ADDR
#   vfl-sgx.sh eval-leader EXPORT-DIR     evaluate a (sealed) export, leader side
#   vfl-sgx.sh eval-follower ADDR EXPORT-DIR   the same, follower side
#   vfl-sgx.sh shard|worker|coordinator   a scale-out process of this party (VFL_ROLE,
#                                         VFL_INDEX, VFL_WORKERS, VFL_SHARDS; follower
#                                         workers VFL_PEER_ADDR; see docs/scale-out.md)
#
# Settings (environment; both parties must use the same values, since they
# are measured into the enclave): VFL_MODEL (wide_n_deep), VFL_BATCH_SIZE (32),
# VFL_APPLICATION_ID (vfl), VFL_THREADS (2), VFL_EPOCH_NUM (1),
# VFL_SAVE_CHECKPOINT_STEPS (1000), VFL_ISV_PROD_ID (1), VFL_ISV_SVN (1),
# VFL_ENCLAVE_SIZE (512M), VFL_MAX_THREADS (16), VFL_LOG_LEVEL (error).
# VFL_SIGNING_KEY: this party's enclave signing key (created by keygen; keep
# it private: it is the party's identity towards the peer, though it opens
# no sealed state, which is bound to the exact enclave, not to the signer).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
app=${VFL_APP_DIR:-/app}
build=${VFL_BUILD_DIR:-/srv/vfl/build}
key=${VFL_SIGNING_KEY:-$build/enclave-key.pem}
policy=${VFL_POLICY:-$build/dynamic_config.json}

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

cmd_keygen() {
  [ $# -eq 1 ] || die "usage: vfl-sgx.sh keygen leader|follower"
  case "$1" in leader | follower) ;; *) die "role must be leader or follower" ;; esac
  mkdir -p "$build"
  if [ ! -f "$key" ]; then
    need gramine-sgx-gen-private-key "install Gramine >= 1.8"
    gramine-sgx-gen-private-key "$key"
    chmod 600 "$key"
    echo "created enclave signing key $key (keep it private)"
  fi
  "$app/vfl" attest party --role "$1" --key "$key" \
    --isv-prod-id "${VFL_ISV_PROD_ID:-1}" --isv-svn "${VFL_ISV_SVN:-1}" \
    --out "$build/party-identity.json"
  echo "send $build/party-identity.json to the peer, then run: vfl-sgx.sh trust PEER-IDENTITY.json"
}

cmd_trust() {
  [ $# -eq 1 ] || die "usage: vfl-sgx.sh trust PEER-IDENTITY.json"
  [ -f "$build/party-identity.json" ] || die "run 'vfl-sgx.sh keygen ROLE' first"
  # Start from the shipped policy (it admits nobody); both parties add both
  # identities, so both end up with byte-identical policies (hence the same
  # MRENCLAVE), each signer admitted in its own role only.
  [ -f "$policy" ] || cp "$app/dynamic_config.json" "$policy"
  "$app/vfl" attest trust --min-svn --identity "$build/party-identity.json" --policy "$policy"
  "$app/vfl" attest trust --min-svn --identity "$1" --policy "$policy"
  echo "policy $policy (sha256 $(sha256sum "$policy" | cut -d' ' -f1)): the peer must show the same digest; now run 'vfl-sgx.sh make'"
}

cmd_make() {
  need gramine-manifest "install Gramine >= 1.8 (or use the enclave-vfl SGX image)"
  need gramine-sgx-sign "install Gramine >= 1.8"
  need gramine-sgx-sigstruct-view "install Gramine >= 1.8"
  [ -f "$key" ] || die "no signing key $key: run 'vfl-sgx.sh keygen ROLE' first"
  [ -f "$policy" ] || die "no policy $policy: run 'vfl-sgx.sh trust PEER-IDENTITY.json' first"
  python3 - "$policy" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
roles = {e.get("role") for e in p.get("sgx_mrs", [])}
missing = [r for r in ("leader", "follower") if r not in roles]
if missing:
    sys.exit(f"vfl-sgx: the policy {sys.argv[1]} admits no {' and no '.join(missing)}: run 'vfl-sgx.sh trust PEER-IDENTITY.json' first")
PY
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
    -Dpolicy_file="$policy" \
    "$here/vfl.manifest.template" "$build/vfl.manifest"
  # --date fixes the SIGSTRUCT date so that two signings are byte-identical
  # (the date is not part of MRENCLAVE either way).
  gramine-sgx-sign --manifest "$build/vfl.manifest" --output "$build/vfl.manifest.sgx" \
    --key "$key" --date 0000-00-00
  gramine-sgx-sigstruct-view --output-format json "$build/vfl.sig" >"$build/sigstruct.json"
  python3 - "$build/sigstruct.json" "$build/vfl-identity.json" "$policy" <<'PY'
import hashlib, json, sys
s = json.load(open(sys.argv[1]))
ident = {k: s[k] for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")}
ident["debug"] = bool(s.get("debug_enclave", False))
ident["policy_sha256"] = hashlib.sha256(open(sys.argv[3], "rb").read()).hexdigest()
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
bad = [k for k in ("mr_enclave", "isv_prod_id", "policy_sha256") if ours.get(k) != theirs.get(k)]
if ours.get("mr_signer") == theirs.get("mr_signer"):
    bad.append("mr_signer (the parties must sign with their own keys)")
if theirs.get("debug"):
    bad.append("debug")
if bad:
    for k in bad:
        print(f"differs: {k}: ours {ours.get(k)}, peer {theirs.get(k)}")
    print("the peer built a different enclave: compare source revision, image, VFL_* settings and policy")
    sys.exit(1)
print(f"same enclave {ours['mr_enclave']}; peer signer {theirs['mr_signer']}")
PY
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

# Sample alignment by the same enclave build (`vfl party` with VFL_MODE=join):
# the joined blocks go to /state/joined, sealed with the MRENCLAVE key, and
# the next training or evaluation reads them instead of /data.
cmd_join_leader() {
  export VFL_MODE=join
  cmd_leader
}

cmd_join_follower() {
  [ $# -eq 1 ] || die "usage: vfl-sgx.sh join-follower LEADER-HOST:PORT"
  export VFL_MODE=join
  cmd_follower "$1"
}

# Evaluation of a sealed export by the same enclave build (the only one that
# can open it); the leader's predictions go to /srv/vfl/state/predictions.csv.
cmd_eval_leader() {
  [ $# -eq 1 ] || die "usage: vfl-sgx.sh eval-leader EXPORT-DIR (under /state/export)"
  export VFL_MODE=eval VFL_LOAD_MODEL=$1
  cmd_leader
}

cmd_eval_follower() {
  [ $# -eq 2 ] || die "usage: vfl-sgx.sh eval-follower LEADER-HOST:PORT EXPORT-DIR (under /state/export)"
  export VFL_MODE=eval VFL_LOAD_MODEL=$2
  cmd_follower "$1"
}

# Scale-out: the same enclave, the role picked by VFL_PROCESS (the measured
# command line stays `vfl party`); deploy/k8s passes the rest as VFL_*.
cmd_scale() {
  [ -n "${VFL_ROLE:-}" ] || die "VFL_ROLE (leader or follower) is not set"
  export VFL_PROCESS=$1
  export VFL_LOCAL_ADDR=${VFL_LOCAL_ADDR:-0.0.0.0:50051}
  run_enclave
}

case "${1:-}" in
  data) shift; cmd_data "$@" ;;
  keygen) shift; cmd_keygen "$@" ;;
  make) shift; cmd_make "$@" ;;
  check-peer) shift; cmd_check_peer "$@" ;;
  trust) shift; cmd_trust "$@" ;;
  join-leader) shift; cmd_join_leader "$@" ;;
  join-follower) shift; cmd_join_follower "$@" ;;
  leader) shift; cmd_leader "$@" ;;
  follower) shift; cmd_follower "$@" ;;
  eval-leader) shift; cmd_eval_leader "$@" ;;
  eval-follower) shift; cmd_eval_follower "$@" ;;
  shard|worker|coordinator) cmd_scale "$1" ;;
  *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
