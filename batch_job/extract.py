"""Extract: read one day's CSV objects, `<prefix>/<YYYY-MM-DD>/*.csv`, from S3 (or MinIO) or a directory.

Only the objects directly under the day's prefix whose names end in `.csv` (in any case: `.CSV` exports too)
are read, in key order so that a re-run sees them in the same order; any other object or sub-folder there is
named in a warning, so that a file delivered under another name is not skipped unnoticed. A day without any
such object is a `TransientError` (exit 1, retried): its files may not have arrived yet, and treating it as an
empty day would replace the rows already loaded for the date by none (a backfill after the landing bucket's
retention expired, a wrong prefix, a run before the provider's delivery). A day whose objects hold no rows (a
header only) is an empty day: zero rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from batch_job.errors import ConfigError, InvalidInputError, TransientError
from batch_job.settings import JobSettings, LocalLocation, S3Location

log = logging.getLogger(__name__)

CSV_SUFFIX = ".csv"
# Skipped names quoted in the warning, at most.
SKIPPED_NAMES_SHOWN = 10
# MinIO ignores the region, but SigV4 signing needs one.
S3_REGION = "us-east-1"
# S3 error codes that retrying cannot fix: the bucket or the credentials are wrong.
S3_CONFIG_ERROR_CODES = frozenset(
    {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName"}
)


@dataclass(frozen=True)
class SourceFile:
    uri: str
    text: str


@dataclass(frozen=True)
class DayExtract:
    day_uri: str
    files: list[SourceFile]


def extract_day(settings: JobSettings) -> DayExtract:
    """Read every CSV object of `settings.run_date`; a day without any is a `TransientError`."""
    source = settings.source
    day_uri = source.day_uri(settings.run_date)
    if isinstance(source, S3Location):
        files = _read_s3_day(settings, source)
    else:
        files = _read_local_day(source, settings.run_date, settings.complete_marker)
    if not files:
        raise TransientError(
            f"no input: no CSV objects at {day_uri} for run date {settings.run_date.isoformat()} (not "
            "delivered yet, expired, or a wrong source prefix); the date's loaded rows are left as they are"
        )
    return DayExtract(day_uri=day_uri, files=files)


def _read_local_day(source: LocalLocation, run_date: dt.date, marker: str | None) -> list[SourceFile]:
    if not source.directory.is_dir():
        raise ConfigError(f"BATCH_SOURCE_URI: the directory {source.directory} does not exist")
    day_directory = source.day_directory(run_date)
    if not day_directory.is_dir():
        return []
    entries = list(day_directory.iterdir())
    paths = sorted(path for path in entries if path.is_file() and _is_csv(path.name))
    if paths:
        _require_marker(source.day_uri(run_date), marker, {path.name for path in entries})
    skipped = [_entry_name(path) for path in entries if path not in paths and path.name != marker]
    _warn_skipped(source.day_uri(run_date), skipped)
    return [SourceFile(uri=path.as_uri(), text=_decode(path.as_uri(), path.read_bytes())) for path in paths]


def _read_s3_day(settings: JobSettings, source: S3Location) -> list[SourceFile]:
    client = _s3_client(settings)
    day_prefix = source.day_prefix(settings.run_date)
    day_uri = source.day_uri(settings.run_date)
    try:
        keys = _list_day_keys(client, source.bucket, day_prefix, day_uri, settings.complete_marker)
        return [
            SourceFile(
                uri=f"s3://{source.bucket}/{key}", text=_decode(key, _read_object(client, source.bucket, key))
            )
            for key in keys
        ]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in S3_CONFIG_ERROR_CODES:
            raise ConfigError(f"S3 refused access to s3://{source.bucket}/{day_prefix}: {code}") from exc
        raise TransientError(f"S3 failed on s3://{source.bucket}/{day_prefix}: {exc}") from exc
    except BotoCoreError as exc:
        raise TransientError(f"S3 is unreachable for s3://{source.bucket}/{day_prefix}: {exc}") from exc


def _s3_client(settings: JobSettings) -> BaseClient:
    access_key_id, secret_access_key = settings.s3_access_key_id, settings.s3_secret_access_key
    if access_key_id is None or secret_access_key is None:
        raise ConfigError("an s3:// source needs both BATCH_S3_ACCESS_KEY_ID and BATCH_S3_SECRET_ACCESS_KEY")
    return boto3.client(
        "s3",
        endpoint_url=str(settings.s3_endpoint_url) if settings.s3_endpoint_url else None,
        aws_access_key_id=access_key_id.get_secret_value(),
        aws_secret_access_key=secret_access_key.get_secret_value(),
        region_name=S3_REGION,
        config=Config(
            s3={"addressing_style": "path"},  # MinIO serves buckets by path, not by virtual host
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
        ),
    )


def _list_day_keys(
    client: BaseClient, bucket: str, day_prefix: str, day_uri: str, marker: str | None
) -> list[str]:
    # The delimiter keeps the listing to the day's own objects; sub-"directories" come as common prefixes.
    pages = list(
        client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=day_prefix, Delimiter="/")
    )
    # The day's own key is a folder marker (a console's "create folder"), not a delivered object.
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", []) if obj["Key"] != day_prefix]
    folders = [common["Prefix"] for page in pages for common in page.get("CommonPrefixes", [])]
    csv_keys = sorted(key for key in keys if _is_csv(key))
    if csv_keys:
        _require_marker(day_uri, marker, {key.removeprefix(day_prefix) for key in keys})
    skipped = [
        key for key in keys if key not in csv_keys and key.removeprefix(day_prefix) != marker
    ] + folders
    _warn_skipped(day_uri, [key.removeprefix(day_prefix) for key in skipped])
    return csv_keys


def _require_marker(day_uri: str, marker: str | None, names: set[str]) -> None:
    """A day with CSV objects but not the provider's completeness marker is still being delivered: read now,
    it would load part of the day and announce it as the whole."""
    if marker is not None and marker not in names:
        raise TransientError(
            f"incomplete input: {day_uri} has CSV objects but no {marker} yet (written once the day's last "
            "file is delivered); the date's loaded rows are left as they are"
        )


def _is_csv(name: str) -> bool:
    return name.lower().endswith(CSV_SUFFIX)


def _entry_name(path: Path) -> str:
    return f"{path.name}/" if path.is_dir() else path.name


def _warn_skipped(day_uri: str, names: Iterable[str]) -> None:
    """Objects of the day that are not read: a file delivered as `.txt` or into a sub-folder would otherwise
    be missing from the load without a trace."""
    skipped = sorted(names)
    if skipped:
        more = ", ..." if len(skipped) > SKIPPED_NAMES_SHOWN else ""
        shown = ", ".join(skipped[:SKIPPED_NAMES_SHOWN]) + more
        log.warning("skipped %d object(s) at %s that are not *.csv files: %s", len(skipped), day_uri, shown)


def _read_object(client: BaseClient, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _decode(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # tolerate the byte-order mark spreadsheet exports add
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{name} is not UTF-8 text (bad byte at offset {exc.start})") from None
