"""Silences, pure: state from time, and which labels a silence mutes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerting_service.silences import Matcher, SilenceRule, SilenceSet, SilenceState

NOW = datetime(2026, 1, 14, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
LABELS = {"type": "task_failure", "dag_id": "batch_pipeline_dag", "task_id": "load", "labels.team": "de"}


def rule(
    *matchers: Matcher, starts: timedelta = -HOUR, ends: timedelta = HOUR, expired: timedelta | None = None
) -> SilenceRule:
    return SilenceRule(
        id="s1",
        matchers=matchers,
        starts_at=NOW + starts,
        ends_at=NOW + ends,
        expired_at=None if expired is None else NOW + expired,
    )


def matcher(name: str, value: str, regex: bool = False) -> Matcher:
    return Matcher.from_json({"name": name, "value": value, "regex": regex})


@pytest.mark.parametrize(
    ("starts", "ends", "expired", "state"),
    [
        (HOUR, 2 * HOUR, None, SilenceState.PENDING),
        (-HOUR, HOUR, None, SilenceState.ACTIVE),
        (timedelta(0), HOUR, None, SilenceState.ACTIVE),
        (-2 * HOUR, timedelta(0), None, SilenceState.EXPIRED),
        (-HOUR, HOUR, timedelta(0), SilenceState.EXPIRED),
        (-HOUR, HOUR, timedelta(minutes=5), SilenceState.ACTIVE),
    ],
)
def test_the_state_follows_from_the_time(
    starts: timedelta, ends: timedelta, expired: timedelta | None, state: SilenceState
) -> None:
    assert rule(starts=starts, ends=ends, expired=expired).state(NOW) is state


def test_an_active_silence_whose_matchers_all_match_mutes() -> None:
    silences = SilenceSet([rule(matcher("dag_id", "batch_pipeline_dag"), matcher("labels.team", "de"))])

    assert silences.is_muted(LABELS, NOW) == "s1"


def test_one_matcher_not_matching_is_enough_not_to_mute() -> None:
    silences = SilenceSet([rule(matcher("dag_id", "batch_pipeline_dag"), matcher("task_id", "extract"))])

    assert silences.is_muted(LABELS, NOW) is None


def test_a_regex_matcher_must_match_the_whole_value() -> None:
    assert SilenceSet([rule(matcher("dag_id", "batch_.*", regex=True))]).is_muted(LABELS, NOW) == "s1"
    assert SilenceSet([rule(matcher("dag_id", "batch", regex=True))]).is_muted(LABELS, NOW) is None


def test_a_regex_takes_linear_time_where_backtracking_would_take_hours() -> None:
    # `(a+)+` against 40 a's and a b: about 2^40 steps for a backtracking engine such as Python's re.
    silences = SilenceSet([rule(matcher("dag_id", "(a+)+", regex=True))])

    assert silences.is_muted(LABELS | {"dag_id": "a" * 40 + "b"}, NOW) is None


def test_a_stored_regex_that_re2_refuses_mutes_nothing() -> None:
    # Stored before the API took RE2 only: a lookahead.
    assert SilenceSet([rule(matcher("dag_id", "(?=batch).*", regex=True))]).is_muted(LABELS, NOW) is None


def test_a_matcher_on_a_label_the_event_lacks_does_not_match() -> None:
    assert SilenceSet([rule(matcher("labels.env", ".*", regex=True))]).is_muted(LABELS, NOW) is None


@pytest.mark.parametrize("when", [NOW - 2 * HOUR, NOW + HOUR])
def test_a_silence_mutes_nothing_before_it_starts_or_once_it_ended(when: datetime) -> None:
    assert SilenceSet([rule(matcher("dag_id", "batch_pipeline_dag"))]).is_muted(LABELS, when) is None


def test_a_stored_regex_that_re2_refuses_is_warned_about_once_however_often_it_is_loaded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for _ in range(3):
        matcher("dag_id", "(?<=once).*", regex=True)

    assert [record.getMessage() for record in caplog.records].count(
        "a silence matcher dag_id=~'(?<=once).*' mutes nothing: not a valid RE2 regular expression: "
        "invalid perl operator: (?<="
    ) == 1
