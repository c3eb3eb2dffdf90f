"""A version is exactly what was published: hostile and unusual names
against an honest hub, and an altered graph or a bare 304 from a hostile
one (issue #9, part 4). Each case once broke `weightcast pull`."""

import hashlib
import http.server
import json
import subprocess
import threading
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import binary
from reference import version, load_pulled
from test_corpus import corpus  # noqa: F401  (the fixture)


def pull(url, dest, *extra):
    r = subprocess.run([str(binary()), "pull", url, "--dest", str(dest), "--once", "--json", "--timeout", "5s", *extra],
                       capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r.returncode, (lines[-1] if lines else {}), r.stderr


def named_model(path, names, n=512):
    """y = x + one initializer per name (each n floats, values 0, 1, 2, …)."""
    inits = [numpy_helper.from_array(np.arange(n, dtype=np.float32) + k, name) for k, name in enumerate(names)]
    nodes, prev = [], "x"
    for k, name in enumerate(names):
        if name == "":  # an empty input name means "absent" to a node: kept, unused
            continue
        nodes.append(helper.make_node("Add", [prev, name], [f"s{k}"]))
        prev = f"s{k}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(nodes, "names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, path)


@pytest.mark.parametrize("names", [["manifest.pb", "model.onnx"], ["", "a,b", "tensors", "../x", ".hidden"],
                                   ["a" * 300, "/" * 150, "ü/é %"]])
