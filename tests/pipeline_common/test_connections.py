"""Connection validation, and the job environment built from the three pipeline connections."""

from __future__ import annotations

import json
import re

import pytest
from airflow.sdk import Connection
from airflow.sdk._shared.secrets_masker import redact

from pipeline_common.connections import (
    PipelineConnections,
    get_connection,
    job_environment,
    secret_job_environment,
)
from pipeline_common.errors import ConnectionConfigError

S3_SECRET = "s3-Secret-K3y-unit"
DB_PASSWORD = "pg-Pa55word-unit"
ML_KEY = "ml-Api-K3y-unit"


def s3_source(**overrides) -> Connection:
    fields = {
        "conn_id": "minio_default",
        "conn_type": "generic",
        "host": "minio",
        "port": 9000,
        "login": "pipeline-reader",
        "password": S3_SECRET,
        "extra": json.dumps({"bucket": "transactions", "prefix": "incoming", "secure": False}),
    }
    return Connection(**{**fields, **overrides})


def local_source(path: str = "/data/landing") -> Connection:
    return Connection(conn_id="minio_default", conn_type="generic", extra=json.dumps({"path": path}))


def postgres(**overrides) -> Connection:
    fields = {
        "conn_id": "postgres_default",
        "conn_type": "postgres",
        "host": "db.internal",
        "port": 5433,
        "schema": "transactions",
        "login": "batch",
        "password": DB_PASSWORD,
    }
    return Connection(**{**fields, **overrides})


def sqlite(path: str = "/data/results.db") -> Connection:
    return Connection(conn_id="postgres_default", conn_type="sqlite", host=path)


def ml_api(**overrides) -> Connection:
    fields = {"conn_id": "ml_api_default", "conn_type": "http", "host": "ml-api", "port": 8000}
    return Connection(**{**fields, **overrides})


def connections(minio=None, database=None, ml=None) -> PipelineConnections:
    return PipelineConnections(
        minio=minio or s3_source(), postgres=database or postgres(), ml_api=ml or ml_api()
    )


def test_production_connections_give_the_contract_environment():
    assert job_environment(connections()) == {
        "BATCH_SOURCE_URI": "s3://transactions/incoming",
        "BATCH_S3_ENDPOINT_URL": "http://minio:9000",
        "BATCH_DATABASE_URL": "postgresql+psycopg2://batch@db.internal:5433/transactions",
        "BATCH_ML_API_URL": "http://ml-api:8000",
    }


def test_production_secrets_go_only_into_the_secret_environment():
    conns = connections(ml=ml_api(password=ML_KEY))
    assert secret_job_environment(conns) == {
        "BATCH_S3_ACCESS_KEY_ID": "pipeline-reader",
        "BATCH_S3_SECRET_ACCESS_KEY": S3_SECRET,
        "BATCH_DATABASE_PASSWORD": DB_PASSWORD,
        "BATCH_ML_API_KEY": ML_KEY,
    }
    public = json.dumps(job_environment(conns))
    for secret in (S3_SECRET, DB_PASSWORD, ML_KEY, "pipeline-reader"):
        assert secret not in public


def test_embedded_default_reads_a_local_directory_and_a_sqlite_file_without_credentials():
    conns = connections(
        minio=local_source(), database=sqlite(), ml=ml_api(host="http://127.0.0.1", port=8765)
    )
    assert job_environment(conns) == {
        "BATCH_SOURCE_URI": "file:///data/landing",
        "BATCH_DATABASE_URL": "sqlite:////data/results.db",
        "BATCH_ML_API_URL": "http://127.0.0.1:8765",
    }
    assert secret_job_environment(conns) == {}


def test_secure_minio_is_reached_over_https():
    minio = s3_source(extra=json.dumps({"bucket": "transactions", "secure": True}))
    env = job_environment(connections(minio=minio))
    assert env["BATCH_S3_ENDPOINT_URL"] == "https://minio:9000"
    assert env["BATCH_SOURCE_URI"] == "s3://transactions"


def test_an_ml_api_with_schema_https_is_reached_over_https_on_its_port():
    env = job_environment(connections(ml=ml_api(schema="https", port=443)))
    assert env["BATCH_ML_API_URL"] == "https://ml-api:443"


def test_an_ml_api_schema_other_than_http_or_https_is_refused_naming_the_field():
    with pytest.raises(ConnectionConfigError, match="'ml_api_default': field 'schema' must be http or https"):
        job_environment(connections(ml=ml_api(schema="ftp")))


