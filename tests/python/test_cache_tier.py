"""Content-addressed tensors through a real HTTP cache (issue #14, part 1):
nginx with `proxy_cache`, started by the test in front of the hub; two
devices pull through it; the hub answers each tensor blob once."""

import os
import shutil
import signal
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nginx_cache import start as nginx_cache_start
from test_pull_contract import pull
from reference import load_pulled


def model(path, bump=0):
    """Four 256 KiB weights (fetched by digest) and a small bias (batched)."""
    ws = [numpy_helper.from_array(np.random.default_rng(k).standard_normal(65536).astype(np.float32) + (bump if k == 3 else 0),
                                  f"w{k}") for k in range(4)]
    b = numpy_helper.from_array(np.arange(16, dtype=np.float32), "b")
    nodes = [helper.make_node("Add", ["x" if k == 0 else f"h{k - 1}", f"w{k}"], [f"h{k}"]) for k in range(4)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [65536])],
                          [helper.make_tensor_value_info("h3", TensorProto.FLOAT, [65536])], ws + [b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)


def blob_requests(s):
    """Answers the hub gave on the blob route, by status."""
    out = {}
    for line in s.get("/metrics").text.splitlines():
        if line.startswith('weightcast_requests_total{route="blob"'):
            out[line.split('status="')[1].split('"')[0]] = int(float(line.split()[-1]))
    return out


@pytest.fixture
def nginx_cache(tmp_path):
    if not shutil.which("nginx"):
        pytest.fail("nginx is needed (the suite's set-up installs nginx-light)")
    procs = []

    def start(upstream):
        p, url = nginx_cache_start(upstream, tmp_path / "nginx")
        procs.append(p)
        return url

    yield start
    for p in procs:
        p.send_signal(signal.SIGQUIT)
        p.wait(timeout=10)


def test_two_devices_through_nginx_fetch_each_blob_from_the_hub_once(serve, tmp_path, nginx_cache):
    path = tmp_path / "m.onnx"
    model(path)
    s = serve("--runtime", "none", path)
    cache = nginx_cache(s.url)
    m = s.get("/v1/models/m?format=json").json()
    blobs = {t["name"]: t["blob"] for t in m["tensors"] if t.get("blob")}
    assert set(blobs) == {"w0", "w1", "w2", "w3", "b"}
    r = s.get(blobs["w0"])
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert r.headers["ETag"] == '"sha256:' + blobs["w0"].rsplit("/", 1)[1] + '"'
    assert np.frombuffer(r.content, np.float32).tobytes() == numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]).tobytes()
    base = blob_requests(s).get("200", 0)

    for device in ("a", "b"):
        rc, out, err = pull(f"{cache}/v1/models/m", tmp_path / device)
        assert rc == 0 and out["status"] == "updated", (out, err)
    assert blob_requests(s).get("200", 0) - base == 4, "each large tensor crossed from the hub once for two devices"

    model(path, bump=1)  # w3 changes
    deadline = time.time() + 10
    while s.get("/v1/models/m?format=json").json()["version"] == m["version"] and time.time() < deadline:
        time.sleep(0.1)
    before = blob_requests(s).get("200", 0)
    for device in ("a", "b"):
        rc, out, err = pull(f"{cache}/v1/models/m", tmp_path / device)
        assert rc == 0 and out["status"] == "updated" and out["tensors_fetched"] == 1, (out, err)
    assert blob_requests(s).get("200", 0) - before == 1, "the changed tensor crossed from the hub once"
    log = (tmp_path / "nginx" / "access.log").read_text()
    assert log.count("/v1/blobs/sha256/") == 10, "every device asked the cache for every blob it needed"
    for device in ("a", "b"):
        got = load_pulled(tmp_path / device / "current" / "model.onnx")
        want = onnx.load(str(path))
        for g, w in zip(got.graph.initializer, want.graph.initializer):
            assert np.array_equal(numpy_helper.to_array(g), numpy_helper.to_array(w))
