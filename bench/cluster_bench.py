#!/usr/bin/python3
"""The first container on a new node: warm via a fetch from the snapshot repository vs a local build (issue 16).

Starts a one-node Ceph RGW and an etcd on 127.0.0.1 (tests/support/cluster.py) and two fcwarm-server nodes (QEMU,
their own data directories and address pools). Node A builds the runtime snapshot of the image and publishes it;
node B creates the same snapshot (a fetch) and starts its first container. Prints, per node: the snapshot's
build/fetch time and phases, the publish/fetch event (bytes, chunks, holes), the generation's size on disk
(apparent, allocated), what the repository stores, and the first container's time. Root; run under the VM lock:

    flock /work/notes/vm.lock /usr/bin/python3 bench/cluster_bench.py [--image minimal|docker]

--image docker uses FCWARM_DOCKER_IMAGE_DIR (default /var/cache/fcwarm/guest/docker-current).
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "support"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "server"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "cluster"))
os.environ.setdefault("FCWARM_SERVER_BIN", os.path.join(HERE, "..", "build", "ci", "server", "fcwarm-server"))

import cluster  # noqa: E402
from test_two_nodes import BUCKET, Node  # noqa: E402

MIB = 1 << 20


def image_body(kind):
    if kind == "minimal":
        d = os.environ.get("FCWARM_GUEST_DIR", "/var/cache/fcwarm/guest/current")
        return {"name": "bench", "backend": "qemu", "kernel_path": f"{d}/bzImage",
                "initrd_path": f"{d}/initramfs.cpio.gz", "rootfs_path": f"{d}/disk.ext4"}
    return None  # registered by the server (--bootstrap-docker-image-dir) as "docker"


def snapshot_on(node, body):
    if body:
        st, _, doc = node.post("/v1/images", body)
        assert st == 201, doc
        image_id = doc["id"]
    else:
        st, _, doc = node.get("/v1/images")
        image_id = [i["id"] for i in doc["items"] if i["name"] == "docker"][0]
    t0 = time.monotonic()
    st, _, doc = node.post("/v1/runtime-snapshots", {"runtime_image_id": image_id})
    assert st == 202, doc
    item = node.wait_snapshot(doc["id"], timeout=1200)
    wall = time.monotonic() - t0
    assert item["state"] == "ready", item
    return item, wall


def first_container(node, kind):
    req = {"name": "first", "runtime_image": "bench" if kind == "minimal" else "docker", "wait": True}
    if kind == "minimal":
        req["command"] = ["true"]
    else:
        req.update({"image": "busybox:latest", "command": ["true"]})
    t0 = time.monotonic()
    st, _, doc = node.post("/v1/containers", req)
    wall = time.monotonic() - t0
    assert st == 201, doc
    item = doc["item"]
    node.delete("/v1/containers/" + item["id"])
    return item, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", choices=["minimal", "docker"], default="minimal")
    a = ap.parse_args()
    body = image_body(a.image)
    out = {}
    with cluster.Rgw() as rgw, cluster.Etcd() as etcd:
        rgw.create_bucket(BUCKET)
        extra = []
        if a.image == "docker":
            extra = ["--bootstrap-docker-image-dir",
                     os.environ.get("FCWARM_DOCKER_IMAGE_DIR", "/var/cache/fcwarm/guest/docker-current")]
        node_a = Node(rgw, etcd, "bench-a", "10.218.0.0/24", *extra)
        node_b = Node(rgw, etcd, "bench-b", "10.218.1.0/24", *extra)
        try:
            for name, node in (("A (builds)", node_a), ("B (fetches)", node_b)):
                item, wall = snapshot_on(node, body)
                ev = node.build_event(item["id"])
                repo_ev = node.wait_repository_event(item["id"], "published" if item["origin"] == "built"
                                                     else "fetched")
                c, c_wall = first_container(node, a.image)
                out[name] = {
                    "origin": item["origin"], "snapshot_wall_s": round(wall, 2),
                    "build_timings_ms": {k: round(v) for k, v in ev["timings"].items()},
                    "repository_event": repo_ev["message"], "repository_ms": repo_ev["timings"],
                    "size_mib": round(item["size_bytes"] / MIB, 1), "disk_mib": round(item["disk_bytes"] / MIB, 1),
                    "first_container": {"boot_method": c["boot_method"], "total_ms": round(c["timings"]["total"]),
                                        "request_wall_s": round(c_wall, 2)},
                }
            c = rgw.client()
            stored = 0
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="fcwarm/"):
                stored += sum(o["Size"] for o in page.get("Contents", []))
            out["repository_stored_mib"] = round(stored / MIB, 1)
        finally:
            for n in (node_a, node_b):
                n.stop(timeout=60)
                n.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
