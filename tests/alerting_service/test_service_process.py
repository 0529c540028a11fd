"""The service as a real process: what it acknowledged survives a crash or a stop; a bad config stops it."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from uvicorn.config import STARTUP_FAILURE

from alerting_service.api.app import prepare_shared_state
from alerting_service.cli import EX_CONFIG, main
from alerting_service.config import Settings, load_settings
from tests.alerting_service.conftest import ADMIN, API_KEYS, INGEST, SettingsFactory, environment_of
from tests.alerting_service.delivery_fixtures import ServiceProcess, free_port, post_failure_events

StartService = Callable[..., ServiceProcess]


def embedded_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", api_keys=API_KEYS, run_dispatcher=False)


async def stored(service: ServiceProcess, event_ids: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=service.url, headers=ADMIN) as client:
        return [(await client.get(f"/v1/events/{event_id}")).status_code for event_id in event_ids]


async def test_every_acknowledged_event_survives_a_kill_9(
    make_settings: SettingsFactory, start_service: StartService
) -> None:
    service = start_service(make_settings())
    await service.until_ready()
    acknowledged = await post_failure_events(service.url, 50)

    service.kill()
    service.start()
    await service.until_ready()

    assert await stored(service, acknowledged) == [200] * 50


async def test_a_stop_during_a_burst_loses_no_acknowledged_event(
    start_service: StartService, tmp_path: Path
) -> None:
    service = start_service(embedded_settings(tmp_path))
    await service.until_ready()
    first_acknowledged = asyncio.Event()

    async def post(n: int) -> str | None:
        body = {"idempotency_key": f"burst/{n}", "type": "task_failure", "dag_id": "d", "task_id": f"t{n}"}
        try:
            answer = await client.post("/v1/events", json=body)
        except httpx.TransportError:
            return None  # refused while stopping: not acknowledged, the sender keeps it
        if answer.status_code != 202:
            return None
        first_acknowledged.set()
        return answer.json()["id"]

    async with httpx.AsyncClient(base_url=service.url, headers=INGEST) as client:
        burst = asyncio.gather(*(post(n) for n in range(200)))
        await first_acknowledged.wait()
        await asyncio.to_thread(service.stop)
        acknowledged = [event_id for event_id in await burst if event_id is not None]
    service.start()
    await service.until_ready()

    assert acknowledged, "the stop came before any event was acknowledged: nothing was tested"
    assert await stored(service, acknowledged) == [200] * len(acknowledged)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_with_a_bad_config_exits_78_naming_the_key(processes: str, tmp_path: Path) -> None:
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump({"route": {"receivers": ["pager"]}}))

    finished = run_serve(tmp_path, "--processes", processes, ALERTING_CONFIG_FILE=str(config_file))

    assert finished.returncode == EX_CONFIG
    assert "route.receivers: unknown receiver 'pager'" in finished.stderr


def test_serve_refuses_fewer_than_one_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--processes", "0"])

    assert exit_.value.code == 2
    assert "--processes: expected a whole number of at least 1, got '0'" in capsys.readouterr().err


def test_serve_with_processes_exits_3_when_its_processes_cannot_start(tmp_path: Path) -> None:
    # The server's processes (multiprocessing starts them with `python -c`) get a bad setting the parent,
    # which checked the configuration, did not have: as when the environment or the YAML changes before a
    # process is replaced. They must stop the server with uvicorn's startup-failure code, not restart in a
    # loop.
    (tmp_path / "sitecustomize.py").write_text(
        'import os, sys\nif sys.argv[:1] == ["-c"]:\n    os.environ["ALERTING_LOG_LEVEL"] = "LOUD"\n'
    )
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))

    finished = run_serve(tmp_path, "--processes", "2", PYTHONPATH=python_path)

    assert finished.returncode == STARTUP_FAILURE
    assert "ALERTING_LOG_LEVEL" in finished.stderr


def make_a_database_another_version_made(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    asyncio.run(prepare_shared_state(settings))
    with sqlite3.connect(settings.data_dir / "alerts.db") as database:
        database.execute("ALTER TABLE events DROP COLUMN log_url")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_on_a_database_another_version_made_exits_78_naming_the_column(
    processes: str, tmp_path: Path
) -> None:
    make_a_database_another_version_made(tmp_path)

    finished = run_serve(tmp_path, "--processes", processes)

    assert finished.returncode == EX_CONFIG
    assert "table events: no column log_url" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_worker_on_a_database_another_version_made_exits_78_naming_the_column(tmp_path: Path) -> None:
    make_a_database_another_version_made(tmp_path)

    finished = run_command(tmp_path, "worker")

    assert finished.returncode == EX_CONFIG
    assert "table events: no column log_url" in finished.stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_with_its_database_down_exits_3_saying_so_in_one_line(processes: str, tmp_path: Path) -> None:
    nothing_listens = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/alerts"

    finished = run_serve(tmp_path, "--processes", processes, ALERTING_DATABASE_URL=nothing_listens)

    assert finished.returncode == STARTUP_FAILURE
    assert "database unavailable: OperationalError: connection to server at" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_worker_whose_metrics_port_is_taken_exits_78_naming_the_option(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]

        finished = run_command(tmp_path, "worker", "--metrics-port", str(port))

    assert finished.returncode == EX_CONFIG
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}: Address already in use" in finished.stderr


def run_serve(tmp_path: Path, *arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """`alerting-service serve` on the embedded default until it exits, with these extra variables."""
    return run_command(tmp_path, "serve", "--port", str(free_port()), *arguments, **environment)


def run_command(tmp_path: Path, *arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """An `alerting-service` command on the embedded default until it exits, with these extra variables."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ALERTING_")}
    return subprocess.run(
        [sys.executable, "-m", "alerting_service.cli", *arguments],
        env=inherited | environment_of(embedded_settings(tmp_path)) | environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
