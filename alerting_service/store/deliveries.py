"""The delivery outbox: create, claim, record outcomes, replay, and the queue figures for /metrics.

Claim semantics (`claim_batch`):
- A delivery is due when it is `pending` with `next_attempt_at <= now`, or `in_flight` with
  `lease_until < now`: an expired lease means its worker died or hung, so the delivery is claimable again
  (at-least-once delivery; the stable `webhook_id` lets receivers drop the duplicate).
- Claiming is per receiver, up to the room the dispatcher has for it: a guarded UPDATE (one for expired
  leases, then one for the oldest due pending ones) that sets `in_flight`, `lease_until = now + lease`,
  `last_attempt_at = now` and increments `attempts` (a crash mid-send therefore counts as an attempt),
  RETURNING the claimed ids.
  PostgreSQL picks the candidates with `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait for nor
  take each other's rows. SQLite has no row locks: the UPDATE repeats the due condition (status and
  lease_until) in its WHERE clause and only the rows it actually changed (the rowcount, via RETURNING) are
  claimed; SQLite runs one writer at a time, so two workers can never both change the same row.
- The outcome functions (`record_outcomes`, `mark_retry`, `mark_dead`) and `hand_back` only change a row
  that is still `in_flight` under the lease they were given (`lease_until` as the claim set it: a fencing
  token), never a delivery whose lease expired and that was claimed again, by another worker or this one.
  `mark_retry` and `mark_dead` answer whether they changed it, `record_outcomes` the ids it recorded;
  `hand_back` answers nothing.
- The retry horizon is measured from `horizon_starts_at` (creation, or the last replay).
- The dispatcher claims with `claim_batch` (those guarded UPDATEs, then one Core SELECT of the claimed
  deliveries joined to their events, no ORM objects) and records with `record_outcomes` (one transaction per
  flush: one UPDATE for every delivery sent, one guarded UPDATE per retry or dead-letter), which answers which
  rows were still `in_flight` and therefore recorded.

A delivery to a receiver that is disabled in `receivers_state` is still created `pending` at ingest (ingest
does not read receiver state, which another process may change); the dispatcher dead-letters it with reason
`destination_disabled`, and an admin can replay it after re-enabling the receiver.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, aliased

from alerting_service.db import insert_on_conflict
from alerting_service.models import (
    SETTLED_STATUSES,
    UNFINISHED_STATUSES,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Event,
    Integration,
    ReceiverState,
    new_id,
)
from alerting_service.store.events import EVENT_LOCK_ORDER


def new_delivery_row(
    *,
    event_id: str,
    receiver: str,
    integration: Integration,
    kind: DeliveryKind,
    now: datetime,
    lease_until: datetime | None = None,
    waiting: bool = False,
) -> dict[str, Any]:
    """The column values of a new delivery, due at once (for Core bulk inserts).

    With `lease_until` it is created already claimed, exactly as `claim_batch` would leave it (`in_flight`,
    one attempt, leased): the in-process dispatcher takes it over from ingest without a claim transaction.
    With `waiting`, it waits for a firing notice (see `release_waiting`).
    """
    return {
        "id": new_id(),
        "event_id": event_id,
        "receiver": receiver,
        "integration": integration.value,
        "kind": kind.value,
        "status": _initial_status(lease_until, waiting).value,
        "attempts": 0 if lease_until is None else 1,
        "created_at": now,
        "horizon_starts_at": now,
        "next_attempt_at": now,
        "lease_until": lease_until,
        "last_attempt_at": None if lease_until is None else now,
        "webhook_id": new_webhook_id(),
    }


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def insert_deliveries(connection: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        connection.execute(insert(Delivery.__table__), rows)


# A sweep of waiting resolved notices looks at this many at most (see release_waiting).
RELEASE_SWEEP_LIMIT = 1000


def _initial_status(lease_until: datetime | None, waiting: bool) -> DeliveryStatus:
    if waiting:
        return DeliveryStatus.WAITING
    return DeliveryStatus.PENDING if lease_until is None else DeliveryStatus.IN_FLIGHT


def _lease_expired(now: datetime) -> ColumnElement[bool]:
    return and_(Delivery.status == DeliveryStatus.IN_FLIGHT, Delivery.lease_until < now)


def _pending_due(now: datetime) -> ColumnElement[bool]:
    return and_(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now)


def release_waiting(connection: Connection, *, settled: Collection[str] | None, now: datetime) -> int:
    """Waiting resolved notices whose firing notices (to the same receiver, of the alerts they closed) are all
    sent or dead: pending and due now, their retry horizon starting now; how many.

    `settled`: the firing deliveries just recorded sent or dead, whose followers to look at (found through
    their events, never by walking the waiting ones). None: a sweep releasing up to `RELEASE_SWEEP_LIMIT`
    waiting notices, for one written by another process while its firing notice settled.
    """
    waiting = select(Delivery.id).where(Delivery.status == DeliveryStatus.WAITING)
    if connection.scalar(waiting.limit(1)) is None:
        return 0  # the usual case: one index lookup
    if settled is None:
        # Only the releasable ones: the first waiting notices found may all rightly wait (a receiver down
        # with a backlog), and a sweep taking just those would never reach one that no longer should.
        releasable = waiting.where(~_behind_a_firing()).limit(RELEASE_SWEEP_LIMIT)
        ids = list(connection.scalars(releasable))
    else:
        ids = _waiting_followers(connection, settled)
    if not ids:
        return 0
    # By id, with the status compared unindexed: given `status = ?`, SQLite (without statistics) walks every
    # waiting row through the status index instead.
    result = connection.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(ids), Delivery.status.concat("") == DeliveryStatus.WAITING, ~_behind_a_firing()
        )
        .values(_due_again(now))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def _waiting_followers(connection: Connection, settled: Collection[str]) -> list[str]:
    """The waiting resolved notices that may follow these firing deliveries: found through the firing
    deliveries' events (`resolved_by`), then the success events' deliveries, never by walking the waiting."""
    if not settled:
        return []
    firing, closed = aliased(Delivery), aliased(Event)
    rows = connection.execute(
        select(closed.resolved_by, firing.receiver)
        .join_from(firing, closed, firing.event_id == closed.id)
        .where(firing.id.in_(settled), closed.resolved_by.is_not(None))
    )
    followed = {(success_id, receiver) for success_id, receiver in rows}
    if not followed:
        return []
    deliveries = connection.execute(
        select(Delivery.id, Delivery.event_id, Delivery.receiver, Delivery.status).where(
            Delivery.event_id.in_({success_id for success_id, _ in followed})
        )
    )
    return [
        delivery_id
        for delivery_id, success_id, receiver, status in deliveries
        if status == DeliveryStatus.WAITING and (success_id, receiver) in followed
    ]


def _behind_a_firing() -> ColumnElement[bool]:
    """The resolved notice has a firing notice to its receiver, of an alert it closed, not yet sent nor dead.

    The status test is a NOT IN on purpose: with an IN, SQLite walks that receiver's whole backlog through
    the (status, receiver) index for every row, instead of the closed alerts (`ix_events_resolved_by`).
    """
    firing, closed = aliased(Delivery), aliased(Event)
    return exists().where(
        closed.resolved_by == Delivery.event_id,
        firing.event_id == closed.id,
        firing.receiver == Delivery.receiver,
        firing.kind == DeliveryKind.FIRING,
        firing.status.not_in(SETTLED_STATUSES),
    )


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A claimed delivery with its event's columns, read with Core (no ORM identity map, no lazy loads)."""

    id: str
    receiver: str
    kind: str
    attempts: int
    horizon_starts_at: datetime
    webhook_id: str
    lease_until: datetime
    event: Mapping[str, Any]
    # A resolved notice's: the fingerprints of the alerts its success closed, sorted (the same on every try).
    resolves: tuple[str, ...] = ()


