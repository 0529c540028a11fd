"""The group-commit ingestor itself: events that land in one batch are decided in arrival order."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from alerting_service.config import AlertingConfig, parse_alerting_config
from alerting_service.ingest import Accepted, Ingestor, NoHandoff
from alerting_service.metrics import REGISTRY
from alerting_service.models import Delivery, DeliveryKind, Event
from alerting_service.schemas import EventIn
from alerting_service.store import events as event_store
from alerting_service.store.events import IdempotencyConflict
from tests.alerting_service.delivery_fixtures import Database, new_whsec


@pytest.fixture
async def ingestor(database: Database) -> AsyncGenerator[Ingestor]:
    async with running_ingestor(database, AlertingConfig()) as ingestor:
        yield ingestor


def event(key: str, event_type: str, **fields: Any) -> EventIn:
    body = {"idempotency_key": key, "type": event_type, "dag_id": "d", "run_id": "r", "task_id": "t"} | fields
    return EventIn.model_validate(body, strict=False)


def batches_written() -> float:
    return REGISTRY.get_sample_value("alerting_ingest_batch_size_count") or 0.0


async def in_one_batch(ingestor: Ingestor, *events: EventIn) -> list[Accepted | BaseException]:
    """Submit all before the writer runs, so they are written by one transaction."""
    batches_before = batches_written()
    submitted = [asyncio.ensure_future(ingestor.submit(item)) for item in events]
    outcomes = await asyncio.gather(*submitted, return_exceptions=True)
    assert batches_written() - batches_before == 1
    return outcomes


async def test_a_success_resolves_a_failure_written_in_the_same_batch(
    ingestor: Ingestor, database: Database
) -> None:
    failure, success = await in_one_batch(ingestor, event("f", "task_failure"), event("s", "task_success"))

    async with database.sessions() as session:
        stored = await session.get(Event, failure.id)
    assert stored is not None and stored.resolved_by == success.id


async def test_a_success_before_the_failure_in_the_same_batch_resolves_nothing(
    ingestor: Ingestor, database: Database
) -> None:
    _success, failure = await in_one_batch(ingestor, event("s", "task_success"), event("f", "task_failure"))

    async with database.sessions() as session:
        stored = await session.get(Event, failure.id)
    assert stored is not None and stored.resolved_by is None


async def test_a_key_repeated_in_the_same_batch_is_a_duplicate_or_a_conflict(ingestor: Ingestor) -> None:
    first, same, other = await in_one_batch(
        ingestor,
        event("k", "task_failure"),
        event("k", "task_failure"),
        event("k", "task_failure", try_number=2),
    )

    assert same == Accepted(first.id, duplicate=True)
    assert isinstance(other, IdempotencyConflict)


async def test_two_processes_closing_the_same_alert_at_once_send_its_resolved_notice_once(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow read of the open alerts widens the window that two concurrent transactions have anyway.
    def slow_open_alerts(connection: Connection, fingerprints: Any) -> list[event_store.OpenAlert]:
        alerts = read_open_alerts(connection, fingerprints)
        if alerts:
            time.sleep(0.3)
        return alerts

    read_open_alerts = event_store.open_alerts
    monkeypatch.setattr(event_store, "open_alerts", slow_open_alerts)
    config = parse_alerting_config(
        f"""
receivers:
  - name: hook
    webhook: {{url: "http://127.0.0.1:9/hook", secrets: ["{new_whsec()}"]}}
route:
  receivers: []
  routes: [{{match: {{type: deadline_missed}}, receivers: [hook]}}]
""",
        "test",
    )
    async with contextlib.AsyncExitStack() as stack:
        # Each process of `serve --processes 2` has its own writer and ingestor.
        first, second = [
            await stack.enter_async_context(running_ingestor(database, config)) for _ in range(2)
        ]
        await first.submit(event("missed", "deadline_missed", dag_id="X", run_id=None, task_id=None))
        await asyncio.gather(
            first.submit(event("ok-1", "dag_run_success", dag_id="X", run_id="r1", task_id=None)),
            second.submit(event("ok-2", "dag_run_success", dag_id="X", run_id="r2", task_id=None)),
        )

    async with database.sessions() as session:
        resolved_notices = await session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.kind == DeliveryKind.RESOLVED)
        )
    assert resolved_notices == 1


@contextlib.asynccontextmanager
async def running_ingestor(database: Database, config: AlertingConfig) -> AsyncGenerator[Ingestor]:
    async with database.writer() as writer:
        ingestor = Ingestor(
            writer, database.sessions, config, batch_max=64, silence_refresh_seconds=60, handoff=NoHandoff()
        )
        await ingestor.start()
        try:
            yield ingestor
        finally:
            await ingestor.stop()
