"""Probes and metrics: /healthz, /readyz (the database reachable), /metrics (Prometheus text)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from alerting_service import ingest
from alerting_service.api.app import create_app
from alerting_service.config import load_settings
from tests.alerting_service.conftest import (
    ADMIN,
    API_KEYS,
    INGEST,
    TWO_RECEIVERS,
    Api,
    SettingsFactory,
    running_api,
    samples,
)
from tests.alerting_service.delivery_fixtures import (
    POSTGRES_ADMIN_DSN,
    Database,
    _create_postgres_database,
    _drop_postgres_database,
    create_tables,
    eventually,
    new_whsec,
)

READY = {"status": "ready", "database": True, "writer": True, "ingest": True}


async def test_healthz_answers_ok(api: Api) -> None:
    answer = await api.client.get("/healthz")

    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


async def test_readyz_is_ready_when_the_database_answers(api: Api) -> None:
    answer = await api.client.get("/readyz")

    assert (answer.status_code, answer.json()) == (
        200,
        {"status": "ready", "database": True, "writer": True, "ingest": True},
    )


@dataclass
class DroppableDatabase:
    """The app on a PostgreSQL database of its own, which the test can drop while the app runs."""

    client: httpx.AsyncClient
    name: str

    async def drop(self) -> None:
        await _drop_postgres_database(self.name)

    async def recreate(self) -> None:
        """The database back, with the service's schema: as after a restore."""
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await connection.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await connection.close()
        engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.name}")
        try:
            await create_tables(engine)
        finally:
            await engine.dispose()

    async def set_read_only(self, read_only: bool) -> None:
        """Writes refused (or allowed again) while reads work, as on a standby after a failover."""
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            setting = "SET default_transaction_read_only = on" if read_only else "RESET ALL"
            await connection.execute(f'ALTER DATABASE "{self.name}" {setting}')
            await connection.execute(  # the service's connections come back with the setting
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", self.name
            )
        finally:
            await connection.close()

    async def post_event(self, key: str) -> httpx.Response:
        body = {"idempotency_key": key, "type": "task_failure", "dag_id": "d"}
        return await self.client.post("/v1/events", json=body, headers=INGEST)


