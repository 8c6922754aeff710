#!/usr/bin/env bash
# Builds the fcwarm guest artifacts from Debian packages only:
#   bzImage            the Debian cloud kernel (vmlinuz from linux-image-<ver>-cloud-amd64)
#   vmlinux            the ELF kernel extracted from bzImage (Firecracker needs it)
#   initramfs.cpio.gz  busybox-static + virtio/vsock modules + fcwarm-agent + /init (guest/init.sh) +
#                      /lib/fcwarm/common.sh (guest/common.sh)
#   disk.ext4          64 MiB ext4 data disk with a marker file (the VM's /dev/vda base image)
#   manifest.json      files, sizes, sha256, kernel version, key
#
# usage: guest/build-artifacts.sh --agent PATH_TO_BUILT_AGENT [--out DIR]
#
# Output goes to ${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}/<key>/ (or DIR/<key>/ with --out), where key is a
# digest of the kernel package version, the busybox version, the agent binary and the guest files it uses
# (this script, init.sh, common.sh, kernel-cmdline, extract_vmlinux.py). `current` in the same directory is an
# atomically replaced symlink to the newest build. A run with nothing changed does nothing. The last line on
# stdout is the artifact directory.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly KERNEL_META="linux-image-cloud-amd64"
readonly DISK_SIZE="64M"
readonly DISK_MARKER="fcwarm-disk-marker"
readonly MODULES=(virtio_mmio virtio_blk virtio_net virtio_console vsock vmw_vsock_virtio_transport_common
  vmw_vsock_virtio_transport)

