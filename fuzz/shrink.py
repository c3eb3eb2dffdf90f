"""Writes the `model` target's seeds: real models from the corpus with every
initializer cut to at most 4 elements (same type, one dimension) and every
other one moved to the in-memory external data file (`data.bin`), in the
target's input layout (model length, 4 bytes little-endian; model; data).
The graphs — nodes, attributes, subgraphs, names — stay whole: they are what
the parser walks. A 1.3 MB model becomes a seed of a few kilobytes, so
libFuzzer runs thousands of inputs a second and `-max_len` covers them.

    .venv/bin/python fuzz/shrink.py OUT_DIR MODEL.onnx...
"""

import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

EXTERNAL = "data.bin"  # src/fuzz.rs: EXTERNAL_DATA


def graphs(g):
    yield g
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from graphs(a.g)
            for sub in a.graphs:
                yield from graphs(sub)


def shrink(path):
    m = onnx.load(str(path))
    data = bytearray()
    k = 0
    for g in graphs(m.graph):
        for i, t in enumerate(list(g.initializer)):
            if t.data_type == onnx.TensorProto.STRING:
                continue
            a = numpy_helper.to_array(t).reshape(-1)[:4]
            small = numpy_helper.from_array(np.ascontiguousarray(a), t.name)
            if k % 2 == 1 and small.raw_data:
                offset = len(data)
                data += small.raw_data
                small.ClearField("raw_data")
                small.data_location = onnx.TensorProto.EXTERNAL
                for key, value in [("location", EXTERNAL), ("offset", str(offset)),
                                   ("length", str(len(data) - offset))]:
                    small.external_data.append(onnx.StringStringEntryProto(key=key, value=value))
            g.initializer[i].CopyFrom(small)
            k += 1
        # Constant nodes hold weights too (ppocr-cls, silero-dynamo): cut, inline.
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type != onnx.TensorProto.STRING:
                    small = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(a.t).reshape(-1)[:4]),
                                                    a.t.name)
                    a.t.CopyFrom(small)
    # What the reader skips (shape annotations, docs, metadata) only slows
    # the fuzzer down: each input is decoded four times.
    for g in graphs(m.graph):
        del g.value_info[:]
        g.doc_string = ""
        for node in g.node:
            node.doc_string = ""
    m.doc_string = ""
    del m.metadata_props[:]
    model = m.SerializeToString()
    return struct.pack("<I", len(model)) + model + bytes(data)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for p in map(Path, sys.argv[2:]):
        seed = shrink(p)
        (out / p.stem).write_bytes(seed)
        print(f"{p.name}: {p.stat().st_size:,} -> {len(seed):,} bytes")


if __name__ == "__main__":
    main()
