#!/usr/bin/env bash
# Installs every Debian 12 package fcwarm needs to build, test and run (as root). Idempotent: when nothing is
# missing it does not touch apt at all.
set -euo pipefail

packages=(
  # build
  cmake ninja-build g++ pkg-config
  # libraries
  libsqlitecpp-dev libsqlite3-dev libboost-json1.81-dev libuv1-dev pybind11-dev python3-dev
  libcurl4-openssl-dev libhttp-parser-dev libcli11-dev libspdlog-dev uuid-dev libxxhash-dev
  # tests and docs
  doctest-dev doxygen python3-pytest curl jq socat
  # the fcwarm CLI (tables, progress bars)
  python3-rich
  # the libFuzzer targets (scripts/fuzz.sh)
  clang-14 libclang-rt-14-dev
  # VMs and guest images
  qemu-system-x86 qemu-utils busybox-static lz4 cpio iproute2 e2fsprogs kmod zstd xz-utils gzip
  # host networking: egress policy and published ports (docs/networking.md)
  iptables
  # the offline test registry (tests/support/registry.py): Docker distribution 2.8 and skopeo to push
  docker-registry skopeo
  # the snapshot repository and cluster coordination (issue 16): zstd chunks, SHA-256 payload digests for SigV4,
  # S3 listings (XML); and for the `cluster` tests a one-node Ceph with the RADOS Gateway, and etcd
  libzstd-dev libssl-dev libexpat1-dev
  ceph-mon ceph-osd radosgw etcd-server etcd-client python3-boto3
  # deploy/ manifests are checked by tests/cluster/test_deploy.py: the Kubernetes YAML with PyYAML
  python3-yaml
)
if [[ -n "${FCWARM_EXTRA_PACKAGES:-}" ]]; then
  read -r -a extra <<<"${FCWARM_EXTRA_PACKAGES}"
  packages+=("${extra[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # docker-registry's package enables a system service listening on :5000 on every address. The tests run
  # their own registry in a network namespace; a registry open to the network was not asked for, so switch
  # the service off when this run installed it (and systemd is there to have started it).
  if [[ " ${missing[*]} " == *" docker-registry "* ]] && [[ -d /run/systemd/system ]]; then
    systemctl disable --now docker-registry.service || echo "setup: could not disable docker-registry.service" >&2
  fi
  # Likewise etcd-server's package starts etcd on 127.0.0.1:2379; the cluster tests start their own.
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && [[ -d /run/systemd/system ]]; then
    systemctl disable --now etcd.service || echo "setup: could not disable etcd.service" >&2
  fi
else
  echo "setup: all ${#packages[@]} packages present"
fi