log() { printf 'build-artifacts: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
usage() {
  printf 'usage: %s --agent PATH_TO_BUILT_AGENT [--out DIR]\n' "$0" >&2
  exit 2
}

agent=""
base="${FCWARM_GUEST_DIR:-/var/cache/fcwarm/guest}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --agent)
      [[ $# -ge 2 ]] || usage
      agent="$2"
      shift 2
      ;;
    --out)
      [[ $# -ge 2 ]] || usage
      base="$2"
      shift 2
      ;;
    -h | --help) usage ;;
    *) usage ;;
  esac
done
[[ -n "${agent}" ]] || usage
[[ -f "${agent}" && -x "${agent}" ]] || die "agent binary ${agent} is missing or not executable"
if ! file -b "${agent}" 2>/dev/null | grep -q 'statically linked'; then
  # `file` may be absent; fall back to looking for an ELF interpreter.
  if command -v readelf >/dev/null 2>&1 && readelf -l "${agent}" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "agent binary ${agent} is dynamically linked; the initramfs has no libc"
  fi
fi

# ---- tools ---------------------------------------------------------------------------------------------
apt_updated=0
apt_update_once() {
  if [[ "${apt_updated}" -eq 0 ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
}
need_packages=()
need() { # need PACKAGE PATH_OR_COMMAND
  if [[ "$2" == /* ]]; then
    [[ -e "$2" ]] || need_packages+=("$1")
  else
    command -v "$2" >/dev/null 2>&1 || need_packages+=("$1")
  fi
}
need busybox-static /bin/busybox
need kmod /usr/sbin/depmod
need cpio cpio
need e2fsprogs /usr/sbin/mkfs.ext4
need xz-utils xz
need zstd zstd
need gzip gzip
need lz4 lz4
need python3 /usr/bin/python3
if [[ ${#need_packages[@]} -gt 0 ]]; then
  apt_update_once
  log "installing ${need_packages[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >&2
fi
/bin/busybox true || die "/bin/busybox is not usable"
# busybox-static replaces the dynamic busybox binary at /bin/busybox.
ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamically linked (install busybox-static)"

# ---- inputs and key ------------------------------------------------------------------------------------
kernel_pkg_of_meta() {
  apt-cache depends "${KERNEL_META}" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -1
}
kernel_pkg="$(kernel_pkg_of_meta || true)"
if [[ -z "${kernel_pkg}" ]]; then
  apt_update_once
  kernel_pkg="$(kernel_pkg_of_meta || true)"
fi
[[ -n "${kernel_pkg}" ]] || die "cannot resolve ${KERNEL_META} to a versioned kernel package"
kernel_pkg_version="$(apt-cache policy "${kernel_pkg}" | sed -n 's/^ *Candidate: //p' | head -1)"
[[ -n "${kernel_pkg_version}" && "${kernel_pkg_version}" != "(none)" ]] || die "no candidate for ${kernel_pkg}"
kver="${kernel_pkg#linux-image-}"
busybox_version="$(dpkg-query -W -f='${Version}' busybox-static)"
agent_sha="$(sha256sum "${agent}" | cut -d' ' -f1)"
scripts_sha="$(cat "${SCRIPT_DIR}/build-artifacts.sh" "${SCRIPT_DIR}/init.sh" "${SCRIPT_DIR}/common.sh" \
  "${SCRIPT_DIR}/kernel-cmdline" "${SCRIPT_DIR}/extract_vmlinux.py" | sha256sum | cut -d' ' -f1)"
key="$(printf 'kernel=%s=%s\nbusybox=%s\nagent=%s\nscripts=%s\n' "${kernel_pkg}" "${kernel_pkg_version}" \
  "${busybox_version}" "${agent_sha}" "${scripts_sha}" | sha256sum | cut -c1-16)"
out="${base}/${key}"

mkdir -p "${base}"
exec 9>"${base}/.lock"
flock 9

update_current() {
  local tmp_link="${base}/.current.$$"
  ln -sfn "${key}" "${tmp_link}"
  mv -Tf "${tmp_link}" "${base}/current"
}

if [[ -f "${out}/manifest.json" ]]; then
  ok=1
  for f in bzImage vmlinux initramfs.cpio.gz disk.ext4; do
    [[ -s "${out}/${f}" ]] || ok=0
  done
  if [[ "${ok}" -eq 1 ]]; then
    [[ "$(readlink "${base}/current" 2>/dev/null || true)" == "${key}" ]] || update_current
    log "up to date (key ${key})"
    printf '%s\n' "${out}"
    exit 0
  fi
  log "incomplete ${out}; rebuilding"
fi

work="$(mktemp -d "${base}/.build.${key}.XXXXXX")"
chmod 0755 "${work}" # apt-get download runs as _apt
cleanup() { rm -rf "${work}"; }
trap cleanup EXIT

# ---- kernel --------------------------------------------------------------------------------------------
downloads="${base}/downloads"
mkdir -p "${downloads}"
deb="$(find "${downloads}" -maxdepth 1 -name "${kernel_pkg}_*.deb" -print | sort | tail -1)"
expected_deb_prefix="${kernel_pkg}_${kernel_pkg_version//:/%3a}_"
if [[ -z "${deb}" || "$(basename "${deb}")" != "${expected_deb_prefix}"* ]]; then
  log "downloading ${kernel_pkg} ${kernel_pkg_version}"
  dl="${work}/dl"
  mkdir -p "${dl}"
  chmod 0777 "${dl}" # apt's _apt user writes here
  (cd "${dl}" && apt-get download -q "${kernel_pkg}=${kernel_pkg_version}" >&2)
  deb_new="$(find "${dl}" -maxdepth 1 -name "${kernel_pkg}_*.deb" -print | head -1)"
  [[ -n "${deb_new}" ]] || die "apt-get download produced no .deb"
  find "${downloads}" -maxdepth 1 -name "${kernel_pkg%%-[0-9]*}*.deb" -delete
  mv "${deb_new}" "${downloads}/"
  deb="${downloads}/$(basename "${deb_new}")"
fi
log "unpacking $(basename "${deb}")"
kroot="${work}/kernel"
dpkg -x "${deb}" "${kroot}"
vmlinuz="${kroot}/boot/vmlinuz-${kver}"
[[ -f "${vmlinuz}" ]] || die "${vmlinuz} not in the package"
stage="${work}/out"
mkdir -p "${stage}"
cp "${vmlinuz}" "${stage}/bzImage"
log "extracting vmlinux"
/usr/bin/python3 "${SCRIPT_DIR}/extract_vmlinux.py" "${stage}/bzImage" "${stage}/vmlinux"

# ---- modules -------------------------------------------------------------------------------------------
kmods="${kroot}/lib/modules/${kver}"
[[ -d "${kmods}" ]] || die "no modules for ${kver}"
# The package ships no modules.dep (depmod runs at install time); generate it inside the unpacked tree.
depmod -b "${kroot}" -F "${kroot}/boot/System.map-${kver}" "${kver}"

declare -A seen=()
order=()
rel_of() { # module name -> path relative to the modules dir, or empty if built in
  local f
  f="$(modinfo -b "${kroot}" -k "${kver}" -F filename "$1" 2>/dev/null | head -1)" || true
  [[ -z "${f}" || "${f}" == "(builtin)" ]] && return 0
  printf '%s\n' "${f#"${kmods}/"}"
}
visit() { # depth-first: dependencies before the module
  local rel="$1" dep deps
  [[ -n "${seen[${rel}]:-}" ]] && return 0
  seen["${rel}"]=1
  deps="$(awk -v m="${rel}:" '$1 == m { $1 = ""; print; exit }' "${kmods}/modules.dep")"
  for dep in ${deps}; do
    visit "${dep}"
  done
  order+=("${rel}")
}
for m in "${MODULES[@]}"; do
  if grep -q "/${m}\.ko" "${kmods}/modules.builtin"; then
    log "${m} is built in"
    continue
  fi
  rel="$(rel_of "${m}")"
  [[ -n "${rel}" ]] || die "module ${m} not found for ${kver}"
  visit "${rel}"
done

root="${work}/initramfs"
mkdir -p "${root}"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,mnt/data,root,var/lib,lib/modules/"${kver}"}
load_order=()
for rel in "${order[@]}"; do
  plain="${rel%.xz}"
  plain="${plain%.zst}"
  plain="${plain%.gz}"
  mkdir -p "$(dirname "${root}/lib/modules/${kver}/${plain}")"
  case "${rel}" in
    *.ko.xz) xz -dc "${kmods}/${rel}" >"${root}/lib/modules/${kver}/${plain}" ;;
    *.ko.zst) zstd -q -dc "${kmods}/${rel}" >"${root}/lib/modules/${kver}/${plain}" ;;
    *.ko.gz) gzip -dc "${kmods}/${rel}" >"${root}/lib/modules/${kver}/${plain}" ;;
    *.ko) cp "${kmods}/${rel}" "${root}/lib/modules/${kver}/${plain}" ;;
    *) die "unexpected module file ${rel}" ;;
  esac
  vermagic="$(modinfo -F vermagic "${root}/lib/modules/${kver}/${plain}")"
  [[ "${vermagic}" == "${kver} "* ]] || die "${plain}: vermagic '${vermagic}' does not match ${kver}"
  load_order+=("${plain}")
done
printf '%s\n' "${load_order[@]}" >"${root}/lib/modules/${kver}/load-order"
for f in modules.order modules.builtin modules.builtin.modinfo; do
  [[ -f "${kmods}/${f}" ]] && cp "${kmods}/${f}" "${root}/lib/modules/${kver}/"
done
depmod -b "${root}" "${kver}"
log "modules: ${load_order[*]}"

# ---- initramfs -----------------------------------------------------------------------------------------
cp /bin/busybox "${root}/bin/busybox"
while IFS= read -r applet; do
  [[ -n "${applet}" && "${applet}" != "bin/busybox" ]] || continue
  mkdir -p "$(dirname "${root}/${applet}")"
  [[ -e "${root}/${applet}" ]] || ln -s /bin/busybox "${root}/${applet}"
done < <(/bin/busybox --list-full)
install -m 0755 "${agent}" "${root}/sbin/fcwarm-agent"
install -m 0755 "${SCRIPT_DIR}/init.sh" "${root}/init"
install -D -m 0644 "${SCRIPT_DIR}/common.sh" "${root}/lib/fcwarm/common.sh"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"${root}/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' >"${root}/etc/group"
printf 'fcwarm-guest\n' >"${root}/etc/hostname"
: >"${root}/etc/fstab"
(cd "${root}" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --reproducible -R 0:0) |
  gzip -9 -n >"${stage}/initramfs.cpio.gz"

# ---- data disk -----------------------------------------------------------------------------------------
disk_content="${work}/disk"
mkdir -p "${disk_content}"
printf 'fcwarm data disk %s\n' "${key}" >"${disk_content}/${DISK_MARKER}"
mkfs.ext4 -q -F -L fcwarm-data -d "${disk_content}" -E root_owner=0:0 "${stage}/disk.ext4" "${DISK_SIZE}" >&2

# ---- manifest and publish ------------------------------------------------------------------------------
# The kernel command line QEMU passes under TCG (base + tcg of guest/kernel-cmdline).
cmdline="$(sed -n 's/^\(base\|tcg\): *//p' "${SCRIPT_DIR}/kernel-cmdline" | paste -sd' ')"
manifest_args=()
for f in bzImage vmlinux initramfs.cpio.gz disk.ext4; do
  manifest_args+=("${f}" "$(stat -c %s "${stage}/${f}")" "$(sha256sum "${stage}/${f}" | cut -d' ' -f1)")
done
/usr/bin/python3 - "${stage}/manifest.json" "${key}" "${kernel_pkg}" "${kernel_pkg_version}" "${kver}" \
  "${busybox_version}" "${agent_sha}" "${scripts_sha}" "${cmdline}" "${DISK_MARKER}" "${manifest_args[@]}" <<'PY'
import json, sys
(path, key, kpkg, kpkgver, kver, bbver, agent_sha, scripts_sha, cmdline, marker), rest = sys.argv[1:11], sys.argv[11:]
files = {rest[i]: {"size": int(rest[i + 1]), "sha256": rest[i + 2]} for i in range(0, len(rest), 3)}
doc = {"key": key, "kernel_package": kpkg, "kernel_package_version": kpkgver, "kernel_version": kver,
       "busybox_version": bbver, "agent_sha256": agent_sha, "scripts_sha256": scripts_sha,
       "kernel_cmdline": cmdline, "disk_marker": marker, "agent_protocol": 1, "files": files}
with open(path, "w") as f:
    json.dump(doc, f, indent=2, sort_keys=True)
    f.write("\n")
PY
sync -f "${stage}" 2>/dev/null || sync
rm -rf "${out}"
mv -T "${stage}" "${out}"
update_current
log "built ${out} (kernel ${kver}, $(stat -c %s "${out}/initramfs.cpio.gz") byte initramfs)"
printf '%s\n' "${out}"