_DELIVERY_COLUMNS = (
    Delivery.id,
    Delivery.receiver,
    Delivery.kind,
    Delivery.attempts,
    Delivery.horizon_starts_at,
    Delivery.webhook_id,
    Delivery.lease_until,
)


def claim_batch(
    connection: Connection, *, now: datetime, room: Mapping[str, int], lease: timedelta, others: int = 0
) -> list[ClaimedDelivery]:
    """Claim, for each receiver in `room`, up to its room in due deliveries to it (expired leases, then the
    oldest due), and up to `others` due deliveries to receivers `room` does not name (left by an older
    configuration); read with their event in one joined Core SELECT.

    One claim per receiver: a receiver without room (a hung destination with a backlog) is not claimed at
    all, so its backlog never stands in front of another receiver's fresh deliveries. Each walks
    `ix_deliveries_status_receiver_next_attempt_at` in order; two guarded UPDATEs rather than one on
    `expired OR pending`, which made SQLite read and sort the whole backlog on every claim.
    """
    ids = []
    for receiver, limit in room.items():
        if limit > 0:
            ids += _claim_due(connection, Delivery.receiver == receiver, limit=limit, now=now, lease=lease)
    if others > 0:
        unnamed = Delivery.receiver.not_in(list(room))
        ids += _claim_due(connection, unnamed, limit=others, now=now, lease=lease)
    if not ids:
        return []
    event_columns = list(Event.__table__.columns)
    rows = connection.execute(
        select(*_DELIVERY_COLUMNS, *event_columns)
        .join_from(Delivery, Event, Delivery.event_id == Event.id)
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.next_attempt_at)
    )
    width = len(_DELIVERY_COLUMNS)
    claimed = []
    for row in rows.all():
        event = {column.key: value for column, value in zip(event_columns, row[width:], strict=True)}
        claimed.append(ClaimedDelivery(*row[:width], event=event))
    return _with_the_alerts_they_close(connection, claimed)


