"""Signed manifests (issue #13, part 3): `weightcast keygen`, a hub that signs
every manifest, and `pull --trust` refusing what a trusted key did not sign,
what is older than the version held (rollback), what has expired (freeze),
and what is unsigned — keeping the current version each time. Signatures are
checked independently here with `cryptography`'s Ed25519 and the canonical
bytes of proto/README.md, and forged with it."""

import os
import stat
import struct
import subprocess
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conftest import binary
from reference import version
from test_pull_contract import HostileHub, named_model, pull


def signed_bytes(model, version_, published, expires):
    """proto/README.md, "Signed manifests"."""
    out = b"weightcast.v1 manifest signature\0"
    for field in (model, version_):
        out += struct.pack("<I", len(field.encode())) + field.encode()
    return out + struct.pack("<QQ", published, expires)


def keygen(prefix):
    r = subprocess.run([str(binary()), "keygen", str(prefix)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return f"{prefix}.key", f"{prefix}.pub"


def hub(serve, tmp_path, key=None, name="m", seed=0):
    path = tmp_path / f"{name}.onnx"
    if not path.exists():
        named_model(path, ["w1", "w2"], n=4096)
    cfg = tmp_path / f"{name}-{os.path.basename(key or 'unsigned')}.toml"
    cfg.write_text((f'signing_key = "{key}"\n' if key else "") + f'[[models]]\nname = "{name}"\npath = "{path}"\n')
    return serve("--runtime", "none", "--config", cfg)


def republish(path, k):
    """Replaces the model by one whose tensors all change."""
    named_model(path.with_suffix(".new"), ["w1", "w2"], n=4096)
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path.with_suffix(".new")))
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + k, t.name))
    onnx.save(m, str(path.with_suffix(".new")))
    os.replace(path.with_suffix(".new"), path)


def wait_version_change(s, name, old):
    for _ in range(100):
        v = s.get(f"/v1/models/{name}?format=json").json()["version"]
        if v != old:
            return v
        time.sleep(0.1)
    raise AssertionError("not republished")


def test_keygen_writes_a_private_key_and_never_overwrites_it(tmp_path):
    secret, public = keygen(tmp_path / "hub")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert len(open(public).read().strip()) == 64
    r = subprocess.run([str(binary()), "keygen", str(tmp_path / "hub")], capture_output=True, text=True)
    assert r.returncode == 1 and "not overwritten" in r.stderr


def test_a_signed_hub_passes_and_its_signature_verifies_independently(serve, tmp_path):
    secret, public = keygen(tmp_path / "hub")
    s = hub(serve, tmp_path, secret)
    m = s.get("/v1/models/m?format=json").json()
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(open(public).read().strip()))
    assert m["signing_key"] == open(public).read().strip()
    key.verify(bytes.fromhex(m["signature"]), signed_bytes(m["model"], m["version"], m["published_at_ms"], m["expires_at_ms"]))
    now = time.time() * 1000
    assert m["published_at_ms"] <= now < m["expires_at_ms"] and m["expires_at_ms"] - now > 84 * 3600e3, "half of 168 h left at least"
    rc, out, err = pull(f"{s.url}/v1/models/m", tmp_path / "device", "--trust", public)
    assert rc == 0 and out["status"] == "updated", (out, err)
    # An unchanged version afterwards is current, and the hex form of the key works too.
    rc, out, err = pull(f"{s.url}/v1/models/m", tmp_path / "device", "--trust", open(public).read().strip())
    assert rc == 0 and out["status"] == "current", (out, err)


def forge(pb2, body, private=None, **fields):
    """The protobuf manifest `body` with `fields` changed, signed again by
    `private` (an Ed25519PrivateKey) if given."""
    m = pb2.Manifest.FromString(body)
    for k, v in fields.items():
        setattr(m, k, v)
    if private is not None:
        m.signing_key = private.public_key().public_bytes_raw()
        m.signature = private.sign(signed_bytes(m.model, m.version, m.published_at_ms, m.expires_at_ms))
    return m.SerializeToString()


def private_key(path):
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(open(path).read().strip()))


