"""The Debian package and the systemd units (issue #25): what the package
holds (dpkg-deb as the reader), and every unit as systemd itself parses it
(`systemd-analyze verify`), with the user, group-readable state folder,
credential and reload path an inference service needs."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "configs" / "systemd"


@pytest.fixture(scope="module")
def deb():
    """The amd64 package, as the suite builds it (the debug binary)."""
    out = subprocess.run([str(ROOT / "scripts" / "package.sh"), "--arch", "amd64", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    path = ROOT / out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"weightcast_\d+\.\d+\.\d+_amd64\.deb", path.name), path
    return path


def test_the_package_holds_the_binary_units_conffiles_user_and_docs(deb, tmp_path):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for want in ["/usr/bin/weightcast", "/etc/weightcast/weightcast.toml", "/etc/weightcast/pull.env",
                 "/lib/systemd/system/weightcast.service", "/lib/systemd/system/weightcast-pull@.service",
                 "/lib/systemd/system/weightcast-reload@.path", "/lib/systemd/system/weightcast-reload@.service",
                 "/usr/lib/sysusers.d/weightcast.conf", "/usr/share/doc/weightcast/README.md",
                 "/usr/share/doc/weightcast/weightcast.proto"]:
        assert want in files, f"{want} not in the package:\n{listing}"
    assert not any("onnxruntime" in f for f in files), "ONNX Runtime is not shipped"
    assert re.search(r"-rwxr-xr-x \S+ +\d+ \S+ \S+ \./usr/bin/weightcast", listing)
    ctl = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(ctl)], check=True)
    assert (ctl / "conffiles").read_text().split() == ["/etc/weightcast/weightcast.toml", "/etc/weightcast/pull.env"]
    control = (ctl / "control").read_text()
    assert "Architecture: amd64" in control and "Depends: libc6 (>= 2.31)" in control
    assert "ORT_DYLIB_PATH" in control, "the package says where it looks for ONNX Runtime"
    assert "systemd-sysusers weightcast.conf" in (ctl / "postinst").read_text()
    # The files are the repository's, and the binary runs.
    x = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
    for unit in UNITS.iterdir():
        assert (x / "lib/systemd/system" / unit.name).read_bytes() == unit.read_bytes()
    assert subprocess.run([str(x / "usr/bin/weightcast"), "--version"], capture_output=True).returncode == 0
    sysusers = (x / "usr/lib/sysusers.d/weightcast.conf").read_text()
    assert re.search(r"^u weightcast ", sysusers, re.M) and re.search(r"^g weightcast ", sysusers, re.M)


def verify(tmp_path, names, binary):
    """`systemd-analyze verify` of the repository's units (templates as
    instances), with /usr/bin/weightcast pointed at `binary`: no line of
    complaint allowed."""
    d = tmp_path / "units"
    d.mkdir()
    for unit in UNITS.iterdir():
        (d / unit.name).write_text(unit.read_text().replace("/usr/bin/weightcast", str(binary)))
    for name in names:
        template = re.sub(r"@[^.]+\.", "@.", name)
        if name != template:
            shutil.copy(d / template, d / name)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(d / n) for n in names]],
                       capture_output=True, text=True, cwd=d)
    return r.returncode, (r.stdout + r.stderr).strip()


def test_every_unit_passes_systemd_analyze_verify(tmp_path):
    binary = ROOT / "target" / "debug" / "weightcast"
    rc, said = verify(tmp_path, ["weightcast.service", "weightcast-pull@detector.service",
                                 "weightcast-reload@detector.path", "weightcast-reload@detector.service"], binary)
    assert rc == 0 and said == "", said


def test_the_units_let_an_inference_service_read_the_model_and_hear_of_new_versions():
    pull = (UNITS / "weightcast-pull@.service").read_text()
    hub = (UNITS / "weightcast.service").read_text()
    # A static user whose group may read the state folder; nothing else can.
    assert "User=weightcast" in pull and "Group=weightcast" in pull and "DynamicUser" not in pull
    assert "StateDirectoryMode=0750" in pull and "UMask=0027" in pull
    assert "LoadCredential=weightcast-pull-%i.token" in pull
    assert "/usr/bin/weightcast pull" in pull
    # The example arguments check signatures (production).
    assert "--trust" in (ROOT / "configs" / "debian" / "pull.env").read_text()
    # The hub may write its state (fleet table, kept versions, TensorRT cache) and cache.
    assert "ReadOnlyPaths=/var/lib/weightcast" not in hub and "StateDirectory=weightcast" in hub
    assert "User=weightcast" in hub and "DynamicUser" not in hub
    path = (UNITS / "weightcast-reload@.path").read_text()
    assert "PathChanged=/var/lib/weightcast/%i/current" in path
    assert "${INFERENCE_UNIT}" in (UNITS / "weightcast-reload@.service").read_text()


def test_pull_takes_its_token_from_the_systemd_credential(serve, tmp_path):
    """The packaged unit hands the token over with LoadCredential=: `pull`
    reads $CREDENTIALS_DIRECTORY/weightcast-pull-<model>.token."""
    from conftest import binary
    from test_pull_contract import named_model
    named_model(tmp_path / "m.onnx", ["w1"], n=64)
    token = "device-token-0123456789abcdef"
    (tmp_path / "tokens").write_text(f"{token} m\n")
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'tokens_file = "{tmp_path / "tokens"}"\n[[models]]\npath = "{tmp_path / "m.onnx"}"\n')
    s = serve("--runtime", "none", "--config", cfg)
    creds = tmp_path / "creds"
    creds.mkdir()
    run = lambda env: subprocess.run([str(binary()), "pull", f"{s.url}/v1/models/m", "--dest", str(tmp_path / "d"),
                                      "--once"], capture_output=True, text=True, timeout=60, env=env)
    import os
    env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds))
    r = run(env)
    assert r.returncode == 1 and "401" in r.stderr, r.stderr
    (creds / "weightcast-pull-m.token").write_text(token + "\n")
    r = run(env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "current" / "model.onnx").exists()
