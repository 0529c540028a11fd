"""The batch job as real processes: the `batch-job` command and `python -m batch_job` against the example
ML API started as its own process (with an API key), sample data written by its command, and the local
PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from batch_job_support import LOOPBACK, RUN_DATE, csv_text, free_port, row, wait_until
from sqlalchemy import create_engine, select

from batch_job.load import metadata, scored_transactions

pytestmark = pytest.mark.postgres

API_KEY = "e2e-ml-api-key-must-not-leak"
DB_PASSWORD = "e2e-db-password-must-not-leak"  # the local server trusts loopback, so any password connects
ROWS = 400
BATCH_JOB_COMMAND = [str(Path(sys.executable).parent / "batch-job")]
PYTHON_MODULE_COMMAND = [sys.executable, "-m", "batch_job"]


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict:
        return json.loads(self.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def ml_api_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example ML API as a real process requiring API_KEY; yields its base URL."""
    url = f"http://{LOOPBACK}:{free_port()}"
    log = tmp_path_factory.mktemp("ml-api") / "ml-api.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batch_job.example_ml_api",
                "--host",
                LOOPBACK,
                "--port",
                url.rsplit(":", 1)[1],
            ],
            env={**os.environ, "EXAMPLE_ML_API_KEY": API_KEY},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: _healthy(url) or process.poll() is not None, "the example ML API answering /healthz"
        )
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A landing directory with the day's sample data, written by the sample-data command (2% bad rows)."""
    directory = tmp_path_factory.mktemp("landing")
    command = [
        sys.executable,
        "-m",
        "batch_job.sample_data",
        "--date",
        RUN_DATE.isoformat(),
        "--out",
        str(directory),
    ]
    written = subprocess.run(
        [*command, "--rows", str(ROWS), "--bad-share", "0.02"], capture_output=True, text=True, check=True
    )
    assert written.stdout.strip() == str(directory / RUN_DATE.isoformat() / "transactions.csv")
    return directory


@pytest.fixture(scope="module")
def job_environment(landing: Path, ml_api_process: str, postgres_database: str) -> Iterator[dict[str, str]]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("BATCH_")}
    environment |= {
        "BATCH_RUN_DATE": RUN_DATE.isoformat(),
        "BATCH_SOURCE_URI": landing.as_uri(),
        "BATCH_DATABASE_URL": postgres_database,
        "BATCH_DATABASE_PASSWORD": DB_PASSWORD,
        "BATCH_ML_API_URL": ml_api_process,
        "BATCH_ML_API_KEY": API_KEY,
        "BATCH_ML_BATCH_SIZE": "150",
    }
    yield environment
    engine = create_engine(postgres_database)
    metadata.drop_all(engine)
    engine.dispose()


def run_job(command: list[str], environment: dict[str, str]) -> Run:
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    return Run(done.returncode, done.stdout, done.stderr)


def loaded_rows(database_url: str) -> list[tuple]:
    engine = create_engine(database_url)
    table = scored_transactions
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.transaction_id, table.c.amount, table.c.fraud_score, table.c.is_fraud).order_by(
                table.c.transaction_id
            )
        )
        result = [tuple(found) for found in rows]
    engine.dispose()
    return result


@pytest.fixture(scope="module")
def two_runs(job_environment: dict[str, str], postgres_database: str) -> tuple[Run, list, Run, list]:
    """The job run by its command, then again as `python -m batch_job`, with the rows after each run."""
    first = run_job(BATCH_JOB_COMMAND, job_environment)
    rows_after_first = loaded_rows(postgres_database)
    second = run_job(PYTHON_MODULE_COMMAND, job_environment)
    return first, rows_after_first, second, loaded_rows(postgres_database)


def test_the_job_exits_0(two_runs: tuple[Run, list, Run, list]) -> None:
    first, _, second, _ = two_runs
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr


def test_the_last_stdout_line_is_the_summary(two_runs: tuple[Run, list, Run, list]) -> None:
    summary = two_runs[0].summary
    counts = summary["counts"]
    assert summary["run_date"] == RUN_DATE.isoformat()
    assert counts["read"] == ROWS
    assert 0 < counts["rejected"] < ROWS * 0.05
    assert counts["valid"] == counts["scored"] == counts["loaded"] == ROWS - counts["rejected"]


def test_the_logs_go_to_stderr_one_line_per_stage(two_runs: tuple[Run, list, Run, list]) -> None:
    stderr = two_runs[0].stderr
    for stage in ("extract: 1 files", f"validate: {ROWS} rows read", "predict: ", "load: "):
        assert stage in stderr


def test_the_rows_are_in_the_database(two_runs: tuple[Run, list, Run, list]) -> None:
    first, rows_after_first, _, _ = two_runs
    assert len(rows_after_first) == first.summary["counts"]["loaded"]


def test_a_rerun_leaves_the_same_rows(two_runs: tuple[Run, list, Run, list]) -> None:
    first, rows_after_first, second, rows_after_second = two_runs
    assert rows_after_second == rows_after_first
    assert second.summary["counts"] == first.summary["counts"]


def test_no_secret_appears_in_the_output(two_runs: tuple[Run, list, Run, list]) -> None:
    output = "".join(run.stdout + run.stderr for run in (two_runs[0], two_runs[2]))
    assert API_KEY not in output
    assert DB_PASSWORD not in output


def test_a_wrong_api_key_exits_78_without_printing_any_secret(job_environment: dict[str, str]) -> None:
    wrong_key = "wrong-key-must-not-leak-either"
    run = run_job(BATCH_JOB_COMMAND, job_environment | {"BATCH_ML_API_KEY": wrong_key})
    assert run.returncode == 78
    assert "refused the request with HTTP 401" in run.stderr
    assert run.stdout == ""
    for secret in (wrong_key, API_KEY, DB_PASSWORD):
        assert secret not in run.stderr


def test_malformed_input_exits_65(job_environment: dict[str, str], tmp_path: Path) -> None:
    day = tmp_path / RUN_DATE.isoformat()
    day.mkdir()
    (day / "broken.csv").write_text(csv_text([row(1)]) + 'T-2,"unterminated\n')
    run = run_job(BATCH_JOB_COMMAND, job_environment | {"BATCH_SOURCE_URI": tmp_path.as_uri()})
    assert run.returncode == 65
    assert "broken.csv is not valid CSV" in run.stderr


def test_an_unreachable_database_exits_1_without_printing_the_password(
    job_environment: dict[str, str],
) -> None:
    unreachable = f"postgresql+psycopg2://postgres@{LOOPBACK}:{free_port()}/transactions"
    run = run_job(PYTHON_MODULE_COMMAND, job_environment | {"BATCH_DATABASE_URL": unreachable})
    assert run.returncode == 1
    assert "database unavailable: OperationalError" in run.stderr
    assert DB_PASSWORD not in run.stdout + run.stderr
