"""Hostile request targets: '..', '/', '%2e%2e', '%2F', NUL, bad escapes, non-UUID ids → 400 naming the field."""

import pytest

from conftest import assert_error, parse_responses

ROUTES = ["/v1/images/{}", "/v1/runtime-snapshots/{}", "/v1/containers/{}"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("bad", ["..", "%2e%2e", "%2E%2E", ".", "%2e"])
def test_dot_segments(server, route, bad):
    msg = assert_error(server.get(route.format(bad)), 400, "invalid_argument", "path")
    assert "'..'" in msg


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("bad", ["..%2f..%2fetc", "a%2Fb", "%2f", "%2e%2e%2f%2e%2e"])
def test_encoded_slash(server, route, bad):
    msg = assert_error(server.get(route.format(bad)), 400, "invalid_argument", "path")
    assert "%2F" in msg


@pytest.mark.parametrize("route", ROUTES)
def test_encoded_nul(server, route):
    msg = assert_error(server.get(route.format("0b6c0c8e-54b3-4d1e-9f6a-3f0a4c7d2e11%00")), 400, "invalid_argument",
                       "path")
    assert "NUL" in msg


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("bad", ["abc", "0B6C0C8E-54B3-4D1E-9F6A-3F0A4C7D2E11", "0b6c0c8e-54b3-1d1e-9f6a-3f0a4c7d2e11",
                                 "%41", "x" * 300, "0b6c0c8e-54b3-4d1e-9f6a-3f0a4c7d2e1%31%31"])
def test_invalid_ids_name_the_field(server, route, bad):
    msg = assert_error(server.get(route.format(bad)), 400, "invalid_argument", "id")
    assert "not a valid id" in msg


def test_traversal_beyond_route(server):
    assert_error(server.get("/v1/images/../../etc/passwd"), 400, "invalid_argument", "path")
    assert_error(server.get("/v1//images"), 400, "invalid_argument", "path")
    assert_error(server.delete("/v1/images/%2e%2e/%2e%2e"), 400, "invalid_argument", "path")


def test_bad_percent_escapes(server):
    assert_error(server.get("/v1/images/%zz"), 400, "invalid_argument", "path")
    assert_error(server.get("/v1/images/%4"), 400, "invalid_argument", "path")
    assert_error(server.get("/v1/runtime-snapshots?state=%"), 400, "invalid_argument", "query")
    assert_error(server.get("/v1/runtime-snapshots?state=%00"), 400, "invalid_argument", "query")


def test_raw_nul_and_garbage_request_lines(server):
    for raw in (b"GET /v1/images/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /v1/images HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
                b"GET /v1/images HTTP/9.9\r\n\r\n",
                b"GET relative HTTP/1.1\r\n\r\n",
                b"GET /v1/images HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
        data = server.raw(raw, timeout=5)
        resps = parse_responses(data)
        assert len(resps) == 1, (raw, data)
        st, h, _ = resps[0]
        assert 400 <= st < 600 and st != 404, (raw, st)
        assert h["connection"] == "close"


def test_server_survives_hostile_input(server):
    st, _, doc = server.get("/healthz")
    assert st == 200