@pytest.fixture
async def droppable(tmp_path: Path) -> AsyncGenerator[DroppableDatabase]:
    name = await _create_postgres_database()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    app = create_app(
        load_settings(data_dir=tmp_path, database_url=url, api_keys=API_KEYS, run_dispatcher=False)
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            yield DroppableDatabase(client, name)
    finally:
        await _drop_postgres_database(name)


@pytest.mark.postgres
async def test_readyz_is_503_when_the_database_is_gone(droppable: DroppableDatabase) -> None:
    assert (await droppable.client.get("/readyz")).status_code == 200
    await droppable.drop()

    answer = await droppable.client.get("/readyz")

    assert (answer.status_code, answer.json()) == (
        503,
        {"status": "unavailable", "database": False, "writer": True, "ingest": True},
    )


@pytest.mark.postgres
@pytest.mark.parametrize(
    "path", ["/v1/events", "/v1/events/0", "/v1/deliveries", "/v1/receivers", "/v1/silences"]
)
async def test_the_admin_api_answers_a_json_503_while_the_database_is_gone(
    droppable: DroppableDatabase, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    await droppable.drop()

    with caplog.at_level(logging.WARNING, logger="alerting_service.api"):
        answer = await droppable.client.get(path, headers=ADMIN)

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.json() == {"detail": "the database is unavailable; try again later"}
    [record] = [record for record in caplog.records if record.name.startswith("alerting_service.api")]
    assert "does not exist" in record.getMessage()
    assert record.exc_info is None  # one line, not a traceback per request


async def test_the_openapi_documents_the_503_of_every_admin_operation(api: Api) -> None:
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    admin_operations = {
        (method, path): operation
        for path, methods in paths.items()
        if path.startswith("/v1/")
        for method, operation in methods.items()
        if (method, path) != ("post", "/v1/events")  # the ingest's own 503 says to send the event again
    }

    assert len(admin_operations) == 10
    assert [key for key, operation in admin_operations.items() if "503" not in operation["responses"]] == []


@pytest.mark.postgres
async def test_a_statement_the_database_refuses_as_wrong_is_a_500_with_its_traceback_not_a_503(
    droppable: DroppableDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    # A schema that drifted: retrying cannot help, so no Retry-After, and the traceback is for the operator.
    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{droppable.name}")
    try:
        await connection.execute("ALTER TABLE silences DROP COLUMN comment")
    finally:
        await connection.close()

    with caplog.at_level(logging.ERROR, logger="alerting_service.api"):
        answer = await droppable.client.get("/v1/silences", headers=ADMIN)

    assert (answer.status_code, answer.json()) == (500, {"detail": "internal error"})
    assert "retry-after" not in answer.headers
    [record] = [record for record in caplog.records if record.name.startswith("alerting_service.api")]
    assert record.exc_info is not None


@pytest.mark.postgres
async def test_an_event_that_cannot_be_stored_is_a_503_asking_to_send_it_again(
    droppable: DroppableDatabase,
) -> None:
    await droppable.drop()

    answer = await droppable.client.post(
        "/v1/events", json={"idempotency_key": "k", "type": "task_failure", "dag_id": "d"}, headers=INGEST
    )

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert "could not be stored" in answer.json()["detail"]


@pytest.mark.postgres
async def test_readyz_is_503_saying_events_are_not_stored_while_the_database_refuses_writes(
    droppable: DroppableDatabase,
) -> None:
    await droppable.set_read_only(True)
    assert (await droppable.post_event("refused")).status_code == 503

    answer = await droppable.client.get("/readyz")

    assert (answer.status_code, answer.json()) == (
        503,
        {"status": "unavailable", "database": True, "writer": True, "ingest": False},
    )


@pytest.mark.postgres
async def test_readyz_is_ready_again_once_an_event_is_stored(droppable: DroppableDatabase) -> None:
    await droppable.set_read_only(True)
    assert (await droppable.post_event("refused")).status_code == 503
    await droppable.set_read_only(False)

    assert (await droppable.post_event("stored")).status_code == 202
    assert (await droppable.client.get("/readyz")).status_code == 200


@pytest.mark.postgres
async def test_readyz_forgets_a_failed_write_after_a_while_so_the_service_is_tried_again(
    droppable: DroppableDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "FAILURE_MEMORY", 0.2)
    await droppable.set_read_only(True)
    assert (await droppable.post_event("refused")).status_code == 503
    assert (await droppable.client.get("/readyz")).status_code == 503

    await asyncio.sleep(0.3)

    assert (await droppable.client.get("/readyz")).status_code == 200


@pytest.mark.postgres
async def test_a_database_outage_logs_its_error_once_with_the_traceback_then_a_line_per_batch(
    droppable: DroppableDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    await droppable.drop()

    with caplog.at_level(logging.ERROR, logger="alerting_service.ingest"):
        for n in range(3):
            assert (await droppable.post_event(f"k{n}")).status_code == 503

    failures = [record for record in caplog.records if record.getMessage().startswith("a batch of")]
    assert [record.exc_info is not None for record in failures] == [True, False, False]
    assert "as the batch before" in failures[1].getMessage()


@pytest.mark.postgres
async def test_events_stored_again_after_an_outage_say_so(
    droppable: DroppableDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    await droppable.drop()
    assert (await droppable.post_event("during")).status_code == 503
    await droppable.recreate()

    with caplog.at_level(logging.INFO, logger="alerting_service.ingest"):
        assert (await droppable.post_event("after")).status_code == 202

    assert "events are stored again" in caplog.text


async def _until_the_service_waits_on_a_lock(connection: asyncpg.Connection, database: str) -> int:
    """The pid of the service's session waiting for a lock in `database`."""

    async def waiting() -> int | None:
        return await connection.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", database
        )

    return await eventually(waiting)


@pytest.mark.postgres
async def test_a_lone_event_whose_transaction_lost_its_connection_is_stored_on_a_fresh_one(
    droppable: DroppableDatabase,
) -> None:
    holder = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{droppable.name}")
    try:
        locking = holder.transaction()
        await locking.start()
        await holder.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        posting = asyncio.create_task(droppable.post_event("lone"))
        service_session = await _until_the_service_waits_on_a_lock(holder, droppable.name)
        await holder.execute("SELECT pg_terminate_backend($1)", service_session)
        await locking.rollback()
        answer = await posting
    finally:
        await holder.close()

    assert answer.status_code == 202


@dataclass
class EmbeddedDatabase:
    """The app on the embedded default (a SQLite file in its data dir), whose files the test can move."""

    client: httpx.AsyncClient
    data_dir: Path

    def remove(self, file_name: str, how: str) -> None:
        """Deleted, or replaced by a copy moved into place (as a restore does)."""
        path = self.data_dir / file_name
        if how == "deleted":
            path.unlink()
        else:
            copy = path.with_name(f"{file_name}.copy")
            copy.write_bytes(path.read_bytes())
            copy.replace(path)

    async def post_event(self, key: str) -> httpx.Response:
        body = {"idempotency_key": key, "type": "task_failure", "dag_id": "d"}
        return await self.client.post("/v1/events", json=body, headers=INGEST)


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncGenerator[EmbeddedDatabase]:
    app = create_app(load_settings(data_dir=tmp_path, api_keys=API_KEYS, run_dispatcher=False))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        embedded = EmbeddedDatabase(client, tmp_path)
        assert (await embedded.post_event("before")).status_code == 202
        yield embedded


SQLITE_FILES_MOVED = pytest.mark.parametrize(
    ("file_name", "how"),
    [
        ("alerts.db", "deleted"),
        ("alerts.db", "replaced"),
        ("alerts.db-wal", "deleted"),
        ("alerts.db-wal", "replaced"),
        ("alerts.db-shm", "deleted"),
        ("alerts.db-shm", "replaced"),
    ],
)


@SQLITE_FILES_MOVED
async def test_an_event_is_refused_once_the_sqlite_file_it_would_be_written_to_is_deleted_or_replaced(
    embedded: EmbeddedDatabase, file_name: str, how: str
) -> None:
    """SQLite would go on writing to the file it has open, which the next restart or crash loses."""
    embedded.remove(file_name, how)

    answer = await embedded.post_event("after")

    assert answer.status_code == 503
    assert "could not be stored" in answer.json()["detail"]


@SQLITE_FILES_MOVED
async def test_readyz_is_503_saying_events_are_not_stored_once_a_sqlite_file_is_deleted_or_replaced(
    embedded: EmbeddedDatabase, file_name: str, how: str
) -> None:
    embedded.remove(file_name, how)

    answer = await embedded.client.get("/readyz")

    assert (answer.status_code, answer.json()) == (
        503,
        {"status": "unavailable", "database": True, "writer": True, "ingest": False},
    )


async def test_a_deleted_sqlite_file_is_named_in_the_log(
    embedded: EmbeddedDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    embedded.remove("alerts.db-wal", "deleted")

    with caplog.at_level(logging.ERROR, logger="alerting_service.ingest"):
        assert (await embedded.post_event("after")).status_code == 503

    assert f"{embedded.data_dir / 'alerts.db-wal'} was deleted or replaced" in caplog.text


@contextlib.asynccontextmanager
async def writer_held_up(database: Database) -> AsyncGenerator[None]:
    """What another, hung process would hold: the SQLite writer lock, or a PostgreSQL lock on `events`."""
    url = make_url(database.settings.effective_database_url)
    if url.get_backend_name() == "sqlite":
        lock = os.open(f"{url.database}-writer.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(lock)  # releases the flock
    else:
        async with database.engine.begin() as connection:
            await connection.execute(text("LOCK TABLE events IN SHARE MODE"))
            yield


@pytest.fixture
async def stall_aware_api(make_settings: SettingsFactory, database: Database) -> AsyncGenerator[Api]:
    async with running_api(make_settings(writer_stall_seconds=0.2), database) as running:
        yield running


async def _readiness(api: Api) -> tuple[int, dict]:
    answer = await api.client.get("/readyz")
    return answer.status_code, answer.json()


async def test_readyz_is_503_while_the_writer_waits_on_a_lock_and_ready_again_once_it_is_free(
    stall_aware_api: Api, database: Database
) -> None:
    async with writer_held_up(database):
        posting = asyncio.create_task(stall_aware_api.post_event(task_id="held-up"))
        stuck = await eventually(lambda: _unready(stall_aware_api))
    await posting

    assert stuck == (503, {"status": "unavailable", "database": True, "writer": False, "ingest": True})
    assert await _readiness(stall_aware_api) == (
        200,
        {"status": "ready", "database": True, "writer": True, "ingest": True},
    )


async def _unready(api: Api) -> tuple[int, dict] | None:
    readiness = await _readiness(api)
    return readiness if readiness[0] != 200 else None


async def test_an_event_held_up_by_a_stuck_writer_is_stored_once_the_lock_is_free(
    stall_aware_api: Api, database: Database
) -> None:
    async with writer_held_up(database):
        posting = asyncio.create_task(stall_aware_api.post_event(task_id="held-up"))
        await eventually(lambda: _unready(stall_aware_api))
        assert not posting.done()

    answer = await posting

    assert answer.status_code == 202
    assert (await stall_aware_api.event(answer.json()["id"]))["task_id"] == "held-up"


async def test_metrics_count_received_events_by_type(api: Api) -> None:
    before = samples((await api.client.get("/metrics")).text)
    for n in range(3):
        await api.post_event(idempotency_key=f"m{n}", type="task_retry")

    after = samples((await api.client.get("/metrics")).text)

    key = ("alerting_events_received_total", (("type", "task_retry"),))
    assert after[key] - before[key] == 3


async def test_metrics_show_the_delivery_queue_from_the_database(
    make_settings: SettingsFactory, database: Database
) -> None:
    routing = {
        "receivers": [{"name": "hook", "webhook": {"url": "http://127.0.0.1:9/h", "secrets": [new_whsec()]}}]
    }
    async with running_api(make_settings(routing=routing), database) as api:
        for n in range(4):
            await api.post_event(idempotency_key=f"q{n}")

        exposed = samples((await api.client.get("/metrics")).text)

    assert exposed["alerting_delivery_queue_depth", (("status", "pending"),)] == 4
    assert exposed["alerting_delivery_queue_depth", (("status", "dead"),)] == 0
    assert exposed["alerting_oldest_pending_delivery_age_seconds", ()] > 0


async def test_every_notification_series_is_exported_before_the_first_notification(api: Api) -> None:
    exposed = samples((await api.client.get("/metrics")).text)

    for integration in ("email", "webhook"):
        assert ("alerting_notifications_total", (("integration", integration),)) in exposed
        failed = (
            "alerting_notifications_failed_total",
            (("integration", integration), ("reason", "server_error")),
        )
        assert failed in exposed
        for bucket in ("0.005", "300.0"):
            assert (
                "alerting_notification_latency_seconds_bucket",
                (("integration", integration), ("le", bucket)),
            ) in exposed


def test_a_service_without_receivers_warns_at_start_that_it_delivers_to_no_one(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="alerting_service.api.app")

    create_app(make_settings())

    assert "no receivers configured" in caplog.text


def test_a_service_with_receivers_does_not_warn_about_them(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="alerting_service.api.app")

    create_app(make_settings(routing=TWO_RECEIVERS))

    assert "no receivers configured" not in caplog.text