@pytest.mark.parametrize("case", ["unsigned", "unknown-key", "altered", "digest", "expired", "older"])
def test_untrusted_manifests_are_refused_and_the_current_version_kept(serve, tmp_path, pb2, case):
    secret, public = keygen(tmp_path / "hub")
    other, _ = keygen(tmp_path / "other")
    s = hub(serve, tmp_path, secret)
    dest = tmp_path / "device"
    rc, first, err = pull(f"{s.url}/v1/models/m", dest, "--trust", public)
    assert rc == 0, (first, err)
    held = first["version"]
    republish(tmp_path / "m.onnx", 1)
    wait_version_change(s, "m", held)
    evil = HostileHub(s.url)
    now = int(time.time() * 1000)
    if case == "unsigned":
        evil.override["/v1/models/m"] = lambda st, h, b: (st, h, forge(pb2, b, signature=b"", signing_key=b""))
        want = "not signed"
    elif case == "unknown-key":
        evil.override["/v1/models/m"] = lambda st, h, b: (st, h, forge(pb2, b, private_key(other)))
        want = "not among the trusted keys"
    elif case == "altered":
        # Only the expiry pushed out, keeping the hub's signature: the signed bytes changed.
        evil.override["/v1/models/m"] = lambda st, h, b: (st, h, forge(pb2, b, expires_at_ms=now + 10**9))
        want = "does not verify"
    elif case == "digest":
        # One tensor digest altered, nothing else: the version no longer matches.
        def one_digest(st, h, b):
            m = pb2.Manifest.FromString(b)
            m.tensors[0].sha256 = "00" * 32
            return st, h, m.SerializeToString()
        evil.override["/v1/models/m"] = one_digest
        want = "version"
    elif case == "expired":
        # Signed by the trusted key itself (as a frozen mirror would hold it), but expired.
        evil.override["/v1/models/m"] = lambda st, h, b: (st, h, forge(pb2, b, private_key(secret), expires_at_ms=now - 1))
        want = "expired"
    else:
        # A correctly signed manifest published before the version held: a replay.
        evil.override["/v1/models/m"] = lambda st, h, b: (
            st, h, forge(pb2, b, private_key(secret), published_at_ms=first_published(dest) - 1))
        want = "rollback"
    rc, out, err = pull(f"{evil.url}/v1/models/m", dest, "--trust", public)
    assert rc == 1 and want in out["error"] and "current version is kept" in out["error"], (out, err)
    assert os.readlink(dest / "current").endswith(held), "the device keeps the version it had"
    evil.server.shutdown()


def first_published(dest):
    import json
    return json.loads((dest / "state.json").read_text())["published_at_ms"]


def test_a_man_in_the_middle_rewriting_a_tensor_and_its_digest_is_refused(serve, tmp_path, pb2):
    """The proxy changes a tensor's bytes, its digest and the version (a
    consistent forgery of everything but the signature)."""
    secret, public = keygen(tmp_path / "hub")
    s = hub(serve, tmp_path, secret)
    mitm = HostileHub(s.url)

    def manifest(st, h, body):
        m = pb2.Manifest.FromString(body)
        import hashlib
        bad = (np.arange(4096, dtype=np.float32) + 100).tobytes()
        m.tensors[0].sha256 = hashlib.sha256(bad).hexdigest()
        from onnx import TensorProto
        m.version = version({"graph_sha256": m.graph_sha256, "tensors": [
            {"name": t.name, "dtype": TensorProto.DataType.Name(t.dtype), "dims": list(t.dims), "sha256": t.sha256}
            for t in m.tensors]})
        return st, h, m.SerializeToString()
    mitm.override["/v1/models/m"] = manifest
    rc, out, err = pull(f"{mitm.url}/v1/models/m", tmp_path / "device", "--trust", public)
    assert rc == 1 and "does not verify" in out["error"], (out, err)
    assert not (tmp_path / "device" / "current").exists()
    mitm.server.shutdown()


def test_key_rotation_keeps_devices_updating(serve, tmp_path):
    old, old_pub = keygen(tmp_path / "old")
    new, new_pub = keygen(tmp_path / "new")
    dest = tmp_path / "device"
    s = hub(serve, tmp_path, old)
    rc, out, err = pull(f"{s.url}/v1/models/m", dest, "--trust", old_pub, "--trust", new_pub)
    assert rc == 0 and out["status"] == "updated", (out, err)
    first = out["version"]
    s.stop()
    republish(tmp_path / "m.onnx", 2)
    s2 = hub(serve, tmp_path, new)  # the hub now signs with the new key
    rc, out, err = pull(f"{s2.url}/v1/models/m", dest, "--trust", old_pub, "--trust", new_pub)
    assert rc == 0 and out["status"] == "updated" and out["version"] != first, (out, err)
    # A device that trusts only the old key refuses the new signatures.
    rc, out, err = pull(f"{s2.url}/v1/models/m", tmp_path / "stale", "--trust", old_pub)
    assert rc == 1 and "not among the trusted keys" in out["error"]


def test_a_304_after_the_held_signature_expired_is_a_freeze(serve, tmp_path):
    """A hub (or mirror) that keeps answering 304 past the expiry of the
    signature the device holds: refused, so monitoring sees the freeze."""
    import json
    secret, public = keygen(tmp_path / "hub")
    s = hub(serve, tmp_path, secret)
    dest = tmp_path / "device"
    assert pull(f"{s.url}/v1/models/m", dest, "--trust", public)[0] == 0
    state = json.loads((dest / "state.json").read_text())
    state["expires_at_ms"] = int(time.time() * 1000) - 1  # as if the hub had stopped re-signing long ago
    (dest / "state.json").write_text(json.dumps(state))
    rc, out, err = pull(f"{s.url}/v1/models/m", dest, "--trust", public)
    assert rc == 1 and "expired" in out["error"], (out, err)


