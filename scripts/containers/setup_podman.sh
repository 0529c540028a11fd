#!/usr/bin/env bash
# Installs podman (with runc) and debootstrap from Debian's packages so images can be built and run without a Docker
# engine or a registry. Idempotent: installs only what is missing. Needs root (or passwordless sudo) on Debian.
#
#   scripts/containers/setup_podman.sh && . scripts/containers/env.sh && podman info
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

# runc: crun fails in sandboxes (setrlimit, hybrid cgroups); see containers.conf.
# uidmap/fuse-overlayfs/slirp4netns: what rootless podman needs when the scripts are not run as root.
packages=(podman runc debootstrap uidmap fuse-overlayfs slirp4netns)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "setup_podman: need root to install: ${missing[*]}" >&2; exit 1; }
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null || { echo "setup_podman: no apt-get; install by hand: ${missing[*]}" >&2; exit 1; }
    echo "setup_podman: installing ${missing[*]}" >&2
    # The package lists of a fresh machine may be empty; one update is enough.
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
fi

. "$here/env.sh"
# Fails loudly here rather than at the first build if the runtime cannot start.
podman info --format '{{.Host.OCIRuntime.Name}}' >/dev/null
echo "podman $(podman version --format '{{.Client.Version}}') ready; export CONTAINERS_CONF=$CONTAINERS_CONF" >&2
