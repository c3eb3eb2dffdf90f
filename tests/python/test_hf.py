"""Hugging Face's client library against a weightcast hub, with no glue
(issue #26 part 1): `huggingface_hub` (pinned in requirements.txt) gets a
corpus model with `snapshot_download` and the folder runs in ONNX Runtime by
path with the original's outputs; `hf_hub_download` of `model.safetensors`
equals `/weights?format=safetensors`; a revision pinned by 40 hex digits;
tokens honoured."""

import os
import subprocess
import sys

import pytest

from test_corpus import assert_same_outputs, corpus, inputs, run  # noqa: F401

NAME = "orientation"


@pytest.fixture
def hf_env(monkeypatch, tmp_path):
    # Nothing reaches huggingface.co, nothing is read from this user's cache or token.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def hub(serve, tmp_path, corpus, tokens=None):
    served = tmp_path / "hub" / f"{NAME}.onnx"
    served.parent.mkdir()
    served.write_bytes((corpus / f"{NAME}.onnx").read_bytes())
    if not tokens:
        return serve("--runtime", "none", served), served
    (tmp_path / "tokens").write_text(tokens)
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'tokens_file = "{tmp_path / "tokens"}"\n[[models]]\npath = "{served}"\n')
    return serve("--runtime", "none", "--config", cfg), served


def test_snapshot_download_gets_a_model_that_runs_by_path(hf_env, serve, tmp_path, corpus):
    import huggingface_hub
    from huggingface_hub import hf_hub_download, snapshot_download
    s, served = hub(serve, tmp_path, corpus)
    folder = snapshot_download(NAME, endpoint=s.url, cache_dir=tmp_path / "cache")
    assert sorted(os.listdir(folder)) == ["model.onnx", "model.safetensors"], os.listdir(folder)
    feed = inputs(served, NAME)
    assert_same_outputs(run(os.path.join(folder, "model.onnx"), feed), run(served, feed))
    # The snapshot is pinned to the version served: its commit is the version's first 40 hex digits.
    version = s.get(f"/v1/models/{NAME}?format=json").json()["version"]
    assert os.path.basename(folder) == version[:40]
    path = hf_hub_download(NAME, "model.safetensors", endpoint=s.url, cache_dir=tmp_path / "cache2")
    assert open(path, "rb").read() == s.get(f"/v1/models/{NAME}/weights?format=safetensors",
                                              headers={"Accept-Encoding": "identity"}).content
    # A pinned revision, through HF_ENDPOINT this time (read when the library
    # is imported: a process of its own).
    code = ("import sys; from huggingface_hub import hf_hub_download; "
            f"print(hf_hub_download({NAME!r}, 'model.onnx', revision={version[:40]!r}, cache_dir=sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache3")], capture_output=True, text=True,
                         env=dict(os.environ, HF_ENDPOINT=s.url), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    pinned = out.stdout.strip().splitlines()[-1]
    assert open(pinned, "rb").read() == open(os.path.join(folder, "model.onnx"), "rb").read()
    with pytest.raises(huggingface_hub.errors.RevisionNotFoundError):
        hf_hub_download(NAME, "model.onnx", revision="0" * 40, endpoint=s.url, cache_dir=tmp_path / "cache4")
    with pytest.raises(huggingface_hub.errors.EntryNotFoundError):
        hf_hub_download(NAME, "config.json", endpoint=s.url, cache_dir=tmp_path / "cache5")
    # Ranges, as a resumed download asks.
    r = s.get(f"/{NAME}/resolve/main/model.onnx", headers={"Range": "bytes=10-19", "Accept-Encoding": "identity"})
    assert r.status_code == 206 and r.content == open(pinned, "rb").read()[10:20]


def test_tokens_are_honoured(hf_env, serve, tmp_path, corpus):
    import huggingface_hub
    from huggingface_hub import snapshot_download
    token = "hf-reader-0123456789abcdef"
    s, served = hub(serve, tmp_path, corpus, tokens=f"{token} {NAME}\nother-token-0123456789abc other\n")
    with pytest.raises((huggingface_hub.errors.HfHubHTTPError, huggingface_hub.errors.LocalEntryNotFoundError)):
        snapshot_download(NAME, endpoint=s.url, cache_dir=tmp_path / "c1")
    with pytest.raises((huggingface_hub.errors.HfHubHTTPError, huggingface_hub.errors.LocalEntryNotFoundError)):
        snapshot_download(NAME, endpoint=s.url, cache_dir=tmp_path / "c2", token="other-token-0123456789abc")
    folder = snapshot_download(NAME, endpoint=s.url, cache_dir=tmp_path / "c3", token=token)
    feed = inputs(served, NAME)
    assert_same_outputs(run(os.path.join(folder, "model.onnx"), feed), run(served, feed))
