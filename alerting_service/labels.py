"""The label set of an event: what routes and silences match on.

Flat string keys: `type`, `severity`, `dag_id`, `task_id` (when set) and `labels.<name>` for each free label.
"""

from __future__ import annotations

from collections.abc import Mapping

LABEL_PREFIX = "labels."
EVENT_FIELD_LABELS = ("type", "severity", "dag_id", "task_id")


def event_labels(
    *, type: str, severity: str, dag_id: str, task_id: str | None, labels: Mapping[str, str]
) -> dict[str, str]:
    flat = {"type": type, "severity": severity, "dag_id": dag_id}
    if task_id is not None:
        flat["task_id"] = task_id
    flat.update((LABEL_PREFIX + name, value) for name, value in labels.items())
    return flat
