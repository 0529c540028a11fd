"""Real containers for the tests: podman (set up by scripts/containers/), the images built from docker/,
the Docker API served by podman on a unix socket, and the batch job's peers on loopback.

Nothing is faked on the container side: podman runs the image built by the project's Dockerfile, and the
DockerOperator talks Docker API 1.41 to `podman system service`. The object store is moto's S3 server on
loopback (MinIO cannot run on these machines; moto speaks the same S3 API over real HTTP, so boto3 in the job
is exercised unchanged). The results database is a fresh database of the local PostgreSQL; the ML API is the
example one, requiring an API key.

Podman is installed by the fixtures when missing. Where it cannot be (no root, no apt), the tests fail
saying so: a container test that did not run is not counted as passed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from containers_support import (
    ML_API_KEY,
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    SCRIPTS,
    run,
)

from tests.support.peers import (
    Landing,
    MlApi,
    ml_api_process,
    s3_landing,
    scratch_database,
    stop,
    wait_until_up,
)


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    """The environment every podman call uses (CONTAINERS_CONF), after setup_podman.sh made podman work."""
    env = {**os.environ, "CONTAINERS_CONF": str(SCRIPTS / "containers.conf")}
    result = subprocess.run(
        ["bash", str(SCRIPTS / "setup_podman.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        pytest.fail(
            "scripts/containers/setup_podman.sh failed (installing podman needs root and apt): "
            f"{result.stderr[-2000:]}"
        )
    return env


@pytest.fixture(scope="session")
def build_env(podman_env: dict[str, str]) -> dict[str, str]:
    """podman_env for build_image.sh, with the wheelhouse refreshed once for the session's image builds."""
    run(["bash", str(SCRIPTS / "make_wheelhouse.sh")], env=podman_env, timeout=1200)
    return {**podman_env, "WHEELHOUSE_FRESH": "1"}


@pytest.fixture(scope="session")
def batch_job_image(build_env: dict[str, str]) -> str:
    """The image of docker/batch-job.Dockerfile on the local base; reused while its inputs are unchanged."""
    return run(["bash", str(SCRIPTS / "build_image.sh"), "batch-job"], env=build_env, timeout=1200).strip()


@pytest.fixture(scope="session")
def docker_api(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`podman system service` speaking the Docker API on a unix socket of its own; yields its unix:// URL."""
    socket_path = tmp_path_factory.mktemp("podman-api") / "podman.sock"
    process = subprocess.Popen(
        ["bash", str(SCRIPTS / "serve_docker_api.sh"), str(socket_path)],
        env=podman_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman system service did not create {socket_path}")
            time.sleep(0.1)
        wait_until_up("http://podman/_ping", process, uds=str(socket_path))
        yield f"unix://{socket_path}"
    finally:
        stop(process)


@pytest.fixture(scope="session")
def ml_api() -> Iterator[MlApi]:
    """The example ML API as its own process, requiring ML_API_KEY."""
    with ml_api_process(ML_API_KEY) as ml_api:
        yield ml_api


@pytest.fixture(scope="session")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landing]:
    with s3_landing(tmp_path_factory.mktemp("landing"), S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY) as landing:
        yield landing


@pytest.fixture(scope="session")
def results_db() -> Iterator[str]:
    """A PostgreSQL database of its own for the session's scored rows; dropped at the end."""
    with scratch_database("containers_tests_") as name:
        yield name
