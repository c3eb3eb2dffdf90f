#!/usr/bin/env bash
# Builds weightcast for NVIDIA Jetson (aarch64, JetPack's glibc) on an x86-64
# Debian/Ubuntu machine, without Docker:
#   cross/build-aarch64.sh        -> target/aarch64-unknown-linux-gnu/dist/weightcast
#
# Plain cross-linking on Debian 12 needs GLIBC_2.34, newer than JetPack 5's
# Ubuntu 20.04 (glibc 2.31), so the link goes through zig (cargo-zigbuild),
# which targets a chosen glibc: aarch64-unknown-linux-gnu.2.31. The script
# fails if the binary asks for a newer glibc than that floor.
set -euo pipefail
cd "$(dirname "$0")/.."
GLIBC_FLOOR=2.31
ZIG_VERSION=0.14.1
TARGET=aarch64-unknown-linux-gnu

rustup target add "$TARGET" >/dev/null
command -v readelf >/dev/null || { apt-get update -qq && apt-get install -y -qq binutils; }
command -v cargo-zigbuild >/dev/null || cargo install cargo-zigbuild --locked
# zig from PyPI (the `ziglang` wheel), in a venv of its own.
if [ ! -x .cross-venv/bin/python ] || ! .cross-venv/bin/python -m ziglang version 2>/dev/null | grep -q "$ZIG_VERSION"; then
  python3 -m venv .cross-venv
  .cross-venv/bin/pip install --quiet "ziglang==$ZIG_VERSION"
fi
export PATH="$PWD/.cross-venv/bin:$PATH"

cargo zigbuild --locked --profile dist --target "$TARGET.$GLIBC_FLOOR"
bin="target/$TARGET/dist/weightcast"

# The glibc floor, from the binary's symbol versions.
needed=$(readelf -V --wide "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
if [ "$(printf '%s\n%s\n' "$needed" "$GLIBC_FLOOR" | sort -V | tail -1)" != "$GLIBC_FLOOR" ]; then
  echo "build-aarch64: $bin needs GLIBC_$needed, newer than the floor $GLIBC_FLOOR (JetPack 5)" >&2
  exit 1
fi
size=$(stat -c %s "$bin")
echo "build-aarch64: $bin: $size bytes stripped, needs GLIBC_$needed (floor $GLIBC_FLOOR)"
