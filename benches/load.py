#!/usr/bin/env python3
"""Load and fault script (issue #11, part 8), loopback only, bounded in time.

A fleet's worth of keep-alive pollers doing conditional GETs of a manifest,
plus full downloads of the model, while the model is republished — once by
renaming a new file over it, once by copying over it in place (`cp`), once
by renaming again — against `weightcast serve` (release build) running with
its open-files limit at 1,024 (soft and hard, so it cannot raise it).

Pass criteria (exit 1 otherwise): every answer is 200, 304 or 503; every
full download's tensors match the digests of the version its answer names
(a version the server advertised); the server is alive at the end. Printed:
answers by status, downloads verified, peak RSS, peak open descriptors.

    benches/load.py                      # the full run: 1,000 pollers, 8 downloads, 100 MB model, 60 s
    benches/load.py --short              # the CI form: 200 pollers, 2 downloads, 20 MB, 16 s
"""

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
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

ROOT = Path(__file__).resolve().parents[1]


def model(path, seed, mb):
    """Four float32 weights, chained by Add so that ONNX Runtime loads it."""
    n = mb * (1 << 20) // 4 // 4
    ts = [numpy_helper.from_array(np.random.default_rng(seed * 10 + k).standard_normal(n).astype(np.float32), f"w{k}")
          for k in range(4)]
    nodes = [helper.make_node("Add", ["x" if k == 0 else f"h{k - 1}", f"w{k}"], [f"h{k}"]) for k in range(4)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("h3", onnx.TensorProto.FLOAT, [n])], ts)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))


async def poller(host, port, stop, counts, interval):
    etag = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        counts["connect-error"] = counts.get("connect-error", 0) + 1
        return
    try:
        while not stop.is_set():
            head = f"GET /v1/models/m HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
            if etag:
                head += f"If-None-Match: {etag}\r\n"
            writer.write((head + "\r\n").encode())
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                counts["closed"] = counts.get("closed", 0) + 1
                return
            status = int(status_line.split()[1])
            counts[status] = counts.get(status, 0) + 1
            length, close = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.decode().partition(":")
                if k.lower() == "content-length":
                    length = int(v)
                elif k.lower() == "etag":
                    etag = v.strip()
                elif k.lower() == "connection" and "close" in v.lower():
                    close = True
            await reader.readexactly(length)
            if close or status == 503:
                return
            await asyncio.sleep(interval)
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
    finally:
        writer.close()


def pollers(url, n, stop_at, counts, interval):
    host, port = url.removeprefix("http://").split(":")

    async def main():
        stop = asyncio.Event()
        tasks = [asyncio.create_task(poller(host, int(port), stop, counts, interval)) for _ in range(n)]
        await asyncio.sleep(max(0, stop_at - time.monotonic()))
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def downloader(url, stop_at, manifests, results):
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    while time.monotonic() < stop_at:
        try:
            r = requests.get(url + "/v1/models/m/weights", headers={"Accept-Encoding": "identity"}, timeout=120)
        except requests.RequestException as e:
            results.append(("error", str(e)[:100]))
            continue
        if r.status_code == 503:
            results.append(("503", ""))
            time.sleep(0.2)
            continue
        version = r.headers.get("X-Weightcast-Model-Version")
        # The manifest watcher polls every 50 ms; a download of a version
        # published a moment ago can finish before it has seen that version.
        waited = time.monotonic()
        while version not in manifests and time.monotonic() - waited < 10:
            time.sleep(0.05)
        digests = manifests.get(version)
        if digests is None:
            results.append(("MISMATCH", f"{version}: never advertised by the manifest"))
            continue
        wrong = [name for name, data in records(r.content) if hashlib.sha256(data).hexdigest() != digests.get(name)]
        results.append(("MISMATCH", f"{version}: {wrong} differ from its manifest") if wrong else ("ok", version))


def records(body):
    """(name, data) of a Bundle, decoded by hand (fields 1 and 2 of each record)."""
    out, at = [], 0

    def varint():
        nonlocal at
        v, shift = 0, 0
        while True:
            b = body[at]
            at += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v

    while at < len(body):
        varint()  # tag of Bundle.tensors
        end = varint() + at
        name, data = "", b""
        while at < end:
            tag = varint()
            if tag & 7 == 2:
                n = varint()
                value = body[at:at + n]
                at += n
                if tag >> 3 == 1:
                    name = value.decode()
                elif tag >> 3 == 2:
                    data = value
            elif tag & 7 == 0:
                varint()
            else:
                raise ValueError(f"unexpected wire type in record: {tag}")
        out.append((name, data))
    return out


