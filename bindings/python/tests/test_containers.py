"""Containers through the bindings: the ContainerManager (docker and vm runtimes), its records, logs and errors,
the Docker API proxy on VM handles, the after-restore hook, and GIL release under concurrent use."""
import datetime
import math
import os
import signal
import sys
import threading
import time

import pytest

import fcwarm
from conftest import write_file

DOCKER_SOCK = "/var/run/docker.sock"


def add_image(svc, base, name="docker", docker=True):
    kernel = write_file(os.path.join(base, "img", name, "vmlinux"), b"kernel " + name.encode())
    check = fcwarm.RuntimeCheck(kind="docker", path=DOCKER_SOCK) if docker else fcwarm.RuntimeCheck()
    return svc.images.register(fcwarm.RuntimeImage(name=name, backend="fake", kernel_path=kernel, memory_mib=128,
                                                   runtime_check=check))


def ready_snapshot(svc, image):
    snap = svc.snapshots.create(image.id)
    snap = svc.snapshots.wait_while_creating(snap.id, 20.0)
    assert snap.state == fcwarm.SnapshotState.READY, snap.last_error
    return snap


@pytest.fixture
def docker_env(fake_service):
    """(service, fake VMM, docker runtime image with a ready snapshot, snapshot)."""
    svc, fake, base = fake_service
    image = add_image(svc, base)
    snap = ready_snapshot(svc, image)
    return svc, fake, image, snap


@pytest.fixture
def hooked(fake_service):
    """Yields a setter for the after-restore hook and always removes the hook afterwards (the engine keeps the
    callable alive, and a callable that refers to the Service would keep the Service alive)."""
    engine = fake_service.svc.engine
    yield engine.set_after_restore_hook
    engine.set_after_restore_hook(None)


# ---- records, states, options ---------------------------------------------------------------------------------

def test_container_state_enum():
    s = fcwarm.ContainerState
    assert [str(v) for v in (s.PROVISIONING, s.RUNNING, s.EXITED, s.STOPPED, s.FAILED, s.LOST, s.DESTROYED)] == [
        "provisioning", "running", "exited", "stopped", "failed", "lost", "destroyed"]
    assert s.EXITED.label == "exited"
    assert s.parse("stopped") == s.STOPPED
    with pytest.raises(fcwarm.InvalidArgumentError) as e:
        s.parse("sleeping")
    assert "sleeping" in str(e.value)
    assert not s.RUNNING.finished and not s.PROVISIONING.finished
    assert s.EXITED.finished and s.FAILED.finished and s.DESTROYED.finished


def test_container_options_defaults_and_service_options():
    o = fcwarm.ContainerOptions()
    assert o.docker_timeout == datetime.timedelta(seconds=60)
    assert o.exec_timeout == datetime.timedelta(seconds=60)
    assert o.docker_api_version == "v1.41"
    opts = fcwarm.ServiceOptions()
    opts.containers.exec_timeout = datetime.timedelta(seconds=5)
    assert opts.containers.exec_timeout == datetime.timedelta(seconds=5)


def test_container_request_object():
    r = fcwarm.ContainerRequest("busybox:latest", runtime_image="docker", command=("echo", "hi"),
                                env={"A": "1"}, name="web", force_cold=True, wait_for_creating=1.5)
    assert r.runtime_image == "docker" and r.image == "busybox:latest"
    assert r.command == ["echo", "hi"] and r.env == {"A": "1"} and r.name == "web" and r.id == ""
    assert r.force_cold is True
    assert r.wait_for_creating == datetime.timedelta(seconds=1.5)
    r.command = ["true"]
    assert r.command == ["true"]
    assert fcwarm.ContainerRequest("x").wait_for_creating is None
    with pytest.raises(TypeError) as e:
        fcwarm.ContainerRequest("docker", command="echo hi")
    assert str(e.value).startswith("command:")


# ---- docker runtime -------------------------------------------------------------------------------------------

