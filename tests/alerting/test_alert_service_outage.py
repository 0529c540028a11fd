"""A real Airflow run while the alert service is down: refusing connections, or accepting and never answering.

The tasks must end as they would have anyway, each notifier call must return within its bound, and every event
must still reach a person: in the task log, and for the alarms (failures) as an email sent straight through
`smtp_default`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.alerting.conftest import (
    FALLBACK_TO,
    INGEST_KEY,
    NOTIFIER_FALLBACK_TIMEOUT,
    NOTIFIER_TIMEOUT,
    AirflowRunner,
    AlertStack,
    DagTest,
    eventually,
)
from tests.alerting_service.delivery_fixtures import SMTP_PASSWORD, Mail, free_port

pytestmark = pytest.mark.slow

# Thread start and join around the two hard deadlines.
BOUND = NOTIFIER_TIMEOUT + NOTIFIER_FALLBACK_TIMEOUT + 0.25


@dataclass
class Outage:
    mode: str
    run: DagTest


@pytest.fixture(scope="module", params=["refusing", "silent"])
def outage(
    request: pytest.FixtureRequest, alert_stack: AlertStack, airflow_runner: AirflowRunner
) -> Iterator[Outage]:
    with socket.socket() as silent:
        if request.param == "silent":
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
            port = silent.getsockname()[1]
        else:
            port = free_port()
        connections = airflow_runner.connections(
            service_url=f"http://127.0.0.1:{port}", smtp_port=alert_stack.smtp.port
        )
        yield Outage(request.param, airflow_runner.dags_test("alert_outage", connections))


def test_the_task_outcomes_are_unchanged(outage: Outage) -> None:
    assert outage.run.returncode == 1, outage.run.output[-3000:]
    assert outage.run.task_states() == {"recovers_on_second_try": "success", "fails": "failed"}


def test_every_callback_returns_within_its_bound(outage: Outage) -> None:
    durations = outage.run.callback_durations()

    assert len(durations) == 3  # retry and success of one task, failure of the other
    assert max(durations) < BOUND, durations


def test_a_silent_service_is_waited_for_its_timeout_and_a_refusing_one_not_at_all(outage: Outage) -> None:
    durations = outage.run.callback_durations()

    if outage.mode == "silent":
        assert all(duration >= NOTIFIER_TIMEOUT for duration in durations), durations
    else:
        assert all(duration < NOTIFIER_TIMEOUT for duration in durations), durations


def test_every_alarm_arrives_as_a_fallback_email(alert_stack: AlertStack, outage: Outage) -> None:
    run_id = outage.run.run_id()

    def both_alarms() -> list[Mail]:
        mails = alert_stack.mails_to(FALLBACK_TO, containing=run_id)
        return mails if len(mails) >= 2 else []

    mails = eventually(both_alarms)

    assert sorted(mail.message["Subject"] for mail in mails) == [
        "[critical] dag_run_failure alert_outage",
        "[error] task_failure alert_outage.fails (try 1 of 1)",
    ]


def test_the_task_log_carries_each_undelivered_event(outage: Outage) -> None:
    assert outage.run.output.count("ALERT NOT DELIVERED to the alert service") == 4


def test_nothing_reached_the_service(alert_stack: AlertStack, outage: Outage) -> None:
    assert alert_stack.events(dag_id="alert_outage") == []


@pytest.mark.parametrize("secret", [INGEST_KEY, SMTP_PASSWORD], ids=["api key", "smtp password"])
def test_no_secret_reaches_the_task_logs_or_the_metadata_database(outage: Outage, secret: str) -> None:
    # Not vacuous: every callback of the run looked both up, sent the key and logged in with the password.
    assert secret not in outage.run.output
    for database_file in outage.run.airflow_db.parent.glob("airflow.db*"):
        assert secret.encode() not in database_file.read_bytes(), database_file
