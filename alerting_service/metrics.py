"""Every Prometheus metric of the service, in one registry, with its label values pre-initialised.

Named like Alertmanager's (`alertmanager_notifications_total` -> `alerting_notifications_total`) so existing
dashboards and alert rules carry over. The delivery-queue gauges are set from the database at scrape time
(`record_queue_stats`), so they are right even when the dispatcher runs in another process.

`serve --processes N` (cli.py) starts its processes with `PROMETHEUS_MULTIPROC_DIR` set: each process then
writes its samples to files there, and `/metrics`, whichever process answers, sums the counters and
histograms of all of them; the queue gauges give the most recent value any process read from the database.
The process_*, python_* and gc metrics are left out in that mode: they would describe only the process that
answered. A `PROMETHEUS_MULTIPROC_DIR` set by hand puts even one process in that mode, and clearing its files
between runs is then the operator's task (Prometheus' own rule for that directory).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from alerting_service.models import DeliveryStatus, EventType, Integration
from alerting_service.notify.base import Reason

# prometheus_client reads the same variable when it is imported, to choose where samples are kept.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = MULTIPROCESS_DIR_VARIABLE in os.environ

REGISTRY = CollectorRegistry()
if MULTIPROCESS:
    EXPOSED = CollectorRegistry()
    multiprocess.MultiProcessCollector(EXPOSED)
else:
    EXPOSED = REGISTRY
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)
    GCCollector(registry=REGISTRY)

# Alertmanager's latency buckets stop at 20 s; a webhook may take its full timeout and an email relay longer.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

events_received_total = Counter(
    "alerting_events_received_total",
    "Events accepted and stored (duplicates of an idempotency key not counted).",
    ["type"],
    registry=REGISTRY,
)
events_muted_total = Counter(
    "alerting_events_muted_total",
    "Accepted events that a silence muted: stored, not delivered.",
    ["type"],
    registry=REGISTRY,
)
events_pruned_total = Counter(
    "alerting_events_pruned_total",
    "Events deleted, with their deliveries, for being older than the retention (ALERTING_RETENTION).",
    registry=REGISTRY,
)
ingest_batch_size = Histogram(
    "alerting_ingest_batch_size",
    "Events written by one group-commit transaction.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
    registry=REGISTRY,
)
notifications_total = Counter(
    "alerting_notifications_total",
    "Delivery attempts, successful or not.",
    ["integration"],
    registry=REGISTRY,
)
notifications_failed_total = Counter(
    "alerting_notifications_failed_total",
    "Failed delivery attempts, by why they failed.",
    ["integration", "reason"],
    registry=REGISTRY,
)
notification_latency_seconds = Histogram(
    "alerting_notification_latency_seconds",
    "Seconds from the event's received_at to the recording of a successful send of one of its deliveries "
    "(queueing and retries included).",
    ["integration"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
delivery_queue_depth = Gauge(
    "alerting_delivery_queue_depth",
    "Deliveries in each state (read from the database at scrape time).",
    ["status"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
oldest_pending_delivery_age_seconds = Gauge(
    "alerting_oldest_pending_delivery_age_seconds",
    "Seconds since the oldest delivery not yet sent nor dead was created, released or replayed (0: none).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)


def _initialise_labels() -> None:
    """Export every series from the start, so rate() and absent() work before the first event."""
    for event_type in EventType:
        events_received_total.labels(type=event_type.value)
        events_muted_total.labels(type=event_type.value)
    for integration in Integration:
        notifications_total.labels(integration=integration.value)
        notification_latency_seconds.labels(integration=integration.value)
        for reason in Reason:
            notifications_failed_total.labels(integration=integration.value, reason=reason.value)
    for status in DeliveryStatus:
        delivery_queue_depth.labels(status=status.value)


_initialise_labels()


def record_queue_stats(
    depth: dict[DeliveryStatus, int], oldest_unfinished_since: datetime | None, now: datetime
) -> None:
    for status, count in depth.items():
        delivery_queue_depth.labels(status=status.value).set(count)
    age = (now - oldest_unfinished_since).total_seconds() if oldest_unfinished_since else 0.0
    oldest_pending_delivery_age_seconds.set(max(age, 0.0))


def exposition() -> tuple[bytes, str]:
    """The Prometheus text format of every metric, and its content type."""
    return generate_latest(EXPOSED), CONTENT_TYPE_LATEST


def serve_worker_metrics(host: str, port: int) -> Callable[[], None]:
    """A `worker`'s own metrics (its sends, their failures and latency, its process) over HTTP, from a thread
    of prometheus_client's; without the queue gauges, which only `serve` reads from the database (a worker
    would show zeros). Raises OSError if the address cannot be bound; returns what stops the server."""
    for queue_gauge in (delivery_queue_depth, oldest_pending_delivery_age_seconds):
        REGISTRY.unregister(queue_gauge)
    server, thread = start_http_server(port, host, registry=EXPOSED)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
