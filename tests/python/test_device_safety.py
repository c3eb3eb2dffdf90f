"""What a device may trust about the folder `weightcast pull --dest D` keeps
(issue #21): a rollback never lands on the version it left; a manifest for
another model than the one asked is refused (from a hub or an OCI registry);
the rollback floor of `--trust` survives a lost or emptied state.json; a
symlink planted in D never leads pull outside it; two pulls at once take
turns on D/.lock and a reader of `current` never sees a broken version; a
missing or broken ONNX Runtime library is the device's fault, not the
version's; a version failing `--health` is rolled back, recorded in
rejected/<v>/failure.json and `weightcast status`, and not installed again
until `weightcast retry`; a flipped byte in the current version is not
carried into the next one; and an unchanged tensor is one read-only file
hard-linked into every version holding it.

The rollback, bit-rot and disk cases run on a generated model and on two
real exporters' models from the corpus (tests/corpus). A pulled version's
tensor files may have several hard links, which the `onnx` package refuses
("potential hardlink attack"): installed versions are read here with
onnxruntime (by path), `onnx.load(..., load_external_data=False)` and the
files' bytes, never with a plain `onnx.load`."""

import fcntl
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import gen_models
from conftest import ROOT, binary
from proxy import Proxy
from test_corpus import MODELS as CORPUS, assert_same_outputs, corpus, inputs  # noqa: F401  (corpus: the fixture)
from test_oci import push, registry, small_model, wc  # noqa: F401  (registry: the fixture)
from test_pull_contract import named_model, pull
from test_trust import hub as trust_hub, keygen, republish, wait_version_change
from test_updater import Hub

# A generated model (gen_models.mlp, hidden 2048: three tensor files) and two real exporters' models.
MODELS = ["mlp"] + [m for m in ("orientation", "nudenet-yolov8") if m in CORPUS]
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


# --- helpers ---------------------------------------------------------------------------------------------------------

class ModelHub:
    """One model file served by `weightcast serve --runtime none` as NAME;
    bump(tensor) publishes it again with that initializer +1. Keeps a copy of
    every version's file (files[version]) to compare what a device runs."""

    def __init__(self, serve, tmp_path, source, name):
        self.dir = tmp_path / "hub"
        self.dir.mkdir()
        self.name, self.path, self.files = name, self.dir / f"{name}.onnx", {}
        shutil.copy(source, self.path)
        self.server = serve("--runtime", "none", self.path)
        self.url = f"{self.server.url}/v1/models/{name}"
        self.version = self.manifest()["version"]
        self.files[self.version] = self.dir / "v0.onnx"
        shutil.copy(source, self.files[self.version])

    def manifest(self):
        return self.server.get(f"/v1/models/{self.name}?format=json").json()

    def bump(self, tensor):
        m = onnx.load(str(self.path))
        (t,) = [t for t in m.graph.initializer if t.name == tensor]
        a = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array((a + np.ones((), a.dtype)).astype(a.dtype), tensor))
        kept = self.dir / f"v{len(self.files)}.onnx"
        onnx.save(m, str(kept))
        shutil.copy(kept, self.dir / "next.onnx")
        os.replace(self.dir / "next.onnx", self.path)
        deadline = time.monotonic() + 15
        while (v := self.manifest()["version"]) == self.version:
            assert time.monotonic() < deadline, "the hub did not reload"
            time.sleep(0.05)
        self.version = v
        self.files[v] = kept
        return v


def model_hub(model, serve, tmp_path, request):
    if model == "mlp":
        source = tmp_path / "mlp-source.onnx"
        gen_models.mlp(source, seed=1, hidden=2048)
    else:
        source = request.getfixturevalue("corpus") / f"{model}.onnx"
    return ModelHub(serve, tmp_path, source, model)


def feed(model, path):
    if model == "mlp":
        return {"x": np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)}
    return inputs(path, model)


