"""End-to-end benchmark: weightcast against nginx (the ceiling: sendfile of
the same bytes, raw and precompressed) and the naive Flask endpoints, on
loopback, with oha as the load generator. Every throughput figure is checked
against the bytes oha says it received. Prints a table, writes JSON.

    scripts/bench.sh            # sets everything up and runs this
    .venv-bench/bin/python benches/e2e.py [--quick] [--out benches/results.json]
"""

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "weightcast"
MB = 1e6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(path, mb, seed=0):
    """An MLP-shaped float32 model, weights N(0, 0.02) like a trained net's."""
    rng = np.random.default_rng(seed)
    width = 1024
    layers = max(1, int(mb * 1e6 / 4 / (width * width)))
    inits = []
    for k in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) * 0.02).astype(np.float32), f"layer{k}.weight"))
        inits.append(numpy_helper.from_array((rng.standard_normal(width) * 0.02).astype(np.float32), f"layer{k}.bias"))
    m = helper.make_model(helper.make_graph([], "bench", [], [], inits), opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 11
    onnx.save(m, path)
    return path


def rss(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def oha(url, n=None, c=1, duration=None, headers=()):
    cmd = ["oha", "--no-tui", "--output-format", "json", "-c", str(c)]
    cmd += ["-z", f"{duration}s"] if duration else ["-n", str(n)]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def download(url, expect_size, n, c, headers=()):
    r = oha(url, n=n, c=c, headers=headers)
    s = r["summary"]
    codes = r.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    assert ok == sum(int(v) for v in codes.values()), (url, codes)
    # oha's own figures are checked against the bytes it received.
    assert s["sizePerRequest"] == expect_size, (url, s["sizePerRequest"], expect_size)
    assert s["totalData"] == ok * expect_size, (url, s["totalData"], ok, expect_size)
    return {"MBps": s["totalData"] / s["total"] / MB, "rps": ok / s["total"], "p50_ms": r["latencyPercentiles"]["p50"] * 1e3,
            "requests": ok}


def one_get(url, runs):
    """Median time of one full GET, by curl (the same client for everyone)."""
    times, size = [], 0
    for _ in range(runs):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "Accept-Encoding: identity", "-w",
                              "%{time_total} %{size_download} %{http_code}", url], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[2] == "200", (url, out)
        times.append(float(out[0]))
        size = int(out[1])
    return {"median_s": statistics.median(times), "bytes": size}


def not_modified(url, etag, c, duration):
    r = oha(url, c=c, duration=duration, headers=[f"If-None-Match: {etag}"])
    codes = r.get("statusCodeDistribution", {})
    n304 = int(codes.get("304", 0))
    assert n304 > 0 and n304 == sum(int(v) for v in codes.values()), codes
    return {"rps": n304 / r["summary"]["total"], "p50_ms": r["latencyPercentiles"]["p50"] * 1e3,
            "p99_ms": r["latencyPercentiles"]["p99"] * 1e3}


class Weightcast:
    def __init__(self, model, log):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.name = Path(model).stem
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        start = time.monotonic()
        self.proc = subprocess.Popen([str(BIN), "serve", "--runtime", "none", "--listen", f"127.0.0.1:{port}", str(model)],
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
        self.log = Path(log)
        # Time from process start to the first byte of the weights.
        while True:
            try:
                with requests.get(f"{self.url}/v1/models/{self.name}/weights", stream=True, timeout=5,
                                  headers={"Accept-Encoding": "identity"}) as r:
                    next(r.iter_content(1))
                    self.first_byte_s = time.monotonic() - start
                    break
            except (requests.ConnectionError, StopIteration):
                time.sleep(0.002)
        deadline = time.monotonic() + 300
        while "prepared" not in self.log.read_text() or "what=zstd" not in self.log.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("background preparation did not finish")
            time.sleep(0.05)
        self.prepared_log = [l for l in self.log.read_text().splitlines() if "prepared" in l]

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Nginx:
    def __init__(self, root, tmp):
        self.port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(f"""
worker_processes {os.cpu_count()};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; tcp_nopush on; etag on;
  types {{ application/x-protobuf pb; application/x-protobuf zst; }}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    root {root};
    location ~ \\.zst$ {{ add_header Content-Encoding zstd; }}
  }}
}}""")
        # nginx's workers run as nobody: they must be able to read the files.
        os.chmod(tmp, 0o755)
        os.chmod(root, 0o755)
        self.proc = subprocess.Popen(["nginx", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            try:
                requests.get(self.url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.02)

    def stop(self):
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait()


class Naive:
    def __init__(self, model):
        self.port = free_port()
        env = dict(os.environ, MODEL=str(model))
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", str(os.cpu_count()), "--timeout", "600",
                                      "-b", f"127.0.0.1:{self.port}", "app:app"], cwd=ROOT / "benches" / "baseline",
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                requests.get(self.url + "/npz", timeout=60)
                break
            except requests.ConnectionError:
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def micro():
    """Criterion's estimates, as GB/s and as a ratio to memcpy."""
    out = {}
    base = ROOT / "target" / "criterion"
    for est in sorted(base.glob("*/*/new/estimates.json")):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        nbytes = bench.get("throughput", {}).get("Bytes")
        if not nbytes:
            continue
        ns = json.loads(est.read_text())["mean"]["point_estimate"]
        out[bench["full_id"]] = nbytes / ns  # GB/s
    memcpy = out.get("convert/memcpy")
    return {k: {"GBps": v, "vs_memcpy": v / memcpy if memcpy else None} for k, v in out.items()}


def codec_sizes(wc, model_path):
    """bytegroup+zstd vs plain zstd vs ZipNN, on the same float32 tensors."""
    def body(query):
        r = requests.get(f"{wc.url}/v1/models/{wc.name}/weights{query}", headers={"Accept-Encoding": "zstd"},
                         stream=True, timeout=600)
        return len(r.raw.read(decode_content=False))
    raw = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(model_path)).graph.initializer)
    out = {"raw": raw, "zstd": body(""), "bytegroup_zstd": body("?codec=bytegroup")}
    try:
        from zipnn import ZipNN

        z = ZipNN(input_format="byte", bytearray_dtype="float32")
        out["zipnn"] = sum(len(z.compress(numpy_helper.to_array(t).tobytes())) for t in onnx.load(str(model_path)).graph.initializer)
    except Exception as e:  # noqa: BLE001 - the comparison is optional
        out["zipnn_error"] = str(e)
    return out


def machine():
    cpu = ""
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (AttributeError, OSError):
        pass
    mem = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_MiB": mem, "kernel": platform.release(),
            "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
            "oha": subprocess.run(["oha", "--version"], capture_output=True, text=True).stdout.strip()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="25 MB model only, shorter runs")
    ap.add_argument("--out", default=str(ROOT / "benches" / "results.json"))
    args = ap.parse_args()
    results = {"machine": machine(), "micro": micro(), "models": {}}
    sizes = [25] if args.quick else [25, 250]
    dur = 2 if args.quick else 4
    with tempfile.TemporaryDirectory() as tmp:
        for mb in sizes:
            model = make_model(Path(tmp) / f"m{mb}.onnx", mb)
            res = results["models"][f"{mb}MB"] = {}
            wc = Weightcast(model, Path(tmp) / f"wc{mb}.log")
            res["first_byte_s"] = wc.first_byte_s
            res["prepared"] = wc.prepared_log
            base = f"{wc.url}/v1/models/{wc.name}"
            bodies = {}
            for key, q, h in [("identity", "", "identity"), ("zstd", "", "zstd"), ("f16", "?dtype=f16", "identity"),
                              ("f16+zstd", "?dtype=f16", "zstd")]:
                r = requests.get(f"{base}/weights{q}", headers={"Accept-Encoding": h}, stream=True, timeout=600)
                bodies[key] = (f"{base}/weights{q}", [f"Accept-Encoding: {h}"], r.raw.read(decode_content=False))
            root = Path(tmp) / f"www{mb}"
            root.mkdir()
            (root / "m.pb").write_bytes(bodies["identity"][2])
            (root / "m.pb.zst").write_bytes(bodies["zstd"][2])
            ngx = Nginx(root, tmp)
            n1 = 10 if mb <= 25 else 4
            n8 = 40 if mb <= 25 else 16
            dl = res["download"] = {}
            for key, (url, headers, body) in bodies.items():
                for c, n in [(1, n1), (8, n8)]:
                    dl[f"weightcast {key} c={c}"] = download(url, len(body), n, c, headers)
            for key, path in [("raw", "/m.pb"), ("precompressed", "/m.pb.zst")]:
                size = len(bodies["identity" if key == "raw" else "zstd"][2])
                for c, n in [(1, n1), (8, n8)]:
                    dl[f"nginx {key} c={c}"] = download(ngx.url + path, size, n, c)
            # Conditional GETs of the manifest, and of the static file on nginx.
            nm = res["not_modified"] = {}
            etag = requests.get(base, headers={"Accept-Encoding": "identity"}).headers["ETag"]
            ngx_etag = requests.head(ngx.url + "/m.pb").headers["ETag"]
            for c in [1, 64, 256]:
                nm[f"weightcast c={c}"] = not_modified(base, etag, c, dur)
                nm[f"nginx c={c}"] = not_modified(ngx.url + "/m.pb", ngx_etag, c, dur)
            # Peak RSS while 8 clients download the whole model.
            idle = rss(wc.proc.pid)
            Path(f"/proc/{wc.proc.pid}/clear_refs").write_text("5")  # resets VmHWM
            download(bodies["identity"][0], len(bodies["identity"][2]), n8, 8, bodies["identity"][1])
            download(bodies["zstd"][0], len(bodies["zstd"][2]), n8, 8, bodies["zstd"][1])
            res["rss"] = {"idle_MiB": idle / 2**20, "peak_during_8_downloads_MiB": rss(wc.proc.pid, "VmHWM") / 2**20}
            res["codec"] = codec_sizes(wc, model)
            if mb <= 25:
                naive = Naive(model)
                nv = res["naive"] = {}
                for path in ["/npz", "/json", "/protobuf"]:
                    requests.get(naive.url + path, timeout=600).raise_for_status()
                    nv[path] = one_get(naive.url + path, 3 if path == "/json" else 5)
                naive.stop()
                res["one_get"] = one_get(bodies["identity"][0], 5)
                res["one_get_nginx"] = one_get(ngx.url + "/m.pb", 5)
            ngx.stop()
            wc.stop()
    Path(args.out).write_text(json.dumps(results, indent=2))
    report(results)