def test_create_async_starts_in_the_background(docker_env):
    svc, fake, image, snap = docker_env
    rec = svc.containers.create_async("busybox:latest", runtime_image="docker", command=["echo", "bg"])
    assert rec.state == fcwarm.ContainerState.PROVISIONING and rec.boot_method is None
    done = svc.containers.wait(rec.id, 20)
    assert done.state == fcwarm.ContainerState.EXITED and done.exit_code == 0
    assert done.boot_method == fcwarm.BootMethod.WARM
    assert "bg" in svc.containers.logs(rec.id).stdout_text
    with pytest.raises(fcwarm.InvalidArgumentError) as e:
        svc.containers.create_async("../x", runtime_image="docker")
    assert str(e.value).startswith("image:")


def test_docker_container_lifecycle(docker_env):
    svc, fake, image, snap = docker_env
    rec = svc.containers.create("busybox:latest", runtime_image="docker", command=["echo", "hello"],
                                env={"GREETING": "hi"}, name="web-1")
    assert fcwarm.is_valid_id(rec.id) and rec.vm_id == rec.id
    assert rec.runtime == "docker" and rec.runtime_image_id == image.id
    assert rec.image == "busybox:latest"
    assert rec.command == ["echo", "hello"] and rec.env == {"GREETING": "hi"} and rec.name == "web-1"
    assert rec.state in (fcwarm.ContainerState.RUNNING, fcwarm.ContainerState.EXITED)
    assert rec.boot_method == fcwarm.BootMethod.WARM and rec.fallback_reason == fcwarm.FallbackReason.NONE
    assert rec.snapshot_id == snap.id and rec.generation == 1
    assert len(rec.docker_id) == 64 and all(c in "0123456789abcdef" for c in rec.docker_id)
    assert {"restore", "provision", "container_create", "container_start", "total"} <= set(rec.timings)
    assert rec.started_at is not None and rec.hostname and rec.vm_state == "running"
    assert rec.id in repr(rec) and "docker" in repr(rec)

    got = svc.containers.get(rec.id)  # refreshed from the daemon: the fake's echo exited at once
    assert got.state == fcwarm.ContainerState.EXITED and got.exit_code == 0
    assert got.finished_at is not None and got.finished_at >= got.started_at
    assert svc.containers.wait(rec.id, 5).state == fcwarm.ContainerState.EXITED

    logs = svc.containers.logs(rec.id)
    assert logs.stdout == b"echo hello\n" and logs.stderr == b"done\n"
    assert logs.stdout_text == "echo hello\n" and logs.stderr_text == "done\n"
    assert logs.truncated is False
    assert "stdout=11 bytes" in repr(logs)
    assert fake.docker_requests >= 3  # create, start, inspect/logs

    assert [c.id for c in svc.containers.list()] == [rec.id]
    stopped = svc.containers.stop(rec.id)
    assert stopped.state == fcwarm.ContainerState.EXITED  # stopping an exited container keeps its state
    assert svc.engine.get(rec.id).state == fcwarm.VmState.STOPPED
    svc.containers.destroy(rec.id)
    assert svc.containers.get(rec.id).state == fcwarm.ContainerState.DESTROYED
    assert svc.containers.list() == []
    assert [c.id for c in svc.containers.list(include_destroyed=True)] == [rec.id]
    assert svc.containers.logs(rec.id).stdout == b"echo hello\n"  # kept after its VM is gone
    svc.containers.destroy(rec.id)  # idempotent
    assert fake.live == 0


def test_docker_exit_code_running_container_wait_and_stop(docker_env):
    svc, fake, _, _ = docker_env
    failed = svc.containers.create("busybox", runtime_image="docker", command=["exit", "7"])
    done = svc.containers.wait(failed.id, datetime.timedelta(seconds=5))
    assert done.state == fcwarm.ContainerState.EXITED and done.exit_code == 7

    sleeper = svc.containers.create("busybox:latest", runtime_image="docker", command=["sleep", "100"])
    t0 = time.monotonic()
    still = svc.containers.wait(sleeper.id, 0.3)
    assert time.monotonic() - t0 >= 0.25
    assert still.state == fcwarm.ContainerState.RUNNING and still.exit_code is None  # not an error
    assert svc.containers.wait(sleeper.id, 0).state == fcwarm.ContainerState.RUNNING
    assert svc.containers.logs(sleeper.id).stdout == b"sleep 100\n"  # live, from the daemon
    live_before = fake.live
    stopped = svc.containers.stop(sleeper.id)
    assert stopped.state == fcwarm.ContainerState.STOPPED
    assert fake.live == live_before - 1
    assert svc.containers.logs(sleeper.id).stdout == b"sleep 100\n"  # captured before the VM stopped
    assert svc.containers.stop(sleeper.id).state == fcwarm.ContainerState.STOPPED  # idempotent
    assert svc.containers.wait(sleeper.id, 1).state == fcwarm.ContainerState.STOPPED


