"""A small file system for disk-full and read-only tests: a size-limited tmpfs mounted on a fresh temporary
directory. Mounting needs root; `SmallFs.require()` skips the test otherwise. `close()` unmounts and removes it
(also after a failure: use it as a context manager or in a fixture's finally)."""

import errno
import os
import shutil
import subprocess
import tempfile

import pytest


class SmallFs:
    """`at`: an existing directory to mount on (kept at close) instead of a fresh temporary one."""

    def __init__(self, size_mb, at=None):
        self.own_dir = at is None
        self.path = tempfile.mkdtemp(prefix="fcwarm-smallfs-") if at is None else at
        self.filler = os.path.join(self.path, ".filler")
        self.immutable = []
        try:
            self._mount("-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", self.path)
        except Exception:
            if self.own_dir:
                os.rmdir(self.path)
            raise
        self.mounted = True

    @staticmethod
    def require():
        """Skips the calling test unless it can mount a tmpfs (root)."""
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        if not shutil.which("mount") or not shutil.which("umount"):
            pytest.skip("mount/umount are not installed")

    @staticmethod
    def _mount(*args):
        subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def resize(self, size_mb):
        """Grows or shrinks the file system (a shrink below what is used fails)."""
        self._mount("-o", f"remount,size={size_mb}m", self.path)

    def read_only(self, ro=True):
        self._mount("-o", "remount," + ("ro" if ro else "rw"), self.path)

    def free_bytes(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def used_bytes(self):
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def fill(self):
        """Writes a filler file until the file system is full (ENOSPC); returns its size."""
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 20, 4096):
                block = b"\0" * chunk
                while True:
                    try:
                        f.write(block)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        return os.path.getsize(self.filler)

    def free(self):
        """Removes the filler: the space is back."""
        if os.path.exists(self.filler):
            os.unlink(self.filler)

    def make_immutable(self, path):
        """chattr +i (stops root too); False when the file system has no such attribute."""
        r = subprocess.run(["chattr", "+i", path], capture_output=True, timeout=30) if shutil.which("chattr") else None
        if r is None or r.returncode != 0:
            return False
        self.immutable.append(path)
        return True

    def clear_immutable(self):
        """chattr -i on every file make_immutable() marked."""
        for p in self.immutable:
            subprocess.run(["chattr", "-i", p], capture_output=True, timeout=30)
        self.immutable = []

    def close(self):
        self.clear_immutable()
        if self.mounted:
            try:
                self.read_only(False)
            except subprocess.CalledProcessError:
                pass
            r = subprocess.run(["umount", self.path], capture_output=True, timeout=60)
            if r.returncode != 0:  # something still holds it open: detach it now, the kernel frees it after
                subprocess.run(["umount", "-l", self.path], capture_output=True, timeout=60)
            self.mounted = False
        if self.own_dir:
            try:
                os.rmdir(self.path)
            except OSError:
                pass
