"""The bindings expose the library: every class, result type and exception, thread safety, callbacks."""
import datetime
import os
import threading

import pytest

import fcwarm
from conftest import fake_service_options, write_file


def add_image(svc, base, name="img"):
    kernel = write_file(os.path.join(base, "img", name, "vmlinux"), b"kernel " + name.encode())
    return svc.images.register(fcwarm.RuntimeImage(name=name, backend="fake", kernel_path=kernel, memory_mib=128))


def test_version_and_constants():
    assert fcwarm.__version__.count(".") == 2
    assert fcwarm.SCHEMA_VERSION >= 1
    assert fcwarm.GUEST_PROTOCOL_VERSION == 1
    assert fcwarm.is_valid_id(fcwarm.generate_id())
    assert not fcwarm.is_valid_id("../x")


def test_status_table_drives_exceptions_and_cli_exit_codes():
    from fcwarm import cli, errors

    table = fcwarm.status_table()
    names = [row["name"] for row in table]
    assert names[0] == "ok" and len(names) == len(set(names)) == 10
    for row in table:
        if row["name"] == "ok":
            continue
        cls = getattr(errors, row["python_exception"])
        assert issubclass(cls, fcwarm.Error)
        assert cli._exit_code_for(row["name"]) == row["cli_exit_code"]
    by_name = {row["name"]: row for row in table}
    assert by_name["invalid_argument"]["python_exception"] == "InvalidArgumentError"
    assert by_name["invalid_argument"]["http_status"] == 400
    assert by_name["not_found"]["cli_exit_code"] == cli.EXIT_NOT_FOUND
    assert by_name["failed_precondition"]["cli_exit_code"] == cli.EXIT_CONFLICT
    assert cli._exit_code_for("no_such_code") == cli.EXIT_FAILURE


def test_image_registry(fake_service):
    svc, _, base = fake_service
    img = add_image(svc, base)
    assert fcwarm.is_valid_id(img.id)
    assert svc.images.get(img.id).name == "img"
    assert svc.images.get_by_name("img").id == img.id
    assert [i.id for i in svc.images.list()] == [img.id]
    assert img.path == img.kernel_path
    assert "RuntimeImage" in repr(img)
    svc.images.remove(img.id)
    with pytest.raises(fcwarm.NotFoundError):
        svc.images.get(img.id)


def test_exception_types(fake_service):
    svc, _, base = fake_service
    with pytest.raises(fcwarm.InvalidArgumentError) as e:
        svc.images.get("../etc/passwd")
    assert isinstance(e.value, ValueError) and isinstance(e.value, fcwarm.Error)
    assert e.value.code == "invalid_argument"
    assert "runtime_image_id" in str(e.value)
    with pytest.raises(fcwarm.NotFoundError) as e:
        svc.snapshots.get(fcwarm.generate_id())
    assert isinstance(e.value, LookupError)
    add_image(svc, base, "dup")
    with pytest.raises(fcwarm.ConflictError):
        add_image(svc, base, "dup")
    with pytest.raises(fcwarm.InvalidArgumentError) as e:
        svc.images.register(fcwarm.RuntimeImage(name="x", backend="fake", kernel_path="/nope", memory_mib=128))
    assert "kernel_path" in str(e.value)
    with pytest.raises(fcwarm.InvalidArgumentError):
        fcwarm.validate_name("name", "a/b")
    # Unavailable: the cold boot after a fallback fails.
    img = svc.images.get_by_name("dup")
    fake = svc.vmms.find("fake")
    fake.fail_cold_boots = 1
    with pytest.raises(fcwarm.UnavailableError):
        svc.engine.provision(img.id)
    # A second Service on the same store.
    with pytest.raises(fcwarm.ConflictError) as e:
        fcwarm.open_service(base, fcwarm.VmmRegistry())
    assert "in use" in str(e.value)