def test_docker_failures_fail_the_container_and_release_its_vm(docker_env):
    svc, fake, _, _ = docker_env
    fake.fail_docker = 1
    with pytest.raises(fcwarm.UnavailableError) as e:
        svc.containers.create("busybox:latest", runtime_image="docker", command=["true"])
    assert "docker" in str(e.value)
    assert fake.fail_docker == 0
    [rec] = svc.containers.list()
    assert rec.state == fcwarm.ContainerState.FAILED and "docker" in rec.last_error
    assert rec.finished_at is not None
    assert fake.live == 0  # its VM was destroyed
    with pytest.raises(fcwarm.ConflictError):
        svc.containers.logs(rec.id)  # it never produced output
    # An image the daemon does not have.
    # An image the daemon does not have and cannot pull: the pull's error, in Docker's words.
    with pytest.raises(fcwarm.UnavailableError) as e:
        svc.containers.create("alpine:3", runtime_image="docker", command=["true"])
    assert "pull alpine:3: docker pull: manifest for alpine:3 not found" in str(e.value)
    assert fake.live == 0
    # The next one works.
    ok = svc.containers.create("busybox:latest", runtime_image="docker", command=["true"])
    assert ok.state != fcwarm.ContainerState.FAILED


def test_docker_api_version_option_reaches_the_daemon(tmpdir_path):
    fake = fcwarm.testing.FakeVmm()
    vmms = fcwarm.VmmRegistry()
    vmms.add(fake)
    opts = fcwarm.service_options(tmpdir_path)
    opts.restore.stop_grace = datetime.timedelta(0)
    opts.containers.docker_api_version = "v9.99"  # the fake daemon serves /v1.41 only
    svc = fcwarm.open_service(tmpdir_path, vmms, opts)
    try:
        add_image(svc, tmpdir_path)
        with pytest.raises(fcwarm.NotFoundError) as e:
            svc.containers.create("busybox:latest", runtime_image="docker")
        assert "page not found" in str(e.value)
    finally:
        svc = None
        import gc

        gc.collect()


def test_force_cold_and_no_snapshot(fake_service):
    svc, fake, base = fake_service
    add_image(svc, base)
    cold = svc.containers.create("busybox:latest", runtime_image="docker", command=["true"])
    assert cold.boot_method == fcwarm.BootMethod.COLD
    assert cold.fallback_reason == fcwarm.FallbackReason.NO_SNAPSHOT and cold.snapshot_id == ""
    assert "cold_boot" in cold.timings
    ready_snapshot(svc, svc.images.get_by_name("docker"))
    forced = svc.containers.create("busybox:latest", runtime_image="docker", force_cold=True)
    assert forced.boot_method == fcwarm.BootMethod.COLD and fake.cold_boots >= 2
    warm = svc.containers.create("busybox:latest", runtime_image="docker", wait_for_creating=0.0)
    assert warm.boot_method == fcwarm.BootMethod.WARM


# ---- vm runtime -----------------------------------------------------------------------------------------------

def test_vm_runtime_containers(fake_service):
    svc, fake, base = fake_service
    image = add_image(svc, base, "plain", docker=False)
    ready_snapshot(svc, image)
    vm = svc.containers.create(runtime_image=image.id)  # by id; no command: the VM is the container
    assert vm.runtime == "vm" and vm.state == fcwarm.ContainerState.RUNNING
    assert vm.docker_id == "" and vm.image == "" and vm.exit_code is None
    assert vm.boot_method == fcwarm.BootMethod.WARM
    with pytest.raises(fcwarm.ConflictError) as e:
        svc.containers.logs(vm.id)
    assert "no command" in str(e.value)
    assert svc.engine.handle(vm.id).is_alive()

    cmd = svc.containers.create(runtime_image="plain", command=["echo", "x y"], env={"K": "V"})
    assert cmd.state == fcwarm.ContainerState.EXITED and cmd.exit_code == 0
    assert "exec" in cmd.timings
    # The fake agent echoes the argv it ran: the environment is set through env(1), without a shell.
    assert svc.containers.logs(cmd.id).stdout == b"env K=V echo x y "

    with pytest.raises(fcwarm.InvalidArgumentError) as e:
        svc.containers.create("busybox:latest", runtime_image="plain")
    assert str(e.value).startswith("image:") and "docker" in str(e.value)
    svc.containers.stop(vm.id)
    assert svc.containers.get(vm.id).state == fcwarm.ContainerState.STOPPED