@pytest.mark.parametrize(
    ("conns", "message"),
    [
        (
            connections(ml=ml_api(host="ml-api:9000", port=9000)),
            "'ml_api_default': field 'host' (of 'ml-api') already has a port and field 'port' (9000)",
        ),
        (
            connections(minio=s3_source(host="http://minio:9000", port=9000)),
            "'minio_default': field 'host' (of 'minio') already has a port and field 'port' (9000)",
        ),
    ],
    ids=["ml-api", "minio"],
)
def test_a_port_in_the_host_and_in_the_port_field_is_refused_naming_both(conns, message):
    with pytest.raises(ConnectionConfigError, match=re.escape(message)):
        job_environment(conns)


@pytest.mark.parametrize("port", [None, 8443])
def test_credentials_in_the_host_are_refused_without_quoting_them(port):
    conns = connections(ml=ml_api(host="https://svc:T0pS3cretT0ken@ml-api:8443", port=port))

    with pytest.raises(ConnectionConfigError, match="field 'host' holds credentials") as raised:
        job_environment(conns)

    assert "T0pS3cretT0ken" not in str(raised.value)


@pytest.mark.parametrize(
    "conns",
    [
        connections(ml=ml_api(host="https://svc:T0pS3cretT0ken\uff20x@ml-api/v1", port=None)),
        connections(minio=s3_source(host="https://reader:T0pS3cretT0ken\u2100@minio", port=None)),
    ],
    ids=["ml-api-full-width-at", "minio-account-of"],
)
def test_a_host_urllib_cannot_split_is_refused_without_quoting_it(conns):
    # urllib's own error quotes the host part, credentials included, and is no ConnectionConfigError: the task
    # was retried with it, and its alerts carried it.
    with pytest.raises(ConnectionConfigError, match="field 'host' is no URL or host name") as raised:
        job_environment(conns)

    assert "T0pS3cretT0ken" not in str(raised.value)


@pytest.mark.parametrize(
    "conns",
    [
        connections(ml=ml_api(host="https://ml-api/v1?api_key=T0pS3cretT0ken", port=None)),
        connections(ml=ml_api(host="https://ml-api/v1#T0pS3cretT0ken", port=None)),
        connections(minio=s3_source(host="https://minio/?X-Amz-Security-Token=T0pS3cretT0ken", port=None)),
    ],
    ids=["ml-api-query", "ml-api-fragment", "minio-query"],
)
def test_a_query_or_fragment_in_the_host_is_refused_without_quoting_it(conns):
    # run_batch_processing logs the endpoint URLs (BATCH_ML_API_URL=...), where only passwords are masked.
    with pytest.raises(ConnectionConfigError, match="field 'host' holds a query or a fragment") as raised:
        job_environment(conns)

    assert "T0pS3cretT0ken" not in str(raised.value)


@pytest.mark.parametrize(
    ("conns", "field"),
    [
        (connections(ml=ml_api(password=ML_KEY + "\n")), "password"),
        (connections(minio=s3_source(login=" pipeline-reader")), "login"),
    ],
    ids=["ml-api-key", "s3-access-key-id"],
)
def test_a_credential_an_http_header_cannot_carry_is_refused_without_quoting_it(conns, field):
    # An HTTP library refuses such a header with an error quoting it whole, credential included.
    with pytest.raises(
        ConnectionConfigError, match=f"field\\(s\\) {field} hold whitespace at an end"
    ) as raised:
        job_environment(conns)

    for secret in (ML_KEY, S3_SECRET, "pipeline-reader"):
        assert secret not in str(raised.value)


def test_an_s3_secret_key_with_spaces_or_non_ascii_is_accepted_since_it_only_signs():
    conns = connections(minio=s3_source(password=" pässwörter geheim "))
    assert job_environment(conns)["BATCH_SOURCE_URI"] == "s3://transactions/incoming"


def test_a_port_in_the_host_alone_is_kept():
    env = job_environment(connections(ml=ml_api(host="https://ml-api:8443/", port=None)))
    assert env["BATCH_ML_API_URL"] == "https://ml-api:8443"


def test_ml_tuning_extras_become_job_variables():
    ml = ml_api(extra=json.dumps({"timeout_seconds": 5, "batch_size": 100, "max_retries": 0}))
    env = job_environment(connections(ml=ml))
    assert env["BATCH_ML_TIMEOUT_SECONDS"] == "5"
    assert env["BATCH_ML_BATCH_SIZE"] == "100"
    assert env["BATCH_ML_MAX_RETRIES"] == "0"


@pytest.mark.parametrize(
    ("typo", "meant"), [("timeout_second", "timeout_seconds"), ("BATCH_SIZE", "batch_size")]
)
def test_a_misspelled_ml_tuning_extra_is_refused_naming_the_one_meant(typo, meant):
    ml = ml_api(extra=json.dumps({typo: 5}))
    with pytest.raises(
        ConnectionConfigError, match=f"'ml_api_default': extra '{typo}' is not read, did you mean '{meant}'"
    ):
        job_environment(connections(ml=ml))


