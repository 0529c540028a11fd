#!/usr/bin/env bash
# Fills build/wheelhouse/ (git-ignored) with everything the images install, so `podman build --network none` (or a
# build on a host that reaches no index) needs nothing from outside:
#   batch_orchestration-<version>-py3-none-any.whl   this project (uv build)
#   <image>.requirements.txt                         pins + hashes from uv.lock, per docker/<image>.requirements.in
#   *.whl                                            those pins, for CPython 3.11 on glibc x86_64 (pip download)
#   airflow-constraints.txt                          the whole lock, as constraints for docker/airflow.Dockerfile
# Idempotent: pip skips wheels already there with the right hash.
#
#   scripts/containers/make_wheelhouse.sh [OUT_DIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/build/wheelhouse}"
uv="${UV:-uv}"
pip_version=26.0.1
# The images' platform, not the host's: Debian bookworm's CPython 3.11, glibc 2.36. pip does not widen a
# manylinux_2_36 --platform to the older glibc tags a wheel may carry, so every compatible tag is listed.
platform_args=(--python-version 3.11 --implementation cp --abi cp311)
for glibc_minor in $(seq 36 -1 17); do platform_args+=(--platform "manylinux_2_${glibc_minor}_x86_64"); done
platform_args+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

mkdir -p "$out"
cd "$repo"

# An old project wheel beside the new one would make the Dockerfiles' glob ambiguous.
rm -f "$out"/batch_orchestration-*.whl
"$uv" build --quiet --wheel --out-dir "$out" >&2

for roots in docker/*.requirements.in; do
    image="$(basename "$roots" .requirements.in)"
    "$uv" run --frozen --quiet python scripts/containers/image_requirements.py "$roots" >"$out/$image.requirements.txt"
    "$uv" tool run --quiet --from "pip==$pip_version" pip download --quiet --disable-pip-version-check \
        --require-hashes --no-deps --only-binary=:all: "${platform_args[@]}" --dest "$out" --requirement "$out/$image.requirements.txt" >&2
done

"$uv" export --frozen --quiet --no-dev --no-emit-project --no-hashes --output-file "$out/airflow-constraints.txt" >/dev/null
echo "make_wheelhouse: $(ls "$out"/*.whl | wc -l) wheels in $out" >&2
