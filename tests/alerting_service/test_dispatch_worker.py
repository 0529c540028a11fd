"""The dispatcher in-process, against the real database (SQLite and PostgreSQL) and real peers on loopback."""

import asyncio
import dataclasses
import itertools
import json
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import make_url, select

from alerting_service.config import AlertingConfig, RetryConfig
from alerting_service.dispatch.worker import Dispatcher, DispatchTuning, lease_for, send_deadline
from alerting_service.ingest import Ingestor
from alerting_service.metrics import REGISTRY
from alerting_service.models import Delivery, DeliveryStatus
from alerting_service.schemas import EventIn
from alerting_service.store import deliveries
from alerting_service.store.writer import Writer
from tests.alerting_service.delivery_fixtures import (
    POSTGRES_ADMIN_DSN,
    Database,
    HttpReceiver,
    Receiver,
    Reply,
    SmtpServer,
    eventually,
    service_routing,
)

FAST = DispatchTuning(
    poll_interval=0.05,
    hand_back_delay=timedelta(milliseconds=20),
    shutdown_timeout=2.0,
    sweep_interval=0.05,
)
MS = timedelta(milliseconds=1)


@asynccontextmanager
async def dispatching(
    database: Database,
    *receivers: Receiver,
    horizon: timedelta = timedelta(hours=1),
    tuning: DispatchTuning = FAST,
    backoff: tuple[timedelta, timedelta] = (10 * MS, 50 * MS),
) -> AsyncGenerator[Dispatcher]:
    """A running dispatcher with millisecond backoffs (initial, max); stopped gracefully on exit."""
    initial_backoff, max_backoff = backoff
    config = AlertingConfig(
        receivers=list(receivers),
        retry=RetryConfig(initial_backoff=initial_backoff, max_backoff=max_backoff, horizon=horizon),
    )
    async with database.writer() as writer, running(Dispatcher(writer, config, tuning)) as dispatcher:
        yield dispatcher


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncGenerator[Dispatcher]:
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await task


