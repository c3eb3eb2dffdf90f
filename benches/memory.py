#!/usr/bin/env python3
"""Memory and start-up benchmark (issue #12), in the default configuration:
ONNX Runtime on, `prepare = ["identity", "zstd"]`, the default 64 MiB memory
budget and a cache folder (fresh per model, so the first start is cold).
Loopback only; release build. Every target is printed with its figure, the
baseline it is compared with (measured in the same run), and PASS/MISS.

    .venv/bin/python benches/memory.py            # 250 MB and 1 GB models (~3 min, ~5 GB of disk)
    .venv/bin/python benches/memory.py --quick    # a 64 MB model
    (the test suite runs `--quick --skip-nginx` with the debug build: tests/python/test_memory.py)

Targets (issue #12, part 5):
  idle anonymous RSS <= 48 MiB + the memory budget;
  peak RSS while 8 clients download (identity, zstd, f16) <= idle + 64 MiB;
  zstd download of a model larger than the memory budget >= 0.8x nginx
    sending the same body precompressed (sendfile of a .zst file);
  time from process start to serving, and to the first byte of the weights.
"""

import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import Nginx  # noqa: E402  (nginx serving a folder with sendfile, .zst with Content-Encoding)

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MIB = 64  # the default cache_bytes


def status(pid):
    s = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(re.search(k + r":\s+(\d+)", s).group(1)) / 1024
    return {"rss": get("VmRSS"), "anon": get("RssAnon"), "file": get("RssFile"), "hwm": get("VmHWM")}


