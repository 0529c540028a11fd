"""The sample-data generator: deterministic per date, valid unless asked for bad rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from batch_job_support import RUN_DATE

from batch_job.extract import SourceFile
from batch_job.sample_data import generate_transactions, main, write_day
from batch_job.validate import validate_day


def validate_sample(out: Path, rows: int, bad_share: float = 0.0) -> tuple[int, int]:
    """(valid, rejected) counts of a sample written to `out` and read back."""
    path = write_day(out, RUN_DATE, rows, bad_share)
    result = validate_day([SourceFile(uri=path.as_uri(), text=path.read_text())], RUN_DATE)
    return len(result.valid), len(result.rejected)


def test_the_same_date_gives_the_same_rows() -> None:
    assert generate_transactions(RUN_DATE, 50) == generate_transactions(RUN_DATE, 50)


def test_another_date_gives_other_rows() -> None:
    assert generate_transactions(RUN_DATE, 50) != generate_transactions(dt.date(2026, 1, 15), 50)


def test_without_bad_rows_every_row_is_valid(tmp_path: Path) -> None:
    assert validate_sample(tmp_path, 1000) == (1000, 0)


def test_bad_share_rejects_about_that_share_of_rows(tmp_path: Path) -> None:
    valid, rejected = validate_sample(tmp_path, 1000, bad_share=0.05)
    assert valid + rejected == 1000
    assert 25 <= rejected <= 75


def test_bad_rows_leave_the_other_rows_as_they_were() -> None:
    clean = generate_transactions(RUN_DATE, 200)
    with_bad = generate_transactions(RUN_DATE, 200, bad_share=0.1)
    changed = sum(1 for before, after in zip(clean, with_bad, strict=True) if before != after)
    assert 0 < changed < 50


def test_the_command_writes_the_days_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--date", "2026-01-14", "--out", str(tmp_path), "--rows", "3"]) == 0
    path = tmp_path / "2026-01-14" / "transactions.csv"
    assert capsys.readouterr().out.strip() == str(path)
    assert len(path.read_text().splitlines()) == 4  # the header and three rows


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["--date", "14.01.2026"], "'14.01.2026' is not a date in YYYY-MM-DD form", id="date"),
        pytest.param(
            ["--date", "2026-01-14", "--rows", "-5"], "'-5' is not a non-negative whole number", id="rows"
        ),
        pytest.param(
            ["--date", "2026-01-14", "--bad-share", "2"], "'2' is not a number from 0 to 1", id="share"
        ),
    ],
)
def test_the_command_names_a_bad_argument(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*arguments, "--out", str(tmp_path)])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
