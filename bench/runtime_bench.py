#!/usr/bin/python3
"""Docker's start path inside the guest: runc vs crun (issue 14, section 3; docs/benchmarks.md).

Cold-boots the docker runtime image (guest/build-docker-image.sh registers crun next to runc) under QEMU through
the fcwarm package, then runs, inside that one VM, N rounds of `docker create` + `docker start` of busybox `true`
(host network, as fcwarm's containers), alternating the OCI runtime (runc, crun) within each round, timed in
the guest (date +%s%N around each CLI call); each container is waited for and removed before the next. The
first round of each runtime is reported apart (its code paths are translated by TCG for the first time: runc's
were already exercised by the image's pre-warm container, crun's were not). Prints p50/p95 per runtime.

usage: bench/runtime_bench.py [--image DIR] [--runs N]      (needs the built Python module on PYTHONPATH)
"""
import argparse
import os
import statistics
import sys

import fcwarm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
from smoke_support import Smoke  # noqa: E402

# Fixed guest script (no data from outside in it): N rounds, each runtime once per round.
SCRIPT = r'''
n=$1
ms() { echo $(( ($2 - $1) / 1000000 )); }
i=0
while [ "$i" -lt "$n" ]; do
  for rt in runc crun; do
    t0=$(date +%s%N)
    id=$(docker create --runtime "$rt" --network host busybox:latest true) || exit 1
    t1=$(date +%s%N)
    docker start "$id" >/dev/null || exit 1
    t2=$(date +%s%N)
    docker wait "$id" >/dev/null
    docker rm "$id" >/dev/null
    echo "$i $rt $(ms "$t0" "$t1") $(ms "$t1" "$t2")"
  done
  i=$((i + 1))
done
'''


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="/var/cache/fcwarm/guest/docker-current")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    with Smoke("runtime-bench", False) as smoke:
        svc = smoke.open_service("data")
        image = svc.images.register(fcwarm.runtime_image_from_artifacts("docker", os.path.realpath(args.image)))
        rec = svc.engine.provision(image.id, name="runtime-bench", force_cold=True)
        vm = svc.engine.handle(rec.id)
        versions = smoke.run(vm, ["sh", "-c", "runc --version | head -1; crun --version | head -1; "
                                              "docker info --format '{{.DefaultRuntime}} {{.CgroupVersion}}'"], 60.0)
        print("runtime-bench: " + " | ".join(versions.strip().splitlines()), flush=True)
        rows = {"runc": [], "crun": []}
        first = {}
        for round_ in range(args.runs + 1):  # one exec per round (the agent's exec deadline is at most 600 s)
            r = vm.exec(["sh", "-c", SCRIPT, "sh", "1"], timeout=300.0)
            out = r.stdout.decode()
            if r.exit_code != 0:
                print(out, r.stderr.decode(), file=sys.stderr)
                return 1
            for line in out.split("\n"):
                if not line.strip():
                    continue
                _, rt, create, start = line.split()
                print(f"  round {round_} {rt}: create {create} ms, start {start} ms", flush=True)
                if round_ == 0:
                    first[rt] = (int(create), int(start))
                else:
                    rows[rt].append((int(create), int(start)))
        print(f"\n| runtime | first create / start (ms) | create p50 / p95 | start p50 / p95 | create+start p50 |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for rt, xs in rows.items():
            c, s = [x[0] for x in xs], [x[1] for x in xs]
            print(f"| {rt} | {first[rt][0]} / {first[rt][1]} | {pct(c, 50)} / {pct(c, 95)} | {pct(s, 50)} / "
                  f"{pct(s, 95)} | {statistics.median([a + b for a, b in xs]):.0f} |")
        svc.engine.destroy(rec.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
