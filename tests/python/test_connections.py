"""The hub's connections as an attacker or a careless client makes them, on
raw sockets: every malformed head gets its status, HTTP/1.0 and pipelined
requests are answered, running out of file descriptors or past the
connection cap never ends the server, and nothing waits forever (issue #11,
part 1)."""

import resource
import socket
import threading
import time

import pytest


def connect(server):
    host, port = server.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def exchange(server, data, read_until_close=True, timeout=10):
    s = connect(server)
    s.settimeout(timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
    except socket.timeout:
        pass
    s.close()
    return out


def server_side_open(server_port, client_port):
    """Whether the server still holds its end of a loopback connection
    (read from /proc/net/tcp: no tool needed)."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return state == "01"  # ESTABLISHED
    return False


def status(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None


@pytest.fixture(scope="module")
def hub(zoo, tmp_path_factory):
    from conftest import Server

    s = Server(["--runtime", "none", zoo / "mlp.onnx", zoo / "trained.onnx"], tmp_path_factory.mktemp("conn-logs"))
    yield s
    s.stop()


def test_http_1_0_is_answered_and_closed(hub):
    answer = exchange(hub, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status(answer) == 200 and answer.endswith(b"ok\n"), answer[:200]
    answer = exchange(hub, b"GET /v1/models/mlp/weights HTTP/1.0\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert status(answer) == 200 and b"transfer-encoding" not in head.lower()
    assert len(body) > 1000, "the whole body, ended by the close"


def test_pipelined_requests_are_answered_in_order(hub):
    two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = exchange(hub, two)
    assert answer.count(b"HTTP/1.1 ") == 2, answer
    first, second = answer.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and second.startswith(b"404")


@pytest.mark.parametrize("head, want", [
    (b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(10_000)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n", 400),
    (b"GET /v1/\x00models HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Name: \xc3\xa9t\xc3\xa9\r\n\r\n", 400),  # found by fuzzing: was a panic
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n", 413),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400),
    (b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
])
def test_malformed_heads_get_a_status(hub, head, want):
    answer = exchange(hub, head)
    assert status(answer) == want, answer[:300]
    assert b"connection: close" in answer.lower() or want == 405
    assert b'"error"' in answer, "the body is the usual JSON error"


def test_a_small_request_body_is_read_and_the_request_answered(hub):
    answer = exchange(hub, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert status(answer) == 200


def test_over_the_connection_cap_a_fast_503_when_every_connection_is_answering(zoo, serve, tmp_path):
    """At the cap with every connection busy sending (readers that never
    read a large download), a new client gets a fast 503; once one of them
    is idle, a new client takes its slot instead (issue #23: idle
    connections are the first closed, as nginx's)."""
    config = tmp_path / "c.toml"
    config.write_text(f'max_connections = 4\n[[models]]\npath = "{zoo / "trained.onnx"}"\n[runtime]\nengine = "none"\n')
    s = serve("--config", config)
    busy = []
    for _ in range(4):
        c = connect(s)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # 64 pipelined downloads of 512 KiB each that no one reads: the server
        # is answering on this connection until its send deadline.
        c.sendall(b"GET /v1/models/trained/weights HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n" * 64)
        busy.append(c)
    time.sleep(0.5)
    started = time.monotonic()
    answer = exchange(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(answer) == 503 and b"retry-after: 1" in answer.lower(), answer
    assert time.monotonic() - started < 2
    for c in busy:
        c.close()
    time.sleep(0.3)
    idle = [connect(s) for _ in range(4)]
    time.sleep(0.2)
    started = time.monotonic()
    assert status(exchange(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200
    assert time.monotonic() - started < 2, "an idle connection made room at once"
    for c in idle:
        c.close()


def test_running_out_of_file_descriptors_does_not_end_the_server(zoo, tmp_path):
    """The soft and hard limits at 64: the 65th descriptor cannot be had."""
    import subprocess

    from conftest import binary

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    log = open(tmp_path / "log", "w")
    p = subprocess.Popen([str(binary()), "serve", "--runtime", "none", "--listen", "127.0.0.1:0", str(zoo / "mlp.onnx")],
                         stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=limit)
    try:
        url = p.stdout.readline().split()[-1]
        port = int(url.rsplit(":", 1)[1])
        held = []
        for _ in range(150):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        time.sleep(1)
        assert p.poll() is None, "the server is alive with its descriptors exhausted"
        for c in held:
            c.close()
        time.sleep(1.5)
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.settimeout(5)
        assert s.recv(100).startswith(b"HTTP/1.1 200"), "it serves again once descriptors are free"
        assert "accept failed" in (tmp_path / "log").read_text()
    finally:
        p.kill()
        p.wait()


def test_nothing_waits_forever(hub):
    """A promised body that never comes, a first head that never ends, and a
    client that never reads a download: each connection is closed within its
    deadline — 60 s for a body or a stuck download, 10 s for a new
    connection's first head (issue #23: a silent peer must not hold a slot
    for a minute) — run side by side: one minute for the three."""
    results = {}

    def body_never_comes():
        s = connect(hub)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        s.settimeout(75)
        started = time.monotonic()
        answer = s.recv(1000)
        results["body"] = (status(answer), time.monotonic() - started)

    def head_never_ends():
        s = connect(hub)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(75)
        started = time.monotonic()
        got = s.recv(1000)
        results["head"] = (got, time.monotonic() - started)

    def never_reads():
        s = connect(hub)
        # 500 requests pipelined for 512 KiB each: 256 MB of answers that
        # fill the socket buffers and then wait on a reader that never comes.
        s.sendall(b"GET /v1/models/trained/weights HTTP/1.1\r\nHost: x\r\n\r\n" * 500)
        client_port = s.getsockname()[1]
        server_port = int(hub.url.rsplit(":", 1)[1])
        time.sleep(30)
        results["open at 30 s"] = server_side_open(server_port, client_port)
        time.sleep(40)
        results["reader"] = server_side_open(server_port, client_port)
        s.close()

    threads = [threading.Thread(target=f) for f in (body_never_comes, head_never_ends, never_reads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    code, waited = results["body"]
    assert code == 408 and 55 < waited < 70, results
    got, waited = results["head"]
    assert got == b"" and 8 < waited < 15, results
    assert results["open at 30 s"], "the stuck download was still going at 30 s"
    assert not results["reader"], "the server closed the stuck download by 70 s"
