#!/usr/bin/python3
"""A one-node S3 object store (Ceph with the RADOS Gateway) and an etcd, on loopback, for tests.

Nothing here reaches beyond this machine: every daemon binds 127.0.0.1 only. Both fixtures keep all their
state, configuration, logs, admin sockets and pid files in a temporary directory of their own and never read
or write /etc/ceph, /var/lib/ceph, /var/log/ceph or /var/run/ceph, so several can run at once beside whatever
Ceph or etcd the system has. Every process is spawned with an argv list, never a shell string.

* `Rgw` -- Debian's Ceph (16.2 "pacific"): ``ceph-mon``, one ``ceph-osd`` on ``memstore`` (RAM; the OSD's RSS
  grows with what is stored, ``memstore_bytes`` caps it) and ``radosgw`` (beast frontend) on
  ``127.0.0.1:<free port>``. No ``ceph-mgr``: RGW and RADOS work without one (``ceph -s`` then shows no PG
  statistics, nothing else is missing). Settings that matter:

  - ``auth_*_required = none`` with ``ms_*_mode = crc``: no cephx keys to create, and msgr2's default
    ``secure`` mode (which needs cephx) is not asked for.
  - ``paxos_propose_interval = 0.05``: the monitor commits map changes at once (the default 1 s, with a dozen
    map changes while pools are created, makes bring-up take ~13 s instead of ~2 s).
  - ``osd_pool_default_size = 1``, ``pg_num = 8``: RGW creates 6 pools at start; with the default 32 PGs
    each they would exceed ``mon_max_pg_per_osd`` for one OSD.
  - The OSD's messengers take ports from Ceph's range (``ms_bind_port_min..max``, 6800-7300), on
    127.0.0.1, skipping ports in use; the monitor and the gateway get free ephemeral ports.

  S3 facts (RGW 16.2, checked by tests/cluster/test_fixtures.py):

  - Path-style addressing (``http://127.0.0.1:PORT/BUCKET/KEY``); no DNS name is configured.
  - Region: the zonegroup is ``default`` (its ``api_name``), which is `Rgw.region`. RGW checks SigV4
    signatures with the region the client names in its credential scope, so ``us-east-1`` works as well.
  - libcurl's ``CURLOPT_AWS_SIGV4`` (``curl --aws-sigv4 "aws:amz:REGION:s3"``) does not send
    ``x-amz-content-sha256`` on its own; RGW then answers 403 ``SignatureDoesNotMatch``. Send the header
    (the hex SHA-256 of the body, also for an empty body) and RGW accepts the signature.
  - Wrong secret: 403 with ``<Code>SignatureDoesNotMatch</Code>``; unknown access key: 403
    ``InvalidAccessKeyId``. Bucket names: 3-63 characters.

* `Etcd` -- Debian's etcd 3.4 (``etcd-server``), one member, client and peer URLs on free 127.0.0.1 ports,
  data in the temporary directory. `Etcd.put`, `Etcd.get`, `Etcd.range`, `Etcd.delete` and the lease calls
  speak etcd's v3 JSON gateway (``/v3/kv/put``, ``/v3/kv/range``, ``/v3/lease/grant``, ...: keys and values
  base64, 64-bit integers as JSON strings) with urllib. `Etcd.stop` / `Etcd.kill` end the process and keep
  the data directory; `Etcd.start` starts it again on the same ports and data.

Both are context managers: on exit (also after a failed start) every process is killed and waited for and the
directory removed; `leftovers()` then lists what still exists (processes whose command line names the
directory, listening sockets of those, the directory) -- empty when all went well.

Needs root (the Ceph daemons' defaults assume it; the fixtures do not drop privileges) and the packages
ceph-mon, ceph-osd, radosgw, etcd-server, python3-boto3 (scripts/setup.sh). See docs/testing.md.

Command line (for people and the C++ side's manual checks)::

    /usr/bin/python3 tests/support/cluster.py serve [--bucket NAME] [--no-etcd] [--no-rgw]

prints ``export`` lines (endpoint, credentials, region, etcd URL) and runs until Ctrl-C.
"""

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

