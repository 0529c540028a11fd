"""What one delivery sends, the narrow contract every integration satisfies, and how a reply is judged.

An integration decides at the point of failure whether retrying can help (like Alertmanager's notifiers); the
dispatcher owns backoff, state and metrics. Failures travel as `DeliveryError`, whose `reason` is the `reason`
label of `alerting_notifications_failed_total` and the `reason` column of a dead delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from alerting_service.models import DeliveryKind

if TYPE_CHECKING:
    from alerting_service.config import EmailReceiver, WebhookReceiver


# The label the pipeline's notifier gives task and run events: the date the run processes (docs/alerts.md).
BUSINESS_DATE_LABEL = "business_date"


class Reason(StrEnum):
    """Why a delivery failed or was given up."""

    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    AUTH = "auth"
    REDIRECT = "redirect"
    INVALID_RECIPIENT = "invalid_recipient"
    FORBIDDEN_DESTINATION = "forbidden_destination"
    DESTINATION_DISABLED = "destination_disabled"
    UNKNOWN_RECEIVER = "unknown_receiver"
    HORIZON_EXCEEDED = "horizon_exceeded"
    INTERNAL_ERROR = "internal_error"


def _storable(text: str) -> str:
    """Text both databases store: a reply decoded with surrogateescape (an SMTP server answering in
    Latin-1) or holding NUL is refused by PostgreSQL and SQLite alike, and its outcome's transaction too."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


class DeliveryError(Exception):
    """A failed send. `retry_after` (seconds) is the destination's own request, e.g. a 429's Retry-After."""

    def __init__(
        self, reason: Reason, *, retryable: bool, message: str, retry_after: float | None = None
    ) -> None:
        message = _storable(message)
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.message = message

    def about(self, destination: str) -> DeliveryError:
        """The same error, its message prefixed with the (redacted) destination it concerns."""
        return DeliveryError(
            self.reason,
            retryable=self.retryable,
            message=f"{destination}: {self.message}",
            retry_after=self.retry_after,
        )

    @property
    def disables_receiver(self) -> bool:
        return self.reason is Reason.DESTINATION_DISABLED


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """The event fields a notification shows; a plain snapshot so notifiers never touch the database."""

    id: str
    type: str
    dag_id: str
    received_at: datetime
    severity: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None
    max_tries: int | None = None
    logical_date: datetime | None = None
    occurred_at: datetime | None = None
    exception: str | None = None
    log_url: str | None = None
    next_retry_at: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    # The alert's key (resolution.py), shared by a task's or run's firing and resolved notices.
    fingerprint: str | None = None

    @property
    def tries(self) -> str | None:
        """`try 2 of 4`. A failure before its last try says so: a retry policy failed it at once (invalid
        input, bad configuration), and "try 1 of 4" alone reads as if three more were coming."""
        if not self.try_number:
            return None
        text = f"try {self.try_number} of {self.max_tries}" if self.max_tries else f"try {self.try_number}"
        if self.type == "task_failure" and self.max_tries and self.try_number < self.max_tries:
            text += ", not retried"
        return text

    @property
    def day(self) -> str | None:
        """`for 2026-01-14`: the business date the run processes (its `business_date` label), else
        `logical date 2026-01-15T02:00:00Z`. Without it a re-run of an old date, or the dead man's switch's
        missed day beside a run's missed deadline, read alike. A label that is no date stays a label."""
        label = self.labels.get(BUSINESS_DATE_LABEL)
        if label is not None:
            try:
                return f"for {date.fromisoformat(label).isoformat()}"
            except ValueError:
                pass
        return f"logical date {iso_utc(self.logical_date)}" if self.logical_date is not None else None

    def as_json(self) -> dict[str, Any]:
        """The event as JSON-ready values (datetimes in ISO 8601 UTC)."""
        return {
            "id": self.id,
            "type": self.type,
            "severity": self.severity,
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "map_index": self.map_index,
            "try_number": self.try_number,
            "max_tries": self.max_tries,
            "logical_date": _iso(self.logical_date),
            "occurred_at": _iso(self.occurred_at),
            "received_at": _iso(self.received_at),
            "exception": self.exception,
            "log_url": self.log_url,
            "next_retry_at": _iso(self.next_retry_at),
            "labels": dict(self.labels),
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True, slots=True)
class Notification:
    """One delivery: which event, firing or resolved, to which receiver, under which stable message id."""

    delivery_id: str
    webhook_id: str
    kind: DeliveryKind
    event: AlertEvent
    receiver: EmailReceiver | WebhookReceiver
    # A resolved notice's: the fingerprints of the alerts it closes (a run's success may close a `dag:` one).
    resolves: tuple[str, ...] = ()


class Notifier(Protocol):
    async def send(self, notification: Notification) -> None:
        """Deliver the notification, or raise `DeliveryError`."""
        ...


def classify_http_status(
    status: int, headers: Mapping[str, str], now: datetime | None = None
) -> DeliveryError | None:
    """None for a 2xx; otherwise the error, retryable or not, this reply means (Alertmanager/Svix rules)."""
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return DeliveryError(
            Reason.REDIRECT, retryable=False, message=f"HTTP {status}: redirects are not followed"
        )
    if status == 410:
        return DeliveryError(
            Reason.DESTINATION_DISABLED, retryable=False, message="HTTP 410: destination is gone"
        )
    if status in (429, 503):
        reason = Reason.RATE_LIMITED if status == 429 else Reason.SERVER_ERROR
        retry_after = parse_retry_after(headers.get("retry-after"), now or datetime.now(UTC))
        return DeliveryError(reason, retryable=True, message=f"HTTP {status}", retry_after=retry_after)
    if status == 408:
        return DeliveryError(Reason.TIMEOUT, retryable=True, message="HTTP 408")
    if status >= 500:
        return DeliveryError(Reason.SERVER_ERROR, retryable=True, message=f"HTTP {status}")
    if status in (401, 403):
        return DeliveryError(Reason.AUTH, retryable=False, message=f"HTTP {status}")
    return DeliveryError(Reason.CLIENT_ERROR, retryable=False, message=f"HTTP {status}")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None if absent or invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also takes digits like "²", which float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; obsolete forms may parse as naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, as the webhook JSON and the templates show instants."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _iso(value: datetime | None) -> str | None:
    return iso_utc(value) if value is not None else None
