"""The API's request and response models, separate from the ORM, with explicit converters from rows."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from alerting_service.labels import (
    EVENT_FIELD_LABELS,
    KNOWN_VALUES,
    LABEL_NAME_PATTERN,
    LABEL_PREFIX,
    is_match_key,
    unknown_value,
)
from alerting_service.models import (
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Event,
    EventType,
    Integration,
    Severity,
    Silence,
)
from alerting_service.silences import SilenceState, compile_pattern, silence_state

DEFAULT_SEVERITY = {
    EventType.TASK_FAILURE: Severity.ERROR,
    EventType.TASK_RETRY: Severity.WARNING,
    EventType.TASK_SUCCESS: Severity.INFO,
    EventType.DAG_RUN_FAILURE: Severity.CRITICAL,
    EventType.DAG_RUN_SUCCESS: Severity.INFO,
    EventType.DEADLINE_MISSED: Severity.CRITICAL,
}
# A number written as text: pydantic reads one given for a date-time as Unix time.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refusing it here keeps both databases accepting the same input.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_unix_time(value: object) -> object:
    """Refuse a number, or text that is one: pydantic would read it as Unix time (`until=0.5` was 1970), and a
    millisecond timestamp by a guess; the contract is ISO 8601 with a zone."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        raise ValueError("must be an ISO 8601 date-time with a zone, e.g. 2026-01-15T02:00:00Z, not a number")
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


# A length constraint goes before NO_NUL: after a validator pydantic checks it as a generic length ("at most
# 250 items after validation"), before it as a string's ("at most 250 characters").
NO_NUL = AfterValidator(_no_nul)
Text = Annotated[str, NO_NUL]
# PostgreSQL refuses a btree index entry over 2,704 bytes, and an event's dag, run and task ids together make
# its indexed fingerprint: 750 bytes each keeps it under, and any Airflow id of 250 characters of up to three
# UTF-8 bytes fits.
AIRFLOW_ID_MAX_BYTES = 750


def _fits_the_index(value: str) -> str:
    if len(value.encode("utf-8")) > AIRFLOW_ID_MAX_BYTES:
        raise ValueError(f"at most {AIRFLOW_ID_MAX_BYTES} bytes in UTF-8")
    return value


AirflowId = Annotated[str, Field(min_length=1, max_length=250), NO_NUL, AfterValidator(_fits_the_index)]
# Airflow's own grammar for DAG and task ids (KEY_REGEX in airflow.sdk): letters, digits, '_', '.' and '-'.
# An id outside it comes from no Airflow, and these ids land in email subjects, where `=?utf-8?q?...?=` would
# be decoded by the email library and mail readers as header text (a forged subject, even header lines).
_AIRFLOW_KEY = re.compile(r"[\w.-]+")


def _is_airflow_key(value: str) -> str:
    if not _AIRFLOW_KEY.fullmatch(value):
        raise ValueError("must be an Airflow id: letters, digits, '_', '.' and '-' only")
    return value


AirflowKey = Annotated[
    str,
    # Described, not a JSON Schema pattern: there `\w` is ASCII only, and would refuse ids Airflow takes.
    Field(min_length=1, max_length=250, description="Letters of any script, digits, '_', '.' and '-'."),
    AfterValidator(_is_airflow_key),
    AfterValidator(_fits_the_index),
]


def _link_to_its_host(url: str) -> str:
    """A log URL whose host is the one a reader sees: no user name or password before it."""
    if any(character.isspace() or not character.isprintable() for character in url):
        # urlsplit drops tabs and line breaks before parsing: the URL checked would not be the one stored.
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # reading the port raises ValueError for a bad one
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if not host:
        raise ValueError("has no host")
    if "@" in parts.netloc:
        # https://airflow.bank.example@evil.example/ reads as the first host and leads to the second.
        raise ValueError("must not carry a user name or password before its host")
    return url


