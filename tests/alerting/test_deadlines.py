"""A run past its Deadline Alert raises `deadline_missed`, the whole way through a real Airflow.

`airflow dags test` cannot exercise Deadline Alerts (its runs have no queued_at, so no deadline is created,
and a DAG with a deadline crashes it at the end: apache/airflow#73428). So this runs `airflow standalone`
(scheduler, triggerer, dag-processor, API server) with the test DAGs, triggers `alert_slow_run` (deadline 2 s
after queued, a task that runs until the test is done with it, a minute at most) and waits for the event at
the alert service: the scheduler finds the miss, the triggerer instantiates and awaits the notifier.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pytest

from tests.alerting.conftest import ONCALL, AirflowRunner, AlertStack, eventually
from tests.alerting_service.delivery_fixtures import free_port

pytestmark = pytest.mark.slow

DAG_ID = "alert_slow_run"


class Standalone:
    """`airflow standalone` in its own process group, stopped the way the Airflow notes say it must be."""

    def __init__(self, runner: AirflowRunner, environment: dict[str, str]) -> None:
        self.port = free_port()
        self.runner = runner
        self.environment = (
            runner.environment
            | environment
            | {
                # standalone starts its components as `airflow ...` commands
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "AIRFLOW__API__PORT": str(self.port),
                # The tasks reach the execution API here, not at AIRFLOW__API__BASE_URL (a made-up host for
                # the log links): with the default, every try failed before its task started.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "ALERT_TEST_STAMPS": str(runner.home / "stamps"),
                "ALERT_TEST_RELEASE": str(runner.home / "release"),
            }
        )
        self.log = runner.home / "standalone.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "airflow", "standalone"],
                env=self.environment,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        eventually(self._healthy, within=180, interval=0.25)

    def airflow(self, *arguments: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "airflow", *arguments],
            env=self.environment,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def until_serialized(self, dag_id: str) -> None:
        """Waits until the dag-processor has stored the DAG, which `airflow dags trigger` needs (its own
        `airflow dags reserialize` cost another Airflow CLI start)."""

        def serialized() -> bool:
            with closing(sqlite3.connect(self.runner.home / "airflow.db")) as db:
                found = db.execute("SELECT 1 FROM serialized_dag WHERE dag_id = ?", (dag_id,)).fetchone()
            return found is not None

        eventually(serialized, within=120, interval=0.25)

    def release_runs(self) -> None:
        """Lets the slow task end (see alert_slow_run) and waits for its run to end: a task still running at
        the stop would be killed and retried while the components stop. The run must succeed: the task really
        ran (a try that cannot reach the execution API fails before its task starts)."""
        Path(self.environment["ALERT_TEST_RELEASE"]).touch()

        def run_states() -> list[str]:
            with closing(sqlite3.connect(self.runner.home / "airflow.db")) as db:
                rows = db.execute("SELECT state FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchall()
            states = [state for (state,) in rows]
            return states if states and not {"queued", "running"} & set(states) else []

        assert eventually(run_states, within=90, interval=0.2) == ["success"]

    def run_after(self) -> datetime:
        with closing(sqlite3.connect(self.runner.home / "airflow.db")) as db:
            (stored,) = db.execute("SELECT run_after FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchone()
        return datetime.fromisoformat(stored)

    def stop(self) -> None:
        """SIGINT to the group (SIGTERM to the parent alone orphans its children), then SIGTERM, SIGKILL.

        The scheduler's LocalExecutor workers live in a session of their own and outlive it: every process
        standalone started is listed first, and whatever survives the group's stop is killed by its id.
        The graces are short: the triggerer's child (Airflow 3.3) has heeded neither SIGINT nor SIGTERM here
        and standalone waits for it, so longer graces only made the stop longer; no test here is about it.
        """
        assert self.process is not None
        started = psutil.Process(self.process.pid).children(recursive=True)
        for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
                break
        _, survivors = psutil.wait_procs(started, timeout=2)
        for process in survivors:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()

    def _healthy(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            health = httpx.get(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=2).json()
        except (httpx.TransportError, ValueError):
            return False
        return all(health.get(part, {}).get("status") == "healthy" for part in ("scheduler", "triggerer"))


@pytest.fixture(scope="module")
def standalone(alert_stack: AlertStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    runner = AirflowRunner(tmp_path_factory.mktemp("airflow-home-standalone"))
    connections = runner.connections(service_url=alert_stack.service.url, smtp_port=alert_stack.smtp.port)
    airflow = Standalone(runner, connections)
    airflow.start()
    try:
        yield airflow
    finally:
        try:
            airflow.release_runs()
        finally:
            airflow.stop()


@pytest.fixture(scope="module")
def missed_deadline(alert_stack: AlertStack, standalone: Standalone) -> dict[str, Any]:
    """The `deadline_missed` event of one run of `alert_slow_run`, triggered once for the tests of this module
    whichever of them runs: the run is past its deadline and still running."""
    standalone.until_serialized(DAG_ID)
    standalone.airflow("dags", "trigger", DAG_ID)
    (missed,) = eventually(
        lambda: alert_stack.events(dag_id=DAG_ID, type="deadline_missed"), within=120, interval=0.25
    )
    return missed


def test_a_run_past_its_deadline_raises_deadline_missed(
    alert_stack: AlertStack, standalone: Standalone, missed_deadline: dict[str, Any]
) -> None:
    missed = missed_deadline

    assert missed["run_id"].startswith("manual__")
    day_before_the_trigger = (standalone.run_after().date() - timedelta(days=1)).isoformat()
    assert missed["severity"] == "critical"
    assert missed["labels"] == {"team": "data-engineering", "business_date": day_before_the_trigger}
    assert "had not finished by" in missed["exception"]
    assert (
        missed["log_url"] == f"http://airflow.bank.example:8080/dags/{DAG_ID}/runs/{quote(missed['run_id'])}"
    )
    eventually(lambda: alert_stack.mails_to(ONCALL, containing=missed["id"]))


def test_the_dag_processor_reports_the_runs_success_with_the_date_it_processed(
    alert_stack: AlertStack, standalone: Standalone, missed_deadline: dict[str, Any]
) -> None:
    # The event that feeds the dead man's switch: DAG-level callbacks run in the dag-processor, which
    # `airflow dags test` does not exercise. Released once past its deadline (missed_deadline), the run ends.
    standalone.release_runs()

    (success,) = eventually(
        lambda: alert_stack.events(dag_id=DAG_ID, type="dag_run_success"), within=120, interval=0.25
    )

    day_before_the_trigger = (standalone.run_after().date() - timedelta(days=1)).isoformat()
    assert success["labels"] == {"team": "data-engineering", "business_date": day_before_the_trigger}
