"""Helpers and constants shared by the container tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import psycopg2

from batch_job.sample_data import write_day

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts" / "containers"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
BUCKET = "transactions"
PREFIX = "incoming"

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30, uds: str | None = None) -> None:
    """Poll `url` (over the unix socket `uds`, if given) until it answers or the server process dies."""
    deadline = time.monotonic() + timeout
    with httpx.Client(transport=httpx.HTTPTransport(uds=uds) if uds else None, timeout=1) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
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


@dataclass(frozen=True)
class Landing:
    """moto's S3 server on loopback, with the landing bucket; puts a day's CSV objects under the prefix."""

    endpoint: str
    scratch: Path

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
            region_name="us-east-1",
        )

    def put_sample_day(self, day: date, rows: int, bad_share: float = 0.0) -> None:
        self.put_file(day, write_day(self.scratch / uuid.uuid4().hex, day, rows, bad_share))

    def put_invalid_day(self, day: date) -> None:
        """A CSV without the required columns: the whole day's input is invalid (exit 65)."""
        path = self.scratch / uuid.uuid4().hex / "transactions.csv"
        path.parent.mkdir(parents=True)
        path.write_text("id,value\n1,2\n")
        self.put_file(day, path)

    def put_file(self, day: date, path: Path) -> None:
        self.client().upload_file(str(path), BUCKET, f"{PREFIX}/{day.isoformat()}/{path.name}")


def query_results(results_db: str, sql: str, *params) -> list[tuple]:
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={results_db}"
    with closing(psycopg2.connect(dsn)) as connection, connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


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
