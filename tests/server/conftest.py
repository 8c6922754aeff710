"""Fixtures: start the real fcwarm-server on an ephemeral loopback port and talk HTTP to it."""

import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

SERVER_BIN = os.environ.get("FCWARM_SERVER_BIN", "")
TOKEN = "s3cret-token-0123456789abcdef"


def _host_address():
    """The IPv4 address of the interface that holds this host's default route (it stays while tests add and
    remove their own links), or None. Only reads the configuration; sends nothing."""
    try:
        route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True,
                               timeout=10).stdout.split()
        if "dev" not in route:
            return None
        dev = route[route.index("dev") + 1]
        addrs = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", dev, "scope", "global"],
                               capture_output=True, text=True, timeout=10).stdout.split()
    except OSError:
        return None
    return addrs[addrs.index("inet") + 1].split("/")[0] if "inet" in addrs else None


HOST_ADDRESS = _host_address()


class Server:
    """One fcwarm-server process. `stop()` sends SIGTERM and waits; the fixture kills it if still alive."""

    def __init__(self, *extra, data_dir=None, expect_start=True, keep_vms=False, env=None):
        if not SERVER_BIN or not os.path.exists(SERVER_BIN):
            pytest.skip("FCWARM_SERVER_BIN is not set to the fcwarm-server binary")
        self.tmp = tempfile.TemporaryDirectory(prefix="fcwarm-server-test-")
        self.dir = self.tmp.name
        self.data_dir = data_dir or os.path.join(self.dir, "data")
        self.port_file = os.path.join(self.dir, "port")
        self.log_path = os.path.join(self.dir, "server.log")
        self.args = [SERVER_BIN, "--data-dir", self.data_dir, "--port-file", self.port_file, "--log-level", "debug"]
        if "--bind" not in extra:
            self.args += ["--bind", "127.0.0.1:0"]
        if "--backend" not in extra:
            self.args += ["--backend", "none"]
        # Tests never let guests reach beyond this machine: no egress unless a test asks for one.
        if not any(a == "--egress" or a.startswith("--egress=") for a in extra):
            self.args += ["--egress", "none"]
        # Resolvers are reachable under every egress policy; the host's would forward a guest's queries (e.g.
        # dockerd's fallback to Docker Hub) beyond this machine. One of this host's own addresses instead: a
        # guest never reaches the host's services, so its queries are rejected at once.
        if not any(a == "--dns" or a.startswith("--dns=") for a in extra) and HOST_ADDRESS:
            self.args += ["--dns", HOST_ADDRESS]
        # Tests stop what they started: VMs end with a graceful stop unless a test is about live restore
        # (keep_vms=True; close() then stops what is left).
        self.keep_vms = keep_vms
        if not keep_vms and "--stop-vms-on-exit" not in extra:
            self.args.append("--stop-vms-on-exit")
        self.args += list(extra)
        self.log = open(self.log_path, "wb")
        self.env = env
        self.port = None
        self._client_timeout = None
        self._start(expect_start)

    def _start(self, expect_start=True):
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        self.port = None
        if expect_start:
            self._wait_port()

    def kill(self):
        """SIGKILL, as a crash or an OOM kill would end it."""
        self.proc.kill()
        self.proc.wait()

    def restart(self):
        """Starts the server again with the same arguments and data directory (after stop() or kill())."""
        assert self.proc.poll() is not None, "the server still runs"
        self._start()

    def vmm_pids(self):
        """Pids of the VMM processes of this server's VMs (their command lines name its data directory)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith((b"qemu-system-x86_64", b"firecracker")) and \
                    any(self.data_dir.encode() in a for a in args):
                pids.append(int(entry))
        return pids

    def _wait_port(self):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fcwarm-server exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                with open(self.port_file) as f:
                    text = f.read().strip()
                if text:
                    self.port = int(text)
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise RuntimeError("fcwarm-server did not write its port file:\n" + self.read_log())

    def read_log(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_exit(self, timeout=20):
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.vmm_pids():
            # VMs a live-restore test (or a killed server) left: one more start adopts them and a graceful stop
            # with --stop-vms-on-exit ends them and releases their networking.
            if "--stop-vms-on-exit" not in self.args:
                self.args.append("--stop-vms-on-exit")
            self.env = {k: v for k, v in (self.env or os.environ).items() if k != "FCWARM_FAILPOINTS"}
            try:
                self._start()
                self.stop(timeout=60)
            except Exception:  # best effort: what is left is killed below
                pass
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
                for pid in self.vmm_pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.log.close()
        self.tmp.cleanup()

    # ---- HTTP helpers ----------------------------------------------------------------------------------

    def client_timeout(self):
        """Seconds a client waits for any answer: derived from the server's own deadlines (GET /v1/version
        .limits.container_start_ms, the longest a `"wait": true` create can take before the server answers with
        its own error), so a slow machine ends in the server's clear error, never in a socket timeout."""
        if self._client_timeout is None:
            hdrs = {}
            if "--auth-token" in self.args:
                hdrs["Authorization"] = "Bearer " + self.args[self.args.index("--auth-token") + 1]
            elif "--auth-token-file" in self.args:
                with open(self.args[self.args.index("--auth-token-file") + 1]) as f:
                    hdrs["Authorization"] = "Bearer " + f.read().strip()
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                c.request("GET", "/v1/version", headers=hdrs)
                r = c.getresponse()
                doc = json.loads(r.read().decode())
            finally:
                c.close()
            assert r.status == 200, doc
            self._client_timeout = doc["limits"]["container_start_ms"] / 1000 + 30
        return self._client_timeout

    def conn(self, timeout=None):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or self.client_timeout())

    def request(self, method, path, body=None, headers=None, raw_body=None, conn=None):
        """Returns (status, headers dict (lower-case names), parsed JSON or text)."""
        own = conn is None
        c = conn or self.conn()
        hdrs = dict(headers or {})
        data = raw_body
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            c.request(method, path, body=data, headers=hdrs)
            r = c.getresponse()
            text = r.read().decode()
            h = {k.lower(): v for k, v in r.getheaders()}
            if h.get("content-type", "").startswith("application/json"):
                return r.status, h, json.loads(text)
            return r.status, h, text
        finally:
            if own:
                c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def raw(self, data, timeout=10, shut_write=False):
        """Sends raw bytes on a fresh socket and returns everything received until the server closes or
        `timeout` passes."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(data)
            if shut_write:
                s.shutdown(socket.SHUT_WR)
            chunks = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    b = s.recv(65536)
                except socket.timeout:
                    break
                except ConnectionResetError:
                    break
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks)
        finally:
            s.close()


def make_kernel(server, name="vmlinux"):
    """A regular file to use as a kernel path (the image registry only checks that it exists)."""
    path = os.path.join(server.dir, name)
    with open(path, "wb") as f:
        f.write(b"\x7fELF not really a kernel")
    return path


def create_image(server, name="img", **fields):
    body = {"name": name, "backend": "none", "kernel_path": fields.pop("kernel_path", None) or make_kernel(server)}
    body.update(fields)
    status, _, doc = server.post("/v1/images", body)
    assert status == 201, doc
    return doc["item"]


def poll_item(server, path, leave_state, timeout, interval=0.05):
    """GETs `path` until its item's state is no longer `leave_state` or `timeout` seconds passed; returns the
    item (the caller asserts the state it expects)."""
    deadline = time.monotonic() + timeout
    while True:
        st, _, doc = server.get(path)
        assert st == 200, doc
        if doc["item"]["state"] != leave_state or time.monotonic() > deadline:
            return doc["item"]
        time.sleep(interval)


def assert_error(resp, status, code, field=None):
    st, _, doc = resp
    assert st == status, doc
    assert isinstance(doc, dict) and "error" in doc, doc
    assert doc["error"]["code"] == code, doc
    if field is not None:
        assert doc["error"]["message"].startswith(field + ":") or f"{field}:" in doc["error"]["message"], doc
    return doc["error"]["message"]


def parse_responses(data):
    """Splits a byte stream holding HTTP/1.1 responses with Content-Length into (status, headers, body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()
    s.close()


@pytest.fixture
def start_server():
    started = []

    def start(*extra, **kw):
        s = Server(*extra, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
        s.close()


@pytest.fixture(scope="session", autouse=True)
def _restore_ip_forward():
    """A server with egress rules turns IPv4 forwarding on (and never off, like Docker); the tests put back
    what they found."""
    path = "/proc/sys/net/ipv4/ip_forward"
    try:
        with open(path) as f:
            before = f.read()
    except OSError:
        before = None
    yield
    if before is not None:
        try:
            with open(path, "w") as f:
                f.write(before)
        except OSError:
            pass
