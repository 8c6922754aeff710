"""Two fcwarm-server nodes on this machine share one snapshot repository (a one-node Ceph with the RADOS Gateway)
and one etcd (issue 16; ctest `cluster_two_nodes`, labels cluster and vm).

Each node is a real fcwarm-server with the QEMU backend and the minimal guest, its own data directory, port and
guest address pool. Checked: node A builds and publishes; node B's snapshot of the same image is fetched, not
built (origin "fetched", no build VM), and its first container is warm; both nodes asked at once build once; a
corrupted chunk makes a node build instead and say why; a node killed during its build loses its lock when the
lease ends and the other node takes over; malformed URLs, wrong credentials and an unreachable endpoint.
Everything binds 127.0.0.1; every process, namespace and directory is removed at the end.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "support"))
sys.path.insert(0, os.path.join(HERE, "..", "server"))
import cluster  # noqa: E402
from conftest import Server, poll_item  # noqa: E402

GUEST = os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current")
FILES = ("bzImage", "initramfs.cpio.gz", "disk.ext4")
REQUIRE = os.environ.get("FCWARM_REQUIRE_CLUSTER") == "1"
BUCKET = "fcwarm-snapshots"


def skip_reason():
    why = []
    if os.geteuid() != 0:
        why.append("not root")
    if not shutil.which("qemu-system-x86_64"):
        why.append("qemu-system-x86_64 is not installed")
    missing = [f for f in FILES if not os.path.isfile(os.path.join(GUEST, f))]
    if missing:
        why.append(f"guest artifacts missing in {GUEST}: {missing}")
    for m in (cluster.rgw_missing(), cluster.etcd_missing()):
        if m:
            why.append(m if isinstance(m, str) else ", ".join(m))
    return "; ".join(why)


@pytest.fixture(scope="module")
def services():
    why = skip_reason()
    if why:
        if REQUIRE:
            pytest.fail("FCWARM_REQUIRE_CLUSTER=1 but: " + why)
        pytest.skip(why)
    with cluster.Rgw() as rgw, cluster.Etcd() as etcd:
        rgw.create_bucket(BUCKET)
        yield rgw, etcd


class Node(Server):
    """A node: fcwarm-server with QEMU, the repository and etcd, an address pool of its own."""

    def __init__(self, rgw, etcd, name, pool, *extra, repository=None, env_extra=None, endpoint=None,
                 coordination=None, expect_start=True):
        env = dict(os.environ)
        env.update(rgw.env())
        env.update(env_extra or {})
        args = ["--backend", "qemu", "--node-id", name, "--address-pool", pool, "--lock-ttl", "2"]
        args += ["--snapshot-repository", repository or f"s3://{BUCKET}/fcwarm",
                 "--s3-endpoint", endpoint or rgw.endpoint, "--s3-region", rgw.region,
                 "--coordination", coordination or etcd.url]
        super().__init__(*args, *extra, env=env, expect_start=expect_start)
        self.name = name

    def image(self, name="minimal", boot_args=""):
        st, _, doc = self.post("/v1/images", {
            "name": name, "backend": "qemu", "kernel_path": os.path.join(GUEST, "bzImage"),
            "initrd_path": os.path.join(GUEST, "initramfs.cpio.gz"),
            "rootfs_path": os.path.join(GUEST, "disk.ext4"), "boot_args": boot_args})
        assert st == 201, doc
        return doc["id"]

    def snapshot(self, image_id):
        st, _, doc = self.post("/v1/runtime-snapshots", {"runtime_image_id": image_id})
        assert st == 202, doc
        return doc["id"]

    def wait_snapshot(self, snap_id, timeout=300):
        return poll_item(self, "/v1/runtime-snapshots/" + snap_id, "creating", timeout, interval=0.25)

    def events(self, kind):
        st, _, doc = self.get(f"/v1/events?kind={kind}&limit=100")
        assert st == 200, doc
        return doc["items"]

    def wait_repository_event(self, snap_id, outcome, timeout=120):
        """The node's first `repository` event of that snapshot with that outcome (publishing follows `ready`)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events("repository") if e["snapshot_id"] == snap_id and e["outcome"] == outcome]
            if found or time.monotonic() > deadline:
                assert found, self.events("repository")
                return found[0]
            time.sleep(0.2)

    def build_event(self, snap_id):
        items = [e for e in self.events("build") if e["snapshot_id"] == snap_id]
        assert items, self.events("build")
        return items[0]


@pytest.fixture
def nodes(services):
    rgw, etcd = services
    made = []

    def make(name, pool, *extra, **kw):
        n = Node(rgw, etcd, name, pool, *extra, **kw)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop(timeout=60)
        n.close()


