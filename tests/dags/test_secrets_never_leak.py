"""Connection secrets never reach the metadata DB (XCom, rendered fields, asset events, any table) nor logs.

A successful run and a run whose ML API key is refused (exit 78) are made, then every table of the SQLite
metadata DB, its raw file bytes (WAL included) and the task output of both runs are searched for each made-up
secret. The connections come from AIRFLOW_CONN_* variables, so the metadata DB holds no connection
definition that would have to be excluded.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import date
from pathlib import Path

from tests.dags.conftest import SECRETS, connection_env, metadata_rows

DAG_ID = "batch_pipeline_dag"
WRONG_ML_API_KEY = "ml-Wrong-Key-Zb4q-NOLEAK"


def every_metadata_row(airflow_db: Path) -> list[str]:
    with closing(sqlite3.connect(airflow_db)) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [
            repr(row) + "".join(value.decode("utf-8", "replace") for value in row if isinstance(value, bytes))
            for table in tables
            for row in connection.execute(f'SELECT * FROM "{table}"')
        ]


def metadata_file_bytes(airflow_db: Path) -> bytes:
    files = [airflow_db, airflow_db.with_name(airflow_db.name + "-wal")]
    return b"".join(path.read_bytes() for path in files if path.exists())


def test_no_connection_secret_reaches_the_metadata_db_or_the_task_logs(
    fresh_dags, landing, airflow_db, ml_api_url, monkeypatch, capfd
):
    day = date(2026, 1, 20)
    landing.put_sample_day(day, rows=30, bad_share=0.1)
    succeeded = fresh_dags()[DAG_ID].test(logical_date=None, run_conf={"run_date": day.isoformat()})
    monkeypatch.setenv(
        *connection_env("ml_api_default", conn_type="http", host=ml_api_url, password=WRONG_ML_API_KEY)
    )
    refused = fresh_dags()[DAG_ID].test(logical_date=None, run_conf={"run_date": day.isoformat()})
    task_logs = capfd.readouterr()

    assert (succeeded.state, refused.state) == ("success", "failed")
    assert "the batch job exited with code 78" in task_logs.out, "the refused key failed the job"
    assert metadata_rows(airflow_db, "SELECT count(*) AS n FROM xcom")[0]["n"] > 0, "XCom was written"
    assert metadata_rows(airflow_db, "SELECT count(*) AS n FROM rendered_task_instance_fields")[0]["n"] > 0
    assert metadata_rows(airflow_db, "SELECT count(*) AS n FROM asset_event")[0]["n"] > 0
    assert metadata_rows(airflow_db, "SELECT count(*) AS n FROM connection")[0]["n"] == 0
    rows = every_metadata_row(airflow_db)
    raw = metadata_file_bytes(airflow_db)
    leaks = [
        (secret, place)
        for secret in (*SECRETS, WRONG_ML_API_KEY)
        for place, found in (
            ("a metadata DB row", any(secret in row for row in rows)),
            ("the metadata DB file", secret.encode() in raw),
            ("the task logs", secret in task_logs.out or secret in task_logs.err),
        )
        if found
    ]
    assert leaks == []
