"""Containers with the real Docker daemon inside QEMU VMs from Python (label docker): a cold container, the
runtime snapshot, two warm containers whose output differs, logs kept after destroy. Skips with the reason when
QEMU or the docker runtime image is missing, unless FCWARM_REQUIRE_DOCKER=1."""
import os
import shutil

import pytest

import fcwarm

pytestmark = pytest.mark.docker

IMAGE_DIR = os.environ.get("FCWARM_DOCKER_IMAGE_DIR", "/var/cache/fcwarm/guest/docker-current")
COMMAND = ["sh", "-c", 'echo "$GREETING $(hostname)"; head -c 16 /dev/urandom | od -An -tx1']


def _skip_reason():
    if not hasattr(fcwarm, "make_qemu_vmm"):
        return "this build of fcwarm has no QEMU backend"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    for f in ("bzImage", "initramfs.cpio.gz", "docker-rootfs.ext4"):
        if not os.path.exists(os.path.join(IMAGE_DIR, f)):
            return f"docker runtime image file {IMAGE_DIR}/{f} is missing (run guest/build-docker-image.sh)"
    return None


def _run(svc, image, name):
    rec = svc.containers.create("busybox:latest", runtime_image=image.id, name=name, command=COMMAND,
                                env={"GREETING": "hello"})
    assert rec.runtime == "docker" and len(rec.docker_id) == 64
    done = svc.containers.wait(rec.id, timeout=120)
    assert done.state == fcwarm.ContainerState.EXITED, done.last_error
    assert done.exit_code == 0
    lines = svc.containers.logs(rec.id).stdout_text.splitlines()
    # One container per VM in the VM's network namespace (host network mode): its hostname is the VM's.
    assert len(lines) == 2 and lines[0] == "hello " + rec.hostname, lines
    return rec, lines


def test_docker_containers_cold_then_warm(tmpdir_path):
    reason = _skip_reason()
    if reason:
        if os.environ.get("FCWARM_REQUIRE_DOCKER") == "1":
            pytest.fail("FCWARM_REQUIRE_DOCKER=1 but " + reason)
        pytest.skip(reason)
    vmms = fcwarm.VmmRegistry()
    vmms.add(fcwarm.make_qemu_vmm())
    svc = fcwarm.open_service(tmpdir_path, vmms)
    try:
        image = svc.images.register(fcwarm.runtime_image_from_artifacts("docker", IMAGE_DIR))
        cold, cold_lines = _run(svc, image, "cold")
        assert cold.boot_method == fcwarm.BootMethod.COLD
        svc.containers.destroy(cold.id)
        snap = svc.snapshots.wait_while_creating(svc.snapshots.create(image.id).id, 600.0)
        assert snap.state == fcwarm.SnapshotState.READY, snap.last_error
        outputs = {tuple(cold_lines)}
        for i in range(2):
            warm, lines = _run(svc, image, f"warm{i}")
            assert warm.boot_method == fcwarm.BootMethod.WARM and warm.snapshot_id == snap.id
            assert warm.timings["total"] < cold.timings["total"]
            outputs.add(tuple(lines))
            svc.containers.destroy(warm.id)
            # The output outlives the VM.
            assert svc.containers.logs(warm.id).stdout_text.splitlines() == lines
        assert len(outputs) == 3
        assert all(c.state == fcwarm.ContainerState.DESTROYED for c in svc.containers.list(include_destroyed=True))
    finally:
        del svc