def test_snapshot_lifecycle_and_warm_restore(fake_service):
    svc, fake, base = fake_service
    img = add_image(svc, base)
    snap = svc.snapshots.create(img.id)
    assert snap.state == fcwarm.SnapshotState.CREATING
    snap = svc.snapshots.wait_while_creating(snap.id, datetime.timedelta(seconds=20))
    assert snap.state == fcwarm.SnapshotState.READY, snap.last_error
    assert str(snap.phase) == "done"
    assert snap.generation == 1
    assert len(snap.files) == 2 and all(len(f.xxh3) == 32 for f in snap.files)
    assert snap.compatibility["vmm.kind"] == "fake"
    assert [s.id for s in svc.snapshots.list()] == [snap.id]
    assert svc.snapshots.list(runtime_image_id=img.id, state=fcwarm.SnapshotState.READY)[0].id == snap.id

    vm = svc.engine.provision(img.id, name="web-1")
    assert vm.boot_method == fcwarm.BootMethod.WARM
    assert vm.fallback_reason == fcwarm.FallbackReason.NONE
    assert str(vm.fallback_reason) == ""
    assert {"restore", "identity", "runtime_verify", "total"} <= set(vm.timings)
    assert vm.state == fcwarm.VmState.RUNNING
    handle = svc.engine.handle(vm.id)
    assert handle.is_alive()
    assert handle.ping()["hostname"] == vm.hostname
    assert handle.exec(["echo", "hi"]).exit_code == 0
    assert svc.engine.get(vm.id).name == "web-1"
    assert len(svc.engine.list()) == 1

    stats = svc.health.stats(snap.id)
    assert stats.success_count == 1 and stats.last_used_at is not None
    gen = svc.snapshots.get(snap.id).generation
    svc.health.record_failure(snap.id, gen, "test failure")
    assert svc.health.stats(snap.id).consecutive_failures == 1
    svc.health.record_failure(snap.id, gen - 1, "a retired generation's failure")
    assert svc.health.stats(snap.id).consecutive_failures == 1
    assert svc.health.stale_outcomes == 1
    svc.health.record_success(snap.id, gen)
    assert svc.health.stats(snap.id).consecutive_failures == 0

    events = svc.store.events(kind="boot")
    assert events[-1].outcome == "warm" and events[-1].vm_id == vm.id

    svc.snapshots.rebuild(snap.id)
    snap2 = svc.snapshots.wait_while_creating(snap.id, 20.0)
    assert snap2.generation == 2
    assert os.path.exists(snap.generation_dir)  # still mapped by the live VM
    svc.engine.destroy(vm.id)
    assert not os.path.exists(snap.generation_dir)
    assert svc.engine.get(vm.id).state == fcwarm.VmState.DESTROYED

    svc.snapshots.delete(snap.id)
    cold = svc.engine.provision(img.id)
    assert cold.boot_method == fcwarm.BootMethod.COLD
    assert cold.fallback_reason == fcwarm.FallbackReason.NO_SNAPSHOT
    assert svc.engine.measured_cold_boot_ms(img.id) is not None
    assert svc.snapshots.collect_garbage().removed_generations >= 0
    assert svc.snapshots.reconcile_report.interrupted_builds == 0


def test_fallback_reasons_from_python(fake_service):
    svc, fake, base = fake_service
    img = add_image(svc, base)
    snap = svc.snapshots.create(img.id)
    svc.snapshots.wait_while_creating(snap.id, 20.0)
    fake.fail_restores = 1
    assert svc.engine.provision(img.id).fallback_reason == fcwarm.FallbackReason.RESTORE_FAILED
    fake.fail_verifies = 1
    assert svc.engine.provision(img.id).fallback_reason == fcwarm.FallbackReason.VERIFY_FAILED
    fake.set_host_version("9.9")
    assert svc.engine.provision(img.id, wait_for_creating=0.0).fallback_reason == fcwarm.FallbackReason.INCOMPATIBLE
    assert svc.engine.provision(img.id, force_cold=True).boot_method == fcwarm.BootMethod.COLD


