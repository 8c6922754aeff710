"""Parked containers (issue 14, docs/docker-runtime.md "Parked containers"), end to end: labels `docker` and
`registry`.

One fcwarm-server (QEMU backend, the docker runtime image of FCWARM_DOCKER_IMAGE_DIR) with `--preload-image
busybox:latest` (baked into the runtime image, so the build pulls nothing) builds one snapshot whose `parking`
phase leaves a started busybox container waiting on its launcher. Then, each in its own warm clone:
- a parked launch runs the requested argv as PID 1 with the requested env, working directory and user; its exit
  code, stdout and stderr (logs) and wait are right, and the item says `container_path: parked`;
- four clones of that one snapshot print distinct hostnames (each its item's, also in /etc/hostname) and distinct
  random bytes;
- a request the parked path cannot serve (`read_only`) falls back to docker create + start and says why;
- a container of an image that is not preloaded (the offline registry's nginx:alpine stand-in) is pulled,
  created and started (`container_path: created`, reason `image_not_parked`).
Nothing leaves this machine (`--egress none`, `--dns` the registry's address, the registry as the mirror). The
server, the registry and every fcwarm iptables rule are gone afterwards; net.ipv4.ip_forward is put back.

Skips without root, the registry tools, iptables, QEMU or the docker runtime image, unless
FCWARM_REQUIRE_REGISTRY=1 or FCWARM_REQUIRE_DOCKER=1 (then it fails)."""

import os
import re
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "support"))
sys.path.insert(0, os.path.join(HERE, "..", "server"))
sys.path.insert(0, HERE)
import registry  # noqa: E402
from conftest import Server, poll_item  # noqa: E402

from docker_env import IMAGE_DIR, IP_FORWARD, REQUIRE, fcwarm_rules, skip_reason as _skip_reason  # noqa: E402


@pytest.fixture(scope="module")
def env():
    """The registry (nginx:alpine pushed, not preloaded), the server and its snapshot with a parked busybox."""
    reason = _skip_reason()
    if reason:
        if REQUIRE:
            pytest.fail("FCWARM_REQUIRE_REGISTRY/FCWARM_REQUIRE_DOCKER=1 but " + reason)
        pytest.skip(reason)
    with open(IP_FORWARD) as f:
        forward = f.read()
    rules_before = fcwarm_rules()
    with registry.Registry() as reg:
        reg.push(registry.build_standard_images(os.path.join(reg.dir, "images"))["nginx"])
        server = Server("--backend", "qemu", "--bootstrap-docker-image-dir", IMAGE_DIR,
                        "--egress", "none", "--dns", reg.registry_ip,
                        "--registry-mirror", reg.url, "--insecure-registry", reg.address,
                        "--preload-image", "busybox:latest", "--pull-timeout", "600")
        try:
            st, _, imgs = server.get("/v1/images")
            assert st == 200 and len(imgs["items"]) == 1, imgs
            st, _, doc = server.post("/v1/runtime-snapshots", {"runtime_image_id": imgs["items"][0]["id"]})
            assert st == 202, doc
            snap = poll_item(server, "/v1/runtime-snapshots/" + doc["id"], "creating", 1500, interval=0.5)
            assert snap["state"] == "ready", snap
            yield server, snap
        finally:
            server.stop(timeout=60)
            log = server.read_log()
            server.close()
        assert "event=stopped" in log, log[-4000:]
    assert reg.leftovers() == []
    vms = set(re.findall(r"qemu: vm fcwarm-([0-9a-f-]{36}) started", log))
    rules_after = fcwarm_rules()
    assert [r for r in rules_after if any(v in r for v in vms)] == []
    if not rules_before:
        assert rules_after == [], rules_after
    with open(IP_FORWARD, "w") as f:
        f.write(forward)