def runs_like(version_dir, model, original):
    """The installed folder, opened by path in onnxruntime, gives the original file's outputs bit for bit."""
    f = feed(model, original)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, f)
    assert_same_outputs(run(Path(version_dir) / "model.onnx"), run(original))


def current(dest):
    return os.readlink(Path(dest) / "current").split("/")[-1]


def tensor_files(version_dir):
    """{initializer name: its file} for a pulled version's external tensors, from model.onnx's locations."""
    m = onnx.load(str(Path(version_dir) / "model.onnx"), load_external_data=False)
    out = {}
    for t in m.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            out[t.name] = Path(version_dir) / {e.key: e.value for e in t.external_data}["location"]
    return out


def float_weights(version_dir):
    """Names of the external float initializers, largest first."""
    m = onnx.load(str(Path(version_dir) / "model.onnx"), load_external_data=False)
    files = tensor_files(version_dir)
    names = [t.name for t in m.graph.initializer if t.name in files and t.data_type in FLOATS]
    return sorted(names, key=lambda n: -files[n].stat().st_size)


def tensor_bytes(model_file, name):
    (t,) = [t for t in onnx.load(str(model_file)).graph.initializer if t.name == name]
    return numpy_helper.to_array(t).tobytes()


def install(url, dest, *extra):
    rc, out, err = pull(url, dest, *extra)
    assert rc == 0 and out["status"] == "updated", (rc, out, err)
    assert current(dest) == out["version"]
    return out["version"]


def status(dest):
    rc, out, err = wc("status", "--dest", dest, "--json")
    assert rc == 0, (rc, out, err)
    return json.loads(out)


def failure(dest, version):
    return json.loads((Path(dest) / "rejected" / version / "failure.json").read_text())


def failure_records(dest):
    return list((Path(dest) / "rejected").glob("*/failure.json"))


def verify(dest, *extra):
    return wc("verify", "--dest", dest, *extra)


def snapshot(folder):
    """Every path under `folder` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(Path(folder).rglob("*"))}


def changes(before, after):
    """What differs between two snapshots, in words."""
    return ([f"deleted {p}" for p in sorted(set(before) - set(after))] + [f"wrote {p}" for p in sorted(set(after) - set(before))]
            + [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]])


@pytest.fixture
def hub(serve, tmp_path):
    """test_updater's hub: gen_models.mlp (hidden 2048) as `detector` behind a Proxy; publish(bump=NAME)."""
    return Hub(serve, tmp_path)


# --- 1. rollback -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_a_rollback_never_lands_on_the_version_it_left(model, serve, tmp_path, request):
    """v1 → v2, rollback (v1), the hub publishes v3, `pull --keep 2` installs
    it, rollback: back to v1 — v2 was rolled back from, and pruning kept v1
    (the newest committed version other than current)."""
    h = model_hub(model, serve, tmp_path, request)
    dest = tmp_path / "device"
    v1 = install(h.url, dest, "--keep", "2")
    big = float_weights(dest / "current")[0]
    v2 = h.bump(big)
    assert install(h.url, dest, "--keep", "2") == v2
    rc, out, err = wc("rollback", "--dest", dest)
    assert rc == 0 and current(dest) == v1, (rc, out, err)
    v3 = h.bump(big)
    assert install(h.url, dest, "--keep", "2") == v3
    rc, out, err = wc("rollback", "--dest", dest)
    assert rc == 0, (out, err)
    assert current(dest) == v1, f"rolled back to {current(dest)[:12]}, not v1 {v1[:12]} (v2 is {v2[:12]})"
    runs_like(dest / "current", model, h.files[v1])
    assert verify(dest)[0] == 0
    for left in (v2, v3):
        rec = failure(dest, left)
        assert rec["version"] == left and rec["cause"] == "rollback" and isinstance(rec["at_ms"], int), rec
    rc, out, err = pull(h.url, dest, "--keep", "2")
    assert rc == 0 and out["status"] == "current" and current(dest) == v1, "v3, rolled back from, is not fetched again"
    rc, out, err = wc("rollback", "--dest", dest)
    assert rc == 1 and current(dest) == v1, "nothing committed before v1: never forward"


