"""The fraud report of `fraud_report_dag`: one JSON file per scored date, from the asset events it received.

A consumer run can carry several `scored_transactions` events (several dates, or a date re-run), so every
event is handled: its extras say which date and counts, the rows come from the results database
(postgres_default: PostgreSQL or the embedded SQLite file) at the time the report is written.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow.sdk import Connection, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from pipeline_common.assets import SCORED_EVENT_COUNT_KEYS, SCORED_TRANSACTIONS
from pipeline_common.connections import POSTGRES_CONN_ID, database_url, get_connection
from pipeline_common.errors import PipelineConfigError, RetryCannotHelp
from pipeline_common.run_date import parse_run_date

log = logging.getLogger(__name__)

TOP_SUSPECTS = 10
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ScoredEventError(RetryCannotHelp):
    """A `scored_transactions` event whose extras do not follow the asset contract."""


@dataclass(frozen=True)
class ScoredDay:
    """What one asset event announces: a date's rows, loaded into `table`."""

    run_date: date
    table: str
    counts: Mapping[str, int]
    source: str


def scored_day_from_extra(extra: Mapping[str, Any]) -> ScoredDay:
    """The day an event announces; any departure from the asset contract is a `ScoredEventError` (no retry:
    the event's extras will be the same on every try)."""
    missing = [key for key in ("run_date", "table", "counts", "source") if key not in extra]
    if missing:
        raise ScoredEventError(f"scored_transactions event extras lack {', '.join(missing)}: {dict(extra)!r}")
    if not _TABLE_NAME.match(str(extra["table"])):
        raise ScoredEventError(f"scored_transactions event names an invalid table {extra['table']!r}")
    return ScoredDay(
        run_date=_event_run_date(extra["run_date"]),
        table=str(extra["table"]),
        counts=_event_counts(extra["counts"]),
        source=str(extra["source"]),
    )


def _event_run_date(value: Any) -> date:
    try:
        return parse_run_date(str(value))
    except PipelineConfigError:  # its message speaks of the DAG param, not of an event
        raise ScoredEventError(
            f"scored_transactions event names an invalid run_date {value!r} (expected YYYY-MM-DD)"
        ) from None


def _event_counts(counts: Any) -> dict[str, int]:
    if not isinstance(counts, Mapping) or set(SCORED_EVENT_COUNT_KEYS) - set(counts):
        raise ScoredEventError(f"scored_transactions event counts are incomplete: {counts!r}")
    values = {key: counts[key] for key in SCORED_EVENT_COUNT_KEYS}
    # bool is an int to Python, not a count; int("n/a") would be a ValueError, retried in vain.
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in values.values()):
        raise ScoredEventError(f"scored_transactions event counts are not integers: {counts!r}")
    return values


def write_reports(extras: Iterable[Mapping[str, Any]], database: Connection, reports_dir: Path) -> list[Path]:
    """One report per announced date; `extras` oldest first, so the last event of a date, its latest load,
    gives the report's event counts (the rows are read now anyway).

    An event breaking the asset contract (e.g. one created by hand in the UI) must not cost the other dates
    of the run their reports: the run's events are consumed by it, a Clear re-reads the same ones, and the
    operator could not tell which dates went unreported. They are written first, then the task fails naming
    every bad event."""
    days, refusals = _announced_days(extras)
    paths = _write_days(days, database, reports_dir) if days else []
    if refusals:
        raise ScoredEventError(
            f"{len(refusals)} scored_transactions event(s) break the asset contract and got no report "
            f"(the {len(paths)} other date(s) did): {'; '.join(refusals)}"
        )
    return paths


def _announced_days(extras: Iterable[Mapping[str, Any]]) -> tuple[dict[date, ScoredDay], list[str]]:
    """The days announced by the events that follow the contract, and why each other event was refused."""
    days: dict[date, ScoredDay] = {}
    refusals: list[str] = []
    for extra in extras:
        try:
            day = scored_day_from_extra(extra)
        except ScoredEventError as error:
            refusals.append(str(error))
        else:
            days[day.run_date] = day
    return days, refusals


