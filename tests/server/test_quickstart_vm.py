"""The quick-start flow against the real QEMU backend (ctest label `vm`): create a snapshot, poll until ready,
create a container → boot_method "warm"; delete the snapshot → the next container is "cold" with
fallback_reason "no_snapshot". Skips when QEMU or the guest artifacts (FCWARM_GUEST_DIR, default
/var/cache/fcwarm/guest/current, built by guest/build-artifacts.sh) are missing."""

import os
import shutil

import pytest

from conftest import poll_item

GUEST = os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current")
FILES = ("bzImage", "initramfs.cpio.gz", "disk.ext4")


@pytest.fixture
def qemu_server(start_server):
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed")
    missing = [f for f in FILES if not os.path.isfile(os.path.join(GUEST, f))]
    if missing:
        pytest.skip(f"guest artifacts missing in {GUEST}: {missing}")
    args = ["--backend", "qemu"]
    if os.geteuid() != 0:
        args += ["--qemu-network", "none"]
    return start_server(*args)


def test_quickstart_warm_then_cold(qemu_server):
    s = qemu_server
    st, _, doc = s.post("/v1/images", {
        "name": "busybox", "backend": "qemu", "kernel_path": os.path.join(GUEST, "bzImage"),
        "initrd_path": os.path.join(GUEST, "initramfs.cpio.gz"), "rootfs_path": os.path.join(GUEST, "disk.ext4")})
    assert st == 201, doc
    image_id = doc["id"]
    st, _, doc = s.post("/v1/runtime-snapshots", {"runtime_image_id": image_id})
    assert st == 202, doc
    snap = doc["id"]
    item = poll_item(s, "/v1/runtime-snapshots/" + snap, "creating", 300, interval=0.5)
    assert item["state"] == "ready", item

    st, _, doc = s.post("/v1/containers", {"name": "c1", "runtime_image": "busybox", "wait": True})
    assert st == 201, doc
    assert doc["item"]["state"] == "running"
    assert doc["item"]["boot_method"] == "warm", doc
    assert doc["item"]["fallback_reason"] is None
    assert doc["item"]["timings"]["total"] > 0

    st, _, _ = s.delete("/v1/runtime-snapshots/" + snap)
    assert st == 200
    st, _, doc = s.post("/v1/containers", {"name": "c2", "runtime_image": "busybox", "wait": False})
    assert st == 202
    cid = doc["id"]
    item = poll_item(s, "/v1/containers/" + cid, "provisioning", 300, interval=0.5)
    assert item["state"] == "running", item
    assert item["boot_method"] == "cold"
    assert item["fallback_reason"] == "no_snapshot"

    _, _, text = s.get("/metrics")
    assert 'fcwarm_boots_total{outcome="warm"} 1' in text
    assert 'fcwarm_fallbacks_total{reason="no_snapshot"} 1' in text
    for item in s.get("/v1/containers")[2]["items"]:
        assert s.delete("/v1/containers/" + item["id"])[0] == 200
