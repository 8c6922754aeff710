#!/bin/sh
# /init of the fcwarm guest initramfs (busybox). Installed by guest/build-artifacts.sh.
# Mounts the pseudo filesystems, loads the virtio/vsock modules, mounts /dev/vda at /mnt/data when present,
# keeps fcwarm-agent running (fcwarm_start_agent from guest/common.sh), marks the runtime ready and prints
# "fcwarm-init: ready" on the console.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
umask 022
. /lib/fcwarm/common.sh

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
if ! mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev; then
  mount -t tmpfs -o mode=0755,nosuid tmpfs /dev
  mdev -s
fi
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
echo "fcwarm-init: uptime $(cut -d' ' -f1 /proc/uptime)s, loading modules"

kver="$(uname -r)"
moddir="/lib/modules/${kver}"
if [ -f "${moddir}/load-order" ]; then
  while read -r mod; do
    [ -n "${mod}" ] || continue
    insmod "${moddir}/${mod}" || echo "fcwarm-init: insmod ${mod} failed"
  done < "${moddir}/load-order"
else
  echo "fcwarm-init: no modules for kernel ${kver}"
fi
# Devices appear when the drivers probe; mdev fills /dev if devtmpfs is missing.
[ -x /sbin/mdev ] && ! grep -q devtmpfs /proc/mounts && mdev -s

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
hostname fcwarm-guest
[ -d /etc ] && echo fcwarm-guest > /etc/hostname

# The first virtio disk, if any, holds data (ext4). Wait briefly for the probe.
i=0
while [ ! -b /dev/vda ] && [ "${i}" -lt 20 ] && grep -q virtio_blk /proc/modules; do
  sleep 0.05
  i=$((i + 1))
done
if [ -b /dev/vda ]; then
  mkdir -p /mnt/data
  if mount -t ext4 /dev/vda /mnt/data; then
    echo "fcwarm-init: /dev/vda mounted at /mnt/data"
  else
    echo "fcwarm-init: mounting /dev/vda failed"
  fi
fi

fcwarm_start_agent

touch /run/fcwarm-runtime-ready
echo "fcwarm-init: uptime $(cut -d' ' -f1 /proc/uptime)s"
echo "fcwarm-init: ready"

# PID 1 must never exit; the shell also reaps orphans re-parented to it.
while true; do
  sleep 3600
done
