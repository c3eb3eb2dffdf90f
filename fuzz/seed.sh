#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seeds: the demo model, the test zoo and
# the small real models of the corpus (model), their /graph answers and
# weights bodies from a running server (bundle, manifest), and hand-written
# request heads (request_head). Run from the repository root after
# scripts/test.sh has built the binary and fetched the corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/corpus
mkdir -p $out/model $out/request_head $out/bundle $out/manifest
bin=target/debug/weightcast
$bin demo $out/model/demo.onnx >/dev/null
corpus=$(.venv/bin/python scripts/fetch-corpus.py)
for m in ppocr-cls silero-legacy oww-melspectrogram; do cp "$corpus/$m.onnx" $out/model/; done
$bin serve --runtime none --listen 127.0.0.1:18799 $out/model/demo.onnx >/dev/null 2>&1 &
pid=$!
trap 'kill $pid' EXIT
sleep 1
curl -s -o $out/bundle/demo.pb -H 'Accept-Encoding: identity' 127.0.0.1:18799/v1/models/demo/weights
curl -s -o $out/bundle/one.pb -H 'Accept-Encoding: identity' '127.0.0.1:18799/v1/models/demo/tensors/mlp.0.bias'
# manifest target: first byte splits manifest | graph (128 = about half).
m=$(mktemp); g=$(mktemp)
curl -s -o "$m" 127.0.0.1:18799/v1/models/demo; curl -s -o "$g" 127.0.0.1:18799/v1/models/demo/graph
{ printf '\x40'; cat "$m" "$g"; } > $out/manifest/demo
printf 'GET /v1/models/demo/weights?names=a,b&dtype=f16 HTTP/1.1\r\nHost: x\r\nAccept: application/x-npz;q=0.9, */*;q=0.1\r\nIf-None-Match: "v"\r\nRange: bytes=0-99\r\n\r\n' > $out/request_head/get
printf 'GET / HTTP/1.0\r\n\r\n' > $out/request_head/http10
printf 'HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n' > $out/request_head/head
echo "seed: $(find $out -type f | wc -l) seeds in $out"
