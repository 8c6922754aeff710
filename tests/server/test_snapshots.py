"""Runtime snapshots: create (202), list (filters, newest first), get (every field), rebuild, delete.

With --backend none a build cannot boot, so every build ends `unhealthy` with last_error naming the backend:
that is what the library does, and what these tests expect."""

import time
import uuid

from conftest import assert_error, create_image

FIELDS = {"id", "runtime_image_id", "state", "phase", "generation", "generation_dir", "compatibility_key", "origin",
          "compatibility", "size_bytes", "disk_bytes", "files", "manifest_digest", "images", "parked", "success_count",
          "failure_count", "consecutive_failures", "build_failures", "last_error", "created_at", "updated_at",
          "last_used_at"}


def wait_state(server, sid, state, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        st, _, doc = server.get("/v1/runtime-snapshots/" + sid)
        assert st == 200, doc
        if doc["item"]["state"] == state or time.monotonic() > deadline:
            return doc["item"]
        time.sleep(0.05)


def test_create_get_fields_and_failed_build(server):
    img = create_image(server, "snap-a")
    st, _, doc = server.post("/v1/runtime-snapshots", {"runtime_image_id": img["id"]})
    assert st == 202, doc
    assert doc["id"] == doc["item"]["id"]
    assert set(doc["item"]) == FIELDS
    assert doc["item"]["state"] == "creating"
    item = wait_state(server, doc["id"], "unhealthy")
    assert item["state"] == "unhealthy" and item["phase"] == "done"
    assert "none" in item["last_error"]
    assert item["build_failures"] >= 1
    assert item["last_used_at"] is None
    assert set(item) == FIELDS
    # The quick start's filter reads the top level of a single snapshot: values, not nulls.
    st, _, one = server.get("/v1/runtime-snapshots/" + doc["id"])
    assert st == 200
    assert {k: one[k] for k in ("state", "success_count", "failure_count")} == {
        "state": "unhealthy", "success_count": 0, "failure_count": item["failure_count"]}
    assert {k: v for k, v in one.items() if k != "item"} == one["item"]


def test_list_filters_and_order(server):
    img = create_image(server, "snap-b")
    ids = []
    for _ in range(2):
        st, _, doc = server.post("/v1/runtime-snapshots", {"runtime_image_id": img["id"]})
        assert st == 202
        ids.append(doc["id"])
        time.sleep(0.01)
    # a third one is over the per-image limit (2)
    assert_error(server.post("/v1/runtime-snapshots", {"runtime_image_id": img["id"]}), 429, "resource_exhausted")
    st, _, doc = server.get("/v1/runtime-snapshots?runtime_image_id=" + img["id"])
    assert st == 200
    assert [i["id"] for i in doc["items"]] == list(reversed(ids))  # newest first
    for sid in ids:
        wait_state(server, sid, "unhealthy")
    st, _, doc = server.get(f"/v1/runtime-snapshots?runtime_image_id={img['id']}&state=unhealthy")
    assert st == 200 and {i["id"] for i in doc["items"]} == set(ids)
    st, _, doc = server.get(f"/v1/runtime-snapshots?runtime_image_id={img['id']}&state=ready")
    assert st == 200 and doc["items"] == []
    assert_error(server.get("/v1/runtime-snapshots?state=bogus"), 400, "invalid_argument", "state")
    assert_error(server.get("/v1/runtime-snapshots?runtime_image_id=nope"), 400, "invalid_argument", "runtime_image_id")
    assert_error(server.get("/v1/runtime-snapshots?include_deleted=maybe"), 400, "invalid_argument", "include_deleted")


def test_rebuild_and_delete(server):
    img = create_image(server, "snap-c")
    _, _, doc = server.post("/v1/runtime-snapshots", {"runtime_image_id": img["id"]})
    sid = doc["id"]
    wait_state(server, sid, "unhealthy")
    st, _, doc = server.post(f"/v1/runtime-snapshots/{sid}/rebuild")
    assert st == 202, doc
    assert doc["id"] == sid and doc["item"]["state"] in ("creating", "unhealthy")
    assert_error(server.post(f"/v1/runtime-snapshots/{sid}/rebuild", {"force": True}), 400, "invalid_argument", "force")

    st, _, doc = server.delete("/v1/runtime-snapshots/" + sid)
    assert st == 200 and doc == {"ok": True}
    st, _, doc = server.get("/v1/runtime-snapshots?runtime_image_id=" + img["id"])
    assert sid not in [i["id"] for i in doc["items"]]
    st, _, doc = server.get(f"/v1/runtime-snapshots?runtime_image_id={img['id']}&include_deleted=true")
    assert [i["state"] for i in doc["items"] if i["id"] == sid] == ["deleted"]
    st, _, doc = server.get("/v1/runtime-snapshots/" + sid)
    assert st == 200 and doc["item"]["state"] == "deleted"
    assert_error(server.post(f"/v1/runtime-snapshots/{sid}/rebuild"), 409, "failed_precondition")


def test_not_found_and_bad_bodies(server):
    missing = str(uuid.uuid4())
    assert_error(server.get("/v1/runtime-snapshots/" + missing), 404, "not_found")
    assert_error(server.delete("/v1/runtime-snapshots/" + missing), 404, "not_found")
    assert_error(server.post(f"/v1/runtime-snapshots/{missing}/rebuild"), 404, "not_found")
    assert_error(server.post("/v1/runtime-snapshots", {"runtime_image_id": missing}), 404, "not_found")
    assert_error(server.post("/v1/runtime-snapshots", {"runtime_image_id": "x"}), 400, "invalid_argument",
                 "runtime_image_id")
    assert_error(server.post("/v1/runtime-snapshots", {}), 400, "invalid_argument", "runtime_image_id")
    assert_error(server.post("/v1/runtime-snapshots", {"runtime_image_id": 7}), 400, "invalid_argument",
                 "runtime_image_id")
    assert_error(server.post("/v1/runtime-snapshots", {"runtime_image_id": missing, "image": "x"}), 400,
                 "invalid_argument", "image")


def test_repository_endpoints_without_a_repository(server):
    # No --snapshot-repository: listing and GC say so (docs/multi-host.md).
    assert_error(server.get("/v1/repository"), 409, "failed_precondition")
    assert_error(server.post("/v1/repository/gc", {"dry_run": True}), 409, "failed_precondition")
    # Bad bodies are refused before anything else.
    assert_error(server.post("/v1/repository/gc", {"keep_newest": 0}), 400, "invalid_argument", "keep_newest")
    assert_error(server.post("/v1/repository/gc", {"dry_run": "yes"}), 400, "invalid_argument", "dry_run")
    assert_error(server.post("/v1/repository/gc", {"bogus": 1}), 400, "invalid_argument", "bogus")
