"""Container requests that must be refused before anything starts (issue 13, "Bad input"): image references and
published ports. Runs on the `none` backend: a refused request leaves no record and no VM; a port that is
taken is refused with 409 before any VM is started."""

import socket

from conftest import assert_error, create_image

DOCKER_CHECK = {"kind": "docker", "path": "/var/run/docker.sock"}


def _records(server, image_id):
    st, _, lst = server.get("/v1/containers?include_destroyed=true")
    assert st == 200, lst
    return [i for i in lst["items"] if i["runtime_image_id"] == image_id]


def test_bad_image_references_name_the_field(server):
    dock = create_image(server, "dock-refs", runtime_check=DOCKER_CHECK)
    bad = {
        "..": "a/../b:1",
        "upper case": "Nginx:alpine",
        "10 KB": "a" * 10240,
        "digest too short": "busybox@sha256:" + "0" * 63,
        "digest too long": "busybox@sha256:" + "0" * 65,
        "empty tag": "busybox:",
        "space": "busy box",
    }
    for what, ref in bad.items():
        msg = assert_error(server.post("/v1/containers", {"image": ref, "runtime_image": "dock-refs", "wait": False}), 400, "invalid_argument",
                           "image")
        assert len(msg) < 400, (what, msg)  # the message quotes at most a prefix of a huge reference
    assert _records(server, dock["id"]) == []


def test_bad_ports_are_refused_before_anything_starts(server):
    RT = "dock-ports"
    dock = create_image(server, RT, runtime_check=DOCKER_CHECK)
    cases = {
        "0:80": "ports[0]",
        "70000:80": "ports[0]",
        "8080:0": "ports[0]",
        "8080:80/sctp": "ports[0]",
        "8080-8090:80": "ports[0]",
        "[::1]:8080:80": "ports[0]",
        "": "ports[0]",
    }
    for spec, field in cases.items():
        assert_error(server.post("/v1/containers", {"image": "busybox", "runtime_image": RT, "ports": [spec], "wait": False}), 400,
                     "invalid_argument", field)
    # Two entries on one host port, named by the second.
    msg = assert_error(server.post("/v1/containers", {"image": "busybox", "runtime_image": RT, "ports": ["18181:80", "18181:81"],
                                                      "wait": False}), 400, "invalid_argument", "ports[1]")
    assert "18181" in msg
    # Not a list of strings.
    assert_error(server.post("/v1/containers", {"image": "busybox", "runtime_image": RT, "ports": "8080:80", "wait": False}), 400,
                 "invalid_argument", "ports")
    assert_error(server.post("/v1/containers", {"image": "busybox", "runtime_image": RT, "ports": [8080], "wait": False}), 400,
                 "invalid_argument", "ports[0]")
    # An address that is not this host's.
    assert_error(server.post("/v1/containers", {"image": "busybox", "runtime_image": RT, "ports": ["192.0.2.1:8080:80"],
                                                "wait": False}), 400, "invalid_argument", "ports[0]")
    assert _records(server, dock["id"]) == []


def test_a_host_port_in_use_is_a_conflict(server):
    RT = "dock-busy"
    dock = create_image(server, RT, runtime_check=DOCKER_CHECK)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        msg = assert_error(server.post("/v1/containers", {"image": "busybox", "runtime_image": RT, "ports": [f"{port}:80"],
                                                          "wait": False}), 409, "failed_precondition", "ports[0]")
        assert str(port) in msg
        assert _records(server, dock["id"]) == []
    # Free again: the request is accepted and records the resolved mapping (its VM then fails on `none`).
    st, _, doc = server.post("/v1/containers", {"image": "busybox", "runtime_image": RT, "ports": [f"{port}:80", "53/udp"],
                                                "wait": False})
    assert st == 202, doc
    ports = doc["item"]["ports"]
    assert ports[0] == f"127.0.0.1:{port}:80/tcp"
    assert ports[1].startswith("127.0.0.1:") and ports[1].endswith(":53/udp") and ports[1] != "127.0.0.1::53/udp"


def test_working_dir_user_and_read_only_are_checked_naming_the_field(server):
    dock = create_image(server, "dock-opts", runtime_check=DOCKER_CHECK)
    create_image(server, "plain-vm")
    for body, field in [
        ({"working_dir": "relative/dir"}, "working_dir"),
        ({"working_dir": 7}, "working_dir"),
        ({"user": "a b"}, "user"),
        ({"user": "a:b:c"}, "user"),
        ({"user": ":grp"}, "user"),
        ({"read_only": "yes"}, "read_only"),
    ]:
        req = {"image": "busybox:latest", "runtime_image": "dock-opts", "wait": False, **body}
        assert_error(server.post("/v1/containers", req), 400, "invalid_argument", field)
    # A VM-only runtime image has no container to apply them to.
    for body, field in [({"working_dir": "/w"}, "working_dir"), ({"user": "1000"}, "user"),
                        ({"read_only": True}, "read_only")]:
        req = {"runtime_image": "plain-vm", "wait": False, **body}
        assert_error(server.post("/v1/containers", req), 400, "invalid_argument", field)
    assert _records(server, dock["id"]) == []