def chunk_objects(rgw, prefix="fcwarm/chunks/"):
    c = rgw.client()
    out = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def manifests(rgw):
    c = rgw.client()
    out = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="fcwarm/manifests/"):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def test_node_b_fetches_what_node_a_built(services, nodes):
    rgw, etcd = services
    a = nodes("node-a", "10.217.0.0/24")
    b = nodes("node-b", "10.217.1.0/24")
    snap_a = a.snapshot(a.image())
    item = a.wait_snapshot(snap_a)
    assert item["state"] == "ready", item
    assert item["origin"] == "built", item
    a.wait_repository_event(snap_a, "published")
    assert len(manifests(rgw)) == 1 and chunk_objects(rgw)

    # Node B: the same image is fetched, verified and published locally without a build VM.
    snap_b = b.snapshot(b.image())
    item = b.wait_snapshot(snap_b)
    assert item["state"] == "ready", item
    assert item["origin"] == "fetched", item
    ev = b.build_event(snap_b)
    assert ev["outcome"] == "ready" and "(fetched)" in ev["message"], ev
    assert "fetch" in ev["timings"] and "booting" not in ev["timings"], ev
    fetched = [e for e in b.events("repository") if e["outcome"] == "fetched"]
    assert fetched and "built by node node-a" in fetched[0]["message"], b.events("repository")
    assert [f["xxh3"] for f in item["files"]] == [f["xxh3"] for f in a.get("/v1/runtime-snapshots/" + snap_a)[2]["item"]["files"]]
    assert len(manifests(rgw)) == 1  # B did not publish what it fetched

    # B's first container of that image is warm.
    st, _, doc = b.post("/v1/containers", {"name": "c1", "runtime_image": "minimal", "wait": True,
                                           "command": ["sh", "-c", "hostname"]})
    assert st == 201, doc
    c = doc["item"]
    assert c["boot_method"] == "warm" and c["snapshot_id"] == snap_b, c
    st, _, _ = b.delete("/v1/containers/" + c["id"])
    assert st == 200
    # The repository as the nodes see it, and a GC that keeps what is in use.
    st, _, doc = b.get("/v1/repository")
    assert st == 200 and doc["url"] == f"s3://{BUCKET}/fcwarm" and doc["coordination"] == etcd.url, doc
    assert [(g["node"], g["runtime_image"]) for g in doc["items"]] == [("node-a", "minimal")], doc
    assert doc["items"][0]["raw_bytes"] > 0 and doc["items"][0]["repo_key"].startswith(item["compatibility_key"])
    st, _, doc = a.post("/v1/repository/gc", {"keep_newest": 1, "keep_newer_than_s": 0})
    assert st == 200 and doc["deleted"] == [] and len(doc["kept"]) == 1, doc
    assert sorted(doc["nodes"]) == ["node-a", "node-b"] and doc["chunks_deleted"] == 0, doc
    _, _, metrics = b.get("/metrics")
    assert 'fcwarm_repository_events_total{outcome="fetched"} 1' in metrics, metrics
    assert f'fcwarm_snapshot_ready{{image="minimal",key="{item["compatibility_key"]}",origin="fetched"}} 1' in metrics
    # The lock of that key is gone (released after publishing).
    assert not etcd.range(b"/fcwarm/locks/")