def report(results):
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_MiB']} MiB; {m['nginx']}; {m['oha']}")
    print("\nmicro (GB/s, ratio to memcpy):")
    for k, v in results["micro"].items():
        print(f"  {k:36s} {v['GBps']:8.2f}  {v['vs_memcpy'] or 0:6.3f}x")
    for size, res in results["models"].items():
        print(f"\n== {size} model: first byte {res['first_byte_s'] * 1e3:.0f} ms after start")
        dl = res["download"]
        print(f"  {'download':32s} {'MB/s':>9s} {'req/s':>8s} {'p50 ms':>8s} {'vs nginx':>9s}")
        for k, v in dl.items():
            c = k.split()[-1]
            ref = dl.get(f"nginx {'precompressed' if 'zstd' in k else 'raw'} {c}")
            ratio = v["MBps"] / ref["MBps"] if ref and "nginx" not in k else None
            print(f"  {k:32s} {v['MBps']:9.0f} {v['rps']:8.1f} {v['p50_ms']:8.1f} {'' if ratio is None else f'{ratio:8.2f}x'}")
        print(f"  {'304':32s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs nginx':>9s}")
        for k, v in res["not_modified"].items():
            ref = res["not_modified"].get("nginx " + k.split()[-1])
            ratio = f"{v['rps'] / ref['rps']:8.2f}x" if "weightcast" in k else ""
            print(f"  {k:32s} {v['rps']:9.0f} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f} {ratio}")
        r = res["rss"]
        print(f"  RSS: idle {r['idle_MiB']:.1f} MiB, peak during 8 concurrent downloads {r['peak_during_8_downloads_MiB']:.1f} MiB "
              f"(+{r['peak_during_8_downloads_MiB'] - r['idle_MiB']:.1f})")
        c = res["codec"]
        zipnn = f", ZipNN {c['zipnn'] / c['raw']:.4f}" if "zipnn" in c else f" (ZipNN: {c.get('zipnn_error')})"
        print(f"  size/raw: zstd {c['zstd'] / c['raw']:.4f}, bytegroup+zstd {c['bytegroup_zstd'] / c['raw']:.4f} "
              f"({c['bytegroup_zstd'] / c['zstd']:.3f}x zstd){zipnn}")
        if "naive" in res:
            best = min(v["median_s"] for v in res["naive"].values())
            for k, v in res["naive"].items():
                print(f"  naive {k:10s} one GET median {v['median_s'] * 1e3:8.1f} ms ({v['bytes'] / MB:.0f} MB)")
            ours, ngx = res["one_get"]["median_s"], res["one_get_nginx"]["median_s"]
            print(f"  weightcast one GET median {ours * 1e3:.1f} ms (nginx {ngx * 1e3:.1f} ms): "
                  f"{best / ours:.0f}x faster than the best naive (nginx {best / ngx:.0f}x)")


if __name__ == "__main__":
    try:
        main()
    finally:
        # Whatever happened, leave no server behind.
        subprocess.run(["pkill", "-f", f"{BIN} serve"], check=False)
        subprocess.run(["pkill", "-f", "nginx: master process nginx -c /tmp"], check=False)
        subprocess.run(["pkill", "-f", "gunicorn"], check=False)
