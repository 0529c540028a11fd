"""fraud_report_dag: one report per date announced by the scored_transactions events, from the results DB.

Its dates (February) are none of test_batch_pipeline_runs': both files share the session's results database.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from airflow.sdk import Connection
from sqlalchemy import create_engine

from batch_job.load import load_day
from batch_job.predict import ScoredTransaction
from batch_job.validate import Transaction
from pipeline_common.fraud_report import (
    ScoredEventError,
    extras_oldest_first,
    scored_day_from_extra,
    write_reports,
)
from tests.dags.conftest import metadata_rows, query_results

PRODUCER = "batch_pipeline_dag"
CONSUMER = "fraud_report_dag"


def results_connection() -> Connection:
    return Connection.from_json(os.environ["AIRFLOW_CONN_POSTGRES_DEFAULT"], conn_id="postgres_default")


def events_of(airflow_db, run_id: str) -> list[dict]:
    rows = metadata_rows(airflow_db, "SELECT extra FROM asset_event WHERE source_run_id = ?", run_id)
    return [json.loads(row["extra"]) for row in rows]


def test_a_report_is_written_for_every_date_the_events_announce(
    fresh_dags, landing, airflow_db, results_db, tmp_path
):
    days = [date(2026, 2, 21), date(2026, 2, 22)]
    extras = []
    for day in days:
        landing.put_sample_day(day, rows=80, bad_share=0.05)
        dag_run = fresh_dags()[PRODUCER].test(logical_date=None, run_conf={"run_date": day.isoformat()})
        extras += events_of(airflow_db, dag_run.run_id)

    paths = write_reports(extras, results_connection(), tmp_path)

    assert [path.name for path in paths] == ["fraud_report_2026-02-21.json", "fraud_report_2026-02-22.json"]
    for day, extra, path in zip(days, extras, paths, strict=True):
        report = json.loads(path.read_text())
        [(flagged,)] = query_results(
            results_db, "SELECT count(*) FROM scored_transactions WHERE run_date = %s AND is_fraud", day
        )
        assert report["run_date"] == day.isoformat()
        assert report["event_counts"] == extra["counts"]
        assert report["rows_in_table"] == extra["counts"]["loaded"]
        assert report["flagged"] == flagged
        scores = [suspect["fraud_score"] for suspect in report["top_suspects"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 10


def test_several_events_for_one_date_give_one_report(landing, fresh_dags, airflow_db, tmp_path):
    day = date(2026, 2, 23)
    landing.put_sample_day(day, rows=5)
    dag_run = fresh_dags()[PRODUCER].test(logical_date=None, run_conf={"run_date": day.isoformat()})
    [extra] = events_of(airflow_db, dag_run.run_id)

    paths = write_reports([extra, extra], results_connection(), tmp_path)

    assert [path.name for path in paths] == ["fraud_report_2026-02-23.json"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"run_date": "2026-01-14", "table": "scored_transactions", "source": "s3://x"}, "lack counts"),
        (
            {"run_date": "2026-01-14", "table": "scored; DROP TABLE x", "counts": {}, "source": "s3://x"},
            "invalid table",
        ),
        (
            {
                "run_date": "2026-01-14",
                "table": "scored_transactions",
                "counts": {"read": 1},
                "source": "s3://x",
            },
            "counts are incomplete",
        ),
    ],
    ids=["no-counts", "bad-table", "partial-counts"],
)
def test_an_event_breaking_the_asset_contract_is_refused_saying_why(extra, message):
    with pytest.raises(ScoredEventError, match=message):
        scored_day_from_extra(extra)


def test_a_manual_run_of_the_consumer_without_events_is_skipped(fresh_dags, airflow_db):
    dag_run = fresh_dags()[CONSUMER].test(logical_date=None)

    [(state,)] = [
        tuple(row)
        for row in metadata_rows(
            airflow_db,
            "SELECT state FROM task_instance WHERE run_id = ? AND dag_id = ?",
            dag_run.run_id,
            CONSUMER,
        )
    ]
    assert state == "skipped"


def sqlite_results(tmp_path, day: date) -> Connection:
    """A results database (the embedded default's SQLite form) holding one scored row for `day`."""
    path = tmp_path / "results.db"
    transaction = Transaction(
        transaction_id="T-1",
        account_id="ACC1",
        merchant_id="MER1",
        amount=Decimal("12.50"),
        currency="EUR",
        occurred_at=dt.datetime.combine(day, dt.time(9, 30), tzinfo=dt.UTC),
        country="DE",
        source_file="file:///landing/a.csv",
        line_number=2,
        raw_record="T-1,ACC1,MER1,12.50,EUR,...,DE",
    )
    engine = create_engine(f"sqlite:///{path}")
    load_day(engine, day, [ScoredTransaction(transaction, 0.9, True, "m1")], [])
    engine.dispose()
    return Connection(conn_id="postgres_default", conn_type="sqlite", host=str(path))


def announced(day: date) -> dict:
    return {
        "run_date": day.isoformat(),
        "counts": {"read": 1, "valid": 1, "rejected": 0, "scored": 1, "loaded": 1},
        "table": "scored_transactions",
        "source": f"file:///landing/{day.isoformat()}/",
    }


def test_an_event_breaking_the_contract_does_not_cost_the_other_dates_their_reports(tmp_path):
    # An asset event created by hand (UI or REST API: extras {"from_rest_api": true}) lands in the same
    # consumer run as a real one: the real date's report is written, then the task fails naming the bad one.
    day = date(2026, 2, 24)
    database = sqlite_results(tmp_path, day)

    with pytest.raises(ScoredEventError, match=r"1 scored_transactions event.*from_rest_api"):
        write_reports([{"from_rest_api": True}, announced(day)], database, tmp_path / "reports")

    report = json.loads((tmp_path / "reports" / "fraud_report_2026-02-24.json").read_text())
    assert (report["rows_in_table"], report["flagged"]) == (1, 1)
    assert report["flagged_amount_by_currency"] == {"EUR": "12.5000"}  # exact, on SQLite too


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run_date": "14/01/2026"}, "invalid run_date '14/01/2026'"),
        ({"counts": {"read": "n/a", "valid": 1, "rejected": 0, "scored": 1, "loaded": 1}}, "not integers"),
    ],
    ids=["run-date", "counts"],
)
def test_a_malformed_run_date_or_count_in_an_event_is_refused_as_breaking_the_contract(change, message):
    # Not a "param run_date" error, and not a ValueError that Airflow would retry three times in vain.
    with pytest.raises(ScoredEventError, match=message):
        scored_day_from_extra({**announced(date(2026, 1, 14)), **change})


def test_the_latest_event_of_a_date_wins_whatever_order_airflow_lists_them_in():
    # Seen under `airflow standalone`: a run listed the event that triggered it first, then the one that had
    # waited while the DAG was paused, so "the last event of a date" was the older load's (stale counts).
    older = SimpleNamespace(timestamp=datetime(2026, 1, 12, 2, 5, tzinfo=UTC), extra={"counts": "older"})
    newer = SimpleNamespace(timestamp=datetime(2026, 1, 12, 9, 0, tzinfo=UTC), extra={"counts": "newer"})

    assert extras_oldest_first([newer, older]) == [{"counts": "older"}, {"counts": "newer"}]
