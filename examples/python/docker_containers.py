#!/usr/bin/python3
"""Runs busybox containers with the Docker daemon inside their VMs: one on a cold-booted VM, then the runtime
snapshot is built, then N on warm-restored VMs; prints each container's output and per-step timings.

    examples/python/docker_containers.py --image-dir /var/cache/fcwarm/guest/docker-current -n 3

Needs the `fcwarm` package and the docker runtime image (both built by ./scripts/run.sh or ./scripts/test.sh)
and QEMU.
"""
import argparse
import os
import shutil
import sys
import tempfile

import fcwarm

COMMAND = ["sh", "-c", "echo hello from $(hostname); head -c 16 /dev/urandom | od -An -tx1"]
STEPS = ("restore", "cold_boot", "agent", "identity", "runtime_verify", "container_create", "container_start")


def run(svc, image_id, name, force_cold=False):
    rec = svc.containers.create("busybox:latest", runtime_image=image_id, name=name, command=COMMAND,
                                force_cold=force_cold)
    done = svc.containers.wait(rec.id, timeout=120)
    out = svc.containers.logs(rec.id).stdout_text.rstrip()
    steps = "  ".join(f"{k}={rec.timings[k]:.0f}" for k in STEPS if k in rec.timings)
    print(f"{name}: {rec.boot_method.label} {rec.fallback_reason.label or ''} running after "
          f"{rec.timings['total']:.0f} ms, {done.state.label} {done.exit_code}\n   steps (ms): {steps}")
    for line in out.splitlines():
        print(f"   | {line}")
    svc.containers.destroy(rec.id)
    return rec.timings["total"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-dir", default=os.environ.get("FCWARM_DOCKER_IMAGE_DIR",
                                                          "/var/cache/fcwarm/guest/docker-current"))
    ap.add_argument("-n", "--warm", type=int, default=3)
    args = ap.parse_args()

    vmms = fcwarm.VmmRegistry()
    vmms.add(fcwarm.make_qemu_vmm())
    data_dir = tempfile.mkdtemp(prefix="fcwarm-docker-example-")
    try:
        svc = fcwarm.open_service(data_dir, vmms)
        image = svc.images.register(fcwarm.runtime_image_from_artifacts("docker", args.image_dir))
        cold_ms = run(svc, image.id, "cold")
        snap = svc.snapshots.wait_while_creating(svc.snapshots.create(image.id).id, 600.0)
        if snap.state != fcwarm.SnapshotState.READY:
            print(f"snapshot build failed: {snap.last_error}", file=sys.stderr)
            return 1
        warm = [run(svc, image.id, f"warm-{i}") for i in range(args.warm)]
        best = min(warm)
        print(f"warm container running after {best:.0f} ms versus {cold_ms:.0f} ms cold ({cold_ms / best:.1f}x)")
        del svc
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
