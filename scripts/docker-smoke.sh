#!/usr/bin/env bash
# Boots the docker runtime image (guest/build-docker-image.sh) under QEMU (TCG, microvm, 1 GiB), waits for the
# agent's runtime_ready {"kind":"docker"} to say ready (fcwarm-init publishes /var/run/docker.sock only after
# the baked images are loaded and a pre-warm container ran), checks right then that `docker images` lists
# busybox, then
#   1. runs a container through the agent's `docker` op (Docker Engine API over the guest's socket):
#      POST /v1.41/containers/create, POST .../start, GET .../json until exited, GET .../logs (demultiplexed),
#      DELETE the container;
#   2. runs `docker run --rm --network none busybox sh -c 'hostname; head -c 16 /dev/urandom | od -An -tx1'`
#      N times through the agent's exec op;
# prints timings and cleans up (QEMU stopped by PID, temp dir removed).
#
# usage: scripts/docker-smoke.sh [--image DIR] [--keep] [--runs N]
#   DIR defaults to ${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/docker-current
# exit 0 = pass, 1 = fail, 77 = skipped (no image / no qemu)
set -euo pipefail

img="${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/docker-current"
keep=0
runs=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --image) img="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --runs) runs="$2"; shift 2 ;;
    *) echo "usage: $0 [--image DIR] [--keep] [--runs N]" >&2; exit 2 ;;
  esac
done
command -v qemu-system-x86_64 >/dev/null || { echo "docker-smoke: SKIP no qemu-system-x86_64"; exit 77; }
[[ -f "${img}/docker-rootfs.ext4" ]] || { echo "docker-smoke: SKIP no image at ${img}"; exit 77; }
img="$(readlink -f "${img}")"

D="$(mktemp -d /tmp/fcwarm-docker-smoke.XXXXXX)"
qemu-img create -q -f qcow2 -F raw -b "${img}/docker-rootfs.ext4" "${D}/disk.qcow2"

exec python3 - "${img}" "${D}" "${keep}" "${runs}" <<'PYEOF'
import base64, json, os, shutil, signal, socket, subprocess, sys, time

img, D, keep, runs = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
CMDLINE = "console=ttyS0 panic=-1 tsc_early_khz=2100000"
argv = [
    "qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "1024", "-smp", "1",
    "-nographic", "-no-reboot", "-nodefaults",
    "-serial", f"file:{D}/console.log",
    "-kernel", f"{img}/bzImage", "-initrd", f"{img}/initramfs.cpio.gz", "-append", CMDLINE,
    "-qmp", f"unix:{D}/qmp.sock,server=on,wait=off",
    "-device", "virtio-serial-device,id=vser0",
    "-chardev", f"socket,id=agent0,path={D}/agent.sock,server=on,wait=off",
    "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.fcwarm.agent.0",
    "-drive", f"id=disk0,file={D}/disk.qcow2,format=qcow2,if=none",
    "-device", "virtio-blk-device,drive=disk0",
    "-netdev", "user,id=net0",
    "-device", "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:01",
]
print("docker-smoke: " + " ".join(argv), flush=True)

rid = 0
def request(op, timeout=30.0, **args):
    """One connection per request; never half-close; keep it open until the reply line arrives."""
    global rid
    rid += 1
    msg = dict(v=1, id=rid, op=op, **args)
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            s.connect(f"{D}/agent.sock")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("connect")
            time.sleep(0.02)
    try:
        s.sendall((json.dumps(msg) + "\n").encode())
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(op)
            s.settimeout(left)
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return json.loads(buf.split(b"\n", 1)[0])
    finally:
        s.close()

def sh(cmd, timeout_ms=120000):
    r = request("exec", timeout=timeout_ms / 1000 + 10, argv=["sh", "-c", cmd], timeout_ms=timeout_ms)
    if not r.get("ok"):
        raise RuntimeError(f"exec failed: {r}")
    res = r["result"]
    return res["exit_code"], base64.b64decode(res["stdout_b64"]).decode(errors="replace"), \
        base64.b64decode(res["stderr_b64"]).decode(errors="replace")

