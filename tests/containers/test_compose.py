"""docker-compose.yaml: valid for a real compose implementation (Debian's docker-compose parses it against the
compose schema and interpolates .env), and the invariants the stack relies on.

The stack itself needs a Docker engine and a registry (apache/airflow, minio, postgres, mailpit images), which
these machines do not have: what can be checked here is checked on the file, and the project's own images are
built and run by test_batch_job_image.py / test_images.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from containers_support import REPO_ROOT, SCRIPTS

COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
PIPELINE_CONNECTIONS = (
    "MINIO_DEFAULT",
    "POSTGRES_DEFAULT",
    "ML_API_DEFAULT",
    "ALERT_SERVICE_DEFAULT",
    "SMTP_DEFAULT",
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY|TOKEN")
ENV_REFERENCE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def env_file_values(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return dict(pairs)


SECRET_VARIABLES = {
    name: value for name, value in env_file_values(ENV_EXAMPLE).items() if name != "DOCKER_SOCKET_PATH"
}


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """Debian's docker-compose (a Python implementation of the compose spec), installed when missing."""
    if shutil.which("docker-compose") is None:
        # No recommends: they would pull in the docker.io engine, which is not wanted here.
        install = "apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose"
        result = subprocess.run(["bash", "-c", install], capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or shutil.which("docker-compose") is None:
            pytest.fail(
                f"docker-compose is missing and could not be installed (needs root, apt):\n{result.stderr}"
            )
    return shutil.which("docker-compose")


def compose_config(docker_compose: str, env_file: Path) -> subprocess.CompletedProcess:
    # A clean environment: only the env file may supply the variables.
    return subprocess.run(
        [
            *(docker_compose, "--project-directory", str(REPO_ROOT), "--env-file", str(env_file)),
            *("--file", str(COMPOSE_FILE), "config"),
        ],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="session")
def resolved(docker_compose: str) -> dict:
    """The compose file as docker-compose resolves it with .env.example's values."""
    result = compose_config(docker_compose, ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="session")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def airflow_services(config: dict) -> dict[str, dict]:
    return {name: service for name, service in config["services"].items() if name.startswith("airflow-")}


def test_docker_compose_accepts_the_file_with_the_example_env(resolved):
    assert {"airflow-apiserver", "airflow-scheduler", "minio", "ml-api", "alerting-service"} <= set(
        resolved["services"]
    )


def test_a_missing_secret_stops_compose_naming_it(docker_compose, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in SECRET_VARIABLES.items() if k != "ML_API_KEY"))

    result = compose_config(docker_compose, env_file)

    assert result.returncode != 0
    assert "set ML_API_KEY in .env" in result.stderr


def test_the_airflow_services_are_the_official_four_plus_init(resolved):
    assert set(airflow_services(resolved)) == {
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    }


@pytest.mark.parametrize("conn_id", PIPELINE_CONNECTIONS)
def test_every_airflow_service_has_the_connection_as_json(resolved, conn_id):
    for name, service in airflow_services(resolved).items():
        value = service["environment"].get(f"AIRFLOW_CONN_{conn_id}")
        assert value, f"{name} lacks AIRFLOW_CONN_{conn_id}"
        assert json.loads(value)["conn_type"], f"{name}: AIRFLOW_CONN_{conn_id} has no conn_type"


def test_the_connections_point_at_the_compose_services(resolved):
    environment = resolved["services"]["airflow-scheduler"]["environment"]
    hosts = {
        conn_id: json.loads(environment[f"AIRFLOW_CONN_{conn_id}"])["host"]
        for conn_id in PIPELINE_CONNECTIONS
    }
    assert hosts == {
        "MINIO_DEFAULT": "minio",
        "POSTGRES_DEFAULT": "postgres",
        "ML_API_DEFAULT": "http://ml-api:8000",
        "ALERT_SERVICE_DEFAULT": "http://alerting-service:9095",
        "SMTP_DEFAULT": "mailpit",
    }


@pytest.mark.parametrize(
    ("conn_id", "field"),
    [
        ("MINIO_DEFAULT", "login"),
        ("MINIO_DEFAULT", "password"),
        ("POSTGRES_DEFAULT", "password"),
        ("ML_API_DEFAULT", "password"),
        ("ALERT_SERVICE_DEFAULT", "password"),
    ],
)
def test_the_connection_credentials_are_env_references(raw, conn_id, field):
    connection = json.loads(raw["x-airflow-common"]["environment"][f"AIRFLOW_CONN_{conn_id}"])
    assert ENV_REFERENCE.fullmatch(connection[field]), connection[field]


