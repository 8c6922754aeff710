#!/bin/sh
# /sbin/fcwarm-init of the fcwarm docker runtime image (installed by guest/build-docker-image.sh).
# Runs as PID 1 after the initramfs (guest/docker/initramfs-init.sh) switch_root'ed into /dev/vda.
# Mounts the pseudo filesystems, loads overlay/veth/bridge, keeps fcwarm-agent running, starts containerd,
# then dockerd (no iptables, no bridge, overlay2), loads the baked image tarballs with `docker load` once
# dockerd answers, then touches /run/fcwarm-images-loaded. Timings (guest uptime) go to the console and to
# /run/fcwarm-timings.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022

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

# fcwarm-agent, restarted whenever it exits (it finds the virtio-serial port itself).
(
  while true; do
    /sbin/fcwarm-agent
    echo "fcwarm-init: fcwarm-agent exited with $?, restarting in 1s"
    sleep 1
  done
) &
t "agent started"

mkdir -p /run/containerd /var/lib/containerd
containerd >/var/log/containerd.log 2>&1 &
i=0
while [ ! -S /run/containerd/containerd.sock ] && [ "$i" -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
t "containerd socket"

dockerd --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
  --storage-driver=overlay2 --containerd=/run/containerd/containerd.sock \
  -H unix:///var/run/docker.sock >/var/log/dockerd.log 2>&1 &
i=0
while [ ! -S /var/run/docker.sock ] && [ "$i" -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
t "dockerd socket"
i=0
until docker version >/dev/null 2>&1 || [ "$i" -ge 600 ]; do sleep 0.2; i=$((i + 1)); done
t "dockerd answers"

for img in /var/lib/fcwarm/images/*.tar; do
  [ -f "$img" ] || continue
  docker load -i "$img" 2>&1 | sed 's/^/fcwarm-init: /'
done
touch /run/fcwarm-images-loaded
t "images loaded"
echo "fcwarm-init: ready"

# PID 1 must never exit; reap orphans.
while true; do
  wait 2>/dev/null
  sleep 3600
done
