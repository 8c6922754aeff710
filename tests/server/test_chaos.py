"""The chaos tier (ctest label `chaos`, docs/failpoints.md): for every failpoint of the registry, a real
fcwarm-server (QEMU, the minimal guest) runs the operation that reaches it with FCWARM_FAILPOINTS set; `crash`
must kill it there with SIGKILL, `error` must fail the step with an error naming the failpoint. Then a server
without failpoints starts on the same data directory and the invariants of docs/failpoints.md are asserted: no
leaked VMM process, network namespace, veth, iptables rule, work directory, overlay or socket (anything not of a
VM the restarted server reports live), every record in a valid state, every committed record still there, and
the next operation succeeds (warm when a ready snapshot exists).

Cheap by design: one snapshot is built once (module fixture) into a golden data directory that every case copies
(the same path each time: the store records absolute paths), with a stopped container pinning its retired first
generation; only the failpoints of the build itself build again. Skips without QEMU, the guest artifacts or root
(namespaces and iptables are part of the invariants)."""

import http.client
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time

import pytest

from conftest import SERVER_BIN, Server

GUEST = os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current")
FILES = ("bzImage", "initramfs.cpio.gz", "disk.ext4")
MEMORY_MIB = 128  # the smallest VM the minimal guest is comfortable in: quick boots and snapshots
IMAGE = "chaos"
NETNS_PREFIX = "fcw-"  # QemuOptions::netns_prefix
VETH_PREFIX = "fcwh"  # QemuOptions::veth_prefix
RULE_TAG = "fcwarm:vm:"  # IptablesOptions::tag_prefix
LIVE_VM_STATES = ("starting", "running", "pooled")

# The failpoint registry as the tier covers it (tests/unit/failpoint_test.cpp checks that every failpoint of
# src/util/failpoint.hpp has a row in docs/failpoints.md; this list is checked against the docs below).
BUILD_FAILPOINTS = ("snapshot.build.boot", "snapshot.build.wait", "snapshot.build.pause",
                    "snapshot.build.write_memory", "snapshot.build.write_disk", "snapshot.build.checksum",
                    "snapshot.build.publish")


class Case:
    def __init__(self, failpoint, mode, op, at=None, extra=()):
        self.failpoint, self.mode, self.op, self.at = failpoint, mode, op, at
        self.extra = tuple(extra)

    @property
    def spec(self):
        return f"{self.failpoint}={self.mode}" + (f"@{self.at}" if self.at else "")

    @property
    def id(self):
        return self.spec.replace("=", "-").replace("@", "-at")


# The build's failpoints run as one chain on one data directory (a build is the tier's most expensive step): each
# case's rebuild must get past the phase where the previous case crashed or failed, which is the previous case's
# "next operation succeeds"; test_build_chain_recovers ends the chain with a rebuild that succeeds and a warm
# container. `error` runs where the build holds something different when it fails: a running VM (boot), a paused
# one (pause), files in .tmp-gen-N (write_disk), the renamed gen-N (publish); wait, write_memory and checksum fail
# through the same path with the same things held, and a build is the tier's most expensive step.
BUILD_ERRORS = ("snapshot.build.boot", "snapshot.build.pause", "snapshot.build.write_disk", "snapshot.build.publish")
BUILD_CASES = ([Case(fp, "crash", "rebuild") for fp in BUILD_FAILPOINTS]
               + [Case("snapshot.rebuild", "crash", "rebuild")]
               + [Case(fp, "error", "rebuild") for fp in BUILD_ERRORS])

