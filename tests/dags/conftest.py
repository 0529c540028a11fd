"""Real Airflow runs of the pipeline DAGs: one migrated metadata DB, one example ML API, one PostgreSQL
results database and one S3-compatible object store per session.

The object store is moto's S3 server on loopback: MinIO cannot run on these machines and moto speaks the same
S3 API over real HTTP, so boto3 in the batch job is exercised unchanged. Everything else is the real thing.
Connection credentials are distinctive made-up values so the secret-leak test can look for them everywhere.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.peers import (
    Landing,
    connection_env,
    connection_variables,
    ml_api_process,
    query_results,
    s3_landing,
    scratch_database,
)

__all__ = ["DAGS_FOLDER", "SECRETS", "connection_env", "metadata_rows", "query_results"]

S3_ACCESS_KEY_ID = "AKIA-TEST-ACCESS-7Q2ZK9"
S3_SECRET_ACCESS_KEY = "s3-Secret-Kq83-ZVx!wq7-NOLEAK"
DB_PASSWORD = "pg-Pa55-Yt6e-Hj2m-NOLEAK"
ML_API_KEY = "ml-Key-Rf5d-Pw9c-NOLEAK"
SECRETS = (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, DB_PASSWORD, ML_API_KEY)

# The tests' DAGs retry after 1 s, 2-3 s, ... instead of 5 min, 10 min, ...
os.environ["BATCH_PIPELINE_RETRY_DELAY_SECONDS"] = "1"


@pytest.fixture(scope="session")
def ml_api_url() -> Iterator[str]:
    """The example ML API as its own process, requiring ML_API_KEY."""
    with ml_api_process(ML_API_KEY) as ml_api:
        yield ml_api.url


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with s3_landing(tmp_path_factory.mktemp("s3"), S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY) as landing:
        yield landing.endpoint


@pytest.fixture(scope="session")
def landing(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Landing:
    """Puts a day's CSV objects where minio_default points."""
    return Landing(
        endpoint=s3_endpoint,
        scratch=tmp_path_factory.mktemp("landing"),
        access_key_id=S3_ACCESS_KEY_ID,
        secret_access_key=S3_SECRET_ACCESS_KEY,
    )


@pytest.fixture(scope="session")
def results_db() -> Iterator[str]:
    """A PostgreSQL database of its own for the session's scored rows; dropped at the end."""
    with scratch_database("pipeline_dags_tests_") as name:
        yield name


@pytest.fixture(scope="session")
def pipeline_connections(ml_api_url: str, s3_endpoint: str, results_db: str) -> dict[str, str]:
    """The three connections as AIRFLOW_CONN_* variables (JSON form): they never enter the metadata DB."""
    variables = connection_variables(
        s3_endpoint,
        results_db,
        ml_api_url,
        s3_access_key_id=S3_ACCESS_KEY_ID,
        s3_secret_access_key=S3_SECRET_ACCESS_KEY,
        db_password=DB_PASSWORD,
        ml_api_key=ML_API_KEY,
    )
    os.environ.update(variables)
    return variables


DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"


def parse_dags() -> dict:
    """The DAGs as the dag-processor parses them, with this process's settings (1 s retry delay)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


@pytest.fixture
def fresh_dags(airflow_db: Path, pipeline_connections: dict[str, str]) -> Callable[[], dict]:
    """Parses the DAGs anew for each run, as each real task process does: dag.test() runs tasks in this
    process, and Airflow 3.3's Param.resolve() stores a run's conf value on the DAG's shared Param object,
    so a DAG object reused across runs would carry one run's run_date into the next."""
    return parse_dags


def metadata_rows(airflow_db: Path, sql: str, *params) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(airflow_db)) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, params).fetchall()
