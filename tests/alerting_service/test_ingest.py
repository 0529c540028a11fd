"""The group-commit ingestor itself: events that land in one batch are decided in arrival order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from alerting_service.config import AlertingConfig
from alerting_service.ingest import Accepted, IdempotencyConflict, Ingestor, NoHandoff
from alerting_service.metrics import REGISTRY
from alerting_service.models import Event
from alerting_service.schemas import EventIn
from tests.alerting_service.delivery_fixtures import Database


@pytest.fixture
async def ingestor(database: Database) -> AsyncGenerator[Ingestor]:
    async with database.writer() as writer:
        ingestor = Ingestor(
            writer,
            database.sessions,
            AlertingConfig(),
            batch_max=64,
            silence_refresh_seconds=60,
            handoff=NoHandoff(),
        )
        await ingestor.start()
        yield ingestor
        await ingestor.stop()


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
