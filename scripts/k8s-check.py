#!/usr/bin/env python3
"""Consistency of the rendered Kubernetes manifests (deploy/k8s), beyond
what the schemas check (scripts/k8s-check.sh validates those first):

- the two parties run the same number of worker pairs, and each its
  configured number of workers and shards;
- the leader's SNI passthrough routes exactly `worker-<i>.<domain>` for
  every worker index to the matching pod's stable name and RA-TLS port,
  and the follower's workers dial `worker-{index}.<domain>:<peer_port>`;
- exactly the leader runs a coordinator;
- every enclave pod requests SGX EPC through the device plugin, is not
  privileged, is probed on its metrics port, never on the RA-TLS port, and
  is selected by the party-only NetworkPolicy;
- docs/sgx.md documents the same names, domain and ports.

Usage: k8s-check.py LEADER.yaml FOLLOWER.yaml DOCS.md, or --self-test
(each tampering of a good render must be refused).
"""
import copy
import re
import sys

import yaml

RATLS_PORT = 50051
METRICS_PORT = 9090


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name_prefix):
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)]


def one(docs, kind, name_prefix, party):
    found = find(docs, kind, name_prefix)
    if len(found) != 1:
        raise ValueError(f"{party}: expected one {kind} {name_prefix}*, found {len(found)}")
    return found[0]


def env_of(statefulset):
    env = statefulset["spec"]["template"]["spec"]["containers"][0].get("env", [])
    return {e["name"]: e.get("value") for e in env}


def party_config(docs, party):
    return one(docs, "ConfigMap", "party-", party)["data"]


def selects(policy, labels):
    want = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in want.items())


