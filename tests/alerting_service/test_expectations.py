"""The dead man's switch: when a day's check is due, what it records, and that it records it once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, time
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alerting_service.config import AlertingConfig
from alerting_service.expectations import (
    Expectation,
    Expectations,
    ExpectationWatcher,
    deadline_on,
    first_judged_deadline,
    latest_passed_check,
    missed_event,
    record_through,
)
from alerting_service.ingest import Ingestor, NoHandoff
from alerting_service.models import Event, ExpectationWatch
from alerting_service.schemas import MAX_LABELS, EventIn
from alerting_service.store.events import IdempotencyConflict
from alerting_service.store.writer import Writer
from tests.alerting_service.delivery_fixtures import Database

PIPELINE = Expectation(dag_id="batch_pipeline_dag", succeed_by=time(4, 0), labels={"team": "data"})
REPORT = Expectation(dag_id="fraud_report_dag", succeed_by=time(6, 0))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_before_todays_deadline_the_check_is_yesterdays() -> None:
    check = latest_passed_check(PIPELINE, utc("2026-01-14T03:59:00"))

    assert check.deadline == utc("2026-01-13T04:00:00")
    assert check.idempotency_key == "expectation/batch_pipeline_dag/2026-01-13"


def test_once_todays_deadline_has_passed_the_check_is_todays() -> None:
    check = latest_passed_check(PIPELINE, utc("2026-01-14T04:00:00"))

    assert check.deadline == utc("2026-01-14T04:00:00")
    assert check.idempotency_key == "expectation/batch_pipeline_dag/2026-01-14"


def test_the_window_opens_window_hours_before_the_deadline() -> None:
    expectation = PIPELINE.model_copy(update={"window_hours": 4})

    check = latest_passed_check(expectation, utc("2026-01-14T09:00:00"))

    assert check.window_start == utc("2026-01-14T00:00:00")


def test_a_deadline_in_a_time_zone_follows_its_daylight_saving_time() -> None:
    paris = Expectation(dag_id="d", succeed_by=time(4, 0), timezone="Europe/Paris")

    assert deadline_on(paris, datetime(2026, 1, 14).date()) == utc("2026-01-14T03:00:00")
    assert deadline_on(paris, datetime(2026, 7, 14).date()) == utc("2026-07-14T02:00:00")


def test_the_date_in_the_key_is_the_local_date_of_the_deadline() -> None:
    tokyo = Expectation(dag_id="d", succeed_by=time(4, 0), timezone="Asia/Tokyo")

    check = latest_passed_check(tokyo, utc("2026-01-13T20:00:00"))  # 05:00 on the 14th in Tokyo

    assert check.idempotency_key == "expectation/d/2026-01-14"


def test_the_missed_event_is_a_dag_level_deadline_missed_without_run() -> None:
    body = missed_event(latest_passed_check(PIPELINE, utc("2026-01-14T04:01:00")))

    assert body == {
        "idempotency_key": "expectation/batch_pipeline_dag/2026-01-14",
        "type": "deadline_missed",
        "severity": "critical",
        "dag_id": "batch_pipeline_dag",
        "occurred_at": "2026-01-14T04:00:00Z",
        "exception": "no successful run of batch_pipeline_dag since 2026-01-13T04:00:00Z: "
        "expected to succeed by 04:00 UTC on 2026-01-14",
        "labels": {"team": "data", "source": "expectation"},
    }


def test_an_unknown_time_zone_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        Expectation(dag_id="d", succeed_by="04:00", timezone="Mars/Olympus")


def test_two_expectations_of_one_dag_are_refused() -> None:
    with pytest.raises(ValidationError, match="one expectation per DAG: 'd' has several"):
        TypeAdapter(Expectations).validate_python(
            [{"dag_id": "d", "succeed_by": "04:00"}, {"dag_id": "d", "succeed_by": "06:00"}]
        )


def test_succeed_by_reads_the_yaml_time_string() -> None:
    assert Expectation.model_validate({"dag_id": "d", "succeed_by": "04:30"}).succeed_by == time(4, 30)


def test_an_unquoted_succeed_by_that_yaml_reads_as_a_number_is_refused() -> None:
    # YAML 1.1 reads `succeed_by: 4:30` as 270 (base 60), which would otherwise mean 00:04:30.
    with pytest.raises(ValidationError, match=r'succeed_by\n.*quoted "HH:MM" string'):
        Expectation.model_validate(yaml.safe_load("dag_id: d\nsucceed_by: 4:30"))


# --- the watcher against a real database -------------------------------------------------------------------


@pytest.fixture
def session_factory(database: Database) -> async_sessionmaker[AsyncSession]:
    """A service's empty database, SQLite and PostgreSQL: it has never watched an expectation."""
    return database.sessions


