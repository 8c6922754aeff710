#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root), builds fcwarm, the guest artifacts and the docker runtime image
# (Docker daemon inside the VM), starts fcwarm-server on 127.0.0.1:18080 with its embedded SQLite store, runs
# the demo against it (a container on a cold-booted VM, the snapshot build, a container on a warm-restored VM,
# with their times) and keeps the server in the foreground until Ctrl-C / SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset release -DFCWARM_BUILD_TESTS=OFF
cmake --build --preset release
cmake --install build/release --component python   # `import fcwarm` and the `fcwarm` CLI
guest_base="${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}"
FCWARM_GUEST_DIR="$guest_base" guest/build-artifacts.sh --agent build/release/guest/agent/fcwarm-agent >/dev/null
FCWARM_GUEST_DIR="$guest_base" guest/build-docker-image.sh --agent build/release/guest/agent/fcwarm-agent >/dev/null
# Images are registered through the stable `current` links: after a rebuild of the artifacts the image's files
# change, its snapshots no longer match (`incompatible`) and are rebuilt, instead of pointing at a stale build.
guest_dir="$guest_base/current"
docker_dir="$guest_base/docker-current"
data_dir="${FCWARM_DATA_DIR:-/var/lib/fcwarm}"
bind="${FCWARM_BIND:-127.0.0.1:18080}"

mkdir -p "$data_dir"
log="$data_dir/fcwarm-server.log"
# FCWARM_REGISTRY_MIRROR: comma-separated mirror URLs; FCWARM_EGRESS: all (default), none or CIDR,...;
# FCWARM_PUBLISH_ADDRESS: host address published container ports bind to (default 127.0.0.1);
# FCWARM_PRELOAD_IMAGE: comma-separated container images every snapshot build pulls (e.g. nginx:alpine)
# FCWARM_POOL: comma-separated IMAGE=N, clones of a runtime image kept restored for requests (e.g. docker=2)
extra=(--egress "${FCWARM_EGRESS:-all}" --publish-address "${FCWARM_PUBLISH_ADDRESS:-127.0.0.1}")
IFS=',' read -r -a mirrors <<<"${FCWARM_REGISTRY_MIRROR:-}"
for m in "${mirrors[@]}"; do
  [[ -n "$m" ]] && extra+=(--registry-mirror "$m")
done
IFS=',' read -r -a pools <<<"${FCWARM_POOL:-}"
for p in "${pools[@]}"; do
  [[ -n "$p" ]] && extra+=(--pool "$p")
done
IFS=',' read -r -a preloads <<<"${FCWARM_PRELOAD_IMAGE:-}"
for p in "${preloads[@]}"; do
  [[ -n "$p" ]] && extra+=(--preload-image "$p")
done
build/release/server/fcwarm-server --bind "$bind" --data-dir "$data_dir" --bootstrap-image-dir "$guest_dir" \
  --bootstrap-docker-image-dir "$docker_dir" "${extra[@]}" >>"$log" 2>&1 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"' INT TERM
for _ in $(seq 1 100); do
  curl -sf "http://$bind/healthz" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "fcwarm-server exited during startup:" >&2; tail -n 20 "$log" >&2; exit 1; }
  sleep 0.1
done
./scripts/demo.sh "http://$bind" || echo "demo failed (the server keeps running)" >&2
echo
echo "fcwarm-server is running on http://$bind (data in $data_dir). Try: curl -s http://$bind/v1/runtime-snapshots | jq"
echo "Ctrl-C stops it. Its log ($log) follows."
tail -n 0 -f --pid="$server" "$log" &
wait "$server"
