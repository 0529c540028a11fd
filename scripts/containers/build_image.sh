#!/usr/bin/env bash
# Builds one of this repo's images with podman, offline (--network none), from the local base image.
# Reuses an existing image when its content hash (Dockerfile + base image + wheelhouse) is unchanged.
#
#   scripts/containers/build_image.sh batch-job|alerting-service [TAG]
# Env: BASE_IMAGE (default localhost/python-base:bookworm, made by make_base_image.sh);
#      WHEELHOUSE_FRESH=1: build/wheelhouse was just refreshed by make_wheelhouse.sh, do not refresh it again.
# Prints the tag it built or reused on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
. "$here/env.sh"

name="${1:?usage: build_image.sh batch-job|alerting-service [TAG]}"
dockerfile="$repo/docker/$name.Dockerfile"
[[ -f "$dockerfile" ]] || { echo "build_image: no $dockerfile" >&2; exit 1; }
version="$(cd "$repo" && "${UV:-uv}" version --short)"
tag="${2:-batch-orchestration/$name:$version}"
base="${BASE_IMAGE:-localhost/python-base:bookworm}"
label=org.batch-orchestration.content-hash

podman image exists "$base" || "$here/make_base_image.sh" "$base"
[[ "${WHEELHOUSE_FRESH:-}" == 1 ]] || "$here/make_wheelhouse.sh" "$repo/build/wheelhouse"

content_hash="$(
    {
        sha256sum "$dockerfile" "$repo/.dockerignore"
        podman image inspect --format '{{.Id}}' "$base"
        (cd "$repo/build/wheelhouse" && sha256sum -- * | sort -k2)
    } | sha256sum | cut -c1-32
)"
if podman image exists "$tag" \
    && [[ "$(podman image inspect --format "{{index .Labels \"$label\"}}" "$tag")" == "$content_hash" ]]; then
    echo "build_image: $tag is up to date" >&2
    echo "$tag"
    exit 0
fi

echo "build_image: building $tag from $base" >&2
podman build --network none --quiet \
    --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" \
    --label "$label=$content_hash" \
    --file "$dockerfile" --tag "$tag" "$repo" >&2
# Superseded builds (untagged images derived from the local base, which carry its label) only take disk space.
podman image prune --force --filter "label=org.batch-orchestration.base-recipe" >/dev/null
echo "$tag"