def test_build_listener_from_worker_thread(fake_service):
    svc, fake, base = fake_service
    img = add_image(svc, base)
    seen = []
    done = threading.Event()

    def on_build(outcome):
        seen.append((threading.get_ident(), outcome.snapshot_id, outcome.ok, outcome.generation, outcome.code))
        done.set()

    token = svc.snapshots.add_build_listener(on_build)
    snap = svc.snapshots.create(img.id)
    assert done.wait(20)
    svc.snapshots.remove_build_listener(token)
    assert seen[0][1:] == (snap.id, True, 1, "ok")
    assert seen[0][0] != threading.get_ident()  # called on a library worker thread


def test_sixteen_threads_call_into_the_library(fake_service):
    svc, fake, base = fake_service
    img = add_image(svc, base)
    snap = svc.snapshots.create(img.id)
    svc.snapshots.wait_while_creating(snap.id, 20.0)
    errors = []
    results = []

    def worker(n):
        try:
            for i in range(10):
                vm = svc.engine.provision(img.id)
                results.append(vm.boot_method)
                svc.snapshots.list()
                svc.store.events(limit=5, newest_first=True)
                svc.health.stats(snap.id)
                svc.engine.destroy(vm.id)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 160
    assert all(m == fcwarm.BootMethod.WARM for m in results)
    assert svc.engine.list() == []
    assert fake.live == 0


def test_options_defaults_are_documented_values():
    opts = fcwarm.ServiceOptions()
    assert opts.health.unhealthy_threshold == 3
    assert opts.restore.wait_for_creating == datetime.timedelta(seconds=60)
    assert opts.snapshots.max_snapshots_per_image == 2
    opts.restore.full_verify_every = 7
    assert opts.restore.full_verify_every == 7


def test_select_backends_is_the_library_decision():
    import shutil

    vmms, choices = fcwarm.select_backends(["auto"])
    assert [c.requested for c in choices] == ["auto"]
    if shutil.which("qemu-system-x86_64"):
        assert choices[0].kind == "qemu" and vmms.kinds() == ["qemu"]
    # "auto" never fails: a QEMU that cannot run registers nothing and says why.
    bad = fcwarm.QemuOptions()
    bad.qemu_binary = "/nonexistent/qemu-system-x86_64"
    vmms, choices = fcwarm.select_backends(["auto"], qemu=bad)
    assert vmms.kinds() == [] and choices[0].kind == ""
    assert "/nonexistent/qemu-system-x86_64" in choices[0].detail
    # Named explicitly, it must work.
    with pytest.raises(fcwarm.NotFoundError) as e:
        fcwarm.select_backends(["qemu"], qemu=bad)
    assert "backend qemu" in str(e.value)
    with pytest.raises(fcwarm.InvalidArgumentError) as e:
        fcwarm.select_backends(["xen"])
    assert "xen" in str(e.value)
    with pytest.raises(fcwarm.InvalidArgumentError):
        fcwarm.select_backends([])


def test_backends_are_exposed():
    opts = fcwarm.FirecrackerOptions()
    assert opts.binary == "firecracker" and opts.agent_vsock_port == 52
    fc = fcwarm.make_firecracker_vmm(opts)
    assert fc.kind == "firecracker"
    reg = fcwarm.VmmRegistry()
    reg.add(fc)
    assert reg.kinds() == ["firecracker"] and reg.find("firecracker").kind == "firecracker"
    assert reg.find("nope") is None
    with pytest.raises(fcwarm.NotFoundError):
        fcwarm.probe_firecracker("/nonexistent/firecracker")
    q = fcwarm.QemuOptions()
    assert q.accelerator == "tcg" and q.memory_mode == fcwarm.QemuMemoryMode.FILE
    assert fcwarm.make_qemu_vmm(q).kind == "qemu"
    q.qemu_binary = "/nonexistent/qemu"
    with pytest.raises(fcwarm.Error):
        fcwarm.probe_qemu(q)


