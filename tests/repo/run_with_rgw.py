#!/usr/bin/python3
"""Runs a test program against a one-node Ceph RADOS Gateway (tests/support/cluster.py) on 127.0.0.1.

    run_with_rgw.py PROGRAM [ARGS...]

Starts the gateway in a temporary directory, creates a bucket, runs PROGRAM with FCWARM_TEST_S3_ENDPOINT,
FCWARM_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION set, stops the gateway and fails
when anything is left over. When FCWARM_TEST_S3_ENDPOINT is set already (a gateway started by hand with
`cluster.py serve`), PROGRAM runs against it directly. Exit 77 (ctest's skip) without root or the Ceph packages,
unless FCWARM_REQUIRE_CLUSTER=1."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "support"))

REQUIRE = os.environ.get("FCWARM_REQUIRE_CLUSTER") == "1"
SKIP = 77


def skip(why):
    if REQUIRE:
        print(f"run_with_rgw: FCWARM_REQUIRE_CLUSTER=1 but {why}", file=sys.stderr)
        return 1
    print(f"run_with_rgw: skipped: {why}", file=sys.stderr)
    return SKIP


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    program = argv[1:]
    if os.environ.get("FCWARM_TEST_S3_ENDPOINT"):
        return subprocess.run(program).returncode
    try:
        import cluster
    except ImportError as e:
        return skip(f"tests/support/cluster.py cannot be imported ({e})")
    missing = cluster.rgw_missing()
    if missing:
        return skip("missing " + ", ".join(missing))
    if os.geteuid() != 0:
        return skip("the Ceph fixture needs root")
    rgw = cluster.Rgw(memstore_bytes=1 << 30)
    code = 1
    with rgw:
        bucket = rgw.create_bucket("fcwarm-repo-test")
        env = dict(os.environ)
        env.update(rgw.env())
        env["FCWARM_TEST_S3_ENDPOINT"] = rgw.endpoint
        env["FCWARM_TEST_S3_BUCKET"] = bucket
        print(f"run_with_rgw: Ceph RGW at {rgw.endpoint}, bucket {bucket}", flush=True)
        code = subprocess.run(program, env=env).returncode
    left = rgw.leftovers()
    if left:
        print("run_with_rgw: left over: " + "; ".join(left), file=sys.stderr)
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
