"""Load: write one run date's scored and rejected transactions, in one transaction, idempotently.

Both tables are upserted on their natural key (`scored_transactions.transaction_id`; `rejected_transactions`
(`run_date`, `source_file`, `line_number`)) with this run's `load_id`; then the date's rows another run wrote
and this one did not are deleted. Re-running a date therefore leaves exactly this run's rows, never
duplicates, and a failure part-way leaves the previous rows untouched.

A `transaction_id` is unique across dates too: when the id was already loaded for another run date, the row is
not moved; it is rejected with that reason instead (the first date loaded keeps it).

`check_database()` connects before the job reads the day. A database refusing the login, the database name
or a privilege (`CONFIG_SQLSTATES`) is a `ConfigError` (exit 78, not retried), an unavailable one a
`TransientError`. So is a table the load cannot write because something else made it with another layout
(`SCHEMA_SQLSTATES`), or, on PostgreSQL, with an `amount` column that would not store every amount exactly:
the job only creates missing tables, it never alters one.

Tables are created when missing. PostgreSQL (`postgresql+psycopg2`) and SQLite are supported; on PostgreSQL
concurrent loads take turns on an advisory lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from batch_job.errors import ConfigError, JobError, TransientError
from batch_job.predict import ScoredTransaction
from batch_job.settings import SQLITE_DRIVER, JobSettings
from batch_job.validate import RejectedRow

log = logging.getLogger(__name__)
T = TypeVar("T")

ROWS_PER_STATEMENT = 1_000
POSTGRES_CONNECT_TIMEOUT_SECONDS = 10
LOAD_LOCK_KEY = 0x62617463686A6F62  # "batchjob": the advisory lock every load of these tables takes
# PostgreSQL SQLSTATEs retrying cannot fix: the login, the database name or a privilege is wrong (exit 78).
CONFIG_SQLSTATES = {
    "28P01": "the password was refused",
    "28000": "the user or this client host is not allowed to connect",
    "3D000": "the database does not exist",
    "42501": "the user lacks a privilege",
}
# libpq gives no SQLSTATE for a connection it could not open (psycopg2's pgcode is None), only the server's
# message: the login messages PostgreSQL sends with those codes are recognised (as it words them in English).
CONNECT_MESSAGE_SQLSTATES = (
    (re.compile(r"password authentication failed|no password supplied"), "28P01"),
    (
        re.compile(
            r'no pg_hba\.conf entry|pg_hba\.conf rejects|role "[^"]*" (does not exist|is not permitted)'
        ),
        "28000",
    ),
    (re.compile(r'database "[^"]*" does not exist'), "3D000"),
    (re.compile(r"permission denied for database"), "42501"),
)
# The load's statements are fixed, so a column or constraint the database says is missing belongs to a table
# made with another layout (an older version, by hand): retrying cannot help, so these are ConfigErrors too.
SCHEMA_SQLSTATES = frozenset({"42703", "42P10"})  # undefined column; no unique key matching the upsert's
SQLITE_SCHEMA_MESSAGE = re.compile(r"has no column named|no such column|ON CONFLICT clause does not match")


class _DecimalText(TypeDecorator[Decimal]):
    """An exact decimal on SQLite, stored as its text: SQLite has no decimal type, and a NUMERIC column turns
    the text into a REAL or an INTEGER (99999999999999.9999, a valid amount, came back as 10^14)."""

    impl = String(32)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Any) -> str | None:
        return None if value is None else f"{Decimal(value):.4f}"

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        # str(): a file created before this type holds the REAL or INTEGER that NUMERIC made of it.
        return None if value is None else Decimal(str(value))


# numeric(18,4) on PostgreSQL: amounts below 10^14 with at most 4 decimal places, exactly.
AMOUNT_PRECISION, AMOUNT_SCALE = 18, 4
AMOUNT_TYPE = Numeric(AMOUNT_PRECISION, AMOUNT_SCALE).with_variant(_DecimalText(), "sqlite")

metadata = MetaData()

scored_transactions = Table(
    "scored_transactions",
    metadata,
    Column("transaction_id", String(64), primary_key=True),
    Column("run_date", Date, nullable=False, index=True),
    Column("account_id", String(64), nullable=False),
    Column("merchant_id", String(64), nullable=False),
    Column("amount", AMOUNT_TYPE, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("country", String(2), nullable=False),
    Column("fraud_score", Float, nullable=False),
    Column("is_fraud", Boolean, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("source_file", Text, nullable=False),
    Column("line_number", Integer, nullable=False),
    Column("load_id", String(36), nullable=False),
    Column("loaded_at", DateTime(timezone=True), nullable=False),
)

rejected_transactions = Table(
    "rejected_transactions",
    metadata,
    # SQLite only auto-increments an INTEGER primary key.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("run_date", Date, nullable=False, index=True),
    Column("source_file", Text, nullable=False),
    Column("line_number", Integer, nullable=False),
    Column("transaction_id", Text),
    Column("raw_record", Text, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("load_id", String(36), nullable=False),
    Column("loaded_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("run_date", "source_file", "line_number", name="uq_rejected_transactions_position"),
)

REJECTS_KEY = ("run_date", "source_file", "line_number")


@dataclass(frozen=True)
class LoadResult:
    loaded: int
    rejected: int
    rejected_as_loaded_for_other_date: int


def build_engine(settings: JobSettings) -> Engine:
    """An engine for `BATCH_DATABASE_URL` with `BATCH_DATABASE_PASSWORD`; nothing connects yet. A database
    error's text leaves out the values bound to its statement (`hide_parameters`): they are customers'
    transactions, and the error goes to the task log."""
    url = settings.sqlalchemy_url()
    if url.drivername == SQLITE_DRIVER:
        directory = Path(url.database or "").parent
        if not directory.is_dir():
            raise ConfigError(
                f"BATCH_DATABASE_URL: the directory {directory} of the SQLite file does not exist"
            )
        return create_engine(url, hide_parameters=True)
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS},
        hide_parameters=True,
    )


def check_database(engine: Engine) -> None:
    """Connect and `SELECT 1`, so a refused login or an unknown database fails before the day is scored."""
    with _database_errors(engine), engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def load_day(
    engine: Engine,
    run_date: dt.date,
    scored: Sequence[ScoredTransaction],
    rejected: Sequence[RejectedRow],
) -> LoadResult:
    """Replace the date's rows in both tables by these, in one transaction; returns the row counts written."""
    load_id = str(uuid.uuid4())
    loaded_at = dt.datetime.now(dt.UTC)
    log.info(
        "load: writing run date %s to %s",
        run_date.isoformat(),
        engine.url.render_as_string(hide_password=True),
    )
    with _database_errors(engine), engine.begin() as connection:
        _serialise_loads(connection)
        metadata.create_all(connection)
        _warn_if_amounts_are_rounded(connection)
        _refuse_an_amount_column_that_rounds(connection, engine)
        written = _upsert_scored(
            connection, (_scored_row(row, run_date, load_id, loaded_at) for row in scored)
        )
        owned_elsewhere = _owners_of_ids_not_written(connection, scored, written)
        all_rejected = [*rejected, *_rejections_for_other_dates(scored, owned_elsewhere)]
        _upsert_rejected(
            connection, (_rejected_row(row, run_date, load_id, loaded_at) for row in all_rejected)
        )
        for table in (scored_transactions, rejected_transactions):
            _delete_rows_of_other_loads(connection, table, run_date, load_id)
        return LoadResult(
            loaded=_count_rows(connection, scored_transactions, run_date),
            rejected=_count_rows(connection, rejected_transactions, run_date),
            rejected_as_loaded_for_other_date=len(owned_elsewhere),
        )


