"""The alert service event (docs/architecture.md, "Alert service event API") built from a callback context.

Three context shapes reach the notifier, and each is recognised by what it carries:
- a task callback (on_retry/on_failure/on_success): `ti`, whose `state` is already the final one;
- a DAG run callback (on_failure/on_success of the DAG): `reason` ("success", "task_failure", ...);
- a Deadline Alert callback, run by the triggerer: `deadline` and `dag_run` as plain JSON (no `ti`, no `dag`).

The idempotency key is derived only from what identifies the occurrence (DAG, run, task, map index, try,
type), and every other field from the context too, never from the clock when the context has a time: a
callback fired twice sends the same key with the same body, which the service records once.

Nothing here does I/O, so all of it is unit-tested with plain contexts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from html import escape
from typing import Any
from urllib.parse import quote

from pipeline_common.run_date import BACKFILL_RUN_TYPE

# The service accepts far more, but an alert is read by a person on a phone: the first lines are what matter.
EXCEPTION_SUMMARY_LIMIT = 500
NO_TASK = "-"
NO_MAP_INDEX = -1


class EventType(StrEnum):
    """The service's event types; repeated here because nothing in Airflow imports `alerting_service`."""

    TASK_FAILURE = "task_failure"
    TASK_RETRY = "task_retry"
    TASK_SUCCESS = "task_success"
    DAG_RUN_FAILURE = "dag_run_failure"
    DAG_RUN_SUCCESS = "dag_run_success"
    DEADLINE_MISSED = "deadline_missed"


DEFAULT_SEVERITY = {
    EventType.TASK_FAILURE: "error",
    EventType.TASK_RETRY: "warning",
    EventType.TASK_SUCCESS: "info",
    EventType.DAG_RUN_FAILURE: "critical",
    EventType.DAG_RUN_SUCCESS: "info",
    EventType.DEADLINE_MISSED: "critical",
}

# What wakes a person up; retries and successes inform, and are not worth an email that bypasses routing.
ALARMS = frozenset({EventType.TASK_FAILURE, EventType.DAG_RUN_FAILURE, EventType.DEADLINE_MISSED})

_TASK_STATE_EVENTS = {
    "up_for_retry": EventType.TASK_RETRY,
    "failed": EventType.TASK_FAILURE,
    "success": EventType.TASK_SUCCESS,
}


class UnknownCallbackContext(ValueError):
    """The context fits none of the three callback shapes, or names a state that has no event type."""


@dataclass(frozen=True)
class AlertEvent:
    """One `POST /v1/events` body; `None` fields are left out of the JSON."""

    idempotency_key: str
    type: EventType
    severity: str
    dag_id: str
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None
    max_tries: int | None = None
    logical_date: str | None = None
    occurred_at: str | None = None
    exception: str | None = None
    log_url: str | None = None
    next_retry_at: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}

    @property
    def is_alarm(self) -> bool:
        return self.type in ALARMS

    @property
    def headline(self) -> str:
        """One line naming what happened, used as the fallback email's subject and the log line."""
        where = f"{self.dag_id}.{self.task_id}" if self.task_id else self.dag_id
        return f"[{self.severity}] {self.type} {where}{self._tries}"

    @property
    def _tries(self) -> str:
        """` (try 2 of 4)`; a failure before its last try, failed at once by the retry policy, says so."""
        if not (self.try_number and self.max_tries):
            return ""
        final_early = self.type == EventType.TASK_FAILURE and self.try_number < self.max_tries
        return f" (try {self.try_number} of {self.max_tries}{', not retried' if final_early else ''})"


def infer_event_type(context: Mapping[str, Any]) -> EventType:
    if "deadline" in context:
        return EventType.DEADLINE_MISSED
    if "reason" in context:
        return EventType.DAG_RUN_SUCCESS if context["reason"] == "success" else EventType.DAG_RUN_FAILURE
    ti = context.get("ti")
    if ti is None:
        raise UnknownCallbackContext(
            "the callback context has neither a task instance, a reason nor a deadline"
        )
    state = str(getattr(ti.state, "value", ti.state))
    if state not in _TASK_STATE_EVENTS:
        raise UnknownCallbackContext(
            f"no alert event for a task in state {state!r}: pass event_type explicitly"
        )
    return _TASK_STATE_EVENTS[state]