def test_an_ml_api_extra_unlike_any_tuning_extra_is_left_alone():
    extra = {"headers": {"X-Team": "fraud"}, "max_redirects": 0, "batch_size": 100}  # an HttpHook option too
    ml = ml_api(extra=json.dumps(extra))
    assert job_environment(connections(ml=ml))["BATCH_ML_BATCH_SIZE"] == "100"


def test_a_login_with_url_characters_is_quoted_in_the_database_url():
    env = job_environment(connections(database=postgres(login="batch@corp")))
    assert env["BATCH_DATABASE_URL"] == "postgresql+psycopg2://batch%40corp@db.internal:5433/transactions"


@pytest.mark.parametrize(
    ("conns", "message"),
    [
        (
            connections(minio=s3_source(password=None)),
            "'minio_default' is missing required field(s): password",
        ),
        (connections(minio=s3_source(host=None, login=None)), "'minio_default' is missing .*: host, login"),
        (
            connections(minio=s3_source(extra=json.dumps({"prefix": "x"}))),
            "'minio_default' .* extra key(s): bucket",
        ),
        (connections(database=postgres(password=None)), "'postgres_default' is missing .*: password"),
        (connections(database=postgres(schema=None)), "'postgres_default' is missing .*: schema"),
        (connections(ml=ml_api(host=None)), "'ml_api_default' is missing required field(s): host"),
    ],
    ids=[
        "minio-password",
        "minio-host-login",
        "minio-bucket",
        "postgres-password",
        "postgres-schema",
        "ml-host",
    ],
)
def test_a_missing_required_field_is_named_with_its_connection(conns, message):
    with pytest.raises(ConnectionConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        job_environment(conns)


def test_a_relative_landing_path_is_refused():
    with pytest.raises(
        ConnectionConfigError, match="'minio_default': extra 'path' must be an absolute directory"
    ):
        job_environment(connections(minio=local_source("landing")))


def test_a_relative_sqlite_path_is_refused():
    with pytest.raises(ConnectionConfigError, match="'postgres_default' \\(sqlite\\): field 'host' must be"):
        job_environment(connections(database=sqlite("results.db")))


def test_a_database_url_in_a_sqlite_host_is_refused_without_quoting_it():
    database = Connection(
        conn_id="postgres_default",
        conn_type="sqlite",
        host=f"postgresql://batch:{DB_PASSWORD}@db/transactions",
    )

    with pytest.raises(ConnectionConfigError, match="field 'host' must be the absolute path") as raised:
        job_environment(connections(database=database))

    assert DB_PASSWORD not in str(raised.value)


def test_an_unsupported_database_type_is_refused():
    with pytest.raises(ConnectionConfigError, match="conn_type 'mysql' is not supported"):
        job_environment(connections(database=postgres(conn_type="mysql")))


def test_an_extra_that_is_not_json_is_refused_without_echoing_it():
    with pytest.raises(ConnectionConfigError, match="'minio_default': extra is not valid JSON") as raised:
        job_environment(connections(minio=s3_source(extra="{bucket: transactions")))
    assert "bucket: transactions" not in str(raised.value)


def test_validation_errors_never_contain_a_secret():
    with pytest.raises(ConnectionConfigError) as raised:
        job_environment(connections(database=postgres(host=None)))
    assert DB_PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            json.dumps({"conn_type": "postgres", "host": "db", "port": "5432x", "password": DB_PASSWORD}),
            "a JSON object with a field of the wrong type",
        ),
        (
            json.dumps({"conn_type": "postgres", "host": "db", "password": DB_PASSWORD})[:-1],
            "not valid JSON: Expecting ',' delimiter at character",
        ),
        (f"postgres://batch:{DB_PASSWORD}@db:54x2/transactions", "a connection URI with a malformed part"),
    ],
    ids=["json-port-not-an-integer", "json-without-closing-brace", "uri-port-not-an-integer"],
)
def test_a_connection_variable_airflow_cannot_parse_is_named_without_its_value(monkeypatch, value, problem):
    monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", value)
    with pytest.raises(ConnectionConfigError) as raised:
        get_connection("postgres_default")
    message = str(raised.value)
    assert message.startswith(
        "connection 'postgres_default': AIRFLOW_CONN_POSTGRES_DEFAULT is set but Airflow cannot parse it ("
    )
    assert problem in message
    assert DB_PASSWORD not in message


