"""Validate: parse the day's CSV files and split their rows into valid transactions and rejected rows.

The CSV schema (one header line, comma-separated, RFC 4180 quoting, UTF-8 with an optional byte-order mark):

| column | rule |
| --- | --- |
| `transaction_id` | non-empty, at most 64 characters, unique within the day |
| `account_id` | non-empty, at most 64 characters |
| `merchant_id` | non-empty, at most 64 characters |
| `amount` | a plain decimal (`12.5`, `1000.00`: no exponent, no `+`), > 0, < 10^14, at most 4 decimals |
| `currency` | a circulating ISO 4217 code (`EUR`; see `batch_job.currencies`), case-insensitive |
| `timestamp` | ISO 8601 with a UTC offset (`2026-01-14T09:30:00Z`, `...+01:00`), on the run date in UTC |
| `country` | an ISO 3166-1 alpha-2 code: two letters (`DE`), case-insensitive |

Surrounding whitespace in values and column names is ignored; extra columns are allowed and ignored.

A problem with a whole file (not UTF-8, not parseable as CSV, no header, a required column missing or
twice) raises `InvalidInputError`: the job exits 65. A problem with one row rejects that row with every reason
found, and the row is kept as a `RejectedRow`. The first row of a `transaction_id` (in file-then-line order)
is kept; every later row with that id is rejected as a duplicate, even when the first was itself rejected
(which of two rows is the right one is not the job's guess to make).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from batch_job.currencies import ISO_4217_CURRENCIES
from batch_job.errors import InvalidInputError
from batch_job.extract import SourceFile

REQUIRED_COLUMNS = (
    "transaction_id",
    "account_id",
    "merchant_id",
    "amount",
    "currency",
    "timestamp",
    "country",
)
IDENTIFIER_COLUMNS = ("transaction_id", "account_id", "merchant_id")
MAX_IDENTIFIER_LENGTH = 64
MAX_AMOUNT_DECIMAL_PLACES = 4
AMOUNT_LIMIT = Decimal(10) ** 14
AMOUNT_PATTERN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
# Separators of spreadsheet exports that are not CSV's comma; named in the error when a header uses one.
OTHER_SEPARATORS = (";", "\t", "|")
# Raw values quoted in reasons are cut to this length so one absurd field cannot bloat the rejects table.
MAX_QUOTED_VALUE = 40


@dataclass(frozen=True, slots=True)
class Transaction:
    transaction_id: str
    account_id: str
    merchant_id: str
    amount: Decimal
    currency: str
    occurred_at: dt.datetime  # in UTC
    country: str
    source_file: str
    line_number: int  # where the record starts; the header is line 1
    raw_record: str  # the record's fields as one CSV line, exactly as read


@dataclass(frozen=True, slots=True)
class RejectedRow:
    source_file: str
    line_number: int  # where the record starts; the header is line 1
    transaction_id: str | None
    raw_record: str  # the record's fields as one CSV line, exactly as read
    reasons: tuple[str, ...]


@dataclass
class ValidationResult:
    valid: list[Transaction] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)

    @property
    def read(self) -> int:
        return len(self.valid) + len(self.rejected)


@dataclass(frozen=True, slots=True)
class _Record:
    source_file: str
    line_number: int
    values: dict[str, str]  # required column -> stripped value
    fields: list[str]
    field_count_problem: str | None


def validate_day(files: Sequence[SourceFile], run_date: dt.date) -> ValidationResult:
    """Validate every row of the day's files; raises `InvalidInputError` for a file unusable as a whole."""
    result = ValidationResult()
    first_line_of_id: dict[str, tuple[str, int]] = {}
    for source_file in files:
        for record in _read_records(source_file):
            reasons = _row_problems(record, run_date)
            transaction_id = record.values.get("transaction_id") or None
            if transaction_id is not None:
                first = first_line_of_id.setdefault(transaction_id, (record.source_file, record.line_number))
                if first != (record.source_file, record.line_number):
                    reasons.append(f"duplicate transaction_id: first seen at line {first[1]} of {first[0]}")
            if reasons:
                result.rejected.append(_rejected(record, transaction_id, reasons))
            else:
                result.valid.append(_transaction(record))
    return result


def _read_records(source_file: SourceFile) -> Iterator[_Record]:
    # Python's csv module accepts NUL, but a text file has none and PostgreSQL cannot store it.
    if "\0" in source_file.text:
        line = source_file.text.count("\n", 0, source_file.text.index("\0")) + 1
        raise InvalidInputError(f"{source_file.uri} is not valid CSV: line {line}: contains a NUL byte")
    reader = csv.reader(io.StringIO(source_file.text, newline=""), strict=True)
    try:
        header = _header(source_file.uri, next(reader, None))
        positions = {column: header.index(column) for column in REQUIRED_COLUMNS}
        last_line = reader.line_num
        for fields in reader:
            line_number, last_line = last_line + 1, reader.line_num
            if not fields:  # a blank line
                continue
            yield _Record(
                source_file=source_file.uri,
                line_number=line_number,
                values={column: _field(fields, index) for column, index in positions.items()},
                fields=fields,
                field_count_problem=(
                    f"has {len(fields)} fields where the header has {len(header)}"
                    if len(fields) != len(header)
                    else None
                ),
            )
    except csv.Error as exc:
        raise InvalidInputError(
            f"{source_file.uri} is not valid CSV: line {reader.line_num}: {exc}"
        ) from None


