"""The label set of an event: what routes and silences match on.

Flat string keys: `type`, `severity`, `dag_id`, `task_id` (when set) and `labels.<name>` for each free label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from alerting_service.models import EventType, Severity

LABEL_PREFIX = "labels."
EVENT_FIELD_LABELS = ("type", "severity", "dag_id", "task_id")
# The name of a free label, as the event schema accepts it.
LABEL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# The only values these keys take: a route or a silence expecting another would never match.
KNOWN_VALUES: dict[str, tuple[str, ...]] = {"type": tuple(EventType), "severity": tuple(Severity)}


def is_match_key(key: str) -> bool:
    """An event field, or `labels.<name>` with a name the event schema accepts."""
    name = key.removeprefix(LABEL_PREFIX)
    return key in EVENT_FIELD_LABELS or (key != name and re.fullmatch(LABEL_NAME_PATTERN, name) is not None)


def unknown_value(key: str, values: Iterable[str]) -> str | None:
    """The first of `values` that no event has for `key`; None when each may match."""
    known = KNOWN_VALUES.get(key)
    return next((value for value in values if known is not None and value not in known), None)


def event_labels(
    *, type: str, severity: str, dag_id: str, task_id: str | None, labels: Mapping[str, str]
) -> dict[str, str]:
    flat = {"type": type, "severity": severity, "dag_id": dag_id}
    if task_id is not None:
        flat["task_id"] = task_id
    flat.update((LABEL_PREFIX + name, value) for name, value in labels.items())
    return flat