def test_every_secret_looking_variable_takes_its_value_from_the_env_file(resolved):
    for name, service in resolved["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            # A *_FILE variable names where a secret is, not the secret.
            if SECRET_NAME.search(variable) and not variable.endswith("_FILE"):
                assert any(secret in str(value) for secret in SECRET_VARIABLES.values()), (
                    f"{name}: {variable}"
                )


def test_no_secret_value_is_written_into_the_compose_file():
    text = COMPOSE_FILE.read_text()
    assert not [name for name, value in SECRET_VARIABLES.items() if value in text]


def test_every_variable_of_the_example_env_is_used(raw):
    referenced = set(ENV_REFERENCE.findall(COMPOSE_FILE.read_text()))
    assert set(env_file_values(ENV_EXAMPLE)) <= referenced


def test_no_image_is_latest_or_untagged(resolved):
    for name, service in resolved["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image name"
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: {image}"


def test_every_build_context_and_dockerfile_exists(resolved):
    builds = [service["build"] for service in resolved["services"].values() if "build" in service]
    assert builds
    for build in builds:
        assert (Path(build["context"]) / build["dockerfile"]).is_file(), build


def test_long_running_services_have_healthchecks(resolved):
    for name, service in resolved["services"].items():
        if service.get("restart", "no") != "no":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_dependencies_wait_for_health_or_completion(resolved):
    services = resolved["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            one_shot = services[dependency].get("restart", "no") == "no"
            expected = "service_completed_successfully" if one_shot else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dependency}: {spec}"


def test_published_ports_bind_to_loopback_only(raw):
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_the_batch_containers_network_is_shared_with_their_peers(resolved):
    network = resolved["services"]["airflow-scheduler"]["environment"]["BATCH_PIPELINE_DOCKER_NETWORK"]
    assert resolved["networks"]["batch"]["name"] == network
    for peer in ("minio", "postgres", "ml-api"):
        assert "batch" in resolved["services"][peer]["networks"], peer


def test_the_dag_runs_the_image_that_compose_builds_from_the_batch_job_dockerfile(resolved):
    image = resolved["services"]["airflow-scheduler"]["environment"]["BATCH_PIPELINE_IMAGE"]
    built = [
        service["image"]
        for service in resolved["services"].values()
        if service.get("build", {}).get("dockerfile") == "docker/batch-job.Dockerfile"
    ]
    assert built == [image]


def test_only_the_socket_proxy_mounts_the_docker_socket(resolved):
    mounting = [
        name
        for name, service in resolved["services"].items()
        if any("docker.sock" in str(volume) for volume in service.get("volumes", []))
    ]
    assert mounting == ["docker-socket-proxy"]
    scheduler = resolved["services"]["airflow-scheduler"]["environment"]
    assert scheduler["BATCH_PIPELINE_DOCKER_URL"] == "tcp://docker-socket-proxy:2375"


def test_the_socket_proxy_network_is_internal_and_shared_only_with_the_scheduler(resolved):
    assert resolved["networks"]["docker-api"]["internal"] is True
    members = [name for name, s in resolved["services"].items() if "docker-api" in (s.get("networks") or {})]
    assert sorted(members) == ["airflow-scheduler", "docker-socket-proxy"]


def test_make_env_replaces_every_placeholder(tmp_path, docker_compose):
    env_file = tmp_path / ".env"
    subprocess.run(["bash", str(SCRIPTS / "make_env.sh"), str(env_file)], check=True, capture_output=True)

    values = env_file_values(env_file)
    assert set(values) == set(env_file_values(ENV_EXAMPLE))
    assert not [name for name, value in values.items() if "placeholder" in value]
    assert env_file.stat().st_mode & 0o077 == 0
    assert compose_config(docker_compose, env_file).returncode == 0


def test_make_env_writes_a_fernet_key_airflow_accepts(tmp_path):
    from cryptography.fernet import Fernet

    env_file = tmp_path / ".env"
    subprocess.run(["bash", str(SCRIPTS / "make_env.sh"), str(env_file)], check=True, capture_output=True)

    Fernet(env_file_values(env_file)["AIRFLOW_FERNET_KEY"].encode())  # raises on a malformed key


def test_the_alert_service_accepts_the_compose_routing_config(tmp_path):
    """docker/alerting-service/config.yaml through the alert service's own parser, with a signing key file in
    place of the one the container writes at start."""
    from alerting_service.config import parse_alerting_config

    keys = tmp_path / "webhook-signing-keys"
    keys.write_text("whsec_" + "A" * 44 + "\n")
    text = (REPO_ROOT / "docker" / "alerting-service" / "config.yaml").read_text()
    text = text.replace("/run/alerting-service/webhook-signing-keys", str(keys))

    config = parse_alerting_config(text, "docker/alerting-service/config.yaml")

    assert sorted(receiver.name for receiver in config.receivers) == ["incident-webhook", "oncall-email"]
    # The dead man's switch: without an expectation, a run killed without callbacks pages nobody.
    assert [expectation.dag_id for expectation in config.expectations] == ["batch_pipeline_dag"]


def test_the_pipeline_settings_of_the_compose_stack_pass_the_dags_validation(resolved):
    from pipeline_common.settings import Runner, load_settings

    settings = load_settings(resolved["services"]["airflow-scheduler"]["environment"])

    assert settings.runner is Runner.DOCKER
    assert settings.docker_network == resolved["networks"]["batch"]["name"]


def test_the_project_images_are_tagged_with_the_project_version(resolved):
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {service["image"] for service in resolved["services"].values()}
    project_images = [image for image in images if image.startswith("batch-orchestration/")]
    assert len(project_images) == 3, project_images
    assert all(image.endswith(f":{version}") for image in project_images), project_images