def _header(uri: str, header: list[str] | None) -> list[str]:
    if not header:
        raise InvalidInputError(f"{uri} is empty: expected a header line with {', '.join(REQUIRED_COLUMNS)}")
    columns = [name.strip() for name in header]
    # Only a required column twice is ambiguous; extra columns, however named, are ignored.
    repeated = sorted({name for name in REQUIRED_COLUMNS if columns.count(name) > 1})
    if repeated:
        raise InvalidInputError(f"{uri} has the column(s) {', '.join(repeated)} more than once")
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise InvalidInputError(
            f"{uri} {_separator_hint(columns) or 'lacks the required column(s)'}: {', '.join(missing)}"
        )
    return columns


def _separator_hint(columns: list[str]) -> str | None:
    """A header read as one column that holds the column names split by another character: say so, rather
    than that every column is missing."""
    if len(columns) != 1:
        return None
    for separator in OTHER_SEPARATORS:
        if set(REQUIRED_COLUMNS) <= {name.strip() for name in columns[0].split(separator)}:
            return f"is separated by {separator!r}, not by commas, so it lacks the column(s)"
    return None


def _field(fields: list[str], index: int) -> str:
    return fields[index].strip() if index < len(fields) else ""


def _row_problems(record: _Record, run_date: dt.date) -> list[str]:
    values = record.values
    problems = [record.field_count_problem] if record.field_count_problem else []
    problems += [
        problem for column in IDENTIFIER_COLUMNS if (problem := _identifier_problem(column, values[column]))
    ]
    checks = (
        _amount_problem(values["amount"]),
        _currency_problem(values["currency"]),
        _timestamp_problem(values["timestamp"], run_date),
        _country_problem(values["country"]),
    )
    return problems + [problem for problem in checks if problem]


def _identifier_problem(column: str, value: str) -> str | None:
    if not value:
        return f"{column} is empty"
    if len(value) > MAX_IDENTIFIER_LENGTH:
        return f"{column} is longer than {MAX_IDENTIFIER_LENGTH} characters"
    return None


def _amount_problem(value: str) -> str | None:
    # Stricter than Decimal(), which also takes "1e3", "1_000", "NaN" and non-ASCII digits.
    if not AMOUNT_PATTERN.fullmatch(value):
        return f"amount {_quoted(value)} is not a decimal number"
    amount = Decimal(value)
    if amount <= 0:
        return f"amount {_quoted(value)} is not positive"
    if amount >= AMOUNT_LIMIT:
        return f"amount {_quoted(value)} is not below {AMOUNT_LIMIT:.0f}"
    if "." in value and len(value.split(".")[1]) > MAX_AMOUNT_DECIMAL_PLACES:
        return f"amount {_quoted(value)} has more than {MAX_AMOUNT_DECIMAL_PLACES} decimal places"
    return None


def _currency_problem(value: str) -> str | None:
    if value.upper() not in ISO_4217_CURRENCIES:
        return f"currency {_quoted(value)} is not a circulating ISO 4217 code"
    return None


def _timestamp_problem(value: str, run_date: dt.date) -> str | None:
    try:
        occurred_at = dt.datetime.fromisoformat(value)
    except ValueError:
        return f"timestamp {_quoted(value)} is not an ISO 8601 date-time"
    if occurred_at.tzinfo is None:
        return f"timestamp {_quoted(value)} has no UTC offset"
    if occurred_at.astimezone(dt.UTC).date() != run_date:
        return f"timestamp {_quoted(value)} is not on the run date {run_date.isoformat()} (UTC)"
    return None


def _country_problem(value: str) -> str | None:
    if len(value) != 2 or not value.isascii() or not value.isalpha():
        return f"country {_quoted(value)} is not an ISO 3166-1 alpha-2 code"
    return None


def _quoted(value: str) -> str:
    return repr(value if len(value) <= MAX_QUOTED_VALUE else f"{value[:MAX_QUOTED_VALUE]}...")


def _transaction(record: _Record) -> Transaction:
    values = record.values
    return Transaction(
        transaction_id=values["transaction_id"],
        account_id=values["account_id"],
        merchant_id=values["merchant_id"],
        amount=Decimal(values["amount"]),
        # Interned: a few hundred distinct codes among a day's rows, held once rather than once per row.
        currency=sys.intern(values["currency"].upper()),
        occurred_at=dt.datetime.fromisoformat(values["timestamp"]).astimezone(dt.UTC),
        country=sys.intern(values["country"].upper()),
        source_file=record.source_file,
        line_number=record.line_number,
        raw_record=_csv_line(record.fields),
    )


def _rejected(record: _Record, transaction_id: str | None, reasons: list[str]) -> RejectedRow:
    return RejectedRow(
        source_file=record.source_file,
        line_number=record.line_number,
        transaction_id=transaction_id,
        raw_record=_csv_line(record.fields),
        reasons=tuple(reasons),
    )


def _csv_line(fields: list[str]) -> str:
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(fields)
    return line.getvalue()
