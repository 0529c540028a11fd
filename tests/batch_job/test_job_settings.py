"""JobSettings: the BATCH_* environment of the batch job contract, and the errors naming what is wrong."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from batch_job.errors import ConfigError
from batch_job.settings import LocalLocation, S3Location, load_settings

SECRET = "s3cr3t-value-that-must-not-leak"


def refusal_of(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> str:
    """The message of the ConfigError that `variable` set to `value` gets."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    return str(raised.value)


def test_a_complete_environment_loads_with_the_tuning_defaults(job_env: dict[str, str]) -> None:
    settings = load_settings()
    assert settings.run_date == dt.date(2026, 1, 14)
    assert settings.ml_batch_size == 500
    assert settings.ml_api_key is None


def test_a_missing_variable_is_named(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCH_RUN_DATE")
    with pytest.raises(ConfigError, match="BATCH_RUN_DATE: is not set"):
        load_settings()


def test_every_bad_variable_is_named_at_once(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATCH_ML_API_URL")
    monkeypatch.setenv("BATCH_ML_BATCH_SIZE", "0")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "BATCH_ML_API_URL: is not set" in str(raised.value)
    assert "BATCH_ML_BATCH_SIZE: Input should be greater than 0" in str(raised.value)


def test_a_run_date_that_is_not_a_date_is_named(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_RUN_DATE", "2026-13-01")
    with pytest.raises(ConfigError, match="BATCH_RUN_DATE: "):
        load_settings()


def test_a_source_uri_of_another_scheme_is_refused(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_SOURCE_URI", "https://example.com/landing")
    with pytest.raises(ConfigError, match=r"BATCH_SOURCE_URI: must be s3://bucket/prefix or file:///abs/dir"):
        load_settings()


def test_a_file_uri_without_an_absolute_path_is_refused(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_SOURCE_URI", "file://landing/dir")
    with pytest.raises(ConfigError, match="BATCH_SOURCE_URI: a file URI needs an absolute path"):
        load_settings()


def test_an_s3_uri_gives_bucket_and_prefix(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SOURCE_URI", "s3://transactions/incoming/")
    source = load_settings().source
    assert source == S3Location(bucket="transactions", prefix="incoming")
    assert source.day_uri(dt.date(2026, 1, 14)) == "s3://transactions/incoming/2026-01-14/"


def test_an_s3_uri_without_prefix_reads_days_at_the_bucket_root(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_SOURCE_URI", "s3://transactions")
    assert load_settings().source.day_uri(dt.date(2026, 1, 14)) == "s3://transactions/2026-01-14/"


def test_credentials_in_an_s3_uri_are_refused_without_echoing_them(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The source URI is named in log lines, errors and the summary: the secret key would be printed with it.
    message = refusal_of(monkeypatch, "BATCH_SOURCE_URI", f"s3://AKIAEXAMPLE:{SECRET}@transactions/incoming")
    assert "BATCH_SOURCE_URI: an s3:// URI must not hold credentials" in message
    assert SECRET not in message


@pytest.mark.parametrize("uri", ["s3://transactions/incoming?versionId=1", "s3://transactions/incoming#x"])
def test_an_s3_uri_with_a_query_or_fragment_is_refused(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    # The job would read the prefix without them, silently.
    message = refusal_of(monkeypatch, "BATCH_SOURCE_URI", uri)
    assert "BATCH_SOURCE_URI: an s3:// URI must not hold credentials, a query or a fragment" in message


def test_an_s3_uri_whose_bucket_no_s3_server_takes_is_refused(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore refuses it at the first request with an error the job took for an unreachable server (exit 1).
    message = refusal_of(monkeypatch, "BATCH_SOURCE_URI", "s3://landing zone/incoming")
    assert "BATCH_SOURCE_URI: an s3:// URI's bucket name may hold only letters, digits" in message


def test_a_file_uri_gives_a_local_directory(job_env: dict[str, str]) -> None:
    assert isinstance(load_settings().source, LocalLocation)


def test_a_percent_encoded_file_uri_gives_the_decoded_directory(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_SOURCE_URI", Path("/data/landing zone").as_uri())
    assert load_settings().source == LocalLocation(Path("/data/landing zone"))


def test_a_database_url_with_a_password_is_refused_without_echoing_it(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql+psycopg2://app:{SECRET}@db:5432/transactions"
    message = refusal_of(monkeypatch, "BATCH_DATABASE_URL", url)
    assert "BATCH_DATABASE_URL: must not contain a password" in message
    assert SECRET not in message


@pytest.mark.parametrize("parameter", ["password", "sslpassword", "dsn"])
def test_a_database_url_with_a_password_in_its_query_is_refused_without_echoing_it(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, parameter: str
) -> None:
    # psycopg2 takes every query parameter as a connection keyword, but the job logs the URL with its query.
    url = f"postgresql+psycopg2://app@db:5432/transactions?sslmode=require&{parameter}={SECRET}"
    message = refusal_of(monkeypatch, "BATCH_DATABASE_URL", url)
    assert "BATCH_DATABASE_URL: must not contain a password" in message
    assert SECRET not in message


def test_a_database_url_with_connection_options_in_its_query_is_accepted(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+psycopg2://app@db:5432/transactions?sslmode=verify-full"
    monkeypatch.setenv("BATCH_DATABASE_URL", url)
    assert load_settings().database_url == url


def test_a_database_url_with_a_port_that_is_no_number_is_refused_without_echoing_it(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The password typed where the port goes (an '@' and a ':' swapped).
    message = refusal_of(
        monkeypatch, "BATCH_DATABASE_URL", f"postgresql+psycopg2://app@db:{SECRET}/transactions"
    )
    assert "BATCH_DATABASE_URL: is not a SQLAlchemy URL" in message
    assert SECRET not in message


def test_a_database_url_with_a_port_out_of_range_is_refused(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    message = refusal_of(
        monkeypatch, "BATCH_DATABASE_URL", "postgresql+psycopg2://app@db:543200/transactions"
    )
    assert "BATCH_DATABASE_URL: the port 543200 is not from 1 to 65535" in message


def test_a_relative_sqlite_path_is_refused(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_DATABASE_URL", "sqlite:///results.db")
    with pytest.raises(ConfigError, match="BATCH_DATABASE_URL: a SQLite URL needs an absolute file path"):
        load_settings()


def test_another_database_driver_is_refused(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_DATABASE_URL", "mysql+pymysql://app@db/transactions")
    with pytest.raises(ConfigError, match="BATCH_DATABASE_URL: must use the postgresql"):
        load_settings()


def test_a_plain_postgresql_url_gets_the_psycopg2_driver(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_DATABASE_URL", "postgresql://app@db:5432/transactions")
    assert load_settings().database_url == "postgresql+psycopg2://app@db:5432/transactions"


def test_the_password_is_joined_to_the_url_and_hidden_when_rendered(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_DATABASE_URL", "postgresql+psycopg2://app@db:5432/transactions")
    monkeypatch.setenv("BATCH_DATABASE_PASSWORD", SECRET)
    url = load_settings().sqlalchemy_url()
    assert url.password == SECRET
    assert SECRET not in url.render_as_string(hide_password=True)


def test_a_password_for_a_sqlite_database_is_refused(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_DATABASE_PASSWORD", SECRET)
    with pytest.raises(ConfigError, match="a SQLite database takes no password") as raised:
        load_settings()
    assert SECRET not in str(raised.value)


def test_an_empty_optional_secret_counts_as_unset(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_ML_API_KEY", "")
    assert load_settings().ml_api_key is None


def test_secrets_do_not_appear_in_the_settings_repr(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_ML_API_KEY", SECRET)
    assert SECRET not in repr(load_settings())


def test_the_predict_url_is_appended_to_the_base_url_path(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_ML_API_URL", "http://ml-api:8000/v1/")
    assert load_settings().predict_url == "http://ml-api:8000/v1/predict"


@pytest.mark.parametrize("variable", ["BATCH_ML_API_KEY", "BATCH_S3_ACCESS_KEY_ID"])
@pytest.mark.parametrize("value", [SECRET + "\n", " " + SECRET, SECRET + "\x1bx", SECRET + "é"])
def test_a_credential_an_http_request_cannot_carry_is_refused_without_echoing_it(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # An HTTP library refuses a header holding a newline with an error quoting it whole.
    message = refusal_of(monkeypatch, variable, value)
    assert f"{variable}: holds whitespace at an end" in message
    assert SECRET not in message


@pytest.mark.parametrize("variable", ["BATCH_ML_API_URL", "BATCH_S3_ENDPOINT_URL"])
@pytest.mark.parametrize(
    "url",
    [
        f"http://svc:{SECRET}@ml-api:8000",
        f"http://{SECRET}@ml-api:8000",
        f"http://ml-api:8000/?code={SECRET}",
    ],
    ids=["user-and-password", "user", "query"],
)
def test_credentials_in_a_service_url_are_refused_without_echoing_them(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    message = refusal_of(monkeypatch, variable, url)
    assert f"{variable}: must not hold credentials, a query" in message
    assert SECRET not in message


def test_an_s3_secret_key_with_spaces_or_non_ascii_is_accepted_since_it_only_signs(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_S3_SECRET_ACCESS_KEY", " pässwörter geheim ")
    secret = load_settings().s3_secret_access_key
    assert secret is not None and secret.get_secret_value() == " pässwörter geheim "


def test_a_batch_size_above_what_the_ml_api_takes_is_refused(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ML API takes 1 to 10,000 transactions a request: a larger batch is a configuration error now,
    # not a request the client refuses to build at scoring time (exit 1, retried three times in vain).
    message = refusal_of(monkeypatch, "BATCH_ML_BATCH_SIZE", "10001")
    assert "BATCH_ML_BATCH_SIZE: Input should be less than or equal to 10000" in message


@pytest.mark.parametrize("marker", ["done/_SUCCESS", "..", "_SUCCESS "])
def test_a_complete_marker_that_is_no_file_name_is_refused(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    monkeypatch.setenv("BATCH_COMPLETE_MARKER", marker)
    with pytest.raises(ConfigError, match=r"BATCH_COMPLETE_MARKER: .*must be a file name"):
        load_settings()
