"""The sharp edges a new user cut on (issue #26): a browser on a model's API
URL, a wrong URL given to `pull`, an answer that is not a manifest, a push
that would rename a model silently. Each reproduced on the binary before the
change (pull's old message was `Manifest.signature: invalid wire type …`)."""

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import requests

from conftest import binary
from test_page import browse, model as page_model, rows
from test_pull_contract import named_model

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def wc(*args):
    r = subprocess.run([str(binary()), *map(str, args)], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def test_a_browser_on_a_models_api_url_gets_the_page_at_that_model(serve, tmp_path):
    old = page_model(tmp_path / "m.onnx")
    s = serve("--runtime", "none", tmp_path / "m.onnx")
    r = requests.get(s.url + "/v1/models/m", headers={"Accept": BROWSER_ACCEPT}, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "/#/m/m", r.headers
    r = requests.get(s.url + "/v1/models/m/tensors/encoder.weight", headers={"Accept": BROWSER_ACCEPT},
                     allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "/#/m/m"
    # Programs keep their answers: requests' default Accept, JSON, ?format=.
    assert requests.get(s.url + "/v1/models/m", timeout=10).headers["Content-Type"] == "application/x-protobuf"
    assert requests.get(s.url + "/v1/models/m", headers={"Accept": "application/json"}, timeout=10).json()["model"] == "m"
    assert requests.get(s.url + "/v1/models/m?format=json", headers={"Accept": BROWSER_ACCEPT}, timeout=10).ok
    # Chromium itself (it used to download 361 bytes of protobuf, and hang headless).
    dom = browse(s.url + "/v1/models/m", "api-url.png", (1400, 500))
    assert set(rows(dom, "tensor")) == set(old), dom[-2000:]


def test_pull_of_a_url_that_is_not_a_models_says_which_url_to_give(serve, tmp_path):
    named_model(tmp_path / "detector.onnx", ["w"], n=16)
    s = serve("--runtime", "none", tmp_path / "detector.onnx")
    for url, want in [(s.url, f"{s.url}/v1/models/NAME"), (s.url + "/", f"{s.url}/v1/models/NAME"),
                      (s.url + "/#/m/detector", f"{s.url}/v1/models/detector"),
                      (s.url + "/#/m/detector/changes", f"{s.url}/v1/models/detector"),
                      (s.url + "/v1/models", f"{s.url}/v1/models/NAME")]:
        rc, out, err = wc("pull", url, "--dest", tmp_path / "d", "--once", "--model", "detector")
        assert rc == 1 and "is not a model's URL on a hub" in err and want in err, (url, err)
        assert "wire type" not in err
    assert not (tmp_path / "d" / "current").exists()


def test_an_answer_that_is_not_a_manifest_is_told_in_plain_words(tmp_path):
    class Html(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # the pull client speaks HTTP/1.1
        def do_GET(self):
            body = b"<!doctype html><title>a proxy's login page</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/v1/models/detector"
        rc, out, err = wc("pull", url, "--dest", tmp_path / "d", "--once")
        assert rc == 1 and "answered a web page (text/html), not a manifest" in err, err
        assert "wire type" not in err
    finally:
        httpd.shutdown()


def test_push_to_a_tag_holding_another_model_is_refused_unless_named(tmp_path):
    from registry import Registry
    reg = Registry(tmp_path)
    named_model(tmp_path / "vad-v2.onnx", ["w"], n=16)
    target = f"oci://{reg.host}/fleet/vad:prod"
    rc, out, err = wc("push", tmp_path / "vad-v2.onnx", target, "--plain-http", "--name", "vad-v2")
    assert rc == 0, err
    named_model(tmp_path / "vad-v3.onnx", ["w", "b"], n=16)
    rc, out, err = wc("push", tmp_path / "vad-v3.onnx", target, "--plain-http")
    assert rc == 1 and "holds model 'vad-v2'" in err and "--name vad-v2" in err, err
    rc, out, err = wc("push", tmp_path / "vad-v3.onnx", target, "--plain-http", "--name", "vad-v2")
    assert rc == 0 and "pushed vad-v2" in out, err
    rc, out, err = wc("push", tmp_path / "vad-v3.onnx", target, "--plain-http", "--name", "vad")
    assert rc == 0 and "pushed vad " in out, (out, err)


def test_push_to_a_hubs_url_says_where_push_publishes(tmp_path):
    named_model(tmp_path / "m.onnx", ["w"], n=16)
    rc, out, err = wc("push", tmp_path / "m.onnx", "http://hub.lan:8080/v1/models/m")
    assert rc == 1 and "is a hub's URL" in err and "oci://registry.example:5000/team/detector:v1" in err, err
