#!/usr/bin/env bash
# Boots the fcwarm guest artifacts under QEMU (microvm, TCG), talks to fcwarm-agent over virtio-serial,
# snapshots the VM (QMP stop + migrate to a file), restores it in a new QEMU (-incoming defer,
# migrate-incoming, cont) and talks to the agent again. Prints timings; exits non-zero on any failure.
#
# usage: scripts/guest-smoke.sh [--artifacts DIR] [--mode stream|shared-ram|both] [--transport fd|exec] [--keep]
#   --artifacts DIR  guest artifact directory (default: ${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/current)
#   --mode           stream: RAM in the migration stream (default); shared-ram: RAM in a memory-backend-file
#                    (share=on while building, share=off for the clone) + x-ignore-shared; both: run both
#   --transport      how the state file reaches QEMU: fd (default; the file is opened here and passed with QMP
#                    getfd, migrate/migrate-incoming uri "fd:NAME") or exec ("exec:cat > FILE", run by QEMU's sh)
#   --keep           keep the temporary directory (console logs, state files)
set -euo pipefail

artifacts="${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/current"
mode="stream"
keep=0
transport="fd"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --artifacts) artifacts="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --transport) transport="$2"; shift 2 ;;
    *) printf 'usage: %s [--artifacts DIR] [--mode stream|shared-ram|both] [--transport fd|exec] [--keep]\n' "$0" >&2; exit 2 ;;
  esac
done
case "${mode}" in stream | shared-ram | both) ;; *) printf 'bad --mode %s\n' "${mode}" >&2; exit 2 ;; esac
case "${transport}" in fd | exec) ;; *) printf 'bad --transport %s\n' "${transport}" >&2; exit 2 ;; esac
export SMOKE_MIGRATE_TRANSPORT="${transport}"
for f in bzImage initramfs.cpio.gz disk.ext4 manifest.json; do
  [[ -s "${artifacts}/${f}" ]] || { printf 'guest-smoke: %s/%s missing (run guest/build-artifacts.sh)\n' "${artifacts}" "${f}" >&2; exit 1; }
done
for tool in qemu-system-x86_64 qemu-img; do
  command -v "${tool}" >/dev/null || { printf 'guest-smoke: %s not installed\n' "${tool}" >&2; exit 1; }
done
artifacts="$(cd "${artifacts}" && pwd -P)"
PY=/usr/bin/python3
marker_name="$("${PY}" -c 'import json,sys; print(json.load(open(sys.argv[1]))["disk_marker"])' "${artifacts}/manifest.json")"
cmdline="$("${PY}" -c 'import json,sys; print(json.load(open(sys.argv[1]))["kernel_cmdline"])' "${artifacts}/manifest.json")"

tmp="$(mktemp -d /tmp/fcwarm-smoke.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill -KILL "${p}" 2>/dev/null || true
    wait "${p}" 2>/dev/null || true
  done
  if [[ "${keep}" -eq 1 ]]; then
    printf 'guest-smoke: kept %s\n' "${tmp}" >&2
  else
    rm -rf "${tmp}"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf 'guest-smoke: %s\n' "$*" >&2; }
