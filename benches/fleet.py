#!/usr/bin/env python3
"""Fleet distribution benchmark (issue #14, part 5): a one-tensor change
through an OCI registry vs through the hub, and what the hub serves to N
devices with and without an HTTP cache tier in front of it.

    .venv/bin/python benches/fleet.py              # 100 MB model, 10 devices (~1 min)
    .venv/bin/python benches/fleet.py --quick      # 16 MB, 3 devices (the suite runs this: tests/python/test_fleet.py)

With `--link` (issue #24 part 5; root: network namespaces and tc), a site
behind a constrained uplink instead: the hub in one network namespace, an
nginx `proxy_cache` and N polling devices in another, the two joined by a
veth pair shaped by `tbf`; how long a one-tensor and a full-model change
take to reach every device, and the bytes that cross the uplink.

    .venv/bin/python benches/fleet.py --link            # 29 MB model, 20 devices, 20mbit (~1 min; writes benches/fleet-link.json)
    .venv/bin/python benches/fleet.py --link --quick    # 8 MB model, 20 devices
    .venv/bin/python benches/fleet.py --link --stages 20,100 --wait 3s   # staged (~65 s; fleet-link-staged.json)

With `--stages`, the hub's model has a `[models.rollout]` table (those
stages, that wait, max_failures 1; its fleet table in the run's folder): a
change reaches the first stage's devices, and the rest only after those have
reported it committed for the wait; `/v1/fleet` is read along the way.

Everything on loopback, release build unless WEIGHTCAST_BIN says otherwise;
the hub runs in its default configuration (ONNX Runtime on). The registry is
Debian's docker-registry (CNCF distribution 2.8) on its filesystem driver;
the cache tier is nginx `proxy_cache`. Bytes are counted by a TCP proxy in
front of the registry/hub (response bytes, headers included)."""

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import re
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
    """`weightcast serve` in its default configuration, or with `config` (a
    TOML file serving `model` under its stem); `prefix` wraps the command
    (`ip netns exec NS`), `ns` is the network namespace it listens in, `env`
    its environment."""

    def __init__(self, model, log, listen="127.0.0.1:0", prefix=(), ns=None, env=None, config=None):
        self.log = open(log, "w")
        what = ["--config", str(config)] if config else [str(model)]
        self.proc = subprocess.Popen([*prefix, str(BIN), "serve", "--listen", listen, *what],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.url = self.proc.stdout.readline().split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.name = Path(model).stem
        self.ns = ns

    def version(self):
        """The version offered to a client that is no device (during a
        rollout, the stable one)."""
        with inside(self.ns):
            return requests.get(f"{self.url}/v1/models/{self.name}?format=json", timeout=10).json()["version"]

    def fleet(self):
        """This model's part of `/v1/fleet`: its stable version, its rollout
        (None when there is none), its devices."""
        with inside(self.ns):
            doc = requests.get(f"{self.url}/v1/fleet", timeout=10).json()
        return next(m for m in doc["models"] if m["model"] == self.name)

    def newest(self):
        """The newest version the hub offers any device: a rollout's
        candidate from the moment the rollout begins, else the stable one."""
        m = self.fleet()
        return (m["rollout"] or {}).get("candidate") or m["stable"]

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


# A site behind a constrained uplink (issue #24 part 5): `--link`.

HUB_IP, SITE_IP = "10.224.0.1", "10.224.0.2"  # the veth pair's /30, inside namespaces of our own
CLONE_NEWNET = 0x40000000
# The targets: what the hub sends across the uplink ≤ 1.05 × the
# changed bytes (each changed byte once); the last device current ≤ 1.3 ×
# (the link's limit + one poll interval).
TARGET_BYTES, TARGET_TIME = 1.05, 1.3


def sh(*args):
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {r.stderr.strip()}")
    return r.stdout


def bits_per_s(rate):
    """A tc rate ("20mbit", "512kbit": SI multiples, as tc reads them) in bits per second."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate)
    if not m:
        raise SystemExit(f"--rate {rate}: give bit, kbit, mbit or gbit (e.g. 20mbit)")
    return float(m[1]) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m[2]]


@contextlib.contextmanager
def inside(ns):
    """This thread in network namespace `ns` (None: where it is) for a while;
    what it connects to there is that namespace's (Python 3.11 has no
    os.setns, so libc's)."""
    if ns is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    home, there = os.open("/proc/thread-self/ns/net", os.O_RDONLY), os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        yield
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(there)


class Link:
    """Network namespaces "hub" and "site" joined by a veth pair, each end's
    egress shaped by `tbf` to `rate`: the site's uplink, both ways. No netem
    here, so no added delay: the round trip stays sub-millisecond, where a
    real uplink's 20–50 ms would add a few round trips per change. `close`
    (also at exit) kills what was started in them and deletes them; their
    veth ends and qdiscs go with them."""

    def __init__(self, rate):
        tag = os.getpid()
        self.hub, self.site = f"wc{tag}-hub", f"wc{tag}-site"
        self.hub_if, self.site_if = f"wc{tag}h", f"wc{tag}s"
        self.procs = []
        atexit.register(self.close)
        sh("ip", "netns", "add", self.hub)
        sh("ip", "netns", "add", self.site)
        sh("ip", "link", "add", self.hub_if, "netns", self.hub, "type", "veth", "peer", "name", self.site_if,
           "netns", self.site)
        for ns, dev, ip in ((self.hub, self.hub_if, HUB_IP), (self.site, self.site_if, SITE_IP)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            # One MTU-sized packet per frame, as a real link carries them: with
            # veth's default GSO frames (up to 64 KiB), the counters saw one
            # set of TCP/IP headers per several packets (the 29 MB change read
            # 1.037× the changed bytes; one frame per packet, 1.095×).
            sh("ip", "-n", ns, "link", "set", dev, "gso_max_segs", "1")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            # A 32 KiB bucket (13 ms at 20 Mbit/s) and 100 ms of queue: a
            # shaped DSL/LTE uplink's order.
            sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kb",
               "latency", "100ms")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def prefix(self, ns):
        return ["ip", "netns", "exec", ns]

    def start(self, ns, args, **kw):
        p = subprocess.Popen([*self.prefix(ns), *map(str, args)], **kw)
        self.procs.append(p)
        return p

    def counters(self):
        """What the hub's end of the link has carried (its interface's
        tx_bytes and rx_bytes): Ethernet frames to the site and from it, TCP/IP
        headers, ACKs and retransmissions included; and the packets both
        shapers dropped."""
        stats = f"/sys/class/net/{self.hub_if}/statistics"
        down, up = map(int, sh(*self.prefix(self.hub), "cat", f"{stats}/tx_bytes", f"{stats}/rx_bytes").split())
        drops = sum(q.get("drops", 0) for ns, dev in ((self.hub, self.hub_if), (self.site, self.site_if))
                    for q in json.loads(sh("tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev)))
        return dict(down=down, up=up, drops=drops)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        for ns in (self.hub, self.site):
            # Whatever is still in our namespaces (nginx's worker) was started by us.
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def changed_all(src, dst):
    """The model with every tensor changed (every element + 1e-3): bytes changed."""
    m = onnx.load(str(src))
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(1e-3), t.name))
    onnx.save(m, str(dst))
    return sum(len(t.raw_data) for t in m.graph.initializer)


def current(dest):
    """The version a device's `current` link names (None before its first install)."""
    try:
        return os.path.basename(os.readlink(dest / "current"))
    except FileNotFoundError:
        return None


def arrivals(dests, version, t0, timeout, watch=None):
    """Seconds from `t0` until each device's `current` names `version`, by
    device; `watch()` is called on every look (it samples what it wants)."""
    at = {}
    while len(at) < len(dests):
        now = time.monotonic() - t0
        for d in dests:
            if d not in at and current(d) == version:
                at[d] = now
        if now > timeout:
            behind = [d.name for d in dests if d not in at]
            raise RuntimeError(f"{len(behind)} devices not on {version[:16]} after {timeout:.0f} s: {behind[:5]}")
        if watch:
            watch()
        time.sleep(0.02)
    return at


class RolloutWatch:
    """The hub's rollout of `version` as `/v1/fleet` shows it, read every
    `every` s while a change travels: when it began and each stage opened
    (the hub's own clock, as seconds from the rename at monotonic `t0`), the
    most devices admitted and committed seen in each stage, and when the
    committed count last rose (as read: ±`every`). 0.2 s: the hub moves
    stages once a second, and 20 devices' reports are what it counts, not
    these reads."""

    def __init__(self, hub, version, t0, every=0.2):
        self.hub, self.version, self.t0, self.every, self.due = hub, version, t0, every, 0.0
        self.t0_wall = time.time() - (time.monotonic() - t0)
        self.began_s, self.stages = None, {}

    def __call__(self):
        if time.monotonic() < self.due:
            return
        self.due = time.monotonic() + self.every
        r = self.hub.fleet()["rollout"]
        if not r or r["candidate"] != self.version:
            return  # not begun yet, or done (the candidate is the stable version)
        self.began_s = r["started_ms"] / 1000 - self.t0_wall
        # Counted from the stage's first read: a later stage's count starts
        # at the devices committed before it opened.
        k = self.stages.setdefault(r["stage"], dict(percent=r["percent"], admitted=0, committed=r["committed"],
                                                    committed_s=None))
        if r["committed"] > k["committed"]:
            k["committed_s"] = time.monotonic() - self.t0
        k.update(opened_s=r["stage_opened_ms"] / 1000 - self.t0_wall, status=r["status"],
                 admitted=max(k["admitted"], r["admitted"]), committed=max(k["committed"], r["committed"]))


def by_stage(at, watch):
    """The devices that got the new version in each stage: those current
    after the stage opened and before the next did (a stage opens only when
    every device of the one before reports it committed), their count, the
    first and the last."""
    out, opened = [], [watch.stages[k]["opened_s"] for k in sorted(watch.stages)] + [float("inf")]
    for i, (k, stage) in enumerate(sorted(watch.stages.items())):
        times = sorted(t for t in at.values() if opened[i] <= t < opened[i + 1])
        out.append(dict(stage, stage=k, devices=len(times), first_s=times[0] if times else None,
                        last_s=times[-1] if times else None))
    return out


UPSTREAM = re.compile(r'"\S+ (\S+) [^"]*" \d+ \d+ cache=\S+ upstream=(\S+) upstream_bytes=(\S+) upstream_sent=(\S+)')


def upstream(log, offset):
    """What nginx asked the hub for since `offset` in its access log, per kind
    of path: requests, their statuses, bytes received and sent (heads
    included), and how many asked again for a blob already fetched."""
    out, seen = {}, set()
    with open(log) as f:
        f.seek(offset)
        lines = f.read().splitlines()
    for line in lines:
        m = UPSTREAM.search(line)
        if not m or m[2] == "-":
            continue  # answered from the cache
        path = m[1]
        kind = ("blob" if path.startswith("/v1/blobs/") else "graph" if "/graph" in path
                else "batch" if "/weights" in path else "manifest" if re.fullmatch(r"/v1/models/[^/?]+", path)
                else "other")
        k = out.setdefault(kind, dict(requests=0, received=0, sent=0, status={}, repeated=0))
        k["requests"] += 1
        k["received"] += int(m[3])
        k["sent"] += int(m[4])
        k["status"][m[2]] = k["status"].get(m[2], 0) + 1
        k["repeated"] += kind == "blob" and path in seen
        seen.add(path)
    return out


def log_sizes(dests):
    return {d: os.path.getsize(f"{d}.log") if os.path.exists(f"{d}.log") else 0 for d in dests}


def rounds(dests, offsets):
    """The devices' rounds (`pull --json` lines) since `offsets`: how many of
    each status, the errors of failed ones, and the install rounds' length."""
    status, errors, ms, fetched = {}, set(), [], 0
    for d in dests:
        with open(f"{d}.log") as f:
            f.seek(offsets[d])
            for line in f:
                if not line.endswith("\n"):
                    break  # being written
                r = json.loads(line)
                status[r["status"]] = status.get(r["status"], 0) + 1
                if r["status"] == "failed":
                    errors.add(r["error"])
                if r["status"] == "updated":
                    ms.append(r["ms"])
                    fetched += r["fetched_bytes"]
    ms.sort()
    return dict(status=status, errors=sorted(errors)[:5], install_ms_median=ms[len(ms) // 2] if ms else None,
                install_ms_max=ms[-1] if ms else None, fetched_bytes=fetched)


def measure(link, log, changed_bytes, rate, interval, dests, begin, hub=None, waits=0.0):
    """One change: `begin()` makes it and returns its time, the version the
    hub then offers and when it began to. The last device's time against the
    link's limit (plus `waits`, a rollout's waits between stages); the bytes
    across the uplink, as frames and as HTTP, against the changed bytes.
    With `hub` (a staged rollout), its stages as `/v1/fleet` showed them."""
    c0, off, offsets = link.counters(), log.stat().st_size, log_sizes(dests)
    t0, version, offered = begin()
    hub_s = offered - t0
    limit = changed_bytes * 8 / rate
    watch = RolloutWatch(hub, version, t0) if hub else None
    by_device = arrivals(dests, version, t0, 3 * (limit + interval + waits) + 30, watch)
    at = sorted(by_device.values())
    c1 = link.counters()
    down, up = c1["down"] - c0["down"], c1["up"] - c0["up"]
    http = upstream(log, off)
    http_bytes = sum(k["received"] + k["sent"] for k in http.values())
    time.sleep(1)  # a round's status line comes just after its switch
    budget = limit + interval + waits
    out = dict(version=version, changed_bytes=changed_bytes, limit_s=limit, waits_s=waits, hub_s=hub_s,
               first_s=at[0], median_s=at[len(at) // 2], last_s=at[-1], time_ratio=at[-1] / budget,
               offer_ratio=(at[-1] - hub_s) / budget, down_bytes=down, up_bytes=up,
               wire_ratio=(down + up) / changed_bytes, http_bytes=http_bytes, http_ratio=http_bytes / changed_bytes,
               drops=c1["drops"] - c0["drops"], upstream=http, rounds=rounds(dests, offsets))
    if watch:
        out.update(rollout_began_s=watch.began_s, stages=by_stage(by_device, watch))
    return out


def publish(hub, served, model, staged=False):
    """A change for `measure`: `model` copied beside the served file, then
    renamed over it (the clock starts at the rename), and a wait until the
    hub offers a new version (`staged`: to the first stage, which a client
    that is no device is not offered; `/v1/fleet` shows the rollout)."""
    offered = hub.newest if staged else hub.version

    def begin():
        before = offered()
        shutil.copy(model, served.with_suffix(".tmp"))
        t0 = time.monotonic()
        os.replace(served.with_suffix(".tmp"), served)
        while (v := offered()) == before:
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the hub did not offer the new file within 60 s")
            time.sleep(0.02)
        return t0, v, time.monotonic()

    return begin


def rollout_done(hub, timeout=60):
    """Waits until the hub has no rollout under way; returns how long. The
    last change's rollout completes `wait` after its last device reported it
    committed, seconds after every device ran it; a file renamed before that
    would measure a replaced candidate, and waits on that rollout besides:
    the hub loads it only once the stable version it holds is let go."""
    t0 = time.monotonic()
    while hub.fleet()["rollout"] is not None:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"a rollout still under way after {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def idle(link, log, seconds):
    """The uplink while every device is current: frame bytes per second
    both ways, and what nginx asked the hub for (the devices' polls)."""
    c0, off = link.counters(), log.stat().st_size
    time.sleep(seconds)
    c1 = link.counters()
    return dict(seconds=seconds, down_per_s=(c1["down"] - c0["down"]) / seconds,
                up_per_s=(c1["up"] - c0["up"]) / seconds, upstream=upstream(log, off))


def seconds(text):
    """A duration as the hub's config writes it ("3s", "500ms", "2m") in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not m:
        raise SystemExit(f"--wait {text}: give ms, s or m (e.g. 3s)")
    return float(m[1]) * {"ms": 1e-3, "s": 1, "m": 60}[m[2]]


def staged_config(tmp, served, stages, wait):
    """The hub's config for a staged rollout of `served`: `stages` (percent
    of the known devices), `wait` between them, halting at the first failure;
    its fleet table and kept versions in this run's folder."""
    cfg = tmp / "hub.toml"
    cfg.write_text(f'state_dir = "{tmp / "hub-state"}"\n\n[[models]]\nname = "{served.stem}"\npath = "{served}"\n'
                   f'[models.rollout]\nstages = [{", ".join(map(str, stages))}]\nwait = "{wait}"\n'
                   "max_failures = 1\n")
    return cfg


def constrained_link(tmp, a):
    mb = a.mb or (12 if a.quick else 32)
    rate, interval = bits_per_s(a.rate), 1.0
    v1 = make_model(tmp / "v1.onnx", mb)
    v2, v3 = tmp / "v2.onnx", tmp / "v3.onnx"
    tensor, one = changed(v1, v2)
    full = changed_all(v2, v3)
    tensors = len(onnx.load(str(v1)).graph.initializer)
    print(f"model: {full / 1e6:.1f} MB, {tensors} tensors; {a.devices} devices behind nginx ({a.cache} cached) "
          f"and a {a.rate} uplink; one-tensor change: '{tensor}' ({one / 1e6:.1f} MB)")
    out = dict(rate=a.rate, rate_bits=rate, devices=a.devices, interval_s=interval, cache=a.cache, model_bytes=full,
               tensors=tensors)
    # A staged rollout waits `wait` between each two stages.
    waits = seconds(a.wait) * (len(a.stages) - 1) if a.stages else 0.0
    if a.stages:
        out.update(stages=a.stages, wait=a.wait, waits_s=waits)
    with Link(a.rate) as link:
        served = tmp / "hub" / "model.onnx"
        served.parent.mkdir()
        shutil.copy(v1, served)
        # Default configuration; its cache and state folders (systemd's
        # variables) fresh in this run, not the caller's home.
        env = dict(os.environ, CACHE_DIRECTORY=str(tmp / "hub-cache"), STATE_DIRECTORY=str(tmp / "hub-state"))
        config = staged_config(tmp, served, a.stages, a.wait) if a.stages else None
        hub = Hub(served, tmp / "hub.log", listen=f"{HUB_IP}:8080", prefix=link.prefix(link.hub), ns=link.hub,
                  env=env, config=config)
        link.procs.append(hub.proc)

        def ready(url):
            with inside(link.site):
                requests.get(url + "/healthz", timeout=1)

        nginx, front = nginx_cache(hub.url, tmp / "nginx", port=8080, prefix=link.prefix(link.site), ready=ready,
                                   blobs_only=a.cache == "blobs")
        link.procs.append(nginx)
        log = tmp / "nginx" / "access.log"
        dests = [tmp / f"device{d}" for d in range(a.devices)]
        # Builds since the fleet table (#24 parts 1-3) send a device id,
        # /etc/machine-id by default: the same for all 20 here.
        ids = "--device-id" in run("pull", "--help")[1]
        if a.stages and not ids:
            raise SystemExit("--stages: this build's pull has no --device-id (stages are shares of distinct ids)")

        def start_devices():
            version, t0 = hub.version(), time.monotonic()
            for d in dests:
                link.start(link.site, [BIN, "pull", f"{front}/v1/models/model", "--dest", d, "--interval",
                                       f"{interval:g}s", "--json", *(["--device-id", d.name] if ids else [])],
                           stdout=open(f"{d}.log", "w"), stderr=open(f"{d}.err", "w"))
            return t0, version, t0

        try:
            out["first_install"] = measure(link, log, full, rate, interval, dests, start_devices)
            time.sleep(2)  # every device past its install round
            out["idle"] = idle(link, log, 5)
            for key, model_file, nbytes in (("one_tensor", v2, one), ("full_model", v3, full)):
                time.sleep(2)
                if a.stages:
                    out[f"{key}_waited_s"] = rollout_done(hub)
                out[key] = measure(link, log, nbytes, rate, interval, dests,
                                   publish(hub, served, model_file, staged=bool(a.stages)),
                                   hub=hub if a.stages else None, waits=waits)
        finally:
            if a.logs:
                a.logs.mkdir(parents=True, exist_ok=True)
                for f in [log, tmp / "hub.log", *(Path(f"{d}.{x}") for d in dests for x in ("log", "err"))]:
                    if f.exists():
                        shutil.copy(f, a.logs / f.name)
    return out


LINK_ROWS = (("first install", "first_install"), ("one-tensor change", "one_tensor"),
             ("full-model change", "full_model"))


def print_link(r):
    waits = f" + {r['waits_s']:g} s waits" if r.get("stages") else ""
    staged = f", stages {r['stages']}, wait {r['wait']}" if r.get("stages") else ""
    print(f"\n| {r['devices']} devices, {r['rate']}{staged} | changed bytes | link limit | hub offers it | first / "
          f"median / last device | last ÷ (limit + {r['interval_s']:g} s{waits}): from rename / from offer | frames "
          f"on the uplink "
          f"(to site + from site) ÷ changed | HTTP hub↔site ÷ changed |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, key in LINK_ROWS:
        x = r[key]
        print(f"| {label} | {x['changed_bytes']:,} | {x['limit_s']:.2f} s | {x['hub_s']:.2f} s | {x['first_s']:.2f} / "
              f"{x['median_s']:.2f} / {x['last_s']:.2f} s | {x['time_ratio']:.2f} / {x['offer_ratio']:.2f} "
              f"| {x['down_bytes'] + x['up_bytes']:,} ({x['down_bytes']:,} + {x['up_bytes']:,}) "
              f"{x['wire_ratio']:.3f} | {x['http_bytes']:,} {x['http_ratio']:.3f} |")
    i = r["idle"]
    print(f"\nidle (every device current, polling each {r['interval_s']:g} s): {i['down_per_s'] + i['up_per_s']:,.0f} B/s "
          f"of frames on the uplink ({i['down_per_s']:,.0f} to the site, {i['up_per_s']:,.0f} from it)")
    for label, key in (("idle", "idle"), *LINK_ROWS):
        parts = [f"{k} {v['requests']} × {v['status']}, {v['received']:,} B"
                 + (f", {v['repeated']} repeated" if v["repeated"] else "")
                 for k, v in sorted(r[key]["upstream"].items())]
        drops = f"; shaper drops: {r[key]['drops']}" if "drops" in r[key] else ""
        print(f"  hub → nginx, {label}: {'; '.join(parts)}{drops}")
    for label, key in LINK_ROWS:
        x = r[key]["rounds"]
        print(f"  devices' rounds, {label}: {x['status']}; install round median / longest "
              f"{x['install_ms_median']} / {x['install_ms_max']} ms" + (f"; failed: {x['errors']}" if x["errors"] else ""))
    for label, key in LINK_ROWS[1:]:
        if "stages" in r[key]:
            print_stages(label, r[key])


def print_stages(label, x):
    """A staged change's rollout: when it began, and per stage when it
    opened, what `/v1/fleet` counted and when its devices ran the version."""
    parts = [f"stage {k['stage']} ({k['percent']}%) opened {k['opened_s']:.2f} s, admitted ≤ {k['admitted']}, "
             f"committed ≤ {k['committed']}"
             + (f" (the last seen at {k['committed_s']:.1f} s)" if k["committed_s"] else "")
             + f", {k['devices']} devices current "
             + (f"{k['first_s']:.2f}–{k['last_s']:.2f} s" if k["devices"] else "—") for k in x["stages"]]
    print(f"  rollout, {label}: began {x['rollout_began_s']:.2f} s after the rename; {'; '.join(parts)}")


def check_link(r):
    """The issue's targets, for the two changes: HTTP bytes between hub and
    site (the frames' TCP/IP headers are the link's, ~4.6% at MTU 1500, and
    not weightcast's to save), and the time from the hub's offer (before it,
    the hub's look at the file: 0.6-0.7 s after a rename, 2.1-2.6 s when
    `reload_settle` applied to renames). A staged rollout's time counts from
    the rename, against limit + poll + the waits between stages, and its
    stages must have happened."""
    when = ("from the rename", "time_ratio") if r.get("stages") else ("from the offer", "offer_ratio")
    bad = [f"{key}: {what} {r[key][field]:.3f} > {target}" for key in ("one_tensor", "full_model")
           for what, field, target in (("HTTP bytes ÷ changed", "http_ratio", TARGET_BYTES),
                                       (f"last device ÷ (limit + poll + waits), {when[0]}", when[1], TARGET_TIME))
           if r[key][field] > target]
    for _, key in LINK_ROWS:
        if repeated := r[key]["upstream"].get("blob", {}).get("repeated"):
            bad.append(f"{key}: {repeated} blobs crossed the uplink more than once")
    if r.get("stages"):
        bad += [f"{key}: {why}" for key in ("one_tensor", "full_model") for why in staging_faults(r, r[key])]
    assert not bad, "; ".join(bad)


def staging_faults(r, x):
    """What says the stages did not happen as configured: a stage unseen,
    the first stage admitting other than its share of the devices (rounded
    up, as the hub counts), or a stage opening less than `wait` after the
    last device of the one before ran the version (its committed report
    comes at its next poll, so the wait counts from later still)."""
    seen = x["stages"]
    if len(seen) != len(r["stages"]):
        return [f"{len(seen)} stages seen of {len(r['stages'])}"]
    share = -(-r["devices"] * r["stages"][0] // 100)
    faults = []
    if not seen[0]["admitted"] == seen[0]["devices"] == share:
        faults.append(f"stage 0 admitted {seen[0]['admitted']}, ran it on {seen[0]['devices']} devices, not {share}")
    wait = r["waits_s"] / (len(r["stages"]) - 1)
    faults += [f"stage {b['stage']} opened {b['opened_s'] - a['last_s']:.2f} s after stage {a['stage']}'s last device"
               for a, b in zip(seen, seen[1:]) if a["last_s"] is None or b["opened_s"] - a["last_s"] < wait]
    return faults


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--link", action="store_true", help="a site behind a shaped uplink (root)")
    ap.add_argument("--devices", type=int, default=20, help="with --link")
    ap.add_argument("--rate", default="20mbit", help="with --link: the uplink, as tc reads it")
    ap.add_argument("--mb", type=float, help="with --link: model size [32; 12 with --quick]")
    ap.add_argument("--cache", choices=("all", "blobs"), default="all",
                    help="with --link: what nginx caches: all (README's block) or only /v1/blobs/")
    ap.add_argument("--logs", type=Path, help="with --link: copy nginx's, the hub's and the devices' logs here")
    ap.add_argument("--stages", type=lambda t: [int(x) for x in t.split(",")],
                    help="with --link: a staged rollout, percent of the devices per stage (e.g. 20,100)")
    ap.add_argument("--wait", default="3s", help="with --stages: how long a stage's devices run it committed before "
                    "the next opens")
    a = ap.parse_args()
    if a.link:
        # SIGTERM ends the run like ^C: namespaces, qdiscs and processes go.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        with tempfile.TemporaryDirectory() as t:
            r = constrained_link(Path(t), a)
        print_link(r)
        out = a.json or (None if a.quick else ROOT / "benches" / f"fleet-link{'-staged' if a.stages else ''}.json")
        if out:
            out.write_text(json.dumps(r, indent=1))
        check_link(r)
        print("\nPASS")
        return
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
