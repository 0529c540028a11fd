"""Open alerts and what closes them, pure.

Every event has a fingerprint: the key of the alert it opens (a failure, retry or missed deadline) or closes
(a success).
- Task events: `task:<dag_id>/<run_id>/<task_id>/<map_index>`. A task_success closes the open task_failure
  and task_retry of the same task instance.
- Run events: `run:<dag_id>/<run_id>`. A dag_run_success closes the open dag_run_failure and
  deadline_missed of the same run, and also any open alert fingerprinted `dag:<dag_id>` (a dead man's
  switch's missed day with `business_date_label` only if it processed that day or a later one: see
  expectations.resolves_missed_day).
- A run event without a run_id (e.g. a dead man's switch: "no run succeeded by 04:00") is about the DAG itself
  and is fingerprinted `dag:<dag_id>`.
"""

from __future__ import annotations

from alerting_service.models import EventType

FIRING_TYPES = frozenset(
    {EventType.TASK_FAILURE, EventType.TASK_RETRY, EventType.DAG_RUN_FAILURE, EventType.DEADLINE_MISSED}
)
TASK_TYPES = frozenset({EventType.TASK_FAILURE, EventType.TASK_RETRY, EventType.TASK_SUCCESS})


def is_firing(event_type: EventType) -> bool:
    return event_type in FIRING_TYPES


def dag_fingerprint(dag_id: str) -> str:
    return f"dag:{dag_id}"


def fingerprint(
    event_type: EventType, *, dag_id: str, run_id: str | None, task_id: str | None, map_index: int
) -> str:
    if event_type in TASK_TYPES:
        return f"task:{dag_id}/{run_id or ''}/{task_id or ''}/{map_index}"
    if run_id is None:
        return dag_fingerprint(dag_id)
    return f"run:{dag_id}/{run_id}"


def resolved_fingerprints(event_type: EventType, *, dag_id: str, own_fingerprint: str) -> tuple[str, ...]:
    """The fingerprints of the open alerts a success closes; none for a firing event."""
    if event_type is EventType.TASK_SUCCESS:
        return (own_fingerprint,)
    if event_type is EventType.DAG_RUN_SUCCESS:
        return tuple(dict.fromkeys((own_fingerprint, dag_fingerprint(dag_id))))
    return ()