def watch_manifests(url, stop_at, manifests):
    while time.monotonic() < stop_at + 5:
        try:
            r = requests.get(url + "/v1/models/m?format=json", timeout=10)
            if r.status_code == 200:  # 503 while the connections are all taken: ask again
                m = r.json()
                manifests.setdefault(m["version"], {t["name"]: t["sha256"] for t in m["tensors"]})
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true", help="the CI form")
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "weightcast"))
    ap.add_argument("--pollers", type=int, help="pollers (default 1,000; 200 with --short)")
    ap.add_argument("--runtime", default="ort", help="ort (the default configuration) or none")
    a = ap.parse_args()
    # Republished at a quarter, half and three quarters of the run: 4 s apart
    # in the short form, more than a reload takes (the 2 s settle time, a
    # look, the load) so every version is served.
    pollers_n, downloads, mb, seconds = (200, 2, 20, 16) if a.short else (1000, 8, 100, 60)
    pollers_n = a.pollers or pollers_n
    work = Path(tempfile.mkdtemp(prefix="weightcast-load-"))
    served = work / "m.onnx"
    model(served, 1, mb)
    nexts = [work / f"v{k}.onnx" for k in range(3)]
    for k, p in enumerate(nexts):
        model(p, k + 2, mb)

    def limit_fds():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    log = open(work / "server.log", "w")
    # The default configuration, but for a cache folder of its own.
    (work / "weightcast.toml").write_text(f'cache_dir = "{work / "cache"}"\n')
    server = subprocess.Popen([a.binary, "serve", "--runtime", a.runtime, "--config", str(work / "weightcast.toml"),
                               "--listen", "127.0.0.1:0", str(served)],
                              stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=limit_fds)
    url = server.stdout.readline().split()[-1]
    time.sleep(1)
    stop_at = time.monotonic() + seconds
    manifests, counts, results = {}, {}, []
    peak = {"rss_mib": 0, "fds": 0}

    def sample():
        while server.poll() is None and time.monotonic() < stop_at + 5:
            try:
                rss = [l for l in open(f"/proc/{server.pid}/status") if l.startswith("VmRSS")][0].split()[1]
                peak["rss_mib"] = max(peak["rss_mib"], int(rss) // 1024)
                peak["fds"] = max(peak["fds"], len(os.listdir(f"/proc/{server.pid}/fd")))
            except (OSError, IndexError):
                pass
            time.sleep(0.1)

    threads = [threading.Thread(target=watch_manifests, args=(url, stop_at, manifests)),
               threading.Thread(target=sample),
               threading.Thread(target=pollers, args=(url, pollers_n, stop_at, counts, 1.0))]
    threads += [threading.Thread(target=downloader, args=(url, stop_at, manifests, results)) for _ in range(downloads)]
    for t in threads:
        t.start()
    republish = [(0.25, "rename", nexts[0]), (0.5, "cp in place", nexts[1]), (0.75, "rename", nexts[2])]
    for fraction, how, source in republish:
        time.sleep(max(0, stop_at - seconds + fraction * seconds - time.monotonic()))
        if how == "rename":
            tmp = work / "tmp.onnx"
            shutil.copyfile(source, tmp)
            os.replace(tmp, served)
        else:
            shutil.copyfile(source, served)  # truncates and writes the served file in place
        print(f"t={seconds * fraction:.0f}s: republished by {how}", flush=True)
    for t in threads:
        t.join(timeout=seconds + 180)
    alive = server.poll() is None
    server.kill()
    server.wait()
    statuses = {k: v for k, v in counts.items() if isinstance(k, int)}
    errors = {k: v for k, v in counts.items() if not isinstance(k, int)}
    bad_status = {k: v for k, v in statuses.items() if k not in (200, 304, 503)}
    verified = sum(1 for r, _ in results if r == "ok")
    mismatched = [r for r in results if r[0] == "MISMATCH"]
    download_errors = [r for r in results if r[0] == "error"]
    report = {
        "pollers": pollers_n, "downloaders": downloads, "model_mb": mb, "seconds": seconds,
        "answers_by_status": statuses, "poller_connection_errors": errors,
        "downloads_verified": verified, "downloads_503": sum(1 for r, _ in results if r == "503"),
        "downloads_mismatched": len(mismatched), "mismatches": [why for _, why in mismatched][:5],
        "download_errors": download_errors[:5],
        "versions_seen": len(manifests), "server_alive": alive,
        "peak_rss_mib": peak["rss_mib"], "peak_open_fds": peak["fds"], "runtime": a.runtime,
        "model_mib": round(served.stat().st_size / (1 << 20), 1),
    }
    # Issue #12's target: peak RSS <= 2.5x the model + the memory budget (64 MiB).
    limit = 2.5 * report["model_mib"] + 64
    report["rss_target_mib"] = round(limit, 1)
    report["rss_target_met"] = peak["rss_mib"] <= limit
    print(json.dumps(report, indent=1))
    ok = alive and not bad_status and not mismatched and not download_errors and verified > 0 and len(manifests) >= 3
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
