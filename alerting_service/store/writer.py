"""The process's one database writer: every hot write runs here, one transaction after another.

A dedicated thread owns a synchronous connection (pysqlite or psycopg2) and runs each transaction whole,
statement after statement with no hop back to the event loop in between; the event loop awaits one future
per transaction. Group commit (ingest), claims and outcome flushes (the dispatcher) all go through it:

- on SQLite they never compete for the one write lock inside a process (a second connection waiting for that
  lock polls with sleeps of up to 100 ms), and a commit's fsync runs with the GIL released, so the event loop
  keeps answering requests meanwhile;
- synchronous SQLAlchemy Core costs a fraction of the async adaptation per statement (no greenlet switch, no
  queue hop to aiosqlite's thread per statement), which is most of what a small transaction costs.

On SQLite the writers of different processes (`serve --processes N`, `serve` beside `worker`) also take turns
through an exclusive `flock` on `<database>-writer.lock`, held for the whole transaction: a writer that
waits sleeps in the kernel and wakes when the lock is released, where SQLite's own busy handler would poll
with sleeps of up to 100 ms (measured: two `serve` processes polling, ingest p99 343 ms; taking turns on
the flock, 95 ms). Schema creation goes through the writer too, so processes starting together never race
to create the tables.

On SQLite the writer also watches its files: SQLite goes on writing to the database file, WAL and
shared-memory index it has open after they are deleted or replaced at their path (a clean-up freeing disk
space, a copy moved into place), so what it commits then is lost at the next restart (the database file) or
crash (the WAL), or corrupted by the next process to open it (the index). Ingest asks `moved_database_file`
before each commit and refuses the batch rather than acknowledge it.

The async engine (db.py) stays for the admin API's reads and rare writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL

from alerting_service.config import Settings
from alerting_service.db import database_url, is_sqlite_file, prepare_sqlite_file, tune_sqlite

P = ParamSpec("P")
T = TypeVar("T")

# The async drivers the settings name, and the synchronous driver the writer uses for the same database.
SYNC_DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg2"}


def sync_url(url: URL) -> URL:
    """The same database through the synchronous driver; asyncpg's `ssl` option becomes libpq's `sslmode`
    (same values: disable, prefer, require, verify-ca, verify-full)."""
    url = url.set(drivername=SYNC_DRIVERS[url.get_backend_name()])
    if url.get_backend_name() == "postgresql" and "ssl" in url.query:
        url = url.update_query_dict({"sslmode": url.query["ssl"]}).difference_update_query(["ssl"])
    return url


class Writer:
    """Runs `fn(connection, ...)` inside one transaction on the writer thread; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        url = sync_url(database_url(settings))
        self._engine = _create_sync_engine(url)
        self._lock = _SQLiteWriterLock(str(url.database)) if is_sqlite_file(url) else None
        self._files = _SQLiteFiles(str(url.database), self._engine) if is_sqlite_file(url) else None
        # One thread: transactions run one after another, on one connection.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        self._stall_seconds = settings.writer_stall_seconds
        # When the transaction in hand began (its wait for a turn or a lock included); None while idle.
        self._busy_since: float | None = None

    async def transaction(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn(connection, ...)` in one transaction on the writer thread; rolled back if it raises."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: self._run(fn, *args, **kwargs))

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._busy_since = time.monotonic()
        try:
            with self._turn(), self._engine.begin() as connection:
                result = fn(connection, *args, **kwargs)
            if self._files is not None:
                self._files.remember()
            return result
        finally:
            self._busy_since = None

    def moved_database_file(self) -> str | None:
        """The SQLite file (the database, its WAL or its -shm) deleted or replaced at its path since the
        writer's connection opened it, if any; always None on PostgreSQL."""
        return self._files.moved() if self._files is not None else None

    def stalled_for(self) -> float | None:
        """How long the transaction in hand has run, if longer than `writer_stall_seconds`: another process
        hangs holding the SQLite writer lock, or a PostgreSQL lock the transaction waits for."""
        since = self._busy_since
        busy = 0.0 if since is None else time.monotonic() - since
        return busy if busy > self._stall_seconds else None

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        """This process's turn among the processes writing to the same SQLite file."""
        return self._lock.held() if self._lock is not None else contextlib.nullcontext()

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()
        if self._lock is not None:
            self._lock.close()


class _SQLiteWriterLock:
    """An exclusive `flock` on a file beside the database, shared by every process's writer."""

    def __init__(self, database: str) -> None:
        self._fd = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def held(self) -> Generator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks this thread only; the GIL is released meanwhile
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class DatabaseFileMoved(Exception):
    """The SQLite file the writer has open is no longer the one at its path: a commit would not last."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} was deleted or replaced while the service had it open: events are refused, since what"
            " is stored in it now would be lost (README, troubleshooting)"
        )


class _SQLiteFiles:
    """The identity (device, inode) of the database file, its WAL and -shm as the writer's connection has them
    open, compared with what their paths name now. Learnt after a transaction (the WAL of a new database
    appears with its first commit) and again for each new connection, which opens the files afresh."""

    def __init__(self, database: str, engine: Engine) -> None:
        # The -shm too: a process opening the database after it was deleted would index the WAL anew, beside
        # this one's index, and the two would corrupt the database.
        self._paths = (database, f"{database}-wal", f"{database}-shm")
        self._opened: dict[str, tuple[int, int] | None] = {}
        event.listen(engine, "connect", lambda _connection, _record: self._opened.clear())

    def remember(self) -> None:
        for path in self._paths:
            if self._opened.get(path) is None:
                self._opened[path] = _identity(path)

    def moved(self) -> str | None:
        # A WAL not there yet (a new database before its first commit) is no file moved.
        # A copy: the writer thread may add to or clear the dict meanwhile (readyz asks from the event loop).
        opened_files = tuple(self._opened.items())
        moved = (path for path, opened in opened_files if opened and _identity(path) != opened)
        return next(moved, None)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


# The writer's PostgreSQL sessions: its transactions run whole and never idle, so one idle in a transaction
# belongs to a process that hung or lost the network; the server then ends it and frees its locks (other
# processes' batches may be waiting on them, store/events.py), and keepalives notice a dead peer.
POSTGRESQL_WRITER_CONNECT_ARGS = {
    "options": "-c idle_in_transaction_session_timeout=60000",
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _create_sync_engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return create_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=True,
            hide_parameters=True,
            connect_args=POSTGRESQL_WRITER_CONNECT_ARGS,
        )
    prepare_sqlite_file(url)
    engine = create_engine(
        url,
        pool_size=1,
        max_overflow=0,
        hide_parameters=True,
        connect_args={"isolation_level": "IMMEDIATE", "check_same_thread": False},
    )
    tune_sqlite(engine)
    return engine
