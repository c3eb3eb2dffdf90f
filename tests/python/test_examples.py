"""The published examples work: the Python client against a real server, and
the curl commands of examples/curl.md (where curl and zstd are installed)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]


def test_python_client(serve, tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    assert protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}",
                        str(ROOT / "proto/weightcast/v1/weightcast.proto")]) == 0
    client = tmp_path / "client.py"
    shutil.copy(ROOT / "examples/python/client.py", client)
    shutil.copytree(out / "weightcast", tmp_path / "weightcast")
    s = serve("--runtime", "none")
    r = subprocess.run([sys.executable, str(client), s.url, "demo"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "npz: 11 arrays, equal to the protobuf ones" in r.stdout
    assert "safetensors (f16): 11 arrays" in r.stdout


@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("zstd"), reason="needs curl and zstd")
def test_curl_commands(serve, tmp_path):
    s = serve("--runtime", "none")
    text = (ROOT / "examples/curl.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    script = block.replace("localhost:8080", s.url.removeprefix("http://")).replace("mymodel/tensors/encoder%2Flayer.0%2Fweight", "demo/tensors/mlp.0.bias")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("304")
    import numpy as np

    assert np.load(tmp_path / "w.npy").shape == (256, 1024)
