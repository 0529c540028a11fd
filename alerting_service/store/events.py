"""Events: the bulk writes of a group commit, the open alerts a success closes, and the admin reads.

The group commit's functions take the writer's synchronous `Connection` (store/writer.py); the admin reads an
`AsyncSession`.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from alerting_service.db import insert_on_conflict
from alerting_service.models import SETTLED_STATUSES, UNFINISHED_STATUSES, Delivery, DeliveryKind, Event
from alerting_service.resolution import FIRING_TYPES


class IdempotencyConflict(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency_key {key!r} was already used with a different body")
        self.key = key


@dataclass(frozen=True, slots=True)
class StoredKey:
    id: str
    body_hash: str


@dataclass(frozen=True, slots=True)
class FiringTarget:
    receiver: str
    integration: str
    # Its firing notice was sent or dead-lettered: a resolved notice to the receiver cannot overtake it.
    settled: bool


@dataclass(slots=True)
class OpenAlert:
    """A firing event not yet resolved, with the receivers its firing notifications went to."""

    id: str
    fingerprint: str
    targets: list[FiringTarget]
    labels: dict[str, str]


def find_keys(connection: Connection, keys: Collection[str]) -> dict[str, StoredKey]:
    rows = connection.execute(
        select(Event.idempotency_key, Event.id, Event.body_hash).where(Event.idempotency_key.in_(keys))
    )
    return {key: StoredKey(event_id, body_hash) for key, event_id, body_hash in rows}


def insert_new_events(connection: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert the events whose idempotency key is not stored yet; how many were inserted."""
    if not rows:
        return 0
    # Core on the table (the ORM bulk path costs several times more per row); one multi-row statement.
    statement = insert_on_conflict(Event.__table__, connection.dialect.name).on_conflict_do_nothing(
        index_elements=["idempotency_key"]
    )
    result = connection.execute(statement.returning(Event.__table__.c.id), rows)
    return len(result.all())


# The first half of PostgreSQL's two-key advisory locks, one per alert fingerprint ("alrt");
# db.SCHEMA_LOCK_KEY uses the one-key form, a separate key space.
FINGERPRINT_LOCK_NAMESPACE = 0x616C7274


def take_turns_on_alerts(connection: Connection, fingerprints: Iterable[str]) -> None:
    """On PostgreSQL, wait until no other transaction is writing events of these alerts (fingerprints), and
    keep others waiting until this one ends: transaction-level advisory locks, in ascending order (one
    statement: unnest yields the array in order), so two batches never deadlock.

    Resolving reads an alert's open events and then closes them: between two processes (`serve --processes N`,
    several instances) that must not interleave with the other's write of the same alert, or a failure and a
    success committed side by side leave the alert open, and two successes send its "resolved" twice. SQLite
    needs nothing: its writers already take turns (store/writer.py), and `fingerprints` is not even read.
    """
    if connection.dialect.name != "postgresql":
        return
    keys = sorted({_int4(zlib.crc32(fingerprint.encode())) for fingerprint in fingerprints})
    if not keys:
        return
    connection.execute(
        text("SELECT pg_advisory_xact_lock(:namespace, key) FROM unnest(:keys) AS key"),
        {"namespace": FINGERPRINT_LOCK_NAMESPACE, "keys": keys},
    )


def _int4(unsigned: int) -> int:
    """A crc32 as PostgreSQL's signed 32-bit integer (a collision only makes two alerts take turns)."""
    return unsigned - (1 << 32) if unsigned >= 1 << 31 else unsigned


# The order events are locked in, by ingest (open_alerts) and by a replay (store/deliveries.py): the same, so
# that neither ever waits for the other while holding what the other waits for.
EVENT_LOCK_ORDER = (Event.received_at, Event.id)


