#!/usr/bin/env bash
# Renders both Kubernetes overlays (deploy/k8s) with kubectl's built-in
# kustomize, validates them offline against the Kubernetes JSON schemas
# (kubernetes-validate from PyPI, strict: unknown fields are errors), and
# checks their consistency (scripts/k8s-check.py, with its self-test).
# Needs kubectl and python3 with pip reaching PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubectl >/dev/null || { echo "k8s-check: kubectl (with kustomize) is needed" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=${VFL_K8S_VENV:-$work/venv}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
for party in leader follower; do
  kubectl kustomize "deploy/k8s/overlays/$party" >"$work/$party.yaml"
done
# The oldest version with the pod-index label the pods read (1.28 added
# it; 1.34 is the oldest schema the package ships) and the newest.
for version in 1.34.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$work/leader.yaml" "$work/follower.yaml"
done
echo "k8s-check: both overlays valid against Kubernetes 1.34 and 1.37 (strict)"
"$venv/bin/python" scripts/k8s-check.py --self-test "$work/leader.yaml" "$work/follower.yaml" docs/sgx.md
"$venv/bin/python" scripts/k8s-check.py "$work/leader.yaml" "$work/follower.yaml" docs/sgx.md
