import os
import tempfile

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: needs qemu-system-x86_64 and the guest artifacts")
    config.addinivalue_line("markers", "docker: needs qemu-system-x86_64 and the docker runtime image")


@pytest.fixture
def tmpdir_path():
    with tempfile.TemporaryDirectory(prefix="fcwarm-py-") as d:
        yield d


class _Env:
    """What fake_service yields: unpacks to (service, fake_vmm, data_dir); close() drops the Service so its VMs
    and build workers stop before the directory is removed."""

    def __init__(self, svc, fake, path):
        self.svc, self.fake, self.path = svc, fake, path

    def __iter__(self):
        return iter((self.svc, self.fake, self.path))

    def close(self):
        import gc

        self.svc = None
        gc.collect()


def fake_service_options(tmpdir_path):
    """The scripted FakeVmm (test build of the module only), a VmmRegistry holding it and service options under
    `tmpdir_path` with short poll intervals and no stop grace: what every fake-VMM service here starts from."""
    import datetime

    import fcwarm

    fake = fcwarm.testing.FakeVmm()
    vmms = fcwarm.VmmRegistry()
    vmms.add(fake)
    opts = fcwarm.service_options(tmpdir_path)
    ms = datetime.timedelta(milliseconds=1)
    opts.snapshots.poll_interval = 5 * ms
    opts.snapshots.stop_grace = 0 * ms
    opts.restore.poll_interval = 5 * ms
    opts.restore.stop_grace = 0 * ms
    return fake, vmms, opts


@pytest.fixture
def fake_service(tmpdir_path):
    """A Service over the scripted FakeVmm (test build of the module only), with short timeouts."""
    import datetime

    import fcwarm

    fake, vmms, opts = fake_service_options(tmpdir_path)
    ms = datetime.timedelta(milliseconds=1)
    opts.restore.restore_runtime_timeout = 200 * ms
    opts.restore.wait_for_creating = 5000 * ms
    opts.health.rebuild_backoff_initial = 20 * ms
    opts.health.rebuild_backoff_max = 100 * ms
    env = _Env(fcwarm.open_service(tmpdir_path, vmms, opts), fake, tmpdir_path)
    yield env
    env.close()


def write_file(path, content=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return path
