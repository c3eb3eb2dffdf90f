"""The independent reference: what weightcast must serve for a model file,
computed with the `onnx` package (numpy_helper.to_array) and numpy alone."""

import math

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

SUB_BYTE_BITS = {
    TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
    TensorProto.INT2: 2, TensorProto.UINT2: 2,
    TensorProto.FLOAT6E2M3: 6, TensorProto.FLOAT6E3M2: 6,
}


def pack_bits(codes, bits):
    """Element i in bits [i*bits, (i+1)*bits) of a little-endian bit stream."""
    codes = np.asarray(codes).reshape(-1).view(np.uint8).astype(np.uint64) & ((1 << bits) - 1)
    out = bytearray(math.ceil(codes.size * bits / 8))
    for i, c in enumerate(codes.tolist()):
        bit = i * bits
        v = c << (bit % 8)
        out[bit // 8] |= v & 0xFF
        if bit % 8 + bits > 8:
            out[bit // 8 + 1] |= (v >> 8) & 0xFF
    return bytes(out)


def array_bytes(arr, data_type):
    """The bytes weightcast serves for an array `to_array` returned."""
    if data_type in SUB_BYTE_BITS:
        return pack_bits(arr, SUB_BYTE_BITS[data_type])
    if data_type == TensorProto.STRING:
        return [s if isinstance(s, bytes) else str(s).encode() for s in arr.reshape(-1).tolist()]
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def densify(sparse, base_dir):
    values = numpy_helper.to_array(sparse.values, base_dir)
    indices = numpy_helper.to_array(sparse.indices, base_dir)
    dims = list(sparse.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


def constant_value(node, base_dir):
    for a in node.attribute:
        if a.name == "value":
            return a.t.data_type, numpy_helper.to_array(a.t, base_dir)
        if a.name == "sparse_value":
            return a.sparse_tensor.values.data_type, densify(a.sparse_tensor, base_dir)
        if a.name == "value_float":
            return TensorProto.FLOAT, np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return TensorProto.FLOAT, np.array(a.floats, dtype=np.float32)
        if a.name == "value_int":
            return TensorProto.INT64, np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return TensorProto.INT64, np.array(a.ints, dtype=np.int64)
        if a.name == "value_string":
            return TensorProto.STRING, np.array([a.s], dtype=object).reshape(())
        if a.name == "value_strings":
            return TensorProto.STRING, np.array(list(a.strings), dtype=object)
    raise ValueError("Constant without value")


def expected(model_path):
    """name -> dict(dtype, dims, data, constant) for every tensor of the model."""
    base_dir = str(model_path.parent)
    model = onnx.load(str(model_path), load_external_data=False)
    out = {}

    def add(name, data_type, arr, constant):
        assert name not in out, name
        out[name] = dict(dtype=data_type, dims=list(arr.shape), data=array_bytes(arr, data_type), constant=constant)

    def walk(graph, scope):
        for t in graph.initializer:
            add(scope + t.name, t.data_type, numpy_helper.to_array(t, base_dir), False)
        for s in graph.sparse_initializer:
            add(scope + s.values.name, s.values.data_type, densify(s, base_dir), False)
        for i, node in enumerate(graph.node):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                dt, arr = constant_value(node, base_dir)
                add(scope + node.output[0], dt, arr, True)
            label = node.name or f"{node.op_type}{i}"
            for a in node.attribute:
                if a.HasField("g"):
                    walk(a.g, f"{scope}{label}/{a.name}/")
                for k, g in enumerate(a.graphs):
                    walk(g, f"{scope}{label}/{a.name}.{k}/")

    walk(model.graph, "")
    return out


def castable(data_type, target):
    """What ?dtype= casts: FLOAT and DOUBLE to f16 and bf16, BFLOAT16 to f16."""
    return data_type in (TensorProto.FLOAT, TensorProto.DOUBLE) or (data_type == TensorProto.BFLOAT16 and target == "f16")


def cast_reference(arr_bytes, data_type, target):
    """numpy's (and ml_dtypes') rounding of FLOAT/DOUBLE (and BFLOAT16) data to f16/bf16."""
    if data_type == TensorProto.BFLOAT16:
        src = np.frombuffer(arr_bytes, dtype=ml_dtypes.bfloat16).astype(np.float32)
    else:
        src = np.frombuffer(arr_bytes, dtype="<f4" if data_type == TensorProto.FLOAT else "<f8")
    with np.errstate(over="ignore"):
        dst = src.astype(np.float16 if target == "f16" else ml_dtypes.bfloat16)
    overflowed = int(np.sum(np.isfinite(src) & np.isinf(dst.astype(np.float32))))
    return dst.tobytes(), overflowed


def version(manifest):
    """The documented version formula (proto/README.md), from a JSON manifest:
    sha256 over a domain prefix, the graph's digest, and per tensor its
    length-prefixed name, dtype number, dims and digest."""
    import hashlib
    import struct

    h = hashlib.sha256(b"weightcast.v1 version\n")
    h.update(bytes.fromhex(manifest["graph_sha256"]))
    for t in manifest["tensors"]:
        name = t["name"].encode()
        h.update(struct.pack("<Q", len(name)) + name)
        h.update(struct.pack("<I", TensorProto.DataType.Value(t["dtype"])))
        h.update(struct.pack("<Q", len(t["dims"])) + b"".join(struct.pack("<q", d) for d in t["dims"]))
        h.update(bytes.fromhex(t["sha256"]))
    return h.hexdigest()


def load_pulled(model_path):
    """A pulled version's model with its external data read in: what
    `onnx.load` would give, but without its refusal of hard-linked files
    (`pull` stores a tensor unchanged between versions once, hard-linked
    into each; onnx 1.23 takes a second link for an attack, ONNX Runtime
    opens them). Each location must stay inside the model's folder."""
    from pathlib import Path

    base = Path(model_path).resolve().parent
    model = onnx.load(str(model_path), load_external_data=False)

    def read_in(graph):
        for t in graph.initializer:
            if t.data_location != TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in t.external_data}
            path = (base / info["location"]).resolve()
            assert base in path.parents, f"{info['location']} lies outside {base}"
            offset, length = int(info.get("offset", 0)), info.get("length")
            with open(path, "rb") as f:
                f.seek(offset)
                t.raw_data = f.read(int(length)) if length is not None else f.read()
            del t.external_data[:]
            t.data_location = TensorProto.DEFAULT
        for node in graph.node:
            for a in node.attribute:
                if a.g.ByteSize():
                    read_in(a.g)
                for g in a.graphs:
                    read_in(g)

    read_in(model.graph)
    return model
