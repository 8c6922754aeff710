"""Bearer-token authentication and the refusal of non-loopback binds without a token."""

import os

from conftest import TOKEN, Server, assert_error


def test_auth_on(start_server):
    s = start_server("--auth-token", TOKEN)
    assert s.get("/healthz")[0] == 200  # open
    for path in ("/v1/images", "/v1/runtime-snapshots", "/v1/version", "/metrics", "/v1/events", "/v1/containers",
                 "/v1/nope"):
        st, h, doc = s.get(path)
        assert st == 401, path
        assert doc["error"]["code"] == "unauthenticated"
        assert h["www-authenticate"].startswith("Bearer")
    assert_error(s.get("/v1/images", headers={"Authorization": "Bearer wrong"}), 401, "unauthenticated")
    assert_error(s.get("/v1/images", headers={"Authorization": "Bearer " + TOKEN + "x"}), 401, "unauthenticated")
    assert_error(s.get("/v1/images", headers={"Authorization": "Bearer " + TOKEN[:-1]}), 401, "unauthenticated")
    assert_error(s.get("/v1/images", headers={"Authorization": "Basic " + TOKEN}), 401, "unauthenticated")
    assert_error(s.get("/v1/images", headers={"Authorization": TOKEN}), 401, "unauthenticated")
    st, _, doc = s.get("/v1/images", headers={"Authorization": "Bearer " + TOKEN})
    assert st == 200 and doc == {"items": []}
    st, _, _ = s.get("/v1/images", headers={"Authorization": "bearer " + TOKEN})
    assert st == 200
    # Auth is checked before anything else, so unauthenticated callers learn nothing about ids.
    assert_error(s.get("/v1/images/..%2f"), 400, "invalid_argument")  # target decoding comes first
    assert_error(s.get("/v1/images/0b6c0c8e-54b3-4d1e-9f6a-3f0a4c7d2e11"), 401, "unauthenticated")


def test_auth_off_by_default(server):
    assert server.get("/v1/images")[0] == 200


def test_token_file(start_server, tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    os.chmod(f, 0o600)
    s = start_server("--auth-token-file", str(f))
    assert s.get("/v1/images")[0] == 401
    assert s.get("/v1/images", headers={"Authorization": "Bearer " + TOKEN})[0] == 200


def test_non_loopback_bind_refused_without_token():
    s = Server("--bind", "0.0.0.0:0", expect_start=False)
    try:
        assert s.wait_exit(15) == 2
        assert "non-loopback" in s.read_log()
    finally:
        s.close()


def test_non_loopback_bind_allowed_with_token(start_server):
    s = start_server("--bind", "0.0.0.0:0", "--auth-token", TOKEN)
    assert s.get("/healthz")[0] == 200


def test_short_token_refused():
    s = Server("--auth-token", "short", expect_start=False)
    try:
        assert s.wait_exit(15) == 2
    finally:
        s.close()
