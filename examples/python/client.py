"""A weightcast client in a page: download a model's weights as protobuf,
npz and safetensors, load each into numpy, and check them against the
manifest's digests.

    pip install requests zstandard numpy safetensors protobuf grpcio-tools
    python -m grpc_tools.protoc -I proto --python_out=examples/python proto/weightcast/v1/weightcast.proto
    python examples/python/client.py http://127.0.0.1:8080 demo
"""

import hashlib
import io
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import requests
import safetensors.numpy
import zstandard

sys.path.insert(0, str(Path(__file__).parent))
from weightcast.v1 import weightcast_pb2 as wc  # noqa: E402  (generated, see above)

# ONNX dtype number -> numpy dtype, for the protobuf records.
NUMPY = {1: "<f4", 2: "|u1", 3: "|i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "|b1", 10: "<f2",
         11: "<f8", 12: "<u4", 13: "<u8", 14: "<c8", 15: "<c16"}


def get(url, **params):
    """GET with zstd, decoding every frame of the body."""
    r = requests.get(url, params=params, headers={"Accept-Encoding": "zstd"}, stream=True, timeout=60)
    r.raise_for_status()
    body = r.raw.read(decode_content=False)
    if r.headers.get("Content-Encoding") == "zstd":
        body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).read()
    return body


def main(server, model):
    base = f"{server}/v1/models/{model}"
    manifest = wc.Manifest.FromString(get(base))
    digests = {t.name: t.sha256 for t in manifest.tensors}
    print(f"{manifest.model} version {manifest.version[:16]}: {len(manifest.tensors)} tensors")

    # 1. protobuf: every dtype, exact bytes.
    bundle = wc.Bundle.FromString(get(base + "/weights"))
    arrays = {}
    for t in bundle.tensors:
        assert hashlib.sha256(t.data).hexdigest() == digests[t.name] or t.strings, t.name
        if t.dtype in NUMPY:
            arrays[t.name] = np.frombuffer(t.data, dtype=NUMPY[t.dtype]).reshape(t.dims)
    print(f"protobuf: {len(bundle.tensors)} tensors, {len(arrays)} as numpy arrays")

    # 2. npz: numpy.load; member names are the tensor names percent-encoded.
    numeric = [n for n in arrays]
    with np.load(io.BytesIO(get(base + "/weights", format="npz", names=",".join(numeric)))) as z:
        npz = {unquote(k): z[k] for k in z.files}
    assert all(np.array_equal(npz[n], arrays[n], equal_nan=True) for n in numeric)
    print(f"npz: {len(npz)} arrays, equal to the protobuf ones")

    # 3. safetensors, cast to fp16 on the server.
    st = safetensors.numpy.load(get(base + "/weights", format="safetensors", dtype="f16", names=",".join(numeric)))
    print(f"safetensors (f16): {len(st)} arrays, {sum(a.nbytes for a in st.values())} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080", sys.argv[2] if len(sys.argv) > 2 else "demo")
