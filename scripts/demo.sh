#!/usr/bin/env bash
# Walks a newcomer through warm boot against a running fcwarm-server, with curl and jq. With the runtime image
# 'docker' (the Docker daemon inside the VM): a container on a cold-booted VM, the runtime-snapshot build (with
# its phases), then a container on a warm-restored VM, their output, per-step timings and the speed-up.
# Without it, the same walk with the 'minimal' image (a VM without a container runtime).
# Usage: scripts/demo.sh [BASE_URL]   (default http://127.0.0.1:18080; FCWARM_TOKEN for a bearer token)
set -euo pipefail
base="${1:-http://127.0.0.1:18080}"
auth=()
if [[ -n "${FCWARM_TOKEN:-}" ]]; then auth=(-H "Authorization: Bearer ${FCWARM_TOKEN}"); fi
api() { curl -sS --fail-with-body "${auth[@]}" -H 'Content-Type: application/json' "$@"; }

echo "== health"
api "$base/healthz" | jq -c .

image_id() { api "$base/v1/images" | jq -r --arg n "$1" '[.items[] | select(.name == $n)][0].id // empty'; }
name=docker
image=$(image_id docker)
if [[ -z "$image" ]]; then
  name=minimal
  image=$(image_id minimal)
fi
if [[ -z "$image" ]]; then
  echo "no image named 'docker' or 'minimal' (start the server with --bootstrap-docker-image-dir / --bootstrap-image-dir)" >&2
  exit 1
fi
echo "== runtime image '$name': $image"

stamp=$(date +%s)
run_container() {  # container name, force_cold -> prints the container item once it runs
  local body
  if [[ "$name" == docker ]]; then
    body=$(jq -nc --arg n "$1" --arg i "$image" --argjson cold "$2" \
      '{name: $n, runtime_image: $i, image: "busybox:latest", force_cold: $cold, wait: true,
        command: ["sh", "-c", "echo hello from $(hostname); head -c 16 /dev/urandom | od -An -tx1"]}')
  else
    body=$(jq -nc --arg n "$1" --arg i "$image" --argjson cold "$2" '{name: $n, runtime_image: $i, force_cold: $cold, wait: true}')
  fi
  api -X POST "$base/v1/containers" -d "$body" | jq -c '.item // .'
}
show() {  # item json
  jq -r '"   boot_method=\(.boot_method)  fallback_reason=\(.fallback_reason // "-")  create -> running: \(.timings.total | floor) ms",
         "   steps (ms): " + ([.timings | to_entries[] | select(.key != "total") | "\(.key)=\(.value | floor)"] | join("  "))' <<<"$1"
  if [[ "$name" == docker ]]; then
    local id
    id=$(jq -r .id <<<"$1")
    api -X POST "$base/v1/containers/$id/wait?timeout_ms=60000" | jq -r '"   container \(.item.state), exit code \(.item.exit_code)"'
    api "$base/v1/containers/$id/logs" | jq -j '.stdout' | sed 's/^/   | /'
  fi
}

echo "== 1. a container on a cold-booted VM"
cold=$(run_container "demo-cold-$stamp" true)
show "$cold"
api -X DELETE "$base/v1/containers/$(jq -r .id <<<"$cold")" >/dev/null

snap=$(api "$base/v1/runtime-snapshots?runtime_image_id=$image" | jq -r '[.items[] | select(.state == "ready")][0].id // empty')
if [[ -z "$snap" ]]; then
  echo "== 2. build the runtime snapshot (boot once, wait until the runtime answers, snapshot)"
  snap=$(api -X POST "$base/v1/runtime-snapshots" -d "{\"runtime_image_id\": \"$image\"}" | jq -r .id)
  start=$(date +%s%N)
  last=""
  while :; do
    s=$(api "$base/v1/runtime-snapshots/$snap")
    state=$(jq -r .item.state <<<"$s")
    phase=$(jq -r .item.phase <<<"$s")
    if [[ "$phase" != "$last" ]]; then echo "   phase: $phase"; last="$phase"; fi
    [[ "$state" == "creating" ]] || break
    sleep 0.2
  done
  echo "   state=$state in $(( ($(date +%s%N) - start) / 1000000 )) ms; $(jq -r '"\(.item.size_bytes / 1e6 | floor) MB apparent, \(.item.disk_bytes / 1e6 | floor) MB on disk"' <<<"$s")"
  if [[ "$state" != "ready" ]]; then
    echo "   build failed: $(jq -r .item.last_error <<<"$s")" >&2
    exit 1
  fi
else
  echo "== 2. runtime snapshot $snap is ready already"
fi

echo "== 3. a container on a VM restored warm from the snapshot"
warm=$(run_container "demo-warm-$stamp" false)
show "$warm"
api -X DELETE "$base/v1/containers/$(jq -r .id <<<"$warm")" >/dev/null

cold_ms=$(jq -r '.timings.total' <<<"$cold")
warm_ms=$(jq -r '.timings.total' <<<"$warm")
echo "== warm vs cold: container running after $(printf '%.0f' "$warm_ms") ms warm versus $(printf '%.0f' "$cold_ms") ms cold ($(jq -rn --argjson c "$cold_ms" --argjson w "$warm_ms" '$c / $w * 10 | floor / 10')x faster)"

echo "== snapshots"
api "$base/v1/runtime-snapshots" | jq -r '.items[] | "   \(.id)  \(.state)  generation \(.generation)  success \(.success_count)  failure \(.failure_count)"'