POOL = ("--pool", f"{IMAGE}=1")
CASES = (
    [Case("snapshot.gc", mode, "destroy_pinning") for mode in ("crash", "error")]
    + [Case("restore.warm.restore", mode, "container") for mode in ("crash", "error")]
    + [Case("restore.cold.boot", mode, "cold_container") for mode in ("crash", "error")]
    + [Case("restore.identity", mode, "container") for mode in ("crash", "error")]
    + [Case("container.create", mode, "container") for mode in ("crash", "error")]
    + [Case("container.start", mode, "container") for mode in ("crash", "error")]
    + [Case("pool.fill", mode, "pool_fill", extra=POOL) for mode in ("crash", "error")]
    + [Case("pool.take", mode, "pool_take", extra=POOL) for mode in ("crash", "error")]
    # Hits of the store's Tx helper: startup reconciliation (1, 2), then the container's record (3), its VM's
    # record and address (4), the generation pin (5), the health record (6). Where exactly is not asserted (a
    # new transaction at startup moves them), only that the process died there and the invariants hold.
    + [Case("store.tx.before_commit", "crash", "container", at=n) for n in (1, 3, 5)]
    + [Case("store.tx.before_commit", "error", "container")]
    + [Case("store.tx.after_commit", "crash", "container", at=n) for n in (2, 3, 4, 6)]
)


class ServerGone(Exception):
    pass


# ---- the host ------------------------------------------------------------------------------------------------

def _run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def netns_names():
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith(NETNS_PREFIX)}
    except FileNotFoundError:
        return set()


def veth_names():
    out = set()
    for line in _run(["ip", "-o", "link", "show"]).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(VETH_PREFIX):
            out.add(name)
    return out


def fcwarm_rules():
    """(table, line) of every iptables-save line about fcwarm: its chains, jumps and per-VM rules."""
    out, table = [], ""
    for line in _run(["iptables-save"]).stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif "fcwarm" in line.lower():
            out.append((table, line))
    return out


def host_state():
    return {"netns": netns_names(), "veth": veth_names(), "rules": set(fcwarm_rules())}


