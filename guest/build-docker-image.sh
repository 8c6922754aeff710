#!/usr/bin/env bash
# Builds the fcwarm "docker runtime image" from Debian packages only (issue 7, part 1):
#   docker-rootfs.ext4   debootstrap --variant=minbase bookworm + docker.io (+ containerd, runc, crun) + kmod +
#                        the kernel's modules + /sbin/fcwarm-agent + /sbin/fcwarm-init (guest/docker/fcwarm-init.sh)
#                        + /lib/fcwarm/common.sh (guest/common.sh)
#                        + /usr/lib/fcwarm/fcwarm-launch (the entrypoint of parked containers, guest/launcher)
#                        + /var/lib/fcwarm/images/busybox.tar (docker-load format, built here from busybox-static)
#   initramfs.cpio.gz    the minimal artifacts' initramfs with /init replaced by guest/docker/initramfs-init.sh
#                        (loads virtio modules, mounts /dev/vda, switch_root into /sbin/fcwarm-init)
#   bzImage              copied from the minimal artifacts (Debian cloud kernel)
#   manifest.json
#
# usage: guest/build-docker-image.sh --agent PATH_TO_fcwarm-agent [--launcher PATH_TO_fcwarm-launch] [--out DIR]
#                                   [--minimal MINIMAL_ARTIFACT_DIR]
# --launcher defaults to fcwarm-launch next to the agent (both are built in <build>/guest/agent).
#
# Output: ${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/docker-<key>/ (or DIR/docker-<key>/), `docker-current`
# symlink next to it. The minimal artifacts (guest/build-artifacts.sh) must exist (default: <base>/current).
# A second run with nothing changed does nothing. Last stdout line = the output directory.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly SUITE="bookworm"

log() { printf 'build-docker-image: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
usage() {
  printf 'usage: %s --agent PATH_TO_fcwarm-agent [--launcher PATH_TO_fcwarm-launch] [--out DIR] [--minimal DIR]\n' "$0" >&2
  exit 2
}

agent=""
launcher=""
minimal=""
base="${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --agent) [[ $# -ge 2 ]] || usage; agent="$2"; shift 2 ;;
    --launcher) [[ $# -ge 2 ]] || usage; launcher="$2"; shift 2 ;;
    --out) [[ $# -ge 2 ]] || usage; base="$2"; shift 2 ;;
    --minimal) [[ $# -ge 2 ]] || usage; minimal="$2"; shift 2 ;;
    *) usage ;;
  esac
done
[[ -n "${agent}" && -x "${agent}" ]] || usage
[[ -n "${launcher}" ]] || launcher="$(dirname "${agent}")/fcwarm-launch"
[[ -x "${launcher}" ]] || die "launcher ${launcher} is missing or not executable (build the fcwarm-launch target)"
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot)"
[[ -n "${minimal}" ]] || minimal="${base}/current"
minimal="$(readlink -f "${minimal}")"
for f in bzImage initramfs.cpio.gz manifest.json; do
  [[ -f "${minimal}/${f}" ]] || die "minimal artifact ${minimal}/${f} missing (run guest/build-artifacts.sh first)"
done

# The Debian mirror this machine's apt is configured with (one-line or deb822 sources); never another source.
mirror="${FCWARM_DEBIAN_MIRROR:-}"
if [[ -z "${mirror}" ]]; then
  mirror="$( { grep -rhE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                 awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; break } }'
               grep -rhE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{ print $2 }'; } |
             grep -v -- '-security' | head -1 || true)"
fi
[[ -n "${mirror}" ]] || die "no Debian mirror found in /etc/apt sources (set FCWARM_DEBIAN_MIRROR)"

command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get install -y debootstrap >&2; }
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 missing (e2fsprogs)"

# ---- key ------------------------------------------------------------------------------------------------
kver="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kernel_version"])' "${minimal}/manifest.json")"
kpkgver="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kernel_package_version"])' "${minimal}/manifest.json")"
docker_ver="$(apt-cache policy docker.io | awk '/Candidate:/ {print $2}')"
containerd_ver="$(apt-cache policy containerd | awk '/Candidate:/ {print $2}')"
bb_ver="$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')"
key="$({
  echo "suite=${SUITE} mirror=${mirror} docker=${docker_ver} containerd=${containerd_ver} busybox=${bb_ver}"
  echo "kernel=${kver} ${kpkgver}"
  sha256sum <"${agent}"
  sha256sum <"${launcher}"
  sha256sum <"${minimal}/bzImage"
  sha256sum <"${minimal}/initramfs.cpio.gz"
  cat "${SCRIPT_DIR}/build-docker-image.sh" "${SCRIPT_DIR}/docker/fcwarm-init.sh" "${SCRIPT_DIR}/docker/initramfs-init.sh" \
    "${SCRIPT_DIR}/common.sh" "${SCRIPT_DIR}/kernel-cmdline"
} | sha256sum | cut -c1-16)"
out="${base}/docker-${key}"
mkdir -p "${base}"
exec 9>"${base}/.lock"
flock 9
if [[ -f "${out}/manifest.json" ]]; then
  ln -sfn "docker-${key}" "${base}/.docker-current.tmp" && mv -T "${base}/.docker-current.tmp" "${base}/docker-current"
  log "up to date: ${out}"
  echo "${out}"
  exit 0
