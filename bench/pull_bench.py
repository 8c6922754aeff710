#!/usr/bin/python3
"""Pull of a 5 MB container image: cold vs warm vs preloaded (issue 13), through the library.

Container create -> container running of `fcwarm/pull-bench:5m` (busybox + 5 MiB of incompressible data, from
the offline test registry of tests/support/registry.py, used as the guests' registry mirror), three ways:

  cold       a cold-booted VM (force_cold) whose Docker daemon lacks the image: it pulls it
  warm       a clone restored from a snapshot built WITHOUT preload: the clone pulls it
  preloaded  a clone restored from a snapshot whose build pulled it (RuntimeImage.preload_images): no pull

Two runtime images over the same docker runtime image files are registered ("plain" without a preload list,
"preload" with it), so both snapshots exist side by side. Prints Markdown tables (for docs/benchmarks.md): the
p50 of the container's total, its pull and its other steps per path, and the two snapshot builds.

Nothing leaves the machine: egress "none" (the mirror is allowed), DNS = the registry's address (no resolver
there). Needs root (registry namespace, VM networks, iptables), QEMU, the docker runtime image and the registry
tools; removes everything it creates (and puts net.ipv4.ip_forward back).

Usage (from the source tree, after building the Python module):
  PYTHONPATH=build/ci/bindings/python/package /usr/bin/python3 bench/pull_bench.py --runs 3
      [--image-dir /var/cache/fcwarm/guest/docker-current] [--accel tcg|kvm] [--keep DIR]
"""

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "support"))
import registry  # noqa: E402

import fcwarm  # noqa: E402

IMAGE = "fcwarm/pull-bench:5m"
STEPS = ("vm_start", "agent", "identity", "runtime_verify", "pull", "container_create", "container_start", "total")


def p50(values):
    return statistics.median(values) if values else float("nan")


def run_containers(svc, image, n, cold, label):
    rows = []
    for i in range(n):
        rec = svc.containers.create(IMAGE, runtime_image=image.id, name=f"{label}{i}", force_cold=cold)
        if rec.state != fcwarm.ContainerState.RUNNING:
            raise SystemExit(f"{label} container {rec.id}: {rec.state}: {rec.last_error}")
        t = dict(rec.timings)
        t["vm_start"] = t.get("restore", t.get("cold_boot", 0.0))
        t.setdefault("pull", 0.0)
        rows.append({"timings": t, "boot": str(rec.boot_method), "pull": rec.pull})
        print(f"  {label} {i + 1}/{n}: {str(rec.boot_method)}, total {t['total']:.0f} ms, "
              f"pull {'none' if rec.pull is None else f'{rec.pull.ms:.0f} ms, {rec.pull.bytes} B, {rec.pull.layers} layer(s)'}",
              flush=True)
        svc.containers.destroy(rec.id)
    return rows


