"""Fleet control (issue #24): devices report on their polls, the hub keeps a
fleet table in SQLite, and a model with `[models.rollout]` reaches its
devices in stages, halting by itself when the devices' own health checks
fail the new version — also across a hub restart.

Ten real `weightcast pull` processes poll one real hub; versions are read
from each device's `current` link, the fleet from `/v1/fleet`, `/metrics`
and the SQLite file itself (Python's sqlite3 as the independent reader)."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper

from conftest import binary
from test_corpus import corpus  # noqa: F401 (fixture)
from test_page import browse, rows

DEVICES = 10
# The health check a device runs on a new version: v3 carries this marker.
BAD = "BADMARK"
HEALTH = f"! grep -rq {BAD} \"$WEIGHTCAST_DIR\""


def model(path, k, bad=False):
    """y = x + w, w 4096 floats of value k (external in /graph), and a small
    uint8 `note` (inline) that spells the bad marker in v3."""
    w = numpy_helper.from_array(np.full(4096, float(k), dtype=np.float32), "w")
    note = numpy_helper.from_array(np.frombuffer((BAD if bad else "goodone").encode(), dtype=np.uint8).copy(), "note")
    nodes = [helper.make_node("Add", ["x", "w"], ["y"]), helper.make_node("Identity", ["note"], ["n"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096]),
                           helper.make_tensor_value_info("n", TensorProto.UINT8, [7])], [w, note])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, path)  # published whole: one rename


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    """`weightcast serve` on a fixed port (devices keep their URL across restarts)."""

    def __init__(self, cfg, port, log):
        self.log = open(log, "a")
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([str(binary()), "serve", "--runtime", "none", "--listen", f"127.0.0.1:{port}",
                                      "--config", str(cfg)], stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=dict(os.environ, RUST_LOG="info", NO_COLOR="1"))
        assert "listening on" in self.proc.stdout.readline()

    def fleet(self, token=None):
        h = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url + "/v1/fleet", headers=h, timeout=10).json()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.log.close()


def current(dest):
    try:
        return os.readlink(dest / "current").rsplit("/", 1)[-1]
    except OSError:
        return None


def wait_for(what, timeout, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


@pytest.fixture
def fleet(tmp_path):
    """A hub with a staged rollout ([20, 100], wait 3 s, max_failures 1) and
    ten devices polling it every second with a health check."""
    path = tmp_path / "m.onnx"
    model(path, 1)
    state = tmp_path / "state"
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'state_dir = "{state}"\nreload_settle = "300ms"\n'
                   f'[[models]]\nname = "m"\npath = "{path}"\n'
                   '[models.rollout]\nstages = [20, 100]\nwait = "3s"\nmax_failures = 1\n')
    port = free_port()
    hub = Hub(cfg, port, tmp_path / "hub.log")
    devices, procs = [], []
    for k in range(DEVICES):
        dest = tmp_path / f"device-{k}"
        devices.append(dest)
        procs.append(subprocess.Popen(
            [str(binary()), "pull", f"{hub.url}/v1/models/m", "--dest", str(dest), "--interval", "1s",
             "--device-id", f"device-{k:02d}", "--health", HEALTH, "--probation", "2s"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"device-{k}.log", "w")))
    state_ = {"hub": hub, "cfg": cfg, "port": port, "path": path, "devices": devices, "state": state,
              "tmp": tmp_path}
    yield state_
    for p in procs:
        p.kill()
        p.wait()
    state_["hub"].stop()


def test_a_new_version_reaches_a_first_stage_then_everyone_and_a_bad_one_halts_there(fleet):
    hub, devices = fleet["hub"], fleet["devices"]
    v1 = wait_for(lambda: len({current(d) for d in devices} - {None}) == 1 and None not in
                  [current(d) for d in devices] and current(devices[0]), 30)
    # Every device reported v1 committed.
    wait_for(lambda: [c for c in hub.fleet()["models"][0]["versions"] if c["version"] == v1
                      and c["state"] == "committed" and c["devices"] == DEVICES], 10)

    # v2 (good): two devices (20% of 10) first; the rest only after those
    # two have run it committed for the 3 s wait.
    model(fleet["path"], 2)
    v2 = wait_for(lambda: (hub.fleet()["models"][0]["rollout"] or {}).get("candidate"), 10)
    reached, first_stage = {}, set()
    deadline = time.monotonic() + 40
    while len(reached) < DEVICES and time.monotonic() < deadline:
        rollout = hub.fleet()["models"][0]["rollout"]
        for d in devices:
            if d not in reached and current(d) == v2:
                reached[d] = time.monotonic()
        if rollout and rollout["stage"] == 0:
            first_stage = {d for d in reached}  # who runs v2 while only the first stage is open
        time.sleep(0.05)
    assert len(reached) == DEVICES, f"only {len(reached)} devices reached v2"
    assert len(first_stage) == 2, f"the first stage is 20% of 10 devices: {len(first_stage)}"
    rest = [t for d, t in reached.items() if d not in first_stage]
    assert min(rest) - max(reached[d] for d in first_stage) >= 2.5, \
        "the second stage opened before the first stage's devices had run v2 committed for the wait"
    wait_for(lambda: hub.fleet()["models"][0]["rollout"] is None and hub.fleet()["models"][0]["stable"] == v2, 15)

    # v3 (its devices' health check fails it): only the first stage takes
    # it; they roll back by themselves; the rollout halts; the rest stay on v2.
    model(fleet["path"], 3, bad=True)
    v3 = wait_for(lambda: (hub.fleet()["models"][0]["rollout"] or {}).get("candidate"), 10)
    assert v3 not in (v1, v2)
    rollout = wait_for(lambda: (r := hub.fleet()["models"][0]["rollout"]) and r["status"] == "halted" and r, 30)
    assert rollout["failures"] >= 1 and "max_failures = 1" in rollout["halted_reason"], rollout
    failed = set(rollout["failed_devices"])
    assert 1 <= len(failed) <= 3, rollout
    time.sleep(4)  # four more polls of every device
    assert all(current(d) == v2 for d in devices), [current(d) for d in devices]
    doc = hub.fleet()["models"][0]
    rolled_back = {d["device"] for d in doc["devices"] if d["state"] == "rolled-back"}
    assert failed <= rolled_back, (failed, doc["devices"])
    for d in doc["devices"]:
        if d["device"] in failed:
            assert d["failure"]["version"] == v3 and d["failure"]["cause"] == "health", d
    metrics = requests.get(hub.url + "/metrics", timeout=10).text
    assert f'weightcast_rollout_halted{{model="m",candidate="{v3}"}} 1' in metrics, metrics
    assert f'weightcast_fleet_devices{{model="m",version="{v2}",state="committed"}}' in metrics

    # The page shows it: the halted rollout and why, every device, who rolled back.
    dom = browse(hub.url + "/#/fleet", "fleet-halted.png", (1400, 900))
    assert 'data-status="halted"' in dom and "max_failures = 1" in dom, dom[-3000:]
    shown = rows(dom, "device")
    assert len(shown) == DEVICES, shown.keys()
    for device in failed:
        assert shown[device]["state"] == "rolled-back" and "health" in shown[device]["failure"], shown[device]
    counted = {name: int(r["_cells"][2]) for name, r in rows(dom, "fleet-version").items()}
    assert sum(counted.values()) == DEVICES, counted

    # The hub restarts: the halt, the stable version and the table hold.
    hub.stop()
    fleet["hub"] = hub = Hub(fleet["cfg"], fleet["port"], fleet["tmp"] / "hub.log")
    doc = hub.fleet()["models"][0]
    assert doc["stable"] == v2 and doc["rollout"]["status"] == "halted", doc
    assert len(doc["devices"]) == DEVICES
    time.sleep(4)
    assert all(current(d) == v2 for d in devices), [current(d) for d in devices]
    # The table on disk, read by sqlite itself: every device, and its history.
    db = sqlite3.connect(fleet["state"] / "fleet.sqlite")
    assert db.execute("SELECT count(*) FROM devices WHERE model = 'm'").fetchone()[0] == DEVICES
    versions = {v for (v,) in db.execute("SELECT DISTINCT version FROM history WHERE model = 'm'")}
    assert {v1, v2} <= versions, versions


def test_rollout_commands_on_the_hub_machine_pause_resume_and_promote(fleet):
    hub, devices, state = fleet["hub"], fleet["devices"], fleet["state"]
    wait_for(lambda: all(current(d) for d in devices), 30)
    v1 = current(devices[0])
    run = lambda *a: subprocess.run([str(binary()), "rollout", *a, "m", "--state-dir", str(state)],
                                    capture_output=True, text=True, timeout=30)
    assert "none under way" in run("status").stdout
    hub_before = hub.fleet()["models"][0]
    assert hub_before["stable"] == v1
    model(fleet["path"], 2)
    v2 = wait_for(lambda: (hub.fleet()["models"][0]["rollout"] or {}).get("candidate"), 10)
    r = run("pause")
    assert r.returncode == 0 and "taken by the hub" in r.stdout, r.stdout + r.stderr
    assert hub.fleet()["models"][0]["rollout"]["status"] == "paused"
    time.sleep(3)
    on_v2 = sum(current(d) == v2 for d in devices)
    assert on_v2 <= 3, "a paused rollout admits no device beyond those already offered it"
    status = json.loads(run("status", "--json").stdout)
    assert status["rollout"]["status"] == "paused" and status["rollout"]["candidate"] == v2
    assert run("resume").returncode == 0
    assert run("promote").returncode == 0
    wait_for(lambda: all(current(d) == v2 for d in devices), 20)
    assert hub.fleet()["models"][0]["stable"] == v2
    r = run("abort")
    assert r.returncode != 0 and "no rollout under way" in r.stderr


def test_reports_need_a_token_that_may_read_the_model_and_hostile_ids_are_kept_as_text(serve, tmp_path):
    path = tmp_path / "m.onnx"
    model(path, 1)
    model(tmp_path / "other.onnx", 1)
    (tmp_path / "tokens").write_text("reader-m-0123456789abcdef m\nreader-other-0123456789ab other\n"
                                     "admin-0123456789abcdefgh *\n")
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\ntokens_file = "{tmp_path / "tokens"}"\n'
                   f'[[models]]\nname = "m"\npath = "{path}"\n'
                   f'[[models]]\nname = "other"\npath = "{tmp_path / "other.onnx"}"\n')
    s = serve("--runtime", "none", "--config", cfg)

    def poll(token, device, path="/v1/models/m"):
        h = {"X-Weightcast-Device": device, "X-Weightcast-Device-State": "committed",
             "X-Weightcast-Device-Version": "ab" * 32}
        if token:
            h["Authorization"] = f"Bearer {token}"
        return requests.get(s.url + path, headers=h, timeout=10).status_code

    assert poll(None, "no-token") == 401
    assert poll("wrong-token-0123456789abc", "wrong-token") == 401
    assert poll("reader-other-0123456789ab", "foreign-token") == 403
    hostile = "<script>alert(1)</script>&\"'"
    assert poll("reader-m-0123456789abcdef", hostile) == 200
    assert poll("reader-m-0123456789abcdef", "good-device") == 200
    doc = s.get("/v1/fleet", headers={"Authorization": "Bearer admin-0123456789abcdefgh"}).json()
    ids = {d["device"] for m in doc["models"] if m["model"] == "m" for d in m["devices"]}
    assert ids == {hostile, "good-device"}, ids
    # A token sees only its models' fleet.
    scoped = s.get("/v1/fleet", headers={"Authorization": "Bearer reader-other-0123456789ab"}).json()
    assert [m["model"] for m in scoped["models"]] in ([], ["other"])
    assert s.get("/v1/fleet").status_code == 401
    # Written to the table within a second or two, as text.
    time.sleep(2.5)
    db = sqlite3.connect(tmp_path / "state" / "fleet.sqlite")
    assert {d for (d,) in db.execute("SELECT device FROM devices")} == {hostile, "good-device"}


def test_the_fleet_page_shows_a_hostile_device_id_as_text(serve, tmp_path):
    path = tmp_path / "m.onnx"
    model(path, 1)
    s = serve("--runtime", "none", path)
    hostile = "<img/src=x/onerror=alert(1)>"
    h = {"X-Weightcast-Device": hostile, "X-Weightcast-Device-State": "committed"}
    assert s.get("/v1/models/m", headers=h).status_code == 200
    dom = browse(s.url + "/#/fleet", "fleet-hostile.png", (1200, 400))
    shown = rows(dom, "device")
    assert list(shown) == [hostile] and shown[hostile]["_cells"][0] == hostile, shown
    assert "<img" not in dom.split("<main>", 1)[1], "the id was parsed as markup"
    assert 'id="fleet-link"' in browse(s.url + "/", None, (1200, 400))


def test_a_device_pulling_from_a_registry_reports_to_the_hub_and_tells_the_registry_nothing(serve, tmp_path):
    from proxy import Proxy
    from registry import Registry
    path = tmp_path / "m.onnx"
    model(path, 1)
    token = "device-token-0123456789abcdef"
    (tmp_path / "tokens").write_text(f"{token} m\n")
    (tmp_path / "token").write_text(token)
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'tokens_file = "{tmp_path / "tokens"}"\n[[models]]\nname = "m"\npath = "{path}"\n')
    hub = serve("--runtime", "none", "--config", cfg)
    reg = Registry(tmp_path)
    proxy = Proxy(reg.port)
    target = f"oci://127.0.0.1:{proxy.port}/fleet/m:prod"
    run = lambda *a: subprocess.run([str(binary()), *a], capture_output=True, text=True, timeout=120)
    # Pushed to the registry itself: the test proxy forwards a request's head
    # and not a body sent after it (it is made for GETs); the pull goes
    # through the proxy, which records what the device sends.
    r = run("push", str(path), f"oci://{reg.host}/fleet/m:prod", "--plain-http")
    assert r.returncode == 0, r.stderr
    r = run("pull", target, "--plain-http", "--dest", str(tmp_path / "d"), "--once", "--device-id", "oci-device-1",
            "--report", f"{hub.url}/v1/models/m", "--token-file", str(tmp_path / "token"))
    assert r.returncode == 0, r.stderr
    doc = hub.get("/v1/fleet", headers={"Authorization": f"Bearer {token}"}).json()
    devices = [d for m in doc["models"] for d in m["devices"]]
    assert [d["device"] for d in devices] == ["oci-device-1"] and devices[0]["state"] == "committed", doc
    assert devices[0]["version"] == current(tmp_path / "d")
    heads = proxy.heads("/")
    assert heads and not any("x-weightcast-device" in h.lower() for h in heads), "a report reached the registry"
    # --report from a hub source is refused: there, reports ride on the polls.
    r = run("pull", f"{hub.url}/v1/models/m", "--dest", str(tmp_path / "e"), "--once",
            "--report", f"{hub.url}/v1/models/m")
    assert r.returncode == 1 and "ride on the polls" in r.stderr, r.stderr


def test_a_new_file_after_a_halt_starts_a_new_rollout(fleet):
    """The hub keeps the stable version offered from its own copy: holding
    the store's copy kept any newer file from loading while a rollout was
    under way (seen after a halt: a third file never loaded)."""
    hub, devices = fleet["hub"], fleet["devices"]
    wait_for(lambda: all(current(d) for d in devices), 30)
    model(fleet["path"], 2, bad=True)
    wait_for(lambda: (r := hub.fleet()["models"][0]["rollout"]) and r["status"] == "halted", 30)
    v2 = hub.fleet()["models"][0]["rollout"]["candidate"]
    model(fleet["path"], 3)
    v3 = wait_for(lambda: (r := hub.fleet()["models"][0]["rollout"]) and r["candidate"] != v2 and r["candidate"], 15)
    assert hub.fleet()["models"][0]["rollout"]["status"] == "running"
    # And it reaches everyone: its first stage, then the rest.
    wait_for(lambda: all(current(d) == v3 for d in devices), 40)


@pytest.mark.parametrize("name", ["silero-constants", "ppocr-cls", "magika"])
def test_a_real_models_stable_version_survives_a_restart_mid_rollout(corpus, tmp_path, name):  # noqa: F811
    """The stable version is kept in the state folder as /graph plus tensor
    files and must read back as the same version: on real models (If
    subgraphs, weights in Constant nodes, tf2onnx names) as well."""
    path = tmp_path / "m.onnx"
    path.write_bytes((corpus / f"{name}.onnx").read_bytes())
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[[models]]\nname = "m"\npath = "{path}"\n'
                   '[models.rollout]\nstages = [50, 100]\nwait = "1s"\n')
    port = free_port()
    hub = Hub(cfg, port, tmp_path / "hub.log")
    stable = wait_for(lambda: hub.fleet()["models"] and hub.fleet()["models"][0]["stable"], 10)
    m = onnx.load(str(path))
    m.producer_version += "+next"  # a new graph: a new version
    onnx.save(m, str(tmp_path / "next.onnx"))
    os.replace(tmp_path / "next.onnx", path)
    candidate = wait_for(lambda: (r := hub.fleet()["models"][0]["rollout"]) and r["candidate"], 15)
    hub.stop()
    hub = Hub(cfg, port, tmp_path / "hub.log")
    try:
        doc = hub.fleet()["models"][0]
        assert doc["stable"] == stable and doc["rollout"]["candidate"] == candidate, doc
        assert "is lost" not in (tmp_path / "hub.log").read_text()
        # A device outside the rollout's stages is still offered the stable version's bytes.
        r = requests.get(f"{hub.url}/v1/models/m?format=json", timeout=10)
        assert r.json()["version"] == stable
    finally:
        hub.stop()
