"""Keep-alive, pipelining (responses in order), HTTP/1.0, 200 concurrent connections, graceful shutdown."""

import json
import signal
import socket
import threading
import time

from conftest import create_image, parse_responses


def test_keep_alive_reuses_one_connection(server):
    c = server.conn()
    try:
        for _ in range(20):
            st, h, _ = server.get("/healthz", conn=c)
            assert st == 200 and h["connection"] == "keep-alive"
        c.request("GET", "/v1/images")
        r = c.getresponse()
        r.read()
        assert r.status == 200
    finally:
        c.close()


def test_pipelined_requests_answered_in_order(server):
    img = create_image(server, "pipe")
    reqs = []
    for i in range(30):
        path = ["/healthz", "/v1/images", f"/v1/images/{img['id']}", "/v1/nope", "/v1/images/..",
                "/v1/runtime-snapshots"][i % 6]
        reqs.append(f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Request-Id: req-{i}\r\n\r\n".encode())
    body = json.dumps({"name": "pipe-2", "backend": "none", "kernel_path": img["kernel_path"]}).encode()
    reqs.append(b"POST /v1/images HTTP/1.1\r\nHost: t\r\nX-Request-Id: req-30\r\nContent-Length: %d\r\n\r\n%s" %
                (len(body), body))
    reqs.append(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: req-31\r\nConnection: close\r\n\r\n")
    data = server.raw(b"".join(reqs), timeout=10)  # one write, all requests
    resps = parse_responses(data)
    assert [r[1]["x-request-id"] for r in resps] == [f"req-{i}" for i in range(32)]
    expected = [200, 200, 200, 404, 400, 200] * 5
    assert [r[0] for r in resps[:30]] == expected
    assert resps[30][0] == 201
    assert resps[31][0] == 200 and resps[31][1]["connection"] == "close"


def test_pipelined_requests_split_across_writes(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    payload = b"".join(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: s-%d\r\n\r\n" % i for i in range(10))
    payload += b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
    for i in range(0, len(payload), 7):  # byte dribbles that split request lines and headers
        s.sendall(payload[i:i + 7])
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    resps = parse_responses(data)
    assert len(resps) == 11 and all(r[0] == 200 for r in resps)
    assert [r[1]["x-request-id"] for r in resps[:10]] == [f"s-{i}" for i in range(10)]


def test_http10_closes_unless_keep_alive(server):
    data = server.raw(b"GET /healthz HTTP/1.0\r\n\r\n")
    resps = parse_responses(data)
    assert resps[0][0] == 200 and resps[0][1]["connection"] == "close"
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    time.sleep(0.2)
    first = s.recv(65536)
    assert b"Connection: keep-alive" in first
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    time.sleep(0.2)
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    s.close()


def test_half_closed_client_gets_its_answers(server):
    data = server.raw(b"GET /healthz HTTP/1.1\r\n\r\nGET /v1/version HTTP/1.1\r\n\r\n", shut_write=True)
    assert [r[0] for r in parse_responses(data)] == [200, 200]


def test_expect_100_continue(server):
    body = json.dumps({"name": "expect-img", "backend": "none", "kernel_path": "/nonexistent"}).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(b"POST /v1/images HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue")
    s.sendall(body)
    time.sleep(0.2)
    assert s.recv(65536).startswith(b"HTTP/1.1 400")
    s.close()


def test_200_concurrent_connections(server):
    n = 200
    results = [None] * n
    barrier = threading.Barrier(n)

    def worker(i):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            barrier.wait(timeout=30)
            s.sendall(b"GET /v1/runtime-snapshots HTTP/1.1\r\nHost: t\r\nX-Request-Id: c-%d\r\n"
                      b"Connection: close\r\n\r\n" % i)
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
            s.close()
            results[i] = parse_responses(data)
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, r in enumerate(results):
        assert isinstance(r, list) and len(r) == 1, (i, r)
        assert r[0][0] == 200 and r[0][1]["x-request-id"] == f"c-{i}"


def test_graceful_shutdown_finishes_in_flight_requests(start_server):
    s = start_server("--none-delay", "1.5")
    img = create_image(s, "slow")
    # A request that takes ~1.5 s inside the library (the 'none' backend simulates a slow VM start).
    results = {}

    def slow():
        results["slow"] = s.post("/v1/containers", {"name": "inflight", "runtime_image": img["id"], "wait": True})

    t = threading.Thread(target=slow)
    t.start()
    idle = socket.create_connection(("127.0.0.1", s.port), timeout=5)  # an idle keep-alive connection
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    # The listener is closed: new connections are refused.
    try:
        c = socket.create_connection(("127.0.0.1", s.port), timeout=2)
        c.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        refused = c.recv(100) == b""
        c.close()
    except OSError:
        refused = True
    assert refused
    assert idle.recv(100) == b""  # idle connections are closed at once
    idle.close()
    t.join(20)
    st, h, doc = results["slow"]
    assert st == 503 and "none" in doc["error"]["message"]  # the in-flight request got its real answer
    assert h["connection"] == "close"
    assert s.wait_exit(20) == 0
    log = s.read_log()
    assert "event=shutdown_begin" in log and "event=stopped" in log


def test_sigint_also_shuts_down(start_server):
    s = start_server()
    s.proc.send_signal(signal.SIGINT)
    assert s.wait_exit(20) == 0
