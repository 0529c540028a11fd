"""The dead man's switch: "batch_pipeline_dag succeeds by 04:00 UTC every day", alerted when it does not.

Callbacks only report what happened; a run that was never scheduled, or whose worker was killed before any
callback fired, reports nothing. An expectation turns that silence into an alert: once a day's deadline has
passed with no `dag_run_success` event for the DAG since the window started (`window_hours` before the
deadline, 24 by default so a run that started the evening before still counts), the watcher records one
`deadline_missed` event through the same ingest path as the API, so it is routed, silenced and delivered like
any other. It has no run_id, which makes its fingerprint `dag:<dag_id>` (see resolution.py): the next
`dag_run_success` of the DAG resolves it (with `business_date_label`, one for that day or a later one).

Its idempotency key `expectation/<dag_id>/<local date>` makes it fire once per day, also across restarts and
with several service processes running the watcher.

Any success of the DAG counts unless `business_date_label` is set: then only a success whose label of that
name is the day `business_date_lag_days` before the deadline's local date does, so a backfill or a re-run of
an old date succeeding during the window does not hide that the day's own run never happened; the missed event
carries that label too, and only a success for that day or a later one resolves it (`resolves_missed_day`,
applied by the ingest).

A day's deadline counts once the whole of its window falls after the moment the service first watched the
DAG's expectation (`expectation_watches`, kept across restarts: the DAG's oldest stored event, else the moment
the expectation was first seen), so a window that began before the service could see a success is not judged.
Started for the first time at 10:00 with `succeed_by: "04:00"` and no event of the DAG, it does not alert for
that morning's deadline nor the next one's; the one after is the first judged, and start-up logs it.

Configuration (YAML key `expectations:`):

    expectations:
      - dag_id: batch_pipeline_dag
        succeed_by: "04:00"
        timezone: Europe/Paris     # IANA name, default UTC
        severity: critical         # default critical
        window_hours: 24           # default 24
        labels: {team: data-engineering}   # as an event's labels, less `source` (set to `expectation`)
        business_date_label: business_date # optional: only a success for the day before counts
        business_date_lag_days: 1          # default 1: the deadline of the 15th expects the 14th
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alerting_service.db import insert_on_conflict
from alerting_service.models import Event, EventType, ExpectationWatch, Severity
from alerting_service.notify.base import iso_utc
from alerting_service.schemas import MAX_LABELS, AirflowKey, EventIn, LabelName, LabelValue
from alerting_service.store.events import IdempotencyConflict

if TYPE_CHECKING:
    from alerting_service.ingest import Ingestor

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 60.0
EXPECTATION_LABEL = "expectation"
# The label every deadline_missed event carries (`source: expectation`), after the expectation's own.
SOURCE_LABEL = "source"

RecordEvent = Callable[[dict[str, Any]], Awaitable[Any]]
"""Takes a `POST /v1/events` body and records it the way the API does (idempotent on its key)."""


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dag_id: AirflowKey
    succeed_by: time
    timezone: str = "UTC"
    severity: Severity = Severity.CRITICAL
    window_hours: int = Field(default=24, ge=1, le=168)
    # Validated as an event's labels are, less the one `source` takes: an expectation whose event the ingest
    # would refuse could never fire.
    labels: dict[LabelName, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS - 1)
    business_date_label: LabelName | None = None
    business_date_lag_days: int = Field(default=1, ge=0, le=31)

    @field_validator("labels")
    @classmethod
    def _source_left_to_the_service(cls, labels: dict[str, str]) -> dict[str, str]:
        if SOURCE_LABEL in labels:
            raise ValueError(f"{SOURCE_LABEL!r} is set by the service ({SOURCE_LABEL}: {EXPECTATION_LABEL})")
        return labels

    @model_validator(mode="after")
    def _business_date_label_left_to_the_service(self) -> Expectation:
        # The missed event carries the expected business date under that name (missed_event), and the
        # ingest's label count must leave it room.
        name = self.business_date_label
        if name in (SOURCE_LABEL, *self.labels):
            raise ValueError(f"business_date_label {name!r} is also in labels, or is {SOURCE_LABEL!r}")
        if name is not None and len(self.labels) > MAX_LABELS - 2:
            raise ValueError(f"with business_date_label, at most {MAX_LABELS - 2} labels")
        return self

    @field_validator("succeed_by", mode="before")
    @classmethod
    def _written_as_a_time(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted 4:30 as the base-60 number 270, which would mean 00:04:30.
        if isinstance(value, int | float):
            raise ValueError(
                'write the time as a quoted "HH:MM" string (YAML reads 4:30 unquoted as a number)'
            )
        return value

    @field_validator("succeed_by")
    @classmethod
    def _local_to_the_timezone_key(cls, value: time) -> time:
        # deadline_on() combines it with `timezone`, which replaces any offset: "04:00+02:00" meant 04:00 UTC.
        if value.tzinfo is not None:
            raise ValueError(
                'write the time without a UTC offset ("04:00") and its zone in timezone (e.g. Europe/Paris)'
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Paris"
            ) from None
        return name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _one_per_dag(expectations: list[Expectation]) -> list[Expectation]:
    # The key is per DAG and day: a second expectation of the same DAG would collide with the first.
    dag_ids = [expectation.dag_id for expectation in expectations]
    duplicates = sorted({dag_id for dag_id in dag_ids if dag_ids.count(dag_id) > 1})
    if duplicates:
        raise ValueError(f"one expectation per DAG: {duplicates[0]!r} has several")
    return expectations


Expectations = Annotated[list[Expectation], AfterValidator(_one_per_dag)]
"""The YAML's `expectations:` list, as the service config declares it."""


