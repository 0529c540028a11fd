"""The database schema: events, the delivery outbox, receiver state and silences.

Timestamps are stored timezone-aware and always come back as UTC (SQLite keeps no zone, so `UTCDateTime`
re-attaches it). Enumerations are stored as plain strings so both databases share one schema.
"""

from __future__ import annotations

import enum
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class EventType(enum.StrEnum):
    TASK_FAILURE = "task_failure"
    TASK_RETRY = "task_retry"
    TASK_SUCCESS = "task_success"
    DAG_RUN_FAILURE = "dag_run_failure"
    DAG_RUN_SUCCESS = "dag_run_success"
    DEADLINE_MISSED = "deadline_missed"


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Integration(enum.StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


class DeliveryKind(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class DeliveryStatus(enum.StrEnum):
    # A resolved notice whose alert's firing notice to the same receiver is not sent nor dead yet: it must not
    # arrive first. Released (to pending) when that firing notice settles.
    WAITING = "waiting"
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    DEAD = "dead"


# Still to be sent: retention never deletes an event with one of these.
UNFINISHED_STATUSES = (DeliveryStatus.WAITING, DeliveryStatus.PENDING, DeliveryStatus.IN_FLIGHT)
# Sent or given up: nothing more will happen to it unless an admin replays it.
SETTLED_STATUSES = (DeliveryStatus.SENT, DeliveryStatus.DEAD)


def new_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so new rows append to the primary-key indexes instead of dirtying
    pages all over them. Under an alert storm that keeps each group commit small (fewer pages to sync)."""
    milliseconds = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")
    rand_a, rand_b = (random_bits >> 62) & 0xFFF, random_bits & ((1 << 62) - 1)
    return str(uuid.UUID(int=(milliseconds << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b))


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that is normalised to UTC on the way in and out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: the schema stores UTC instants")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime, dict[str, str]: JSON}


class Event(Base):
    """One accepted Airflow callback, kept whether or not it was delivered."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(512), unique=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    dag_id: Mapped[str] = mapped_column(String(250))
    task_id: Mapped[str | None] = mapped_column(String(250))
    run_id: Mapped[str | None] = mapped_column(String(250))
    map_index: Mapped[int] = mapped_column(Integer, default=-1)
    try_number: Mapped[int | None] = mapped_column(Integer)
    max_tries: Mapped[int | None] = mapped_column(Integer)
    logical_date: Mapped[datetime | None]
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    exception: Mapped[str | None] = mapped_column(Text)
    log_url: Mapped[str | None] = mapped_column(Text)
    next_retry_at: Mapped[datetime | None]
    labels: Mapped[dict[str, str]]
    # The open-alert key this event opens (failures) or closes (successes); see resolution.py.
    fingerprint: Mapped[str] = mapped_column(String(1024))
    muted_by: Mapped[str | None] = mapped_column(String(36))
    resolved_by: Mapped[str | None] = mapped_column(String(36))

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="event", order_by="Delivery.created_at")

    __table_args__ = (
        Index("ix_events_received_at", "received_at"),
        Index("ix_events_dag_id_received_at", "dag_id", "received_at"),
        Index("ix_events_open_fingerprint", "fingerprint", "resolved_by"),
        # The alerts a success closed, for its resolved notices to wait for their firing ones (partial: most
        # events are never resolved, and an index of NULLs would only cost every ingest a write).
        Index(
            "ix_events_resolved_by",
            "resolved_by",
            sqlite_where=text("resolved_by IS NOT NULL"),
            postgresql_where=text("resolved_by IS NOT NULL"),
        ),
    )


class Delivery(Base):
    """The outbox: one notification of one event to one receiver, and the log of what happened to it."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id"))
    receiver: Mapped[str] = mapped_column(String(128))
    integration: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    # The retry horizon counts from here: the creation, or the last replay by an admin.
    horizon_starts_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(String(32))
    # Standard Webhooks `webhook-id`: fixed at creation so every retry carries the same id.
    webhook_id: Mapped[str] = mapped_column(String(64))

    event: Mapped[Event] = relationship(back_populates="deliveries")

    __table_args__ = (
        Index("ix_deliveries_status_receiver_next_attempt_at", "status", "receiver", "next_attempt_at"),
        Index("ix_deliveries_event_id", "event_id"),
    )


class ReceiverState(Base):
    """A receiver disabled at run time (a webhook answered 410 Gone) until an admin re-enables it."""

    __tablename__ = "receivers_state"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class ExpectationWatch(Base):
    """When the service first watched a DAG's expectation (expectations.py): a deadline is judged once the
    whole of its window falls after it."""

    __tablename__ = "expectation_watches"

    dag_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    watched_since: Mapped[datetime]


class Silence(Base):
    """Mutes the events whose labels match every matcher while starts_at <= now < ends_at."""

    __tablename__ = "silences"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    matchers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    expired_at: Mapped[datetime | None]
