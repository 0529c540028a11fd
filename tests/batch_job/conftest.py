"""Fixtures of the batch job tests: landing directories, real ML API servers, a PostgreSQL database of their
own, and an S3-compatible server.

MinIO cannot run here (no Docker engine), so S3 is moto's ThreadedMotoServer: a real S3-compatible HTTP server
on loopback, reached by boto3 through its endpoint URL exactly as MinIO would be.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import boto3
import psycopg2
import pytest
from batch_job_support import (
    LOOPBACK,
    RUN_DATE,
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    Landing,
    S3Bucket,
    ScriptedMLApi,
    serve_app,
)
from moto.server import ThreadedMotoServer
from sqlalchemy import Engine, create_engine

from batch_job.example_ml_api import create_app
from batch_job.load import metadata
from tests.support.peers import PG_DSN, scratch_database


@pytest.fixture
def landing(tmp_path: Path) -> Landing:
    directory = tmp_path / "landing"
    directory.mkdir()
    return Landing(directory)


@pytest.fixture(scope="session")
def example_ml_api_url() -> Iterator[str]:
    """The example ML API (no API key), served by uvicorn in a thread for the whole session."""
    with serve_app(create_app(api_key=None)) as url:
        yield url


@pytest.fixture
def scripted_ml_api() -> Iterator[ScriptedMLApi]:
    api = ScriptedMLApi()
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this session's own on the local PostgreSQL; yields its SQLAlchemy URL (no password)."""
    with scratch_database("batch_job_test_") as name:
        yield f"postgresql+psycopg2://postgres@{LOOPBACK}:5432/{name}"


@pytest.fixture
def unprivileged_role() -> Iterator[str]:
    """A login role of its own on the local PostgreSQL with no privilege beyond connecting (since PostgreSQL
    15 not even CREATE in schema public); yields its name, dropped after the test."""
    name = f"batch_job_test_role_{uuid.uuid4().hex[:12]}"
    with closing(psycopg2.connect(PG_DSN)) as admin:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE ROLE "{name}" LOGIN')
        yield name
        with admin.cursor() as cursor:
            cursor.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def clean_postgres_database(postgres_database: str) -> Iterator[str]:
    """The session's PostgreSQL database, its job tables dropped after the test."""
    yield postgres_database
    engine = create_engine(postgres_database)
    metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """Each test using it runs on SQLite and on the PostgreSQL database."""
    return sqlite_url if request.param == "sqlite" else request.getfixturevalue("clean_postgres_database")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def s3_endpoint_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint_url: str) -> S3Bucket:
    """A fresh bucket on the S3 server."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint_url,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )
    bucket = S3Bucket(client=client, name=f"landing-{uuid.uuid4().hex[:12]}")
    client.create_bucket(Bucket=bucket.name)
    return bucket


@pytest.fixture
def job_env(
    monkeypatch: pytest.MonkeyPatch, landing: Landing, sqlite_url: str, example_ml_api_url: str
) -> dict[str, str]:
    """A complete, valid job environment (local landing, SQLite, the example ML API), set in os.environ.

    Every `BATCH_*` variable from outside is removed first, so the tests do not depend on the developer's
    shell. Tests change it with `monkeypatch.setenv` / `delenv`.
    """
    for name in list(os.environ):
        if name.startswith("BATCH_"):
            monkeypatch.delenv(name)
    environment = {
        "BATCH_RUN_DATE": RUN_DATE.isoformat(),
        "BATCH_SOURCE_URI": landing.uri,
        "BATCH_DATABASE_URL": sqlite_url,
        "BATCH_ML_API_URL": example_ml_api_url,
        "BATCH_ML_MAX_RETRIES": "1",
        "BATCH_ML_RETRY_BACKOFF_SECONDS": "0",
        "BATCH_ML_TIMEOUT_SECONDS": "5",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


@pytest.fixture
def s3_env(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, s3_bucket: S3Bucket, s3_endpoint_url: str
) -> S3Bucket:
    """`job_env` reading from `<s3_bucket>/incoming` on the S3 server, with its credentials."""
    monkeypatch.setenv("BATCH_SOURCE_URI", f"{s3_bucket.uri}/incoming")
    monkeypatch.setenv("BATCH_S3_ENDPOINT_URL", s3_endpoint_url)
    monkeypatch.setenv("BATCH_S3_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
    monkeypatch.setenv("BATCH_S3_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY)
    return s3_bucket
