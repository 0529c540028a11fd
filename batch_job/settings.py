"""The batch job's configuration: the `BATCH_*` environment variables of docs/architecture.md.

`load_settings()` is the only way in: it turns every missing or malformed variable into a `ConfigError` (exit
78) whose message names the variables and what is wrong with them, and never their values, since some of them
are secrets.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field, HttpUrl, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from batch_job.errors import ConfigError

ENV_PREFIX = "BATCH_"
POSTGRES_DRIVER = "postgresql+psycopg2"
SQLITE_DRIVER = "sqlite"
# What botocore accepts as a bucket name; it refuses any other at the first request, with an error that reads
# like an unreachable server.
S3_BUCKET_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")
# psycopg2 takes each query parameter of the URL as a connection keyword, these with a secret (`dsn` may hold
# `password=...`); the URL is logged and quoted in errors with its query, where only its password is hidden.
SECRET_DATABASE_URL_PARAMETERS = frozenset({"password", "sslpassword", "dsn"})


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    def day_prefix(self, run_date: dt.date) -> str:
        """The key prefix of one day's objects: `<prefix>/<YYYY-MM-DD>/` (no leading slash at the root)."""
        return f"{self.prefix}/{run_date.isoformat()}/" if self.prefix else f"{run_date.isoformat()}/"

    def day_uri(self, run_date: dt.date) -> str:
        return f"s3://{self.bucket}/{self.day_prefix(run_date)}"


@dataclass(frozen=True)
class LocalLocation:
    directory: Path

    def day_directory(self, run_date: dt.date) -> Path:
        return self.directory / run_date.isoformat()

    def day_uri(self, run_date: dt.date) -> str:
        return f"{self.day_directory(run_date).as_uri()}/"


SourceLocation = S3Location | LocalLocation


def parse_source_uri(uri: str) -> SourceLocation:
    """`s3://bucket/prefix` or `file:///abs/dir`; raises ValueError saying which form was expected."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("an s3:// URI needs a bucket: s3://bucket/prefix")
        if "@" in parts.netloc or parts.query or parts.fragment:
            # The URI is named in log lines, errors and the summary: credentials would be printed with it.
            raise ValueError(
                "an s3:// URI must not hold credentials, a query or a fragment: s3://bucket/prefix, the keys "
                "in BATCH_S3_ACCESS_KEY_ID and BATCH_S3_SECRET_ACCESS_KEY"
            )
        if not S3_BUCKET_NAME.fullmatch(parts.netloc):
            raise ValueError("an s3:// URI's bucket name may hold only letters, digits, '.', '-' and '_'")
        return S3Location(bucket=parts.netloc, prefix=parts.path.strip("/"))
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError("a file URI needs an absolute path with three slashes: file:///abs/dir")
        return LocalLocation(directory=Path(unquote(parts.path)))  # as Path.as_uri() percent-encodes
    raise ValueError("must be s3://bucket/prefix or file:///abs/dir")


class JobSettings(BaseSettings):
    """Every `BATCH_*` variable of the contract, typed; secrets are `SecretStr` so they never print."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True
    )

    run_date: dt.date
    source_uri: str
    s3_endpoint_url: HttpUrl | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    database_url: str
    database_password: SecretStr | None = None
    ml_api_url: HttpUrl
    ml_api_key: SecretStr | None = None
    ml_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    ml_batch_size: int = Field(default=500, gt=0, le=10_000)
    ml_max_retries: int = Field(default=3, ge=0, le=10)
    ml_retry_backoff_seconds: float = Field(default=1.0, ge=0, le=60)
    # The object the provider writes once every file of a day is delivered (`_SUCCESS`, say): without it, a
    # day is read as soon as it has a CSV object, complete or not.
    complete_marker: str | None = None

    @field_validator("source_uri")
    @classmethod
    def _source_uri_is_supported(cls, uri: str) -> str:
        parse_source_uri(uri)
        return uri

    @field_validator("complete_marker")
    @classmethod
    def _marker_is_a_file_name(cls, marker: str | None) -> str | None:
        if marker is not None and (marker in (".", "..") or "/" in marker or marker.strip() != marker):
            raise ValueError("must be a file name in the day's folder (e.g. _SUCCESS): no /, no outer spaces")
        return marker

    @field_validator("s3_access_key_id", "ml_api_key")
    @classmethod
    def _credential_is_sendable(cls, credential: SecretStr | None) -> SecretStr | None:
        # An HTTP library refuses a header holding a newline with an error that quotes the whole header. (Not
        # the S3 secret key: it only signs, it is never sent.)
        value = credential.get_secret_value() if credential is not None else ""
        if not (value.isascii() and value.isprintable() and value == value.strip()):
            raise ValueError(
                "holds whitespace at an end, a control character (a newline pasted with the value?) or a "
                "non-ASCII character"
            )
        return credential

    @field_validator("s3_endpoint_url", "ml_api_url")
    @classmethod
    def _url_holds_no_credentials(cls, url: HttpUrl | None) -> HttpUrl | None:
        # The URL is named in log lines and errors: credentials there would be printed with it.
        if url is not None and (url.username or url.password or url.query or url.fragment):
            raise ValueError(
                "must not hold credentials, a query or a fragment: the key goes in its own variable"
            )
        return url

    @field_validator("database_url")
    @classmethod
    def _database_url_is_supported(cls, raw: str) -> str:
        url = _parse_database_url(raw)
        return url.render_as_string(hide_password=True)

    @model_validator(mode="after")
    def _sqlite_takes_no_password(self) -> JobSettings:
        if self.database_password is not None and make_url(self.database_url).drivername == SQLITE_DRIVER:
            raise ValueError("BATCH_DATABASE_PASSWORD is set but a SQLite database takes no password")
        return self

    @property
    def source(self) -> SourceLocation:
        return parse_source_uri(self.source_uri)

    @property
    def predict_url(self) -> str:
        return f"{str(self.ml_api_url).rstrip('/')}/predict"

    def sqlalchemy_url(self) -> URL:
        """The database URL with the password joined in; log it only with `hide_password=True`."""
        url = make_url(self.database_url)
        if self.database_password is None:
            return url
        return url.set(password=self.database_password.get_secret_value())


