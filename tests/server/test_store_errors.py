"""A broken store and a full disk under the real fcwarm-server (--backend none; issue 15, "Disk full and a broken
store"): a corrupt, truncated, empty, read-only or locked fcwarm.db stops the server at startup with exit 1 and a
message naming the file and what is wrong, and the file is left exactly as it was; a full file system makes
writes fail with 507 resource_exhausted while reads keep working, and writes succeed again once space is back,
without a restart. The read-only and disk-full cases mount a small tmpfs (root only; skipped otherwise)."""

import hashlib
import os
import sqlite3
import time

import pytest

from conftest import Server, assert_error, create_image
from smallfs import SmallFs


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def start_refused(data_dir, timeout=30):
    """Starts a server on `data_dir` that must exit at once; returns (exit code, log)."""
    s = Server(data_dir=data_dir, expect_start=False)
    try:
        rc = s.wait_exit(timeout)
        return rc, s.read_log()
    finally:
        s.close()


def populated(data_dir, images=30):
    """Runs a server on `data_dir` once, registering some images; returns the database path."""
    s = Server(data_dir=data_dir)
    try:
        for i in range(images):
            create_image(s, name=f"img-{i}", boot_args="x" * 500)
        assert s.stop() == 0
    finally:
        s.close()
    path = os.path.join(data_dir, "fcwarm.db")
    assert os.path.getsize(path) > 32 * 1024
    return path


def check_refused(data_dir, words):
    db = os.path.join(data_dir, "fcwarm.db")
    before = digest(db)
    size = os.path.getsize(db)
    rc, log = start_refused(data_dir)
    assert rc == 1, log
    line = [l for l in log.splitlines() if "event=open_failed" in l]
    assert line, log
    assert f"'{db}'" in line[0], line[0]
    assert words in line[0], line[0]
    assert os.path.getsize(db) == size and digest(db) == before  # never replaced, emptied or migrated
    return line[0]


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def test_corrupt_database_is_a_clear_startup_error(data_dir):
    db = populated(data_dir)
    with open(db, "r+b") as f:
        f.write(b"this is not the SQLite header at all" * 3)
    check_refused(data_dir, "is corrupt or truncated")


def test_damaged_page_is_found_at_startup(data_dir):
    db = populated(data_dir)
    with open(db, "r+b") as f:
        f.seek(6 * 4096)
        f.write(b"\x5a" * 8192)
    check_refused(data_dir, "is corrupt or truncated")


def test_truncated_database_is_a_clear_startup_error(data_dir):
    db = populated(data_dir)
    os.truncate(db, os.path.getsize(db) // 2)
    check_refused(data_dir, "is corrupt or truncated")


def test_database_truncated_to_nothing_is_not_started_over(data_dir):
    db = populated(data_dir)
    os.truncate(db, 0)
    line = check_refused(data_dir, "is an empty file (0 bytes: truncated?)")
    assert "restore it from a backup" in line
    assert os.path.getsize(db) == 0


def image_names(server):
    st, _, doc = server.get("/v1/images")
    assert st == 200, doc
    return {i["name"] for i in doc["items"]}


def test_locked_database_is_a_clear_startup_error(data_dir):
    db = populated(data_dir, images=1)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        t = time.monotonic()
        line = check_refused(data_dir, "is locked by another process")
        assert time.monotonic() - t >= 4  # it waited for the lock (busy timeout 5 s) before giving up
        assert "unavailable:" in line
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # The lock is gone: the same store opens with its images.
    s = Server(data_dir=data_dir)
    try:
        assert image_names(s) == {"img-0"}
    finally:
        s.stop()
        s.close()


def test_second_server_on_the_same_data_dir_is_refused(data_dir):
    first = Server(data_dir=data_dir)
    try:
        rc, log = start_refused(data_dir)
        assert rc == 1, log
        assert "is in use by another fcwarm process" in log, log
        assert first.get("/healthz")[0] == 200
    finally:
        first.stop()
        first.close()


def test_read_only_database_is_a_clear_startup_error():
    SmallFs.require()
    with SmallFs(16) as fs:
        data_dir = os.path.join(fs.path, "data")
        db = populated(data_dir, images=3)
        # An immutable file: root cannot write it (chmod 0444 would not stop root).
        if fs.make_immutable(db):
            check_refused(data_dir, "is read-only")
            fs.clear_immutable()
        # A read-only mount: the lock file beside it cannot be opened for writing either.
        fs.read_only(True)
        rc, log = start_refused(data_dir)
        assert rc == 1, log
        line = [l for l in log.splitlines() if "event=open_failed" in l][0]
        assert db in line and "Read-only file system" in line, line
        fs.read_only(False)
        s = Server(data_dir=data_dir)  # writable again: it starts with its images
        try:
            assert image_names(s) == {"img-0", "img-1", "img-2"}
        finally:
            s.stop()
            s.close()


def test_full_disk_refuses_writes_clearly_and_recovers_without_restart():
    SmallFs.require()
    with SmallFs(8) as fs:
        s = Server(data_dir=os.path.join(fs.path, "data"))
        try:
            before = create_image(s, name="before")
            fs.fill()
            # SQLite may still place a row or two in its write-ahead log's free pages; then it refuses.
            statuses = []
            for i in range(50):
                st, _, doc = s.post("/v1/images", {"name": f"full-{i}", "backend": "none",
                                                   "kernel_path": before["kernel_path"], "boot_args": "y" * 2000})
                statuses.append(st)
                if st != 201:
                    break
            message = assert_error((st, None, doc), 507, "resource_exhausted")
            assert "fcwarm.db" in message and "database or disk is full" in message, message
            assert set(statuses[:-1]) <= {201}, statuses
            # Reads keep working, and the server is alive.
            assert "before" in image_names(s)
            assert s.get("/v1/images/" + before["id"])[0] == 200
            assert s.get("/healthz")[0] == 200
            # Space is back: writes succeed again, without a restart.
            fs.free()
            assert create_image(s, name="after")["name"] == "after"
            assert "after" in image_names(s)
            assert s.proc.poll() is None
        finally:
            s.stop()
            s.close()
