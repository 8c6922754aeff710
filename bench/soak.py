#!/usr/bin/python3
"""Soak benchmark of fcwarm-server (issue 15, section 5; numbers in docs/benchmarks.md).

Starts its own fcwarm-server (QEMU backend, a temporary data directory, loopback port 0) with the minimal guest
image registered as `minimal` (--bootstrap-image-dir), builds the image's runtime snapshot, then runs N
container cycles through the REST API with C workers at once:

    POST /v1/containers {"runtime_image": "minimal", "command": ["sh", "-c", "echo soak-<i>"], "wait": true}
      -> 201, state exited, exit code 0
    GET  /v1/containers/<id>/logs  -> stdout "soak-<i>\\n"
    DELETE /v1/containers/<id>     -> 200

and reports failures (must be 0), per-cycle latency p50/p95 (and per step), warm/cold boots, the server's RSS
(VmRSS) and open fd count sampled at the start, the middle and the end of the cycles (and every 10 %), then
checks that nothing leaked, with the server still running and again after it stopped: no container left
undestroyed, no VMM process naming the server's data directory, no VM work directory, and on the host no network
namespace, veth or iptables rule of any VM the server ran (names and rule comments derive from the VM ids; other
programs' on a shared host are left out), and after exit none of fcwarm's own chains unless another server's VM
rules still use them. It also prints what the server's fds point at,
end vs start, and the database size beside RSS (destroyed containers' records stay, by design). Exit status 1 on any failure
or leak, 2 when the server or the snapshot could not be set up.

usage: bench/soak.py [--cycles N] [--concurrency C] [--server PATH] [--guest DIR] [--keep]
Run it under `flock /work/notes/vm.lock` on a shared machine (it boots VMs and creates netns/iptables rules).
`--cycles 20` is a smoke check.
"""
import argparse
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GUEST_FILES = ("bzImage", "initramfs.cpio.gz", "disk.ext4")


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def host_address():
    """This host's own address on the default-route interface (as tests/server/conftest.py): the guests'
    resolver, so their queries are refused at once and never leave the machine. Only reads configuration."""
    try:
        route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True,
                               timeout=10).stdout.split()
        if "dev" not in route:
            return None
        dev = route[route.index("dev") + 1]
        addrs = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", dev, "scope", "global"],
                               capture_output=True, text=True, timeout=10).stdout.split()
    except OSError:
        return None
    return addrs[addrs.index("inet") + 1].split("/")[0] if "inet" in addrs else None


# ---- host state -------------------------------------------------------------------------------------------

def fd_targets(pid):
    """What the process's fds point at ("socket:[…]" and "pipe:[…]" without their inode), sorted."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(re.sub(r":\[\d+\]$", "", os.readlink(f"/proc/{pid}/fd/{fd}")))
        except OSError:
            pass
    return sorted(out)


def db_bytes(data_dir):
    """Size of the server's SQLite database file (its WAL not counted: it grows and shrinks with checkpoints)."""
    try:
        return os.path.getsize(os.path.join(data_dir, "fcwarm.db"))
    except OSError:
        return 0