def test_prepare_start_abandon_and_ids(docker_env):
    svc, _, _, _ = docker_env
    req = fcwarm.ContainerRequest("busybox:latest", runtime_image="docker", command=["sleep", "5"])
    prepared = svc.containers.prepare(req)
    assert prepared.state == fcwarm.ContainerState.PROVISIONING and prepared.vm_state == ""
    assert svc.containers.provisioning() == 1
    with pytest.raises(fcwarm.ConflictError):
        svc.containers.destroy(prepared.id)  # still provisioning
    started = svc.containers.start(prepared.id)
    assert started.state == fcwarm.ContainerState.RUNNING and svc.containers.provisioning() == 0
    with pytest.raises(fcwarm.ConflictError) as e:
        svc.containers.start(prepared.id)
    assert "cannot be started again" in str(e.value)

    given = fcwarm.generate_id()
    other = svc.containers.prepare("busybox", runtime_image="docker", id=given, name="queued-1")
    assert other.id == given and other.name == "queued-1"
    svc.containers.abandon(given, "queue full")
    gone = svc.containers.get(given)
    assert gone.state == fcwarm.ContainerState.FAILED and gone.last_error == "queue full"
    with pytest.raises(fcwarm.ConflictError):
        svc.containers.abandon(given, "again")
    with pytest.raises(fcwarm.ConflictError) as e:
        svc.containers.create("busybox", runtime_image="docker", id=given)
    assert e.value.code == "already_exists" and "id" in str(e.value)
    with pytest.raises(fcwarm.NotFoundError):
        svc.containers.abandon(fcwarm.generate_id(), "x")


# ---- validation: every error names its field ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, field", [
    (dict(runtime_image="", image=None), fcwarm.InvalidArgumentError, "image: is required"),
    (dict(runtime_image="../etc"), fcwarm.InvalidArgumentError, "runtime_image"),
    (dict(runtime_image=7), TypeError, "runtime_image"),
    (dict(name="Bad Name"), fcwarm.InvalidArgumentError, "name"),
    (dict(name=3), TypeError, "name"),
    (dict(id="not-an-id"), fcwarm.InvalidArgumentError, "id"),
    (dict(image=""), fcwarm.InvalidArgumentError, "image"),
    (dict(image="-rm"), fcwarm.InvalidArgumentError, "image"),
    (dict(image="busybox latest"), fcwarm.InvalidArgumentError, "image"),
    (dict(image="Busybox"), fcwarm.InvalidArgumentError, "image"),
    (dict(image="a" * 10240), fcwarm.InvalidArgumentError, "image"),
    (dict(image="busybox@sha256:abc"), fcwarm.InvalidArgumentError, "image"),
    (dict(image=b"busybox"), TypeError, "image"),
    (dict(command="echo hi"), TypeError, "command"),
    (dict(command={"echo"}), TypeError, "command"),
    (dict(command=["echo", 1]), TypeError, "command[1]"),
    (dict(command=["echo", "a\0b"]), fcwarm.InvalidArgumentError, "command[1]"),
    (dict(command=["x"] * 257), fcwarm.InvalidArgumentError, "command"),
    (dict(env=["A=1"]), TypeError, "env"),
    (dict(env={"A": 1}), TypeError, "env['A']"),
    (dict(env={1: "x"}), TypeError, "env"),
    (dict(env={"1BAD": "x"}), fcwarm.InvalidArgumentError, "env"),
    (dict(env={"A-B": "x"}), fcwarm.InvalidArgumentError, "env"),
    (dict(env={"K": "a\0b"}), fcwarm.InvalidArgumentError, "env.K"),
    (dict(env={"K": "x" * 40000}), fcwarm.InvalidArgumentError, "command/env"),
    (dict(wait_for_creating=-1), fcwarm.InvalidArgumentError, "wait_for_creating"),
    (dict(wait_for_creating=math.nan), fcwarm.InvalidArgumentError, "wait_for_creating"),
    (dict(wait_for_creating=7200.0), fcwarm.InvalidArgumentError, "wait_for_creating"),
    (dict(wait_for_creating="soon"), TypeError, "wait_for_creating"),
])
def test_create_validation_names_the_field(docker_env, kwargs, error, field):
    svc, fake, _, _ = docker_env
    args = dict(runtime_image="docker", image="busybox:latest")
    args.update(kwargs)
    with pytest.raises(error) as e:
        svc.containers.create(**args)
    assert str(e.value).startswith(field), str(e.value)
    assert svc.containers.list(include_destroyed=True) == []  # nothing was recorded
    assert fake.live == 0