def test_two_nodes_asked_at_once_build_once(services, nodes):
    rgw, etcd = services
    a = nodes("node-a", "10.217.0.0/24")
    b = nodes("node-b", "10.217.1.0/24")
    # Another repository key (the boot arguments are part of the compatibility key).
    ia, ib = a.image("once", boot_args="fcwarm.test=once"), b.image("once", boot_args="fcwarm.test=once")
    before = len(manifests(rgw))
    ids = {}
    threads = [threading.Thread(target=lambda n=n, i=i: ids.__setitem__(n.name, n.snapshot(i))) for n, i in
               ((a, ia), (b, ib))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = {n.name: n.wait_snapshot(ids[n.name]) for n in (a, b)}
    assert all(i["state"] == "ready" for i in items.values()), items
    origins = sorted(i["origin"] for i in items.values())
    assert origins == ["built", "fetched"], items
    builder = a if items["node-a"]["origin"] == "built" else b
    builder.wait_repository_event(ids[builder.name], "published")
    assert len(manifests(rgw)) == before + 1
    waiter = a if items["node-a"]["origin"] == "fetched" else b
    waited = [e for e in waiter.events("repository") if e["outcome"] == "waited"]
    assert waited, waiter.events("repository")


def test_corrupted_chunk_is_never_restored(services, nodes):
    rgw, etcd = services
    a = nodes("node-a", "10.217.0.0/24")
    snap = a.snapshot(a.image("corrupt", boot_args="fcwarm.test=corrupt"))
    assert a.wait_snapshot(snap)["origin"] == "built"
    a.wait_repository_event(snap, "published")
    # One chunk only this generation uses replaced by a valid zstd frame of other bytes (what a bit flip at rest,
    # or a wrong object, looks like after decompression); chunks other generations share stay intact.
    c = rgw.client()
    docs = [json.loads(c.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in manifests(rgw)]
    mine = [d for d in docs if d["metadata"].get("runtime_image") == "corrupt"]
    assert len(mine) == 1, [d["metadata"] for d in docs]
    others = {ch["digest"] for d in docs if d is not mine[0] for f in d["files"] for ch in f["chunks"]
              if "digest" in ch}
    unique = sorted({ch["digest"] for f in mine[0]["files"] for ch in f["chunks"] if "digest" in ch} - others)
    assert unique, "no chunk of its own"
    bogus = subprocess.run(["zstd", "-q", "-c"], input=b"not the chunk", capture_output=True, check=True).stdout
    c.put_object(Bucket=BUCKET, Key=f"fcwarm/chunks/{unique[0][:2]}/{unique[0]}", Body=bogus)

    b = nodes("node-b", "10.217.1.0/24")
    snap_b = b.snapshot(b.image("corrupt", boot_args="fcwarm.test=corrupt"))
    item = b.wait_snapshot(snap_b)
    assert item["state"] == "ready" and item["origin"] == "built", item
    failed = [e for e in b.events("repository") if e["outcome"] == "fetch_failed"]
    assert failed and "data_loss" in failed[0]["message"] and "building here" in failed[0]["message"], \
        b.events("repository")
    ev = b.build_event(snap_b)
    assert "booting" in ev["timings"], ev


def test_a_node_killed_mid_build_loses_its_lock(services, nodes):
    rgw, etcd = services
    env = {"FCWARM_FAILPOINTS": "snapshot.build.pause=crash"}
    a = nodes("node-a", "10.217.0.0/24", env_extra=env)
    snap_a = a.snapshot(a.image("takeover", boot_args="fcwarm.test=takeover"))
    a.wait_exit(timeout=300)  # crashed at the failpoint, holding the build lock
    locks = etcd.range(b"/fcwarm/locks/")
    # A starts again at once (as a supervisor would restart it): reconciliation rolls the interrupted build back
    # and removes its build VM's namespace.
    a.env = {k: v for k, v in a.env.items() if k != "FCWARM_FAILPOINTS"}
    a.restart()
    assert poll_item(a, "/v1/runtime-snapshots/" + snap_a, "creating", 60)["state"] == "unhealthy"
    before = len(manifests(rgw))
    b = nodes("node-b", "10.217.1.0/24")
    snap_b = b.snapshot(b.image("takeover", boot_args="fcwarm.test=takeover"))
    item = b.wait_snapshot(snap_b)
    assert item["state"] == "ready" and item["origin"] == "built", item
    b.wait_repository_event(snap_b, "published")
    assert len(manifests(rgw)) == before + 1  # only B's: A never wrote a manifest
    # A held the lock when it died (unless its 2 s lease ran out before it was looked at); B took it over.
    if locks:
        assert any(b"node-a" in v for v in locks.values()), locks
    assert not etcd.range(b"/fcwarm/locks/")


def test_bad_repository_settings(services, nodes, tmp_path):
    rgw, etcd = services
    for url, words in (("s3://", "bucket"), ("s3://Bad_Bucket/x", "bucket"), ("ftp://x/y", "s3://"),
                       ("file://relative/dir", "absolute")):
        n = Node(rgw, etcd, "node-x", "10.217.2.0/24", repository=url, expect_start=False)
        try:
            assert n.wait_exit(timeout=30) != 0
            log = n.read_log()
            assert "repository" in log and words in log, log
        finally:
            n.close()

    # Wrong credentials: the node serves and builds locally, and says why (S3's 403 code).
    bad = nodes("node-c", "10.217.2.0/24", env_extra={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert "SignatureDoesNotMatch" in bad.read_log()
    snap = bad.snapshot(bad.image())
    item = bad.wait_snapshot(snap)
    assert item["state"] == "ready" and item["origin"] == "built", item
    reasons = [e["message"] for e in bad.events("repository")]
    assert any("SignatureDoesNotMatch" in m for m in reasons), reasons

    # An unreachable endpoint and etcd: same, quickly.
    down = Node(rgw, etcd, "node-d", "10.217.3.0/24", endpoint="http://127.0.0.1:9",
                coordination="etcd://127.0.0.1:9")
    try:
        log = down.read_log()
        assert "127.0.0.1:9" in log, log
        snap = down.snapshot(down.image())
        item = down.wait_snapshot(snap)
        assert item["state"] == "ready" and item["origin"] == "built", item
        outcomes = {e["outcome"] for e in down.events("repository")}
        assert {"coordination_unavailable", "repository_unavailable"} <= outcomes, down.events("repository")
    finally:
        down.stop(timeout=60)
        down.close()
