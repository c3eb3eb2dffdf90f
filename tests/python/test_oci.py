"""OCI registries as the fleet's distribution engine (issue #14, parts 2–3):
`weightcast push` to a real registry (Debian's docker-registry, CNCF
distribution 2.8), read back by an independent client (the `oras` SDK) and
by `weightcast pull oci://…`; a one-tensor change uploads and fetches only
that tensor; htpasswd and token-flow authentication; a version folder pushed
by oras is pulled; a tampered blob is refused."""

import hashlib
import json
import os
import subprocess

import numpy as np
import onnx
import oras.client
import pytest
from onnx import numpy_helper

from conftest import binary
from proxy import Proxy
from reference import expected, load_pulled
from registry import PASSWORD, USER, Registry
from test_corpus import MODELS, assert_same_outputs, changed_copy, corpus, inputs, run  # noqa: F401

CONFIG_TYPE = "application/vnd.weightcast.manifest.v1+protobuf"


def wc(*args, env=None, timeout=120):
    r = subprocess.run([str(binary()), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})))
    return r.returncode, r.stdout, r.stderr


def push(model, target, *extra, env=None, plain=True):
    rc, out, err = wc("push", model, target, *(["--plain-http"] if plain else []), *extra, env=env)
    assert rc == 0, err
    # "… : U of B blobs uploaded (X of Y bytes), N ms"
    words = out.split(": ", 1)[1].replace("(", "").split()
    return dict(uploaded=int(words[0]), blobs=int(words[2]), uploaded_bytes=int(words[5]), out=out)


def pull(url, dest, *extra, env=None, plain=True):
    plain = ["--plain-http"] if plain and url.startswith("oci://") else []
    rc, out, err = wc("pull", url, "--dest", dest, "--once", "--json", "--timeout", "20s", *plain, *extra, env=env)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rc, (lines[-1] if lines else {}), err


@pytest.fixture
def registry(tmp_path):
    regs = []

    def start(auth=None):
        r = Registry(tmp_path, auth)
        regs.append(r)
        return r

    yield start
    for r in regs:
        r.stop()


def oras_client(reg, backend="token", **auth):
    c = oras.client.OrasClient(hostname=reg.host, insecure=True, auth_backend=backend)
    if auth:
        c.auth.set_basic_auth(auth["user"], auth["password"])
    return c


