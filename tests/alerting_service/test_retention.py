"""Retention (retention.py): old events, their deliveries and ended silences are deleted, never an alert still
to be sent; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Generator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, create_engine, make_url, update

from alerting_service.models import Delivery, DeliveryStatus, Event, Silence
from alerting_service.retention import prune_once
from alerting_service.store import deliveries as delivery_store
from alerting_service.store.writer import Writer, sync_url
from tests.alerting_service.conftest import ADMIN, TWO_RECEIVERS, Api, SettingsFactory, running_api, samples
from tests.alerting_service.delivery_fixtures import Database, eventually

RETENTION = timedelta(days=30)


@pytest.fixture
async def writer(database: Database) -> AsyncGenerator[Writer]:
    async with database.writer() as running:
        yield running


@pytest.fixture
async def keeping_everything(make_settings: SettingsFactory, database: Database) -> AsyncGenerator[Api]:
    """TWO_RECEIVERS, whose own retention (a century) deletes nothing: the app's round at start runs in the
    background and, on a loaded machine, could come after a test aged its rows and delete them first."""
    settings = make_settings(routing=TWO_RECEIVERS, retention="36500d")
    async with running_api(settings, database) as running:
        yield running


async def old_event(api: Api, key: str, *statuses: DeliveryStatus, age: timedelta) -> str:
    """An event received `age` ago whose two deliveries (hook, pager) have these statuses."""
    answer = await api.post_event(idempotency_key=key)
    assert answer.status_code == 202, answer.text
    event_id: str = answer.json()["id"]

    def backdate(connection: Connection) -> None:
        received_at = datetime.now(UTC) - age
        connection.execute(update(Event).where(Event.id == event_id).values(received_at=received_at))
        for receiver, status in zip(("hook", "pager"), statuses, strict=True):
            connection.execute(
                update(Delivery)
                .where(Delivery.event_id == event_id, Delivery.receiver == receiver)
                .values(status=status)
            )

    await api.database.write(backdate)
    return event_id


async def exists(api: Api, event_id: str) -> bool:
    answer = await api.client.get(f"/v1/events/{event_id}", headers=ADMIN)
    return answer.status_code == 200


async def test_an_old_event_whose_deliveries_are_finished_is_deleted_with_them(
    keeping_everything: Api, writer: Writer
) -> None:
    old = await old_event(
        keeping_everything, "old", DeliveryStatus.SENT, DeliveryStatus.DEAD, age=RETENTION * 2
    )

    pruned = await prune_once(writer, RETENTION, now=datetime.now(UTC))

    assert pruned.events == 1
    assert not await exists(keeping_everything, old)
    assert (await keeping_everything.row_counts())["deliveries"] == 0


@pytest.mark.parametrize("unfinished", [DeliveryStatus.PENDING, DeliveryStatus.IN_FLIGHT])
async def test_an_old_event_with_a_delivery_still_to_be_sent_is_kept_with_all_its_deliveries(
    keeping_everything: Api, writer: Writer, unfinished: DeliveryStatus
) -> None:
    kept = await old_event(keeping_everything, "kept", DeliveryStatus.SENT, unfinished, age=RETENTION * 2)

    pruned = await prune_once(writer, RETENTION, now=datetime.now(UTC))

    assert pruned.events == 0
    assert len((await keeping_everything.event(kept))["deliveries"]) == 2


async def test_an_event_younger_than_the_retention_is_kept(keeping_everything: Api, writer: Writer) -> None:
    young = await old_event(
        keeping_everything,
        "young",
        DeliveryStatus.SENT,
        DeliveryStatus.SENT,
        age=RETENTION - timedelta(hours=1),
    )

    await prune_once(writer, RETENTION, now=datetime.now(UTC))

    assert await exists(keeping_everything, young)


async def test_a_backlog_larger_than_a_batch_is_deleted_in_one_round(
    keeping_everything: Api, writer: Writer
) -> None:
    finished = (DeliveryStatus.SENT, DeliveryStatus.SENT)
    for n in range(5):
        await old_event(keeping_everything, f"backlog-{n}", *finished, age=RETENTION * 2)

    pruned = await prune_once(writer, RETENTION, now=datetime.now(UTC), batch=2)

    assert pruned.events == 5
    assert (await keeping_everything.row_counts())["events"] == 0


async def test_silences_that_ended_or_were_expired_before_the_retention_are_deleted(
    keeping_everything: Api, writer: Writer
) -> None:
    now = datetime.now(UTC)
    created = {}
    for name in ("ended", "expired", "active"):
        body = {"matchers": [{"name": "dag_id", "value": name}], "ends_at": (now + RETENTION).isoformat()}
        answer = await keeping_everything.client.post("/v1/silences", json=body, headers=ADMIN)
        created[name] = answer.json()["id"]
    long_ago = now - RETENTION * 2

    def age_silences(connection: Connection) -> None:
        for name, values in (("ended", {"ends_at": long_ago}), ("expired", {"expired_at": long_ago})):
            connection.execute(update(Silence).where(Silence.id == created[name]).values(**values))

    await keeping_everything.database.write(age_silences)

    pruned = await prune_once(writer, RETENTION, now=now)

    listed = (await keeping_everything.client.get("/v1/silences", headers=ADMIN)).json()["data"]
    assert pruned.silences == 2
    assert [silence["id"] for silence in listed] == [created["active"]]


async def test_the_service_applies_its_retention_at_start_and_counts_what_it_deleted(
    two_receivers: Api, make_settings: SettingsFactory, database: Database
) -> None:
    finished = (DeliveryStatus.SENT, DeliveryStatus.DEAD)
    old = await old_event(two_receivers, "before-restart", *finished, age=timedelta(days=8))

    async with running_api(make_settings(routing=TWO_RECEIVERS, retention="7d"), database) as restarted:
        await eventually(lambda: _gone(restarted, old))
        exposed = samples((await restarted.client.get("/metrics")).text)

    assert exposed["alerting_events_pruned_total", ()] >= 1


async def _gone(api: Api, event_id: str) -> bool:
    return not await exists(api, event_id)


@contextlib.contextmanager
def replaying(database: Database, delivery_id: str) -> Generator[None]:
    """A replay of this dead delivery written, its transaction not ended yet (its locks held)."""
    engine = create_engine(sync_url(make_url(database.settings.database_url)))
    connection = engine.connect()
    try:
        assert delivery_store.replay(connection, delivery_id, now=datetime.now(UTC)) is not None
        yield
    finally:
        connection.rollback()
        connection.close()
        engine.dispose()


async def prune_within_seconds(writer: Writer) -> int:
    """How many events a round deleted; fails if it waited (for a lock) more than a few seconds."""
    pruned = await asyncio.wait_for(prune_once(writer, RETENTION, now=datetime.now(UTC)), timeout=10)
    return pruned.events


def _every_delivery_dead(connection: Connection) -> None:
    connection.execute(update(Delivery).values(status=DeliveryStatus.DEAD))


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_an_old_event_a_replay_holds_is_left_for_the_next_round_not_waited_for(
    keeping_everything: Api, writer: Writer, database: Database
) -> None:
    # A replay locks the event before its delivery; retention, deleting the deliveries first and the event
    # then, deadlocked with it (one of the two aborted). It now locks its events first and skips a held one.
    dead = (DeliveryStatus.DEAD, DeliveryStatus.DEAD)
    old = await old_event(keeping_everything, "old", *dead, age=RETENTION * 2)
    [hook, _pager] = (await keeping_everything.event(old))["deliveries"]

    with replaying(database, hook["id"]):
        assert await prune_within_seconds(writer) == 0

    assert await prune_within_seconds(writer) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_the_success_of_an_alert_a_replay_revives_is_left_for_the_next_round_not_waited_for(
    keeping_everything: Api, writer: Writer, database: Database
) -> None:
    # The replay sends the success's dead resolved notice back to waiting: retention, deleting that
    # success's deliveries meanwhile, waited for the replay's row, or deadlocked with it.
    failure = await old_event(
        keeping_everything, "f", DeliveryStatus.DEAD, DeliveryStatus.DEAD, age=RETENTION * 2
    )
    success = await keeping_everything.post_event(idempotency_key="s", type="task_success")
    await keeping_everything.database.write(_every_delivery_dead)
    await keeping_everything.database.write(_received_long_ago, [success.json()["id"]])
    [hook, _pager] = (await keeping_everything.event(failure))["deliveries"]

    with replaying(database, hook["id"]):
        assert await prune_within_seconds(writer) == 0

    assert await prune_within_seconds(writer) == 2


def _received_long_ago(connection: Connection, event_ids: list[str]) -> None:
    received_at = datetime.now(UTC) - RETENTION * 2
    connection.execute(update(Event).where(Event.id.in_(event_ids)).values(received_at=received_at))
