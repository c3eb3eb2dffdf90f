#!/usr/bin/env bash
# Builds the Debian package:
#
#   scripts/package.sh --arch amd64     # -> target/debian/weightcast_<version>_amd64.deb
#   scripts/package.sh --arch arm64     # Jetson (JetPack 5/6), through cross/build-aarch64.sh
#   scripts/package.sh --arch amd64 --quick   # the debug build already made (the suite's check)
#
# What goes in is [package.metadata.deb] in Cargo.toml: /usr/bin/weightcast,
# the systemd units, /etc/weightcast/{weightcast.toml,pull.env} as conffiles
# (an upgrade keeps edited ones), the weightcast user (sysusers.d), docs.
# ONNX Runtime is not in it (see the package's description).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=amd64
quick=
while [ $# -gt 0 ]; do
  case $1 in
    --arch) arch=${2:?--arch amd64|arm64}; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: scripts/package.sh --arch amd64|arm64 [--quick]" >&2; exit 64 ;;
  esac
done
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
mkdir -p target/debian
case $arch in
  amd64)
    if [ -n "$quick" ]; then
      # The suite's form: the debug binary `cargo build` made, fast compression.
      cargo deb --locked --no-build --profile dev --no-strip --fast --output target/debian/
    else
      cargo deb --locked --output target/debian/
    fi ;;
  arm64)
    cross/build-aarch64.sh
    cargo deb --locked --no-build --target aarch64-unknown-linux-gnu --profile dist --output target/debian/ ;;
  *) echo "scripts/package.sh: --arch amd64 or arm64, not '$arch'" >&2; exit 64 ;;
esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
deb=target/debian/weightcast_${version}_${arch}.deb
test -f "$deb" || { echo "scripts/package.sh: $deb was not written" >&2; ls target/debian >&2; exit 1; }
echo "$deb"
