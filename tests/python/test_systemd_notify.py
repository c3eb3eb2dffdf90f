"""systemd's notify protocol (issue #25, part 3), read from a datagram socket
the test binds as `$NOTIFY_SOCKET`: `serve` and `pull` say READY=1 (serve
once its models are loaded and the port listens, pull once its first round
is done), send WATCHDOG=1 at half of `$WATCHDOG_USEC` from the loop that
does the work, a STATUS= line, and STOPPING=1 on SIGTERM."""

import os
import signal
import socket
import subprocess
import time

from conftest import binary


class NotifySocket:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []

    def read_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass

    def states(self):
        return [line for _, m in self.messages for line in m.splitlines()]


def env_for(notify):
    return dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1500000", NO_COLOR="1")


def check(proc, notify, what):
    notify.read_for(5)
    states = notify.states()
    assert "READY=1" in states, (what, states)
    assert states.count("WATCHDOG=1") >= 3, (what, states)
    assert any(s.startswith("STATUS=") for s in states), (what, states)
    proc.send_signal(signal.SIGTERM)
    notify.read_for(2)
    assert "STOPPING=1" in notify.states(), (what, notify.states())
    assert proc.wait(timeout=35) == 0, what


def test_serve_says_ready_pings_the_watchdog_and_says_it_stops(zoo, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    proc = subprocess.Popen([str(binary()), "serve", "--runtime", "none", "--listen", "127.0.0.1:0", zoo / "mlp.onnx"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env_for(notify))
    url = proc.stdout.readline().split()[-1]
    check(proc, notify, "serve")
    status = [s for s in notify.states() if s.startswith("STATUS=")][0]
    assert "serving 1 of 1 models" in status and url in status, status


def test_pull_says_ready_after_its_first_round_pings_and_says_it_stops(zoo, serve, tmp_path):
    hub = serve("--runtime", "none", zoo / "mlp.onnx")
    notify = NotifySocket(tmp_path / "notify")
    proc = subprocess.Popen([str(binary()), "pull", f"{hub.url}/v1/models/mlp", "--dest", tmp_path / "device",
                             "--interval", "1s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env_for(notify))
    check(proc, notify, "pull")
    statuses = [s for s in notify.states() if s.startswith("STATUS=")]
    version = os.readlink(tmp_path / "device" / "current").split("/")[-1]
    assert any(f"current {version[:16]} (committed)" in s for s in statuses), statuses


def test_without_a_watchdog_nothing_pings(zoo, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    env = {k: v for k, v in env_for(notify).items() if k != "WATCHDOG_USEC"}
    proc = subprocess.Popen([str(binary()), "serve", "--runtime", "none", "--listen", "127.0.0.1:0", zoo / "mlp.onnx"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    proc.stdout.readline()
    notify.read_for(2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=35)
    assert "READY=1" in notify.states() and "WATCHDOG=1" not in notify.states(), notify.states()
