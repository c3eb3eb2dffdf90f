#!/usr/bin/env python3
"""Checks the layering `src/lib.rs` describes (# Layout): each module uses
only the modules listed for it here, so there is no import cycle and the
updater depends on nothing of the server but the wire contract, `onnx`
and the client side (`net`, `oci`).
Test code (`#[cfg(test)]` to the end of a file) may use more. Exit 1 on a
violation, naming the file and the module it reached."""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ALLOWED = {
    "onnx": set(),
    "wire": {"onnx"},
    "runtime": {"onnx"},
    "store": {"onnx", "runtime", "wire"},
    "encode": {"onnx", "store", "wire"},
    "prepare": {"encode", "store"},
    "fleet": {"store", "onnx", "wire"},
    "http": {"encode", "fleet", "onnx", "store", "wire"},
    "net": set(),
    "oci": {"net", "wire"},
    "updater": {"net", "oci", "onnx", "wire"},
    "push": {"encode", "oci", "onnx", "store", "wire"},
    "config": {"runtime", "encode", "fleet", "store"},
    "demo": {"onnx"},
}


def used_modules(code):
    found = set(re.findall(r"\bcrate::(\w+)", code))
    for group in re.findall(r"\buse crate::\{([^}]*)\}", code):
        found |= {part.strip().split("::")[0] for part in group.split(",") if part.strip()}
    return found


def main():
    bad = []
    for path in sorted(SRC.rglob("*.rs")):
        rel = path.relative_to(SRC)
        module = rel.parts[0].removesuffix(".rs")
        if module not in ALLOWED:  # lib.rs, the binary (src/bin)
            continue
        code = path.read_text().split("#[cfg(test)]")[0]
        for used in sorted(used_modules(code) - {module} - ALLOWED[module]):
            bad.append(f"src/{rel}: {module} uses crate::{used}, which its layer may not (scripts/check-layers.py)")
    for line in bad:
        print(line, file=sys.stderr)
    if bad:
        sys.exit(1)
    print(f"check-layers: {len(ALLOWED)} modules keep to their layers")


if __name__ == "__main__":
    main()
