"""A snapshot build preloads nginx:alpine from the offline test registry, and a warm container of it starts
without any pull (labels `registry` and `docker`).

The real path end to end: fcwarm-server with the QEMU backend (TCG here) and the docker runtime image
(FCWARM_DOCKER_IMAGE_DIR), `--preload-image nginx:alpine`, the registry of tests/support/registry.py as the
guests' registry mirror. Nothing leaves this machine: `--egress none` (the mirror is allowed automatically, every
other destination is rejected by the host's rules) and `--dns` is the registry's own address (no resolver
listens there, so not even a DNS query leaves the host). The build VM pulls through its own network (the
registry's access log shows it); the snapshot lists the image; the warm container's record shows no pull and
the registry sees no request for the image after the build. A second runtime image whose preload the registry
does not have fails its build in phase `preloading` with Docker's message. Everything is cleaned up: the server, the registry
(namespace, veth, process, directory), the fcwarm iptables rules and chains; net.ipv4.ip_forward is put back.

Skips without root, the registry tools (docker-registry, skopeo, busybox-static), iptables, QEMU or the docker
runtime image, unless FCWARM_REQUIRE_REGISTRY=1 or FCWARM_REQUIRE_DOCKER=1 (then it fails)."""

import os
import re
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "support"))
sys.path.insert(0, os.path.join(HERE, "..", "server"))
sys.path.insert(0, HERE)
import registry  # noqa: E402
from conftest import Server, poll_item  # noqa: E402  (tests/server/conftest.py: the fcwarm-server driver)

from docker_env import IMAGE_DIR, IP_FORWARD, REQUIRE, fcwarm_rules, skip_reason as _skip_reason  # noqa: E402


@pytest.fixture
def host_state():
    """Yields the fcwarm rules found before the test (normally none) and puts ip_forward back afterwards."""
    reason = _skip_reason()
    if reason:
        if REQUIRE:
            pytest.fail("FCWARM_REQUIRE_REGISTRY/FCWARM_REQUIRE_DOCKER=1 but " + reason)
        pytest.skip(reason)
    with open(IP_FORWARD) as f:
        forward = f.read()
    yield fcwarm_rules()
    with open(IP_FORWARD, "w") as f:
        f.write(forward)


def test_preloaded_image_starts_warm_without_a_pull(host_state):
    rules_before = host_state
    with registry.Registry() as reg:
        reg.push(registry.build_standard_images(os.path.join(reg.dir, "images"))["nginx"])
        server = Server("--backend", "qemu", "--bootstrap-docker-image-dir", IMAGE_DIR,
                        "--egress", "none", "--dns", reg.registry_ip,
                        "--registry-mirror", reg.url, "--insecure-registry", reg.address,
                        "--preload-image", "nginx:alpine", "--pull-timeout", "600")
        try:
            run(server, reg)
        finally:
            server.stop(timeout=60)
            log = server.read_log()
            server.close()
        assert "event=stopped" in log, log[-4000:]
    assert reg.leftovers() == []
    # Nothing of ours is left in the host's rule set: no rule names one of this server's VMs (the build VM and
    # the container's), and on a host without other fcwarm processes no fcwarm chain or rule at all.
    vms = set(re.findall(r"qemu: vm fcwarm-([0-9a-f-]{36}) started", log))
    # The two build VMs and the warm clone (an automatic retry of the failed build may have started one more).
    assert len(vms) >= 3, vms
    rules_after = fcwarm_rules()
    assert [r for r in rules_after if any(v in r for v in vms)] == []
    if not rules_before:
        assert rules_after == [], rules_after


def run(s, reg):
    st, _, imgs = s.get("/v1/images")
    assert st == 200 and [i["name"] for i in imgs["items"]] == ["docker"], imgs
    image_id = imgs["items"][0]["id"]

    # The build pulls nginx:alpine through the build VM's network, from the mirror.
    t0 = time.monotonic()
    st, _, doc = s.post("/v1/runtime-snapshots", {"runtime_image_id": image_id})
    assert st == 202, doc
    snap = poll_item(s, "/v1/runtime-snapshots/" + doc["id"], "creating", 1500, interval=0.5)
    assert snap["state"] == "ready", snap
    build_s = time.monotonic() - t0
    assert "nginx:alpine" in snap["images"], snap["images"]
    assert "busybox:latest" in snap["images"], snap["images"]  # baked into the runtime image
    by_build = reg.pulls("library/nginx")
    assert by_build["manifests"] >= 1 and by_build["blobs"] >= 2, (by_build, reg.requests())
    deadline = time.monotonic() + 30  # the build's event follows its state
    while True:
        st, _, events = s.get(f"/v1/events?kind=build&snapshot_id={snap['id']}")
        assert st == 200, events
        if events["items"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert events["items"] and events["items"][-1]["outcome"] == "ready", events
    assert "preloading" in events["items"][-1]["timings"], events

    # A warm container of the preloaded image: no pull, and the registry sees nothing for it.
    mark = reg.mark()
    st, _, doc = s.post("/v1/containers", {"name": "web", "image": "nginx:alpine"})
    assert st == 201, doc
    item = doc["item"]
    assert item["state"] == "running", item
    assert item["boot_method"] == "warm" and item["snapshot_id"] == snap["id"], item
    assert item["pull"] is None and "pull" not in item["timings"], item
    assert [r for r in reg.requests(mark) if r.name == "library/nginx"] == []
    assert reg.pulls("library/nginx", since=mark) == {"manifests": 0, "blobs": 0, "manifest_heads": 0}
    print(f"\nbuild with preload {build_s:.1f} s, warm container {item['timings']['total']:.0f} ms "
          f"(no pull), snapshot images {snap['images']}")
    st, _, _ = s.delete(f"/v1/containers/{item['id']}")
    assert st == 200

    # An image the registry does not have: the build fails in phase preloading with Docker's own message, and
    # the unreachable fallback to Docker Hub shows that nothing left the machine (DNS goes to the registry).
    base = imgs["items"][0]
    body = {k: base[k] for k in ("backend", "kernel_path", "initrd_path", "rootfs_path", "boot_args", "vcpus",
                                 "memory_mib", "runtime_check")}
    st, _, doc = s.post("/v1/images", {**body, "name": "docker-bad", "preload_images": ["nginx:latest"]})
    assert st == 201, doc
    assert doc["item"]["preload_images"] == ["nginx:latest"]
    mark = reg.mark()
    st, _, doc = s.post("/v1/runtime-snapshots", {"runtime_image_id": doc["id"]})
    assert st == 202, doc
    bad = poll_item(s, "/v1/runtime-snapshots/" + doc["id"], "creating", 1500, interval=0.5)
    assert bad["state"] == "unhealthy", bad
    assert bad["last_error"].startswith("build failed in phase preloading: preload nginx:latest: docker pull: "), bad
    assert bad["images"] == [] and bad["generation"] == 0, bad
    asked = [r for r in reg.requests(mark) if r.name == "library/nginx" and r.ref == "latest"]
    assert asked and all(r.status == 404 for r in asked), reg.requests(mark)
    print(f"failed preload: {bad['last_error']}")
