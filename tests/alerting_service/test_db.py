"""The database setup: SQLite tuned for durability, its writers taking turns, and schema creation safe
from concurrent starts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url

from alerting_service.config import load_settings
from alerting_service.db import SchemaMismatch, create_engine, create_schema
from alerting_service.store.writer import Writer, sync_url
from tests.alerting_service.delivery_fixtures import database_url

DURABILITY_PRAGMAS = ("journal_mode", "synchronous", "busy_timeout")


async def test_the_api_engines_sqlite_connection_runs_in_wal_mode_with_full_sync_and_a_busy_timeout(
    tmp_path: Path,
) -> None:
    engine = create_engine(load_settings(data_dir=tmp_path))
    try:
        async with engine.connect() as connection:
            pragmas = [
                (await connection.execute(text(f"PRAGMA {name}"))).scalar() for name in DURABILITY_PRAGMAS
            ]
    finally:
        await engine.dispose()

    assert pragmas == ["wal", 2, 10_000]  # synchronous 2 = FULL


def _pragmas(connection: Connection) -> list[object]:
    return [connection.execute(text(f"PRAGMA {name}")).scalar() for name in DURABILITY_PRAGMAS]


async def test_the_writers_sqlite_connection_runs_in_wal_mode_with_full_sync_and_a_busy_timeout(
    tmp_path: Path,
) -> None:
    # The connection that commits every event before its 202, not the API's engine.
    writer = Writer(load_settings(data_dir=tmp_path))
    try:
        pragmas = await writer.transaction(_pragmas)
    finally:
        writer.close()

    assert pragmas == ["wal", 2, 10_000]  # synchronous 2 = FULL


async def test_the_embedded_database_is_created_in_the_data_dir(tmp_path: Path) -> None:
    writer = Writer(load_settings(data_dir=tmp_path / "data"))
    try:
        await writer.transaction(create_schema)
    finally:
        writer.close()

    assert (tmp_path / "data" / "alerts.db").exists()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_processes_starting_together_create_the_schema_once_without_colliding(
    backend: str, tmp_path: Path
) -> None:
    async with database_url(backend, tmp_path) as url:
        # Each writer has its own connection and, on SQLite, its own handle on the lock file: as processes do.
        writers = [Writer(load_settings(database_url=url, data_dir=tmp_path)) for _ in range(4)]
        try:
            await asyncio.gather(*(writer.transaction(create_schema) for writer in writers))
        finally:
            for writer in writers:
                writer.close()


def _as_an_earlier_version_left_it(connection: Connection) -> None:
    connection.execute(text("DROP INDEX ix_deliveries_status_receiver_next_attempt_at"))
    connection.execute(
        text("CREATE INDEX ix_deliveries_status_next_attempt_at ON deliveries (status, next_attempt_at)")
    )


def _delivery_indexes(connection: Connection) -> set[str]:
    return {index["name"] for index in inspect(connection).get_indexes("deliveries")}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_database_made_by_an_earlier_version_gets_the_current_indexes(
    backend: str, tmp_path: Path
) -> None:
    async with database_url(backend, tmp_path) as url:
        writer = Writer(load_settings(database_url=url, data_dir=tmp_path))
        try:
            await writer.transaction(create_schema)
            await writer.transaction(_as_an_earlier_version_left_it)

            await writer.transaction(create_schema)

            indexes = await writer.transaction(_delivery_indexes)
        finally:
            writer.close()
    assert "ix_deliveries_status_receiver_next_attempt_at" in indexes
    assert "ix_deliveries_status_next_attempt_at" not in indexes


def _without_the_log_url_column(connection: Connection) -> None:
    connection.execute(text("ALTER TABLE events DROP COLUMN log_url"))


def _with_a_column_refusing_null(connection: Connection) -> None:
    connection.execute(text("ALTER TABLE deliveries ADD COLUMN priority INTEGER NOT NULL DEFAULT 0"))
    connection.execute(text("ALTER TABLE deliveries ALTER COLUMN priority DROP DEFAULT"))


def _with_a_generated_column(connection: Connection) -> None:
    connection.execute(text("ALTER TABLE deliveries ADD COLUMN ordinal BIGINT GENERATED ALWAYS AS IDENTITY"))


def _with_a_column_that_may_stay_null(connection: Connection) -> None:
    connection.execute(text("ALTER TABLE events ADD COLUMN team VARCHAR(64)"))


async def _create_schema_on(url: str, tmp_path: Path, alteration: Callable[[Connection], None]) -> None:
    """Create the schema, alter it as another version would have, then create the schema again."""
    writer = Writer(load_settings(database_url=url, data_dir=tmp_path))
    try:
        await writer.transaction(create_schema)
        await writer.transaction(alteration)
        await writer.transaction(create_schema)
    finally:
        writer.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_table_lacking_a_column_this_version_writes_is_refused_naming_the_column(
    backend: str, tmp_path: Path
) -> None:
    async with database_url(backend, tmp_path) as url:
        with pytest.raises(SchemaMismatch, match="table events: no column log_url"):
            await _create_schema_on(url, tmp_path, _without_the_log_url_column)


def _with_an_optional_column_refusing_null(connection: Connection) -> None:
    connection.execute(text("ALTER TABLE events ALTER COLUMN task_id SET NOT NULL"))


# PostgreSQL only: SQLite cannot drop a column's default or make a column NOT NULL after the fact.
@pytest.mark.postgres
@pytest.mark.parametrize(
    ("alteration", "problem"),
    [
        (_with_a_column_refusing_null, "table deliveries: column priority refuses the NULL"),
        (_with_an_optional_column_refusing_null, "table events: column task_id refuses the NULL"),
    ],
    ids=["unknown-column", "optional-column"],
)
async def test_a_column_refusing_the_null_this_version_leaves_is_refused(
    tmp_path: Path, alteration: Callable[[Connection], None], problem: str
) -> None:
    async with database_url("postgresql", tmp_path) as url:
        with pytest.raises(SchemaMismatch, match=problem):
            await _create_schema_on(url, tmp_path, alteration)


@pytest.mark.parametrize(
    ("backend", "alteration"),
    [
        ("sqlite", _with_a_column_that_may_stay_null),
        pytest.param("postgresql", _with_a_column_that_may_stay_null, marks=pytest.mark.postgres),
        pytest.param("postgresql", _with_a_generated_column, marks=pytest.mark.postgres),
    ],
    ids=["sqlite-nullable", "postgresql-nullable", "postgresql-identity"],
)
async def test_a_column_this_version_does_not_know_but_that_takes_no_value_from_it_is_accepted(
    backend: str, alteration: Callable[[Connection], None], tmp_path: Path
) -> None:
    async with database_url(backend, tmp_path) as url:
        await _create_schema_on(url, tmp_path, alteration)


def until(condition: Callable[[], bool]) -> None:
    while not condition():
        time.sleep(0.01)


async def test_a_second_writer_of_the_same_sqlite_file_starts_only_when_the_first_has_committed(
    tmp_path: Path,
) -> None:
    first = Writer(load_settings(data_dir=tmp_path))
    # Reports itself stalled once it has waited 50 ms for its turn: the sign it started and is kept waiting.
    second = Writer(load_settings(data_dir=tmp_path, writer_stall_seconds=0.05))
    holding, release = threading.Event(), threading.Event()

    def write_and_hold(connection: Connection) -> None:
        connection.execute(text("INSERT INTO probe VALUES (1)"))
        holding.set()
        release.wait(timeout=5)

    def rows_seen(connection: Connection) -> int:
        return connection.execute(text("SELECT count(*) FROM probe")).scalar_one()

    try:
        await first.transaction(lambda connection: connection.execute(text("CREATE TABLE probe (n INTEGER)")))
        held = asyncio.create_task(first.transaction(write_and_hold))
        await asyncio.to_thread(holding.wait, 5)
        waiting = asyncio.create_task(second.transaction(rows_seen))
        await asyncio.to_thread(until, lambda: second.stalled_for() is not None or waiting.done())
        release.set()
        _, seen = await asyncio.gather(held, waiting)
    finally:
        first.close()
        second.close()

    assert seen == 1


def _setting(connection: Connection, name: str) -> str | None:
    return connection.execute(text(f"SHOW {name}")).scalar()


@pytest.mark.postgres
async def test_the_writers_postgresql_session_ends_a_transaction_left_idle_after_a_minute(
    tmp_path: Path,
) -> None:
    async with database_url("postgresql", tmp_path) as url:
        writer = Writer(load_settings(database_url=url, data_dir=tmp_path))
        try:
            timeout = await writer.transaction(_setting, "idle_in_transaction_session_timeout")
        finally:
            writer.close()

    assert timeout == "1min"


def test_the_writer_reaches_postgresql_through_psycopg2_with_asyncpgs_ssl_option_as_sslmode() -> None:
    url = make_url("postgresql+asyncpg://alerts@db.bank.example:5432/alerts?ssl=require")

    assert str(sync_url(url)) == "postgresql+psycopg2://alerts@db.bank.example:5432/alerts?sslmode=require"
