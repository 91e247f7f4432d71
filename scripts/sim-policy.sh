#!/usr/bin/env bash
# Sourced by the benchmark scripts: sim_policy VFL DIR writes a development
# root (DIR/root.pem) and a policy accepting this vfl binary in simulated
# mode (DIR/policy.json), for both parties of a benchmark on one machine.
sim_policy() {
  local vfl=$1 dir=$2
  "$vfl" attest self --attestation simulated --sim-root-key "$dir/root.pem" 2>/dev/null >"$dir/me.json"
  python3 - "$dir" <<'PY'
import json, sys
w = sys.argv[1]
me = json.load(open(f"{w}/me.json"))
json.dump({"verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
           "sgx_mrs": [me["sgx_mrs_entry"]], "allow_simulated": True, "simulated_roots": [me["simulated_root"]]},
          open(f"{w}/policy.json", "w"))
PY
}
