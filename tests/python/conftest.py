"""Fixtures: the weightcast binary, the generated model zoo, the Python
module generated from our .proto, and servers started on free ports."""

import importlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import zstandard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))

import gen_models  # noqa: E402


def binary():
    path = Path(os.environ.get("WEIGHTCAST_BIN", ROOT / "target" / "debug" / "weightcast"))
    if not path.exists():
        pytest.exit(f"{path} not built: run `cargo build` first (scripts/test.sh does)", returncode=2)
    return path


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    return gen_models.generate(tmp_path_factory.mktemp("zoo"))


# The zoo models served together by `zoo_server` (paths inside the zoo).
ZOO_SERVED = ["raw_all.onnx", "typed_all.onnx", "external/external.onnx", "edge.onnx", "names.onnx", "mlp.onnx",
              "trained.onnx"]


@pytest.fixture(scope="session")
def zoo_server(zoo, tmp_path_factory):
    """One server (without ONNX Runtime) for the zoo's models."""
    s = Server(["--runtime", "none", *[zoo / m for m in ZOO_SERVED]], tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def pb2(tmp_path_factory):
    """weightcast_pb2, generated from proto/ by protoc (grpcio-tools)."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("pb2")
    proto = ROOT / "proto"
    rc = protoc.main(["protoc", f"-I{proto}", f"--python_out={out}", str(proto / "weightcast/v1/weightcast.proto")])
    assert rc == 0, "protoc failed on weightcast.proto"
    sys.path.insert(0, str(out))
    return importlib.import_module("weightcast.v1.weightcast_pb2")


class Server:
    def __init__(self, args, tmp_path, env=None):
        self.log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        # Each server its own state folder (the fleet table): servers of
        # parallel tests must not share one.
        full_env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1",
                        XDG_STATE_HOME=str(tmp_path / "xdg-state"))
        full_env.update(env or {})
        self.proc = subprocess.Popen([str(binary()), "serve", "--listen", "127.0.0.1:0", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=full_env)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.wait(timeout=10)
            raise RuntimeError(f"server did not start (exit {self.proc.returncode}): {self.logs()}")
        self.url = line.strip().split()[-1]

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=30, **kw)

    def raw(self, path, headers=None):
        """GET returning the body exactly as sent (no content decoding)."""
        r = requests.get(self.url + path, headers=headers or {}, stream=True, timeout=30)
        body = r.raw.read(decode_content=False)
        return r, body

    def logs(self):
        self.log.flush()
        return self.log_path.read_text()

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(*args, env=None):
        s = Server(args, tmp_path, env)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def unzstd(body):
    """Decodes a zstd body of one or more frames."""
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).read()