def _with_the_alerts_they_close(
    connection: Connection, claimed: list[ClaimedDelivery]
) -> list[ClaimedDelivery]:
    """Each resolved notice with what its success closed, read back where the ingest had it in hand."""
    successes = {delivery.event["id"] for delivery in claimed if delivery.kind == DeliveryKind.RESOLVED}
    if not successes:
        return claimed
    closed: defaultdict[str, set[str]] = defaultdict(set)
    rows = connection.execute(
        select(Event.resolved_by, Event.fingerprint).where(Event.resolved_by.in_(successes))
    )
    for success_id, fingerprint in rows:
        closed[success_id].add(fingerprint)
    return [
        replace(delivery, resolves=tuple(sorted(closed[delivery.event["id"]])))
        if delivery.event["id"] in closed
        else delivery
        for delivery in claimed
    ]


def _claim_due(
    connection: Connection, whose: ColumnElement[bool], *, limit: int, now: datetime, lease: timedelta
) -> list[str]:
    """Claim up to `limit` of `whose` due deliveries: expired leases first, then the oldest due."""
    ids = _claim(
        connection, and_(_lease_expired(now), whose), order_by=None, limit=limit, now=now, lease=lease
    )
    if len(ids) < limit:
        oldest_due = and_(_pending_due(now), whose)
        ids += _claim(
            connection,
            oldest_due,
            order_by=Delivery.next_attempt_at,
            limit=limit - len(ids),
            now=now,
            lease=lease,
        )
    return ids


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: sent (`status` SENT), back to pending until `next_attempt_at`, or dead."""

    delivery_id: str
    lease_until: datetime  # of the claim the attempt was made under
    status: DeliveryStatus
    reason: str | None = None
    error: str | None = None  # already redacted
    next_attempt_at: datetime | None = None
    disable_receiver: str | None = None  # a receiver to disable with `error` as the reason (e.g. 410 Gone)


def record_outcomes(connection: Connection, outcomes: Sequence[Outcome], *, now: datetime) -> set[str]:
    """Record many outcomes in the caller's transaction; the ids recorded (still `in_flight`, lease held)."""
    recorded: set[str] = set()
    sent = [outcome for outcome in outcomes if outcome.status == DeliveryStatus.SENT]
    if sent:
        result = connection.execute(
            update(Delivery)
            .where(_under_lease([(outcome.delivery_id, outcome.lease_until) for outcome in sent]))
            .values(status=DeliveryStatus.SENT, sent_at=now, reason=None, last_error=None, lease_until=None)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        )
        recorded.update(result.scalars())
    for outcome in outcomes:
        if outcome.status == DeliveryStatus.SENT:
            continue
        if outcome.status == DeliveryStatus.DEAD:
            done = mark_dead(
                connection,
                outcome.delivery_id,
                lease_until=outcome.lease_until,
                reason=outcome.reason or "",
                error=outcome.error or "",
            )
        else:
            assert outcome.next_attempt_at is not None
            done = mark_retry(
                connection,
                outcome.delivery_id,
                lease_until=outcome.lease_until,
                next_attempt_at=outcome.next_attempt_at,
                reason=outcome.reason or "",
                error=outcome.error or "",
            )
        if done:
            recorded.add(outcome.delivery_id)
        if outcome.disable_receiver is not None:
            disable_receiver(connection, outcome.disable_receiver, reason=outcome.error or "", now=now)
    return recorded


