"""Python truth (issue #26 part 4): what requests and httpx send and decode,
as the README's table says; the README's Python blocks that talk to a hub
run as written (the demo's address pointed at a test server)."""

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[2]


def python(code, *args):
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_requests_sends_zstd_with_backports_zstd_and_not_with_zstandard_alone(serve):
    s = serve("--runtime", "none")
    url = s.url + "/v1/models/demo/weights"
    ask = ("import sys, requests; r = requests.get(sys.argv[1]); "
           "print(r.request.headers['Accept-Encoding'], r.headers.get('Content-Encoding', 'identity'), len(r.content), sep='|')")
    sent, got, n = python(ask, url).split('|')
    assert "zstd" in sent and got == "zstd", sent
    # Without backports.zstd (and before Python 3.14): gzip and deflate only, so identity.
    blocked = "import sys; sys.modules['backports.zstd'] = None; sys.modules['compression.zstd'] = None; " + ask
    sent2, got2, n2 = python(blocked, url).split('|')
    assert "zstd" not in sent2 and got2 == "identity" and n2 == n, (sent2, got2)


def test_httpx_sends_zstd_with_zstandard_and_decodes_many_frames(serve):
    s = serve("--runtime", "none")
    url = s.url + "/v1/models/demo/weights?dtype=f16"
    code = ("import sys, httpx; r = httpx.get(sys.argv[1]); "
            "print(r.request.headers['accept-encoding'], r.headers.get('content-encoding'), len(r.content), sep='|')")
    sent, got, n = python(code, url).split('|')
    assert "zstd" in sent and got == "zstd"
    plain = s.get("/v1/models/demo/weights?dtype=f16", headers={"Accept-Encoding": "identity"}).content
    assert int(n) == len(plain)


def readme_blocks():
    """The ```python blocks of the README and its guides (docs/) that talk
    to the demo hub."""
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "127.0.0.1:8080" in b]


def test_the_readmes_python_blocks_run_as_written(serve, tmp_path):
    blocks = readme_blocks()
    assert blocks, "the README's npz recipe is a runnable block"
    names = ["encoder/layer.0:weight", "décodeur", "plain"]
    inits = [numpy_helper.from_array(np.arange(4, dtype=np.float32) + k, n) for k, n in enumerate(names)]
    m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], inits),
                               opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "demo.onnx"))
    s = serve("--runtime", "none", tmp_path / "demo.onnx")
    for block in blocks:
        scope = {}
        exec(block.replace("http://127.0.0.1:8080", s.url), scope)  # noqa: S102 (the README's own code)
        if "weights" in scope:
            assert sorted(scope["weights"]) == sorted(names), scope["weights"].keys()
            assert (scope["weights"]["décodeur"] == np.arange(4, dtype=np.float32) + 1).all()
