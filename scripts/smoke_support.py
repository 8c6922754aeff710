"""What scripts/guest-smoke.py and scripts/docker-smoke.py share: a scratch directory, a fcwarm Service over the
QEMU backend in it, guest commands that must succeed, and the failure report (the tail of every console log).

The smoke tests drive VMs only through the `fcwarm` package (the library's QEMU backend, QMP client and guest
channel): no QMP or agent protocol is spoken here.
"""
import gc
import glob
import os
import shutil
import sys
import tempfile

import fcwarm

# Exit codes of both smoke tests (77: ctest's SKIP_RETURN_CODE).
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_SKIP = 0, 1, 2, 77


class SmokeFailure(Exception):
    """A check failed; the message says which and what was seen."""


class Smoke:
    """One smoke run: `with Smoke("guest-smoke", keep) as smoke:` makes a scratch directory, removed at the end
    (kept with `keep`); every Service opened through it is closed (its VMs stopped) before that."""

    def __init__(self, name, keep):
        self.name = name
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix=f"fcwarm-{name}.")
        self._services = []

    def log(self, message):
        print(f"{self.name}: {message}", file=sys.stderr, flush=True)

    def check(self, condition, message):
        if not condition:
            raise SmokeFailure(message)

    def open_service(self, subdir, memory_mode=None):
        """A Service under `subdir` of the scratch directory with the QEMU backend (TCG). VMs get a network
        namespace with a TAP device when running as root (identity then sets MAC, address and route), no network
        interface otherwise."""
        opts = fcwarm.QemuOptions()
        if memory_mode is not None:
            opts.memory_mode = memory_mode
        if os.geteuid() != 0:
            opts.network_mode = fcwarm.QemuNetworkMode.NONE
        fcwarm.probe_qemu(opts)
        vmms = fcwarm.VmmRegistry()
        vmms.add(fcwarm.make_qemu_vmm(opts))
        svc = fcwarm.open_service(os.path.join(self.dir, subdir), vmms)
        self._services.append(svc)
        return svc

    def has_network(self):
        return os.geteuid() == 0

    def run(self, vm, argv, timeout=10.0):
        """Runs `argv` (no shell unless argv names one) in the VM; returns its stdout as text, fails unless it
        exited 0."""
        r = vm.exec(argv, timeout=timeout)
        out = r.stdout.decode(errors="replace")
        self.check(r.exit_code == 0, f"{argv} exited {r.exit_code}: stdout {out!r} "
                                     f"stderr {r.stderr.decode(errors='replace')!r}")
        return out

    def console_tails(self, lines=25):
        for path in sorted(glob.glob(os.path.join(self.dir, "**", "console.log"), recursive=True)):
            with open(path, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            self.log(f"---- last lines of {path}")
            for line in tail:
                print(line, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if isinstance(value, (SmokeFailure, fcwarm.Error)):
            self.log(f"FAIL: {value}")
            self.console_tails()
        # Dropping the last reference stops the Service's VMs and joins its workers.
        self._services.clear()
        gc.collect()
        if self.keep:
            self.log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False


def main_guard(name, body):
    """Runs body() -> exit code; a failed check or library error exits 1 after the report, Ctrl-C exits 130."""
    try:
        return body()
    except (SmokeFailure, fcwarm.Error):
        print(f"{name}: FAIL", flush=True)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
