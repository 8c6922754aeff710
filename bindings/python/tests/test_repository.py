"""The snapshot repository through the library (issue 16): two services over the scripted VMM share a file://
repository (a real directory store): the second fetches what the first built instead of building it; a changed
chunk makes it build and say why; bad settings are refused by name. The S3 and etcd paths are tested against
real RGW and etcd in tests/cluster."""
import datetime
import os
import time

import pytest

import fcwarm
from conftest import fake_service_options
from test_core import add_image

SEC = datetime.timedelta(seconds=1)


def open_node(base, name, repo):
    fake, vmms, opts = fake_service_options(os.path.join(base, name))
    opts.snapshots.node_id = name
    opts.snapshots.repository.url = "file://" + repo
    return fcwarm.open_service(os.path.join(base, name), vmms, opts), fake


def wait_event(svc, snap_id, outcome, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in svc.store.events(kind="repository", snapshot_id=snap_id) if e.outcome == outcome]
        if found or time.monotonic() > deadline:
            assert found, [(e.outcome, e.message) for e in svc.store.events(kind="repository")]
            return found[0]
        time.sleep(0.02)


def build(svc, base):
    img = add_image(svc, base)
    snap = svc.snapshots.create(img.id)
    snap = svc.snapshots.wait_while_creating(snap.id, 20 * SEC)
    assert snap.state == fcwarm.SnapshotState.READY, snap.last_error
    return img, snap


def test_second_node_fetches_instead_of_building(tmpdir_path):
    repo = os.path.join(tmpdir_path, "repo")
    a, fake_a = open_node(tmpdir_path, "a", repo)
    _, snap_a = build(a, tmpdir_path)
    assert snap_a.origin == "built"
    published = wait_event(a, snap_a.id, "published")
    assert "generation" in published.message and "publish" in published.timings
    assert os.listdir(os.path.join(repo, "manifests"))

    b, fake_b = open_node(tmpdir_path, "b", repo)
    img_b, snap_b = build(b, tmpdir_path)
    assert snap_b.origin == "fetched"
    assert [f.xxh3 for f in snap_b.files] == [f.xxh3 for f in snap_a.files]
    assert "built by node a" in wait_event(b, snap_b.id, "fetched").message
    assert fake_b.cold_boots == 0  # no build VM on B
    vm = b.engine.provision(img_b.id)
    assert vm.boot_method == fcwarm.BootMethod.WARM and vm.snapshot_id == snap_b.id
    b.engine.destroy(vm.id)

    # A rebuild on B wants a new generation, not the one it came from (that may be what failed): B builds and
    # publishes, and says why it did not fetch.
    b.snapshots.rebuild(snap_b.id)
    snap_b2 = b.snapshots.wait_while_creating(snap_b.id, 20 * SEC)
    assert snap_b2.state == fcwarm.SnapshotState.READY and snap_b2.origin == "built", snap_b2.last_error
    assert "rebuilt from" in wait_event(b, snap_b.id, "fetch_skipped").message
    assert fake_b.cold_boots == 1
    wait_event(b, snap_b.id, "published")

    gens = b.snapshots.list_repository()
    assert [(g.node, g.runtime_image) for g in gens] == [("a", "img"), ("b", "img")]
    opts = fcwarm.RepositoryGcOptions()
    opts.keep_newest = 1
    opts.keep_newer_than = datetime.timedelta(0)
    opts.dry_run = True
    rep = b.snapshots.collect_repository(opts)
    # A's generation is beyond retention (B's is newer) but A records it as in use: kept.
    assert rep.dry_run and rep.deleted == [] and len(rep.kept) == 2 and sorted(rep.nodes) == ["a", "b"]


def test_a_changed_chunk_is_never_used(tmpdir_path):
    repo = os.path.join(tmpdir_path, "repo")
    a, _ = open_node(tmpdir_path, "a", repo)
    _, snap_a = build(a, tmpdir_path)
    wait_event(a, snap_a.id, "published")
    chunks = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(repo, "chunks")) for f in fs]
    assert chunks
    for c in chunks:  # a valid zstd frame of other bytes: only the digest check can tell
        with open(c, "wb") as f:
            f.write(bytes.fromhex("28b52ffd2005290000") + b"other")
    b, fake_b = open_node(tmpdir_path, "b", repo)
    _, snap_b = build(b, tmpdir_path)
    assert snap_b.origin == "built"
    failed = wait_event(b, snap_b.id, "fetch_failed")
    assert "building here" in failed.message
    assert fake_b.cold_boots == 1


def test_bad_repository_settings_are_refused_by_name(tmpdir_path):
    for url, words in (("s3://", "repository.url"), ("file://relative", "repository.url"),
                       ("ftp://x/y", "repository.url")):
        fake, vmms, opts = fake_service_options(os.path.join(tmpdir_path, "x"))
        opts.snapshots.repository.url = url
        with pytest.raises(fcwarm.InvalidArgumentError) as e:
            fcwarm.open_service(os.path.join(tmpdir_path, "x"), vmms, opts)
        assert words in str(e.value)
    fake, vmms, opts = fake_service_options(os.path.join(tmpdir_path, "y"))
    opts.snapshots.repository.url = "s3://bucket/prefix"
    with pytest.raises(fcwarm.InvalidArgumentError) as e:
        fcwarm.open_service(os.path.join(tmpdir_path, "y"), vmms, opts)
    assert "s3_endpoint" in str(e.value)
    fake, vmms, opts = fake_service_options(os.path.join(tmpdir_path, "z"))
    opts.snapshots.coordination.url = "etcd://nohost"
    with pytest.raises(fcwarm.InvalidArgumentError) as e:
        fcwarm.open_service(os.path.join(tmpdir_path, "z"), vmms, opts)
    assert "coordination.url" in str(e.value)
    # Without a repository, listing says so.
    svc, _ = open_node(tmpdir_path, "w", os.path.join(tmpdir_path, "repo-w"))
    fake, vmms, opts = fake_service_options(os.path.join(tmpdir_path, "v"))
    plain = fcwarm.open_service(os.path.join(tmpdir_path, "v"), vmms, opts)
    with pytest.raises(fcwarm.ConflictError):
        plain.snapshots.list_repository()
    assert svc.snapshots.list_repository() == []
