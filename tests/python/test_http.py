"""HTTP behaviour: conditional GETs, ETags per representation, HEAD, every
error status with its JSON body, awkward tensor names, broken models."""

from urllib.parse import quote

import pytest
import requests


@pytest.fixture
def demo(serve):
    return serve("--runtime", "none")


def test_healthz_and_listing(demo):
    assert demo.get("/healthz").status_code == 200
    m = demo.get("/v1/models?format=json").json()["models"]
    assert [x["name"] for x in m] == ["demo"]
    assert m[0]["tensor_count"] == 13 and m[0]["total_bytes"] > 3_000_000 and len(m[0]["version"]) == 64


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/demo", "/v1/models/demo/weights",
                                  "/v1/models/demo/tensors/mlp.0.bias"])
def test_conditional_get(demo, path):
    r = demo.get(path)
    etag = r.headers["ETag"]
    assert etag.startswith('"') and r.headers["Cache-Control"] == "no-cache"
    again = demo.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    other = demo.get(path, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200


def test_etags_differ_per_representation(demo):
    variants = [
        ("/v1/models/demo/weights", {"Accept-Encoding": "identity"}),
        ("/v1/models/demo/weights", {"Accept-Encoding": "zstd"}),
        ("/v1/models/demo/weights?dtype=f16", {}),
        ("/v1/models/demo/weights?dtype=bf16", {}),
        ("/v1/models/demo/weights?format=json", {}),
        ("/v1/models/demo/weights?names=mlp.0.bias", {}),
        ("/v1/models/demo/tensors/mlp.0.bias", {}),
        ("/v1/models/demo", {}),
        ("/v1/models/demo?dtype=f16", {}),
    ]
    tags = [demo.get(p, headers=h).headers["ETag"] for p, h in variants]
    assert len(set(tags)) == len(tags), tags
    # Same representation, same tag: the name order in ?names= does not matter.
    a = demo.get("/v1/models/demo/weights?names=mlp.0.bias,class_ids").headers["ETag"]
    b = demo.get("/v1/models/demo/weights?names=class_ids&names=mlp.0.bias").headers["ETag"]
    assert a == b
    # A 304 only for the representation the tag belongs to.
    tag = demo.get("/v1/models/demo/weights", headers={"Accept-Encoding": "identity"}).headers["ETag"]
    assert demo.get("/v1/models/demo/weights", headers={"If-None-Match": tag, "Accept-Encoding": "zstd"}).status_code == 200


def test_head_matches_get(demo):
    for path in ["/v1/models/demo", "/v1/models/demo/weights", "/v1/models/demo/tensors/labels"]:
        plain = {"Accept-Encoding": "identity"}
        g = demo.get(path, headers=plain)
        h = requests.head(demo.url + path, headers=plain, timeout=10)
        assert h.status_code == 200 and h.content == b""
        assert h.headers["ETag"] == g.headers["ETag"]
        assert int(h.headers["Content-Length"]) == len(g.content)


def test_zstd_and_vary(demo):
    r = demo.get("/v1/models/demo/weights", headers={"Accept-Encoding": "gzip, zstd"})
    assert r.headers["Content-Encoding"] == "zstd" and "Accept-Encoding" in r.headers["Vary"]
    plain = demo.get("/v1/models/demo/weights", headers={"Accept-Encoding": "identity"})
    assert r.content == plain.content, "requests decodes the zstd stream to the identical bundle"


def error(r, status, *words):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == {"error", "detail"}
    for w in words:
        assert w in body["detail"], body
    return body


def test_errors(demo):
    error(demo.get("/v1/models/demo/weights?color=red"), 400, "color")
    error(demo.get("/v1/models/demo/weights?dtype=int3"), 400, "int3")
    error(demo.get("/v1/models/demo?format=xml"), 400, "xml")
    error(demo.get("/healthz?x=1"), 400, "'x'")
    error(demo.get("/v1/models/nope"), 404, "nope")
    error(demo.get("/v1/models/demo/tensors/nope"), 404, "nope")
    error(demo.get("/v1/models/demo/weights?names=mlp.0.bias,ghost"), 404, "ghost")
    error(demo.get("/v2/anything"), 404, "/v1/models")
    r = requests.post(demo.url + "/v1/models/demo", data=b"x", timeout=10)
    error(r, 405, "POST")
    assert r.headers["Allow"] == "GET, HEAD"
    error(requests.delete(demo.url + "/v1/models/demo", timeout=10), 405)
    error(demo.get("/v1/models/demo", headers={"Accept": "image/png"}), 406, "image/png")
    # A browser (text/html first) is sent to the page instead (issue #26).
    r = demo.get("/v1/models/demo", headers={"Accept": "text/html"}, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/#/m/demo"
    assert demo.get("/v1/models/demo", headers={"Accept": "application/json"}).headers["Content-Type"] == "application/json"


def test_malformed_requests_do_not_kill_the_server(demo):
    import socket

    host, port = demo.url.removeprefix("http://").split(":")
    for junk in [b"GARBAGE\r\n\r\n", b"GET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", b"\x00" * 100,
                 b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"]:
        with socket.create_connection((host, int(port)), timeout=0.5) as s:
            s.sendall(junk)
            try:
                s.recv(1024)
            except OSError:
                pass
    assert demo.get("/healthz").status_code == 200


def test_tensor_names_with_slash_and_percent(zoo, serve, pb2):
    s = serve("--runtime", "none", zoo / "names.onnx")
    for name in ["layer/0/weight", "100%", "a:b.c", "with space", "ünï"]:
        r = s.get("/v1/models/names/tensors/" + quote(name, safe=""))
        assert r.status_code == 200, name
        assert pb2.Bundle.FromString(r.content).tensors[0].name == name
    # A literal '/' in the path also reaches the tensor.
    r = s.get("/v1/models/names/tensors/layer/0/weight")
    assert pb2.Bundle.FromString(r.content).tensors[0].name == "layer/0/weight"


def test_broken_models_fail_alone(zoo, serve):
    d = zoo / "broken"
    s = serve("--runtime", "none", *(d / f for f in ["good.onnx", "truncated.onnx", "wrong_len.onnx", "escape.onnx",
                                                       "future.onnx", "garbage.onnx"]))
    models = {m["name"]: m for m in s.get("/v1/models?format=json").json()["models"]}
    assert "error" not in models["good"] and models["good"]["tensor_count"] == 4
    assert "truncated" in models["truncated"]["error"] and "is the file truncated" in models["truncated"]["error"]
    assert "short_tensor" in models["wrong_len"]["error"] and "need 24 bytes" in models["wrong_len"]["error"]
    assert "escaping" in models["escape"]["error"] and "inside the model's folder" in models["escape"]["error"]
    assert "future_dtype" in models["future"]["error"] and "99" in models["future"]["error"]
    assert "not a valid ONNX model" in models["garbage"]["error"]
    error(s.get("/v1/models/wrong_len"), 404, "short_tensor")
    assert s.get("/v1/models/good/weights").status_code == 200
    assert "model failed to load" in s.logs()


def test_start_up_errors(zoo, tmp_path):
    import subprocess

    from conftest import binary

    def run(*args):
        return subprocess.run([str(binary()), "serve", "--runtime", "none", "--listen", "127.0.0.1:0", *map(str, args)],
                              capture_output=True, text=True, timeout=30)

    r = run(zoo / "mlp.onnx", zoo / "broken" / "good.onnx", zoo / "mlp.onnx")
    assert r.returncode != 0 and "two models are named 'mlp'" in r.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("listen = '127.0.0.1:0'\nzstd_levle = 3\n")
    r = run("--config", cfg)
    assert r.returncode != 0 and "zstd_levle" in r.stderr
    # A bare port (issue #15's papercut) says what is expected.
    r = subprocess.run([str(binary()), "serve", "--runtime", "none", "--listen", "18720", zoo / "mlp.onnx"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "give HOST:PORT" in r.stderr and "0.0.0.0:8080" in r.stderr, r.stderr


def test_json_cap(zoo, serve, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"json_max_bytes = 1000\n[[models]]\npath = '{zoo / 'mlp.onnx'}'\n")
    s = serve("--runtime", "none", "--config", cfg)
    body = error(s.get("/v1/models/mlp/weights?format=json"), 413, "application/x-protobuf")
    assert "1000" in body["detail"]
    assert s.get("/v1/models/mlp/weights?format=json&names=b1").status_code == 200
    assert s.get("/v1/models/mlp/weights").status_code == 200


def test_a_replaced_model_file_is_served_once_it_loads(tmp_path, serve):
    import os
    import time

    import gen_models

    path = tmp_path / "hub.onnx"
    gen_models.mlp(path, seed=1)
    s = serve("--runtime", "none", path)
    v1 = s.get("/v1/models/hub?format=json").json()["version"]

    def wait_for(pred):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = s.get("/v1/models/hub?format=json").json()
            if pred(m):
                return m
            time.sleep(0.1)
        raise AssertionError("server did not pick up the change")

    # Published by rename, as a fleet hub does: the new version is served.
    gen_models.mlp(tmp_path / "next.onnx", seed=2)
    os.replace(tmp_path / "next.onnx", path)
    v2 = wait_for(lambda m: m["version"] != v1)["version"]
    r = s.get("/v1/models/hub/weights")
    assert r.headers["X-Weightcast-Model-Version"] == v2
    # A broken file does not take the model down: the last good version stays.
    (tmp_path / "bad.onnx").write_bytes(path.read_bytes()[:100])
    os.replace(tmp_path / "bad.onnx", path)
    time.sleep(2.5)
    assert s.get("/v1/models/hub?format=json").json()["version"] == v2
    assert "still serving version" in s.logs()


def test_ranges_on_identity_tensor_bodies(demo):
    path = "/v1/models/demo/tensors/mlp.0.weight"
    plain = {"Accept-Encoding": "identity"}
    full = demo.get(path, headers=plain)
    assert full.headers["Accept-Ranges"] == "bytes"
    etag = full.headers["ETag"]
    r = demo.get(path, headers={**plain, "Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == full.content[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(full.content)}"
    r = demo.get(path, headers={**plain, "Range": "bytes=1000-", "If-Range": etag})
    assert r.status_code == 206 and r.content == full.content[1000:]
    r = demo.get(path, headers={**plain, "Range": "bytes=1000-", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == full.content, "a changed representation is sent whole"
    r = demo.get(path, headers={**plain, "Range": f"bytes={len(full.content)}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(full.content)}"
    z = demo.get(path, headers={"Accept-Encoding": "zstd"})
    assert z.headers["Content-Encoding"] == "zstd" and z.headers["Accept-Ranges"] == "none"
    z = demo.get(path, headers={"Accept-Encoding": "gzip, deflate, br, zstd", "Range": "bytes=0-9"})
    assert z.status_code == 206 and "Content-Encoding" not in z.headers, "a Range request (as requests and httpx send it) gets identity"
    assert z.content == full.content[:10]


def test_raw_tensor_bytes_with_ranges_and_casts(zoo, serve):
    """`format=raw` / `Accept: application/octet-stream`: the tensor's bytes alone
    (issue #15, part 3; what `pull` fetches large tensors as)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    path = zoo / "mlp.onnx"
    s = serve("--runtime", "none", path)
    t = max(onnx.load(str(path)).graph.initializer, key=lambda t: len(t.raw_data) or 0)
    want = numpy_helper.to_array(t)
    base = f"/v1/models/mlp/tensors/{quote(t.name, safe='')}"
    r = s.get(base + "?format=raw")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
    assert r.content == want.tobytes()
    r = s.get(base, headers={"Accept": "application/octet-stream", "Accept-Encoding": "identity", "Range": "bytes=8-23"})
    assert r.status_code == 206 and r.content == want.tobytes()[8:24]
    r = s.get(base + "?format=raw&dtype=f16")
    assert r.content == want.astype(np.float16).tobytes()
    r = s.get("/v1/models/mlp/weights?format=raw")
    assert r.status_code == 406 and "format=raw is not offered here" in r.text, r.text


def test_cors_for_allowed_origins_only(zoo, serve, tmp_path):
    """Issue #15, part 2: a page of an allowed origin may call the API —
    preflight for GET/HEAD with the headers clients send, exposed headers —
    and no other origin is named; by default no origin is allowed."""
    cfg = tmp_path / "cors.toml"
    cfg.write_text(f'cors_origins = ["https://app.example"]\n[[models]]\npath = "{zoo / "mlp.onnx"}"\n')
    s = serve("--runtime", "none", "--config", cfg)
    r = s.get("/v1/models/mlp", headers={"Origin": "https://app.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert {"ETag", "X-Weightcast-Model-Version", "Content-Range"} <= {h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert "Origin" in r.headers["Vary"]
    r = s.get("/v1/models/mlp", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    pre = requests.options(s.url + "/v1/models/mlp/weights", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "if-none-match, range, authorization"}, timeout=10)
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"if-none-match", "range", "authorization"} <= allowed
    assert pre.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    assert requests.options(s.url + "/v1/models/mlp", headers={"Origin": "https://evil.example"}, timeout=10).status_code == 405
    plain = serve("--runtime", "none", zoo / "mlp.onnx")
    r = plain.get("/v1/models/mlp", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in r.headers, "no origin is allowed by default"


def test_last_modified_if_modified_since_and_file_names(zoo, serve, tmp_path):
    """Issue #15, part 3: `Last-Modified` (the version's load time) and
    `If-Modified-Since`, as curl -z and wget -N use them; `Content-Disposition`
    names the file (curl -OJ saves under it)."""
    import email.utils
    import subprocess
    s = serve("--runtime", "none", zoo / "mlp.onnx")
    r = s.get("/v1/models/mlp/weights?format=safetensors")
    lm = r.headers["Last-Modified"]
    assert r.headers["Content-Disposition"] == 'attachment; filename="mlp.safetensors"'
    assert s.get("/v1/models/mlp/weights", headers={"If-Modified-Since": lm}).status_code == 304
    earlier = email.utils.format_datetime(email.utils.parsedate_to_datetime(lm) - __import__("datetime").timedelta(seconds=5), usegmt=True)
    assert s.get("/v1/models/mlp/weights", headers={"If-Modified-Since": earlier}).status_code == 200
    r = s.get("/v1/models/mlp/weights", headers={"If-Modified-Since": lm, "If-None-Match": '"other"'})
    assert r.status_code == 200, "If-None-Match wins over If-Modified-Since"
    name = s.get("/v1/models/mlp?format=json").json()["tensors"][0]["name"]
    r = s.get(f"/v1/models/mlp/tensors/{quote(name, safe='')}?format=npy")
    assert r.headers["Content-Disposition"].startswith('attachment; filename="') and r.headers["Content-Disposition"].endswith('.npy"')
    assert s.get("/v1/models/mlp/graph").headers["Content-Disposition"] == 'attachment; filename="mlp.onnx"'
    # curl -OJ saves under the name; curl -z with the saved file's date then gets a 304.
    out = subprocess.run(["curl", "-sS", "-OJ", "-R", f"{s.url}/v1/models/mlp/weights?format=npz"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "mlp.npz").exists(), out.stderr
    code = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-z", str(tmp_path / "mlp.npz"),
                           f"{s.url}/v1/models/mlp/weights?format=npz"], capture_output=True, text=True).stdout
    assert code == "304", code


def test_the_json_tensor_route_answers_the_same_bundle_as_weights(zoo_server):
    one = zoo_server.get("/v1/models/mlp/tensors/w1?format=json")
    assert one.status_code == 200, one.text
    many = zoo_server.get("/v1/models/mlp/weights?format=json&names=w1")
    assert one.json() == many.json()
    assert set(one.json()) == {"model", "version", "tensors"} and len(one.json()["tensors"]) == 1


def test_log_format_json_writes_one_object_per_line(serve, tmp_path):
    import json

    s = serve("--runtime", "none", "--log-format", "json", "-v")
    assert s.get("/v1/models/demo").status_code == 200
    assert s.get("/v1/models/nope").status_code == 404
    s.stop()
    lines = [line for line in s.log_path.read_text().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"timestamp", "level", "message"} <= set(d) for d in docs), docs[:3]
    loaded = next(d for d in docs if d["message"] == "model loaded")
    assert loaded["model"] == "demo" and loaded["tensors"] == 13
