"""Fixtures shared by the alert-service tests.

- `database`: an empty database per test, parametrised over SQLite (a new file) and PostgreSQL (one database
  for the session, created and dropped here, its tables emptied before each test: much faster than a
  database per test). delivery_fixtures.database_fixture is the database-per-test variant.

The other real peers live in delivery_fixtures.py and are registered here, so any test module of this
directory can ask for them by name:
- `smtp_server`: aiosmtpd on loopback, recording every mail; `http_receiver`: an HTTP server on loopback,
  recording every request and answering from a script; `silent_port`: a server that never answers.

Added here:
- `make_settings(routing=..., **overrides)`: Settings on that database with known API keys (`ADMIN_KEY`,
  `INGEST_KEY`), a temporary data dir and the routing YAML given as a dict; the in-process dispatcher is off
  unless asked for, so tests of the API see the deliveries it created as they were created;
- `api` / `running_api(settings)`: the app in-process (lifespan included) behind an httpx.AsyncClient;
- `start_service(settings, command="serve", *arguments)`: the service as a real process (crash and restart
  tests), stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from pytest_asyncio import is_async_test
from sqlalchemy import func, select, text

from alerting_service.api.app import create_app
from alerting_service.config import Settings, load_settings
from alerting_service.db import create_engine, create_session_factory
from alerting_service.models import Base
from tests.alerting_service.delivery_fixtures import (  # ruff: ignore[unused-import]
    ADMIN_KEY,
    INGEST_KEY,
    Database,
    ServiceProcess,
    create_tables,
    database_url,
    http_receiver_fixture,
    new_whsec,
    silent_port_fixture,
    smtp_server_fixture,
)

API_KEYS = f"admin:admin:{ADMIN_KEY},airflow:ingest:{INGEST_KEY}"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
INGEST = {"Authorization": f"Bearer {INGEST_KEY}"}

SettingsFactory = Callable[..., Settings]
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test here runs in the session's event loop, where the shared async fixtures live."""
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if is_async_test(item) and item.path.is_relative_to(HERE):
            item.add_marker(session_loop, append=False)


@pytest.fixture(scope="session")
async def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncGenerator[str]:
    """One PostgreSQL database for the session, with the schema; dropped at the end."""
    async with database_url("postgresql", tmp_path_factory.mktemp("unused")) as url:
        engine = create_engine(load_settings(database_url=url))
        await create_tables(engine)
        await engine.dispose()
        yield url


@pytest.fixture(name="database", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def empty_database(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> AsyncGenerator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'alerts.db'}" if request.param == "sqlite" else postgres_url
    settings = load_settings(database_url=url, data_dir=tmp_path)
    engine = create_engine(settings)
    await create_tables(engine)
    if request.param == "postgresql":
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables}"))
    try:
        yield Database(settings, engine, create_session_factory(engine))
    finally:
        await engine.dispose()


@pytest.fixture
def make_settings(database: Database, tmp_path: Path) -> SettingsFactory:
    def make(*, routing: dict[str, Any] | None = None, **overrides: Any) -> Settings:
        if routing is not None:
            config_file = tmp_path / "alerting.yaml"
            config_file.write_text(yaml.safe_dump(routing), encoding="utf-8")
            overrides["config_file"] = config_file
        defaults: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database.settings.database_url,
            "api_keys": API_KEYS,
            "run_dispatcher": False,
        }
        return load_settings(**(defaults | overrides))

    return make


@dataclass
class Api:
    """The app behind an httpx client, plus the ways tests look at what it stored."""

    client: httpx.AsyncClient
    database: Database

    async def post_event(self, headers: dict[str, str] = INGEST, **fields: Any) -> httpx.Response:
        body = {"idempotency_key": f"key/{fields.get('task_id')}", "type": "task_failure", "dag_id": "dag"}
        return await self.client.post("/v1/events", json=body | fields, headers=headers)

    async def event(self, event_id: str) -> dict[str, Any]:
        answer = await self.client.get(f"/v1/events/{event_id}", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def row_counts(self) -> dict[str, int]:
        """Rows per table: to show that a refused request wrote nothing."""
        async with self.database.sessions() as session:
            return {
                table.name: await session.scalar(select(func.count()).select_from(table)) or 0
                for table in Base.metadata.sorted_tables
            }


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics page as {(name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


@asynccontextmanager
async def running_api(settings: Settings, database: Database) -> AsyncGenerator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://alerting.test") as client:
            yield Api(client, database)


@pytest.fixture
async def api(make_settings: SettingsFactory, database: Database) -> AsyncGenerator[Api]:
    async with running_api(make_settings(), database) as running:
        yield running


# Two webhook receivers on a port nothing listens on: their deliveries stay in the outbox, for tests to read.
TWO_RECEIVERS = {
    "receivers": [
        {"name": name, "webhook": {"url": f"http://127.0.0.1:9/{name}", "secrets": [new_whsec()]}}
        for name in ("hook", "pager")
    ]
}


@pytest.fixture
async def two_receivers(make_settings: SettingsFactory, database: Database) -> AsyncGenerator[Api]:
    """The API with the dispatcher off, sending every event to `hook` and to `pager` (TWO_RECEIVERS)."""
    async with running_api(make_settings(routing=TWO_RECEIVERS), database) as running:
        yield running


def environment_of(settings: Settings) -> dict[str, str]:
    """The ALERTING_* variables that give a process these settings."""
    variables = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = str(value).lower()
        variables[f"ALERTING_{name.upper()}"] = str(value)
    return variables


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(settings: Settings, command: str = "serve", *arguments: str) -> ServiceProcess:
        process = ServiceProcess(
            command, environment_of(settings), tmp_path / f"{command}-{len(started)}.log", arguments
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