@pytest.mark.parametrize("name", MODELS)
def test_oras_reads_what_weightcast_pushed(corpus, registry, tmp_path, name):
    reg = registry()
    model = corpus / f"{name}.onnx"
    push(model, f"oci://{reg.host}/corpus/{name}:v1")
    client = oras_client(reg)
    manifest = client.get_manifest(f"{reg.host}/corpus/{name}:v1")
    assert manifest["artifactType"] == "application/vnd.weightcast.model.v1"
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    out = tmp_path / "oras"
    files = client.pull(target=f"{reg.host}/corpus/{name}:v1", outdir=str(out))
    assert (out / "model.onnx").exists() and len(files) == len(manifest["layers"])
    # Every tensor layer: its digest is the sha256 of its bytes, which are
    # onnx.numpy_helper's reading of the original tensor.
    exp = expected(model)
    tensors = [layer for layer in manifest["layers"] if layer["mediaType"] == "application/vnd.weightcast.tensor.v1"]
    for layer in tensors:
        tensor = layer["annotations"]["dev.weightcast.tensor"]
        data = (out / layer["annotations"]["org.opencontainers.image.title"]).read_bytes()
        assert data == exp[tensor]["data"], tensor
        assert layer["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    # The folder oras wrote is a model ONNX Runtime runs like the original.
    feed = inputs(model, name)
    assert_same_outputs(run(out / "model.onnx", feed), run(model, feed))
    # And a device pulls it from the registry, checked in ONNX Runtime.
    rc, res, err = pull(f"oci://{reg.host}/corpus/{name}:v1", tmp_path / "device", "--check", "ort")
    assert rc == 0 and res["status"] == "updated", (res, err)
    assert_same_outputs(run(tmp_path / "device" / "current" / "model.onnx", feed), run(model, feed))


def test_a_one_tensor_change_moves_only_that_tensor(corpus, registry, tmp_path):
    name = "nudenet-yolov8"
    reg = registry()
    target = f"oci://{reg.host}/fleet/{name}:prod"
    v1 = tmp_path / "v1.onnx"
    v1.write_bytes((corpus / f"{name}.onnx").read_bytes())
    first = push(v1, target)
    assert first["uploaded"] == first["blobs"]
    proxy = Proxy(reg.port)
    url = f"oci://127.0.0.1:{proxy.port}/fleet/{name}:prod"
    dest = tmp_path / "device"
    rc, res, err = pull(url, dest)
    assert rc == 0 and res["status"] == "updated", (res, err)
    whole = proxy.bytes_for("/v2/")

    rc, res, err = pull(url, dest)
    assert rc == 0 and res["status"] == "current", (res, err)
    assert any("if-none-match" in h.lower() for h in proxy.heads("/manifests/"))

    tensor, nbytes = changed_copy(v1, tmp_path / "v2.onnx")
    second = push(tmp_path / "v2.onnx", target)
    # The changed tensor and the config (the graph holds no changed bytes).
    assert second["uploaded"] == 2, second["out"]
    assert second["uploaded_bytes"] < nbytes + 64 * 1024, second
    proxy.reset()
    rc, res, err = pull(url, dest, "--check", "ort")
    assert rc == 0 and res["status"] == "updated" and res["tensors_fetched"] == 1, (res, err)
    moved = proxy.bytes_for("/v2/")
    print(f"\n{name}: first pull {whole} bytes; '{tensor}' changed ({nbytes} bytes): push uploaded "
          f"{second['uploaded_bytes']} bytes, pull moved {moved} bytes")
    assert moved < nbytes * 1.02 + 64 * 1024
    feed = inputs(tmp_path / "v2.onnx", name)
    assert_same_outputs(run(dest / "current" / "model.onnx", feed), run(tmp_path / "v2.onnx", feed))


def small_model(path, seed=0):
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal(4096).astype(np.float32), "w")
    g = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "w"], ["y"])], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4096])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096])], [w])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def test_htpasswd_credentials_from_a_file_or_docker_config(registry, tmp_path):
    reg = registry("htpasswd")
    model = small_model(tmp_path / "m.onnx")
    target = f"oci://{reg.host}/private/m:v1"
    rc, _, err = wc("push", model, target, "--plain-http")
    assert rc == 1 and "--registry-credentials" in err, err
    creds = tmp_path / "creds"
    creds.write_text(f"{USER}:wrong\n")
    rc, _, err = wc("push", model, target, "--plain-http", "--registry-credentials", creds)
    assert rc == 1 and "401" in err, err
    creds.write_text(f"{USER}:{PASSWORD}\n")
    push(model, target, "--registry-credentials", creds)
    assert USER not in err and PASSWORD not in err
    # oras, with the same credentials, sees the artifact.
    assert oras_client(reg, "basic", user=USER, password=PASSWORD).get_manifest(f"{reg.host}/private/m:v1")["config"][
        "mediaType"] == CONFIG_TYPE
    rc, res, err = pull(f"oci://{reg.host}/private/m:v1", tmp_path / "anon")
    assert rc == 1 and "--registry-credentials" in res["error"], res
    docker = tmp_path / "docker"
    docker.mkdir()
    auth = __import__("base64").b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
    rc, res, err = pull(f"oci://{reg.host}/private/m:v1", tmp_path / "device", env={"DOCKER_CONFIG": str(docker)})
    assert rc == 0 and res["status"] == "updated", (res, err)


def test_the_token_flow(registry, tmp_path):
    reg = registry("token")
    model = small_model(tmp_path / "m.onnx")
    target = f"oci://{reg.host}/team/m:v1"
    rc, _, err = wc("push", model, target, "--plain-http")
    assert rc == 1 and "401" in err and "--registry-credentials" in err, err
    creds = tmp_path / "creds"
    creds.write_text(f"{USER}:wrong\n")
    rc, _, err = wc("push", model, target, "--plain-http", "--registry-credentials", creds)
    assert rc == 1 and "token service" in err and "401" in err, err
    creds.write_text(f"{USER}:{PASSWORD}\n")
    push(model, target, "--registry-credentials", creds)
    # The registry names the actions in either order (distribution 2.8 varies).
    scopes = [s.rsplit(":", 1) for s, user in reg.token_service.requests if user == USER]
    assert ["repository:team/m", {"pull", "push"}] in [[r, set(a.split(","))] for r, a in scopes], reg.token_service.requests
    rc, res, err = pull(target, tmp_path / "device", "--registry-credentials", creds)
    assert rc == 0 and res["status"] == "updated", (res, err)
    assert ("repository:team/m:pull", USER) in reg.token_service.requests
    # The client the fleet already uses for registries reads it too.
    c = oras_client(reg, user=USER, password=PASSWORD)
    assert c.get_manifest(f"{reg.host}/team/m:v1")["artifactType"] == "application/vnd.weightcast.model.v1"