@dataclass(frozen=True)
class Check:
    """The latest deadline of an expectation that has passed, and the window a success must fall in."""

    expectation: Expectation
    deadline: datetime
    window_start: datetime

    @property
    def local_date(self) -> date:
        return self.deadline.astimezone(self.expectation.zone).date()

    @property
    def idempotency_key(self) -> str:
        return f"expectation/{self.expectation.dag_id}/{self.local_date.isoformat()}"

    @property
    def business_date_labels(self) -> dict[str, str]:
        """{business_date_label: the date a success must be for}, or {} when any success counts."""
        name = self.expectation.business_date_label
        if name is None:
            return {}
        day = self.local_date - timedelta(days=self.expectation.business_date_lag_days)
        return {name: day.isoformat()}


def resolves_missed_day(
    business_date_label: str | None, missed: Mapping[str, str], success: Mapping[str, str]
) -> bool:
    """Whether a success (its labels) may resolve an open alert of its DAG (the alert's labels) that its
    fingerprint closes. A missed day of an expectation with `business_date_label` is resolved only by a
    success for that business date or a later one: a backfill of an older date must not say it is over,
    while the next day's run does (also when the day's own success was stored just before the missed day,
    between the watcher's check and its record). Any other alert, by any success."""
    if business_date_label is None or missed.get(SOURCE_LABEL) != EXPECTATION_LABEL:
        return True
    expected = _as_date(missed.get(business_date_label))
    processed = _as_date(success.get(business_date_label))
    return expected is None or (processed is not None and processed >= expected)


def _as_date(label: str | None) -> date | None:
    try:
        return date.fromisoformat(label) if label is not None else None
    except ValueError:
        return None


def deadline_on(expectation: Expectation, day: date) -> datetime:
    """The deadline of `day` (a date in the expectation's time zone), in UTC."""
    return datetime.combine(day, expectation.succeed_by, tzinfo=expectation.zone).astimezone(UTC)


def latest_passed_check(expectation: Expectation, now: datetime) -> Check:
    """Today's check once today's deadline has passed, yesterday's before that."""
    today = now.astimezone(expectation.zone).date()
    deadline = deadline_on(expectation, today)
    if deadline > now:
        deadline = deadline_on(expectation, today - timedelta(days=1))
    return Check(expectation, deadline, deadline - timedelta(hours=expectation.window_hours))


def first_judged_deadline(expectation: Expectation, watched_since: datetime) -> datetime:
    """The first deadline whose whole window the service watched: the first a window after `watched_since`."""
    earliest = watched_since + timedelta(hours=expectation.window_hours)
    day = earliest.astimezone(expectation.zone).date()
    deadline = deadline_on(expectation, day)
    return deadline if deadline >= earliest else deadline_on(expectation, day + timedelta(days=1))


def missed_event(check: Check) -> dict[str, Any]:
    """The `deadline_missed` body for a check that found no success; the same check gives the same body."""
    expectation = check.expectation
    by = f"{expectation.succeed_by.strftime('%H:%M')} {expectation.timezone}"
    of_the_day = "".join(f" for {name}={day}" for name, day in check.business_date_labels.items())
    return {
        "idempotency_key": check.idempotency_key,
        "type": EventType.DEADLINE_MISSED.value,
        "severity": expectation.severity.value,
        "dag_id": expectation.dag_id,
        "occurred_at": iso_utc(check.deadline),
        "exception": (
            f"no successful run of {expectation.dag_id}{of_the_day} since {iso_utc(check.window_start)}: "
            f"expected to succeed by {by} on {check.local_date.isoformat()}"
        ),
        "labels": {**expectation.labels, **check.business_date_labels, SOURCE_LABEL: EXPECTATION_LABEL},
    }


async def dag_succeeded_since(
    session: AsyncSession, dag_id: str, since: datetime, labels: Mapping[str, str]
) -> bool:
    """Whether a `dag_run_success` of the DAG since `since` carries every one of `labels`."""
    successes = await session.scalars(
        select(Event.labels).where(
            Event.dag_id == dag_id, Event.type == EventType.DAG_RUN_SUCCESS, Event.occurred_at >= since
        )
    )
    # Filtered here, not in SQL: JSON queries differ between SQLite and PostgreSQL, and a DAG has a few
    # successes a day (a backfill some hundreds).
    return any(labels.items() <= stored.items() for stored in successes)