@pytest.fixture
async def watched(session_factory: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """The database of a service that has watched PIPELINE since New Year: every check since is judged."""
    async with session_factory() as session, session.begin():
        session.add(ExpectationWatch(dag_id=PIPELINE.dag_id, watched_since=utc("2026-01-01T00:00:00")))
    return session_factory


async def add_success(
    session_factory: Any, dag_id: str, occurred_at: datetime, labels: dict[str, str] | None = None
) -> None:
    await add_event(session_factory, dag_id, occurred_at, labels, event_type="dag_run_success")


async def add_event(
    session_factory: Any,
    dag_id: str,
    occurred_at: datetime,
    labels: dict[str, str] | None = None,
    *,
    event_type: str,
) -> None:
    async with session_factory() as session, session.begin():
        session.add(
            Event(
                id=str(uuid.uuid4()),
                idempotency_key=f"{dag_id}/{occurred_at.isoformat()}/{event_type}",
                body_hash="0" * 64,
                type=event_type,
                severity="info",
                dag_id=dag_id,
                occurred_at=occurred_at,
                received_at=occurred_at,
                labels=labels or {},
                fingerprint=f"dag:{dag_id}",
            )
        )


class Recorder:
    """Collects what the watcher hands to the ingest; the first `failures` calls raise, like an outage."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.failures = failures
        self.calls = 0
        self.called = asyncio.Event()

    async def __call__(self, body: dict[str, Any]) -> None:
        self.calls += 1
        self.called.set()
        if self.calls <= self.failures:
            raise ConnectionError("database is restarting")
        self.bodies.append(body)

    async def next_call(self) -> None:
        self.called.clear()
        await asyncio.wait_for(self.called.wait(), timeout=5)


def watcher_at(
    now: str, session_factory: Any, recorder: Recorder, expectation: Expectation = PIPELINE
) -> ExpectationWatcher:
    return ExpectationWatcher(
        [expectation], session_factory=session_factory, record_event=recorder, clock=lambda: utc(now)
    )


async def test_no_success_since_the_window_opened_records_one_missed_event(watched: Any) -> None:
    await add_success(watched, "batch_pipeline_dag", utc("2026-01-13T03:00:00"))  # before the window
    recorder = Recorder()

    recorded = await watcher_at("2026-01-14T04:01:00", watched, recorder).check_once()

    assert recorded == ["expectation/batch_pipeline_dag/2026-01-14"]
    assert [body["type"] for body in recorder.bodies] == ["deadline_missed"]


async def test_a_success_in_the_window_records_nothing(watched: Any) -> None:
    await add_success(watched, "batch_pipeline_dag", utc("2026-01-14T02:30:00"))
    recorder = Recorder()

    assert await watcher_at("2026-01-14T04:01:00", watched, recorder).check_once() == []


async def test_a_success_of_another_dag_does_not_count(watched: Any) -> None:
    await add_success(watched, "fraud_report_dag", utc("2026-01-14T02:30:00"))
    recorder = Recorder()

    assert len(await watcher_at("2026-01-14T04:01:00", watched, recorder).check_once()) == 1


@pytest.mark.parametrize("event_type", ["dag_run_failure", "task_success", "task_retry"])
async def test_an_event_of_the_dag_other_than_a_run_success_does_not_count(
    watched: Any, event_type: str
) -> None:
    # A run that failed, or whose tasks succeeded before its worker was killed, did not do the day's work.
    await add_event(watched, PIPELINE.dag_id, utc("2026-01-14T02:30:00"), event_type=event_type)
    recorder = Recorder()

    assert len(await watcher_at("2026-01-14T04:01:00", watched, recorder).check_once()) == 1


PIPELINE_OF_THE_DAY = PIPELINE.model_copy(update={"business_date_label": "business_date"})


async def test_with_a_business_date_label_a_success_for_an_older_date_does_not_count(watched: Any) -> None:
    # A backfill of an old date succeeding in the night must not hide that the day's own run never ran.
    await add_success(watched, PIPELINE.dag_id, utc("2026-01-14T02:30:00"), {"business_date": "2025-12-01"})
    recorder = Recorder()

    await watcher_at("2026-01-14T04:01:00", watched, recorder, PIPELINE_OF_THE_DAY).check_once()

    (missed,) = recorder.bodies
    assert missed["labels"]["business_date"] == "2026-01-13"
    assert "no successful run of batch_pipeline_dag for business_date=2026-01-13 since" in missed["exception"]


async def test_with_a_business_date_label_a_success_for_the_day_before_counts(watched: Any) -> None:
    await add_success(watched, PIPELINE.dag_id, utc("2026-01-14T02:30:00"), {"business_date": "2026-01-13"})
    recorder = Recorder()

    watcher = watcher_at("2026-01-14T04:01:00", watched, recorder, PIPELINE_OF_THE_DAY)
    assert await watcher.check_once() == []


def test_the_business_date_lag_sets_the_day_a_success_must_be_for() -> None:
    two_days_late = PIPELINE_OF_THE_DAY.model_copy(update={"business_date_lag_days": 2})
    check = latest_passed_check(two_days_late, utc("2026-01-14T04:01:00"))
    assert check.business_date_labels == {"business_date": "2026-01-12"}


@pytest.mark.parametrize("name", ["team", "source"])
def test_a_business_date_label_taken_by_another_label_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=f"business_date_label '{name}'"):
        Expectation(dag_id="d", succeed_by=time(4, 0), labels={"team": "data"}, business_date_label=name)


async def test_a_missed_day_is_recorded_once_however_often_the_watcher_checks(watched: Any) -> None:
    recorder = Recorder()
    watcher = watcher_at("2026-01-14T04:01:00", watched, recorder)

    for _ in range(3):
        await watcher.check_once()

    assert len(recorder.bodies) == 1


async def test_run_checks_until_stopped_and_survives_a_failing_round(watched: Any) -> None:
    recorder = Recorder(failures=1)
    watcher = ExpectationWatcher(
        [PIPELINE],
        session_factory=watched,
        record_event=recorder,
        interval=0.01,
        clock=lambda: utc("2026-01-14T04:01:00"),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(watcher.run(stop))
    await recorder.next_call()
    await recorder.next_call()
    stop.set()
    await asyncio.wait_for(running, timeout=5)

    assert recorder.calls == 2
    assert [body["idempotency_key"] for body in recorder.bodies] == [
        "expectation/batch_pipeline_dag/2026-01-14"
    ]


async def test_a_day_recorded_earlier_with_other_settings_does_not_stop_the_next_expectations(
    watched: Any,
) -> None:
    async with watched() as session, session.begin():
        session.add(ExpectationWatch(dag_id=REPORT.dag_id, watched_since=utc("2026-01-01T00:00:00")))
    recorder = ConflictingFor(f"expectation/{PIPELINE.dag_id}/2026-01-14")
    watcher = ExpectationWatcher(
        [PIPELINE, REPORT],
        session_factory=watched,
        record_event=recorder,
        clock=lambda: utc("2026-01-14T06:01:00"),
    )

    recorded = await watcher.check_once()

    assert recorded == ["expectation/fraud_report_dag/2026-01-14"]
    assert await watcher.check_once() == []


class ConflictingFor(Recorder):
    """Records like the ingest, but refuses `key` as used already with another body (a 409)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    async def __call__(self, body: dict[str, Any]) -> None:
        if body["idempotency_key"] == self.key:
            raise IdempotencyConflict(self.key)
        await super().__call__(body)


# --- only silences the service observed are judged ----------------------------------------------------------


def test_the_first_judged_deadline_is_the_first_a_whole_window_after_the_first_watch() -> None:
    assert first_judged_deadline(PIPELINE, utc("2026-01-14T10:00:00")) == utc("2026-01-16T04:00:00")
    assert first_judged_deadline(PIPELINE, utc("2026-01-13T03:00:00")) == utc("2026-01-14T04:00:00")


async def test_a_first_start_after_the_deadline_does_not_judge_that_day(session_factory: Any) -> None:
    recorder = Recorder()

    assert await watcher_at("2026-01-14T10:00:00", session_factory, recorder).check_once() == []


async def test_the_next_day_is_not_judged_either_when_its_window_opened_before_the_first_watch(
    session_factory: Any,
) -> None:
    await watcher_at("2026-01-14T10:00:00", session_factory, Recorder()).check_once()
    recorder = Recorder()

    assert await watcher_at("2026-01-15T04:01:00", session_factory, recorder).check_once() == []


async def test_a_dag_that_reported_before_the_first_watch_is_judged_from_its_oldest_event(
    session_factory: Any,
) -> None:
    # An upgrade from a version without expectation_watches: the event log goes back further than the watch.
    await add_success(session_factory, "batch_pipeline_dag", utc("2026-01-12T03:00:00"))
    recorder = Recorder()

    recorded = await watcher_at("2026-01-14T04:01:00", session_factory, recorder).check_once()

    assert recorded == ["expectation/batch_pipeline_dag/2026-01-14"]


async def test_the_first_window_watched_whole_is_judged_after_a_restart(session_factory: Any) -> None:
    await watcher_at("2026-01-13T03:00:00", session_factory, Recorder()).check_once()
    restarted = Recorder()

    recorded = await watcher_at("2026-01-14T04:01:00", session_factory, restarted).check_once()

    assert recorded == ["expectation/batch_pipeline_dag/2026-01-14"]


# --- through the real ingestor ----------------------------------------------------------------------------


@pytest.fixture
async def ingestor(database: Database) -> AsyncIterator[Ingestor]:
    async with running_ingestor(database, AlertingConfig()) as ingestor:
        yield ingestor


@pytest.fixture
async def ingestor_of_the_day(database: Database) -> AsyncIterator[Ingestor]:
    """The ingest of a service whose expectation of PIPELINE has a business_date_label."""
    async with running_ingestor(database, AlertingConfig(expectations=[PIPELINE_OF_THE_DAY])) as ingestor:
        yield ingestor


@contextlib.asynccontextmanager
async def running_ingestor(database: Database, config: AlertingConfig) -> AsyncGenerator[Ingestor]:
    writer = Writer(database.settings)
    ingestor = Ingestor(
        writer, database.sessions, config, batch_max=16, silence_refresh_seconds=60, handoff=NoHandoff()
    )
    await ingestor.start()
    try:
        yield ingestor
    finally:
        await ingestor.stop()
        writer.close()


async def stored(session_factory: Any, event_id: str) -> Event:
    async with session_factory() as session:
        event = await session.get(Event, event_id)
    assert event is not None
    return event


async def test_the_missed_event_is_ingested_as_a_dag_level_alert(
    session_factory: Any, ingestor: Ingestor
) -> None:
    record = record_through(ingestor)

    accepted = await record(missed_event(latest_passed_check(PIPELINE, utc("2026-01-14T04:01:00"))))

    event = await stored(session_factory, accepted.id)
    assert (event.type, event.fingerprint, event.run_id) == (
        "deadline_missed",
        "dag:batch_pipeline_dag",
        None,
    )


async def test_recording_the_same_day_again_is_a_duplicate(session_factory: Any, ingestor: Ingestor) -> None:
    record = record_through(ingestor)
    body = missed_event(latest_passed_check(PIPELINE, utc("2026-01-14T04:01:00")))

    first, again = await record(body), await record(body)

    assert (again.id, again.duplicate) == (first.id, True)


async def test_the_next_successful_run_resolves_the_missed_day(
    session_factory: Any, ingestor: Ingestor
) -> None:
    record = record_through(ingestor)
    missed = await record(missed_event(latest_passed_check(PIPELINE, utc("2026-01-14T04:01:00"))))

    success = await record(
        {
            "idempotency_key": "batch_pipeline_dag/manual__late/-/-1/1/dag_run_success",
            "type": "dag_run_success",
            "dag_id": "batch_pipeline_dag",
            "run_id": "manual__late",
        }
    )

    assert (await stored(session_factory, missed.id)).resolved_by == success.id


MISSED_DAY = latest_passed_check(PIPELINE_OF_THE_DAY, utc("2026-01-14T04:01:00"))  # business date 2026-01-13


def success_for(business_date: str) -> dict[str, Any]:
    return {
        "idempotency_key": f"batch_pipeline_dag/backfill__{business_date}/-/-1/1/dag_run_success",
        "type": "dag_run_success",
        "dag_id": "batch_pipeline_dag",
        "run_id": f"backfill__{business_date}",
        "labels": {"business_date": business_date},
    }


@pytest.mark.parametrize(
    ("processed", "resolves"),
    [
        ("2025-12-01", False),  # a backfill of an older date
        ("2026-01-13", True),  # the missed day, re-run
        # The next day's run: also what ends a missed day whose own success was stored between the watcher's
        # check and its record.
        ("2026-01-14", True),
        ("yesterday", False),  # no date
    ],
)
async def test_with_a_business_date_label_a_success_resolves_the_missed_day_if_it_processed_it_or_a_later_one(
    session_factory: Any, ingestor_of_the_day: Ingestor, processed: str, resolves: bool
) -> None:
    record = record_through(ingestor_of_the_day)
    missed = await record(missed_event(MISSED_DAY))

    success = await record(success_for(processed))

    assert (await stored(session_factory, missed.id)).resolved_by == (success.id if resolves else None)


async def test_with_a_business_date_label_an_old_dates_success_in_the_same_batch_leaves_it_open(
    session_factory: Any, ingestor_of_the_day: Ingestor
) -> None:
    # Queued together, the two are planned in one transaction: the missed day is open only in the batch.
    record = record_through(ingestor_of_the_day)

    missed, _ = await asyncio.gather(record(missed_event(MISSED_DAY)), record(success_for("2025-12-01")))

    assert (await stored(session_factory, missed.id)).resolved_by is None


@pytest.mark.parametrize("succeed_by", ["04:00+02:00", "04:00Z"])
def test_a_succeed_by_with_a_utc_offset_is_refused_naming_the_timezone_key(succeed_by: str) -> None:
    # The offset was dropped: "04:00+02:00" meant 04:00 in `timezone` (UTC), two hours after 02:00 UTC.
    with pytest.raises(ValidationError, match=r"succeed_by\n.*without a UTC offset.*timezone"):
        Expectation.model_validate({"dag_id": "d", "succeed_by": succeed_by})


def test_a_business_date_label_leaves_room_for_the_labels_an_event_may_carry() -> None:
    # The missed event carries the labels, the business date and `source`: MAX_LABELS in all is accepted.
    labels = {f"l{number}": "v" for number in range(MAX_LABELS - 2)}
    expectation = Expectation(
        dag_id="d", succeed_by=time(4, 0), labels=labels, business_date_label="business_date"
    )
    missed = missed_event(latest_passed_check(expectation, utc("2026-01-14T04:01:00")))
    assert len(EventIn.model_validate_json(json.dumps(missed)).labels) == MAX_LABELS
    with pytest.raises(ValidationError, match=f"at most {MAX_LABELS - 2} labels"):
        Expectation(
            dag_id="d",
            succeed_by=time(4, 0),
            labels={**labels, "one_more": "v"},
            business_date_label="business_date",
        )
