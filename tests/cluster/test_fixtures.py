"""Self-test of tests/support/cluster.py: a one-node Ceph with the RADOS Gateway and an etcd on 127.0.0.1.

S3 through boto3 and through curl's built-in SigV4 (what libcurl's CURLOPT_AWS_SIGV4 sends, plus the
x-amz-content-sha256 header RGW needs), wrong credentials, etcd keys and leases, a crash and restart of etcd,
two clusters at once, a failed start, and that nothing is left behind (processes, ports, directories, and
nothing under the system's /etc/ceph, /var/lib/ceph, /var/log/ceph, /var/run/ceph).

Needs root and ceph-mon, ceph-osd, radosgw, etcd-server, python3-boto3, curl (scripts/setup.sh); skips without
them unless FCWARM_REQUIRE_CLUSTER=1 (scripts/test.sh sets it), where it fails instead."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import cluster  # noqa: E402

REQUIRE = os.environ.get("FCWARM_REQUIRE_CLUSTER") == "1"
CURL = shutil.which("curl") or "/usr/bin/curl"
SYSTEM_CEPH_DIRS = ("/etc/ceph", "/var/lib/ceph", "/var/log/ceph", "/var/run/ceph", "/run/ceph")


def need(missing):
    why = list(missing)
    if not os.access(CURL, os.X_OK):
        why.append("curl")
    why = ["missing " + ", ".join(why)] if why else []
    if os.geteuid() != 0:
        why.append("not root")
    if why:
        if REQUIRE:
            pytest.fail("FCWARM_REQUIRE_CLUSTER=1 but " + "; ".join(why))
        pytest.skip("; ".join(why))


def system_ceph_state():
    """Every path (with size and mtime) under the system's Ceph directories."""
    out = {}
    for top in SYSTEM_CEPH_DIRS:
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                p = os.path.join(root, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out[p] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def system_before():
    return system_ceph_state()


@pytest.fixture(scope="module")
def rgw(system_before):
    need(cluster.rgw_missing())
    with cluster.Rgw() as r:
        print(f"Ceph RGW bring-up: {r.timings}")
        yield r
    assert r.leftovers() == []
    assert system_ceph_state() == system_before


@pytest.fixture(scope="module")
def etcd():
    need(cluster.etcd_missing())
    with cluster.Etcd() as e:
        yield e
    assert e.leftovers() == []


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def curl(s3, method, path, body=None, secret=None, access=None, region=None, content_sha=True, tmp=None):
    """curl --aws-sigv4 as libcurl's CURLOPT_AWS_SIGV4 signs: (status, body bytes)."""
    out = os.path.join(tmp, "curl.out")
    argv = [CURL, "-sS", "--noproxy", "*", "-o", out, "-w", "%{http_code}"]
    argv += ["--head"] if method == "HEAD" else ["-X", method]
    argv += ["--aws-sigv4", f"aws:amz:{region or s3.region}:s3",
             "--user", f"{access or s3.access_key}:{secret or s3.secret_key}"]
    if content_sha:
        argv += ["-H", f"x-amz-content-sha256: {sha256(body or b'')}"]
    if body is not None:
        src = os.path.join(tmp, "curl.in")
        with open(src, "wb") as f:
            f.write(body)
        argv += ["--data-binary", "@" + src, "-H", "Content-Type: application/octet-stream"]
    argv.append(s3.endpoint + path)
    p = subprocess.run(argv, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    with open(out, "rb") as f:
        return int(p.stdout), f.read()


def test_rgw_is_loopback_only_and_fast(rgw):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", rgw.endpoint)
    assert rgw.region == "default"
    # Bring-up budget (CI): a few seconds here; generous bound against a loaded machine.
    assert rgw.timings["total"] < 30, rgw.timings
    pids = cluster._pids_naming(rgw.dir)
    assert len(pids) == 3  # ceph-mon, ceph-osd, radosgw: no mgr
    sockets = cluster.listening_sockets(pids)
    assert ("127.0.0.1", rgw.port) in sockets and ("127.0.0.1", rgw.mon_port) in sockets
    # Only loopback: the OSD's messengers (Ceph's 6800-7300 range) too; nothing on IPv6 or 0.0.0.0.
    assert {addr for addr, _ in sockets} == {"127.0.0.1"}, sockets
    assert len(sockets) >= 6, sockets


def test_boto3_put_get_list_delete(rgw):
    s3 = rgw.client()
    rgw.create_bucket("boto-bucket")
    body = os.urandom(3 << 20) + b"tail"  # a few MiB, one PUT
    s3.put_object(Bucket="boto-bucket", Key="snapshots/a/chunk-1", Body=body)
    s3.put_object(Bucket="boto-bucket", Key="snapshots/a/manifest.json", Body=b"{}")
    s3.put_object(Bucket="boto-bucket", Key="other/x", Body=b"x")
    assert s3.get_object(Bucket="boto-bucket", Key="snapshots/a/chunk-1")["Body"].read() == body
    listed = s3.list_objects_v2(Bucket="boto-bucket", Prefix="snapshots/")
    assert sorted(o["Key"] for o in listed["Contents"]) == ["snapshots/a/chunk-1", "snapshots/a/manifest.json"]
    assert {o["Key"]: o["Size"] for o in listed["Contents"]}["snapshots/a/chunk-1"] == len(body)
    s3.delete_object(Bucket="boto-bucket", Key="snapshots/a/chunk-1")
    listed = s3.list_objects_v2(Bucket="boto-bucket", Prefix="snapshots/")
    assert [o["Key"] for o in listed["Contents"]] == ["snapshots/a/manifest.json"]
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="boto-bucket", Key="snapshots/a/chunk-1")
    # us-east-1 (boto3's default, sends no LocationConstraint) signs acceptably too.
    other = rgw.client(region="us-east-1")
    assert other.get_object(Bucket="boto-bucket", Key="other/x")["Body"].read() == b"x"


def test_curl_sigv4_put_get_list_delete(rgw, tmp_path):
    rgw.create_bucket("curl-bucket")
    tmp = str(tmp_path)
    body = b"chunk " * 1000
    st, out = curl(rgw, "PUT", "/curl-bucket/gen-1/chunk-a", body, tmp=tmp)
    assert st == 200, out
    st, out = curl(rgw, "GET", "/curl-bucket/gen-1/chunk-a", tmp=tmp)
    assert (st, out) == (200, body)
    st, out = curl(rgw, "GET", "/curl-bucket?list-type=2&prefix=gen-1%2F", tmp=tmp)
    assert st == 200, out
    assert re.findall(rb"<Key>([^<]*)</Key>", out) == [b"gen-1/chunk-a"]
    st, out = curl(rgw, "HEAD", "/curl-bucket/gen-1/chunk-a", tmp=tmp)
    assert st == 200
    st, out = curl(rgw, "DELETE", "/curl-bucket/gen-1/chunk-a", tmp=tmp)
    assert st == 204, out
    st, out = curl(rgw, "GET", "/curl-bucket/gen-1/chunk-a", tmp=tmp)
    assert st == 404 and b"<Code>NoSuchKey</Code>" in out
    # The object went through boto3's view as well.
    assert "Contents" not in rgw.client().list_objects_v2(Bucket="curl-bucket")


def test_curl_sigv4_needs_the_content_sha256_header(rgw, tmp_path):
    """libcurl's SigV4 alone (no x-amz-content-sha256) is refused by RGW: the C++ client must send it."""
    rgw.create_bucket("nosha-bucket")
    st, out = curl(rgw, "PUT", "/nosha-bucket/k", b"data", content_sha=False, tmp=str(tmp_path))
    assert st == 403 and b"<Code>SignatureDoesNotMatch</Code>" in out, out
    st, out = curl(rgw, "GET", "/nosha-bucket/k", content_sha=False, tmp=str(tmp_path))
    assert st == 403 and b"<Code>SignatureDoesNotMatch</Code>" in out, out


def test_wrong_credentials_are_403_with_rgw_error_code(rgw, tmp_path):
    rgw.create_bucket("auth-bucket")
    tmp = str(tmp_path)
    st, out = curl(rgw, "PUT", "/auth-bucket/k", b"x", secret="not-the-secret", tmp=tmp)
    assert st == 403 and b"<Code>SignatureDoesNotMatch</Code>" in out, out
    st, out = curl(rgw, "GET", "/auth-bucket/k", access="NOSUCHKEY0000000", tmp=tmp)
    assert st == 403 and b"<Code>InvalidAccessKeyId</Code>" in out, out
    import botocore.exceptions
    bad = rgw.client(secret_key="not-the-secret", retries={"max_attempts": 1})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bad.list_objects_v2(Bucket="auth-bucket")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # A second user with keys of its own does not see the first user's bucket.
    ak, sk = rgw.create_user("other-user")
    other = rgw.client(access_key=ak, secret_key=sk, retries={"max_attempts": 1})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        other.put_object(Bucket="auth-bucket", Key="k", Body=b"x")
    assert e.value.response["Error"]["Code"] == "AccessDenied"


def test_gateway_stop_and_start(rgw, tmp_path):
    rgw.create_bucket("restart-bucket")
    rgw.client().put_object(Bucket="restart-bucket", Key="k", Body=b"kept")
    rgw.stop_gateway()
    p = subprocess.run([CURL, "-sS", "--noproxy", "*", "-o", "/dev/null", rgw.endpoint + "/"],
                       capture_output=True, timeout=30)
    assert p.returncode == 7, p  # connection refused
    rgw.start_gateway()
    assert rgw.client().get_object(Bucket="restart-bucket", Key="k")["Body"].read() == b"kept"


def test_etcd_kv_range_and_lease(etcd):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", etcd.endpoint)
    assert etcd.url == etcd.endpoint.replace("http://", "etcd://")
    etcd.put("fcwarm/locks/key-a", "node-a")
    etcd.put("fcwarm/locks/key-b", b"\x00node-b")
    etcd.put("fcwarm/other", "x")
    assert etcd.get("fcwarm/locks/key-a") == b"node-a"
    assert etcd.range("fcwarm/locks/") == {b"fcwarm/locks/key-a": b"node-a", b"fcwarm/locks/key-b": b"\x00node-b"}
    assert etcd.get("fcwarm/missing") is None
    lease = etcd.lease_grant(30)
    etcd.put("fcwarm/locks/key-c", "holder", lease=lease)
    kv = etcd.get_kv("fcwarm/locks/key-c")
    assert int(kv["lease"]) == lease and kv["value"] == b"holder"
    ttl, keys = etcd.lease_ttl(lease, keys=True)
    assert 0 < ttl <= 30 and keys == [b"fcwarm/locks/key-c"]
    etcd.lease_revoke(lease)
    assert etcd.get("fcwarm/locks/key-c") is None
    assert etcd.lease_ttl(lease) == -1
    # A short lease nobody keeps alive expires by itself, and its key with it.
    short = etcd.lease_grant(1)
    etcd.put("fcwarm/locks/key-d", "dies", lease=short)
    deadline = time.monotonic() + 10
    while etcd.get("fcwarm/locks/key-d") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert etcd.get("fcwarm/locks/key-d") is None
    assert etcd.delete("fcwarm/other") == 1 and etcd.delete("fcwarm/other") == 0


def test_etcd_kill_and_restart_keeps_data(etcd):
    etcd.put("fcwarm/durable", "yes")
    port = etcd.port
    etcd.kill()
    assert not etcd.running
    with pytest.raises(OSError):
        etcd.get("fcwarm/durable")
    etcd.start()
    assert etcd.port == port
    assert etcd.get("fcwarm/durable") == b"yes"
    etcd.stop()
    etcd.start()
    assert etcd.get("fcwarm/durable") == b"yes"


def test_two_clusters_at_once_are_separate(rgw, system_before):
    with cluster.Rgw() as second:
        assert second.fsid != rgw.fsid and second.port != rgw.port and second.mon_port != rgw.mon_port
        assert second.conf != rgw.conf and not second.dir.startswith(rgw.dir)
        second.create_bucket("only-in-second")
        assert "only-in-second" not in [b["Name"] for b in rgw.client().list_buckets()["Buckets"]]
        ours = set(cluster._listening_ports(cluster._pids_naming(rgw.dir)))
        theirs = set(cluster._listening_ports(cluster._pids_naming(second.dir)))
        assert ours and theirs and not ours & theirs
    assert second.leftovers() == []
    assert rgw.client().list_buckets()  # the first one is untouched
    assert system_ceph_state() == system_before


def test_failed_start_leaves_nothing():
    need(cluster.rgw_missing())
    r = cluster.Rgw(timeout=0.2)  # far too short: the gateway cannot be up yet
    with pytest.raises(cluster.ClusterError, match="timed out waiting"):
        with r:
            pass
    assert r.leftovers() == []


def test_serve_prints_exports_and_cleans_up_on_sigint():
    need(cluster.rgw_missing() + cluster.etcd_missing())
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support", "cluster.py")
    p = subprocess.Popen(["/usr/bin/python3", script, "serve", "--bucket", "serve-bucket", "--memstore-mib", "256"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("# curl"):
                break
        exports = dict(re.findall(r"^export (\w+)='([^']*)'$", "".join(lines), re.M))
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "FCWARM_TEST_S3_ENDPOINT",
                "FCWARM_TEST_S3_BUCKET", "FCWARM_TEST_ETCD_ENDPOINT", "FCWARM_TEST_COORDINATION"} <= set(exports), lines
        assert any(line.startswith("# fcwarm-server --snapshot-repository s3://serve-bucket/") for line in lines)
        # The printed credentials work.
        import boto3
        from botocore.config import Config
        s3 = boto3.client("s3", endpoint_url=exports["FCWARM_TEST_S3_ENDPOINT"],
                          aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"], region_name=exports["AWS_REGION"],
                          config=Config(s3={"addressing_style": "path"}))
        assert "serve-bucket" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "nothing left over" in err
    dirs = re.findall(r"^# (?:Ceph RGW|etcd) up in [0-9.]+s, directory (\S+)$", err, re.M)
    assert len(dirs) == 2, err
    for d in dirs:
        assert not os.path.exists(d) and cluster._pids_naming(d) == []
