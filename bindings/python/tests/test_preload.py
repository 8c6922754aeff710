"""Preloaded images through the bindings: RuntimeImage.preload_images, SnapshotManagerOptions.preload_images,
RuntimeSnapshot.images, the PRELOADING phase, the network options of RestoreOptions, and a warm container of a
preloaded image that does no pull (against the scripted FakeVmm, whose daemons pull nginx:alpine)."""
import datetime
import os

import pytest

import fcwarm
from conftest import write_file


def _image(base, name, preload=(), kind="docker"):
    kernel = write_file(os.path.join(base, "img", name, "vmlinux"), b"kernel " + name.encode())
    check = fcwarm.RuntimeCheck(kind=kind, path="/var/run/docker.sock" if kind == "docker" else "")
    return fcwarm.RuntimeImage(name=name, backend="fake", kernel_path=kernel, memory_mib=128, runtime_check=check,
                               preload_images=list(preload))


def test_options_and_enum():
    opts = fcwarm.ServiceOptions()
    assert opts.snapshots.preload_images == [] and opts.snapshots.pull_timeout == datetime.timedelta(seconds=300)
    opts.snapshots.preload_images = ["nginx:alpine"]
    assert opts.snapshots.preload_images == ["nginx:alpine"]
    r = opts.restore
    assert (r.egress, r.dns, r.registry_mirrors, r.insecure_registries) == ("", [], [], [])
    r.egress, r.dns, r.registry_mirrors = "none", ["192.0.2.53"], ["http://192.0.2.80:5000"]
    assert (r.egress, r.dns, r.registry_mirrors) == ("none", ["192.0.2.53"], ["http://192.0.2.80:5000"])
    assert str(fcwarm.BuildPhase.PRELOADING) == "preloading"
    assert fcwarm.BuildPhase.PRELOADING.label == "preloading"


def test_registration_validates_and_keeps_the_list(fake_service):
    svc, fake, base = fake_service
    img = svc.images.register(_image(base, "dock", ["busybox", "nginx:alpine"]))
    assert img.preload_images == ["busybox", "nginx:alpine"]
    assert svc.images.get(img.id).preload_images == ["busybox", "nginx:alpine"]
    with pytest.raises(fcwarm.InvalidArgumentError, match=r"^preload_images\[1\]: "):
        svc.images.register(_image(base, "bad", ["nginx:alpine", "NGINX"]))
    with pytest.raises(fcwarm.InvalidArgumentError, match=r"^preload_images: only container runtime images"):
        svc.images.register(_image(base, "bad", ["nginx:alpine"], kind="none"))


def test_preloaded_image_starts_warm_without_a_pull(fake_service):
    svc, fake, base = fake_service
    img = svc.images.register(_image(base, "dock", ["nginx:alpine"]))
    snap = svc.snapshots.wait_while_creating(svc.snapshots.create(img.id).id, 20.0)
    assert snap.state == fcwarm.SnapshotState.READY, snap.last_error
    assert snap.images == ["busybox:latest", "nginx:alpine"]
    assert fake.pulls == 1
    rec = svc.containers.create("nginx:alpine", runtime_image=img.id, command=["sleep", "100"])
    assert rec.boot_method == fcwarm.BootMethod.WARM and rec.snapshot_id == snap.id
    assert rec.pull is None and "pull" not in rec.timings
    assert fake.pulls == 1
    svc.containers.destroy(rec.id)


def test_cli_image_add_preload_and_snapshot_images(tmpdir_path):
    import io
    import json

    from fcwarm import cli

    fake = fcwarm.testing.FakeVmm()
    vmms = fcwarm.VmmRegistry()
    vmms.add(fake)
    data = os.path.join(tmpdir_path, "data")
    kernel = write_file(os.path.join(tmpdir_path, "vmlinux"), b"kernel")

    def run(*argv):
        out = io.StringIO()
        return cli.main(["--data-dir", data, *argv], out=out, vmms=vmms), out.getvalue()

    base = ("--kernel", kernel, "--backend", "fake", "--memory-mib", "128", "--check-kind", "docker",
            "--check-path", "/var/run/docker.sock")
    code, out = run("--json", "image", "add", "dock", *base, "--preload-image", "nginx:alpine")
    assert code == 0, out
    assert json.loads(out)["preload_images"] == ["nginx:alpine"]
    code, _ = run("image", "add", "bad", *base, "--preload-image", "nginx:alpine", "--preload-image", "Bad")
    assert code == cli.EXIT_USAGE
    code, out = run("--json", "snapshot", "create", "dock")
    assert code == 0, out
    snap = json.loads(out)
    assert snap["state"] == "ready" and snap["images"] == ["busybox:latest", "nginx:alpine"], snap
    assert fake.pulls == 1
