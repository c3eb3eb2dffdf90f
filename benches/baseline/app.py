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


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@app.get("/protobuf")
def protobuf():
    # What a hand-rolled or generated `Weights` message costs: the whole blob
    # is built in memory for every request.
    body = b"".join(_field(1, _field(1, n.encode()) + _field(2, a.tobytes())) for n, a in STATE.items())
    return Response(body, mimetype="application/x-protobuf")
