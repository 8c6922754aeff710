"""A full disk under the real fcwarm-server with the QEMU backend and the minimal guest (ctest label `vm`; issue 15,
"Disk full and a broken store"). The data directory is a small tmpfs, and the VMs' work directory (`vms/`) a
second one mounted on it:

1. a snapshot build whose memory copy does not fit fails with `resource_exhausted` naming its phase (the
   snapshot's `last_error` and the build event), leaves no partial generation (no `.tmp-` directory, no
   half-written file, no build VM), and the next container boots cold;
2. with space back (the file system grown), a rebuild publishes and containers are warm; then a restore that
   cannot create its clone's overlay (`vms/` full) falls back, the cold boot cannot either: the request ends
   507 `resource_exhausted` saying both, leaving no process, network namespace or work directory, and the
   snapshot's health untouched; with space back the next container is warm, without a restart.

Sizes, from a normal build of the minimal guest (512 MiB guest, TCG): its build VM's RAM file and the snapshot's
memory copy hold ≈ 125 MB each, the rest (state, disk overlay, store) ≈ 2 MB; a build takes ≈ 17 s, a cold boot
≈ 13 s, a warm one ≈ 1 s. Needs root (mounts) and QEMU; skips otherwise."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import Server, poll_item
from smallfs import SmallFs

GUEST = os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current")
FILES = ("bzImage", "initramfs.cpio.gz", "disk.ext4")
MB = 1 << 20
DATA_FS_MB = 180  # the build VM fits (≈ 125 MB), its memory copy beside it does not
DATA_FS_GROWN_MB = 400  # both fit
VMS_FS_MB = 200  # one cold VM's RAM file (≈ 125 MB)


def qemu_processes(under):
    """Pids of QEMU processes whose command line mentions `under`."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in os.path.basename(argv[0]) and any(under.encode() in a for a in argv):
            out.append(int(pid))
    return out


def netns_names():
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def wait_until(pred, timeout=20):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Env:
    pass


@pytest.fixture(scope="module")
def env():
    SmallFs.require()
    if not shutil.which("qemu-system-x86_64") or not shutil.which("qemu-img"):
        pytest.skip("qemu-system-x86_64 / qemu-img are not installed")
    missing = [f for f in FILES if not os.path.isfile(os.path.join(GUEST, f))]
    if missing:
        pytest.skip(f"guest artifacts missing in {GUEST}: {missing}")
    e = Env()
    e.data_fs = SmallFs(DATA_FS_MB)
    e.vms_fs = e.server = None
    try:
        e.data = os.path.join(e.data_fs.path, "data")
        os.makedirs(os.path.join(e.data, "vms"))
        e.vms_fs = SmallFs(VMS_FS_MB, at=os.path.join(e.data, "vms"))
        # Automatic rebuilds after the disk-full build wait the longest backoff (10 min): none runs meanwhile.
        e.server = Server("--backend", "qemu", data_dir=e.data)
        st, _, doc = e.server.post("/v1/images", {
            "name": "busybox", "backend": "qemu", "kernel_path": os.path.join(GUEST, "bzImage"),
            "initrd_path": os.path.join(GUEST, "initramfs.cpio.gz"),
            "rootfs_path": os.path.join(GUEST, "disk.ext4")})
        assert st == 201, doc
        e.image_id = doc["id"]
        yield e
    finally:
        if e.server:
            # Containers first (their VMs hold files on the mounts), then the server, then the mounts.
            try:
                for item in e.server.get("/v1/containers")[2]["items"]:
                    e.server.delete("/v1/containers/" + item["id"])
            except Exception:  # noqa: BLE001 (best effort: the server may be gone after a failure)
                pass
            e.server.stop()
            e.server.close()
        for pid in qemu_processes(e.data_fs.path):  # nothing should be left; never leave one behind
            os.kill(pid, 9)
        if e.vms_fs:
            e.vms_fs.close()
        e.data_fs.close()


def create_container(s, name):
    return s.post("/v1/containers", {"name": name, "runtime_image": "busybox", "wait": True})


def destroy(s, cid):
    st, _, doc = s.delete("/v1/containers/" + cid)
    assert st == 200, doc