@contextmanager
def _database_errors(engine: Engine) -> Generator[None, None, None]:
    """Raise a refused configuration as `ConfigError`, an unavailable database as `TransientError`."""
    try:
        yield
    except DBAPIError as exc:
        error = _database_error(exc, engine)
        if error is None:
            raise
        raise error from None


def _database_error(exc: DBAPIError, engine: Engine) -> JobError | None:
    sqlstate = _sqlstate(exc)
    if sqlstate in CONFIG_SQLSTATES:
        # The URL is rendered without its password; the server's message names the user and database only.
        return ConfigError(
            f"database {engine.url.render_as_string(hide_password=True)} refused the configuration: "
            f"{CONFIG_SQLSTATES[sqlstate]} (SQLSTATE {sqlstate}): {_first_line(exc.orig)}"
        )
    if sqlstate in SCHEMA_SQLSTATES or SQLITE_SCHEMA_MESSAGE.search(str(exc.orig)):
        return ConfigError(
            f"database {engine.url.render_as_string(hide_password=True)} holds a table the load cannot write "
            f"(made with another layout?): {_first_line(exc.orig)}; compare it with the layout in "
            "docs/architecture.md and, where it differs, migrate it or move it aside for the load to create"
        )
    if isinstance(exc, OperationalError | InterfaceError):
        return TransientError(f"database unavailable: {_first_line(exc.orig)}")
    return None


