"""Accepting events with group commit: the 202 goes out only after the event and its deliveries are committed.

Concurrent requests put their validated event on one asyncio queue and wait on a future. A single batching
task takes everything queued (up to `batch_max`) and runs `Ingestor._write_batch` in one transaction of the
process's database writer (store/writer.py, which only runs and commits it): `_plan`/`_plan_one` decide each
event's outcome (duplicate, conflict, or new: muted? routed where? resolving what?) and the whole batch is
written with Core bulk inserts; only once it is committed is each request answered.
One commit (one fsync) thus serves many requests, which is what lets a durable ingest keep up with an alert
storm.

New deliveries are handed to the in-process dispatcher without a claim transaction: before the batch is
written, the dispatcher lends room in its receivers' queues (`Handoff.reserve`); the deliveries that get some
are inserted already claimed (in flight, leased to this process, as a claim would leave them) and queued for
sending once committed (`Handoff.take_over`). The others are inserted pending and claimed as usual. A crash
before the send is covered like any claimed delivery's: the lease expires and the delivery is claimed again.

If a batch's transaction fails, its events are retried one per transaction, so a single bad event cannot fail
its neighbours; an event that still fails answers 503 and nothing of it is stored.

Routing is precompiled (`Router`) and silences are held in memory (`SilenceSet`), reloaded when changed
through the API and every `silence_refresh_seconds` for changes made by another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alerting_service import metrics
from alerting_service.config import DEFAULT_INGEST_QUEUE_MAX, AlertingConfig
from alerting_service.expectations import resolves_missed_day
from alerting_service.labels import event_labels
from alerting_service.models import DeliveryKind, EventType, Integration, new_id
from alerting_service.resolution import fingerprint, is_firing, resolved_fingerprints
from alerting_service.routing import Router
from alerting_service.schemas import EventIn
from alerting_service.silences import SilenceSet
from alerting_service.store import deliveries as delivery_store
from alerting_service.store import events as event_store
from alerting_service.store import silences as silence_store
from alerting_service.store.deliveries import ClaimedDelivery
from alerting_service.store.events import FiringTarget, IdempotencyConflict, OpenAlert, StoredKey
from alerting_service.store.writer import DatabaseFileMoved, Writer

log = logging.getLogger(__name__)


# How long a failed batch makes the ingest not ready (see Ingestor.is_storing).
FAILURE_MEMORY = 30.0


class IngestUnavailable(Exception):
    """The event was not stored (database failure or shutdown); the client should send it again."""


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    duplicate: bool


@dataclass(slots=True)
class _Submission:
    event: EventIn
    body_hash: str
    received_at: datetime
    future: asyncio.Future[Accepted]


class Handoff(Protocol):
    """The in-process dispatcher, as ingest sees it (see the module docstring)."""

    @property
    def lease(self) -> timedelta: ...

    def reserve(self, wanted: int) -> dict[str, int]:
        """Room for up to `wanted` deliveries per receiver name (free send slots and queue places), held until
        `take_over` or `release`."""
        ...

    def take_over(self, claimed: list[ClaimedDelivery], unused: Mapping[str, int]) -> None:
        """Start the committed deliveries created claimed; give back the reserved slots left unused."""
        ...

    def release(self, reserved: Mapping[str, int]) -> None: ...

    def wake(self) -> None:
        """Pending deliveries were committed: look for due ones now."""
        ...


class NoHandoff:
    """No dispatcher in this process: every delivery is created pending for `alerting-service worker`."""

    lease = timedelta(0)

    def reserve(self, wanted: int) -> dict[str, int]:
        return {}

    def take_over(self, claimed: list[ClaimedDelivery], unused: Mapping[str, int]) -> None:
        """Nothing is ever reserved, so nothing is created claimed."""

    def release(self, reserved: Mapping[str, int]) -> None:
        """Nothing is ever reserved."""

    def wake(self) -> None:
        """Another process polls the outbox."""


@dataclass(frozen=True, slots=True)
class _Closed:
    """What a success closed: the alerts' fingerprints (sorted, as a retry reads them back), and the
    receivers still to get their firing notice."""

    fingerprints: tuple[str, ...] = ()
    behind_a_firing: frozenset[str] = frozenset()


NOTHING_CLOSED = _Closed()  # a firing event's: shared, nothing built per event on the hot path


@dataclass(slots=True)
class _BatchPlan:
    """What one transaction writes, and each submission's answer once it is committed."""

    # Send slots reserved for this batch, per receiver; what is left after planning goes back unused.
    slots: dict[str, int]
    lease_until: datetime
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    delivery_rows: list[dict[str, Any]] = field(default_factory=list)
    claimed: list[ClaimedDelivery] = field(default_factory=list)
    resolved: dict[str, str] = field(default_factory=dict)
    outcomes: list[Accepted | IdempotencyConflict] = field(default_factory=list)
    stored_types: list[tuple[EventType, bool]] = field(default_factory=list)

    @property
    def created_pending(self) -> bool:
        return len(self.delivery_rows) > len(self.claimed)