def token_hub(serve, tmp_path, tokens):
    for name in ("a", "b"):
        named_model(tmp_path / f"{name}.onnx", ["w1"], n=64)
    (tmp_path / "tokens").write_text(tokens)
    cfg = tmp_path / "tokens.toml"
    cfg.write_text(f'tokens_file = "tokens"\n[[models]]\npath = "a.onnx"\n[[models]]\npath = "b.onnx"\n')
    return serve("--runtime", "none", "--config", cfg)


def test_tokens_401_403_and_open_probes(serve, tmp_path):
    """Issue #13, part 1: missing, wrong and other-model tokens; health and
    readiness stay open; the listing shows what a token may read; tokens
    never reach the log; a changed file applies without a restart."""
    import requests
    everyone, only_a = "reader-all-0123456789abcdef", "reader-a-0123456789abcdef"
    s = token_hub(serve, tmp_path, f"# test\n{everyone} *\n{only_a} a\n")
    auth = lambda t: {"Authorization": f"Bearer {t}"}
    assert s.get("/healthz").status_code == 200 and s.get("/readyz").status_code == 200
    for path in ["/v1/models", "/v1/models/a", "/v1/models/a/weights", "/v1/models/a/tensors/w1", "/metrics"]:
        r = s.get(path)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="weightcast"', path
        assert r.json()["error"] == "unauthorized"
        r = s.get(path, headers=auth("wrong-token-0123456789abcdef"))
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"], path
        assert s.get(path, headers=auth(everyone)).status_code == 200, path
    r = s.get("/v1/models/b/weights", headers=auth(only_a))
    assert r.status_code == 403 and r.json()["detail"] == "this token may not read model 'b'"
    assert s.get("/v1/models/a/weights", headers=auth(only_a)).status_code == 200
    names = [m["name"] for m in s.get("/v1/models?format=json", headers=auth(only_a)).json()["models"]]
    assert names == ["a"], "a token lists the models it may read"
    # pull sends its token from a file.
    (tmp_path / "device-token").write_text(only_a + "\n")
    rc, out, err = pull(f"{s.url}/v1/models/a", tmp_path / "device", "--token-file", str(tmp_path / "device-token"))
    assert rc == 0, (out, err)
    rc, out, err = pull(f"{s.url}/v1/models/b", tmp_path / "device-b", "--token-file", str(tmp_path / "device-token"))
    assert rc == 1 and "403" in out["error"], (out, err)
    # Revoking: the file changes, the next requests see it.
    (tmp_path / "tokens").write_text(f"{everyone} b\n")
    time.sleep(1.2)
    assert s.get("/v1/models/a", headers=auth(only_a)).status_code == 401
    assert s.get("/v1/models/a", headers=auth(everyone)).status_code == 403
    logs = s.logs()
    assert everyone not in logs and only_a not in logs, "tokens never reach the log"


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_a_device_verifies_what_it_holds_offline(serve, tmp_path, fmt):
    secret, public = keygen(tmp_path / "hub")
    other, other_pub = keygen(tmp_path / "other")
    s = hub(serve, tmp_path, secret)
    dest = tmp_path / "device"
    assert pull(f"{s.url}/v1/models/m", dest, "--trust", public, "--format", fmt)[0] == 0
    s.stop()  # offline from here
    run = lambda *a: subprocess.run([str(binary()), "verify", "--dest", str(dest), *a], capture_output=True, text=True)
    r = run("--trust", public)
    assert r.returncode == 0 and "verified" in r.stdout and "2 tensors match" in r.stdout, r.stdout + r.stderr
    r = run("--trust", other_pub)
    assert r.returncode == 1 and "its manifest is not trusted" in r.stderr and "not among the trusted keys" in r.stderr
    # verify reads what the device holds: no hub, nothing "kept" (#15's note).
    assert "hub's" not in r.stderr and "kept" not in r.stderr, r.stderr
    manifest = dest / "current" / "manifest.pb"
    held = manifest.read_bytes()
    os.chmod(manifest, 0o644)
    manifest.write_bytes(b"\xff" * 16)
    r = run()
    assert r.returncode == 1 and f"{manifest.resolve()} is unusable: not a weightcast.v1.Manifest" in r.stderr, r.stderr
    manifest.write_bytes(held)
    # One flipped byte in a tensor's file.
    current = dest / "current"
    target = next((current / "tensors").iterdir()) if fmt == "onnx" else current / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 1
    os.chmod(target, 0o644)
    target.write_bytes(bytes(data))
    r = run("--trust", public)
    assert r.returncode == 1 and "not verified" in r.stderr and "sha256" in r.stderr, r.stderr


def test_a_hubs_explanation_reaches_the_device(serve, tmp_path):
    """Issue #15's papercut: `pull` of an unknown model says what the hub said."""
    s = hub(serve, tmp_path)
    rc, out, err = pull(f"{s.url}/v1/models/nope", tmp_path / "device")
    assert rc == 1 and "answered 404: unknown model: no model 'nope'" in out["error"], out