def run(server, body, finish=True):
    """Creates a container (waiting until it runs); with `finish`, waits for its exit. Returns (item, logs)."""
    st, _, doc = server.post("/v1/containers", body)
    assert st == 201, doc
    item = doc["item"]
    assert item["state"] in ("running", "exited"), item
    logs = None
    if finish:
        st, _, doc = server.post(f"/v1/containers/{item['id']}/wait?timeout_ms=120000")
        assert st == 200, doc
        item = doc["item"]
        assert item["state"] == "exited", item
        st, _, logs = server.get(f"/v1/containers/{item['id']}/logs")
        assert st == 200, logs
    return item, logs


def destroy(server, item):
    st, _, doc = server.delete(f"/v1/containers/{item['id']}")
    assert st == 200, doc


def test_snapshot_holds_a_parked_container(env):
    server, snap = env
    assert [p["image"] for p in snap["parked"]] == ["busybox:latest"], snap
    assert snap["parked"][0]["name"] == "fcwarm-parked-0" and len(snap["parked"][0]["docker_id"]) == 64, snap
    st, _, events = server.get(f"/v1/events?kind=build&snapshot_id={snap['id']}")
    assert st == 200 and events["items"], events
    assert "parking" in events["items"][-1]["timings"], events


def test_parked_launch_runs_the_command_as_pid_1(env):
    server, snap = env
    item, logs = run(server, {
        "name": "parked-one", "image": "busybox:latest",
        "command": ["sh", "-c", 'echo "pid=$$ cwd=$(pwd) foo=$FOO uid=$(id -u) home=$HOME"; echo to-stderr >&2; '
                                "exit 7"],
        "env": {"FOO": "bar baz"}, "working_dir": "/srv/work", "user": "nobody"})
    assert item["boot_method"] == "warm" and item["snapshot_id"] == snap["id"], item
    assert item["container_path"] == "parked" and item["container_path_reason"] is None, item
    assert item["docker_id"] == snap["parked"][0]["docker_id"], item
    assert "container_launch" in item["timings"] and "container_create" not in item["timings"], item
    assert item["exit_code"] == 7, item
    assert logs["stdout"] == "pid=1 cwd=/srv/work foo=bar baz uid=65534 home=/\n", logs
    assert logs["stderr"] == "to-stderr\n", logs
    print(f"\nparked launch: total {item['timings']['total']:.0f} ms, launch {item['timings']['container_launch']:.0f}"
          f" ms, timings {item['timings']}")
    destroy(server, item)


def test_four_warm_clones_have_distinct_hostnames_and_entropy(env):
    server, snap = env
    seen = []
    for i in range(4):
        item, logs = run(server, {
            "image": "busybox:latest",
            "command": ["sh", "-c", "hostname; cat /etc/hostname; echo $HOSTNAME; "
                                    "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"]})
        assert item["container_path"] == "parked" and item["exit_code"] == 0, item
        lines = logs["stdout"].split("\n")
        assert lines[0] == lines[1] == lines[2] == item["hostname"], (lines, item)
        assert re.fullmatch(r"[0-9a-f]{32}", lines[3]), lines
        seen.append((lines[0], lines[3]))
        destroy(server, item)
    assert len({h for h, _ in seen}) == 4, seen
    assert len({r for _, r in seen}) == 4, seen


def test_what_a_parked_container_cannot_honour_takes_the_created_path(env):
    server, _ = env
    item, logs = run(server, {"image": "busybox:latest", "read_only": True,
                              "command": ["sh", "-c", "touch /x 2>/dev/null && echo writable || echo read-only"]})
    assert item["boot_method"] == "warm", item
    assert item["container_path"] == "created" and item["container_path_reason"] == "read_only", item
    assert "container_create" in item["timings"] and "container_launch" not in item["timings"], item
    assert item["exit_code"] == 0 and logs["stdout"] == "read-only\n", (item, logs)
    destroy(server, item)


def test_a_container_of_an_image_not_preloaded_is_pulled_created_and_started(env):
    server, _ = env
    item, _ = run(server, {"name": "web", "image": "nginx:alpine"}, finish=False)
    assert item["state"] == "running", item
    assert item["container_path"] == "created" and item["container_path_reason"] == "image_not_parked", item
    assert item["pull"] is not None and item["pull"]["layers"] >= 1, item
    destroy(server, item)
