"""Liveness, readiness and metrics: no authentication, so probes and scrapers need no key."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Response

from alerting_service import metrics
from alerting_service.api.deps import ServicesDep
from alerting_service.db import is_reachable
from alerting_service.schemas import Health, Readiness
from alerting_service.store import deliveries as delivery_store

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "The database is unreachable, its writer is stuck, events could not be stored "
            "lately, or ingest is stopped.",
        }
    },
    summary="Ready to accept events",
)
async def readyz(services: ServicesDep, response: Response) -> Readiness:
    database = await is_reachable(services.engine)
    stalled_for = services.writer.stalled_for()
    if stalled_for is not None:
        log.warning(
            "the database writer has been on one transaction for %.0f s: another process holds a lock it "
            "waits for (the SQLite writer lock, or a PostgreSQL lock)",
            stalled_for,
        )
    storing = services.ingestor.is_storing and services.writer.moved_database_file() is None
    ready = database and stalled_for is None and storing and services.ingestor.is_running
    if not ready:
        response.status_code = 503
    return Readiness(
        status="ready" if ready else "unavailable",
        database=database,
        writer=stalled_for is None,
        ingest=storing,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    summary="Prometheus metrics",
)
async def prometheus_metrics(services: ServicesDep) -> Response:
    try:
        async with services.sessions() as session:
            stats = await delivery_store.queue_stats(session)
    except Exception:
        # The other metrics are still worth scraping; /readyz reports the database itself.
        log.warning("queue gauges not refreshed: database unavailable", exc_info=True)
    else:
        metrics.record_queue_stats(stats.depth, stats.oldest_unfinished_since, datetime.now(UTC))
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