_STOP = object()


class _KeyAlreadyStored(Exception):
    """An idempotency key of the batch was in the database already (or got there meanwhile)."""


class Ingestor:
    def __init__(
        self,
        writer: Writer,
        sessions: async_sessionmaker[AsyncSession],
        config: AlertingConfig,
        *,
        batch_max: int,
        silence_refresh_seconds: float,
        handoff: Handoff,
        queue_max: int = DEFAULT_INGEST_QUEUE_MAX,
    ) -> None:
        """`writer` writes the batches; `sessions` reads the silences."""
        self._writer = writer
        self._sessions = sessions
        self._router = Router(config.root_route)
        self._integrations = {receiver.name: receiver.integration for receiver in config.receivers}
        self._business_date_labels = {e.dag_id: e.business_date_label for e in config.expectations}
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._silence_refresh_seconds = silence_refresh_seconds
        self._handoff = handoff
        self._silences = SilenceSet()
        self._queue: asyncio.Queue[_Submission | object] = asyncio.Queue()
        self._accepting = False
        self._tasks: list[asyncio.Task[None]] = []
        # The error of the last batch while batches fail (a database outage), to log each error once.
        self._failing: str | None = None
        self._failed_at = 0.0  # time.monotonic() of the last failed batch

    async def start(self) -> None:
        await self.reload_silences()
        self._accepting = True
        self._tasks = [
            asyncio.create_task(self._write_until_stopped(), name="ingest-writer"),
            asyncio.create_task(self._refresh_silences_forever(), name="silence-refresh"),
        ]

    async def stop(self) -> None:
        """Refuse new events, then write every event already queued before returning."""
        self._accepting = False
        writer, refresher = self._tasks
        self._queue.put_nowait(_STOP)
        await writer
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher

    @property
    def is_running(self) -> bool:
        return self._accepting and bool(self._tasks) and not self._tasks[0].done()

    @property
    def is_storing(self) -> bool:
        """False while batches fail, for up to FAILURE_MEMORY seconds after the last failure: a database
        that answers reads but refuses writes (read-only after a failover, a full disk) is not ready. The
        memory fades so that, with no traffic left to prove it, the service is tried again."""
        return self._failing is None or time.monotonic() - self._failed_at > FAILURE_MEMORY

    async def submit(self, event: EventIn) -> Accepted:
        """Store the event; answers once it is committed. Raises IdempotencyConflict or IngestUnavailable."""
        if not self._accepting:
            raise IngestUnavailable("the service is shutting down")
        if self._queue.qsize() >= self._queue_max:
            # The database is not keeping up: answer now, rather than hold the sender until it times out.
            raise IngestUnavailable(f"overloaded: {self._queue_max} events are waiting to be stored")
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Submission(event, event.body_hash(), datetime.now(UTC), future))
        return await future

    async def reload_silences(self) -> None:
        async with self._sessions() as session:
            self._silences = SilenceSet(await silence_store.not_yet_ended(session, now=datetime.now(UTC)))

    # --- the writer -------------------------------------------------------------------------------------

    async def _write_until_stopped(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Submission] = []
            item = await self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
                if stopping or len(batch) >= self._batch_max or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[_Submission], *, retrying_alone: bool = False) -> None:
        try:
            plan = await self._commit(batch)
        except Exception as error:
            if not retrying_alone:
                self._log_batch_failure(len(batch), error)
            # Each event again on its own: one bad event then fails alone, and an event whose transaction
            # lost its connection (the server restarted, the session was ended) gets a fresh one, as it would
            # have in a batch of several.
            if len(batch) > 1 or (not retrying_alone and _connection_lost(error)):
                for submission in batch:
                    await self._write([submission], retrying_alone=True)
                return
            if retrying_alone and _summary(error) != self._failing:  # not what the whole batch failed on
                log.error("event not stored: %s", error, extra={"action": "ingest"})
            _answer(batch[0], IngestUnavailable("the event could not be stored"))
            return
        if self._failing is not None:
            log.info("events are stored again", extra={"action": "ingest"})
            self._failing = None
        for submission, outcome in zip(batch, plan.outcomes, strict=True):
            _answer(submission, outcome)
        self._handoff.take_over(plan.claimed, plan.slots)
        if plan.created_pending:
            self._handoff.wake()
        self._count(plan)

    def _log_batch_failure(self, size: int, error: Exception) -> None:
        """With the traceback when the error is new, one line while it repeats: in a database outage every
        batch fails, and a traceback each would bury the log."""
        summary = _summary(error)
        if summary == self._failing:
            log.error(
                "a batch of %d events was not stored (%s, as the batch before)",
                size,
                summary,
                extra={"action": "ingest"},
            )
        else:
            log.exception("a batch of %d events was not stored", size, extra={"action": "ingest"})
        self._failing = summary
        self._failed_at = time.monotonic()

    async def _commit(self, batch: list[_Submission]) -> _BatchPlan:
        reserved = self._handoff.reserve(len(batch))
        try:
            # Optimistic first: most keys are new, so the batch is written without looking its keys up. If
            # one was stored already (a re-sent callback), that transaction is rolled back and the batch
            # planned again knowing the stored keys.
            try:
                return await self._writer.transaction(self._write_batch, batch, reserved, look_up_keys=False)
            except _KeyAlreadyStored:
                return await self._writer.transaction(self._write_batch, batch, reserved, look_up_keys=True)
        except BaseException:
            self._handoff.release(reserved)
            raise

    def _write_batch(
        self,
        connection: Connection,
        batch: list[_Submission],
        reserved: Mapping[str, int],
        *,
        look_up_keys: bool,
    ) -> _BatchPlan:
        """On the writer thread, inside its transaction."""
        event_store.take_turns_on_alerts(connection, _alerts_touched(batch))
        stored = (
            event_store.find_keys(connection, {s.event.idempotency_key for s in batch})
            if look_up_keys
            else {}
        )
        plan = self._plan(connection, batch, stored, reserved)
        inserted = event_store.insert_new_events(connection, plan.event_rows)
        if inserted < len(plan.event_rows):
            raise _KeyAlreadyStored
        delivery_store.insert_deliveries(connection, plan.delivery_rows)
        event_store.mark_resolved(connection, plan.resolved)
        moved = self._writer.moved_database_file()
        if moved is not None:
            raise DatabaseFileMoved(moved)
        return plan

    def _plan(
        self,
        connection: Connection,
        batch: list[_Submission],
        stored: dict[str, StoredKey],
        reserved: Mapping[str, int],
    ) -> _BatchPlan:
        closable = {fp for s in batch for fp in _closed_by(s)}
        open_by_fingerprint: defaultdict[str, list[OpenAlert]] = defaultdict(list)
        for alert in event_store.open_alerts(connection, closable):
            open_by_fingerprint[alert.fingerprint].append(alert)
        plan = _BatchPlan(slots=dict(reserved), lease_until=datetime.now(UTC) + self._handoff.lease)
        for submission in batch:
            plan.outcomes.append(self._plan_one(submission, stored, open_by_fingerprint, plan))
        return plan

    def _plan_one(
        self,
        submission: _Submission,
        stored: dict[str, StoredKey],
        open_by_fingerprint: defaultdict[str, list[OpenAlert]],
        plan: _BatchPlan,
    ) -> Accepted | IdempotencyConflict:
        event, key = submission.event, submission.event.idempotency_key
        if key in stored:
            if stored[key].body_hash != submission.body_hash:
                return IdempotencyConflict(key)
            return Accepted(stored[key].id, duplicate=True)
        event_id = new_id()
        stored[key] = StoredKey(event_id, submission.body_hash)  # a repeat later in this batch is a duplicate
        own_fingerprint = _fingerprint(submission)
        labels = event_labels(
            type=event.type, severity=event.effective_severity, dag_id=event.dag_id, task_id=event.task_id,
            labels=event.labels,
        )  # fmt: skip
        muted_by = self._silences.is_muted(labels, submission.received_at)
        targets = {} if muted_by else {name: self._integrations[name] for name in self._router.match(labels)}
        closed = NOTHING_CLOSED
        if is_firing(event.type):
            kind = DeliveryKind.FIRING
            firing = [FiringTarget(r, i, settled=False) for r, i in targets.items()]
            open_by_fingerprint[own_fingerprint].append(
                OpenAlert(event_id, own_fingerprint, firing, event.labels)
            )
        else:
            # A success is a resolved notice: to where it is routed, and to where the alerts it closes went.
            kind = DeliveryKind.RESOLVED
            closes = resolved_fingerprints(event.type, dag_id=event.dag_id, own_fingerprint=own_fingerprint)
            business_date_label = self._business_date_labels.get(event.dag_id)
            closed = _close(
                closes,
                event_id,
                open_by_fingerprint,
                plan,
                None if muted_by else targets,
                lambda alert: resolves_missed_day(business_date_label, alert.labels, event.labels),
            )
        event_row = _event_row(submission, event_id, own_fingerprint, muted_by)
        plan.event_rows.append(event_row)
        for receiver, integration in targets.items():
            waiting = receiver in closed.behind_a_firing
            _add_delivery(
                plan, event_row, receiver, integration, kind, waiting=waiting, resolves=closed.fingerprints
            )
        plan.stored_types.append((event.type, muted_by is not None))
        return Accepted(event_id, duplicate=False)

    @staticmethod
    def _count(plan: _BatchPlan) -> None:
        metrics.ingest_batch_size.observe(len(plan.outcomes))
        for event_type, muted in plan.stored_types:
            metrics.events_received_total.labels(type=event_type.value).inc()
            if muted:
                metrics.events_muted_total.labels(type=event_type.value).inc()

    async def _refresh_silences_forever(self) -> None:
        while True:
            await asyncio.sleep(self._silence_refresh_seconds)
            try:
                await self.reload_silences()
            except Exception:
                log.exception(
                    "could not reload silences; keeping the previous ones", extra={"action": "silences"}
                )


