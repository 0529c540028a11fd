"""Silences, pure: a silence's state follows from the time; `SilenceSet.is_muted` names the one muting.

A matcher compares one label (`dag_id`, `task_id`, `type`, `severity` or `labels.<name>`) for equality, or
with `regex: true` as a full-match regular expression. A silence mutes labels that satisfy all of its
matchers while it is active: `starts_at <= now < ends_at` and not expired by an admin.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class SilenceState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    value: str
    regex: bool = False
    _pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Matcher:
        regex = bool(data.get("regex", False))
        return cls(data["name"], data["value"], regex, re.compile(data["value"]) if regex else None)

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name)
        if value is None:
            return False
        if self._pattern is not None:
            return self._pattern.fullmatch(value) is not None
        return value == self.value


def silence_state(
    *, starts_at: datetime, ends_at: datetime, expired_at: datetime | None, now: datetime
) -> SilenceState:
    if (expired_at is not None and expired_at <= now) or now >= ends_at:
        return SilenceState.EXPIRED
    if now < starts_at:
        return SilenceState.PENDING
    return SilenceState.ACTIVE


@dataclass(frozen=True, slots=True)
class SilenceRule:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    expired_at: datetime | None = None

    def state(self, now: datetime) -> SilenceState:
        return silence_state(
            starts_at=self.starts_at, ends_at=self.ends_at, expired_at=self.expired_at, now=now
        )

    def mutes(self, labels: Mapping[str, str], now: datetime) -> bool:
        return self.state(now) is SilenceState.ACTIVE and all(m.matches(labels) for m in self.matchers)


class SilenceSet:
    def __init__(self, rules: Iterable[SilenceRule] = ()) -> None:
        self._rules = tuple(rules)

    def is_muted(self, labels: Mapping[str, str], now: datetime) -> str | None:
        """The id of a silence muting these labels at `now`, or None."""
        return next((rule.id for rule in self._rules if rule.mutes(labels, now)), None)
