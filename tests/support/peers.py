"""The batch job's peers on loopback, shared by tests/dags and tests/containers: moto's S3 server with the
landing bucket, a scratch PostgreSQL database, the example ML API as its own process, and the AIRFLOW_CONN_*
variables pointing at them.

Each suite passes its own distinctive made-up credentials, so its leak checks can look for them everywhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Generator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psycopg2

from batch_job.sample_data import write_day

LOOPBACK = "127.0.0.1"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
BUCKET = "transactions"
PREFIX = "incoming"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until_up(
    url: str, process: subprocess.Popen | None = None, timeout: float = 30, uds: str | None = None
) -> None:
    """Poll `url` (over the unix socket `uds`, if given) until it answers or the server process dies."""
    deadline = time.monotonic() + timeout
    with httpx.Client(transport=httpx.HTTPTransport(uds=uds) if uds else None, timeout=1) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with {process.returncode} before answering")
            try:
                client.get(url)
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


@dataclass(frozen=True)
class MlApi:
    url: str
    port: int


@contextmanager
def ml_api_process(api_key: str) -> Generator[MlApi, None, None]:
    """The example ML API as its own process on loopback, requiring `api_key`; stopped on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "batch_job.example_ml_api", "--host", LOOPBACK, "--port", str(port)],
        env={**os.environ, "EXAMPLE_ML_API_KEY": api_key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_until_up(f"{url}/healthz", process)
        yield MlApi(url=url, port=port)
    finally:
        stop(process)


@dataclass(frozen=True)
class Landing:
    """moto's S3 server on loopback, with the landing bucket; puts a day's CSV objects under the prefix."""

    endpoint: str
    scratch: Path
    access_key_id: str
    secret_access_key: str

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
        )

    def create_bucket(self) -> None:
        with closing(self.client()) as client:
            client.create_bucket(Bucket=BUCKET)

    def put_sample_day(self, day: date, rows: int, bad_share: float = 0.0) -> None:
        self.put_file(day, write_day(self.scratch / uuid.uuid4().hex, day, rows, bad_share))

    def put_invalid_day(self, day: date) -> None:
        """A CSV without the required columns: the whole day's input is invalid (exit 65)."""
        path = self.scratch / uuid.uuid4().hex / "transactions.csv"
        path.parent.mkdir(parents=True)
        path.write_text("id,value\n1,2\n")
        self.put_file(day, path)

    def put_file(self, day: date, path: Path) -> None:
        with closing(self.client()) as client:
            client.upload_file(str(path), BUCKET, f"{PREFIX}/{day.isoformat()}/{path.name}")


@contextmanager
def s3_landing(scratch: Path, access_key_id: str, secret_access_key: str) -> Generator[Landing, None, None]:
    """moto's S3 server on a free loopback port with the landing bucket created; stopped on exit."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        landing = Landing(
            endpoint=f"http://{LOOPBACK}:{port}",
            scratch=scratch,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )
        landing.create_bucket()
        yield landing
    finally:
        server.stop()


@contextmanager
def scratch_database(prefix: str) -> Generator[str, None, None]:
    """A PostgreSQL database of its own, named `<prefix><12 hex digits>`; dropped WITH (FORCE) on exit."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_DSN)
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def query_results(results_db: str, sql: str, *params) -> list[tuple]:
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={results_db}"
    with closing(psycopg2.connect(dsn)) as connection, connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def connection_env(conn_id: str, **fields) -> tuple[str, str]:
    """An Airflow connection as an AIRFLOW_CONN_* variable (JSON form)."""
    return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields)


def connection_variables(
    s3_endpoint: str,
    results_db: str,
    ml_api_url: str,
    *,
    s3_access_key_id: str,
    s3_secret_access_key: str,
    db_password: str,
    ml_api_key: str,
    ml_api_extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The pipeline's three connections to the loopback peers as AIRFLOW_CONN_* variables (JSON form)."""
    s3_host, s3_port = s3_endpoint.removeprefix("http://").split(":")
    ml_api_fields: dict[str, Any] = {"conn_type": "http", "host": ml_api_url, "password": ml_api_key}
    if ml_api_extra is not None:
        ml_api_fields["extra"] = ml_api_extra
    return dict(
        [
            connection_env(
                "minio_default",
                conn_type="generic",
                host=s3_host,
                port=int(s3_port),
                login=s3_access_key_id,
                password=s3_secret_access_key,
                extra={"bucket": BUCKET, "prefix": PREFIX, "secure": False},
            ),
            connection_env(
                "postgres_default",
                conn_type="postgres",
                host="127.0.0.1",
                port=5432,
                schema=results_db,
                login="postgres",
                password=db_password,
            ),
            connection_env("ml_api_default", **ml_api_fields),
        ]
    )
