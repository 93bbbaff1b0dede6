#!/usr/bin/env python3
"""Fails when a workspace crate lists a [dependencies] entry that its sources never name.

A stand-in for `cargo machete` (used instead when installed): a dependency counts as used when
its crate name (dashes as underscores) appears as a word in the package's src/ (the root
package: src/). `[package.metadata.cargo-machete] ignored = [...]` lists dependencies kept for
their features only. Dev-dependencies are not checked.
"""
import pathlib
import re
import sys
import tomllib

root = pathlib.Path(__file__).resolve().parent.parent
manifests = [root / "Cargo.toml"] + sorted(root.glob("crates/*/Cargo.toml"))
unused = []
for manifest in manifests:
    data = tomllib.loads(manifest.read_text())
    package = data.get("package", {})
    ignored = set(package.get("metadata", {}).get("cargo-machete", {}).get("ignored", []))
    sources = "\n".join(p.read_text() for p in (manifest.parent / "src").rglob("*.rs"))
    for dep, spec in data.get("dependencies", {}).items():
        name = spec.get("package", dep) if isinstance(spec, dict) else dep
        if dep in ignored:
            continue
        if not re.search(r"\b%s\b" % re.escape(name.replace("-", "_")), sources):
            unused.append(f"{manifest.relative_to(root)}: `{dep}` is never used in src/")
for line in unused:
    print(line)
sys.exit(1 if unused else 0)