def _close(
    fingerprints: tuple[str, ...],
    success_id: str,
    open_by_fingerprint: defaultdict[str, list[OpenAlert]],
    plan: _BatchPlan,
    targets: dict[str, Integration] | None,
    resolves: Callable[[OpenAlert], bool],
) -> _Closed:
    """Record the open alerts of these fingerprints that the success `resolves` as resolved by `success_id`,
    and add the receivers their firing notices went to to `targets` (None when the success is muted: it
    notifies nobody). Answers which fingerprints it closed, and the receivers still to get a firing notice:
    a resolved notice must not arrive before it, so it waits."""
    closed_keys: set[str] = set()
    behind_a_firing: set[str] = set()
    for closing_key in fingerprints:
        still_open: list[OpenAlert] = []
        for alert in open_by_fingerprint.pop(closing_key, []):
            if not resolves(alert):
                still_open.append(alert)
                continue
            plan.resolved[alert.id] = success_id
            closed_keys.add(closing_key)
            for target in alert.targets if targets is not None else ():
                targets.setdefault(target.receiver, Integration(target.integration))
                if not target.settled:
                    behind_a_firing.add(target.receiver)
        if still_open:
            open_by_fingerprint[closing_key] = still_open
    return _Closed(tuple(sorted(closed_keys)), frozenset(behind_a_firing))


