"""The database setup: SQLite tuned for durability, and schema creation safe from concurrent starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from alerting_service.config import load_settings
from alerting_service.db import create_engine, create_schema
from alerting_service.store.writer import sync_url
from tests.alerting_service.delivery_fixtures import _create_postgres_database, _drop_postgres_database


async def test_sqlite_runs_in_wal_mode_with_full_sync_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(load_settings(data_dir=tmp_path))
    try:
        async with engine.connect() as connection:
            pragmas = [
                (await connection.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout")
            ]
    finally:
        await engine.dispose()

    assert pragmas == ["wal", 2, 10_000]  # synchronous 2 = FULL


async def test_the_embedded_database_is_created_in_the_data_dir(tmp_path: Path) -> None:
    engine = create_engine(load_settings(data_dir=tmp_path / "data"))
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()

    assert (tmp_path / "data" / "alerts.db").exists()


@pytest.mark.postgres
async def test_processes_starting_together_create_the_schema_once_without_colliding() -> None:
    name = await _create_postgres_database()
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    engines = [create_engine(load_settings(database_url=url)) for _ in range(4)]
    try:
        await asyncio.gather(*(create_schema(engine) for engine in engines))
    finally:
        for engine in engines:
            await engine.dispose()
        await _drop_postgres_database(name)


def test_the_writer_reaches_postgresql_through_psycopg2_with_asyncpgs_ssl_option_as_sslmode() -> None:
    url = make_url("postgresql+asyncpg://alerts@db.bank.example:5432/alerts?ssl=require")

    assert str(sync_url(url)) == "postgresql+psycopg2://alerts@db.bank.example:5432/alerts?sslmode=require"