def test_tensor_names_cannot_collide_with_the_version_files(serve, tmp_path, names):
    path = tmp_path / "m.onnx"
    named_model(path, names)
    server = serve("--runtime", "none", path)
    dest = tmp_path / "device"
    rc, out, err = pull(f"{server.url}/v1/models/m", dest)
    assert rc == 0 and out["status"] == "updated", (out, err)
    installed = load_pulled(dest / "current" / "model.onnx")  # external data read in
    got = {t.name: numpy_helper.to_array(t) for t in installed.graph.initializer}
    want = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), f"tensor {name!r} came back with other values"
    x = np.zeros(512, np.float32)
    a = ort.InferenceSession(str(dest / "current" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    b = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert a[0].tobytes() == b[0].tobytes()
    m = server.get("/v1/models/m?format=json").json()
    assert m["version"] == version(m)


def test_a_tab_newline_name_cannot_forge_another_models_version(serve, tmp_path):
    """`x` + `y` versus one tensor named like the old formula's `x` line + `y`."""
    def tensor_digest(a):
        return hashlib.sha256(a.tobytes()).hexdigest()

    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    named_model(two / "m.onnx", ["x", "y"], n=1)
    d = tensor_digest(np.arange(1, dtype=np.float32))
    forged = f"x\tFLOAT\t1\t{d}\ny"
    inits = [numpy_helper.from_array(np.arange(1, dtype=np.float32) + 1, forged)]
    g = helper.make_graph([], "g", [], [], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), one / "m.onnx")
    versions = []
    for d in (two, one):
        s = serve("--runtime", "none", d / "m.onnx")
        r = s.get("/v1/models/m?format=json")
        versions.append((r.json()["version"], r.headers["ETag"]))
    assert versions[0][0] != versions[1][0] and versions[0][1] != versions[1][1]


class HostileHub:
    """Forwards to a real hub, but answers some paths its own way."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.override = {}  # path (no query) -> fn(status, headers, body) -> (status, headers, body)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a):
                pass

            def do_GET(self):
                req = urllib.request.Request(hub.upstream + self.path, headers={
                    k: v for k, v in self.headers.items() if k.lower() in ("accept", "if-none-match", "range", "if-range")})
                try:
                    with urllib.request.urlopen(req) as r:
                        status, headers, body = r.status, dict(r.headers), r.read()
                except urllib.error.HTTPError as e:
                    status, headers, body = e.code, dict(e.headers), e.read()
                fn = hub.override.get(self.path.split("?")[0])
                if fn:
                    status, headers, body = fn(status, headers, body)
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hostile(serve, tmp_path):
    path = tmp_path / "m.onnx"
    named_model(path, ["w1", "w2"])
    server = serve("--runtime", "none", path)
    hub = HostileHub(server.url)
    yield hub
    hub.server.shutdown()


def test_a_graph_not_covered_by_the_manifest_is_refused(hostile, tmp_path):
    # Another graph (a big one) with the honest manifest: refused, nothing installed.
    hostile.override["/v1/models/m/graph"] = lambda s, h, b: (s, h, b + b"\0" * 1_000_000)
    rc, out, err = pull(f"{hostile.url}/v1/models/m", tmp_path / "device")
    # Longer than the manifest says: refused before it is read whole.
    assert rc == 1 and ("graph_sha256" in out["error"] or "larger than" in out["error"]), (out, err)
    assert not (tmp_path / "device" / "current").exists()


def test_an_inline_tensor_that_differs_from_the_manifest_is_refused(serve, tmp_path, pb2):
    """A consistent forgery: the graph's inline tensor changed, the manifest
    rewritten to name that graph (digest, length, a recomputed version) but
    still listing the honest tensor digests: refused, nothing installed."""
    path = tmp_path / "small.onnx"
    named_model(path, ["w1", "w2"], n=100)  # 400 bytes each: inline in /graph
    hub = HostileHub(serve("--runtime", "none", path).url)
    forged = {}

    def graph(s, h, body):
        m = onnx.load_from_string(body)
        t = m.graph.initializer[0]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1, t.name))
        forged["graph"] = m.SerializeToString()
        return s, h, forged["graph"]

    def manifest(s, h, body):
        if s != 200 or "graph" not in forged:
            return s, h, body
        m = pb2.Manifest.FromString(body)
        m.graph_sha256 = hashlib.sha256(forged["graph"]).hexdigest()
        m.graph_bytes = len(forged["graph"])
        doc = {"graph_sha256": m.graph_sha256, "tensors": [
            {"name": t.name, "dtype": TensorProto.DataType.Name(t.dtype), "dims": list(t.dims), "sha256": t.sha256}
            for t in m.tensors]}
        m.version = version(doc)
        return s, h, m.SerializeToString()

    hub.override["/v1/models/small/graph"] = graph
    urllib.request.urlopen(hub.url + "/v1/models/small/graph").read()  # make the forged graph first
    hub.override["/v1/models/small"] = manifest
    rc, out, err = pull(f"{hub.url}/v1/models/small", tmp_path / "device")
    assert rc == 1 and "tensor 'w1': inline tensor in the graph" in out["error"], (out, err)
    assert not (tmp_path / "device" / "current").exists()
    hub.server.shutdown()


def test_a_304_to_a_first_request_is_not_current(hostile, tmp_path):
    hostile.override["/v1/models/m"] = lambda s, h, b: (304, {"ETag": '"x"'}, b"")
    rc, out, err = pull(f"{hostile.url}/v1/models/m", tmp_path / "device")
    assert rc == 1 and out["status"] == "failed" and "304" in out["error"], (out, err)
    assert not (tmp_path / "device" / "current").exists()


def test_a_zstd_bomb_manifest_is_refused_in_bounded_memory_and_time(hostile, tmp_path):
    """A few KB of zstd that inflate to 256 MiB, as the manifest (limit 64 MiB)."""
    import sys
    import time

    import zstandard

    bomb = zstandard.ZstdCompressor(level=3).compress(b"\0" * (256 << 20))
    assert len(bomb) < 100_000
    hostile.override["/v1/models/m"] = lambda s, h, b: (200, {"Content-Encoding": "zstd", "ETag": '"b"'}, bomb)
    started = time.monotonic()
    # Run in a fresh Python so RUSAGE_CHILDREN measures this pull alone.
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.returncode); print(r.stdout.strip().splitlines()[-1]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", measure, str(binary()), "pull", f"{hostile.url}/v1/models/m", "--dest",
                        str(tmp_path / "d"), "--once", "--json", "--timeout", "5s"], capture_output=True, text=True,
                       timeout=60)
    code, line, peak_kib = r.stdout.strip().splitlines()
    out = json.loads(line)
    assert code == "1" and "more than the" in out["error"], out
    assert int(peak_kib) < 200_000, f"peak RSS {peak_kib} KiB"
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("what", ["endless-graph", "huge-content-length", "long-weights"])
def test_bodies_larger_than_expected_are_refused(serve, tmp_path, what):
    path = tmp_path / "m.onnx"
    named_model(path, ["w1", "w2"])
    hub = HostileHub(serve("--runtime", "none", path).url)
    if what == "endless-graph":
        hub.override["/v1/models/m/graph"] = lambda s, h, b: (s, h, b + b"\0" * (8 << 20))
    elif what == "huge-content-length":
        hub.override["/v1/models/m/graph"] = lambda s, h, b: (s, dict(h, **{"X-Claimed": "1"}), b)
    else:
        hub.override["/v1/models/m/weights"] = lambda s, h, b: (s, h, b + b"\x0a\x80\x80\x80\x10" + b"\0" * (8 << 20))
    if what == "huge-content-length":
        # A raw answer claiming 10^15 bytes.
        import socketserver

        class Liar(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.recv(65536)
                self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n" + b"\0" * 65536)

        liar = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Liar)
        threading.Thread(target=liar.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{liar.server_address[1]}/v1/models/m"
    else:
        url = f"{hub.url}/v1/models/m"
    rc, out, err = pull(url, tmp_path / "device")
    assert rc == 1 and ("larger than" in out["error"] or "bytes whose sha256" in out["error"]), (out, err)
    partial = tmp_path / "device" / ".partial"
    size = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file()) if partial.exists() else 0
    assert size < 1 << 20, "nothing much was written"
    hub.server.shutdown()


def test_a_version_the_disk_cannot_hold_is_not_started(serve, tmp_path):
    path = tmp_path / "m.onnx"
    named_model(path, ["w1", "w2"], n=200_000)  # 1.6 MB
    s = serve("--runtime", "none", path)
    dest = tmp_path / "small"
    dest.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dest)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        rc, out, err = pull(f"{s.url}/v1/models/m", dest)
        assert rc == 1 and "bytes are free" not in out["error"] and "free" in out["error"], out
        assert "make room" in out["error"]
    finally:
        subprocess.run(["umount", str(dest)], check=False)


def big_model(path, n):
    """One large initializer (n floats) and one small: y = x + small; big unused."""
    big = numpy_helper.from_array(np.random.default_rng(5).standard_normal(n).astype(np.float32), "big")
    small = numpy_helper.from_array(np.arange(4, dtype=np.float32), "small")
    g = helper.make_graph([helper.make_node("Add", ["x", "small"], ["y"])], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [big, small])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, path)
    return numpy_helper.to_array(big)


def peak_pull(url, dest, *extra, timeout="60s"):
    """(exit code, last JSON line, peak RSS in KiB) of one pull in a fresh Python."""
    import sys
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(r.returncode); print((r.stdout.strip().splitlines() or ['{}'])[-1]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", measure, str(binary()), "pull", url, "--dest", str(dest), "--once",
                        "--json", "--timeout", timeout, *extra], capture_output=True, text=True, timeout=120)
    code, line, peak_kib = r.stdout.strip().splitlines()
    return int(code), json.loads(line), int(peak_kib)


@pytest.mark.parametrize("output", ["onnx", "safetensors"])
def test_a_large_tensor_is_pulled_without_holding_it_in_memory(serve, tmp_path, output):
    """96 MB tensor: streamed raw to disk and hashed as it comes (issue #11, part 5)."""
    path = tmp_path / "m.onnx"
    want = big_model(path, 24_000_000)
    s = serve("--runtime", "none", path)
    dest = tmp_path / "device"
    code, out, peak = peak_pull(f"{s.url}/v1/models/m", dest, "--format", output)
    assert code == 0 and out["status"] == "updated", out
    assert peak < 48_000, f"peak RSS {peak} KiB for a 96 MB tensor"
    if output == "onnx":
        got = numpy_helper.to_array(load_pulled(dest / "current" / "model.onnx").graph.initializer[0])
    else:
        from safetensors.numpy import load_file
        got = load_file(str(dest / "current" / "model.safetensors"))["big"]
    assert np.array_equal(got, want)
    # A second version that changes only the small tensor reuses the big one from disk, also without holding it.
    big_model(path, 24_000_000)
    m = onnx.load(str(path))
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.arange(4, dtype=np.float32) * 2, "small"))
    onnx.save(m, str(path) + ".new")
    (tmp_path / "m.onnx.new").rename(path)
    import time
    # The hub reads and hashes 96 MB before it serves the new version: up to
    # a minute under the suite's parallel load.
    for _ in range(600):
        if s.get("/v1/models/m?format=json").json()["version"] != out["version"]:
            break
        time.sleep(0.1)
    code, out2, peak = peak_pull(f"{s.url}/v1/models/m", dest, "--format", output)
    assert code == 0 and out2["status"] == "updated" and out2["fetched_bytes"] < 100_000, out2
    assert peak < 48_000, f"peak RSS {peak} KiB reusing a 96 MB tensor"


