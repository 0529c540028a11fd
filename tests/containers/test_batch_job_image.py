"""The batch-job image, built from docker/batch-job.Dockerfile and run by podman as a real container."""

from __future__ import annotations

import json
import subprocess
from datetime import date

import pytest
from containers_support import (
    SECRET_JOB_ENVIRONMENT,
    SECRETS,
    job_environment,
    podman,
    query_results,
    summary_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(1800)]

IMAGE_UID = "10001"


def run_job(podman_env, image, environment) -> subprocess.CompletedProcess:
    """`podman run` of the job on the host network. Values travel in the process environment and only the
    names on the command line (`-e NAME`), so no secret shows up in a process list."""
    names = [arg for name in environment for arg in ("-e", name)]
    return subprocess.run(
        ["podman", "run", "--rm", "--network", "host", *names, image],
        env={**podman_env, **environment},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_image_runs_as_a_non_root_user(podman_env, batch_job_image):
    assert podman(podman_env, "run", "--rm", batch_job_image, "id", "-u").strip() == IMAGE_UID


def test_the_image_has_no_airflow(podman_env, batch_job_image):
    result = subprocess.run(
        ["podman", "run", "--rm", batch_job_image, "python", "-c", "import airflow"],
        env=podman_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "No module named 'airflow'" in result.stderr


def test_the_image_carries_its_version_label_and_no_secret_looking_variable(podman_env, batch_job_image):
    config = json.loads(podman(podman_env, "image", "inspect", batch_job_image))[0]["Config"]
    assert config["Labels"]["org.opencontainers.image.version"] == batch_job_image.rsplit(":", 1)[1]
    names = [entry.split("=", 1)[0] for entry in config["Env"]]
    assert not [
        name for name in names if any(word in name for word in ("PASSWORD", "SECRET", "KEY", "TOKEN"))
    ]


def test_the_job_in_the_container_scores_a_day_into_postgres(
    podman_env, batch_job_image, landing, results_db, ml_api
):
    day = date(2026, 3, 2)
    landing.put_sample_day(day, rows=40)
    environment = {**job_environment(landing, results_db, ml_api.url, day), **SECRET_JOB_ENVIRONMENT}

    result = run_job(podman_env, batch_job_image, environment)

    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["run_date"] == day.isoformat()
    assert summary["counts"]["read"] == summary["counts"]["loaded"] == 40
    rows = query_results(results_db, "SELECT count(*) FROM scored_transactions WHERE run_date = %s", day)
    assert rows == [(40,)]


def test_the_job_logs_to_stderr_and_never_prints_its_secrets(
    podman_env, batch_job_image, landing, results_db, ml_api
):
    day = date(2026, 3, 3)
    landing.put_sample_day(day, rows=5)
    environment = {**job_environment(landing, results_db, ml_api.url, day), **SECRET_JOB_ENVIRONMENT}

    result = run_job(podman_env, batch_job_image, environment)

    assert result.returncode == 0, result.stderr
    assert "batch_job" in result.stderr
    assert not [secret for secret in SECRETS if secret in result.stdout + result.stderr]


def test_the_container_exits_65_on_a_day_of_invalid_data(
    podman_env, batch_job_image, landing, results_db, ml_api
):
    day = date(2026, 3, 4)
    landing.put_invalid_day(day)
    environment = {**job_environment(landing, results_db, ml_api.url, day), **SECRET_JOB_ENVIRONMENT}

    assert run_job(podman_env, batch_job_image, environment).returncode == 65


def test_the_container_exits_1_when_the_ml_api_is_unreachable(
    podman_env, batch_job_image, landing, results_db
):
    day = date(2026, 3, 5)
    landing.put_sample_day(day, rows=5)
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens there
    environment = {
        **job_environment(landing, results_db, unreachable, day),
        **SECRET_JOB_ENVIRONMENT,
        "BATCH_ML_MAX_RETRIES": "0",
    }

    assert run_job(podman_env, batch_job_image, environment).returncode == 1
