#!/usr/bin/python3
"""A local, offline container registry for tests, and the images it serves.

Nothing here touches the internet and nothing needs Docker on the host:

* Images are assembled in Python as OCI image layouts (gzip tar layers + config + manifest + index.json) from
  Debian's static busybox (`/bin/busybox`, package busybox-static). See `build_standard_images`:

  - ``library/nginx:alpine`` -- a STAND-IN for the quick start's ``nginx:alpine``, named like it so the quick
    start's commands work verbatim against the test registry. It is NOT nginx: busybox ``httpd`` serves, on
    port 80 (``$PORT`` overrides), a page that contains the container's hostname (``/www/index.html`` written
    by ``/fcwarm-web.sh`` at start). With one container per VM and host networking, that is the VM's hostname.
  - ``fcwarm/pull-bench:5m`` -- busybox plus a layer of 5 MiB of incompressible (seeded pseudo-random) data,
    for the pull benchmark (cold vs warm vs preloaded).
  - ``library/busybox:latest`` -- busybox itself (``sh`` as its command).

  Builds are deterministic: fixed mtimes and owners, gzip without a timestamp, seeded random data, so the
  same content yields the same digests.

* `Registry` runs Debian's ``docker-registry`` (Docker distribution 2.8) over plain HTTP inside a network
  namespace it creates: a veth pair links it to the root namespace, the host end gets ``.1`` and the registry
  ``.2`` of a /30 (default: a free ``10.214.<n>.0/30``), so the registry is ``http://10.214.<n>.2:5000`` and is
  reachable from the root namespace (and from VMs whose traffic the host forwards). Storage and config live
  in a temporary directory. Images are pushed with ``skopeo copy`` (Docker schema 2 manifests).

  As a Docker registry mirror: Docker consults ``registry-mirrors`` only for Docker Hub images
  (``nginx:alpine`` = ``docker.io/library/nginx:alpine``), asking the mirror for ``/v2/library/nginx/...``.
  A plain registry that already holds ``library/nginx:alpine`` therefore serves that pull as a mirror; no
  pull-through proxy (which would need the internet) is involved. A mirror given as ``http://...`` is spoken
  to over plain HTTP; listing the registry under ``insecure-registries`` too does no harm. NOTE: when every
  mirror fails, dockerd falls back to registry-1.docker.io -- tests must block egress beyond the test
  registry so that fallback never leaves the machine.

* The registry's access log (combined log format on its stdout) is parsed by `Registry.requests` /
  `Registry.pulls`, so a test can assert that a pull did (or did not) reach the registry.

* `Registry` is a context manager: on exit (also after failures) it stops the registry process and removes the
  namespace, the veth pair and the temporary directory.

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for ``ip netns``), ``ip`` (iproute2), ``docker-registry``, ``skopeo``
and ``busybox-static``. Every process is spawned with an argv list, never a shell string.

Command line (manual checks, benchmarks)::

    /usr/bin/python3 tests/support/registry.py build OUT_DIR       # OCI layouts only, no root needed
    /usr/bin/python3 tests/support/registry.py serve [--block 10.214.9.0/30]   # until Ctrl-C
"""

import argparse
import gzip
import hashlib
import io
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

BUSYBOX = "/bin/busybox"
REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = "/usr/bin/skopeo"
IP_BIN = shutil.which("ip") or "/usr/sbin/ip"
TC_BIN = shutil.which("tc") or "/usr/sbin/tc"
REGISTRY_PORT = 5000

# Fixed timestamp for every file, layer and config: 2024-01-01T00:00:00Z.
EPOCH = 1704067200
CREATED = "2024-01-01T00:00:00Z"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# The stand-in for nginx:alpine. sh stays PID 1 with a TERM trap so `docker stop` ends it at once (a bare
# httpd as PID 1 of a PID namespace would ignore SIGTERM and wait for the 10 s kill).
WEB_SCRIPT = """#!/bin/sh
# fcwarm test image: a STAND-IN for nginx:alpine (busybox httpd), not nginx.
port="${PORT:-80}"
mkdir -p /www
h="$(hostname)"
cat >/www/index.html <<EOF
<!DOCTYPE html>
<html><head><title>Welcome to nginx!</title></head>
<body><h1>Welcome to nginx!</h1>
<p>fcwarm test stand-in for nginx:alpine (busybox httpd)</p>
<p>hostname: $h</p>
</body></html>
EOF
echo "fcwarm-web: serving /www on port $port as $h"
httpd -f -v -p "$port" -h /www &
pid=$!
trap 'kill "$pid" 2>/dev/null; exit 0' TERM INT
wait "$pid"
"""