def proc_status(pid):
    """(VmRSS in KiB, open fd count) of a process."""
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def vmm_processes(data_dir):
    """Pids of processes whose command line names the server's data directory (its QEMU/Firecracker VMs keep
    their sockets and disks there), the server itself excluded by the caller."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if any(data_dir.encode() in a for a in cmd) and cmd and not cmd[0].endswith(b"fcwarm-server"):
            out.append((int(d), b" ".join(cmd)[:200].decode(errors="replace")))
    return out


SEEN_VM_IDS = set()  # VM ids from the "-name fcwarm-<id>" of the server's VMM processes, whenever looked at


def note_vmms(data_dir):
    for _, cmd in vmm_processes(data_dir):
        m = re.search(r"-name fcwarm-([0-9a-f-]{36})", cmd)
        if m:
            SEEN_VM_IDS.add(m.group(1))


def netns_names():
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return sorted(line.split()[0] for line in r.stdout.splitlines() if line.startswith("fcw-"))


def veth_names():
    r = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30)
    names = []
    for line in r.stdout.splitlines():
        m = re.match(r"\d+:\s+([^:@]+)", line)
        if m and m.group(1).startswith("fcwh"):
            names.append(m.group(1))
    return sorted(names)


def fcwarm_rules():
    """Lines of iptables-save (all tables) mentioning fcwarm, without counters."""
    if not shutil.which("iptables-save"):
        return []
    r = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30)
    return sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in r.stdout.splitlines() if "fcwarm" in line.lower())


def host_state(data_dir):
    vms = os.path.join(data_dir, "vms")
    return {
        "netns": netns_names(),
        "veths": veth_names(),
        "iptables": fcwarm_rules(),
        "vm_dirs": sorted(os.listdir(vms)) if os.path.isdir(vms) else [],
    }


class _Xxh128(ctypes.Structure):
    _fields_ = [("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64)]


def _xxh3_hex(text):
    """util::Xxh3Hex (libxxhash's XXH3_128bits, high half first), which names a VM's netns and veth."""
    lib = ctypes.CDLL("libxxhash.so.0")
    f = lib.XXH3_128bits
    f.restype = _Xxh128
    f.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    data = text.encode()
    h = f(data, len(data))
    return f"{h.high64:016x}{h.low64:016x}"


def vm_rule_id(rule):
    """The VM id of a per-VM iptables rule (comment "fcwarm:vm:<id>:<kind>:...", src/net/iptables.hpp), or None
    for the server's own chains and jumps (shared by every fcwarm-server of the host)."""
    m = re.search(r"fcwarm:vm:([0-9a-f-]{36}):", rule)
    return m.group(1) if m else None


def leaks_of(state, vm_ids, before=None):
    """What of this server's VMs is still on the host. Other programs on a shared host (other agents' tests)
    create netns, veths and rules of their own meanwhile: the names of a VM's netns and veth derive from its id
    (net::NamesForVm: "fcw-"/"fcwh" + the first 10 hex digits of XXH3-128 of the id), its rules carry the id. With
    `before` (the host before the server started), also the server's own chains when no other VM's rule needs
    them."""
    digests = {_xxh3_hex(v)[:10] for v in vm_ids}
    leaks = []
    ns = [n for n in state["netns"] if n[len("fcw-"):] in digests]
    veths = [v for v in state["veths"] if v[len("fcwh"):] in digests]
    rules = [r for r in state["iptables"] if vm_rule_id(r) in vm_ids]
    if ns:
        leaks.append(f"netns of its VMs: {ns[:5]} ({len(ns)})")
    if veths:
        leaks.append(f"veths of its VMs: {veths[:5]} ({len(veths)})")
    if rules:
        leaks.append(f"iptables rules of its VMs: {rules[:3]} ({len(rules)})")
    if state["vm_dirs"]:
        leaks.append(f"VM work directories: {state['vm_dirs'][:5]} ({len(state['vm_dirs'])})")
    if before is not None:
        others = [r for r in state["iptables"] if vm_rule_id(r) is not None and vm_rule_id(r) not in vm_ids]
        base = [r for r in state["iptables"] if vm_rule_id(r) is None and r not in before["iptables"]]
        if base and not others:
            leaks.append(f"fcwarm chains left without any VM rule: {base[:3]} ({len(base)})")
    return leaks


def server_vm_ids(server, container_ids):
    """Ids of every VM the server ran, as far as they can be known: its containers' (a container's VM has its
    id), those its events name, and those seen on its VMM processes' command lines (the snapshot build's VM)."""
    ids = set(container_ids) | SEEN_VM_IDS
    after = 0
    while True:
        st, doc = server.request("GET", f"/v1/events?after={after}&limit=1000")
        if st != 200 or not doc.get("items"):
            break
        ids.update(e["vm_id"] for e in doc["items"] if e.get("vm_id"))
        after = doc["next_after"]
    return ids


# ---- the server -------------------------------------------------------------------------------------------

class Server:
    def __init__(self, binary, guest, tmp):
        self.dir = tmp
        self.data_dir = os.path.join(tmp, "data")
        self.port_file = os.path.join(tmp, "port")
        self.log_path = os.path.join(tmp, "server.log")
        help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30).stdout
        self.args = [binary, "--data-dir", self.data_dir, "--port-file", self.port_file, "--bind", "127.0.0.1:0",
                     "--backend", "qemu", "--bootstrap-image-dir", guest, "--egress", "none", "--log-level", "info"]
        # Graceful shutdown may leave VMs running by default (live restore, issue 15); the soak wants none left.
        if "--stop-vms-on-exit" in help_text:
            self.args.append("--stop-vms-on-exit")
        if os.geteuid() != 0:
            self.args += ["--qemu-network", "none"]
        addr = host_address()
        if addr:
            self.args += ["--dns", addr]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        self.port = None
        while time.monotonic() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fcwarm-server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with open(self.port_file) as f:
                    text = f.read().strip()
                self.port = int(text) if text else None
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        if self.port is None:
            raise RuntimeError("fcwarm-server did not write its port file:\n" + self.tail())
        _, doc = self.request("GET", "/v1/version", timeout=30)
        self.timeout = doc["limits"]["container_start_ms"] / 1000 + 30

    def tail(self, n=40):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])

    def request(self, method, path, body=None, conn=None, timeout=None):
        """(status, parsed JSON or text). Uses `conn` (keep-alive) when given."""
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            c.request(method, path, body=data, headers=hdrs)
            r = c.getresponse()
            text = r.read().decode(errors="replace")
            if r.getheader("Content-Type", "").startswith("application/json"):
                return r.status, json.loads(text)
            return r.status, text
        finally:
            if conn is None:
                c.close()

    def stop(self, timeout=120):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# ---- the cycles -------------------------------------------------------------------------------------------

