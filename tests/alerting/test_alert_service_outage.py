"""A real Airflow run while the alert service is down: refusing connections, or accepting and never answering.

The tasks must end as they would have anyway, each notifier call must return (given up at its hard deadline,
which tests/pipeline_common/test_notifier.py shows against a peer that trickles its answer), and every event
must still reach a person: in the task log, and for the alarms (failures) as an email sent straight through
`smtp_default`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.alerting.conftest import (
    FALLBACK_TO,
    INGEST_KEY,
    NOTIFIER_TIMEOUT,
    AirflowRunner,
    AlertStack,
    DagTest,
    eventually,
)
from tests.alerting_service.delivery_fixtures import SMTP_PASSWORD, Mail, free_port

pytestmark = pytest.mark.slow


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


def test_every_callback_returns(outage: Outage) -> None:
    # A callback Airflow had to kill leaves its opening stamp without the closing one.
    assert len(outage.run.callback_durations()) == 3  # retry and success of one task, failure of the other


def test_a_silent_service_is_given_up_at_its_timeout_and_a_refusing_one_at_once(outage: Outage) -> None:
    reasons = re.findall(r"ALERT NOT DELIVERED to the alert service \((\w+)", outage.run.output)

    assert len(reasons) == 4, outage.run.output[-3000:]
    if outage.mode == "silent":
        # The hard deadline ends the wait, before the socket's read timeout (a second later).
        assert set(reasons) == {"TimeoutError"}, reasons
        assert all(duration >= NOTIFIER_TIMEOUT for duration in outage.run.callback_durations())
    else:
        assert set(reasons) == {"ConnectError"}, reasons


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


@pytest.mark.parametrize("secret", [INGEST_KEY, SMTP_PASSWORD], ids=["api key", "smtp password"])
def test_no_secret_reaches_the_task_logs_or_the_metadata_database(outage: Outage, secret: str) -> None:
    # Not vacuous: every callback of the run looked both up, sent the key and logged in with the password.
    assert secret not in outage.run.output
    for database_file in outage.run.airflow_db.parent.glob("airflow.db*"):
        assert secret.encode() not in database_file.read_bytes(), database_file