CEPH_MON = "/usr/bin/ceph-mon"
CEPH_OSD = "/usr/bin/ceph-osd"
RADOSGW = "/usr/bin/radosgw"
RADOSGW_ADMIN = "/usr/bin/radosgw-admin"
CEPH = "/usr/bin/ceph"
MONMAPTOOL = "/usr/bin/monmaptool"
ETCD = "/usr/bin/etcd"

RGW_REGION = "default"

# Requests to the fixtures never go through a proxy (they are on loopback).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClusterError(RuntimeError):
    """A fixture could not start, a command failed, or cleanup was incomplete; the message says which and
    includes the tool's output or the daemon's log."""


def rgw_missing():
    """Programs and modules `Rgw` needs that are not installed (empty when it can run; root is separate)."""
    missing = [p for p in (CEPH_MON, CEPH_OSD, RADOSGW, RADOSGW_ADMIN, CEPH, MONMAPTOOL) if not os.access(p, os.X_OK)]
    try:
        import boto3  # noqa: F401
    except ImportError:
        missing.append("python3-boto3")
    return missing


def etcd_missing():
    """What `Etcd` needs and is not installed."""
    return [] if os.access(ETCD, os.X_OK) else [ETCD]


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice from the ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv, timeout=60, check=True, env=None, input=None):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"{' '.join(argv)} did not finish within {timeout}s: {e.stderr or ''}") from None
    if check and p.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} exited with {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p


def _port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path, limit=6000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _pids_naming(text):
    """Pids of processes whose command line contains `text` (our directory), except this process."""
    needle = text.encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    out.append(int(entry))
        except OSError:
            pass
    return out


def listening_sockets(pids):
    """Listening TCP sockets held by any of `pids`: sorted [(address, port)], address as text ("127.0.0.1",
    "::" ...). Reads /proc (no tools needed)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    out = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                        continue
                    addr_hex, port_hex = fields[1].rsplit(":", 1)
                    raw = bytes.fromhex(addr_hex)
                    # /proc prints each 32-bit word in host (little-endian) order.
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    out.add((socket.inet_ntop(family, raw), int(port_hex, 16)))
        except OSError:
            pass
    return sorted(out)


def _listening_ports(pids):
    """TCP ports on which one of `pids` listens."""
    return sorted({port for _, port in listening_sockets(pids)})


class _Daemons:
    """The processes of one fixture: started in order, ended in reverse order (SIGTERM, then SIGKILL after
    `grace` seconds; grace 0 = SIGKILL at once), always waited for."""

    def __init__(self):
        self.procs = []  # (name, Popen, log path)

    def spawn(self, name, argv, log_path, env=None):
        log = open(log_path, "ab")
        try:
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=env)
        finally:
            log.close()
        self.procs.append((name, p, log_path))
        return p

    def check_alive(self):
        for name, p, log_path in self.procs:
            if p.poll() is not None:
                raise ClusterError(f"{name} exited with {p.returncode}:\n{_tail(log_path)}")

    def end(self, name, grace):
        for i, (n, p, _) in enumerate(self.procs):
            if n == name:
                _end(p, grace)
                del self.procs[i]
                return

    def end_all(self, grace):
        while self.procs:
            _, p, _ = self.procs.pop()
            _end(p, grace)


def _end(p, grace):
    if p.poll() is None:
        try:
            if grace > 0:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=grace)
            else:
                p.kill()
        except subprocess.TimeoutExpired:
            p.kill()
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


class _Fixture:
    """Directory, daemons, cleanup and leftovers shared by `Rgw` and `Etcd`."""

    _prefix = "fcwarm-fixture-"

    def __init__(self, workdir=None, keep_dir=False):
        self._workdir = workdir
        self._keep_dir = keep_dir
        self.dir = None
        self._daemons = _Daemons()
        self._known_ports = set()
        self._last_dir = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _make_dir(self):
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix=self._prefix, dir=self._workdir)
            self._last_dir = self.dir

    def close(self):
        """Kills and waits for every process, then removes the directory (unless keep_dir). Idempotent.
        Raises ClusterError if a process of ours still runs afterwards."""
        self._daemons.end_all(self._grace)
        stray = _pids_naming(self._last_dir) if self._last_dir else []
        for pid in stray:  # e.g. a daemon that forked; never expected
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.dir is not None and not self._keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        if stray:
            time.sleep(0.2)
            still = _pids_naming(self._last_dir)
            if still:
                raise ClusterError(f"processes {still} naming {self._last_dir} survive SIGKILL")

    def leftovers(self):
        """What of this fixture still exists: ``process PID (argv0)``, ``listening port N (PID)``,
        ``directory PATH``. Empty after a clean close()."""
        out = []
        if self._last_dir is None:
            return out
        pids = _pids_naming(self._last_dir)
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            out.append(f"process {pid} ({argv0})")
            for port in _listening_ports([pid]):
                out.append(f"listening port {port} ({pid})")
        if os.path.exists(self._last_dir) and not self._keep_dir:
            out.append(f"directory {self._last_dir}")
        return out


# ---------------------------------------------------------------------------------------------------------
# Ceph + RGW
# ---------------------------------------------------------------------------------------------------------

class Rgw(_Fixture):
    """A one-node Ceph cluster with the RADOS Gateway on 127.0.0.1 (see the module docstring).

    Usage::

        with Rgw() as s3:
            s3.endpoint, s3.access_key, s3.secret_key, s3.region   # "http://127.0.0.1:PORT", ..., "default"
            s3.create_bucket("snapshots")
            s3.client().put_object(Bucket="snapshots", Key="a", Body=b"x")   # boto3, path-style
            s3.env()          # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL
        assert s3.leftovers() == []

    `timings` holds the seconds each bring-up step took (mon, osd, rgw, user, total).
    Thread safety: none; one test owns one Rgw (boto3 clients it returns may be used from threads).
    """

    _prefix = "fcwarm-rgw-"
    _grace = 0  # SIGKILL: the data is thrown away with the directory (memstore would write it all out first)

    def __init__(self, workdir=None, keep_dir=False, memstore_bytes=2 << 30, user="fcwarm", timeout=60):
        """workdir: parent of the temporary directory (default: the system's). keep_dir: leave the directory
        (logs) after close. memstore_bytes: the OSD's capacity (RAM, used as data is written; default 2 GiB).
        user: the S3 user created at start. timeout: seconds for the whole bring-up."""
        super().__init__(workdir, keep_dir)
        self.memstore_bytes = int(memstore_bytes)
        self.user = user
        self.timeout = timeout
        self.fsid = str(uuid.uuid4())
        self.cluster = "fcw" + secrets.token_hex(4)  # Ceph's $cluster; every path it would name is set below
        self.mon_port = None
        self.port = None
        self.access_key = None
        self.secret_key = None
        self.region = RGW_REGION
        self.timings = {}
        self.conf = None

    @property
    def endpoint(self):
        """``http://127.0.0.1:PORT``: the S3 endpoint (path-style)."""
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        """The standard AWS variables for this gateway and user (what the fcwarm server reads)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint}

    def _write_conf(self):
        d = self.dir
        for sub in ("run", "log", "mon", "osd.0", "rgw", "crash", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        settings = {
            "fsid": self.fsid,
            "mon_host": f"v2:127.0.0.1:{self.mon_port}",
            "public_addr": "127.0.0.1",
            "cluster_addr": "127.0.0.1",
            "public_network": "127.0.0.1/32",
            "ms_bind_msgr1": "false",
            "ms_bind_msgr2": "true",
            "auth_cluster_required": "none",
            "auth_service_required": "none",
            "auth_client_required": "none",
            "ms_mon_client_mode": "crc",
            "ms_mon_cluster_mode": "crc",
            "ms_mon_service_mode": "crc",
            "ms_client_mode": "crc",
            "ms_cluster_mode": "crc",
            "ms_service_mode": "crc",
            # Every path Ceph would otherwise take under /etc, /var/lib, /var/log or /var/run.
            "run_dir": f"{d}/run",
            "admin_socket": f"{d}/run/$name.asok",
            "pid_file": f"{d}/run/$name.pid",
            "log_file": f"{d}/log/$name.log",
            "mon_cluster_log_file": f"default={d}/log/cluster.$channel.log cluster={d}/log/cluster.log",
            "mon_debug_dump_location": f"{d}/log/$name.tdump",
            "crash_dir": f"{d}/crash",
            "keyring": f"{d}/keyring",
            "mon_data": f"{d}/mon/$id",
            "osd_data": f"{d}/osd.$id",
            "osd_journal": f"{d}/osd.$id/journal",
            "mgr_data": f"{d}/mgr/$id",
            "mds_data": f"{d}/mds/$id",
            "rgw_data": f"{d}/rgw",
            "immutable_object_cache_sock": f"{d}/run/immutable_object_cache_sock",
            "immutable_object_cache_path": f"{d}/tmp/immutable_object_cache",
            "rgw_luarocks_location": f"{d}/tmp/luarocks",
            "gss_ktab_client_file": f"{d}/tmp/gss_client.ktab",
            # One small OSD in RAM.
            "osd_objectstore": "memstore",
            "memstore_device_bytes": str(self.memstore_bytes),
            "osd_pool_default_size": "1",
            "osd_pool_default_min_size": "1",
            "osd_pool_default_pg_num": "8",
            "osd_pool_default_pgp_num": "8",
            "osd_crush_chooseleaf_type": "0",
            "mon_allow_pool_size_one": "true",
            "mon_warn_on_pool_no_redundancy": "false",
            "mon_allow_pool_delete": "true",
            # Commit map changes at once (bring-up in ~2 s instead of ~13 s).
            "paxos_propose_interval": "0.05",
            # Fewer threads; a test gateway serves a handful of clients.
            "osd_op_num_shards": "1",
            "osd_op_num_threads_per_shard": "2",
            "rgw_thread_pool_size": "32",
        }
        self.conf = os.path.join(d, f"{self.cluster}.conf")
        with open(self.conf, "w") as f:
            f.write("[global]\n")
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")

    def _cli(self, *args):
        """Common arguments of every Ceph program: this cluster's name and configuration file only."""
        return ["--cluster", self.cluster, "-c", self.conf] + list(args)

    def ceph(self, *args, timeout=30):
        """Runs the ``ceph`` CLI against this cluster; returns its stdout. ClusterError on failure."""
        return _run([CEPH] + self._cli("--connect-timeout", "10", *args), timeout=timeout).stdout

    def admin(self, *args, timeout=30):
        """Runs ``radosgw-admin`` against this cluster; returns its stdout (JSON for most commands)."""
        return _run([RADOSGW_ADMIN] + self._cli(*args), timeout=timeout).stdout

    def create_user(self, uid, access_key=None, secret_key=None):
        """Creates an S3 user; returns (access_key, secret_key) (generated unless given)."""
        access_key = access_key or "FCW" + secrets.token_hex(8).upper()
        secret_key = secret_key or secrets.token_urlsafe(30)
        self.admin("user", "create", "--uid", uid, "--display-name", uid, "--access-key", access_key,
                   "--secret-key", secret_key)
        return access_key, secret_key

    def start(self):
        """Brings the cluster up and creates the S3 user; returns once the gateway answers. Raises
        ClusterError (with the failing daemon's log) otherwise; close() after a failure (the context manager
        does)."""
        missing = rgw_missing()
        if missing:
            raise ClusterError("missing: " + ", ".join(missing) +
                               " (scripts/setup.sh installs ceph-mon ceph-osd radosgw python3-boto3)")
        if os.geteuid() != 0:
            raise ClusterError("the Ceph fixture needs root")
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        self._make_dir()
        self.mon_port = free_port()
        self.port = free_port()
        self._write_conf()
        log = os.path.join(self.dir, "log")

        # Monitor: a monmap with this fsid and address, mkfs, then the daemon in the foreground.
        monmap = os.path.join(self.dir, "monmap")
        _run([MONMAPTOOL, "--create", "--fsid", self.fsid, "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
              monmap])
        _run([CEPH_MON] + self._cli("--mkfs", "-i", "a", "--monmap", monmap))
        self._daemons.spawn("ceph-mon", [CEPH_MON] + self._cli("-f", "-i", "a"), f"{log}/mon.out")
        self._wait(lambda: _port_open(self.mon_port), deadline, "ceph-mon to listen")
        t1 = time.monotonic()
        self.timings["mon"] = t1 - t0

        # OSD 0: registered with the monitor, mkfs on memstore, then the daemon.
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).strip()
        if osd_id != "0":
            raise ClusterError(f"ceph osd new returned id {osd_id!r}, expected 0")
        _run([CEPH_OSD] + self._cli("-i", "0", "--mkfs", "--osd-uuid", osd_uuid))
        self._daemons.spawn("ceph-osd", [CEPH_OSD] + self._cli("-f", "-i", "0"), f"{log}/osd.out")
        t2 = time.monotonic()
        self.timings["osd"] = t2 - t1

        # The gateway creates its pools once the OSD is up, then listens.
        self._daemons.spawn("radosgw", [RADOSGW] + self._cli(
            "-f", "-n", "client.rgw.a", "--rgw_frontends", f"beast endpoint=127.0.0.1:{self.port}"),
            f"{log}/rgw.out")
        self._wait(self._gateway_answers, deadline, f"radosgw to answer on {self.endpoint}")
        t3 = time.monotonic()
        self.timings["rgw"] = t3 - t2

        self.access_key, self.secret_key = self.create_user(self.user)
        t4 = time.monotonic()
        self.timings["user"] = t4 - t3
        self.timings["total"] = t4 - t0
        self._known_ports = {self.mon_port, self.port}

    def _gateway_answers(self):
        try:
            with _DIRECT.open(urllib.request.Request(self.endpoint + "/"), timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _wait(self, ready, deadline, what):
        while True:
            self._daemons.check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{_tail(p, 3000)}" for n, _, p in self._daemons.procs)
                raise ClusterError(f"timed out waiting for {what} ({self.timeout}s):\n{logs}")
            time.sleep(0.05)

    def stop_gateway(self):
        """Ends radosgw only (the endpoint then refuses connections); start_gateway() brings it back on the same
        port. For tests of an unreachable endpoint."""
        self._daemons.end("radosgw", 0)

    def start_gateway(self, timeout=30):
        """Starts radosgw again after stop_gateway(); returns once it answers."""
        if any(n == "radosgw" for n, _, _ in self._daemons.procs):
            raise ClusterError("radosgw is running")
        self._daemons.spawn("radosgw", [RADOSGW] + self._cli(
            "-f", "-n", "client.rgw.a", "--rgw_frontends", f"beast endpoint=127.0.0.1:{self.port}"),
            os.path.join(self.dir, "log", "rgw.out"))
        self._wait(self._gateway_answers, time.monotonic() + timeout, "radosgw to answer again")

    def client(self, access_key=None, secret_key=None, region=None, **config):
        """A boto3 S3 client for this gateway: path-style, SigV4, this user's keys unless given; `config`
        adds botocore Config options (e.g. retries={"max_attempts": 1})."""
        import boto3
        from botocore.config import Config
        config.setdefault("s3", {"addressing_style": "path"})
        config.setdefault("signature_version", "s3v4")
        config.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
        return boto3.client("s3", endpoint_url=self.endpoint,
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            region_name=region or self.region, config=Config(**config))

    def create_bucket(self, name):
        """Creates bucket `name` (3-63 characters of [a-z0-9.-]); returns the name."""
        self.client().create_bucket(Bucket=name)
        return name

    def read_log(self, daemon="radosgw"):
        """The tail of a daemon's log: "radosgw", "ceph-osd" or "ceph-mon"."""
        names = {"radosgw": "client.rgw.a.log", "ceph-osd": "osd.0.log", "ceph-mon": "mon.a.log"}
        return _tail(os.path.join(self.dir or "", "log", names[daemon]))


# ---------------------------------------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------------------------------------

def _b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def _prefix_end(prefix):
    """etcd's range_end for "every key starting with prefix": the prefix with its last byte incremented."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"  # the whole key space


class Etcd(_Fixture):
    """One etcd 3.4 member on 127.0.0.1 (see the module docstring).

    Usage::

        with Etcd() as etcd:
            etcd.endpoint                  # "http://127.0.0.1:PORT"
            etcd.url                       # "etcd://127.0.0.1:PORT" (fcwarm-server's --coordination)
            etcd.put("k", "v"); etcd.get("k")             # b"v"
            lease = etcd.lease_grant(5); etcd.put("l", "x", lease=lease); etcd.lease_revoke(lease)
            etcd.kill(); etcd.start()      # a crash and a restart on the same data
        assert etcd.leftovers() == []

    Thread safety: the HTTP helpers may be called from several threads; start/stop/kill/close from one.
    """

    _prefix = "fcwarm-etcd-"
    _grace = 5

    def __init__(self, workdir=None, keep_dir=False, timeout=30):
        """workdir, keep_dir: as for Rgw. timeout: seconds for a start."""
        super().__init__(workdir, keep_dir)
        self.timeout = timeout
        self.port = None
        self.peer_port = None
        self.name = "fcw" + secrets.token_hex(4)
        self.timings = {}

    @property
    def endpoint(self):
        """``http://127.0.0.1:PORT``: the client URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self):
        """``etcd://127.0.0.1:PORT``: the form fcwarm-server's ``--coordination`` takes."""
        return f"etcd://127.0.0.1:{self.port}"

    @property
    def data_dir(self):
        """The member's data directory (kept across stop/kill and start)."""
        return os.path.join(self.dir, "data") if self.dir else None

    def start(self):
        """Starts etcd (first time: new ports and data; after stop()/kill(): the same ones); returns once
        /health answers healthy."""
        if etcd_missing():
            raise ClusterError(f"missing: {ETCD} (scripts/setup.sh installs etcd-server)")
        if any(n == "etcd" for n, _, _ in self._daemons.procs):
            raise ClusterError("etcd is running")
        t0 = time.monotonic()
        first = self.dir is None
        self._make_dir()
        if first:
            self.port, self.peer_port = free_port(), free_port()
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [ETCD, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new",
                "--initial-cluster-token", self.name, "--logger", "zap", "--log-outputs", "stderr"]
        # etcd reads ETCD_* variables as flags; none from our environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self._daemons.spawn("etcd", argv, os.path.join(self.dir, "etcd.log"), env=env)
        deadline = t0 + self.timeout
        while True:
            self._daemons.check_alive()
            try:
                if json.loads(self._http("GET", "/health", timeout=2)).get("health") == "true":
                    break
            except (OSError, ValueError, ClusterError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"etcd did not become healthy within {self.timeout}s:\n"
                                   f"{_tail(os.path.join(self.dir, 'etcd.log'))}")
            time.sleep(0.05)
        self.timings["start"] = time.monotonic() - t0
        self._known_ports = {self.port, self.peer_port}

    def stop(self, timeout=10):
        """SIGTERM and wait (SIGKILL after `timeout`); the data directory stays for start()."""
        self._daemons.end("etcd", timeout)

    def kill(self):
        """SIGKILL, as a crash would end it; the data directory stays for start()."""
        self._daemons.end("etcd", 0)

    @property
    def running(self):
        """True while the etcd process runs."""
        return any(n == "etcd" and p.poll() is None for n, p, _ in self._daemons.procs)

    def read_log(self):
        """The tail of etcd's log."""
        return _tail(os.path.join(self.dir or "", "etcd.log"))

    # --- the v3 JSON gateway ---

    def _http(self, method, path, body=None, timeout=10):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with _DIRECT.open(req, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise ClusterError(f"etcd {method} {path} answered {e.code}: {e.read()[:500]!r}") from None

    def call(self, path, body, timeout=10):
        """POSTs `body` (a dict) to the gateway path (e.g. "/v3/kv/put"); returns the decoded JSON answer."""
        return json.loads(self._http("POST", path, body, timeout))

    def put(self, key, value, lease=None):
        """Puts key=value (str or bytes), attached to `lease` (an id from lease_grant) if given."""
        body = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        return self.call("/v3/kv/put", body)

    def range(self, prefix=b""):
        """Every key starting with `prefix` (str or bytes): {key bytes: value bytes}."""
        if isinstance(prefix, str):
            prefix = prefix.encode()
        body = {"key": _b64(prefix or b"\0"), "range_end": _b64(_prefix_end(prefix) if prefix else b"\0")}
        doc = self.call("/v3/kv/range", body)
        return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", ""))
                for kv in doc.get("kvs", [])}

    def get(self, key):
        """The value (bytes) of `key`, or None."""
        doc = self.call("/v3/kv/range", {"key": _b64(key)})
        kvs = doc.get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def get_kv(self, key):
        """The full key-value record of `key` (dict with "lease", "mod_revision", ...; base64 decoded key and
        value), or None."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        if not kvs:
            return None
        kv = dict(kvs[0])
        kv["key"] = base64.b64decode(kv["key"])
        kv["value"] = base64.b64decode(kv.get("value", ""))
        return kv

    def delete(self, key):
        """Deletes `key`; returns how many keys were deleted (0 or 1)."""
        return int(self.call("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", "0"))

    def lease_grant(self, ttl):
        """Grants a lease of `ttl` seconds; returns its id (an int)."""
        doc = self.call("/v3/lease/grant", {"TTL": str(int(ttl))})
        if doc.get("error"):
            raise ClusterError(f"lease grant: {doc['error']}")
        return int(doc["ID"])

    def lease_revoke(self, lease):
        """Revokes a lease; its keys are deleted."""
        return self.call("/v3/lease/revoke", {"ID": str(lease)})

    def lease_ttl(self, lease, keys=False):
        """The lease's remaining TTL in seconds (-1 when it no longer exists); with keys=True a pair
        (ttl, [key bytes])."""
        doc = self.call("/v3/lease/timetolive", {"ID": str(lease), "keys": keys})
        ttl = int(doc.get("TTL", "-1"))
        if keys:
            return ttl, [base64.b64decode(k) for k in doc.get("keys", [])]
        return ttl


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

def _quote(value):
    """Single-quoted for a POSIX shell."""
    return "'" + str(value).replace("'", "'\"'\"'") + "'"


def serve(args):
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rgw = etcd = None
    try:
        lines = []
        if not args.no_rgw:
            rgw = Rgw(keep_dir=args.keep_dir, memstore_bytes=args.memstore_mib << 20)
            rgw.__enter__()
            rgw.create_bucket(args.bucket)
            print(f"# Ceph RGW up in {rgw.timings['total']:.1f}s, directory {rgw.dir}", file=sys.stderr)
            for k, v in rgw.env().items():
                lines.append(f"export {k}={_quote(v)}")
            lines += [f"export FCWARM_TEST_S3_ENDPOINT={_quote(rgw.endpoint)}",
                      f"export FCWARM_TEST_S3_BUCKET={_quote(args.bucket)}",
                      f"export FCWARM_TEST_CEPH_CONF={_quote(rgw.conf)}"]
        if not args.no_etcd:
            etcd = Etcd(keep_dir=args.keep_dir)
            etcd.__enter__()
            print(f"# etcd up in {etcd.timings['start']:.1f}s, directory {etcd.dir}", file=sys.stderr)
            lines += [f"export FCWARM_TEST_ETCD_ENDPOINT={_quote(etcd.endpoint)}",
                      f"export FCWARM_TEST_COORDINATION={_quote(etcd.url)}"]
        flags = []
        if rgw:
            flags += [f"--snapshot-repository s3://{args.bucket}/snapshots", f"--s3-endpoint {rgw.endpoint}",
                      f"--s3-region {rgw.region}"]
        if etcd:
            flags.append(f"--coordination {etcd.url}")
        lines.append("# fcwarm-server " + " ".join(flags))
        if rgw:
            lines.append(f"# curl --aws-sigv4 aws:amz:{rgw.region}:s3 --user \"$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY\""
                         f" -H \"x-amz-content-sha256: {hashlib.sha256(b'').hexdigest()}\""
                         f" {rgw.endpoint}/{args.bucket}/")
        print("\n".join(lines), flush=True)
        print("# running; Ctrl-C stops and removes everything", file=sys.stderr, flush=True)
        while not stopping:
            for f in (rgw, etcd):
                if f is not None:
                    f._daemons.check_alive()
            time.sleep(0.5)
    finally:
        problems = []
        for f in (etcd, rgw):
            if f is not None:
                try:
                    f.close()
                except ClusterError as e:
                    problems.append(str(e))
                problems += f.leftovers()
        if problems:
            print("# left over: " + "; ".join(problems), file=sys.stderr)
            return 1
        print("# stopped; nothing left over", file=sys.stderr)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="start Ceph RGW and etcd on 127.0.0.1, print export lines, run until Ctrl-C")
    s.add_argument("--bucket", default="fcwarm-test", help="bucket to create (default fcwarm-test)")
    s.add_argument("--memstore-mib", type=int, default=2048, help="OSD capacity in MiB (RAM; default 2048)")
    s.add_argument("--no-rgw", action="store_true", help="etcd only")
    s.add_argument("--no-etcd", action="store_true", help="Ceph RGW only")
    s.add_argument("--keep-dir", action="store_true", help="keep the directories (logs) after stopping")
    args = ap.parse_args(argv)
    try:
        return serve(args)
    except ClusterError as e:
        print(f"cluster.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
