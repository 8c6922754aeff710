#!/usr/bin/python3
"""Registers a runtime image, builds its runtime snapshot with a progress bar, restores N clones concurrently and
prints how each one booted.

    examples/python/warm_clones.py --guest-dir /var/cache/fcwarm/guest/current -n 4

Needs the `fcwarm` package (installed by ./scripts/run.sh or ./scripts/test.sh) and QEMU.
"""
import argparse
import concurrent.futures
import os
import sys
import tempfile
import time

import fcwarm

PHASES = ["queued", "booting", "waiting_runtime", "preloading", "parking", "quiescing", "pausing", "snapshotting", "verifying",
          "publishing", "done"]


def progress_bar(svc, snap_id):
    while True:
        snap = svc.snapshots.get(snap_id)
        if snap.state != fcwarm.SnapshotState.CREATING:
            print(f"\r[{'#' * len(PHASES)}] {snap.state.label:<20}")
            return snap
        idx = PHASES.index(snap.phase.label)
        print(f"\r[{'#' * (idx + 1)}{'.' * (len(PHASES) - idx - 1)}] {snap.phase.label:<20}", end="", flush=True)
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guest-dir", default=os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current"))
    ap.add_argument("--data-dir", default=None, help="default: a temporary directory")
    ap.add_argument("-n", "--clones", type=int, default=4)
    args = ap.parse_args()

    vmms = fcwarm.VmmRegistry()
    vmms.add(fcwarm.make_qemu_vmm())
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="fcwarm-example-")
    svc = fcwarm.open_service(data_dir, vmms)

    g = args.guest_dir
    image = svc.images.register(fcwarm.RuntimeImage(
        name=f"example-{int(time.time())}", backend="qemu", kernel_path=os.path.join(g, "bzImage"),
        initrd_path=os.path.join(g, "initramfs.cpio.gz"), rootfs_path=os.path.join(g, "disk.ext4"),
        memory_mib=512, runtime_check=fcwarm.RuntimeCheck(kind="file", path="/run/fcwarm-runtime-ready")))
    print(f"image {image.name} ({image.id})")

    # One cold boot for comparison (no snapshot yet).
    cold = svc.engine.provision(image.id)
    print(f"cold boot: {cold.timings['total']:.0f} ms")
    svc.engine.destroy(cold.id)

    snap = progress_bar(svc, svc.snapshots.create(image.id).id)
    if snap.state != fcwarm.SnapshotState.READY:
        print(f"build failed: {snap.last_error}", file=sys.stderr)
        return 1
    print(f"snapshot {snap.id}: generation {snap.generation}, {snap.disk_bytes / 1e6:.1f} MB on disk")

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.clones) as pool:
        vms = list(pool.map(lambda i: svc.engine.provision(image.id, name=f"clone-{i}"), range(args.clones)))
    print(f"{'NAME':<10} {'BOOT':<5} {'REASON':<18} {'ADDRESS':<16} {'RESTORE':>8} {'TOTAL':>8}")
    for vm in vms:
        print(f"{vm.name:<10} {vm.boot_method.label:<5} {vm.fallback_reason.label or '-':<18} {vm.address:<16} "
              f"{vm.timings.get('restore', vm.timings.get('cold_boot', 0)):>6.0f}ms {vm.timings['total']:>6.0f}ms")
    for vm in vms:
        svc.engine.destroy(vm.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