def test_rollback_runs_exec_in_the_version_it_goes_back_to(hub, tmp_path):
    dest = tmp_path / "device"
    v1 = install(hub.url, dest)
    v2 = hub.publish(bump="w1")
    assert install(hub.url, dest) == v2
    marker = tmp_path / "exec-ran"
    rc, out, err = wc("rollback", "--dest", dest, "--exec", f'echo "$WEIGHTCAST_DIR" > {marker}')
    assert rc == 0 and current(dest) == v1, (rc, out, err)
    assert marker.read_text().strip().endswith(v1), "--exec ran after the switch, in v1's folder"
    st = status(dest)
    assert st["current"] == v1 and [(r["version"], r["cause"]) for r in st["rejected"]] == [(v2, "rollback")], st


# --- 2. a manifest for another model ---------------------------------------------------------------------------------

def test_a_manifest_for_another_model_is_refused_before_anything_is_written(serve, tmp_path):
    """One hub, one signing key, two models: a proxy answers /v1/models/detector
    with encoder's (validly signed) manifest and data."""
    secret, public = keygen(tmp_path / "hub")
    named_model(tmp_path / "encoder.onnx", ["e1", "e2"], n=4096)
    named_model(tmp_path / "detector.onnx", ["d1"], n=2048)
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'signing_key = "{secret}"\n' + "".join(
        f'[[models]]\nname = "{n}"\npath = "{tmp_path / n}.onnx"\n' for n in ("encoder", "detector")))
    s = serve("--runtime", "none", "--config", cfg)
    proxy = Proxy(int(s.url.rsplit(":", 1)[1]))
    proxy.rewrite["/v1/models/detector"] = "/v1/models/encoder"
    url = f"{proxy.url}/v1/models/detector"
    dest = tmp_path / "device"
    rc, out, err = pull(url, dest, "--trust", public)
    said = (out.get("error") or err).replace(url, "URL")
    assert rc == 1 and out.get("status") == "failed", f"exit {rc}, {out}: encoder's manifest taken for detector"
    assert "encoder" in said and "detector" in said, said
    assert not os.path.lexists(dest / "current") and not list(dest.rglob("*.bin")) and not list(dest.rglob("model.onnx"))
    del proxy.rewrite["/v1/models/detector"]
    assert install(url, dest, "--trust", public) == s.get("/v1/models/detector?format=json").json()["version"]


def test_an_oci_artifact_holding_another_model_is_refused(registry, tmp_path):
    """oci://REG/det:prod holds model det2: a device asking for det (the
    repository's last segment) refuses it; one asking --model det2 takes it.
    (`push` names a model after the repository unless --name says otherwise,
    so the file det2.onnx pushed plainly would be model det.)"""
    reg = registry()
    push(small_model(tmp_path / "det2.onnx"), f"oci://{reg.host}/det:prod", "--name", "det2")
    url = f"oci://{reg.host}/det:prod"
    dest = tmp_path / "device"
    rc, out, err = wc("pull", url, "--dest", dest, "--once", "--json", "--plain-http")
    last = json.loads(out.splitlines()[-1]) if out.strip() else {}
    said = (last.get("error") or err).replace(url, "URL")
    assert rc == 1 and last.get("status") == "failed", f"exit {rc}, {last}: det2's artifact taken for det"
    assert "det2" in said and "det" in said.replace("det2", ""), said
    assert not os.path.lexists(dest / "current") and not list(dest.rglob("*.bin"))
    rc, out, err = wc("pull", url, "--dest", dest, "--once", "--json", "--plain-http", "--model", "det2")
    assert rc == 0 and json.loads(out.splitlines()[-1])["status"] == "updated", (out, err)


