#!/bin/sh
# /sbin/fcwarm-init of the fcwarm docker runtime image (installed by guest/build-docker-image.sh).
# Runs as PID 1 after the initramfs (guest/docker/initramfs-init.sh) switch_root'ed into /dev/vda.
# Mounts the pseudo filesystems, loads overlay/veth/bridge, keeps fcwarm-agent running (fcwarm_start_agent from
# guest/common.sh), starts containerd, then dockerd (no iptables, no bridge, overlay2) on a PRIVATE socket
# (/run/fcwarm/dockerd.sock). Through that
# socket it loads the baked image tarballs (`docker load`) and runs one throw-away container (pre-warm: a
# snapshot then carries runc/containerd-shim/overlay code and data in its page cache), touches
# /run/fcwarm-images-loaded, and only then publishes the public socket: /var/run/docker.sock becomes a
# symlink to the private one. So `GET /_ping` answering on /var/run/docker.sock (runtime_ready kind docker)
# means: daemon up, images loaded, a container has run. If loading or the pre-warm run fails, the socket is
# never published and /run/fcwarm-docker-failed says why. Timings (guest uptime) go to the console and to
# /run/fcwarm-timings.
# dockerd reads /etc/docker/daemon.json (its default location); the agent's `identity` merges registry-mirrors
# and insecure-registries into it and reloads dockerd (SIGHUP). No dockerd flag below may set an option that
# daemon.json sets too (dockerd refuses to start, or to reload, when one is given both ways). Containers run with
# NetworkMode "host" (one container per VM), hence --bridge=none; pulls go out through the VM's eth0 and
# /etc/resolv.conf, both set by `identity`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022
. /lib/fcwarm/common.sh

up() { cut -d' ' -f1 /proc/uptime; }
mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }

mounted /proc || mount -t proc -o nosuid,nodev,noexec proc /proc
mounted /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mounted /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mounted /dev/shm || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mounted /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mounted /tmp || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mounted /sys/fs/cgroup || mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 /sys/fs/cgroup
mount -o remount,rw / 2>/dev/null

t() { echo "fcwarm-init: $1 at $(up)s" | tee -a /run/fcwarm-timings; }
t "init"

for m in overlay veth bridge br_netfilter; do
  modprobe "$m" 2>/dev/null || echo "fcwarm-init: modprobe $m failed"
done

ip link set lo up 2>/dev/null
hostname fcwarm-docker
echo fcwarm-docker >/etc/hostname 2>/dev/null

fcwarm_start_agent
t "agent started"

mkdir -p /run/containerd /var/lib/containerd
containerd >/var/log/containerd.log 2>&1 &
i=0
while [ ! -S /run/containerd/containerd.sock ] && [ "$i" -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
t "containerd socket"

# dockerd listens on a private socket until the images are loaded and a container has run (see above).
priv=/run/fcwarm/dockerd.sock
mkdir -p /run/fcwarm
rm -f /var/run/docker.sock "${priv}"
# The agent may write daemon.json while dockerd starts, but must not SIGHUP it before it serves its API (the
# signal would kill it then). While this marker exists the agent leaves that reload to us (docs/guest-protocol.md,
# `identity`); it is removed before our SIGHUP, so a later write finds dockerd answering and reloads it itself.
reload_marker=/run/fcwarm/dockerd-reload-pending
touch "${reload_marker}"
# OCI runtimes: crun and runc (Debian's default), both registered; the default is crun, measured faster on
# Docker's start path (docs/benchmarks.md, "The runtime inside the guest"), unless the kernel command line says
# fcwarm.docker_runtime=runc.
default_runtime=crun
for arg in $(cat /proc/cmdline); do
  case "$arg" in fcwarm.docker_runtime=runc) default_runtime=runc ;; esac
done
dockerd --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
  --storage-driver=overlay2 --containerd=/run/containerd/containerd.sock \
  --add-runtime crun=/usr/bin/crun --default-runtime "${default_runtime}" \
  -H "unix://${priv}" >/var/log/dockerd.log 2>&1 &
dockerd_pid=$!
i=0
while [ ! -S "${priv}" ] && [ "$i" -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
t "dockerd socket (private)"
i=0
answers=""
while [ "$i" -lt 600 ]; do
  if docker -H "unix://${priv}" version >/dev/null 2>&1; then
    answers=1
    break
  fi
  sleep 0.2
  i=$((i + 1))
done
t "dockerd answers"
# Only a dockerd that serves its API has its SIGHUP handler installed.
if [ -n "${answers}" ]; then
  rm -f "${reload_marker}"
  kill -HUP "${dockerd_pid}" 2>/dev/null && t "dockerd reloads daemon.json"
fi

failed=""
fail() {
  echo "fcwarm-init: FAILED: $1 (/var/run/docker.sock not published)"
  echo "$1" >>/run/fcwarm-docker-failed
  failed=1
}
for img in /var/lib/fcwarm/images/*.tar; do
  [ -f "$img" ] || continue
  if out=$(docker -H "unix://${priv}" load -i "$img" 2>&1); then
    printf '%s\n' "$out" | sed 's/^/fcwarm-init: /'
  else
    printf '%s\n' "$out" | sed 's/^/fcwarm-init: /'
    fail "docker load -i $img failed"
  fi
done
t "images loaded"

if [ -z "$failed" ]; then
  # Pre-warm: one container through the whole path (containerd-shim, runc, overlay mount, cgroup).
  t0=$(up)
  if out=$(docker -H "unix://${priv}" run --rm --network none busybox:latest true 2>&1); then
    t1=$(up)
    t "prewarm container done ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')s)"
  else
    printf '%s\n' "$out" | sed 's/^/fcwarm-init: /'
    fail "pre-warm container (docker run --rm --network none busybox:latest true) failed"
  fi
fi

if [ -z "$failed" ]; then
  touch /run/fcwarm-images-loaded
  # Publish: connect() on /var/run/docker.sock follows the symlink to the private socket.
  ln -sfn "${priv}" /var/run/docker.sock
  t "docker socket published"
  echo "fcwarm-init: ready"
fi

# PID 1 must never exit; reap orphans.
while true; do
  wait 2>/dev/null
  sleep 3600
done
