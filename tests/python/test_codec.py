"""The bytegroup codec (?codec=bytegroup): protobuf records declare it, the
5-line numpy decoder of proto/README.md undoes it bit for bit, and it makes
zstd smaller on float weights."""

import numpy as np
import pytest

from conftest import unzstd
from test_reference import MODELS, model_name, want


FLOATS = {1, 10, 11, 14, 15, 16}  # FLOAT, FLOAT16, DOUBLE, COMPLEX64/128, BFLOAT16


def undo_bytegroup(data: bytes, k: int, dtype: int) -> bytes:
    """The decoder as proto/README.md gives it."""
    u = np.frombuffer(data, np.uint8).reshape(k, -1).T.copy().view(f"<u{k}").ravel()
    if dtype in FLOATS:
        u = (u >> 1) | (u << (8 * k - 1))
    return u.tobytes()


@pytest.mark.parametrize("model", MODELS + ["trained.onnx"])
@pytest.mark.parametrize("dtype", ["native", "f16"])
def test_bytegroup_round_trips(zoo, zoo_server, pb2, model, dtype):
    q = "codec=bytegroup" + ("" if dtype == "native" else f"&dtype={dtype}")
    r, body = zoo_server.raw(f"/v1/models/{model_name(model)}/weights?{q}", {"Accept-Encoding": "zstd"})
    assert r.status_code == 200
    exp = want(zoo, model, dtype)
    grouped = 0
    multi_byte = {1: 4, 10: 2, 11: 8, 14: 4, 15: 8, 16: 2, 4: 2, 5: 2, 6: 4, 7: 8, 12: 4, 13: 8}
    for t in pb2.Bundle.FromString(unzstd(body)).tensors:
        e = exp[t.name]
        # The rule of proto/README.md: multi-byte dtypes of at least 64 KiB.
        assert bool(t.codec) == (t.dtype in multi_byte and t.total_bytes >= 65536), (t.name, t.total_bytes)
        if t.codec:
            assert t.codec == "bytegroup" and t.element_size > 1
            assert undo_bytegroup(t.data, t.element_size, t.dtype) == e["data"], t.name
            grouped += 1
        else:
            assert t.element_size == 0
            assert (list(t.strings) if isinstance(e["data"], list) else t.data) == e["data"], t.name
    if model == "trained.onnx":
        assert grouped == 2


def test_bytegroup_beats_plain_zstd_on_float_weights(zoo_server):
    sizes = {}
    for q in ["", "?codec=bytegroup"]:
        r, body = zoo_server.raw(f"/v1/models/trained/weights{q}", {"Accept-Encoding": "zstd"})
        sizes[q] = len(body)
    print(f"trained float32 weights, zstd: plain {sizes['']} bytes, bytegroup {sizes['?codec=bytegroup']} bytes")
    assert sizes["?codec=bytegroup"] <= 0.9 * sizes[""], sizes


def test_bytegroup_is_protobuf_only_and_has_its_own_etag(zoo_server):
    r = zoo_server.get("/v1/models/mlp/weights?codec=bytegroup&format=npz")
    assert r.status_code == 400 and "protobuf" in r.json()["detail"]
    assert zoo_server.get("/v1/models/mlp/weights?codec=zip").status_code == 400
    a = zoo_server.get("/v1/models/mlp/weights").headers["ETag"]
    b = zoo_server.get("/v1/models/mlp/weights?codec=bytegroup").headers["ETag"]
    assert a != b