def test_a_version_folder_pushed_by_oras_is_pulled_and_a_bare_onnx_is_refused(registry, tmp_path):
    reg = registry()
    model = small_model(tmp_path / "m.onnx")
    push(model, f"oci://{reg.host}/m:v1")
    first = tmp_path / "first"
    rc, res, err = pull(f"oci://{reg.host}/m:v1", first)
    assert rc == 0, (res, err)
    folder = first / "current"
    client = oras_client(reg)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        files = ["model.onnx:application/vnd.weightcast.graph.v1+onnx"] + [f"tensors/{p.name}" for p in
                                                                             (folder / "tensors").iterdir()]
        client.push(target=f"{reg.host}/m:by-oras", files=files, manifest_config=f"manifest.pb:{CONFIG_TYPE}")
        client.push(target=f"{reg.host}/m:bare", files=["model.onnx"])
    finally:
        os.chdir(cwd)
    rc, res2, err = pull(f"oci://{reg.host}/m:by-oras", tmp_path / "second", "--check", "ort")
    assert rc == 0 and res2["version"] == res["version"], (res2, err)
    rc, res3, err = pull(f"oci://{reg.host}/m:bare", tmp_path / "third")
    assert rc == 1 and "weightcast push" in res3["error"], res3


def test_a_tampered_blob_is_refused_and_the_current_version_kept(registry, tmp_path):
    reg = registry()
    push(small_model(tmp_path / "a.onnx", 0), f"oci://{reg.host}/m:prod")
    dest = tmp_path / "device"
    rc, res, err = pull(f"oci://{reg.host}/m:prod", dest)
    assert rc == 0, (res, err)
    kept = res["version"]
    push(small_model(tmp_path / "b.onnx", 1), f"oci://{reg.host}/m:prod")
    w = expected(tmp_path / "b.onnx")["w"]["data"]
    blob = reg.blob_file("sha256:" + hashlib.sha256(w).hexdigest())
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    rc, res, err = pull(f"oci://{reg.host}/m:prod", dest)
    assert rc == 1 and "sha256" in res["error"], res
    assert (dest / "current").resolve().name == kept


def test_signed_pushes_are_trusted_and_others_refused(registry, tmp_path):
    reg = registry()
    for k in ("pub1", "other"):
        assert wc("keygen", tmp_path / k)[0] == 0
    model = small_model(tmp_path / "m.onnx")
    push(model, f"oci://{reg.host}/m:signed", "--signing-key", tmp_path / "pub1.key")
    push(model, f"oci://{reg.host}/m:unsigned")
    rc, res, err = pull(f"oci://{reg.host}/m:signed", tmp_path / "d1", "--trust", tmp_path / "pub1.pub")
    assert rc == 0 and res["status"] == "updated", (res, err)
    rc, res, err = pull(f"oci://{reg.host}/m:signed", tmp_path / "d2", "--trust", tmp_path / "other.pub")
    assert rc == 1 and "refused" in res["error"], res
    rc, res, err = pull(f"oci://{reg.host}/m:unsigned", tmp_path / "d3", "--trust", tmp_path / "pub1.pub")
    assert rc == 1 and "refused" in res["error"], res


def test_a_blob_cut_mid_way_is_resumed_with_range(registry, tmp_path):
    reg = registry()
    big = numpy_helper.from_array(np.random.default_rng(3).standard_normal(2_300_000).astype(np.float32), "big")
    m = onnx.helper.make_model(onnx.helper.make_graph([], "big", [], [], [big]),
                               opset_imports=[onnx.helper.make_opsetid("", 21)])
    m.ir_version = 11
    onnx.save(m, str(tmp_path / "big.onnx"))
    push(tmp_path / "big.onnx", f"oci://{reg.host}/big:v1")
    proxy = Proxy(reg.port)
    url = f"oci://127.0.0.1:{proxy.port}/big:v1"
    digest = "sha256:" + hashlib.sha256(numpy_helper.to_array(big).tobytes()).hexdigest()
    proxy.fault(f"/blobs/{digest}", "cut", 4_000_000)
    dest = tmp_path / "device"
    rc, res, err = pull(url, dest)
    assert rc == 1 and "cut short" in res["error"], res
    (partial,) = list((dest / ".partial").rglob("*.raw"))
    have = partial.stat().st_size
    assert 3_000_000 < have <= 4_000_000
    proxy.reset()
    rc, res, err = pull(url, dest)
    assert rc == 0 and res["status"] == "updated", (res, err)
    (head,) = proxy.heads(f"/blobs/{digest}")
    assert f"range: bytes={have}-" in head.lower(), head
    assert proxy.bytes_for(f"/blobs/{digest}") < 9_200_000 - 3_000_000
    got = load_pulled(dest / "current" / "model.onnx")
    assert np.array_equal(numpy_helper.to_array(got.graph.initializer[0]), numpy_helper.to_array(big))