LogUrl = Annotated[
    str, Field(max_length=2048, pattern=r"^https?://"), NO_NUL, AfterValidator(_link_to_its_host)
]
# The integer columns are SQL INTEGER: 32 bits on PostgreSQL.
INT32_MAX = 2**31 - 1
# Strict(False): past a before-validator the text reaches the date-time parser as a Python str, which strict
# models refuse; parsed the same way as JSON text, numbers having been refused before.
UTCTimestamp = Annotated[AwareDatetime, Strict(False), BeforeValidator(_not_unix_time), AfterValidator(_utc)]
LabelName = Annotated[str, Field(pattern=LABEL_NAME_PATTERN)]
LabelValue = Annotated[str, Field(max_length=1024), NO_NUL]
MAX_LABELS = 64


class EventIn(BaseModel):
    """An Airflow callback, as the notifier posts it. Only idempotency_key, type and dag_id are required."""

    model_config = ConfigDict(extra="forbid", strict=True)

    idempotency_key: Annotated[str, Field(min_length=1, max_length=512), NO_NUL]
    type: EventType
    severity: Severity | None = Field(default=None, description="Defaults by type (failures error or worse).")
    dag_id: AirflowKey
    task_id: AirflowKey | None = None
    run_id: AirflowId | None = None
    map_index: int = Field(default=-1, ge=-1, le=INT32_MAX)
    try_number: int | None = Field(default=None, ge=0, le=INT32_MAX)
    max_tries: int | None = Field(default=None, ge=0, le=INT32_MAX)
    logical_date: UTCTimestamp | None = None
    occurred_at: UTCTimestamp | None = Field(
        default=None, description="Defaults to the time it was received."
    )
    exception: Annotated[str, Field(max_length=32768), NO_NUL] | None = None
    log_url: LogUrl | None = None
    next_retry_at: UTCTimestamp | None = None
    labels: dict[LabelName, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)

    @field_validator("labels")
    @classmethod
    def _labels_in_name_order(cls, labels: dict[str, str]) -> dict[str, str]:
        # A fixed order makes the serialised event canonical (see body_hash).
        return dict(sorted(labels.items()))

    @property
    def effective_severity(self) -> Severity:
        return self.severity or DEFAULT_SEVERITY[self.type]

    def body_hash(self) -> str:
        """sha256 of the canonical body: a re-sent callback matches whatever its key order, whitespace or
        time-zone notation. Fields serialise in declaration order and labels are sorted by name."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class IngestAccepted(BaseModel):
    id: str = Field(description="The event id; the same for every repetition of an idempotency key.")
    duplicate: bool = Field(description="True when the key was already stored with the same body.")


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]]


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    receiver: str
    integration: Integration
    kind: DeliveryKind
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    sent_at: datetime | None
    last_error: str | None
    reason: str | None


class EventOut(BaseModel):
    id: str
    idempotency_key: str
    type: EventType
    severity: Severity
    dag_id: str
    task_id: str | None
    run_id: str | None
    map_index: int
    try_number: int | None
    max_tries: int | None
    logical_date: datetime | None
    occurred_at: datetime
    received_at: datetime
    exception: str | None
    log_url: str | None
    next_retry_at: datetime | None
    labels: dict[str, str]
    fingerprint: str
    muted_by: str | None
    resolved_by: str | None


class EventDetail(EventOut):
    deliveries: list[DeliveryOut]


class EventList(BaseModel):
    data: list[EventOut]
    count: int = Field(description="How many events match the filters, regardless of limit and offset.")


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    count: int


class ReceiverOut(BaseModel):
    name: str
    integration: Integration
    destination: str = Field(
        description="Where it sends: a webhook URL as scheme://host/<redacted> (URLs carry tokens), or the "
        "email smarthost as host:port."
    )
    disabled_at: datetime | None = Field(
        description="When the dispatcher disabled it (a 410 Gone); else null."
    )
    disabled_reason: str | None
    unsent: dict[DeliveryStatus, int] = Field(
        description="Its deliveries not sent, by status (waiting, pending, in_flight, dead); sent ones are "
        "not counted."
    )


class ReceiverList(BaseModel):
    data: list[ReceiverOut]


class ReceiverEnabled(BaseModel):
    name: str
    was_disabled: bool


class DeadLettersReplayed(BaseModel):
    name: str
    replayed: int = Field(
        description="How many dead deliveries were revived: back to pending, or to waiting for a resolved "
        "notice revived behind its alert's replayed firing notice."
    )


class MatcherIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=140), NO_NUL] = Field(
        description="dag_id, task_id, type, severity or labels.<name>"
    )
    value: Annotated[str, Field(min_length=1, max_length=1024), NO_NUL]
    regex: bool = Field(default=False, description="Full-match regular expression instead of equality.")

    # A check of what is created, not of what is shown (MatcherOut): a stored silence stays readable.
    @model_validator(mode="after")
    def _can_match_an_event(self) -> MatcherIn:
        """Refuses a matcher no event meets: its silence would be reported active while it mutes nothing."""
        if not is_match_key(self.name):
            if self.name.startswith(LABEL_PREFIX) and self.name != LABEL_PREFIX:
                raise ValueError(
                    "name: a label name is letters, digits and _, and does not start with a digit"
                )
            raise ValueError(f"name must be one of {', '.join(EVENT_FIELD_LABELS)} or labels.<name>")
        if self.regex:
            try:
                compile_pattern(self.value)
            except ValueError as error:
                raise ValueError(f"value is {error}") from None
        elif unknown_value(self.name, [self.value]) is not None:
            known = ", ".join(KNOWN_VALUES[self.name])
            raise ValueError(f"value: an event's {self.name} is one of {known} (or set regex)")
        return self


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    matchers: list[MatcherIn] = Field(min_length=1, max_length=32)
    starts_at: UTCTimestamp | None = Field(default=None, description="Defaults to now.")
    ends_at: UTCTimestamp
    comment: Annotated[str, Field(max_length=4096), NO_NUL] = ""

    @model_validator(mode="after")
    def _ends_after_start(self) -> SilenceIn:
        if self.starts_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class MatcherOut(BaseModel):
    """A stored matcher as it is, unchecked: one stored before a check was added (a regex RE2 refuses, which
    mutes nothing) must still be shown, or the whole list fails and the silence cannot be found to expire."""

    name: str
    value: str
    regex: bool = False


class SilenceOut(BaseModel):
    id: str
    matchers: list[MatcherOut]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime
    expired_at: datetime | None
    state: SilenceState


class SilenceList(BaseModel):
    data: list[SilenceOut]
    count: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    database: bool = Field(description="The database answers a query.")
    writer: bool = Field(
        description="The database writer is not stuck: its transaction in hand, if any, has run for less "
        "than ALERTING_WRITER_STALL_SECONDS."
    )
    ingest: bool = Field(
        description="Events are stored: false for 30 s after a batch of events failed to be (a database that "
        "answers reads but refuses writes, e.g. read-only after a failover or a full disk)."
    )


# --- converters -------------------------------------------------------------------------------------------


def delivery_out(delivery: Delivery) -> DeliveryOut:
    return DeliveryOut.model_validate(delivery, from_attributes=True)


def event_out(event: Event) -> EventOut:
    return EventOut.model_validate(event, from_attributes=True)


def event_detail(event: Event) -> EventDetail:
    return EventDetail(
        **event_out(event).model_dump(), deliveries=[delivery_out(item) for item in event.deliveries]
    )


def silence_out(silence: Silence, now: datetime) -> SilenceOut:
    return SilenceOut(
        id=silence.id,
        matchers=[MatcherOut.model_validate(matcher) for matcher in silence.matchers],
        starts_at=silence.starts_at,
        ends_at=silence.ends_at,
        created_by=silence.created_by,
        comment=silence.comment,
        created_at=silence.created_at,
        expired_at=silence.expired_at,
        state=silence_state(
            starts_at=silence.starts_at, ends_at=silence.ends_at, expired_at=silence.expired_at, now=now
        ),
    )
