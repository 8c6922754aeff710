"""fcwarm: warm boot for microVM platforms.

The classes are the C++ library's own (``fcwarm._core``), so Python scripts get exactly the behaviour of the
REST server and of C++ users. Typical use::

    import fcwarm
    vmms = fcwarm.VmmRegistry()
    vmms.add(fcwarm.make_qemu_vmm())            # if QEMU can run here
    svc = fcwarm.open_service("/var/lib/fcwarm", vmms)
    image = svc.images.register(fcwarm.RuntimeImage(name="minimal", backend="qemu", kernel_path=...))
    snap = svc.snapshots.create(image.id)
    svc.snapshots.wait_while_creating(snap.id, 600)
    vm = svc.engine.provision(image.id)
    print(vm.boot_method, vm.fallback_reason, vm.timings)
    c = svc.containers.create(runtime_image="minimal", command=["cat", "/etc/hostname"])   # a container in its own VM
    print(c.state, c.exit_code, svc.containers.logs(c.id).stdout_text)
"""

from . import _core
from ._core import *  # noqa: F401,F403
from .errors import ConflictError, Error, InvalidArgumentError, NotFoundError, UnavailableError

__version__ = _core.__version__


def service_options(data_dir):
    """ServiceOptions with every path under ``data_dir`` (db, snapshots, build, vms)."""
    return _core.ServiceOptions.under_directory(str(data_dir))


def open_service(data_dir, vmms=None, options=None):
    """Opens a Service whose files live under ``data_dir``."""
    import os

    os.makedirs(data_dir, exist_ok=True)
    opts = options if options is not None else service_options(data_dir)
    return _core.Service.open(opts, vmms if vmms is not None else _core.VmmRegistry())


__all__ = [name for name in dir(_core) if not name.startswith("_")] + [
    "Error",
    "NotFoundError",
    "InvalidArgumentError",
    "ConflictError",
    "UnavailableError",
    "service_options",
    "open_service",
    "__version__",
]
