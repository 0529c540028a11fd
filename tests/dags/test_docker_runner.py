"""batch_pipeline_dag with BATCH_PIPELINE_DOCKER_URL set: the job runs in the pinned image via the Docker API.

There is no Docker engine on these machines; podman serves the same Docker API (1.41) on a unix socket
(scripts/containers/serve_docker_api.sh) and runs the image built by scripts/containers/build_image.sh.
Without podman or that image the test is skipped, saying which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from pipeline_common.settings import DEFAULT_IMAGE
from tests.dags.conftest import SECRETS, metadata_rows, stop

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def docker_api_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/containers/setup_podman.sh)")
    environment = {"CONTAINERS_CONF": str(REPO / "scripts/containers/containers.conf")}
    listed = subprocess.run(["podman", "image", "exists", DEFAULT_IMAGE], env={**os.environ, **environment})
    if listed.returncode != 0:
        pytest.skip(f"the image {DEFAULT_IMAGE} is not built (scripts/containers/build_image.sh)")
    socket = tmp_path_factory.mktemp("podman") / "podman.sock"
    process = subprocess.Popen(
        [str(REPO / "scripts/containers/serve_docker_api.sh"), str(socket)], env={**os.environ, **environment}
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield f"unix://{socket}"
    finally:
        stop(process)


def test_the_job_runs_in_the_container_and_its_summary_becomes_the_asset_event(
    docker_api_socket, fresh_dags, landing, airflow_db, monkeypatch, capfd
):
    monkeypatch.setenv("BATCH_PIPELINE_DOCKER_URL", docker_api_socket)
    monkeypatch.setenv("BATCH_PIPELINE_DOCKER_NETWORK", "host")  # the test's servers listen on loopback
    day = date(2026, 2, 1)
    landing.put_sample_day(day, rows=30, bad_share=0.1)

    dag_run = fresh_dags()["batch_pipeline_dag"].test(
        logical_date=None, run_conf={"run_date": day.isoformat()}
    )
    output = capfd.readouterr().out

    assert dag_run.state == "success", output[-4000:]
    assert "DockerBatchJobOperator" in output and "Starting docker container" in output
    [event] = metadata_rows(
        airflow_db, "SELECT extra FROM asset_event WHERE source_run_id = ?", dag_run.run_id
    )
    extra = json.loads(event["extra"])
    assert extra["run_date"] == "2026-02-01"
    assert extra["counts"]["read"] == 30
    [rendered] = metadata_rows(
        airflow_db,
        "SELECT rendered_fields FROM rendered_task_instance_fields WHERE run_id = ? AND task_id = ?",
        dag_run.run_id,
        "run_batch_processing",
    )
    assert "BATCH_SOURCE_URI" in rendered["rendered_fields"], "the non-secret environment is rendered"
    assert [secret for secret in SECRETS if secret in rendered["rendered_fields"] or secret in output] == []