def _sqlstate(exc: DBAPIError) -> str | None:
    sqlstate = getattr(exc.orig, "pgcode", None)
    if sqlstate is None and isinstance(exc, OperationalError):
        message = str(exc.orig)
        sqlstate = next(
            (code for pattern, code in CONNECT_MESSAGE_SQLSTATES if pattern.search(message)), None
        )
    return sqlstate


def _warn_if_amounts_are_rounded(connection: Connection) -> None:
    """A SQLite file whose table predates the exact decimal text keeps its NUMERIC column: SQLite turns the
    text written there back into a REAL or an INTEGER (99999999999999.9999 becomes 10^14), and create_all
    leaves an existing table as it is."""
    if connection.dialect.name != "sqlite":
        return
    columns = connection.exec_driver_sql(f"PRAGMA table_info({scored_transactions.name})").mappings()
    declared = next((str(column["type"]) for column in columns if column["name"] == "amount"), "")
    if any(word in declared.upper() for word in ("NUMERIC", "DECIMAL")):
        log.warning(
            "load: %s.amount in this SQLite file is %s (made by an earlier version): SQLite rounds the "
            "amounts stored there to a float's precision; move the table aside so that the load recreates "
            "it, storing them exactly",
            scored_transactions.name,
            declared,
        )


def _refuse_an_amount_column_that_rounds(connection: Connection, engine: Engine) -> None:
    """A PostgreSQL table made by hand (a DBA's migration) with fewer decimals or a float type would store the
    amounts rounded, silently (0.0049 in a numeric(16,2) is 0.00), one with fewer integer digits fail on the
    largest: a `ConfigError` before any row is written."""
    if connection.dialect.name != "postgresql":
        return
    columns = inspect(connection).get_columns(scored_transactions.name)
    declared = next((column["type"] for column in columns if column["name"] == "amount"), None)
    if declared is None or _holds_every_amount_exactly(declared):
        return  # a missing column fails the upsert, naming it
    raise ConfigError(
        f"database {engine.url.render_as_string(hide_password=True)} holds {scored_transactions.name}.amount "
        f"as {declared} (made with another layout?), which cannot store every amount exactly; it must be "
        f"numeric({AMOUNT_PRECISION},{AMOUNT_SCALE}) or wider, or numeric without a precision: migrate it, "
        "or move the table aside for the load to create"
    )


def _holds_every_amount_exactly(declared: Any) -> bool:
    if not isinstance(declared, Numeric) or isinstance(declared, Float):
        return False
    if declared.precision is None:
        return True  # numeric without a precision holds any decimal exactly
    scale = declared.scale or 0
    return scale >= AMOUNT_SCALE and declared.precision - scale >= AMOUNT_PRECISION - AMOUNT_SCALE


def _serialise_loads(connection: Connection) -> None:
    # Two loads at once (a manual run beside the scheduled one) would race on CREATE TABLE and on each other's
    # rows; a transaction-scoped advisory lock makes them take turns. SQLite already allows one writer only.
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOAD_LOCK_KEY})


def _upsert_scored(connection: Connection, rows: Iterable[dict[str, Any]]) -> set[str]:
    """Upsert; returns the ids written. An id of another run date is left alone: see the module docstring."""
    written = _upsert(
        connection,
        scored_transactions,
        rows,
        key=("transaction_id",),
        only_if=lambda excluded: scored_transactions.c.run_date == excluded.run_date,
    )
    return {transaction_id for (transaction_id,) in written}


