#!/usr/bin/python3
"""Boots the fcwarm guest artifacts under QEMU (microvm, TCG) through the fcwarm package, talks to fcwarm-agent over
virtio-serial, builds a runtime snapshot (the library's build VM: cold boot, runtime ready, quiesce, QMP stop +
migrate to a file), restores clones from it in new QEMU processes (-incoming defer, migrate-incoming, cont) and
talks to their agents again. Prints timings; exits non-zero on any failure.

usage: scripts/guest-smoke.py [--artifacts DIR] [--mode stream|shared-ram|both] [--transport fd] [--keep]
  --artifacts DIR  guest artifact directory (default: ${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/current)
  --mode           stream: RAM in the migration stream (default); shared-ram: RAM in a memory-backend-file
                   (share=on while building, share=off for the clones) + x-ignore-shared (the library's memory
                   mode "file"); both: run both
  --transport      how the state file reaches QEMU: fd (the library opens it and passes it with QMP getfd,
                   migrate/migrate-incoming uri "fd:NAME"; the only transport the library uses)
  --keep           keep the temporary directory (console logs, snapshots)
Exit status: 0 pass, 1 fail, 2 usage.
"""
import argparse
import json
import os
import queue
import shutil
import sys
import time

import fcwarm
from smoke_support import EXIT_FAIL, EXIT_PASS, Smoke, main_guard

NAME = "guest-smoke"
MODES = {"stream": fcwarm.QemuMemoryMode.STREAM, "shared-ram": fcwarm.QemuMemoryMode.FILE}
USAGE = "%(prog)s [--artifacts DIR] [--mode stream|shared-ram|both] [--transport fd] [--keep]"


def ms(seconds):
    return round(seconds * 1000)


