#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs every test tier (unit, server, python, vm with real QEMU VMs,
# docker with the Docker daemon inside QEMU VMs, the Firecracker contract tests), then the three fuzz targets
# (server HTTP, guest channel, agent decoder) for 30 s each.
# Ends with a one-line-per-stage summary (scripts/ci_summary.py). A failing ctest stage still lets the fuzzer
# run and report; the exit status is non-zero when any stage failed.
set -euo pipefail
cd "$(dirname "$0")/.."
report_dir=build/ci-report
rm -rf "$report_dir"
mkdir -p "$report_dir"
stages="$report_dir/stages.tsv"
: >"$stages"
failed=0

# stage NAME CMD...: runs CMD, records its outcome and duration.
stage() {
  local name=$1
  shift
  local start=$SECONDS rc=0
  "$@" || rc=$?
  if ((rc == 0)); then
    printf '%s\tok\t%s\n' "$name" $((SECONDS - start)) >>"$stages"
  else
    printf '%s\tFAILED (exit %s)\t%s\n' "$name" "$rc" $((SECONDS - start)) >>"$stages"
    failed=1
  fi
  return "$rc"
}

summary() {
  local rc=$?
  if [[ -x /usr/bin/python3 ]]; then
    /usr/bin/python3 scripts/ci_summary.py --stages "$stages" --build build/ci \
      --junit "$PWD/$report_dir/ctest-host.xml" --junit "$PWD/$report_dir/ctest-quiet.xml" \
      --fuzz-log "$report_dir/fuzz.log" || true
  else
    cat "$stages"
  fi
  if ((rc != 0 || failed != 0)); then
    echo "result: FAILED"
    exit 1
  fi
  echo "result: ok"
}
trap summary EXIT

build_all() {
  cmake --preset ci && cmake --build --preset ci &&
    cmake --install build/ci --component python # `import fcwarm` for /usr/bin/python3, and the `fcwarm` CLI
}

# Guest artifacts under the base dir /var/cache/fcwarm/guest (tests read <base>/current, <base>/docker-current).
guest_base=/var/cache/fcwarm/guest
guest_artifacts() {
  FCWARM_GUEST_DIR=$guest_base guest/build-artifacts.sh --agent build/ci/guest/agent/fcwarm-agent
}
# The docker runtime image (debootstrap + docker.io from the Debian mirror; cached by content key).
docker_image() {
  local out
  out=$(FCWARM_GUEST_DIR=$guest_base guest/build-docker-image.sh --agent build/ci/guest/agent/fcwarm-agent) || return
  FCWARM_DOCKER_IMAGE_DIR=$(tail -n 1 <<<"$out")
  export FCWARM_DOCKER_IMAGE_DIR
  [[ -d "$FCWARM_DOCKER_IMAGE_DIR" ]]
}

stage setup ./scripts/setup.sh
stage build build_all
stage guest-artifacts guest_artifacts
stage docker-image docker_image
export FCWARM_REQUIRE_DOCKER=1   # the docker tier must run here, not skip
export FCWARM_REQUIRE_REGISTRY=1 # so must the offline test registry (label `registry`)
export FCWARM_REQUIRE_CLUSTER=1  # and the loopback Ceph RGW and etcd (label `cluster`)
# Two ctest runs at once on the 2 cores: the tiers that boot VMs or change the host's network (iptables rules,
# namespaces, ip_forward; their RESOURCE_LOCKs only hold within one run) one after another, and beside them the
# tests that touch neither (unit, python with the fake VMM). Each is a stage of its own.
host_tiers="vm|docker|registry|chaos|net|firecracker|server|cluster"
quiet_tiers() {
  ctest --preset ci -LE "$host_tiers" --output-junit "$PWD/$report_dir/ctest-quiet.xml" \
    >"$report_dir/ctest-quiet.log" 2>&1
  local rc=$?
  cat "$report_dir/ctest-quiet.log"
  return $rc
}
stage ctest-quiet quiet_tiers &
quiet_pid=$!
stage ctest-host ctest --preset ci -L "$host_tiers" --output-junit "$PWD/$report_dir/ctest-host.xml" || true
wait "$quiet_pid" || true
grep -q "^ctest-quiet	FAILED" "$stages" && failed=1
# libFuzzer over HTTP parsing and the API, the host side of the guest protocol and the agent's request decoder,
# 20 s each; runs even when ctest failed.
fuzz() { ./scripts/fuzz.sh 20 2>&1 | tee "$report_dir/fuzz.log"; }
stage fuzz fuzz || true
