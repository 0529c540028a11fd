# Source me: `. scripts/containers/env.sh`. Points podman (and every script here) at this repo's containers.conf.
# Respects a CONTAINERS_CONF you already set.
_containers_dir="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$_containers_dir/containers.conf}"
unset _containers_dir
