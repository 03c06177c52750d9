#!/usr/bin/env bash
# Builds the test bed's Kubernetes binaries from Debian bookworm's own source package, plus Debian's
# etcd, into a cache outside the repository: the control plane (kube-apiserver,
# kube-controller-manager) and the node (kubelet, kube-proxy, kube-scheduler). Idempotent: the
# binaries already cached are kept, the missing ones are built together in one `make WHAT=...`, so
# they share one Go build (a fresh machine builds all five at once).
#
# Why from source: Debian bookworm ships no kube-apiserver binary, there is no Docker here, and
# nothing may be downloaded from outside Debian. Why the reflect2 swap: the vendored
# github.com/modern-go/reflect2 v1.0.1 reads Go runtime internals that changed in Go 1.18; with it the
# apiserver segfaults on the first custom resource. Debian's 1.0.2 is fixed.
set -euo pipefail

CACHE=${KOMPRESSOR_CACHE:-$HOME/.cache/kompressor}
OUT=$CACHE/kube/bin
missing=()
for name in kube-apiserver kube-controller-manager kubelet kube-proxy kube-scheduler; do
  [[ -x $OUT/$name ]] || missing+=("$name")
done
if [[ ${#missing[@]} -eq 0 && -x $OUT/etcd ]]; then
  echo "kube test bed binaries cached in $OUT"
  exit 0
fi

WORK=$CACHE/kube-build
APT=$WORK/apt
rm -rf "$WORK"
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$OUT"

# A private apt configuration with a deb-src line, so the machine's own sources stay untouched.
cat > "$APT/sources.list" <<SRC
deb http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main
SRC
APTOPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
         -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT" -o "Debug::NoLocking=1"
         -o "APT::Sandbox::User=root")
apt-get "${APTOPTS[@]}" -q update

cd "$WORK"
apt-get "${APTOPTS[@]}" -q source --download-only kubernetes
apt-get "${APTOPTS[@]}" -q download golang-1.19-go golang-1.19-src etcd-server rsync libpopt0 \
  golang-github-modern-go-reflect2-dev
mkdir -p root
for deb in ./*.deb; do dpkg -x "$deb" root; done
dpkg-source --no-check -x kubernetes_*.dsc src >/dev/null

# Replace the vendored reflect2 (see the header).
rm -rf src/vendor/github.com/modern-go/reflect2
cp -r root/usr/share/gocode/src/github.com/modern-go/reflect2 src/vendor/github.com/modern-go/reflect2

export GOROOT=$WORK/root/usr/lib/go-1.19
export PATH=$GOROOT/bin:$WORK/root/usr/bin:$PATH
export LD_LIBRARY_PATH=$WORK/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export GOCACHE=$WORK/gocache
unset GO111MODULE
cd src
if [[ ${#missing[@]} -gt 0 ]]; then
  make WHAT="${missing[*]/#/cmd/}"
  for name in "${missing[@]}"; do cp "_output/local/go/bin/$name" "$OUT/"; done
fi
cp "$WORK/root/usr/bin/etcd" "$OUT/"
cd "$CACHE" && rm -rf "$WORK"
echo "kube test bed binaries built in $OUT"
