"""`pull --check ort --check-shape NAME=D0,…` (issue #25 part 4): the
check's inference runs on real models in the shapes given — nudenet's
1×3×320×320 image, RapidOCR's (ppocr-cls) 1×3×48×192 crop, silero's 512
samples — and a version that cannot take them is rejected; ONNX Runtime's
own log lines come through weightcast's logger, not as `[E:onnxruntime:…]`
lines on stderr."""

import pytest

from test_corpus import corpus, pull  # noqa: F401 (fixture)

SHAPES = {
    "nudenet-yolov8": ["images=1,3,320,320"],
    "ppocr-cls": ["x=1,3,48,192"],
    "silero-legacy": ["input=1,512", "state=2,1,128"],
}
VALUES = {"silero-legacy": ["sr=16000"]}


def hub(serve, tmp_path, corpus, name):
    served = tmp_path / "hub" / f"{name}.onnx"
    served.parent.mkdir()
    served.write_bytes((corpus / f"{name}.onnx").read_bytes())
    return serve("--runtime", "none", served)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_the_check_runs_a_real_model_in_the_shapes_given_without_onnx_runtime_noise(corpus, serve, tmp_path, name):
    s = hub(serve, tmp_path, corpus, name)
    args = ["--check", "ort"] + [a for shape in SHAPES[name] for a in ("--check-shape", shape)]
    args += [a for value in VALUES.get(name, []) for a in ("--check-value", value)]
    rc, out, err = pull(f"{s.url}/v1/models/{name}", tmp_path / "device", *args)
    assert rc == 0 and out["status"] == "updated", (out, err)
    assert "[E:onnxruntime" not in err and "[W:onnxruntime" not in err, err
    assert "warm-up on zero inputs failed" not in err, err


def test_a_version_that_cannot_take_the_shapes_given_is_rejected_and_without_them_only_warned(corpus, serve, tmp_path):
    s = hub(serve, tmp_path, corpus, "nudenet-yolov8")
    url = f"{s.url}/v1/models/nudenet-yolov8"
    rc, out, err = pull(url, tmp_path / "a", "--check", "ort", "--check-shape", "images=1,3,320")
    assert rc == 2 and out["status"] == "rejected", (out, err)
    assert "input 'images'" in out["reason"] and "[1, 3, 320]" in out["reason"], out
    # Shapes the model takes by its declaration but cannot run (YOLOv8's
    # strides need multiples of 32): ONNX Runtime's own message, in the log.
    rc, out, err = pull(url, tmp_path / "f", "--check", "ort", "--check-shape", "images=1,3,33,33")
    assert rc == 2 and "Non-zero status code" in out["reason"] and "Concat" in out["reason"], out
    assert "Concat" in err and "[E:onnxruntime" not in err, err
    rc, out, err = pull(url, tmp_path / "b", "--check", "ort", "--check-shape", "pixels=1,3,320,320")
    assert rc == 2 and "'pixels'" in out["reason"] and "images" in out["reason"], out
    # Without shapes: made-up 1×3×1×1 inputs; the version is installed, with a warning that says what to do.
    rc, out, err = pull(url, tmp_path / "c", "--check", "ort")
    assert rc == 0 and out["status"] == "updated", (out, err)
    assert "[E:onnxruntime" not in err, err
    # A malformed flag is a usage error before anything runs.
    rc, out, err = pull(url, tmp_path / "d", "--check", "ort", "--check-shape", "images=1,x")
    assert rc == 64 and "NAME=D0,D1" in err, err
    rc, out, err = pull(url, tmp_path / "e", "--check-shape", "images=1,3,320,320")
    assert rc == 1 and "add --check ort" in err, err
    rc, out, err = pull(url, tmp_path / "g", "--check", "ort", "--check-value", "sr=fast")
    assert rc == 64 and "NAME=V" in err, err