def qemu_processes(root):
    """{pid: working directory} of the QEMU processes working under `root` (a VM's work directory is its cwd)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if not argv or b"qemu-system" not in argv[0]:
                continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd.startswith(root + "/"):
            out[int(pid)] = cwd
    return out


def netns_inode_of(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def store_vm_ids(data_dirs):
    """Every VM id and instance id the stores under `data_dirs` know (rules are tagged with instance ids)."""
    ids = set()
    for d in data_dirs:
        path = os.path.join(d, "fcwarm.db")
        if not os.path.exists(path):
            continue
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                for vid, iid in db.execute("SELECT id, instance_id FROM vms"):
                    ids |= {vid, iid}
            finally:
                db.close()
        except sqlite3.Error:
            pass
    return ids


def remove_leftovers(root, baseline, data_dirs):
    """The fixture's own cleanup, whatever a failed case left, touching nothing of other programs: QEMU processes
    under `root`; network namespaces (and their veths) that are new since the tier started and have no process in
    them; iptables rules tagged with a VM of the tier's stores; and, when no VM of any fcwarm process has a rule
    left, the fcwarm chains and jumps that are new. Returns what it removed."""
    removed = []
    for pid in qemu_processes(root):
        try:
            os.kill(pid, signal.SIGKILL)
            removed.append(f"qemu {pid}")
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while qemu_processes(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    for ns in netns_names() - baseline["netns"]:
        if _run(["ip", "netns", "pids", ns]).stdout.strip():
            continue  # someone else's VM runs in it
        _run(["ip", "netns", "delete", ns])
        removed.append(f"netns {ns}")
        veth = VETH_PREFIX + ns[len(NETNS_PREFIX):]
        if veth in veth_names():
            _run(["ip", "link", "delete", veth])
            removed.append(f"veth {veth}")
    ours = store_vm_ids(data_dirs)
    new = [r for r in fcwarm_rules() if r not in baseline["rules"]]
    for table, line in new:
        if line.startswith("-A ") and RULE_TAG in line and line.split(RULE_TAG, 1)[1].split(":", 1)[0] in ours:
            _run(["iptables", "-t", table, "-D"] + shlex.split(line[3:]))
            removed.append(f"rule {table} {line}")
    if not any(RULE_TAG in line for _, line in fcwarm_rules()):
        new = [r for r in fcwarm_rules() if r not in baseline["rules"]]
        for table, line in new:
            if line.startswith("-A "):
                _run(["iptables", "-t", table, "-D"] + shlex.split(line[3:]))
                removed.append(f"rule {table} {line}")
        for table, line in new:
            if line.startswith(":"):
                chain = line[1:].split()[0]
                _run(["iptables", "-t", table, "-X", chain])
                removed.append(f"chain {table} {chain}")
    return removed


# ---- the tier's environment ------------------------------------------------------------------------------------

class Env:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="fcwarm-chaos-")
        self.data = os.path.join(self.root, "data")
        self.golden = os.path.join(self.root, "golden")
        self.baseline = host_state()
        self.servers = []
        self.image_id = self.snapshot_id = None
        self.stop_vms_flag = "--stop-vms-on-exit" in _run([SERVER_BIN, "--help"]).stdout
        self.n = 0
        self.chain = "new"  # the build chain's data directory: new, ok, broken (a case failed), other

    def start(self, failpoints=None, extra=(), stop_vms=False):
        """A server on the data directory; it may die at startup (a failpoint there): then `port` is None."""
        env = dict(os.environ)
        env.pop("FCWARM_FAILPOINTS", None)
        if failpoints:
            env["FCWARM_FAILPOINTS"] = failpoints
        args = ["--backend", "qemu", *extra]
        if stop_vms and self.stop_vms_flag:
            args.append("--stop-vms-on-exit")
        s = Server(*args, data_dir=self.data, expect_start=False, env=env)
        self.servers.append(s)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and s.proc.poll() is None:
            try:
                with open(s.port_file) as f:
                    text = f.read().strip()
                if text:
                    s.port = int(text)
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        else:
            if s.proc.poll() is None:
                raise AssertionError("fcwarm-server did not write its port file:\n" + s.read_log())
        return s

    def fresh_data(self):
        if os.path.exists(self.data):
            shutil.rmtree(self.data)
        subprocess.run(["cp", "-a", "--reflink=auto", self.golden, self.data], check=True)

    def db(self):
        db = sqlite3.connect(f"file:{os.path.join(self.data, 'fcwarm.db')}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def name(self):
        self.n += 1
        return f"c{self.n}"

    def close(self):
        for s in self.servers:
            s.close()
        self.servers.clear()


def call(s, method, path, body=None):
    """(status, doc); ServerGone when the server is not there (any more) to answer."""
    if s.port is None:
        raise ServerGone()
    try:
        st, _, doc = s.request(method, path, body=body)
        return st, doc
    except (OSError, http.client.HTTPException) as e:
        raise ServerGone() from e


def poll(s, path, done, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        st, doc = call(s, "GET", path)
        assert st == 200, doc
        if done(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(interval)


def not_creating(doc):
    return doc["item"]["state"] != "creating"


@pytest.fixture(scope="module")
def env(_restore_ip_forward):
    if os.geteuid() != 0:
        pytest.skip("the chaos tier needs root (network namespaces and iptables are part of its invariants)")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed")
    missing = [f for f in FILES if not os.path.isfile(os.path.join(GUEST, f))]
    if missing:
        pytest.skip(f"guest artifacts missing in {GUEST}: {missing}")
    if not SERVER_BIN or not os.path.exists(SERVER_BIN):
        pytest.skip("FCWARM_SERVER_BIN is not set to the fcwarm-server binary")
    e = Env()
    try:
        s = e.start(stop_vms=True)
        st, doc = call(s, "POST", "/v1/images", {
            "name": IMAGE, "backend": "qemu", "kernel_path": os.path.join(GUEST, "bzImage"),
            "initrd_path": os.path.join(GUEST, "initramfs.cpio.gz"),
            "rootfs_path": os.path.join(GUEST, "disk.ext4"), "memory_mib": MEMORY_MIB})
        assert st == 201, doc
        e.image_id = doc["id"]
        st, doc = call(s, "POST", "/v1/runtime-snapshots", {"runtime_image_id": e.image_id})
        assert st == 202, doc
        e.snapshot_id = doc["id"]
        item = poll(s, "/v1/runtime-snapshots/" + e.snapshot_id, not_creating, 300, 0.2)["item"]
        assert item["state"] == "ready", item
        # A stopped container keeps generation 1 pinned through a rebuild: every case starts with a retired
        # generation that garbage collection may not remove yet; destroying the container collects it (the
        # operation of snapshot.gc, after which the snapshot is still ready).
        st, doc = create_container(s, e)
        assert st == 201 and doc["item"]["boot_method"] == "warm", doc
        e.pinning_id = doc["id"]
        st, doc = call(s, "POST", f"/v1/containers/{e.pinning_id}/stop")
        assert st == 200 and doc["item"]["state"] == "stopped", doc
        item = op_rebuild(s, e, None)
        assert item["state"] == "ready" and item["generation"] == 2, item
        assert s.stop() == 0, s.read_log()
        e.close()
        os.rename(e.data, e.golden)
        yield e
    finally:
        e.close()
        remove_leftovers(e.root, e.baseline, [e.data, e.golden])
        shutil.rmtree(e.root, ignore_errors=True)


# ---- operations ----------------------------------------------------------------------------------------------

def create_container(s, env, **fields):
    body = {"name": env.name(), "runtime_image": IMAGE, "wait": True}
    body.update(fields)
    return call(s, "POST", "/v1/containers", body)


def boot_events(s):
    st, doc = call(s, "GET", "/v1/events?kind=boot&limit=1000")
    assert st == 200, doc
    return doc["items"]


def pool_item(s):
    st, doc = call(s, "GET", "/v1/pool")
    assert st == 200, doc
    return doc["items"][0]


def wait_pool_full(s, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        item = pool_item(s)
        if len(item["clones"]) >= item["size"] and not item["filling"]:
            return item
        assert time.monotonic() < deadline, item
        time.sleep(0.1)


def op_rebuild(s, env, case):
    st, doc = call(s, "POST", f"/v1/runtime-snapshots/{env.snapshot_id}/rebuild")
    assert st == 202, doc
    return poll(s, "/v1/runtime-snapshots/" + env.snapshot_id, not_creating, 300, 0.1)["item"]


def op_destroy_pinning(s, env, case):
    return call(s, "DELETE", "/v1/containers/" + env.pinning_id)


def op_container(s, env, case):
    # A published port (a free host port): its forwarding rules are among what a crash must not leak.
    return create_container(s, env, ports=["80"])


def op_cold_container(s, env, case):
    return create_container(s, env, force_cold=True, ports=["80"])


def op_pool_fill(s, env, case):
    fp = f"failpoint {case.failpoint}"
    return poll(s, "/v1/pool", lambda d: d["items"][0]["clones"] or fp in (d["items"][0]["last_error"] or ""),
                120)["items"][0]


def op_pool_take(s, env, case):
    wait_pool_full(s)
    return create_container(s, env)


OPS = {"rebuild": op_rebuild, "destroy_pinning": op_destroy_pinning, "container": op_container,
       "cold_container": op_cold_container, "pool_fill": op_pool_fill, "pool_take": op_pool_take}


def check_error(s, env, case, result):
    """What `error` must look like: the step failed through its normal path with a message naming the failpoint."""
    fp = f"failpoint {case.failpoint}: injected error"
    name = case.failpoint
    if case.op == "rebuild":
        assert result["state"] == "unhealthy", result
        assert fp in result["last_error"], result
    elif name == "snapshot.gc":
        st, doc = result
        assert st == 200, doc  # the container is destroyed; the generation's files go at the next collection
    elif name == "restore.warm.restore":
        st, doc = result
        assert st == 201, doc
        item = doc["item"]
        assert (item["state"], item["boot_method"], item["fallback_reason"]) == ("running", "cold", "restore_failed")
        assert any(fp in e["message"] for e in boot_events(s) if e["vm_id"] == item["id"]), boot_events(s)
    elif name == "pool.fill":
        assert fp in result["last_error"], result
        assert not result["clones"], result
    elif name == "pool.take":
        st, doc = result
        assert st == 201, doc
        item = doc["item"]
        assert item["state"] == "running" and item["boot_method"] == "warm", item
        assert "pool_take" not in item["timings"], item  # the clone was discarded, the request restored
        assert pool_item(s)["discarded"].get("failpoint", 0) >= 1, pool_item(s)
    else:  # restore.cold.boot, restore.identity, container.create, container.start, store.tx.before_commit
        st, doc = result
        assert st >= 500, doc
        assert fp in doc["error"]["message"], doc
        if name != "store.tx.before_commit":
            st, doc = call(s, "GET", "/v1/containers")
            failed = [c for c in doc["items"] if c["state"] == "failed"]
            assert len(failed) == 1 and fp in failed[0]["last_error"], doc


# ---- invariants ------------------------------------------------------------------------------------------------

def live_vms(s, env):
    """{record id: instance id} of the VMs the server reports live: running containers and pooled clones."""
    st, doc = call(s, "GET", "/v1/containers")
    assert st == 200, doc
    ids = {c["id"] for c in doc["items"] if c["state"] == "running"}
    st, doc = call(s, "GET", "/v1/pool")
    for item in doc["items"]:
        ids |= {c["vm_id"] for c in item["clones"]}
    with env.db() as db:
        rows = {r["id"]: r for r in db.execute("SELECT id, instance_id, state FROM vms")}
    out = {}
    for vid in ids:
        assert vid in rows, f"live vm {vid} has no record"
        assert rows[vid]["state"] in LIVE_VM_STATES, dict(rows[vid])
        out[vid] = rows[vid]["instance_id"] or vid
    recorded_live = {r["id"] for r in rows.values() if r["state"] in LIVE_VM_STATES}
    assert recorded_live == set(out), f"records in a live state {recorded_live} vs reported live {set(out)}"
    return out


def assert_invariants(s, env, case, committed_containers):
    # Nothing stays on its way: a build, a container start or a pool fill left by the crash ends.
    snaps = poll(s, "/v1/runtime-snapshots?include_deleted=true",
                 lambda d: all(i["state"] != "creating" for i in d["items"]), 120)["items"]
    assert all(i["state"] != "creating" for i in snaps), snaps
    conts = poll(s, "/v1/containers?include_destroyed=true",
                 lambda d: all(c["state"] not in ("provisioning", "pulling") for c in d["items"]), 120)["items"]
    assert all(c["state"] not in ("provisioning", "pulling") for c in conts), conts
    if case and "--pool" in case.extra:
        wait_pool_full(s)
    # Every committed record is still there.
    st, doc = call(s, "GET", "/v1/images/" + env.image_id)
    assert st == 200, doc
    st, doc = call(s, "GET", "/v1/runtime-snapshots/" + env.snapshot_id)
    assert st == 200, doc
    for cid in committed_containers:
        st, doc = call(s, "GET", "/v1/containers/" + cid)
        assert st == 200, doc
        assert doc["item"]["state"] in ("running", "failed", "lost", "stopped", "exited", "destroyed"), doc
    # Records: no generation half-built, no VM half-started.
    with env.db() as db:
        gens = [dict(r) for r in db.execute("SELECT snapshot_id, number, dir, status FROM generations")]
        vms = [dict(r) for r in db.execute("SELECT id, instance_id, state FROM vms")]
        stopped = {r["instance_id"] or r["id"] for r in vms if r["state"] == "stopped"}
        allocations = [r["vm_id"] for r in db.execute("SELECT vm_id FROM address_allocations")]
        procs = [dict(r) for r in db.execute("SELECT pid, role, owner_id FROM processes")]
    assert not [g for g in gens if g["status"] == "building"], gens
    live = live_vms(s, env)
    instances = set(live.values())
    # Processes: every QEMU of this data directory is a live VM's, in its work directory; each live VM runs.
    procs_now = qemu_processes(env.root)
    vms_dir = os.path.join(env.data, "vms") + "/"
    owner = {}
    for pid, cwd in procs_now.items():
        assert cwd.startswith(vms_dir), f"QEMU {pid} works in {cwd}: not a VM's work directory (a build's?)"
        iid = cwd[len(vms_dir):].split("/")[0]
        assert iid in instances, f"leaked QEMU process {pid} of vm {iid} (live: {instances})"
        assert iid not in owner.values(), f"two QEMU processes for vm {iid}"
        owner[pid] = iid
    assert set(owner.values()) == instances, f"live VMs without a QEMU process: {instances - set(owner.values())}"
    for p in procs:
        assert p["owner_id"].startswith("vm:") and p["owner_id"][3:] in live, f"stale process record {p}"
    for vid in allocations:
        assert vid in live, f"address allocated to vm {vid}, which is not live ({vms})"
    # Host networking: namespaces, veths and rules are new only for live VMs.
    inodes = {netns_inode_of(pid) for pid in owner}
    allowed_ns = {ns for ns in netns_names() - env.baseline["netns"]
                  if os.stat(os.path.join("/run/netns", ns)).st_ino in inodes}
    leaked_ns = netns_names() - env.baseline["netns"] - allowed_ns
    assert not leaked_ns, f"leaked network namespaces {leaked_ns}"
    allowed_veth = {VETH_PREFIX + ns[len(NETNS_PREFIX):] for ns in allowed_ns}
    leaked_veth = veth_names() - env.baseline["veth"] - allowed_veth
    assert not leaked_veth, f"leaked veths {leaked_veth}"
    for table, line in set(fcwarm_rules()) - env.baseline["rules"]:
        if RULE_TAG in line:
            vid = line.split(RULE_TAG, 1)[1].split(":", 1)[0]
            assert vid in instances, f"leaked iptables rule of vm {vid}: {table} {line}"
    # Files: work directories (sockets, overlays, RAM files) only of live VMs (and of stopped ones: a stopped
    # container keeps its record and work directory until it is destroyed), no build directory, no temporary or
    # unrecorded generation.
    for d in os.listdir(os.path.join(env.data, "vms")) if os.path.isdir(vms_dir) else []:
        assert d in instances | stopped, f"leaked work directory vms/{d}: {os.listdir(vms_dir + d)}"
    build_dir = os.path.join(env.data, "build")
    assert not os.path.isdir(build_dir) or not os.listdir(build_dir), os.listdir(build_dir)
    kept = {g["dir"] for g in gens if g["status"] in ("current", "retired")}
    snap_root = os.path.join(env.data, "snapshots")
    for dirpath, dirnames, _ in os.walk(snap_root):
        for d in dirnames:
            if d.startswith("gen-") or d.startswith(".tmp-"):
                path = os.path.join(dirpath, d)
                assert path in kept, f"leaked snapshot directory {path} (recorded: {gens})"
        dirnames[:] = [d for d in dirnames if not (d.startswith("gen-") or d.startswith(".tmp-"))]


def next_operation(s, env, rebuild=False):
    """The next operation succeeds: a container, warm when a ready snapshot exists (after a rebuild that must
    succeed when `rebuild`)."""
    if rebuild:
        item = op_rebuild(s, env, None)
        assert item["state"] == "ready", item
    st, doc = call(s, "GET", "/v1/runtime-snapshots")
    ready = any(i["state"] == "ready" for i in doc["items"])
    st, doc = create_container(s, env)
    assert st == 201, doc
    item = doc["item"]
    assert item["state"] == "running", item
    assert item["boot_method"] == ("warm" if ready else "cold"), (item, doc)


def destroy_all(s):
    st, doc = call(s, "GET", "/v1/containers")
    for c in doc["items"]:
        if c["state"] not in ("destroyed", "provisioning", "pulling"):
            st, d = call(s, "DELETE", "/v1/containers/" + c["id"])
            assert st == 200, d


def assert_clean(env):
    """After the last server stopped: nothing of the case remains on the host."""
    assert not qemu_processes(env.root), qemu_processes(env.root)
    now = host_state()
    assert now["netns"] <= env.baseline["netns"], now["netns"] - env.baseline["netns"]
    assert now["veth"] <= env.baseline["veth"], now["veth"] - env.baseline["veth"]
    assert now["rules"] <= env.baseline["rules"], now["rules"] - env.baseline["rules"]
    vms_dir = os.path.join(env.data, "vms")
    assert not os.path.isdir(vms_dir) or not os.listdir(vms_dir), os.listdir(vms_dir)


# ---- the cases -------------------------------------------------------------------------------------------------

def test_cases_cover_the_documented_failpoints():
    docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "failpoints.md")
    with open(docs) as f:
        documented = {line.split("`")[1] for line in f if line.startswith("| `")}
    assert {c.failpoint for c in BUILD_CASES + CASES} == documented


class Timer:
    def __init__(self):
        self.t0 = time.monotonic()
        self.marks = []

    def __call__(self, name):
        self.marks.append(f"{name} {time.monotonic() - self.t0:.1f}")

    def report(self, case, removed):
        print(f"{case}: {time.monotonic() - self.t0:.1f} s ({', '.join(self.marks)})" +
              (f"; cleanup removed {removed}" if removed else ""))


def inject(env, case, phase):
    """Starts a server with the case's failpoint, runs its operation and checks the outcome: killed by SIGKILL
    there (`crash`) or the step's error naming the failpoint (`error`, then a graceful stop)."""
    s = env.start(failpoints=case.spec, extra=case.extra)
    phase("start")
    result = None
    try:
        if s.port is not None:
            result = OPS[case.op](s, env, case)
    except ServerGone:
        assert case.mode == "crash", s.read_log()[-3000:]
    phase("op")
    log_line = f"event=failpoint name={case.failpoint} "
    if case.mode == "crash":
        try:
            rc = s.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{case.spec}: the server did not die (the failpoint was not reached); "
                                 f"the operation gave {result}")
        assert rc == -signal.SIGKILL, (rc, s.read_log()[-3000:])
        assert log_line in s.read_log() and "action=crash" in s.read_log(), s.read_log()[-3000:]
    else:
        check_error(s, env, case, result)
        assert log_line in s.read_log(), s.read_log()[-3000:]
        assert s.stop() == 0, s.read_log()[-3000:]
        phase("stopped")
    s.close()


