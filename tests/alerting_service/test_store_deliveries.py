"""The outbox claim semantics (store/deliveries.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, update

from alerting_service.models import Delivery, DeliveryKind, DeliveryStatus, Event
from alerting_service.store import deliveries as delivery_store
from tests.alerting_service.delivery_fixtures import Database, SmtpServer, smtp_server_fixture  # ruff: ignore[unused-import]

LEASE = timedelta(seconds=30)


async def claim(
    database: Database,
    now: datetime,
    room: int = 100,
    *,
    rooms: dict[str, int] | None = None,
    others: int = 0,
) -> list[str]:
    """Claim with `room` for receiver `r`, or with the given `rooms` per receiver."""
    rooms = {"r": room} if rooms is None else rooms
    claimed = await database.write(
        delivery_store.claim_batch, now=now, room=rooms, others=others, lease=LEASE
    )
    return [delivery.id for delivery in claimed]


async def pending(database: Database, smtp_server: SmtpServer, count: int, receiver: str = "r") -> list[str]:
    """`count` pending deliveries to `receiver`, oldest first."""
    to = smtp_server.receiver(receiver)
    return [(await database.add_event(to))[0] for _ in range(count)]


async def test_a_claim_takes_no_more_than_the_receivers_room(
    database: Database, smtp_server: SmtpServer
) -> None:
    await pending(database, smtp_server, 5)

    assert len(await claim(database, datetime.now(UTC), room=2)) == 2


async def test_each_receiver_is_claimed_up_to_its_own_room(
    database: Database, smtp_server: SmtpServer
) -> None:
    a = await pending(database, smtp_server, 3, receiver="a")
    b = await pending(database, smtp_server, 3, receiver="b")

    claimed = await claim(database, datetime.now(UTC), rooms={"a": 1, "b": 2})

    assert sorted(claimed) == sorted([a[0], *b[:2]])


async def test_a_receiver_without_room_is_not_claimed_however_old_its_backlog(
    database: Database, smtp_server: SmtpServer
) -> None:
    await pending(database, smtp_server, 20, receiver="hung")
    fresh = await pending(database, smtp_server, 1, receiver="healthy")

    assert await claim(database, datetime.now(UTC), rooms={"hung": 0, "healthy": 5}) == fresh


async def test_deliveries_to_receivers_not_in_the_claim_are_claimed_only_as_others(
    database: Database, smtp_server: SmtpServer
) -> None:
    left_over = await pending(database, smtp_server, 2, receiver="removed")
    now = datetime.now(UTC)

    assert await claim(database, now, rooms={"kept": 5}) == []
    assert sorted(await claim(database, now, rooms={"kept": 5}, others=5)) == sorted(left_over)


async def test_a_claimed_delivery_is_in_flight_with_a_lease_and_one_more_attempt(
    database: Database, smtp_server: SmtpServer
) -> None:
    [delivery_id] = await pending(database, smtp_server, 1)
    now = datetime.now(UTC)

    await claim(database, now)

    claimed = await database.delivery(delivery_id)
    assert (claimed.status, claimed.attempts, claimed.lease_until) == (
        DeliveryStatus.IN_FLIGHT,
        1,
        now + LEASE,
    )


async def test_a_delivery_under_lease_is_not_claimed_again(
    database: Database, smtp_server: SmtpServer
) -> None:
    await pending(database, smtp_server, 3)
    now = datetime.now(UTC)
    await claim(database, now)

    assert await claim(database, now + LEASE - timedelta(seconds=1)) == []


async def test_an_expired_lease_is_claimable_again(database: Database, smtp_server: SmtpServer) -> None:
    ids = await pending(database, smtp_server, 3)
    now = datetime.now(UTC)
    await claim(database, now)

    assert sorted(await claim(database, now + LEASE + timedelta(seconds=1))) == sorted(ids)


async def test_a_delivery_not_yet_due_is_not_claimed(database: Database, smtp_server: SmtpServer) -> None:
    [delivery_id] = await pending(database, smtp_server, 1)
    now = datetime.now(UTC)
    [claimed] = await claim(database, now)
    await database.write(
        delivery_store.mark_retry,
        claimed,
        lease_until=now + LEASE,
        next_attempt_at=now + timedelta(minutes=5),
        reason="server_error",
        error="HTTP 503",
    )

    assert await claim(database, now + timedelta(minutes=4)) == []
    assert await claim(database, now + timedelta(minutes=5)) == [delivery_id]


async def test_concurrent_claims_never_take_the_same_delivery(
    database: Database, smtp_server: SmtpServer
) -> None:
    ids = await pending(database, smtp_server, 40)
    now = datetime.now(UTC)

    claims = await asyncio.gather(*(claim(database, now, room=7) for _ in range(8)))

    taken = [delivery_id for claimed in claims for delivery_id in claimed]
    assert sorted(taken) == sorted(ids)


def sent(delivery_id: str, lease_until: datetime) -> delivery_store.Outcome:
    return delivery_store.Outcome(delivery_id, lease_until, DeliveryStatus.SENT)


async def reclaimed(database: Database, smtp_server: SmtpServer) -> tuple[str, datetime, datetime]:
    """A delivery claimed, then claimed again once that lease expired: (id, first lease, second lease)."""
    [delivery_id] = await pending(database, smtp_server, 1)
    first = datetime.now(UTC)
    await claim(database, first)
    second = first + LEASE + timedelta(seconds=1)
    assert await claim(database, second) == [delivery_id]
    return delivery_id, first + LEASE, second + LEASE


async def test_an_outcome_under_an_expired_lease_does_not_undo_the_claim_that_followed(
    database: Database, smtp_server: SmtpServer
) -> None:
    delivery_id, first_lease, second_lease = await reclaimed(database, smtp_server)

    recorded = await database.write(
        delivery_store.record_outcomes, [sent(delivery_id, first_lease)], now=first_lease
    )

    assert recorded == set()
    delivery = await database.delivery(delivery_id)
    assert (delivery.status, delivery.lease_until) == (DeliveryStatus.IN_FLIGHT, second_lease)


async def test_a_retry_under_an_expired_lease_does_not_undo_the_claim_that_followed(
    database: Database, smtp_server: SmtpServer
) -> None:
    delivery_id, first_lease, second_lease = await reclaimed(database, smtp_server)
    retry = delivery_store.Outcome(
        delivery_id,
        first_lease,
        DeliveryStatus.PENDING,
        reason="timeout",
        error="timed out",
        next_attempt_at=second_lease + timedelta(minutes=5),
    )

    recorded = await database.write(delivery_store.record_outcomes, [retry], now=first_lease)

    assert recorded == set()
    delivery = await database.delivery(delivery_id)
    assert (delivery.status, delivery.lease_until, delivery.last_error) == (
        DeliveryStatus.IN_FLIGHT,
        second_lease,
        None,
    )


async def test_a_hand_back_under_an_expired_lease_does_not_undo_the_claim_that_followed(
    database: Database, smtp_server: SmtpServer
) -> None:
    delivery_id, first_lease, second_lease = await reclaimed(database, smtp_server)

    await database.write(delivery_store.hand_back, [(delivery_id, first_lease)], due_at=first_lease)

    delivery = await database.delivery(delivery_id)
    assert (delivery.status, delivery.attempts, delivery.lease_until) == (
        DeliveryStatus.IN_FLIGHT,
        2,
        second_lease,
    )


async def waiting_behind(database: Database, smtp_server: SmtpServer, firing: int) -> tuple[list[str], str]:
    """`firing` failures to receiver `r`, closed by one success whose resolved notice to `r` waits for them:
    (the firing delivery ids, the waiting one's id)."""
    firing_ids = await pending(database, smtp_server, firing)
    [resolved_id] = await database.add_event(smtp_server.receiver("r"), kind=DeliveryKind.RESOLVED)
    success = (await database.delivery(resolved_id)).event_id
    failures = [(await database.delivery(d)).event_id for d in firing_ids]

    def close(connection: Connection) -> None:
        connection.execute(update(Event).where(Event.id.in_(failures)).values(resolved_by=success))
        waiting = {"status": DeliveryStatus.WAITING}
        connection.execute(update(Delivery).where(Delivery.id == resolved_id).values(waiting))

    await database.write(close)
    return firing_ids, resolved_id


async def settle(database: Database, delivery_id: str, now: datetime) -> int:
    """Record the claimed `delivery_id` sent and release its followers; how many were released."""
    await database.write(delivery_store.record_outcomes, [sent(delivery_id, now + LEASE)], now=now)
    return await database.write(delivery_store.release_waiting, settled=[delivery_id], now=now)


async def test_a_waiting_resolved_notice_is_not_claimed(database: Database, smtp_server: SmtpServer) -> None:
    [firing_id], _ = await waiting_behind(database, smtp_server, 1)

    assert await claim(database, datetime.now(UTC)) == [firing_id]


async def test_a_resolved_notice_is_released_when_its_firing_notice_is_sent(
    database: Database, smtp_server: SmtpServer
) -> None:
    [firing_id], resolved_id = await waiting_behind(database, smtp_server, 1)
    now = datetime.now(UTC)
    await claim(database, now)

    assert await settle(database, firing_id, now) == 1
    assert await claim(database, now) == [resolved_id]


async def test_a_resolved_notice_waits_until_every_firing_notice_it_follows_is_settled(
    database: Database, smtp_server: SmtpServer
) -> None:
    firing_ids, resolved_id = await waiting_behind(database, smtp_server, 2)
    now = datetime.now(UTC)
    await claim(database, now)

    assert await settle(database, firing_ids[0], now) == 0
    assert await settle(database, firing_ids[1], now) == 1
    assert await database.status(resolved_id) == DeliveryStatus.PENDING


async def test_the_sweep_releases_a_waiting_notice_whose_firing_notice_settled_unseen(
    database: Database, smtp_server: SmtpServer
) -> None:
    [firing_id], resolved_id = await waiting_behind(database, smtp_server, 1)
    now = datetime.now(UTC)
    await claim(database, now)
    await database.write(delivery_store.record_outcomes, [sent(firing_id, now + LEASE)], now=now)

    assert await database.write(delivery_store.release_waiting, settled=None, now=now) == 1
    assert await database.status(resolved_id) == DeliveryStatus.PENDING


async def test_the_sweep_reaches_a_settled_notice_behind_more_waiting_ones_than_it_looks_at(
    database: Database, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery_store, "RELEASE_SWEEP_LIMIT", 2)
    # Two notices rightly waiting (their failures' notices are still to be sent), written first ...
    for _ in range(2):
        await waiting_behind(database, smtp_server, 1)
    # ... then one whose failure's notice was sent unseen (in another process, as the success was written).
    [firing_id], resolved_id = await waiting_behind(database, smtp_server, 1)
    now = datetime.now(UTC)
    await claim(database, now, room=100)
    await database.write(delivery_store.record_outcomes, [sent(firing_id, now + LEASE)], now=now)

    assert await database.write(delivery_store.release_waiting, settled=None, now=now) == 1
    assert await database.status(resolved_id) == DeliveryStatus.PENDING