def test_build_out_of_space_fails_cleanly_and_the_next_container_boots_cold(env):
    s = env.server
    st, _, doc = s.post("/v1/runtime-snapshots", {"runtime_image_id": env.image_id})
    assert st == 202, doc
    env.snapshot_id = doc["id"]
    item = poll_item(s, "/v1/runtime-snapshots/" + env.snapshot_id, "creating", 300, interval=0.5)
    assert item["state"] == "unhealthy", item
    err = item["last_error"]
    # The phase and the code, then where: the memory copy (or, had memory fit, the disk copy).
    assert err.startswith("build failed in phase snapshotting: resource_exhausted: snapshot: "), err
    assert ": write memory: " in err or ": write disk: " in err, err
    assert err.endswith(": No space left on device"), err
    st, _, doc = s.get(f"/v1/events?kind=build&snapshot_id={env.snapshot_id}")
    assert st == 200, doc
    assert [(e["outcome"], e["message"]) for e in doc["items"]] == [("failed", err)]

    # No partial generation, no build VM or its files; the space is back.
    snap_root = os.path.join(env.data, "snapshots")
    left = [os.path.join(d, n) for d, dirs, files in os.walk(snap_root) for n in dirs + files]
    assert all(not os.path.basename(p).startswith((".tmp-", "gen-")) and os.path.isdir(p) for p in left), left
    assert os.listdir(os.path.join(env.data, "build")) == []
    assert wait_until(lambda: not qemu_processes(env.data_fs.path)), qemu_processes(env.data_fs.path)
    assert env.data_fs.used_bytes() < 16 * MB, env.data_fs.used_bytes()

    # The next container boots cold.
    st, _, doc = create_container(s, "after-failed-build")
    assert st == 201, doc
    c = doc["item"]
    assert c["state"] == "running", c
    assert (c["boot_method"], c["fallback_reason"]) == ("cold", "snapshot_unhealthy"), c
    destroy(s, c["id"])


def test_restore_without_space_for_its_overlay_falls_back_cleanly_and_recovers(env):
    s = env.server
    # Space is back: the rebuild publishes, containers are warm.
    env.data_fs.resize(DATA_FS_GROWN_MB)
    st, _, doc = s.post(f"/v1/runtime-snapshots/{env.snapshot_id}/rebuild")
    assert st in (200, 202), doc
    item = poll_item(s, "/v1/runtime-snapshots/" + env.snapshot_id, "creating", 300, interval=0.5)
    assert item["state"] == "ready", item
    assert item["last_error"] == "", item
    st, _, doc = create_container(s, "warm-1")
    assert st == 201, doc
    assert doc["item"]["boot_method"] == "warm", doc
    destroy(s, doc["item"]["id"])
    assert wait_until(lambda: not qemu_processes(env.data_fs.path))

    # The VMs' work directory is full: the clone's overlay cannot be created, nor the cold boot's.
    namespaces = netns_names()
    env.vms_fs.fill()
    st, _, doc = create_container(s, "no-space")
    assert st == 507, doc
    assert doc["error"]["code"] == "resource_exhausted", doc
    msg = doc["error"]["message"]
    assert "after the warm path failed (restore_failed: " in msg, msg
    assert msg.count("No space left on device") == 2, msg  # the restore's overlay, then the cold boot's
    failed = [c for c in s.get("/v1/containers")[2]["items"] if c["name"] == "no-space"]
    assert len(failed) == 1 and failed[0]["state"] == "failed", failed
    assert "restore_failed" in failed[0]["last_error"], failed[0]
    # Nothing leaked: no process, namespace, work directory or file.
    assert wait_until(lambda: not qemu_processes(env.data_fs.path)), qemu_processes(env.data_fs.path)
    assert netns_names() == namespaces
    assert [n for n in os.listdir(os.path.join(env.data, "vms")) if n != ".filler"] == []
    # Not the snapshot's fault: its health is untouched.
    st, _, snap = s.get("/v1/runtime-snapshots/" + env.snapshot_id)
    assert (snap["item"]["state"], snap["item"]["consecutive_failures"]) == ("ready", 0), snap

    # Space is back: the next container is warm, without a restart.
    env.vms_fs.free()
    st, _, doc = create_container(s, "warm-2")
    assert st == 201, doc
    assert doc["item"]["boot_method"] == "warm", doc
    destroy(s, doc["item"]["id"])
    assert s.proc.poll() is None