fi

t0=$(date +%s.%N)
stage="$(mktemp -d "${base}/.build.docker-${key}.XXXXXX")"
root="${stage}/rootfs"
cleanup() {
  for m in proc sys dev/pts dev; do mountpoint -q "${root}/${m}" 2>/dev/null && umount -l "${root}/${m}"; done
  rm -rf "${stage}"
}
trap cleanup EXIT
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }

# ---- debootstrap + docker.io ------------------------------------------------------------------------------
log "debootstrap --variant=minbase ${SUITE} from ${mirror}"
ta=$(date +%s.%N)
debootstrap --variant=minbase "${SUITE}" "${root}" "${mirror}" >"${stage}/debootstrap.log" 2>&1 ||
  { tail -20 "${stage}/debootstrap.log" >&2; die "debootstrap failed"; }
log "debootstrap took $(elapsed "${ta}")s"

ta=$(date +%s.%N)
printf '#!/bin/sh\nexit 101\n' >"${root}/usr/sbin/policy-rc.d"
chmod +x "${root}/usr/sbin/policy-rc.d"
mount -t proc proc "${root}/proc"
mount -t sysfs sysfs "${root}/sys"
mount --bind /dev "${root}/dev"
mount --bind /dev/pts "${root}/dev/pts"
chroot "${root}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  docker.io containerd runc crun kmod iproute2 >"${stage}/apt.log" 2>&1 ||
  { tail -20 "${stage}/apt.log" >&2; die "apt-get install docker.io failed"; }
chroot "${root}" apt-get clean
for m in dev/pts dev sys proc; do umount "${root}/${m}"; done
rm -f "${root}/usr/sbin/policy-rc.d"
rm -rf "${root}/var/lib/apt/lists/"* "${root}/var/cache/apt/"*.bin
log "docker.io install took $(elapsed "${ta}")s ($(chroot "${root}" dpkg-query -W -f '${Version}' docker.io))"

# ---- kernel modules (from the cached kernel .deb, same version as bzImage) ---------------------------------
kdeb="$(ls "${base}/downloads/linux-image-${kver}_${kpkgver}_"*.deb 2>/dev/null | head -1 || true)"
if [[ -z "${kdeb}" ]]; then
  (cd "${stage}" && apt-get download "linux-image-${kver}=${kpkgver}" >&2)
  kdeb="$(ls "${stage}"/linux-image-"${kver}"_*.deb | head -1)"
fi
dpkg -x "${kdeb}" "${stage}/kernel"
mkdir -p "${root}/lib/modules"
cp -a "${stage}/kernel/lib/modules/${kver}" "${root}/lib/modules/"
depmod -b "${root}" -F "${stage}/kernel/boot/System.map-${kver}" "${kver}"

# ---- agent + init ------------------------------------------------------------------------------------------
install -m 0755 "${agent}" "${root}/sbin/fcwarm-agent"
install -m 0755 "${SCRIPT_DIR}/docker/fcwarm-init.sh" "${root}/sbin/fcwarm-init"
install -D -m 0644 "${SCRIPT_DIR}/common.sh" "${root}/lib/fcwarm/common.sh"
install -D -m 0755 "${launcher}" "${root}/usr/lib/fcwarm/fcwarm-launch"
echo fcwarm-docker >"${root}/etc/hostname"
mkdir -p "${root}/etc/docker"
echo '{"log-driver": "json-file"}' >"${root}/etc/docker/daemon.json"
# debootstrap leaves the build host's resolv.conf in the image; guests get theirs from `identity` (dns). Until
# then there is no nameserver (the resolver tries localhost), so nothing from the build host leaks into a VM.
rm -f "${root}/etc/resolv.conf"
printf '# no nameserver: fcwarm-agent writes this file at identity (dns)\n' >"${root}/etc/resolv.conf"
chmod 0644 "${root}/etc/resolv.conf"

# ---- busybox image in `docker load` format -----------------------------------------------------------------
ta=$(date +%s.%N)
(cd "${stage}" && apt-get download busybox-static >&2)
dpkg -x "${stage}"/busybox-static_*.deb "${stage}/bb"
img="${stage}/img"
lroot="${img}/layerroot"
mkdir -p "${lroot}"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,var}
cp "${stage}/bb/bin/busybox" "${lroot}/bin/busybox"
for a in $("${lroot}/bin/busybox" --list); do
  [[ "${a}" == busybox ]] || ln -sf busybox "${lroot}/bin/${a}"