def restart(env, case):
    """A server without failpoints on the same data directory, after the containers committed before."""
    with env.db() as db:
        committed = [r["id"] for r in db.execute("SELECT id FROM containers")]
    s = env.start(extra=case.extra if case else (), stop_vms=True)
    assert s.port is not None, s.read_log()
    assert_invariants(s, env, case, committed)
    return s


def finish(env, s):
    destroy_all(s)
    assert s.stop() == 0, s.read_log()[-3000:]
    assert_clean(env)


@pytest.mark.parametrize("case", BUILD_CASES, ids=lambda c: c.id)
def test_build_failpoint(env, case):
    phase = Timer()
    if env.chain != "ok":  # the first case, or the one after a failed case: start from the golden copy
        env.fresh_data()
    env.chain = "broken"
    removed = []
    try:
        inject(env, case, phase)
        s2 = restart(env, case)
        phase("invariants")
        finish(env, s2)
        phase("clean")
        env.chain = "ok"
    finally:
        env.close()
        removed = remove_leftovers(env.root, env.baseline, [env.data, env.golden])
        phase.report(case.spec, removed)


def test_build_chain_recovers(env):
    """After the last failpoint of the chain a rebuild succeeds and a container is warm."""
    if env.chain != "ok":  # run alone, or after a failed case (which failed already)
        env.fresh_data()
    try:
        s = restart(env, None)
        next_operation(s, env, rebuild=True)
        finish(env, s)
    finally:
        env.close()
        remove_leftovers(env.root, env.baseline, [env.data, env.golden])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_failpoint(env, case):
    phase = Timer()
    env.fresh_data()
    env.chain = "other"
    removed = []
    try:
        inject(env, case, phase)
        s2 = restart(env, case)
        phase("invariants")
        next_operation(s2, env)
        phase("next")
        finish(env, s2)
        phase("clean")
    finally:
        env.close()
        removed = remove_leftovers(env.root, env.baseline, [env.data, env.golden])
        phase.report(case.spec, removed)
