#!/usr/bin/python3
"""Boots the docker runtime image (guest/build-docker-image.sh) under QEMU (TCG, microvm, 1 GiB) through the fcwarm
package: a cold boot whose runtime check (the agent's runtime_ready {"kind":"docker"}) passes once fcwarm-init
published /var/run/docker.sock, i.e. after the baked images are loaded and a pre-warm container ran. Checks right
then that `docker images` lists busybox, then
  1. runs a container through the agent's `docker` op (Docker Engine API over the guest's socket):
     POST /v1.41/containers/create, POST .../start, GET .../json until exited, GET .../logs (demultiplexed),
     DELETE the container;
  2. runs `docker run --rm --network none busybox sh -c 'hostname; head -c 16 /dev/urandom | od -An -tx1'`
     N times through the agent's exec op;
prints timings and cleans up (the VM destroyed, the temporary directory removed).

usage: scripts/docker-smoke.py [--image DIR] [--keep] [--runs N]
  DIR defaults to ${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/docker-current
exit 0 = pass, 1 = fail, 77 = skipped (no image / no qemu)
"""
import argparse
import json
import os
import shutil
import sys
import time

import fcwarm
from smoke_support import EXIT_PASS, EXIT_SKIP, Smoke, main_guard

NAME = "docker-smoke"
API = "/v1.41"
CONTAINER_CMD = "hostname; head -c 16 /dev/urandom | od -An -tx1"


def demux(raw):
    """Docker's multiplexed log stream: frames of [stream, 0, 0, 0, size (4 bytes big-endian)] + payload."""
    streams, off = {1: b"", 2: b""}, 0
    while off < len(raw):
        if off + 8 > len(raw):
            raise ValueError(f"log stream: partial frame header at byte {off}")
        kind, size = raw[off], int.from_bytes(raw[off + 4:off + 8], "big")
        if kind not in (0, 1, 2) or raw[off + 1:off + 4] != b"\0\0\0" or off + 8 + size > len(raw):
            raise ValueError(f"log stream: bad frame at byte {off}: {raw[off:off + 8]!r}")
        streams[kind if kind else 1] += raw[off + 8:off + 8 + size]
        off += 8 + size
    return streams[1].decode(errors="replace"), streams[2].decode(errors="replace")


def docker(smoke, vm, method, path, body=None, expect=None):
    """One Engine API request through the agent; returns (status, body bytes, seconds)."""
    t0 = time.monotonic()
    r = vm.docker(method, API + path, None if body is None else json.dumps(body), timeout=60.0)
    seconds = time.monotonic() - t0
    if expect is not None:
        smoke.check(r.status == expect and not r.truncated,
                    f"{method} {path}: HTTP {r.status} (want {expect}) truncated={r.truncated}: {r.body[:300]!r}")
    return r.status, r.body, seconds


def container_through_the_api(smoke, vm):
    _, body, t_create = docker(smoke, vm, "POST", "/containers/create", {
        "Image": "busybox:latest", "Cmd": ["sh", "-c", CONTAINER_CMD], "HostConfig": {"NetworkMode": "none"}},
        expect=201)
    cid = json.loads(body)["Id"]
    _, _, t_start = docker(smoke, vm, "POST", f"/containers/{cid}/start", expect=204)
    t0 = time.monotonic()
    while True:
        _, body, _ = docker(smoke, vm, "GET", f"/containers/{cid}/json", expect=200)
        state = json.loads(body)["State"]
        if state["Status"] == "exited":
            break
        smoke.check(time.monotonic() - t0 < 120, f"container still {state['Status']} after 120s")
        time.sleep(0.05)
    t_exit = time.monotonic() - t0
    smoke.check(state["ExitCode"] == 0, f"container exited with {state['ExitCode']}: {state.get('Error')}")
    _, body, _ = docker(smoke, vm, "GET", f"/containers/{cid}/logs?stdout=1&stderr=1", expect=200)
    out, err = demux(body)
    print(f"{NAME}: docker op: create {t_create:.2f}s, start {t_start:.2f}s, exited {t_exit:.2f}s after start "
          f"(exit {state['ExitCode']})\n  logs stdout: {out.strip()!r}\n  logs stderr: {err.strip()!r}", flush=True)
    lines = out.strip().splitlines()
    smoke.check(len(lines) == 2 and lines[0].strip() == cid[:12] and len(lines[1].split()) == 16,
                f"unexpected container logs: {out!r} (container {cid[:12]})")
    docker(smoke, vm, "DELETE", f"/containers/{cid}", expect=204)
    status, _, _ = docker(smoke, vm, "GET", f"/containers/{cid}/json")
    smoke.check(status == 404, f"container still there after DELETE: HTTP {status}")