fail() {
  log "FAIL: $*"
  local c
  for c in "${tmp}"/*/console.log; do
    [[ -f "${c}" ]] || continue
    log "---- last lines of ${c}"
    tail -n 25 "${c}" >&2 || true
  done
  exit 1
}

# ---- helper: agent and QMP clients over Unix sockets --------------------------------------------------
cat >"${tmp}/client.py" <<'PY'
import json, os, socket, sys, time

def now_ms():
    return time.monotonic() * 1000.0

def agent_request(path, request, timeout):
    """One request on a fresh connection. The connection stays open for writing until the reply arrived:
    QEMU's socket chardev treats a half-close (EOF) as a disconnect and drops what the guest sends."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return json.loads(buf.split(b"\n", 1)[0])
    finally:
        s.close()

def wait_agent(path, total):
    """Pings until the agent answers; returns the reply."""
    deadline = time.monotonic() + total
    last = None
    while time.monotonic() < deadline:
        try:
            return agent_request(path, {"v": 1, "id": 1, "op": "ping"}, 1.0)
        except (OSError, ValueError, ConnectionError) as e:
            last = e
            time.sleep(0.02)
    raise SystemExit("agent did not answer within %.0f s (%s)" % (total, last))

class Qmp:
    def __init__(self, path, total=30):
        deadline = time.monotonic() + total
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.f = self.s.makefile("rwb")
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.f.readline()
        if not line:
            raise SystemExit("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write((json.dumps(msg) + "\n").encode())
        self.f.flush()
        while True:
            r = self.read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise SystemExit("QMP %s failed: %s" % (name, r["error"]))

    def getfd(self, name, fd):
        """QMP getfd: hands `fd` to QEMU over the QMP socket (SCM_RIGHTS) under `name`."""
        msg = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode() + b"\n"
        socket.send_fds(self.s, [msg], [fd])
        while True:
            r = self.read()
            if "return" in r:
                return
            if "error" in r:
                raise SystemExit("QMP getfd failed: %s" % r["error"])

    def wait_migration(self, total=120):
        deadline = time.monotonic() + total
        while time.monotonic() < deadline:
            st = self.cmd("query-migrate")
            status = st.get("status")
            if status == "completed":
                return st
            if status in ("failed", "cancelled"):
                raise SystemExit("migration %s: %s" % (status, st.get("error-desc", "")))
            time.sleep(0.002)
        raise SystemExit("migration did not complete")

transport = os.environ.get("SMOKE_MIGRATE_TRANSPORT", "fd")

def main():
    op = sys.argv[1]
    if op == "wait-agent":
        t0 = now_ms()
        r = wait_agent(sys.argv[2], float(sys.argv[3]))
        print(json.dumps({"reply": r, "ms": round(now_ms() - t0, 1)}))
    elif op == "request":
        r = agent_request(sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4]))
        print(json.dumps(r))
    elif op == "snapshot":
        # snapshot QMP_SOCK STATE_FILE SHARED(0|1)
        q = Qmp(sys.argv[2])
        state, shared = sys.argv[3], sys.argv[4] == "1"
        t0 = now_ms()
        q.cmd("stop")
        t_stop = now_ms()
        if shared:
            q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
        # The default max-bandwidth (128 MiB/s) throttles a stopped VM's migration for nothing.
        q.cmd("migrate-set-parameters", **{"max-bandwidth": 64 << 30})
        if transport == "fd":
            # No shell anywhere: pass an open file to QEMU and migrate into it.
            fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            q.getfd("snapshot", fd)
            os.close(fd)
            q.cmd("migrate", uri="fd:snapshot")
        else:
            # exec: QEMU runs this through /bin/sh -c; the path is generated by us (no outside data).
            q.cmd("migrate", uri="exec:cat > " + state)
        st = q.wait_migration()
        t_done = now_ms()
        print(json.dumps({"stop_ms": round(t_stop - t0, 1), "migrate_ms": round(t_done - t_stop, 1),
                          "total_ms": round(t_done - t0, 1), "ram": st.get("ram", {}),
                          "state_bytes": os.path.getsize(state)}))
        q.cmd("quit")
    elif op == "restore":
        # restore QMP_SOCK STATE_FILE SHARED(0|1) AGENT_SOCK  (QEMU was started with -incoming defer)
        t0 = now_ms()
        q = Qmp(sys.argv[2])
        t_qmp = now_ms()
        state, shared = sys.argv[3], sys.argv[4] == "1"
        if shared:
            q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
        if transport == "fd":
            fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
            q.getfd("snapshot", fd)
            os.close(fd)
            q.cmd("migrate-incoming", uri="fd:snapshot")
        else:
            q.cmd("migrate-incoming", uri="exec:cat " + state)
        q.wait_migration()
        t_loaded = now_ms()
        q.cmd("cont")
        t_cont = now_ms()
        r = wait_agent(sys.argv[5], 30)
        t_ping = now_ms()
        print(json.dumps({"qmp_ready_ms": round(t_qmp - t0, 1), "load_ms": round(t_loaded - t_qmp, 1),
                          "cont_ms": round(t_cont - t_loaded, 1), "ping_after_cont_ms": round(t_ping - t_cont, 1),
                          "total_ms": round(t_ping - t0, 1), "reply": r}))
    elif op == "quit":
        Qmp(sys.argv[2]).cmd("quit")
    else:
        raise SystemExit("unknown op " + op)

main()
PY
client() { "${PY}" "${tmp}/client.py" "$@"; }
ms_now() { date +%s%3N; }
b64dec() { "${PY}" -c 'import base64,sys; sys.stdout.write(base64.b64decode(sys.argv[1]).decode(errors="replace"))' "$1"; }
json_get() { "${PY}" -c 'import json,sys; d=json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    d = d[int(k)] if isinstance(d, list) else d.get(k)
print(json.dumps(d) if isinstance(d, (dict, list, bool)) or d is None else d)' "$1" "$2"; }

# ---- QEMU ----------------------------------------------------------------------------------------------
# start_qemu DIR SHARED(0|1) ROLE(build|clone) DISK [extra args...]; sets qemu_pid
start_qemu() {
  local dir="$1" shared="$2" role="$3" disk="$4"
  shift 4
  # shellcheck disable=SC2054 # commas belong to QEMU option strings
  local -a argv=(
    qemu-system-x86_64
    -machine microvm -accel tcg -m 512 -smp 1
    -nographic -no-reboot -nodefaults
    -serial "file:${dir}/console.log"
    -kernel "${artifacts}/bzImage" -initrd "${artifacts}/initramfs.cpio.gz" -append "${cmdline}"
    -qmp "unix:${dir}/qmp.sock,server=on,wait=off"
    -device virtio-serial-device,id=vser0
    -chardev "socket,id=agent0,path=${dir}/agent.sock,server=on,wait=off"
    -device virtserialport,bus=vser0.0,chardev=agent0,name=org.fcwarm.agent.0
    -drive "id=disk0,file=${disk},format=qcow2,if=none"
    -device virtio-blk-device,drive=disk0
    -netdev user,id=net0
    -device virtio-net-device,netdev=net0,mac=02:fc:00:00:00:01
  )
  if [[ "${shared}" -eq 1 ]]; then
    local share=on
    [[ "${role}" == clone ]] && share=off
    argv+=(-object "memory-backend-file,id=ram0,size=512M,mem-path=${tmp}/ram.img,share=${share}"
      -machine memory-backend=ram0)
  fi
  argv+=("$@")
  printf '%q ' "${argv[@]}" >"${dir}/argv.txt"
  "${argv[@]}" </dev/null >"${dir}/qemu.out" 2>&1 &
  qemu_pid=$!
  pids+=("${qemu_pid}")
}

run_mode() {
  local mode_name="$1" shared="$2"
  local bdir="${tmp}/${mode_name}-build" cdir="${tmp}/${mode_name}-clone"
  mkdir -p "${bdir}" "${cdir}"
  rm -f "${tmp}/ram.img"
  qemu-img create -q -f qcow2 -F raw -b "${artifacts}/disk.ext4" "${bdir}/disk.qcow2"

  log "[${mode_name}] cold boot"
  local t0 t1 reply
  t0="$(ms_now)"
  start_qemu "${bdir}" "${shared}" build "${bdir}/disk.qcow2"
  local build_pid="${qemu_pid}"
  reply="$(client wait-agent "${bdir}/agent.sock" 90)" || fail "[${mode_name}] agent did not answer after cold boot"
  t1="$(ms_now)"
  [[ "$(json_get "${reply}" reply.ok)" == true ]] || fail "[${mode_name}] ping: ${reply}"
  local boot_id
  boot_id="$(json_get "${reply}" reply.result.boot_id)"
  log "[${mode_name}] cold boot to agent ping: $((t1 - t0)) ms (boot_id ${boot_id})"
  grep -q '^fcwarm-init: ready' "${bdir}/console.log" || fail "[${mode_name}] no 'fcwarm-init: ready' on the console"
  cold_ms["${mode_name}"]=$((t1 - t0))

  # exec: the marker file on the data disk
  reply="$(client request "${bdir}/agent.sock" \
    "{\"v\":1,\"id\":2,\"op\":\"exec\",\"argv\":[\"cat\",\"/mnt/data/${marker_name}\"],\"timeout_ms\":5000}" 10)"
  [[ "$(json_get "${reply}" ok)" == true && "$(json_get "${reply}" result.exit_code)" == 0 ]] || fail "exec cat marker: ${reply}"
  local marker
  marker="$(b64dec "$(json_get "${reply}" result.stdout_b64)")"
  [[ "${marker}" == "fcwarm data disk "* ]] || fail "unexpected marker content: ${marker}"
  log "[${mode_name}] exec cat /mnt/data/${marker_name}: ${marker%$'\n'}"

  # runtime_ready with the init's file marker
  reply="$(client request "${bdir}/agent.sock" \
    '{"v":1,"id":3,"op":"runtime_ready","check":{"kind":"file","path":"/run/fcwarm-runtime-ready"}}' 10)"
  [[ "$(json_get "${reply}" result.ready)" == true ]] || fail "runtime_ready: ${reply}"

  # identity on the build VM (user networking: 10.0.2.0/24, gateway 10.0.2.2)
  local now_ns entropy
  now_ns="$(date +%s%N)"
  entropy="$(head -c 64 /dev/urandom | base64 -w0)"
  reply="$(client request "${bdir}/agent.sock" \
    "{\"v\":1,\"id\":4,\"op\":\"identity\",\"hostname\":\"smoke-build\",\"mac\":\"02:fc:00:00:00:02\",\"ip_cidr\":\"10.0.2.15/24\",\"gateway\":\"10.0.2.2\",\"entropy_b64\":\"${entropy}\",\"wall_clock_ns\":${now_ns}}" 10)"
  [[ "$(json_get "${reply}" ok)" == true ]] || fail "identity: ${reply}"
  reply="$(client request "${bdir}/agent.sock" '{"v":1,"id":5,"op":"exec","argv":["sh","-c","hostname; ip -4 addr show dev eth0; ip route; cat /sys/class/net/eth0/address"]}' 10)"
  local netinfo
  netinfo="$(b64dec "$(json_get "${reply}" result.stdout_b64)")"
  grep -q 'smoke-build' <<<"${netinfo}" || fail "hostname not set: ${netinfo}"
  grep -q 'inet 10.0.2.15/24' <<<"${netinfo}" || fail "address not set: ${netinfo}"
  grep -q 'default via 10.0.2.2' <<<"${netinfo}" || fail "route not set: ${netinfo}"
  grep -q '02:fc:00:00:00:02' <<<"${netinfo}" || fail "mac not set: ${netinfo}"
  log "[${mode_name}] identity applied (hostname, mac, ip, route, entropy, clock)"

  reply="$(client request "${bdir}/agent.sock" '{"v":1,"id":6,"op":"quiesce"}' 10)"
  [[ "$(json_get "${reply}" result.synced)" == true ]] || fail "quiesce: ${reply}"

  # CPU use of the agent while nobody is connected (must not spin)
  local before after
  before="$(client request "${bdir}/agent.sock" '{"v":1,"id":7,"op":"exec","argv":["sh","-c","cat /proc/$(pidof fcwarm-agent)/stat"]}' 10)"
  sleep 3
  after="$(client request "${bdir}/agent.sock" '{"v":1,"id":8,"op":"exec","argv":["sh","-c","cat /proc/$(pidof fcwarm-agent)/stat"]}' 10)"
  local ticks_before ticks_after
  ticks_before="$(b64dec "$(json_get "${before}" result.stdout_b64)" | awk '{print $14 + $15}')"
  ticks_after="$(b64dec "$(json_get "${after}" result.stdout_b64)" | awk '{print $14 + $15}')"
  log "[${mode_name}] agent CPU while the host was disconnected for ~3 s: $((ticks_after - ticks_before)) ticks"
  [[ $((ticks_after - ticks_before)) -lt 100 ]] || fail "agent spins while disconnected"

  # ---- snapshot ----
  local snap
  snap="$(client snapshot "${bdir}/qmp.sock" "${tmp}/${mode_name}.state" "${shared}")" || fail "[${mode_name}] snapshot"
  log "[${mode_name}] snapshot: ${snap}"
  wait "${build_pid}" 2>/dev/null || true
  snap_ms["${mode_name}"]="$(json_get "${snap}" total_ms)"
  snap_bytes["${mode_name}"]="$(json_get "${snap}" state_bytes)"
  # The build VM's overlay is now the snapshot's disk; the clone writes to its own overlay on top of it.
  qemu-img create -q -f qcow2 -F qcow2 -b "${bdir}/disk.qcow2" "${cdir}/disk.qcow2"

  # ---- restore ----
  log "[${mode_name}] restore"
  t0="$(ms_now)"
  start_qemu "${cdir}" "${shared}" clone "${cdir}/disk.qcow2" -incoming defer
  local res
  res="$(client restore "${cdir}/qmp.sock" "${tmp}/${mode_name}.state" "${shared}" "${cdir}/agent.sock")" ||
    fail "[${mode_name}] restore"
  t1="$(ms_now)"
  log "[${mode_name}] restore: ${res}"
  log "[${mode_name}] restore (QEMU start) to agent ping: $((t1 - t0)) ms"
  restore_ms["${mode_name}"]=$((t1 - t0))
  [[ "$(json_get "${res}" reply.result.boot_id)" == "${boot_id}" ]] || fail "restored VM has another boot_id"
  reply="$(client request "${cdir}/agent.sock" \
    "{\"v\":1,\"id\":9,\"op\":\"exec\",\"argv\":[\"sh\",\"-c\",\"cat /mnt/data/${marker_name} && hostname && echo clone > /mnt/data/clone-write && sync && cat /mnt/data/clone-write\"]}" 10)"
  [[ "$(json_get "${reply}" result.exit_code)" == 0 ]] || fail "exec in clone: ${reply}"
  local out
  out="$(b64dec "$(json_get "${reply}" result.stdout_b64)")"
  grep -q 'smoke-build' <<<"${out}" || fail "clone lost the build's hostname: ${out}"
  grep -q '^clone$' <<<"${out}" || fail "clone cannot write its disk: ${out}"
  # Reconnect once more (new connection on the same chardev) and make the clone unique.
  reply="$(client request "${cdir}/agent.sock" "{\"v\":1,\"id\":10,\"op\":\"identity\",\"hostname\":\"smoke-clone\",\"wall_clock_ns\":$(date +%s%N)}" 10)"
  [[ "$(json_get "${reply}" result.hostname)" == smoke-clone ]] || fail "identity in clone: ${reply}"
  client quit "${cdir}/qmp.sock" || true
  log "[${mode_name}] OK"
}

declare -A cold_ms=() restore_ms=() snap_ms=() snap_bytes=()
case "${mode}" in
  stream) run_mode stream 0 ;;
  shared-ram) run_mode shared-ram 1 ;;
  both) run_mode stream 0; run_mode shared-ram 1 ;;
esac
for m in "${!cold_ms[@]}"; do
  printf 'guest-smoke: %s: cold boot to ping %s ms; snapshot %s ms (%s byte state); restore to ping %s ms\n' \
    "${m}" "${cold_ms[${m}]}" "${snap_ms[${m}]}" "${snap_bytes[${m}]}" "${restore_ms[${m}]}"
done
printf 'guest-smoke: PASS\n'
