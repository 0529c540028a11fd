"""The database connection: async engine, session factory, schema creation.

SQLite (the embedded default) is tuned for durability and for one writer among readers: WAL journal,
`synchronous=FULL` (a commit reaches the disk before the 202 goes out), a busy timeout instead of immediate
"database is locked" errors. The sqlite3 module opens a transaction with `BEGIN IMMEDIATE` right before the
first write of a unit of work, in the same call: the write lock is taken (or waited for) up front, so a
transaction never fails half-way because another connection committed, reads take no lock at all, and a group
commit costs no separate round trip to the database thread for its BEGIN. The price is that the reads before
that first write see the latest committed state rather than a snapshot held to the commit; the unique
idempotency key and the guarded UPDATEs of the outbox make that safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, event, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.engine.interfaces import ReflectedColumn
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from alerting_service.models import Base

if TYPE_CHECKING:  # config imports expectations.py, which imports this module
    from alerting_service.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=FULL",
    f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "foreign_keys=ON",
)


def database_url(settings: Settings) -> URL:
    url = make_url(settings.effective_database_url)
    if settings.database_password is not None:
        url = url.set(password=settings.database_password.get_secret_value())
    return url


def is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


def prepare_sqlite_file(url: URL) -> None:
    if is_sqlite_file(url):
        Path(str(url.database)).parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def create_engine(settings: Settings) -> AsyncEngine:
    """`hide_parameters`: database errors end up in logs, and the values bound to a statement stay out."""
    url = database_url(settings)
    if url.get_backend_name() == "sqlite":
        prepare_sqlite_file(url)
        # One connection: the admin API's reads and rare writes queue for it in asyncio, first come first
        # served. The hot writes have the writer's own connection (store/writer.py); SQLite has one write
        # lock, and an API write that finds it taken polls with sleeps of up to 100 ms, which is rare.
        engine = create_async_engine(
            url,
            pool_size=1,
            max_overflow=0,
            hide_parameters=True,
            connect_args={"isolation_level": "IMMEDIATE"},
        )
        tune_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True)


def tune_sqlite(engine: Engine) -> None:
    """Set the pragmas on every connection `engine` opens (an async engine's `sync_engine`, or a sync one)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()


def insert_on_conflict(table: Table, dialect_name: str) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can take an ON CONFLICT clause: each dialect has its own construct, spelled alike."""
    return (postgresql if dialect_name == "postgresql" else sqlite).insert(table)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # Objects stay readable after commit: admin routes answer with the rows they just committed (a replayed
    # delivery, a created or expired silence), and an expired attribute cannot reload lazily under asyncio.
    return async_sessionmaker(engine, expire_on_commit=False)


# Any constant shared by every process of the service: `serve` and `worker` may start at the same moment.
SCHEMA_LOCK_KEY = 0x616C657274  # "alert"


# Indexes an earlier version created and a later one replaced (models.py has the current ones).
RETIRED_INDEXES = ("ix_deliveries_status_next_attempt_at",)


def create_schema(connection: Connection) -> None:
    """Create the missing tables and indexes and drop the retired ones. Run it as
    `await writer.transaction(create_schema)`, so that processes starting together take turns (the writer's
    file lock on SQLite, an advisory lock on PostgreSQL's catalog)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})"))
    Base.metadata.create_all(connection)
    # Before the indexes: one on a column the table lacks would fail with the database's own words.
    refuse_tables_of_another_version(connection)
    # create_all adds only missing tables: a database an earlier version made gets the new indexes here.
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            index.create(connection, checkfirst=True)
    for name in RETIRED_INDEXES:
        connection.execute(text(f"DROP INDEX IF EXISTS {name}"))


def _refuses_null(column: ReflectedColumn) -> bool:
    """NOT NULL with nothing the database fills it with (a default, an identity, a generated value)."""
    filled = column.get("default") is not None or column.get("identity") or column.get("computed")
    return not column["nullable"] and not filled


class SchemaMismatch(Exception):
    """The database's tables have columns other than this version writes: another version made them."""


def refuse_tables_of_another_version(connection: Connection) -> None:
    """Refuse at start a table this version cannot write, rather than answer every event 503 later. This
    version does not migrate tables (create_all leaves an existing one as it is): the way out is a new
    database, named in the message."""
    inspector = inspect(connection)
    problems = []
    for table in Base.metadata.sorted_tables:
        found = {column["name"]: column for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in found]
        # A column this version leaves NULL (one it does not know, or one it knows as optional) is harmless
        # unless the table refuses the NULL.
        refusing_null = [
            name
            for name, column in found.items()
            if (name not in table.columns or table.columns[name].nullable) and _refuses_null(column)
        ]
        if missing:
            problems.append(f"table {table.name}: no column {', '.join(missing)}")
        if refusing_null:
            problems.append(
                f"table {table.name}: column {', '.join(refusing_null)} refuses the NULL this version leaves"
            )
    if problems:
        raise SchemaMismatch(
            "the database was made by another version of the service, whose tables this one cannot write:\n"
            + "\n".join(problems)
            + "\nThis version does not migrate a database: point ALERTING_DATABASE_URL (ALERTING_DATA_DIR on"
            " the embedded default) at a new one; the old one keeps its events and unsent deliveries."
        )


async def is_reachable(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def database_problem(exc: Exception) -> str:
    """`Type: first line` of what the driver said, without SQLAlchemy's wrapper around it (whose statement
    and parameters follow on the next lines)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {str(cause).partition(chr(10))[0]}"
