"""Self-test of tests/support/registry.py: offline images, the registry in its namespace, pushes, the access
log, and cleanup. Needs root, docker-registry, skopeo and busybox-static (scripts/setup.sh); skips without them
unless FCWARM_REQUIRE_REGISTRY=1 (CI), where it fails instead."""

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import registry  # noqa: E402

REQUIRE = os.environ.get("FCWARM_REQUIRE_REGISTRY") == "1"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def need_registry():
    why = []
    missing = registry.required_tools()
    if missing:
        why.append("missing " + ", ".join(missing))
    if os.geteuid() != 0:
        why.append("not root")
    if why:
        if REQUIRE:
            pytest.fail("FCWARM_REQUIRE_REGISTRY=1 but " + "; ".join(why))
        pytest.skip("; ".join(why))


def our_links_and_namespaces():
    links = set(os.listdir("/sys/class/net"))
    spaces = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    return {x for x in links | spaces if x.startswith("fcwr")}


@pytest.fixture(scope="module")
def reg():
    need_registry()
    with registry.Registry() as r:
        r.images = r.push_standard_images()
        yield r
    assert r.leftovers() == []


def test_images_are_deterministic_and_shaped_as_documented(tmp_path):
    if not os.path.exists(registry.BUSYBOX):
        pytest.skip("busybox-static is not installed")
    a = registry.build_standard_images(str(tmp_path / "a"))
    b = registry.build_standard_images(str(tmp_path / "b"))
    assert {k: v.manifest_digest for k, v in a.items()} == {k: v.manifest_digest for k, v in b.items()}
    assert {k: v.name for k, v in a.items()} == {
        "nginx": "library/nginx:alpine", "bench": "fcwarm/pull-bench:5m", "busybox": "library/busybox:latest"}
    # The benchmark layer is incompressible: the compressed image is at least 5 MiB larger than busybox.
    assert a["bench"].size - a["busybox"].size >= registry.BENCH_BYTES
    cfg = registry.unpack_image(a["nginx"], str(tmp_path / "root"))
    assert cfg["config"]["Cmd"] == ["/bin/sh", "/fcwarm-web.sh"]
    assert cfg["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert os.readlink(tmp_path / "root" / "bin" / "httpd") == "busybox"
    assert "stand-in for nginx:alpine" in (tmp_path / "root" / "fcwarm-web.sh").read_text()


def test_access_log_parsing():
    text = "\n".join([
        '10.214.1.1 - - [01/Jan/2024:00:00:00 +0000] "GET /v2/library/nginx/manifests/alpine HTTP/1.1" 200 527 '
        '"" "docker/20.10.24"',
        '10.214.1.1 - - [01/Jan/2024:00:00:01 +0000] "GET /v2/library/nginx/blobs/sha256:' + "a" * 64 +
        ' HTTP/1.1" 200 1036111 "" "docker/20.10.24"',
        '10.214.1.1 - - [01/Jan/2024:00:00:01 +0000] "HEAD /v2/library/nginx/blobs/sha256:' + "b" * 64 +
        ' HTTP/1.1" 404 157 "" "skopeo/1.9.3"',
        'time="2024-01-01T00:00:00Z" level=info msg="response completed"',
        '10.214.1.1 - - [01/Jan/2024:00:00:02 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "Go-http-client/1.1"',
    ])
    reqs = registry.parse_access_log(text)
    assert [(r.method, r.kind, r.name, r.status) for r in reqs] == [
        ("GET", "manifest", "library/nginx", 200), ("GET", "blob", "library/nginx", 200),
        ("HEAD", "blob", "library/nginx", 404), ("GET", None, None, 200)]
    assert reqs[0].ref == "alpine" and reqs[0].agent == "docker/20.10.24" and reqs[1].size == 1036111


def test_catalog_and_manifests_from_the_root_namespace(reg):
    assert reg.registry_ip.startswith("10.214.") and reg.url == f"http://{reg.registry_ip}:5000"
    assert sorted(reg.catalog()) == ["fcwarm/pull-bench", "library/busybox", "library/nginx"]
    status, headers, body = reg.http("GET", "/v2/library/nginx/manifests/alpine",
                                     headers={"Accept": DOCKER_MANIFEST})
    assert status == 200, body
    manifest = json.loads(body)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    # The same manifest by digest, and a blob whose content matches its digest.
    status, _, again = reg.http("GET", "/v2/library/nginx/manifests/" + headers["Docker-Content-Digest"],
                                headers={"Accept": DOCKER_MANIFEST})
    assert status == 200 and again == body
    layer = manifest["layers"][-1]
    status, _, blob = reg.http("GET", f"/v2/library/nginx/blobs/{layer['digest']}")
    assert status == 200 and len(blob) == layer["size"]
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    # The 5 MiB benchmark image is there with its big layer.
    status, _, body = reg.http("GET", "/v2/fcwarm/pull-bench/manifests/5m", headers={"Accept": DOCKER_MANIFEST})
    assert status == 200
    assert max(x["size"] for x in json.loads(body)["layers"]) >= registry.BENCH_BYTES
    # Unknown names are 404, and the registry does not proxy anything.
    assert reg.http("GET", "/v2/library/redis/manifests/latest")[0] == 404


def test_pull_counts_follow_the_access_log(reg):
    mark = reg.mark()
    none = {"manifests": 0, "blobs": 0, "manifest_heads": 0}
    assert reg.pulls("library/nginx", since=mark) == none
    # What dockerd does for a pull: HEAD the tag, GET the manifest, GET the blobs.
    status, headers, _ = reg.http("HEAD", "/v2/library/busybox/manifests/latest", headers={"Accept": DOCKER_MANIFEST})
    assert status == 200
    status, _, body = reg.http("GET", "/v2/library/busybox/manifests/" + headers["Docker-Content-Digest"],
                               headers={"Accept": DOCKER_MANIFEST})
    assert status == 200
    digest = json.loads(body)["layers"][0]["digest"]
    assert reg.http("GET", f"/v2/library/busybox/blobs/{digest}")[0] == 200
    assert reg.http("HEAD", f"/v2/library/busybox/blobs/{digest}")[0] == 200
    assert reg.http("GET", "/v2/library/busybox/manifests/nope")[0] == 404
    # The access log is written as requests complete; give it a moment.
    deadline = time.monotonic() + 5
    while reg.mark() < mark + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reg.pulls("library/busybox", since=mark) == {"manifests": 1, "blobs": 1, "manifest_heads": 1}
    assert reg.pulls("library/nginx", since=mark) == none
    assert reg.pulls(since=mark) == {"manifests": 1, "blobs": 1, "manifest_heads": 1}
    kinds = [(r.method, r.kind, r.status) for r in reg.requests(since=mark)]
    assert ("HEAD", "blob", 200) in kinds and ("GET", "manifest", 404) in kinds
    # Pushing (skopeo) is not counted as a pull.
    assert all(r.agent.startswith("skopeo") for r in reg.requests()[:mark] if r.method in ("PUT", "PATCH"))


def test_nginx_stand_in_serves_its_hostname(reg, tmp_path):
    """Runs the stand-in's command like a container would (chroot, own UTS namespace) in the registry's
    namespace, and fetches its page from the root namespace."""
    root = tmp_path / "rootfs"
    cfg = registry.unpack_image(reg.images["nginx"], str(root))
    # Docker gives a container /dev/null; sh needs it for the background httpd.
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    argv = [registry.IP_BIN, "netns", "exec", reg.netns, "unshare", "--uts", "chroot", str(root),
            "/bin/sh", "-c", "hostname fcwarm-web-test && exec " + " ".join(cfg["config"]["Cmd"])]
    proc = subprocess.Popen(argv, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PORT": "8080"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        body = b""
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((reg.registry_ip, 8080), timeout=2) as s:
                    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    body = b""
                    while chunk := s.recv(65536):
                        body += chunk
                break
            except OSError:
                time.sleep(0.1)
        assert b"200 OK" in body.split(b"\r\n")[0], body
        assert b"hostname: fcwarm-web-test" in body and b"Welcome to nginx!" in body
    finally:
        proc.terminate()  # TERM to sh (PID of the chroot'ed script): its trap stops httpd
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert b"serving /www on port 8080 as fcwarm-web-test" in out


def test_stop_removes_everything_and_a_failed_start_leaves_nothing():
    need_registry()
    before = our_links_and_namespaces()
    r = registry.Registry(block="10.214.255.252/30", workdir=tempfile.gettempdir())
    with r:
        assert os.path.exists(f"/run/netns/{r.netns}") and os.path.exists(f"/sys/class/net/{r.veth_host}")
        directory = r.dir
        pid = r.proc.pid
    assert r.leftovers() == []
    assert not os.path.exists(directory)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert our_links_and_namespaces() == before

    # A config the registry rejects (a port it cannot bind): start fails with its log, nothing is left.
    bad = registry.Registry(port=70000)
    with pytest.raises(registry.RegistryError, match="docker-registry"):
        with bad:
            pass
    assert bad.leftovers() == []
    assert our_links_and_namespaces() == before

    # A block that cannot hold a registry is refused before anything is created.
    with pytest.raises(registry.RegistryError, match="/30 or larger"):
        with registry.Registry(block="10.214.255.0/31"):
            pass
    assert our_links_and_namespaces() == before
