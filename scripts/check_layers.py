#!/usr/bin/env python3
"""Checks that the server crate's modules depend one way, down the request
path (docs/architecture.md): each top-level module of crates/sluice/src may
use only modules of a lower layer. Prints every use against the order and
exits 1 if there is one. Run from the repository root (`make test` does)."""
import os
import re
import sys

SRC = "crates/sluice/src"
# Higher layers may use lower ones, never the reverse.
LAYERS = {
    "app": 7,
    "transport": 6,
    "api": 6,
    "control": 5,
    "writers": 4,
    "openai": 3,
    "pipeline": 2,
    "telemetry": 1,
}

violations = []
for root, _, files in os.walk(SRC):
    for name in files:
        if not name.endswith(".rs"):
            continue
        path = os.path.join(root, name)
        top = os.path.relpath(path, SRC).split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        if top not in LAYERS:
            violations.append(f"{path}: module '{top}' has no layer; add it to {sys.argv[0]}")
            continue
        for line_no, line in enumerate(open(path), 1):
            for used in re.findall(r"crate::([a-z_][a-z0-9_]*)", line):
                if used != top and used in LAYERS and LAYERS[used] >= LAYERS[top]:
                    violations.append(f"{path}:{line_no}: {top} uses {used}")
for violation in violations:
    print(violation)
print(f"layer check: {len(violations)} uses against the order in {SRC}")
sys.exit(1 if violations else 0)
