"""validate_day: the CSV schema, whole-file errors (exit 65) and row rejections with their reasons."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from batch_job_support import RUN_DATE, csv_text, row

from batch_job.errors import InvalidInputError
from batch_job.extract import SourceFile
from batch_job.validate import REQUIRED_COLUMNS, ValidationResult, validate_day

FILE = "file:///landing/2026-01-14/a.csv"


def validate(text: str, uri: str = FILE) -> ValidationResult:
    return validate_day([SourceFile(uri=uri, text=text)], RUN_DATE)


def test_a_well_formed_file_gives_only_valid_transactions() -> None:
    result = validate(csv_text([row(1), row(2)]))
    assert [t.transaction_id for t in result.valid] == ["T-00001", "T-00002"]
    assert result.rejected == []


def test_valid_values_are_normalised() -> None:
    result = validate(
        csv_text(
            [row(1, amount=" 12.5 ", currency="eur", country="de", timestamp="2026-01-14T10:00:00+01:00")]
        )
    )
    transaction = result.valid[0]
    assert transaction.amount == Decimal("12.5")
    assert transaction.currency == "EUR"
    assert transaction.country == "DE"
    assert transaction.occurred_at == dt.datetime(2026, 1, 14, 9, 0, tzinfo=dt.UTC)


def test_a_timestamp_counts_on_its_utc_date() -> None:
    result = validate(csv_text([row(1, timestamp="2026-01-15T00:30:00+01:00")]))
    assert len(result.valid) == 1


def test_unbalanced_quotes_are_invalid_input() -> None:
    text = csv_text([row(1)]) + 'T-2,ACC,MER,"12.50,EUR,2026-01-14T09:30:00Z,DE\n'
    with pytest.raises(InvalidInputError, match=f"{FILE} is not valid CSV"):
        validate(text)


def test_text_after_a_closing_quote_is_invalid_input() -> None:
    text = csv_text([row(1)]) + 'T-2,ACC,MER,"12.50"x,EUR,2026-01-14T09:30:00Z,DE\n'
    with pytest.raises(InvalidInputError, match="is not valid CSV: line 3"):
        validate(text)


def test_a_nul_byte_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="is not valid CSV: line 3: contains a NUL byte"):
        validate(csv_text([row(1)]) + "T-2\0,ACC\n")


def test_an_empty_file_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match=f"{FILE} is empty"):
        validate("")


def test_a_missing_column_is_invalid_input_naming_it() -> None:
    columns = [column for column in REQUIRED_COLUMNS if column != "currency"]
    with pytest.raises(InvalidInputError, match=f"{FILE} lacks the required column\\(s\\): currency"):
        validate(csv_text([row(1)], columns=columns))


def test_a_repeated_column_is_invalid_input() -> None:
    text = "transaction_id,amount," + csv_text([row(1)])
    with pytest.raises(InvalidInputError, match="the column\\(s\\) amount, transaction_id more than once"):
        validate(text)


def test_extra_columns_are_ignored() -> None:
    result = validate(csv_text([row(1, channel="web")], columns=[*REQUIRED_COLUMNS, "channel"]))
    assert len(result.valid) == 1


def test_an_extra_column_repeated_is_ignored() -> None:
    # A spreadsheet export's stray trailing commas make empty column names: nothing the job reads.
    text = "".join(f"{line},,\n" for line in csv_text([row(1)]).splitlines())
    result = validate(text)
    assert len(result.valid) == 1


def test_columns_may_come_in_any_order() -> None:
    result = validate(csv_text([row(1)], columns=list(reversed(REQUIRED_COLUMNS))))
    assert len(result.valid) == 1


def test_blank_lines_are_skipped() -> None:
    result = validate(csv_text([row(1)]) + "\n\n" + csv_text([row(2)]).split("\n", 1)[1])
    assert len(result.valid) == 2
    assert result.rejected == []


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"amount": "12,50"}, "amount '12,50' is not a decimal number", id="amount-not-a-number"),
        pytest.param({"amount": "1e3"}, "amount '1e3' is not a decimal number", id="amount-with-exponent"),
        pytest.param({"amount": "NaN"}, "amount 'NaN' is not a decimal number", id="amount-nan"),
        pytest.param({"amount": "0"}, "amount '0' is not positive", id="amount-zero"),
        pytest.param({"amount": "-4.20"}, "amount '-4.20' is not positive", id="amount-negative"),
        pytest.param({"amount": "1.23456"}, "more than 4 decimal places", id="amount-too-precise"),
        pytest.param({"amount": "100000000000000"}, "is not below", id="amount-too-large"),
        pytest.param(
            {"currency": "ABC"}, "currency 'ABC' is not a circulating ISO 4217 code", id="unknown-currency"
        ),
        pytest.param({"currency": "XXX"}, "currency 'XXX' is not a circulating", id="no-currency-code"),
        pytest.param(
            {"timestamp": "yesterday"}, "timestamp 'yesterday' is not an ISO 8601", id="bad-timestamp"
        ),
        pytest.param(
            {"timestamp": "2026-01-14T09:30:00"}, "has no UTC offset", id="timestamp-without-offset"
        ),
        pytest.param(
            {"timestamp": "2026-01-13T23:59:59Z"},
            "is not on the run date 2026-01-14",
            id="timestamp-other-day",
        ),
        pytest.param({"country": "Germany"}, "country 'Germany' is not an ISO 3166-1", id="country-name"),
        pytest.param({"transaction_id": ""}, "transaction_id is empty", id="empty-transaction-id"),
        pytest.param({"account_id": "A" * 65}, "account_id is longer than 64", id="account-id-too-long"),
        pytest.param({"merchant_id": "  "}, "merchant_id is empty", id="blank-merchant-id"),
    ],
)
def test_a_row_with_a_bad_value_is_rejected_with_the_reason(overrides: dict[str, str], reason: str) -> None:
    result = validate(csv_text([row(1), row(2, **overrides)]))
    assert [t.transaction_id for t in result.valid] == ["T-00001"]
    [rejected] = result.rejected
    assert len(rejected.reasons) == 1
    assert reason in rejected.reasons[0]


def test_a_row_keeps_every_reason_found() -> None:
    result = validate(csv_text([row(1, amount="-1", currency="ABC", country="XYZ")]))
    assert len(result.rejected[0].reasons) == 3


def test_a_duplicate_id_keeps_the_first_row_and_rejects_later_ones() -> None:
    result = validate(csv_text([row(1, amount="1.00"), row(1, amount="2.00"), row(1, amount="3.00")]))
    assert [t.amount for t in result.valid] == [Decimal("1.00")]
    assert [r.line_number for r in result.rejected] == [3, 4]
    assert all(
        r.reasons == (f"duplicate transaction_id: first seen at line 2 of {FILE}",) for r in result.rejected
    )


def test_a_duplicate_id_in_a_later_file_of_the_day_is_rejected() -> None:
    files = [
        SourceFile(uri="file:///a.csv", text=csv_text([row(1)])),
        SourceFile(uri="file:///b.csv", text=csv_text([row(1)])),
    ]
    result = validate_day(files, RUN_DATE)
    assert [t.source_file for t in result.valid] == ["file:///a.csv"]
    assert result.rejected[0].source_file == "file:///b.csv"


def test_a_row_with_too_few_fields_is_rejected() -> None:
    result = validate(csv_text([row(1)]) + "T-2,ACC,MER,12.50\n")
    [rejected] = result.rejected
    assert "has 4 fields where the header has 7" in rejected.reasons


def test_a_rejected_row_keeps_its_raw_record_and_line_number() -> None:
    text = csv_text([row(1, merchant_id="MER\nSPLIT")]) + csv_text([row(2, amount="abc")]).split("\n", 1)[1]
    [rejected] = validate(text).rejected
    assert rejected.line_number == 4  # the first record spans lines 2 and 3
    assert rejected.transaction_id == "T-00002"
    assert rejected.raw_record == "T-00002,ACC000001,MER00001,abc,EUR,2026-01-14T09:30:00Z,DE"


def test_read_counts_valid_and_rejected_rows() -> None:
    result = validate(csv_text([row(1), row(2, amount="0")]))
    assert result.read == 2


def test_a_duplicate_of_a_rejected_row_is_rejected_too() -> None:
    result = validate(csv_text([row(1, amount="abc"), row(1)]))
    assert result.valid == []
    assert result.rejected[1].reasons == (f"duplicate transaction_id: first seen at line 2 of {FILE}",)


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_a_file_separated_by_another_character_is_invalid_input_saying_so(separator: str) -> None:
    # A European spreadsheet export: the header reads as one column, and "lacks the required column(s):
    # transaction_id, account_id, ..." sent the operator looking for a missing header.
    text = csv_text([row(1)]).replace(",", separator)
    with pytest.raises(InvalidInputError, match=re.escape(f"separated by {separator!r}, not by commas")):
        validate(text)


def test_an_amount_with_four_decimal_places_is_valid() -> None:
    # The contract allows up to 4 decimals (numeric(18,4)): 0.0001 and 12.3456 are amounts, not rejects.
    result = validate(csv_text([row(1, amount="12.3456"), row(2, amount="0.0001")]))
    assert [t.amount for t in result.valid] == [Decimal("12.3456"), Decimal("0.0001")]
    assert result.rejected == []


def test_an_amount_with_a_plus_sign_is_rejected_as_not_a_decimal_number() -> None:
    result = validate(csv_text([row(1, amount="+12.50")]))
    assert result.valid == []
    assert result.rejected[0].reasons == ("amount '+12.50' is not a decimal number",)


def test_a_country_of_two_non_ascii_letters_is_rejected() -> None:
    # "ÖS".isalpha() is true: only the ASCII check keeps it out of country (ISO 3166-1 alpha-2 is A-Z).
    result = validate(csv_text([row(1, country="ÖS")]))
    assert result.valid == []
    assert result.rejected[0].reasons == ("country 'ÖS' is not an ISO 3166-1 alpha-2 code",)


def test_identifiers_of_exactly_64_characters_are_valid() -> None:
    longest = "X" * 64
    result = validate(csv_text([row(1, transaction_id=longest, account_id=longest, merchant_id=longest)]))
    assert [t.transaction_id for t in result.valid] == [longest]
    assert result.rejected == []


def test_the_time_of_a_valid_transaction_is_given_in_utc() -> None:
    # Not only the same instant: SQLite's DateTime drops the offset, so 10:00+01:00 would be stored as 10:00.
    [transaction] = validate(csv_text([row(1, timestamp="2026-01-14T10:00:00+01:00")])).valid
    assert transaction.occurred_at.utcoffset() == dt.timedelta(0)
    assert transaction.occurred_at.replace(tzinfo=None) == dt.datetime(2026, 1, 14, 9, 0)
