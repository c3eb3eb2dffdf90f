"""`weightcast pull` against a real `weightcast serve` hub, through a proxy
that counts bytes and injects faults: only changed tensors cross the wire,
what lands runs in onnxruntime like the hub's model, and no fault, crash or
bad version ever leaves `current` pointing at anything but a complete,
verified version."""

import hashlib
import json
import os
import random
import signal
import subprocess
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import gen_models
from conftest import binary
from proxy import Proxy
from reference import version, load_pulled


class Hub:
    """A model file served by `weightcast serve`; publish() replaces it by rename."""

    def __init__(self, serve, tmp_path):
        self.dir = tmp_path / "hub"
        self.dir.mkdir()
        self.path = self.dir / "detector.onnx"
        self.seq = 0
        self.publish(seed=1)
        self.server = serve("--runtime", "none", self.path)
        self.version = self.publish(seed=1)
        self.proxy = Proxy(int(self.server.url.rsplit(":", 1)[1]))
        self.url = f"{self.proxy.url}/v1/models/detector"

    def publish(self, seed=None, bump="b2"):
        """A new version: a fresh model, or the current one with one tensor changed."""
        self.seq += 1
        nxt = self.dir / f"next-{self.seq}.onnx"
        if seed is not None:
            gen_models.mlp(nxt, seed=seed, hidden=2048)
        else:
            m = onnx.load(str(self.path))
            for t in m.graph.initializer:
                if t.name == bump:
                    a = numpy_helper.to_array(t).copy()
                    a += 1
                    t.CopyFrom(numpy_helper.from_array(a, bump))
            onnx.save(m, nxt)
        os.replace(nxt, self.path)
        if not hasattr(self, "server"):
            return None
        want = digests_of(self.path)
        deadline = time.monotonic() + 10
        while True:
            m = self.server.get("/v1/models/detector?format=json").json()
            if [(t["name"], t["sha256"]) for t in m["tensors"]] == want:
                break
            assert time.monotonic() < deadline, "hub did not reload"
            time.sleep(0.05)
        assert m["version"] == version(m), "the documented version formula"
        return m["version"]


def digests_of(path):
    """(name, sha256) of a model file's tensors, computed here from the onnx package."""
    return [(t.name, hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest())
            for t in onnx.load(str(path)).graph.initializer]