def qemu_cpu_ms(pid):
    """CPU time (user + system, all threads) the QEMU process `pid` used so far: a guest process that spins keeps
    the TCG vCPU thread busy, an idle guest costs QEMU almost nothing."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")


def check_cold_vm(smoke, svc, image, marker_name, tag):
    """Cold boot: agent ping, console, data disk, runtime marker and identity. Returns (ms to ping, boot_id)."""
    smoke.log(f"[{tag}] cold boot")
    t0 = time.monotonic()
    rec = svc.engine.provision(image.id, name=f"{tag}-cold", force_cold=True)
    wall = time.monotonic() - t0
    t = rec.timings
    to_ping = t["cold_boot"] + t["agent"]
    vm = svc.engine.handle(rec.id)
    info = vm.ping()
    smoke.log(f"[{tag}] cold boot to agent ping: {to_ping:.0f} ms (boot_id {info['boot_id']}); provisioned in "
              f"{ms(wall)} ms: " + ", ".join(f"{k} {t[k]:.0f}" for k in ("cold_boot", "agent", "identity",
                                                                          "runtime_verify")))
    deadline = time.monotonic() + 5
    while True:
        with open(vm.console_log, errors="replace") as f:
            if any(line.startswith("fcwarm-init: ready") for line in f):
                break
        smoke.check(time.monotonic() < deadline, f"[{tag}] no 'fcwarm-init: ready' on the console")
        time.sleep(0.05)

    marker = smoke.run(vm, ["cat", f"/mnt/data/{marker_name}"])
    smoke.check(marker.startswith("fcwarm data disk "), f"unexpected marker content: {marker!r}")
    smoke.log(f"[{tag}] exec cat /mnt/data/{marker_name}: {marker.strip()}")
    # The engine's runtime verification (kind file, /run/fcwarm-runtime-ready) passed, or provision had failed.
    smoke.check(rec.state == fcwarm.VmState.RUNNING and "runtime_verify" in t, f"[{tag}] not running: {rec.state}")

    hostname = smoke.run(vm, ["hostname"]).strip()
    smoke.check(hostname == rec.hostname == info["hostname"], f"hostname not set: {hostname!r}, want {rec.hostname}")
    if smoke.has_network():
        addr = smoke.run(vm, ["ip", "-4", "addr", "show", "dev", "eth0"])
        route = smoke.run(vm, ["ip", "route"])
        mac = smoke.run(vm, ["cat", "/sys/class/net/eth0/address"]).strip()
        smoke.check(f"inet {rec.address}" in addr, f"address {rec.address} not set: {addr}")
        smoke.check("default via " in route, f"route not set: {route}")
        smoke.check(mac == rec.mac, f"mac {rec.mac} not set: {mac}")
        smoke.log(f"[{tag}] identity applied (hostname {hostname}, mac {mac}, ip {rec.address}, "
                  f"{route.splitlines()[0].strip()}, entropy, clock)")
    else:
        smoke.log(f"[{tag}] identity applied (hostname {hostname}; not root: no network interface to check)")
    svc.engine.destroy(rec.id)
    return to_ping, info["boot_id"]


def build_snapshot(smoke, svc, image, tag):
    """The runtime snapshot: returns (ms the VM was paused + migrated, bytes of the device/RAM stream)."""
    outcomes = queue.Queue()  # the build's BuildOutcome, from a build worker thread
    token = svc.snapshots.add_build_listener(outcomes.put)
    try:
        t0 = time.monotonic()
        snap = svc.snapshots.create(image.id)
        outcome = outcomes.get(timeout=600)
        wall = time.monotonic() - t0
    finally:
        svc.snapshots.remove_build_listener(token)
    snap = svc.snapshots.get(snap.id)
    smoke.check(outcome.ok and snap.state == fcwarm.SnapshotState.READY,
                f"[{tag}] snapshot build failed: {outcome.error}")
    phases = outcome.timings
    files = {f.name: f.size for f in snap.files}
    snapshot_ms = phases.get("pausing", 0) + phases["snapshotting"]
    smoke.log(f"[{tag}] snapshot: " + json.dumps({"phases_ms": {k: round(v, 1) for k, v in phases.items()},
                                                 "files": files, "build_wall_ms": ms(wall)}, sort_keys=True))
    return snapshot_ms, files["state.bin"]


def check_clones(smoke, svc, image, cold_boot_id, marker_name, tag):
    """Two warm clones: restore to agent ping, the build VM's boot, a writable disk of their own, their own
    identity, and an agent that stays idle while no host is connected. Returns ms from restore to ping."""
    smoke.log(f"[{tag}] restore")
    t0 = time.monotonic()
    rec = svc.engine.provision(image.id, name=f"{tag}-clone-1")
    wall = time.monotonic() - t0
    smoke.check(rec.boot_method == fcwarm.BootMethod.WARM, f"[{tag}] clone booted cold: {rec.fallback_reason.label}")
    t = rec.timings
    to_ping = t["restore"] + t["agent"]
    smoke.log(f"[{tag}] restore (QEMU start) to agent ping: {to_ping:.0f} ms; provisioned in {ms(wall)} ms: "
              + ", ".join(f"{k} {t[k]:.0f}" for k in ("verify_checksums", "restore", "agent", "identity",
                                                      "runtime_verify")))
    vm = svc.engine.handle(rec.id)
    boot_id = vm.ping()["boot_id"]
    smoke.check(boot_id != cold_boot_id, f"[{tag}] the clone has the cold VM's boot_id")
    smoke.run(vm, ["cat", f"/mnt/data/{marker_name}"])
    wrote = smoke.run(vm, ["sh", "-c", "echo clone > /mnt/data/clone-write && sync && cat /mnt/data/clone-write"])
    smoke.check(wrote == "clone\n", f"clone cannot write its disk: {wrote!r}")
    smoke.check(smoke.run(vm, ["hostname"]).strip() == rec.hostname, "identity in clone: hostname not set")
    # What a guest that spins for 3 s costs QEMU under this host's load (the yardstick of the idle check below).
    before = qemu_cpu_ms(vm.pid)
    vm.exec(["timeout", "3", "sh", "-c", "while :; do :; done"], timeout=10.0)
    busy_ms = qemu_cpu_ms(vm.pid) - before

    # The second clone, seen right after its restore, before the library connects to its agent: the host side of
    # the agent's port is closed, so the agent must wait (SIGIO), not spin. Then its pre-identity ping.
    seen = {}

    def after_restore(vm_id, clone):
        before = qemu_cpu_ms(clone.pid)
        time.sleep(3)
        seen["cpu_ms"] = qemu_cpu_ms(clone.pid) - before
        seen["ping"] = clone.ping()

    svc.engine.set_after_restore_hook(after_restore)
    try:
        rec2 = svc.engine.provision(image.id, name=f"{tag}-clone-2")
    finally:
        svc.engine.set_after_restore_hook(None)
    smoke.check(rec2.boot_method == fcwarm.BootMethod.WARM, f"[{tag}] clone 2 booted cold: {rec2.fallback_reason.label}")
    smoke.check("ping" in seen, f"[{tag}] the after-restore hook did not run")
    smoke.log(f"[{tag}] QEMU CPU in ~3 s: {seen['cpu_ms']} ms while no host was connected to the agent, "
              f"{busy_ms} ms for a guest busy loop")
    smoke.check(seen["cpu_ms"] * 3 < busy_ms, "agent spins while disconnected")
    before = seen["ping"]
    vm2 = svc.engine.handle(rec2.id)
    after = vm2.ping()
    smoke.check(before["boot_id"] == boot_id == after["boot_id"], f"[{tag}] clones do not share the build's boot_id")
    smoke.check(before["hostname"] not in (rec.hostname, rec2.hostname) and after["hostname"] == rec2.hostname,
                f"[{tag}] clone kept {before['hostname']!r} instead of taking {rec2.hostname!r}")
    smoke.log(f"[{tag}] clones restored the build VM (boot_id {boot_id}, hostname {before['hostname']}) and "
              f"took their own identity ({rec.hostname}, {rec2.hostname})")
    for r in (rec, rec2):
        svc.engine.destroy(r.id)
    return to_ping


def run_mode(smoke, artifacts, manifest, tag):
    svc = smoke.open_service(tag, MODES[tag])
    image = svc.images.register(fcwarm.runtime_image_from_artifacts("minimal", artifacts))
    cold_ms, cold_boot_id = check_cold_vm(smoke, svc, image, manifest["disk_marker"], tag)
    snapshot_ms, state_bytes = build_snapshot(smoke, svc, image, tag)
    restore_ms = check_clones(smoke, svc, image, cold_boot_id, manifest["disk_marker"], tag)
    smoke.log(f"[{tag}] OK")
    return cold_ms, snapshot_ms, state_bytes, restore_ms


def main():
    ap = argparse.ArgumentParser(prog="scripts/guest-smoke.py", usage=USAGE,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    ap.add_argument("--artifacts", default=os.path.join(os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest"),
                                                        "current"))
    ap.add_argument("--mode", choices=["stream", "shared-ram", "both"], default="stream")
    ap.add_argument("--transport", choices=["fd"], default="fd")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    for f in ("bzImage", "initramfs.cpio.gz", "disk.ext4", "manifest.json"):
        path = os.path.join(args.artifacts, f)
        if not (os.path.isfile(path) and os.path.getsize(path) > 0):
            print(f"{NAME}: {args.artifacts}/{f} missing (run guest/build-artifacts.sh)", file=sys.stderr)
            return EXIT_FAIL
    for tool in ("qemu-system-x86_64", "qemu-img"):
        if shutil.which(tool) is None:
            print(f"{NAME}: {tool} not installed", file=sys.stderr)
            return EXIT_FAIL
    artifacts = os.path.realpath(args.artifacts)
    with open(os.path.join(artifacts, "manifest.json")) as f:
        manifest = json.load(f)

    results = {}
    with Smoke(NAME, args.keep) as smoke:
        for tag in (["stream", "shared-ram"] if args.mode == "both" else [args.mode]):
            results[tag] = run_mode(smoke, artifacts, manifest, tag)
    for tag, (cold_ms, snapshot_ms, state_bytes, restore_ms) in results.items():
        print(f"{NAME}: {tag}: cold boot to ping {cold_ms:.0f} ms; snapshot {snapshot_ms:.0f} ms ({state_bytes} byte "
              f"state); restore to ping {restore_ms:.0f} ms")
    print(f"{NAME}: PASS")
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main_guard(NAME, main))
