"""Which business date a run processes."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from airflow.sdk.api.datamodels._generated import DagRunType

from pipeline_common.environment import environment_for_run
from pipeline_common.errors import PipelineConfigError
from pipeline_common.run_date import business_date_and_rule, business_date_label, parse_run_date

RUN_AFTER = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)


def test_scheduled_run_at_0200_processes_the_previous_day():
    logical = datetime(2026, 1, 15, 2, 0, tzinfo=UTC)
    day, _ = business_date_and_rule(logical_date=logical, run_after=logical, run_date_param=None)
    assert day == date(2026, 1, 14)


def test_scheduled_run_on_the_first_of_the_month_processes_the_last_day_of_the_previous_month():
    logical = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    day, _ = business_date_and_rule(logical_date=logical, run_after=logical, run_date_param=None)
    assert day == date(2026, 2, 28)


def test_manual_run_without_logical_date_processes_the_day_before_run_after():
    day, _ = business_date_and_rule(logical_date=None, run_after=RUN_AFTER, run_date_param=None)
    assert day == date(2026, 3, 9)


def test_run_date_param_wins_over_the_logical_date():
    logical = datetime(2026, 1, 15, 2, 0, tzinfo=UTC)
    chosen, _ = business_date_and_rule(logical_date=logical, run_after=RUN_AFTER, run_date_param="2025-12-31")
    assert chosen == date(2025, 12, 31)


def test_run_date_param_wins_on_a_manual_run():
    day, _ = business_date_and_rule(logical_date=None, run_after=RUN_AFTER, run_date_param="2026-01-02")
    assert day == date(2026, 1, 2)


def test_the_day_is_taken_in_utc_not_in_the_dates_own_time_zone():
    # 01:30 on the 15th in UTC+2 is 23:30 on the 14th in UTC: the day before that is the 13th.
    logical = datetime(2026, 1, 15, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    day, _ = business_date_and_rule(logical_date=logical, run_after=RUN_AFTER, run_date_param=None)
    assert day == date(2026, 1, 13)


@pytest.mark.parametrize("bad", ["2026-1-5", "15/01/2026", "2026-01-15T00:00", "yesterday", " 2026-01-15"])
def test_run_date_param_in_another_format_is_refused_naming_the_param(bad):
    with pytest.raises(PipelineConfigError, match=r"param run_date=.* is not a date in the form YYYY-MM-DD"):
        parse_run_date(bad)


def test_run_date_param_that_is_no_calendar_day_is_refused():
    with pytest.raises(PipelineConfigError, match=r"param run_date='2026-02-30' is not a valid date"):
        parse_run_date("2026-02-30")


def test_naive_datetime_is_refused():
    with pytest.raises(PipelineConfigError, match="has no time zone"):
        business_date_and_rule(
            logical_date=datetime(2026, 1, 15, 2), run_after=RUN_AFTER, run_date_param=None
        )


@pytest.fixture
def embedded_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MINIO_DEFAULT", '{"conn_type": "generic", "extra": {"path": "/landing"}}'
    )
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", '{"conn_type": "sqlite", "host": "/results.db"}')
    monkeypatch.setenv("AIRFLOW_CONN_ML_API_DEFAULT", '{"conn_type": "http", "host": "http://ml-api"}')


def run_context(run_type: str, logical_date: datetime | None, run_date: str | None = None) -> dict:
    return {
        "logical_date": logical_date,
        "dag_run": SimpleNamespace(run_type=DagRunType(run_type), run_after=RUN_AFTER),
        "params": {"run_date": run_date},
    }


def test_a_manual_run_given_a_logical_date_says_it_processes_the_day_before_that_date(
    embedded_connections, caplog
):
    # `airflow dags trigger --logical-date 2026-01-15` gives run_after = the moment of the trigger: the date
    # processed is not "the day before it was triggered", and an operator could take it for the 15th itself.
    context = run_context("manual", datetime(2026, 1, 15, tzinfo=UTC))

    with caplog.at_level(logging.INFO, logger="pipeline_common.environment"):
        environment = environment_for_run(context)

    assert environment == {"BATCH_RUN_DATE": "2026-01-14"}
    assert (
        "BATCH_RUN_DATE=2026-01-14 (the day before the logical date 2026-01-15T00:00:00+00:00)" in caplog.text
    )


def test_a_run_date_param_on_a_backfill_run_is_refused(embedded_connections):
    # `airflow backfill create ... --dag-run-conf '{"run_date": ...}'` gives every run that conf: each run
    # processed that one date and succeeded, and the backfill's own dates were never processed.
    context = run_context("backfill", datetime(2026, 1, 12, 2, tzinfo=UTC), run_date="2026-01-11")

    with pytest.raises(PipelineConfigError, match="param run_date='2026-01-11' is set on a backfill run"):
        environment_for_run(context)


def test_a_backfill_run_processes_the_day_before_its_logical_date(embedded_connections):
    context = run_context("backfill", datetime(2026, 1, 12, 2, tzinfo=UTC))
    assert environment_for_run(context) == {"BATCH_RUN_DATE": "2026-01-11"}


@pytest.mark.parametrize(
    ("context", "label"),
    [
        (
            {
                "dag_run": SimpleNamespace(run_after=datetime(2026, 1, 15, 2, tzinfo=UTC)),
                "logical_date": datetime(2026, 1, 15, 2, tzinfo=UTC),
                "params": {"run_date": None},
            },
            {"business_date": "2026-01-14"},
        ),
        (
            {"dag_run": SimpleNamespace(run_after=RUN_AFTER), "params": {"run_date": "2025-12-31"}},
            {"business_date": "2025-12-31"},
        ),
        ({"dag": object(), "run_id": "r", "reason": "task_failure"}, {}),
        (
            {
                "dag_run": {
                    "logical_date": "2026-01-15T02:00:00Z",
                    "run_after": "2026-01-15T02:00:00Z",
                    "conf": {},
                }
            },
            {"business_date": "2026-01-14"},
        ),
        (
            {
                "dag_run": {
                    "logical_date": None,
                    "run_after": "2026-03-10T09:30:00Z",
                    "conf": {"run_date": "2025-12-31"},
                }
            },
            {"business_date": "2025-12-31"},
        ),
        (
            {"dag_run": {"logical_date": None, "run_after": "2026-03-10T09:30:00Z", "conf": None}},
            {"business_date": "2026-03-09"},
        ),
    ],
    ids=[
        "scheduled-run",
        "run-date-param",
        "no-run-in-the-context",
        "deadline-alert-scheduled-run",
        "deadline-alert-run-date-in-conf",
        "deadline-alert-manual-run",
    ],
)
def test_the_alerts_business_date_label_is_the_date_the_run_processes(context, label):
    assert business_date_label(context) == label


@pytest.mark.parametrize(
    "run_date", ["2026-03-10", "2026-03-11", "2027-01-01"], ids=["today", "tomorrow", "next-year"]
)
def test_a_run_date_param_of_a_day_not_over_when_triggered_is_refused(embedded_connections, run_date):
    # RUN_AFTER is 2026-03-10 09:30 UTC: that day's transactions are still arriving; the run would load part
    # of the day and announce it to the fraud report as the day's rows.
    context = run_context("manual", None, run_date=run_date)

    with pytest.raises(PipelineConfigError, match=rf"param run_date='{run_date}' is not over: the run was"):
        environment_for_run(context)


def test_a_run_date_param_of_the_day_before_the_trigger_is_processed(embedded_connections):
    assert environment_for_run(run_context("manual", None, run_date="2026-03-09")) == {
        "BATCH_RUN_DATE": "2026-03-09"
    }


def test_a_manual_run_given_a_logical_date_after_its_trigger_day_is_refused(embedded_connections):
    # `airflow dags trigger --logical-date 2026-03-11` on 2026-03-10 would process 2026-03-10, a day not over.
    context = run_context("manual", datetime(2026, 3, 11, tzinfo=UTC))

    with pytest.raises(
        PipelineConfigError, match=r"2026-03-10 \(the day before the logical date .*is not over"
    ):
        environment_for_run(context)
