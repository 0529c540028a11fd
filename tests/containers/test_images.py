"""The Dockerfiles under docker/: what every image promises (pinned bases, labels, a non-root user), and the
alert service image built and run by podman with the compose stack's routing config."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from containers_support import REPO_ROOT, SCRIPTS, free_port, podman, run

DOCKERFILES = sorted((REPO_ROOT / "docker").glob("*.Dockerfile"))
# Built here from the local base image; airflow.Dockerfile needs apache/airflow from a registry.
LOCALLY_BUILT = ("batch-job", "alerting-service")
SIGNING_KEY = "whsec_" + "B" * 44
API_KEYS = "airflow:ingest:test-ingest-key-0123456789"


def instructions(dockerfile: Path, keyword: str) -> list[str]:
    return re.findall(rf"^{keyword}\s+(.+)$", dockerfile.read_text(), flags=re.MULTILINE)


@pytest.fixture(scope="session")
def alerting_service_image(build_env: dict[str, str]) -> str:
    return run(
        ["bash", str(SCRIPTS / "build_image.sh"), "alerting-service"], env=build_env, timeout=1200
    ).strip()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_default_base_image_is_pinned_by_tag(dockerfile):
    defaults = dict(arg.split("=", 1) for arg in instructions(dockerfile, "ARG") if "=" in arg)
    images = [value for name, value in defaults.items() if name.endswith("IMAGE")]
    assert images, "no default base image"
    for image in images:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_final_user_is_not_root(dockerfile):
    users = instructions(dockerfile, "USER")
    assert users and users[-1].strip() not in ("root", "0", "0:0")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_image_is_labelled_with_its_version(dockerfile):
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile.read_text()


@pytest.mark.parametrize("name", LOCALLY_BUILT)
def test_the_locally_built_images_take_their_base_as_a_build_arg(name):
    dockerfile = REPO_ROOT / "docker" / f"{name}.Dockerfile"
    assert instructions(dockerfile, "FROM") == ["${BASE_IMAGE} AS install", "${BASE_IMAGE}"]


@pytest.mark.parametrize("name", LOCALLY_BUILT)
def test_the_images_install_only_hash_checked_pins_offline(name):
    text = (REPO_ROOT / "docker" / f"{name}.Dockerfile").read_text()
    assert f"--require-hashes --requirement /wheelhouse/{name}.requirements.txt" in text
    assert text.count("--no-index") == 2


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_alert_service_image_runs_as_a_non_root_user(podman_env, alerting_service_image):
    assert podman(podman_env, "run", "--rm", alerting_service_image, "id", "-u").strip() == "10001"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_alert_service_image_accepts_the_compose_routing_config(podman_env, alerting_service_image):
    """As docker-compose.yaml starts it: the YAML mounted read-only, the signing key written to a tmpfs."""
    config = REPO_ROOT / "docker" / "alerting-service" / "config.yaml"
    script = (
        "umask 077"
        " && printf '%s\\n' \"$WEBHOOK_SIGNING_KEY\" > /run/alerting-service/webhook-signing-keys"
        " && unset WEBHOOK_SIGNING_KEY && exec alerting-service check-config"
    )
    result = subprocess.run(
        [
            *("podman", "run", "--rm", "--tmpfs", "/run/alerting-service"),
            *("--volume", f"{config}:/etc/alerting-service/config.yaml:ro"),
            *("-e", "ALERTING_CONFIG_FILE=/etc/alerting-service/config.yaml"),
            *("-e", "WEBHOOK_SIGNING_KEY", "-e", "ALERTING_API_KEYS"),
            *("--entrypoint", "/bin/sh", alerting_service_image, "-c", script),
        ],
        env={
            **podman_env,
            "WEBHOOK_SIGNING_KEY": SIGNING_KEY,
            "ALERTING_API_KEYS": API_KEYS,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "configuration ok" in result.stdout
    assert "oncall-email (email)" in result.stdout and "incident-webhook (webhook)" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_alert_service_container_serves_its_health_endpoint(podman_env, alerting_service_image):
    port = free_port()
    name = f"alerting-service-test-{port}"
    process = subprocess.Popen(
        [
            *("podman", "run", "--rm", "--name", name, "--network", "host", "-e", "ALERTING_API_KEYS"),
            *(
                alerting_service_image,
                "alerting-service",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ),
        ],
        env={**podman_env, "ALERTING_API_KEYS": API_KEYS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "the alert service container did not answer within 60 s"
                time.sleep(0.2)
        assert response.status_code == 200
    finally:
        subprocess.run(["podman", "stop", "--time", "10", name], env=podman_env, capture_output=True)
        process.wait(timeout=30)
