"""The `prepare_environment` task: the run's business date plus the non-secret job environment.

Its return value is an XCom, so it holds no secret: credentials are resolved again, at execution time, by
`run_batch_processing`. Reading and validating the connections here makes a missing connection or field fail
the run at its first task, with a message naming both.
"""

from __future__ import annotations

import logging

from airflow.sdk import Context, get_current_context, task

from pipeline_common.connections import job_environment, read_pipeline_connections
from pipeline_common.run_date import RUN_DATE_PARAM, business_date

log = logging.getLogger(__name__)


def environment_for_run(context: Context) -> dict[str, str]:
    run_date = business_date(
        logical_date=context.get("logical_date"),
        run_after=context["dag_run"].run_after,
        run_date_param=context["params"].get(RUN_DATE_PARAM),
    )
    environment = {"BATCH_RUN_DATE": run_date.isoformat(), **job_environment(read_pipeline_connections())}
    for name, value in sorted(environment.items()):
        log.info("%s=%s", name, value)
    return environment


@task(task_id="prepare_environment", multiple_outputs=False)
def prepare_environment() -> dict[str, str]:
    """Which date this run processes, and the non-secret `BATCH_*` variables for the job."""
    return environment_for_run(get_current_context())