def _write_days(days: Mapping[date, ScoredDay], database: Connection, reports_dir: Path) -> list[Path]:
    reports_dir.mkdir(parents=True, exist_ok=True)
    engine = _engine(database)
    try:
        with engine.connect() as connection:
            return [
                _write_report(connection, day, reports_dir) for day in sorted(days.values(), key=_by_date)
            ]
    finally:
        engine.dispose()


def _by_date(day: ScoredDay) -> date:
    return day.run_date


def _write_report(connection: Any, day: ScoredDay, reports_dir: Path) -> Path:
    rows = _scored_rows(connection, day)
    flagged = [row for row in rows if row["is_fraud"]]
    report = {
        "run_date": day.run_date.isoformat(),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": day.source,
        "table": day.table,
        "event_counts": dict(day.counts),
        "rows_in_table": len(rows),
        "flagged": len(flagged),
        "flagged_amount_by_currency": _amount_by_currency(flagged),
        "top_suspects": [_suspect(row) for row in rows[:TOP_SUSPECTS]],
    }
    path = reports_dir / f"fraud_report_{day.run_date.isoformat()}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)  # a reader never sees half a report
    log.info(
        "Fraud report for %s: %d rows, %d flagged, written to %s",
        day.run_date.isoformat(),
        len(rows),
        len(flagged),
        path,
    )
    return path


def _scored_rows(connection: Any, day: ScoredDay) -> Sequence[Mapping[str, Any]]:
    import sqlalchemy as sa  # imported here: only the report task needs it, not DAG parsing

    table = sa.table(
        day.table,
        *(
            sa.column(name)
            for name in (
                "transaction_id",
                "account_id",
                "amount",
                "currency",
                "fraud_score",
                "is_fraud",
                "run_date",
            )
        ),
    )
    query = (
        sa.select(table)
        .where(table.c.run_date == sa.bindparam("run_date", day.run_date, type_=sa.Date))
        .order_by(table.c.fraud_score.desc(), table.c.transaction_id)
    )
    return connection.execute(query).mappings().all()


def _amount_by_currency(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    totals: dict[str, Decimal] = {}
    for row in rows:
        # Decimal(str()): SQLite (the embedded default) gives the amount as its exact text.
        totals[row["currency"]] = totals.get(row["currency"], Decimal(0)) + Decimal(str(row["amount"]))
    return {currency: str(total) for currency, total in sorted(totals.items())}


def _suspect(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "transaction_id": row["transaction_id"],
        "account_id": row["account_id"],
        "amount": str(row["amount"]),
        "currency": row["currency"],
        "fraud_score": float(row["fraud_score"]),
        "is_fraud": bool(row["is_fraud"]),
    }


def _engine(database: Connection) -> Any:
    import sqlalchemy as sa

    url = sa.make_url(database_url(database))
    if database.password and url.drivername != "sqlite":
        url = url.set(password=database.password)
    return sa.create_engine(url)


@task(task_id="write_fraud_reports", multiple_outputs=False)
def write_fraud_reports(reports_dir: str) -> list[str]:
    """Write a fraud report for every date announced by the triggering scored_transactions events."""
    events = get_current_context()["triggering_asset_events"][SCORED_TRANSACTIONS]
    if not events:
        raise AirflowSkipException(
            "no scored_transactions event triggered this run: reports follow batch_pipeline_dag runs; "
            "to report a date again, re-run batch_pipeline_dag for it"
        )
    log.info("%d scored_transactions event(s) triggered this run", len(events))
    paths = write_reports(extras_oldest_first(events), get_connection(POSTGRES_CONN_ID), Path(reports_dir))
    return [str(path) for path in paths]


def extras_oldest_first(events: Iterable[Any]) -> list[Mapping[str, Any]]:
    """The events' extras by the time they were emitted, so the last one of a date is its latest load.

    Airflow lists a run's events in no time order: the one that triggered the run comes first, then those
    that were waiting (emitted while this DAG was paused, or after the previous run was queued)."""
    return [event.extra for event in sorted(events, key=_emitted_at)]


def _emitted_at(event: Any) -> datetime:
    return event.timestamp