def test_lookup_errors(docker_env):
    svc, _, _, _ = docker_env
    with pytest.raises(fcwarm.NotFoundError):
        svc.containers.create("busybox", runtime_image="no-such-image")
    for call in (svc.containers.get, svc.containers.logs, svc.containers.stop, svc.containers.destroy,
                 svc.containers.wait):
        with pytest.raises(fcwarm.NotFoundError):
            call(fcwarm.generate_id())
        with pytest.raises(fcwarm.InvalidArgumentError) as e:
            call("../x")
        assert str(e.value).startswith("id:")
    rec = svc.containers.create("busybox", runtime_image="docker", command=["sleep", "1"])
    for bad in (-1, math.inf, math.nan, datetime.timedelta(seconds=-1)):
        with pytest.raises(fcwarm.InvalidArgumentError) as e:
            svc.containers.wait(rec.id, bad)
        assert str(e.value).startswith("timeout:")
    with pytest.raises(TypeError) as e:
        svc.containers.wait(rec.id, "1s")
    assert str(e.value).startswith("timeout:")


# ---- Docker API proxy on VM handles ---------------------------------------------------------------------------

def test_docker_requests_through_a_vm_handle(docker_env):
    svc, _, _, _ = docker_env
    rec = svc.containers.create("busybox:latest", runtime_image="docker", command=["sleep", "9"])
    vm = svc.engine.handle(rec.id)
    r = vm.docker("GET", f"/v1.41/containers/{rec.docker_id}/json")
    assert r.status == 200 and r.json()["State"]["Status"] == "running"
    assert isinstance(r.body, bytes) and r.text.startswith("{") and not r.truncated
    assert "200" in repr(r)
    req = fcwarm.DockerRequest(method="POST", path="/v1.41/containers/create",
                               body='{"Image": "busybox", "Cmd": ["exit", "4"]}', timeout=5.0)
    assert req.socket == DOCKER_SOCK and req.timeout == datetime.timedelta(seconds=5)
    created = vm.docker(req)
    assert created.status == 201
    new_id = created.json()["Id"]
    assert vm.docker("POST", f"/v1.41/containers/{new_id}/start", b"").status == 204
    assert vm.docker("GET", f"/v1.41/containers/{new_id}/json").json()["State"]["ExitCode"] == 4
    missing = vm.docker("GET", "/v1.41/containers/nope/json")
    assert missing.status == 404 and "No such container" in missing.text  # an HTTP error is an answer


# ---- after-restore hook ---------------------------------------------------------------------------------------

def test_after_restore_hook_sees_the_restored_vm(docker_env, hooked):
    svc, fake, _, _ = docker_env
    calls = []

    def hook(vm_id, vm):
        calls.append({"vm_id": vm_id, "thread": threading.get_ident(), "pid": vm.pid, "alive": vm.is_alive(),
                      "docker": vm.docker("GET", "/v1.41/containers/nope/json").status, "vm": vm})

    hooked(hook)
    results = []
    worker = threading.Thread(target=lambda: results.append(
        svc.containers.create("busybox:latest", runtime_image="docker", command=["true"])))
    worker.start()
    worker.join(30)
    [rec] = results
    assert rec.boot_method == fcwarm.BootMethod.WARM
    assert len(calls) == 1
    call = calls[0]
    assert call["vm_id"] == rec.id == rec.vm_id
    assert call["thread"] == worker.ident  # the provisioning thread: the caller's
    assert call["pid"] > 0 and call["alive"] is True
    assert call["docker"] == 404  # the guest's daemon answered through the hook's handle
    # The handle is valid only while the hook runs.
    stale = call["vm"]
    assert stale.pid == -1 and stale.is_alive() is False
    with pytest.raises(fcwarm.ConflictError) as e:
        stale.ping()
    assert "after-restore hook" in str(e.value)

    # Cold boots are not restores: no call. None removes the hook.
    svc.containers.create("busybox:latest", runtime_image="docker", force_cold=True)
    assert len(calls) == 1
    hooked(None)
    svc.containers.create("busybox:latest", runtime_image="docker")
    assert len(calls) == 1