def open_alerts(connection: Connection, fingerprints: Collection[str]) -> list[OpenAlert]:
    """Unresolved firing events with these fingerprints, oldest first; on PostgreSQL locked until the end of
    the transaction, as a replay of their firing notices locks them (deliveries._take_turns_with_ingest)."""
    if not fingerprints:
        return []
    events = connection.execute(
        select(Event.id, Event.fingerprint, Event.labels)
        .where(
            Event.fingerprint.in_(fingerprints),
            Event.resolved_by.is_(None),
            Event.type.in_([event_type.value for event_type in FIRING_TYPES]),
        )
        .order_by(*EVENT_LOCK_ORDER)
        .with_for_update(key_share=True)
    )
    alerts = {event_id: OpenAlert(event_id, fp, [], labels) for event_id, fp, labels in events}
    if alerts:
        targets = connection.execute(
            select(Delivery.event_id, Delivery.receiver, Delivery.integration, Delivery.status).where(
                Delivery.event_id.in_(alerts), Delivery.kind == DeliveryKind.FIRING
            )
        )
        for event_id, receiver, integration, status in targets:
            settled = status in SETTLED_STATUSES
            alerts[event_id].targets.append(FiringTarget(receiver, integration, settled))
    return list(alerts.values())


def mark_resolved(connection: Connection, resolved: dict[str, str]) -> None:
    """Record, for each firing event id, the id of the success event that resolved it (first success wins)."""
    if resolved:
        statement = (
            update(Event.__table__)
            .where(Event.__table__.c.id == bindparam("event_id"), Event.__table__.c.resolved_by.is_(None))
            .values(resolved_by=bindparam("success_id"))
        )
        connection.execute(
            statement, [{"event_id": event_id, "success_id": by} for event_id, by in resolved.items()]
        )


def delete_finished_before(connection: Connection, cutoff: datetime, *, limit: int) -> int:
    """Delete up to `limit` of the oldest events received before `cutoff` with their deliveries, skipping any
    event with a delivery still to be sent; how many events were deleted.

    Each statement repeats its guard, so a delivery an admin replays meanwhile (in another transaction) is
    kept, with its event: PostgreSQL re-checks a row a concurrent update changed, and the second statement
    sees what committed before it.
    """
    unfinished = exists().where(Delivery.event_id == Event.id, Delivery.status.in_(UNFINISHED_STATUSES))
    oldest_first = select(Event.id).where(Event.received_at < cutoff, ~unfinished).order_by(Event.received_at)
    # The events locked first (PostgreSQL), as a replay locks them before their deliveries: taken the other
    # way round, the two deadlocked. One a replay holds is skipped, left for the next round.
    expired = connection.scalars(oldest_first.limit(limit).with_for_update(skip_locked=True)).all()
    if not expired:
        return 0
    connection.execute(
        delete(Delivery).where(Delivery.event_id.in_(expired), Delivery.status.not_in(UNFINISHED_STATUSES))
    )
    any_delivery = exists().where(Delivery.event_id == Event.id)
    return connection.execute(delete(Event).where(Event.id.in_(expired), ~any_delivery)).rowcount


async def get_with_deliveries(session: AsyncSession, event_id: str) -> Event | None:
    return await session.scalar(
        select(Event).where(Event.id == event_id).options(selectinload(Event.deliveries))
    )


async def list_events(
    session: AsyncSession,
    *,
    dag_id: str | None,
    event_type: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[Event], int]:
    """Newest first; `count` is the number matching the filters, whatever the page."""
    conditions = []
    if dag_id is not None:
        conditions.append(Event.dag_id == dag_id)
    if event_type is not None:
        conditions.append(Event.type == event_type)
    if since is not None:
        conditions.append(Event.received_at >= since)
    if until is not None:
        conditions.append(Event.received_at < until)
    count = await session.scalar(select(func.count()).select_from(Event).where(*conditions))
    rows = await session.scalars(
        select(Event)
        .where(*conditions)
        .order_by(Event.received_at.desc(), Event.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), count or 0