@pytest.mark.parametrize("fault", ["flipped", "longer", "shorter"])
def test_a_large_tensor_that_differs_from_the_manifest_is_refused(serve, tmp_path, fault):
    path = tmp_path / "m.onnx"
    big_model(path, 3_000_000)  # 12 MB: fetched raw, alone
    server = serve("--runtime", "none", path)
    hub = HostileHub(server.url)

    def alter(s, h, b):
        if fault == "flipped":
            return s, h, b[:1000] + bytes([b[1000] ^ 1]) + b[1001:]
        return s, h, (b + b"\0" * 4 if fault == "longer" else b[:-4])
    # The large tensor comes by digest, at the blob path its manifest names.
    (big,) = [t for t in server.get("/v1/models/m?format=json").json()["tensors"] if t["name"] == "big"]
    hub.override[big["blob"]] = alter
    dest = tmp_path / "device"
    rc, out, err = pull(f"{hub.url}/v1/models/m", dest)
    want = {"flipped": "sha256", "longer": "larger than", "shorter": "bytes came"}[fault]
    assert rc == 1 and want in out["error"], (out, err)
    assert not (dest / "current").exists()
    assert not list((dest / ".partial").rglob("*.raw")), "a bad body is not kept to be resumed"
    hub.server.shutdown()


