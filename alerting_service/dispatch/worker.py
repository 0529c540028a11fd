"""The dispatcher: claims due deliveries from the outbox, sends them, and records what happened.

Shaped like procrastinate's worker: one class, small named coroutines. It runs inside the API process or as
`alerting-service worker` processes (polling); several may run against one PostgreSQL database, since claims
are leased rows. Inside the API process, ingest hands it the deliveries it has just committed, created already
claimed for the send slots the dispatcher reserved (`reserve` / `take_over`, see ingest.py), so a fresh alert
is sent without a claim transaction; the rest are claimed from the outbox. While a receiver's last claim was
full (a backlog), nothing is reserved for it, so its fresh ones queue behind its backlog instead of overtaking
it.

- Every send runs as its own task, under its receiver's `max_concurrency`: a slow or dead destination holds
  only its own slots. Each receiver also has a queue of claimed deliveries waiting for one of its slots,
  `QUEUE_PER_SLOT` times as long as it has slots (the prefetch of a message-queue consumer), so one claim
  feeds many sends instead of one claim transaction per freed slot. A claimed delivery whose receiver's queue
  is full is handed back at once; one whose lease no longer outlasts its send deadline by the time a slot
  frees (a hung receiver) is handed back instead of sent, so no send outlives its lease.
- Database work is batched and short, and runs on the process's database writer (store/writer.py), in turn
  with ingest's group commits: one claim transaction takes, for each receiver, as many due deliveries as its
  queue has room for (Core statements, no ORM objects; a receiver without room is not claimed, so a hung
  one's backlog never stands in front of the others' deliveries), and outcomes wait in a buffer that is
  flushed in one transaction (one UPDATE for all those sent) a few milliseconds after the first arrives, or
  at once when `flush_max` are waiting. On SQLite every commit is an fsync: a claim and an outcome
  transaction per delivery capped delivery at ~120 webhooks/s. A graceful stop flushes the buffer.
  A crash between a send and its flush loses only the outcome: the lease expires and the delivery is sent
  again, the at-least-once contract that already covered a crash mid-send.
- A send never outlives its lease (it is cut off at its deadline, before the lease ends), so a live worker's
  delivery is never claimed twice.
  A crashed worker's leases expire and its deliveries are claimed again (at-least-once; the stable
  webhook-id lets a receiver drop the duplicate).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from alerting_service import metrics
from alerting_service.config import (
    AlertingConfig,
    EmailReceiver,
    Settings,
    WebhookReceiver,
    load_alerting_config,
)
from alerting_service.db import create_schema, database_problem
from alerting_service.dispatch.retry import Dead, RetryPolicy
from alerting_service.heap import freeze_startup_objects
from alerting_service.models import SETTLED_STATUSES, DeliveryKind, DeliveryStatus
from alerting_service.notify.base import AlertEvent, DeliveryError, Notification, Notifier, Reason
from alerting_service.notify.email import EmailNotifier
from alerting_service.notify.webhook import WebhookNotifier
from alerting_service.store import deliveries
from alerting_service.store.deliveries import ClaimedDelivery, Outcome
from alerting_service.store.writer import Writer

log = logging.getLogger(__name__)

Receiver = EmailReceiver | WebhookReceiver


@dataclass(frozen=True, slots=True)
class DispatchTuning:
    # How often to look for due deliveries when nothing wakes the dispatcher (retries, other processes).
    poll_interval: float = 1.0
    # Graceful stop: how long in-flight sends may finish before they are cut off and handed back.
    shutdown_timeout: float = 10.0
    # A delivery handed back for want of a free slot is due again after this: short, so it goes soon after a
    # slot frees up, yet long enough that a hung receiver's backlog is not claimed and handed back non-stop.
    hand_back_delay: timedelta = timedelta(seconds=2)
    # How often to look for deliveries to receivers this configuration does not have (to give them up), and
    # for waiting resolved notices whose firing notices settled in another process (to release them).
    sweep_interval: float = 60.0
    # Outcomes are recorded this long after the first of a batch arrives (more arrive meanwhile) ...
    flush_delay: float = 0.005
    # ... or at once when this many are waiting.
    flush_max: int = 256
    # A claim's lease outlasts the longest send by this much: time to record the outcome, or to wait in a
    # receiver's queue (a delivery that waited longer is handed back instead of sent).
    lease_margin: timedelta = timedelta(seconds=5)


# A send is cut off after this many times its receiver's timeout: the timeout bounds each step (connect,
# each SMTP command, reading the reply), not the whole send.
SEND_DEADLINE_FACTOR = 4
# The lease when no receiver is configured (deliveries are then only given up, never sent).
MINIMUM_LEASE = timedelta(seconds=30)
# A receiver's queue of claimed deliveries holds this many per send slot (see the module docstring).
QUEUE_PER_SLOT = 8
# While a receiver is behind, its finished sends wake the claim loop once this share of its room is free.
CLAIM_WHEN_FREE = 0.25
# At most this many deliveries to receivers not configured here are given up per claim.
UNKNOWN_RECEIVER_BATCH = 100


def send_deadline(receiver: Receiver) -> timedelta:
    config = receiver.email if isinstance(receiver, EmailReceiver) else receiver.webhook
    return timedelta(seconds=config.timeout_seconds * SEND_DEADLINE_FACTOR)


def lease_for(receivers: Iterable[Receiver], margin: timedelta) -> timedelta:
    """Long enough for the slowest receiver's longest send: a live worker's claim never expires mid-send."""
    return max((send_deadline(receiver) + margin for receiver in receivers), default=MINIMUM_LEASE)


def retry_policy(config: AlertingConfig) -> RetryPolicy:
    return RetryPolicy(
        initial_backoff=config.retry.initial_backoff,
        max_backoff=config.retry.max_backoff,
        horizon=config.retry.horizon,
    )


class Dispatcher:
    def __init__(
        self, writer: Writer, routing_config: AlertingConfig, tuning: DispatchTuning = DispatchTuning()
    ) -> None:
        self._writer = writer
        self._receivers: dict[str, Receiver] = {
            receiver.name: receiver for receiver in routing_config.receivers
        }
        self._policy = retry_policy(routing_config)
        self._lease = lease_for(routing_config.receivers, tuning.lease_margin)
        self._tuning = tuning
        self._email = EmailNotifier()
        self._webhook = WebhookNotifier()
        self._wake = asyncio.Event()
        self._sends: dict[asyncio.Task[None], ClaimedDelivery] = {}
        # Outcomes waiting for the next flush, each with what to do once it is recorded (metrics, logs).
        self._outcomes: list[_Pending] = []
        self._outcomes_waiting = asyncio.Event()
        self._closing = False
        self._flush_failing = False  # the last flush failed: its outcomes are retried
        self._claim_failing: str | None = None  # the error of the last claim, while claims fail
        self._stopping = False  # set when the stop begins: no more room lent to ingest
        self._busy: Counter[str] = Counter()  # receiver name -> sends in flight
        self._reserved: Counter[str] = Counter()  # receiver name -> queue room lent to ingest's open batches
        self._queued: defaultdict[str, deque[ClaimedDelivery]] = defaultdict(deque)  # waiting for a slot
        self._handing_back: set[asyncio.Task[None]] = set()
        self._last_error: dict[str, str] = {}  # receiver name -> last logged error, to log only changes
        self._disabled: dict[str, str] = {}  # receiver name -> why, as of the last claim or 410
        # Disabled here (a 410) but not yet recorded: a claim's read of the database must not undo them.
        self._disabling: dict[str, str] = {}
        # Receivers whose last claim had room to spare, so took everything due to them: ingest may hand them
        # fresh deliveries. For the others more may be due, which fresh ones must not overtake.
        self._caught_up: set[str] = set()
        self._next_sweep = 0.0  # time.monotonic(): at the first claim

    @property
    def caught_up(self) -> bool:
        """Every receiver's last claim took everything due to it."""
        return self._caught_up >= self._receivers.keys()

    def wake(self) -> None:
        """Deliveries are due in the outbox (ingest committed pending ones, a retry is due): claim now.

        Room is still lent to ingest meanwhile: those were committed moments ago and the claim follows at
        once, while waiting for it would make every batch under load pending in turn (each batch's wake lands
        before the previous claim is done). A real backlog fills a claim, and a full claim stops the lending.
        """
        self._wake.set()

    # --- taking over from ingest (ingest.Handoff) -------------------------------------------------------

    @property
    def lease(self) -> timedelta:
        return self._lease

    def reserve(self, wanted: int) -> dict[str, int]:
        """Room for up to `wanted` deliveries per enabled receiver that is caught up."""
        if self._stopping:
            return {}
        reserved: dict[str, int] = {}
        for name, receiver in self._receivers.items():
            free = min(wanted, self._room(receiver))
            if free > 0 and name in self._caught_up and name not in self._disabled:
                reserved[name] = free
                self._reserved[name] += free
        return reserved

    def release(self, reserved: Mapping[str, int]) -> None:
        self._reserved.subtract(reserved)

    def take_over(self, claimed: list[ClaimedDelivery], unused: Mapping[str, int]) -> None:
        """Queue the deliveries ingest committed in flight under this dispatcher's lease, in the room lent for
        them, and give back the room left unused."""
        self.release(unused)
        self.release(Counter(delivery.receiver for delivery in claimed))
        self._enqueue(claimed)

    async def run(self, stop_event: asyncio.Event) -> None:
        """Dispatch until `stop_event` is set, then let in-flight sends finish (up to shutdown_timeout)."""
        stopping = asyncio.create_task(stop_event.wait())
        flusher = asyncio.create_task(self._flush_outcomes(), name="dispatch-outcomes")
        try:
            while not stop_event.is_set():
                self._wake.clear()  # before claiming: a wake during the claim is not lost
                if not await self._claim_and_start_logging_errors():
                    await self._wait_for_work(stopping)
        finally:
            self._stopping = True
            stopping.cancel()
            await self._shutdown(flusher)

    # --- claiming ---------------------------------------------------------------------------------------

    async def _claim_and_start_logging_errors(self) -> bool:
        try:
            return await self._claim_and_start()
        except Exception as exc:  # e.g. the database restarting: keep polling, never stop delivering
            # Once per error, not once per poll: an outage would fill the log with the same line.
            if type(exc).__name__ != self._claim_failing:
                self._claim_failing = type(exc).__name__
                log.error("claiming due deliveries failed", extra={"error": database_problem(exc)})
            return False

    async def _claim_and_start(self) -> bool:
        """Claim as many due deliveries as each receiver's queue has room for and start what the slots allow;
        False if none was due."""
        room = {name: max(self._room(receiver), 0) for name, receiver in self._receivers.items()}
        sweep = time.monotonic() >= self._next_sweep
        unknown = UNKNOWN_RECEIVER_BATCH if sweep else 0
        if not any(room.values()) and not sweep:
            return False
        claimed, disabled = await self._writer.transaction(
            _claim, now=_now(), room=room, others=unknown, lease=self._lease, release_all_waiting=sweep
        )
        if self._claim_failing is not None:  # said once a claim has reached the database again
            self._claim_failing = None
            log.info("claiming due deliveries works again")
        self._disabled = disabled | self._disabling
        self._note_what_was_left_due(room, unknown, Counter(delivery.receiver for delivery in claimed))
        sendable: list[ClaimedDelivery] = []
        for_later: list[ClaimedDelivery] = []
        room = {name: self._room(receiver) for name, receiver in self._receivers.items()}
        for delivery in claimed:
            receiver = self._receivers.get(delivery.receiver)
            if receiver is None:
                self._give_up(delivery, Reason.UNKNOWN_RECEIVER, "receiver is not in the configuration")
            elif delivery.receiver in self._disabled:
                reason = self._disabled[delivery.receiver]
                self._give_up(delivery, Reason.DESTINATION_DISABLED, f"receiver disabled: {reason}")
            elif room[receiver.name] <= 0:
                for_later.append(delivery)
            else:
                room[receiver.name] -= 1
                sendable.append(delivery)
        self._enqueue(sendable)
        await self._hand_back(for_later)
        return bool(claimed)

    def _note_what_was_left_due(self, room: Mapping[str, int], unknown: int, claimed: Counter[str]) -> None:
        """After a claim: which receivers it left deliveries due to, and when to look for unknown ones again.

        A receiver not claimed for want of room keeps its state: what is due to it is what it was."""
        for name, free in room.items():
            if free > 0 and claimed[name] < free:
                self._caught_up.add(name)
            elif free > 0:
                self._caught_up.discard(name)
        if unknown:
            unknown_claimed = sum(count for name, count in claimed.items() if name not in room)
            wait = 0.0 if unknown_claimed >= unknown else self._tuning.sweep_interval
            self._next_sweep = time.monotonic() + wait

    def _room(self, receiver: Receiver) -> int:
        """How many more deliveries `receiver` can take: free slots plus free places in its queue, less the
        room lent to ingest."""
        capacity = _max_concurrency(receiver) * (1 + QUEUE_PER_SLOT)
        name = receiver.name
        return capacity - self._busy[name] - self._reserved[name] - len(self._queued[name])

    def _worth_claiming(self, receiver: Receiver) -> bool:
        capacity = _max_concurrency(receiver) * (1 + QUEUE_PER_SLOT)
        return self._room(receiver) >= max(1, int(capacity * CLAIM_WHEN_FREE))

    async def _wait_for_work(self, stopping: asyncio.Task[bool]) -> None:
        woken = asyncio.create_task(self._wake.wait())
        await asyncio.wait(
            {woken, stopping}, timeout=self._tuning.poll_interval, return_when=asyncio.FIRST_COMPLETED
        )
        woken.cancel()

    async def _hand_back(self, claimed: list[ClaimedDelivery]) -> None:
        """Return claims that will not be sent now: due again shortly; the claim does not count as an
        attempt."""
        if claimed:
            await self._writer.transaction(
                deliveries.hand_back,
                [(d.id, d.lease_until) for d in claimed],
                due_at=_now() + self._tuning.hand_back_delay,
            )

    async def _hand_back_logging_errors(self, claimed: list[ClaimedDelivery]) -> None:
        try:
            await self._hand_back(claimed)
        except Exception as exc:  # the database is gone: the leases expire and others claim them again
            log.error("could not hand back deliveries", extra={"error": database_problem(exc)})

    # --- sending ----------------------------------------------------------------------------------------

    def _enqueue(self, claimed: list[ClaimedDelivery]) -> None:
        """Queue claimed deliveries (in due order) behind their receiver's, then start what slots allow."""
        for delivery in claimed:
            self._queued[delivery.receiver].append(delivery)
        for name in {delivery.receiver for delivery in claimed}:
            self._start_queued(self._receivers[name])

    def _start_queued(self, receiver: Receiver) -> None:
        """Fill `receiver`'s free slots from its queue; hand back what waited too long to be sent safely.

        A queued delivery is sent only while its lease outlasts the send's deadline plus half the margin, the
        time left to record its outcome before the lease ends."""
        queue, expiring = self._queued[receiver.name], []
        needed = send_deadline(receiver) + self._tuning.lease_margin / 2
        while queue and self._busy[receiver.name] < _max_concurrency(receiver):
            delivery = queue.popleft()
            if receiver.name in self._disabled:  # a 410 came while it waited
                reason = self._disabled[receiver.name]
                self._give_up(delivery, Reason.DESTINATION_DISABLED, f"receiver disabled: {reason}")
            elif delivery.lease_until - _now() < needed:
                expiring.append(delivery)
            else:
                self._start(delivery, receiver)
        if expiring:
            task = asyncio.create_task(self._hand_back_logging_errors(expiring))
            self._handing_back.add(task)
            task.add_done_callback(self._handing_back.discard)

    def _start(self, delivery: ClaimedDelivery, receiver: Receiver) -> None:
        self._busy[receiver.name] += 1
        task = asyncio.create_task(self._deliver(delivery, receiver), name=f"deliver-{delivery.id}")
        self._sends[task] = delivery
        task.add_done_callback(lambda done: self._finished(done, receiver.name))

    def _finished(self, task: asyncio.Task[None], receiver_name: str) -> None:
        self._sends.pop(task, None)
        self._busy[receiver_name] -= 1
        receiver = self._receivers[receiver_name]
        self._start_queued(receiver)
        # Deliveries to it may be due, and its queue has room for them.
        if receiver_name not in self._caught_up and self._worth_claiming(receiver):
            self._wake.set()

    async def _deliver(self, delivery: ClaimedDelivery, receiver: Receiver) -> None:
        error = await self._attempt(delivery, receiver)
        if error is None:
            self._sent(delivery, receiver)
        else:
            self._failed(delivery, receiver, error)

    async def _attempt(self, delivery: ClaimedDelivery, receiver: Receiver) -> DeliveryError | None:
        """One send, cut off at its deadline; the error, or None when the destination accepted it."""
        metrics.notifications_total.labels(integration=receiver.integration.value).inc()
        try:
            async with asyncio.timeout(send_deadline(receiver).total_seconds()):
                await self._notifier(receiver).send(_notification(delivery, receiver))
        except DeliveryError as error:
            return error
        except TimeoutError:
            return DeliveryError(Reason.TIMEOUT, retryable=True, message="send outlasted its deadline")
        # A bug must not stop the dispatcher. Its message may hold secrets: only the type is kept.
        except Exception as exc:
            log.error(
                "unexpected send failure", extra={"delivery_id": delivery.id, "error": type(exc).__name__}
            )
            return DeliveryError(Reason.INTERNAL_ERROR, retryable=True, message=type(exc).__name__)
        return None

    def _notifier(self, receiver: Receiver) -> Notifier:
        return self._email if isinstance(receiver, EmailReceiver) else self._webhook

    # --- outcomes ---------------------------------------------------------------------------------------

    def _sent(self, delivery: ClaimedDelivery, receiver: Receiver) -> None:
        def recorded(now: datetime) -> None:
            latency = (now - delivery.event["received_at"]).total_seconds()
            metrics.notification_latency_seconds.labels(integration=receiver.integration.value).observe(
                latency
            )

        if self._last_error.pop(receiver.name, None) is not None:
            log.info("receiver recovered", extra={"receiver": receiver.name, "delivery_id": delivery.id})
        self._record(Outcome(delivery.id, delivery.lease_until, DeliveryStatus.SENT), recorded)

    def _failed(self, delivery: ClaimedDelivery, receiver: Receiver, error: DeliveryError) -> None:
        metrics.notifications_failed_total.labels(
            integration=receiver.integration.value, reason=error.reason.value
        ).inc()
        self._log_if_changed(delivery, receiver, error)
        decision = self._policy.decide(
            error, attempts=delivery.attempts, created_at=delivery.horizon_starts_at, now=_now()
        )
        if error.disables_receiver:
            # No more slots reserved for it from now on.
            self._disabled[receiver.name] = self._disabling[receiver.name] = error.message
        if isinstance(decision, Dead):

            def dead(now: datetime) -> None:
                log.warning(
                    "delivery dead",
                    extra={
                        "delivery_id": delivery.id,
                        "receiver": receiver.name,
                        "reason": decision.reason.value,
                    },
                )

            outcome = Outcome(
                delivery.id,
                delivery.lease_until,
                DeliveryStatus.DEAD,
                reason=decision.reason,
                error=error.message,
                disable_receiver=receiver.name if error.disables_receiver else None,
            )
            self._record(outcome, dead)
        else:
            retry_at = decision.retry_at
            outcome = Outcome(
                delivery.id,
                delivery.lease_until,
                DeliveryStatus.PENDING,
                reason=error.reason,
                error=error.message,
                next_attempt_at=retry_at,
            )
            self._record(outcome, lambda now: self._wake_at(retry_at, now))

    def _give_up(self, delivery: ClaimedDelivery, reason: Reason, message: str) -> None:
        def dead(now: datetime) -> None:
            log.warning(
                "delivery dead without sending",
                extra={"delivery_id": delivery.id, "receiver": delivery.receiver, "reason": reason.value},
            )

        outcome = Outcome(
            delivery.id, delivery.lease_until, DeliveryStatus.DEAD, reason=reason, error=message
        )
        self._record(outcome, dead)

    def _record(self, outcome: Outcome, then: _Then) -> None:
        """Queue an outcome for the next flush; `then(now)` runs once it is recorded."""
        self._outcomes.append(_Pending(outcome, then))
        self._outcomes_waiting.set()

    async def _flush_outcomes(self) -> None:
        """Record the buffered outcomes, one transaction per flush, until the dispatcher stops."""
        while True:
            if not self._outcomes:
                if self._closing:
                    return
                self._outcomes_waiting.clear()
                await self._outcomes_waiting.wait()  # set by _record, and by _shutdown after _closing
                continue
            if not self._closing and len(self._outcomes) < self._tuning.flush_max:
                await asyncio.sleep(self._tuning.flush_delay)  # let more outcomes join this transaction
            batch, self._outcomes = (
                self._outcomes[: self._tuning.flush_max],
                self._outcomes[self._tuning.flush_max :],
            )
            if await self._flush(batch) or self._closing:
                continue
            # Kept while their leases last: each update is fenced by its claim's lease, so recording it late
            # is safe, and dropped, every send made during a short database outage would be made again. Past
            # its lease an outcome is given up, so one the database refuses cannot hold up the rest for good.
            self._outcomes[:0] = self._within_their_leases(batch)
            await asyncio.sleep(self._tuning.poll_interval)

    def _within_their_leases(self, batch: list[_Pending]) -> list[_Pending]:
        now = _now()
        kept = [pending for pending in batch if pending.outcome.lease_until > now]
        expired = [pending for pending in batch if pending.outcome.lease_until <= now]
        if expired:
            log.warning(
                "outcomes not recorded before their leases expired: their deliveries will be sent again",
                extra={"deliveries": len(expired)},
            )
            # A 410 given up with them was never recorded: the resend asks the receiver again.
            self._settle_disabling(expired)
        return kept

    async def _flush(self, batch: list[_Pending]) -> bool:
        """Record `batch` in one transaction; False if the database failed (nothing of it recorded)."""
        now = _now()
        try:
            recorded, released = await self._writer.transaction(
                _record_outcomes, [pending.outcome for pending in batch], now=now
            )
        except Exception as exc:
            self._log_flush_failure(batch, exc)
            return False
        if self._flush_failing:
            self._flush_failing = False
            log.info("outcomes are recorded again")
        self._settle_disabling(batch)  # recorded: from now on the database's word on the receiver holds
        if released:  # resolved notices whose firing ones just settled: due now
            self._wake.set()
        for pending in batch:
            if pending.outcome.delivery_id in recorded:
                pending.then(now)
            else:
                log.warning(
                    "lease lost before the outcome was recorded",
                    extra={"delivery_id": pending.outcome.delivery_id},
                )
        return True

    def _settle_disabling(self, batch: list[_Pending]) -> None:
        """Stop holding back locally the receivers these outcomes disable (their 410 until it is recorded)."""
        for pending in batch:
            if pending.outcome.disable_receiver is not None:
                self._disabling.pop(pending.outcome.disable_receiver, None)

    def _log_flush_failure(self, batch: list[_Pending], exc: Exception) -> None:
        """Once per outage while it retries (a flush is tried every poll interval); each time at the stop,
        where the outcomes are left to their leases' expiry: those deliveries will be sent again."""
        if self._flush_failing and not self._closing:
            return
        self._flush_failing = True
        log.error(
            "could not record the outcomes"
            + (": their deliveries will be sent again" if self._closing else ""),
            extra={"deliveries": len(batch), "error": database_problem(exc)},
        )

    def _log_if_changed(self, delivery: ClaimedDelivery, receiver: Receiver, error: DeliveryError) -> None:
        """One line per change of a receiver's error (as Alertmanager does), not one per failed attempt."""
        summary = f"{error.reason.value}: {error.message}"
        if self._last_error.get(receiver.name) == summary:
            return
        self._last_error[receiver.name] = summary
        log.warning(
            "delivery failed",
            extra={
                "delivery_id": delivery.id,
                "receiver": receiver.name,
                "reason": error.reason.value,
                "error": error.message,
                "attempts": delivery.attempts,
            },
        )

    def _wake_at(self, retry_at: datetime, now: datetime) -> None:
        """A retry due before the next poll gets its own wake-up (tests use millisecond backoffs)."""
        delay = (retry_at - now).total_seconds()
        if delay < self._tuning.poll_interval:
            asyncio.get_running_loop().call_later(max(delay, 0.0), self.wake)

    # --- stopping ---------------------------------------------------------------------------------------

    async def _shutdown(self, flusher: asyncio.Task[None]) -> None:
        """Let in-flight sends finish; cut off the rest and hand them back rather than wait for the lease.

        Queued deliveries are handed back at once. The outcomes of the finished sends are flushed before the
        dispatcher returns."""
        queued = [delivery for queue in self._queued.values() for delivery in queue]
        self._queued.clear()
        await self._hand_back_logging_errors(queued)
        if self._sends:
            _, unfinished = await asyncio.wait(set(self._sends), timeout=self._tuning.shutdown_timeout)
            cut_off = [self._sends[task] for task in unfinished]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            await self._hand_back_logging_errors(cut_off)
        await asyncio.gather(*self._handing_back)
        self._closing = True
        self._outcomes_waiting.set()
        await flusher
        await self._webhook.aclose()