# --- 3. the rollback floor without state.json ------------------------------------------------------------------------

class Mirror:
    """A mirror in front of a hub: records every 200 answer (by path and
    query) while recording; then replays those bytes, as a mirror that kept
    an old version's manifest and blobs would."""

    def __init__(self, upstream):
        self.upstream, self.tape, self.replaying = upstream, {}, False
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if mirror.replaying:
                    status, headers, body = mirror.tape.get(self.path, (404, {}, b"not mirrored"))
                else:
                    req = urllib.request.Request(mirror.upstream + self.path, headers={
                        k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "if-range")})
                    try:
                        with urllib.request.urlopen(req) as r:
                            status, headers, body = r.status, dict(r.headers), r.read()
                    except urllib.error.HTTPError as e:
                        status, headers, body = e.code, dict(e.headers), e.read()
                    if status == 200:
                        mirror.tape.setdefault(self.path, (status, headers, body))
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


@pytest.mark.parametrize("state", ["emptied", "deleted"])
def test_an_older_signed_manifest_replayed_by_a_mirror_is_refused_without_state_json(serve, tmp_path, state):
    secret, public = keygen(tmp_path / "hub")
    named_model(tmp_path / "m.onnx", ["w1", "w2"], n=32768)  # 128 KiB each: fetched by digest
    s = trust_hub(serve, tmp_path, secret)
    mirror = Mirror(s.url)
    dest = tmp_path / "device"
    v1 = install(f"{mirror.url}/v1/models/m", dest, "--trust", public)  # the mirror records v1
    republish(tmp_path / "m.onnx", 1)
    v2 = wait_version_change(s, "m", v1)
    assert install(f"{s.url}/v1/models/m", dest, "--trust", public) == v2
    if state == "emptied":
        (dest / "state.json").write_text("")
    else:
        (dest / "state.json").unlink()
    mirror.replaying = True
    rc, out, err = pull(f"{mirror.url}/v1/models/m", dest, "--trust", public)
    assert rc == 1 and out.get("status") == "failed", f"exit {rc}, {out}: v1's replayed manifest was installed over v2"
    assert "older" in out["error"] or "rollback" in out["error"], out
    assert current(dest) == v2
    assert verify(dest, "--trust", public)[0] == 0
    mirror.server.shutdown()


# --- 4. symlinks planted in D ----------------------------------------------------------------------------------------

