#!/usr/bin/env bash
# Emulated smoke test of the aarch64 build (CI runs it on every run): the
# Jetson binary serves the demo model under qemu-aarch64 with the aarch64
# ONNX Runtime from PyPI on CPU, and its answers (manifest, weights with zstd
# and f16) must equal the x86-64 build's for the same model, bit for bit.
#
# qemu-user 7.2 runs aarch64 libonnxruntime into a crash at load: its CPU
# probe parses the host's x86 /proc/cpuinfo. An aarch64-style cpuinfo is
# bind-mounted over it inside a private mount namespace (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
arm=target/aarch64-unknown-linux-gnu/dist/weightcast
ref=target/debug/weightcast
[ -x "$arm" ] || cross/build-aarch64.sh
[ -x "$ref" ] || cargo build --locked
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ] || need+=(libc6-arm64-cross libstdc++6-arm64-cross)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${need[@]}"; }
scripts/fetch-ort.sh aarch64 >/dev/null
scripts/venv.sh >/dev/null

tmp=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
for i in 0 1; do
  printf 'processor\t: %s\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n' "$i"
done > "$tmp/cpuinfo"

# weightcast writes the demo model to $XDG_CACHE_HOME/weightcast/demo.onnx.
XDG_CACHE_HOME="$tmp/arm-cache" unshare -m sh -c "mount --bind '$tmp/cpuinfo' /proc/cpuinfo && \
  exec env QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 '$arm' serve --listen 127.0.0.1:0 \
  --ort-lib .ort/aarch64/libonnxruntime.so" >"$tmp/arm.out" 2>"$tmp/arm.log" &
XDG_CACHE_HOME="$tmp/x86-cache" "$ref" serve --runtime none --listen 127.0.0.1:0 >"$tmp/x86.out" 2>"$tmp/x86.log" &
for _ in $(seq 600); do
  grep -q listening "$tmp/arm.out" && grep -q listening "$tmp/x86.out" && break
  sleep 0.2
done
grep -q listening "$tmp/arm.out" || { echo "smoke-aarch64: the aarch64 server did not start:"; cat "$tmp/arm.log"; exit 1; }
arm_url=$(awk '{print $NF}' "$tmp/arm.out")
x86_url=$(awk '{print $NF}' "$tmp/x86.out")
sleep 2  # idle: let the background preparation finish
qpid=$(pgrep -f "qemu-aarch64 $arm serve" | head -1)
rss_kib=$(awk '/VmRSS/{print $2}' "/proc/$qpid/status")

.venv/bin/python - "$arm_url" "$x86_url" <<'PY'
import hashlib, io, sys
import requests, zstandard
arm, x86 = sys.argv[1], sys.argv[2]

def get(base, path, **headers):
    r = requests.get(base + path, headers=headers, stream=True, timeout=300)
    r.raise_for_status()
    body = r.raw.read(decode_content=False)
    if r.headers.get("Content-Encoding") == "zstd":
        body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).read()
    return body

m = requests.get(arm + "/v1/models/demo?format=json", timeout=60).json()
rt = m["runtime"]
assert rt["engine"] == "ort" and rt["active_providers"] == ["cpu"], rt
ref = requests.get(x86 + "/v1/models/demo?format=json", timeout=60).json()
assert m["version"] == ref["version"] and m["tensors"] == ref["tensors"], "manifests differ"
for q in ["", "?dtype=f16"]:
    a = get(arm, "/v1/models/demo/weights" + q, **{"Accept-Encoding": "zstd"})
    b = get(x86, "/v1/models/demo/weights" + q, **{"Accept-Encoding": "identity"})
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), f"weights{q} differ"
f16 = requests.get(arm + "/v1/models/demo?format=json&dtype=f16", timeout=60).json()
ref16 = requests.get(x86 + "/v1/models/demo?format=json&dtype=f16", timeout=60).json()
assert f16["version"] == ref16["version"], "f16 digests differ"
print(f"smoke-aarch64: aarch64 answers equal x86-64's (version {m['version'][:16]}, f16 {f16['version'][:16]}); ORT on {rt['active_providers']}")
PY
echo "smoke-aarch64: idle RSS under qemu (emulator included) $((rss_kib / 1024)) MiB; took $(( $(date +%s) - started )) s"
