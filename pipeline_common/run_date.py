"""Which business date a run of `batch_pipeline_dag` processes.

With a cron schedule Airflow 3 uses `CronTriggerTimetable`: the 02:00 UTC run on day D has logical date
D 02:00 and processes the complete day before, D-1. A manual run processes the `run_date` param when given;
else, like a scheduled run, the day before its logical date when it was triggered with one (`airflow dags
trigger --logical-date`, the REST API, the UI's logical date field: `run_after` is then the moment of the
trigger, not that date); else the day before `run_after`, when it was triggered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pipeline_common.errors import PipelineConfigError

RUN_DATE_PARAM = "run_date"
BUSINESS_DATE_LABEL = "business_date"
# DagRunType.BACKFILL_JOB's value: the Task SDK gives the run type as that enum, a Deadline Alert's JSON
# context as this string.
BACKFILL_RUN_TYPE = "backfill"
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_run_date(value: str) -> date:
    """A `YYYY-MM-DD` string as a date; anything else raises an error naming the param and the bad value."""
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise PipelineConfigError(f"param {RUN_DATE_PARAM}={value!r} is not a date in the form YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise PipelineConfigError(f"param {RUN_DATE_PARAM}={value!r} is not a valid date: {exc}") from None


def business_date_label(context: Mapping[str, Any]) -> dict[str, str]:
    """The label `business_date` of the pipeline's alerts: the date the run processes, which the operator
    needs to re-run it and which the event's logical date (the next day, for a scheduled run) is not. Empty
    when the context has no run (a DAG callback given only the run's id).

    Also for a Deadline Alert, whose context (the triggerer's) holds the run as the REST API shows it: JSON,
    with its `conf` where a task's context has the merged `params`."""
    dag_run = context.get("dag_run")
    if dag_run is None:
        return {}
    if isinstance(dag_run, Mapping):
        day, _ = _business_date_of_run_as_json(dag_run)
    else:
        day, _ = business_date_of_run(context)
    return {BUSINESS_DATE_LABEL: day.isoformat()}


def business_date_of_run(context: Mapping[str, Any]) -> tuple[date, str]:
    """`business_date_and_rule` of the run a task or callback context is about."""
    return business_date_and_rule(
        logical_date=context.get("logical_date"),
        run_after=context["dag_run"].run_after,
        run_date_param=run_date_param_of(context),
    )


def _business_date_of_run_as_json(dag_run: Mapping[str, Any]) -> tuple[date, str]:
    logical_date = dag_run.get("logical_date")
    return business_date_and_rule(
        logical_date=datetime.fromisoformat(logical_date) if logical_date else None,
        run_after=datetime.fromisoformat(dag_run["run_after"]),
        run_date_param=(dag_run.get("conf") or {}).get(RUN_DATE_PARAM),
    )


def run_date_param_of(context: Mapping[str, Any]) -> str | None:
    """The run's `run_date` param, None when not given: the one place a context's param is read."""
    return (context.get("params") or {}).get(RUN_DATE_PARAM)


def refuse_run_date_on_backfill(*, run_type: str, run_date_param: str | None) -> None:
    """A backfill gives every one of its runs the same conf: a `run_date` there makes each run process that
    one date (and report success) instead of the day before its own logical date."""
    if run_date_param and run_type == BACKFILL_RUN_TYPE:
        raise PipelineConfigError(
            f"param {RUN_DATE_PARAM}={run_date_param!r} is set on a backfill run: every run of the backfill "
            "would process that one date. Drop it from --dag-run-conf: each backfill run processes the day "
            "before its logical date (for the dates A to B, backfill from A+1 to B+1T02:00)"
        )


def refuse_a_day_not_over(*, day: date, run_after: datetime, run_date_param: str | None, rule: str) -> None:
    """A day to process (a `run_date`, or the day before a manual run's logical date) that is the day the run
    was triggered, or later, is a day whose transactions are not all delivered: it would load part of a day,
    and announce it to the fraud report as the day's rows."""
    if day < _utc_day(run_after):
        return
    named = f"param {RUN_DATE_PARAM}={run_date_param!r}" if run_date_param else f"{day.isoformat()} ({rule})"
    raise PipelineConfigError(
        f"{named} is not over: the run was triggered at {run_after.isoformat()} and a day can be processed "
        "from the next UTC day on (the scheduled run processes it at 02:00 UTC the day after)"
    )


def business_date_and_rule(
    *, logical_date: datetime | None, run_after: datetime, run_date_param: str | None
) -> tuple[date, str]:
    """The day to process and, for the task log, which rule chose it: a manual run given a logical date
    processes the day before that date, which an operator can take for the date itself."""
    if run_date_param:
        return parse_run_date(run_date_param), f"param {RUN_DATE_PARAM}"
    if logical_date is not None:
        return _day_before(logical_date), f"the day before the logical date {logical_date.isoformat()}"
    return _day_before(run_after), f"the day before the run was triggered ({run_after.isoformat()})"


def _day_before(moment: datetime) -> date:
    return _utc_day(moment) - timedelta(days=1)


def _utc_day(moment: datetime) -> date:
    if moment.tzinfo is None:
        raise PipelineConfigError(f"{moment.isoformat()} has no time zone; Airflow dates are UTC-aware")
    return moment.astimezone(UTC).date()