def main():
    ap = argparse.ArgumentParser(prog="scripts/docker-smoke.py", usage="%(prog)s [--image DIR] [--keep] [--runs N]",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    ap.add_argument("--image", default=os.path.join(os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest"),
                                                    "docker-current"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("qemu-system-x86_64") is None or not hasattr(fcwarm, "make_qemu_vmm"):
        print(f"{NAME}: SKIP no qemu-system-x86_64")
        return EXIT_SKIP
    if not os.path.isfile(os.path.join(args.image, "docker-rootfs.ext4")):
        print(f"{NAME}: SKIP no image at {args.image}")
        return EXIT_SKIP
    image_dir = os.path.realpath(args.image)

    with Smoke(NAME, args.keep) as smoke:
        svc = smoke.open_service("data")
        image = svc.images.register(fcwarm.runtime_image_from_artifacts("docker", image_dir))
        t0 = time.monotonic()
        rec = svc.engine.provision(image.id, name="docker-smoke", force_cold=True)
        t = rec.timings
        print(f"{NAME}: agent ping after {(t['cold_boot'] + t['agent']) / 1000:.2f}s", flush=True)
        print(f"{NAME}: runtime_ready(docker) ready after {time.monotonic() - t0:.2f}s (runtime check "
              f"{t['runtime_verify'] / 1000:.2f}s after identity)", flush=True)
        vm = svc.engine.handle(rec.id)

        # No separate wait: runtime_ready means the images are loaded.
        images = smoke.run(vm, ["docker", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}"], 60.0)
        info = smoke.run(vm, ["docker", "info", "--format",
                              "driver={{.Driver}} cgroup={{.CgroupVersion}}/{{.CgroupDriver}} server={{.ServerVersion}}"],
                         60.0)
        smoke.run(vm, ["test", "-e", "/run/fcwarm-images-loaded"])
        socket = smoke.run(vm, ["readlink", "/var/run/docker.sock"])
        print(f"{NAME}: right after runtime_ready: " + " | ".join((images + info + socket).strip().splitlines()),
              flush=True)
        smoke.check(any(line.startswith("busybox:latest ") for line in images.splitlines()),
                    "busybox:latest not listed by `docker images` right after runtime_ready")

        container_through_the_api(smoke, vm)

        outputs = []
        for i in range(args.runs):
            ts = time.monotonic()
            r = vm.exec(["docker", "run", "--rm", "--network", "none", "busybox", "sh", "-c", CONTAINER_CMD],
                        timeout=120.0)
            out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
            print(f"{NAME}: docker run #{i + 1}: {time.monotonic() - ts:.2f}s exit {r.exit_code}\n"
                  f"  stdout: {out.strip()!r}\n  stderr: {err.strip()!r}", flush=True)
            smoke.check(r.exit_code == 0 and len(out.strip().splitlines()) == 2, "docker run failed")
            outputs.append(out)
        smoke.check(len(set(outputs)) == len(outputs), "docker run outputs not distinct")

        timeline = smoke.run(vm, ["cat", "/run/fcwarm-timings"])
        print(f"{NAME}: guest timeline (uptime):\n  " + timeline.strip().replace("\n", "\n  "), flush=True)
        print(f"{NAME}: total {time.monotonic() - t0:.2f}s", flush=True)
        svc.engine.destroy(rec.id)
    print(f"{NAME}: PASS")
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main_guard(NAME, main))
