#!/usr/bin/env python3
"""Fleet distribution benchmark (issue #14, part 5): a one-tensor change
through an OCI registry vs through the hub, and what the hub serves to N
devices with and without an HTTP cache tier in front of it.

    .venv/bin/python benches/fleet.py              # 100 MB model, 10 devices (~1 min)
    .venv/bin/python benches/fleet.py --quick      # 16 MB, 3 devices (the suite runs this: tests/python/test_fleet.py)

Everything on loopback, release build unless WEIGHTCAST_BIN says otherwise;
the hub runs in its default configuration (ONNX Runtime on). The registry is
Debian's docker-registry (CNCF distribution 2.8) on its filesystem driver;
the cache tier is nginx `proxy_cache`. Bytes are counted by a TCP proxy in
front of the registry/hub (response bytes, headers included)."""

import argparse
import json
import os
import shutil
import signal
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
sys.path.insert(0, str(ROOT / "tests" / "python"))
sys.path.insert(0, str(ROOT / "benches"))

from nginx_cache import start as nginx_cache  # noqa: E402
from proxy import Proxy  # noqa: E402
from registry import Registry  # noqa: E402

BIN = Path(os.environ.get("WEIGHTCAST_BIN", ROOT / "target" / "release" / "weightcast"))


def run(*args):
    t = time.monotonic()
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"weightcast {' '.join(map(str, args))}: {r.stderr}")
    return time.monotonic() - t, r.stdout


def pull(url, dest):
    plain = ["--plain-http"] if url.startswith("oci://") else []
    s, out = run("pull", url, "--dest", dest, "--once", "--json", *plain)
    res = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert res["status"] == "updated", res
    return s, res


def make_model(path, mb):
    """An MLP ONNX Runtime runs: layers of a 1024x1024 MatMul weight (4 MB)
    and a 4 KB bias, weights N(0, 0.02) like a trained net's."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for k in range(max(1, int(mb * 1e6 / 4 / 1024 / 1024))):
        inits.append(numpy_helper.from_array((rng.standard_normal((1024, 1024)) * 0.02).astype(np.float32), f"layer{k}.weight"))
        inits.append(numpy_helper.from_array((rng.standard_normal(1024) * 0.02).astype(np.float32), f"layer{k}.bias"))
        nodes += [helper.make_node("MatMul", [prev, f"layer{k}.weight"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"layer{k}.bias"], [f"h{k}"])]
        prev = f"h{k}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1024])],
                          [helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [1, 1024])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def changed(src, dst):
    """The model with its first weight changed (every element + 1e-3)."""
    m = onnx.load(str(src))
    t = m.graph.initializer[0]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(1e-3), t.name))
    onnx.save(m, str(dst))
    return t.name, len(t.raw_data)


def republish(hub, served, model):
    """Replaces the hub's model file with `model` and waits until it serves it."""
    before = hub.version()
    shutil.copy(model, served.with_suffix(".tmp"))
    os.replace(served.with_suffix(".tmp"), served)
    while hub.version() == before:
        time.sleep(0.05)