_Then = Callable[[datetime], None]


def _claim(
    connection: Connection,
    *,
    now: datetime,
    room: Mapping[str, int],
    others: int,
    lease: timedelta,
    release_all_waiting: bool,
) -> tuple[list[ClaimedDelivery], dict[str, str]]:
    """On the writer thread: the claimed deliveries, and the receivers disabled at the time."""
    if release_all_waiting:
        deliveries.release_waiting(connection, settled=None, now=now)
    claimed = deliveries.claim_batch(connection, now=now, room=room, others=others, lease=lease)
    return claimed, deliveries.disabled_receivers(connection)


def _record_outcomes(
    connection: Connection, outcomes: list[Outcome], *, now: datetime
) -> tuple[set[str], int]:
    """On the writer thread: the outcomes recorded, then the resolved notices waiting for the firing ones that
    settled released; the ids recorded and how many were released."""
    recorded = deliveries.record_outcomes(connection, outcomes, now=now)
    settled = [o.delivery_id for o in outcomes if o.delivery_id in recorded and o.status in SETTLED_STATUSES]
    return recorded, deliveries.release_waiting(connection, settled=settled, now=now)


@dataclass(frozen=True, slots=True)
class _Pending:
    outcome: Outcome
    then: _Then


def _notification(delivery: ClaimedDelivery, receiver: Receiver) -> Notification:
    event = delivery.event
    return Notification(
        delivery_id=delivery.id,
        webhook_id=delivery.webhook_id,
        kind=DeliveryKind(delivery.kind),
        receiver=receiver,
        event=AlertEvent(
            id=event["id"],
            type=event["type"],
            severity=event["severity"],
            dag_id=event["dag_id"],
            task_id=event["task_id"],
            run_id=event["run_id"],
            map_index=event["map_index"],
            try_number=event["try_number"],
            max_tries=event["max_tries"],
            logical_date=event["logical_date"],
            occurred_at=event["occurred_at"],
            received_at=event["received_at"],
            exception=event["exception"],
            log_url=event["log_url"],
            next_retry_at=event["next_retry_at"],
            labels=dict(event["labels"] or {}),
            fingerprint=event["fingerprint"],
        ),
        resolves=delivery.resolves,
    )


def _max_concurrency(receiver: Receiver) -> int:
    return (
        receiver.email.max_concurrency
        if isinstance(receiver, EmailReceiver)
        else receiver.webhook.max_concurrency
    )


def _now() -> datetime:
    return datetime.now(UTC)


async def run_worker(settings: Settings, tuning: DispatchTuning = DispatchTuning()) -> None:
    """`alerting-service worker`: a dispatcher in its own process until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    writer = Writer(settings)
    try:
        await writer.transaction(create_schema)
        dispatcher = Dispatcher(writer, load_alerting_config(settings), tuning)
        freeze_startup_objects()
        log.info("worker started", extra={"pid": os.getpid()})
        await dispatcher.run(stop)
    finally:
        writer.close()