def test_the_pull_summary_says_installed_then_what_was_fetched_and_copied(corpus, serve, tmp_path):
    """Issue #15, part 4: a first pull is an install (not "0 of 341 tensors
    changed"); an update says how many tensor files were fetched and how many
    copied from the version it replaces. On a real exporter's model."""
    import re
    import shutil
    import time
    path = tmp_path / "m.onnx"
    shutil.copy(corpus / "orientation.onnx", path)
    s = serve("--runtime", "none", path)
    dest = tmp_path / "device"
    rc, first, err = pull(f"{s.url}/v1/models/m", dest)
    assert rc == 0 and first["status"] == "updated" and first["previous"] is None, (first, err)
    files, total = first["tensor_files"], first["tensors_total"]
    assert total == len(onnx.load(str(path)).graph.initializer) and 0 < files < total
    assert first["tensors_fetched"] == files
    line = f"installed: fetched {first['fetched_bytes']} bytes for a {first['model_bytes']}-byte model ({total} tensors: {files} in tensor files, {total - files} inside the graph)"
    assert line in err, err
    m = onnx.load(str(path))
    big = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) + 1, big.name))
    onnx.save(m, str(tmp_path / "next.onnx"))
    (tmp_path / "next.onnx").rename(path)
    for _ in range(100):
        if s.get("/v1/models/m?format=json").json()["version"] != first["version"]:
            break
        time.sleep(0.1)
    rc, second, err = pull(f"{s.url}/v1/models/m", dest)
    assert rc == 0 and second["previous"] == first["version"] and second["tensors_fetched"] == 1, (second, err)
    assert re.search(rf"updated from {first['version'][:8]}\w*: fetched {second['fetched_bytes']} bytes for a "
                     rf"{second['model_bytes']}-byte model \(1 of {files} tensor files fetched, the other {files - 1} "
                     rf"copied from the current version; {total - files} tensors inside the graph\)", err), err
