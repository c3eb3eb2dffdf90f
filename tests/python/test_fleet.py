"""The fleet benchmark's short form (benches/fleet.py --quick, debug build):
a one-tensor change through a real registry and through the hub, and 3
devices through nginx vs directly; the script asserts that the change moves
about one tensor and that the cache tier sends each blob from the hub once."""

import os
import subprocess
import sys

from conftest import ROOT, binary


def test_the_fleet_benchmark_runs_and_its_properties_hold():
    r = subprocess.run([sys.executable, str(ROOT / "benches" / "fleet.py"), "--quick"], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, WEIGHTCAST_BIN=str(binary())))
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    print(r.stdout)