def _upsert_rejected(connection: Connection, rows: Iterable[dict[str, Any]]) -> None:
    _upsert(connection, rejected_transactions, rows, key=REJECTS_KEY)


def _upsert(
    connection: Connection,
    table: Table,
    rows: Iterable[dict[str, Any]],
    *,
    key: tuple[str, ...],
    only_if: Callable[[Any], Any] | None = None,
) -> list[tuple[Any, ...]]:
    """INSERT ... ON CONFLICT (key) DO UPDATE [WHERE only_if]; returns the keys of the rows written. `rows`
    is consumed a statement's worth at a time: a day's rows as dicts at once would double the job's memory."""
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = insert(table)
    updated = {
        column.name: statement.excluded[column.name]
        for column in table.columns
        if column.name not in key and not column.primary_key
    }
    statement = statement.on_conflict_do_update(
        index_elements=list(key),
        set_=updated,
        where=only_if(statement.excluded) if only_if else None,
    ).returning(*(table.c[name] for name in key))
    # With RETURNING, SQLAlchemy sends many rows per statement ("insertmanyvalues"); without it psycopg2's
    # executemany makes one round trip per row, ten times slower.
    written: list[tuple[Any, ...]] = []
    for chunk in _chunks(rows, ROWS_PER_STATEMENT):
        written += [tuple(found) for found in connection.execute(statement, chunk)]
    return written


def _owners_of_ids_not_written(
    connection: Connection, scored: Sequence[ScoredTransaction], written: set[str]
) -> dict[str, dt.date]:
    """The run date each id the upsert skipped was already loaded for."""
    not_written = [
        row.transaction.transaction_id for row in scored if row.transaction.transaction_id not in written
    ]
    owners: dict[str, dt.date] = {}
    for chunk in _chunks(not_written, ROWS_PER_STATEMENT):
        query = select(scored_transactions.c.transaction_id, scored_transactions.c.run_date).where(
            scored_transactions.c.transaction_id.in_(chunk)
        )
        owners.update({transaction_id: owner for transaction_id, owner in connection.execute(query)})
    return owners


def _rejections_for_other_dates(
    scored: Sequence[ScoredTransaction], owners: dict[str, dt.date]
) -> list[RejectedRow]:
    return [
        RejectedRow(
            source_file=row.transaction.source_file,
            line_number=row.transaction.line_number,
            transaction_id=row.transaction.transaction_id,
            raw_record=row.transaction.raw_record,
            reasons=(
                f"transaction_id was already loaded for run date {owners[row.transaction.transaction_id]}",
            ),
        )
        for row in scored
        if row.transaction.transaction_id in owners
    ]


def _delete_rows_of_other_loads(
    connection: Connection, table: Table, run_date: dt.date, load_id: str
) -> None:
    connection.execute(delete(table).where(table.c.run_date == run_date, table.c.load_id != load_id))


def _count_rows(connection: Connection, table: Table, run_date: dt.date) -> int:
    return connection.scalar(select(func.count()).select_from(table).where(table.c.run_date == run_date)) or 0


def _scored_row(
    row: ScoredTransaction, run_date: dt.date, load_id: str, loaded_at: dt.datetime
) -> dict[str, Any]:
    transaction = row.transaction
    return {
        "transaction_id": transaction.transaction_id,
        "run_date": run_date,
        "account_id": transaction.account_id,
        "merchant_id": transaction.merchant_id,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "occurred_at": transaction.occurred_at,
        "country": transaction.country,
        "fraud_score": row.fraud_score,
        "is_fraud": row.is_fraud,
        "model_version": row.model_version,
        "source_file": transaction.source_file,
        "line_number": transaction.line_number,
        "load_id": load_id,
        "loaded_at": loaded_at,
    }


def _rejected_row(
    row: RejectedRow, run_date: dt.date, load_id: str, loaded_at: dt.datetime
) -> dict[str, Any]:
    return {
        "run_date": run_date,
        "source_file": row.source_file,
        "line_number": row.line_number,
        "transaction_id": row.transaction_id,
        "raw_record": row.raw_record,
        "reasons": list(row.reasons),
        "load_id": load_id,
        "loaded_at": loaded_at,
    }


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
