"""Health, version, metrics, routing errors, request ids, events."""

import re

from conftest import Server, assert_error, create_image


def test_healthz(server):
    st, h, doc = server.get("/healthz")
    assert st == 200 and doc == {"status": "ok"}
    assert h["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{16}", h["x-request-id"])


def test_request_id_is_echoed_when_sane(server):
    _, h, _ = server.get("/healthz", headers={"X-Request-Id": "abc-123.x"})
    assert h["x-request-id"] == "abc-123.x"
    _, h, _ = server.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert h["x-request-id"] != "bad id with spaces"


def test_version(server):
    st, _, doc = server.get("/v1/version")
    assert st == 200
    assert re.fullmatch(r"\d+\.\d+\.\d+", doc["version"])
    assert doc["api"] == "v1"
    assert doc["backends"] == ["none"]
    # The deadlines clients derive their own from: defaults 60 s wait-for-creating + warm and cold paths.
    limits = doc["limits"]
    assert limits["provision_ms"] >= 60000 + 120000 + 300000
    assert limits["container_start_ms"] > limits["provision_ms"]


def test_version_limits_follow_the_options(start_server):
    s = start_server("--wait-for-creating", "1")
    st, _, doc = s.get("/v1/version")
    assert st == 200
    default_server = start_server()
    st, _, ref = default_server.get("/v1/version")
    assert ref["limits"]["provision_ms"] - doc["limits"]["provision_ms"] == 59000


def test_unknown_route_404(server):
    assert_error(server.get("/v1/nope"), 404, "not_found")
    assert_error(server.get("/"), 404, "not_found")


def test_wrong_method_405_with_allow(server):
    st, h, doc = server.request("PUT", "/v1/images")
    assert st == 405 and doc["error"]["code"] == "method_not_allowed"
    assert h["allow"] == "GET, POST"
    st, h, _ = server.request("PATCH", "/v1/runtime-snapshots/0b6c0c8e-54b3-4d1e-9f6a-3f0a4c7d2e11")
    assert st == 405 and h["allow"] == "GET, DELETE"


def test_unknown_query_parameter_rejected(server):
    msg = assert_error(server.get("/v1/images?foo=1"), 400, "invalid_argument", "foo")
    assert "unknown query parameter" in msg
    assert_error(server.get("/v1/runtime-snapshots?state=ready&state=ready"), 400, "invalid_argument", "state")


def test_metrics_text(server):
    create_image(server, "metrics-img")
    st, h, text = server.get("/metrics")
    assert st == 200
    assert h["content-type"].startswith("text/plain; version=0.0.4")
    for name in ("fcwarm_boots_total{outcome=\"warm\"}", "fcwarm_fallbacks_total{reason=\"no_snapshot\"}",
                 "fcwarm_restore_duration_seconds_bucket{le=\"+Inf\"}", "fcwarm_snapshot_builds_total{outcome=\"failed\"}",
                 "fcwarm_runtime_snapshots{state=\"ready\"}", "fcwarm_http_responses_total{code=\"200\"}"):
        assert name in text, name
    # Every sample line is "name{labels} value".
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[a-z_]+(\{[^}]*\})? [-+0-9.eE]+|[a-z_]+(\{[^}]*\})? \+Inf", line), line


def test_events_paging(server):
    img = create_image(server, "events-img")
    for _ in range(3):
        server.post("/v1/runtime-snapshots", {"runtime_image_id": img["id"]})
    # builds fail at once with backend none; each failure is an event
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st, _, doc = server.get("/v1/events?kind=build&runtime_image_id=" + img["id"])
        if len(doc["items"]) >= 2:
            break
        time.sleep(0.05)
    st, _, page1 = server.get("/v1/events?limit=1")
    assert st == 200 and len(page1["items"]) == 1
    first = page1["items"][0]
    assert set(first) >= {"id", "time", "kind", "runtime_image_id", "snapshot_id", "vm_id", "outcome", "reason",
                          "timings", "message"}
    st, _, page2 = server.get(f"/v1/events?limit=1&after={page1['next_after']}")
    assert st == 200 and page2["items"][0]["id"] > first["id"]
    assert_error(server.get("/v1/events?limit=0"), 400, "invalid_argument", "limit")
    assert_error(server.get("/v1/events?limit=abc"), 400, "invalid_argument", "limit")
    assert_error(server.get("/v1/events?after=-1"), 400, "invalid_argument", "after")
    assert_error(server.get("/v1/events?kind=bogus"), 400, "invalid_argument", "kind")
    assert_error(server.get("/v1/events?snapshot_id=../x"), 400, "invalid_argument", "snapshot_id")


def test_bad_address_pool_refused_naming_the_flag():
    # Malformed, host bits set, too small for a /30 per VM, a bare address: exit 2, the log names the flag.
    for pool in ("nonsense", "10.213.0.1/16", "10.213.0.0/31", "10.213.0.0", "10.213.0.0/x"):
        s = Server("--address-pool", pool, expect_start=False)
        try:
            assert s.wait_exit(15) == 2, pool
            assert "--address-pool" in s.read_log(), pool
        finally:
            s.close()
