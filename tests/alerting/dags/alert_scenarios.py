"""DAGs that fail on purpose, wired like the pipeline DAGs: pipeline_common's default_args plus the notifier.

Loaded only by the end-to-end alert tests (tests/alerting), which make this folder the dags folder and run
them with `airflow dags test`. Each task callback list is bracketed by `stamp` callbacks, which append the
monotonic time to the file named by ALERT_TEST_STAMPS, so a test can measure what the notifier cost the task.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from pipeline_common.defaults import default_args
from pipeline_common.notifiers import AlertServiceNotifier, missed_run_deadline
from pipeline_common.run_date import business_date_label
from pipeline_common.settings import load_settings

LABELS = {"team": "data-engineering"}


def stamp(context: Any) -> None:
    with open(os.environ["ALERT_TEST_STAMPS"], "a", encoding="utf-8") as stamps:
        stamps.write(json.dumps({"task_id": context["ti"].task_id, "at": time.monotonic()}) + "\n")


def new_notifier(**options: Any) -> AlertServiceNotifier:
    return AlertServiceNotifier(
        **options,
        labels=LABELS,
        timeout=float(os.environ.get("ALERT_TEST_NOTIFIER_TIMEOUT", "1")),
        fallback_timeout=float(os.environ.get("ALERT_TEST_NOTIFIER_FALLBACK_TIMEOUT", "1")),
    )


def alerting_dag(dag_id: str, notifier: AlertServiceNotifier | None = None, **dag_options: Any) -> Any:
    notifier = notifier or new_notifier()
    bracketed = [stamp, notifier, stamp]
    return dag(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["alert-tests"],
        default_args=default_args(load_settings(), notifier)
        | {
            "on_retry_callback": bracketed,
            "on_failure_callback": bracketed,
            "on_success_callback": bracketed,
        },
        on_success_callback=notifier,
        on_failure_callback=notifier,
        **dag_options,
    )


def fail_before_try(ti: Any, succeeding_try: int) -> None:
    if ti.try_number < succeeding_try:
        raise ConnectionError(f"ml-api:8000 refused (try {ti.try_number})")


@alerting_dag("alert_scenarios")
def alert_scenarios() -> None:
    @task
    def recovers_on_third_try(ti: Any = None) -> None:
        fail_before_try(ti, succeeding_try=3)

    @task
    def never_recovers() -> None:
        raise ConnectionError("ml-api:8000 refused")

    notifier = new_notifier()

    @task(retries=0, on_failure_callback=[stamp, notifier, notifier, stamp])
    def callback_fires_twice() -> None:
        raise ValueError("the input file is empty")

    recovers_on_third_try()
    never_recovers()
    callback_fires_twice()


@alerting_dag("alert_outage")
def alert_outage() -> None:
    @task
    def recovers_on_second_try(ti: Any = None) -> None:
        fail_before_try(ti, succeeding_try=2)

    @task(retries=0)
    def fails() -> None:
        raise ValueError("the input file is empty")

    recovers_on_second_try()
    fails()


# Run by a real scheduler and triggerer (`airflow standalone`): `airflow dags test` creates no deadline.
# Its run's end is reported by the DAG-level callback as the pipeline's is (the business date label included):
# under `airflow standalone`, from the real dag-processor.
@alerting_dag(
    "alert_slow_run",
    notifier=new_notifier(context_labels=business_date_label),
    deadline=missed_run_deadline(timedelta(seconds=2), labels=LABELS, context_labels=business_date_label),
)
def alert_slow_run() -> None:
    @task
    def slower_than_its_deadline() -> None:
        """Runs a minute, or until the test has seen the alert and creates the file ALERT_TEST_RELEASE names:
        long past the deadline either way, and over once the test is done, so Airflow stops at once."""
        release = os.environ.get("ALERT_TEST_RELEASE")
        until = time.monotonic() + 60
        while time.monotonic() < until and not (release and os.path.exists(release)):
            time.sleep(0.1)

    slower_than_its_deadline()


alert_scenarios()
alert_outage()
alert_slow_run()