def build(svc, image):
    t0 = time.monotonic()
    snap = svc.snapshots.wait_while_creating(svc.snapshots.create(image.id).id, 1800.0)
    if snap.state != fcwarm.SnapshotState.READY:
        raise SystemExit(f"snapshot of {image.name}: {snap.state}: {snap.last_error}")
    return snap, (time.monotonic() - t0) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--image-dir", default=os.environ.get("FCWARM_DOCKER_IMAGE_DIR",
                                                          "/var/cache/fcwarm/guest/docker-current"))
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    ap.add_argument("--keep", help="data directory to use and keep (default: a temporary one, removed)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("pull_bench: needs root (registry namespace, VM networks, iptables)")

    with open("/proc/sys/net/ipv4/ip_forward") as f:
        ip_forward = f.read()
    data = args.keep or tempfile.mkdtemp(prefix="fcwarm-pull-bench-")
    try:
        with registry.Registry() as reg:
            images = registry.build_standard_images(os.path.join(reg.dir, "images"))
            reg.push(images["bench"])
            print(f"registry {reg.url}: pushed {IMAGE} ({images['bench'].size} bytes compressed)", flush=True)
            opts = fcwarm.service_options(data)
            opts.restore.egress = "none"
            opts.restore.dns = [reg.registry_ip]
            opts.restore.registry_mirrors = [reg.url]
            opts.restore.insecure_registries = [reg.address]
            qopts = fcwarm.QemuOptions()
            qopts.accelerator = args.accel
            vmms = fcwarm.VmmRegistry()
            vmms.add(fcwarm.make_qemu_vmm(qopts))
            svc = fcwarm.open_service(data, vmms, opts)
            try:
                results = bench(svc, reg, args)
            finally:
                del svc
        report(results, args)
    finally:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(ip_forward)
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


def bench(svc, reg, args):
    base = fcwarm.runtime_image_from_artifacts("docker", args.image_dir)
    plain = svc.images.register(fcwarm.RuntimeImage(
        name="plain", backend=base.backend, kernel_path=base.kernel_path, initrd_path=base.initrd_path,
        rootfs_path=base.rootfs_path, boot_args=base.boot_args, vcpus=base.shape.vcpus,
        memory_mib=base.shape.memory_mib, runtime_check=base.runtime_check))
    pre = svc.images.register(fcwarm.RuntimeImage(
        name="preload", backend=base.backend, kernel_path=base.kernel_path, initrd_path=base.initrd_path,
        rootfs_path=base.rootfs_path, boot_args=base.boot_args, vcpus=base.shape.vcpus,
        memory_mib=base.shape.memory_mib, runtime_check=base.runtime_check, preload_images=[IMAGE]))
    out = {}
    print("cold (force_cold, the VM pulls):", flush=True)
    out["cold"] = run_containers(svc, plain, args.runs, True, "cold")
    print("snapshot without preload:", flush=True)
    snap_plain, out["build_plain_ms"] = build(svc, plain)
    print(f"  {out['build_plain_ms']:.0f} ms, images {snap_plain.images}", flush=True)
    print("warm (the clone pulls):", flush=True)
    out["warm"] = run_containers(svc, plain, args.runs, False, "warm")
    print("snapshot with preload:", flush=True)
    mark = reg.mark()
    snap_pre, out["build_preload_ms"] = build(svc, pre)
    out["build_preload_pulls"] = reg.pulls("fcwarm/pull-bench", since=mark)
    print(f"  {out['build_preload_ms']:.0f} ms, images {snap_pre.images}, registry {out['build_preload_pulls']}",
          flush=True)
    deadline = time.monotonic() + 30  # the build's event is written just after its state
    while True:
        events = svc.store.events(kind="build", snapshot_id=snap_pre.id, newest_first=True, limit=1)
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    out["preloading_ms"] = events[0].timings.get("preloading", float("nan")) if events else float("nan")
    print("preloaded (no pull):", flush=True)
    mark = reg.mark()
    out["preloaded"] = run_containers(svc, pre, args.runs, False, "preloaded")
    out["preloaded_registry"] = reg.pulls("fcwarm/pull-bench", since=mark)
    return out


def report(r, args):
    now = datetime.date.today().isoformat()
    print(f"\n{now}, {args.runs} run(s) per path, accel {args.accel}:\n")
    print("| step (p50, ms) | cold | warm | preloaded |")
    print("| --- | ---: | ---: | ---: |")
    for step in STEPS:
        vals = [p50([row["timings"][step] for row in r[k]]) for k in ("cold", "warm", "preloaded")]
        name = f"**{step}**" if step == "total" else step
        print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in vals) + " |")
    pulled = [row["pull"] for row in r["warm"] + r["cold"] if row["pull"] is not None]
    if pulled:
        print(f"\npulled: {pulled[0].layers} layer(s), {pulled[0].bytes} bytes (compressed, as announced)")
    print(f"preloaded containers pulled: {sum(row['pull'] is not None for row in r['preloaded'])}; registry "
          f"requests for the image meanwhile: {r['preloaded_registry']}")
    print(f"snapshot build: without preload {r['build_plain_ms']:.0f} ms, with preload {r['build_preload_ms']:.0f} ms "
          f"(phase preloading {r['preloading_ms']:.0f} ms; registry {r['build_preload_pulls']})")


if __name__ == "__main__":
    main()
