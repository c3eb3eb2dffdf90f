"""Every format a weights consumer already uses, decoded by that ecosystem's
own library (numpy.load, safetensors, json + base64, protobuf generated from
our .proto), compared bit for bit with onnx.numpy_helper.to_array; and a model
rebuilt from /graph plus the tensors runs in onnxruntime like the original."""

import base64
import io
import subprocess
import json
from urllib.parse import quote, unquote

import numpy as np
import onnxruntime as ort
import pytest
import safetensors
import safetensors.numpy
import onnx
from onnx import TensorProto, numpy_helper

from conftest import unzstd
from test_reference import MODELS, model_name, want

T = TensorProto
NUMPY = {T.FLOAT: "<f4", T.DOUBLE: "<f8", T.FLOAT16: "<f2", T.INT8: "|i1", T.UINT8: "|u1", T.INT16: "<i2",
         T.UINT16: "<u2", T.INT32: "<i4", T.UINT32: "<u4", T.INT64: "<i8", T.UINT64: "<u8", T.BOOL: "|b1",
         T.COMPLEX64: "<c8", T.COMPLEX128: "<c16"}
SAFETENSORS = {T.FLOAT: "F32", T.DOUBLE: "F64", T.FLOAT16: "F16", T.BFLOAT16: "BF16", T.INT8: "I8", T.INT16: "I16",
               T.INT32: "I32", T.INT64: "I64", T.UINT8: "U8", T.UINT16: "U16", T.UINT32: "U32", T.UINT64: "U64",
               T.BOOL: "BOOL", T.COMPLEX64: "C64", T.FLOAT8E4M3FN: "F8_E4M3", T.FLOAT8E5M2: "F8_E5M2",
               T.FLOAT8E4M3FNUZ: "F8_E4M3FNUZ", T.FLOAT8E5M2FNUZ: "F8_E5M2FNUZ", T.FLOAT8E8M0: "F8_E8M0"}
EXPRESSIBLE = {"npz": NUMPY, "safetensors": SAFETENSORS, "json": None, "protobuf": None}


def fetch(server, path, encoding):
    headers = {"Accept-Encoding": "zstd" if encoding == "zstd" else "identity"}
    r, body = server.raw(path, headers)
    assert r.status_code == 200, r.content if hasattr(r, "content") else body
    if encoding == "zstd":
        assert r.headers["Content-Encoding"] == "zstd"
        body = unzstd(body)
    return r, body


def decode_npz(body):
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        return {unquote(k): z[k] for k in z.files}


