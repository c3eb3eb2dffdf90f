"""The short form of benches/memory.py in the suite (issue #12): a 64 MB
model in the default configuration (ONNX Runtime on, zstd prepared, 64 MiB
memory budget, a cache folder): idle anonymous memory and the peaks of 8
concurrent downloads of each representation stay within the targets, cold
and after a restart that finds the frames on disk."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import binary

ROOT = Path(__file__).resolve().parents[2]


def test_memory_targets_short_form(tmp_path):
    out = tmp_path / "memory.json"
    r = subprocess.run([sys.executable, str(ROOT / "benches" / "memory.py"), "--quick", "--skip-nginx",
                        "--bin", str(binary()), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads(out.read_text())["64MB"]
    print(r.stdout)
    assert m["idle"]["anon"] <= 48 + 64, m
    assert m["warm_idle"]["anon"] <= 48 + 64, m
    assert m["idle"]["rss"] <= 1.5 * m["model_MB"] * 1e6 / (1 << 20) + 48, "one copy of the weights is resident, not two"
    for name, p in m["peaks"].items():
        assert p["peak_MiB"] - p["before_MiB"] <= 64, (name, p)
        assert p["bytes_each"] > 0