def make_model(path, mb):
    """16 float32 weights of mb/16 each, in one MLP-like chain ORT can load."""
    rng = np.random.default_rng(0)
    n = mb * 1_000_000 // 4 // 16
    inits = [numpy_helper.from_array(rng.standard_normal(n, dtype=np.float32), f"w{i}") for i in range(16)]
    nodes, prev = [], "x"
    for i in range(16):
        nodes.append(helper.make_node("Add", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, path)


class Server:
    def __init__(self, binary, model, cache_dir, logs):
        cfg = Path(logs).with_suffix(".toml")
        cfg.write_text(f'cache_dir = "{cache_dir}"\n[[models]]\nname = "big"\npath = "{model}"\n')
        self.log = open(logs, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url = self.proc.stdout.readline().strip().split()[-1]
        self.listening_s = time.monotonic() - self.started
        self.logs = Path(logs)

    def prepared(self, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "what=zstd" in self.logs.read_text():
                return time.monotonic() - self.started
            time.sleep(0.05)
        raise TimeoutError("zstd frames not prepared")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def first_byte(url, headers):
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"GET /v1/models/big/weights HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        s.recv(1)
    return time.monotonic() - t


def peak_during(pid, work):
    """(result of work(), peak RSS MiB sampled every 5 ms while it ran)."""
    peak, done = [status(pid)["rss"]], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], status(pid)["rss"])
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    try:
        return work(), peak[0]
    finally:
        done.set()
        t.join()


def download(url, headers, clients):
    def one(_):
        r = requests.get(url, headers=headers, stream=True, timeout=600)
        return sum(len(c) for c in r.raw.stream(1 << 20, decode_content=False))
    with cf.ThreadPoolExecutor(clients) as ex:
        return list(ex.map(one, range(clients)))


def curl_seconds(url, headers, runs=5):
    """Median seconds to receive the body (curl, body to /dev/null, not decoded)."""
    times = []
    for _ in range(runs):
        args = ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url]
        for k, v in headers.items():
            args += ["-H", f"{k}: {v}"]
        t, size = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
        times.append(float(t))
    return sorted(times)[len(times) // 2], int(size)


def run(binary, mb, tmp, results, skip_nginx=False):
    model = Path(tmp) / f"m{mb}.onnx"
    make_model(model, mb)
    size_mib = model.stat().st_size / (1 << 20)
    cache = Path(tmp) / f"cache{mb}"
    r = {"model_MB": round(model.stat().st_size / 1e6, 1)}
    print(f"\n== {r['model_MB']} MB float32 model, default configuration (ONNX Runtime on)")

    # Cold start: empty cache folder.
    s = Server(binary, model, cache, Path(tmp) / f"serve{mb}.log")
    r["start_to_listening_s"] = round(s.listening_s, 3)
    r["first_byte_s"] = round(first_byte(s.url, {"Accept-Encoding": "identity"}), 4)
    r["start_to_zstd_prepared_s"] = round(s.prepared(), 2)
    load_ms = re.search(r"model loaded.* ms=(\d+)", s.logs.read_text())
    r["model_load_ms"] = int(load_ms.group(1)) if load_ms else None
    time.sleep(1)
    idle = status(s.proc.pid)
    r["idle"] = {k: round(v, 1) for k, v in idle.items()}
    print(f"  start -> listening {r['start_to_listening_s']} s (model load {r['model_load_ms']} ms); "
          f"first byte {r['first_byte_s'] * 1e3:.1f} ms later; zstd frames on disk after {r['start_to_zstd_prepared_s']} s")
    limit = 48 + BUDGET_MIB
    print(f"  idle RSS {idle['rss']:.0f} MiB, of which anonymous {idle['anon']:.1f} MiB, file pages {idle['file']:.0f} MiB"
          f"  [target anonymous <= 48 + {BUDGET_MIB} = {limit} MiB: {'PASS' if idle['anon'] <= limit else 'MISS'}]")
    r["peaks"] = {}
    for name, path, headers in [("identity", "/v1/models/big/weights", {"Accept-Encoding": "identity"}),
                                ("zstd", "/v1/models/big/weights", {"Accept-Encoding": "zstd"}),
                                ("f16", "/v1/models/big/weights?dtype=f16", {"Accept-Encoding": "identity"})]:
        before = status(s.proc.pid)["rss"]
        t0 = time.monotonic()
        sizes, peak = peak_during(s.proc.pid, lambda: download(s.url + path, headers, 8))
        took = time.monotonic() - t0
        ok = peak - before <= 64
        r["peaks"][name] = {"before_MiB": round(before, 1), "peak_MiB": round(peak, 1), "seconds": round(took, 2),
                            "bytes_each": sizes[0]}
        print(f"  8 x {name:8s} {sizes[0] / 1e6:7.1f} MB each in {took:5.2f} s: RSS {before:.0f} -> peak {peak:.0f} MiB "
              f"(+{peak - before:.1f})  [target <= +64 MiB: {'PASS' if ok else 'MISS'}]")

    # zstd served from the cache folder vs nginx sending the same body precompressed.
    if not skip_nginx:
        body = Path(tmp) / "www"
        body.mkdir(exist_ok=True)
        (body / "m.pb").write_bytes(requests.get(s.url + "/v1/models/big/weights", headers={"Accept-Encoding": "identity"}).content)
        subprocess.run(["zstd", "-q", "-3", "-f", str(body / "m.pb"), "-o", str(body / "m.pb.zst")], check=True)
        (body / "m.pb").unlink()
        ngx = Nginx(body, tmp)
        try:
            ours, ours_bytes = curl_seconds(s.url + "/v1/models/big/weights", {"Accept-Encoding": "zstd"})
            theirs, their_bytes = curl_seconds(ngx.url + "/m.pb.zst", {})
        finally:
            ngx.stop()
            shutil.rmtree(body)
        ratio = (ours_bytes / ours) / (their_bytes / theirs)
        r["zstd_vs_nginx"] = {"weightcast_s": ours, "weightcast_bytes": ours_bytes, "nginx_s": theirs,
                              "nginx_bytes": their_bytes, "ratio": round(ratio, 2)}
        print(f"  zstd download (model > {BUDGET_MIB} MiB budget, frames on disk): {ours_bytes / 1e6:.1f} MB in {ours:.3f} s; "
              f"nginx precompressed {their_bytes / 1e6:.1f} MB in {theirs:.3f} s: {ratio:.2f}x  "
              f"[target >= 0.8x: {'PASS' if ratio >= 0.8 else 'MISS'}]")
    s.stop()

    # Warm start: the same cache folder, frames already there.
    s = Server(binary, model, cache, Path(tmp) / f"serve{mb}-warm.log")
    r["warm_start_to_listening_s"] = round(s.listening_s, 3)
    r["warm_first_byte_zstd_s"] = round(first_byte(s.url, {"Accept-Encoding": "zstd"}), 4)
    r["warm_start_to_zstd_prepared_s"] = round(s.prepared(), 2)
    time.sleep(1)
    r["warm_idle"] = {k: round(v, 1) for k, v in status(s.proc.pid).items()}
    print(f"  restart with frames on disk: listening {r['warm_start_to_listening_s']} s, first zstd byte "
          f"{r['warm_first_byte_zstd_s'] * 1e3:.1f} ms later, idle anonymous {r['warm_idle']['anon']:.1f} MiB")
    s.stop()
    shutil.rmtree(cache)
    model.unlink()
    results[f"{mb}MB"] = r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "weightcast"))
    ap.add_argument("--out")
    ap.add_argument("--skip-nginx", action="store_true", help="memory figures only (the test suite's form)")
    a = ap.parse_args()
    if not shutil.which("nginx") and not a.skip_nginx:
        sys.exit("nginx is needed for the zstd baseline: apt-get install nginx-light (scripts/bench.sh does)")
    results = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for mb in ([64] if a.quick else [250, 1000]):
            run(a.bin, mb, tmp, results, a.skip_nginx)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
