"""The quick start, verbatim, against a real server (ctest labels `docker` and `registry`): the guide's curl
commands and jq filters (run as processes with argv lists: curl and jq, the server's address and the ids
substituted), `my-nginx` from `nginx:alpine` pulled by the guest's Docker daemon through a registry mirror, warm;
then published ports: a web container answers curl from the host cold and warm, two warm clones on two host ports
answer with their own hostnames, and after destroy the ports are free and the host's rule set is as before; an
unreachable mirror fails a container clearly within a bounded time.

Nothing leaves this machine: the registry is tests/support/registry.py (Debian's docker-registry in a network
namespace of its own, serving an offline stand-in for nginx:alpine); the server runs with `--egress none` (the
mirror is allowed automatically) and `--dns` pointing at the host end of the registry's link: a guest never
reaches the host's own services (its queries are rejected at once), so dockerd's fallback to Docker Hub fails
fast instead of leaving the host.

Skips without QEMU, the docker runtime image (FCWARM_DOCKER_IMAGE_DIR) or the registry's tools, unless
FCWARM_REQUIRE_DOCKER=1 / FCWARM_REQUIRE_REGISTRY=1."""

import json
import re
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import Server

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import registry  # noqa: E402

IMAGE_DIR = os.environ.get("FCWARM_DOCKER_IMAGE_DIR", "/var/cache/fcwarm/guest/docker-current")
FILES = ("bzImage", "initramfs.cpio.gz", "docker-rootfs.ext4")


def _skip_or_fail(why):
    if os.environ.get("FCWARM_REQUIRE_DOCKER") == "1" or os.environ.get("FCWARM_REQUIRE_REGISTRY") == "1":
        pytest.fail("required but " + why)
    pytest.skip(why)


def _preconditions():
    missing = [f for f in FILES if not os.path.isfile(os.path.join(IMAGE_DIR, f))]
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed"
    if missing:
        return f"docker runtime image files missing in {IMAGE_DIR}: {missing}"
    tools = registry.required_tools() + [t for t in ("curl", "jq", "iptables-save") if not shutil.which(t)]
    if tools:
        return "missing " + ", ".join(tools)
    if os.geteuid() != 0:
        return "not root"
    return None


TAG = re.compile(r"fcwarm:vm:([0-9a-f-]{36}):")