class RegistryError(RuntimeError):
    """A registry, namespace or image step failed; the message says which and includes the tool's output."""


# ---------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------

def _sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tarinfo(name, kind=tarfile.REGTYPE, mode=0o644, size=0, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


class Layer:
    """One layer: the uncompressed tar (its digest is the config's diff_id) and the gzip blob."""

    def __init__(self, entries):
        """entries: list of (path, kind, mode, data-or-linkname); kind is "dir", "file" or "symlink"."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, kind, mode, payload in sorted(entries, key=lambda e: e[0]):
                if kind == "dir":
                    tar.addfile(_tarinfo(path, tarfile.DIRTYPE, mode))
                elif kind == "symlink":
                    tar.addfile(_tarinfo(path, tarfile.SYMTYPE, 0o777, linkname=payload))
                elif kind == "file":
                    tar.addfile(_tarinfo(path, tarfile.REGTYPE, mode, len(payload)), io.BytesIO(payload))
                else:
                    raise ValueError(f"unknown layer entry kind {kind!r} for {path}")
        self.tar = raw.getvalue()
        gz = io.BytesIO()
        with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as f:
            f.write(self.tar)
        self.blob = gz.getvalue()
        self.diff_id = _sha256(self.tar)
        self.digest = _sha256(self.blob)


def busybox_layer(busybox=BUSYBOX):
    """/bin/busybox with a symlink per applet, and the usual empty directories."""
    if not os.path.exists(busybox):
        raise RegistryError(f"{busybox} is missing (install busybox-static)")
    with open(busybox, "rb") as f:
        binary = f.read()
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True,
                             timeout=30).stdout.split()
    entries = [(d, "dir", 0o755, None) for d in ("bin", "etc", "proc", "sys", "dev", "root", "var", "www")]
    entries.append(("tmp", "dir", 0o1777, None))
    entries.append(("bin/busybox", "file", 0o755, binary))
    entries.append(("etc/passwd", "file", 0o644, b"root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(("etc/group", "file", 0o644, b"root:x:0:\n"))
    for a in sorted(set(applets)):
        if a != "busybox" and re.fullmatch(r"[a-z0-9_.\[-]+", a):
            entries.append((f"bin/{a}", "symlink", 0o777, "busybox"))
    return Layer(entries)


def write_oci_layout(out_dir, layers, config, tag):
    """Writes an OCI image layout with one image tagged `tag` into out_dir (created). Returns the manifest
    digest. `config` is the image config's "config" object (Cmd, Env, ...)."""
    os.makedirs(os.path.join(out_dir, "blobs", "sha256"), exist_ok=True)

    def put(data):
        digest = _sha256(data)
        path = os.path.join(out_dir, "blobs", "sha256", digest.split(":", 1)[1])
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
        return {"digest": digest, "size": len(data)}

    image_config = {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": "fcwarm tests/support/registry.py"} for _ in layers],
    }
    config_blob = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **put(config_blob)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, **put(layer.blob)} for layer in layers],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    mdesc = put(manifest_blob)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, **mdesc,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    with open(os.path.join(out_dir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return mdesc["digest"]


class BuiltImage:
    """An OCI layout on disk: `layout` (directory), `tag` (its ref name), `repository` and `reference` (where
    it is pushed, e.g. "library/nginx" and "alpine"), `manifest_digest` (of the OCI manifest; the pushed Docker
    schema 2 manifest has another digest) and `size` (bytes of the compressed layers)."""

    def __init__(self, layout, tag, repository, reference, manifest_digest, size):
        self.layout = layout
        self.tag = tag
        self.repository = repository
        self.reference = reference
        self.manifest_digest = manifest_digest
        self.size = size

    @property
    def name(self):
        """repository:reference, e.g. "library/nginx:alpine"."""
        return f"{self.repository}:{self.reference}"

    def __repr__(self):
        return f"BuiltImage({self.name}, {self.layout})"


PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BENCH_BYTES = 5 * 1024 * 1024
BENCH_SEED = 20240101


def build_standard_images(out_dir, busybox=BUSYBOX):
    """Builds the three test images as OCI layouts under out_dir; returns {key: BuiltImage} with keys
    "nginx" (library/nginx:alpine stand-in), "bench" (fcwarm/pull-bench:5m) and "busybox"
    (library/busybox:latest)."""
    base = busybox_layer(busybox)
    images = {}

    web = Layer([("fcwarm-web.sh", "file", 0o755, WEB_SCRIPT.encode())])
    images["nginx"] = _finish(out_dir, "nginx", [base, web], "library/nginx", "alpine", {
        "Env": [PATH_ENV],
        "Cmd": ["/bin/sh", "/fcwarm-web.sh"],
        "ExposedPorts": {"80/tcp": {}},
        "WorkingDir": "/",
        "Labels": {"org.fcwarm.test-image": "stand-in for nginx:alpine: busybox httpd serving its hostname"},
    })

    data = random.Random(BENCH_SEED).randbytes(BENCH_BYTES)
    bench = Layer([("bench", "dir", 0o755, None), ("bench/random.bin", "file", 0o644, data)])
    images["bench"] = _finish(out_dir, "bench", [base, bench], "fcwarm/pull-bench", "5m", {
        "Env": [PATH_ENV],
        "Cmd": ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1; done"],
        "WorkingDir": "/",
        "Labels": {"org.fcwarm.test-image": "pull benchmark: busybox + 5 MiB of random data"},
    })

    images["busybox"] = _finish(out_dir, "busybox", [base], "library/busybox", "latest", {
        "Env": [PATH_ENV],
        "Cmd": ["sh"],
        "WorkingDir": "/",
    })
    return images


def _finish(out_dir, key, layers, repository, reference, config):
    layout = os.path.join(out_dir, key)
    digest = write_oci_layout(layout, layers, config, reference)
    return BuiltImage(layout, reference, repository, reference, digest, sum(len(x.blob) for x in layers))


def unpack_image(image, dest):
    """Extracts a BuiltImage's layers in order into dest (a root filesystem; our images have no whiteouts).
    Lets a test run an image's command without Docker (chroot). Returns the image config (dict)."""
    with open(os.path.join(image.layout, "index.json")) as f:
        mdigest = json.load(f)["manifests"][0]["digest"]

    def blob(digest):
        return os.path.join(image.layout, "blobs", "sha256", digest.split(":", 1)[1])

    with open(blob(mdigest)) as f:
        manifest = json.load(f)
    os.makedirs(dest, exist_ok=True)
    for layer in manifest["layers"]:
        with tarfile.open(blob(layer["digest"]), "r:gz") as tar:
            if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4 / 3.12
                tar.extractall(dest, filter="tar")
            else:  # our own, trusted tarballs
                tar.extractall(dest)
    with open(blob(manifest["config"]["digest"])) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------
# Access log
# ---------------------------------------------------------------------------------------------------------

# Combined log format, as gorilla/handlers writes it for the registry:
#   10.214.7.1 - - [01/Jan/2024:00:00:00 +0000] "GET /v2/library/nginx/manifests/alpine HTTP/1.1" 200 527 "" "docker/20.10"
_LOG_RE = re.compile(r'^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
                     r'(?P<status>\d{3}) (?P<size>\S+)(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?')
_V2_RE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/?]+)(?:\?.*)?$")