def test_a_registry_over_tls_is_verified(tmp_path):
    from test_tls import ca, leaf

    ca_key, ca_cert, ca_path = ca(tmp_path, "registry-ca")
    _, _, other_ca = ca(tmp_path, "other-ca")
    leaf(tmp_path, ca_key, ca_cert, 7)
    reg = Registry(tmp_path, tls=(tmp_path / "cert.pem", tmp_path / "key.pem"))
    try:
        model = small_model(tmp_path / "m.onnx")
        target = f"oci://{reg.host}/secure/m:v1"
        push(model, target, "--ca", ca_path, plain=False)
        rc, res, err = pull(target, tmp_path / "device", "--ca", ca_path, plain=False)
        assert rc == 0 and res["status"] == "updated", (res, err)
        rc, _, err = wc("push", model, target, "--ca", other_ca)
        assert rc == 1 and "TLS" in err, err
        rc, res, err = pull(target, tmp_path / "other", "--ca", other_ca, plain=False)
        assert rc == 1 and "TLS" in res["error"], res
        rc, res, err = pull(target, tmp_path / "system", plain=False)
        assert rc == 1 and "TLS" in res["error"], res
    finally:
        reg.stop()


def test_blob_reads_follow_a_redirect_to_storage(registry, tmp_path):
    """Registries on object storage answer blob GETs with a redirect to a
    signed URL on another origin; the device follows it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    reg = registry()
    push(small_model(tmp_path / "m.onnx"), f"oci://{reg.host}/m:v1")
    redirected = []

    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            if "/blobs/sha256:" in self.path:
                redirected.append(self.path)
                self.send_response(307)
                self.send_header("Location", f"http://localhost:{reg.port}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            r = requests.get(reg.url + self.path, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            self.send_response(r.status_code)
            for k in ("Content-Type", "Docker-Content-Digest", "ETag"):
                if k in r.headers:
                    self.send_header(k, r.headers[k])
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

    front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    try:
        rc, res, err = pull(f"oci://127.0.0.1:{front.server_address[1]}/m:v1", tmp_path / "device")
        assert rc == 0 and res["status"] == "updated", (res, err)
        assert len(redirected) >= 2, redirected  # config, graph and the tensor
    finally:
        front.shutdown()


@pytest.mark.parametrize("attack", ["huge-manifest", "endless-config", "redirect-loop", "silent"])
def test_a_hostile_registry_gets_a_clear_error_in_bounded_time_and_memory(tmp_path, attack):
    """A registry (or something posing as one) that answers too much, for
    ever, in circles, or never: the round fails with a message, within its
    deadline, having read no more than it expected; nothing is installed."""
    import threading
    import time as _time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    config = b"x" * 100
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": CONFIG_TYPE, "size": len(config),
                                      "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
                           "layers": []}).encode()

    class Hostile(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            if attack == "silent":
                _time.sleep(30)
                return
            if "/manifests/" in self.path:
                body = b" " * (5 << 20) + manifest if attack == "huge-manifest" else manifest
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif attack == "redirect-loop":
                self.send_response(307)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:  # endless-config: chunked, never ending
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for _ in range(100_000):
                        self.wfile.write(b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
                except OSError:
                    pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from test_pull_contract import peak_pull

        started = _time.monotonic()
        rc, res, peak_kib = peak_pull(f"oci://127.0.0.1:{server.server_address[1]}/m:v1", tmp_path / "d",
                                      "--plain-http", timeout="3s")
        took = _time.monotonic() - started
        want = {"huge-manifest": "larger than", "endless-config": "larger than", "redirect-loop": "redirects",
                "silent": "no answer within"}[attack]
        assert rc == 1 and want in res["error"], res
        assert took < 10, took
        assert peak_kib < 64 * 1024, f"{peak_kib} KiB: the body was not read past its limit"
        assert not (tmp_path / "d" / "current").exists()
    finally:
        server.shutdown()
