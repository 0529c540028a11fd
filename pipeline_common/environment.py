"""The `prepare_environment` task: the run's business date, after checking the connections.

Its return value, an XCom, holds only `BATCH_RUN_DATE`: what does not come from a connection. Everything that
does is read again by `run_batch_processing` at the start of each try, so a connection fixed before a retry or
a Clear is used as fixed. Reading and validating the connections here as well makes a missing connection or
field fail the run at its first task, with a message naming both.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import Context, get_current_context, task

from pipeline_common.connections import job_environment, read_pipeline_connections
from pipeline_common.run_date import (
    business_date_of_run,
    refuse_a_day_not_over,
    refuse_run_date_on_backfill,
    run_date_param_of,
)

log = logging.getLogger(__name__)


def environment_for_run(context: Context) -> dict[str, str]:
    refuse_run_date_on_backfill(
        run_type=_value(context["dag_run"].run_type), run_date_param=run_date_param_of(context)
    )
    run_date, rule = business_date_of_run(context)
    refuse_a_day_not_over(
        day=run_date,
        run_after=context["dag_run"].run_after,
        run_date_param=run_date_param_of(context),
        rule=rule,
    )
    job_environment(read_pipeline_connections())  # validation only: raises naming a bad connection or field
    log.info("BATCH_RUN_DATE=%s (%s); the connections are complete", run_date.isoformat(), rule)
    return {"BATCH_RUN_DATE": run_date.isoformat()}


def _value(run_type: Any) -> str:
    return str(getattr(run_type, "value", run_type))


@task(task_id="prepare_environment", multiple_outputs=False)
def prepare_environment() -> dict[str, str]:
    """Which date this run processes (`BATCH_RUN_DATE`), once the connections are known to be complete."""
    return environment_for_run(get_current_context())