class Request:
    """One line of the access log: client, method, path, status, size, agent; for /v2/<name>/manifests|blobs/
    paths also `kind` ("manifest" or "blob"), `name` ("library/nginx") and `ref` (tag or digest)."""

    def __init__(self, m):
        self.client = m["client"]
        self.method = m["method"]
        self.path = m["path"]
        self.status = int(m["status"])
        self.size = 0 if m["size"] == "-" else int(m["size"])
        self.agent = m["agent"] or ""
        v2 = _V2_RE.match(self.path)
        self.kind = {"manifests": "manifest", "blobs": "blob"}[v2["kind"]] if v2 else None
        self.name = v2["name"] if v2 else None
        self.ref = v2["ref"] if v2 else None

    def __repr__(self):
        return f"{self.method} {self.path} -> {self.status} ({self.client}, {self.agent})"


def parse_access_log(text):
    """Parses access-log text into Request objects; lines that are not access-log lines are skipped."""
    out = []
    for line in text.splitlines():
        m = _LOG_RE.match(line)
        if m:
            out.append(Request(m))
    return out


# ---------------------------------------------------------------------------------------------------------
# Registry in a network namespace
# ---------------------------------------------------------------------------------------------------------

# Never through a proxy from the environment: the registry is a local address.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _without_proxies(env):
    return {k: v for k, v in env.items() if k.lower() not in _PROXY_VARS}


