"""The three Airflow connections the batch job needs, validated and turned into its `BATCH_*` environment.

The split matters: `job_environment()` holds only non-secret values (`prepare_environment` validates them and
`run_batch_processing` logs them), `secret_job_environment()` holds the credentials; both are built inside
`run_batch_processing` at each try, straight into the process/container environment, never into XCom.
Required fields per connection are in docs/architecture.md ("Connections read by prepare_environment ...").
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.sdk import Connection
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret

from pipeline_common.errors import ConnectionConfigError

MINIO_CONN_ID = "minio_default"
POSTGRES_CONN_ID = "postgres_default"
ML_API_CONN_ID = "ml_api_default"
SQLITE_CONN_TYPE = "sqlite"
POSTGRES_CONN_TYPES = ("postgres", "postgresql")
HTTP_SCHEMES = ("http", "https")
# Optional ML tuning read from the ml_api_default extra, passed to the job as BATCH_ML_<KEY>.
ML_TUNING_EXTRAS = ("timeout_seconds", "batch_size", "max_retries", "retry_backoff_seconds")
# The HttpHook's request options, at home in an http connection's extra (the job does not read them): never
# taken for a misspelled tuning extra, though `max_redirects` looks like `max_retries`. Its `timeout` is not
# among them: the job does not read it, and the timeout it meant is `timeout_seconds`.
HTTP_HOOK_OPTIONS = frozenset(
    ("headers", "proxies", "stream", "verify", "cert", "max_redirects", "allow_redirects", "trust_env")
)
# The words the extra `secure` may hold as text (a UI form or a URI gives every extra value as a string).
_TRUE_WORDS = ("true", "1", "yes")
_FALSE_WORDS = ("false", "0", "no")
# A database host as the URL takes it: a host name or an IPv4 address (IPv6 is bracketed in the URL).
_HOST_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class PipelineConnections:
    minio: Connection
    postgres: Connection
    ml_api: Connection


def get_connection(conn_id: str) -> Connection:
    """The connection through the Task SDK; a missing one fails with a message saying how to add it."""
    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        # Airflow calls a variable it cannot parse "not defined"; its value may hold a secret: never quoted.
        if os.environ.get(variable):
            raise ConnectionConfigError(
                f"connection {conn_id!r}: {variable} is set but Airflow cannot parse it "
                f"({_parse_problem(os.environ[variable])}); see docs/dags.md for the JSON form"
            ) from None
        raise ConnectionConfigError(
            f"connection {conn_id!r} is not defined: add it (Admin > Connections, or {variable}); "
            "see docs/dags.md"
        ) from None


def _parse_problem(value: str) -> str:
    """What is wrong with an `AIRFLOW_CONN_*` value, in words that never quote it."""
    if not value.lstrip().startswith("{"):
        return "a connection URI with a malformed part, e.g. a port that is not an integer"
    try:
        json.loads(value)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} at character {exc.pos}"
    return "a JSON object with a field of the wrong type, e.g. a port that is not an integer"


def read_pipeline_connections() -> PipelineConnections:
    return PipelineConnections(
        minio=get_connection(MINIO_CONN_ID),
        postgres=get_connection(POSTGRES_CONN_ID),
        ml_api=get_connection(ML_API_CONN_ID),
    )


def job_environment(connections: PipelineConnections) -> dict[str, str]:
    """The non-secret `BATCH_*` variables; validates every connection, secret fields included."""
    return {
        **_source_environment(connections.minio),
        **_database_environment(connections.postgres),
        **_ml_api_environment(connections.ml_api),
    }


def secret_job_environment(connections: PipelineConnections) -> dict[str, str]:
    """The secret `BATCH_*` variables; never put these in XCom, templated fields or logs."""
    secrets: dict[str, str] = {}
    if not _is_local_source(connections.minio):
        # The access key id is a secret in the job contract but Airflow masks only passwords: mask it too.
        mask_secret(connections.minio.login)
        secrets["BATCH_S3_ACCESS_KEY_ID"] = connections.minio.login
        secrets["BATCH_S3_SECRET_ACCESS_KEY"] = connections.minio.password
    if connections.postgres.conn_type != SQLITE_CONN_TYPE:
        secrets["BATCH_DATABASE_PASSWORD"] = connections.postgres.password
    if connections.ml_api.password:
        secrets["BATCH_ML_API_KEY"] = connections.ml_api.password
    return secrets


def database_url(postgres: Connection) -> str:
    """The results database as a SQLAlchemy URL without password (the job contract's `BATCH_DATABASE_URL`)."""
    if postgres.conn_type == SQLITE_CONN_TYPE:
        _require(postgres, "host")
        path = Path(postgres.host)
        if not path.is_absolute():
            # Not quoted: it may be a database URL with its password, pasted with the wrong conn_type.
            raise ConnectionConfigError(
                f"connection {postgres.conn_id!r} (sqlite): field 'host' must be the absolute path of the "
                "SQLite file (for PostgreSQL, use conn_type 'postgres' and put each part in its own field)"
            )
        return f"sqlite:///{path}"
    if postgres.conn_type not in POSTGRES_CONN_TYPES:
        raise ConnectionConfigError(
            f"connection {postgres.conn_id!r}: conn_type {postgres.conn_type!r} is not supported, "
            f"use 'postgres' or 'sqlite'"
        )
    _require(postgres, "host", "schema", "login", "password")
    port = postgres.port or 5432
    host = _database_host(postgres)
    return f"postgresql+psycopg2://{quote(postgres.login, safe='')}@{host}:{port}/{postgres.schema}"


def _database_host(postgres: Connection) -> str:
    """The host for the URL. Anything else pasted there (credentials, a whole URL) is refused without quoting
    it: the URL is logged, and only the password field is masked by Airflow."""
    host = postgres.host
    if _HOST_NAME.match(host):
        return host
    try:
        return f"[{ipaddress.IPv6Address(host.strip('[]'))}]"  # "db@::1:5432" is no URL SQLAlchemy parses
    except ValueError:
        raise ConnectionConfigError(
            f"connection {postgres.conn_id!r}: field 'host' must be a host name or an IP address only; "
            "put the port, database (schema), login and password in their own fields"
        ) from None


def _source_environment(minio: Connection) -> dict[str, str]:
    extra = connection_extra(minio)
    completeness = _complete_marker_environment(minio, extra)
    if _is_local_source(minio):
        path = Path(str(extra["path"]))
        if not path.is_absolute():
            raise ConnectionConfigError(
                f"connection {minio.conn_id!r}: extra 'path' must be an absolute directory, got {str(path)!r}"
            )
        return {"BATCH_SOURCE_URI": path.as_uri(), **completeness}
    _require(minio, "host", "login", "password")
    _require_header_safe(minio, "login")  # the access key id; the secret key only signs
    _require_extra(minio, extra, "bucket")
    prefix = str(extra.get("prefix", "")).strip("/")
    source_uri = f"s3://{extra['bucket']}/{prefix}" if prefix else f"s3://{extra['bucket']}"
    return {
        "BATCH_SOURCE_URI": source_uri,
        "BATCH_S3_ENDPOINT_URL": _s3_endpoint(minio, extra),
        **completeness,
    }


def _complete_marker_environment(minio: Connection, extra: dict[str, Any]) -> dict[str, str]:
    """The optional extra `complete_marker`: the file the provider writes in a day's folder once the day is
    delivered; the job then waits (retries) for it rather than load part of a day."""
    marker = extra.get("complete_marker")
    if marker is None:
        return {}
    if not isinstance(marker, str) or marker in ("", ".", "..") or "/" in marker or marker.strip() != marker:
        raise ConnectionConfigError(
            f"connection {minio.conn_id!r}: extra 'complete_marker' must be a file name such as '_SUCCESS', "
            f"got {marker!r}"
        )
    return {"BATCH_COMPLETE_MARKER": marker}


def _s3_endpoint(minio: Connection, extra: dict[str, Any]) -> str:
    return _base_url(minio, "https" if _secure(minio, extra) else "http")


def _secure(minio: Connection, extra: dict[str, Any]) -> bool:
    """The extra `secure` as a boolean. Anything else is refused: read as false, a typo ("ture", "on") would
    send the day's transactions and the access key id over plain HTTP without a word."""
    value = extra.get("secure")
    if value is None:
        return False  # the default: http
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in _TRUE_WORDS + _FALSE_WORDS:
        return value is True or text in _TRUE_WORDS
    raise ConnectionConfigError(
        f"connection {minio.conn_id!r}: extra 'secure' must be true or false (https or http), got {value!r}"
    )


def _database_environment(postgres: Connection) -> dict[str, str]:
    return {"BATCH_DATABASE_URL": database_url(postgres)}


def _ml_api_environment(ml_api: Connection) -> dict[str, str]:
    _require(ml_api, "host")
    if ml_api.password:
        _require_header_safe(ml_api, "password")
    extra = connection_extra(ml_api)
    _refuse_misspelled_tuning(ml_api, extra)
    tuning = {f"BATCH_ML_{key.upper()}": str(extra[key]) for key in ML_TUNING_EXTRAS if key in extra}
    return {"BATCH_ML_API_URL": http_base_url(ml_api), **tuning}


def _refuse_misspelled_tuning(ml_api: Connection, extra: dict[str, Any]) -> None:
    """A key close to a tuning extra's name is a typo that would leave the default in force unnoticed
    (`timeout_second`: the 30 s default instead). Other keys are left alone: a UI form may add its own."""
    for key in sorted(set(extra) - set(ML_TUNING_EXTRAS) - HTTP_HOOK_OPTIONS):
        meant = difflib.get_close_matches(key.lower(), ML_TUNING_EXTRAS, n=1)
        if meant:
            raise ConnectionConfigError(
                f"connection {ml_api.conn_id!r}: extra {key!r} is not read, did you mean {meant[0]!r}? "
                f"(the tuning extras: {', '.join(ML_TUNING_EXTRAS)})"
            )


def http_base_url(connection: Connection) -> str:
    """The base URL of an HTTP service's connection: `host` (a URL or a host name), and `port` (refused when
    `host` has one too). A host name takes the scheme of the HttpHook's convention; a URL keeps its own, and
    `schema` is not read."""
    if "://" in connection.host:
        return _base_url(connection, default_scheme="http")  # unused: the URL has a scheme
    return _base_url(connection, _http_scheme(connection))


def _http_scheme(connection: Connection) -> str:
    """`schema` when set (the HttpHook's convention: `https` must never fall back to http, which would send
    the API key in clear), else conn_type `https` or `http`."""
    if not connection.schema:
        return "https" if connection.conn_type == "https" else "http"
    scheme = connection.schema.lower()
    if scheme not in HTTP_SCHEMES:
        raise ConnectionConfigError(
            f"connection {connection.conn_id!r}: field 'schema' must be http or https, "
            f"got {connection.schema!r}"
        )
    return scheme


def _base_url(connection: Connection, default_scheme: str) -> str:
    """`host` as a URL (its own scheme if it has one) with the `port` field; a port given twice is refused,
    and so are credentials, a query or a fragment in `host` (a token in `?api_key=...`): the URL is logged
    (`BATCH_ML_API_URL=...`), where only the password field is masked, and an error must not quote them."""
    host = connection.host.rstrip("/")
    try:
        parts = urlsplit(host if "://" in host else f"{default_scheme}://{host}")
    except ValueError:  # urllib's message quotes the host part, credentials included
        raise ConnectionConfigError(
            f"connection {connection.conn_id!r}: field 'host' is no URL or host name (a bracket left open, "
            "or a character such as a full-width '@' or ':' that reads as another)"
        ) from None
    if "@" in parts.netloc:
        raise ConnectionConfigError(
            f"connection {connection.conn_id!r}: field 'host' holds credentials (user:password@): "
            "put them in the login and password fields"
        )
    if parts.query or parts.fragment:
        raise ConnectionConfigError(
            f"connection {connection.conn_id!r}: field 'host' holds a query or a fragment (a token?): "
            "the URL is logged; put a key in the password field"
        )
    if not connection.port:
        return parts.geturl()
    try:
        host_has_port = parts.port is not None
    except ValueError:  # a port that is not a number ("minio:90a0") is a port given twice all the same
        host_has_port = True
    if host_has_port:
        raise ConnectionConfigError(
            f"connection {connection.conn_id!r}: field 'host' (of {parts.hostname!r}) already has a port and "
            f"field 'port' ({connection.port}) is set too: keep one of them"
        )
    return parts._replace(netloc=f"{parts.netloc}:{connection.port}").geturl()


def connection_extra(connection: Connection) -> dict[str, Any]:
    """The extra as a dict. Parsed here, not via `extra_dejson`, which registers every extra value as a secret
    to mask, so a bucket named "transactions" would turn "scored_transactions" into "scored_***" in the logs;
    the extras of these connections hold no secrets by contract."""
    if not connection.extra:
        return {}
    try:
        extra = json.loads(connection.extra)
    except json.JSONDecodeError:
        raise ConnectionConfigError(f"connection {connection.conn_id!r}: extra is not valid JSON") from None
    if not isinstance(extra, dict):
        raise ConnectionConfigError(f"connection {connection.conn_id!r}: extra must be a JSON object")
    return extra


def _is_local_source(minio: Connection) -> bool:
    return "path" in connection_extra(minio)


def _require(connection: Connection, *fields: str) -> None:
    missing = [name for name in fields if not getattr(connection, name)]
    if missing:
        raise ConnectionConfigError(
            f"connection {connection.conn_id!r} is missing required field(s): {', '.join(missing)}"
        )


def _require_header_safe(connection: Connection, *fields: str) -> None:
    """Credentials that go into HTTP requests must be sendable: an HTTP library refuses a header holding a
    newline (pasted from a file, say) with an error that quotes the whole header, credential included."""
    unsendable = [name for name in fields if not is_header_safe(getattr(connection, name))]
    if unsendable:
        raise ConnectionConfigError(
            f"connection {connection.conn_id!r}: field(s) {', '.join(unsendable)} hold whitespace at an end, "
            "a control character (a newline pasted with the value?) or a non-ASCII character"
        )


def is_header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and value == value.strip()


def _require_extra(connection: Connection, extra: dict[str, Any], *keys: str) -> None:
    missing = [key for key in keys if not extra.get(key)]
    if missing:
        raise ConnectionConfigError(
            f"connection {connection.conn_id!r} is missing required extra key(s): {', '.join(missing)}"
        )
