"""Repository-wide test setup: an isolated AIRFLOW_HOME, set before anything imports Airflow.

Only environment variables are set here, so suites that never touch Airflow (batch_job, alerting_service,
containers) pay nothing. The metadata DB is migrated lazily by the session fixture `airflow_db`, used only by
the tests that need it (tests/dags, tests/pipeline_common).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-home-tests-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__PARALLELISM": "4",
        # `dag.test()` / `airflow dags test` of a DAG with a Deadline Alert fails after a successful run
        # (apache/airflow#73428); tests/alerting/test_pipeline_wiring.py checks the deadline itself.
        "BATCH_PIPELINE_DEADLINE_MINUTES": "0",
    }
)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """One migrated SQLite metadata DB for the whole session; yields its file path."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    yield AIRFLOW_HOME / "airflow.db"
