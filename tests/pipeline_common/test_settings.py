"""DAG configuration from BATCH_PIPELINE_* variables."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from pipeline_common.errors import PipelineConfigError
from pipeline_common.settings import DEFAULT_IMAGE, Runner, load_settings


def test_defaults_run_the_job_locally_with_five_minute_retries():
    settings = load_settings({"AIRFLOW_HOME": "/opt/airflow"})
    assert settings.runner is Runner.LOCAL
    assert settings.image == DEFAULT_IMAGE
    assert settings.retry_delay == timedelta(minutes=5)
    assert settings.max_retry_delay == timedelta(minutes=30)
    assert settings.auto_remove == "success"
    assert settings.reports_dir == Path("/opt/airflow/reports")


def test_a_docker_url_selects_the_docker_runner():
    settings = load_settings({"BATCH_PIPELINE_DOCKER_URL": "unix:///run/docker.sock"})
    assert settings.runner is Runner.DOCKER
    assert settings.docker_url == "unix:///run/docker.sock"


def test_every_setting_is_read_from_its_variable():
    settings = load_settings(
        {
            "BATCH_PIPELINE_IMAGE": "registry.bank.internal:5000/batch-job:1.4.2",
            "BATCH_PIPELINE_DOCKER_NETWORK": "pipeline",
            "BATCH_PIPELINE_MEM_LIMIT": "512m",
            "BATCH_PIPELINE_AUTO_REMOVE": "force",
            "BATCH_PIPELINE_REPORTS_DIR": "/srv/reports",
            "BATCH_PIPELINE_RETRY_DELAY_SECONDS": "0.5",
            "BATCH_PIPELINE_MAX_RETRY_DELAY_SECONDS": "60",
            "BATCH_PIPELINE_EXECUTION_TIMEOUT_SECONDS": "7200",
        }
    )
    assert settings.image == "registry.bank.internal:5000/batch-job:1.4.2"
    assert settings.docker_network == "pipeline"
    assert settings.mem_limit == "512m"
    assert settings.auto_remove == "force"
    assert settings.reports_dir == Path("/srv/reports")
    assert settings.retry_delay == timedelta(milliseconds=500)
    assert settings.max_retry_delay == timedelta(minutes=1)
    assert settings.execution_timeout == timedelta(hours=2)


def test_an_image_pinned_by_digest_is_accepted():
    image = "batch-job@sha256:" + "a" * 64
    assert load_settings({"BATCH_PIPELINE_IMAGE": image}).image == image


@pytest.mark.parametrize("image", ["batch-job", "registry.bank.internal:5000/batch-job"])
def test_an_image_without_tag_is_refused(image):
    with pytest.raises(PipelineConfigError, match=r"BATCH_PIPELINE_IMAGE=.* has no tag"):
        load_settings({"BATCH_PIPELINE_IMAGE": image})


def test_the_latest_tag_is_refused():
    with pytest.raises(PipelineConfigError, match=r"BATCH_PIPELINE_IMAGE=.*':latest'"):
        load_settings({"BATCH_PIPELINE_IMAGE": "batch-job:latest"})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BATCH_PIPELINE_MEM_LIMIT", "2 gigabytes", "is not a Docker memory limit"),
        ("BATCH_PIPELINE_AUTO_REMOVE", "always", "must be one of never, success, force"),
        ("BATCH_PIPELINE_REPORTS_DIR", "reports", "must be an absolute path"),
        ("BATCH_PIPELINE_RETRY_DELAY_SECONDS", "five", "is not a number of seconds"),
        ("BATCH_PIPELINE_MAX_RETRY_DELAY_SECONDS", "-1", "must be positive"),
        ("BATCH_PIPELINE_EXECUTION_TIMEOUT_SECONDS", "0", "must be positive"),
        ("BATCH_PIPELINE_RETRY_DELAY_SECONDS", "nan", "is not a number of seconds"),
        ("BATCH_PIPELINE_RETRY_DELAY_SECONDS", "inf", "is longer than 366 days"),
        ("BATCH_PIPELINE_EXECUTION_TIMEOUT_SECONDS", "1e300", "is longer than 366 days"),
        ("BATCH_PIPELINE_DEADLINE_MINUTES", "NaN", "is not a number of minutes"),
        ("BATCH_PIPELINE_DEADLINE_MINUTES", "600000", "is longer than 366 days"),
        ("BATCH_PIPELINE_DEADLINE_MINUTES", "-5", "must be 0 \\(off\\) or a positive number of minutes"),
        # Negative beyond the longest delay: the sign is what is wrong, not the length.
        ("BATCH_PIPELINE_DEADLINE_MINUTES", "-1e9", "must be 0 \\(off\\) or a positive number of minutes"),
        ("BATCH_PIPELINE_RETRY_DELAY_SECONDS", "-inf", "must be positive"),
        # Positive, but no time at all: read as 0, it turned the deadline off without a word.
        ("BATCH_PIPELINE_DEADLINE_MINUTES", "1e-12", "must be 0 \\(off\\) or a positive number of minutes"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable, value, message):
    with pytest.raises(PipelineConfigError, match=f"{variable}=.*{message}"):
        load_settings({variable: value})


def test_a_mistyped_variable_is_refused_naming_the_setting_it_resembles():
    # Ignored, it would have run the job as a local process instead of a container.
    with pytest.raises(
        PipelineConfigError,
        match="BATCH_PIPELINE_DOCKER_ULR is not a setting, did you mean BATCH_PIPELINE_DOCKER_URL",
    ):
        load_settings({"BATCH_PIPELINE_DOCKER_ULR": "unix:///var/run/docker.sock"})


def test_a_variable_in_the_wrong_case_is_refused_naming_the_setting():
    # Only upper-case names are read: the engine URL in lower case left the job running as a local process.
    with pytest.raises(
        PipelineConfigError,
        match="batch_pipeline_docker_url is not a setting, did you mean BATCH_PIPELINE_DOCKER_URL",
    ):
        load_settings({"batch_pipeline_docker_url": "unix:///var/run/docker.sock"})


def test_an_unknown_variable_is_named_without_its_value():
    with pytest.raises(PipelineConfigError) as raised:
        load_settings({"BATCH_PIPELINE_DB_PASSWORD": "S3cr3tPw"})

    assert "BATCH_PIPELINE_DB_PASSWORD is not a setting" in str(raised.value)
    assert "S3cr3tPw" not in str(raised.value)


def test_the_variables_kubernetes_sets_for_a_service_named_batch_pipeline_are_not_refused():
    # A Service "batch-pipeline-api" in the workers' namespace gives every pod these.
    service_links = {
        "BATCH_PIPELINE_API_SERVICE_HOST": "10.96.0.12",
        "BATCH_PIPELINE_API_SERVICE_PORT": "8080",
        "BATCH_PIPELINE_API_SERVICE_PORT_HTTP": "8080",
        "BATCH_PIPELINE_API_PORT": "tcp://10.96.0.12:8080",
        "BATCH_PIPELINE_API_PORT_8080_TCP": "tcp://10.96.0.12:8080",
        "BATCH_PIPELINE_API_PORT_8080_TCP_ADDR": "10.96.0.12",
    }

    assert load_settings(service_links).runner is Runner.LOCAL


def test_a_port_variable_that_is_no_service_link_is_still_refused():
    with pytest.raises(PipelineConfigError, match="BATCH_PIPELINE_DOCKER_PORT is not a setting"):
        load_settings({"BATCH_PIPELINE_DOCKER_PORT": "2376"})


TLS_FILES = {
    "BATCH_PIPELINE_DOCKER_TLS_CA_CERT": "/etc/docker-tls/ca.pem",
    "BATCH_PIPELINE_DOCKER_TLS_CLIENT_CERT": "/etc/docker-tls/cert.pem",
    "BATCH_PIPELINE_DOCKER_TLS_CLIENT_KEY": "/etc/docker-tls/key.pem",
}


@pytest.mark.parametrize(
    "url",
    [
        "tcp://docker-engine.internal:2376",
        "http://docker-engine.internal:2375",
        # No scheme: Docker's client takes it for tcp://, i.e. plain HTTP.
        "docker-engine.internal:2375",
        "10.0.0.5:2375",
        # The host seen after the last "@" is loopback, but requests connects to the one before the backslash.
        "tcp://10.0.0.5\\@localhost:2375",
        "tcp://10.0.0.5@localhost:2375",
    ],
)
def test_a_tcp_docker_url_without_tls_is_refused_since_the_secrets_would_cross_in_clear(url):
    with pytest.raises(PipelineConfigError, match=r"BATCH_PIPELINE_DOCKER_URL=.* unencrypted TCP"):
        load_settings({"BATCH_PIPELINE_DOCKER_URL": url})


def test_a_tcp_docker_url_with_the_engines_tls_files_is_accepted():
    settings = load_settings({"BATCH_PIPELINE_DOCKER_URL": "tcp://docker-engine.internal:2376", **TLS_FILES})
    assert settings.docker_tls is not None
    assert settings.docker_tls.client_key == Path("/etc/docker-tls/key.pem")


@pytest.mark.parametrize(
    "env",
    [
        {
            "BATCH_PIPELINE_DOCKER_URL": "tcp://docker-socket-proxy:2375",
            "BATCH_PIPELINE_DOCKER_PLAINTEXT": "true",
        },
        {"BATCH_PIPELINE_DOCKER_URL": "tcp://127.0.0.1:2375"},
        {"BATCH_PIPELINE_DOCKER_URL": "unix:///var/run/docker.sock"},
        {"BATCH_PIPELINE_DOCKER_URL": "unix:/var/run/docker.sock"},
        {"BATCH_PIPELINE_DOCKER_URL": "127.0.0.1:2375"},
    ],
    ids=["private-network-chosen", "loopback", "socket", "socket-one-slash", "loopback-without-scheme"],
)
def test_plain_docker_urls_are_accepted_on_a_socket_loopback_or_when_chosen(env):
    assert load_settings(env).docker_tls is None


def test_tls_without_all_three_files_is_refused_naming_the_missing_ones():
    # The provider would silently fall back to plain TCP.
    env = {"BATCH_PIPELINE_DOCKER_URL": "tcp://docker-engine.internal:2376", **TLS_FILES}
    del env["BATCH_PIPELINE_DOCKER_TLS_CLIENT_KEY"]
    with pytest.raises(PipelineConfigError, match="needs BATCH_PIPELINE_DOCKER_TLS_CLIENT_KEY too"):
        load_settings(env)


def test_an_http_docker_url_with_the_tls_files_is_refused_since_the_provider_keeps_it_plain_http():
    # The provider rewrites only tcp:// to https://; http:// stays unencrypted with the TLS files given.
    env = {"BATCH_PIPELINE_DOCKER_URL": "http://docker-engine.internal:2376", **TLS_FILES}
    with pytest.raises(
        PipelineConfigError, match=r"BATCH_PIPELINE_DOCKER_URL=.* plain HTTP .* tcp:// or https://"
    ):
        load_settings(env)
