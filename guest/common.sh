# Shell functions shared by the fcwarm guest inits: guest/init.sh (/init of the minimal initramfs) and
# guest/docker/fcwarm-init.sh (/sbin/fcwarm-init of the docker runtime image). Installed as
# /lib/fcwarm/common.sh by guest/build-artifacts.sh and guest/build-docker-image.sh (part of both cache keys) and
# sourced with `. /lib/fcwarm/common.sh`. POSIX sh: busybox ash in the initramfs, dash in the docker image.

# Starts /sbin/fcwarm-agent in the background and restarts it 1 s after it exits, for as long as the guest runs.
# The agent finds its virtio-serial port (and vsock) itself.
fcwarm_start_agent() {
  (
    while true; do
      /sbin/fcwarm-agent
      echo "fcwarm-init: fcwarm-agent exited with $?, restarting in 1s"
      sleep 1
    done
  ) &
}
