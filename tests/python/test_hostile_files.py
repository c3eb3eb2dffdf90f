"""Hostile model files against a running hub (issue #11, part 3): each is a
clear load error, never a crash or a hang, and a served model replaced by
one keeps its last good version serving while other models still reload."""

import os
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import gen_models


def sparse_bomb(path):
    """A tiny model whose sparse initializer densifies to 4 TB."""
    values = numpy_helper.from_array(np.ones(1, np.float32), "bomb")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "bomb_idx")
    sparse = helper.make_sparse_tensor(values, indices, [1 << 40])
    g = helper.make_graph([], "bomb", [], [], sparse_initializer=[sparse])
    onnx.save(helper.make_model(g), path)


def external_at(path, location):
    """A model whose one initializer's data lies at `location`."""
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    g = helper.make_graph([], "ext", [], [], [t])
    onnx.save(helper.make_model(g), path)


def replace(path, make):
    tmp = path.with_suffix(".tmp")
    make(tmp)
    os.replace(tmp, path)


def wait_for(server, name, pred, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = server.get("/v1/models?format=json").json()["models"]
        entry = next((m for m in listing if m["name"] == name), None)
        if entry and pred(entry):
            return entry
        time.sleep(0.1)
    raise AssertionError(f"{name}: not as expected within {timeout} s: {server.get('/v1/models?format=json').text}")


def test_a_sparse_bomb_fails_to_load_and_the_last_good_version_serves(serve, tmp_path):
    bomb = tmp_path / "bomb.onnx"
    sparse_bomb(bomb)
    assert bomb.stat().st_size < 200
    good = tmp_path / "m.onnx"
    gen_models.mlp(good, seed=1)
    s = serve("--runtime", "none", bomb, good)
    failed = wait_for(s, "bomb", lambda e: e.get("error"))
    assert "densifies to" in failed["error"] and "over the limit" in failed["error"], failed
    version = s.get("/v1/models/m?format=json").json()["version"]
    replace(good, sparse_bomb)
    time.sleep(2)
    assert s.proc.poll() is None, "the server survived"
    assert s.get("/v1/models/m?format=json").json()["version"] == version, "the last good version still serves"
    assert "densifies to" in s.logs()


def test_external_data_that_is_not_a_regular_file_is_refused_without_blocking(serve, tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    os.mkfifo(d / "pipe.bin")
    (d / "folder.bin").mkdir()
    fifo_model, dir_model, other = d / "fifo.onnx", d / "dir.onnx", d / "other.onnx"
    external_at(fifo_model, "pipe.bin")
    external_at(dir_model, "folder.bin")
    gen_models.mlp(other, seed=2)
    started = time.monotonic()
    s = serve("--runtime", "none", fifo_model, dir_model, other)
    assert time.monotonic() - started < 10, "start-up did not hang on the FIFO"
    assert "a FIFO" in wait_for(s, "fifo", lambda e: e.get("error"))["error"]
    assert "a directory" in wait_for(s, "dir", lambda e: e.get("error"))["error"]
    # A served model replaced by one pointing at the FIFO: refused at once,
    # and the reload thread goes on reloading other models.
    before = s.get("/v1/models/other?format=json").json()["version"]
    good = s.get("/v1/models/other?format=json").json()["version"]
    replace(other, lambda p: external_at(p, "pipe.bin"))
    time.sleep(1.5)
    assert s.get("/v1/models/other?format=json").json()["version"] == good
    replace(other, lambda p: gen_models.mlp(p, seed=3))
    wait_for(s, "other", lambda e: e.get("version") and e["version"] != before)


def test_a_model_file_that_is_a_fifo_is_refused(serve, tmp_path):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    started = time.monotonic()
    s = serve("--runtime", "none", fifo)
    assert time.monotonic() - started < 10
    assert "a FIFO" in wait_for(s, "m", lambda e: e.get("error"))["error"]


def big_model(path, seed, n=5_000_000):
    t = numpy_helper.from_array(np.random.default_rng(seed).standard_normal(n).astype(np.float32), "w")
    u = numpy_helper.from_array(np.random.default_rng(seed + 1).standard_normal(n).astype(np.float32), "u")
    onnx.save(helper.make_model(helper.make_graph([], "g", [], [], [t, u])), str(path))


def test_a_model_changed_in_place_never_crashes_or_serves_other_bytes(serve, tmp_path, pb2):
    """`cp new.onnx served.onnx` (truncate, then write) and a same-size
    rewrite, while downloads run: no SIGBUS, and every body's tensors match
    the digests of the version its answer names."""
    import hashlib
    import shutil
    import threading

    import requests

    served = tmp_path / "m.onnx"
    big_model(served, 1)
    other, same_size = tmp_path / "other.onnx", tmp_path / "same.onnx"
    big_model(other, 7, n=4_000_000)
    big_model(same_size, 9)
    s = serve("--runtime", "none", served)
    manifests = {}
    failures = []

    def download(k):
        # Slowly (about 2 s for 40 MB): the file changes mid-body.
        r = requests.get(s.url + "/v1/models/m/weights", headers={"Accept-Encoding": "identity"}, timeout=60,
                         stream=True)
        body = bytearray()
        try:
            for chunk in r.iter_content(1 << 20):
                body += chunk
                time.sleep(0.05)
        except requests.RequestException as e:
            failures.append((k, "body cut", str(e)[:80]))
            return
        version = r.headers["X-Weightcast-Model-Version"]
        for t in pb2.Bundle.FromString(bytes(body)).tensors:
            if hashlib.sha256(t.data).hexdigest() != manifests.get(version, {}).get(t.name):
                failures.append((k, version, t.name))

    done = threading.Event()

    def watch_manifests():  # every version the server advertises, as it advertises it
        while not done.is_set():
            m = s.get("/v1/models/m?format=json").json()
            manifests.setdefault(m["version"], {t["name"]: t["sha256"] for t in m["tensors"]})
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_manifests)
    watcher.start()
    time.sleep(0.2)

    threads = [threading.Thread(target=download, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with open(served, "r+b") as f:  # in place: truncate, then write (what cp does)
        f.truncate(0)
        time.sleep(0.05)
        shutil.copyfileobj(open(other, "rb"), f)
    time.sleep(1.5)
    with open(served, "r+b") as f:  # in place, same size
        f.write(open(same_size, "rb").read())
    for t in threads:
        t.join(120)
    # The rewritten file settles (2 s) and loads (40 MB hashed): seconds,
    # more under the suite's parallel load.
    deadline = time.time() + 30
    while len(manifests) < 2 and time.time() < deadline:
        time.sleep(0.1)
    download(99)
    done.set()
    watcher.join()
    assert s.proc.poll() is None, f"the server died: {s.proc.returncode}"
    assert not failures, failures
    assert len(manifests) >= 2, "the rewritten file was loaded as a new version"


def test_external_data_replaced_alone_is_noticed(serve, tmp_path):
    """A model is all its files: replacing only the external data (by
    rename) publishes a new version; the graph file never changed."""
    d = tmp_path / "m"
    d.mkdir()
    t = numpy_helper.from_array(np.arange(4096, dtype=np.float32), "w")
    m = helper.make_model(helper.make_graph([], "g", [], [], [t]))
    onnx.save(m, str(d / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    s = serve("--runtime", "none", d / "m.onnx")
    before = s.get("/v1/models/m?format=json").json()
    new = np.arange(4096, dtype=np.float32)[::-1].copy()
    (d / "w.tmp").write_bytes(new.tobytes())
    os.replace(d / "w.tmp", d / "w.bin")
    after = wait_for(s, "m", lambda e: e.get("version") and e["version"] != before["version"])
    got = np.frombuffer(s.get("/v1/models/m/tensors/w?format=npy").content[-16384:], "<f4")
    assert np.array_equal(got, new), after


def test_a_multi_file_model_is_replaced_whole_by_swapping_a_folder_link(serve, tmp_path):
    """The documented way to publish graph + data at once: each version in a
    folder, `current` a symlink swapped by rename."""
    root = tmp_path / "detector"
    versions = []
    for k in range(2):
        v = root / f"v{k}"
        v.mkdir(parents=True)
        t = numpy_helper.from_array(np.full(4096, k, dtype=np.float32), "w")
        m = helper.make_model(helper.make_graph([], "g", [], [], [t]))
        onnx.save(m, str(v / "model.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
        versions.append(v)
    os.symlink("v0", root / "current")
    s = serve("--runtime", "none", "--config", write_config(tmp_path, root / "current" / "model.onnx"))
    first = s.get("/v1/models/detector?format=json").json()["version"]
    os.symlink("v1", root / "next")
    os.replace(root / "next", root / "current")
    wait_for(s, "detector", lambda e: e.get("version") and e["version"] != first)
    body = s.get("/v1/models/detector/tensors/w?format=npy").content
    assert np.array_equal(np.frombuffer(body[-16384:], "<f4"), np.full(4096, 1, np.float32))


def write_config(tmp_path, model_path):
    c = tmp_path / "c.toml"
    c.write_text(f'[[models]]\nname = "detector"\npath = "{model_path}"\n[runtime]\nengine = "none"\n')
    return c
