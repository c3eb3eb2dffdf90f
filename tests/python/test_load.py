"""The short form of benches/load.py in the suite: 200 keep-alive pollers,
2 full downloads of a 20 MB model for 16 s while it is republished three
times (once by an in-place copy), the server's open-files limit at 1,024:
only 200/304/503, every download matches an advertised version, the server
alive. The full run (1,000 pollers, 8 downloads, 100 MB, 60 s) is
`benches/load.py` (README, Reliability)."""

import subprocess
import sys

from conftest import ROOT, binary


def test_load_and_republish_short_form():
    r = subprocess.run([sys.executable, str(ROOT / "benches" / "load.py"), "--short", "--binary", str(binary())],
                       capture_output=True, text=True, timeout=300)
    print(r.stdout[-2000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