def test_a_connection_that_is_not_defined_says_how_to_add_it(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_POSTGRES_DEFAULT", raising=False)
    with pytest.raises(ConnectionConfigError, match="connection 'postgres_default' is not defined: add it"):
        get_connection("postgres_default")


@pytest.mark.parametrize(
    "host",
    ["batch:Hunter2-Leak@db.internal", "postgresql://batch:Hunter2-Leak@db.internal:5432/transactions"],
    ids=["user-password-at-host", "whole-url"],
)
def test_credentials_or_a_url_in_the_database_host_are_refused_without_quoting_them(host):
    # run_batch_processing logs BATCH_DATABASE_URL: a password pasted into the host field (other than the
    # password field's, which Airflow masks) would be written to the task log in clear.
    with pytest.raises(ConnectionConfigError, match="'postgres_default': field 'host' must be") as raised:
        job_environment(connections(database=postgres(host=host)))

    assert "Hunter2-Leak" not in str(raised.value)


def test_an_ipv6_database_host_is_bracketed_in_the_database_url():
    env = job_environment(connections(database=postgres(host="fd00::5")))
    assert env["BATCH_DATABASE_URL"] == "postgresql+psycopg2://batch@[fd00::5]:5433/transactions"


def test_a_database_without_a_port_is_reached_on_5432():
    env = job_environment(connections(database=postgres(port=None)))
    assert env["BATCH_DATABASE_URL"] == "postgresql+psycopg2://batch@db.internal:5432/transactions"


@pytest.mark.parametrize(("secure", "scheme"), [("false", "http"), ("0", "http"), ("true", "https")])
def test_secure_given_as_text_in_the_extra_is_read_as_a_boolean(secure, scheme):
    # The UI's extra editor makes "false" a string: it must not turn on https (nor "true" stay on http).
    minio = s3_source(extra=json.dumps({"bucket": "transactions", "secure": secure}))
    env = job_environment(connections(minio=minio))
    assert env["BATCH_S3_ENDPOINT_URL"] == f"{scheme}://minio:9000"


@pytest.mark.parametrize("secure", ["ture", "on", "https", "y", 2, ""])
def test_a_secure_extra_that_is_no_boolean_is_refused_naming_it(secure):
    # Read as false, a typo would reach the object store over plain HTTP without a word.
    minio = s3_source(extra=json.dumps({"bucket": "transactions", "secure": secure}))
    with pytest.raises(ConnectionConfigError, match=r"'minio_default': extra 'secure' must be true or false"):
        job_environment(connections(minio=minio))


def test_an_ml_api_of_conn_type_https_without_schema_is_reached_over_https():
    # The HttpHook's convention: conn_type https must not fall back to http, which sends the key in clear.
    env = job_environment(connections(ml=ml_api(conn_type="https", port=8443, password=ML_KEY)))
    assert env["BATCH_ML_API_URL"] == "https://ml-api:8443"


def test_the_s3_access_key_id_is_masked_in_logs_like_a_password():
    # Airflow masks only the password field by itself; the job contract treats the access key id as secret.
    secret_job_environment(connections(minio=s3_source(login="AKIA-unit-mask-check")))
    assert redact("listing with AKIA-unit-mask-check") == "listing with ***"


def test_a_credential_with_a_control_character_inside_is_refused_without_quoting_it():
    # Not only at an end: a key pasted with a line break in the middle cannot go into a header either.
    with pytest.raises(
        ConnectionConfigError, match="field\\(s\\) password hold whitespace at an end"
    ) as raised:
        job_environment(connections(ml=ml_api(password="ml-Api\nK3y-unit")))
    assert "K3y-unit" not in str(raised.value)


def test_a_postgres_connection_of_conn_type_postgresql_passes_its_password():
    conns = connections(database=postgres(conn_type="postgresql"))
    assert secret_job_environment(conns)["BATCH_DATABASE_PASSWORD"] == DB_PASSWORD


@pytest.mark.parametrize(
    "extra",
    [
        {"bucket": "transactions", "complete_marker": "_SUCCESS"},
        {"path": "/data", "complete_marker": "_SUCCESS"},
    ],
    ids=["s3", "local"],
)
def test_a_complete_marker_extra_becomes_the_jobs_variable(extra):
    minio = s3_source(extra=json.dumps(extra))
    assert job_environment(connections(minio=minio))["BATCH_COMPLETE_MARKER"] == "_SUCCESS"


@pytest.mark.parametrize("marker", ["", "done/_SUCCESS", "..", " _SUCCESS", True])
def test_a_complete_marker_that_is_no_file_name_is_refused_naming_it(marker):
    minio = s3_source(extra=json.dumps({"bucket": "transactions", "complete_marker": marker}))
    with pytest.raises(
        ConnectionConfigError, match=r"'minio_default': extra 'complete_marker' must be a file name"
    ):
        job_environment(connections(minio=minio))
