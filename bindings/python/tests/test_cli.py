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
    code, out = run("--json", "container", "run", "--runtime-image", "rt", "--name", "c1")
    item = json.loads(out)
    assert code == 0 and item["boot_method"] == "warm" and item["fallback_reason"] is None
    assert item["runtime"] == "vm" and item["state"] == "running" and item["name"] == "c1"
    code, out = run("container", "ls")
    # Library mode: the container lived only while that CLI call's Service was open.
    assert code == 0
    code, out = run("--json", "container", "get", item["id"])
    got = json.loads(out)
    assert code == 0 and got["boot_method"] == "warm"
    # Library mode: the command that started it stopped it on exit (it would otherwise be lost).
    assert got["state"] == "stopped"
    assert "stopped: in library mode" in capsys.readouterr().err
    code, out = run("snapshot", "rebuild", sid)
    assert code == 0 and "queued" in out
    code, out = run("snapshot", "rm", sid)
    assert code == 0
    code, out = run("container", "run", "--runtime-image", "rt")
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
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "1")
    code, out = run("snapshot", "create", "-i")  # the only image: taken without asking
    assert code == 0 and "using the only runtime image: a" in out and asked == []
    assert "is ready:" in out and "MiB on disk" in out
    run("image", "add", "b", "--kernel", kernel, "--backend", "fake", "--memory-mib", "128")
    code, out = run("snapshot", "create", "-i")
    assert code == 0 and "1) a" in out and "2) b" in out and len(asked) == 1
    monkeypatch.setattr("builtins.input", lambda prompt="": "7")
    code, out = run("snapshot", "create", "-i")
    assert code == cli.EXIT_USAGE
    # Container runtime images (runtime check kind docker) are the candidates when there are any.
    for name in ("d1", "d2"):
        run("image", "add", name, "--kernel", kernel, "--backend", "fake", "--memory-mib", "128",
            "--check-kind", "docker", "--check-path", "/var/run/docker.sock")
    monkeypatch.setattr("builtins.input", lambda prompt="": "2")
    code, out = run("snapshot", "create", "-i")
    assert code == 0 and "container runtime images:" in out and "2) d2" in out and ") a " not in out


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
        code, _ = run("container", "run", "--runtime-image", "rest-img")  # the `none` backend cannot start VMs: 503
        assert code == cli.EXIT_FAILURE
        code, _ = run("container", "run", "--runtime-image", "rest-img", "--env", "1BAD=x", "--", "true")
        assert code == cli.EXIT_USAGE
        # A container accepted in the background (202) fails on the `none` backend: wait, get, logs, stop, rm.
        import urllib.request

        req = urllib.request.Request(url + "/v1/containers", method="POST",
                                     data=json.dumps({"name": "bg", "runtime_image": "rest-img", "wait": False}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202
            cid = json.loads(resp.read())["id"]
        code, out = run("--json", "container", "wait", cid, "--timeout", "30")
        item = json.loads(out)
        assert code == 0 and item["state"] == "failed" and item["id"] == cid
        assert set(item) == ITEM_KEYS  # the same shape as library mode
        code, out = run("--json", "container", "get", cid)
        assert code == 0 and "none" in json.loads(out)["last_error"]
        assert run("container", "logs", cid)[0] == cli.EXIT_CONFLICT  # it never produced output
        assert run("container", "logs", fcwarm.generate_id())[0] == cli.EXIT_NOT_FOUND
        code, out = run("--json", "container", "stop", cid)
        assert code == 0 and json.loads(out)["state"] == "failed"
        assert run("container", "rm", cid)[0] == 0
        code, out = run("--json", "container", "ls", "--all")
        assert code == 0 and [(i["id"], i["state"]) for i in json.loads(out)][0] == (cid, "destroyed")
        code, _ = run("snapshot", "rm", sid)
        assert code == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- containers -----------------------------------------------------------------------------------------------

# The fields of a container item of the REST API (GET /v1/containers/{id}); library mode prints the same.
ITEM_KEYS = {"id", "vm_id", "name", "image", "runtime_image_id", "runtime", "state", "exit_code",
             "docker_id", "boot_method", "fallback_reason", "timings", "snapshot_id", "generation", "address", "mac",
             "hostname", "vm_state", "last_error", "created_at", "updated_at", "started_at", "finished_at",
             "command", "env", "ports", "pull", "working_dir", "user", "read_only", "container_path",
             "container_path_reason"}


@pytest.fixture
def docker_cli(env):
    """The CLI in library mode with a docker runtime image `docker` that has a ready snapshot."""
    run, kernel, fake = env
    code, out = run("image", "add", "docker", "--kernel", kernel, "--backend", "fake", "--memory-mib", "128",
                    "--check-kind", "docker", "--check-path", "/var/run/docker.sock")
    assert code == 0, out
    image_id = out.strip()
    code, out = run("snapshot", "create", "docker")
    assert code == 0 and "ready" in out
    return run, image_id, fake


def test_container_run_logs_wait_stop_local(docker_cli, capsys):
    run, image_id, fake = docker_cli
    code, out = run("container", "run", "busybox:latest", "--runtime-image", "docker", "--name", "c1",
                    "--env", "A=1", "-e", "B=x=y", "--", "echo", "hello", "--name", "-e")
    assert code == 0, out
    assert out.splitlines()[0].split() == ["ID", "STATE", "BOOT_METHOD", "FALLBACK_REASON", "TIMINGS"]
    cid = out.splitlines()[1].split()[0]
    assert fcwarm.is_valid_id(cid) and "warm" in out
    code, out = run("--json", "container", "get", cid)
    item = json.loads(out)
    assert code == 0 and set(item) == ITEM_KEYS
    # Everything after `--` is the command, verbatim; options before it are the CLI's.
    assert item["command"] == ["echo", "hello", "--name", "-e"]
    assert item["env"] == {"A": "1", "B": "x=y"}
    assert item["name"] == "c1" and item["runtime"] == "docker" and item["image"] == "busybox:latest"
    assert item["runtime_image_id"] == image_id and item["vm_id"] == cid
    assert item["state"] == "exited" and item["exit_code"] == 0
    assert item["boot_method"] == "warm" and item["fallback_reason"] is None
    assert isinstance(item["timings"]["total"], float) and item["started_at"].endswith("Z")

    capsys.readouterr()
    code, out = run("container", "logs", cid)
    assert code == 0 and out == "echo hello --name -e\n"
    assert capsys.readouterr().err == "done\n"  # the container's stderr goes to stderr
    code, out = run("--json", "container", "logs", cid)
    assert code == 0 and json.loads(out) == {"stdout": "echo hello --name -e\n", "stderr": "done\n",
                                             "truncated": False}
    code, out = run("container", "wait", cid, "--timeout", "1")
    assert code == 0 and out.splitlines()[1].split()[:3] == [cid, "exited", "0"]
    code, out = run("--json", "container", "stop", cid)
    assert code == 0 and json.loads(out)["state"] == "exited"
    code, out = run("--json", "container", "ls")
    assert code == 0 and [i["id"] for i in json.loads(out)] == [cid]
    code, out = run("container", "ls")
    assert code == 0 and out.splitlines()[0].split()[:4] == ["ID", "NAME", "RUNTIME", "STATE"] and cid in out
    code, out = run("container", "rm", cid)
    assert code == 0 and "destroyed" in out
    code, out = run("--json", "container", "ls")
    assert json.loads(out) == []
    code, out = run("--json", "container", "ls", "--all")
    assert [(i["id"], i["state"]) for i in json.loads(out)] == [(cid, "destroyed")]


def test_container_run_wait(docker_cli, capsys):
    run, _, _ = docker_cli
    capsys.readouterr()
    code, out = run("container", "run", "busybox", "--runtime-image", "docker", "--wait", "--", "echo", "hi")
    assert code == 0 and out == "echo hi\n"  # only the container's output
    assert capsys.readouterr().err == "done\n"
    # The container's failure is the command's failure.
    code, out = run("container", "run", "busybox", "--runtime-image", "docker", "--wait", "--", "exit", "3")
    assert code == cli.EXIT_FAILURE and out == "exit 3\n"
    assert "exited with code 3" in capsys.readouterr().err
    code, out = run("--json", "container", "run", "busybox", "--runtime-image", "docker", "--wait", "--force-cold",
                    "--", "exit", "5")
    result = json.loads(out)
    assert code == cli.EXIT_FAILURE
    assert set(result) == {"item", "logs"} and set(result["item"]) == ITEM_KEYS
    assert result["item"]["exit_code"] == 5 and result["item"]["boot_method"] == "cold"
    assert result["item"]["fallback_reason"] == "no_snapshot"
    assert result["logs"] == {"stdout": "exit 5\n", "stderr": "done\n", "truncated": False}
    # Still running at the deadline: failure; library mode then stops it, keeping its output.
    capsys.readouterr()
    code, out = run("container", "run", "busybox", "--runtime-image", "docker", "--wait", "--timeout", "0.3",
                    "--", "sleep", "100")
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILURE and "still running after 0.3 s" in err and "stopped: in library mode" in err
    code, out = run("--json", "container", "ls")
    sleeper = [i for i in json.loads(out) if i["command"] == ["sleep", "100"]][0]
    assert sleeper["state"] == "stopped"
    code, out = run("container", "logs", sleeper["id"])
    assert code == 0 and out == "sleep 100\n"
    code, out = run("container", "wait", sleeper["id"], "--timeout", "0")
    assert code == 0 and "stopped" in out


def test_container_run_vm_runtime_and_errors(env, docker_cli, capsys, monkeypatch):
    run, _, fake = docker_cli
    _, kernel, _ = env
    assert run("image", "add", "plain", "--kernel", kernel, "--backend", "fake", "--memory-mib", "128")[0] == 0
    code, out = run("--json", "container", "run", "--runtime-image", "plain", "--env", "K=V", "--", "echo", "x")
    item = json.loads(out)
    assert code == 0 and item["runtime"] == "vm" and item["state"] == "exited" and item["docker_id"] == ""
    code, out = run("container", "logs", item["id"])
    assert code == 0 and out == "env K=V echo x "
    # A bare --env NAME takes its value from the CLI's environment.
    monkeypatch.setenv("FCWARM_TEST_VALUE", "from-env")
    monkeypatch.delenv("FCWARM_TEST_UNSET", raising=False)
    code, out = run("--json", "container", "run", "--runtime-image", "plain", "--env", "FCWARM_TEST_VALUE", "--", "true")
    assert code == 0 and json.loads(out)["env"] == {"FCWARM_TEST_VALUE": "from-env"}
    capsys.readouterr()

    def fails(expected_code, *argv, says):
        code, _ = run(*argv)
        err = capsys.readouterr().err
        assert code == expected_code, (argv, err)
        assert says in err, (argv, err)

    fails(cli.EXIT_USAGE, "container", "run", "busybox", "--env", "=x", says="--env '=x'")
    fails(cli.EXIT_USAGE, "container", "run", "busybox", "--env", "FCWARM_TEST_UNSET", says="FCWARM_TEST_UNSET")
    fails(cli.EXIT_USAGE, "container", "run", "busybox", "--runtime-image", "docker", "--env", "1BAD=x",
          says="env: '1BAD'")
    fails(cli.EXIT_USAGE, "container", "run", "--runtime-image", "docker", says="image: is required")
    fails(cli.EXIT_USAGE, "container", "run", "Busybox", says="image: 'Busybox'")
    fails(cli.EXIT_USAGE, "container", "run", "busybox", "--runtime-image", "plain", says="image:")
    fails(cli.EXIT_USAGE, "container", "run", "busybox", "--runtime-image", "docker", "--name", "Bad Name",
          says="name:")
    fails(cli.EXIT_USAGE, "container", "run", "busybox", "--runtime-image", "docker", "--timeout", "3",
          says="--timeout applies to --wait only")
    fails(cli.EXIT_USAGE, "container", "run", "busybox", "--runtime-image", "docker", "--wait", "--timeout", "-1",
          says="--timeout")
    fails(cli.EXIT_USAGE, "container", "wait", item["id"], "--timeout", "nan", says="--timeout")
    fails(cli.EXIT_NOT_FOUND, "container", "run", "busybox", "--runtime-image", "nope", says="nope")
    fails(cli.EXIT_NOT_FOUND, "container", "wait", fcwarm.generate_id(), says="not found")
    fails(cli.EXIT_NOT_FOUND, "container", "logs", fcwarm.generate_id(), says="not found")
    fails(cli.EXIT_NOT_FOUND, "container", "stop", fcwarm.generate_id(), says="not found")
    fails(cli.EXIT_USAGE, "container", "logs", "../x", says="id:")
    code, out = run("--json", "container", "run", "--runtime-image", "plain")  # no command: the VM is the container
    vm_item = json.loads(out)
    fails(cli.EXIT_CONFLICT, "container", "logs", vm_item["id"], says="no command")
    # The Docker daemon cannot be reached: the container fails and the command says why.
    fake.fail_docker = 1
    fails(cli.EXIT_FAILURE, "container", "run", "busybox", "--runtime-image", "docker", says="docker")
    code, out = run("--json", "container", "ls")
    assert code == 0 and any(i["state"] == "failed" and "docker" in i["last_error"] for i in json.loads(out))


class _FakeRestServer:
    """A scripted stand-in for fcwarm-server's container endpoints that records every request."""

    def __init__(self):
        import http.server
        import threading

        self.requests = []
        self.wait_answers = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                outer.requests.append((self.command, self.path, body))
                status, obj = outer.route(self.command, self.path, body)
                self._answer(status, obj)

            do_GET = do_POST = do_DELETE = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    CID = "6f1c2a4e-8b7d-4c3e-9a1f-2d3b4c5e6f70"

    def item(self, state, exit_code=None):
        return {"id": self.CID, "vm_id": self.CID, "name": "n", "image": "busybox", "runtime_image_id": "i",
                "runtime": "docker", "state": state, "exit_code": exit_code,
                "boot_method": "warm", "fallback_reason": None, "timings": {"total": 12.5}, "last_error": ""}

    def route(self, method, path, body):
        base = "/v1/containers/" + self.CID
        if method == "POST" and path == "/v1/containers":
            return 201, {"id": self.CID, "item": self.item("running")}
        if method == "POST" and path.startswith(base + "/wait?"):
            return 200, {"item": self.wait_answers.pop(0) if self.wait_answers else self.item("exited", 0)}
        if method == "GET" and path == base + "/logs":
            return 200, {"stdout": "hello\n", "stderr": "warn\n", "truncated": False}
        if method == "POST" and path == base + "/stop":
            return 200, {"item": self.item("stopped")}
        if method == "GET" and path.split("?")[0] == "/v1/containers":
            return 200, {"items": [self.item("exited", 0)]}
        if method == "DELETE" and path == base:
            return 200, {"ok": True}
        return 404, {"error": {"code": "not_found", "message": f"container '{path}' not found"}}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_container_commands_speak_the_rest_api(capsys):
    """The remote backend's requests: bodies, paths, query parameters, and the wait loop over 600 s chunks."""
    srv = _FakeRestServer()
    try:
        def run(*argv):
            out = io.StringIO()
            return cli.main(["--server", srv.url, *argv], out=out), out.getvalue()

        srv.wait_answers = [srv.item("running"), srv.item("exited", 0)]
        code, out = run("container", "run", "busybox", "--runtime-image", "docker", "-e", "A=1", "--force-cold",
                        "--wait", "--", "echo", "--wait")
        assert code == 0 and out == "hello\n"
        assert capsys.readouterr().err == "warn\n"
        method, path, body = srv.requests[0]
        assert (method, path) == ("POST", "/v1/containers")
        assert body["image"] == "busybox" and body["runtime_image"] == "docker" and "wait" not in body
        assert body["command"] == ["echo", "--wait"] and body["env"] == {"A": "1"} and body["force_cold"] is True
        assert "name" not in body  # optional: the server generates none, the id names the container
        waits = [p for m, p, _ in srv.requests if "/wait" in p]
        assert waits == [f"/v1/containers/{srv.CID}/wait?timeout_ms=600000"] * 2  # no deadline: 600 s chunks
        assert srv.requests[-1][:2] == ("GET", f"/v1/containers/{srv.CID}/logs")

        srv.requests.clear()
        code, out = run("container", "run", "nginx:alpine", "--name", "web")  # minimal body
        assert code == 0 and srv.CID in out
        assert srv.requests[0][2] == {"name": "web", "image": "nginx:alpine"}

        srv.requests.clear()
        srv.wait_answers = [srv.item("running")]
        code, out = run("container", "wait", srv.CID, "--timeout", "0.5")
        assert code == 0 and "exited" in out
        [(_, path, _)] = [r for r in srv.requests if "/wait" in r[1]][:1]
        timeout_ms = int(path.rsplit("timeout_ms=", 1)[1])
        assert 0 < timeout_ms <= 500
        srv.wait_answers = [srv.item("running")] * 50
        code, out = run("container", "wait", srv.CID, "--timeout", "0")
        assert code == cli.EXIT_FAILURE and "still running" in capsys.readouterr().err

        code, out = run("--json", "container", "logs", srv.CID)
        assert json.loads(out) == {"stdout": "hello\n", "stderr": "warn\n", "truncated": False}
        code, out = run("--json", "container", "stop", srv.CID)
        assert code == 0 and json.loads(out)["state"] == "stopped"
        assert srv.requests[-1] == ("POST", f"/v1/containers/{srv.CID}/stop", None)
        code, out = run("container", "ls", "--all")
        assert code == 0 and srv.requests[-1][1] == "/v1/containers?include_destroyed=true"
        code, out = run("container", "rm", srv.CID)
        assert code == 0 and srv.requests[-1][:2] == ("DELETE", f"/v1/containers/{srv.CID}")
        code, _ = run("container", "logs", fcwarm.generate_id())
        assert code == cli.EXIT_NOT_FOUND
    finally:
        srv.close()