log = open(f"{D}/qemu.log", "wb")
t0 = time.monotonic()
q = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
ok = False
try:
    t_ping = None
    while t_ping is None:
        if q.poll() is not None:
            raise RuntimeError(f"qemu exited with {q.returncode}")
        try:
            r = request("ping", timeout=5)
            if r.get("ok"):
                t_ping = time.monotonic() - t0
        except (TimeoutError, ConnectionError, OSError):
            pass
    print(f"docker-smoke: agent ping after {t_ping:.2f}s", flush=True)

    t_ready, last = None, None
    while t_ready is None:
        if q.poll() is not None:
            raise RuntimeError(f"qemu exited with {q.returncode}")
        if time.monotonic() - t0 > 300:
            raise RuntimeError(f"dockerd not ready after 300s: {last}")
        try:
            r = request("runtime_ready", timeout=15,
                        check={"kind": "docker", "socket": "/var/run/docker.sock", "timeout_ms": 2000})
            last = r
            if r.get("ok") and r["result"].get("ready"):
                t_ready = time.monotonic() - t0
                break
        except (TimeoutError, ConnectionError, OSError) as e:
            last = repr(e)
        time.sleep(0.2)
    print(f"docker-smoke: runtime_ready(docker) ready after {t_ready:.2f}s: {last['result']}", flush=True)

    # No separate wait: runtime_ready means the images are loaded.
    code, out, err = sh("docker images --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' && "
                        "docker info --format 'driver={{.Driver}} cgroup={{.CgroupVersion}}/{{.CgroupDriver}} server={{.ServerVersion}}' && "
                        "test -e /run/fcwarm-images-loaded && readlink /var/run/docker.sock")
    print(f"docker-smoke: right after runtime_ready (exit {code}): " + " | ".join(out.strip().splitlines()) + f" {err.strip()}", flush=True)
    if code != 0 or not any(l.startswith("busybox:latest ") for l in out.splitlines()):
        raise RuntimeError("busybox:latest not listed by `docker images` right after runtime_ready")

    # ---- the agent's docker op ----
    def docker(method, path, body=None, timeout_ms=60000):
        args = dict(method=method, path=path, timeout_ms=timeout_ms)
        if body is not None:
            args["body_b64"] = base64.b64encode(json.dumps(body).encode()).decode()
        r = request("docker", timeout=timeout_ms / 1000 + 10, **args)
        if not r.get("ok"):
            raise RuntimeError(f"docker {method} {path}: agent error {r.get('error')}")
        res = r["result"]
        return res["status"], base64.b64decode(res["body_b64"]), res["truncated"]

    def demux(raw):
        """Docker's multiplexed log stream: frames of [stream, 0, 0, 0, size (4 bytes big-endian)] + payload."""
        streams, off = {1: b"", 2: b""}, 0
        while off < len(raw):
            if off + 8 > len(raw):
                raise RuntimeError(f"log stream: partial frame header at byte {off}")
            kind, size = raw[off], int.from_bytes(raw[off + 4:off + 8], "big")
            if kind not in (0, 1, 2) or raw[off + 1:off + 4] != b"\0\0\0" or off + 8 + size > len(raw):
                raise RuntimeError(f"log stream: bad frame at byte {off}: {raw[off:off + 8]!r}")
            streams[kind if kind else 1] += raw[off + 8:off + 8 + size]
            off += 8 + size
        return streams[1].decode(errors="replace"), streams[2].decode(errors="replace")

    ts = time.monotonic()
    status, body, _ = docker("POST", "/v1.41/containers/create", {
        "Image": "busybox:latest",
        "Cmd": ["sh", "-c", "hostname; head -c 16 /dev/urandom | od -An -tx1"],
        "HostConfig": {"NetworkMode": "none"}})
    t_create = time.monotonic() - ts
    if status != 201:
        raise RuntimeError(f"containers/create: HTTP {status}: {body[:300]!r}")
    cid = json.loads(body)["Id"]
    ts = time.monotonic()
    status, body, _ = docker("POST", f"/v1.41/containers/{cid}/start")
    t_start = time.monotonic() - ts
    if status != 204:
        raise RuntimeError(f"containers/start: HTTP {status}: {body[:300]!r}")
    ts = time.monotonic()
    while True:
        status, body, _ = docker("GET", f"/v1.41/containers/{cid}/json")
        if status != 200:
            raise RuntimeError(f"containers/json: HTTP {status}: {body[:300]!r}")
        state = json.loads(body)["State"]
        if state["Status"] == "exited":
            break
        if time.monotonic() - ts > 120:
            raise RuntimeError(f"container still {state['Status']} after 120s")
        time.sleep(0.05)
    t_exit = time.monotonic() - ts
    if state["ExitCode"] != 0:
        raise RuntimeError(f"container exited with {state['ExitCode']}: {state.get('Error')}")
    status, body, truncated = docker("GET", f"/v1.41/containers/{cid}/logs?stdout=1&stderr=1")
    if status != 200 or truncated:
        raise RuntimeError(f"containers/logs: HTTP {status} truncated={truncated}: {body[:300]!r}")
    log_out, log_err = demux(body)
    lines = log_out.strip().splitlines()
    print(f"docker-smoke: docker op: create {t_create:.2f}s, start {t_start:.2f}s, exited {t_exit:.2f}s after start "
          f"(exit {state['ExitCode']})\n  logs stdout: {log_out.strip()!r}\n  logs stderr: {log_err.strip()!r}", flush=True)
    if len(lines) != 2 or lines[0].strip() != cid[:12] or len(lines[1].split()) != 16:
        raise RuntimeError(f"unexpected container logs: {log_out!r} (container {cid[:12]})")
    status, body, _ = docker("DELETE", f"/v1.41/containers/{cid}")
    if status != 204:
        raise RuntimeError(f"DELETE container: HTTP {status}: {body[:300]!r}")
    status, body, _ = docker("GET", f"/v1.41/containers/{cid}/json")
    if status != 404:
        raise RuntimeError(f"container still there after DELETE: HTTP {status}")

    outputs = []
    for i in range(runs):
        ts = time.monotonic()
        code, out, err = sh("docker run --rm --network none busybox sh -c 'hostname; head -c 16 /dev/urandom | od -An -tx1'")
        dt = time.monotonic() - ts
        print(f"docker-smoke: docker run #{i + 1}: {dt:.2f}s exit {code}\n  stdout: {out.strip()!r}\n  stderr: {err.strip()!r}", flush=True)
        if code != 0 or len(out.strip().splitlines()) != 2:
            raise RuntimeError("docker run failed")
        outputs.append(out)
    if len(set(outputs)) != len(outputs):
        raise RuntimeError("docker run outputs not distinct")

    code, out, _ = sh("cat /run/fcwarm-timings")
    print("docker-smoke: guest timeline (uptime):\n  " + out.strip().replace("\n", "\n  "), flush=True)
    print(f"docker-smoke: total {time.monotonic() - t0:.2f}s", flush=True)
    ok = True
except Exception as e:
    print(f"docker-smoke: FAIL: {e}", flush=True)
    try:
        print("docker-smoke: console tail:\n" + open(f"{D}/console.log", errors="replace").read()[-4000:])
    except OSError:
        pass
finally:
    if q.poll() is None:
        q.send_signal(signal.SIGTERM)
        try:
            q.wait(10)
        except subprocess.TimeoutExpired:
            q.kill()
            q.wait()
    log.close()
    if keep:
        print(f"docker-smoke: kept {D}")
    else:
        shutil.rmtree(D, ignore_errors=True)
print("docker-smoke: PASS" if ok else "docker-smoke: FAIL")
sys.exit(0 if ok else 1)
PYEOF
