"""Generates the test zoo: models covering every ONNX dtype and every storage
form weightcast reads, plus broken models. Run directly to write them:
    python gen_models.py OUT_DIR
"""

import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 21)]
ALL_TYPES = [v for k, v in TensorProto.DataType.items() if k != "UNDEFINED"]


def values(data_type, shape, seed):
    """Random values of an ONNX type, as the numpy array `from_array` takes."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    np_dtype = helper.tensor_dtype_to_np_dtype(data_type)
    if data_type == TensorProto.STRING:
        return np.array([f"s{k}-é" for k in range(n)], dtype=object).reshape(shape)
    if data_type == TensorProto.BOOL:
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    if data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np_dtype).reshape(shape)
    if data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
        v = rng.standard_normal(n).astype(np_dtype)
        special = [np.nan, np.inf, -np.inf, -0.0, 1e-40, 70000.0, np.finfo(np.float32).max, 65520.0, 1 + 2**-11]
        v[: min(n, len(special))] = special[: min(n, len(special))]
        return v.reshape(shape)
    if np.issubdtype(np_dtype, np.integer) or np_dtype in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2):
        info = ml_dtypes.iinfo(np_dtype) if np_dtype in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2) else np.iinfo(np_dtype)
        if np_dtype == np.uint64:
            return rng.integers(0, 2**63, n, dtype=np.uint64).reshape(shape) * np.uint64(2) + np.uint64(1)
        return rng.integers(int(info.min), int(info.max), n, endpoint=True, dtype=np.int64).astype(np_dtype).reshape(shape)
    if data_type == TensorProto.FLOAT8E8M0:
        return (2.0 ** rng.integers(-10, 10, n)).astype(np.float32).astype(np_dtype).reshape(shape)
    return (rng.standard_normal(n) * 2).astype(np.float32).astype(np_dtype).reshape(shape)


def model(nodes, initializers, name, sparse=(), inputs=(), outputs=()):
    g = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers), sparse_initializer=list(sparse))
    m = helper.make_model(g, opset_imports=OPSET, producer_name="weightcast-tests")
    m.ir_version = 11
    return m


def raw_all(out):
    """One tensor per dtype, as raw_data (from_array), shape [3, 5]: odd
    counts exercise sub-byte padding."""
    inits = [numpy_helper.from_array(values(t, (3, 5), t), f"raw.{TensorProto.DataType.Name(t).lower()}") for t in ALL_TYPES]
    onnx.save(model([], inits, "raw_all"), out / "raw_all.onnx")


def typed_all(out):
    """One tensor per dtype in the typed fields (float_data, int32_data, ...)."""
    inits = []
    for t in ALL_TYPES:
        v = values(t, (3, 5), 100 + t)
        flat = v.reshape(-1)
        if t == TensorProto.STRING:
            vals = [s.encode() for s in flat]
        elif t in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
            vals = flat.tolist()
        else:
            if flat.dtype.kind in "iub":
                vals = flat.tolist()
            elif flat.dtype in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2):
                vals = flat.astype(np.int64).tolist()
            else:
                vals = flat.astype(np.float64).tolist()
        tensor = helper.make_tensor(f"typed.{TensorProto.DataType.Name(t).lower()}", t, [3, 5], vals)
        assert not tensor.raw_data, t
        inits.append(tensor)
    onnx.save(model([], inits, "typed_all"), out / "typed_all.onnx")


def external(out):
    """Tensors in external files with offsets and lengths, one at an odd
    offset, two sharing a file, one a whole file without offset/length."""
    d = out / "external"
    d.mkdir(exist_ok=True)
    a = values(TensorProto.FLOAT, (4, 6), 1)
    b = values(TensorProto.INT64, (7,), 2)
    c = values(TensorProto.FLOAT16, (2, 3), 3)
    blob = b"\x00\x01\x02" + a.tobytes() + b"zz" + b.tobytes()
    (d / "weights.bin").write_bytes(blob)
    (d / "c.bin").write_bytes(c.tobytes())

    def ext(name, t, dims, location, offset=None, length=None):
        tensor = TensorProto(name=name, data_type=t, dims=dims)
        tensor.data_location = TensorProto.EXTERNAL
        entries = {"location": location}
        if offset is not None:
            entries["offset"] = str(offset)
        if length is not None:
            entries["length"] = str(length)
        for k, v in entries.items():
            e = tensor.external_data.add()
            e.key, e.value = k, v
        return tensor

    inits = [
        ext("ext.a", TensorProto.FLOAT, [4, 6], "weights.bin", 3, a.nbytes),
        ext("ext.b", TensorProto.INT64, [7], "weights.bin", 3 + a.nbytes + 2, b.nbytes),
        ext("ext.c", TensorProto.FLOAT16, [2, 3], "c.bin"),
        numpy_helper.from_array(values(TensorProto.FLOAT, (2,), 4), "inline.d"),
    ]
    onnx.save(model([], inits, "external"), d / "external.onnx")


def edge(out):
    """0-d scalar, zero-sized tensor, subgraph initializers (If), sparse
    initializers (linear and coordinate indices), Constant nodes."""
    scalar = numpy_helper.from_array(np.array(3.5, dtype=np.float32), "scalar")
    empty = numpy_helper.from_array(np.zeros((0, 3), dtype=np.float32), "empty")
    big = numpy_helper.from_array(values(TensorProto.FLOAT, (16, 8), 9), "w")
    sp_lin = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.5, -2.0, 7.0], dtype=np.float32), "sparse.linear"),
        numpy_helper.from_array(np.array([0, 5, 11], dtype=np.int64), "sparse.linear.idx"), [3, 4])
    sp_coo = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1, 2], dtype=np.int32), "sparse.coo"),
        numpy_helper.from_array(np.array([[0, 1], [2, 3]], dtype=np.int64), "sparse.coo.idx"), [3, 4])
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["then_w"], ["then_out"])], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), "then_w")])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["else_out"], value=numpy_helper.from_array(np.array([3.0, 4.0], dtype=np.float32)))],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2])])
    nodes = [
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node("If", ["cond"], ["branch_out"], name="branch", then_branch=then_g, else_branch=else_g),
        helper.make_node("Constant", [], ["c.floats"], value_floats=[1.0, 2.5]),
        helper.make_node("Constant", [], ["c.int"], value_int=42),
        helper.make_node("Constant", [], ["c.strings"], value_strings=[b"a", b"bc"]),
        helper.make_node("Constant", [], ["c.sparse"], sparse_value=helper.make_sparse_tensor(
            numpy_helper.from_array(np.array([9.0], dtype=np.float32), "v"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "i"), [4])),
    ]
    m = model(nodes, [scalar, empty, big], "edge", sparse=[sp_lin, sp_coo],
              outputs=[helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [2])])
    onnx.save(m, out / "edge.onnx")


def names(out):
    """Tensor names with '/', '%', ':', '.', spaces and non-ASCII."""
    inits = [numpy_helper.from_array(np.arange(k + 1, dtype=np.float32), n)
             for k, n in enumerate(["layer/0/weight", "100%", "a:b.c", "with space", "ünï"])]
    onnx.save(model([], inits, "names"), out / "names.onnx")


def mlp(path, seed=0, hidden=32):
    """A runnable MLP: y = relu(x·W1 + b1)·W2 + b2."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 4)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
             helper.make_node("Add", ["h3", "b2"], ["y"])]
    m = model(nodes, [w1, b1, w2, b2], "mlp",
              inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
              outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(m, path)


def trained(out):
    """Float weights shaped like a trained network's: N(0, 0.02), 512 KiB."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal((256, 256)) * 0.02).astype(np.float32), f"layer{k}.weight")
             for k in range(2)]
    onnx.save(model([], inits, "trained"), out / "trained.onnx")


def broken(out):
    """Models that must fail to load, each with a clear reason."""
    d = out / "broken"
    d.mkdir(exist_ok=True)
    mlp(d / "good.onnx")
    whole = (d / "good.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(whole[: len(whole) // 2])
    bad = numpy_helper.from_array(np.zeros(6, dtype=np.float32), "short_tensor")
    bad.raw_data = bad.raw_data[:-4]
    onnx.save(model([], [bad], "wrong_len"), d / "wrong_len.onnx")
    esc = TensorProto(name="escaping", data_type=TensorProto.FLOAT, dims=[1])
    esc.data_location = TensorProto.EXTERNAL
    e = esc.external_data.add()
    e.key, e.value = "location", "../outside.bin"
    (out / "outside.bin").write_bytes(b"\0\0\0\0")
    onnx.save(model([], [esc], "escape"), d / "escape.onnx")
    future = numpy_helper.from_array(np.zeros(2, dtype=np.float32), "future_dtype")
    future.data_type = 99
    onnx.save(model([], [future], "future"), d / "future.onnx")
    (d / "garbage.onnx").write_bytes(b"\xff\xff\xff\xff not a model")


def generate(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in (raw_all, typed_all, external, edge, names, trained, broken):
        f(out)
    mlp(out / "mlp.onnx")
    return out


if __name__ == "__main__":
    generate(sys.argv[1])
