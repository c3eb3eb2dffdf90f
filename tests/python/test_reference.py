"""What weightcast serves equals, bit for bit, what the `onnx` package reads
from the same file (numpy_helper.to_array), for every dtype and storage form,
in protobuf and JSON, with and without zstd, as stored and cast to f16/bf16."""

import base64
import hashlib
from urllib.parse import quote

import onnx
import pytest
from onnx import TensorProto

from conftest import unzstd
from reference import cast_reference, castable, expected, version

MODELS = ["raw_all.onnx", "typed_all.onnx", "external/external.onnx", "edge.onnx", "names.onnx"]


def want(zoo, model, dtype):
    """Expected tensors of a model in a representation: name -> dict."""
    out = {}
    for name, e in expected(zoo / model).items():
        e = dict(e, source=None, overflowed=0)
        if dtype != "native" and castable(e["dtype"], dtype):
            e["data"], e["overflowed"] = cast_reference(e["data"], e["dtype"], dtype)
            e["source"] = e["dtype"]
            e["dtype"] = TensorProto.FLOAT16 if dtype == "f16" else TensorProto.BFLOAT16
        out[name] = e
    return out


def digest(data):
    if isinstance(data, list):  # STRING: u64 LE length + bytes per element
        h = hashlib.sha256()
        for s in data:
            h.update(len(s).to_bytes(8, "little") + s)
        return h.hexdigest()
    return hashlib.sha256(data).hexdigest()


def query(dtype, extra=""):
    q = [] if dtype == "native" else [f"dtype={dtype}"]
    if extra:
        q.append(extra)
    return ("?" + "&".join(q)) if q else ""


def model_name(model):
    return model.split("/")[-1].removesuffix(".onnx")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["native", "f16", "bf16"])
def test_manifest_matches_reference(zoo, zoo_server, model, dtype):
    r = zoo_server.get(f"/v1/models/{model_name(model)}{query(dtype, 'format=json')}")
    assert r.status_code == 200, r.text
    m = r.json()
    exp = want(zoo, model, dtype)
    assert [t["name"] for t in m["tensors"]] == list(exp), "every tensor, in model order"
    for t in m["tensors"]:
        e = exp[t["name"]]
        assert t["dtype"] == TensorProto.DataType.Name(e["dtype"])
        assert t["dims"] == e["dims"]
        assert t["sha256"] == digest(e["data"]), t["name"]
        assert t["constant"] == e["constant"]
        if e["source"] is not None:
            assert t["source_dtype"] == TensorProto.DataType.Name(e["source"])
            assert t["overflowed"] == e["overflowed"], t["name"]
        if not isinstance(e["data"], list):
            assert t["nbytes"] == len(e["data"])
    graph = zoo_server.get(f"/v1/models/{model_name(model)}/graph").content
    assert m["graph_sha256"] == hashlib.sha256(graph).hexdigest() and m["graph_bytes"] == len(graph)
    assert m["version"] == version(m), "documented version formula"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["native", "f16", "bf16"])
@pytest.mark.parametrize("encoding", ["identity", "zstd"])
def test_protobuf_bundle_matches_reference(zoo, zoo_server, pb2, model, dtype, encoding):
    headers = {"Accept-Encoding": "zstd"} if encoding == "zstd" else {"Accept-Encoding": "identity"}
    r, body = zoo_server.raw(f"/v1/models/{model_name(model)}/weights{query(dtype)}", headers)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-protobuf"
    if encoding == "zstd":
        assert r.headers["Content-Encoding"] == "zstd"
        body = unzstd(body)
    else:
        assert "Content-Encoding" not in r.headers
    bundle = pb2.Bundle.FromString(body)
    exp = want(zoo, model, dtype)
    assert [t.name for t in bundle.tensors] == list(exp)
    for t in bundle.tensors:
        e = exp[t.name]
        assert t.dtype == e["dtype"] and list(t.dims) == e["dims"], t.name
        if isinstance(e["data"], list):
            assert list(t.strings) == e["data"] and t.data == b""
        else:
            assert t.data == e["data"], t.name
            assert t.total_bytes == len(e["data"]) and t.offset == 0
        assert t.source_dtype == (e["source"] or 0)


@pytest.mark.parametrize("model", MODELS)
def test_each_tensor_route_matches_reference(zoo, zoo_server, pb2, model):
    for name, e in want(zoo, model, "native").items():
        r = zoo_server.get(f"/v1/models/{model_name(model)}/tensors/{quote(name, safe='')}")
        assert r.status_code == 200, (name, r.text)
        (t,) = pb2.Bundle.FromString(r.content).tensors
        assert t.name == name
        assert (list(t.strings) if isinstance(e["data"], list) else t.data) == e["data"], name


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", ["native", "f16"])
def test_json_bundle_matches_reference(zoo, zoo_server, model, dtype):
    r = zoo_server.get(f"/v1/models/{model_name(model)}/weights{query(dtype, 'format=json')}",
                       headers={"Accept-Encoding": "zstd"})  # requests decodes zstd itself
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.headers["Content-Encoding"] == "zstd"
    doc = r.json()
    exp = want(zoo, model, dtype)
    assert [t["name"] for t in doc["tensors"]] == list(exp)
    for t in doc["tensors"]:
        e = exp[t["name"]]
        if isinstance(e["data"], list):
            assert [base64.b64decode(s) for s in t["strings_b64"]] == e["data"]
        else:
            assert base64.b64decode(t["data_b64"]) == e["data"], t["name"]
        assert t["sha256"] == digest(e["data"])


def test_subset_by_names(zoo, zoo_server, pb2):
    r = zoo_server.get("/v1/models/names/weights?names=" + quote("ünï,100%", safe=",") + "&names=layer%2F0%2Fweight")
    assert r.status_code == 200
    got = [t.name for t in pb2.Bundle.FromString(r.content).tensors]
    assert got == ["layer/0/weight", "100%", "ünï"], "model order, each once"


def test_reference_sees_every_dtype(zoo):
    """Guards the zoo itself: every ONNX dtype is present, raw and typed."""
    for model, prefix in [("raw_all.onnx", "raw."), ("typed_all.onnx", "typed.")]:
        got = {e["dtype"] for e in expected(zoo / model).values()}
        assert got == {v for k, v in TensorProto.DataType.items() if k != "UNDEFINED"}
        storage = onnx.load(str(zoo / model))
        assert all(t.name.startswith(prefix) for t in storage.graph.initializer)
