"""Containers with the real Docker daemon through the REST API (ctest label `docker`): the server bootstraps the
docker runtime image; a container on a cold VM runs busybox and its logs come back; after the snapshot build a
container on a warm VM does the same, in the background (202 → wait), faster. Skips when QEMU or the image
(FCWARM_DOCKER_IMAGE_DIR, default /var/cache/fcwarm/guest/docker-current) is missing, unless
FCWARM_REQUIRE_DOCKER=1."""

import os
import shutil

import pytest

from conftest import poll_item

IMAGE_DIR = os.environ.get("FCWARM_DOCKER_IMAGE_DIR", "/var/cache/fcwarm/guest/docker-current")
FILES = ("bzImage", "initramfs.cpio.gz", "docker-rootfs.ext4")
COMMAND = ["sh", "-c", "echo out-$(hostname); echo err-line >&2; exit 7"]


@pytest.fixture
def docker_server(start_server):
    missing = [f for f in FILES if not os.path.isfile(os.path.join(IMAGE_DIR, f))]
    why = None
    if not shutil.which("qemu-system-x86_64"):
        why = "qemu-system-x86_64 is not installed"
    elif missing:
        why = f"docker runtime image files missing in {IMAGE_DIR}: {missing}"
    if why:
        if os.environ.get("FCWARM_REQUIRE_DOCKER") == "1":
            pytest.fail("FCWARM_REQUIRE_DOCKER=1 but " + why)
        pytest.skip(why)
    return start_server("--backend", "qemu", "--bootstrap-docker-image-dir", IMAGE_DIR)


def check_ran(s, cid):
    st, _, doc = s.post(f"/v1/containers/{cid}/wait?timeout_ms=120000")
    assert st == 200, doc
    item = doc["item"]
    assert item["state"] == "exited", item
    assert item["exit_code"] == 7
    # RFC 3339 UTC with whole seconds: ordered as strings.
    assert item["finished_at"] >= item["started_at"] and item["started_at"].endswith("Z")
    st, _, logs = s.get(f"/v1/containers/{cid}/logs")
    assert st == 200, logs
    assert logs["stdout"] == f"out-{item['hostname']}\n"  # host network mode: the VM's hostname
    assert logs["stderr"] == "err-line\n"
    assert logs["truncated"] is False
    return item


def test_docker_containers_cold_then_warm(docker_server):
    s = docker_server
    st, _, imgs = s.get("/v1/images")
    assert [i["name"] for i in imgs["items"]] == ["docker"]
    image_id = imgs["items"][0]["id"]

    # No runtime_image: the server's one container runtime image ("docker").
    body = {"name": "cold1", "image": "busybox:latest", "command": COMMAND,
            "env": {"GREETING": "hi"}, "wait": True}
    st, _, doc = s.post("/v1/containers", body)
    assert st == 201, doc
    cold = doc["item"]
    assert cold["runtime"] == "docker" and cold["boot_method"] == "cold" and cold["fallback_reason"] == "no_snapshot"
    for step in ("cold_boot", "runtime_verify", "container_create", "container_start", "total"):
        assert step in cold["timings"], cold["timings"]
    check_ran(s, cold["id"])
    # An image the runtime does not have and cannot pull (no egress, no resolver: conftest): 503 with Docker's
    # pull error naming it, and the container's VM is released.
    st, _, doc = s.post("/v1/containers", {**body, "name": "nope", "image": "nginx:latest"})
    assert st == 503, doc
    assert doc["error"]["message"].startswith("pull nginx:latest: docker pull:"), doc

    st, _, doc = s.post("/v1/runtime-snapshots", {"runtime_image_id": image_id})
    assert st == 202, doc
    snap = doc["id"]
    item = poll_item(s, "/v1/runtime-snapshots/" + snap, "creating", 600, interval=0.5)
    assert item["state"] == "ready", item

    st, _, doc = s.post("/v1/containers", {**body, "name": "warm1", "wait": False})
    assert st == 202, doc
    assert doc["item"]["state"] == "provisioning" and doc["item"]["boot_method"] is None
    warm = check_ran(s, doc["id"])
    assert warm["boot_method"] == "warm" and warm["fallback_reason"] is None and warm["snapshot_id"] == snap
    assert warm["timings"]["total"] < cold["timings"]["total"]
    assert warm["env"] == {"GREETING": "hi"} and warm["command"] == COMMAND

    # Logs survive the VM; delete releases it, the record stays.
    for cid in (cold["id"], warm["id"]):
        st, _, _ = s.delete(f"/v1/containers/{cid}")
        assert st == 200
        st, _, logs = s.get(f"/v1/containers/{cid}/logs")
        assert st == 200 and logs["stderr"] == "err-line\n"
    st, _, lst = s.get("/v1/containers?include_destroyed=true")
    states = {i["name"]: i["state"] for i in lst["items"]}
    assert states == {"cold1": "destroyed", "warm1": "destroyed", "nope": "failed"}
    st, _, lst = s.get("/v1/containers?include_destroyed=true")
    assert all(i["vm_state"] in ("destroyed", "failed") for i in lst["items"]), lst
