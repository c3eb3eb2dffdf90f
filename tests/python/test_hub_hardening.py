"""issue #23: hardening the hub — a cache folder that keeps to its byte
budget under load, `/readyz` and `/metrics` that tell nothing to those who
may not read a model, connection slots that silent connections cannot hold
against real clients (plain and TLS), a page whose Content-Security-Policy
runs no inline script it did not name and forbids framing, and a model of
several files (graph + external data) published whole: never a graph of one
version with the data of another."""

import base64
import hashlib
import os
import random
import re
import socket
import subprocess
import threading
import time
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest
import requests
from onnx import helper, numpy_helper

from test_page import chromium, model as page_model, rows
from test_pull_contract import named_model
from test_tls import ca, leaf

MiB = 1 << 20
# One frame of slack while a blob is being written: a blob is at most a
# 4 MiB window plus its 12-byte trailer.
FRAME_SLACK = int(4.1 * MiB)


# ---------------------------------------------------------------- helpers


def metric(text, name):
    """The value of the unlabelled sample `name` in Prometheus text; None if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def folder_bytes(path):
    """The total size of the files under `path` now (files vanishing while
    walked are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


class Sampler(threading.Thread):
    """Measures a folder's size every 20 ms until stopped; keeps the largest."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.largest, self.samples, self.done = path, 0, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.largest = max(self.largest, folder_bytes(self.path))
            self.samples += 1
            time.sleep(0.02)

    def stop(self):
        self.done.set()
        self.join(10)
        return self.largest


def bundle_tensors(pb2, body):
    """name -> the tensor's whole bytes, from a protobuf bundle (pieces joined)."""
    pieces = {}
    for t in pb2.Bundle.FromString(body).tensors:
        pieces.setdefault(t.name, []).append((t.offset, t.data))
    return {name: b"".join(d for _, d in sorted(p)) for name, p in pieces.items()}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def port_of(server):
    return int(server.url.rsplit(":", 1)[1])


# ------------------------------------------------- 1. cache folder budget


def many_tensor_model(path, count, floats, seed=0):
    """`count` float32 tensors t00, t01, … of `floats` random values each."""
    rng = np.random.default_rng(seed)
    arrays = {f"t{k:02d}": rng.standard_normal(floats).astype(np.float32) for k in range(count)}
    inits = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    # A graph ONNX Runtime 1.31 opens (IR 9, opset 17): each tensor an output.
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in arrays]
    outputs = [helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, [floats]) for name in arrays]
    m = helper.make_model(helper.make_graph(nodes, "g", [], outputs, inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return arrays


def cache_config(tmp_path, budget, model_path):
    """A config with a cache folder of `budget` bytes; returns (folder, config)."""
    cache = tmp_path / "cache"
    cfg = tmp_path / "cache.toml"
    cfg.write_text(f'cache_dir = "{cache}"\ncache_dir_bytes = {budget}\ncache_bytes = {4 * MiB}\n'
                   f'[[models]]\npath = "{model_path}"\n')
    return cache, cfg


def test_the_cache_folder_never_holds_more_than_its_budget_under_load(serve, tmp_path, pb2):
    """64 tensors of 256 KiB (each zstd frame >= 64 KiB, so on disk), 8
    threads asking for distinct 3-name selections under zstd: the folder,
    measured every 20 ms, never exceeds 16 MiB (+ one frame being written),
    every answer is right, and evictions are counted."""
    budget = 16 * MiB
    arrays = many_tensor_model(tmp_path / "m.onnx", 64, 65536)
    cache, cfg = cache_config(tmp_path, budget, tmp_path / "m.onnx")
    sampler = Sampler(cache)
    sampler.start()  # from before the start: the frames prepared at load count too
    s = serve("--config", cfg)  # the default configuration: ONNX Runtime on

    rnd = random.Random(23)
    combos = sorted({tuple(sorted(rnd.sample(sorted(arrays), 3))) for _ in range(400)})[:320]
    failures, answered = [], []

    def client(part):
        with requests.Session() as session:
            for names in part:
                try:
                    r = session.get(f"{s.url}/v1/models/m/weights?names={','.join(names)}",
                                    headers={"Accept-Encoding": "zstd"}, timeout=30)
                except requests.RequestException as e:
                    failures.append((names, type(e).__name__, str(e)[:200]))
                    continue
                if r.status_code != 200:
                    failures.append((names, r.status_code, r.text[:200]))
                    continue
                got = bundle_tensors(pb2, r.content)
                want = {n: arrays[n].tobytes() for n in names}
                if got != want:
                    failures.append((names, "wrong tensors", sorted(got)))
                answered.append(r.headers.get("Content-Encoding"))

    threads = [threading.Thread(target=client, args=(combos[k::8],)) for k in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    took = time.monotonic() - started
    time.sleep(0.5)
    at_rest = folder_bytes(cache)
    largest = sampler.stop()
    text = s.get("/metrics").text

    assert not failures, failures[:5]
    assert len(answered) == len(combos) and set(answered) == {"zstd"}, set(answered)
    assert largest <= budget + FRAME_SLACK, (
        f"the cache folder reached {largest / MiB:.1f} MiB (budget {budget / MiB:.0f} MiB; "
        f"{len(combos)} requests in {took:.1f} s, {sampler.samples} samples)")
    assert at_rest <= budget, f"{at_rest / MiB:.1f} MiB in the folder at rest"
    assert metric(text, "weightcast_cache_disk_bytes") <= budget
    evictions = metric(text, "weightcast_cache_disk_evictions_total")
    assert evictions is not None and evictions > 0, "weightcast_cache_disk_evictions_total counts the blobs dropped"
    print(f"\ncache folder: at most {largest / MiB:.1f} MiB (budget {budget / MiB:.0f} MiB) over {len(combos)} "
          f"requests in {took:.1f} s, {evictions:.0f} evictions")


def test_a_blob_larger_than_the_folder_budget_is_sent_without_being_stored(serve, tmp_path, pb2):
    """A 1 MiB folder and tensors of 2 MiB (frames of ~1.9 MiB): nothing
    fits, so nothing is stored, and every answer is still right."""
    budget = 1 * MiB
    arrays = many_tensor_model(tmp_path / "m.onnx", 4, 1 << 19)
    cache, cfg = cache_config(tmp_path, budget, tmp_path / "m.onnx")
    sampler = Sampler(cache)
    sampler.start()
    s = serve("--runtime", "none", "--config", cfg)
    for _ in range(2):  # the second time there is nothing on disk to use either
        r = s.get("/v1/models/m/weights", headers={"Accept-Encoding": "zstd"})
        assert r.status_code == 200 and r.headers["Content-Encoding"] == "zstd"
        assert bundle_tensors(pb2, r.content) == {n: a.tobytes() for n, a in arrays.items()}
        for name, a in arrays.items():
            r = s.get(f"/v1/models/m/weights?names={name}", headers={"Accept-Encoding": "zstd"})
            assert r.status_code == 200 and bundle_tensors(pb2, r.content) == {name: a.tobytes()}
    time.sleep(0.5)
    at_rest = folder_bytes(cache)
    largest = sampler.stop()
    assert largest <= budget + FRAME_SLACK, f"the cache folder reached {largest / MiB:.1f} MiB (budget 1 MiB)"
    assert at_rest <= budget, f"{at_rest / MiB:.1f} MiB stored under a 1 MiB budget"


# ------------------------------------- 2. nothing for those who may not see it

SECRET_FOLDER = "s3cr3t-customer-folder"
EVERYONE, GOOD_ONLY = "reader-all-0123456789abcdef", "reader-good-0123456789abcdef"
BOTH = "reader-both-0123456789abcdef"


@pytest.fixture
def broken_hub(serve, tmp_path):
    """`good` loads; `broken` (garbage bytes in a folder with a secret-looking
    name) does not. Returns (start(with_tokens) -> Server)."""
    named_model(tmp_path / "good.onnx", ["w1"], n=64)
    (tmp_path / SECRET_FOLDER).mkdir()
    (tmp_path / SECRET_FOLDER / "broken.onnx").write_bytes(b"\xff\xff\xff\xff not a model")
    (tmp_path / "tokens").write_text(f"{EVERYONE} *\n{GOOD_ONLY} good\n{BOTH} good,broken\n")

    def start(with_tokens):
        cfg = tmp_path / f"hub-{with_tokens}.toml"
        cfg.write_text((f'tokens_file = "{tmp_path / "tokens"}"\n' if with_tokens else "")
                       + f'[[models]]\nname = "good"\npath = "{tmp_path / "good.onnx"}"\n'
                       + f'[[models]]\nname = "broken"\npath = "{tmp_path / SECRET_FOLDER / "broken.onnx"}"\n')
        return serve("--runtime", "none", "--config", cfg)

    return start


def assert_tells_nothing(text, error):
    for secret in ("broken", SECRET_FOLDER, "/", "onnx", error):
        assert secret not in text, f"{secret!r} in {text!r}"


def test_readyz_tells_anonymous_callers_only_readiness_and_a_count(broken_hub):
    s = broken_hub(with_tokens=True)
    full = s.get("/readyz", headers=auth(EVERYONE))
    assert full.status_code == 503, full.text
    assert full.json()["not_loaded"] == [{"model": "broken", "error": full.json()["not_loaded"][0]["error"]}], full.text
    error = full.json()["not_loaded"][0]["error"]
    assert "not a valid ONNX model" in error, error
    if "not_loaded_count" in full.json():
        assert full.json()["not_loaded_count"] == 1

    r = s.get("/readyz")
    assert r.status_code == 503
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"ready": False, "not_loaded_count": 1}, r.text
    assert_tells_nothing(r.text, error)


def test_readyz_names_only_the_models_a_token_may_read(broken_hub):
    s = broken_hub(with_tokens=True)
    error = s.get("/readyz", headers=auth(EVERYONE)).json()["not_loaded"][0]["error"]
    r = s.get("/readyz", headers=auth(GOOD_ONLY))
    assert r.status_code == 503
    assert_tells_nothing(r.text, error)
    body = r.json()
    assert body["ready"] is False and body["not_loaded_count"] == 1, r.text
    assert body.get("not_loaded", []) == [], r.text
    r = s.get("/readyz", headers=auth(BOTH))
    assert r.status_code == 503 and [e["model"] for e in r.json()["not_loaded"]] == ["broken"], r.text


def test_metrics_need_a_token_for_every_model(broken_hub):
    """Metrics name every model (and its load state): a token that may read
    only some models gets 403."""
    s = broken_hub(with_tokens=True)
    r = s.get("/metrics")
    assert r.status_code == 401, r.text[:200]
    r = s.get("/metrics", headers=auth(GOOD_ONLY))
    assert r.status_code == 403, r.text[:200]
    assert "broken" not in r.text and SECRET_FOLDER not in r.text
    r = s.get("/metrics", headers=auth(EVERYONE))
    assert r.status_code == 200 and 'weightcast_model_loaded{model="broken"} 0' in r.text


def test_without_tokens_readyz_still_names_what_did_not_load(broken_hub):
    s = broken_hub(with_tokens=False)
    r = s.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False
    (entry,) = r.json()["not_loaded"]
    assert entry["model"] == "broken" and "not a valid ONNX model" in entry["error"], r.text


# --------------------------------------------------- 3. slots for real clients


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_a_real_client_is_served_while_60_silent_connections_wait(serve, tmp_path, tls):
    """`max_connections = 50` and 60 connections that never send a byte: a
    client that does speak gets its answer within 5 s."""
    named_model(tmp_path / "m.onnx", ["w1"], n=64)
    cfg = tmp_path / "slots.toml"
    text = "max_connections = 50\n"
    if tls:
        ca_key, ca_cert, ca_path = ca(tmp_path, "test-ca")
        leaf(tmp_path, ca_key, ca_cert, 1001)
        text += f'[tls]\ncert = "{tmp_path / "cert.pem"}"\nkey = "{tmp_path / "key.pem"}"\n'
    cfg.write_text(text + f'[[models]]\npath = "{tmp_path / "m.onnx"}"\n')
    s = serve("--config", cfg)  # the default configuration: ONNX Runtime on
    port = port_of(s)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
    try:
        time.sleep(0.5)
        url = f"https://localhost:{port}/healthz" if tls else f"http://127.0.0.1:{port}/healthz"
        started = time.monotonic()
        try:
            r = requests.get(url, verify=str(ca_path) if tls else True, timeout=5)
            outcome = (r.status_code, r.text.strip())
        except requests.RequestException as e:
            outcome = (type(e).__name__, str(e)[:200])
        took = time.monotonic() - started
        assert outcome == (200, "ok") and took < 5, f"after {took:.2f} s: {outcome}"
        print(f"\na real client served in {took * 1000:.0f} ms beside 60 silent connections")
        assert s.proc.poll() is None
    finally:
        for c in silent:
            c.close()


# ------------------------------------------------------------------ 4. CSP


def csp_directives(header):
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


class Scripts(HTMLParser):
    """The page's <script> elements: (attributes, inline text)."""

    def __init__(self):
        super().__init__()
        self.found, self.open = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.open = (dict(attrs), [])
            self.found.append(self.open)

    def handle_data(self, data):
        if self.open is not None:
            self.open[1].append(data)

    def handle_endtag(self, tag):
        if tag == "script":
            self.open = None


def test_the_page_runs_no_script_its_policy_did_not_name_and_cannot_be_framed(serve, tmp_path):
    page_model(tmp_path / "m.onnx")
    s = serve("--runtime", "none", tmp_path / "m.onnx")
    r = s.get("/", headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.headers.get("X-Frame-Options") == "DENY"
    csp = csp_directives(r.headers["Content-Security-Policy"])
    scripts = csp.get("script-src", csp.get("default-src", []))
    assert "'unsafe-inline'" not in scripts, r.headers["Content-Security-Policy"]
    assert csp.get("frame-ancestors") == ["'none'"], r.headers["Content-Security-Policy"]

    parser = Scripts()
    parser.feed(r.text)
    assert parser.found, "the page has its script"
    for attrs, text in parser.found:
        if "src" in attrs:
            src = attrs["src"]
            assert not re.match(r"^(https?:)?//", src), f"{src}: the script comes from the hub itself"
            assert "'self'" in scripts, f"{src} is loaded but script-src does not allow 'self': {scripts}"
            js = s.get("/" + src.lstrip("/"))
            assert js.status_code == 200, src
            assert js.headers["Content-Type"].split(";")[0].strip() in ("text/javascript", "application/javascript"), \
                js.headers["Content-Type"]
        else:
            digest = base64.b64encode(hashlib.sha256("".join(text).encode()).digest()).decode()
            nonce = attrs.get("nonce")
            assert f"'sha256-{digest}'" in scripts or (nonce and f"'nonce-{nonce}'" in scripts), \
                f"an inline script whose hash ('sha256-{digest}') the policy does not name: {scripts}"
    markup = re.sub(r"<script\b.*?</script>", "", r.text, flags=re.S)
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", markup), "inline event handlers do not run under this policy"


def test_the_page_still_renders_its_model_table_under_the_policy_in_chromium(serve, tmp_path):
    """Headless Chromium with its console on stderr: the model table is built
    and no Content-Security-Policy violation is reported."""
    page_model(tmp_path / "m.onnx")
    s = serve("--runtime", "none", tmp_path / "m.onnx")
    csp = s.get("/").headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in csp_directives(csp).get("script-src", []), csp
    out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                          "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                          "--dump-dom", s.url + "/"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert set(rows(out.stdout, "model")) == {"m"}, out.stdout[-3000:]
    violations = [line for line in out.stderr.splitlines() if "Content Security Policy" in line]
    assert not violations, violations[:3]


# ------------------------------------------- 5. multi-file models published whole


def pair(folder, k):
    """Version k of a two-file model in `folder`: model.onnx holds the graph
    and a small inline tensor `marker` (= k); w.bin holds `w`. Versions share
    their layout: the same file sizes, the same offsets. Returns name -> bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = np.full(4, k, dtype=np.float32)
    w = np.random.default_rng(k).standard_normal(4096).astype(np.float32)
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "marker"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4096])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(marker, "marker")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(folder / "model.onnx"), save_as_external_data=True, location="w.bin", size_threshold=1024)
    assert (folder / "w.bin").stat().st_size == w.nbytes
    return {"w": w.tobytes(), "marker": marker.tobytes()}


class Watcher(threading.Thread):
    """Polls the manifest and downloads the weights every 50 ms; records each
    answer as "A", "B" or what mixed (a graph of one version, data of the other)."""

    def __init__(self, server, model, versions, pb2):
        super().__init__(daemon=True)
        self.s, self.model, self.pb2, self.done = server, model, pb2, threading.Event()
        self.digests = {label: {n: sha(b) for n, b in t.items()} for label, t in versions.items()}
        self.versions, self.seen, self.mixed, self.last = versions, [], [], None

    def origin(self, digests):
        """Which version each tensor's digest belongs to, e.g. {"w": "A", "marker": "B"}."""
        return {n: next((l for l, v in self.digests.items() if v.get(n) == d), "?") for n, d in sorted(digests.items())}

    def look(self):
        r = self.s.get(f"/v1/models/{self.model}?format=json")
        if r.status_code != 200:
            self.mixed.append(("manifest", r.status_code, r.text[:200]))
            return
        m = r.json()
        digests = {t["name"]: t["sha256"] for t in m["tensors"]}
        label = next((l for l, d in self.digests.items() if d == digests), None)
        if label is None:
            self.mixed.append(("manifest", m["version"][:12], self.origin(digests)))
        r = self.s.get(f"/v1/models/{self.model}/weights")
        if r.status_code != 200:
            self.mixed.append(("weights", r.status_code, r.text[:200]))
            return
        tensors = bundle_tensors(self.pb2, r.content)
        if tensors not in self.versions.values():
            self.mixed.append(("weights", r.headers.get("X-Weightcast-Model-Version", "")[:12],
                               self.origin({n: sha(b) for n, b in tensors.items()})))
        self.last = label
        self.seen.append((time.monotonic(), label))

    def run(self):
        while not self.done.is_set():
            try:
                self.look()
            except (requests.RequestException, ValueError) as e:
                self.mixed.append(("no answer", type(e).__name__, str(e)[:200]))
            time.sleep(0.05)

    def wait_for(self, label, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.last == label:
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        self.done.set()
        self.join(30)


def settle_hub(serve, tmp_path, model_path, settle="2s"):
    cfg = tmp_path / "settle.toml"
    cfg.write_text(f'reload_settle = "{settle}"\n[[models]]\nname = "m"\npath = "{model_path}"\n')
    return serve("--runtime", "none", "--config", cfg)


def rewrite_in_place(path, data):
    """What `cat new > file` does: same inode, new bytes."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


@pytest.mark.parametrize("pause, settle", [(1.2, "2s"), (2.5, "3s")])
def test_a_model_rewritten_in_place_file_by_file_is_never_served_half_new(serve, tmp_path, pb2, pause, settle):
    """model.onnx is rewritten in place with version B's graph, and `pause`
    seconds later w.bin with B's data — a pause below `reload_settle` (the
    default 2 s; 2.5 s measured by the issue needs it raised): every answer
    (manifest and weights) is A whole or B whole, and B serves within 10 s
    of the last write. (The old binary served a mix with both pauses.)"""
    hub = tmp_path / "hub"
    versions = {"A": pair(hub, 1), "B": pair(tmp_path / "stage", 2)}
    s = settle_hub(serve, tmp_path, hub / "model.onnx", settle)
    watcher = Watcher(s, "m", versions, pb2)
    watcher.look()
    assert watcher.last == "A", watcher.mixed
    watcher.start()
    time.sleep(0.3)
    rewrite_in_place(hub / "model.onnx", (tmp_path / "stage" / "model.onnx").read_bytes())
    time.sleep(pause)
    rewrite_in_place(hub / "w.bin", (tmp_path / "stage" / "w.bin").read_bytes())
    written = time.monotonic()
    served_b = watcher.wait_for("B", 10)
    took = time.monotonic() - written
    time.sleep(0.3)
    watcher.stop()
    assert not watcher.mixed, f"half-new answers: {watcher.mixed[:3]}"
    assert served_b, f"B not served within 10 s of its last file: {watcher.seen[-3:]}"
    print(f"\nB served {took:.1f} s after its last file was written")


def test_a_folder_link_swapped_to_a_new_version_is_served_whole(serve, tmp_path, pb2):
    """`current` -> v1/, then v2/ written completely and a new link renamed
    over `current`: v2 serves within 10 s, and never a mix."""
    root = tmp_path / "published"
    versions = {"A": pair(root / "v1", 1), "B": pair(root / "v2", 2)}
    os.symlink("v1", root / "current")
    s = settle_hub(serve, tmp_path, root / "current" / "model.onnx")
    watcher = Watcher(s, "m", versions, pb2)
    watcher.look()
    assert watcher.last == "A", watcher.mixed
    watcher.start()
    time.sleep(0.3)
    os.symlink("v2", root / "next")
    os.replace(root / "next", root / "current")
    served_b = watcher.wait_for("B", 10)
    time.sleep(0.3)
    watcher.stop()
    assert not watcher.mixed, f"mixed answers: {watcher.mixed[:3]}"
    assert served_b, f"v2 not served within 10 s: {watcher.seen[-3:]}"


def test_a_cast_blob_is_found_through_the_tensor_it_comes_from_not_by_casting_every_model(serve, tmp_path):
    """Part 7: `?dtype=` blob lookups cast every model they scanned. A cast
    blob's URL in the manifest now names its stored tensor (`from=`): the hub
    casts that one model. Without `from`, only views already cast are
    searched, so a digest nobody published costs no cast."""
    for name, seed in (("a", 1), ("b", 2)):
        many_tensor_model(tmp_path / f"{name}.onnx", 2, 1 << 15, seed=seed)
    s = serve("--runtime", "none", tmp_path / "a.onnx", tmp_path / "b.onnx")
    stored = s.get("/v1/models/b?format=json").json()["tensors"][0]
    cast = s.get("/v1/models/b?format=json&dtype=f16").json()["tensors"][0]
    assert cast["blob"] == f"/v1/blobs/sha256/{cast['sha256']}?dtype=f16&from={stored['sha256']}", cast["blob"]
    want = np.frombuffer(s.get(f"/v1/blobs/sha256/{stored['sha256']}").content, np.float32).astype(np.float16)
    # A fresh server: no view of b is cast yet.
    s2 = serve("--runtime", "none", tmp_path / "a.onnx", tmp_path / "b.onnx")
    bare = s2.get(f"/v1/blobs/sha256/{cast['sha256']}?dtype=f16")
    assert bare.status_code == 404, "without from=, an uncast view is not cast to look for a digest"
    r = s2.get(cast["blob"])
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == cast["sha256"], r.status_code
    assert np.frombuffer(r.content, np.float16).tobytes() == want.tobytes()
    assert s2.get(f"/v1/blobs/sha256/{cast['sha256']}?dtype=f16").status_code == 200, "now b's f16 view is cast"
    unknown = "0" * 64
    assert s2.get(f"/v1/blobs/sha256/{unknown}?dtype=bf16&from={unknown}").status_code == 404


# ------------------------------------------------- 6. polls answered from their head


def raw_head(server, head):
    """Sends one request head as written; returns (status, {header: value}) of the answer."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as c:
        c.sendall(head.encode("latin-1"))
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
    lines = got.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers


def test_a_poll_answered_from_its_head_gets_the_304_the_general_way_gives(serve, tmp_path):
    """`GET /v1/models/m` with the manifest's ETag is answered without building a
    request (the poll path); `?format=protobuf` (the same representation, so
    the same ETag) goes the general way. Both must give the same 304 — and the
    token rule must hold on the poll path as on the other."""
    named_model(tmp_path / "m.onnx", ["w1"], n=64)
    named_model(tmp_path / "other.onnx", ["w2"], n=64)
    (tmp_path / "tokens").write_text(f"{EVERYONE} *\n{GOOD_ONLY} m\n")
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'tokens_file = "{tmp_path / "tokens"}"\n'
                   f'[[models]]\nname = "m"\npath = "{tmp_path / "m.onnx"}"\n'
                   f'[[models]]\nname = "other"\npath = "{tmp_path / "other.onnx"}"\n')
    s = serve("--runtime", "none", "--config", cfg)
    for encoding in ["identity", "zstd"]:
        etag = s.get("/v1/models/m", headers={**auth(GOOD_ONLY), "Accept-Encoding": encoding}).headers["ETag"]

        def ask(method, target, token=GOOD_ONLY, extra=""):
            authz = f"Authorization: Bearer {token}\r\n" if token else ""
            return raw_head(s, f"{method} {target} HTTP/1.1\r\nHost: hub\r\nAccept-Encoding: {encoding}\r\n"
                               f"If-None-Match: {etag}\r\n{authz}{extra}\r\n")

        for method in ["GET", "HEAD"]:
            status, poll = ask(method, "/v1/models/m")
            status2, general = ask(method, "/v1/models/m?format=protobuf")
            assert status == status2 == 304, (status, status2)
            poll.pop("date"), general.pop("date")
            assert poll == general, (poll, general)
            assert poll["etag"] == [etag]
        # The token rule on the poll path: none, a wrong one, one for another model.
        assert ask("GET", "/v1/models/m", token=None)[0] == 401
        assert ask("GET", "/v1/models/m", token="wrong-token-0123456789")[0] == 401
        assert ask("GET", "/v1/models/other", token=GOOD_ONLY)[0] == 403
        # What the general way refuses, the poll path refuses too.
        assert ask("GET", "/v1/models/m", extra="User-Agent: caf\xe9\r\n")[0] == 400
        assert ask("POST", "/v1/models/m")[0] == 405
        # An ETag the client does not hold: the full manifest.
        status, headers = raw_head(s, f"GET /v1/models/m HTTP/1.1\r\nHost: hub\r\nAccept-Encoding: {encoding}\r\n"
                                      f'If-None-Match: "other"\r\nAuthorization: Bearer {GOOD_ONLY}\r\n\r\n')
        assert status == 200 and headers["etag"] == [etag]
    # Polls are counted like any other answer.
    text = s.get("/metrics", headers=auth(EVERYONE)).text
    assert metric(text, 'weightcast_requests_total{route="manifest",status="304"}') >= 8, text


def test_a_one_file_model_renamed_into_place_is_served_within_a_second(serve, tmp_path):
    """A rename publishes a file whole: the hub takes it after one unchanged
    look, not after reload_settle (2 s by default), which only files written
    in place need (a one-tensor change reached a fleet 1.74x the link's
    limit, 2.1-2.6 s of it this wait: benches/fleet.py --link)."""
    path = tmp_path / "m.onnx"
    named_model(path, ["w1"], n=64)
    s = serve("--runtime", "none", path)  # the default reload_settle (2 s)
    before = s.get("/v1/models/m").headers["X-Weightcast-Model-Version"]
    named_model(tmp_path / "next.onnx", ["w1", "w2"], n=64)
    os.replace(tmp_path / "next.onnx", path)
    renamed = time.monotonic()
    while s.get("/v1/models/m").headers["X-Weightcast-Model-Version"] == before:
        assert time.monotonic() - renamed < 10, "never reloaded"
        time.sleep(0.05)
    took = time.monotonic() - renamed
    assert took < 1.6, f"served {took:.2f} s after the rename"
