"""Exit codes and messages of every command (issue #15, part 4): a mistake
gets a message that says what to do and an exit code scripts can tell
apart; nothing panics, hangs or creates folders it was not asked for. Each
case was found trying the commands as a new user would."""

import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import binary
from test_corpus import corpus  # noqa: F401  (the fixture)


def run(*args, timeout=30, **kw):
    return subprocess.run([str(binary()), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def pull(url, dest, *extra):
    return run("pull", url, "--dest", dest, "--once", "--timeout", "5s", *extra)


@pytest.fixture
def hub(zoo, serve):
    s = serve("--runtime", "none", zoo / "mlp.onnx")
    s.model_url = f"{s.url}/v1/models/mlp"
    return s


@pytest.mark.parametrize("args", [
    ["pull", "http://h/v1/models/m", "--dest", "d", "--dtype", "f64"],
    ["pull", "http://h/v1/models/m", "--dest", "d", "--onse"],
    ["pull", "http://h/v1/models/m", "--dest", "d", "--interval", "0.1s"],
    ["pull", "http://h/v1/models/m", "--dest", "d", "--interval", "0"],
    ["pull", "http://h/v1/models/m", "--dest", "d", "--timeout", "0"],
    ["pull", "http://h/v1/models/m", "--dest", "d", "--keep", "0"],
    ["pull", "http://h/v1/models/m", "--dest", "d", "--exit-no-change", "3"],
    ["push", "m.onnx", "oci://r/x:y", "--valid-for", "0s"],
    ["inspect"],
    ["nosuchcommand"],
])
def test_a_command_line_that_does_not_parse_exits_64_not_pulls_2(args, tmp_path):
    """2 is `pull --once`'s "rejected by --check": a typo must not read as that."""
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 64, (args, r.returncode, r.stderr)
    assert r.stderr.startswith("error:") and "panicked" not in r.stderr
    assert not (tmp_path / "d").exists()


def test_help_exits_0():
    r = run("pull", "--help")
    assert r.returncode == 0 and "--interval" in r.stdout
    assert "every request to the hub or registry (pull, push)" in run("--help").stdout


def test_a_version_that_failed_its_check_with_nothing_installed_is_not_success(hub, tmp_path):
    """The first run rejects it (2); the next must not say "current" and exit 0
    with nothing installed — it says how to try again."""
    dest = tmp_path / "device"
    first = pull(hub.model_url, dest, "--check", "false")
    assert first.returncode == 2 and "nothing is installed" in first.stderr, first.stderr
    again = pull(hub.model_url, dest, "--check", "false")
    assert again.returncode == 2, again.stderr
    assert "nothing is installed" in again.stderr and "weightcast retry --dest" in again.stderr, again.stderr
    assert not (dest / "current").exists()


def test_rollback_never_goes_forward_and_read_only_commands_create_nothing(zoo, serve, tmp_path):
    import gen_models
    path = tmp_path / "m.onnx"
    shutil.copy(zoo / "mlp.onnx", path)
    s = serve("--runtime", "none", path)
    url, dest = f"{s.url}/v1/models/m", tmp_path / "device"
    assert pull(url, dest).returncode == 0
    v1 = os.readlink(dest / "current")
    gen_models.mlp(tmp_path / "next.onnx", seed=7)
    os.replace(tmp_path / "next.onnx", path)
    for _ in range(100):
        r = pull(url, dest)
        if os.readlink(dest / "current") != v1:
            break
        time.sleep(0.1)
    v2 = os.readlink(dest / "current")
    assert v2 != v1 and r.returncode == 0
    back = run("rollback", "--dest", dest)
    assert back.returncode == 0 and os.readlink(dest / "current") == v1, back.stderr
    again = run("rollback", "--dest", dest)
    assert again.returncode == 1 and os.readlink(dest / "current") == v1, "a second rollback must not go forward"
    assert "no committed version installed before" in again.stderr and "--keep" in again.stderr
    for args in (["rollback", "--dest", tmp_path / "typo"], ["verify", "--dest", tmp_path / "typo"]):
        r = run(*args)
        assert r.returncode == 1 and "holds no versions" in r.stderr, r.stderr
        assert not (tmp_path / "typo").exists(), f"{args[0]} created the folder it was given by mistake"


def test_dest_that_is_a_file(hub, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = pull(hub.model_url, f)
    assert r.returncode == 1 and "is a file, not a folder" in r.stderr, r.stderr
    assert f.read_text() == "x"


def test_exec_failing_after_the_switch_says_the_switch_stands(hub, tmp_path):
    dest = tmp_path / "device"
    r = pull(hub.model_url, dest, "--exec", "exit 3")
    assert r.returncode == 1 and "switched to the new version, but --exec failed" in r.stderr, r.stderr
    assert (dest / "current" / "model.onnx").exists()


def test_a_closed_stdout_ends_commands_quietly(corpus, hub, tmp_path):  # noqa: F811
    """`weightcast diff A B | true` used to panic (exit 101) in println!."""
    a, b = corpus / "magika.onnx", corpus / "orientation.onnx"
    for cmd in ([binary(), "diff", a, b], [binary(), "diff", "--json", a, b], [binary(), "inspect", b],
                [binary(), "pull", hub.model_url, "--dest", tmp_path / "d", "--once", "--json"]):
        script = " ".join(f"'{c}'" for c in cmd) + " | true; echo ${PIPESTATUS[0]}"
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        code = int(r.stdout.strip())
        assert code == 0 and "panicked" not in r.stderr, (cmd, code, r.stderr)
    assert (tmp_path / "d" / "current").exists(), "pull went on with its round"


def test_https_to_a_plain_port_fails_at_once_and_says_why(hub, tmp_path):
    started = time.monotonic()
    r = pull(hub.model_url.replace("http://", "https://"), tmp_path / "d")
    assert r.returncode == 1 and time.monotonic() - started < 5, "the server closes a TLS handshake at once"
    assert "does not speak TLS; is it http://" in r.stderr, r.stderr


def test_nothing_listening_says_what_to_check(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = pull(f"http://127.0.0.1:{port}/v1/models/m", tmp_path / "d")
    assert r.returncode == 1 and "is the hub (or registry) running there" in r.stderr, r.stderr
    assert "os error" not in r.stderr


def test_a_taken_port_is_told_before_loading_models(hub, zoo):
    port = hub.url.rsplit(":", 1)[1]
    r = run("serve", "--runtime", "none", "--listen", f"127.0.0.1:{port}", zoo / "mlp.onnx")
    assert r.returncode == 1 and "another process listens there" in r.stderr, r.stderr
    assert "model loaded" not in r.stderr and "os error" not in r.stderr


def test_keys_given_the_wrong_way_round_are_refused(hub, zoo, tmp_path):
    prefix = tmp_path / "hub"
    assert run("keygen", prefix).returncode == 0
    r = run("push", zoo / "mlp.onnx", "oci://127.0.0.1:9/x:y", "--plain-http", "--signing-key", f"{prefix}.pub")
    assert r.returncode == 1 and "is a public key" in r.stderr and f"{prefix}.key" in r.stderr, r.stderr
    r = pull(hub.model_url, tmp_path / "d", "--trust", f"{prefix}.key")
    assert r.returncode == 1 and "is a secret key" in r.stderr and f"{prefix}.pub" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


def test_inspect_takes_a_version_folder_like_diff(hub, tmp_path):
    dest = tmp_path / "device"
    assert pull(hub.model_url, dest).returncode == 0
    by_folder, by_file = run("inspect", dest / "current"), run("inspect", dest / "current" / "model.onnx")
    assert by_folder.returncode == 0 and by_folder.stdout == by_file.stdout and by_folder.stdout, by_folder.stderr


def test_keygen_given_a_folder_says_to_name_the_files(tmp_path):
    """`keygen dir/` wrote the hidden files dir/.key and dir/.pub."""
    for given in (tmp_path, f"{tmp_path}/", f"{tmp_path}/new/"):
        r = run("keygen", given)
        assert r.returncode == 1 and "is a folder" in r.stderr and f"{str(tmp_path).rstrip('/')}" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_demo_given_a_folder_leaves_nothing_behind(tmp_path):
    """`demo DIR` left a 3 MB DIR.tmpPID beside the folder."""
    (tmp_path / "dir").mkdir()
    r = run("demo", tmp_path / "dir")
    assert r.returncode == 1 and f"give a file name, e.g. {tmp_path / 'dir' / 'demo.onnx'}" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"] and not any((tmp_path / "dir").iterdir())


@pytest.mark.parametrize("verbose", [False, True])
def test_a_quiet_poll_is_logged_once_an_hour_not_every_round(hub, tmp_path, verbose):
    """Issue #25, part 5: "no change" at every 30 s poll was 2,880 info lines a
    day per model. Now it is said once (then once an hour while nothing
    changes), every round only with -v; the install is said at info."""
    dest = tmp_path / "device"
    extra = ["-v"] if verbose else []
    p = subprocess.Popen([str(binary()), *extra, "pull", hub.model_url, "--dest", str(dest), "--interval", "1s"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={k: v for k, v in os.environ.items() if k != "RUST_LOG"})
    time.sleep(5)
    p.terminate()
    err = p.communicate(timeout=10)[1]
    quiet = [line for line in err.splitlines() if "no change" in line]
    assert any("installed" in line for line in err.splitlines()), err
    if verbose:
        assert len(quiet) >= 3, err
    else:
        assert len(quiet) == 1 and " INFO " in quiet[0], err