class Soak:
    def __init__(self, server, cycles, concurrency):
        self.s = server
        self.cycles = cycles
        self.concurrency = concurrency
        self.lock = threading.Lock()
        self.next = 0
        self.done = 0
        self.failures = []  # (cycle, message)
        self.latency = []  # whole cycle, seconds
        self.steps = {"create": [], "logs": [], "destroy": []}
        self.boots = {}
        self.samples = []  # (label, cycles done, rss KiB, fds, database bytes)
        self.fds = {}  # label -> fd targets (start, and idle after the end)
        self.sample_at = sorted({max(1, cycles * k // 10) for k in range(1, 11)} | {max(1, cycles // 2)})
        self.leftover = []  # ids whose destroy failed
        self.ids = []  # every container id created

    def sample(self, label):
        note_vmms(self.s.data_dir)
        rss, fds = proc_status(self.s.proc.pid)
        self.samples.append((label, self.done, rss, fds, db_bytes(self.s.data_dir)))
        if label in ("start", "idle 2 s"):
            self.fds[label] = fd_targets(self.s.proc.pid)
        log(f"{label}: {self.done}/{self.cycles} cycles, server RSS {rss / 1024:.1f} MiB, {fds} fds, "
            f"{len(self.failures)} failures")

    def one(self, i, conn):
        t0 = time.monotonic()
        word = f"soak-{i}"
        st, doc = self.s.request("POST", "/v1/containers", {
            "name": word, "runtime_image": "minimal", "command": ["sh", "-c", "echo " + word], "wait": True},
            conn=conn)
        t1 = time.monotonic()
        cid = doc.get("id") if isinstance(doc, dict) else None
        if cid:
            with self.lock:
                self.ids.append(cid)
        try:
            if st != 201:
                raise AssertionError(f"create: {st} {str(doc)[:300]}")
            item = doc["item"]
            with self.lock:
                self.boots[item.get("boot_method")] = self.boots.get(item.get("boot_method"), 0) + 1
            if item["state"] != "exited" or item["exit_code"] != 0:
                raise AssertionError(f"create: state {item['state']} exit code {item['exit_code']} "
                                     f"last_error {item.get('last_error')}")
            st, logs = self.s.request("GET", f"/v1/containers/{cid}/logs", conn=conn)
            t2 = time.monotonic()
            if st != 200 or logs.get("stdout") != word + "\n":
                raise AssertionError(f"logs: {st} {str(logs)[:300]}")
        finally:
            if cid:
                t3 = time.monotonic()
                dst, ddoc = self.s.request("DELETE", f"/v1/containers/{cid}", conn=conn)
                if dst != 200:
                    with self.lock:
                        self.leftover.append(cid)
                    raise AssertionError(f"destroy: {dst} {str(ddoc)[:300]}")
                t4 = time.monotonic()
        with self.lock:
            self.steps["create"].append(t1 - t0)
            self.steps["logs"].append(t2 - t1)
            self.steps["destroy"].append(t4 - t3)
            self.latency.append(t4 - t0)

    def worker(self):
        conn = None
        while True:
            with self.lock:
                if self.next >= self.cycles:
                    break
                i = self.next
                self.next += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.s.port, timeout=self.s.timeout)
            try:
                self.one(i, conn)
            except Exception as e:  # noqa: BLE001 — every failure is counted and reported
                with self.lock:
                    self.failures.append((i, f"{type(e).__name__}: {e}"))
                log(f"cycle {i} FAILED: {type(e).__name__}: {e}")
                conn.close()
                conn = None
            with self.lock:
                self.done += 1
                sample = self.done in self.sample_at
                if sample:
                    self.sample_at.remove(self.done)
                    self.sample("middle" if self.done == max(1, self.cycles // 2) else "progress")
        if conn:
            conn.close()

    def run(self):
        self.sample("start")
        threads = [threading.Thread(target=self.worker) for _ in range(self.concurrency)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.total = time.monotonic() - t0
        self.sample("end")
        # The workers' keep-alive connections were just closed; the server sees their FIN asynchronously.
        time.sleep(2)
        self.sample("idle 2 s")


def build_snapshot(server):
    st, doc = server.request("GET", "/v1/images")
    image = next((i for i in doc["items"] if i["name"] == "minimal"), None)
    if st != 200 or image is None:
        raise RuntimeError(f"image 'minimal' not registered: {st} {doc}")
    st, doc = server.request("POST", "/v1/runtime-snapshots", {"runtime_image_id": image["id"]})
    if st != 202:
        raise RuntimeError(f"snapshot create: {st} {doc}")
    snap = doc["id"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 600:
        note_vmms(server.data_dir)
        st, doc = server.request("GET", "/v1/runtime-snapshots/" + snap)
        item = doc.get("item", doc) if isinstance(doc, dict) else {}
        if item.get("state") != "creating":
            if item.get("state") != "ready":
                raise RuntimeError(f"snapshot build ended {item.get('state')}: {item}")
            return time.monotonic() - t0
        time.sleep(0.5)
    raise RuntimeError("snapshot build did not finish within 600 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--server", default=os.path.join(ROOT, "build", "ci", "server", "fcwarm-server"))
    ap.add_argument("--guest", default=os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (server log, data)")
    args = ap.parse_args()
    if args.cycles < 1 or args.concurrency < 1:
        ap.error("--cycles and --concurrency must be at least 1")
    if not os.access(args.server, os.X_OK):
        print(f"soak: no fcwarm-server at {args.server} (cmake --build --preset ci --target fcwarm-server)",
              file=sys.stderr)
        return 2
    missing = [f for f in GUEST_FILES if not os.path.isfile(os.path.join(args.guest, f))]
    if missing or not shutil.which("qemu-system-x86_64"):
        print(f"soak: needs qemu-system-x86_64 and {GUEST_FILES} in {args.guest} (missing: {missing})",
              file=sys.stderr)
        return 2
    guest = os.path.realpath(args.guest)
    tmp = tempfile.mkdtemp(prefix="fcwarm-soak-")
    before = host_state(os.path.join(tmp, "data"))
    log(f"host before: {len(before['netns'])} fcw- netns, {len(before['veths'])} fcwh veths, "
        f"{len(before['iptables'])} iptables lines mentioning fcwarm (other programs' are left out of the checks)")
    server = None
    problems = []
    try:
        server = Server(args.server, guest, tmp)
        log(f"server pid {server.proc.pid} on port {server.port}: {' '.join(server.args[1:])}")
        build_s = build_snapshot(server)
        log(f"runtime snapshot ready in {build_s:.1f} s")
        soak = Soak(server, args.cycles, args.concurrency)
        soak.run()

        # Leaks with the server still running: every container destroyed, nothing of its VMs left.
        st, doc = server.request("GET", "/v1/containers")
        alive = [i["id"] for i in doc.get("items", []) if i.get("state") != "destroyed"] if st == 200 else ["?"]
        if alive:
            problems.append(f"containers not destroyed: {alive[:5]} ({len(alive)})")
        vm_ids = server_vm_ids(server, soak.ids)
        vmms = [p for p in vmm_processes(server.data_dir) if p[0] != server.proc.pid]
        if vmms:
            problems.append(f"VMM processes of the server still running: {vmms[:3]}")
        problems += ["while running: " + d for d in leaks_of(host_state(server.data_dir), vm_ids)]
    except Exception as e:  # noqa: BLE001
        print(f"soak: setup failed: {e}", file=sys.stderr)
        if server:
            print(server.tail(), file=sys.stderr)
            server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        return 2

    rc = server.stop()
    if rc != 0:
        problems.append(f"fcwarm-server exited with {rc} on SIGTERM")
    time.sleep(1)
    vmms = vmm_processes(server.data_dir)
    if vmms:
        problems.append(f"VMM processes left after the server exited: {vmms[:3]}")
    after = host_state(server.data_dir)
    problems += ["after exit: " + d for d in leaks_of(after, vm_ids, before)]

    lat = soak.latency
    print()
    print(f"cycles: {args.cycles} (concurrency {args.concurrency}), failures: {len(soak.failures)}, "
          f"boots: {soak.boots}, total {soak.total:.1f} s ({args.cycles / soak.total:.2f} cycles/s)")
    for i, msg in soak.failures[:10]:
        print(f"  failure in cycle {i}: {msg}")
    print(f"cycle latency (s): p50 {pct(lat, 50):.3f}, p95 {pct(lat, 95):.3f}, max {max(lat) if lat else 0:.3f}")
    for step, xs in soak.steps.items():
        print(f"  {step}: p50 {pct(xs, 50):.3f}, p95 {pct(xs, 95):.3f}")
    print("| sample | cycles done | server RSS (MiB) | open fds | database (KiB) |")
    print("|---|---|---|---|---|")
    for label, done, rss, fds, db in soak.samples:
        print(f"| {label} | {done} | {rss / 1024:.1f} | {fds} | {db // 1024} |")
    start_fds, end_fds = soak.fds.get("start", []), soak.fds.get("idle 2 s", [])
    gained = list(end_fds)
    for t in start_fds:
        if t in gained:
            gained.remove(t)
    lost = list(start_fds)
    for t in end_fds:
        if t in lost:
            lost.remove(t)
    print(f"fds 2 s after the end vs the start: +{gained} -{lost}")
    print(f"leaks: {problems if problems else 'none'} ({len(vm_ids)} VMs of this server checked: VMM processes "
          f"{len(vmms)}, VM work dirs {len(after['vm_dirs'])}; on the host after exit: fcw-* netns "
          f"{len(after['netns'])}, fcwh* veths {len(after['veths'])}, iptables lines mentioning fcwarm "
          f"{len(after['iptables'])}, before the server started: {len(before['netns'])}, {len(before['veths'])}, "
          f"{len(before['iptables'])})")
    if args.keep:
        print(f"kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = not soak.failures and not problems and not soak.leftover and len(lat) == args.cycles
    print("result: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