def _parse_database_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # ValueError, a port that is no number, quotes it: it may be a secret
        raise ValueError(
            "is not a SQLAlchemy URL (postgresql+psycopg2://user@host:5432/db or sqlite:////abs/path.db)"
        ) from None
    if url.password is not None or SECRET_DATABASE_URL_PARAMETERS & url.query.keys():
        raise ValueError("must not contain a password: put it in BATCH_DATABASE_PASSWORD")
    if url.drivername in ("postgresql", POSTGRES_DRIVER):
        if url.port is not None and not 0 < url.port < 2**16:
            # libpq's "invalid port number" has no SQLSTATE: the job would retry it as a transient failure.
            raise ValueError(f"the port {url.port} is not from 1 to 65535")
        if not url.database:
            raise ValueError("names no database: postgresql+psycopg2://user@host:5432/db")
        return url.set(drivername=POSTGRES_DRIVER)
    if url.drivername == SQLITE_DRIVER:
        if not url.database or not url.database.startswith("/"):
            raise ValueError("a SQLite URL needs an absolute file path: sqlite:////abs/path.db")
        return url
    raise ValueError("must use the postgresql+psycopg2 or sqlite driver")


def load_settings() -> JobSettings:
    """Read the environment; raise `ConfigError` naming every bad variable (never echoing a value)."""
    try:
        return JobSettings()  # type: ignore[call-arg]  # the fields come from the environment
    except ValidationError as exc:
        raise ConfigError(f"bad configuration: {describe_validation_errors(exc)}") from None


def describe_validation_errors(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        location = error["loc"]
        if location:
            variable = f"{ENV_PREFIX}{str(location[0]).upper()}"
            problems.append(f"{variable}: {'is not set' if error['type'] == 'missing' else message}")
        else:
            problems.append(message)
    return "; ".join(problems)
