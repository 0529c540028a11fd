"""`batch_pipeline_dag` run by Airflow (`airflow dags test`) with its DockerOperator against a real engine:
podman serving the Docker API, running the batch-job image built from this repo.

The connections come as AIRFLOW_CONN_* variables (JSON form), so they never enter the metadata DB; the
containers use the host network (`BATCH_PIPELINE_DOCKER_NETWORK=host`) to reach moto, PostgreSQL and the ML
API on loopback. Each run is a separate `airflow dags test` process: the Docker settings stay out of this
process's environment and every run parses the DAG afresh.
"""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from containers_support import (
    DB_PASSWORD,
    ML_API_KEY,
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    SECRET_JOB_ENVIRONMENT,
    SECRETS,
    podman,
    query_results,
)
from containers_support import run as run_command

from tests.support.peers import Landing
from tests.support.peers import connection_variables as peer_connection_variables

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(1800)]

DAG_ID = "batch_pipeline_dag"
TASK_ID = "run_batch_processing"
SCORED_ASSET = "scored_transactions"


@dataclass(frozen=True)
class DagRunResult:
    exit_code: int
    output: str
    run_id: str
    started_at: datetime
    airflow_home: Path


class FlakyForwarder(socketserver.ThreadingTCPServer):
    """A TCP front for the ML API on loopback that drops its first `drop_first` connections unanswered and
    forwards the rest: to the batch job, the ML API is down for its first attempt and up afterwards."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target_port: int, drop_first: int) -> None:
        self.target_port = target_port
        self.drop_first = drop_first
        self.accepted = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ForwardHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ForwardHandler(socketserver.BaseRequestHandler):
    server: FlakyForwarder

    def handle(self) -> None:
        with self.server.lock:
            self.server.accepted += 1
            drop = self.server.accepted <= self.server.drop_first
        if drop:
            return  # closed without a byte: the client sees the server disconnect
        with socket.create_connection(("127.0.0.1", self.server.target_port)) as upstream:
            pump = threading.Thread(target=_copy, args=(upstream, self.request), daemon=True)
            pump.start()
            _copy(self.request, upstream)
            pump.join(timeout=30)


def _copy(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def connection_variables(landing: Landing, results_db: str, ml_api_url: str) -> dict[str, str]:
    # No retries inside the job: a refused ML API call fails the attempt, Airflow retries the task.
    return peer_connection_variables(
        landing.endpoint,
        results_db,
        ml_api_url,
        s3_access_key_id=S3_ACCESS_KEY_ID,
        s3_secret_access_key=S3_SECRET_ACCESS_KEY,
        db_password=DB_PASSWORD,
        ml_api_key=ML_API_KEY,
        ml_api_extra={"max_retries": 0},
    )


@pytest.fixture(scope="session")
def airflow_docker_env(
    tmp_path_factory: pytest.TempPathFactory, docker_api: str, batch_job_image: str, podman_env
) -> dict[str, str]:
    """The environment of the Airflow processes: an AIRFLOW_HOME of their own (so the leak check reads only
    these runs' files, and other suites never see these runs), the DAG's Docker runner pointed at podman."""
    airflow_home = tmp_path_factory.mktemp("airflow-home-containers")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "CONTAINERS_CONF": podman_env["CONTAINERS_CONF"],
        "BATCH_PIPELINE_DOCKER_URL": docker_api,
        "BATCH_PIPELINE_IMAGE": batch_job_image,
        "BATCH_PIPELINE_DOCKER_NETWORK": "host",
        "BATCH_PIPELINE_MEM_LIMIT": "1g",
        "BATCH_PIPELINE_RETRY_DELAY_SECONDS": "1",
    }
    run_command([sys.executable, "-m", "airflow", "db", "migrate"], env=env)
    return env


def metadata_rows(airflow_home: Path, sql: str, *params) -> list[tuple]:
    with closing(sqlite3.connect(airflow_home / "airflow.db")) as db:
        return db.execute(sql, params).fetchall()


def run_dag(env: dict[str, str], connections: dict[str, str], run_date: date) -> DagRunResult:
    started_at = datetime.now(UTC)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow",
            "dags",
            "test",
            DAG_ID,
            "--conf",
            json.dumps({"run_date": str(run_date)}),
        ],
        env={**env, **connections},
        capture_output=True,
        text=True,
        timeout=600,
    )
    airflow_home = Path(env["AIRFLOW_HOME"])
    [(run_id,)] = metadata_rows(
        airflow_home, "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", DAG_ID
    )
    return DagRunResult(result.returncode, result.stdout + result.stderr, run_id, started_at, airflow_home)


def task_tries(run: DagRunResult) -> list[tuple[int, str]]:
    """(try_number, state) of every attempt of run_batch_processing in the run, oldest first."""
    where = "WHERE dag_id = ? AND run_id = ? AND task_id = ?"
    key = (DAG_ID, run.run_id, TASK_ID)
    history = metadata_rows(
        run.airflow_home, f"SELECT try_number, state FROM task_instance_history {where}", *key
    )
    current = metadata_rows(run.airflow_home, f"SELECT try_number, state FROM task_instance {where}", *key)
    return sorted(set(history) | set(current))


def scored_asset_extras(run: DagRunResult) -> list[dict]:
    rows = metadata_rows(
        run.airflow_home,
        "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE a.name = ? AND e.source_dag_id = ? AND e.source_run_id = ?",
        SCORED_ASSET,
        DAG_ID,
        run.run_id,
    )
    return [json.loads(extra) for (extra,) in rows]


def containers_of(podman_env, image: str, since: datetime) -> dict[str, set[str]]:
    """Container id -> lifecycle events (create, died, remove, ...) of `image` since `since`."""
    events = podman(
        podman_env,
        "events",
        "--stream=false",
        "--since",
        since.isoformat(),
        "--filter",
        "type=container",
        "--format",
        "json",
    )
    lifecycle: dict[str, set[str]] = {}
    for line in events.splitlines():
        event = json.loads(line)
        if event.get("Image") in (image, f"localhost/{image}"):
            lifecycle.setdefault(event["ID"], set()).add(event["Status"])
    return lifecycle


def containers_listed(podman_env, image: str, *options: str) -> list[str]:
    """Ids of the containers of `image` that `podman ps` lists (running ones; all with "--all").

    Compared by name: an `ancestor=` filter with the name as built ("batch-orchestration/...") matches
    nothing, since podman stores it as "localhost/batch-orchestration/..."."""
    listed = podman(podman_env, "ps", *options, "--format", "{{.ID}} {{.Image}}")
    return [
        container_id
        for container_id, listed_image in (line.split() for line in listed.splitlines() if line.strip())
        if listed_image in (image, f"localhost/{image}")
    ]


@pytest.fixture(scope="module")
def successful_run(airflow_docker_env, landing, results_db, ml_api) -> Iterator[DagRunResult]:
    day = date(2026, 4, 1)
    landing.put_sample_day(day, rows=30, bad_share=0.1)
    yield run_dag(airflow_docker_env, connection_variables(landing, results_db, ml_api.url), day)


def test_a_dag_run_through_the_docker_operator_succeeds_and_loads_the_day(successful_run, results_db):
    assert successful_run.exit_code == 0, successful_run.output[-5000:]
    assert task_tries(successful_run) == [(1, "success")]
    (loaded,) = query_results(
        results_db, "SELECT count(*) FROM scored_transactions WHERE run_date = %s", "2026-04-01"
    )
    assert loaded[0] > 0


def test_the_containers_log_lines_reach_the_task_log(successful_run):
    # The job logs "extract: N files from s3://..." to stderr inside the container; DockerOperator copies the
    # container's output into the task log, which `airflow dags test` prints.
    assert successful_run.exit_code == 0, successful_run.output[-5000:]
    assert "extract: 1 files from s3://transactions/incoming/2026-04-01/" in successful_run.output
    assert re.search(r"predict: \d+ transactions scored", successful_run.output)


def test_the_scored_asset_event_carries_the_job_summary_counts(successful_run):
    assert successful_run.exit_code == 0, successful_run.output[-5000:]
    [extra] = scored_asset_extras(successful_run)
    assert extra["run_date"] == "2026-04-01"
    assert extra["counts"]["read"] == 30
    assert extra["counts"]["valid"] + extra["counts"]["rejected"] == 30
    assert extra["counts"]["loaded"] == extra["counts"]["scored"] == extra["counts"]["valid"]


def test_the_container_is_removed_after_the_run(successful_run, podman_env, batch_job_image):
    lifecycle = containers_of(podman_env, batch_job_image, successful_run.started_at)
    assert lifecycle, "no container of the batch-job image was created during the run"
    assert all("remove" in events for events in lifecycle.values()), lifecycle
    assert containers_listed(podman_env, batch_job_image, "--all") == []


@pytest.fixture(scope="module")
def retried_run(airflow_docker_env, landing, results_db, ml_api) -> Iterator[tuple[DagRunResult, int]]:
    """A run whose first container finds the ML API down (its connection dropped) and whose retry finds it up;
    yields the run and how many ML API connections the front accepted."""
    day = date(2026, 4, 2)
    landing.put_sample_day(day, rows=10)
    flaky = FlakyForwarder(target_port=ml_api.port, drop_first=1)
    threading.Thread(target=flaky.serve_forever, daemon=True).start()
    try:
        yield (
            run_dag(airflow_docker_env, connection_variables(landing, results_db, flaky.url), day),
            flaky.accepted,
        )
    finally:
        flaky.shutdown()
        flaky.server_close()


@pytest.fixture(scope="module")
def invalid_data_run(airflow_docker_env, landing, results_db, ml_api) -> Iterator[DagRunResult]:
    day = date(2026, 4, 3)
    landing.put_invalid_day(day)
    yield run_dag(airflow_docker_env, connection_variables(landing, results_db, ml_api.url), day)


def test_a_container_failing_with_exit_1_is_retried_and_the_retry_succeeds(retried_run):
    run, ml_api_connections = retried_run
    assert run.exit_code == 0, run.output[-5000:]
    assert task_tries(run) == [(1, "failed"), (2, "success")]
    assert "the batch job exited with code 1" in run.output
    assert ml_api_connections >= 2
    assert scored_asset_extras(run)[0]["counts"]["loaded"] == 10


def test_invalid_input_data_exit_65_fails_the_run_without_a_retry(invalid_data_run):
    assert invalid_data_run.exit_code != 0
    assert task_tries(invalid_data_run) == [(1, "failed")]
    assert "the batch job exited with code 65" in invalid_data_run.output
    assert scored_asset_extras(invalid_data_run) == []


@pytest.fixture(scope="module")
def timed_out_run(
    airflow_docker_env, landing, results_db, podman_env, batch_job_image
) -> Iterator[DagRunResult]:
    """A run whose every try outlasts an execution_timeout of 8 s: its ML API accepts connections and never
    answers, and the job would wait for it for 10 minutes."""
    day = date(2026, 4, 5)
    landing.put_sample_day(day, rows=5)
    # Its three retries wait 1 s each (the floor) instead of 1-2, 2-4 and 4-8 s: the waits are not under test.
    env = {
        **airflow_docker_env,
        "BATCH_PIPELINE_EXECUTION_TIMEOUT_SECONDS": "8",
        "BATCH_PIPELINE_RETRY_DELAY_SECONDS": "0.1",
    }
    with socket.create_server(("127.0.0.1", 0)) as silent_ml_api:
        connections = peer_connection_variables(
            landing.endpoint,
            results_db,
            f"http://127.0.0.1:{silent_ml_api.getsockname()[1]}",
            s3_access_key_id=S3_ACCESS_KEY_ID,
            s3_secret_access_key=S3_SECRET_ACCESS_KEY,
            db_password=DB_PASSWORD,
            ml_api_key=ML_API_KEY,
            ml_api_extra={"max_retries": 0, "timeout_seconds": 600},
        )
        run = run_dag(env, connections, day)
        try:
            yield run
        finally:
            for container_id in containers_of(podman_env, batch_job_image, run.started_at):
                podman(podman_env, "rm", "--force", "--ignore", container_id)


def test_a_try_past_its_execution_timeout_stops_and_removes_its_container(
    timed_out_run, podman_env, batch_job_image
):
    assert timed_out_run.exit_code != 0
    assert task_tries(timed_out_run) == [(1, "failed"), (2, "failed"), (3, "failed"), (4, "failed")]
    lifecycle = containers_of(podman_env, batch_job_image, timed_out_run.started_at)
    assert len(lifecycle) == 4
    assert containers_listed(podman_env, batch_job_image, "--all") == []
    assert all({"died", "remove"} <= events for events in lifecycle.values()), lifecycle
    assert "timed out while the container ran" in timed_out_run.output


@pytest.fixture(scope="module")
def kept_container(airflow_docker_env, landing, results_db, ml_api, podman_env, batch_job_image):
    """A successful run with BATCH_PIPELINE_AUTO_REMOVE=never; yields the run and its container's inspect
    data, then removes the container."""
    day = date(2026, 4, 4)
    landing.put_sample_day(day, rows=5)
    env = {**airflow_docker_env, "BATCH_PIPELINE_AUTO_REMOVE": "never"}
    run = run_dag(env, connection_variables(landing, results_db, ml_api.url), day)
    ids = list(containers_of(podman_env, batch_job_image, run.started_at))
    try:
        yield run, [json.loads(podman(podman_env, "inspect", container_id))[0] for container_id in ids]
    finally:
        for container_id in ids:
            podman(podman_env, "rm", "--force", container_id)


def test_the_secrets_are_in_the_containers_environment(kept_container):
    run, [container] = kept_container
    assert run.exit_code == 0, run.output[-5000:]
    environment = dict(entry.split("=", 1) for entry in container["Config"]["Env"])
    assert {name: environment.get(name) for name in SECRET_JOB_ENVIRONMENT} == SECRET_JOB_ENVIRONMENT
    assert environment["BATCH_RUN_DATE"] == "2026-04-04"


def test_the_secrets_are_in_no_output_and_no_file_of_airflow(
    successful_run, retried_run, invalid_data_run, kept_container
):
    outputs = (
        successful_run.output + retried_run[0].output + invalid_data_run.output + kept_container[0].output
    )
    assert not [secret for secret in SECRETS if secret in outputs]
    # AIRFLOW_HOME holds the metadata DB (rendered fields, XComs, asset events) and the task log files.
    airflow_home = successful_run.airflow_home
    # Not vacuous: the rendered `environment` (the run date) is stored in what is scanned.
    assert b"BATCH_RUN_DATE" in (airflow_home / "airflow.db").read_bytes()
    leaks = [
        (path, secret)
        for path in airflow_home.rglob("*")
        if path.is_file()
        for secret in SECRETS
        if secret.encode() in path.read_bytes()
    ]
    assert not leaks, leaks
