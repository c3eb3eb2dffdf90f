#!/usr/bin/env bash
# The benchmark suite: criterion micro benchmarks, then end-to-end loads on
# loopback against nginx and the naive Flask endpoints. Prints tables and
# writes benches/results.json. Needs root for apt (nginx) the first time;
# builds oha (the load generator) with cargo if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light; }
command -v oha >/dev/null || cargo install oha --locked
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q -r tests/python/requirements.txt -r benches/requirements.txt
fi
cargo build --release --locked
cargo bench --bench micro -- --noplot 2>&1 | grep -E "^[a-z_/0-9]+ +time:|ratio" || true
.venv-bench/bin/python benches/e2e.py "$@"
