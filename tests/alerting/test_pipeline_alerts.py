"""A real Airflow run with the alert service up: retries, a recovery, a permanent failure, a doubled callback.

One `airflow dags test alert_scenarios` run (tests/alerting/dags) serves every test here; each reads what the
service recorded (admin API) and what reached the SMTP server and the webhook receiver.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook

from alerting_service.notify.base import iso_utc
from tests.alerting.conftest import ONCALL, AlertStack, DagTest, eventually

pytestmark = pytest.mark.slow


def task_events(stack: AlertStack, run: DagTest, task_id: str) -> list[dict[str, Any]]:
    run_id = run.run_id()
    return [
        event
        for event in stack.events(dag_id=run.dag_id)
        if (event["run_id"], event["task_id"]) == (run_id, task_id)
    ]


def test_the_run_fails_because_one_task_never_recovers(scenarios: DagTest) -> None:
    assert scenarios.returncode == 1, scenarios.output[-3000:]
    assert scenarios.task_states() == {
        "recovers_on_third_try": "success",
        "never_recovers": "failed",
        "callback_fires_twice": "failed",
    }


def test_each_failed_try_of_a_transient_failure_raises_one_retry_alert(
    alert_stack: AlertStack, scenarios: DagTest
) -> None:
    retries = [
        event
        for event in task_events(alert_stack, scenarios, "recovers_on_third_try")
        if event["type"] == "task_retry"
    ]

    assert [(event["try_number"], event["max_tries"]) for event in retries] == [(1, 4), (2, 4)]
    assert [event["exception"] for event in retries] == [
        "ConnectionError: ml-api:8000 refused (try 1)",
        "ConnectionError: ml-api:8000 refused (try 2)",
    ]
    assert all(event["next_retry_at"] > event["occurred_at"] for event in retries)


def test_the_success_after_the_retries_resolves_their_alerts(
    alert_stack: AlertStack, scenarios: DagTest
) -> None:
    events = task_events(alert_stack, scenarios, "recovers_on_third_try")
    (success,) = [event for event in events if event["type"] == "task_success"]

    assert [event["resolved_by"] for event in events if event["type"] == "task_retry"] == [success["id"]] * 2


def test_the_webhook_that_heard_of_the_retries_hears_once_that_they_are_resolved(
    alert_stack: AlertStack, scenarios: DagTest
) -> None:
    events = task_events(alert_stack, scenarios, "recovers_on_third_try")
    (success,) = [event for event in events if event["type"] == "task_success"]

    (notice,) = eventually(lambda: alert_stack.webhooks_about(success["id"]))

    assert json.loads(notice.body)["data"]["kind"] == "resolved"


def test_a_permanent_failure_alerts_each_retry_then_fails_on_try_4_of_4(
    alert_stack: AlertStack, scenarios: DagTest
) -> None:
    events = task_events(alert_stack, scenarios, "never_recovers")

    assert [(event["type"], event["try_number"], event["max_tries"]) for event in events] == [
        ("task_retry", 1, 4),
        ("task_retry", 2, 4),
        ("task_retry", 3, 4),
        ("task_failure", 4, 4),
    ]
    assert all(event["resolved_by"] is None for event in events)


def the_final_failure(stack: AlertStack, run: DagTest) -> dict[str, Any]:
    (failure,) = [
        event for event in task_events(stack, run, "never_recovers") if event["type"] == "task_failure"
    ]
    return failure


def test_the_failure_email_names_dag_task_run_try_exception_and_log(
    alert_stack: AlertStack, scenarios: DagTest
) -> None:
    failure = the_final_failure(alert_stack, scenarios)

    (mail,) = eventually(lambda: alert_stack.mails_to(ONCALL, containing=failure["id"]))

    text = mail.part("text/plain")
    logical_date = iso_utc(datetime.fromisoformat(failure["logical_date"]).replace(tzinfo=UTC))
    assert mail.message["Subject"] == (
        f"[ERROR] task_failure: alert_scenarios.never_recovers logical date {logical_date} (try 4 of 4)"
    )
    for expected in (
        "DAG:        alert_scenarios",
        "Task:       never_recovers",
        f"Run:        {scenarios.run_id()}",
        "Try:        try 4 of 4",
        "ConnectionError: ml-api:8000 refused",
        failure["log_url"],
    ):
        assert expected in text
    assert failure["log_url"].startswith("http://airflow.bank.example:8080/dags/alert_scenarios/runs/")


def test_the_failure_webhook_is_signed_and_names_the_same(
    alert_stack: AlertStack, scenarios: DagTest
) -> None:
    failure = the_final_failure(alert_stack, scenarios)

    (receipt,) = eventually(lambda: alert_stack.webhooks_about(failure["id"]))

    payload = Webhook(alert_stack.webhook_secret).verify(receipt.body, receipt.headers)
    event = payload["data"]["event"]
    assert (event["dag_id"], event["task_id"], event["run_id"]) == (
        "alert_scenarios",
        "never_recovers",
        scenarios.run_id(),
    )
    assert (event["try_number"], event["max_tries"]) == (4, 4)
    assert event["exception"] == "ConnectionError: ml-api:8000 refused"
    assert event["log_url"] == failure["log_url"]


def test_retries_go_to_the_webhook_only(alert_stack: AlertStack, scenarios: DagTest) -> None:
    retry = task_events(alert_stack, scenarios, "never_recovers")[0]

    eventually(lambda: alert_stack.webhooks_about(retry["id"]))

    assert alert_stack.mails_to(ONCALL, containing=retry["id"]) == []


def test_a_callback_fired_twice_makes_one_alert(alert_stack: AlertStack, scenarios: DagTest) -> None:
    events = task_events(alert_stack, scenarios, "callback_fires_twice")

    assert [(event["type"], event["exception"]) for event in events] == [
        ("task_failure", "ValueError: the input file is empty")
    ]
    assert "(duplicate)" in scenarios.output


def test_the_dag_level_callback_reports_the_failed_run(alert_stack: AlertStack, scenarios: DagTest) -> None:
    run_events = [
        event
        for event in alert_stack.events(dag_id="alert_scenarios", type="dag_run_failure")
        if event["run_id"] == scenarios.run_id()
    ]

    assert [event["task_id"] for event in run_events] == [None]


def test_no_callback_of_a_healthy_service_falls_back(alert_stack: AlertStack, scenarios: DagTest) -> None:
    assert "ALERT NOT DELIVERED" not in scenarios.output