def is_backfill_deadline(context: Mapping[str, Any]) -> bool:
    """A missed deadline of a backfill run: `airflow backfill create` queues all its runs at once and runs
    them a few at a time, so every run's "finished within N minutes of being queued" deadline measures the
    length of the whole backfill, not the run: a backfill of more days than fit in N minutes would page once
    per remaining day. A backfill run's real failures still alert through its task and run callbacks."""
    if "deadline" not in context:
        return False
    dag_run = context.get("dag_run")
    return isinstance(dag_run, Mapping) and dag_run.get("run_type") == BACKFILL_RUN_TYPE


def build_event(
    context: Mapping[str, Any],
    *,
    event_type: EventType | str | None = None,
    severity: str | None = None,
    labels: Mapping[str, str] | None = None,
    api_base_url: str,
) -> AlertEvent:
    """The event for this callback; `api_base_url` is Airflow's `[api] base_url`, for links into the UI."""
    kind = EventType(event_type) if event_type else infer_event_type(context)
    common = {"type": kind, "severity": severity or DEFAULT_SEVERITY[kind], "labels": dict(labels or {})}
    if kind is EventType.DEADLINE_MISSED:
        return AlertEvent(**common, **_deadline_fields(context, api_base_url))
    if kind in (EventType.DAG_RUN_FAILURE, EventType.DAG_RUN_SUCCESS):
        return AlertEvent(**common, **_dag_run_fields(context, kind, api_base_url))
    return AlertEvent(**common, **_task_fields(context, kind))


def idempotency_key(
    *, dag_id: str, run_id: str, task_id: str, map_index: int, attempt: int | str, event_type: EventType
) -> str:
    return f"{dag_id}/{run_id}/{task_id}/{map_index}/{attempt}/{event_type}"


def summarize_exception(
    error: BaseException | str | None, limit: int = EXCEPTION_SUMMARY_LIMIT
) -> str | None:
    """`Type: message`, cut to `limit` characters: enough to triage, short enough for a pager."""
    if error is None:
        return None
    text = error if isinstance(error, str) else exception_text(error)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def exception_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".rstrip(": ")


def next_retry_time(
    *,
    failed_at: datetime,
    try_number: int,
    retry_delay: timedelta,
    backoff_multiplier: float,
    max_retry_delay: timedelta | None,
) -> datetime:
    """The earliest time Airflow retries: `retry_delay`, times `multiplier ** (try - 1)` with backoff, capped.

    Airflow adds a hash-based jitter on top of the exponential delay and a retry policy may override the
    delay; neither is visible to the task, so this is "not before".
    """
    delay = retry_delay
    if backoff_multiplier > 0 and not math.isclose(backoff_multiplier, 1.0):
        seconds = max(1, math.ceil(retry_delay.total_seconds() * backoff_multiplier ** (try_number - 1)))
        delay = timedelta(seconds=seconds)
    if max_retry_delay is not None:
        delay = min(delay, max_retry_delay)
    return failed_at + delay


def iso_utc(moment: datetime | str | None) -> str | None:
    if moment is None or isinstance(moment, str):
        return moment
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def run_url(api_base_url: str, dag_id: str, run_id: str) -> str:
    return f"{api_base_url.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id)}"


def fallback_email_html(event: AlertEvent) -> str:
    """The event as an HTML table for the fallback email; values escaped (exceptions are any text)."""
    rows = "".join(
        f"<tr><th align='left'>{escape(name)}</th><td>{escape(str(value))}</td></tr>"
        for name, value in event.as_json().items()
    )
    return (
        "<p>The alert service could not be reached, so this alert was sent directly by Airflow. "
        "It is not in the alert service: it will not be retried, routed or resolved.</p>"
        f"<table>{rows}</table>"
    )