def _add_delivery(
    plan: _BatchPlan,
    event_row: dict[str, Any],
    receiver: str,
    integration: Integration,
    kind: DeliveryKind,
    *,
    waiting: bool,
    resolves: tuple[str, ...],
) -> None:
    """Created waiting for a firing notice, else claimed if a send slot is reserved for its receiver, else
    pending."""
    claim = not waiting and plan.slots.get(receiver, 0) > 0
    row = delivery_store.new_delivery_row(
        event_id=event_row["id"],
        receiver=receiver,
        integration=integration,
        kind=kind,
        now=event_row["received_at"],
        lease_until=plan.lease_until if claim else None,
        waiting=waiting,
    )
    plan.delivery_rows.append(row)
    if claim:
        plan.slots[receiver] -= 1
        plan.claimed.append(
            ClaimedDelivery(
                id=row["id"],
                receiver=receiver,
                kind=row["kind"],
                attempts=row["attempts"],
                horizon_starts_at=row["horizon_starts_at"],
                webhook_id=row["webhook_id"],
                lease_until=row["lease_until"],
                event=event_row,
                resolves=resolves,
            )
        )


def _answer(submission: _Submission, outcome: Accepted | Exception) -> None:
    # The request may have gone away (client disconnect cancels its future): nothing to answer then.
    if submission.future.done():
        return
    if isinstance(outcome, Exception):
        submission.future.set_exception(outcome)
    else:
        submission.future.set_result(outcome)


