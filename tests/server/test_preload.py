"""Preloaded images through the REST API and the server's flags: a runtime image's `preload_images` (validated
entry by entry, stored in canonical spelling, shown in the item), the snapshot item's `images`, and
`--preload-image` (validated at startup naming the flag). With --backend none no build can pull; the pulls
themselves are tested with the FakeVmm (tests/unit/preload_test.cpp) and with the real Docker daemon and the
offline registry (tests/registry/test_preload.py)."""

import time

from conftest import assert_error, create_image, make_kernel

DOCKER_CHECK = {"kind": "docker", "path": "/var/run/docker.sock"}


def test_preload_images_stored_canonical_and_shown(server):
    item = create_image(server, "pre-a", runtime_check=DOCKER_CHECK,
                        preload_images=["nginx:alpine", "registry.local:5000/team/app:1.2", "busybox"])
    assert item["preload_images"] == ["nginx:alpine", "registry.local:5000/team/app:1.2", "busybox"]
    st, _, one = server.get("/v1/images/" + item["id"])
    assert st == 200 and one["item"]["preload_images"] == item["preload_images"]
    plain = create_image(server, "pre-b")
    assert plain["preload_images"] == []
    # A snapshot lists what it holds: nothing before its first build (and this backend cannot build).
    st, _, doc = server.post("/v1/runtime-snapshots", {"runtime_image_id": item["id"]})
    assert st == 202, doc
    assert doc["item"]["images"] == []
    deadline = time.monotonic() + 10
    while doc["item"]["state"] == "creating" and time.monotonic() < deadline:
        time.sleep(0.05)
        st, _, doc = server.get("/v1/runtime-snapshots/" + doc["id"])
    assert doc["item"]["state"] == "unhealthy" and doc["item"]["images"] == [], doc


def test_preload_images_validation_names_the_entry(server):
    k = make_kernel(server)
    base = {"name": "pre-bad", "backend": "none", "kernel_path": k, "runtime_check": DOCKER_CHECK}
    cases = [
        (["nginx:alpine", "busybox", "Nginx:alpine"], "preload_images[2]"),
        (["a/../b"], "preload_images[0]"),
        ([""], "preload_images[0]"),
        (["busybox@sha256:0123"], "preload_images[0]"),
        (["x" * 10000], "preload_images[0]"),
        (["nginx:alpine", "docker.io/library/nginx:alpine"], "preload_images[1]"),
        (["busybox"] * 33, "preload_images"),
        ("nginx:alpine", "preload_images"),
        ([7], "preload_images[0]"),
    ]
    for preload, field in cases:
        msg = assert_error(server.post("/v1/images", {**base, "preload_images": preload}), 400, "invalid_argument",
                           field)
        assert msg.startswith(field + ":"), msg
    msg = assert_error(server.post("/v1/images", {**base, "runtime_check": {"kind": "none"},
                                                  "preload_images": ["nginx:alpine"]}),
                       400, "invalid_argument", "preload_images")
    assert "only container runtime images" in msg
    st, _, lst = server.get("/v1/images")
    assert not any(i["name"] == "pre-bad" for i in lst["items"])


def test_preload_image_flag_is_validated_at_startup(start_server):
    for args, expected in ((["--preload-image", "Nginx:alpine"], "--preload-image: "),
                           (["--preload-image", "nginx:alpine", "--preload-image", "docker.io/library/nginx:alpine"],
                            "--preload-image: 'docker.io/library/nginx:alpine' is given twice")):
        s = start_server(*args, expect_start=False)
        assert s.wait_exit() == 2
        log = s.read_log()
        assert "event=config_error" in log and expected in log, log
    ok = start_server("--preload-image", "nginx:alpine", "--preload-image", "registry.local:5000/team/app:1.2")
    st, _, doc = ok.get("/v1/version")
    assert st == 200, doc
