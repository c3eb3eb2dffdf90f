#!/usr/bin/env bash
# Fetches onnxruntime-web (pinned, from npm, checked by its sha256) for the
# example in examples/onnxruntime-web and its test; prints the folder that
# holds ort.wasm.min.js and its WebAssembly. Cached in ~/.cache/weightcast.
set -euo pipefail
VERSION=1.31.1
SHA256=bdccdb9fbb9ab537247c0c734e9b1d2b1b338b4f2a09faa58f0dc1cfa27c312c
dir=${XDG_CACHE_HOME:-$HOME/.cache}/weightcast/onnxruntime-web-$VERSION
if [ ! -f "$dir/ort-wasm-simd-threaded.wasm" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null)
  echo "$SHA256  $tmp/onnxruntime-web-$VERSION.tgz" | sha256sum -c --quiet
  mkdir -p "$dir"
  tar xzf "$tmp/onnxruntime-web-$VERSION.tgz" -C "$tmp" package/dist/ort.wasm.min.js \
    package/dist/ort-wasm-simd-threaded.wasm package/dist/ort-wasm-simd-threaded.mjs
  mv "$tmp"/package/dist/* "$dir/"
fi
echo "$dir"
