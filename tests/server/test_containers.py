"""Containers: background provisioning (202 → poll), wait=true, list/get/stop/delete.

With --backend none every VM start fails, so provisioning ends `failed` (background) or 503 (wait=true)."""

import uuid

from conftest import assert_error, create_image, poll_item

ITEM_FIELDS = {"id", "vm_id", "name", "image", "runtime_image_id", "runtime", "state", "exit_code",
               "docker_id", "boot_method", "fallback_reason", "timings", "snapshot_id", "generation", "address", "mac",
               "hostname", "vm_state", "last_error", "created_at", "updated_at", "started_at", "finished_at",
               "command", "env", "ports", "pull", "working_dir", "user", "read_only",
               "container_path", "container_path_reason"}


def wait_not_provisioning(server, cid, timeout=15):
    return poll_item(server, "/v1/containers/" + cid, "provisioning", timeout)


def test_background_provisioning_reports_failure(server):
    img = create_image(server, "ctr-a")
    st, _, doc = server.post("/v1/containers", {"name": "web", "runtime_image": "ctr-a", "command": ["sleep", "1"],
                                                "env": {"A": "1"}, "wait": False})
    assert st == 202, doc
    cid = doc["id"]
    assert doc["item"]["state"] == "provisioning"
    assert set(doc["item"]) == ITEM_FIELDS
    # One resource: its fields at the top level and under "item" (docs/api.md, Conventions).
    assert {k: v for k, v in doc.items() if k != "item"} == doc["item"]
    item = wait_not_provisioning(server, cid)
    assert item["state"] == "failed"
    assert "none" in item["last_error"]
    assert item["id"] == cid and item["runtime_image_id"] == img["id"]
    assert item["command"] == ["sleep", "1"] and item["env"] == {"A": "1"}
    st, _, lst = server.get("/v1/containers")
    assert st == 200
    assert [i["id"] for i in lst["items"]].count(cid) == 1
    st, _, doc = server.delete("/v1/containers/" + cid)
    assert st == 200 and doc == {"ok": True}


def test_wait_true_returns_the_provisioning_error(server):
    img = create_image(server, "ctr-b")
    msg = assert_error(server.post("/v1/containers", {"name": "w", "runtime_image": img["id"], "wait": True}), 503,
                       "unavailable")
    assert "none" in msg


def test_validation(server):
    create_image(server, "ctr-c")
    assert_error(server.post("/v1/containers", {"name": 7, "runtime_image": "ctr-c", "wait": False}), 400, "invalid_argument", "name")
    assert_error(server.post("/v1/containers", {"name": "x", "wait": False}), 400, "invalid_argument", "image")
    assert_error(server.post("/v1/containers", {"name": "Bad Name", "runtime_image": "ctr-c", "wait": False}), 400, "invalid_argument", "name")
    assert_error(server.post("/v1/containers", {"name": "x", "runtime_image": "ctr-c", "wait": "yes"}), 400,
                 "invalid_argument", "wait")
    assert_error(server.post("/v1/containers", {"name": "x", "runtime_image": "ctr-c", "command": "ls", "wait": False}), 400,
                 "invalid_argument", "command")
    assert_error(server.post("/v1/containers", {"name": "x", "runtime_image": "ctr-c", "env": {"A": 1}, "wait": False}), 400,
                 "invalid_argument", "env.A")
    assert_error(server.post("/v1/containers", {"name": "x", "runtime_image": "ctr-c", "env": {"1BAD": "v"}, "wait": False}), 400,
                 "invalid_argument", "env")
    assert_error(server.post("/v1/containers", {"name": "x", "runtime_image": "ctr-c", "tty": True, "wait": False}), 400,
                 "invalid_argument", "tty")
    assert_error(server.post("/v1/containers", {"name": "x", "runtime_image": "no-such-image", "wait": False}), 404, "not_found")
    assert_error(server.post("/v1/containers", {"name": "x", "runtime_image": str(uuid.uuid4()), "wait": False}), 404, "not_found")
    assert_error(server.post("/v1/containers", {"name": "x", "runtime_image": "../etc", "wait": False}), 400, "invalid_argument", "image")


def test_get_stop_delete_unknown(server):
    missing = str(uuid.uuid4())
    assert_error(server.get("/v1/containers/" + missing), 404, "not_found")
    assert_error(server.post(f"/v1/containers/{missing}/stop"), 404, "not_found")
    assert_error(server.delete("/v1/containers/" + missing), 404, "not_found")


