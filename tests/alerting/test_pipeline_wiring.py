"""The pipeline DAGs (dags/) are wired to alert: every task's retry, failure and success, each run's end, a
batch run that has not finished in time. Parsed by a DagBag, as the dag-processor does; no run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DeadlineReference

from pipeline_common.errors import PipelineConfigError
from pipeline_common.notifiers import AlertServiceNotifier
from pipeline_common.settings import load_settings

PIPELINE_DAGS = ["batch_pipeline_dag", "fraud_report_dag"]
TASK_CALLBACKS = ["on_retry_callback", "on_failure_callback", "on_success_callback"]
# Not imported from tests/conftest.py: importing it again as a module would run it again and point
# AIRFLOW_HOME at a second, unmigrated directory for the rest of the session.
REPO_ROOT = Path(__file__).resolve().parents[2]


def parse_dags(monkeypatch: pytest.MonkeyPatch, deadline_minutes: str) -> dict[str, Any]:
    monkeypatch.setenv("BATCH_PIPELINE_DEADLINE_MINUTES", deadline_minutes)
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags


@pytest.fixture
def dags(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return parse_dags(monkeypatch, "45")


def notifiers(callbacks: Any) -> list[AlertServiceNotifier]:
    listed = callbacks if isinstance(callbacks, list) else [callbacks]
    return [callback for callback in listed if isinstance(callback, AlertServiceNotifier)]


@pytest.mark.parametrize("dag_id", PIPELINE_DAGS)
@pytest.mark.parametrize("callback", TASK_CALLBACKS)
def test_every_pipeline_task_alerts_through_the_notifier(
    dags: dict[str, Any], dag_id: str, callback: str
) -> None:
    for task in dags[dag_id].tasks:
        assert len(notifiers(getattr(task, callback))) == 1, f"{dag_id}.{task.task_id} {callback}"


@pytest.mark.parametrize("dag_id", PIPELINE_DAGS)
@pytest.mark.parametrize("callback", ["on_failure_callback", "on_success_callback"])
def test_each_pipeline_run_reports_its_end(dags: dict[str, Any], dag_id: str, callback: str) -> None:
    assert len(notifiers(getattr(dags[dag_id], callback))) == 1


@pytest.mark.parametrize("dag_id", PIPELINE_DAGS)
def test_no_pipeline_task_uses_the_deprecated_failure_email(dags: dict[str, Any], dag_id: str) -> None:
    assert not any(task.email for task in dags[dag_id].tasks)


def test_a_batch_run_not_finished_in_time_after_being_queued_raises_a_deadline_alert(
    dags: dict[str, Any],
) -> None:
    (deadline,) = dags["batch_pipeline_dag"].deadline

    assert deadline.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert deadline.interval == timedelta(minutes=45)
    assert deadline.callback.path == "pipeline_common.notifiers.AlertServiceNotifier"
    assert deadline.callback.kwargs["event_type"] == "deadline_missed"


def test_deadline_minutes_zero_turns_the_deadline_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not parse_dags(monkeypatch, "0")["batch_pipeline_dag"].deadline


def test_the_deadline_defaults_to_ninety_minutes() -> None:
    assert load_settings({}).run_deadline == timedelta(minutes=90)


@pytest.mark.parametrize("value", ["-5", "soon"])
def test_a_bad_deadline_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(PipelineConfigError, match="BATCH_PIPELINE_DEADLINE_MINUTES"):
        load_settings({"BATCH_PIPELINE_DEADLINE_MINUTES": value})
