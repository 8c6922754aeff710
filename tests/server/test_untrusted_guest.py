"""The guest is untrusted (ctest label `vm`, issue 15 part 4), against a real fcwarm-server with the QEMU backend and
the minimal guest image (FCWARM_GUEST_DIR, default /var/cache/fcwarm/guest/current), its VMs warm clones of one
snapshot.

test_hostile_guests: root inside a guest kills the agent, opens the agent's virtio-serial port itself and sends
what the agent never would: an endless line, invalid JSON, replies to a request never sent, random bytes. Each
such container fails within seconds with `data_loss` naming the violation (not at the 65 s deadline of its
command), its VM record is `failed` with the same error, its QEMU process and network namespace are gone, the
server's memory stays small, and containers on well-behaved VMs, created at the same time and afterwards, run.

test_guests_reach_neither_host_nor_each_other (root): two clones each try the other's address, the other's
gateway, the server's API port and a listener the test runs on the host (both on every address, 0.0.0.0), on
the gateway and on the host's own address. Every attempt is refused, and the host's rules say why: the packet
counters of each VM's FCWARM-INPUT reject rule (the host's own addresses) and of its FCWARM-EGRESS reject rule
for the address pool (the other VM) grow by the attempts; the host's listener accepted nothing; the host itself
reaches the guests' listeners (so it is the rules, not a missing listener). IPv6: the host end of a VM's link has
IPv6 disabled, so the guest cannot reach the host's services over link-local IPv6 either, where iptables rules
would not apply.

Both skip without QEMU or the guest artifacts; the second without root or iptables."""

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import HOST_ADDRESS

GUEST = os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current")
FILES = ("bzImage", "initramfs.cpio.gz", "disk.ext4")
TOKEN = "untrusted-guest-test-token-0123456789"
AUTH = {"Authorization": "Bearer " + TOKEN}
IS_ROOT = os.geteuid() == 0

# Root in the guest takes the agent's port over: find it, kill the agent (the exec's parent), open the port once
# the agent's descriptor is gone, send what the mode says, and hold the port.
TAKEOVER = r"""
p=
for d in /sys/class/virtio-ports/*; do
  [ "$(cat "$d/name" 2>/dev/null)" = org.fcwarm.agent.0 ] && p="/dev/${d##*/}"
done
[ -n "$p" ] || exit 97
kill -KILL "$PPID"
i=0
until (exec 3>"$p") 2>/dev/null; do i=$((i+1)); [ "$i" -lt 100 ] || exit 98; sleep 0.05; done
exec 3>"$p"
%s >&3 2>/dev/null
sleep 600
"""

HOSTILE = {
    # mode: (what the guest sends, the violation the container's error must name)
    "endless_line": ("yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx | tr -d '\\n'",
                     "protocol violation: reply line longer than 8388608 bytes"),
    "invalid_json": ("yes 'this is not json'",
                     "protocol violation: 17 lines that answer no outstanding request (the last: a line that is "
                     "not a JSON object: \"this is not json\")"),
    "wrong_id": ("yes '{\"v\":1,\"id\":424242,\"ok\":true,\"result\":{\"exit_code\":0}}'",
                 "(the last: a reply to id 424242, which was never sent)"),
    "random_bytes": ("cat /dev/urandom", "protocol violation: "),
}


def api(s, method, path, body=None):
    return s.request(method, path, body=body, headers=AUTH)


def wait_state(s, cid, leave, timeout):
    deadline = time.monotonic() + timeout
    while True:
        st, _, doc = api(s, "GET", "/v1/containers/" + cid)
        assert st == 200, doc
        if doc["item"]["state"] not in leave or time.monotonic() > deadline:
            return doc["item"]
        time.sleep(0.2)


def create(s, command, name):
    st, _, doc = api(s, "POST", "/v1/containers",
                     {"name": name, "runtime_image": "busybox", "command": command, "wait": False})
    assert st == 202, doc
    return doc["id"]