def big_model(path, seed):
    """A 2.2M-float tensor (8.8 MB: fetched alone, through .partial/) and a small one."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(2_200_000).astype(np.float32), "big"),
             numpy_helper.from_array(np.arange(4, dtype=np.float32) + seed, "small")]
    g = onnx.helper.make_graph([], "big", [], [], inits)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))


@pytest.mark.parametrize("planted", [".partial", "versions", "rejected"])
def test_a_symlink_planted_in_dest_never_leads_pull_outside_it(serve, tmp_path, planted):
    """D is itself a symlink (that works); D/<planted> -> a folder outside
    (pull refuses, naming it) and D/.tmp-123-456 -> another (removed as a
    link). Nothing outside is written or deleted."""
    hubdir = tmp_path / "hub"
    hubdir.mkdir()
    big_model(hubdir / "big.onnx", 1)
    s = serve("--runtime", "none", hubdir / "big.onnx")
    url = f"{s.url}/v1/models/big"
    real, dest = tmp_path / "real-device", tmp_path / "device"
    real.mkdir()
    dest.symlink_to(real)
    v1 = install(url, dest)
    outside, tmp_outside = tmp_path / "outside", tmp_path / "outside-tmp"
    for d in (outside, tmp_outside):
        (d / "old" / "keep").mkdir(parents=True)
        (d / "sentinel").write_text("not pull's")
        (d / "old" / "keep" / "sentinel").write_text("not pull's either")
    before = snapshot(outside), snapshot(tmp_outside)
    if planted == "versions":
        os.rename(dest / "versions", dest / "versions-aside")
    elif os.path.lexists(dest / planted):
        shutil.rmtree(dest / planted)
    (dest / planted).symlink_to(outside)
    (dest / ".tmp-123-456").symlink_to(tmp_outside)
    big_model(hubdir / "next.onnx", 2)
    os.replace(hubdir / "next.onnx", hubdir / "big.onnx")
    v2 = wait_version_change(s, "big", v1)
    rc, out, err = pull(url, dest, "--check", "false" if planted == "rejected" else "true")
    done = changes(before[0], snapshot(outside)) + changes(before[1], snapshot(tmp_outside))
    assert not done, f"outside D, pull (exit {rc}, {out.get('status')}) {done}"
    said = out.get("error") or err
    assert rc == 1 and out.get("status") == "failed", f"exit {rc}, {out}: D/{planted} -> outside was used"
    assert str(dest / planted) in said or str(real / planted) in said, said
    (dest / planted).unlink()
    if planted == "versions":
        os.rename(dest / "versions-aside", dest / "versions")
    assert install(url, dest) == v2
    assert not os.path.lexists(dest / ".tmp-123-456"), "a .tmp-* symlink is removed (as a link)"
    assert (snapshot(outside), snapshot(tmp_outside)) == before


# --- 5. two pulls at once ---------------------------------------------------------------------------------------------

def check_version(folder, pb2):
    """Every tensor file of a version folder matches its manifest.pb, and onnxruntime runs it by path."""
    manifest = pb2.Manifest.FromString((folder / "manifest.pb").read_bytes())
    digests = {t.name: t.sha256 for t in manifest.tensors}
    files = tensor_files(folder)
    assert files, "tensor files"
    for name, path in files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[name], name
    x = np.ones((2, 8), np.float32)
    ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_two_pulls_at_once_never_show_a_reader_a_broken_version(hub, tmp_path, pb2):
    """Two `pull --interval 1s` daemons and bursts of `--once` runs on one D
    over four hub updates, while a reader resolves `current` and loads it."""
    dest = tmp_path / "device"
    install(hub.url, dest)
    stop, reads, failures = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            target = os.readlink(dest / "current")
            try:
                check_version(dest / target, pb2)
                reads.append(target)
            except Exception as e:  # noqa: BLE001  (any failed read is the finding)
                failures.append(f"{target}: {e!r}")

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    daemons = [subprocess.Popen([str(binary()), "pull", hub.url, "--dest", str(dest), "--interval", "1s", "--json",
                                 "--timeout", "5s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]
    once = []
    try:
        for name in ["w1", "b1", "w2", "w1"]:
            last = hub.publish(bump=name)
            burst = [subprocess.Popen([str(binary()), "pull", hub.url, "--dest", str(dest), "--once", "--json",
                                       "--timeout", "5s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(3)]
            once += [(p.wait(timeout=30), p.stdout.read().strip(), p.stderr.read()[-400:]) for p in burst]
            time.sleep(0.7)
        deadline = time.monotonic() + 10
        while current(dest) != last and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(timeout=10)
        for d in daemons:
            d.send_signal(signal.SIGTERM)
        for d in daemons:
            try:
                d.wait(timeout=5)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
    assert not failures, f"{len(failures)} failed reads of {len(failures) + len(reads)}: {failures[:3]}"
    assert len(reads) > 10, "the reader read"
    failed = [o for o in once if o[0] != 0]
    assert not failed, f"{len(failed)} of {len(once)} concurrent --once rounds failed: {failed[:2]}"
    assert current(dest) == last
    rc, out, err = verify(dest)
    assert rc == 0, (out, err)


def test_a_second_pull_waits_for_the_lock(hub, tmp_path):
    dest = tmp_path / "device"
    install(hub.url, dest)
    v2 = hub.publish(bump="b1")
    with open(dest / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        p = subprocess.Popen([str(binary()), "pull", hub.url, "--dest", str(dest), "--once", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        waiting = p.poll() is None
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, err = p.communicate(timeout=30)
    assert waiting, f"pull did not wait for D/.lock (exit {p.returncode}: {out.strip()})"
    assert p.returncode == 0 and json.loads(out.splitlines()[-1])["version"] == v2, (out, err)
    assert current(dest) == v2


# --- 6. the ONNX Runtime library -------------------------------------------------------------------------------------

@pytest.mark.parametrize("wrong", ["missing", "garbage"])
def test_a_wrong_onnx_runtime_library_fails_the_round_not_the_version(hub, tmp_path, wrong):
    dest = tmp_path / "device"
    v1 = install(hub.url, dest)
    v2 = hub.publish(bump="w2")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    args = [str(binary()), "pull", hub.url, "--dest", str(dest), "--once", "--json", "--check", "ort"]
    if wrong == "missing":
        lib, extra, bad_env = "/nonexistent/libonnxruntime.so", ["--ort-lib", "/nonexistent/libonnxruntime.so"], env
    else:
        lib = tmp_path / "libonnxruntime.so"
        lib.write_bytes(b"\x7fELF not really" + os.urandom(256))
        extra, bad_env = [], dict(env, ORT_DYLIB_PATH=str(lib))
    r = subprocess.run(args + extra, capture_output=True, text=True, env=bad_env, cwd=ROOT, timeout=60)
    out = json.loads(r.stdout.splitlines()[-1]) if r.stdout.strip() else {}
    assert r.returncode == 1 and out.get("status") == "failed", f"exit {r.returncode}, {out}: the version was blamed"
    assert str(lib) in out["error"], out
    assert current(dest) == v1 and not failure_records(dest)
    assert not (dest / "rejected").exists() or not list((dest / "rejected").iterdir()), "nothing recorded as failed"
    # The library found (the default search finds scripts/fetch-ort.sh's): the same version installs.
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["version"] == v2, (r.stdout, r.stderr)
    assert current(dest) == v2


# --- 7. health, automatic rollback, status and retry -----------------------------------------------------------------

def test_a_version_failing_its_health_check_is_rolled_back_and_not_installed_again_until_retry(hub, tmp_path):
    dest = tmp_path / "device"
    ran, tries = tmp_path / "exec.log", tmp_path / "health.log"
    exec_ = f'echo "$WEIGHTCAST_DIR" >> {ran}'
    v1 = install(hub.url, dest, "--exec", exec_)
    v2 = hub.publish(bump="w1")
    failing = f'echo "$WEIGHTCAST_VERSION $WEIGHTCAST_DIR" >> {tries}; exit 1'
    started = time.monotonic()
    rc, out, err = pull(hub.url, dest, "--exec", exec_, "--health", failing, "--probation", "3s")
    took = time.monotonic() - started
    assert rc == 2 and out.get("status") == "rolled back", f"exit {rc}, {out}: {err[-300:]}"
    assert out["version"] == v2 and out["to"] == v1 and out["reason"].startswith("health:"), out
    assert "exit 1" in out["reason"], out
    assert current(dest) == v1
    runs = ran.read_text().split()
    assert len(runs) == 3 and runs[1].endswith(v2) and runs[2].endswith(v1), f"--exec: install v1, v2, back to v1: {runs}"
    health = [line.split() for line in tries.read_text().splitlines()]
    assert 2 <= len(health) <= 5 and all(v == v2 and d.endswith(v2) for v, d in health), health
    assert 1.5 < took < 15, f"retried for the probation (3s), tries 1s apart: {took:.1f}s"
    rec = failure(dest, v2)
    assert rec["cause"] == "health" and rec["reason"].startswith("health:") and rec["version"] == v2, rec

    st = status(dest)
    assert st["current"] == v1 and st["state"] == "committed" and st["model"] == "detector", st
    assert Path(st["dest"]).resolve() == dest.resolve()
    (r,) = [r for r in st["rejected"] if r["version"] == v2]
    assert r["cause"] == "health" and r["reason"].startswith("health:") and isinstance(r["at_ms"], int), st
    assert st["last_round"]["status"] == "rolled back" and isinstance(st["last_round"]["at_ms"], int), st
    listed = [v["version"] for v in st["versions"]]
    assert v1 in listed and [v["state"] for v in st["versions"] if v["version"] == v1] == ["committed"], st
    at = [v["installed_at_ms"] for v in st["versions"]]
    assert at == sorted(at, reverse=True), "newest first"
    rc, text, err = wc("status", "--dest", dest)
    assert rc == 0 and v1[:8] in text and v2[:8] in text and "health" in text, text

    # The hub still offers v2: the next round keeps v1, without running anything.
    rc, out, err = pull(hub.url, dest, "--exec", exec_, "--health", failing, "--probation", "3s")
    assert rc == 0 and out["status"] == "current" and out["version"] == v1 and current(dest) == v1, (out, err)
    assert len(ran.read_text().split()) == 3 and len(tries.read_text().splitlines()) == len(health)
    assert status(dest)["last_round"]["status"] == "current"

    rc, _, err = wc("retry", "--dest", dest, "f" * 64)
    assert rc == 1 and err.strip(), "an unknown version is an error"
    rc, _, err = wc("retry", "--dest", dest, v2)
    assert rc == 0, err
    assert v2 not in [r["version"] for r in status(dest)["rejected"]]
    rc, out, err = pull(hub.url, dest, "--exec", exec_, "--health", "true", "--probation", "3s")
    assert rc == 0 and out["status"] == "updated" and out["version"] == v2 and current(dest) == v2, (out, err)
    assert len(ran.read_text().split()) == 4
    st = status(dest)
    assert st["current"] == v2 and st["state"] == "committed", st


@pytest.mark.parametrize("code", [127, 126])
@pytest.mark.parametrize("hook", ["--check", "--health"])
def test_a_check_or_health_command_that_cannot_run_is_the_devices_fault(hub, tmp_path, hook, code):
    """Exit 127 (not found) or 126 (not executable): the round fails (exit 1), no version is recorded failed."""
    dest = tmp_path / "device"
    install(hub.url, dest)
    v2 = hub.publish(bump="b1")
    cmd = tmp_path / "hook"
    if code == 126:
        cmd.write_text("#!/bin/sh\nexit 0\n")
        cmd.chmod(0o644)
    extra = ["--probation", "2s"] if hook == "--health" else []
    rc, out, err = pull(hub.url, dest, hook, str(cmd), *extra)
    assert rc == 1 and out.get("status") == "failed", f"exit {rc}, {out}: {err[-300:]}"
    assert not failure_records(dest) and v2 not in [r["version"] for r in status(dest)["rejected"]]
    rc, out, err = pull(hub.url, dest, hook, "true", *extra)
    assert rc == 0 and current(dest) == v2, (out, err)


# --- 8. bit rot ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_a_flipped_byte_in_the_current_version_is_not_carried_forward(model, serve, tmp_path, request):
    h = model_hub(model, serve, tmp_path, request)
    dest = tmp_path / "device"
    v1 = install(h.url, dest)
    rotten, changed = float_weights(dest / "current")[:2]
    path = tensor_files(dest / "current")[rotten]
    size = path.stat().st_size
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # in place, as the disk would
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    os.chmod(path, 0o444)
    v2 = h.bump(changed)
    rc, out, err = pull(h.url, dest)
    assert rc == 0 and out["version"] == v2 and current(dest) == v2, (rc, out, err)
    got = tensor_files(dest / "current")[rotten].read_bytes()
    assert got == tensor_bytes(h.files[v2], rotten), f"'{rotten}' carried the flipped byte into {v2[:12]}"
    rc, o, e = verify(dest)
    assert rc == 0, (o, e)
    runs_like(dest / "current", model, h.files[v2])
    assert v1 != v2


# --- 9. disk use -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_two_versions_differing_in_one_tensor_take_one_model_plus_that_tensor_on_disk(model, serve, tmp_path, request):
    h = model_hub(model, serve, tmp_path, request)
    dest = tmp_path / "device"
    v1 = install(h.url, dest)
    big = float_weights(dest / "current")[0]
    v2 = h.bump(big)
    assert install(h.url, dest) == v2
    d1, d2 = dest / "versions" / v1, dest / "versions" / v2
    f1, f2 = tensor_files(d1), tensor_files(d2)
    assert sorted(f1) == sorted(f2)
    apart = [n for n in f2 if n != big and f1[n].stat().st_ino != f2[n].stat().st_ino]
    assert not apart, f"{len(apart)} of {len(f2) - 1} unchanged tensor files are copies, not one file: {apart[:3]}"
    assert f1[big].stat().st_ino != f2[big].stat().st_ino
    modes = {n: oct(f2[n].stat().st_mode & 0o777) for n in f2}
    assert set(modes.values()) == {"0o444"}, modes
    inodes = {}
    for p in (dest / "versions").rglob("*"):
        st = os.lstat(p)
        if p.is_file() and not p.is_symlink():
            inodes[(st.st_dev, st.st_ino)] = st.st_size
    one = sum(p.stat().st_size for p in d1.rglob("*") if p.is_file())
    own = sum(p.stat().st_size for p in d2.rglob("*") if p.is_file() and "tensors" not in p.relative_to(d2).parts)
    changed = f2[big].stat().st_size
    used = sum(inodes.values())
    print(f"\n{model}: one version {one} bytes, '{big}' {changed} bytes, v2's graph/manifest {own}: "
          f"two versions take {used} bytes")
    assert used < one + changed + own + 64 * 1024
    for d, v in ((d1, v1), (d2, v2)):
        assert (d / "engine-cache").is_dir() and not list((d / "engine-cache").iterdir())
        assert (d / "status.json").is_file() and (d / "manifest.pb").is_file()
        runs_like(d, model, h.files[v])



def test_a_probation_cut_by_a_restart_is_taken_up_again_and_three_cuts_fail_the_version(hub, tmp_path):
    """An operator's day: the device restarts (kill -9) while a new version is
    on trial. The next round runs the health check again before anything
    else; a version whose probation is cut three times fails (it may be what
    crashes the device) and the last committed one is current again."""
    dest = tmp_path / "device"
    install(hub.url, dest)

    def cut_probation(version):
        p = subprocess.Popen([str(binary()), "pull", hub.url, "--dest", str(dest), "--once", "--timeout", "3s",
                              "--health", "sleep 30", "--probation", "60s"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (os.path.lexists(dest / "current") and current(dest) == version):
            assert time.monotonic() < deadline, f"{version} was not switched to"
            time.sleep(0.05)
        time.sleep(0.3)
        p.send_signal(signal.SIGKILL)
        p.wait()

    v2 = hub.publish(bump="w1")
    cut_probation(v2)
    st = status(dest)
    assert st["current"] == v2 and st["state"] == "trial", st
    rc, out, err = pull(hub.url, dest, "--health", "true")
    assert rc == 0 and out["status"] == "current" and out["version"] == v2, (rc, out, err)
    assert status(dest)["state"] == "committed"

    v3 = hub.publish(bump="b1")
    for _ in range(3):
        cut_probation(v3)
    rc, out, err = pull(hub.url, dest, "--health", "true")
    assert rc == 2 and out["status"] == "rolled back" and out["to"] == v2, (rc, out, err)
    assert "probation cut short 3 times" in out["reason"], out
    assert current(dest) == v2 and failure(dest, v3)["cause"] == "health"
