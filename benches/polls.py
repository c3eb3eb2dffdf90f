"""Polls: conditional GETs of a manifest that end in `304` — what every
device sends every interval — against nginx answering `304` for the same
bytes from a file, on loopback, with wrk at c=64. weightcast runs in the
default configuration (ONNX Runtime on), with and without tokens. Runs
alternate (weightcast, with devices' reports, with a token, nginx) so that a machine's
drift hits all three alike; the ratio is each round's, and the table gives
their median. Prints a table, writes JSON.

    cargo build --release && .venv/bin/python benches/polls.py [--quick] [--out benches/polls.json]
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))

import e2e  # noqa: E402 (its nginx and free_port)
from e2e import free_port  # noqa: E402
BIN = ROOT / "target" / "release" / "weightcast"
TOKEN = "poll-bench-token-0123456789"


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers, r.read()


def wait_up(url, headers=None):
    for _ in range(600):
        try:
            return get(url, headers)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


class Weightcast:
    def __init__(self, model, tmp, tokens, binary=BIN):
        port = free_port()
        args = [str(binary), "serve", "--listen", f"127.0.0.1:{port}"]
        if tokens:
            (tmp / "tokens").write_text(f"{TOKEN} *\n")
            (tmp / "wc.toml").write_text(f'tokens_file = "{tmp / "tokens"}"\n[[models]]\nname = "demo"\npath = "{model}"\n')
            args += ["--config", str(tmp / "wc.toml")]
        else:
            args.append(str(model))
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(tmp / f"wc-{port}.log", "w"),
                                     env=dict(os.environ, RUST_LOG="warn", NO_COLOR="1"))
        self.url = f"http://127.0.0.1:{port}/v1/models/demo"
        self.headers = {"Authorization": f"Bearer {TOKEN}"} if tokens else {}
        h, self.body = wait_up(self.url, self.headers)
        self.etag, self.version = h["ETag"], h["X-Weightcast-Model-Version"]

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Nginx:
    """nginx answering `304` for the manifest's bytes from a file (benches/e2e.py's nginx)."""

    def __init__(self, root, tmp):
        self.server = e2e.Nginx(root, tmp)
        self.url = self.server.url + "/demo.pb"
        h, _ = wait_up(self.url)
        self.etag = h["ETag"]
        self.headers = {}

    def stop(self):
        self.server.stop()


# Each request a device's report (issue #24): one of 1,000 device ids, its
# version and state, as `weightcast pull` sends them. The run it is compared
# with sends the same headers under names the hub ignores, through the same
# script: wrk's Lua costs the load generator (on the same 2 cores) alike.
REPORTS = """
local n = 0
request = function()
  n = n + 1
  wrk.headers["X-PREFIX-Device"] = "device-" .. (n % 1000)
  return wrk.format(nil)
end
"""


def wrk(server, seconds, connections=64, reports=None):
    """304s per second; every answer must be a 304."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-H", f"If-None-Match: {server.etag}"]
    for k, v in server.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if reports is not None:
        prefix = "Weightcast" if reports else "Ignored"
        script = Path(tempfile.mkdtemp()) / "reports.lua"
        script.write_text(REPORTS.replace("PREFIX", prefix))
        cmd += ["-s", str(script), "-H", f"X-{prefix}-Device-State: committed",
                "-H", f"X-{prefix}-Device-Version: {server.version}"]
    out = subprocess.run(cmd + [server.url], capture_output=True, text=True, check=True).stdout
    assert "Non-2xx or 3xx" not in out and "Socket errors" not in out, out
    # Each answer must be the 304 (a 200 would be 2xx too): checked once per run.
    req = urllib.request.Request(server.url, headers={"If-None-Match": server.etag, **server.headers})
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError(f"{server.url} answered 200 to its own ETag")
    except urllib.error.HTTPError as e:
        assert e.code == 304, e.code
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 s (the CI short form)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--before", type=Path, help="another build of weightcast, measured in the same rounds")
    args = ap.parse_args()
    rounds, seconds = (2, 3) if args.quick else (3, 5)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = tmp / "demo.onnx"
        subprocess.run([str(BIN), "demo", str(model)], check=True, capture_output=True)
        www = tmp / "www"
        www.mkdir()
        plain = Weightcast(model, tmp, tokens=False)
        (www / "demo.pb").write_bytes(plain.body)
        servers = {"weightcast": plain, "weightcast+token": Weightcast(model, tmp, tokens=True),
                   "nginx": Nginx(www, tmp)}
        if args.before:
            servers["before"] = Weightcast(model, tmp, tokens=False, binary=args.before)
            servers["before+token"] = Weightcast(model, tmp, tokens=True, binary=args.before)
        runs = [(name, server, None) for name, server in servers.items()]
        runs[1:1] = [("weightcast (script)", plain, False), ("weightcast+reports", plain, True)]
        rates = {name: [] for name, _, _ in runs}
        try:
            for _ in range(rounds):
                for name, server, reports in runs:
                    rates[name].append(wrk(server, seconds, reports=reports))
        finally:
            for s in servers.values():
                s.stop()
    ratio = {name: statistics.median(r / n for r, n in zip(rates[name], rates["nginx"])) for name in rates}
    print(f"304s of the manifest at c=64, wrk -t2, {rounds} rounds of {seconds} s, {os.cpu_count()} cores")
    print(f"  {'server':18s} {'req/s (each round)':>40s} {'× nginx':>8s}")
    for name, r in rates.items():
        print(f"  {name:18s} {', '.join(f'{x:,.0f}' for x in r):>40s} {ratio[name]:>7.2f}×")
    token_cost = 1 - statistics.median(t / p for t, p in zip(rates["weightcast+token"], rates["weightcast"]))
    print(f"  a token check costs {token_cost:.1%} of the rate")
    reports = statistics.median(r / p for r, p in zip(rates["weightcast+reports"], rates["weightcast (script)"]))
    print(f"  with devices' reports (1,000 devices): {reports:.2f}× the rate without")
    if args.out:
        args.out.write_text(json.dumps({"rates": rates, "ratio": ratio, "token_cost": token_cost,
                                        "reports_ratio": reports}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