done
chmod 1777 "${lroot}/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"${lroot}/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"${lroot}/etc/group"
tar --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner -C "${lroot}" -cf "${img}/layer.tar" .
python3 - "${img}" "${bb_ver}" <<'EOF'
import hashlib, json, os, sys
img, bbver = sys.argv[1], sys.argv[2]
layer = os.path.join(img, "layer.tar")
diff_id = "sha256:" + hashlib.sha256(open(layer, "rb").read()).hexdigest()
ldir = diff_id.split(":")[1]
os.makedirs(os.path.join(img, "out", ldir))
os.rename(layer, os.path.join(img, "out", ldir, "layer.tar"))
with open(os.path.join(img, "out", ldir, "VERSION"), "w") as f:
    f.write("1.0")
config = {
    "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"],
               "Labels": {"org.fcwarm.source": "debian busybox-static " + bbver}},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "fcwarm build-docker-image.sh"}],
}
cbytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
cname = hashlib.sha256(cbytes).hexdigest() + ".json"
open(os.path.join(img, "out", cname), "wb").write(cbytes)
manifest = [{"Config": cname, "RepoTags": ["busybox:latest"], "Layers": [ldir + "/layer.tar"]}]
open(os.path.join(img, "out", "manifest.json"), "w").write(json.dumps(manifest))
open(os.path.join(img, "out", "repositories"), "w").write(json.dumps({"busybox": {"latest": ldir}}))
EOF
mkdir -p "${root}/var/lib/fcwarm/images"
tar --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner -C "${img}/out" -cf "${root}/var/lib/fcwarm/images/busybox.tar" .
log "busybox image: $(stat -c %s "${root}/var/lib/fcwarm/images/busybox.tar") bytes ($(elapsed "${ta}")s)"

# ---- initramfs: minimal one with a switch_root /init ------------------------------------------------------
ir="${stage}/initramfs"
mkdir -p "${ir}"
(cd "${ir}" && gzip -dc "${minimal}/initramfs.cpio.gz" | cpio -idm --quiet)
install -m 0755 "${SCRIPT_DIR}/docker/initramfs-init.sh" "${ir}/init"
rm -f "${ir}/sbin/fcwarm-agent"
mkdir -p "${ir}/newroot"
(cd "${ir}" && find . -print0 | sort -z | cpio --null -o -H newc --quiet | gzip -9 >"${stage}/initramfs.cpio.gz")
cp "${minimal}/bzImage" "${stage}/bzImage"

# ---- ext4 --------------------------------------------------------------------------------------------------
used_mb=$(du -sm "${root}" | cut -f1)
size_mb=$(((used_mb * 12 / 10) + 1024))
ta=$(date +%s.%N)
mkfs.ext4 -q -F -L fcwarm-docker -E root_owner=0:0 -d "${root}" "${stage}/docker-rootfs.ext4" "${size_mb}M"
log "docker-rootfs.ext4: ${used_mb} MB used, ${size_mb} MiB image ($(elapsed "${ta}")s)"
rm -rf "${root}" "${stage}/kernel" "${stage}/bb" "${img}" "${ir}" "${stage}"/*.deb

# The kernel command line QEMU passes under TCG (base + tcg of guest/kernel-cmdline), for the manifest.
cmdline="$(sed -n 's/^\(base\|tcg\): *//p' "${SCRIPT_DIR}/kernel-cmdline" | paste -sd' ')"
python3 - "${stage}" "${key}" "${kver}" "${docker_ver}" "${containerd_ver}" "${bb_ver}" "${cmdline}" "${used_mb}" <<'EOF'
import hashlib, json, os, sys
stage, key, kver, dv, cv, bv, cmdline, used = sys.argv[1:9]
files = {}
for n in ("bzImage", "initramfs.cpio.gz", "docker-rootfs.ext4"):
    p = os.path.join(stage, n); h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
    files[n] = {"size": os.path.getsize(p), "sha256": h.hexdigest()}
doc = {"key": key, "kind": "docker", "kernel_version": kver, "docker_io_version": dv, "containerd_version": cv,
       "busybox_version": bv, "kernel_cmdline": cmdline, "rootfs_used_mb": int(used),
       "images": ["busybox:latest"], "runtime_ready": {"kind": "docker", "socket": "/var/run/docker.sock"},
       "files": files}
open(os.path.join(stage, "manifest.json"), "w").write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
EOF
rm -f "${stage}"/*.log
trap - EXIT
mv -T "${stage}" "${out}"
ln -sfn "docker-${key}" "${base}/.docker-current.tmp" && mv -T "${base}/.docker-current.tmp" "${base}/docker-current"
log "built ${out} in $(elapsed "${t0}")s"
echo "${out}"