_CLOSE_WHILE_LISTENER_RUNS = r"""
import gc, os, sys, threading, time
import fcwarm

base = sys.argv[1]
fake = fcwarm.testing.FakeVmm()
vmms = fcwarm.VmmRegistry()
vmms.add(fake)
svc = fcwarm.open_service(base, vmms)
kernel = os.path.join(base, "vmlinux")
with open(kernel, "wb") as f:
    f.write(b"kernel")
img = svc.images.register(fcwarm.RuntimeImage(name="img", backend="fake", kernel_path=kernel, memory_mib=128))
entered = threading.Event()

def listener(outcome):
    entered.set()
    time.sleep(0.5)  # still running on the build worker when the Service goes away

token = svc.snapshots.add_build_listener(listener)
svc.snapshots.create(img.id)
assert entered.wait(20)
svc.snapshots.remove_build_listener(token)  # the worker may now hold the last reference to the callable
svc = None  # Python destroys the Service with the GIL held; its destructor joins the build worker
gc.collect()
print("closed")
"""


def test_service_closes_while_a_listener_runs(tmpdir_path):
    """Destroying a Service joins its build workers; one that still runs a Python listener needs the GIL, so the
    bindings release it while the Service is destroyed (this used to deadlock)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_LISTENER_RUNS, tmpdir_path], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("closed")


def test_runtime_image_from_artifacts(tmp_path):
    with pytest.raises(fcwarm.InvalidArgumentError, match="kind"):
        fcwarm.runtime_image_from_artifacts("bogus", str(tmp_path))
    with pytest.raises(fcwarm.NotFoundError, match="bzImage"):
        fcwarm.runtime_image_from_artifacts("docker", str(tmp_path))
    for f in ("bzImage", "initramfs.cpio.gz", "docker-rootfs.ext4"):
        (tmp_path / f).write_bytes(b"x")
    img = fcwarm.runtime_image_from_artifacts("docker", str(tmp_path))
    assert img.name == "docker" and img.runtime_check.kind == "docker" and img.shape.memory_mib == 1024
    assert img.rootfs_path == str(tmp_path / "docker-rootfs.ext4")


def test_pool_from_python(tmpdir_path):
    """RestoreOptions.pool from Python: a clone is kept ready, provision takes it, the pool refills."""
    import time

    fake, vmms, opts = fake_service_options(tmpdir_path)
    opts.restore.pool = {"img": 1}
    opts.restore.pool_idle_timeout = datetime.timedelta(minutes=2)
    assert opts.restore.pool == {"img": 1}
    assert fcwarm.RestoreOptions.MAX_POOL_SIZE == 16
    svc = fcwarm.open_service(tmpdir_path, vmms, opts)
    try:
        with pytest.raises(fcwarm.errors.NotFoundError):
            svc.engine.check_pool()
        img = add_image(svc, tmpdir_path)
        snap = svc.snapshots.wait_while_creating(svc.snapshots.create(img.id).id, datetime.timedelta(seconds=20))
        assert snap.state == fcwarm.SnapshotState.READY
        svc.engine.check_pool()

        def ready():
            p = svc.engine.pool()
            return len(p) == 1 and len(p[0].clones) == 1

        deadline = time.monotonic() + 10
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready()
        pooled = svc.engine.pool()[0]
        assert pooled.runtime_image_id == img.id and pooled.target == 1
        clone = pooled.clones[0]
        assert clone.pss_bytes is None or clone.pss_bytes > 0
        assert svc.engine.get(clone.vm_id).state == fcwarm.VmState.POOLED
        vm = svc.engine.provision(img.id, name="from-pool")
        assert vm.pooled and vm.instance_id == clone.vm_id
        assert "restore" not in vm.timings and "pool_take" in vm.timings
        deadline = time.monotonic() + 10
        while svc.engine.pool()[0].taken != 1 or not ready():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        del svc
        import gc

        gc.collect()
