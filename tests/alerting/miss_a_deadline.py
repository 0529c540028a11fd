"""Make Airflow miss a Deadline Alert of the latest run of a DAG, and run its callback as the triggerer would.

`airflow dags test` cannot exercise Deadline Alerts: its runs have no queued_at, so no deadline is created
(and a DAG with a deadline crashes it at the end, apache/airflow#73428). This script takes over from the point
where the scheduler finds a deadline in the past: it stores a Deadline for `missed_run_deadline(...)`, calls
Airflow's own `Deadline.handle_miss` (which queues the callback as a trigger with the run's context), then
instantiates that trigger from its stored row and runs it to completion, like the triggerer.

Usage: python tests/alerting/miss_a_deadline.py DAG_ID   (prints the trigger's events as JSON, last line)
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow._shared.module_loading import import_string
from airflow.models.dagrun import DagRun
from airflow.models.deadline import Deadline
from airflow.utils.session import create_session
from sqlalchemy import select

from pipeline_common.notifiers import missed_run_deadline


def queue_missed_deadline(dag_id: str) -> tuple[str, dict[str, Any]]:
    alert = missed_run_deadline(timedelta(minutes=90), labels={"team": "data-engineering"})
    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
        ).one()
        deadline = Deadline(
            deadline_time=datetime.now(UTC) - timedelta(seconds=1),
            callback=alert.callback,
            dagrun_id=run.id,
            deadline_alert_id=None,
            dag_id=dag_id,
        )
        session.add(deadline)
        session.flush()
        deadline.handle_miss(session)
        trigger = deadline.callback.trigger
        return trigger.classpath, trigger.kwargs


async def run_trigger(classpath: str, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    trigger = import_string(classpath)(**kwargs)
    return [event.payload async for event in trigger.run()]


if __name__ == "__main__":
    events = asyncio.run(run_trigger(*queue_missed_deadline(sys.argv[1])))
    print(json.dumps(events, default=str))
