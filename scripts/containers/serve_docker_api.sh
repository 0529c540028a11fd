#!/usr/bin/env bash
# Serves the Docker API (version 1.41) from podman on a unix socket, in the foreground, until stopped.
# The `docker` client and Airflow's DockerOperator work against it:
#   scripts/containers/serve_docker_api.sh /tmp/podman.sock &
#   DOCKER_HOST=unix:///tmp/podman.sock docker ps
#   BATCH_PIPELINE_DOCKER_URL=unix:///tmp/podman.sock   # for the DAG
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
socket="${1:?usage: serve_docker_api.sh /path/to/podman.sock}"
mkdir -p "$(dirname "$socket")"
# --time=0: never exit for idleness; the caller stops it.
exec podman system service --time=0 "unix://$socket"