def rules(ours=None):
    """The host's IPv4 rule set (iptables-save without counters and comments). Other fcwarm processes on this
    host (other test suites) come and go meanwhile: with `ours` (VM ids), rules tagged for any other VM and the
    fcwarm chains and jumps every process shares are left out, so what remains is the rest of the host's rules
    plus those of our VMs."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    if ours is None:
        return lines
    kept = []
    for ln in lines:
        m = TAG.search(ln)
        if m:
            if m.group(1) in ours:
                kept.append(ln)
        elif "FCWARM" not in ln.upper():
            kept.append(ln)
    return kept


def untagged(rule):
    """A rule without the nonce of its tag ("fcwarm:vm:ID:ports:NONCE" → "fcwarm:vm:ID:ports")."""
    return re.sub(r"(fcwarm:vm:[0-9a-f-]{36}:[a-z]+):[0-9a-f]+", r"\1", rule)


def rules_of(ids):
    return [ln for ln in rules() if (m := TAG.search(ln)) and m.group(1) in ids]


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(port, timeout=60):
    """GET http://127.0.0.1:PORT/ until the container's server answers (it may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class Cli:
    """The guide's commands: curl (and jq) as processes, the base URL substituted for 127.0.0.1:18080."""

    def __init__(self, server):
        self.base = f"http://127.0.0.1:{server.port}"

    def curl(self, *args):
        argv = ["curl", "-sS"] + [a.replace("http://127.0.0.1:18080", self.base) for a in args]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, (argv, p.stderr)
        return p.stdout

    @staticmethod
    def jq(text, program):
        p = subprocess.run(["jq", program], input=text, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, (program, p.stderr, text[:500])
        return p.stdout


@pytest.fixture(scope="module")
def reg():
    why = _preconditions()
    if why:
        _skip_or_fail(why)
    with registry.Registry() as r:
        r.push_standard_images()
        yield r


@pytest.fixture(scope="module")
def server(reg):
    ip_forward = open("/proc/sys/net/ipv4/ip_forward").read()
    s = Server("--backend", "qemu", "--bootstrap-docker-image-dir", IMAGE_DIR, "--registry-mirror", reg.url,
               "--dns", reg.host_ip, "--pull-timeout", "120")
    yield s
    st, _, doc = s.get("/v1/containers?include_destroyed=true")
    ids = {i["id"] for i in doc.get("items", [])} if st == 200 else set()
    s.stop()
    s.close()
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write(ip_forward)
    assert not rules_of(ids), "rules of this server's VMs left after it stopped"


def image_id(server, name="docker"):
    st, _, doc = server.get("/v1/images")
    assert st == 200, doc
    ids = [i["id"] for i in doc["items"] if i["name"] == name]
    assert ids, doc
    return ids[0]


@pytest.fixture(scope="module")
def snapshot(server):
    """The guide's step 1 with the API, then polled with the guide's own filter until ready."""
    cli = Cli(server)
    out = cli.curl("-X", "POST", "http://127.0.0.1:18080/v1/runtime-snapshots",
                   "-H", "Content-Type: application/json",
                   "-d", json.dumps({"runtime_image_id": image_id(server)}))
    sid = json.loads(out)["id"]
    deadline = time.monotonic() + 600
    while True:
        health = json.loads(cli.jq(cli.curl(f"http://127.0.0.1:18080/v1/runtime-snapshots/{sid}"),
                                   "{state, success_count, failure_count}"))
        if health["state"] != "creating" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert health == {"state": "ready", "success_count": 0, "failure_count": 0}, health
    return sid


def test_quickstart_verbatim(server, reg, snapshot):
    cli = Cli(server)
    sid = snapshot
    rid = image_id(server)
    listed = json.loads(cli.jq(cli.curl("http://127.0.0.1:18080/v1/runtime-snapshots"), "."))
    assert [i["id"] for i in listed["items"]] == [sid]
    rows = cli.jq(cli.curl("http://127.0.0.1:18080/v1/runtime-snapshots"), ".items[] | {id, state, runtime_image_id}")
    assert json.loads(rows) == {"id": sid, "state": "ready", "runtime_image_id": rid}

    # Step 2, verbatim: the create returns once the container runs; the image came through the mirror.
    before = reg.mark()
    t0 = time.monotonic()
    out = cli.curl("-X", "POST", "http://127.0.0.1:18080/v1/containers", "-H", "Content-Type: application/json",
                   "-d", '{\n    "name": "my-nginx",\n    "image": "nginx:alpine"\n  }')
    elapsed = time.monotonic() - t0
    doc = json.loads(out)
    assert "id" in doc, doc
    cid = doc["id"]
    assert doc["item"]["state"] == "running", doc
    assert cli.jq(cli.curl(f"http://127.0.0.1:18080/v1/containers/{cid}"), ".item.boot_method").strip() == '"warm"'
    pulled = reg.pulls("library/nginx", since=before)
    assert pulled["blobs"] >= 1, pulled  # the guest's daemon pulled nginx:alpine from the mirror
    item = doc["item"]
    assert item["pull"] is not None and item["pull"]["layers"] >= 1 and item["pull"]["bytes"] > 0, item
    assert item["image"] == "nginx:alpine" and item["name"] == "my-nginx"
    assert item["created_at"].endswith("Z") and item["started_at"].endswith("Z")
    print(f"quick start create (warm, with pull) took {elapsed:.1f} s; timings {item['timings']}")

    # The troubleshooting greps of the guide find the log line.
    log = server.read_log()
    assert f"Container {cid} (my-nginx) fully provisioned via warm boot (saved ~" in log, log[-3000:]

    # Health after one warm start, with the guide's filter: values, not nulls.
    health = json.loads(cli.jq(cli.curl(f"http://127.0.0.1:18080/v1/runtime-snapshots/{sid}"),
                               "{state, success_count, failure_count}"))
    assert health == {"state": "ready", "success_count": 1, "failure_count": 0}, health

    st, _, _ = server.delete(f"/v1/containers/{cid}")
    assert st == 200


def test_pull_progress_is_live(server, reg, snapshot):
    """While the guest's daemon pulls, the container item shows how far the pull got. The registry's link is
    slowed to 8 Mbit/s, so the 5 MiB layer of fcwarm/pull-bench:5m takes several seconds; the item is polled
    meanwhile (the create does not wait)."""
    reg.throttle("8mbit")
    cid = None
    try:
        st, _, doc = server.post("/v1/containers", {"image": "fcwarm/pull-bench:5m", "wait": False})
        assert st == 202, doc
        cid = doc["id"]
        seen = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            st, _, doc = server.get(f"/v1/containers/{cid}")
            assert st == 200, doc
            item = doc["item"]
            if item["state"] == "pulling" and item["pull"] is not None:
                seen.append(item["pull"])
            if item["state"] not in ("provisioning", "pulling"):
                break
            time.sleep(0.1)
        assert item["state"] == "running", item
        running = [p for p in seen if not p["done"]]
        assert running, f"no live progress seen while pulling: {seen}"
        # Mid-download: some bytes of the announced total, not all of them.
        assert any(0 < p["bytes"] < p["bytes_total"] for p in running), running
        assert all(a["bytes"] <= b["bytes"] and a["ms"] <= b["ms"] for a, b in zip(running, running[1:])), running
        assert all(p["layers"] <= p["layers_total"] for p in running), running
        final = item["pull"]
        assert final["done"] is True, final
        assert final["layers"] >= 1 and final["layers"] == final["layers_total"], final
        assert final["bytes"] >= 5 * 1024 * 1024 and final["bytes"] == final["bytes_total"], final
        assert final["bytes"] >= max(p["bytes"] for p in running), (final, running)
        print(f"pull progress: {len(running)} live observations, final {final}")
    finally:
        reg.throttle(None)
        if cid:
            server.delete(f"/v1/containers/{cid}")


def test_published_ports_cold_and_warm(server, reg, snapshot):
    baseline = rules(ours=set())
    ports = [free_port() for _ in range(3)]
    assert len(set(ports)) == 3
    created = []
    # Cold: the runtime's own boot, then the pull and the container.
    st, _, doc = server.post("/v1/containers", {"image": "nginx:alpine", "ports": [f"{ports[0]}:80"],
                                                "force_cold": True})
    assert st == 201, doc
    created.append(doc["item"])
    # Two warm clones, each on its own host port.
    for p in ports[1:]:
        st, _, doc = server.post("/v1/containers", {"image": "nginx:alpine", "ports": [f"{p}:80"]})
        assert st == 201, doc
        created.append(doc["item"])
    assert [c["boot_method"] for c in created] == ["cold", "warm", "warm"], created
    hostnames = set()
    for c, p in zip(created, ports):
        assert c["state"] == "running", c
        assert c["ports"] == [f"127.0.0.1:{p}:80/tcp"], c
        assert c["address"] and "/" not in c["address"], c
        page = fetch(p)
        assert c["hostname"] in page, (c["hostname"], page)
        hostnames.add(c["hostname"])
    assert len(hostnames) == 3
    # A taken host port is refused before any VM starts.
    st, _, doc = server.post("/v1/containers", {"image": "nginx:alpine", "ports": [f"{ports[1]}:80"]})
    assert st == 409, doc
    assert "ports[0]" in doc["error"]["message"] and str(ports[1]) in doc["error"]["message"]
    # Stop removes the forwarding; destroy releases everything: the ports are free and the rules as before.
    st, _, doc = server.post(f"/v1/containers/{created[0]['id']}/stop")
    assert st == 200 and doc["item"]["state"] == "stopped", doc
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/", timeout=3)
    for c in created:
        st, _, _ = server.delete(f"/v1/containers/{c['id']}")
        assert st == 200
    assert all(port_free(p) for p in ports)
    assert rules(ours={c["id"] for c in created}) == baseline


def test_live_restore_after_sigkill(server, reg, snapshot):
    """The server is killed with SIGKILL while three containers run, one serving a published port: after the
    restart all three are still running (the same VMM processes, re-adopted), the port answers, logs, stop and
    destroy work, and nothing of theirs is left afterwards."""
    port = free_port()
    made = []
    for body in ({"name": "live-web", "image": "nginx:alpine", "ports": [f"{port}:80"]},
                 {"name": "live-echo", "image": "busybox:latest",
                  "command": ["sh", "-c", "echo hello-before-restart; sleep 3600"]},
                 {"name": "live-idle", "image": "busybox:latest", "command": ["sleep", "3600"]}):
        st, _, doc = server.post("/v1/containers", body)
        assert st == 201, doc
        assert doc["item"]["state"] == "running", doc
        made.append(doc["item"])
    ids = [c["id"] for c in made]
    web = made[0]
    assert web["hostname"] in fetch(port)
    pids = set(server.vmm_pids())
    assert len(pids) >= 3, pids
    baseline = rules_of(set(ids))
    assert baseline

    server.kill()
    assert set(server.vmm_pids()) == pids, "a VMM died with the server"
    # While no server runs, the published port keeps working: the forwarding lives in the host's rules.
    assert web["hostname"] in fetch(port, timeout=10)
    server.restart()

    for cid in ids:
        st, _, doc = server.get(f"/v1/containers/{cid}")
        assert st == 200, doc
        assert doc["item"]["state"] == "running", doc["item"]
        assert doc["item"]["vm_state"] == "running", doc["item"]
    assert set(server.vmm_pids()) == pids
    # The same rules: applied again in one transaction at adoption, so only their tags' nonces differ.
    assert sorted(map(untagged, rules_of(set(ids)))) == sorted(map(untagged, baseline))
    assert web["hostname"] in fetch(port)
    st, _, doc = server.get(f"/v1/containers/{ids[1]}/logs")
    assert st == 200 and "hello-before-restart" in doc["stdout"], doc
    log = server.read_log()
    assert "live restore: 3 VM(s) of the previous run re-adopted, 0 lost" in log, log[-3000:]
    _, _, text = server.get("/metrics")
    assert "fcwarm_vms_adopted_total 3" in text, [ln for ln in text.splitlines() if "adopt" in ln]

    st, _, doc = server.post(f"/v1/containers/{ids[2]}/stop")
    assert st == 200 and doc["item"]["state"] == "stopped", doc
    for cid in ids:
        st, _, doc = server.delete(f"/v1/containers/{cid}")
        assert st == 200, doc
    assert not server.vmm_pids()
    assert not rules_of(set(ids))
    assert port_free(port)


def test_unreachable_mirror_fails_clearly_and_in_time(reg):
    # A second server whose mirror refuses connections (the registry's address, a closed port).
    ip_forward = open("/proc/sys/net/ipv4/ip_forward").read()
    s = Server("--backend", "qemu", "--bootstrap-docker-image-dir", IMAGE_DIR, "--registry-mirror",
               f"http://{reg.registry_ip}:5999", "--dns", reg.host_ip, "--pull-timeout", "90")
    try:
        t0 = time.monotonic()
        st, _, doc = s.post("/v1/containers", {"image": "nginx:alpine", "ports": ["80"], "force_cold": True})
        elapsed = time.monotonic() - t0
        assert st == 503, doc
        msg = doc["error"]["message"]
        assert msg.startswith("pull nginx:alpine: docker pull:"), msg
        [item] = s.get("/v1/containers")[2]["items"]
        assert item["state"] == "failed" and item["vm_state"] == "destroyed", item
        assert item["timings"]["pull"] < 90000, item
        print(f"unreachable mirror: failed after {elapsed:.1f} s: {msg}")
        assert not rules_of({item["id"]})
        host_port = int(item["ports"][0].split(":")[1])
        assert port_free(host_port)
    finally:
        s.stop()
        s.close()
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(ip_forward)


def test_quickstart_rebuild_and_delete(server, snapshot):
    """The guide's management commands, verbatim: rebuild, then delete (the build still running is discarded)."""
    cli = Cli(server)
    sid = snapshot
    doc = json.loads(cli.curl("-X", "POST", f"http://127.0.0.1:18080/v1/runtime-snapshots/{sid}/rebuild"))
    assert doc["id"] == sid and doc["state"] == "creating" and doc["item"]["state"] == "creating", doc
    assert json.loads(cli.curl("-X", "DELETE", f"http://127.0.0.1:18080/v1/runtime-snapshots/{sid}")) == {"ok": True}
    listed = json.loads(cli.jq(cli.curl("http://127.0.0.1:18080/v1/runtime-snapshots"), "."))
    assert sid not in [i["id"] for i in listed["items"]], listed
    health = json.loads(cli.jq(cli.curl(f"http://127.0.0.1:18080/v1/runtime-snapshots/{sid}"),
                               "{state, success_count, failure_count}"))
    assert health["state"] == "deleted", health
