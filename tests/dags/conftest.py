"""Real Airflow runs of the pipeline DAGs: one migrated metadata DB, one example ML API, one PostgreSQL
results database and one S3-compatible object store per session.

The object store is moto's S3 server on loopback: MinIO cannot run on these machines and moto speaks the same
S3 API over real HTTP, so boto3 in the batch job is exercised unchanged. Everything else is the real thing.
Connection credentials are distinctive made-up values so the secret-leak test can look for them everywhere.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import psycopg2
import pytest

from batch_job.sample_data import write_day

PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
BUCKET = "transactions"
PREFIX = "incoming"

S3_ACCESS_KEY_ID = "AKIA-TEST-ACCESS-7Q2ZK9"
S3_SECRET_ACCESS_KEY = "s3-Secret-Kq83-ZVx!wq7-NOLEAK"
DB_PASSWORD = "pg-Pa55-Yt6e-Hj2m-NOLEAK"
ML_API_KEY = "ml-Key-Rf5d-Pw9c-NOLEAK"
SECRETS = (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, DB_PASSWORD, ML_API_KEY)

# The tests' DAGs retry after 1 s, 2-3 s, ... instead of 5 min, 10 min, ...
os.environ["BATCH_PIPELINE_RETRY_DELAY_SECONDS"] = "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode} before answering")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def ml_api_url() -> Iterator[str]:
    """The example ML API as its own process, requiring ML_API_KEY."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "batch_job.example_ml_api", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "EXAMPLE_ML_API_KEY": ML_API_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/healthz", process)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        Landing(endpoint=endpoint, scratch=Path()).create_bucket()
        yield endpoint
    finally:
        server.stop()


@dataclass(frozen=True)
class Landing:
    """Puts a day's CSV objects where minio_default points."""

    endpoint: str
    scratch: Path

    def _client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
            region_name="us-east-1",
        )

    def create_bucket(self) -> None:
        with closing(self._client()) as client:
            client.create_bucket(Bucket=BUCKET)

    def put_sample_day(self, day: date, rows: int, bad_share: float = 0.0) -> None:
        self.put_file(day, write_day(self.scratch / str(uuid.uuid4()), day, rows, bad_share))

    def put_file(self, day: date, path: Path) -> None:
        with closing(self._client()) as client:
            client.upload_file(str(path), BUCKET, f"{PREFIX}/{day.isoformat()}/{path.name}")


@pytest.fixture(scope="session")
def landing(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Landing:
    return Landing(endpoint=s3_endpoint, scratch=tmp_path_factory.mktemp("landing"))


@pytest.fixture(scope="session")
def results_db() -> Iterator[str]:
    """A PostgreSQL database of its own for the session's scored rows; dropped at the end."""
    name = f"pipeline_dags_tests_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_DSN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def connection_env(conn_id: str, **fields) -> tuple[str, str]:
    return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields)


@pytest.fixture(scope="session")
def pipeline_connections(ml_api_url: str, s3_endpoint: str, results_db: str) -> dict[str, str]:
    """The three connections as AIRFLOW_CONN_* variables (JSON form): they never enter the metadata DB."""
    host, port = s3_endpoint.removeprefix("http://").split(":")
    variables = dict(
        [
            connection_env(
                "minio_default",
                conn_type="generic",
                host=host,
                port=int(port),
                login=S3_ACCESS_KEY_ID,
                password=S3_SECRET_ACCESS_KEY,
                extra={"bucket": BUCKET, "prefix": PREFIX, "secure": False},
            ),
            connection_env(
                "postgres_default",
                conn_type="postgres",
                host="127.0.0.1",
                port=5432,
                schema=results_db,
                login="postgres",
                password=DB_PASSWORD,
            ),
            connection_env("ml_api_default", conn_type="http", host=ml_api_url, password=ML_API_KEY),
        ]
    )
    os.environ.update(variables)
    return variables


def query_results(results_db: str, sql: str, *params) -> list[tuple]:
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={results_db}"
    with closing(psycopg2.connect(dsn)) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


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
