#!/usr/bin/env bash
# Runs one fuzz target for a while, from a fresh clone:
#
#   scripts/fuzz.sh TARGET [SECONDS]     # TARGET: model, request_head, bundle, manifest
#
# Installs what it needs (the nightly that fuzz/rust-toolchain.toml pins,
# and cargo-fuzz), starts from the committed seeds (fuzz/seeds/TARGET, made
# by fuzz/seed.sh) and keeps what it finds in fuzz/corpus/TARGET (ignored by
# git). Crashes land in fuzz/artifacts/TARGET with the command to replay them.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS] (model, request_head, bundle, manifest)}
seconds=${2:-600}
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' fuzz/rust-toolchain.toml)
rustup toolchain list | grep -q "^$toolchain" ||
  rustup toolchain install "$toolchain" --profile minimal --component rust-src
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The largest input: each target's seeds fit (the model seeds are cut
# corpus models of at most 54 KB; libFuzzer's default would be the largest
# seed, and its 1 MB cap once cut the uncut corpus models short).
# The model target runs without AddressSanitizer: its work is decoding
# protobuf, all safe Rust (no mmap: the input stays in memory), and ASan's
# allocator and stack traces took 30% of its time (perf, 2026-12-06).
sanitizer=address
case $target in
  model) max_len=131072; sanitizer=none ;;
  request_head) max_len=20000 ;;   # the server's head limit is 16 KiB
  bundle | manifest) max_len=65536 ;;
  *) echo "unknown target '$target' (model, request_head, bundle, manifest)" >&2; exit 2 ;;
esac
mkdir -p "fuzz/corpus/$target"
# The pin applies inside fuzz/ only: name it, so a run from anywhere uses it.
cd fuzz
exec cargo "+$toolchain" fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" "seeds/$target" -- \
  -max_len=$max_len -max_total_time="$seconds" -print_final_stats=1
