"""load_day on SQLite and on the local PostgreSQL: one transaction per run, re-runs leave the same rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from decimal import Decimal

import pytest
from batch_job_support import wait_until
from sqlalchemy import Engine, MetaData, Numeric, create_engine, select, text
from sqlalchemy.exc import DataError

from batch_job.errors import ConfigError, TransientError
from batch_job.load import (
    LOAD_LOCK_KEY,
    ROWS_PER_STATEMENT,
    build_engine,
    check_database,
    load_day,
    metadata,
    rejected_transactions,
    scored_transactions,
)
from batch_job.predict import ScoredTransaction
from batch_job.settings import load_settings
from batch_job.validate import RejectedRow, Transaction

DAY = dt.date(2026, 1, 14)
OTHER_DAY = dt.date(2026, 1, 15)
PASSWORD = "db-password-that-must-not-leak"


def scored(transaction_id: str, run_date: dt.date = DAY, amount: str = "12.3456") -> ScoredTransaction:
    transaction = Transaction(
        transaction_id=transaction_id,
        account_id="ACC1",
        merchant_id="MER1",
        amount=Decimal(amount),
        currency="EUR",
        occurred_at=dt.datetime.combine(run_date, dt.time(9, 30), tzinfo=dt.UTC),
        country="DE",
        source_file="file:///landing/a.csv",
        line_number=int(transaction_id.rsplit("-", 1)[1]) + 1,
        raw_record=f"{transaction_id},ACC1,MER1,{amount},EUR,...,DE",
    )
    return ScoredTransaction(transaction=transaction, fraud_score=0.25, is_fraud=False, model_version="m1")


def rejected(line_number: int, reason: str = "amount '0' is not positive") -> RejectedRow:
    return RejectedRow(
        source_file="file:///landing/a.csv",
        line_number=line_number,
        transaction_id=f"T-{line_number}",
        raw_record=f"T-{line_number},ACC1,MER1,0,EUR,...,DE",
        reasons=(reason,),
    )


def scored_rows(engine: Engine, run_date: dt.date = DAY) -> list[tuple]:
    table = scored_transactions
    query = (
        select(table.c.transaction_id, table.c.amount, table.c.fraud_score, table.c.model_version)
        .where(table.c.run_date == run_date)
        .order_by(table.c.transaction_id)
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def rejected_rows(engine: Engine, run_date: dt.date = DAY) -> list[tuple]:
    table = rejected_transactions
    query = (
        select(table.c.line_number, table.c.transaction_id, table.c.reasons)
        .where(table.c.run_date == run_date)
        .order_by(table.c.line_number)
    )
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def test_scored_and_rejected_rows_are_loaded_with_exact_amounts(engine: Engine) -> None:
    result = load_day(engine, DAY, [scored("T-1"), scored("T-2")], [rejected(4)])
    assert (result.loaded, result.rejected) == (2, 1)
    assert scored_rows(engine) == [
        ("T-1", Decimal("12.3456"), 0.25, "m1"),
        ("T-2", Decimal("12.3456"), 0.25, "m1"),
    ]
    assert rejected_rows(engine) == [(4, "T-4", ["amount '0' is not positive"])]


@pytest.mark.parametrize("amount", ["99999999999999.9999", "1234567890123.4567", "0.0001"])
def test_the_largest_and_smallest_amounts_the_contract_accepts_are_stored_exactly(
    engine: Engine, amount: str
) -> None:
    # SQLite has no decimal type: a NUMERIC column stored 99999999999999.9999 as the integer 10^14.
    load_day(engine, DAY, [scored("T-1", amount=amount)], [])
    assert scored_rows(engine)[0][1] == Decimal(amount)


def test_a_sqlite_table_made_before_the_exact_amounts_is_named_in_a_warning(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    # create_all leaves an existing table alone: its NUMERIC column still rounds what the job writes there.
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    earlier = MetaData()
    scored_transactions.to_metadata(earlier).c.amount.type = Numeric(18, 4)
    earlier.create_all(engine)

    with caplog.at_level(logging.WARNING, logger="batch_job.load"):
        load_day(engine, DAY, [scored("T-1", amount="1234567890123.4567")], [])

    assert "scored_transactions.amount in this SQLite file is NUMERIC(18, 4)" in caplog.text
    assert scored_rows(engine)[0][1] == Decimal("1234567890123.4568"), "still rounded: hence the warning"


def test_a_sqlite_table_made_by_the_load_gives_no_rounding_warning(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="batch_job.load"):
        load_day(engine, DAY, [scored("T-1")], [])
    assert "rounds the amounts" not in caplog.text


def test_a_rerun_of_a_date_leaves_the_same_rows(engine: Engine) -> None:
    load_day(engine, DAY, [scored("T-1"), scored("T-2")], [rejected(4)])
    first = (scored_rows(engine), rejected_rows(engine))
    result = load_day(engine, DAY, [scored("T-1"), scored("T-2")], [rejected(4)])
    assert (scored_rows(engine), rejected_rows(engine)) == first
    assert (result.loaded, result.rejected) == (2, 1)


def test_a_rerun_replaces_the_dates_rows_with_this_runs(engine: Engine) -> None:
    load_day(engine, DAY, [scored("T-1"), scored("T-2")], [rejected(4), rejected(5)])
    load_day(engine, DAY, [scored("T-2", amount="99.00"), scored("T-3")], [rejected(5, "other reason")])
    assert [(row[0], row[1]) for row in scored_rows(engine)] == [
        ("T-2", Decimal("99.00")),
        ("T-3", Decimal("12.3456")),
    ]
    assert rejected_rows(engine) == [(5, "T-5", ["other reason"])]


def test_a_rerun_with_new_scores_replaces_the_scores_of_the_dates_rows(engine: Engine) -> None:
    # Re-scoring a date after a model fix: the same ids, new scores, decision and model version.
    load_day(engine, DAY, [scored("T-1")], [])
    rescored = dataclasses.replace(scored("T-1"), fraud_score=0.97, is_fraud=True, model_version="m2")
    load_day(engine, DAY, [rescored], [])
    assert scored_rows(engine) == [("T-1", Decimal("12.3456"), 0.97, "m2")]


def test_an_empty_run_empties_the_date(engine: Engine) -> None:
    load_day(engine, DAY, [scored("T-1")], [rejected(4)])
    result = load_day(engine, DAY, [], [])
    assert (result.loaded, result.rejected) == (0, 0)
    assert scored_rows(engine) == rejected_rows(engine) == []


def test_other_dates_are_left_alone(engine: Engine) -> None:
    load_day(engine, OTHER_DAY, [scored("T-9", OTHER_DAY)], [rejected(4)])
    load_day(engine, DAY, [scored("T-1")], [rejected(4)])
    load_day(engine, DAY, [], [])
    assert [row[0] for row in scored_rows(engine, OTHER_DAY)] == ["T-9"]
    assert len(rejected_rows(engine, OTHER_DAY)) == 1


def test_an_id_loaded_for_another_date_is_rejected_not_moved(engine: Engine) -> None:
    load_day(engine, OTHER_DAY, [scored("T-1", OTHER_DAY)], [])
    result = load_day(engine, DAY, [scored("T-1"), scored("T-2")], [])
    assert (result.loaded, result.rejected, result.rejected_as_loaded_for_other_date) == (1, 1, 1)
    assert [row[0] for row in scored_rows(engine, OTHER_DAY)] == ["T-1"]
    assert [row[0] for row in scored_rows(engine)] == ["T-2"]
    assert rejected_rows(engine) == [
        (2, "T-1", ["transaction_id was already loaded for run date 2026-01-15"])
    ]


@pytest.mark.postgres
def test_a_failed_load_leaves_the_previous_rows(clean_postgres_database: str) -> None:
    engine = create_engine(clean_postgres_database)
    load_day(engine, DAY, [scored("T-1")], [])
    # Longer than the column: PostgreSQL refuses it half-way through the load (SQLite does not check lengths),
    # in the statement after a whole one of good rows, which only the load's one transaction takes back.
    good_rows = [scored(f"T-3-{n}") for n in range(ROWS_PER_STATEMENT)]
    too_long_id = "T-" + "9" * 100 + "-2"
    with pytest.raises(DataError, match="value too long"):
        load_day(engine, DAY, [*good_rows, scored(too_long_id)], [])
    assert [row[0] for row in scored_rows(engine)] == ["T-1"]
    engine.dispose()


@pytest.mark.postgres
def test_a_database_error_leaves_the_transactions_out_of_its_text(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, clean_postgres_database: str
) -> None:
    # The error reaches the task log through the job's traceback: the rows bound to the statement stay out.
    monkeypatch.setenv("BATCH_DATABASE_URL", clean_postgres_database)
    too_long_id = "T-" + "9" * 100 + "-2"
    with pytest.raises(DataError) as raised:
        load_day(build_engine(load_settings()), DAY, [scored("T-CUSTOMER-1"), scored(too_long_id)], [])
    assert "T-CUSTOMER-1" not in str(raised.value)
    assert "ACC1" not in str(raised.value)


@pytest.mark.postgres
def test_an_unreachable_database_is_transient(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/transactions")
    with pytest.raises(TransientError, match="database unavailable: OperationalError"):
        load_day(build_engine(load_settings()), DAY, [], [])


@pytest.mark.postgres
def test_an_unknown_database_is_a_config_error_naming_it_without_the_password(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/no_such_database")
    monkeypatch.setenv("BATCH_DATABASE_PASSWORD", PASSWORD)
    with pytest.raises(ConfigError) as raised:
        check_database(build_engine(load_settings()))
    assert str(raised.value).startswith(
        "database postgresql+psycopg2://postgres:***@127.0.0.1:5432/no_such_database refused the "
        "configuration: the database does not exist (SQLSTATE 3D000): "
    )
    assert 'database "no_such_database" does not exist' in str(raised.value)
    assert PASSWORD not in str(raised.value)


@pytest.mark.postgres
def test_an_unknown_user_is_a_config_error(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, postgres_database: str
) -> None:
    unknown_user = postgres_database.replace("//postgres@", "//no_such_user@")
    monkeypatch.setenv("BATCH_DATABASE_URL", unknown_user)
    with pytest.raises(ConfigError, match=r"not allowed to connect \(SQLSTATE 28000\).*no_such_user"):
        check_database(build_engine(load_settings()))


@pytest.mark.postgres
def test_a_user_without_the_privilege_to_create_the_tables_is_a_config_error(
    job_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    clean_postgres_database: str,
    unprivileged_role: str,
) -> None:
    monkeypatch.setenv(
        "BATCH_DATABASE_URL", clean_postgres_database.replace("//postgres@", f"//{unprivileged_role}@")
    )
    engine = build_engine(load_settings())
    check_database(engine)  # connecting is allowed
    with pytest.raises(
        ConfigError, match=r"lacks a privilege \(SQLSTATE 42501\).*permission denied for schema"
    ):
        load_day(engine, DAY, [scored("T-1")], [])
    engine.dispose()


def test_a_table_made_without_a_column_the_load_writes_is_a_config_error_naming_it(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE scored_transactions (transaction_id VARCHAR(64) PRIMARY KEY)"))
    with pytest.raises(ConfigError, match=r"holds a table the load cannot write .*run_date"):
        load_day(engine, DAY, [scored("T-1")], [])


def test_a_table_made_without_the_upsert_key_is_a_config_error(engine: Engine) -> None:
    # rejected_transactions as it would be without its unique position: the upsert has no key to land on.
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE rejected_transactions (id INTEGER PRIMARY KEY, run_date DATE, "
                "source_file TEXT, line_number INTEGER, transaction_id TEXT, raw_record TEXT, reasons TEXT, "
                "load_id TEXT, loaded_at TIMESTAMP)"
            )
        )
    with pytest.raises(ConfigError, match="holds a table the load cannot write"):
        load_day(engine, DAY, [], [rejected(2)])


def test_a_missing_sqlite_directory_is_a_config_error(
    job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_DATABASE_URL", "sqlite:////no/such/directory/results.db")
    with pytest.raises(
        ConfigError, match="the directory /no/such/directory of the SQLite file does not exist"
    ):
        build_engine(load_settings())


@pytest.mark.postgres
def test_the_password_reaches_the_database_but_not_the_log(
    job_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    clean_postgres_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("BATCH_DATABASE_URL", clean_postgres_database)
    monkeypatch.setenv("BATCH_DATABASE_PASSWORD", PASSWORD)  # the local server trusts loopback, so any works
    engine = build_engine(load_settings())
    with caplog.at_level(logging.DEBUG):
        load_day(engine, DAY, [scored("T-1")], [])
    engine.dispose()
    assert engine.url.password == PASSWORD
    assert "load: writing run date 2026-01-14 to postgresql+psycopg2://postgres:***@" in caplog.text
    assert PASSWORD not in caplog.text


@pytest.mark.postgres
def test_a_load_waits_for_a_concurrent_load_to_finish(clean_postgres_database: str) -> None:
    engine = create_engine(clean_postgres_database)
    load_day(engine, DAY, [scored("T-1")], [])
    finished = threading.Event()
    with engine.connect() as other_load:
        other_load.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOAD_LOCK_KEY})
        waiter = threading.Thread(target=lambda: (load_day(engine, DAY, [scored("T-2")], []), finished.set()))
        waiter.start()
        wait_until(lambda: _advisory_lock_waiters(engine) == 1, "the second load waiting on the lock")
        assert not finished.is_set()
        other_load.commit()  # the first load's transaction ends: the lock is released
    waiter.join(timeout=10)
    assert finished.is_set()
    assert [row[0] for row in scored_rows(engine)] == ["T-2"]
    engine.dispose()


def _advisory_lock_waiters(engine: Engine) -> int:
    with engine.connect() as connection:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return connection.scalar(text(query)) or 0


def made_with_amount_type(database_url: str, amount_type: str) -> Engine:
    """The load's tables, as a DBA's migration might have made them: `amount` of `amount_type`."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        metadata.create_all(connection)
        connection.execute(text(f"ALTER TABLE scored_transactions ALTER COLUMN amount TYPE {amount_type}"))
    return engine


@pytest.mark.postgres
@pytest.mark.parametrize("amount_type", ["NUMERIC(16, 2)", "DOUBLE PRECISION", "NUMERIC(14, 4)"])
def test_a_table_whose_amount_column_cannot_store_every_amount_is_a_config_error(
    clean_postgres_database: str, amount_type: str
) -> None:
    # PostgreSQL stores 0.0049 in a numeric(16,2) as 0.00, silently; 10^10 does not fit in a numeric(14,4).
    engine = made_with_amount_type(clean_postgres_database, amount_type)
    with pytest.raises(ConfigError, match=r"\.amount .* cannot store every amount exactly"):
        load_day(engine, DAY, [scored("T-1", amount="0.0049")], [])
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("amount_type", ["NUMERIC", "NUMERIC(20, 6)"])
def test_a_table_whose_amount_column_is_wider_stores_amounts_exactly(
    clean_postgres_database: str, amount_type: str
) -> None:
    engine = made_with_amount_type(clean_postgres_database, amount_type)
    load_day(engine, DAY, [scored("T-1", amount="99999999999999.9999")], [])
    assert scored_rows(engine)[0][1] == Decimal("99999999999999.9999")
    engine.dispose()
