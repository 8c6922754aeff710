#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs every test tier (unit, server, python, vm with real QEMU VMs,
# docker with the Docker daemon inside QEMU VMs, the Firecracker contract tests), then the three fuzz targets
# (server HTTP, guest channel, agent decoder) for 20 s each.
# Ends with a one-line-per-stage summary (scripts/ci_summary.py). A failing ctest stage still lets the fuzzer
# run and report; the exit status is non-zero when any stage failed.
# What runs beside what, on the 2 cores: the guest images (Debian packages unpacked, mostly I/O) are built while
# the C++ build runs; the quiet tests and then the fuzzers (their own clang build) run while the VM tests run one
# after another.
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
  echo "wall time: $SECONDS s (stages overlap: guest images beside the build, quiet tests and fuzz beside ctest-host)"
  if ((rc != 0 || failed != 0)); then
    echo "result: FAILED"
    exit 1
  fi
  echo "result: ok"
}
trap summary EXIT

# The guest agent and launcher first: the guest images need them, and are built beside the rest of the compile.
build_agent() {
  cmake --preset ci && cmake --build --preset ci --target fcwarm-agent fcwarm-launch
}
build_all() {
  cmake --build --preset ci &&
    cmake --install build/ci --component python # `import fcwarm` for /usr/bin/python3, and the `fcwarm` CLI
}

# Guest artifacts under the base dir /var/cache/fcwarm/guest (tests read <base>/current, <base>/docker-current).
guest_base=/var/cache/fcwarm/guest
guest_artifacts() {
  FCWARM_GUEST_DIR=$guest_base guest/build-artifacts.sh --agent build/ci/guest/agent/fcwarm-agent
}
# The docker runtime image (debootstrap + docker.io from the Debian mirror; cached by content key). Its directory
# is the last line of the script's output, kept in $report_dir/docker-image-dir.
docker_image() {
  local out dir
  out=$(FCWARM_GUEST_DIR=$guest_base guest/build-docker-image.sh --agent build/ci/guest/agent/fcwarm-agent) || return
  dir=$(tail -n 1 <<<"$out")
  [[ -d "$dir" ]] && printf '%s\n' "$dir" >"$report_dir/docker-image-dir"
}
# Both images one after the other, their output in a log of their own (printed when the build is done).
guest_images() {
  { stage guest-artifacts guest_artifacts && stage docker-image docker_image; } >"$report_dir/guest-images.log" 2>&1
}

stage setup ./scripts/setup.sh
stage build-agent build_agent
guest_images &
images_pid=$!
build_rc=0
stage build build_all || build_rc=$?
images_rc=0
wait "$images_pid" || images_rc=$?
cat "$report_dir/guest-images.log"
((build_rc == 0 && images_rc == 0)) || exit 1
FCWARM_DOCKER_IMAGE_DIR=$(cat "$report_dir/docker-image-dir")
export FCWARM_DOCKER_IMAGE_DIR
export FCWARM_REQUIRE_DOCKER=1   # the docker tier must run here, not skip
export FCWARM_REQUIRE_REGISTRY=1 # so must the offline test registry (label `registry`)
export FCWARM_REQUIRE_CLUSTER=1  # and the loopback Ceph RGW and etcd (label `cluster`)
# Two jobs at once on the 2 cores: the tiers that boot VMs or change the host's network (iptables rules,
# namespaces, ip_forward; their RESOURCE_LOCKs only hold within one run) one after another, and beside them the
# tests that touch neither (unit, python with the fake VMM), then the fuzzers: libFuzzer over HTTP parsing and
# the API, the host side of the guest protocol and the agent's request decoder, 20 s each after their clang
# build (one compile job, so the VMs keep a core). Each is a stage of its own; the fuzzers run even when a ctest
# stage failed. The `cluster` fixtures (Ceph RGW, etcd on 127.0.0.1) change nothing of the host's network: their
# tests run in the quiet job unless they also boot VMs (then they carry the `vm` label too).
host_tiers="vm|docker|registry|chaos|net|firecracker|server"
quiet_tiers() {
  ctest --preset ci -LE "$host_tiers" --output-junit "$PWD/$report_dir/ctest-quiet.xml" \
    >"$report_dir/ctest-quiet.log" 2>&1
}
fuzz() { FUZZ_BUILD_JOBS=1 ./scripts/fuzz.sh 20 >"$report_dir/fuzz.log" 2>&1; }
beside_vms() {
  stage ctest-quiet quiet_tiers || true
  stage fuzz fuzz || true
}
beside_vms &
beside_pid=$!
stage ctest-host ctest --preset ci -L "$host_tiers" --output-junit "$PWD/$report_dir/ctest-host.xml" || true
wait "$beside_pid" || true
cat "$report_dir/ctest-quiet.log" "$report_dir/fuzz.log"
grep -q "FAILED" "$stages" && failed=1
true
