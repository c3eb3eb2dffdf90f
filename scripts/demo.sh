#!/usr/bin/env bash
# Runs the server on the built-in demo model at http://127.0.0.1:8080
# (fetching the ONNX Runtime library first if needed). Extra arguments go to
# `weightcast serve`, e.g. scripts/demo.sh --listen 0.0.0.0:8080
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-ort.sh
exec cargo run --release --locked -- serve "$@"
