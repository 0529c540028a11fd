"""extract_day: one day's CSV objects from a local directory or an S3-compatible server (moto: conftest)."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from batch_job_support import Landing, S3Bucket, refused_url

from batch_job.errors import ConfigError, InvalidInputError, TransientError
from batch_job.extract import extract_day
from batch_job.settings import load_settings


def test_reads_only_the_days_csv_files_in_name_order(job_env: dict[str, str], landing: Landing) -> None:
    landing.write("b.csv", "b")
    landing.write("a.csv", "a")
    landing.write("C.CSV", "c")
    landing.write("notes.txt", "not a csv")
    landing.write("sub/c.csv", "in a sub-directory")
    landing.write("other-day.csv", "other day", run_date=dt.date(2026, 1, 13))
    extract = extract_day(load_settings())
    assert [(f.uri.rsplit("/", 1)[1], f.text) for f in extract.files] == [
        ("C.CSV", "c"),
        ("a.csv", "a"),
        ("b.csv", "b"),
    ]
    assert extract.day_uri == f"{landing.uri}/2026-01-14/"


def test_the_files_and_folders_of_the_day_it_skips_are_named_in_a_warning(
    job_env: dict[str, str], landing: Landing, caplog: pytest.LogCaptureFixture
) -> None:
    landing.write("a.csv", "a")
    landing.write("transactions.csv.txt", "renamed by a mail client")
    landing.write("late/b.csv", "in a sub-directory")

    extract_day(load_settings())

    warning = f"skipped 2 object(s) at {landing.uri}/2026-01-14/ that are not *.csv files"
    assert f"{warning}: late/, transactions.csv.txt" in caplog.messages


def test_a_day_without_its_directory_is_transient_naming_the_uri_and_the_date(
    job_env: dict[str, str], landing: Landing
) -> None:
    with pytest.raises(
        TransientError, match=f"no CSV objects at {landing.uri}/2026-01-14/ for run date 2026-01-14"
    ):
        extract_day(load_settings())


def test_a_day_directory_without_csv_files_is_transient(job_env: dict[str, str], landing: Landing) -> None:
    landing.write("notes.txt", "not a csv")
    with pytest.raises(TransientError, match="no input: no CSV objects"):
        extract_day(load_settings())


def test_a_missing_landing_directory_is_a_config_error(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, landing: Landing
) -> None:
    monkeypatch.setenv("BATCH_SOURCE_URI", f"{landing.uri}/missing")
    with pytest.raises(ConfigError, match=r"BATCH_SOURCE_URI: the directory .*/missing does not exist"):
        extract_day(load_settings())


def test_a_file_that_is_not_utf8_is_invalid_input(job_env: dict[str, str], landing: Landing) -> None:
    landing.write("latin1.csv", "café".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"latin1\.csv is not UTF-8 text"):
        extract_day(load_settings())


def test_a_byte_order_mark_is_dropped(job_env: dict[str, str], landing: Landing) -> None:
    landing.write("bom.csv", "\ufefftransaction_id".encode())
    assert extract_day(load_settings()).files[0].text == "transaction_id"


def test_reads_only_the_days_csv_objects_from_s3(s3_env: S3Bucket) -> None:
    s3_env.put("incoming/2026-01-14/b.csv", "b")
    s3_env.put("incoming/2026-01-14/a.csv", "a")
    s3_env.put("incoming/2026-01-14/notes.txt", "not a csv")
    s3_env.put("incoming/2026-01-14/sub/c.csv", "in a sub-prefix")
    s3_env.put("incoming/2026-01-13/a.csv", "other day")
    extract = extract_day(load_settings())
    assert [(f.uri, f.text) for f in extract.files] == [
        (f"{s3_env.uri}/incoming/2026-01-14/a.csv", "a"),
        (f"{s3_env.uri}/incoming/2026-01-14/b.csv", "b"),
    ]
    assert extract.day_uri == f"{s3_env.uri}/incoming/2026-01-14/"


def test_reads_upper_case_csv_objects_and_names_the_skipped_ones_from_s3(
    s3_env: S3Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    s3_env.put("incoming/2026-01-14/A.CSV", "a")
    s3_env.put("incoming/2026-01-14/notes.txt", "not a csv")
    s3_env.put("incoming/2026-01-14/late/b.csv", "in a sub-prefix")

    extract = extract_day(load_settings())

    assert [f.uri for f in extract.files] == [f"{s3_env.uri}/incoming/2026-01-14/A.CSV"]
    assert (
        f"skipped 2 object(s) at {s3_env.uri}/incoming/2026-01-14/ that are not *.csv files: late/, notes.txt"
        in caplog.messages
    )


def test_the_folder_marker_of_the_day_is_no_skipped_object(
    s3_env: S3Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    # The S3 and MinIO consoles' "create folder" writes an empty object under the day's own prefix: it was
    # named in a warning as a skipped object without a name at every run.
    s3_env.put("incoming/2026-01-14/", b"")
    s3_env.put("incoming/2026-01-14/a.csv", "a")

    extract = extract_day(load_settings())

    assert [f.uri for f in extract.files] == [f"{s3_env.uri}/incoming/2026-01-14/a.csv"]
    assert not [message for message in caplog.messages if "skipped" in message]


def test_an_s3_day_without_objects_is_transient_naming_the_uri_and_the_date(s3_env: S3Bucket) -> None:
    s3_env.put("incoming/2026-01-13/a.csv", "other day")
    with pytest.raises(
        TransientError, match=f"no CSV objects at {s3_env.uri}/incoming/2026-01-14/ for run date 2026-01-14"
    ):
        extract_day(load_settings())


def test_a_missing_bucket_is_a_config_error(s3_env: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SOURCE_URI", "s3://no-such-bucket/incoming")
    with pytest.raises(
        ConfigError, match="S3 refused access to s3://no-such-bucket/incoming/2026-01-14/: NoSuchBucket"
    ):
        extract_day(load_settings())


def test_an_unreachable_s3_endpoint_is_transient(s3_env: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_S3_ENDPOINT_URL", refused_url())
    with pytest.raises(TransientError, match="S3 is unreachable"):
        extract_day(load_settings())


def test_an_s3_source_without_credentials_is_a_config_error(
    s3_env: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATCH_S3_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="needs both BATCH_S3_ACCESS_KEY_ID and BATCH_S3_SECRET_ACCESS_KEY"):
        extract_day(load_settings())


def test_an_access_key_the_s3_server_does_not_know_is_a_config_error(
    s3_env: S3Bucket, s3_endpoint_url: str
) -> None:
    # A wrong or revoked key will not fix itself: exit 78 at once, not three retries with backoff.
    httpx.post(f"{s3_endpoint_url}/moto-api/reset-auth", content=b"0").raise_for_status()  # check every key
    try:
        with pytest.raises(
            ConfigError, match=f"S3 refused access to {s3_env.uri}/incoming/2026-01-14/: InvalidAccessKeyId"
        ):
            extract_day(load_settings())
    finally:
        httpx.post(f"{s3_endpoint_url}/moto-api/reset-auth", content=b"inf").raise_for_status()


@pytest.fixture
def completeness_marker(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BATCH_COMPLETE_MARKER", "_SUCCESS")
    return "_SUCCESS"


def test_with_a_marker_a_day_whose_marker_is_missing_is_transient(
    job_env: dict[str, str], landing: Landing, completeness_marker: str
) -> None:
    # Its first files have arrived, the rest are still on their way: loaded now, it would be announced whole.
    landing.write("a.csv", "a")
    with pytest.raises(
        TransientError, match=f"{landing.uri}/2026-01-14/ has CSV objects but no _SUCCESS yet"
    ):
        extract_day(load_settings())


def test_with_a_marker_a_day_with_its_marker_is_read_and_the_marker_is_no_skipped_file(
    job_env: dict[str, str], landing: Landing, completeness_marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    landing.write("a.csv", "a")
    landing.write(completeness_marker, "")

    extract = extract_day(load_settings())

    assert [f.text for f in extract.files] == ["a"]
    assert not [message for message in caplog.messages if "skipped" in message]


def test_with_a_marker_an_s3_day_whose_marker_is_missing_is_transient(
    s3_env: S3Bucket, completeness_marker: str
) -> None:
    s3_env.put("incoming/2026-01-14/a.csv", "a")
    s3_env.put("incoming/2026-01-13/_SUCCESS", "")  # another day's
    with pytest.raises(TransientError, match="has CSV objects but no _SUCCESS yet"):
        extract_day(load_settings())


def test_with_a_marker_an_s3_day_with_its_marker_is_read(
    s3_env: S3Bucket, completeness_marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    s3_env.put("incoming/2026-01-14/a.csv", "a")
    s3_env.put("incoming/2026-01-14/_SUCCESS", "")

    extract = extract_day(load_settings())

    assert [f.uri for f in extract.files] == [f"{s3_env.uri}/incoming/2026-01-14/a.csv"]
    assert not [message for message in caplog.messages if "skipped" in message]
