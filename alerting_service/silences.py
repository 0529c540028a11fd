"""Silences, pure: a silence's state follows from the time; `SilenceSet.is_muted` names the one muting.

A matcher compares one label (`dag_id`, `task_id`, `type`, `severity` or `labels.<name>`) for equality, or
with `regex: true` as a full-match regular expression. A silence mutes labels that satisfy all of its
matchers while it is active: `starts_at <= now < ends_at` and not expired by an admin.

Regular expressions are RE2's, as in Alertmanager: matching takes time linear in the label's length. With
Python's `re` a pattern such as `(a+)+` took seconds on a 26-character label, on the writer thread every
ingest and delivery waits for.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import re2

log = logging.getLogger(__name__)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported by the caller, not on stderr
# Stored patterns RE2 refuses, already warned about: silences are reloaded every few seconds.
_REFUSED_PATTERNS_LOGGED: set[tuple[str, str]] = set()


def compile_pattern(pattern: str) -> re2._Regexp:
    """The RE2 expression, or ValueError saying why it is not one (lookarounds, backreferences)."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"not a valid RE2 regular expression: {reason}") from None


class SilenceState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    value: str
    regex: bool = False
    _pattern: re2._Regexp | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Matcher:
        name, value, regex = data["name"], data["value"], bool(data.get("regex", False))
        if not regex:
            return cls(name, value)
        try:
            return cls(name, value, regex, compile_pattern(value))
        except ValueError as error:
            # Stored before the API took RE2 only: muting nothing errs on the side of alerting.
            if (name, value) not in _REFUSED_PATTERNS_LOGGED:
                _REFUSED_PATTERNS_LOGGED.add((name, value))
                log.warning("a silence matcher %s=~%r mutes nothing: %s", name, value, error)
            return cls(name, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name)
        if value is None:
            return False
        if self.regex:
            return self._pattern is not None and self._pattern.fullmatch(value) is not None
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
