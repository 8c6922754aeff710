#!/usr/bin/env bash
# VM-tier test: the guest artifacts boot under QEMU, the agent answers over virtio-serial, and it answers again
# after a snapshot/restore (both with RAM in the migration stream and with a shared RAM file + x-ignore-shared).
#
# usage: tests/vm/guest_smoke_test.sh [--agent PATH_TO_BUILT_AGENT] [--mode stream|shared-ram|both]
#   --agent  (re)build the artifacts for this agent binary first (guest/build-artifacts.sh, cached by content);
#            without it, ${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/current is used.
# The smoke test (scripts/guest-smoke.py) drives the VMs through the fcwarm Python package: ctest points PYTHONPATH
# at the build tree's package; run by hand, the installed one is used.
# Exit status: 0 pass, 1 fail, 77 skipped (no QEMU, no fcwarm package, or no artifacts and no --agent).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
agent=""
mode="both"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --agent) agent="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    *) printf 'usage: %s [--agent PATH] [--mode stream|shared-ram|both]\n' "$0" >&2; exit 2 ;;
  esac
done
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-img >/dev/null 2>&1; then
  printf 'SKIP: qemu-system-x86_64/qemu-img not installed\n'
  exit 77
fi
if ! /usr/bin/python3 -c 'import fcwarm; fcwarm.make_qemu_vmm' 2>/dev/null; then
  printf 'SKIP: the fcwarm Python package (with the QEMU backend) is not importable (PYTHONPATH=%s)\n' "${PYTHONPATH:-}"
  exit 77
fi
if [[ -n "${agent}" ]]; then
  artifacts="$("${repo}/guest/build-artifacts.sh" --agent "${agent}" | tail -n 1)"
else
  artifacts="${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/current"
  if [[ ! -f "${artifacts}/manifest.json" ]]; then
    printf 'SKIP: no guest artifacts at %s (run guest/build-artifacts.sh or pass --agent)\n' "${artifacts}"
    exit 77
  fi
fi
if /usr/bin/python3 "${repo}/scripts/guest-smoke.py" --artifacts "${artifacts}" --mode "${mode}"; then
  printf '1 passed, 0 failed\n'
else
  printf '0 passed, 1 failed\n'
  exit 1
fi