def _closed_by(submission: _Submission) -> tuple[str, ...]:
    """The fingerprints of the open alerts this event would close."""
    event = submission.event
    return resolved_fingerprints(event.type, dag_id=event.dag_id, own_fingerprint=_fingerprint(submission))


def _connection_lost(error: Exception) -> bool:
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _summary(error: Exception) -> str:
    """The error's type and first line (a database error goes on with the statement)."""
    return f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')}"


def _alerts_touched(batch: list[_Submission]) -> Iterator[str]:
    """The alerts a batch may open or close: its events' own fingerprints and those they close (lazily: only
    PostgreSQL needs them)."""
    return (fp for s in batch for fp in (_fingerprint(s), *_closed_by(s)))


def _fingerprint(submission: _Submission) -> str:
    event = submission.event
    return fingerprint(
        event.type, dag_id=event.dag_id, run_id=event.run_id, task_id=event.task_id, map_index=event.map_index
    )


def _event_row(
    submission: _Submission, event_id: str, own_fingerprint: str, muted_by: str | None
) -> dict[str, Any]:
    event = submission.event
    return {
        "id": event_id,
        "idempotency_key": event.idempotency_key,
        "body_hash": submission.body_hash,
        "type": event.type.value,
        "severity": event.effective_severity.value,
        "dag_id": event.dag_id,
        "task_id": event.task_id,
        "run_id": event.run_id,
        "map_index": event.map_index,
        "try_number": event.try_number,
        "max_tries": event.max_tries,
        "logical_date": event.logical_date,
        "occurred_at": event.occurred_at or submission.received_at,
        "received_at": submission.received_at,
        "exception": event.exception,
        "log_url": event.log_url,
        "next_retry_at": event.next_retry_at,
        "labels": event.labels,
        "fingerprint": own_fingerprint,
        "muted_by": muted_by,
        "resolved_by": None,
    }