def decode_safetensors(body):
    raw = {name: (v["dtype"], v["shape"], bytes(v["data"])) for name, v in safetensors.deserialize(body)}
    if all(dt in ("F32", "F64", "F16", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL", "C64")
           for dt, _, _ in raw.values()):
        arrays = safetensors.numpy.load(body)  # the numpy front end agrees where numpy has the dtype
        for name, a in arrays.items():
            assert a.tobytes() == raw[name][2]
    return raw


def decode_json(body, pb2=None):
    doc = json.loads(body)
    return {t["name"]: t for t in doc["tensors"]}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fmt", ["npz", "npz-deflate", "safetensors", "json", "protobuf"])
@pytest.mark.parametrize("encoding", ["identity", "zstd"])
@pytest.mark.parametrize("dtype", ["native", "f16", "bf16"])
def test_format_matrix(zoo, zoo_server, pb2, model, fmt, encoding, dtype):
    exp = want(zoo, model, dtype)
    base = fmt.split("-")[0]
    allowed = EXPRESSIBLE[base]
    names = [n for n, e in exp.items() if allowed is None or e["dtype"] in allowed]
    query = [f"format={base}"] + ([] if dtype == "native" else [f"dtype={dtype}"])
    if fmt == "npz-deflate":
        query.append("compress=1")
    path = f"/v1/models/{model_name(model)}/weights"
    if len(names) < len(exp):
        # The whole model cannot be written in this format: a clear 422 ...
        r = zoo_server.get(path + "?" + "&".join(query))
        assert r.status_code == 422 and "cannot express" in r.json()["detail"], r.text
        if not names:
            return
        # ... and the expressible tensors can, by name.
        query.append("names=" + ",".join(quote(n, safe="") for n in names))
    r, body = fetch(zoo_server, path + "?" + "&".join(query), encoding)
    if base == "npz":
        arrays = decode_npz(body)
        assert list(arrays) == names
        for n, a in arrays.items():
            e = exp[n]
            assert a.dtype.str == NUMPY[e["dtype"]] and list(a.shape) == e["dims"], n
            assert a.tobytes() == e["data"], n
    elif base == "safetensors":
        raw = decode_safetensors(body)
        assert sorted(raw) == sorted(names)
        for n, (dt, shape, data) in raw.items():
            e = exp[n]
            assert dt == SAFETENSORS[e["dtype"]] and shape == e["dims"] and data == e["data"], n
    elif base == "json":
        doc = decode_json(body)
        for n in names:
            e, t = exp[n], doc[n]
            got = [base64.b64decode(s) for s in t["strings_b64"]] if isinstance(e["data"], list) else base64.b64decode(t["data_b64"])
            assert got == e["data"] and t["dims"] == e["dims"], n
    else:
        bundle = pb2.Bundle.FromString(body)
        assert [t.name for t in bundle.tensors] == names
        for t in bundle.tensors:
            e = exp[t.name]
            assert (list(t.strings) if isinstance(e["data"], list) else t.data) == e["data"], t.name


@pytest.mark.parametrize("model", MODELS)
def test_npy_per_tensor(zoo, zoo_server, model):
    for n, e in want(zoo, model, "native").items():
        r = zoo_server.get(f"/v1/models/{model_name(model)}/tensors/{quote(n, safe='')}?format=npy")
        if e["dtype"] not in NUMPY:
            assert r.status_code == 422, n
            continue
        assert r.headers["Content-Type"] == "application/x-npy"
        a = np.load(io.BytesIO(r.content), allow_pickle=False)
        assert a.dtype.str == NUMPY[e["dtype"]] and list(a.shape) == e["dims"] and a.tobytes() == e["data"], n


def test_npy_is_for_one_tensor(zoo_server):
    r = zoo_server.get("/v1/models/names/weights?format=npy")
    assert r.status_code == 406 and "npz" in r.json()["detail"]


def test_safetensors_metadata(zoo_server, tmp_path):
    from safetensors import safe_open

    r = zoo_server.get("/v1/models/names/weights?format=safetensors")
    p = tmp_path / "m.safetensors"
    p.write_bytes(r.content)
    with safe_open(str(p), framework="np") as f:
        meta = f.metadata()
        assert meta["model"] == "names" and meta["version"] == r.headers["X-Weightcast-Version"]
        assert np.array_equal(f.get_tensor("layer/0/weight"), np.arange(1, dtype=np.float32))


def test_accept_headers_pick_formats(zoo_server):
    for media in ["application/x-npz", "application/x-safetensors", "application/json", "application/x-protobuf"]:
        r = zoo_server.get("/v1/models/names/weights", headers={"Accept": media})
        assert r.status_code == 200 and r.headers["Content-Type"] == media
    r = zoo_server.get("/v1/models/names/tensors/a%3Ab.c", headers={"Accept": "application/x-npy"})
    assert r.headers["Content-Type"] == "application/x-npy"
    r = zoo_server.get("/v1/models/names", headers={"Accept": "application/x-npz"})
    assert r.status_code == 406, "manifests are protobuf or JSON only"


def test_formats_honour_etag_and_head(zoo_server):
    tags = set()
    for q in ["format=npz", "format=npz&compress=1", "format=safetensors", "format=npz&dtype=f16"]:
        url = f"/v1/models/names/weights?{q}"
        r = zoo_server.get(url, headers={"Accept-Encoding": "identity"})
        tags.add(r.headers["ETag"])
        assert zoo_server.get(url, headers={"If-None-Match": r.headers["ETag"], "Accept-Encoding": "identity"}).status_code == 304
        import requests

        h = requests.head(zoo_server.url + url, headers={"Accept-Encoding": "identity"}, timeout=10)
        assert h.status_code == 200 and h.headers["ETag"] == r.headers["ETag"]
        if "compress" not in q:
            assert int(h.headers["Content-Length"]) == len(r.content)
    assert len(tags) == 4


def rebuild_and_run(server, name, tmp_path, pb2):
    d = tmp_path / name
    d.mkdir()
    r = server.get(f"/v1/models/{name}/graph")
    assert r.status_code == 200
    (d / "model.onnx").write_bytes(r.content)
    bundle = pb2.Bundle.FromString(server.get(f"/v1/models/{name}/weights", headers={"Accept-Encoding": "identity"}).content)
    import onnx

    g = onnx.load(str(d / "model.onnx"), load_external_data=False)
    locations = {t.name: {e.key: e.value for e in t.external_data}["location"] for t in g.graph.initializer if t.external_data}
    assert locations, "initializers are external"
    by_name = {t.name: t for t in bundle.tensors}
    for tname, loc in locations.items():
        assert loc.startswith("tensors/") and unquote(loc[len("tensors/"):-len(".bin")]) == tname, \
            "location is tensors/ + the tensor's URL-safe name + .bin"
        (d / loc).parent.mkdir(exist_ok=True)
        (d / loc).write_bytes(by_name[tname].data)
    return d / "model.onnx"


@pytest.mark.parametrize("model", ["mlp", "demo"])
def test_graph_plus_tensors_rebuilds_a_runnable_model(zoo, serve, pb2, tmp_path, model):
    import subprocess

    from conftest import binary

    if model == "demo":
        path = tmp_path / "demo.onnx"
        subprocess.run([str(binary()), "demo", str(path)], check=True)
    else:
        path = zoo / "mlp.onnx"
    s = serve("--runtime", "none", path)
    rebuilt = rebuild_and_run(s, model, tmp_path, pb2)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    again = ort.InferenceSession(str(rebuilt), providers=["CPUExecutionProvider"])
    inp = original.get_inputs()[0]
    width = inp.shape[1]
    x = np.random.default_rng(1).standard_normal((3, width)).astype(np.float32)
    a = original.run(None, {inp.name: x})[0]
    b = again.run(None, {inp.name: x})[0]
    assert np.array_equal(a, b)
    assert s.get(f"/v1/models/{model}/graph", headers={"If-None-Match": s.get(f"/v1/models/{model}/graph").headers["ETag"]}).status_code == 304


def test_bfloat16_reaches_numpy_and_safetensors_as_f16_and_every_422_hint_works(serve, tmp_path):
    """The demo model holds a BFLOAT16 tensor: npy/npz/safetensors cannot
    carry bf16 for numpy users; the 422 says what to ask for, and asking for
    it works (BF16 is cast to f16, overflow counted)."""
    import io as _io
    import json as _json
    import re as _re

    import ml_dtypes
    import safetensors.numpy

    from conftest import binary

    demo = tmp_path / "demo.onnx"
    subprocess.run([str(binary()), "demo", str(demo)], check=True)
    s = serve("--runtime", "none", demo)
    for fmt in ("npz", "safetensors"):
        r = s.get(f"/v1/models/demo/weights?format={fmt}")
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        hints = _re.findall(r"\?dtype=(\w+)", detail)
        assert hints == ["f16"], detail
        r = s.get(f"/v1/models/demo/weights?format={fmt}&dtype=f16")
        if r.status_code == 422:  # other dtypes (STRING, …) remain: follow the names= hint too
            assert "names=" in r.json()["detail"], r.text
            m = s.get("/v1/models/demo?format=json&dtype=f16").json()
            ok = [t["name"] for t in m["tensors"] if t["dtype"] in ("FLOAT16", "FLOAT", "DOUBLE", "INT8", "INT16", "INT32",
                                                                   "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")]
            r = s.get(f"/v1/models/demo/weights?format={fmt}&dtype=f16", params={"names": ok})
        assert r.status_code == 200, r.text
        arrays = (dict(np.load(_io.BytesIO(r.content))) if fmt == "npz" else safetensors.numpy.load(r.content))
        got = arrays["embedding.bf16"]
        assert got.dtype == np.float16
        want = numpy_helper.to_array(next(t for t in onnx.load(str(demo)).graph.initializer if t.name == "embedding.bf16"))
        assert np.array_equal(got, np.asarray(want, dtype=ml_dtypes.bfloat16).astype(np.float32).astype(np.float16))
    m = s.get("/v1/models/demo?format=json&dtype=f16").json()
    t = next(t for t in m["tensors"] if t["name"] == "embedding.bf16")
    assert t["dtype"] == "FLOAT16" and t["source_dtype"] == "BFLOAT16" and t["overflowed"] == 0
    assert _json.dumps(t)