def test_after_restore_hook_exception_is_reported_not_fatal(docker_env, hooked):
    svc, _, _, snap = docker_env
    reported = []

    def hook(vm_id, vm):
        raise RuntimeError("hook failed for " + vm_id)

    hooked(hook)
    old = sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        rec = svc.containers.create("busybox:latest", runtime_image="docker", command=["true"])
    finally:
        sys.unraisablehook = old
    # Provisioning went on as if there were no hook.
    assert rec.boot_method == fcwarm.BootMethod.WARM and rec.state != fcwarm.ContainerState.FAILED
    assert svc.health.stats(snap.id).failure_count == 0
    assert len(reported) == 1
    assert isinstance(reported[0].exc_value, RuntimeError)
    assert str(reported[0].exc_value) == "hook failed for " + rec.id


def test_after_restore_hook_injects_a_fault(docker_env, hooked):
    """A hook that kills the restored VM: verification fails, the container still starts, on a cold VM."""
    svc, fake, _, snap = docker_env
    killed = []

    def hook(vm_id, vm):
        os.kill(vm.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while vm.is_alive() and time.monotonic() < deadline:  # SIGKILL is asynchronous
            time.sleep(0.005)
        killed.append((vm_id, vm.is_alive()))

    hooked(hook)
    rec = svc.containers.create("busybox:latest", runtime_image="docker", command=["echo", "ok"])
    assert killed == [(rec.id, False)]
    assert rec.boot_method == fcwarm.BootMethod.COLD
    assert rec.fallback_reason == fcwarm.FallbackReason.VERIFY_FAILED
    assert svc.containers.wait(rec.id, 5).exit_code == 0
    assert svc.health.stats(snap.id).failure_count == 1


# ---- the GIL is released --------------------------------------------------------------------------------------

def test_two_threads_create_containers_concurrently(docker_env):
    svc, fake, _, _ = docker_env
    fake.restore_delay_ms = 600  # each restore blocks in C++ for 0.6 s
    spans, errors = {}, []

    def create(n):
        try:
            start = time.monotonic()
            rec = svc.containers.create("busybox:latest", runtime_image="docker", command=["echo", str(n)],
                                        name=f"par-{n}")
            spans[n] = (start, time.monotonic(), rec)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    # Both calls were inside the library at the same time: the second thread ran Python code while the first
    # was blocked in C++. Serialised by the GIL, they would overlap by ~0 s.
    overlap = min(end for _, end, _ in spans.values()) - max(start for start, _, _ in spans.values())
    assert overlap > 0.3, spans
    assert all(rec.boot_method == fcwarm.BootMethod.WARM for _, _, rec in spans.values())
    assert {svc.containers.logs(rec.id).stdout for _, _, rec in spans.values()} == {b"echo 0\n", b"echo 1\n"}


def test_many_threads_with_a_python_hook(docker_env, hooked):
    """Eight threads create and destroy containers while a Python hook runs on every provisioning thread."""
    svc, fake, _, _ = docker_env
    lock = threading.Lock()
    hook_calls = []

    def hook(vm_id, vm):
        with lock:
            hook_calls.append(vm_id)

    hooked(hook)
    created, errors = [], []

    def worker(n):
        try:
            for i in range(4):
                rec = svc.containers.create("busybox", runtime_image="docker", command=["echo", f"{n}-{i}"])
                svc.containers.get(rec.id)
                svc.containers.list()
                svc.containers.destroy(rec.id)
                created.append(rec.id)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(created) == 32
    assert sorted(hook_calls) == sorted(created)
    assert svc.containers.list() == [] and fake.live == 0