def check_pods(docs, party, errors):
    policy = one(docs, "NetworkPolicy", "party-only", party)
    for ss in find(docs, "StatefulSet", ""):
        name = ss["metadata"]["name"]
        if not selects(policy, ss["spec"]["template"]["metadata"].get("labels", {})):
            errors.append(f"{party}/{name}: its pods are not selected by the party-only NetworkPolicy")
        pod = ss["spec"]["template"]["spec"]
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            errors.append(f"{party}/{name}: shares a host namespace")
        for c in pod["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            if ports.get("ratls") != RATLS_PORT or ports.get("metrics") != METRICS_PORT:
                errors.append(f"{party}/{name}: ports {ports}, expected ratls {RATLS_PORT} and metrics {METRICS_PORT}")
            sc = c.get("securityContext", {})
            if sc.get("privileged", False) or sc.get("allowPrivilegeEscalation", True):
                errors.append(f"{party}/{name}: privileged or may escalate privileges")
            for kind in ("requests", "limits"):
                if "sgx.intel.com/epc" not in c.get("resources", {}).get(kind, {}):
                    errors.append(f"{party}/{name}: no sgx.intel.com/epc in {kind}")
            for probe in ("livenessProbe", "readinessProbe"):
                p = c.get(probe)
                if p is None:
                    errors.append(f"{party}/{name}: no {probe}")
                    continue
                port = p.get("httpGet", {}).get("port")
                port = ports.get(port, port)
                if port != METRICS_PORT:
                    errors.append(f"{party}/{name}: {probe} on port {port}, not the metrics port")
    for svc in find(docs, "Service", ""):
        if svc["spec"].get("clusterIP") == "None":
            got = [p["port"] for p in svc["spec"]["ports"]]
            if got != [RATLS_PORT]:
                errors.append(f"{party}/service {svc['metadata']['name']}: ports {got}, expected [{RATLS_PORT}]")


def routes(conf):
    """The SNI map of an nginx stream config: name -> backend."""
    m = re.search(r"map \$ssl_preread_server_name \$backend \{(.*?)\}", conf, re.S)
    if not m:
        raise ValueError("no SNI map ($ssl_preread_server_name) in the passthrough config")
    out = {}
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, backend = line.rstrip(";").split()
            out[name] = backend
    if not re.search(r"ssl_preread on;", conf) or re.search(r"\bssl_certificate\b", conf):
        raise ValueError("the passthrough must read the SNI and never terminate TLS")
    return out


def check(leader, follower, docs_text):
    try:
        return check_all(leader, follower, docs_text)
    except (ValueError, KeyError, TypeError) as e:
        return [f"{type(e).__name__}: {e}"]


def check_all(leader, follower, docs_text):
    errors = []
    lc, fc = party_config(leader, "leader"), party_config(follower, "follower")
    if lc.get("party") != "leader" or fc.get("party") != "follower":
        errors.append(f"party names: {lc.get('party')!r} and {fc.get('party')!r}")
    for party, docs, cfg in (("leader", leader, lc), ("follower", follower, fc)):
        for role, key in (("worker", "workers"), ("shard", "shards")):
            ss = one(docs, "StatefulSet", role, party)
            if str(ss["spec"]["replicas"]) != cfg.get(key):
                errors.append(f"{party}: {ss['spec']['replicas']} {role} replicas but {key}={cfg.get(key)}")
        check_pods(docs, party, errors)
    if lc.get("workers") != fc.get("workers"):
        errors.append(f"the leader runs {lc.get('workers')} workers, the follower {fc.get('workers')}: pairs need both")
    ns = one(leader, "StatefulSet", "worker", "leader")["metadata"]["namespace"]
    domain = fc.get("peer_domain", "")
    conf = one(leader, "ConfigMap", "passthrough-", "leader")["data"]["nginx.conf"]
    got = routes(conf)
    want = {}
    for i in range(int(lc.get("workers", "0"))):
        want[f"worker-{i}.{domain}"] = f"worker-{i}.worker.{ns}.svc.cluster.local:{RATLS_PORT}"
    default = got.pop("default", None)
    if got != want:
        errors.append(f"SNI routes {sorted(got.items())}, expected {sorted(want.items())}")
    if default is None or not default.startswith("127.0.0.1:"):
        errors.append("unknown SNI names must go nowhere (default 127.0.0.1:<closed port>)")
    svc = one(leader, "Service", "passthrough", "leader")
    if svc["spec"].get("type") != "LoadBalancer" or [p["port"] for p in svc["spec"]["ports"]] != [int(fc.get("peer_port", 0))]:
        errors.append(f"the passthrough Service must be a LoadBalancer on the follower's peer_port {fc.get('peer_port')}")
    peer = env_of(one(follower, "StatefulSet", "worker", "follower")).get("VFL_PEER_ADDR")
    if peer != f"worker-{{index}}.{domain}:{fc.get('peer_port')}":
        errors.append(f"follower workers dial {peer!r}, not worker-{{index}}.{domain}:{fc.get('peer_port')}")
    for party, docs in (("leader", leader), ("follower", follower)):
        have = [d["metadata"]["name"] for d in docs if d.get("kind") == "StatefulSet" and d["metadata"]["name"] == "coordinator"]
        if have != (["coordinator"] if party == "leader" else []):
            errors.append(f"{party}: coordinators {have}; exactly the leader runs one")
    for needle in (f"worker-<i>.{domain}", str(RATLS_PORT), str(METRICS_PORT), "SNI"):
        if needle not in docs_text:
            errors.append(f"docs/sgx.md does not mention {needle!r}")
    return errors


def self_test(leader, follower, docs_text):
    assert check(leader, follower, docs_text) == [], check(leader, follower, docs_text)

    def tampered(fn):
        l, f = copy.deepcopy(leader), copy.deepcopy(follower)
        fn(l, f)
        return check(l, f, docs_text)

    def conf(l):
        return one(l, "ConfigMap", "passthrough-", "leader")["data"]

    cases = {
        "a worker route missing": lambda l, f: conf(l).update({"nginx.conf": re.sub(r"\n\s*worker-1\.[^\n]*", "", conf(l)["nginx.conf"])}),
        "TLS terminated": lambda l, f: conf(l).update({"nginx.conf": conf(l)["nginx.conf"].replace("ssl_preread on;", "ssl_preread on; ssl_certificate x;")}),
        "more leader workers": lambda l, f: one(l, "StatefulSet", "worker", "l")["spec"].update({"replicas": 3}),
        "follower pairs differ": lambda l, f: party_config(f, "f").update({"workers": "3"}),
        "probe on the RA-TLS port": lambda l, f: one(f, "StatefulSet", "shard", "f")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"].update({"port": "ratls"}),
        "privileged": lambda l, f: one(f, "StatefulSet", "worker", "f")["spec"]["template"]["spec"]["containers"][0]["securityContext"].update({"privileged": True}),
        "no EPC": lambda l, f: one(l, "StatefulSet", "coordinator", "l")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("sgx.intel.com/epc"),
        "other peer domain": lambda l, f: party_config(f, "f").update({"peer_domain": "elsewhere.example"}),
        "follower dials elsewhere": lambda l, f: [e.update({"value": "worker-0.leader.vfl.example:443"}) for e in one(f, "StatefulSet", "worker", "f")["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "VFL_PEER_ADDR"],
        "a follower coordinator": lambda l, f: f.append(copy.deepcopy(one(l, "StatefulSet", "coordinator", "l"))),
        "pods outside the policy": lambda l, f: one(f, "StatefulSet", "shard", "f")["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/name"),
    }
    for name, fn in cases.items():
        if not tampered(fn):
            sys.exit(f"self-test: tampering '{name}' was not refused")
    if not check(leader, follower, docs_text.replace("SNI", "")):
        sys.exit("self-test: docs without the SNI scheme were not refused")
    print(f"k8s-check self-test: {len(cases) + 1} tamperings refused")


def main():
    args = sys.argv[1:]
    test = args[:1] == ["--self-test"]
    if test:
        args = args[1:]
    if len(args) != 3:
        sys.exit(__doc__)
    leader, follower = load(args[0]), load(args[1])
    with open(args[2]) as f:
        docs_text = f.read()
    if test:
        self_test(leader, follower, docs_text)
        return
    errors = check(leader, follower, docs_text)
    for e in errors:
        print(f"k8s-check: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print("k8s-check: both overlays consistent (pairs, shards, SNI routes, probes, SGX resources, docs)")


if __name__ == "__main__":
    main()