class Hub:
    def __init__(self, model, log):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([str(BIN), "serve", "--listen", "127.0.0.1:0", str(model)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url = self.proc.stdout.readline().split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.name = Path(model).stem

    def version(self):
        return requests.get(f"{self.url}/v1/models/{self.name}?format=json", timeout=10).json()["version"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def first_and_change(proxy, url, dest, publish_change):
    """One device's first pull through `proxy`, then its pull after
    `publish_change()`: seconds, bytes and requests of each."""
    s, _ = pull(url, dest)
    first = dict(s=s, bytes=proxy.bytes_for("/"), requests=len(proxy.paths()))
    publish_change()
    proxy.reset()
    s, res = pull(url, dest)
    change = dict(s=s, bytes=proxy.bytes_for("/"), requests=len(proxy.paths()), tensors_fetched=res["tensors_fetched"])
    return first, change


def registry_vs_hub(tmp, v1, v2):
    out = {}
    reg = Registry(tmp)
    try:
        target = f"oci://{reg.host}/fleet/model:prod"
        s, text = run("push", v1, target, "--plain-http")
        out["push_first"] = dict(s=s, summary=text.strip())
        proxy = Proxy(reg.port)
        url = f"oci://127.0.0.1:{proxy.port}/fleet/model:prod"

        def publish_change():
            s, text = run("push", v2, target, "--plain-http")
            out["push_change"] = dict(s=s, summary=text.strip())

        out["registry_pull_first"], out["registry_pull_change"] = first_and_change(
            proxy, url, tmp / "reg-device", publish_change)
    finally:
        reg.stop()
    served = tmp / "hub" / "model.onnx"
    served.parent.mkdir()
    shutil.copy(v1, served)
    hub = Hub(served, tmp / "hub.log")
    try:
        proxy = Proxy(hub.port)
        url = f"{proxy.url}/v1/models/model"
        out["hub_pull_first"], out["hub_pull_change"] = first_and_change(
            proxy, url, tmp / "hub-device", lambda: republish(hub, served, v2))
    finally:
        hub.stop()
    return out


def cache_tier(tmp, v1, v2, devices):
    """What the hub sends to `devices` devices pulling v1 then v2, directly
    and through nginx."""
    out = {}
    for tier in ("direct", "nginx"):
        served = tmp / tier / "model.onnx"
        served.parent.mkdir()
        shutil.copy(v1, served)
        hub = Hub(served, tmp / f"{tier}.log")
        proxy = Proxy(hub.port)  # counts what leaves the hub
        nginx = None
        try:
            front = proxy.url
            if tier == "nginx":
                nginx, front = nginx_cache(proxy.url, tmp / tier / "nginx")
            for d in range(devices):
                pull(f"{front}/v1/models/model", tmp / tier / f"device{d}")
            first = dict(requests=len(proxy.paths()), bytes=proxy.bytes_for("/"))
            republish(hub, served, v2)
            proxy.reset()
            for d in range(devices):
                pull(f"{front}/v1/models/model", tmp / tier / f"device{d}")
            out[tier] = dict(first=first, change=dict(requests=len(proxy.paths()), bytes=proxy.bytes_for("/")))
        finally:
            if nginx:
                nginx.send_signal(signal.SIGQUIT)
                nginx.wait()
            hub.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    mb, devices = (16, 3) if a.quick else (100, 10)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        v1 = make_model(tmp / "v1.onnx", mb)
        v2 = tmp / "v2.onnx"
        tensor, nbytes = changed(v1, v2)
        model_bytes = sum(len(i.raw_data) for i in onnx.load(str(v1)).graph.initializer)
        print(f"model: {model_bytes / 1e6:.1f} MB, {len(onnx.load(str(v1)).graph.initializer)} tensors; "
              f"change: '{tensor}' ({nbytes / 1e6:.1f} MB)")
        rh = registry_vs_hub(tmp, v1, v2)
        tier = cache_tier(tmp, v1, v2, devices)
    print("\n| one device | through the registry | through the hub |\n|---|---:|---:|")
    for label, key in (("first pull", "pull_first"), ("one-tensor change", "pull_change")):
        r, h = rh[f"registry_{key}"], rh[f"hub_{key}"]
        print(f"| {label}: bytes / requests / s | {r['bytes']:,} / {r['requests']} / {r['s']:.2f} "
              f"| {h['bytes']:,} / {h['requests']} / {h['s']:.2f} |")
    print(f"\npush, first: {rh['push_first']['s']:.2f} s — {rh['push_first']['summary'].split(': ', 1)[1]}")
    print(f"push, one-tensor change: {rh['push_change']['s']:.2f} s — {rh['push_change']['summary'].split(': ', 1)[1]}")
    print(f"\n| hub sends, {devices} devices | requests | bytes |\n|---|---:|---:|")
    for t in ("direct", "nginx"):
        for phase in ("first", "change"):
            x = tier[t][phase]
            print(f"| {t}, {'first pull' if phase == 'first' else 'one-tensor change'} | {x['requests']} | {x['bytes']:,} |")
    result = dict(model_bytes=model_bytes, changed_bytes=nbytes, devices=devices, registry_vs_hub=rh, cache_tier=tier)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    # The properties the figures stand for.
    assert rh["registry_pull_change"]["tensors_fetched"] == 1 and rh["hub_pull_change"]["tensors_fetched"] == 1
    assert rh["registry_pull_change"]["bytes"] < nbytes * 1.05 + 256 * 1024
    assert tier["nginx"]["change"]["bytes"] < tier["direct"]["change"]["bytes"] / devices * 1.5 + 256 * 1024
    print("\nPASS")


if __name__ == "__main__":
    main()