def _claim(
    connection: Connection,
    due: ColumnElement[bool],
    *,
    order_by: Any,
    limit: int,
    now: datetime,
    lease: timedelta,
) -> list[str]:
    candidates = select(Delivery.id).where(due).order_by(order_by).limit(limit)
    if connection.dialect.name == "postgresql":
        # Materialised: PostgreSQL may otherwise re-run an IN-subquery with LIMIT and claim more than `limit`.
        candidates_cte = (
            candidates.with_for_update(skip_locked=True).cte("candidates").prefix_with("MATERIALIZED")
        )
    else:
        candidates_cte = candidates.cte("candidates")
    claimed = connection.execute(
        update(Delivery)
        .where(Delivery.id.in_(select(candidates_cte.c.id)), due)
        .values(
            status=DeliveryStatus.IN_FLIGHT,
            lease_until=now + lease,
            last_attempt_at=now,
            attempts=Delivery.attempts + 1,
        )
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    return list(claimed.scalars())


def _under_lease(leases: Collection[tuple[str, datetime]]) -> ColumnElement[bool]:
    """The rows still `in_flight` under these (delivery id, lease_until) claims."""
    return and_(
        tuple_(Delivery.id, Delivery.lease_until).in_(leases), Delivery.status == DeliveryStatus.IN_FLIGHT
    )


def hand_back(connection: Connection, leases: Collection[tuple[str, datetime]], *, due_at: datetime) -> None:
    """Return claims that were not sent (no free slot, or cut off at shutdown), each given as (delivery id,
    lease_until): pending again, due at `due_at`; the claim does not count as an attempt."""
    if leases:
        connection.execute(
            update(Delivery)
            .where(_under_lease(leases))
            .values(
                status=DeliveryStatus.PENDING,
                lease_until=None,
                next_attempt_at=due_at,
                attempts=Delivery.attempts - 1,
            )
            .execution_options(synchronize_session=False)
        )


def _finish_attempt(connection: Connection, delivery_id: str, lease_until: datetime, **values: Any) -> bool:
    result = connection.execute(
        update(Delivery)
        .where(_under_lease([(delivery_id, lease_until)]))
        .values(lease_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def mark_retry(
    connection: Connection,
    delivery_id: str,
    *,
    lease_until: datetime,
    next_attempt_at: datetime,
    reason: str,
    error: str,
) -> bool:
    """Back to pending until `next_attempt_at`. `error` must already be redacted."""
    return _finish_attempt(
        connection,
        delivery_id,
        lease_until,
        status=DeliveryStatus.PENDING,
        next_attempt_at=next_attempt_at,
        reason=reason,
        last_error=error,
    )


def mark_dead(
    connection: Connection, delivery_id: str, *, lease_until: datetime, reason: str, error: str
) -> bool:
    """Dead-letter the delivery; it stays listed under GET /v1/deliveries?status=dead until replayed."""
    return _finish_attempt(
        connection, delivery_id, lease_until, status=DeliveryStatus.DEAD, reason=reason, last_error=error
    )


def _due_again(now: datetime) -> dict[str, Any]:
    """A replayed or released delivery's new values: pending, due now, a new retry horizon; attempts kept."""
    return {"status": DeliveryStatus.PENDING, "next_attempt_at": now, "horizon_starts_at": now}


def replay(connection: Connection, delivery_id: str, *, now: datetime) -> Delivery | None:
    """A dead delivery back to pending (see `_due_again`). None if the delivery is not dead."""
    if not _replay_where(connection, Delivery.id == delivery_id, now):
        return None
    with Session(connection) as session:
        return session.get(Delivery, delivery_id)


async def dead_letters(session: AsyncSession, receiver: str, *, reason: str | None) -> list[str]:
    """The ids of the dead deliveries to `receiver` (given up for `reason`, if given), oldest first."""
    dead = _matching(DeliveryStatus.DEAD, receiver, reason)
    return list(await session.scalars(select(Delivery.id).where(dead).order_by(Delivery.created_at)))


def replay_dead_letters(connection: Connection, delivery_ids: Sequence[str], *, now: datetime) -> int:
    """Those of these deliveries still dead back to pending; how many. A few hundred per transaction: the
    writer's next group commit waits for it."""
    return len(_replay_where(connection, Delivery.id.in_(delivery_ids), now))


def _replay_where(connection: Connection, where: ColumnElement[bool], now: datetime) -> list[str]:
    """On the writer (store/writer.py), so that a replay and an ingest batch never interleave: see
    `_take_turns_with_ingest`."""
    dead = and_(where, Delivery.status == DeliveryStatus.DEAD)
    _take_turns_with_ingest(connection, dead)
    result = connection.execute(
        update(Delivery)
        .where(dead)
        .values(_due_again(now))
        .returning(Delivery.id, Delivery.kind)
        .execution_options(synchronize_session=False)
    )
    replayed = result.all()
    firing = [delivery_id for delivery_id, kind in replayed if kind == DeliveryKind.FIRING]
    revived = [notice for chunk in chunks(firing) for notice in _resolve_again_after(connection, chunk, now)]
    return [delivery_id for delivery_id, _ in replayed] + revived


def _take_turns_with_ingest(connection: Connection, dead: ColumnElement[bool]) -> None:
    """Lock the events of the firing notices about to be replayed, as ingest locks the open alerts a success
    closes (events.open_alerts), in the same order.

    Otherwise a success ingested while its alert's firing notice is replayed reads that notice dead (settled)
    and sends its resolved notice at once, while the replay reads the alert as still open and does not make
    the resolved notice wait: the receiver sees the alert fire last, and it stays open there. With the lock,
    whichever comes second sees what the first committed. The successes that closed those alerts too, whose
    resolved notices the replay writes: retention, which skips locked events, would otherwise delete one
    meanwhile (a deadlock, or a notice of an event gone). PostgreSQL row locks (no shared lock table to
    outgrow, however many dead letters a bulk replay revives); on SQLite the writer's turns do it.
    """
    if connection.dialect.name != "postgresql":
        return
    revived_alerts = select(Delivery.event_id).where(dead, Delivery.kind == DeliveryKind.FIRING)
    their_successes = select(Event.resolved_by).where(
        Event.id.in_(revived_alerts), Event.resolved_by.is_not(None)
    )
    connection.execute(
        select(Event.id)
        .where(or_(Event.id.in_(revived_alerts), Event.id.in_(their_successes)))
        .order_by(*EVENT_LOCK_ORDER)
        .with_for_update(key_share=True)
    )


def _resolve_again_after(connection: Connection, firing_ids: Sequence[str], now: datetime) -> list[str]:
    """Replayed firing notices of alerts already resolved get their resolved notice again, after them; the
    dead resolved notices this revives.

    Otherwise the receiver would see the alert fire last and stay open for good. The resolved notice (to the
    same receiver, of the success that closed the alert) waits for the firing one: the unsent one set back
    to waiting (see `_revive_the_latest_unsent`), or else a new one (new webhook-id: a receiver that dedupes
    on it would drop a resend). A success that sent no resolved notice there (it was silenced) gets none now
    either.
    """
    firing, closed = aliased(Delivery), aliased(Event)
    closers = set(
        connection.execute(
            select(closed.resolved_by, firing.receiver, firing.integration)
            .join_from(firing, closed, firing.event_id == closed.id)
            .where(firing.id.in_(firing_ids), closed.resolved_by.is_not(None))
        ).all()
    )
    if not closers:
        return []
    _take_turns_resolving_again(connection)
    notices: defaultdict[tuple[str, str], list[_ResolvedNotice]] = defaultdict(list)
    for notice_id, success_id, receiver, status, created_at in connection.execute(
        select(Delivery.id, Delivery.event_id, Delivery.receiver, Delivery.status, Delivery.created_at).where(
            Delivery.event_id.in_({success_id for success_id, _, _ in closers}),
            Delivery.kind == DeliveryKind.RESOLVED,
        )
    ):
        notices[success_id, receiver].append(_ResolvedNotice(notice_id, DeliveryStatus(status), created_at))
    revived: list[str] = []
    for success_id, receiver, integration in closers:
        theirs = notices[success_id, receiver]
        if not theirs or any(notice.status == DeliveryStatus.WAITING for notice in theirs):
            continue
        waiting_again = _revive_the_latest_unsent(connection, theirs, now)
        if waiting_again is not None:
            if waiting_again.status == DeliveryStatus.DEAD:
                revived.append(waiting_again.id)
            continue
        # Sent, in flight, or claimed by a dispatcher since it was read as pending.
        row = new_delivery_row(
            event_id=success_id,
            receiver=receiver,
            integration=Integration(integration),
            kind=DeliveryKind.RESOLVED,
            now=now,
            waiting=True,
        )
        connection.execute(insert(Delivery.__table__), [row])
    return revived


@dataclass(frozen=True, slots=True)
class _ResolvedNotice:
    id: str
    status: DeliveryStatus
    created_at: datetime


def _revive_the_latest_unsent(
    connection: Connection, notices: Sequence[_ResolvedNotice], now: datetime
) -> _ResolvedNotice | None:
    """Back to waiting, the one of these resolved notices still pending, or else the newest dead one (one,
    however many earlier replays left); the one it was, or None.

    A dead one too: a bulk replay reviving it in a later transaction (or a later replay) would otherwise send
    it beside a new one, and ahead of its firing notice. It keeps its webhook-id, as any replayed delivery
    does, and gets a new horizon, as a replayed one does (the queue-age gauge would count its old one).
    """
    unsent = [notice for notice in notices if notice.status in (DeliveryStatus.PENDING, DeliveryStatus.DEAD)]
    if not unsent:
        return None
    latest = max(unsent, key=lambda notice: (notice.status == DeliveryStatus.PENDING, notice.created_at))
    values: dict[str, Any] = {"status": DeliveryStatus.WAITING}
    if latest.status == DeliveryStatus.DEAD:
        values["horizon_starts_at"] = now
    result = connection.execute(
        update(Delivery)
        .where(Delivery.id == latest.id, Delivery.status == latest.status)
        .values(values)
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
    return latest if result.all() else None


# A PostgreSQL advisory lock (the one-key form, as db.SCHEMA_LOCK_KEY) shared by every process of the service.
RESOLVE_AGAIN_LOCK_KEY = 0x72736C7664  # "rslvd"


def _take_turns_resolving_again(connection: Connection) -> None:
    """On PostgreSQL, wait until no other replay is giving resolved alerts their resolved notice again, and
    keep the others waiting until this transaction ends.

    Two replays of firing notices of one alert (its retry's and its failure's, by two requests at once)
    would otherwise each read the notices before the other committed, find none waiting, and each add one:
    the receiver told twice, under two webhook-ids. One lock, not one per alert: a bulk replay may re-resolve
    thousands of alerts, more than the server's shared lock table holds, and replays are rare. SQLite's
    writers already take turns.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RESOLVE_AGAIN_LOCK_KEY})


# Dead letters a bulk replay revives per writer transaction: an ingest batch waits for one, never a backlog.
REPLAY_BATCH = 500


def chunks(ids: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


async def get(session: AsyncSession, delivery_id: str) -> Delivery | None:
    return await session.get(Delivery, delivery_id)


def _matching(status: str | None, receiver: str | None, reason: str | None) -> ColumnElement[bool]:
    """The deliveries with these values; a filter left None matches any."""
    wanted = ((Delivery.status, status), (Delivery.receiver, receiver), (Delivery.reason, reason))
    return and_(true(), *(column == value for column, value in wanted if value is not None))


async def list_matching(
    session: AsyncSession,
    *,
    status: str | None,
    receiver: str | None,
    reason: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Delivery], int]:
    """The deliveries that match, newest first, and how many match in all."""
    condition = _matching(status, receiver, reason)
    count = await session.scalar(select(func.count()).select_from(Delivery).where(condition))
    rows = await session.scalars(
        select(Delivery)
        .where(condition)
        .order_by(Delivery.created_at.desc(), Delivery.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), count or 0


@dataclass(frozen=True)
class QueueStats:
    depth: dict[DeliveryStatus, int]
    oldest_unfinished_since: datetime | None
    """When the oldest unfinished delivery's current effort began: its creation, release or last replay."""


async def queue_stats(session: AsyncSession) -> QueueStats:
    rows = await session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
    counts: dict[str, int] = {status: count for status, count in rows}
    oldest = await session.scalar(
        select(func.min(Delivery.horizon_starts_at)).where(Delivery.status.in_(UNFINISHED_STATUSES))
    )
    return QueueStats(
        depth={status: counts.get(status.value, 0) for status in DeliveryStatus},
        oldest_unfinished_since=oldest,
    )


# --- receivers_state: destinations disabled at run time ----------------------------------------------------


def disable_receiver(connection: Connection, name: str, *, reason: str, now: datetime) -> None:
    """Disable `name` (e.g. a webhook answered 410 Gone) until an admin re-enables it."""
    statement = insert_on_conflict(ReceiverState.__table__, connection.dialect.name).values(
        name=name, disabled_at=now, disabled_reason=reason
    )
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[ReceiverState.name], set_={"disabled_at": now, "disabled_reason": reason}
        )
    )


async def unsent_by_receiver(session: AsyncSession) -> dict[str, Counter[DeliveryStatus]]:
    """Per receiver, how many of its deliveries are in each status other than `sent`. The statuses are listed
    (not `!= sent`): the status index then seeks them and skips the sent history, most of the table."""
    rows = await session.execute(
        select(Delivery.receiver, Delivery.status, func.count())
        .where(Delivery.status.in_((*UNFINISHED_STATUSES, DeliveryStatus.DEAD)))
        .group_by(Delivery.receiver, Delivery.status)
    )
    unsent: defaultdict[str, Counter[DeliveryStatus]] = defaultdict(Counter)
    for receiver, status, count in rows:
        unsent[receiver][DeliveryStatus(status)] = count
    return unsent


async def receiver_states(session: AsyncSession) -> dict[str, ReceiverState]:
    """The receivers disabled at run time, by name."""
    return {state.name: state for state in await session.scalars(select(ReceiverState))}


async def enable_receiver(session: AsyncSession, name: str) -> bool:
    """Re-enable `name`; False if it was not disabled."""
    result = await session.execute(delete(ReceiverState).where(ReceiverState.name == name))
    return result.rowcount == 1


async def disabled_reason(session: AsyncSession, name: str) -> str | None:
    """Why `name` is disabled; None if it is not."""
    state = await session.get(ReceiverState, name)
    return None if state is None else state.disabled_reason or "disabled"


def disabled_receivers(connection: Connection) -> dict[str, str]:
    """Disabled receiver name -> the reason it was disabled."""
    rows = connection.execute(select(ReceiverState.name, ReceiverState.disabled_reason))
    return {name: reason or "" for name, reason in rows}
