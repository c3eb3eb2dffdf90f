"""The naive ways weights are served today, written small and faithfully:
what a weightcast user replaces. Run under gunicorn by benches/e2e.py.

    MODEL=model.onnx gunicorn -w 2 -b 127.0.0.1:PORT app:app

- /npz: np.savez_compressed of the state dict into memory, then send_file
- /json: jsonify of {name: array.tolist()}
- /protobuf: one `Weights { repeated Weight weights = 1; }` blob per request
"""

import io
import os

import numpy as np
import onnx
from flask import Flask, Response, jsonify, send_file
from onnx import numpy_helper

app = Flask(__name__)
MODEL = onnx.load(os.environ["MODEL"])
STATE = {t.name: numpy_helper.to_array(t) for t in MODEL.graph.initializer}


@app.get("/npz")
def npz():
    buf = io.BytesIO()
    np.savez_compressed(buf, **STATE)
    buf.seek(0)
    return send_file(buf, mimetype="application/octet-stream", download_name="weights.npz")


@app.get("/json")
def as_json():
    return jsonify({name: a.tolist() for name, a in STATE.items()})


def _weights_module():
    """`Weights { repeated Weight weights = 1; } Weight { string name = 1; bytes data = 2; }`,
    generated with protoc (grpcio-tools) as such a service would ship it."""
    import importlib
    import sys
    import tempfile

    from grpc_tools import protoc

    d = tempfile.mkdtemp()
    with open(f"{d}/naive.proto", "w") as f:
        f.write('syntax = "proto3"; message Weight { string name = 1; bytes data = 2; } '
                "message Weights { repeated Weight weights = 1; }")
    assert protoc.main(["protoc", f"-I{d}", f"--python_out={d}", f"{d}/naive.proto"]) == 0
    sys.path.insert(0, d)
    return importlib.import_module("naive_pb2")


PB = _weights_module()


@app.get("/protobuf")
def protobuf():
    # One message with every tensor, serialized in memory for every request.
    msg = PB.Weights(weights=[PB.Weight(name=n, data=a.tobytes()) for n, a in STATE.items()])
    return Response(msg.SerializeToString(), mimetype="application/x-protobuf")
