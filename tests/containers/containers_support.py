"""Helpers and constants shared by the container tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import subprocess
from datetime import date
from pathlib import Path

from tests.support.peers import BUCKET, PREFIX, Landing, free_port, query_results

__all__ = ["BUCKET", "PREFIX", "Landing", "free_port", "query_results"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts" / "containers"

# Distinctive made-up credentials, so the leak checks can look for them anywhere.
S3_ACCESS_KEY_ID = "AKIA-CTR-ACCESS-Z81QX4"
S3_SECRET_ACCESS_KEY = "ctr-S3-Secret-Hq27-LEAKCHECK"
DB_PASSWORD = "ctr-Pg-Pass-Mx93-LEAKCHECK"
ML_API_KEY = "ctr-Ml-Key-Vb52-LEAKCHECK"
SECRETS = (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, DB_PASSWORD, ML_API_KEY)

SECRET_JOB_ENVIRONMENT = {
    "BATCH_S3_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
    "BATCH_S3_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
    "BATCH_DATABASE_PASSWORD": DB_PASSWORD,
    "BATCH_ML_API_KEY": ML_API_KEY,
}


def run(command: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command; on failure raise with its stderr's end, so a broken setup step says what broke."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result.stdout


def podman(podman_env: dict[str, str], *args: str) -> str:
    return run(["podman", *args], env=podman_env)


def job_environment(landing: Landing, results_db: str, ml_api_url: str, run_date: date) -> dict[str, str]:
    """The batch job's non-secret contract variables for the loopback peers (docs/architecture.md)."""
    return {
        "BATCH_RUN_DATE": run_date.isoformat(),
        "BATCH_SOURCE_URI": f"s3://{BUCKET}/{PREFIX}",
        "BATCH_S3_ENDPOINT_URL": landing.endpoint,
        "BATCH_DATABASE_URL": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{results_db}",
        "BATCH_ML_API_URL": ml_api_url,
    }


def summary_of(stdout: str) -> dict:
    """The job's JSON summary: the last line of its stdout."""
    return json.loads(stdout.strip().splitlines()[-1])