async def test_an_event_reaches_email_and_webhook(
    database: Database, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    email, webhook = smtp_server.receiver(), http_receiver.receiver("/hook")
    async with dispatching(database, email, webhook) as dispatcher:
        email_id, webhook_id = await database.add_event(email, webhook)
        dispatcher.wake()
        await database.until_status(email_id, DeliveryStatus.SENT)
        await database.until_status(webhook_id, DeliveryStatus.SENT)

    assert len(smtp_server.mails) == 1
    [receipt] = http_receiver.received("/hook")
    assert receipt.headers["webhook-id"] == (await database.delivery(webhook_id)).webhook_id


async def test_a_webhook_answering_500_then_200_is_delivered_exactly_once(
    database: Database, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", Reply(500))
    webhook = http_receiver.receiver("/hook")
    async with dispatching(database, webhook):
        [delivery_id] = await database.add_event(webhook)
        await database.until_status(delivery_id, DeliveryStatus.SENT)

    delivery = await database.delivery(delivery_id)
    receipts = http_receiver.received("/hook")
    assert len(receipts) == 2
    assert {receipt.headers["webhook-id"] for receipt in receipts} == {delivery.webhook_id}
    assert (delivery.attempts, delivery.reason, delivery.last_error) == (2, None, None)


async def test_an_smtp_server_that_was_down_gets_the_mail_once_it_is_back(
    database: Database, smtp_server: SmtpServer
) -> None:
    smtp_server.stop()
    email = smtp_server.receiver()
    async with dispatching(database, email):
        [delivery_id] = await database.add_event(email)

        async def retried_after_connection_errors() -> bool:
            delivery = await database.delivery(delivery_id)
            return delivery.attempts >= 2 and delivery.reason == "connection"

        await eventually(retried_after_connection_errors)
        smtp_server.start()
        await database.until_status(delivery_id, DeliveryStatus.SENT)

    assert len(smtp_server.mails) == 1


async def test_successive_failures_of_a_delivery_are_retried_after_growing_waits(
    database: Database, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", *[Reply(500)] * 4)
    webhook = http_receiver.receiver("/hook")
    initial = 100 * MS  # long beside a send on loopback, so the waits are the backoffs
    async with dispatching(database, webhook, backoff=(initial, 10 * initial)):
        [delivery_id] = await database.add_event(webhook)
        await database.until_status(delivery_id, DeliveryStatus.SENT)

    receipts = http_receiver.received("/hook")
    waits = [later.at - earlier.at for earlier, later in itertools.pairwise(receipts)]
    # After the n-th failure the backoff is initial * 2^(n-1), and the jitter keeps at least half of it: the
    # last wait is at least 0.4 s, when a backoff that did not grow would be at most 0.1 s.
    least = [(initial * 2**n / 2).total_seconds() for n in range(4)]
    assert len(waits) == 4
    too_short = [(wait, bound) for wait, bound in zip(waits, least, strict=True) if wait < bound]
    assert too_short == []


async def test_a_429_retry_after_is_waited_for(database: Database, http_receiver: HttpReceiver) -> None:
    http_receiver.script("/hook", Reply(429, {"Retry-After": "1"}))
    webhook = http_receiver.receiver("/hook")
    async with dispatching(database, webhook):
        [delivery_id] = await database.add_event(webhook)
        await database.until_status(delivery_id, DeliveryStatus.SENT)

    first, second = http_receiver.received("/hook")
    assert second.at - first.at >= 1.0


async def test_a_retry_after_beyond_the_horizon_is_retried_at_the_horizon(
    database: Database, http_receiver: HttpReceiver
) -> None:
    horizon = timedelta(seconds=1)
    http_receiver.script("/hook", Reply(429, {"Retry-After": "300000000000"}))
    webhook = http_receiver.receiver("/hook")
    async with dispatching(database, webhook, horizon=horizon):
        [delivery_id] = await database.add_event(webhook)
        # Before its lease (25 s) ends: the 429 was recorded as a retry, not lost with the delivery in flight.
        await database.until_status(delivery_id, DeliveryStatus.SENT)

    delivery = await database.delivery(delivery_id)
    assert len(http_receiver.received("/hook")) == 2
    # Scheduled at the horizon's end, not after its own backoff (milliseconds), and not tried before it.
    assert delivery.next_attempt_at == delivery.horizon_starts_at + horizon
    assert delivery.last_attempt_at is not None and delivery.last_attempt_at >= delivery.next_attempt_at


async def test_a_410_disables_the_receiver_and_dead_letters_the_delivery(
    database: Database, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", Reply(410))
    webhook = http_receiver.receiver("/hook")
    async with dispatching(database, webhook):
        [gone_id] = await database.add_event(webhook)
        await database.until_status(gone_id, DeliveryStatus.DEAD)

    assert (await database.delivery(gone_id)).reason == "destination_disabled"
    assert webhook.name in await database.write(deliveries.disabled_receivers)


@contextmanager
def hung_and_healthy(
    http_receiver: HttpReceiver,
) -> Generator[tuple[threading.Event, Receiver, Receiver]]:
    """Receiver `slow` (one slot) holds every request until the event is set (at the latest on exit);
    receiver `fast` answers at once."""
    hang = threading.Event()
    http_receiver.answer_by_default("/slow", Reply(hold=hang))
    slow = http_receiver.receiver("/slow", name="slow", max_concurrency=1, timeout_seconds=30)
    try:
        yield hang, slow, http_receiver.receiver("/fast", name="fast")
    finally:
        hang.set()


async def test_a_hung_receiver_does_not_delay_another(
    database: Database, http_receiver: HttpReceiver
) -> None:
    with hung_and_healthy(http_receiver) as (hang, slow, fast):
        async with dispatching(database, slow, fast):
            [held_id] = await database.add_event(slow)
            await eventually(lambda: http_receiver.received("/slow"))
            waiting = [(await database.add_event(slow))[0] for _ in range(3)]
            [fast_id] = await database.add_event(fast)

            await database.until_status(fast_id, DeliveryStatus.SENT)
            assert await database.status(held_id) == DeliveryStatus.IN_FLIGHT
            assert len(http_receiver.received("/slow")) == 1  # the others wait for the one slot
            hang.set()
            for delivery_id in [held_id, *waiting]:
                await database.until_status(delivery_id, DeliveryStatus.SENT)
        # Each was sent on its first attempt: waiting for a slot is not counted as one.
        assert [(await database.delivery(d)).attempts for d in [held_id, *waiting]] == [1, 1, 1, 1]


async def test_a_hung_receivers_backlog_is_not_claimed_ahead_of_another_receivers_delivery(
    database: Database, http_receiver: HttpReceiver
) -> None:
    with hung_and_healthy(http_receiver) as (_, slow, fast):
        async with dispatching(database, slow, fast):
            await database.add_event(slow)
            await eventually(lambda: http_receiver.received("/slow"))
            backlog = await database.add_event(*[slow] * 500)  # older than fast's delivery
            [fast_id] = await database.add_event(fast)

            await database.until_status(fast_id, DeliveryStatus.SENT)
            untouched = await database.count_never_claimed(backlog)
        # The claim after the backlog filled slow's queue (1 slot, 8 places, 1 busy); no claim took more.
        assert untouched == 500 - 8


async def test_a_graceful_stop_lets_an_in_flight_send_finish(
    database: Database, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", Reply(200, delay=0.3))
    webhook = http_receiver.receiver("/hook")
    async with dispatching(database, webhook):
        [delivery_id] = await database.add_event(webhook)
        await eventually(lambda: http_receiver.received("/hook"))
    assert await database.status(delivery_id) == DeliveryStatus.SENT


async def test_a_send_cut_off_by_the_shutdown_timeout_is_handed_back(
    database: Database, http_receiver: HttpReceiver
) -> None:
    hang = threading.Event()
    http_receiver.script("/hook", Reply(hold=hang))
    webhook = http_receiver.receiver("/hook", timeout_seconds=30)
    tuning = DispatchTuning(poll_interval=0.05, shutdown_timeout=0.1)
    try:
        async with dispatching(database, webhook, tuning=tuning):
            [delivery_id] = await database.add_event(webhook)
            await eventually(lambda: http_receiver.received("/hook"))
    finally:
        hang.set()
    delivery = await database.delivery(delivery_id)
    assert (delivery.status, delivery.lease_until) == (DeliveryStatus.PENDING, None)


async def queued_behind_a_held_send(
    database: Database, http_receiver: HttpReceiver, webhook: Receiver, count: int
) -> list[str]:
    """One delivery to `webhook` (one slot) being sent and held by the receiver, then `count` more claimed and
    waiting in the dispatcher's queue for that slot; their ids."""
    await database.add_event(webhook)
    await eventually(lambda: http_receiver.received("/hook"))
    queued = [(await database.add_event(webhook))[0] for _ in range(count)]
    for delivery_id in queued:
        await database.until_status(delivery_id, DeliveryStatus.IN_FLIGHT)
    return queued


async def test_deliveries_queued_for_a_busy_receiver_are_handed_back_at_a_graceful_stop(
    database: Database, http_receiver: HttpReceiver
) -> None:
    hang = threading.Event()
    http_receiver.answer_by_default("/hook", Reply(hold=hang))
    webhook = http_receiver.receiver("/hook", max_concurrency=1, timeout_seconds=30)
    tuning = DispatchTuning(poll_interval=0.05, shutdown_timeout=0.1)
    try:
        async with dispatching(database, webhook, tuning=tuning):
            queued = await queued_behind_a_held_send(database, http_receiver, webhook, 2)
    finally:
        hang.set()

    handed_back = [await database.delivery(delivery_id) for delivery_id in queued]
    assert [(d.status, d.attempts, d.lease_until) for d in handed_back] == [
        (DeliveryStatus.PENDING, 0, None)
    ] * 2
    assert len(http_receiver.received("/hook")) == 1


async def test_a_delivery_that_waited_for_a_slot_longer_than_its_lease_allows_is_handed_back_unsent(
    database: Database, http_receiver: HttpReceiver
) -> None:
    http_receiver.script("/hook", Reply(delay=2.0))
    webhook = http_receiver.receiver("/hook", max_concurrency=1, timeout_seconds=5)
    # The lease outlasts a send by 1.2 s: a delivery may start up to 0.6 s after its claim, so one that waits
    # 2 s for the slot could be cut off by it. (The first delivery has those 0.6 s between its claim and its
    # start: with 0.15 s, a slow claim on a loaded machine had it handed back for the 5 minutes.)
    tuning = DispatchTuning(
        poll_interval=0.05, lease_margin=timedelta(seconds=1.2), hand_back_delay=timedelta(minutes=5)
    )
    async with dispatching(database, webhook, tuning=tuning):
        [slow_id] = await database.add_event(webhook)
        await eventually(lambda: http_receiver.received("/hook"))
        [waiting_id] = await database.add_event(webhook)
        await database.until_status(waiting_id, DeliveryStatus.IN_FLIGHT)
        await database.until_status(slow_id, DeliveryStatus.SENT)
        await database.until_status(waiting_id, DeliveryStatus.PENDING)

    waiting = await database.delivery(waiting_id)
    assert (waiting.attempts, waiting.lease_until) == (0, None)
    assert len(http_receiver.received("/hook")) == 1


async def test_room_lent_to_an_open_ingest_batch_does_not_hold_back_a_queued_delivery(
    database: Database, http_receiver: HttpReceiver
) -> None:
    hang = threading.Event()
    http_receiver.script("/hook", Reply(hold=hang))
    webhook = http_receiver.receiver("/hook", max_concurrency=1, timeout_seconds=30)
    try:
        async with dispatching(database, webhook) as dispatcher:
            [queued_id] = await queued_behind_a_held_send(database, http_receiver, webhook, 1)
            lent = dispatcher.reserve(1)  # an ingest batch is being written
            assert lent == {webhook.name: 1}
            hang.set()  # the slot frees meanwhile

            await database.until_status(queued_id, DeliveryStatus.SENT)
            dispatcher.take_over([], lent)  # the batch routed nothing to it
    finally:
        hang.set()


async def test_a_delivery_to_a_receiver_no_longer_configured_is_dead(
    database: Database, http_receiver: HttpReceiver
) -> None:
    configured, removed = (
        http_receiver.receiver("/a", name="configured"),
        http_receiver.receiver("/b", name="removed"),
    )
    async with dispatching(database, configured):
        [delivery_id] = await database.add_event(removed)
        await database.until_status(delivery_id, DeliveryStatus.DEAD)
    assert (await database.delivery(delivery_id)).reason == "unknown_receiver"
    assert http_receiver.receipts == []


async def test_attempts_failures_and_latency_are_counted(
    database: Database, http_receiver: HttpReceiver
) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"integration": "webhook", **labels}) or 0.0

    before = (
        sample("alerting_notifications_total"),
        sample("alerting_notifications_failed_total", reason="server_error"),
        sample("alerting_notification_latency_seconds_count"),
    )
    http_receiver.script("/hook", Reply(503))
    webhook = http_receiver.receiver("/hook")
    async with dispatching(database, webhook):
        [delivery_id] = await database.add_event(webhook)
        await database.until_status(delivery_id, DeliveryStatus.SENT)

    after = (
        sample("alerting_notifications_total"),
        sample("alerting_notifications_failed_total", reason="server_error"),
        sample("alerting_notification_latency_seconds_count"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]


async def test_a_repeated_error_is_logged_once_and_without_the_url_token(
    database: Database, http_receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    path = "/services/T0/B0/s3cr3t-t0ken"
    http_receiver.script(path, Reply(500), Reply(500), Reply(500))
    webhook = http_receiver.receiver(path)
    with caplog.at_level(logging.DEBUG):  # every logger, the HTTP client's included
        async with dispatching(database, webhook):
            [delivery_id] = await database.add_event(webhook)
            await database.until_status(delivery_id, DeliveryStatus.SENT)

    failures = [record for record in caplog.records if record.getMessage() == "delivery failed"]
    assert len(failures) == 1
    assert failures[0].delivery_id == delivery_id  # type: ignore[attr-defined]
    everything_logged = "\n".join(json.dumps(record.__dict__, default=str) for record in caplog.records)
    assert "s3cr3t-t0ken" not in everything_logged


@asynccontextmanager
async def connections_refused(database: Database) -> AsyncGenerator[None]:
    """A PostgreSQL outage that keeps the data: no connections taken, the open sessions ended."""
    name = make_url(database.settings.effective_database_url).database
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def sent_across_an_outage(
    database: Database,
    http_receiver: HttpReceiver,
    webhook: Receiver,
    tuning: DispatchTuning,
    during_outage: Callable[[], Awaitable[object]],
    first_status: int = 200,
) -> Delivery:
    """One delivery whose send (answered `first_status`, later ones 200) the receiver holds until the database
    goes down (`connections_refused`); `during_outage` runs before it comes back. The delivery once sent."""
    hang = threading.Event()
    http_receiver.script("/hook", Reply(first_status, hold=hang))
    try:
        async with dispatching(database, webhook, tuning=tuning):
            [delivery_id] = await database.add_event(webhook)
            await eventually(lambda: http_receiver.received("/hook"))
            async with connections_refused(database):
                hang.set()  # the send succeeds; recording it fails until the database is back
                await during_outage()
            await database.until_status(delivery_id, DeliveryStatus.SENT)
    finally:
        hang.set()
    return await database.delivery(delivery_id)


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_send_made_while_the_database_is_down_is_recorded_once_it_is_back_not_sent_again(
    database: Database, http_receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    webhook = http_receiver.receiver("/hook", timeout_seconds=1)
    with caplog.at_level(logging.ERROR, logger="alerting_service.dispatch"):
        delivery = await sent_across_an_outage(
            database,
            http_receiver,
            webhook,
            FAST,
            lambda: eventually(lambda: "could not record the outcomes" in caplog.text),
        )

    # Recorded from the first send: a dropped outcome would leave it to be sent again once its lease expired.
    assert delivery.attempts == 1
    assert len(http_receiver.received("/hook")) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_an_outcome_not_recorded_within_its_lease_is_given_up_and_its_delivery_sent_again(
    database: Database, http_receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Given up, an outcome the database refuses (or an outage longer than the lease) holds up no other.
    webhook = http_receiver.receiver("/hook", timeout_seconds=0.25)  # a send deadline of 1 s
    tuning = dataclasses.replace(FAST, lease_margin=timedelta(milliseconds=200))  # a lease of 1.2 s
    with caplog.at_level(logging.WARNING, logger="alerting_service.dispatch"):
        delivery = await sent_across_an_outage(
            database,
            http_receiver,
            webhook,
            tuning,
            lambda: asyncio.sleep(1.6),  # past the lease
        )

    assert delivery.attempts == 2
    assert "outcomes not recorded before their leases expired" in caplog.text


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_410_given_up_with_its_outcome_leaves_the_receiver_enabled_for_the_resend(
    database: Database, http_receiver: HttpReceiver
) -> None:
    # The disabling was never recorded: held back in this process alone, the receiver got nothing more.
    webhook = http_receiver.receiver("/hook", timeout_seconds=0.25)  # a send deadline of 1 s
    tuning = dataclasses.replace(FAST, lease_margin=timedelta(milliseconds=200))  # a lease of 1.2 s

    delivery = await sent_across_an_outage(
        database, http_receiver, webhook, tuning, lambda: asyncio.sleep(1.6), first_status=410
    )

    assert (delivery.attempts, len(http_receiver.received("/hook"))) == (2, 2)


async def test_an_smtp_reply_in_latin1_is_recorded_and_holds_up_no_other_outcome(
    database: Database, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    async def reject_in_latin1(server: object, session: object, envelope: object) -> bytes:  # ruff: ignore[unused-async]
        return b"554 5.7.1 Nachricht abgelehnt: ung\xfcltiger Absender"

    smtp_server.handler.handle_DATA = reject_in_latin1  # type: ignore[method-assign]
    email, webhook = smtp_server.receiver(), http_receiver.receiver("/hook")
    async with dispatching(database, email, webhook):
        email_id, webhook_id = await database.add_event(email, webhook)
        await database.until_status(email_id, DeliveryStatus.DEAD)
        await database.until_status(webhook_id, DeliveryStatus.SENT)

    # aiosmtplib decodes the reply with surrogateescape: stored as such, both databases refused the outcome.
    assert "ung\\udcfcltiger Absender" in ((await database.delivery(email_id)).last_error or "")


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_database_outage_logs_one_claim_failure_and_when_claims_work_again(
    database: Database, http_receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    webhook = http_receiver.receiver("/hook")
    with caplog.at_level(logging.INFO, logger="alerting_service.dispatch"):
        async with dispatching(database, webhook):
            async with connections_refused(database):
                await asyncio.sleep(6 * FAST.poll_interval)  # several polls, each claim failing
            [delivery_id] = await database.add_event(webhook)
            await database.until_status(delivery_id, DeliveryStatus.SENT)

    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("claiming due deliveries failed") == 1
    assert messages.count("claiming due deliveries works again") == 1


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
async def test_a_claim_failure_is_logged_with_what_the_database_said(
    database: Database, http_receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Not only the error's type: the operator reads why in the dispatcher's own line.
    with caplog.at_level(logging.ERROR, logger="alerting_service.dispatch"):
        async with dispatching(database, http_receiver.receiver("/hook")), connections_refused(database):
            await eventually(lambda: "claiming due deliveries failed" in caplog.text)

    [failed] = [r for r in caplog.records if r.getMessage() == "claiming due deliveries failed"]
    error_type, _, said = failed.error.partition(": ")
    assert error_type and said


def test_the_lease_outlasts_the_slowest_receivers_send_deadline(http_receiver: HttpReceiver) -> None:
    fast = http_receiver.receiver("/a", name="fast", timeout_seconds=1)
    slow = http_receiver.receiver("/b", name="slow", timeout_seconds=20)
    assert lease_for([fast, slow], margin=timedelta(0)) >= send_deadline(slow) > send_deadline(fast)
    assert send_deadline(slow) >= timedelta(seconds=20)


@asynccontextmanager
async def ingesting(
    database: Database, writer: Writer, config: AlertingConfig, dispatcher: Dispatcher
) -> AsyncGenerator[Ingestor]:
    ingestor = Ingestor(
        writer, database.sessions, config, batch_max=16, silence_refresh_seconds=60, handoff=dispatcher
    )
    await ingestor.start()
    try:
        yield ingestor
    finally:
        await ingestor.stop()


def task_failure(key: str) -> EventIn:
    body = {"idempotency_key": key, "type": "task_failure", "dag_id": "d", "task_id": key}
    return EventIn.model_validate(body, strict=False)


async def deliveries_of(database: Database, event_id: str) -> list[Delivery]:
    async with database.sessions() as session:
        return list(await session.scalars(select(Delivery).where(Delivery.event_id == event_id)))


async def test_ingest_hands_a_new_delivery_to_the_idle_dispatcher_without_a_claim(
    database: Database, http_receiver: HttpReceiver
) -> None:
    webhook = http_receiver.receiver("/hook")
    config = AlertingConfig.model_validate(service_routing(webhook))
    async with (
        database.writer() as writer,
        running(Dispatcher(writer, config, DispatchTuning(poll_interval=3600))) as dispatcher,
        ingesting(database, writer, config, dispatcher) as ingestor,
    ):
        await eventually(lambda: dispatcher.caught_up)  # its first claim found nothing due
        accepted = await ingestor.submit(task_failure("fresh"))
        [delivery] = await deliveries_of(database, accepted.id)
        await database.until_status(delivery.id, DeliveryStatus.SENT)

    sent = await database.delivery(delivery.id)
    # Created in flight, its one attempt starting as it was written: no claim ever picked it up.
    assert (sent.attempts, sent.last_attempt_at) == (1, sent.created_at)