def vm_row(s, vm_id):
    db = sqlite3.connect("file:" + os.path.join(s.data_dir, "fcwarm.db") + "?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT state, last_error FROM vms WHERE id = ?", (vm_id,)).fetchone()
    finally:
        db.close()


def processes_naming(text):
    """Pids whose command line contains `text` (QEMU's names the VM's work directory, named after its id)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def netns():
    if not shutil.which("ip"):
        return set()
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def env():
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed")
    missing = [f for f in FILES if not os.path.isfile(os.path.join(GUEST, f))]
    if missing:
        pytest.skip(f"guest artifacts missing in {GUEST}: {missing}")
    from conftest import Server
    # The API listens on every address, as a careless deployment would: no guest may reach it anyway.
    args = ["--backend", "qemu", "--bind", "0.0.0.0:0", "--auth-token", TOKEN]
    if not IS_ROOT:
        args += ["--qemu-network", "none"]
    s = Server(*args)
    try:
        st, _, doc = api(s, "POST", "/v1/images", {
            "name": "busybox", "backend": "qemu", "kernel_path": os.path.join(GUEST, "bzImage"),
            "initrd_path": os.path.join(GUEST, "initramfs.cpio.gz"), "rootfs_path": os.path.join(GUEST, "disk.ext4")})
        assert st == 201, doc
        st, _, doc = api(s, "POST", "/v1/runtime-snapshots", {"runtime_image_id": doc["id"]})
        assert st == 202, doc
        snap = doc["id"]
        deadline = time.monotonic() + 300
        while True:
            st, _, doc = api(s, "GET", "/v1/runtime-snapshots/" + snap)
            if doc["item"]["state"] != "creating" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert doc["item"]["state"] == "ready", doc
        yield s
    finally:
        try:
            # Whatever a failed test left: commands end on their own (bounded waits), then the containers go,
            # so the server stops with nothing to leave behind.
            st, _, doc = api(s, "GET", "/v1/containers")
            for item in doc.get("items", []):
                wait_state(s, item["id"], ("provisioning",), 90)
                api(s, "DELETE", "/v1/containers/" + item["id"])
        finally:
            s.stop()
            s.close()


def test_hostile_guests(env):
    s = env
    before_ns = netns()
    t0 = time.monotonic()
    hostile = {create(s, ["sh", "-c", TAKEOVER % send], "hostile-" + mode.replace("_", "-")): mode
               for mode, (send, _) in HOSTILE.items()}
    good = create(s, ["echo", "hello"], "good-concurrent")

    for cid, mode in hostile.items():
        item = wait_state(s, cid, ("provisioning",), 120)
        took = time.monotonic() - t0
        expect = HOSTILE[mode][1]
        assert item["state"] == "failed", (mode, item)
        assert "guest agent exec: protocol violation" in item["last_error"], (mode, item["last_error"])
        assert expect in item["last_error"], (mode, item["last_error"])
        assert item["boot_method"] == "warm", item
        # Long before the command's own deadline (60 s + 5 s): the violation ends the call.
        assert took < 50, (mode, took)
        assert item["vm_state"] == "failed", item
        state, error = vm_row(s, cid)
        assert state == "failed" and error == item["last_error"], (state, error)
        # The VMM is stopped and its namespace gone.
        assert processes_naming(cid) == [], (mode, processes_naming(cid))

    item = wait_state(s, good, ("provisioning",), 120)
    assert item["state"] == "exited" and item["exit_code"] == 0, item
    st, _, logs = api(s, "GET", f"/v1/containers/{good}/logs")
    assert st == 200 and logs["stdout"] == "hello\n", logs

    # Only the good VM is left of these: its namespace, none of the hostile ones' (nor their rules).
    if IS_ROOT:
        assert len(netns() - before_ns) == 1, (netns() - before_ns)
        if shutil.which("iptables-save"):
            rules = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30).stdout
            assert not [cid for cid in hostile if f"fcwarm:vm:{cid}:" in rules], rules
    # Memory stayed small: each line and decoded reply is capped (8 MiB, 16 MiB), whatever the guests sent.
    hwm = vm_hwm_kib(s.proc.pid)
    print(f"fcwarm-server peak RSS {hwm / 1024:.0f} MiB after {len(hostile)} hostile guests")
    assert hwm < 400 * 1024, hwm

    # Afterwards, too.
    after = create(s, ["echo", "after"], "good-after")
    item = wait_state(s, after, ("provisioning",), 120)
    assert item["state"] == "exited" and item["exit_code"] == 0, item

    for cid in list(hostile) + [good, after]:
        assert api(s, "DELETE", "/v1/containers/" + cid)[0] == 200
    # Destroying the failed VM's container kept its VM's reason.
    for cid in hostile:
        state, error = vm_row(s, cid)
        assert state == "destroyed" and "protocol violation" in error, (state, error)
    assert netns() == before_ns


# ---- isolation ------------------------------------------------------------------------------------------------

# Each guest: a service of its own on 7777 (in the background), then it waits for the host to name the other VM
# (a one-shot listener on 7778: the host reaches its guests, they do not reach it), then tries everything.
PROBE = r"""
setsid nc -ll -p 7777 -e /bin/cat </dev/null >/dev/null 2>&1 &
peer=$(timeout 40 nc -l -p 7778 </dev/null)
[ -n "$peer" ] || { echo "nobody named the other VM"; exit 3; }
gw=$(ip route | awk '/^default/ {print $3}')
peer_gw=${peer%.*}.$(( ${peer##*.} - 1 ))
try() {
  if timeout 5 nc -w 3 "$1" "$2" </dev/null >/dev/null 2>&1; then echo "open $3 $1 $2"; else echo "refused $3 $1 $2"; fi
}
try "$peer" 7777 peer
try "$peer_gw" @LISTEN@ peer_gateway
try "$gw" @API@ api_via_gateway
try "$gw" @LISTEN@ host_service_via_gateway
[ -n "@HOST@" ] && try "@HOST@" @API@ api_via_host_address
[ -n "@HOST@" ] && try "@HOST@" @LISTEN@ host_service_via_host_address
echo done
"""


class Listener:
    """A TCP service of the host on every address; counts the connections it accepted."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                c, addr = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(addr)
            c.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def iptables_counters(vm_id):
    """{(chain, rule text without counters): packets} of the VM's tagged rules."""
    out = {}
    r = subprocess.run(["iptables-save", "-c", "-t", "filter"], capture_output=True, text=True, timeout=30)
    for line in r.stdout.splitlines():
        m = re.match(r"^\[(\d+):\d+\] -A (\S+) (.*)$", line)
        if m and f"fcwarm:vm:{vm_id}:" in line:
            out[(m.group(2), re.sub(r"fcwarm:vm:\S+", "TAG", m.group(3)))] = int(m.group(1))
    return out


def reject_rule(counters, chain, must, must_not=()):
    keys = [k for k in counters if k[0] == chain and "-j REJECT" in k[1] and all(w in k[1] for w in must)
            and not any(w in k[1] for w in must_not)]
    assert len(keys) == 1, (chain, must, counters)
    return keys[0]


def host_link(address):
    """(host interface, its IPv6 link-local address or '') of the VM's gateway address."""
    gw = address.rsplit(".", 1)[0] + "." + str(int(address.rsplit(".", 1)[1]) - 1)
    r = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10)
    for line in r.stdout.splitlines():
        f = line.split()
        if f[3].split("/")[0] == gw:
            dev = f[1]
            r6 = subprocess.run(["ip", "-o", "-6", "addr", "show", "dev", dev, "scope", "link"], capture_output=True,
                                text=True, timeout=10)
            ll = r6.stdout.split()[3].split("/")[0] if r6.stdout.split() else ""
            return dev, ll
    raise AssertionError(f"no host interface holds {gw}")


def send_go(address, text, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, 7778), timeout=2) as c:
                c.sendall(text.encode())
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.skipif(not IS_ROOT, reason="guest networking needs root")
@pytest.mark.skipif(not shutil.which("iptables-save"), reason="iptables is not installed")
def test_guests_reach_neither_host_nor_each_other(env):
    s = env
    listener = Listener()
    try:
        script = (PROBE.replace("@API@", str(s.port)).replace("@LISTEN@", str(listener.port))
                  .replace("@HOST@", HOST_ADDRESS or ""))
        a = create(s, ["sh", "-c", script], "iso-a")
        b = create(s, ["sh", "-c", script], "iso-b")
        addr = {}
        for cid in (a, b):
            deadline = time.monotonic() + 120
            while True:
                item = api(s, "GET", "/v1/containers/" + cid)[2]["item"]
                if item["vm_state"] == "running" and item["address"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert item["vm_state"] == "running" and item["address"], item
            addr[cid] = item["address"]
        # IPv6 is off on the host end of each link: no link-local address a guest could reach the host's
        # services on (with it, root in a guest could: `ip -6 addr add fe80::99/64 dev eth0` and connect to
        # fe80::<host end>%eth0, where no iptables rule applies).
        links = {cid: host_link(addr[cid]) for cid in (a, b)}
        for cid, (dev, ll) in links.items():
            with open(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6") as f:
                assert f.read().strip() == "1", dev
            assert ll == "", (dev, ll)
        before = {cid: iptables_counters(cid) for cid in (a, b)}
        # The host reaches each guest's own service (host-originated traffic is not filtered) ...
        for cid in (a, b):
            deadline = time.monotonic() + 60
            while True:  # the listener starts with the container's command, right after the VM runs
                try:
                    with socket.create_connection((addr[cid], 7777), timeout=10) as c:
                        c.sendall(b"ping\n")
                        assert c.recv(16) == b"ping\n"
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline, "no listener in the guest"
                    time.sleep(0.2)
        # ... and names the other VM to each.
        send_go(addr[a], addr[b] + "\n")
        send_go(addr[b], addr[a] + "\n")
        results = {}
        for cid in (a, b):
            item = wait_state(s, cid, ("provisioning", "running"), 60)
            assert item["state"] == "exited" and item["exit_code"] == 0, item
            out = api(s, "GET", f"/v1/containers/{cid}/logs")[2]["stdout"]
            assert out.rstrip().endswith("done"), out
            results[cid] = out.splitlines()[:-1]
            print(cid, out)
            assert results[cid] and all(line.startswith("refused ") for line in results[cid]), out
        assert listener.accepted == []
        after = {cid: iptables_counters(cid) for cid in (a, b)}
        for cid in (a, b):
            host_attempts = sum(1 for line in results[cid] if "gateway" in line or "host_address" in line)
            rin = reject_rule(after[cid], "FCWARM-INPUT", ["-i "], ["ctstate", "-d "])
            grown = after[cid][rin] - before[cid].get(rin, 0)
            assert grown >= host_attempts, (cid, rin, grown, host_attempts)
        # To the other VM: FORWARD, where whichever of the two VMs' rules comes first in FCWARM-EGRESS rejects
        # it: the sender's `-i <its veth> -d <address pool>` or the receiver's `-o <its veth>` (not a reply).
        for src, dst in ((a, b), (b, a)):
            pool = reject_rule(after[src], "FCWARM-EGRESS", ["-i ", "-d 10.213.0.0/16"])
            to_dst = reject_rule(after[dst], "FCWARM-EGRESS", ["-o "], ["ctstate"])
            grown = (after[src][pool] - before[src].get(pool, 0)) + (after[dst][to_dst] - before[dst].get(to_dst, 0))
            assert grown >= 1, (src, dst, pool, to_dst)
    finally:
        listener.close()
