#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs every test tier (unit, server, python, vm with real QEMU VMs,
# docker with the Docker daemon inside QEMU VMs, the Firecracker contract tests), then the server fuzzer for 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset ci
cmake --build --preset ci
cmake --install build/ci --component python   # `import fcwarm` for /usr/bin/python3, and the `fcwarm` CLI
# Guest artifacts under the base dir /var/cache/fcwarm/guest (tests read <base>/current, <base>/docker-current).
guest_base=/var/cache/fcwarm/guest
FCWARM_GUEST_DIR=$guest_base guest/build-artifacts.sh --agent build/ci/guest/agent/fcwarm-agent
# The docker runtime image (debootstrap + docker.io from the Debian mirror; cached by content key).
FCWARM_DOCKER_IMAGE_DIR=$(FCWARM_GUEST_DIR=$guest_base guest/build-docker-image.sh \
  --agent build/ci/guest/agent/fcwarm-agent | tail -n 1)
export FCWARM_DOCKER_IMAGE_DIR
export FCWARM_REQUIRE_DOCKER=1   # the docker tier must run here, not skip
ctest --preset ci
./scripts/fuzz.sh 60   # libFuzzer over HTTP parsing, routing and JSON decoding, bounded time
