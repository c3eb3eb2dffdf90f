"""ONNX Runtime sessions: CPU loads, GPU providers fall back to CPU with a log
line and the manifest says so, warm-up runs (and fails a bad model's load),
ORT's own load errors, and a missing library."""

import subprocess

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import binary
from gen_models import OPSET


def config(tmp_path, body, models):
    p = tmp_path / "weightcast.toml"
    entries = "".join(f"\n[[models]]\npath = '{m}'\n" for m in models)
    p.write_text(body + entries)
    return p


def test_cpu_session_reports_model_io(zoo, serve):
    s = serve(zoo / "mlp.onnx")
    rt = s.get("/v1/models/mlp?format=json").json()["runtime"]
    assert rt["engine"] == "ort"
    assert rt["requested_providers"] == ["cpu"] and rt["active_providers"] == ["cpu"]
    assert rt["inputs"] == [{"name": "x", "dtype": "FLOAT", "dims": [-1, 8]}]
    assert rt["outputs"] == [{"name": "y", "dtype": "FLOAT", "dims": [-1, 4]}]
    assert rt["producer_name"] == "weightcast-tests"
    assert rt["opset_imports"] == [{"domain": "", "version": 21}]
    assert rt["warmed_up"] is False


def test_gpu_providers_fall_back_to_cpu(zoo, serve, tmp_path):
    cfg = config(tmp_path, '[runtime]\nproviders = ["tensorrt", "cuda", "cpu"]\nwarmup = true\n',
                 [zoo / "mlp.onnx", zoo / "broken" / "good.onnx"])
    s = serve("--config", cfg)
    for name in ["mlp", "good"]:
        rt = s.get(f"/v1/models/{name}?format=json").json()["runtime"]
        assert rt["requested_providers"] == ["tensorrt", "cuda", "cpu"]
        assert rt["active_providers"] == ["cpu"], "no GPU here: only CPU is active"
        assert rt["warmed_up"] is True
    logs = s.logs()
    assert logs.count("execution provider tensorrt is not available") == 1, "logged once, not per model"
    assert logs.count("execution provider cuda is not available") == 1


def test_warmup_failure_fails_the_load(zoo, serve, tmp_path):
    # Reshape of a [batch, 8] input to [3]: loads, but cannot run.
    shape = numpy_helper.from_array(np.array([3], dtype=np.int64), "shape")
    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "bad_run",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [shape])
    m = helper.make_model(g, opset_imports=OPSET)
    m.ir_version = 11
    onnx.save(m, tmp_path / "bad_run.onnx")
    cfg = config(tmp_path, "[runtime]\nwarmup = true\n", [tmp_path / "bad_run.onnx", zoo / "mlp.onnx"])
    s = serve("--config", cfg)
    models = {m["name"]: m for m in s.get("/v1/models?format=json").json()["models"]}
    assert "warm-up inference failed" in models["bad_run"]["error"]
    assert models["mlp"]["tensor_count"] == 4
    # Without warm-up the same model loads: the failure is the inference's.
    s2 = serve(tmp_path / "bad_run.onnx")
    assert s2.get("/v1/models/bad_run").status_code == 200


def test_model_ort_cannot_load(zoo, serve, tmp_path):
    g = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "bad_op",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=OPSET)
    m.ir_version = 11
    onnx.save(m, tmp_path / "bad_op.onnx")
    s = serve(tmp_path / "bad_op.onnx", zoo / "mlp.onnx")
    models = {m["name"]: m for m in s.get("/v1/models?format=json").json()["models"]}
    assert "ONNX Runtime cannot load the model" in models["bad_op"]["error"]
    assert "NoSuchOp" in models["bad_op"]["error"], "ORT's own message is kept"
    assert s.get("/v1/models/mlp/weights").status_code == 200
    # The same model serves its weights without ORT.
    s2 = serve("--runtime", "none", tmp_path / "bad_op.onnx")
    assert s2.get("/v1/models/bad_op?format=json").json()["runtime"]["engine"] == "none"


def test_missing_library_says_how_to_get_it(zoo, tmp_path):
    r = subprocess.run([str(binary()), "serve", "--listen", "127.0.0.1:0", "--ort-lib", str(tmp_path / "nope.so"),
                        str(zoo / "mlp.onnx")], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "nope.so" in r.stderr and "does not exist" in r.stderr
    # With nothing to find (a copy of the binary away from .ort/, no python3
    # on PATH), the message names the places searched and the fixes.
    import shutil

    lone = tmp_path / "weightcast"
    shutil.copy(binary(), lone)
    r = subprocess.run([str(lone), "serve", "--listen", "127.0.0.1:0", str(zoo / "mlp.onnx")],
                       capture_output=True, text=True, timeout=30, cwd="/", env={"PATH": "/nonexistent"})
    assert r.returncode != 0
    for hint in ["libonnxruntime.so", "scripts/fetch-ort.sh", "pip install onnxruntime==", "ORT_DYLIB_PATH", "--runtime none"]:
        assert hint in r.stderr, (hint, r.stderr)
    assert "cannot load ONNX Runtime from" not in r.stderr, "not found is not a failed load of an empty path"


def shared_model(path):
    """64 MB of MatMul weights whose raw_data lies unaligned in the file, a
    Constant node's 4 MB weight, a typed (float_data) bias, and an If whose
    branches hold their own initializers."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.standard_normal((256, 65536)).astype(np.float32), "w")
    c = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        rng.standard_normal((65536, 16)).astype(np.float32), "c"))
    b = helper.make_tensor("b", TensorProto.FLOAT, [16], rng.standard_normal(16).astype(np.float32).tolist())
    branch = lambda k: helper.make_graph(
        [helper.make_node("Add", ["z", f"k{k}"], [f"o{k}"])], f"branch{k}", [],
        [helper.make_tensor_value_info(f"o{k}", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(np.full((1, 16), k, np.float32), f"k{k}")])
    nodes = [c, helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "c"], ["h2"]),
             helper.make_node("Add", ["h2", "b"], ["z"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch(1), else_branch=branch(2))]
    g = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                          [w, b, numpy_helper.from_array(np.array(0, np.float32), "zero")])
    m = helper.make_model(g, opset_imports=OPSET)
    m.ir_version = 11
    onnx.save(m, path)
    raw = path.read_bytes()
    assert raw.find(w.raw_data[:64]) % 4 != 0 or raw.find(c.attribute[0].t.raw_data[:64]) % 4 != 0, \
        "the test needs a weight at an unaligned offset"


def anon_mib(pid):
    import re
    return int(re.search(r"RssAnon:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1)) // 1024


def test_the_session_uses_the_served_bytes(serve, tmp_path):
    """Issue #12, part 1: ONNX Runtime gets the weights in place — the server's
    anonymous memory stays far below the model's 68 MB — and still loads,
    warms up and reports; with `session = "validate"` it is closed after."""
    shared_model(tmp_path / "shared.onnx")
    for policy in ["keep", "validate"]:
        cfg = config(tmp_path, f'prepare = ["identity"]\n[runtime]\nwarmup = true\nsession = "{policy}"\n',
                     [tmp_path / "shared.onnx"])
        s = serve("--config", cfg)
        rt = s.get("/v1/models/shared?format=json").json()["runtime"]
        assert rt["warmed_up"] is True and rt["active_providers"] == ["cpu"], rt
        assert rt["inputs"] == [{"name": "x", "dtype": "FLOAT", "dims": [1, 256]}]
        anon = anon_mib(s.proc.pid)
        assert anon < 40, f"{policy}: {anon} MiB anonymous for a 68 MB model: the session copied the weights"
