#!/usr/bin/env bash
# Makes the local base image localhost/python-base:bookworm (Debian bookworm minbase + python3 + venv) from Debian's
# packages, for machines that reach no container registry. Skips the work when the image already exists.
# The Dockerfiles under docker/ take it via --build-arg BASE_IMAGE=localhost/python-base:bookworm.
#
#   scripts/containers/make_base_image.sh [IMAGE]
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), BASE_IMAGE_REBUILD=1 to rebuild anyway.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"

image="${1:-localhost/python-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# python3-venv brings ensurepip's bundled pip, enough for offline `pip install --no-index`; ca-certificates for
# HTTPS to S3 and the ML API; tini reaps zombies and forwards signals as PID 1.
packages=python3,python3-venv,ca-certificates,tini

# The image carries the hash of this recipe: an edited recipe rebuilds, an unchanged one is reused.
recipe="$(sha256sum "$0" | cut -c1-16)"
label=org.batch-orchestration.base-recipe
if [[ -z "${BASE_IMAGE_REBUILD:-}" ]] && podman image exists "$image" \
    && [[ "$(podman image inspect --format "{{index .Labels \"$label\"}}" "$image")" == "$recipe" ]]; then
    echo "make_base_image: $image is up to date, nothing to do" >&2
    exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "make_base_image: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "make_base_image: run scripts/containers/setup_podman.sh first" >&2; exit 1; }

rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/python-base.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

echo "make_base_image: debootstrap bookworm into $rootfs (about a minute)" >&2
log="$rootfs.log"
if ! debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "make_base_image: debootstrap failed (full log: $log)" >&2
    exit 1
fi
rm -f "$log"
# Package lists, caches and docs add ~40 MB and nothing at run time.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

tar -C "$rootfs" --numeric-owner -c . | podman import --quiet \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $label=$recipe" \
    --change 'CMD ["/usr/bin/python3"]' \
    --message "debootstrap minbase bookworm + $packages" \
    - "$image" >/dev/null
echo "make_base_image: built $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)" >&2
