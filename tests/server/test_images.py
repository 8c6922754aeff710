"""POST/GET/DELETE /v1/images, strict decoding (malformed JSON, wrong types, unknown fields)."""

import os

from conftest import assert_error, create_image, make_kernel


def test_create_list_get_delete(server):
    kernel = make_kernel(server, "k-crud")
    initrd = make_kernel(server, "initrd-crud")
    st, _, doc = server.post("/v1/images", {
        "name": "crud", "backend": "none", "kernel_path": kernel, "initrd_path": initrd, "boot_args": "quiet",
        "vcpus": 2, "memory_mib": 256, "runtime_check": {"kind": "file", "path": "/run/ready", "argv": []}})
    assert st == 201, doc
    item = doc["item"]
    assert doc["id"] == item["id"]
    assert item["name"] == "crud" and item["vcpus"] == 2 and item["memory_mib"] == 256
    assert item["runtime_check"] == {"kind": "file", "path": "/run/ready", "argv": []}
    assert item["path"] == initrd  # rootfs if set, else initrd, else kernel

    st, _, lst = server.get("/v1/images")
    assert st == 200 and any(i["id"] == item["id"] and i["path"] == initrd for i in lst["items"])
    st, _, one = server.get("/v1/images/" + item["id"])
    assert st == 200 and one["item"] == item

    st, _, doc = server.delete("/v1/images/" + item["id"])
    assert st == 200 and doc == {"ok": True}
    assert_error(server.get("/v1/images/" + item["id"]), 404, "not_found")
    assert_error(server.delete("/v1/images/" + item["id"]), 404, "not_found")


def test_duplicate_name_409(server):
    create_image(server, "dup")
    assert_error(server.post("/v1/images", {"name": "dup", "backend": "none", "kernel_path": make_kernel(server)}),
                 409, "already_exists", "name")


def test_validation_errors_name_the_field(server):
    k = make_kernel(server)
    cases = [
        ({"backend": "none", "kernel_path": k}, "name"),
        ({"name": "a", "kernel_path": k}, "backend"),
        ({"name": "a", "backend": "none"}, "kernel_path"),
        ({"name": "a", "backend": "qemu", "kernel_path": k}, "backend"),  # not available in this server
        ({"name": "a", "backend": "none", "kernel_path": "/nonexistent/k"}, "kernel_path"),
        ({"name": "a", "backend": "none", "kernel_path": "relative/k"}, "kernel_path"),
        ({"name": "a", "backend": "none", "kernel_path": os.path.dirname(k)}, "kernel_path"),
        ({"name": "Bad Name", "backend": "none", "kernel_path": k}, "name"),
        ({"name": "a", "backend": "none", "kernel_path": k, "vcpus": 0}, "vcpus"),
        ({"name": "a", "backend": "none", "kernel_path": k, "vcpus": 65}, "vcpus"),
        ({"name": "a", "backend": "none", "kernel_path": k, "memory_mib": 1}, "memory_mib"),
        ({"name": "a", "backend": "none", "kernel_path": k, "runtime_check": {"kind": "magic"}}, "runtime_check.kind"),
        ({"name": "a", "backend": "none", "kernel_path": k, "runtime_check": {"kind": "file"}}, "runtime_check.path"),
    ]
    for body, field in cases:
        assert_error(server.post("/v1/images", body), 400, "invalid_argument", field)


def test_wrong_types(server):
    k = make_kernel(server)
    cases = [
        ({"name": 5, "backend": "none", "kernel_path": k}, "name"),
        ({"name": "a", "backend": ["none"], "kernel_path": k}, "backend"),
        ({"name": "a", "backend": "none", "kernel_path": k, "vcpus": "2"}, "vcpus"),
        ({"name": "a", "backend": "none", "kernel_path": k, "vcpus": 1.5}, "vcpus"),
        ({"name": "a", "backend": "none", "kernel_path": k, "vcpus": True}, "vcpus"),
        ({"name": "a", "backend": "none", "kernel_path": k, "runtime_check": "none"}, "runtime_check"),
        ({"name": "a", "backend": "none", "kernel_path": k, "runtime_check": {"kind": "command", "argv": "ls"}},
         "runtime_check.argv"),
        ({"name": "a", "backend": "none", "kernel_path": k, "runtime_check": {"kind": "command", "argv": [1]}},
         "runtime_check.argv[0]"),
    ]
    for body, field in cases:
        assert_error(server.post("/v1/images", body), 400, "invalid_argument", field)


def test_unknown_fields_rejected(server):
    k = make_kernel(server)
    msg = assert_error(server.post("/v1/images", {"name": "u", "backend": "none", "kernel_path": k, "colour": "red"}),
                       400, "invalid_argument", "colour")
    assert "unknown field" in msg
    assert_error(server.post("/v1/images", {"name": "u", "backend": "none", "kernel_path": k,
                                            "runtime_check": {"kind": "none", "extra": 1}}),
                 400, "invalid_argument", "runtime_check.extra")


def test_null_means_absent(server):
    st, _, doc = server.post("/v1/images", {"name": "nulls", "backend": "none", "kernel_path": make_kernel(server),
                                            "initrd_path": None, "runtime_check": None})
    assert st == 201, doc


def test_malformed_json(server):
    for raw in (b"{", b"not json", b"[1,2]", b"\"str\"", b"", b"{\"name\": \"a\",}", b"{\"a\":1} trailing",
                b"[" * 100 + b"]" * 100):
        st, _, doc = server.request("POST", "/v1/images", raw_body=raw, headers={"Content-Type": "application/json"})
        assert st == 400, (raw, doc)
        assert doc["error"]["code"] == "invalid_argument"
        assert doc["error"]["message"].startswith("body:"), doc


def test_form_content_type_is_still_parsed_as_json(server):
    # `curl -d '{...}'` sends application/x-www-form-urlencoded.
    body = ('{"name": "curl-d", "backend": "none", "kernel_path": "%s"}' % make_kernel(server)).encode()
    st, _, doc = server.request("POST", "/v1/images", raw_body=body,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 201, doc


def test_delete_image_in_use_409(server):
    img = create_image(server, "in-use")
    st, _, doc = server.post("/v1/runtime-snapshots", {"runtime_image_id": img["id"]})
    assert st == 202
    assert_error(server.delete("/v1/images/" + img["id"]), 409, "failed_precondition")
