"""Every setting of the service, typed and validated at start.

Two parts:
- `Settings`: the process environment (prefix `ALERTING_`); a secret may instead come from the file named by
  `ALERTING_<NAME>_FILE`.
- `AlertingConfig`: the YAML file named by `ALERTING_CONFIG_FILE`: receivers (email | webhook), the route
  tree and the retry policy. Without a file, or without a `route` in it, `default_route()` applies.

A bad setting raises `ConfigError` whose message names the key (`route.routes[1].receivers: unknown receiver
'pager'`, `ALERTING_MAX_BODY_BYTES: ...`) and never the value, so no secret reaches a log.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import make_url

from alerting_service.expectations import Expectations
from alerting_service.labels import EVENT_FIELD_LABELS, is_match_key, unknown_value
from alerting_service.models import EventType, Integration

ENV_PREFIX = "ALERTING_"
# The variables Kubernetes gives every pod for each Service of its namespace: a Service named `alerting` or
# `alerting-service` gives ALERTING_SERVICE_SERVICE_HOST, ALERTING_SERVICE_PORT,
# ALERTING_SERVICE_PORT_9095_TCP_ADDR... They are not settings, and the service must start beside them.
_SERVICE_LINK_VARIABLE = re.compile(
    r"^ALERTING(?:_[A-Z0-9_]+?)?_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT_\d+_(?:TCP|UDP|SCTP)"
    r"(?:_(?:PROTO|PORT|ADDR))?)$"
)
_SERVICE_LINK_PORT_VARIABLE = re.compile(r"^ALERTING(?:_[A-Z0-9_]+?)?_PORT$")
_SERVICE_LINK_PORT_VALUE = re.compile(r"^(?:tcp|udp|sctp)://")
FAILURE_TYPES = (EventType.TASK_FAILURE, EventType.DAG_RUN_FAILURE, EventType.DEADLINE_MISSED)
DEFAULT_INGEST_QUEUE_MAX = 10_000
MINIMUM_RETENTION = timedelta(days=2)
# A day's check runs once its deadline has passed, at the latest a day later (expectations.py).
EXPECTATION_CHECK_LATENESS = timedelta(days=1)
MAXIMUM_RETENTION = timedelta(days=36500)
MAXIMUM_RETRY_HORIZON = timedelta(days=30)


class ConfigError(Exception):
    """The configuration cannot be used; the message names every offending key."""


# --- shared field types -----------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: Any) -> Any:
    """Alertmanager-style durations ("5s", "2h", "1h30m"); a bare number is seconds."""
    if not isinstance(value, str):
        return value
    if not re.fullmatch(f"(?:{_DURATION_PART.pattern})+", value):
        raise ValueError("use a duration like 30s, 5m, 2h or 1h30m")
    seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError("too long: a duration is at most 999999999d") from None


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be a positive duration")
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration), AfterValidator(_positive)]


def _at_least_two_days(value: timedelta) -> timedelta:
    if value < MINIMUM_RETENTION:
        raise ValueError("must be at least 2d: idempotency, resolutions and expectations look back a day")
    return value


def read_secret_file(path: Path) -> SecretStr:
    """The file's content without the trailing newline; the error names the path, never the content."""
    try:
        return SecretStr(path.read_text(encoding="utf-8").rstrip("\r\n"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


SecretFile = Annotated[SecretStr, BeforeValidator(lambda path: read_secret_file(Path(path)))]
"""A `*_file` field: validated as the path it names, holding that file's content."""


def _merge_secret_file(model: Any, field: str) -> None:
    """Use `<field>_file`'s content as `field`; both set is refused (which one would win is not obvious)."""
    from_file = getattr(model, f"{field}_file")
    if from_file is None:
        return
    if getattr(model, field):
        raise PydanticCustomError("secret_conflict", f"set either {field} or {field}_file, not both")
    setattr(model, field, from_file)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- receivers --------------------------------------------------------------------------------------------


SUBMISSION_PORT = 587  # STARTTLS (RFC 6409)
IMPLICIT_TLS_PORT = 465  # submissions (RFC 8314)


class SmartHost(_Strict):
    host: str = Field(min_length=1)
    # Left out: 465 for `tls: implicit` (EmailConfig), the submission port otherwise.
    port: int = Field(default=SUBMISSION_PORT, ge=1, le=65535)

    @property
    def is_loopback(self) -> bool:
        host = self.host.strip("[]").rstrip(".").lower()
        if host == "localhost":
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
        return address.is_loopback or (mapped is not None and mapped.is_loopback)


class EmailConfig(_Strict):
    to: list[str] = Field(min_length=1)
    from_: str = Field(alias="from", min_length=3)
    smarthost: SmartHost
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    password_file: SecretFile | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    max_concurrency: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _credentials_complete(self) -> EmailConfig:
        _merge_secret_file(self, "password")
        # A TLS handshake on the STARTTLS port fails every time: implicit TLS has its own port.
        # A copy: a SmartHost given as an instance is not copied by pydantic, and may be another receiver's.
        if self.tls == "implicit" and "port" not in self.smarthost.model_fields_set:
            self.smarthost = self.smarthost.model_copy(update={"port": IMPLICIT_TLS_PORT})
        # aiosmtplib logs in only when a username is set: a password alone would go unused (530 per mail).
        if self.username is None and self.password is not None:
            raise PydanticCustomError("credentials", "password (or password_file) needs a username")
        if self.username is not None and self.password is None:
            raise PydanticCustomError("credentials", "username needs a password or password_file")
        # A relay on this host (a local MTA, a test server) is the one place a clear-text login stays private.
        if self.username is not None and self.tls == "none" and not self.smarthost.is_loopback:
            raise PydanticCustomError(
                "credentials",
                "username and password would cross the network in clear text: set tls to starttls or implicit"
                " (tls: none with credentials is accepted for a loopback smarthost only)",
            )
        return self

    @field_validator("to")
    @classmethod
    def _addresses_look_like_addresses(cls, to: list[str]) -> list[str]:
        for address in to:
            if "@" not in address:
                raise ValueError(f"not an email address: {address!r}")
        return to


class WebhookConfig(_Strict):
    # The URL is a secret: Slack-style webhook URLs carry their credential in the path.
    url: SecretStr | None = None
    url_file: SecretFile | None = None
    format: Literal["standard", "slack"] = "standard"
    # Standard Webhooks signing keys `whsec_<base64>`; several are all used to sign, which allows rotation.
    secrets: list[SecretStr] = Field(default_factory=list)
    secrets_file: SecretFile | None = None
    timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    allow_private_network: bool = False
    max_concurrency: int = Field(default=8, ge=1, le=256)

    @field_validator("url", "url_file")
    @classmethod
    def _url_is_http(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            # Stripped for good, not only for the check: a trailing space (a url_file edited by hand) was sent
            # percent-encoded, to a path that does not exist.
            url = SecretStr(url.get_secret_value().strip())
            try:
                parts = urlsplit(url.get_secret_value())
            except ValueError:
                # urllib's own message quotes the host part, user and password included.
                raise ValueError(
                    "must be an http(s) URL; its host part is not one (a bracket left open, or a character"
                    " such as a full-width '@' or ':' that reads as another)"
                ) from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http(s) URL with a host")
            if not _port_is_valid(parts):
                raise ValueError(
                    "must be an http(s) URL with a valid port (1-65535); in a user or password,"
                    " percent-encode '?', '#' and '/'"
                )
        return url

    @field_validator("secrets_file")
    @classmethod
    def _one_secret_per_line(cls, content: SecretStr | None) -> SecretStr | None:
        if content is not None:
            _check_whsec(content.get_secret_value().split())
        return content

    @field_validator("secrets")
    @classmethod
    def _secrets_are_whsec(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        _check_whsec([secret.get_secret_value() for secret in secrets])
        return secrets

    @model_validator(mode="after")
    def _complete(self) -> WebhookConfig:
        _merge_secret_file(self, "url")
        if self.secrets_file is not None:
            if self.secrets:
                raise PydanticCustomError("secret_conflict", "set either secrets or secrets_file, not both")
            self.secrets = [SecretStr(line) for line in self.secrets_file.get_secret_value().split()]
        if self.url is None:
            raise PydanticCustomError("missing", "set url or url_file")
        if self.format == "standard" and not self.secrets:
            raise PydanticCustomError("missing", "a standard webhook is signed: set secrets or secrets_file")
        return self

    @property
    def redacted_url(self) -> str:
        """scheme://host[:port] only: safe for logs and error messages."""
        parts = urlsplit(self.url.get_secret_value() if self.url else "")
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/<redacted>"


def _port_is_valid(parts: SplitResult) -> bool:
    """No port, or one from 1 to 65535: the sender could connect to no other, and failed every delivery.
    urllib raises, quoting it, for a port that is no number, which is also what an unencoded '?', '#' or '/'
    in the password makes of the password's start."""
    try:
        return parts.port != 0
    except ValueError:
        return False


def _check_whsec(secrets: list[str]) -> None:
    for index, value in enumerate(secrets):
        try:
            decoded = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except ValueError:
            decoded = b""
        if not value.startswith("whsec_") or len(decoded) < 24:
            raise ValueError(f"secret #{index + 1} is not whsec_<base64 of at least 24 bytes>")


ReceiverName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class EmailReceiver(_Strict):
    name: ReceiverName
    email: EmailConfig

    @property
    def integration(self) -> Integration:
        return Integration.EMAIL


class WebhookReceiver(_Strict):
    name: ReceiverName
    webhook: WebhookConfig

    @property
    def integration(self) -> Integration:
        return Integration.WEBHOOK


def _receiver_kind(data: Any) -> str | None:
    if isinstance(data, dict):
        kinds = [kind for kind in ("email", "webhook") if kind in data]
        return kinds[0] if len(kinds) == 1 else None
    return getattr(data, "integration", None)


Receiver = Annotated[
    Annotated[EmailReceiver, Tag("email")] | Annotated[WebhookReceiver, Tag("webhook")],
    Discriminator(
        _receiver_kind,
        custom_error_type="receiver_kind",
        custom_error_message="a receiver has exactly one of: email, webhook",
    ),
]


# --- routes and retry -------------------------------------------------------------------------------------


def _match_values(value: Any) -> Any:
    """A string, or a list of strings. YAML 1.1 reads an unquoted `yes`, `on` or `5` as a boolean or a number,
    which pydantic would refuse as "not a valid list": say what happened instead."""
    values = [value] if isinstance(value, str) else value
    for item in values if isinstance(values, list) else [values]:
        if isinstance(item, bool | int | float):
            read_as = "a boolean" if isinstance(item, bool) else "a number"
            raise ValueError(f'YAML reads an unquoted value as {read_as}: quote it ("...") to match text')
    return values


MatchValue = Annotated[list[str], BeforeValidator(_match_values)]


class Route(_Strict):
    """A route-tree node: `receivers` left out inherits the parent's; `continue` goes on to siblings."""

    match: dict[str, MatchValue] = Field(default_factory=dict)
    receivers: list[str] | None = None
    continue_: bool = Field(default=False, alias="continue")
    routes: list[Route] = Field(default_factory=list)

    @field_validator("match")
    @classmethod
    def _known_keys_and_values(cls, match: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, values in match.items():
            if not is_match_key(key):
                raise ValueError(
                    f"unknown match key {key!r}: use one of {', '.join(EVENT_FIELD_LABELS)} or labels.<name>"
                    " (a name of letters, digits and _, not starting with a digit)"
                )
            if not values:
                raise ValueError(f"match key {key!r} has no value")
            unknown = unknown_value(key, values)
            if unknown is not None:
                raise ValueError(f"match key {key!r}: unknown value {unknown!r}")
        return match


def _at_most(limit: timedelta, spelled: str) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value > limit:
            raise ValueError(f"must be at most {spelled}")
        return value

    return AfterValidator(check)


class RetryConfig(_Strict):
    # Bounded, so that the retry times computed from these stay within the range of a datetime.
    horizon: Annotated[Duration, _at_most(MAXIMUM_RETRY_HORIZON, "30d")] = timedelta(hours=24)
    initial_backoff: Duration = timedelta(seconds=5)
    max_backoff: Duration = timedelta(hours=2)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        # A default never contradicts what was set: `horizon: 1h` alone caps the backoffs at 1h.
        if "max_backoff" not in self.model_fields_set:
            self.max_backoff = min(self.max_backoff, self.horizon)
        if "initial_backoff" not in self.model_fields_set:
            self.initial_backoff = min(self.initial_backoff, self.max_backoff)
        if self.max_backoff < self.initial_backoff:
            raise PydanticCustomError("retry_order", "max_backoff must not be shorter than initial_backoff")
        if self.max_backoff > self.horizon:
            raise PydanticCustomError("retry_order", "max_backoff must not be longer than horizon")
        return self


def default_route(receivers: list[EmailReceiver | WebhookReceiver]) -> Route:
    """Failures and missed deadlines to every receiver, retries to webhooks only, successes to nobody."""
    every = [receiver.name for receiver in receivers]
    webhooks = [receiver.name for receiver in receivers if receiver.integration is Integration.WEBHOOK]
    return Route(
        receivers=[],
        routes=[
            Route(match={"type": list(FAILURE_TYPES)}, receivers=every),
            Route(match={"type": [EventType.TASK_RETRY]}, receivers=webhooks),
        ],
    )


class AlertingConfig(_Strict):
    receivers: list[Receiver] = Field(default_factory=list)
    route: Route | None = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    # Dead man's switches: "this DAG succeeds by 04:00" (expectations.py).
    expectations: Expectations = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_unique_and_routes_resolvable(self) -> AlertingConfig:
        names = [receiver.name for receiver in self.receivers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise PydanticCustomError("config", f"receivers: duplicate name '{duplicates[0]}'")
        if self.route is not None:
            for path, receiver in _route_receivers(self.route, "route"):
                if receiver not in names:
                    raise PydanticCustomError("config", f"{path}: unknown receiver '{receiver}'")
        return self

    @property
    def root_route(self) -> Route:
        return self.route if self.route is not None else default_route(self.receivers)


def _route_receivers(route: Route, path: str) -> list[tuple[str, str]]:
    found = [(f"{path}.receivers", name) for name in route.receivers or []]
    for index, child in enumerate(route.routes):
        found += _route_receivers(child, f"{path}.routes[{index}]")
    return found


# --- the environment --------------------------------------------------------------------------------------


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "alerting-service"


# Query parameters that asyncpg takes a password in, itself or inside another URL.
_PASSWORD_PARAMETERS = frozenset({"password", "dsn"})


def _refuse_a_password(url: str) -> None:
    """Raises ValueError, quoting nothing of the URL, if it holds a password: in the userinfo, or as a
    query parameter. A URL SQLAlchemy cannot parse (an unencoded "@" in a password) is refused too: its
    parser's own message would quote a piece of it."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ValueError(
            "not a URL SQLAlchemy can read (a password in it with an unencoded '@'?): keep the password out "
            "of the URL and set ALERTING_DATABASE_PASSWORD(_FILE)"
        ) from None
    if parsed.password is not None or _PASSWORD_PARAMETERS & {name.lower() for name in parsed.query}:
        raise ValueError("keep the password out of the URL: set ALERTING_DATABASE_PASSWORD(_FILE)")


class Settings(BaseSettings):
    """The process settings, from `ALERTING_*` variables (or keyword arguments in tests)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    data_dir: Path = Field(default_factory=_default_data_dir)
    # SQLAlchemy async URL without the password (that one is `database_password`): sqlite+aiosqlite or
    # postgresql+asyncpg. Default: sqlite+aiosqlite:///<data_dir>/alerts.db
    database_url: str | None = None
    database_password: SecretStr | None = None
    database_password_file: SecretFile | None = None
    config_file: Path | None = None
    # `name:scope:key,...` with scope ingest or admin.
    api_keys: SecretStr | None = None
    api_keys_file: SecretFile | None = None
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    run_dispatcher: bool = True
    # Group commit: at most this many queued events are written by one transaction.
    ingest_batch_max: int = Field(default=512, ge=1, le=5000)
    # Events waiting for the writer beyond this are answered 503 at once (the sender retries later).
    ingest_queue_max: int = Field(default=DEFAULT_INGEST_QUEUE_MAX, ge=1)
    # /readyz answers 503 while one database transaction has run longer than this (it waits on a lock that
    # another process holds): events then wait unanswered, or are refused once the ingest queue is full.
    writer_stall_seconds: float = Field(default=30.0, gt=0)
    # How often the in-memory silences are re-read, for silences changed by another process.
    silence_refresh_seconds: float = Field(default=10.0, gt=0)
    # Events (with their deliveries) and silences older than this are deleted; never a delivery still to be
    # sent. Idempotency keys and resolutions look back up to a day: hence the minimum. Expectations look back
    # their window plus a day: load_alerting_config refuses a longer window.
    # At most a century: the cutoff (now - retention) stays a valid time.
    retention: Annotated[
        Duration, AfterValidator(_at_least_two_days), _at_most(MAXIMUM_RETENTION, "36500d")
    ] = timedelta(days=30)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        _merge_secret_file(self, "database_password")
        _merge_secret_file(self, "api_keys")
        return self

    @field_validator("data_dir")
    @classmethod
    def _a_directory_if_it_exists(cls, data_dir: Path) -> Path:
        # Created at start when missing; an existing file there failed the start with a traceback.
        if data_dir.exists() and not data_dir.is_dir():
            raise ValueError(f"{data_dir} is not a directory")
        return data_dir

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use a sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
        if url is not None:
            _refuse_a_password(url)
        return url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'alerts.db'}"

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None


# --- loading and error reporting --------------------------------------------------------------------------


def _format_location(location: tuple[int | str, ...], root: str = "") -> str:
    text = root
    previous: int | str | None = None
    for part in location:
        # A tagged union repeats its tag ("receivers[0].email.email.to"); say it once.
        if part == previous and part in ("email", "webhook"):
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        previous = part
    return text


def describe_validation_error(error: ValidationError, model: type[BaseModel], *, env: bool = False) -> str:
    """One line per problem, `key: message`, for `model`'s validation error; the offending values are left
    out (they may be secrets)."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        location = problem["loc"]
        if problem["type"] == "extra_forbidden":
            lines.append(_describe_unknown_key(model, location))
            continue
        if env and location:
            location = (ENV_PREFIX + str(location[0]).upper(), *location[1:])
        key = _format_location(location)
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {message}" if key else message)
    return "\n".join(lines)


def _describe_unknown_key(model: type[BaseModel], location: tuple[int | str, ...]) -> str:
    """The key is named only when it is a likely typo of a setting: a value indented one level too deep
    (a whsec_ secret, a password) is read as a key, and would be printed. (Settings gets unknown keys from
    keyword arguments only: pydantic-settings ignores unknown variables.)"""
    parent, key = location[:-1], str(location[-1])
    known = _known_keys(model, parent)
    closest = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    if closest:
        return f"{_format_location(location)}: not a setting (did you mean '{closest[0]}'?)"
    where = _format_location(parent) or "the top level"
    # Should a location ever lead to no model, the message still says where the key is.
    settings = f"; the settings there are: {', '.join(known)}" if known else ""
    return f"{where}: a key there is not a setting (not shown, in case it is a misplaced value){settings}"


def _known_keys(model: type[BaseModel], location: tuple[int | str, ...]) -> list[str]:
    """The keys the model found at `location` (a pydantic error location) accepts, as spelled in YAML."""
    annotation: Any = model
    for part in location:
        annotation = _inner_annotation(annotation, part)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [field.alias or name for name, field in annotation.model_fields.items()]
    return []


def _inner_annotation(annotation: Any, part: int | str) -> Any:
    """The type of what `part` (a field, a list index, a dict key or a union's tag) selects in `annotation`;
    None when it selects nothing typed."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        arms = [arm for arm in args if arm is not type(None)]
        tagged = [arm for arm in arms if _union_tag(arm) == part]
        if tagged:  # a tagged union's location names the arm, before the arm's own fields
            return tagged[0]
        return _inner_annotation(arms[0], part) if len(arms) == 1 else None
    if origin is list and isinstance(part, int):
        return args[0]
    if origin is dict and isinstance(part, str):
        return args[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = annotation.model_fields.items()
        return next((field.annotation for name, field in fields if part in (name, field.alias)), None)
    return None


def _union_tag(arm: Any) -> str | None:
    metadata = get_args(arm)[1:] if get_origin(arm) is Annotated else ()
    return next((item.tag for item in metadata if isinstance(item, Tag)), None)


def _refuse_unknown_variables(environ: Mapping[str, str]) -> None:
    """A mistyped `ALERTING_*` variable (ALERTING_RETENTON) would be ignored and its default used unnoticed.
    Names only in the message: the value may be a secret."""
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    unknown = sorted(
        name
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        and not _is_service_link(name, value)
    )
    problems = []
    for name in unknown:
        closest = difflib.get_close_matches(name.upper(), known, n=1)
        hint = f" (did you mean {closest[0]}?)" if closest else ""
        problems.append(f"{name}: not a setting of the alert service{hint}")
    if problems:
        raise ConfigError("\n".join(problems))


def _is_service_link(name: str, value: str) -> bool:
    """A variable Kubernetes sets for a Service whose name starts with `alerting`."""
    if _SERVICE_LINK_VARIABLE.match(name):
        return True
    return bool(_SERVICE_LINK_PORT_VARIABLE.match(name) and _SERVICE_LINK_PORT_VALUE.match(value))


def load_settings(**overrides: Any) -> Settings:
    """The settings from the `ALERTING_*` environment, with `overrides` (keyword arguments) on top."""
    _refuse_unknown_variables(os.environ)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, Settings, env=True)) from None


_UNREADABLE_TAGGED_VALUE = "a value that its tag (such as !!int or !!bool) cannot read: remove the tag"


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader, except that a date stays text, and a value its explicit tag cannot read (`!!int x`)
    is a YAML error at its line: PyYAML raised a bare ValueError or KeyError, naming no line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, LookupError):
            raise yaml.constructor.ConstructorError(
                None, None, _UNREADABLE_TAGGED_VALUE, node.start_mark
            ) from None


# No setting is a date: an unquoted date (`password: 2026-02-30`) stays the text written, where PyYAML made a
# date of it (refused as "not a valid string"), or raised a bare ValueError for a day that does not exist.
_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _ConfigLoader.construct_yaml_str)

# PyYAML problems that quote the document: an unquoted value starting with '*', '&' or '!' is read as an
# alias, an anchor or a tag, and a password written so would be printed. Explained without the value.
_READ_AS_A_TAG = (
    "an unquoted value starting with '!' (read as a tag that YAML does not know): quote the value"
)
_PROBLEMS_QUOTING_THE_DOCUMENT = {
    "found undefined alias": (
        "an unquoted value starting with '*' (read as an alias of an anchor not defined): quote the value"
    ),
    "found duplicate anchor": (
        "an unquoted value starting with '&' (read as an anchor, here defined twice): quote the value"
    ),
    "could not determine a constructor for the tag": _READ_AS_A_TAG,
    "found undefined tag handle": _READ_AS_A_TAG,
}


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's problem, unless it quotes the document (a duplicate anchor is told in the context)."""
    context = getattr(error, "context", None) or ""
    problem = getattr(error, "problem", None) or str(error)
    for start, explanation in _PROBLEMS_QUOTING_THE_DOCUMENT.items():
        if context.startswith(start) or problem.startswith(start):
            return explanation
    return problem


def _read_yaml(text: str, source: str) -> Any:
    try:
        # _ConfigLoader is a yaml.SafeLoader, which ruff cannot tell.
        return yaml.load(text, Loader=_ConfigLoader)  # ruff: ignore[unsafe-yaml-load]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} not valid YAML: {_yaml_problem(exc)}") from None


def parse_alerting_config(text: str, source: str) -> AlertingConfig:
    document = _read_yaml(text, source)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (receivers, route, retry)")
    try:
        return AlertingConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, AlertingConfig)) from None


def load_alerting_config(settings: Settings) -> AlertingConfig:
    """The YAML named by ALERTING_CONFIG_FILE, or no receivers at all when none is given."""
    if settings.config_file is None:
        return AlertingConfig()
    try:
        text = settings.config_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{ENV_PREFIX}CONFIG_FILE: cannot read {settings.config_file}: {exc.strerror}"
        ) from None
    config = parse_alerting_config(text, str(settings.config_file))
    _windows_within_retention(config, settings.retention)
    return config


def _windows_within_retention(config: AlertingConfig, retention: timedelta) -> None:
    """An expectation's window, plus the day its check may run after the deadline, must stay stored: the
    successes it looks for would otherwise be deleted before it looks."""
    for index, expectation in enumerate(config.expectations):
        if timedelta(hours=expectation.window_hours) + EXPECTATION_CHECK_LATENESS > retention:
            raise ConfigError(
                f"expectations[{index}].window_hours: {expectation.window_hours} hours plus a day is longer"
                f" than {ENV_PREFIX}RETENTION ({retention.total_seconds() / 3600:g} hours): shorten the"
                " window or keep events longer"
            )
