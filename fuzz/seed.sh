#!/usr/bin/env bash
# Regenerates the seeds in fuzz/seeds/<target>/ (committed, so the fuzz
# command works from a fresh clone; see scripts/fuzz.sh): real corpus
# models cut small by fuzz/shrink.py (model), a small model's /graph,
# manifest and weights bodies from a running server (bundle, manifest), and
# hand-written request heads (request_head). Needs what scripts/test.sh
# makes: the debug binary, the venv and the corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/seeds
rm -rf $out && mkdir -p $out/model $out/request_head $out/bundle $out/manifest
bin=target/debug/weightcast
py=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; kill $pid 2>/dev/null || true' EXIT
pid=
corpus=$($py scripts/fetch-corpus.py)
$bin demo "$tmp/demo.onnx" >/dev/null
# silero-dynamo is left out: its graph alone is 660 KB.
$py fuzz/shrink.py $out/model "$tmp/demo.onnx" \
  $(for m in ppocr-cls silero-legacy oww-melspectrogram magika orientation-fp16 ddddocr-int8 vad-web-legacy; do
      echo "$corpus/$m.onnx"; done)
# A small model of several element types for the served answers.
$py - "$tmp/small.onnx" <<'EOF'
import sys
import numpy as np
import onnx
from onnx import helper, numpy_helper
inits = [numpy_helper.from_array(np.arange(16, dtype=t).reshape(4, 4), f"layer.{k}/w")
         for k, t in enumerate([np.float32, np.float16, np.int64, np.uint8])]
nodes = [helper.make_node("Identity", [t.name], [f"o{k}"]) for k, t in enumerate(inits)]
outs = [helper.make_tensor_value_info(f"o{k}", t.data_type, [4, 4]) for k, t in enumerate(inits)]
m = helper.make_model(helper.make_graph(nodes, "small", [], outs, inits), opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 9
onnx.save(m, sys.argv[1])
EOF
$bin serve --runtime none --listen 127.0.0.1:18799 "$tmp/small.onnx" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 50); do curl -sf 127.0.0.1:18799/healthz >/dev/null && break; sleep 0.1; done
url=127.0.0.1:18799/v1/models/small
curl -sf -o $out/bundle/small.pb -H 'Accept-Encoding: identity' $url/weights
curl -sf -o $out/bundle/small-f16.pb -H 'Accept-Encoding: identity' "$url/weights?dtype=f16"
curl -sf -o $out/bundle/one.pb -H 'Accept-Encoding: identity' "$url/tensors/layer.0%2Fw"
# manifest target: the first byte splits manifest | graph (0x40: a quarter in).
curl -sf -o "$tmp/m" $url; curl -sf -o "$tmp/g" $url/graph
{ printf '\x40'; cat "$tmp/m" "$tmp/g"; } > $out/manifest/small
printf 'GET /v1/models/demo/weights?names=a,b&dtype=f16 HTTP/1.1\r\nHost: x\r\nAccept: application/x-npz;q=0.9, */*;q=0.1\r\nIf-None-Match: "v"\r\nRange: bytes=0-99\r\n\r\n' > $out/request_head/get
printf 'GET /v1/models/demo HTTP/1.1\r\nHost: hub\r\nIf-None-Match: "79eeea5e28b9846b8166d1d9d68ffc6e"\r\nAuthorization: Bearer t0123456789abcdef\r\nAccept-Encoding: zstd\r\n\r\n' > $out/request_head/poll
printf 'GET / HTTP/1.0\r\n\r\n' > $out/request_head/http10
printf 'HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n' > $out/request_head/head
echo "seed: $(find $out -type f | wc -l) seeds, $(du -sh $out | cut -f1) in $out"
