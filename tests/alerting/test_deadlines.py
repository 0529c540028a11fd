"""A run past its Deadline Alert raises `deadline_missed`, through Airflow's own miss handling and trigger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.alerting.conftest import (
    ONCALL,
    AirflowRunner,
    AlertStack,
    DagTest,
    eventually,
)

pytestmark = pytest.mark.slow

MISS_A_DEADLINE = Path(__file__).parent / "miss_a_deadline.py"


def test_a_run_past_its_deadline_raises_deadline_missed(
    alert_stack: AlertStack, airflow_runner: AirflowRunner, scenarios: DagTest
) -> None:
    connections = airflow_runner.connections(
        service_url=alert_stack.service.url, smtp_port=alert_stack.smtp.port
    )

    output = airflow_runner.python(MISS_A_DEADLINE, "alert_scenarios", environment=connections)

    trigger_events = json.loads(output.splitlines()[-1])

    assert [event["state"] for event in trigger_events] == ["running", "success"]
    (missed,) = alert_stack.events(dag_id="alert_scenarios", type="deadline_missed")
    assert (missed["run_id"], missed["severity"], missed["labels"]) == (
        scenarios.run_id(),
        "critical",
        {"team": "data-engineering"},
    )
    assert missed["log_url"].startswith("http://airflow.bank.example:8080/dags/alert_scenarios/runs/")
    eventually(lambda: alert_stack.mails_to(ONCALL, containing=missed["id"]))
