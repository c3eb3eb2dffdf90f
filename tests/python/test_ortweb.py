"""onnxruntime-web with no glue (issue #26 part 2): the example page in
examples/onnxruntime-web, served from another origin, runs a corpus model
from a hub with CORS in headless Chromium — its `externalData` built from
the manifest's `location` and `blob` alone — and its outputs equal ONNX
Runtime CPU's (Python) within float tolerance."""

import functools
import json
import re
import shutil
import subprocess
import threading
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import onnxruntime as ort

from test_corpus import corpus  # noqa: F401 (fixture)
from test_page import browse

ROOT = Path(__file__).resolve().parents[2]
NAME = "orientation"


class Static(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".js": "text/javascript"}

    def log_message(self, *a):
        pass


def test_the_onnxruntime_web_example_runs_a_model_from_the_hub(serve, tmp_path, corpus):  # noqa: F811
    ortweb = Path(subprocess.run([str(ROOT / "scripts" / "fetch-ortweb.sh")], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1])
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(ROOT / "examples" / "onnxruntime-web" / "index.html", site)
    for f in ortweb.iterdir():
        shutil.copy(f, site)
    httpd = HTTPServer(("127.0.0.1", 0), functools.partial(Static, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{httpd.server_port}"
    served = tmp_path / f"{NAME}.onnx"
    served.write_bytes((corpus / f"{NAME}.onnx").read_bytes())
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'cors_origins = ["{origin}"]\n[[models]]\npath = "{served}"\n')
    s = serve("--runtime", "none", "--config", cfg)
    try:
        dom = browse(f"{origin}/index.html?hub={s.url}&model={NAME}", "ortweb.png", (1000, 400))
    finally:
        httpd.shutdown()
    text = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S).group(1)
    assert text.startswith("{"), text[:2000]
    got = json.loads(text.replace("&quot;", '"'))
    assert got["external"] > 0, "the model's weights came as external data"
    session = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        feeds[i.name] = ((np.arange(int(np.prod(dims))) % 255) / 255).astype(np.float32).reshape(dims)
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert set(got["outputs"]) == set(want)
    for name, w in want.items():
        g = np.array(got["outputs"][name]["data"], dtype=np.float64).reshape(w.shape)
        assert np.allclose(g, w, rtol=1e-3, atol=1e-4), (name, np.abs(g - w).max())
