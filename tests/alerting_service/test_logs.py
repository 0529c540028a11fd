"""Log lines carry the fields passed as `extra`, as key=value after the message."""

import logging
import sys

from alerting_service.logs import LINE_FORMAT, ExtrasFormatter


def formatted(message: str, exc_info: bool = False, **extra: object) -> str:
    record = logging.makeLogRecord({"name": "alerting_service.dispatch.worker", "levelname": "WARNING"})
    record.msg = message
    record.__dict__.update(extra)
    if exc_info:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
    return ExtrasFormatter(LINE_FORMAT).format(record)


def test_extra_fields_follow_the_message_as_key_value() -> None:
    line = formatted("delivery failed", delivery_id="d-1", receiver="hook", attempts=3)

    assert line.endswith(
        "WARNING alerting_service.dispatch.worker delivery failed delivery_id=d-1 receiver=hook attempts=3"
    )


def test_a_value_with_spaces_or_quotes_is_quoted() -> None:
    line = formatted("delivery failed", error='POST https://h/x: HTTP 500 "oops"')

    assert line.endswith('delivery failed error="POST https://h/x: HTTP 500 \\"oops\\""')


def test_a_line_without_extra_fields_is_the_message_alone() -> None:
    assert formatted("worker stopped").endswith("alerting_service.dispatch.worker worker stopped")


def test_the_fields_come_before_the_traceback() -> None:
    first, *rest = formatted("claiming failed", exc_info=True, error="ValueError").splitlines()

    assert first.endswith("claiming failed error=ValueError")
    assert rest[0] == "Traceback (most recent call last):"
