#!/usr/bin/env bash
# The quick start's one-time setup: build the runtime snapshot of a container runtime image on a running
# fcwarm-server (./scripts/run.sh). Finds the container runtime images (runtime check kind "docker"; the only one
# is taken without asking, several are listed to pick from), starts the build, shows its phases with a progress
# bar, and ends with the snapshot's id and size. A thin wrapper over the CLI: `fcwarm snapshot create -i`.
#
# usage: scripts/create-runtime-snapshot.sh [IMAGE]   (IMAGE: id or name; default: choose interactively)
# env:   FCWARM_SERVER (default http://127.0.0.1:18080), FCWARM_TOKEN (bearer token, if the server has one)
set -euo pipefail
server="${FCWARM_SERVER:-http://127.0.0.1:18080}"
if [[ $# -gt 1 || "${1:-}" == -* ]]; then
  echo "usage: $0 [IMAGE]" >&2
  exit 2
fi
if [[ $# -eq 1 ]]; then
  exec /usr/bin/python3 -m fcwarm --server "$server" snapshot create "$1"
fi
exec /usr/bin/python3 -m fcwarm --server "$server" snapshot create --interactive
