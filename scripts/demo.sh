#!/usr/bin/env bash
# Walks a newcomer through warm boot against a running fcwarm-server, with curl and jq:
# one cold boot, a runtime-snapshot build (with its phases), and a warm restore, with their times.
# Usage: scripts/demo.sh [BASE_URL]   (default http://127.0.0.1:18080; FCWARM_TOKEN for a bearer token)
set -euo pipefail
base="${1:-http://127.0.0.1:18080}"
auth=()
if [[ -n "${FCWARM_TOKEN:-}" ]]; then auth=(-H "Authorization: Bearer ${FCWARM_TOKEN}"); fi
api() { curl -sS --fail-with-body "${auth[@]}" -H 'Content-Type: application/json' "$@"; }

echo "== health"
api "$base/healthz" | jq -c .

image=$(api "$base/v1/images" | jq -r '[.items[] | select(.name == "minimal")][0].id // empty')
if [[ -z "$image" ]]; then
  echo "no image named 'minimal' (start the server with --bootstrap-image-dir)" >&2
  exit 1
fi
echo "== runtime image 'minimal': $image"

run_container() {  # name -> prints the container item
  api -X POST "$base/v1/containers" -d "$(jq -nc --arg n "$1" --arg i "$image" '{name: $n, image: $i, wait: true}')" |
    jq -c '.item // .'
}
show() {  # item json
  jq -r '"   boot_method=\(.boot_method)  fallback_reason=\(.fallback_reason // "-")  total=\(.timings.total | floor) ms  (address \(.address), hostname \(.hostname))"' <<<"$1"
}

snap=$(api "$base/v1/runtime-snapshots?runtime_image_id=$image" | jq -r '[.items[] | select(.state == "ready")][0].id // empty')
stamp=$(date +%s)
if [[ -z "$snap" ]]; then
  echo "== 1. a container with no runtime snapshot yet: cold boot"
  cold=$(run_container "demo-cold-$stamp")
  show "$cold"
  api -X DELETE "$base/v1/containers/$(jq -r .id <<<"$cold")" >/dev/null

  echo "== 2. build the runtime snapshot"
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
  echo "== 1-2. runtime snapshot $snap is ready already (delete it to see the cold path again)"
fi

echo "== 3. a container restored warm from the snapshot"
warm=$(run_container "demo-warm-$stamp")
show "$warm"
echo "   the server log line for it states the time saved against measured cold boots:"
api "$base/v1/events?kind=boot&limit=1000" | jq -r '.items[-1].message // empty' | sed 's/^/   /' || true
api -X DELETE "$base/v1/containers/$(jq -r .id <<<"$warm")" >/dev/null

echo "== snapshots"
api "$base/v1/runtime-snapshots" | jq -r '.items[] | "   \(.id)  \(.state)  generation \(.generation)  success \(.success_count)  failure \(.failure_count)"'
