"""Peak RSS while 8 clients download a 100 MB float32 model at once.

    .venv/bin/python benches/rss.py [--mb 100] [--clients 8] [--bin target/release/weightcast]

Prints idle RSS (after load), peak RSS during the downloads (sampled every
5 ms from /proc), and the bytes each client received, for identity, zstd and
f16 representations. Run it after `cargo build --release`.
"""

import argparse
import concurrent.futures as cf
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import helper, numpy_helper


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_model(path, mb):
    rng = np.random.default_rng(0)
    n = mb * 1024 * 1024 // 4 // 16
    inits = [numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"w{i}") for i in range(16)]
    m = helper.make_model(helper.make_graph([], "big", [], [], inits), opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 11
    onnx.save(m, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--bin", default="target/release/weightcast")
    ap.add_argument("--runtime", default="none")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "big.onnx"
        make_model(model, args.mb)
        proc = subprocess.Popen([args.bin, "serve", "--runtime", args.runtime, "--listen", "127.0.0.1:0", str(model)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        url = proc.stdout.readline().strip().split()[-1]
        try:
            time.sleep(0.5)
            print(f"model: {model.stat().st_size / 1e6:.1f} MB on disk; idle RSS after load: {rss_kib(proc.pid) / 1024:.1f} MiB")
            for name, path, headers in [
                ("identity", "/v1/models/big/weights", {"Accept-Encoding": "identity"}),
                ("zstd", "/v1/models/big/weights", {"Accept-Encoding": "zstd"}),
                ("f16", "/v1/models/big/weights?dtype=f16", {"Accept-Encoding": "identity"}),
            ]:
                before = rss_kib(proc.pid)
                peak = [before]
                done = threading.Event()

                def sample():
                    while not done.is_set():
                        peak[0] = max(peak[0], rss_kib(proc.pid))
                        time.sleep(0.005)

                t = threading.Thread(target=sample)
                t.start()

                def fetch(_):
                    r = requests.get(url + path, headers=headers, stream=True, timeout=300)
                    return sum(len(c) for c in r.raw.stream(1 << 20, decode_content=False))

                start = time.monotonic()
                with cf.ThreadPoolExecutor(args.clients) as ex:
                    sizes = list(ex.map(fetch, range(args.clients)))
                took = time.monotonic() - start
                done.set()
                t.join()
                print(f"{name:9s} {args.clients} clients: {sizes[0] / 1e6:.1f} MB each in {took:.2f} s; "
                      f"RSS before {before / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB (+{(peak[0] - before) / 1024:.1f} MiB)")
        finally:
            proc.kill()


if __name__ == "__main__":
    main()