async def record_first_watches(
    session: AsyncSession, dag_ids: Collection[str], now: datetime
) -> dict[str, datetime]:
    """When the service first watched each DAG's expectation. For one it never watched before: since the
    oldest event it holds of that DAG (it has been receiving the DAG's callbacks since then: a version
    upgraded to this one, or an expectation added for a DAG already reporting), else since `now`."""
    oldest = await session.execute(
        select(Event.dag_id, func.min(Event.received_at))
        .where(Event.dag_id.in_(dag_ids))
        .group_by(Event.dag_id)
    )
    since = {dag_id: min(received_at, now) for dag_id, received_at in oldest}
    first_watch = insert_on_conflict(ExpectationWatch.__table__, session.get_bind().dialect.name)
    await session.execute(
        first_watch.on_conflict_do_nothing(index_elements=["dag_id"]),
        # In one order in every process: PostgreSQL sessions inserting the same keys never deadlock.
        [{"dag_id": dag_id, "watched_since": since.get(dag_id, now)} for dag_id in sorted(dag_ids)],
    )
    rows = await session.execute(
        select(ExpectationWatch.dag_id, ExpectationWatch.watched_since).where(
            ExpectationWatch.dag_id.in_(dag_ids)
        )
    )
    return {dag_id: watched_since for dag_id, watched_since in rows}


class ExpectationWatcher:
    """Checks every expectation each `interval` seconds and records one `deadline_missed` per missed day."""

    def __init__(
        self,
        expectations: Iterable[Expectation],
        *,
        session_factory: async_sessionmaker[AsyncSession],
        record_event: RecordEvent,
        interval: float = CHECK_INTERVAL_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._expectations = tuple(expectations)
        self._session_factory = session_factory
        self._record_event = record_event
        self._interval = interval
        self._clock = clock
        # Keys already recorded by this process: spares the database a lookup a minute. After a restart the
        # ingest's idempotency answers "duplicate" instead.
        self._recorded: set[str] = set()
        self._watched_since: dict[str, datetime] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check_once()
            except Exception:
                # A database outage must not end the watcher: the next round tries again.
                log.exception("expectation check failed; retrying in %.0f s", self._interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def check_once(self) -> list[str]:
        """Record the missed expectations; answers the idempotency keys recorded in this round."""
        now = self._clock()
        if not self._watched_since:
            await self._start_watching(now)
        recorded = []
        for expectation in self._expectations:
            check = latest_passed_check(expectation, now)
            if (
                check.idempotency_key in self._recorded
                or check.window_start < self._watched_since[expectation.dag_id]
                or await self._succeeded(check)
            ):
                continue
            try:
                await self._record_event(missed_event(check))
            except IdempotencyConflict:
                # Recorded already today, with a body since changed (the expectation's severity or labels
                # were edited): it stands, and the expectations after it are still checked.
                log.warning(
                    "expectation missed, recorded earlier with other settings: %s", check.idempotency_key
                )
                self._recorded.add(check.idempotency_key)
                continue
            self._recorded.add(check.idempotency_key)
            recorded.append(check.idempotency_key)
            log.warning("expectation missed: %s", check.idempotency_key)
        return recorded

    async def _start_watching(self, now: datetime) -> None:
        async with self._session_factory() as session, session.begin():
            dag_ids = [expectation.dag_id for expectation in self._expectations]
            self._watched_since = await record_first_watches(session, dag_ids, now)
        for expectation in self._expectations:
            since = self._watched_since[expectation.dag_id]
            log.info(
                "expectation of %s watched since %s: first judged deadline %s",
                expectation.dag_id,
                iso_utc(since),
                iso_utc(first_judged_deadline(expectation, since)),
            )

    async def _succeeded(self, check: Check) -> bool:
        async with self._session_factory() as session:
            return await dag_succeeded_since(
                session, check.expectation.dag_id, check.window_start, check.business_date_labels
            )


def record_through(ingestor: Ingestor) -> RecordEvent:
    """Record a body the way `POST /v1/events` does: validated from JSON, then submitted to the ingestor."""

    async def record(body: dict[str, Any]) -> Any:
        return await ingestor.submit(EventIn.model_validate_json(json.dumps(body)))

    return record


@contextlib.asynccontextmanager
async def watching(
    expectations: Iterable[Expectation],
    *,
    session_factory: async_sessionmaker[AsyncSession],
    ingestor: Ingestor,
    interval: float = CHECK_INTERVAL_SECONDS,
) -> AsyncGenerator[None]:
    """Run the watcher for the app's lifetime; nothing when no expectation is configured.

    Leave the block before stopping the ingestor: the watcher's last round may still be submitting.
    """
    expectations = tuple(expectations)
    if not expectations:
        yield
        return
    stop = asyncio.Event()
    watcher = ExpectationWatcher(
        expectations,
        session_factory=session_factory,
        record_event=record_through(ingestor),
        interval=interval,
    )
    running = asyncio.create_task(watcher.run(stop), name="expectation-watcher")
    try:
        yield
    finally:
        stop.set()
        await running