def _run(argv, timeout=60, check=True, env=None):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise RegistryError(f"{' '.join(argv)} exited with {p.returncode}: {(p.stderr or p.stdout).strip()}")
    return p


def _used_ipv4_networks():
    """Networks of every IPv4 address and route in the root namespace."""
    nets = []
    for argv in ([IP_BIN, "-4", "-o", "addr", "show"], [IP_BIN, "-4", "route", "show", "table", "all"]):
        for line in _run(argv, check=False).stdout.splitlines():
            for tok in line.split():
                if re.fullmatch(r"\d+\.\d+\.\d+\.\d+(/\d+)?", tok):
                    try:
                        nets.append(ipaddress.ip_network(tok, strict=False))
                    except ValueError:
                        pass
    return nets


def pick_free_block(prefix="10.214", tries=64):
    """A /30 `<prefix>.<n>.0/30` that overlaps no address or route of the root namespace."""
    used = _used_ipv4_networks()
    candidates = list(range(256))
    random.SystemRandom().shuffle(candidates)
    for n in candidates[:tries]:
        block = ipaddress.ip_network(f"{prefix}.{n}.0/30")
        if not any(block.overlaps(u) for u in used):
            return block
    raise RegistryError(f"no free /30 in {prefix}.0.0/16")


def required_tools():
    """Paths of the tools Registry needs that are missing (empty when all are there)."""
    return [p for p in (REGISTRY_BIN, SKOPEO_BIN, BUSYBOX, IP_BIN) if not os.path.exists(p)]


