"""A real warm restore through QEMU from Python (label vm). Skips with the reason when QEMU or the guest
artifacts are missing."""
import os
import shutil

import pytest

import fcwarm

pytestmark = pytest.mark.vm

GUEST = os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current")


def _skip_reason():
    if not hasattr(fcwarm, "make_qemu_vmm"):
        return "this build of fcwarm has no QEMU backend"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    for f in ("bzImage", "initramfs.cpio.gz", "disk.ext4"):
        if not os.path.exists(os.path.join(GUEST, f)):
            return f"guest artifact {GUEST}/{f} is missing (run guest/build-artifacts.sh)"
    return None


def test_warm_restore_through_qemu(tmpdir_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    vmms = fcwarm.VmmRegistry()
    vmms.add(fcwarm.make_qemu_vmm())
    svc = fcwarm.open_service(tmpdir_path, vmms)
    try:
        image = svc.images.register(fcwarm.RuntimeImage(
            name="py-minimal", backend="qemu", kernel_path=os.path.join(GUEST, "bzImage"),
            initrd_path=os.path.join(GUEST, "initramfs.cpio.gz"), rootfs_path=os.path.join(GUEST, "disk.ext4"),
            memory_mib=256, runtime_check=fcwarm.RuntimeCheck(kind="file", path="/run/fcwarm-runtime-ready")))
        snap = svc.snapshots.create(image.id)
        snap = svc.snapshots.wait_while_creating(snap.id, 300.0)
        assert snap.state == fcwarm.SnapshotState.READY, snap.last_error
        vm = svc.engine.provision(image.id)
        assert vm.boot_method == fcwarm.BootMethod.WARM, vm.fallback_reason
        handle = svc.engine.handle(vm.id)
        assert handle.ping()["hostname"] == vm.hostname
        out = handle.exec(["cat", "/proc/sys/kernel/hostname"])
        assert out.stdout.decode().strip() == vm.hostname
        svc.engine.destroy(vm.id)
        # A `vm`-runtime container: a warm clone runs the command through the agent (argv, no shell).
        rec = svc.containers.create(runtime_image=image.id, command=["cat", "/proc/sys/kernel/hostname"], name="py-cat")
        assert rec.boot_method == fcwarm.BootMethod.WARM, rec.fallback_reason
        assert rec.state == fcwarm.ContainerState.EXITED and rec.exit_code == 0, rec.last_error
        assert svc.containers.logs(rec.id).stdout_text.strip() == rec.hostname
        svc.containers.destroy(rec.id)
        assert svc.containers.get(rec.id).state == fcwarm.ContainerState.DESTROYED
    finally:
        svc = None
        import gc

        gc.collect()
