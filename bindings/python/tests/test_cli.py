"""The fcwarm CLI: each subcommand's output and exit code, bad arguments and unknown ids."""
import io
import json
import os
import subprocess
import sys

import pytest

import fcwarm
from fcwarm import cli
from conftest import write_file


@pytest.fixture
def env(tmpdir_path):
    fake = fcwarm.testing.FakeVmm()
    vmms = fcwarm.VmmRegistry()
    vmms.add(fake)
    data = os.path.join(tmpdir_path, "data")
    kernel = write_file(os.path.join(tmpdir_path, "vmlinux"), b"kernel")

    def run(*argv):
        out = io.StringIO()
        code = cli.main(["--data-dir", data, *argv], out=out, vmms=vmms)
        return code, out.getvalue()

    return run, kernel, fake


def test_image_commands(env):
    run, kernel, _ = env
    code, out = run("image", "add", "minimal", "--kernel", kernel, "--backend", "fake", "--memory-mib", "128")
    assert code == 0, out
    image_id = out.strip()
    assert fcwarm.is_valid_id(image_id)
    code, out = run("image", "ls")
    assert code == 0 and "minimal" in out and out.splitlines()[0].split()[:3] == ["ID", "NAME", "BACKEND"]
    code, out = run("--json", "image", "ls")
    assert code == 0 and json.loads(out)[0]["name"] == "minimal"
    code, out = run("--json", "image", "get", "minimal")
    assert code == 0 and json.loads(out)["id"] == image_id
    code, out = run("image", "get", image_id)
    assert code == 0 and "kernel_path" in out
    # Bad input: exit 2 names the field; duplicates exit 4; unknown exit 3.
    code, _ = run("image", "add", "../bad", "--kernel", kernel, "--backend", "fake")
    assert code == cli.EXIT_USAGE
    code, _ = run("image", "add", "minimal", "--kernel", kernel, "--backend", "fake", "--memory-mib", "128")
    assert code == cli.EXIT_CONFLICT
    code, _ = run("image", "get", "no-such-image")
    assert code == cli.EXIT_NOT_FOUND
    code, _ = run("image", "rm", fcwarm.generate_id())
    assert code == cli.EXIT_NOT_FOUND
    code, out = run("image", "rm", "minimal")
    assert code == 0 and "removed" in out


def test_snapshot_and_container_commands(env, capsys):
    run, kernel, fake = env
    code, image_id = run("image", "add", "rt", "--kernel", kernel, "--backend", "fake", "--memory-mib", "128")
    image_id = image_id.strip()
    code, out = run("snapshot", "create", "rt")
    assert code == 0, out
    assert "state" in out and "ready" in out
    progress = capsys.readouterr()
    code, out = run("--json", "snapshot", "ls")
    snaps = json.loads(out)
    assert code == 0 and len(snaps) == 1 and snaps[0]["state"] == "ready"
    sid = snaps[0]["id"]
    code, out = run("snapshot", "ls")
    assert code == 0 and sid in out and "STATE" in out
    code, out = run("--json", "snapshot", "get", sid)
    assert json.loads(out)["generation"] == 1
    code, out = run("--json", "container", "run", "rt", "--name", "c1")
    item = json.loads(out)
    assert code == 0 and item["boot_method"] == "warm" and item["fallback_reason"] == ""
    code, out = run("container", "ls")
    # Library mode: the container lived only while that CLI call's Service was open.
    assert code == 0
    code, out = run("--json", "container", "get", item["id"])
    assert code == 0 and json.loads(out)["boot_method"] == "warm"
    code, out = run("snapshot", "rebuild", sid)
    assert code == 0 and "queued" in out
    code, out = run("snapshot", "rm", sid)
    assert code == 0
    code, out = run("container", "run", "rt")
    assert code == 0 and "no_snapshot" in out and "cold" in out
    code, out = run("container", "rm", item["id"])
    assert code == 0
    # Unknown and malformed ids.
    assert run("snapshot", "get", fcwarm.generate_id())[0] == cli.EXIT_NOT_FOUND
    assert run("snapshot", "get", "../../x")[0] == cli.EXIT_USAGE
    assert run("container", "get", fcwarm.generate_id())[0] == cli.EXIT_NOT_FOUND
    assert run("snapshot", "create")[0] == cli.EXIT_USAGE
    fake.fail_snapshots = 1
    code, out = run("snapshot", "create", image_id)
    assert code == cli.EXIT_FAILURE  # unhealthy build