def pull(hub, dest, *extra, timeout=60):
    r = subprocess.run([str(binary()), "pull", hub.url, "--dest", str(dest), "--once", "--json", "--timeout", "3s", *extra],
                       capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r.returncode, (lines[-1] if lines else {}), r.stderr


def outputs(model_path):
    s = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    return s.run(None, {"x": x})[0]


def assert_complete(dest, versions):
    """`current` is a complete version: one of `versions`, every tensor file
    matching its manifest digest, and the model loads and runs."""
    cur = dest / "current"
    version = os.readlink(cur).split("/")[-1]
    assert version in versions, version
    m = load_pulled(cur / "model.onnx")  # the external data read in
    assert len(m.graph.initializer) == 4
    outputs(cur / "model.onnx")
    return version


@pytest.fixture
def hub(serve, tmp_path):
    return Hub(serve, tmp_path)


def test_pull_fetches_only_what_changed(hub, tmp_path):
    dest = tmp_path / "device"
    rc, out, err = pull(hub, dest)
    # b2 (16 bytes) stays inline in the graph; w1, b1, w2 are files.
    assert rc == 0 and out["status"] == "updated" and out["tensors_fetched"] == 3, (out, err)
    assert np.array_equal(outputs(dest / "current" / "model.onnx"), outputs(hub.path))
    # Tensors of 64 KiB or more come by digest (/v1/blobs/sha256/…), the rest in batches.
    full = hub.proxy.bytes_for("/weights") + hub.proxy.bytes_for("/v1/blobs/sha256/")
    assert full > out["model_bytes"] * 0.5, "the first pull fetched the weights"

    v2 = hub.publish(bump="b1")  # 1 of 4 tensors changes (8 KiB)
    hub.proxy.reset()
    rc, out, err = pull(hub, dest)
    assert rc == 0 and out["status"] == "updated" and out["version"] == v2, (out, err)
    assert out["tensors_fetched"] == 1 and out["tensors_total"] == 4
    weights = hub.proxy.bytes_for("/weights")
    print(f"weights bytes on the wire: first pull {full}, one-tensor change {weights}; round total {out['fetched_bytes']}")
    assert weights < 9000 and weights < full / 10, f"only b1's record crossed the wire: {weights} vs {full}"
    assert [p for p in hub.proxy.paths() if "/weights" in p] == ["/v1/models/detector/weights?names=b1"]
    assert "/v1/models/detector/graph" not in hub.proxy.paths(), "an unchanged graph is taken from the current version"
    assert np.array_equal(outputs(dest / "current" / "model.onnx"), outputs(hub.path))
    unchanged = {(dest / "versions" / v / "tensors" / "w1.bin").read_bytes() for v in os.listdir(dest / "versions")}
    assert len(unchanged) == 1, "unchanged tensors are copied from the current version"

    hub.proxy.reset()
    rc, out, err = pull(hub, dest, "--exit-no-change", "3")
    assert rc == 3 and out["status"] == "current"
    assert hub.proxy.paths() == ["/v1/models/detector"], "a poll with nothing new is one conditional GET"


@pytest.mark.parametrize("fault", ["cut", "flip", "503", "stall"])
def test_faults_leave_current_complete(hub, tmp_path, fault):
    dest = tmp_path / "device"
    v1 = pull(hub, dest)[1]["version"]
    v2 = hub.publish(seed=9)
    hub.proxy.fault("/weights", fault, {"cut": 3000, "stall": 5}.get(fault))
    rc, out, err = pull(hub, dest)
    assert rc == 1 and out["status"] == "failed", (out, err)
    # A flipped byte fails wherever it lands: zstd, protobuf framing, or the
    # tensor's sha256; the others have one precise message.
    expect = {"cut": "cut short", "flip": "", "503": "503", "stall": "no answer within"}[fault]
    assert out["error"] and expect in out["error"], out["error"]
    assert assert_complete(dest, {v1}) == v1
    assert not [p for p in os.listdir(dest) if p.startswith(".tmp-")], "no half-written version left"
    rc, out, err = pull(hub, dest)  # the fault is gone: the next round succeeds
    assert rc == 0 and out["version"] == v2, (out, err)
    assert_complete(dest, {v2})


def test_kill_9_at_any_moment_leaves_a_complete_current(hub, tmp_path):
    dest = tmp_path / "device"
    versions = {pull(hub, dest)[1]["version"]}
    hub.proxy.throttle = (2048, 0.004)  # the weights take ~200 ms to arrive
    rng = random.Random(1)
    for trial in range(20):
        versions.add(hub.publish(seed=100 + trial))
        p = subprocess.Popen([str(binary()), "pull", hub.url, "--dest", str(dest), "--once"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 0.35))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert_complete(dest, versions)
    hub.proxy.throttle = None
    rc, out, _ = pull(hub, dest)
    assert rc == 0 and assert_complete(dest, versions) == out["version"]
    assert not [p for p in os.listdir(dest) if p.startswith(".tmp-")], "leftovers are cleaned at start"


def test_a_version_that_fails_its_check_is_kept_aside(hub, tmp_path):
    dest = tmp_path / "device"
    v1 = pull(hub, dest, "--check", "ort")[1]["version"]
    v2 = hub.publish(bump="w1")
    rc, out, err = pull(hub, dest, "--check", "test -f \"$WEIGHTCAST_DIR/model.onnx\" && false")
    assert rc == 2 and out["status"] == "rejected" and out["version"] == v2, (out, err)
    assert assert_complete(dest, {v1}) == v1
    assert (dest / "rejected" / v2 / "model.onnx").exists()
    rc, out, err = pull(hub, dest, "--check", "true")
    assert rc == 0 and out["status"] == "current" and out["version"] == v1, "not retried while the hub offers it"
    v3 = hub.publish(bump="b1")
    marker = tmp_path / "exec-ran"
    rc, out, err = pull(hub, dest, "--check", "ort", "--exec", f"echo $WEIGHTCAST_DIR > {marker}")
    assert rc == 0 and out["version"] == v3, (out, err)
    assert marker.read_text().strip().endswith(v3)


def test_rollback_and_keep(hub, tmp_path):
    dest = tmp_path / "device"
    v1 = pull(hub, dest)[1]["version"]
    v2 = hub.publish(bump="b1")
    assert pull(hub, dest)[1]["version"] == v2
    r = subprocess.run([str(binary()), "rollback", "--dest", str(dest)], capture_output=True, text=True)
    assert r.returncode == 0 and v1 in r.stdout
    assert assert_complete(dest, {v1}) == v1
    rc, out, _ = pull(hub, dest)
    assert out["status"] == "current" and out["version"] == v1, "a rolled-back version is not fetched again"
    v3 = hub.publish(bump="b2")
    assert pull(hub, dest)[1]["version"] == v3
    assert len(os.listdir(dest / "versions")) == 2, "--keep 2 by default"


def test_unwritable_dest_is_a_clear_error(hub, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, out, err = pull(hub, blocker / "device")
    assert rc == 1 and "cannot create" in out["error"], out


def test_a_large_tensor_cut_mid_way_is_resumed_with_range(serve, tmp_path):
    hubdir = tmp_path / "hub"
    hubdir.mkdir()
    path = hubdir / "big.onnx"
    rng = np.random.default_rng(3)
    big = numpy_helper.from_array(rng.standard_normal(2_300_000).astype(np.float32), "big.weight")  # 9.2 MB
    small = numpy_helper.from_array(np.arange(10, dtype=np.float32), "small")
    m = onnx.helper.make_model(onnx.helper.make_graph([], "big", [], [], [big, small]),
                               opset_imports=[onnx.helper.make_opsetid("", 21)])
    m.ir_version = 11
    onnx.save(m, path)
    server = serve("--runtime", "none", path)
    proxy = Proxy(int(server.url.rsplit(":", 1)[1]))
    url = f"{proxy.url}/v1/models/big"
    dest = tmp_path / "device"
    proxy.fault("/v1/blobs/sha256/", "cut", 4_000_000)  # large tensors come by digest
    r = subprocess.run([str(binary()), "pull", url, "--dest", str(dest), "--once", "--json"], capture_output=True, text=True)
    assert r.returncode == 1 and "cut short" in r.stdout, r.stdout
    partial = list((dest / ".partial").rglob("*.raw"))
    assert len(partial) == 1 and 3_000_000 < partial[0].stat().st_size <= 4_000_000
    # The partial file is the tensor's raw bytes: a prefix of the real ones.
    assert partial[0].read_bytes() == numpy_helper.to_array(big).tobytes()[: partial[0].stat().st_size]
    have = partial[0].stat().st_size
    proxy.reset()
    r = subprocess.run([str(binary()), "pull", url, "--dest", str(dest), "--once", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    (head,) = proxy.heads("/v1/blobs/sha256/")
    assert f"range: bytes={have}-" in head.lower() and 'if-range: "sha256:' in head.lower(), head
    resumed = proxy.bytes_for("/v1/blobs/sha256/")
    assert resumed < 9_200_000 - 3_000_000, f"only the rest crossed the wire: {resumed}"
    got = load_pulled(dest / "current" / "model.onnx")
    assert np.array_equal(numpy_helper.to_array(got.graph.initializer[0]), numpy_helper.to_array(big))
    assert not list((dest / ".partial").rglob("*.raw")), "the partial file is gone once complete"


def test_disk_full_is_a_clear_error_and_keeps_the_old_version(hub, tmp_path):
    dest = tmp_path / "small-disk"
    dest.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(dest)], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        v1 = pull(hub, dest)[1]["version"]  # ~107 KB fits
        hub.publish(seed=42)  # every tensor changes: a second copy does not fit
        rc, out, err = pull(hub, dest)
        # Refused before writing (the space check), or by the disk itself.
        assert rc == 1 and ("make room" in out["error"] or "No space left on device" in out["error"]), out
        assert assert_complete(dest, {v1}) == v1
        assert not [p for p in os.listdir(dest) if p.startswith(".tmp-")], "the unfinished version is removed"
    finally:
        subprocess.run(["umount", str(dest)], check=False)


def test_safetensors_output_with_f16(hub, tmp_path):
    import safetensors.numpy

    dest = tmp_path / "device"

    def check_against_hub():
        got = safetensors.numpy.load_file(str(dest / "current" / "model.safetensors"))
        want = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(hub.path)).graph.initializer}
        assert sorted(got) == sorted(want)
        for name, a in got.items():
            assert a.dtype == np.float16 and a.tobytes() == want[name].astype(np.float16).tobytes(), name

    rc, out, err = pull(hub, dest, "--format", "safetensors", "--dtype", "f16")
    assert rc == 0 and out["tensors_fetched"] == 4, (out, err)
    check_against_hub()
    hub.publish(bump="w2")
    rc, out, err = pull(hub, dest, "--format", "safetensors", "--dtype", "f16")
    assert rc == 0 and out["tensors_fetched"] == 1, (out, err)
    check_against_hub()
    rc, out, err = pull(hub, tmp_path / "other", "--dtype", "f16")
    assert rc == 1 and "--format safetensors" in err
