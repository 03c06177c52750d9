#!/usr/bin/env bash
# Builds the images the test bed's node runs, into a cache outside the repository:
#   base      Debian bookworm (debootstrap minbase) with python3: the Dockerfiles' PYTHON_IMAGE
#   pause     the pod sandbox, scripts/pause.c linked statically
#   worker    Dockerfile.worker, unchanged, on that base
#   operator  Dockerfile.operator, unchanged, on that base
# Each is a docker-archive named by a hash of what goes into it, so a cached archive is reused at once
# and a changed input rebuilds only what depends on it. The node (testbed/node.py) imports them into
# its own containerd under the names the chart uses (ghcr.io/kompressor/{worker,operator}:<appVersion>).
#
# Why all this: no image registry is reachable here, and the only packages are Debian's and PyPI's.
# pip inside a build reaches its package index only with the machine's CA bundle and pip
# configuration, which are mounted read-only into the build (never copied into an image).
# Prints "name archive" lines, one per image.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${KOMPRESSOR_CACHE:-$HOME/.cache/kompressor}
OUT=$CACHE/images
mkdir -p "$OUT"
MIRROR=${KOMPRESSOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/kompressor/Chart.yaml)
# buildah keeps its layers next to the archives; containers/storage ignores the system's config.
BUILDAH=(buildah --root "$OUT/storage" --runroot "$OUT/run" --storage-driver overlay)

hash_of() { sha256sum | cut -c1-16; }

# base: debootstrap is the slow part (~2 min); its inputs are the suite, variant and packages.
BASE_PACKAGES=python3,python3-venv,ca-certificates
base_hash=$(printf 'bookworm minbase %s\n' "$BASE_PACKAGES" | hash_of)
base_ref=localhost/kompressor-base:$base_hash
if ! "${BUILDAH[@]}" inspect --type image "$base_ref" >/dev/null 2>&1; then
  root=$OUT/base-rootfs
  rm -rf "$root"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$root" "$MIRROR" >"$OUT/debootstrap.log"
  ln -sf python3 "$root/usr/bin/python"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$ctr" "$root" / >/dev/null
  "${BUILDAH[@]}" config --cmd python3 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$base_ref" >/dev/null
  rm -rf "$root"
fi

# pause: a static binary alone in an image.
pause_hash=$(hash_of <scripts/pause.c)
pause_tar=$OUT/pause-$pause_hash.tar
if [[ ! -f $pause_tar ]]; then
  bin=$(mktemp -d)
  gcc -static -O2 -o "$bin/pause" scripts/pause.c
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$ctr" "$bin/pause" /pause >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/pause"]' "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "localhost/kompressor/pause:$pause_hash" >/dev/null
  "${BUILDAH[@]}" push --quiet "localhost/kompressor/pause:$pause_hash" \
    "docker-archive:$pause_tar.part:localhost/kompressor/pause:$pause_hash" >/dev/null
  mv "$pause_tar.part" "$pause_tar"
  rm -rf "$bin"
fi
echo "pause $pause_tar"

# What pip's configuration refers to on this machine: its files, and the paths and file:// URLs in
# them (local wheel directories and indexes), all mounted read-only at the same place.
pip_mounts=()
while read -r path; do
  pip_mounts+=(-v "$path:$path:ro")
done < <(python3 - <<'PY'
import os, re, subprocess
debug = subprocess.run(["python3", "-m", "pip", "config", "debug"], capture_output=True, text=True).stdout
paths = set(re.findall(r"^\s+(/\S+), exists: True$", debug, re.M))
for value in re.findall(r"[=:]\s*'?([^'\n]+)'?$", debug, re.M):
    for word in value.split():
        word = word.removeprefix("file://")
        if word.startswith("/") and os.path.exists(word):
            # A local "simple" index links to files beside it: mount its parent.
            paths.add(os.path.dirname(word.rstrip("/")) if word.rstrip("/").endswith("/simple") else word)
for path in sorted(paths):
    print(path)
PY
)

# worker and operator: the Dockerfile, its build context (what .dockerignore lets in) and the base.
for name in worker operator; do
  dockerfile=Dockerfile.$name
  image_hash=$(
    {
      echo "$base_hash"
      sha256sum "$dockerfile" .dockerignore
      find pyproject.toml README.md kompressor operator worker -type f \
        ! -path '*/__pycache__/*' ! -name '*.py[cod]' ! -path '*.egg-info*' -print0 | sort -z | xargs -0 sha256sum
    } | hash_of
  )
  tar=$OUT/$name-$image_hash.tar
  if [[ ! -f $tar ]]; then
    ref=ghcr.io/kompressor/$name:$VERSION
    "${BUILDAH[@]}" bud --quiet --layers --network host --isolation chroot \
      --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
      "${pip_mounts[@]}" --build-arg "PYTHON_IMAGE=$base_ref" --build-arg "REVISION=$image_hash" \
      -f "$dockerfile" -t "$ref" . >"$OUT/$name-build.log" 2>&1 \
      || { tail -30 "$OUT/$name-build.log" >&2; exit 1; }
    "${BUILDAH[@]}" push --quiet "$ref" "docker-archive:$tar.part:$ref" >/dev/null
    mv "$tar.part" "$tar"
    # The archives and layers of earlier inputs are of no further use.
    find "$OUT" -maxdepth 1 -name "$name-*.tar" ! -path "$tar" -delete
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
  fi
  echo "$name $tar"
done
