"""Which business date a run of `batch_pipeline_dag` processes.

With a cron schedule Airflow 3 uses `CronTriggerTimetable`: the 02:00 UTC run on day D has logical date
D 02:00 and processes the complete day before, D-1. A manual run has no logical date at all: it processes
the `run_date` param when given, else the day before `run_after` (when it was triggered).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from pipeline_common.errors import PipelineConfigError

RUN_DATE_PARAM = "run_date"
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_run_date(value: str) -> date:
    """A `YYYY-MM-DD` string as a date; anything else raises an error naming the param and the bad value."""
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise PipelineConfigError(f"param {RUN_DATE_PARAM}={value!r} is not a date in the form YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise PipelineConfigError(f"param {RUN_DATE_PARAM}={value!r} is not a valid date: {exc}") from None


def business_date(*, logical_date: datetime | None, run_after: datetime, run_date_param: str | None) -> date:
    """The day to process: the param, else the UTC day before the logical date, else before run_after."""
    if run_date_param:
        return parse_run_date(run_date_param)
    reference = logical_date if logical_date is not None else run_after
    return _utc_day(reference) - timedelta(days=1)


def _utc_day(moment: datetime) -> date:
    if moment.tzinfo is None:
        raise PipelineConfigError(f"{moment.isoformat()} has no time zone; Airflow dates are UTC-aware")
    return moment.astimezone(UTC).date()
