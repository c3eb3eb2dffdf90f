#!/usr/bin/env bash
# Makes .venv with the pinned Python packages the tests use (onnx as the
# reference reader, numpy, onnxruntime, protobuf tooling, requests, zstd).
# Re-made only when tests/python/requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/python/requirements.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
py=$(command -v python3)
"$py" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
echo "venv: .venv ready"