class Registry:
    """docker-registry over HTTP in its own network namespace (see the module docstring).

    Usage::

        with Registry() as reg:          # starts; images pushed with reg.push_standard_images()
            reg.push_standard_images()
            reg.url                      # "http://10.214.N.2:5000"
            reg.pulls("library/nginx")   # {"manifests": 0, "blobs": 0, "manifest_heads": 0}

    Thread safety: none; one test owns one Registry.
    """

    def __init__(self, block=None, workdir=None, port=REGISTRY_PORT, keep_dir=False):
        """block: an IPv4 /30 (or larger) network, e.g. "10.214.7.0/30": the host end gets its first host
        address, the registry the second. Default: a free 10.214.<n>.0/30. workdir: parent of the temporary
        directory (default: the system temp dir). keep_dir: leave the directory (logs) after stop."""
        self._block_arg = block
        self.port = port
        self._keep_dir = keep_dir
        self._workdir = workdir
        token = secrets.token_hex(4)
        self.netns = "fcwreg" + token       # 14 characters; names are at most 15
        self.veth_host = "fcwrh" + token     # root-namespace end
        self.veth_reg = "fcwrr" + token      # moved into the namespace
        self.dir = None
        self.proc = None
        self.block = None
        self.host_ip = None
        self.registry_ip = None
        self._created_ns = False
        self._created_veth = False
        self._pushed = {}
        self._image_dir = None

    # --- lifecycle ---

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def address(self):
        """"10.214.N.2:5000": what Docker calls the registry host (for insecure-registries, image names)."""
        return f"{self.registry_ip}:{self.port}"

    @property
    def url(self):
        """"http://10.214.N.2:5000": the registry (and mirror) URL."""
        return f"http://{self.address}"

    def start(self, timeout=30):
        """Creates the namespace and veth pair, writes the config and starts docker-registry; returns once
        GET /v2/ answers 200. Raises RegistryError (with the registry's log) otherwise; call stop() after a
        failure (the context manager does)."""
        missing = required_tools()
        if missing:
            raise RegistryError("missing: " + ", ".join(missing) +
                                " (scripts/setup.sh installs docker-registry, skopeo, busybox-static, iproute2)")
        if os.geteuid() != 0:
            raise RegistryError("a registry in a network namespace needs root")
        self.block = ipaddress.ip_network(self._block_arg) if self._block_arg else pick_free_block()
        if self.block.version != 4 or self.block.prefixlen > 30:
            raise RegistryError(f"block {self.block} must be an IPv4 network of /30 or larger")
        hosts = list(self.block.hosts())
        self.host_ip, self.registry_ip = str(hosts[0]), str(hosts[1])
        prefix = self.block.prefixlen
        self.dir = tempfile.mkdtemp(prefix="fcwarm-registry-", dir=self._workdir)
        os.makedirs(os.path.join(self.dir, "storage"))

        _run([IP_BIN, "netns", "add", self.netns])
        self._created_ns = True
        _run([IP_BIN, "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_reg])
        self._created_veth = True
        _run([IP_BIN, "link", "set", self.veth_reg, "netns", self.netns])
        _run([IP_BIN, "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.veth_host])
        _run([IP_BIN, "link", "set", self.veth_host, "up"])
        for argv in (["link", "set", "lo", "up"],
                     ["addr", "add", f"{self.registry_ip}/{prefix}", "dev", self.veth_reg],
                     ["link", "set", self.veth_reg, "up"],
                     # Answers reach VMs (other blocks) through the host when the host forwards.
                     ["route", "add", "default", "via", self.host_ip]):
            _run([IP_BIN, "-n", self.netns] + argv)

        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False},
                    "fields": {"service": "fcwarm-test-registry"}},
            "storage": {
                "filesystem": {"rootdirectory": os.path.join(self.dir, "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"{self.registry_ip}:{self.port}", "secret": secrets.token_hex(16)},
        }
        # YAML is a superset of JSON: the registry's YAML parser reads this as is.
        self.config_path = os.path.join(self.dir, "config.yml")
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)
        self.access_log_path = os.path.join(self.dir, "access.log")
        self.log_path = os.path.join(self.dir, "registry.log")
        with open(self.access_log_path, "wb") as out, open(self.log_path, "wb") as err:
            # `ip netns exec` execs the registry, so proc.pid is the registry itself.
            self.proc = subprocess.Popen(
                [IP_BIN, "netns", "exec", self.netns, REGISTRY_BIN, "serve", self.config_path],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready(timeout)

    def throttle(self, rate=None):
        """Limits what the registry sends (a token bucket on its end of the link) to `rate`, in tc's syntax
        (e.g. "16mbit"), so that a pull lasts long enough to be watched; None removes the limit. The limit
        goes away with the namespace at stop()."""
        if self.netns is None or not self._created_ns:
            raise RegistryError("throttle: the registry is not started")
        if rate is None:
            _run([TC_BIN, "-n", self.netns, "qdisc", "del", "dev", self.veth_reg, "root"], check=False)
            return
        if not re.fullmatch(r"[0-9]+(bit|kbit|mbit|gbit)", rate):
            raise RegistryError(f"throttle: rate {rate!r} is not like 16mbit")
        _run([TC_BIN, "-n", self.netns, "qdisc", "replace", "dev", self.veth_reg, "root", "tbf", "rate", rate,
              "burst", "64kb", "latency", "2s"])

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RegistryError(f"docker-registry exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                status, _, _ = self.http("GET", "/v2/", timeout=2)
                if status == 200:
                    return
                last = f"GET /v2/ answered {status}"
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise RegistryError(f"docker-registry at {self.url} did not answer within {timeout}s ({last}):\n"
                            f"{self.read_log()}")

    def stop(self):
        """Stops the registry and removes the namespace, the veth pair and the directory. Idempotent; tries
        every step even when one fails, then raises RegistryError naming what could not be removed."""
        problems = []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
        if self._created_veth:
            # Deleting either end removes both; the namespace's deletion below would too.
            if os.path.exists(f"/sys/class/net/{self.veth_host}"):
                p = _run([IP_BIN, "link", "del", self.veth_host], check=False)
                if p.returncode != 0:
                    problems.append(f"veth {self.veth_host}: {p.stderr.strip()}")
            self._created_veth = False
        if self._created_ns:
            p = _run([IP_BIN, "netns", "del", self.netns], check=False)
            if p.returncode != 0 and os.path.exists(f"/run/netns/{self.netns}"):
                problems.append(f"netns {self.netns}: {p.stderr.strip()}")
            self._created_ns = False
        if self._image_dir is not None:
            shutil.rmtree(self._image_dir, ignore_errors=True)
            self._image_dir = None
        if self.dir is not None and not self._keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if problems:
            raise RegistryError("cleanup incomplete: " + "; ".join(problems))

    def leftovers(self):
        """What of this registry still exists (namespace, veth, process, directory); empty after stop()."""
        out = []
        if os.path.exists(f"/run/netns/{self.netns}"):
            out.append(f"netns {self.netns}")
        for dev in (self.veth_host, self.veth_reg):
            if os.path.exists(f"/sys/class/net/{dev}"):
                out.append(f"link {dev}")
        if self.proc is not None and self.proc.poll() is None:
            out.append(f"process {self.proc.pid}")
        if self.dir is not None and os.path.exists(self.dir) and not self._keep_dir:
            out.append(f"directory {self.dir}")
        return out

    def read_log(self):
        """The registry's own log (stderr)."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-8000:]
        except (OSError, AttributeError):
            return ""

    # --- HTTP from the root namespace ---

    def http(self, method, path, timeout=10, headers=None):
        """One request to the registry from the root namespace: (status, headers dict, body bytes)."""
        req = urllib.request.Request(self.url + path, method=method, headers=headers or {})
        try:
            with _DIRECT.open(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def catalog(self):
        """Repository names (GET /v2/_catalog)."""
        status, _, body = self.http("GET", "/v2/_catalog")
        if status != 200:
            raise RegistryError(f"GET /v2/_catalog answered {status}: {body[:200]!r}")
        return json.loads(body)["repositories"]

    # --- pushing ---

    def push(self, image, repository=None, reference=None, timeout=300):
        """Pushes a BuiltImage (OCI layout) as <repository>:<reference> (default: the image's own) with
        skopeo, converting to Docker schema 2. Returns "ADDRESS/repository:reference"."""
        repository = repository or image.repository
        reference = reference or image.reference
        dest = f"{self.address}/{repository}:{reference}"
        policy = os.path.join(self.dir, "policy.json")
        if not os.path.exists(policy):
            with open(policy, "w") as f:
                json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        env = dict(_without_proxies(os.environ), HOME=self.dir)
        _run([SKOPEO_BIN, "--policy", policy, "copy", "--quiet", "--format", "v2s2", "--dest-tls-verify=false",
              f"oci:{image.layout}:{image.tag}", f"docker://{dest}"], timeout=timeout, env=env)
        self._pushed[f"{repository}:{reference}"] = image
        return dest

    def push_standard_images(self):
        """Builds the standard images (build_standard_images) in the registry's directory and pushes them.
        Returns {key: BuiltImage} ("nginx", "bench", "busybox")."""
        self._image_dir = os.path.join(self.dir, "images")
        images = build_standard_images(self._image_dir)
        for img in images.values():
            self.push(img)
        return images

    # --- the access log ---

    def requests(self, since=0):
        """Access-log entries (Request), from entry index `since` on (see mark())."""
        try:
            with open(self.access_log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return parse_access_log(text)[since:]

    def mark(self):
        """The number of access-log entries so far; pass it as `since` to count only later requests."""
        return len(self.requests())

    def pulls(self, name=None, since=0):
        """Successful requests of a pull from `since` on, for repository `name` (e.g. "library/nginx") or all:
        {"manifests": GETs of manifests, "blobs": GETs of blobs, "manifest_heads": HEADs of manifests}.
        dockerd 20.10 pulls by HEAD manifests/<tag>, GET manifests/<digest>, then GET of every missing blob; a
        pull of an image it already has may stop after the HEAD. So "no pull at all" is all three zero (or no
        `requests(since)` for the name)."""
        counts = {"manifests": 0, "blobs": 0, "manifest_heads": 0}
        for r in self.requests(since):
            if r.kind is None or r.status >= 400 or (name is not None and r.name != name):
                continue
            if r.method == "GET":
                counts["manifests" if r.kind == "manifest" else "blobs"] += 1
            elif r.method == "HEAD" and r.kind == "manifest":
                counts["manifest_heads"] += 1
        return counts


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="fcwarm's offline test registry and images")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the standard images as OCI layouts")
    b.add_argument("out_dir")
    s = sub.add_parser("serve", help="run a registry with the standard images until interrupted")
    s.add_argument("--block", help="IPv4 /30, e.g. 10.214.9.0/30 (default: a free 10.214.<n>.0/30)")
    s.add_argument("--keep-dir", action="store_true", help="leave the registry's directory (logs) at exit")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        for key, img in build_standard_images(args.out_dir).items():
            print(f"{key}\t{img.name}\t{img.layout}\t{img.manifest_digest}\t{img.size}")
        return 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with Registry(block=args.block, keep_dir=args.keep_dir) as reg:
        for img in reg.push_standard_images().values():
            print(f"pushed {reg.address}/{img.name}", flush=True)
        print(f"registry {reg.url} (netns {reg.netns}, host end {reg.veth_host} {reg.host_ip}); "
              f"dir {reg.dir}; Ctrl-C stops", flush=True)
        try:
            while not stop:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        for r in reg.requests():
            print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
