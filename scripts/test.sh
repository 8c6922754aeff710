#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and runs every test tier (unit, server, python, vm with real QEMU VMs,
# the Firecracker contract tests), then the server fuzzer for 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset ci
cmake --build --preset ci
cmake --install build/ci --component python   # `import fcwarm` for /usr/bin/python3, and the `fcwarm` CLI
if [[ -x guest/build-artifacts.sh ]]; then
  FCWARM_GUEST_DIR="${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}" \
    guest/build-artifacts.sh --agent build/ci/guest/agent/fcwarm-agent
fi
ctest --preset ci
./scripts/fuzz.sh 60   # libFuzzer over HTTP parsing, routing and JSON decoding, bounded time
