"""Deterministic sample transactions for a date, for demos and tests: a date always gives the same rows.

`python -m batch_job.sample_data --date 2026-01-14 --out DIR --rows 1000 [--bad-share 0.02]` writes
`DIR/2026-01-14/transactions.csv`. With `--bad-share`, that share of the rows is corrupted (one problem each,
in turn: a non-numeric, negative or zero amount, an unknown currency, an unparseable timestamp, a timestamp on
the day before, a repeated transaction id, a country name instead of a code) so the demo shows rejected rows;
the first row is never corrupted, and the others stay exactly as without the flag.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

from batch_job.validate import REQUIRED_COLUMNS

Row = dict[str, str]

FILE_NAME = "transactions.csv"
CURRENCY_WEIGHTS = {"EUR": 50, "USD": 25, "GBP": 10, "CHF": 5, "SEK": 4, "PLN": 4, "JPY": 2}
COUNTRY_WEIGHTS = {
    **{"DE": 30, "FR": 15, "NL": 10, "ES": 8, "IT": 8, "GB": 8, "US": 8},
    **{"CH": 5, "PL": 4, "BR": 2, "NG": 1, "RU": 1},
}
ACCOUNTS = 5_000
MERCHANTS = 800
SECONDS_PER_DAY = 86_400


def generate_transactions(run_date: dt.date, rows: int, bad_share: float = 0.0) -> list[Row]:
    """`rows` transactions on `run_date`, seeded by the date; about `bad_share` of them corrupted."""
    # Seeded pseudo-randomness is the point here: sample data, not secrets.
    rng = random.Random(run_date.toordinal())  # ruff: ignore[suspicious-non-cryptographic-random-usage]
    transactions = [_transaction(rng, run_date, index) for index in range(rows)]
    corruption_rng = random.Random(-run_date.toordinal())  # ruff: ignore[suspicious-non-cryptographic-random-usage]
    _corrupt(transactions, corruption_rng, bad_share)
    return transactions


def write_day(out: Path, run_date: dt.date, rows: int, bad_share: float = 0.0) -> Path:
    """Write the day's sample to `out/<date>/transactions.csv` and return the file's path."""
    path = out / run_date.isoformat() / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=REQUIRED_COLUMNS)
        writer.writeheader()
        writer.writerows(generate_transactions(run_date, rows, bad_share))
    return path


def _transaction(rng: random.Random, run_date: dt.date, index: int) -> Row:
    midnight = dt.datetime.combine(run_date, dt.time(), tzinfo=dt.UTC)
    occurred_at = midnight + dt.timedelta(seconds=rng.randrange(SECONDS_PER_DAY))
    currency = _weighted(rng, CURRENCY_WEIGHTS)
    # Most payments are small, a few are large: a log-normal spread around ~30.
    amount = Decimal(max(1.0, rng.lognormvariate(3.4, 1.1)))
    return {
        "transaction_id": f"T{run_date:%Y%m%d}-{index:07d}",
        "account_id": f"ACC{rng.randrange(ACCOUNTS):06d}",
        "merchant_id": f"MER{rng.randrange(MERCHANTS):05d}",
        "amount": str(amount.quantize(Decimal(1) if currency == "JPY" else Decimal("0.01"))),
        "currency": currency,
        "timestamp": occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "country": _weighted(rng, COUNTRY_WEIGHTS),
    }


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _corrupt(transactions: list[Row], rng: random.Random, bad_share: float) -> None:
    corrupted = 0
    for previous, row in itertools.pairwise(
        transactions
    ):  # the first row, without a previous one, stays good
        if rng.random() < bad_share:
            CORRUPTIONS[corrupted % len(CORRUPTIONS)](row, previous)
            corrupted += 1


def _day_before(row: Row, _: Row) -> None:
    occurred_at = dt.datetime.fromisoformat(row["timestamp"]) - dt.timedelta(days=1)
    row["timestamp"] = occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")


# Each takes the row to corrupt and the row before it.
CORRUPTIONS: tuple[Callable[[Row, Row], None], ...] = (
    lambda row, _: row.update(amount="12,50"),
    lambda row, _: row.update(amount=f"-{row['amount']}"),
    lambda row, _: row.update(amount="0.00"),
    lambda row, _: row.update(currency="ABC"),
    lambda row, _: row.update(timestamp="yesterday"),
    _day_before,
    lambda row, previous: row.update(transaction_id=previous["transaction_id"]),
    lambda row, _: row.update(country="Germany"),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = write_day(args.out, args.date, args.rows, args.bad_share)
    print(path)  # ruff: ignore[print]  # the CLI's output: where the file went
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m batch_job.sample_data",
        description="Write deterministic sample transactions for a date.",
    )
    parser.add_argument("--date", required=True, type=_iso_date, help="the run date, YYYY-MM-DD")
    parser.add_argument(
        "--out", required=True, type=Path, help="the landing directory (the day's folder is made)"
    )
    parser.add_argument("--rows", type=_non_negative_int, default=1000, help="how many rows (default 1000)")
    parser.add_argument(
        "--bad-share", type=_share, default=0.0, help="share of deliberately bad rows, 0 to 1 (default 0)"
    )
    return parser


def _iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative whole number")
    return int(text)


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return share


if __name__ == "__main__":
    raise SystemExit(main())
