#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library that weightcast loads at run time.
#
# ort is built with `load-dynamic`, so the binary needs libonnxruntime.so at
# run time. ort's own binary download cannot work on machines without general
# network access, so we take the library out of the pinned PyPI wheel (PyPI is
# reachable wherever pip is). Result: .ort/<platform>/libonnxruntime.so, which
# the binary finds on its own (see docs/devices.md, "Finding ONNX Runtime").
#
# Usage: scripts/fetch-ort.sh [x86_64|aarch64]   (default: this machine)
set -euo pipefail
ORT_VERSION=1.31.1 # matches the ort crate's API (ort 2.0.0-rc.15, api-24)
cd "$(dirname "$0")/.."
arch=${1:-$(uname -m)}
case "$arch" in
  x86_64) plat=manylinux_2_27_x86_64 ;;
  aarch64) plat=manylinux_2_27_aarch64 ;;
  *) echo "fetch-ort: unsupported architecture '$arch'" >&2; exit 2 ;;
esac
dest=.ort/$arch
lib=$dest/libonnxruntime.so
if [ -f "$lib" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$ORT_VERSION" ]; then
  echo "fetch-ort: $lib ($ORT_VERSION) already present"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
py=$(command -v python3 || command -v python)
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform "$plat" --platform manylinux_2_28_${arch} --platform manylinux2014_${arch} \
  -d "$tmp" "onnxruntime==$ORT_VERSION"
whl=$(ls "$tmp"/onnxruntime-*.whl)
mkdir -p "$dest"
"$py" - "$whl" "$dest" <<'PY'
import sys, zipfile, shutil, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if "/capi/libonnxruntime.so" in n]
    if not names:
        sys.exit("fetch-ort: no libonnxruntime.so in " + whl)
    name = sorted(names, key=len)[-1]
    with z.open(name) as src, open(os.path.join(dest, "libonnxruntime.so.tmp"), "wb") as out:
        shutil.copyfileobj(src, out)
os.replace(os.path.join(dest, "libonnxruntime.so.tmp"), os.path.join(dest, "libonnxruntime.so"))
PY
echo "$ORT_VERSION" > "$dest/VERSION"
echo "fetch-ort: wrote $lib (onnxruntime $ORT_VERSION)"
