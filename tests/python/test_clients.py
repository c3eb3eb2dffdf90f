"""The clients people already use (issue #15, "Done means"), each doing the
jobs a user of it would, on a real corpus model, checked against
onnx.numpy_helper: httpx, wget, python-zstandard's one-shot decoder and a
browser page of another origin (headless Chromium, CORS with a preflight).
requests, numpy, safetensors, the published proto and curl are exercised
throughout the suite (test_interop, test_http, test_corpus, test_examples);
their matrix row is repeated here in one place.
"""

import http.server
import io
import json
import subprocess
import threading
import urllib.request
from functools import partial
from pathlib import Path
from urllib.parse import quote

import numpy as np
import onnx
import pytest
import requests
import safetensors.numpy
import zstandard
from onnx import numpy_helper

from conftest import unzstd
from test_corpus import corpus  # noqa: F401  (the fixture)
from test_page import browse

MODEL = "orientation"  # 151 tensors, 6.7 MB: the largest is 2.6 MB


@pytest.fixture(scope="module")
def weights(corpus):  # noqa: F811
    m = onnx.load(str(corpus / f"{MODEL}.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


@pytest.fixture
def server(corpus, serve):  # noqa: F811
    return serve("--runtime", "none", corpus / f"{MODEL}.onnx")


def largest(weights):
    return max(weights, key=lambda n: weights[n].nbytes)


def tensor_path(name):
    return f"/v1/models/{MODEL}/tensors/{quote(name, safe='')}"


def raw_body(url, encoding):
    """The body as sent (not decoded), read with urllib, which decodes nothing."""
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": encoding}), timeout=30) as r:
        return r.headers.get("Content-Encoding"), r.read()


def test_one_shot_zstd_decoders_read_every_answer_up_to_4_mib(server, weights):
    """python-zstandard's `ZstdDecompressor().decompress(body)` stops after the
    first frame: answers of up to 4 MiB before compression are one frame, on
    the first request (compressed then) and the next (from the cache); larger
    ones decode with the README's two-line stream decoder."""
    big = largest(weights)
    small = sorted(weights, key=lambda n: weights[n].nbytes)[:3]
    paths = [
        tensor_path(big),
        tensor_path(big) + "?format=npy",
        tensor_path(big) + "?format=raw",
        tensor_path(big) + "?dtype=f16&format=safetensors",
        tensor_path(small[0]) + "?format=json",
        f"/v1/models/{MODEL}/weights?names=" + ",".join(quote(n, safe="") for n in [big, *small]),
        f"/v1/models/{MODEL}/weights?names={quote(small[1], safe='')}&format=npz&compress=1",
        f"/v1/models/{MODEL}",
        f"/v1/models/{MODEL}/stats",
        "/v1/models?format=json",
    ]
    for path in paths:
        _, plain = raw_body(server.url + path, "identity")
        assert len(plain) <= 4 << 20, path
        for attempt in ("first", "cached"):
            enc, body = raw_body(server.url + path, "zstd")
            assert enc == "zstd", path
            out = zstandard.ZstdDecompressor().decompress(body, max_output_size=8 << 20)
            assert out == plain, f"{path} ({attempt}): one-shot decode gave {len(out)} of {len(plain)} bytes"
    whole = f"{server.url}/v1/models/{MODEL}/weights?format=safetensors"
    _, plain = raw_body(whole, "identity")
    _, body = raw_body(whole, "zstd")
    assert len(plain) > 4 << 20
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).read()
    assert data == plain, "the README's decoder reads a larger, multi-frame answer whole"
    got = safetensors.numpy.load(data)
    assert all(np.array_equal(got[n], weights[n]) for n in weights)


def test_httpx(server, weights):
    """httpx: zstd decoded, ETag and Last-Modified revalidation, a Range of a
    raw tensor, streaming an npz into numpy."""
    import httpx
    big = largest(weights)
    want = weights[big]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get(tensor_path(big) + "?format=npy", headers={"Accept-Encoding": "zstd"})
        assert r.status_code == 200 and r.headers["Content-Encoding"] == "zstd"
        assert np.array_equal(np.load(io.BytesIO(r.content)), want)
        assert c.get(tensor_path(big) + "?format=npy", headers={"Accept-Encoding": "zstd", "If-None-Match": r.headers["ETag"]}).status_code == 304
        assert c.get(tensor_path(big) + "?format=npy", headers={"If-Modified-Since": r.headers["Last-Modified"]}).status_code == 304
        r = c.get(tensor_path(big) + "?format=raw", headers={"Range": "bytes=1024-2047"})
        assert r.status_code == 206 and r.content == want.tobytes()[1024:2048]
        assert r.headers["Content-Range"] == f"bytes 1024-2047/{want.nbytes}"
        # Answers over 4 MiB are several zstd frames: computed (chunked) the
        # first time, cached (Content-Length) the next; httpx decodes each.
        for fmt in ("protobuf", "safetensors", "npz"):
            path = f"/v1/models/{MODEL}/weights?format={fmt}"
            plain = c.get(path, headers={"Accept-Encoding": "identity"}).content
            assert len(plain) > 4 << 20
            for _ in range(2):
                with c.stream("GET", path) as s:
                    assert s.headers["Content-Encoding"] == "zstd", "httpx offers zstd by default"
                    assert b"".join(s.iter_bytes()) == plain, fmt
        buf = io.BytesIO()
        with c.stream("GET", f"/v1/models/{MODEL}/weights?format=npz") as s:
            assert s.headers["Content-Disposition"] == f'attachment; filename="{MODEL}.npz"'
            for piece in s.iter_bytes():
                buf.write(piece)
        npz = np.load(io.BytesIO(buf.getvalue()))
        assert len(npz.files) == len(weights)
        assert all(np.array_equal(npz[f], weights[n]) for f, n in zip(npz.files, weights))


def test_wget(server, weights, tmp_path):
    """wget saves under Content-Disposition's name; `wget -N` does not fetch
    an unchanged file again (Last-Modified / If-Modified-Since)."""
    url = f"{server.url}/v1/models/{MODEL}/weights?format=safetensors"
    run = partial(subprocess.run, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    out = run(["wget", "--content-disposition", url])
    assert out.returncode == 0, out.stderr
    saved = tmp_path / f"{MODEL}.safetensors"
    got = safetensors.numpy.load_file(str(saved))
    assert got.keys() == weights.keys() and all(np.array_equal(got[n], weights[n]) for n in weights)
    graph = f"{server.url}/v1/models/{MODEL}/graph"
    first = run(["wget", "-N", "-S", graph])
    assert first.returncode == 0 and "200 OK" in first.stderr, first.stderr
    before = (tmp_path / "graph").stat()
    again = run(["wget", "-N", "-S", graph])
    assert again.returncode == 0 and "304 Not Modified" in again.stderr, again.stderr
    assert "omitting download" in again.stderr.lower()
    assert (tmp_path / "graph").stat().st_mtime_ns == before.st_mtime_ns
    assert onnx.load(str(tmp_path / "graph"), load_external_data=False).graph.node, "wget saved the ONNX graph"


def test_requests_curl_numpy_safetensors_and_the_proto(server, weights, pb2, tmp_path):
    """The rest of the matrix, once, on the same model: requests (zstd
    decoded), numpy, safetensors' numpy loader, a Bundle parsed with
    classes generated from the published .proto, curl --compressed."""
    big = largest(weights)
    r = requests.get(server.url + f"/v1/models/{MODEL}/weights", headers={"Accept-Encoding": "zstd"}, timeout=30)
    assert r.headers["Content-Encoding"] == "zstd"
    bundle = pb2.Bundle.FromString(r.content)
    assert [t.name for t in bundle.tensors] == list(weights)
    r = requests.get(server.url + tensor_path(big) + "?format=npy", timeout=30)
    assert np.array_equal(np.load(io.BytesIO(r.content)), weights[big])
    r = requests.get(server.url + f"/v1/models/{MODEL}/weights?format=safetensors", timeout=30)
    got = safetensors.numpy.load(r.content)
    assert all(np.array_equal(got[n], weights[n]) for n in weights)
    out = subprocess.run(["curl", "-sS", "--compressed", "-o", str(tmp_path / "t.npy"), server.url + tensor_path(big) + "?format=npy"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.load(tmp_path / "t.npy"), weights[big])


APP = """<!doctype html><meta charset="utf-8"><title>another origin</title><pre id="out">pending</pre>
<script>
const api = API, auth = {Authorization: "Bearer " + TOKEN}, tensor = TENSOR;
(async () => {
  const out = {origin: location.origin};
  try {
    const m = await fetch(api + "/v1/models/" + MODEL + "?format=json", {headers: auth});
    out.status = m.status;
    out.etag = m.headers.get("ETag");
    out.version = m.headers.get("X-Weightcast-Model-Version");
    out.tensors = (await m.json()).tensors.length;
    out.revalidated = (await fetch(api + "/v1/models/" + MODEL + "?format=json", {headers: {...auth, "If-None-Match": out.etag}})).status;
    const r = await fetch(api + "/v1/models/" + MODEL + "/tensors/" + encodeURIComponent(tensor) + "?format=raw",
                          {headers: {...auth, Range: "bytes=0-15"}});
    out.range_status = r.status;
    out.content_range = r.headers.get("Content-Range");
    out.bytes = Array.from(new Uint8Array(await r.arrayBuffer()));
    const w = await fetch(api + "/v1/models/" + MODEL + "/weights?format=safetensors", {headers: auth});
    out.disposition = w.headers.get("Content-Disposition");
    out.weights_bytes = (await w.arrayBuffer()).byteLength;
  } catch (e) {
    out.error = String(e);
  }
  document.getElementById("out").textContent = JSON.stringify(out);
})();
</script>
"""


class Site:
    """A static site on its own origin (127.0.0.1:PORT), serving `directory`."""

    def __init__(self, directory):
        handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_page_of_another_origin_uses_the_api_in_chromium(corpus, serve, weights, tmp_path):  # noqa: F811
    """A browser `fetch` from another origin: allowed by `cors_origins`, with a
    token (so every call is preflighted), it reads the model, revalidates with
    If-None-Match, reads the exposed headers and a Range of a raw tensor; so
    does a page opened from a file, with "null" listed; a page of an origin
    not listed gets nothing (the browser blocks it)."""
    site, other = Site(tmp_path), Site(tmp_path)
    try:
        tokens = tmp_path / "tokens"
        tokens.write_text("browser-token-0123456789 *\n")
        cfg = tmp_path / "w.toml"
        cfg.write_text(f'cors_origins = ["{site.origin}", "null"]\ntokens_file = "{tokens}"\n'
                       f'[[models]]\npath = "{corpus / f"{MODEL}.onnx"}"\n')
        s = serve("--runtime", "none", "--config", cfg)
        big = largest(weights)
        page = APP
        for k, v in {"API": s.url, "TOKEN": "browser-token-0123456789", "TENSOR": big, "MODEL": MODEL}.items():
            page = page.replace(k, json.dumps(v))
        (tmp_path / "app.html").write_text(page)

        out = result(browse(site.origin + "/app.html"))
        assert "error" not in out, out
        version = s.get(f"/v1/models/{MODEL}?format=json", headers={"Authorization": "Bearer browser-token-0123456789"}).json()["version"]
        assert out["status"] == 200 and out["tensors"] == len(weights) and out["version"] == version
        assert out["etag"].startswith('"') and out["revalidated"] == 304
        assert out["range_status"] == 206 and out["content_range"] == f"bytes 0-15/{weights[big].nbytes}"
        assert bytes(out["bytes"]) == weights[big].tobytes()[:16]
        assert out["disposition"] == f'attachment; filename="{MODEL}.safetensors"'
        want = requests.get(s.url + f"/v1/models/{MODEL}/weights?format=safetensors",
                            headers={"Authorization": "Bearer browser-token-0123456789"}, timeout=30).content
        assert out["weights_bytes"] == len(want)

        # A page opened from a file (a notebook's export) has the origin "null".
        local = result(browse((tmp_path / "app.html").as_uri()))
        assert local["origin"] == "file://" and local.get("status") == 200 and local["range_status"] == 206, local
        r = s.get(f"/v1/models/{MODEL}", headers={"Origin": "null", "Authorization": "Bearer browser-token-0123456789"})
        assert r.headers["Access-Control-Allow-Origin"] == "null", "what Chromium sent for the file's page"

        blocked = result(browse(other.origin + "/app.html"))
        assert blocked.get("error", "").startswith("TypeError"), blocked
        assert "status" not in blocked, "the browser gave the page of an origin not listed no answer"
    finally:
        site.close()
        other.close()


def result(dom):
    start = dom.index('<pre id="out">') + len('<pre id="out">')
    text = dom[start:dom.index("</pre>", start)]
    assert text != "pending", "the page's script did not finish"
    import html
    return json.loads(html.unescape(text))