def _task_fields(context: Mapping[str, Any], kind: EventType) -> dict[str, Any]:
    ti = context["ti"]
    map_index = NO_MAP_INDEX if ti.map_index is None else ti.map_index
    failed_at = ti.end_date or datetime.now(UTC)
    return {
        "idempotency_key": idempotency_key(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=map_index,
            attempt=ti.try_number,
            event_type=kind,
        ),
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": map_index,
        "try_number": ti.try_number,
        # Airflow's max_tries counts the retries; the operator reads "try 4 of 4".
        "max_tries": ti.max_tries + 1,
        "logical_date": iso_utc(context.get("logical_date")),
        "occurred_at": iso_utc(failed_at),
        "exception": summarize_exception(context.get("exception"))
        if kind is not EventType.TASK_SUCCESS
        else None,
        "log_url": ti.log_url,
        "next_retry_at": iso_utc(_next_retry_of(ti, failed_at)) if kind is EventType.TASK_RETRY else None,
    }


def _next_retry_of(ti: Any, failed_at: datetime) -> datetime:
    task = ti.task
    return next_retry_time(
        failed_at=failed_at,
        try_number=ti.try_number,
        retry_delay=task.retry_delay,
        backoff_multiplier=float(task.retry_exponential_backoff or 0),
        max_retry_delay=task.max_retry_delay,
    )


def _dag_run_fields(context: Mapping[str, Any], kind: EventType, api_base_url: str) -> dict[str, Any]:
    dag_run = context.get("dag_run")
    dag_id = context["dag"].dag_id if "dag" in context else dag_run.dag_id
    run_id = context.get("run_id") or dag_run.run_id
    ti = context.get("ti")
    # A run cleared and run again keeps its run_id; clear_number tells its attempts apart.
    attempt = (getattr(dag_run, "clear_number", 0) or 0) + 1
    ended_at = getattr(dag_run, "end_date", None) or datetime.now(UTC)
    failed_task = ti if ti is not None and kind is EventType.DAG_RUN_FAILURE else None
    return {
        "idempotency_key": idempotency_key(
            dag_id=dag_id,
            run_id=run_id,
            task_id=NO_TASK,
            map_index=NO_MAP_INDEX,
            attempt=attempt,
            event_type=kind,
        ),
        "dag_id": dag_id,
        "run_id": run_id,
        "logical_date": iso_utc(context.get("logical_date") or getattr(dag_run, "logical_date", None)),
        "occurred_at": iso_utc(ended_at),
        "exception": _dag_run_failure_summary(context, failed_task),
        "log_url": failed_task.log_url if failed_task is not None else run_url(api_base_url, dag_id, run_id),
    }


def _dag_run_failure_summary(context: Mapping[str, Any], failed_task: Any) -> str | None:
    if failed_task is None:
        return None
    # The run's alert has no exception of its own: it points the on-call operator at the one that has.
    return summarize_exception(
        f"{context['reason']} at task {failed_task.task_id}: the cause is in that task's task_failure alert "
        "and log"
    )


def _deadline_fields(context: Mapping[str, Any], api_base_url: str) -> dict[str, Any]:
    # The triggerer's context is JSON: the run as the REST API shows it, and the deadline row.
    dag_run = context["dag_run"]
    deadline = context["deadline"]
    dag_id, run_id = dag_run["dag_id"], dag_run["dag_run_id"]
    deadline_time = iso_utc(deadline["deadline_time"])
    return {
        "idempotency_key": idempotency_key(
            dag_id=dag_id,
            run_id=run_id,
            task_id=NO_TASK,
            map_index=NO_MAP_INDEX,
            attempt=f"deadline-{deadline['id']}",
            event_type=EventType.DEADLINE_MISSED,
        ),
        "dag_id": dag_id,
        "run_id": run_id,
        "logical_date": iso_utc(dag_run.get("logical_date")),
        "occurred_at": deadline_time,
        "exception": f"the run had not finished by {deadline_time} (state {dag_run.get('state')})",
        "log_url": run_url(api_base_url, dag_id, run_id),
    }