def test_stop_failed_container(server):
    create_image(server, "ctr-d")
    _, _, doc = server.post("/v1/containers", {"name": "s", "runtime_image": "ctr-d", "wait": False})
    item = wait_not_provisioning(server, doc["id"])
    assert item["state"] == "failed"
    st, _, doc2 = server.post(f"/v1/containers/{doc['id']}/stop")
    # The VM record exists (state failed): stopping it is a no-op that returns it.
    assert st in (200, 409), doc2


def test_provisioning_container_cannot_be_deleted(start_server):
    s = start_server("--none-delay", "2")
    create_image(s, "slow")
    st, _, doc = s.post("/v1/containers", {"name": "slow1", "runtime_image": "slow", "wait": False})
    assert st == 202
    assert_error(s.delete("/v1/containers/" + doc["id"]), 409, "failed_precondition")
    assert_error(s.post(f"/v1/containers/{doc['id']}/stop"), 409, "failed_precondition")
    st, _, lst = s.get("/v1/containers")
    assert [i["state"] for i in lst["items"] if i["id"] == doc["id"]] == ["provisioning"]


def test_docker_runtime_fields_are_validated(server):
    dock = create_image(server, "dock-a", runtime_check={"kind": "docker", "path": "/var/run/docker.sock"})
    plain = create_image(server, "plain-a")
    assert_error(server.post("/v1/containers", {"name": "d", "runtime_image": "dock-a", "wait": False}), 400, "invalid_argument",
                 "image")
    for bad in ("-rf", "a b", "../x", "x" * 300, "busy\nbox"):
        assert_error(server.post("/v1/containers", {"name": "d", "runtime_image": "dock-a", "image": bad, "wait": False}), 400,
                     "invalid_argument", "image")
    msg = assert_error(server.post("/v1/containers", {"name": "p", "runtime_image": "plain-a", "image": "busybox", "wait": False}),
                       400, "invalid_argument", "image")
    assert "no container runtime" in msg
    assert_error(server.post("/v1/containers", {"name": "d", "runtime_image": "dock-a", "image": "busybox",
                                                "force_cold": "yes", "wait": False}), 400, "invalid_argument", "force_cold")
    # Nothing was recorded by the refused requests.
    st, _, lst = server.get("/v1/containers?include_destroyed=true")
    assert st == 200
    assert [i for i in lst["items"] if i["runtime_image_id"] in (dock["id"], plain["id"])] == []
    # A valid one is recorded and fails in the background (backend none); its record keeps the request.
    st, _, doc = server.post("/v1/containers", {"name": "d", "runtime_image": "dock-a", "image": "busybox:latest",
                                                "command": ["echo", "hi"], "force_cold": True, "wait": False})
    assert st == 202, doc
    assert doc["item"]["runtime"] == "docker" and doc["item"]["image"] == "busybox:latest"
    item = wait_not_provisioning(server, doc["id"])
    assert item["state"] == "failed" and item["exit_code"] is None and item["docker_id"] == ""


def test_logs_and_wait(server):
    create_image(server, "lw")
    missing = str(uuid.uuid4())
    assert_error(server.get(f"/v1/containers/{missing}/logs"), 404, "not_found")
    assert_error(server.post(f"/v1/containers/{missing}/wait"), 404, "not_found")
    assert_error(server.get("/v1/containers/not-an-id/logs"), 400, "invalid_argument", "id")
    st, _, doc = server.post("/v1/containers", {"name": "lw1", "runtime_image": "lw", "wait": False})
    assert st == 202
    cid = doc["id"]
    assert_error(server.post(f"/v1/containers/{cid}/wait?timeout_ms=-1"), 400, "invalid_argument", "timeout_ms")
    assert_error(server.post(f"/v1/containers/{cid}/wait?timeout_ms=700000"), 400, "invalid_argument", "timeout_ms")
    assert_error(server.post(f"/v1/containers/{cid}/wait?bogus=1"), 400, "invalid_argument", "bogus")
    st, _, w = server.post(f"/v1/containers/{cid}/wait?timeout_ms=15000")
    assert st == 200, w
    assert w["item"]["state"] == "failed"
    msg = assert_error(server.get(f"/v1/containers/{cid}/logs"), 409, "failed_precondition")
    assert cid in msg
