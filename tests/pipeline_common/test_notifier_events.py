"""The alert event built from each callback context shape: fields, idempotency key, type inference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline_common.alert_events import (
    EXCEPTION_SUMMARY_LIMIT,
    EventType,
    UnknownCallbackContext,
    build_event,
    fallback_email_html,
    infer_event_type,
    next_retry_time,
    summarize_exception,
)

BASE_URL = "http://airflow.bank.example:8080/"
RUN_ID = "scheduled__2026-01-14T02:00:00+00:00"
LOGICAL_DATE = datetime(2026, 1, 14, 2, 0, tzinfo=UTC)
FAILED_AT = datetime(2026, 1, 14, 2, 7, 12, tzinfo=UTC)


def task_context(state: str = "up_for_retry", try_number: int = 2, **ti_fields: Any) -> dict[str, Any]:
    task = SimpleNamespace(
        retry_delay=timedelta(minutes=5), retry_exponential_backoff=2.0, max_retry_delay=timedelta(minutes=30)
    )
    ti = SimpleNamespace(
        dag_id="batch_pipeline_dag",
        run_id=RUN_ID,
        task_id="run_batch_processing",
        map_index=-1,
        try_number=try_number,
        max_tries=3,
        state=state,
        end_date=FAILED_AT,
        log_url=f"{BASE_URL}dags/batch_pipeline_dag/runs/r/tasks/run_batch_processing?try_number={try_number}",
        task=task,
    )
    for name, value in ti_fields.items():
        setattr(ti, name, value)
    return {"ti": ti, "logical_date": LOGICAL_DATE, "exception": ConnectionError("ml-api:8000 refused")}


def dag_run_context(reason: str, clear_number: int = 0) -> dict[str, Any]:
    context = task_context(state="failed")
    dag_run = SimpleNamespace(
        dag_id="batch_pipeline_dag",
        run_id=RUN_ID,
        clear_number=clear_number,
        end_date=FAILED_AT,
        logical_date=None,
    )
    return context | {"dag_run": dag_run, "run_id": RUN_ID, "reason": reason}


def deadline_context() -> dict[str, Any]:
    return {
        "dag_run": {
            "dag_id": "batch_pipeline_dag",
            "dag_run_id": RUN_ID,
            "logical_date": None,
            "state": "running",
        },
        "deadline": {"id": "0192f3c4-aaaa-7bbb-8ccc-000000000001", "deadline_time": FAILED_AT},
    }


def event_for(context: dict[str, Any], **options: Any):
    return build_event(context, api_base_url=BASE_URL, **options)


def test_a_retry_event_carries_what_the_architecture_contract_lists() -> None:
    body = event_for(task_context(), labels={"team": "data-engineering"}).as_json()

    assert body == {
        "idempotency_key": f"batch_pipeline_dag/{RUN_ID}/run_batch_processing/-1/2/task_retry",
        "type": "task_retry",
        "severity": "warning",
        "dag_id": "batch_pipeline_dag",
        "run_id": RUN_ID,
        "task_id": "run_batch_processing",
        "map_index": -1,
        "try_number": 2,
        "max_tries": 4,
        "logical_date": "2026-01-14T02:00:00Z",
        "occurred_at": "2026-01-14T02:07:12Z",
        "exception": "ConnectionError: ml-api:8000 refused",
        "log_url": f"{BASE_URL}dags/batch_pipeline_dag/runs/r/tasks/run_batch_processing?try_number=2",
        # retry_delay 5 min doubled once for try 2
        "next_retry_at": "2026-01-14T02:17:12Z",
        "labels": {"team": "data-engineering"},
    }


def test_the_same_context_twice_gives_the_same_key_and_body() -> None:
    context = task_context()

    assert event_for(context).as_json() == event_for(context).as_json()


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("up_for_retry", EventType.TASK_RETRY),
        ("failed", EventType.TASK_FAILURE),
        ("success", EventType.TASK_SUCCESS),
    ],
)
def test_a_task_callback_type_follows_the_final_task_state(state: str, expected: EventType) -> None:
    assert infer_event_type(task_context(state=state)) is expected


def test_a_state_without_an_event_type_is_refused_with_a_hint() -> None:
    with pytest.raises(UnknownCallbackContext, match=r"'skipped'.*event_type"):
        infer_event_type(task_context(state="skipped"))


def test_an_explicit_event_type_wins_over_the_context() -> None:
    assert event_for(task_context(state="failed"), event_type="task_retry").type is EventType.TASK_RETRY


def test_a_task_failure_is_an_error_unless_the_notifier_says_otherwise() -> None:
    context = task_context(state="failed")

    assert event_for(context).severity == "error"
    assert event_for(context, severity="critical").severity == "critical"


def test_the_final_failure_says_try_n_of_n_and_has_no_next_retry() -> None:
    event = event_for(task_context(state="failed", try_number=4))

    assert (event.try_number, event.max_tries, event.next_retry_at) == (4, 4, None)
    assert "(try 4 of 4)" in event.headline


def test_a_failure_before_the_last_try_says_it_was_not_retried() -> None:
    # The retry policy fails invalid input at once: "try 1 of 4" alone reads as if three more were coming.
    event = event_for(task_context(state="failed", try_number=1))

    assert event.headline.endswith("(try 1 of 4, not retried)")


@pytest.mark.parametrize(
    ("context", "alarm"),
    [
        (task_context(state="failed"), True),
        (dag_run_context("task_failure"), True),
        (deadline_context(), True),
        (task_context(state="up_for_retry"), False),
        (task_context(state="success"), False),
        (dag_run_context("success"), False),
    ],
    ids=["task failure", "run failure", "deadline", "retry", "task success", "run success"],
)
def test_failures_and_missed_deadlines_are_alarms(context: dict[str, Any], alarm: bool) -> None:
    assert event_for(context).is_alarm is alarm


def test_a_success_carries_no_exception() -> None:
    assert event_for(task_context(state="success")).exception is None


def test_a_mapped_task_instance_keys_its_map_index() -> None:
    event = event_for(task_context(map_index=7))

    assert event.idempotency_key == f"batch_pipeline_dag/{RUN_ID}/run_batch_processing/7/2/task_retry"


def test_a_dag_run_success_is_keyed_by_run_not_by_task() -> None:
    event = event_for(dag_run_context("success"))

    assert event.type is EventType.DAG_RUN_SUCCESS
    assert event.idempotency_key == f"batch_pipeline_dag/{RUN_ID}/-/-1/1/dag_run_success"
    assert (event.task_id, event.exception) == (None, None)


def test_a_dag_run_failure_names_the_task_that_failed_and_links_its_log() -> None:
    event = event_for(dag_run_context("task_failure"))

    assert event.type is EventType.DAG_RUN_FAILURE
    assert event.exception == (
        "task_failure at task run_batch_processing: the cause is in that task's task_failure alert and log"
    )
    assert event.log_url.endswith("tasks/run_batch_processing?try_number=2")


def test_a_cleared_and_rerun_dag_run_gets_a_new_key() -> None:
    first = event_for(dag_run_context("task_failure", clear_number=0))
    rerun = event_for(dag_run_context("task_failure", clear_number=1))

    assert first.idempotency_key != rerun.idempotency_key


def test_a_deadline_context_from_the_triggerer_becomes_deadline_missed() -> None:
    event = event_for(deadline_context())

    assert event.type is EventType.DEADLINE_MISSED
    assert event.severity == "critical"
    assert event.idempotency_key.endswith(
        "/-/-1/deadline-0192f3c4-aaaa-7bbb-8ccc-000000000001/deadline_missed"
    )
    assert (
        event.log_url
        == f"{BASE_URL}dags/batch_pipeline_dag/runs/scheduled__2026-01-14T02%3A00%3A00%2B00%3A00"
    )
    assert "had not finished by 2026-01-14T02:07:12Z (state running)" in event.exception


def test_a_context_of_no_known_shape_is_refused() -> None:
    with pytest.raises(UnknownCallbackContext):
        infer_event_type({"dag_run": object()})


def test_a_long_exception_is_cut_to_the_summary_limit() -> None:
    summary = summarize_exception(RuntimeError("x" * 5000))

    assert len(summary) == EXCEPTION_SUMMARY_LIMIT
    assert summary.startswith("RuntimeError: xxx") and summary.endswith("…")


def test_an_exception_without_a_message_is_summarized_by_its_type() -> None:
    assert summarize_exception(TimeoutError()) == "TimeoutError"


def test_exponential_backoff_is_capped_by_max_retry_delay() -> None:
    retry_at = next_retry_time(
        failed_at=FAILED_AT,
        try_number=6,
        retry_delay=timedelta(minutes=5),
        backoff_multiplier=2.0,
        max_retry_delay=timedelta(minutes=30),
    )

    assert retry_at == FAILED_AT + timedelta(minutes=30)


def test_without_backoff_the_next_retry_is_one_retry_delay_away() -> None:
    retry_at = next_retry_time(
        failed_at=FAILED_AT,
        try_number=3,
        retry_delay=timedelta(seconds=10),
        backoff_multiplier=0,
        max_retry_delay=None,
    )

    assert retry_at == FAILED_AT + timedelta(seconds=10)


def test_the_fallback_email_escapes_what_the_exception_says() -> None:
    context = task_context(state="failed") | {"exception": ValueError("<script>alert(1)</script>")}

    html = fallback_email_html(event_for(context))

    assert "<script>" not in html
    assert "&lt;script&gt;" in html
