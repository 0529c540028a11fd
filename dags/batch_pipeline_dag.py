"""Daily batch transaction pipeline: wiring only; the logic lives in the tested `pipeline_common` package."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from pipeline_common.batch_job_operators import run_batch_processing
from pipeline_common.defaults import alert_notifier, default_args, run_deadline
from pipeline_common.environment import prepare_environment
from pipeline_common.run_date import RUN_DATE_PARAM, business_date_label
from pipeline_common.settings import load_settings

DAG_ID = "batch_pipeline_dag"
SCHEDULE = "0 2 * * *"  # 02:00 UTC daily; each run processes the previous UTC day
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
TAGS = ["batch", "transactions", "fraud-scoring", "data-engineering"]
SETTINGS = load_settings()
ALERTS = alert_notifier(context_labels=business_date_label)  # alerts name the date the run processes

DOC_MD = """
### Daily batch transaction pipeline

**What it does.** At 02:00 UTC it processes the previous UTC day's transactions: it reads the day's CSV
objects, validates them (bad rows go to `rejected_transactions` with their reasons), scores them with the ML
API and loads them into `scored_transactions`. A re-run of a date replaces that date's rows, never duplicates
them.

**Tasks.** `prepare_environment` works out the date and checks the connections; `run_batch_processing` runs
the batch job: a Docker container when `BATCH_PIPELINE_DOCKER_URL` is set, else a local `python -m batch_job`.

**Connections.** `minio_default` (landing bucket, or extra `path` for a local directory), `postgres_default`
(results database, or conn_type `sqlite`), `ml_api_default` (ML API URL, API key as password). A missing
connection or field fails the run at once, naming it: fix the connection, then *Clear* `prepare_environment`
of that run with its downstream task, the UI's default (cleared alone, `run_batch_processing` would stay
`upstream_failed`). CLI, for a run with a logical date, given with its time (the scheduled run of
2026-01-15): `airflow tasks clear batch_pipeline_dag -t prepare_environment -d -s 2026-01-15T02:00:00+00:00
-e 2026-01-15T02:00:00+00:00 -y`. A bare date is midnight, before that run: `-s 2026-01-15 -e 2026-01-15`
clears nothing and says nothing. Without `-s`/`-e` it clears that task in every run of the DAG.

**Alerts** of the tasks, the run and its missed deadline name the date the run processes in their label
`business_date` (the logical date is the next day for a scheduled run). They are resolved per run: the success
of a cleared run resolves its failure alerts; a new run of the same date does not.

**Re-run a failed run.** Fix the cause, then *Clear* the failed task of that run: it keeps its run id, so its
success resolves its alerts.

**Re-run a date** that has no failed run to clear: trigger with the `run_date` param (YYYY-MM-DD), UI
*Trigger DAG* and fill `run_date`, or
`airflow dags trigger batch_pipeline_dag --conf '{"run_date": "2026-01-14"}'` (a day that is over: today or
later is refused). Without it, a manual run
processes the day before its logical date if it was given one (as a scheduled run does: logical date
2026-01-15 processes 2026-01-14), else the day before it was triggered. The log of `prepare_environment`
says which date and why.

**Failures.**
* Exit 65: the day's input data is invalid as a whole (unreadable CSV, missing columns). Not retried ("try 1
  of 4, not retried"): get a corrected file from the data provider, then clear the failed task.
* Exit 78: the job's configuration is wrong (connection fields, credentials refused; the message names which).
  Not retried: fix the connection, then clear the failed task.
* Anything else (ML API or database unreachable, no input objects for the date yet) is retried 3 times with
  exponential backoff. When the tries are spent, fix the cause (or wait for the input), then clear the failed
  task. A date without input never replaces the rows already loaded for it.

**Output.** Rows in `scored_transactions`/`rejected_transactions` of `postgres_default`; an asset event on
`scored_transactions` with extras `run_date`, `counts`, `table`, `source`, which triggers `fraud_report_dag`.
See docs/dags.md.
"""


@dag(
    dag_id=DAG_ID,
    schedule=SCHEDULE,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(SETTINGS, ALERTS),
    on_failure_callback=ALERTS,
    on_success_callback=ALERTS,
    deadline=run_deadline(SETTINGS, context_labels=business_date_label),
    params={
        RUN_DATE_PARAM: Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-\d{2}-\d{2}$",
            description=(
                "Business date to process (YYYY-MM-DD), a UTC day already over; empty: the day before "
                "the logical date, or before the trigger without one"
            ),
        )
    },
    tags=TAGS,
    doc_md=DOC_MD,
)
def batch_pipeline_dag() -> None:
    # Passing the XCom makes the dependency: prepare_environment >> run_batch_processing.
    run_batch_processing(SETTINGS, environment=prepare_environment())


batch_pipeline_dag()