def test_interactive_create(env, monkeypatch):
    run, kernel, _ = env
    run("image", "add", "a", "--kernel", kernel, "--backend", "fake", "--memory-mib", "128")
    monkeypatch.setattr("builtins.input", lambda prompt="": "1")
    code, out = run("snapshot", "create", "-i")
    assert code == 0 and "1) a" in out
    monkeypatch.setattr("builtins.input", lambda prompt="": "7")
    code, out = run("snapshot", "create", "-i")
    assert code == cli.EXIT_USAGE


def test_usage_errors_and_version_from_the_command_line():
    base = [sys.executable, "-m", "fcwarm"]
    r = subprocess.run(base + ["--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"fcwarm {fcwarm.__version__}"
    r = subprocess.run(base + ["image"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(base + ["nonsense"], capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run(base, capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run(base + ["--server", "http://127.0.0.1:9", "image", "ls"], capture_output=True, text=True)
    assert r.returncode == 1 and "cannot reach" in r.stderr


def test_cli_over_the_rest_api(tmpdir_path):
    """`fcwarm --server URL ...` against the real fcwarm-server binary (backend none: VMs cannot start)."""
    server_bin = os.environ.get("FCWARM_SERVER_BIN", "")
    if not server_bin or not os.path.exists(server_bin):
        pytest.skip("fcwarm-server was not built")
    import time

    port_file = os.path.join(tmpdir_path, "port")
    proc = subprocess.Popen([server_bin, "--bind", "127.0.0.1:0", "--port-file", port_file, "--data-dir",
                             os.path.join(tmpdir_path, "srv"), "--backend", "none", "--log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.05)
        url = "http://127.0.0.1:" + open(port_file).read().strip()
        kernel = write_file(os.path.join(tmpdir_path, "vmlinux"), b"kernel")

        def run(*argv):
            out = io.StringIO()
            return cli.main(["--server", url, *argv], out=out), out.getvalue()

        code, out = run("image", "add", "rest-img", "--kernel", kernel, "--backend", "none", "--memory-mib", "128")
        assert code == 0, out
        image_id = out.strip()
        assert fcwarm.is_valid_id(image_id)
        code, out = run("--json", "image", "ls")
        assert code == 0 and json.loads(out)[0]["id"] == image_id
        code, out = run("--json", "snapshot", "create", "rest-img", "--no-wait")
        assert code == 0
        sid = json.loads(out)["id"]
        code, out = run("--json", "snapshot", "get", sid)
        assert code == 0 and json.loads(out)["runtime_image_id"] == image_id
        code, out = run("snapshot", "ls")
        assert code == 0 and sid in out
        assert run("snapshot", "get", fcwarm.generate_id())[0] == cli.EXIT_NOT_FOUND
        assert run("snapshot", "get", "..")[0] in (cli.EXIT_USAGE, cli.EXIT_NOT_FOUND)
        assert run("container", "get", fcwarm.generate_id())[0] == cli.EXIT_NOT_FOUND
        assert run("image", "add", "rest-img", "--kernel", kernel, "--backend", "none")[0] == cli.EXIT_CONFLICT
        code, _ = run("container", "run", "rest-img")  # the `none` backend cannot start VMs: 503
        assert code == cli.EXIT_FAILURE
        code, _ = run("snapshot", "rm", sid)
        assert code == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
