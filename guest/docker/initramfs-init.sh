#!/bin/sh
# /init of the docker runtime's tiny initramfs (busybox-static + the minimal initramfs's virtio modules).
# Loads virtio_mmio/virtio_blk/virtio_console/virtio_net (load-order list), mounts /dev/vda (ext4) read-write
# at /newroot and switch_roots into /sbin/fcwarm-init. The remaining modules (overlay, veth, bridge) are
# loaded from the rootfs's own /lib/modules by fcwarm-init.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || { mount -t tmpfs tmpfs /dev; mdev -s; }
kver="$(uname -r)"
moddir="/lib/modules/${kver}"
while read -r mod; do
  [ -n "${mod}" ] && insmod "${moddir}/${mod}" 2>/dev/null
done <"${moddir}/load-order"
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
[ -b /dev/vda ] || mdev -s
mkdir -p /newroot
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "fcwarm-initramfs: cannot mount /dev/vda"; sleep 2; exit 1
fi
echo "fcwarm-initramfs: root mounted at $(cut -d' ' -f1 /proc/uptime)s, switch_root"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/fcwarm-init
