"""Limits: body → 413, headers → 431, URL → 414, slow clients → 408, idle timeout, connection cap → 503."""

import socket
import time

from conftest import parse_responses


def test_body_limit_413(start_server):
    s = start_server("--max-body-bytes", "1024")
    st, h, doc = s.request("POST", "/v1/images", raw_body=b"{" + b" " * 2000 + b"}",
                           headers={"Content-Type": "application/json"})
    assert st == 413 and doc["error"]["code"] == "payload_too_large"
    assert h["connection"] == "close"
    # chunked bodies are counted as they arrive
    chunk = b"x" * 600
    raw = (b"POST /v1/images HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
           b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3 + b"0\r\n\r\n")
    resps = parse_responses(s.raw(raw))
    assert [r[0] for r in resps] == [413]
    # a body within the limit is fine
    st, _, doc = s.request("POST", "/v1/images", raw_body=b"{}")
    assert st == 400 and doc["error"]["message"].startswith("name:")


def test_large_body_is_answered_before_it_is_sent(start_server):
    # The client sends only headers announcing 10 MB; the server answers 413 without waiting for the body.
    s = start_server("--max-body-bytes", "1024")
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    sock.sendall(b"POST /v1/images HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
    data = sock.recv(65536)
    sock.close()
    assert data.startswith(b"HTTP/1.1 413 ")


def test_header_limit_431(start_server):
    s = start_server("--max-header-bytes", "2048")
    st, _, doc = s.get("/healthz", headers={"X-Big": "a" * 4000})
    assert st == 431 and doc["error"]["code"] == "request_header_fields_too_large"
    many = "".join(f"X-H{i}: v\r\n" for i in range(150)).encode()
    resps = parse_responses(s.raw(b"GET /healthz HTTP/1.1\r\n" + many + b"\r\n"))
    assert [r[0] for r in resps] == [431]
    st, _, _ = s.get("/healthz", headers={"X-Small": "a" * 100})
    assert st == 200


def test_url_limit_414(start_server):
    s = start_server("--max-url-bytes", "512")
    st, _, doc = s.get("/v1/images?" + "a" * 1000)
    assert st == 414 and doc["error"]["code"] == "uri_too_long"
    st, _, _ = s.get("/v1/images/" + "a" * 100)
    assert st == 400


def test_slow_client_408(start_server):
    s = start_server("--request-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    t0 = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # never finishes the headers
    data = b""
    while True:
        b = sock.recv(65536)
        if not b:
            break
        data += b
    elapsed = time.monotonic() - t0
    sock.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert 0.8 < elapsed < 5


def test_slowloris_trickle_still_times_out(start_server):
    # Bytes keep arriving, but the request must be complete within the deadline measured from its start.
    s = start_server("--request-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    t0 = time.monotonic()
    got = b""
    try:
        for i in range(40):
            sock.sendall(b"X-A: b\r\n")
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                got += sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if got:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.close()
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert time.monotonic() - t0 < 3


def test_idle_timeout_closes(start_server):
    s = start_server("--idle-timeout", "0.5")
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.1)
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ")
    t0 = time.monotonic()
    assert sock.recv(65536) == b""  # closed by the server
    assert time.monotonic() - t0 < 3
    sock.close()


def test_connection_cap_503(start_server):
    s = start_server("--max-connections", "3")
    held = [socket.create_connection(("127.0.0.1", s.port), timeout=5) for _ in range(3)]
    time.sleep(0.2)
    data = s.raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 503 "), data
    for h in held:
        h.close()
    time.sleep(0.2)
    st, _, _ = s.get("/healthz")
    assert st == 200
    _, _, text = s.get("/metrics")
    assert "fcwarm_http_connections_rejected_total 1" in text


def test_config_file(start_server, tmp_path):
    cfg = tmp_path / "server.toml"
    cfg.write_text('max-body-bytes = 100\nmax-url-bytes = 300\nbackend = ["none"]\n')
    s = start_server("--config", str(cfg))
    st, _, doc = s.request("POST", "/v1/images", raw_body=b"{" + b" " * 200 + b"}")
    assert st == 413, doc
    assert s.get("/v1/images?" + "a" * 400)[0] == 414


def test_bad_flags_exit_2(tmp_path):
    from conftest import Server
    for args in (["--bind", "nonsense"], ["--backend", "vmware"], ["--max-connections", "0"]):
        s = Server(*args, expect_start=False)
        try:
            assert s.wait_exit(15) != 0, args
        finally:
            s.close()


def test_client_that_never_reads_is_cut_off(start_server):
    # Pipelined requests whose responses are never read: the server stops dispatching once ~1 MiB is unsent and
    # closes the connection when no write progress happens for the idle timeout.
    s = start_server("--idle-timeout", "1")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", s.port))
    req = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
    sent = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 15:
            sock.setblocking(False)
            try:
                sent += sock.send(req * 64)
            except BlockingIOError:
                time.sleep(0.05)
            finally:
                sock.setblocking(True)
            _, _, text = s.get("/metrics")
            if "fcwarm_http_timeouts_total{kind=\"idle\"} 1" in text:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.close()
    _, _, text = s.get("/metrics")
    assert "fcwarm_http_timeouts_total{kind=\"idle\"} 1" in text
    assert s.get("/healthz")[0] == 200


def test_bad_network_options_stop_the_server_naming_them(tmp_path):
    from conftest import Server
    for args, needle in ((["--egress", "sometimes"], "egress"),
                         (["--dns", "resolver.local"], "dns[0]"),
                         (["--registry-mirror", "ftp://10.0.0.1"], "registry_mirrors[0]"),
                         (["--insecure-registry", "a b"], "insecure_registries[0]")):
        s = Server(*args, expect_start=False)
        try:
            assert s.wait_exit(15) != 0, args
            assert needle in s.read_log(), (args, s.read_log())
        finally:
            s.close()
